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
//! Supervisor::spawn(&mut self, ProcessSpec)                 // -> Spawned | SpawnFailed
//! Supervisor::stop(&mut self, service, generation, grace)   // TERM, KILL after grace, -> Exited
//! Supervisor::running(&self) -> Vec<(String, u64, u32)>     // (service, generation, main pid)
//! Supervisor::shutdown(&mut self, grace).await              // stop all, wait until all gone
//! log_path(state_dir, service) -> PathBuf
//! ```
//!
//! # Containment
//!
//! * **cgroup v2** (preferred): one cgroup per service generation at
//!   `<cgroup2 mount>/pop/<machine_id>/<service>@<generation>`. The child joins
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
//! # Leftovers of a previous agent
//!
//! [`Supervisor::new`] kills (SIGKILL) what an earlier agent with the same
//! `machine_id` left behind: every process in a cgroup under
//! `<mount>/pop/<machine_id>/` (those cgroups are then removed), and every
//! process whose token starts with `<machine_id>/` or that is in a process
//! group recorded in `<state_dir>/run/<service>@<generation>.json` (records
//! are written in process-group mode and deleted when the generation exits).
//! This blocks `new` briefly (at most ~5 s per stubborn cgroup).
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
//! stdout and stderr go through one pipe into [`log_path`], rotated at
//! [`SupervisorConfig::log_max_bytes`] keeping [`SupervisorConfig::log_keep`]
//! old files (`.1` newest). Each run is framed by `--- pop: started ...` and
//! `--- pop: exited ...` lines. stdin is `/dev/null`.

mod containment;
mod instance;
mod logs;
mod procfs;
mod readiness;
mod reaper;

use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::containment::{Backend, Group};
use self::instance::{Handle, Instance, Table};
pub use self::logs::log_path;

/// Environment variable that marks every process of a service generation.
pub const TOKEN_ENV: &str = "POP_SUPERVISION_TOKEN";

/// The containment actually in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainmentKind {
    /// cgroup v2; the path is this machine's directory `<mount>/pop/<machine_id>`.
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
    /// Rotate a service log when it would grow past this many bytes.
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
}

/// How the main process ended: the core's type, so events pass through unchanged.
pub use pop_core::ExitStatus;

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
    logs: HashMap<String, logs::SharedLog>,
    reaper: JoinHandle<()>,
}

