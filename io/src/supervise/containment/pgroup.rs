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
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tracing::warn;

use super::super::procfs::{self, Stat};
use super::super::TOKEN_ENV;
use super::scan;

/// One service generation's process group.
#[derive(Debug)]
pub(crate) struct PgroupGroup {
    entry: Vec<u8>,
    pgid: OnceLock<i32>,
}

impl PgroupGroup {
    pub fn new(token: &str) -> Self {
        Self {
            entry: token_entry(token),
            pgid: OnceLock::new(),
        }
    }

    /// Called once the main process exists (its pid is the pgid, thanks to
    /// `setsid` in the child, or as recorded for an adopted generation).
    pub fn set_main(&self, pid: i32) {
        let _ = self.pgid.set(pid);
    }

    pub fn pgid(&self) -> Option<i32> {
        self.pgid.get().copied()
    }

    /// `POP_SUPERVISION_TOKEN=<token>`, as the group's processes carry it.
    pub fn entry(&self) -> &[u8] {
        &self.entry
    }

    /// Whether `pid` carries this group's token.
    pub fn has_token(&self, pid: i32) -> bool {
        procfs::has_env_entry(pid, &self.entry)
    }

    /// Live members (a /proc scan of its own; see `scan` for sharing one).
    pub fn members(&self) -> Vec<i32> {
        scan::find_many(&[(self.pgid(), &self.entry)])
            .pop()
            .unwrap_or_default()
    }

    /// Signals the process group, and `members` (found by a scan).
    pub fn signal(&self, sig: Signal, members: &[i32]) {
        if let Some(pgid) = self.pgid.get() {
            let _ = killpg(Pid::from_raw(*pgid), sig);
        }
        for pid in members {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
    }
}

/// `POP_SUPERVISION_TOKEN=<token>`, as it appears in `/proc/<pid>/environ`.
fn token_entry(token: &str) -> Vec<u8> {
    format!("{TOKEN_ENV}={token}").into_bytes()
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
/// agent) except those of the `spared` tokens (adopted generations), and every
/// process in one of `pgids` whose leader still carries the token `pgids`
/// pairs it with (a pid may have been reused since it was recorded). Their
/// descendants go too.
pub(crate) fn kill_leftovers(machine_id: &str, pgids: &[(i32, String)], spared: &HashSet<String>) {
    let prefix = format!("{machine_id}/");
    let pgids: Vec<i32> = pgids
        .iter()
        .filter(|(pgid, token)| {
            !spared.contains(token) && procfs::has_env_entry(*pgid, &token_entry(token))
        })
        .map(|(pgid, _)| *pgid)
        .collect();
    let token_of = |pid: i32| procfs::env_value(pid, TOKEN_ENV);
    let matches = |pid: i32, stat: &Stat| {
        pgids.contains(&stat.pgid)
            || token_of(pid).is_some_and(|t| t.starts_with(&prefix) && !spared.contains(&t))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Never a process of an adopted generation, even as a descendant.
        let left: Vec<i32> = find(matches)
            .into_iter()
            .filter(|p| !token_of(*p).is_some_and(|t| spared.contains(&t)))
            .collect();
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
}
