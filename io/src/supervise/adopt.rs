//! Recovery at start-up: adopt the generations an earlier agent (killed, or
//! stopped with `--keep-services`) left running, kill everything else it left.
//!
//! A recorded generation is adopted only if its main process is provably the
//! one that was started: same boot, pid alive and not a zombie, same start
//! time (field 22 of `/proc/<pid>/stat`), and still in its containment (in its
//! cgroup's `cgroup.procs`, or carrying its token). The record must also be
//! this machine's and match the containment this agent uses. Anything else is
//! killed, so the core starts it again: never two copies, never an orphan.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tracing::{info, warn};

use super::containment::cgroup::CgroupGroup;
use super::containment::pgroup::PgroupGroup;
use super::containment::{Backend, Group};
use super::record::{self, RecordContainment, RunRecord};
use super::{pidfd, procfs};
use super::{ExitStatus, SupervisorConfig};

/// What the supervisor reports about each adopted generation; see
/// [`super::Supervisor::take_adopted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedProcess {
    pub service: String,
    pub generation: u64,
    /// The main process, unchanged since its spawn.
    pub pid: u32,
    /// Wall-clock spawn time, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The port its readiness probe had found, if any.
    pub port: Option<u16>,
    /// [`super::ProcessSpec::note`] of the spawn, verbatim.
    pub note: serde_json::Value,
}

/// A generation that passed every check, ready to be supervised.
pub(crate) struct Adoptee {
    pub record: RunRecord,
    pub path: PathBuf,
    pub group: Group,
    /// Opened *before* the checks, so it refers to the checked process.
    pub pidfd: OwnedFd,
}

impl Adoptee {
    pub fn report(&self) -> AdoptedProcess {
        let r = &self.record;
        AdoptedProcess {
            service: r.service.clone(),
            generation: r.generation,
            pid: r.pid,
            started_at_ms: r.started_at_ms,
            port: r.port,
            note: r.note.clone(),
        }
    }
}

/// Reads every run record, returns the generations to adopt, and kills
/// everything else earlier agents with this machine id left behind. Blocks
/// briefly: everything is killed at once, then waited for at most ~5 s in all.
pub(crate) fn recover(
    backend: &Backend,
    config: &SupervisorConfig,
    run_dir: &Path,
) -> Vec<Adoptee> {
    let boot_id = procfs::boot_id();
    let mut adopted: Vec<Adoptee> = Vec::new();
    let mut kill_pgids = Vec::new();
    let mut stale = Vec::new();
    let entries = fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok());
    for path in entries.map(|e| e.path()) {
        if path.extension().is_some_and(|e| e == "tmp") {
            // A write interrupted by a crash; the rename never happened.
            stale.push(path);
            continue;
        }
        if path.extension() != Some(OsStr::new("json")) {
            continue;
        }
        let rec = match record::read(&path) {
            Ok(rec) => rec,
            Err(e) => {
                // Its processes, if any, are found below by token and cgroup.
                warn!(path = %path.display(), error = %e, "unreadable run record; not adopting");
                stale.push(path);
                continue;
            }
        };
        match check(&rec, &path, backend, config, boot_id.as_deref()) {
            Ok(a) => {
                info!(service = %rec.service, generation = rec.generation, pid = rec.pid, "adopting a running generation");
                adopted.push(a);
            }
            Err(why) => {
                warn!(service = %rec.service, generation = rec.generation, pid = rec.pid, reason = %why, "not adopting; killing its processes");
                if let RecordContainment::Pgid(pgid) = rec.containment {
                    kill_pgids.push((pgid, rec.token));
                }
                stale.push(path);
            }
        }
    }
    let spared_cgroups: HashSet<PathBuf> = adopted
        .iter()
        .filter_map(|a| match &a.group {
            Group::Cgroup(g) => Some(g.dir().to_path_buf()),
            Group::Pgroup(_) => None,
        })
        .collect();
    let spared_tokens: HashSet<String> = adopted.iter().map(|a| a.record.token.clone()).collect();
    backend.kill_leftovers(config, &kill_pgids, &spared_cgroups, &spared_tokens);
    // Only once their processes are gone: a crash before this point leaves
    // the records for the next agent.
    for path in stale {
        record::remove(&path);
    }
    adopted
}

