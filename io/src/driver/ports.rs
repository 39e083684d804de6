//! The seams of the driver: what it needs from the world, as small traits. Production
//! implementations are in [`super::production`]; a simulation supplies its own (as
//! sim/tests/driver_ports.rs does), so the very same event loop runs against simulated
//! ZooKeeper, processes and time.

use futures_util::Stream;
use pop_core::environment::EnvironmentSpec;
use pop_core::event::Input;
use pop_core::launch::Launch;
use pop_core::settings::Settings;
use pop_core::task::TaskId;
use pop_core::zk::{SessionEvent, SessionId, WatchEvent, ZkError, ZkOp, ZkReply};
use pop_core::Timestamp;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;

/// The core's notion of now, and when a core timestamp is reached on the runtime's timer.
pub trait Clock: Send + 'static {
    fn now(&self) -> Timestamp;
    fn instant_of(&self, t: Timestamp) -> tokio::time::Instant;
}

/// Resolves when a one-shot watch fires: `None` if it ended with the session instead.
pub type WatchFuture = Pin<Box<dyn Future<Output = Option<WatchEvent>> + Send>>;

/// Yields every event of a persistent watch; ends with its session.
pub type WatchStream = Pin<Box<dyn Stream<Item = WatchEvent> + Send>>;

/// What a port without persistent watches answers a tree watch: what production's
/// request mapping makes of a server older than 3.6 refusing `addWatch`.
pub const TREE_WATCH_UNIMPLEMENTED: &str = "unimplemented operation";

/// One ZooKeeper session. Cheap to clone; the session closes when `close` is called or
/// the last clone is dropped.
pub trait ZkSession: Clone + Send + Sync + 'static {
    fn id(&self) -> SessionId;
    /// The negotiated session timeout.
    fn timeout(&self) -> Duration;
    /// State changes after the session was established (`Disconnected`, `Connected` again,
    /// finally `Expired`); the receiver ends after `Expired`.
    fn events(&self) -> mpsc::UnboundedReceiver<SessionEvent>;
    /// Runs one request; a watch request also gives its watch. The driver bounds it by
    /// [`ZkPort::op_timeout`] (a request past it is answered `Timeout`).
    fn execute(&self, op: ZkOp) -> impl Future<Output = (ZkReply, Option<WatchFuture>)> + Send;
    /// Adds a persistent recursive watch on `path` ([`ZkOp::WatchTree`]); on success
    /// its events follow. A port without them answers as a server older than 3.6 (the
    /// core then watches each node), which is what this default does.
    fn watch_tree(
        &self,
        path: String,
    ) -> impl Future<Output = (ZkReply, Option<WatchStream>)> + Send {
        let _ = path;
        let refused = ZkReply::Error(ZkError::Other(TREE_WATCH_UNIMPLEMENTED.into()));
        async move { (refused, None) }
    }
    /// Ends the session so its ephemeral nodes go at once, waiting at most `limit` (the
    /// driver stops waiting then in any case).
    fn close(self, limit: Duration) -> impl Future<Output = ()> + Send;
}

/// Why a session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Unreachable, timed out...: try again.
    Retry(String),
    /// The server refused the credential: trying again cannot help.
    Refused(String),
}

/// Opens sessions.
pub trait ZkPort: Send + Sync + 'static {
    type Session: ZkSession;
    /// How long one request may take before the driver answers it `Timeout` itself.
    fn op_timeout(&self) -> Duration;
    fn connect(&self) -> impl Future<Output = Result<Self::Session, ConnectFailure>> + Send;
}

/// A task's process to run, as the core asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLaunch {
    pub service: String,
    pub task: TaskId,
    pub attempt: u32,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Searched before the `PATH` it would otherwise get.
    pub path_prepend: Vec<String>,
    pub cwd: PathBuf,
    /// The service's `user` and `group`.
    pub run_as: Option<pop_core::settings::RunAs>,
}

/// Runs and contains service processes, and builds their Python environments. Outcomes
/// (`Spawned`, `SpawnFailed`, `Ready`, `Exited`, `EnvironmentBuilt`) arrive as core
/// inputs on the channel the port was built with.
pub trait ProcessPort: Send + 'static {
    /// How services are contained, for `pop status`.
    fn containment(&self) -> String;
    /// Processes of an earlier agent that were verified and taken over, as inputs for
    /// the core. Called once, before the first spawn.
    fn take_adopted(&mut self) -> Vec<Input>;
    fn spawn(&mut self, service: &str, generation: u64, launch: Launch, settings: &Settings);
    fn stop(&mut self, service: &str, generation: u64, grace: Duration);
    /// Runs a task's process (`TaskStarted` or `TaskFailedToStart`, then `TaskExited`).
    fn run_task(&mut self, launch: TaskLaunch);
    fn stop_task(&mut self, service: &str, task: &TaskId, attempt: u32, grace: Duration);
    /// Builds a Python environment (see `pop_io::environment`), off the event loop.
    fn build_environment(&mut self, service: &str, spec: EnvironmentSpec, dir: &str);
    /// Removes the environments of `service` but those in `keep` (by spec hash).
    fn remove_environments(&mut self, service: &str, keep: Vec<String>);
    /// Kills the environment builds running (the agent is exiting).
    fn stop_builds(&mut self);
    /// Stops everything within about `grace` and waits until it is gone.
    fn shutdown(&mut self, grace: Duration) -> impl Future<Output = ()> + Send;
    /// Lets go of every process, leaving it running for the next agent to adopt.
    fn detach(self);
}
