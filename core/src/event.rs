//! The core's inputs and outputs.

use crate::environment::EnvironmentSpec;
use crate::launch::Launch;
use crate::settings::Settings;
use crate::task::{TaskId, TaskState};
use crate::time::Timestamp;
use crate::zk::{RequestId, SessionEvent, WatchEvent, ZkOp, ZkReply};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// How a process ended: exactly one field is set, or neither when it is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Names of the signals that usually end a service (Linux numbering).
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => match signal_name(s) {
                Some(name) => write!(f, "killed by signal {s} ({name})"),
                None => write!(f, "killed by signal {s}"),
            },
            (None, None) => f.write_str("unknown status"),
        }
    }
}

/// Everything that happens to an agent. Each comes with the time it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    Session(SessionEvent),
    Reply {
        id: RequestId,
        reply: ZkReply,
    },
    Watch(WatchEvent),
    Spawned {
        service: String,
        generation: u64,
        pid: u32,
    },
    SpawnFailed {
        service: String,
        generation: u64,
        error: String,
    },
    /// The readiness probe succeeded; `port` is the port actually listened on.
    Ready {
        service: String,
        generation: u64,
        port: Option<u16>,
    },
    /// The process exited and everything it started is gone.
    Exited {
        service: String,
        generation: u64,
        status: ExitStatus,
    },
    /// A process an earlier agent on this machine started and that is provably still the
    /// same one (the driver checked); the core takes it over as running and ready.
    Adopted {
        service: String,
        generation: u64,
        pid: u32,
        started_at: Timestamp,
        port: Option<u16>,
        settings: Settings,
        /// What it was launched with; `None` from an agent that did not record it
        /// (before plugins): taken to be what its settings launch now.
        #[serde(default)]
        launch: Option<Box<Launch>>,
    },
    /// The build of a service's environment (`Action::BuildEnvironment`) ended.
    EnvironmentBuilt {
        service: String,
        spec_hash: String,
        result: Result<(), String>,
    },
    /// A task's process started (`Action::RunTask`).
    TaskStarted {
        service: String,
        task: TaskId,
        attempt: u32,
        pid: u32,
    },
    /// A task's process could not be started.
    TaskFailedToStart {
        service: String,
        task: TaskId,
        attempt: u32,
        error: String,
    },
    /// A task's process exited and everything it started is gone; the ends of its
    /// output come with it, so they are journaled.
    TaskExited {
        service: String,
        task: TaskId,
        attempt: u32,
        status: ExitStatus,
        stdout_tail: String,
        stderr_tail: String,
    },
    /// The deadline from `poll_timeout` was reached.
    Tick,
    /// Stop every service, then emit `Action::Exit`.
    Shutdown,
    /// Exit at once and leave every service running, for the next agent to adopt
    /// (an upgrade of the agent).
    Detach,
}

/// Something the core wants done. The driver performs it and reports back as an `Input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    Zk {
        id: RequestId,
        op: ZkOp,
    },
    Spawn {
        service: String,
        generation: u64,
        launch: Launch,
        /// What `launch` was made from; the driver keeps it so a later agent can adopt
        /// the process and know what it runs. Boxed: settings are large next to the
        /// other actions.
        settings: Box<Settings>,
    },
    /// Build the Python environment `spec` for `service` at `dir` (unless a complete one
    /// built from the same spec is there), off the event loop; report `EnvironmentBuilt`.
    /// What runs from an older environment keeps running meanwhile.
    BuildEnvironment {
        service: String,
        spec: EnvironmentSpec,
        dir: String,
    },
    /// Remove the environments of `service` but those whose hash is in `keep` (nothing
    /// runs from them any more).
    RemoveEnvironments {
        service: String,
        keep: Vec<String>,
    },
    /// The launch's stop signal to everything of this run, SIGKILL after `grace`; report
    /// `Exited` when gone.
    Stop {
        service: String,
        generation: u64,
        grace: Duration,
    },
    /// Run a task's process in the service's containment style, its output to files;
    /// report `TaskStarted` (or `TaskFailedToStart`), then `TaskExited`. The process is
    /// not adopted by a later agent: that agent's start-up kills it.
    RunTask {
        service: String,
        task: TaskId,
        attempt: u32,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        /// Searched before the `PATH` it would otherwise get (`env`'s, else the agent's).
        path_prepend: Vec<String>,
        /// The service's working directory.
        cwd: String,
        /// The service's `user` and `group` (`None`: the agent's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_as: Option<crate::settings::RunAs>,
    },
    /// SIGTERM everything of the task's run, SIGKILL after `grace`; `TaskExited` follows.
    StopTask {
        service: String,
        task: TaskId,
        attempt: u32,
        grace: Duration,
    },
    /// The session expired: build a new client and report `Connected` again.
    NewSession,
    Report(Report),
    /// Shutdown finished: close the session and exit.
    Exit,
}

/// Things worth a log line and a place in `pop status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// A znode holds data the agent cannot use; it keeps its last good view.
    BadData {
        path: String,
        error: String,
    },
    /// Data at a path that was bad is good again.
    DataRepaired {
        path: String,
    },
    /// A service keeps crashing quickly; the next start is delayed.
    CrashLoop {
        service: String,
        failures: u32,
        delay: Duration,
    },
    SpawnFailed {
        service: String,
        error: String,
    },
    Started {
        service: String,
        pid: u32,
    },
    Exited {
        service: String,
        status: ExitStatus,
    },
    Adopted {
        service: String,
        pid: u32,
    },
    /// A service with a port did not accept connections within its `ready_timeout`
    /// (`port` 0: no listening port was found); it is stopped and started again after
    /// a crash-loop delay.
    NotReady {
        service: String,
        port: u16,
        waited: Duration,
    },
    /// The session was lost long enough that `session_loss: fence` services are stopped.
    Fenced {
        services: Vec<String>,
    },
    /// A task ended on this machine (its result is written next).
    TaskEnded {
        service: String,
        task: TaskId,
        attempt: u32,
        state: TaskState,
    },
    /// A wanted service is not started (or not restarted with what it should run now):
    /// its type, a setting its command needs, or its environment is not there.
    Waiting {
        service: String,
        reason: String,
    },
    /// A service's environment is built and can be launched from.
    EnvironmentReady {
        service: String,
        spec_hash: String,
    },
    /// Building a service's environment failed; what runs keeps running.
    EnvironmentFailed {
        service: String,
        spec_hash: String,
        error: String,
    },
    /// ZooKeeper refused a request of the agent (NoAuth): its credential is missing,
    /// wrong or not allowed this. The agent exits after it (services keep running).
    NotAuthorised {
        path: String,
        /// "reading", "creating", ...
        doing: String,
    },
}
