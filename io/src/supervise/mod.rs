//! Process supervision: run each service's process tree contained, so that
//! stopping a service stops everything it started, with no orphans (not a
//! grandchild that ignores SIGTERM, not a `setsid` child, not a double-forked
//! daemon).
//!
//! # API
//!
//! ```text
//! Supervisor::new(SupervisorConfig, UnboundedSender<SupervisorEvent>) -> Result<Supervisor, SuperviseError>
//! Supervisor::containment(&self) -> &ContainmentKind
//! Supervisor::take_adopted(&mut self) -> Vec<AdoptedProcess>  // what `new` adopted
//! Supervisor::spawn(&mut self, ProcessSpec)                 // -> Spawned | SpawnFailed
//! Supervisor::stop(&mut self, service, generation, grace)   // TERM, KILL after grace, -> Exited
//! Supervisor::running(&self) -> Vec<(String, u64, u32)>     // (service, generation, main pid)
//! Supervisor::shutdown(&mut self, grace).await              // stop all, wait until all gone
//! Supervisor::detach(self)                                  // leave everything running
//! log_path(state_dir, service) -> PathBuf
//! ```
//!
//! # Contract
//!
//! For every [`Supervisor::spawn`], exactly one of `Spawned` (the program was exec'd in
//! its containment, and its run record is on disk) or `SpawnFailed` (nothing of it
//! runs, or what runs is being removed); after `Spawned`, exactly one `Exited`, sent
//! only once the main process has exited *and* nothing is left in its containment.
//! [`Supervisor::stop`] sends SIGTERM to everything the generation started, and
//! SIGKILL after the grace to what is left (a process the kernel cannot kill, e.g. in
//! a frozen cgroup, holds up only its own `Exited`). No service's spawn, stop or exit
//! waits for another's: whatever can block (reclaiming or removing a cgroup, scans of
//! /proc, log rotation, run records' removal) runs on the blocking pool. Exits are
//! reported as they happen (pidfd, SIGCHLD, inotify), not found by polling.
//!
//! What can be lost, or be late:
//! * the exit status of a main process that exits while no agent runs: the next agent
//!   does not adopt its generation (its pid is gone) and removes its traces, so no
//!   `Exited` is ever sent for it, and its log has no `--- pop: exited` line; an
//!   adopted main process's exit is reported with an unknown status (it is not our
//!   child);
//! * service output written between the copy and the truncation of a log rotation
//!   (see Logs);
//! * in process-group mode, a descendant that left the process group, was reparented
//!   (its parent exited) and exec'd without [`TOKEN_ENV`] in its environment is no
//!   longer recognised as the service's: it is neither waited for nor killed (cgroups
//!   have no such hole);
//! * an exit told only by SIGCHLD (no pidfd: not x86-64, or past the pidfd budget)
//!   whose signal another runtime consumed is found by the reaper's sweep, up to 5 s
//!   late; leftovers that cannot be watched (no inotify watch, more than 64 leftover
//!   pids) are looked for every 100 ms while they exist.
//!
//! # Containment
//!
//! * **cgroup v2** (preferred): one cgroup per service generation at
//!   `<services dir>/<service>@<generation>`, where the services dir is the
//!   agent's own cgroup when it is delegated to it (systemd's `Delegate=yes`;
//!   the agent moves into its `agent/` child) and
//!   `<cgroup2 mount>/pop/<machine_id>` otherwise. The child is created in it
//!   (`clone3` with `CLONE_INTO_CGROUP`; where that is unavailable it joins it
//!   itself before exec), so nothing escapes. Kill = `cgroup.kill`; empty =
//!   `populated 0` in `cgroup.events`.
//! * **process group + subreaper** (fallback): the agent is a child subreaper,
//!   the main process calls `setsid`, and every process gets
//!   `POP_SUPERVISION_TOKEN=<machine_id>/<service>/<generation>` in its
//!   environment. Members are processes in the pgid or carrying the token,
//!   plus their descendants (found by scanning /proc, on the blocking pool);
//!   KILL is repeated at each look until none is left.
//!
//! # Exit semantics
//!
//! `Exited` is sent once per generation, when the main process has exited
//! *and* the containment is empty, carrying the main process's status. If the
//! main process exits by itself, leftovers get SIGTERM and, after
//! [`SupervisorConfig::exit_grace`], SIGKILL.
//!
//! Nothing is polled. The main process's exit comes from its pidfd (on x86-64 a
//! spawned main process has one, while the open-file budget allows; an adopted one
//! always has), else from the reaper's SIGCHLD; emptiness is checked right after it, and only if
//! something is left is the containment watched: `cgroup.events` through one
//! inotify instance shared by all generations, or the leftovers' pidfds in
//! process-group mode (then the group is scanned again). Where inotify (or a
//! watch) or pidfds are unavailable, a 100 ms timer stands in, still only while
//! leftovers exist. A running service therefore costs no CPU while idle.
//!
//! `Exited` is sent *before* the generation's run record and cgroup are removed
//! (on the blocking pool), so that a restart does not wait for clean-up; the
//! generation is no longer [`Supervisor::running`] then, and
//! [`Supervisor::shutdown`] waits for the clean-up too. This is safe for adoption
//! whenever the agent dies: the clean-up only removes the traces of a
//! generation whose processes are all gone, and a later agent treats such traces
//! as stale (a record whose main process is not running is not adopted, and an
//! unadopted record and cgroup are removed), so whether the agent dies before
//! `Exited`, between `Exited` and the clean-up, or during it, the next agent
//! adopts exactly the generations still running. The cgroup of an exited
//! generation is never used again, so nothing can land in it meanwhile.
//!
//! A spawn returns once the program is exec'd; a cgroup that an earlier run of
//! the same generation left behind is emptied (up to ~5 s) on the blocking pool
//! first, while the generation is already stoppable. After a failed spawn its
//! cgroup is removed on the blocking pool, just after `SpawnFailed`.
//!
//! # Run records
//!
//! Right after a spawn of a service's generation (not of a one-off: see
//! [`ProcessSpec::output`]), before `Spawned` is sent,
//! `<state_dir>/run/<service>@<generation>.json`
//! ([`RunRecord`]) is written atomically: main pid, its start time (field 22
//! of `/proc/<pid>/stat`), the boot id, token, containment (cgroup directory
//! or pgid), spawn time, exit grace, the port once the readiness probe has
//! found it, and [`ProcessSpec::note`] verbatim. It is deleted just after the
//! generation's `Exited` is sent (see above).
//!
//! # Adoption and leftovers
//!
//! When an agent dies (kill -9) or [`Supervisor::detach`]es (`pop stop
//! --keep-services`, an upgrade), its services keep running. The next
//! [`Supervisor::new`] with the same `machine_id` and state directory
//! *adopts* a recorded generation iff it is provably the same process: same
//! boot id, main pid alive and not a zombie, same start time, still in its
//! containment (listed in its cgroup's `cgroup.procs`, or carrying its token),
//! and the record is this machine's and matches the containment now in use.
//! Adopted generations are supervised like spawned ones (`stop`, `running`,
//! `shutdown`, `Exited`, TERM/KILL of leftovers after the recorded grace when
//! the main process exits by itself), except that they are not our children:
//! the main process's exit is learnt from a pidfd and reported as an unknown
//! status, and there is no readiness probe (the recorded port is reported by
//! [`Supervisor::take_adopted`]). In process-group mode an adopted
//! generation's new orphans are reparented to init, not to the new agent;
//! they are still found by their token.
//!
//! Everything else earlier agents left is killed (SIGKILL) before `new`
//! returns, so the core starts it afresh: processes of records that fail a
//! check (killed with their cgroup, or their process group if its leader
//! still carries the token), every other cgroup under the services dir (but
//! the agent's `agent/`) and `<mount>/pop/<machine_id>/` (then removed), and
//! every process whose token
//! starts with `<machine_id>/` but is not an adopted generation's. Then the
//! records of what was not adopted, unreadable ones included, are deleted.
//! This blocks `new` briefly: all is killed first, then waited for, at most
//! ~5 s in all (the driver runs `new` on the blocking pool). A cgroup is
//! only ever found by its expected name, never by a path read from a record.
//!
//! # Reaping
//!
//! `waitpid(-1)` is called only by this module's reaper (SIGCHLD stream plus a
//! slow periodic sweep, every 5 s); a main process with a pidfd is reaped by its
//! task as soon as the pidfd says it exited, under the reaper's lock. The rest of
//! the process must not wait for children itself (no `tokio::process`, no
//! `std::process::Child::wait`): the reaper would steal their statuses.
//!
//! # Logs
//!
//! A service's stdout and stderr are its [`log_path`] file itself, opened
//! with `O_APPEND` (stdin is `/dev/null`), so the service never depends on the
//! agent to get its output out, and an adopted one keeps writing to the same
//! file. Each run is framed by `--- pop: started ...` (written by the child
//! before exec, so it precedes all output) and `--- pop: exited ...` lines
//! (written before `Exited` is sent, so it precedes the next run's start);
//! adoption adds `--- pop: adopted ...`. The supervisor keeps no descriptor of
//! a log open. Rotation is copy-truncate: about a second after a running
//! service's log is written (an inotify watch, then a 1 s debounce; without a
//! watch, every 5 s), a file over [`SupervisorConfig::log_max_bytes`] is copied
//! to `.1` (older ones shifted, [`SupervisorConfig::log_keep`] kept) and
//! truncated, on the blocking pool. Output written between the end of the copy
//! and the truncation is lost (a marker too), and a file may exceed the limit
//! by what is written in that second (5 s without a watch).
//!
//! # Open files
//!
//! [`Supervisor::new`] raises the soft `RLIMIT_NOFILE` to the hard limit; each
//! service gets the soft limit the agent started with back before exec. The
//! supervisor holds no log descriptor. It holds a pidfd per running main process
//! it spawned, while those stay under half the limit (beyond, only SIGCHLD tells
//! of their exits, which needs none), one per adopted one, a few while spawning, and
//! pidfds of a process-group generation's leftovers (at most 64 each) while they
//! are waited for.

