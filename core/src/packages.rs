//! `pop run <service> packages`: what is installed in a service's Python environment on
//! each machine. The task runs [`LIST_DISTRIBUTIONS_PY`] with the environment's own
//! interpreter; it prints one JSON line per distribution and a last line with their
//! count, which [`parse_listing`] reads back from the task's result.
//!
//! JSON lines rather than one document: the result keeps the *end* of the output
//! ([`crate::task::LISTING_TAIL_BYTES`]), and of lines cut off at the front the rest
//! still reads, while the count on the last line says how many are missing.

use serde::{Deserialize, Serialize};

/// A Python script listing the distributions installed in the environment it runs in:
/// run it as `<env>/bin/python -I -c <script>`. One JSON object per line, sorted by name:
/// `name`, `version`, `source` (`index`, `url`, `path`, `editable`, from the
/// distribution's `direct_url.json`; `index` when it has none), `location` (the URL or
/// path, if any), `installer` (its `INSTALLER` record: `pip`, `uv`, or null) and
/// `installed_at` (seconds since the epoch: when its metadata directory was written);
/// then `{"count": N}`.
pub const LIST_DISTRIBUTIONS_PY: &str = r#"
import json, os, sys
from importlib import metadata
from urllib.parse import unquote, urlparse

def source(dist):
    try:
        text = dist.read_text("direct_url.json")
    except Exception:
        text = None
    if not text:
        return "index", None
    try:
        info = json.loads(text)
    except ValueError:
        return "unknown", None
    url = info.get("url")
    if (info.get("dir_info") or {}).get("editable"):
        return "editable", url
    if isinstance(url, str) and url.startswith("file:"):
        return "path", unquote(urlparse(url).path)
    return "url", url

def installed_at(dist):
    path = getattr(dist, "_path", None)
    try:
        return os.stat(str(path)).st_mtime if path is not None else None
    except OSError:
        return None

seen = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if not name or name.lower() in seen:
        continue
    kind, location = source(dist)
    seen[name.lower()] = {
        "name": name,
        "version": dist.version,
        "source": kind,
        "location": location,
        "installer": (dist.read_text("INSTALLER") or "").strip() or None,
        "installed_at": installed_at(dist),
    }
for key in sorted(seen):
    sys.stdout.write(json.dumps(seen[key], separators=(",", ":")) + "\n")
sys.stdout.write(json.dumps({"count": len(seen)}) + "\n")
"#;

/// One installed distribution, as a line of the listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub name: String,
    pub version: String,
    /// `index`, `url`, `path`, `editable` (or `unknown`: an unreadable `direct_url.json`).
    pub source: String,
    /// The URL or local path it was installed from, if not an index.
    #[serde(default)]
    pub location: Option<String>,
    /// `pip`, `uv`, ... (its `INSTALLER` record).
    #[serde(default)]
    pub installer: Option<String>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub installed_at: Option<f64>,
}

/// The distributions of one machine's listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listing {
    pub distributions: Vec<Distribution>,
    /// How many the environment holds (the last line), when that line was there.
    pub count: Option<usize>,
}

impl Listing {
    /// Distributions the listing had but the kept end of the output lost.
    pub fn missing(&self) -> usize {
        self.count
            .map_or(0, |n| n.saturating_sub(self.distributions.len()))
    }
}

#[derive(Deserialize)]
struct Count {
    count: usize,
}

/// Reads a listing back from the task's stdout: lines that are not a distribution (the
/// front of one cut off) are skipped.
pub fn parse_listing(stdout: &str) -> Listing {
    let mut listing = Listing {
        distributions: Vec::new(),
        count: None,
    };
    for line in stdout.lines() {
        if let Ok(distribution) = serde_json::from_str::<Distribution>(line) {
            listing.distributions.push(distribution);
        } else if let Ok(Count { count }) = serde_json::from_str(line) {
            listing.count = Some(count);
        }
    }
    listing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_back_with_its_count() {
        let out = concat!(
            r#"{"name":"hello","version":"1.0","source":"path","location":"/w/hello-1.0-py3-none-any.whl","installer":"uv","installed_at":1700000000.5}"#,
            "\n",
            r#"{"name":"pip","version":"24.0","source":"index","location":null,"installer":"pip","installed_at":null}"#,
            "\n",
            r#"{"count": 2}"#,
            "\n"
        );
        let listing = parse_listing(out);
        assert_eq!(listing.count, Some(2));
        assert_eq!(listing.missing(), 0);
        assert_eq!(listing.distributions[0].name, "hello");
        assert_eq!(
            listing.distributions[0].location.as_deref(),
            Some("/w/hello-1.0-py3-none-any.whl")
        );
        assert_eq!(listing.distributions[1].installed_at, None);
    }

    #[test]
    fn a_listing_cut_at_the_front_says_how_many_it_lost() {
        let out = concat!(
            r#"ion":"1.0","source":"index"}"#,
            "\n",
            r#"{"name":"b","version":"2","source":"index"}"#,
            "\n",
            r#"{"count": 3}"#,
            "\n"
        );
        let listing = parse_listing(out);
        assert_eq!(listing.distributions.len(), 1);
        assert_eq!(listing.missing(), 2);
    }
}
