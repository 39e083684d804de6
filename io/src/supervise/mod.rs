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
//! # Containment
//!
//! * **cgroup v2** (preferred): one cgroup per service generation at
//!   `<services dir>/<service>@<generation>`, where the services dir is the
//!   agent's own cgroup when it is delegated to it (systemd's `Delegate=yes`;
//!   the agent moves into its `agent/` child) and
//!   `<cgroup2 mount>/pop/<machine_id>` otherwise. The child joins
//!   it in `pre_exec`, before exec, so nothing escapes. Kill = `cgroup.kill`;
//!   empty = `populated 0` in `cgroup.events` (polled every 50 ms).
//! * **process group + subreaper** (fallback): the agent is a child subreaper,
//!   the main process calls `setsid`, and every process gets
//!   `POP_SUPERVISION_TOKEN=<machine_id>/<service>/<generation>` in its
//!   environment. Members are processes in the pgid or carrying the token,
//!   plus their descendants; killing repeats until none is left.
//!
//! # Exit semantics
//!
//! `Exited` is sent once per generation, when the main process has exited
//! *and* the containment is empty, carrying the main process's status. If the
//! main process exits by itself, leftovers get SIGTERM and, after
//! [`SupervisorConfig::exit_grace`], SIGKILL.
//!
//! # Run records
//!
//! Right after a spawn, `<state_dir>/run/<service>@<generation>.json`
//! ([`RunRecord`]) is written atomically: main pid, its start time (field 22
//! of `/proc/<pid>/stat`), the boot id, token, containment (cgroup directory
//! or pgid), spawn time, exit grace, the port once the readiness probe has
//! found it, and [`ProcessSpec::note`] verbatim. It is deleted just before the
//! generation's `Exited` is sent.
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
//! This blocks `new` briefly (at most ~5 s per stubborn cgroup). A cgroup is
//! only ever found by its expected name, never by a path read from a record.
//!
//! # Reaping
//!
//! `waitpid(-1)` is called only by this module's reaper (SIGCHLD stream plus a
//! slow periodic sweep). The rest of the process must not wait for children
//! itself (no `tokio::process`, no `std::process::Child::wait`): the reaper
//! would steal their statuses.
//!
//! # Logs
//!
//! A service's stdout and stderr are its [`log_path`] file itself, opened
//! with `O_APPEND` (stdin is `/dev/null`), so the service never depends on the
//! agent to get its output out, and an adopted one keeps writing to the same
//! file. Each run is framed by `--- pop: started ...` (written by the child
//! before exec, so it precedes all output) and `--- pop: exited ...` lines;
//! adoption adds `--- pop: adopted ...`. Rotation is copy-truncate, checked
//! every second and before each spawn: a file over
//! [`SupervisorConfig::log_max_bytes`] is copied to `.1` (older ones shifted,
//! [`SupervisorConfig::log_keep`] kept) and truncated. Output written between
//! the end of the copy and the truncation is lost, and a file may exceed the
//! limit by one check interval's worth of output.

mod adopt;
mod containment;
mod instance;
mod launch;
mod logs;
mod procfs;
mod readiness;
mod reaper;
mod record;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use self::adopt::AdoptedProcess;
use self::containment::{Backend, Group};
use self::instance::{Instance, Table};
pub use self::logs::log_path;
use self::logs::Logs;
use self::record::RunFile;
pub use self::record::{RecordContainment, RunRecord};

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
    /// every second and before each spawn; 0: never).
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
}

/// Where a one-off process's output goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFiles {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// How the main process ended: the core's type, so events pass through unchanged.
pub use pop_core::ExitStatus;