mod adopt;
mod containment;
mod credentials;
mod fdlimit;
mod instance;
mod launch;
mod logs;
mod pidfd;
mod procfs;
mod readiness;
mod reaper;
mod record;
mod spawn;
mod start;
mod stop;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use self::adopt::AdoptedProcess;
use self::containment::Backend;
use self::instance::{Instance, Phase};
pub use self::logs::log_path;
use self::logs::Logs;
use self::record::RunFile;
pub use self::record::{RecordContainment, RunRecord};
pub use self::spawn::{ChildStep, SpawnError};
use self::start::Shared;
use self::watch::Watcher;

/// Environment variable that marks every process of a service generation.
pub const TOKEN_ENV: &str = "POP_SUPERVISION_TOKEN";

/// The containment actually in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainmentKind {
    /// cgroup v2; the path is the services dir: the agent's delegated cgroup, or
    /// `<mount>/pop/<machine_id>`.
    Cgroup(PathBuf),
    ProcessGroup,
}

impl fmt::Display for ContainmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainmentKind::Cgroup(p) => write!(f, "cgroup-v2 ({})", p.display()),
            ContainmentKind::ProcessGroup => f.write_str("process-group+subreaper"),
        }
    }
}

/// Which containment to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainmentChoice {
    /// cgroup v2 if usable, else process group.
    #[default]
    Auto,
    /// cgroup v2 or fail.
    Cgroup,
    ProcessGroup,
}

