//! `pop run <service> packages`: each machine's listing (see `pop_core::packages`) as
//! one aligned table, a row per distribution and machine, or as data with `--json`.

use super::Seen;
use crate::output;
use pop_core::packages::{parse_listing, Listing};
use pop_core::task::TaskState;

/// The listing of a machine whose task succeeded.
pub(super) fn listing(seen: &Seen) -> Option<Listing> {
    match seen {
        Seen::Result(r) if r.state == TaskState::Succeeded => Some(parse_listing(&r.stdout_tail)),
        _ => None,
    }
}

/// `MACHINE NAME VERSION SOURCE INSTALLED`, machines in the task's order; then a line
/// for each machine whose listing lost its front (not expected below ~400).
pub(super) fn table(machines: &[(&str, Listing)]) -> String {
    let mut rows = Vec::new();
    for (machine, listing) in machines {
        for d in &listing.distributions {
            let source = match &d.location {
                Some(location) => format!("{} {location}", d.source),
                None => d.source.clone(),
            };
            rows.push(vec![
                machine.to_string(),
                d.name.clone(),
                d.version.clone(),
                d.installed_at.map_or("-".to_string(), output::utc),
                source,
            ]);
        }
    }
    let mut out = output::table(
        &["MACHINE", "NAME", "VERSION", "INSTALLED", "SOURCE"],
        &rows,
    );
    for (machine, listing) in machines {
        let missing = listing.missing();
        if missing > 0 {
            out.push_str(&format!(
                "{machine}: {missing} more not shown (the result keeps the end of the listing)\n"
            ));
        }
    }
    out
}