/// Starts a helper program of the agent's own (a step of a Python environment build)
/// as a child whose exit the reaper reports: its pid, and where its status arrives. The
/// reaper must be running (a [`Supervisor`] exists).
pub fn spawn_helper(
    cmd: &mut std::process::Command,
) -> io::Result<(u32, tokio::sync::oneshot::Receiver<ExitStatus>)> {
    reaper::spawn_registered(cmd)
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
    #[error("{service} generation {generation} is already running")]
    AlreadyRunning { service: String, generation: u64 },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SuperviseError {
    let context = context.into();
    move |source| SuperviseError::Io { context, source }
}

/// Runs and contains service processes. See the module docs.
pub struct Supervisor {
    config: SupervisorConfig,
    kind: ContainmentKind,
    backend: Backend,
    events: UnboundedSender<SupervisorEvent>,
    table: Table,
    logs: Logs,
    adopted: Vec<AdoptedProcess>,
    reaper: JoinHandle<()>,
    rotator: JoinHandle<()>,
}

impl Supervisor {
    /// Picks the containment, starts the reaper, adopts the generations an
    /// earlier agent with the same `machine_id` left running (see
    /// [`Supervisor::take_adopted`]) and kills its other leftovers. Must run
    /// inside a tokio runtime.
    pub fn new(
        config: SupervisorConfig,
        events: UnboundedSender<SupervisorEvent>,
    ) -> Result<Self, SuperviseError> {
        tokio::runtime::Handle::try_current().map_err(|_| SuperviseError::NoRuntime)?;
        let (backend, kind) = Backend::select(&config)?;
        // Before any spawn, so no SIGCHLD is missed.
        let reaper = reaper::start().map_err(io_err("cannot start the reaper"))?;
        for sub in ["logs", "run"] {
            let dir = config.state_dir.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        let adoptees = adopt::recover(&backend, &config, &config.state_dir.join("run"));
        let logs: Logs = Arc::default();
        let rotator = logs::start_rotator(Arc::clone(&logs));
        let mut sup = Self {
            config,
            kind,
            backend,
            events,
            table: Arc::new(Mutex::new(HashMap::new())),
            logs,
            adopted: Vec::new(),
            reaper,
            rotator,
        };
        for a in adoptees {
            sup.supervise_adopted(a);
        }
        info!(machine = %sup.config.machine_id, containment = %sup.kind, adopted = sup.adopted.len(), "supervisor started");
        Ok(sup)
    }

    pub fn containment(&self) -> &ContainmentKind {
        &self.kind
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
        let report = a.report();
        let rec = a.record;
        let log = match self.log_for(&rec.service) {
            Ok(log) => Some(log),
            Err(e) => {
                warn!(service = %rec.service, error = %e, "cannot open log of adopted service");
                None
            }
        };
        if let Some(log) = &log {
            logs::lock(log).marker(&format!(
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
            record: Some(Arc::new(RunFile::existing(a.path, rec.clone()))),
            events: self.events.clone(),
            table: Arc::clone(&self.table),
            exit_grace: Duration::from_millis(rec.exit_grace_ms),
            probe: None,
        }
        .start(exit);
        self.adopted.push(report);
    }

    /// Starts a generation; the outcome arrives as `Spawned` or `SpawnFailed`.
    pub fn spawn(&mut self, spec: ProcessSpec) {
        let (service, generation) = (spec.service.clone(), spec.generation);
        if let Err(e) = self.try_spawn(spec) {
            warn!(%service, generation, error = %e, "spawn failed");
            let _ = self.events.send(SupervisorEvent::SpawnFailed {
                service,
                generation,
                error: e.to_string(),
            });
        }
    }

    fn try_spawn(&mut self, spec: ProcessSpec) -> Result<(), SuperviseError> {
        if spec.argv.is_empty() {
            return Err(SuperviseError::EmptyArgv);
        }
        let key = (spec.service.clone(), spec.generation);
        if instance::lock(&self.table).contains_key(&key) {
            return Err(SuperviseError::AlreadyRunning {
                service: key.0,
                generation: key.1,
            });
        }
        let token = format!(
            "{}/{}/{}",
            self.config.machine_id, spec.service, spec.generation
        );
        if let Some(output) = &spec.output {
            return self.spawn_one_off(&spec, output, &token);
        }
        let log = self.log_for(&spec.service)?;
        logs::check(&log);
        let group = self
            .backend
            .new_group(&spec.service, spec.generation, &token)
            .map_err(io_err("cannot create containment"))?;
        let group = Arc::new(group);
        let started_at_ms = record::now_ms();
        let (pid, exit_rx) = match launch::launch(&spec, &token, &group, &log, started_at_ms) {
            Ok(x) => x,
            Err(e) => {
                logs::lock(&log).marker(&format!(
                    "generation {} failed to start: {e}",
                    spec.generation
                ));
                group.remove();
                return Err(e);
            }
        };
        group.set_main(pid);
        let exit_grace = spec.exit_grace.unwrap_or(self.config.exit_grace);
        let record = self.write_record(&spec, pid, &token, &group, started_at_ms, exit_grace);
        info!(service = %spec.service, generation = spec.generation, pid, containment = %group.describe(), "spawned");
        let _ = self.events.send(SupervisorEvent::Spawned {
            service: spec.service.clone(),
            generation: spec.generation,
            pid,
        });
        let exit = Box::pin(async move {
            // A dropped sender cannot happen short of a reaper bug; report
            // an unknown status rather than hang.
            exit_rx.await.unwrap_or(ExitStatus {
                code: None,
                signal: None,
            })
        });
        Instance {
            service: spec.service,
            generation: spec.generation,
            pid,
            group,
            log: Some(log),
            record,
            events: self.events.clone(),
            table: Arc::clone(&self.table),
            exit_grace,
            probe: spec.probe,
        }
        .start(exit);
        Ok(())
    }

    /// Starts a one-off process (see [`ProcessSpec::output`]): contained like a
    /// service, its output to its own files, no record.
    fn spawn_one_off(
        &mut self,
        spec: &ProcessSpec,
        output: &OutputFiles,
        token: &str,
    ) -> Result<(), SuperviseError> {
        let open = |path: &PathBuf| {
            fs::File::create(path).map_err(io_err(format!("cannot create {}", path.display())))
        };
        let (stdout, stderr) = (open(&output.stdout)?, open(&output.stderr)?);
        let group = self
            .backend
            .new_group(&spec.service, spec.generation, token)
            .map_err(io_err("cannot create containment"))?;
        let group = Arc::new(group);
        let (pid, exit_rx) = match launch::launch_to(spec, token, &group, stdout, stderr, None) {
            Ok(x) => x,
            Err(e) => {
                group.remove();
                return Err(e);
            }
        };
        group.set_main(pid);
        info!(service = %spec.service, generation = spec.generation, pid, containment = %group.describe(), "spawned");
        let _ = self.events.send(SupervisorEvent::Spawned {
            service: spec.service.clone(),
            generation: spec.generation,
            pid,
        });
        let exit = Box::pin(async move {
            exit_rx.await.unwrap_or(ExitStatus {
                code: None,
                signal: None,
            })
        });
        Instance {
            service: spec.service.clone(),
            generation: spec.generation,
            pid,
            group,
            log: None,
            record: None,
            events: self.events.clone(),
            table: Arc::clone(&self.table),
            exit_grace: spec.exit_grace.unwrap_or(self.config.exit_grace),
            probe: None,
        }
        .start(exit);
        Ok(())
    }

    /// Writes the run record of a generation just spawned. Without one, the
    /// generation cannot be adopted (a later agent kills it instead).
    fn write_record(
        &self,
        spec: &ProcessSpec,
        pid: u32,
        token: &str,
        group: &Group,
        started_at_ms: u64,
        exit_grace: Duration,
    ) -> Option<Arc<RunFile>> {
        let path = record::record_path(
            &self.config.state_dir.join("run"),
            &spec.service,
            spec.generation,
        );
        let (Some(stat), Some(boot_id)) = (procfs::stat(pid as i32), procfs::boot_id()) else {
            warn!(service = %spec.service, pid, "cannot identify the process; no run record");
            return None;
        };
        let rec = RunRecord {
            service: spec.service.clone(),
            generation: spec.generation,
            pid,
            start_ticks: stat.start_ticks,
            boot_id,
            token: token.to_string(),
            containment: group.record_containment(pid),
            started_at_ms,
            exit_grace_ms: u64::try_from(exit_grace.as_millis()).unwrap_or(u64::MAX),
            port: None,
            note: spec.note.clone(),
        };
        match RunFile::create(path, rec) {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                warn!(service = %spec.service, error = %e, "cannot write run record");
                None
            }
        }
    }

    fn log_for(&mut self, service: &str) -> Result<logs::SharedLog, SuperviseError> {
        logs::get_or_open(
            &self.logs,
            &self.config.state_dir,
            service,
            self.config.log_max_bytes,
            self.config.log_keep,
        )
        .map_err(io_err(format!(
            "cannot open {}",
            log_path(&self.config.state_dir, service).display()
        )))
    }

    /// SIGTERM to every process of the generation, SIGKILL to all after
    /// `grace`; `Exited` follows once all are gone. Unknown generations are ignored.
    pub fn stop(&mut self, service: &str, generation: u64, grace: Duration) {
        let table = instance::lock(&self.table);
        match table.get(&(service.to_string(), generation)) {
            Some(h) => {
                let _ = h.stop.send(grace);
            }
            None => info!(%service, generation, "stop: not running"),
        }
    }

    /// `(service, generation, main pid)` of every generation not yet
    /// `Exited`, adopted ones included.
    pub fn running(&self) -> Vec<(String, u64, u32)> {
        let mut v: Vec<_> = instance::lock(&self.table)
            .iter()
            .map(|((s, g), h)| (s.clone(), *g, h.pid))
            .collect();
        v.sort();
        v
    }

    /// Stops everything and waits until every generation has exited.
    pub async fn shutdown(&mut self, grace: Duration) {
        for (service, generation, _) in self.running() {
            self.stop(&service, generation, grace);
        }
        // Bounded, in case a process is stuck in uninterruptible sleep.
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(30);
        while !instance::lock(&self.table).is_empty() {
            if tokio::time::Instant::now() >= deadline {
                warn!(left = ?self.running(), "shutdown: generations still running");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.rotator.abort();
        if let ContainmentKind::Cgroup(dir) = &self.kind {
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
        for (_, h) in instance::lock(&self.table).drain() {
            if let Some(t) = h.task {
                t.abort();
            }
        }
        self.rotator.abort();
        self.reaper.abort();
        info!(machine = %self.config.machine_id, "supervisor detached; services keep running");
    }
}