#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Safe path component; scopes cgroups, tokens and leftover cleanup.
    pub machine_id: String,
    /// Holds `logs/` and `run/`.
    pub state_dir: PathBuf,
    pub containment: ContainmentChoice,
    /// Copy-truncate a service log once it is over this many bytes (checked
    /// about a second after it is written; 0: never).
    pub log_max_bytes: u64,
    /// Number of rotated files kept (`.1` .. `.N`).
    pub log_keep: u32,
    /// Grace between TERM and KILL for leftovers when the main process exits by itself.
    pub exit_grace: Duration,
}

impl SupervisorConfig {
    /// Defaults: 10 MiB logs keeping 3, 10 s exit grace.
    pub fn new(
        machine_id: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        containment: ContainmentChoice,
    ) -> Self {
        Self {
            machine_id: machine_id.into(),
            state_dir: state_dir.into(),
            containment,
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
            exit_grace: Duration::from_secs(10),
        }
    }
}

/// TCP readiness check. `port == 0` means "discover the port the service listens on".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessProbe {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub service: String,
    pub generation: u64,
    /// `argv[0]` is the program (looked up in `PATH`).
    pub argv: Vec<String>,
    /// Added to the agent's environment.
    pub env: BTreeMap<String, String>,
    /// Left out of the agent's environment (before `env` is added).
    #[serde(default)]
    pub unset: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub probe: Option<ReadinessProbe>,
    /// TERM-to-KILL grace for leftovers when the main process exits by itself
    /// (the service's `stop_timeout`); `None`: [`SupervisorConfig::exit_grace`].
    pub exit_grace: Option<Duration>,
    /// Opaque to the supervisor: copied into the run record and handed back
    /// in [`AdoptedProcess::note`] if a later agent adopts the generation
    /// (the driver keeps the service's settings here).
    #[serde(default)]
    pub note: serde_json::Value,
    /// A one-off process (a task): stdout and stderr go to these files
    /// (created or truncated) instead of the service's log, without markers,
    /// and no run record is written, so a later agent kills it at its start
    /// instead of adopting it.
    #[serde(default)]
    pub output: Option<OutputFiles>,
    /// The user and group it runs as (`None`: the agent's): resolved when it is
    /// launched; an agent that is not root refuses it (`SpawnFailed`).
    #[serde(default)]
    pub run_as: Option<pop_core::settings::RunAs>,
}

