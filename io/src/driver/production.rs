//! The production implementations of the driver's ports: the `zookeeper-client` crate
//! and the process supervisor.

use super::ports::{ConnectFailure, ProcessPort, WatchFuture, WatchStream, ZkPort, ZkSession};
use super::workdir::WorkDirs;
use crate::environment::EnvironmentBuilder;
use crate::supervise::{ProcessSpec, ReadinessProbe, Supervisor};
use crate::tasks::{self, TaskLaunch};
use crate::zk::{self, Client, SessionState, ZkConfig};
use pop_core::environment::EnvironmentSpec;
use pop_core::event::Input;
use pop_core::launch::{self, Launch};
use pop_core::settings::Settings;
use pop_core::task::TaskId;
use pop_core::zk::{SessionEvent, SessionId, ZkOp, ZkReply};
use pop_core::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Sessions of a real ZooKeeper ensemble.
pub struct RealZk {
    pub config: ZkConfig,
}

impl ZkPort for RealZk {
    type Session = RealSession;

    fn op_timeout(&self) -> Duration {
        self.config.op_timeout
    }

    async fn connect(&self) -> Result<RealSession, ConnectFailure> {
        let client = zk::connect(&self.config).await.map_err(|e| match e {
            zk::ConnectError::AuthFailed { .. } => ConnectFailure::Refused(e.to_string()),
            other => ConnectFailure::Retry(other.to_string()),
        })?;
        Ok(RealSession {
            client,
            op_timeout: self.config.op_timeout,
        })
    }
}

#[derive(Clone)]
pub struct RealSession {
    client: Client,
    op_timeout: Duration,
}

impl ZkSession for RealSession {
    fn id(&self) -> SessionId {
        SessionId(self.client.session_id().0)
    }

    fn timeout(&self) -> Duration {
        self.client.session_timeout()
    }

    fn events(&self) -> mpsc::UnboundedReceiver<SessionEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = self.client.state_watcher();
        let (session, timeout) = (self.id(), self.timeout());
        // The state may have changed between connecting and now; `changed` would not
        // report a terminal state that happened before we asked.
        let current = watcher.peek_state();
        tokio::spawn(async move {
            let mut first = (current != SessionState::SyncConnected).then_some(current);
            loop {
                let state = match first.take() {
                    Some(state) => state,
                    None => watcher.changed().await,
                };
                let event = match state {
                    SessionState::Disconnected => SessionEvent::Disconnected,
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        SessionEvent::Connected { session, timeout }
                    }
                    SessionState::AuthFailed => {
                        // The next session's connect is refused too, and the agent exits.
                        warn!("ZooKeeper closed the session: authentication failed");
                        SessionEvent::Expired
                    }
                    // Expired or closed: the session is over for good.
                    _ => SessionEvent::Expired,
                };
                let terminal = event == SessionEvent::Expired;
                if tx.send(event).is_err() || terminal {
                    return;
                }
            }
        });
        rx
    }

    async fn execute(&self, op: ZkOp) -> (ZkReply, Option<WatchFuture>) {
        let (reply, watcher) = zk::execute(&self.client, &op, self.op_timeout).await;
        let watch = watcher.map(|w| Box::pin(zk::watch_event(w)) as WatchFuture);
        (reply, watch)
    }

    async fn watch_tree(&self, path: String) -> (ZkReply, Option<WatchStream>) {
        match zk::add_tree_watch(&self.client, &path, self.op_timeout).await {
            Ok(watcher) => {
                let events = Box::pin(zk::tree_events(watcher)) as WatchStream;
                (ZkReply::Watching, Some(events))
            }
            Err(e) => (ZkReply::Error(e), None),
        }
    }

    /// Dropping the last clone of the client sends the close (in-flight requests hold
    /// the others only until they finish); wait until the client says it is done.
    async fn close(self, limit: Duration) {
        let mut watcher = self.client.state_watcher();
        drop(self);
        let closed = async { while !watcher.changed().await.is_terminated() {} };
        if tokio::time::timeout(limit, closed).await.is_err() {
            warn!("the ZooKeeper session did not close within {limit:?}; its nodes go when it expires");
        }
    }
}

