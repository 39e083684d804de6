//! The production implementations of the driver's ports: the `zookeeper-client` crate
//! and the process supervisor.

use super::ports::{ProcessPort, WatchFuture, ZkPort, ZkSession};
use crate::supervise::{ProcessSpec, ReadinessProbe, Supervisor};
use crate::tasks::{self, TaskLaunch};
use crate::zk::{self, Client, SessionState, ZkConfig};
use pop_core::event::Input;
use pop_core::launch::{Launch, Program};
use pop_core::settings::Settings;
use pop_core::task::TaskId;
use pop_core::zk::{SessionEvent, SessionId, ZkOp, ZkReply};
use pop_core::Timestamp;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Sessions of a real ZooKeeper ensemble.
pub struct RealZk {
    pub config: ZkConfig,
}

impl ZkPort for RealZk {
    type Session = RealSession;

    async fn connect(&self) -> Result<RealSession, String> {
        let client = zk::connect(&self.config).await.map_err(|e| e.to_string())?;
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
                    // Expired, auth failure or closed: the session is over for good.
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

/// Services run by the process supervisor.
pub struct SupervisedProcesses {
    pub supervisor: Supervisor,
    pub state_dir: PathBuf,
    /// The pop binary, for built-in service types.
    pub pop_exe: PathBuf,
}

impl SupervisedProcesses {
    fn spec(
        &self,
        service: &str,
        generation: u64,
        launch: Launch,
        settings: &Settings,
    ) -> ProcessSpec {
        let argv = match launch.program {
            Program::Shell(command) => vec!["/bin/sh".to_string(), "-c".to_string(), command],
            Program::PopBuiltin(args) => {
                let mut argv = vec![self.pop_exe.to_string_lossy().into_owned()];
                argv.extend(args);
                argv
            }
        };
        let cwd = self.state_dir.join("work").join(service);
        if let Err(e) = std::fs::create_dir_all(&cwd) {
            warn!(%service, "cannot create working directory {}: {e}", cwd.display());
        }
        ProcessSpec {
            service: service.to_string(),
            generation,
            argv,
            env: launch.env,
            cwd: Some(cwd),
            probe: launch.probe.map(|p| ReadinessProbe {
                host: p.host,
                port: p.port,
            }),
            exit_grace: Some(launch.stop_timeout),
            // Kept in the run record: what a later agent needs to adopt the process.
            note: serde_json::to_value(settings).unwrap_or_default(),
            output: None,
        }
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
            match serde_json::from_value::<Settings>(process.note) {
                Ok(settings) => inputs.push(Input::Adopted {
                    service: process.service,
                    generation: process.generation,
                    pid: process.pid,
                    started_at: Timestamp::from_millis(process.started_at_ms),
                    port: process.port,
                    settings,
                }),
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
        info!(%service, generation, argv = ?spec.argv, "starting");
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

    async fn shutdown(&mut self, grace: Duration) {
        self.supervisor.shutdown(grace).await;
    }

    fn detach(self) {
        self.supervisor.detach();
    }
}