/// Where a one-off process's output goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFiles {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// How the main process ended: the core's type, so events pass through unchanged.
pub use pop_core::ExitStatus;

pub use credentials::CredentialsError;

/// Starts a helper program of the agent's own (a step of a Python environment build)
/// as a child whose exit the reaper reports: its pid, and where its status arrives. The
/// reaper must be running (a [`Supervisor`] exists).
pub fn spawn_helper(
    cmd: &mut std::process::Command,
) -> io::Result<(u32, tokio::sync::oneshot::Receiver<ExitStatus>)> {
    // The std `Child` is dropped without waiting: the reaper owns the status (learnt
    // from SIGCHLD: no pidfd for these rare, long steps).
    let (child, status) = reaper::spawn_registered(|| {
        cmd.spawn().map(|child| spawn::Child {
            pid: child.id(),
            pidfd: None,
        })
    })?;
    Ok((child.pid, status))
}

/// What the supervisor reports: the core's process inputs (`Spawned`, `SpawnFailed`,
/// `Ready` when the spec had a probe, and `Exited` once the main process has exited and
/// the containment is empty), so the driver passes them on unchanged.
pub type SupervisorEvent = pop_core::Input;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("the supervisor must be created inside a tokio runtime")]
    NoRuntime,
    #[error("cgroup v2 is not usable: {0}")]
    CgroupUnavailable(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("empty argv")]
    EmptyArgv,
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: SpawnError,
    },
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error("{service} generation {generation} is already running")]
    AlreadyRunning { service: String, generation: u64 },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SuperviseError {
    let context = context.into();
    move |source| SuperviseError::Io { context, source }
}

/// Runs and contains service processes. See the module docs.
pub struct Supervisor {
    shared: Arc<Shared>,
    adopted: Vec<AdoptedProcess>,
    reaper: JoinHandle<()>,
}