impl Supervisor {
    /// Picks the containment, starts the reaper and kills leftovers of an
    /// earlier agent with the same `machine_id`. Must run inside a tokio runtime.
    pub fn new(
        config: SupervisorConfig,
        events: UnboundedSender<SupervisorEvent>,
    ) -> Result<Self, SuperviseError> {
        tokio::runtime::Handle::try_current().map_err(|_| SuperviseError::NoRuntime)?;
        let (backend, kind) = Backend::select(&config)?;
        // Before any spawn, so no SIGCHLD is missed.
        let reaper = reaper::start().map_err(io_err("cannot start the reaper"))?;
        backend.kill_leftovers(&config);
        for sub in ["logs", "run"] {
            let dir = config.state_dir.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        info!(machine = %config.machine_id, containment = %kind, "supervisor started");
        Ok(Self {
            config,
            kind,
            backend,
            events,
            table: Arc::new(Mutex::new(HashMap::new())),
            logs: HashMap::new(),
            reaper,
        })
    }

    pub fn containment(&self) -> &ContainmentKind {
        &self.kind
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
        let group = self
            .backend
            .new_group(&spec.service, spec.generation, &token)
            .map_err(io_err("cannot create containment"))?;
        let group = Arc::new(group);
        let log = self.log_for(&spec.service)?;
        let launched = launch(&spec, &token, &group);
        let (pid, exit_rx, pipe) = match launched {
            Ok(x) => x,
            Err(e) => {
                group.remove();
                return Err(e);
            }
        };
        if let Err(e) = group.set_main(pid) {
            // Only leftover cleanup after an agent crash relies on the record,
            // and it also finds processes by token.
            warn!(service = %spec.service, error = %e, "cannot write run record");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        logs::lock(&log).marker(&format!(
            "started pid {pid} (generation {}) at {now}",
            spec.generation
        ));
        // The pump starts after the marker, so output always follows it.
        let log_done = match logs::start_pump(&spec.service, pipe, Arc::clone(&log)) {
            Ok(done) => Some(done),
            Err(e) => {
                warn!(service = %spec.service, error = %e, "cannot start log pump");
                None
            }
        };
        info!(service = %spec.service, generation = spec.generation, pid, containment = %group.describe(), "spawned");
        let _ = self.events.send(SupervisorEvent::Spawned {
            service: spec.service.clone(),
            generation: spec.generation,
            pid,
        });

        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        instance::lock(&self.table).insert(
            key.clone(),
            Handle {
                pid,
                stop: stop_tx,
                task: None,
            },
        );
        let inst = Instance {
            service: spec.service,
            generation: spec.generation,
            pid,
            group,
            log,
            log_done,
            events: self.events.clone(),
            table: Arc::clone(&self.table),
            exit_grace: spec.exit_grace.unwrap_or(self.config.exit_grace),
            probe: spec.probe,
        };
        let task = tokio::spawn(inst.run(exit_rx, stop_rx));
        // The task may already have finished and removed its entry.
        if let Some(h) = instance::lock(&self.table).get_mut(&key) {
            h.task = Some(task);
        }
        Ok(())
    }

    fn log_for(&mut self, service: &str) -> Result<logs::SharedLog, SuperviseError> {
        if let Some(l) = self.logs.get(service) {
            return Ok(Arc::clone(l));
        }
        let path = log_path(&self.config.state_dir, service);
        let file = logs::LogFile::open(
            path.clone(),
            self.config.log_max_bytes,
            self.config.log_keep,
        )
        .map_err(io_err(format!("cannot open {}", path.display())))?;
        let shared = Arc::new(Mutex::new(file));
        self.logs.insert(service.to_string(), Arc::clone(&shared));
        Ok(shared)
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

    /// `(service, generation, main pid)` of every generation not yet `Exited`.
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
        if let ContainmentKind::Cgroup(dir) = &self.kind {
            // Fails harmlessly if something is still in there.
            let _ = fs::remove_dir(dir);
        }
    }

    /// Stops supervising *without* touching the processes, as if the agent
    /// had been killed: they keep running, and the next `Supervisor::new`
    /// with this machine id kills them. For tests of leftover cleanup.
    #[doc(hidden)]
    pub fn abandon(self) {
        for (_, h) in instance::lock(&self.table).drain() {
            if let Some(t) = h.task {
                t.abort();
            }
        }
        self.reaper.abort();
    }
}

/// Forks and execs the main process inside `group`; returns its pid, the
/// channel its exit status arrives on, and the read end of its output pipe.
fn launch(
    spec: &ProcessSpec,
    token: &str,
    group: &Group,
) -> Result<
    (
        u32,
        tokio::sync::oneshot::Receiver<ExitStatus>,
        std::os::fd::OwnedFd,
    ),
    SuperviseError,
> {
    // CLOEXEC so that concurrent spawns don't inherit our pipe.
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| io_err("cannot create pipe")(io::Error::from(e)))?;
    let wr2 = wr.try_clone().map_err(io_err("cannot dup pipe"))?;
    let join = group.join_path().map_err(io_err("bad cgroup path"))?;
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .envs(&spec.env)
        .env(TOKEN_ENV, token)
        .stdin(Stdio::null())
        .stdout(Stdio::from(wr))
        .stderr(Stdio::from(wr2));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: the hook only makes async-signal-safe syscalls and does not allocate.
    unsafe {
        cmd.pre_exec(move || child_setup(join.as_deref()));
    }
    let spawned = reaper::spawn_registered(&mut cmd);
    // Closes our copies of the write end, so EOF means "all writers gone".
    drop(cmd);
    let (pid, exit_rx) = spawned.map_err(io_err(format!("cannot start {:?}", spec.argv[0])))?;
    Ok((pid, exit_rx, rd))
}

/// Runs in the forked child before exec: join the cgroup (so nothing the
/// service does can escape it) and start a new session (own process group,
/// no controlling terminal).
fn child_setup(cgroup_procs: Option<&CStr>) -> io::Result<()> {
    if let Some(path) = cgroup_procs {
        // SAFETY: raw syscalls on a valid NUL-terminated path and a local buffer.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
    }
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