/// Services run by the process supervisor, and their environments built.
pub struct SupervisedProcesses {
    supervisor: Supervisor,
    environments: EnvironmentBuilder,
    /// Whether a plain command may be exec'd without `sh -c`: not when the agent's own
    /// environment (which services inherit) has a variable the shell would change
    /// (`PWD` aside: it is set for the service as the shell would).
    direct_exec: bool,
    /// The agent's environment variables the shell would not pass on (their names are
    /// not shell names), left out when a command is exec'd directly.
    not_for_the_shell: Vec<String>,
    /// Where tasks' output goes (`<state_dir>/tasks/<service>/`).
    state_dir: PathBuf,
    /// Each service's working directory, created and resolved once.
    work_dirs: WorkDirs,
}

/// What the run record keeps of a generation (`ProcessSpec::note`), for the agent that
/// adopts it: its settings and what was launched. Records of agents before plugins hold
/// the settings alone.
#[derive(Serialize, Deserialize)]
struct RunNote {
    settings: Settings,
    launch: Launch,
}

/// The `PATH` a process gets: `prepend`, then the one it would have had.
fn path_with(prepend: &[String], env: &BTreeMap<String, String>) -> Option<String> {
    if prepend.is_empty() {
        return None;
    }
    let inherited = env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
    Some(format!("{}:{inherited}", prepend.join(":")))
}

impl SupervisedProcesses {
    pub fn new(
        supervisor: Supervisor,
        environments: EnvironmentBuilder,
        state_dir: PathBuf,
    ) -> Self {
        let names: Vec<_> = std::env::vars_os().map(|(name, _)| name).collect();
        let direct_exec = !names
            .iter()
            .any(|name| name.to_str().is_none_or(launch::set_by_the_shell));
        let not_for_the_shell = names
            .iter()
            .filter_map(|name| name.to_str())
            .filter(|name| !launch::shell_name(name))
            .map(str::to_string)
            .collect();
        Self {
            supervisor,
            environments,
            direct_exec,
            not_for_the_shell,
            state_dir,
            work_dirs: WorkDirs::default(),
        }
    }

    fn spec(
        &mut self,
        service: &str,
        generation: u64,
        launch: Launch,
        settings: &Settings,
    ) -> ProcessSpec {
        let cwd = PathBuf::from(&launch.cwd);
        let supervisor = &self.supervisor;
        let physical = self.work_dirs.prepare(service, &cwd, || {
            supervisor
                .running()
                .into_iter()
                .map(|(s, _, _)| s)
                .collect()
        });
        let note = serde_json::to_value(RunNote {
            settings: settings.clone(),
            launch: launch.clone(),
        })
        .unwrap_or_default();
        let direct = launch.direct_argv().filter(|_| self.direct_exec);
        let mut env = launch.env;
        if let Some(path) = path_with(&launch.path_prepend, &env) {
            env.insert("PATH".to_string(), path);
        }
        let mut unset = Vec::new();
        let argv = match direct {
            // What sh would have run, without starting sh, in the environment sh would
            // have passed on: PWD as sh sets it (the physical working directory).
            Some(argv) => {
                if let Some(pwd) = physical {
                    env.insert("PWD".to_string(), pwd);
                }
                unset.clone_from(&self.not_for_the_shell);
                argv
            }
            None => launch.argv,
        };
        ProcessSpec {
            service: service.to_string(),
            generation,
            argv,
            env,
            unset,
            cwd: Some(cwd),
            probe: launch.probe.map(|p| ReadinessProbe {
                host: p.host,
                port: p.port,
            }),
            exit_grace: Some(launch.stop_timeout),
            // Kept in the run record: what a later agent needs to adopt the process.
            note,
            output: None,
            run_as: launch.run_as,
        }
    }
}