impl Supervisor {
    /// Picks the containment, starts the reaper, adopts the generations an
    /// earlier agent with the same `machine_id` left running (see
    /// [`Supervisor::take_adopted`]) and kills its other leftovers, raises the
    /// open-file limit. Must run inside a tokio runtime; blocks while leftovers are
    /// killed (run it on the blocking pool where that matters).
    pub fn new(
        config: SupervisorConfig,
        events: UnboundedSender<SupervisorEvent>,
    ) -> Result<Self, SuperviseError> {
        tokio::runtime::Handle::try_current().map_err(|_| SuperviseError::NoRuntime)?;
        let nofile = fdlimit::raise();
        let (backend, kind) = Backend::select(&config)?;
        // Before any spawn, so no SIGCHLD is missed.
        let reaper = reaper::start().map_err(io_err("cannot start the reaper"))?;
        // Run records hold settings: their directory is the agent's user's alone.
        for (sub, private) in [("logs", false), ("run", true)] {
            let dir = config.state_dir.join(sub);
            let created = if private {
                crate::state_dir::create(&dir)
            } else {
                fs::create_dir_all(&dir)
            };
            created.map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        let adoptees = adopt::recover(&backend, &config, &config.state_dir.join("run"));
        let watcher = Arc::new(Watcher::start());
        let logs = Logs::new(
            config.state_dir.clone(),
            config.log_max_bytes,
            config.log_keep,
            Arc::clone(&watcher),
        );
        let mut sup = Self {
            shared: Arc::new(Shared {
                config,
                kind,
                backend,
                events,
                table: Arc::default(),
                logs,
                watcher,
                scanner: Arc::default(),
            }),
            adopted: Vec::new(),
            reaper,
        };
        for a in adoptees {
            sup.supervise_adopted(a);
        }
        info!(machine = %sup.shared.config.machine_id, containment = %sup.shared.kind, adopted = sup.adopted.len(), ?nofile, "supervisor started");
        Ok(sup)
    }

    pub fn containment(&self) -> &ContainmentKind {
        &self.shared.kind
    }

    /// The generations [`Supervisor::new`] adopted (empty on later calls).
    /// They are running and supervised: [`Supervisor::stop`] and
    /// [`Supervisor::running`] cover them, and each one's `Exited` (with an
    /// unknown status: they are not our children) comes in due course, maybe
    /// already queued, so call this before handling events. No `Spawned` or
    /// `Ready` is sent for them; the recorded port is here instead.
    pub fn take_adopted(&mut self) -> Vec<AdoptedProcess> {
        std::mem::take(&mut self.adopted)
    }

    fn supervise_adopted(&mut self, a: adopt::Adoptee) {
        let shared = &self.shared;
        let report = a.report();
        let rec = a.record;
        let key = (rec.service.clone(), rec.generation);
        let Some(stop_rx) = shared.table.register(key, Phase::Running { pid: rec.pid }) else {
            warn!(service = %rec.service, generation = rec.generation, "adopted twice; ignoring the second");
            return;
        };
        let log = match shared.logs.get_or_open(&rec.service) {
            Ok(log) => Some(log),
            Err(e) => {
                warn!(service = %rec.service, error = %e, "cannot open log of adopted service");
                None
            }
        };
        if let Some(log) = &log {
            log.marker(&format!(
                "adopted pid {} (generation {}) at {}",
                rec.pid,
                rec.generation,
                record::now_ms() / 1000
            ));
        }
        let exit = adopt::exit_of(a.pidfd, rec.pid, rec.start_ticks);
        Instance {
            service: rec.service.clone(),
            generation: rec.generation,
            pid: rec.pid,
            group: Arc::new(a.group),
            log,
            record: Some(Arc::new(RunFile::existing(a.path))),
            events: shared.events.clone(),
            table: Arc::clone(&shared.table),
            watcher: Arc::clone(&shared.watcher),
            scanner: Arc::clone(&shared.scanner),
            exit_grace: Duration::from_millis(rec.exit_grace_ms),
            probe: None,
        }
        .start(exit, stop_rx);
        self.adopted.push(report);
    }

    /// Starts a generation; the outcome arrives as `Spawned` or `SpawnFailed`.
    /// Returns once the program has been exec'd (or has failed to), except when an
    /// earlier run of the same generation left its cgroup: that is emptied on the
    /// blocking pool first.
    pub fn spawn(&mut self, spec: ProcessSpec) {
        Shared::spawn(&self.shared, spec);
    }

    /// SIGTERM to every process of the generation, SIGKILL to all after
    /// `grace`; `Exited` follows once all are gone. Unknown generations are ignored.
    pub fn stop(&mut self, service: &str, generation: u64, grace: Duration) {
        let table = self.shared.table.lock();
        match table.get(&(service.to_string(), generation)) {
            Some(h) if h.phase != Phase::CleaningUp => {
                h.stop.send(grace);
            }
            _ => info!(%service, generation, "stop: not running"),
        }
    }

    /// `(service, generation, main pid)` of every generation not yet
    /// `Exited`, adopted ones included.
    pub fn running(&self) -> Vec<(String, u64, u32)> {
        let mut v: Vec<_> = self
            .shared
            .table
            .lock()
            .iter()
            .filter_map(|((s, g), h)| match h.phase {
                Phase::Running { pid } => Some((s.clone(), *g, pid)),
                Phase::Starting | Phase::CleaningUp => None,
            })
            .collect();
        v.sort();
        v
    }

    /// Stops everything and waits until every generation has exited and been
    /// cleaned up.
    pub async fn shutdown(&mut self, grace: Duration) {
        for h in self.shared.table.lock().values() {
            // Those starting get it as soon as they run; those cleaning up ignore it.
            h.stop.send(grace);
        }
        // Bounded, in case a process is stuck in uninterruptible sleep.
        let limit = grace + Duration::from_secs(30);
        if tokio::time::timeout(limit, self.shared.table.emptied())
            .await
            .is_err()
        {
            warn!(left = ?self.running(), "shutdown: generations still running");
        }
        if let ContainmentKind::Cgroup(dir) = &self.shared.kind {
            // Fails harmlessly if something is still in there.
            let _ = fs::remove_dir(dir);
        }
    }

    /// Stops supervising *without* touching the processes, their run records
    /// or their cgroups (`pop stop --keep-services`, an agent upgrade): they
    /// keep running and writing their logs, and the next `Supervisor::new`
    /// with this machine id and state directory adopts them. No further
    /// events are sent for them by this supervisor.
    pub fn detach(self) {
        for (_, h) in self.shared.table.lock().drain() {
            if let Some(t) = h.task {
                t.abort();
            }
        }
        self.shared.watcher.stop();
        self.reaper.abort();
        info!(machine = %self.shared.config.machine_id, "supervisor detached; services keep running");
    }
}
