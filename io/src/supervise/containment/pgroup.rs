//! Fallback containment without cgroups: process group + subreaper + token.
//!
//! The main process starts its own session (`setsid`), so its pgid is its pid.
//! A process that leaves the group (`setsid`, double fork) still carries the
//! service's `POP_SUPERVISION_TOKEN` in its environment, and an orphan is
//! reparented to the agent (a subreaper) rather than to init. Members are
//! therefore: live processes in the pgid, or with the token in
//! `/proc/<pid>/environ`, plus all their descendants. Unlike `cgroup.kill`
//! this is not atomic against forks, so killing repeats until nothing is found.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::super::procfs::{self, Stat};
use super::super::TOKEN_ENV;

/// What we persist in `<state_dir>/run/<service>@<generation>.json` so a
/// later agent can find what this one started.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    token: String,
    pgid: i32,
}

/// One service generation's process group.
#[derive(Debug)]
pub(crate) struct PgroupGroup {
    token: String,
    entry: Vec<u8>,
    pgid: OnceLock<i32>,
    record: PathBuf,
}

impl PgroupGroup {
    pub fn new(token: String, record: PathBuf) -> Self {
        let entry = format!("{TOKEN_ENV}={token}").into_bytes();
        Self {
            token,
            entry,
            pgid: OnceLock::new(),
            record,
        }
    }

    /// Called once the main process exists (its pid is the pgid, thanks to
    /// `setsid` in the child); persists the record.
    pub fn set_main(&self, pid: i32) -> io::Result<()> {
        let _ = self.pgid.set(pid);
        let rec = Record {
            token: self.token.clone(),
            pgid: pid,
        };
        if let Some(dir) = self.record.parent() {
            fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec(&rec).map_err(io::Error::other)?;
        fs::write(&self.record, json)
    }

    pub fn members(&self) -> Vec<i32> {
        let pgid = self.pgid.get().copied();
        find(|pid, stat| Some(stat.pgid) == pgid || procfs::has_env_entry(pid, &self.entry))
    }

    pub fn signal_all(&self, sig: Signal) {
        if let Some(pgid) = self.pgid.get() {
            let _ = killpg(Pid::from_raw(*pgid), sig);
        }
        for pid in self.members() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members().is_empty()
    }

    pub fn remove(&self) {
        if let Err(e) = fs::remove_file(&self.record) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(path = %self.record.display(), error = %e, "cannot remove run record");
            }
        }
    }
}

/// Live processes matching `seed`, plus all their live descendants. Never
/// includes the agent itself or init.
fn find(seed: impl Fn(i32, &Stat) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let stats: HashMap<i32, Stat> = procfs::all_pids()
        .into_iter()
        .filter(|p| *p != me && *p > 1)
        .filter_map(|p| procfs::stat(p).map(|s| (p, s)))
        .filter(|(_, s)| !s.is_dead())
        .collect();
    let mut members: HashSet<i32> = stats
        .iter()
        .filter(|(p, s)| seed(**p, s))
        .map(|(p, _)| *p)
        .collect();
    // Descendants that dropped the token (e.g. exec with a clean environment).
    loop {
        let more: Vec<i32> = stats
            .iter()
            .filter(|(p, s)| !members.contains(*p) && members.contains(&s.ppid))
            .map(|(p, _)| *p)
            .collect();
        if more.is_empty() {
            break;
        }
        members.extend(more);
    }
    let mut v: Vec<i32> = members.into_iter().collect();
    v.sort_unstable();
    v
}

/// Kills every process whose token belongs to `machine_id` (from any earlier
/// agent), and any process in a recorded process group, then deletes the
/// records in `run_dir`.
pub(crate) fn kill_leftovers(machine_id: &str, run_dir: &Path) {
    let prefix = format!("{machine_id}/");
    let mut pgids = Vec::new();
    let mut records = Vec::new();
    if let Ok(entries) = fs::read_dir(run_dir) {
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "json") {
                let rec = fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Record>(&b).ok());
                // Only trust the pgid if the record is ours; a pid may be reused
                // by then, so we also require that its leader still carries the token.
                if let Some(rec) = rec {
                    let entry = format!("{TOKEN_ENV}={}", rec.token).into_bytes();
                    if rec.token.starts_with(&prefix) && procfs::has_env_entry(rec.pgid, &entry) {
                        pgids.push(rec.pgid);
                    }
                }
                records.push(path);
            }
        }
    }
    let matches = |pid: i32, stat: &Stat| {
        pgids.contains(&stat.pgid)
            || procfs::env_value(pid, TOKEN_ENV).is_some_and(|t| t.starts_with(&prefix))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = find(matches);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            warn!(pids = ?left, "leftover processes survive SIGKILL");
            break;
        }
        warn!(pids = ?left, "killing leftovers of a previous agent");
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for path in records {
        debug!(path = %path.display(), "removing stale run record");
        let _ = fs::remove_file(path);
    }
}