/// Reads a run record's note: this version's, or an earlier agent's settings alone.
fn read_note(note: serde_json::Value) -> Result<(Settings, Option<Box<Launch>>), String> {
    match serde_json::from_value::<RunNote>(note.clone()) {
        Ok(RunNote { settings, launch }) => Ok((settings, Some(Box::new(launch)))),
        Err(e) => serde_json::from_value::<Settings>(note)
            .map(|settings| (settings, None))
            .map_err(|_| e.to_string()),
    }
}

impl ProcessPort for SupervisedProcesses {
    fn containment(&self) -> String {
        self.supervisor.containment().to_string()
    }

    fn take_adopted(&mut self) -> Vec<Input> {
        let mut adopted = self.supervisor.take_adopted();
        // Oldest first: of two generations of one service the core keeps the newer.
        adopted.sort_by_key(|a| a.generation);
        let mut inputs = Vec::new();
        for process in adopted {
            match read_note(process.note) {
                Ok((settings, launch)) => {
                    // The agent's start closed the state directory; a service of
                    // another user still needs to pass through it.
                    if settings.run_as.is_some() {
                        if let Err(e) = crate::state_dir::let_others_through(&self.state_dir) {
                            warn!(service = %process.service, "cannot open {} to its user: {e}", self.state_dir.display());
                        }
                    }
                    inputs.push(Input::Adopted {
                        service: process.service,
                        generation: process.generation,
                        pid: process.pid,
                        started_at: Timestamp::from_millis(process.started_at_ms),
                        port: process.port,
                        settings,
                        launch,
                    });
                }
                Err(e) => {
                    // Not knowing what it runs, we cannot keep it: stop it, and the core
                    // starts the service afresh if it is wanted here.
                    warn!(service = %process.service, pid = process.pid, "cannot read the settings of an adopted process ({e}); stopping it");
                    self.supervisor.stop(
                        &process.service,
                        process.generation,
                        Duration::from_secs(10),
                    );
                }
            }
        }
        inputs
    }

    fn spawn(&mut self, service: &str, generation: u64, launch: Launch, settings: &Settings) {
        let spec = self.spec(service, generation, launch, settings);
        debug!(%service, generation, argv = ?spec.argv, "starting");
        self.supervisor.spawn(spec);
    }

    fn stop(&mut self, service: &str, generation: u64, grace: Duration) {
        info!(%service, generation, ?grace, "stopping");
        self.supervisor.stop(service, generation, grace);
    }

    fn run_task(&mut self, launch: TaskLaunch) {
        let (service, task, attempt) =
            (launch.service.clone(), launch.task.clone(), launch.attempt);
        let spec = tasks::spec(&self.state_dir, launch);
        info!(%service, %task, attempt, argv = ?spec.argv, "running task");
        self.supervisor.spawn(spec);
    }

    fn stop_task(&mut self, service: &str, task: &TaskId, attempt: u32, grace: Duration) {
        info!(%service, %task, attempt, ?grace, "stopping task");
        self.supervisor
            .stop(&tasks::key(service, task), u64::from(attempt), grace);
    }

    fn build_environment(&mut self, service: &str, spec: EnvironmentSpec, dir: &str) {
        info!(%service, %dir, "building an environment");
        self.environments.build(service, spec, dir);
    }

    fn remove_environments(&mut self, service: &str, keep: Vec<String>) {
        self.environments.remove(service, keep);
    }

    fn stop_builds(&mut self) {
        self.environments.stop_all();
    }

    async fn shutdown(&mut self, grace: Duration) {
        self.environments.stop_all();
        self.supervisor.shutdown(grace).await;
    }

    fn detach(self) {
        // A build is not adopted: the next agent builds again.
        self.environments.stop_all();
        self.supervisor.detach();
    }
}