/// Every condition for adoption; the error says which one failed.
fn check(
    rec: &RunRecord,
    path: &Path,
    backend: &Backend,
    config: &SupervisorConfig,
    boot_id: Option<&str>,
) -> Result<Adoptee, String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if record::record_path(dir, &rec.service, rec.generation) != path {
        return Err("record name does not match its content".into());
    }
    let token = format!("{}/{}/{}", config.machine_id, rec.service, rec.generation);
    if rec.token != token {
        return Err(format!("token {:?} is not {token:?}", rec.token));
    }
    if boot_id != Some(rec.boot_id.as_str()) {
        return Err("recorded before a reboot".into());
    }
    let pid = i32::try_from(rec.pid)
        .ok()
        .filter(|p| *p > 1 && *p as u32 != std::process::id())
        .ok_or("invalid pid")?;
    let group = match (
        &rec.containment,
        backend.cgroup_dir(&rec.service, rec.generation),
    ) {
        (RecordContainment::Cgroup(dir), Some(expected)) if *dir == expected => {
            Group::Cgroup(CgroupGroup::existing(expected))
        }
        (RecordContainment::Pgid(pgid), None) if *pgid == pid => {
            let g = PgroupGroup::new(&token);
            g.set_main(pid);
            Group::Pgroup(g)
        }
        (c, _) => return Err(format!("containment {c:?} is not this agent's")),
    };
    // Opened before the checks: if they pass, the pid was not reused in
    // between, so the pidfd refers to the checked process.
    let pidfd = pidfd::open(pid).map_err(|e| format!("main process not running ({e})"))?;
    let stat = procfs::stat(pid).ok_or("main process not running")?;
    if stat.is_dead() {
        return Err("main process is a zombie".into());
    }
    if stat.start_ticks != rec.start_ticks {
        return Err(format!(
            "pid reused: start time {} is not the recorded {}",
            stat.start_ticks, rec.start_ticks
        ));
    }
    if !group.holds(rec.pid) {
        return Err("main process left its containment".into());
    }
    Ok(Adoptee {
        record: rec.clone(),
        path: path.to_path_buf(),
        group,
        pidfd,
    })
}

pub(crate) type ExitFuture = Pin<Box<dyn Future<Output = ExitStatus> + Send>>;

/// Resolves when the adopted main process exits. It is not our child, so
/// its status is unknown. Must be called inside the runtime.
pub(crate) fn exit_of(pidfd: OwnedFd, pid: u32, start_ticks: u64) -> ExitFuture {
    const UNKNOWN: ExitStatus = ExitStatus {
        code: None,
        signal: None,
    };
    // SAFETY: `OwnedFd` owns a valid descriptor, always returns it from
    // `as_raw_fd`, and closes it only when dropped along with the `AsyncFd`.
    match pidfd::exited(pidfd) {
        // A pidfd polls readable once the process has exited.
        Ok(exited) => Box::pin(async move {
            if let Err(e) = exited.await {
                warn!(pid, error = %e, "pidfd wait failed; polling /proc");
                poll_exit(pid, start_ticks).await;
            }
            UNKNOWN
        }),
        Err(e) => {
            warn!(pid, error = %e, "cannot watch pidfd; polling /proc");
            Box::pin(async move {
                poll_exit(pid, start_ticks).await;
                UNKNOWN
            })
        }
    }
}

async fn poll_exit(pid: u32, start_ticks: u64) {
    loop {
        match procfs::stat(pid as i32) {
            Some(s) if !s.is_dead() && s.start_ticks == start_ticks => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
