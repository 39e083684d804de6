//! The agent's event loop: feeds ZooKeeper, process and timer events into the core and
//! carries out the actions it emits.
//!
//! Every spawned task reports back over one channel. Messages from an older ZooKeeper
//! client are tagged with its epoch and dropped, so a reply or watch from an expired
//! session never reaches the core.

use crate::clock::Clock;
use crate::supervise::{
    ContainmentChoice, ProcessSpec, ReadinessProbe, Supervisor, SupervisorConfig,
};
use crate::zk::{self, Client, SessionState, ZkConfig};
use pop_core::event::{Action, Input, Report};
use pop_core::launch::{Launch, Program};
use pop_core::zk::{SessionEvent, SessionId, ZkError, ZkReply};
use pop_core::{Agent, AgentConfig};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

#[derive(Debug, Error)]
pub enum DriverError {
    #[error("cannot set up process supervision: {0}")]
    Supervise(#[from] crate::supervise::SuperviseError),
    #[error("cannot create {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub zk: ZkConfig,
    pub machine_id: pop_core::names::MachineId,
    pub state_dir: PathBuf,
    pub containment: ContainmentChoice,
    /// The pop binary, for built-in service types.
    pub pop_exe: PathBuf,
    pub hostname: String,
}

enum Msg {
    /// An input that does not depend on the session (processes, signals).
    Local(Input),
    /// An input from the ZooKeeper client of `epoch`.
    Session {
        epoch: u64,
        input: Input,
    },
    Connected {
        epoch: u64,
        client: Client,
    },
}

struct Driver {
    config: DriverConfig,
    agent: Agent,
    clock: Clock,
    supervisor: Supervisor,
    client: Option<Client>,
    epoch: u64,
    tx: mpsc::UnboundedSender<Msg>,
}

/// Runs the agent until `shutdown` resolves and every service has stopped.
/// A second `shutdown` signal (e.g. another Ctrl-C) cuts the stop grace short.
pub async fn run(
    config: DriverConfig,
    mut shutdown: mpsc::UnboundedReceiver<()>,
) -> Result<(), DriverError> {
    let work_dir = config.state_dir.join("work");
    std::fs::create_dir_all(&work_dir).map_err(|source| DriverError::StateDir {
        path: work_dir.clone(),
        source,
    })?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (sup_tx, mut sup_rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(
        SupervisorConfig::new(
            config.machine_id.as_str(),
            config.state_dir.clone(),
            config.containment,
        ),
        sup_tx,
    )?;
    let clock = Clock::new();
    let containment = supervisor.containment().to_string();
    info!(machine = %config.machine_id, %containment, zk = %config.zk.hosts, "agent starting");
    let agent = Agent::new(AgentConfig {
        machine: config.machine_id.clone(),
        hostname: config.hostname.clone(),
        agent_pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        containment,
        seed: u64::from(std::process::id()) ^ clock.now().as_millis(),
        backoff: Default::default(),
    });
    // Supervisor events are core inputs already.
    let fwd = tx.clone();
    tokio::spawn(async move {
        while let Some(event) = sup_rx.recv().await {
            if fwd.send(Msg::Local(event)).is_err() {
                break;
            }
        }
    });
    let mut driver = Driver {
        config,
        agent,
        clock,
        supervisor,
        client: None,
        epoch: 0,
        tx,
    };
    driver.start_session();
    let mut shutdown_requested = false;
    let mut shutdown_closed = false;
    loop {
        let deadline = driver
            .agent
            .poll_timeout()
            .map(|t| driver.clock.instant_of(t));
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let input = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Local(input)) => Some(input),
                Some(Msg::Session { epoch, input }) => (epoch == driver.epoch).then_some(input),
                Some(Msg::Connected { epoch, client }) => {
                    if epoch == driver.epoch {
                        let session = SessionId(client.session_id().0);
                        let timeout = client.session_timeout();
                        info!(session = %format!("{:#x}", session.0), ?timeout, "ZooKeeper session established");
                        driver.watch_session_state(&client);
                        driver.client = Some(client);
                        Some(Input::Session(SessionEvent::Connected { session, timeout }))
                    } else {
                        None
                    }
                }
                None => None,
            },
            () = sleep => Some(Input::Tick),
            signal = shutdown.recv(), if !shutdown_closed => {
                if signal.is_none() {
                    // Nobody can ask any more; carry on until told otherwise by the core.
                    shutdown_closed = true;
                    None
                } else if shutdown_requested {
                    warn!("second stop request: killing services now");
                    driver.supervisor.shutdown(Duration::from_millis(500)).await;
                    driver.close_session().await;
                    return Ok(());
                } else {
                    shutdown_requested = true;
                    info!("stopping: services first, then the agent");
                    Some(Input::Shutdown)
                }
            }
        };
        let Some(input) = input else { continue };
        debug!(?input, "input");
        driver.agent.handle(driver.clock.now(), input);
        while let Some(action) = driver.agent.poll_action() {
            if driver.perform(action) {
                info!("all services stopped; closing the ZooKeeper session");
                driver.close_session().await;
                return Ok(());
            }
        }
    }
}

impl Driver {
    /// Drops the old client and connects anew, retrying until it works.
    fn start_session(&mut self) {
        self.client = None;
        self.epoch += 1;
        let epoch = self.epoch;
        let tx = self.tx.clone();
        let config = self.config.zk.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match zk::connect(&config).await {
                    Ok(client) => {
                        let _ = tx.send(Msg::Connected { epoch, client });
                        return;
                    }
                    Err(e) => {
                        warn!("{e}; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
    }

    /// Closes the session so our ephemerals go at once rather than at its timeout:
    /// dropping the last client sends the close; wait (briefly) until it is done.
    async fn close_session(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let mut watcher = client.state_watcher();
        drop(client);
        let closed = async { while !watcher.changed().await.is_terminated() {} };
        if tokio::time::timeout(Duration::from_secs(2), closed)
            .await
            .is_err()
        {
            warn!("the ZooKeeper session did not close within 2s; its nodes go when it expires");
        }
    }

    fn watch_session_state(&self, client: &Client) {
        let mut watcher = client.state_watcher();
        let tx = self.tx.clone();
        let epoch = self.epoch;
        let session = SessionId(client.session_id().0);
        let timeout = client.session_timeout();
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
                if tx
                    .send(Msg::Session {
                        epoch,
                        input: Input::Session(event),
                    })
                    .is_err()
                    || terminal
                {
                    return;
                }
            }
        });
    }

    /// Carries out one action; true when the agent should exit.
    fn perform(&mut self, action: Action) -> bool {
        match action {
            Action::Zk { id, op } => {
                let tx = self.tx.clone();
                let epoch = self.epoch;
                let Some(client) = self.client.clone() else {
                    let _ = tx.send(Msg::Session {
                        epoch,
                        input: Input::Reply {
                            id,
                            reply: ZkReply::Error(ZkError::ConnectionLoss),
                        },
                    });
                    return false;
                };
                let timeout = self.config.zk.op_timeout;
                tokio::spawn(async move {
                    let (reply, watcher) = zk::execute(&client, &op, timeout).await;
                    // Only live requests may hold the client: dropping the last one
                    // closes the session, which shutdown relies on.
                    drop(client);
                    if tx
                        .send(Msg::Session {
                            epoch,
                            input: Input::Reply { id, reply },
                        })
                        .is_err()
                    {
                        return;
                    }
                    if let Some(watcher) = watcher {
                        if let Some(event) = zk::watch_event(watcher).await {
                            let _ = tx.send(Msg::Session {
                                epoch,
                                input: Input::Watch(event),
                            });
                        }
                    }
                });
            }
            Action::Spawn {
                service,
                generation,
                launch,
            } => {
                let spec = self.process_spec(&service, generation, launch);
                info!(%service, generation, argv = ?spec.argv, "starting");
                self.supervisor.spawn(spec);
            }
            Action::Stop {
                service,
                generation,
                grace,
            } => {
                info!(%service, generation, ?grace, "stopping");
                self.supervisor.stop(&service, generation, grace);
            }
            Action::NewSession => {
                warn!("ZooKeeper session expired; opening a new one (services keep running)");
                self.start_session();
            }
            Action::Report(report) => log_report(&report),
            Action::Exit => return true,
        }
        false
    }

    fn process_spec(&self, service: &str, generation: u64, launch: Launch) -> ProcessSpec {
        let argv = match launch.program {
            Program::Shell(command) => vec!["/bin/sh".to_string(), "-c".to_string(), command],
            Program::PopBuiltin(args) => {
                let mut argv = vec![self.config.pop_exe.to_string_lossy().into_owned()];
                argv.extend(args);
                argv
            }
        };
        let cwd = self.config.state_dir.join("work").join(service);
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
            note: serde_json::Value::Null,
        }
    }
}

fn log_report(report: &Report) {
    match report {
        Report::BadData { path, error } => {
            error!(%path, "bad data in ZooKeeper, keeping the last good view: {error}")
        }
        Report::DataRepaired { path } => info!(%path, "data is valid again"),
        Report::CrashLoop {
            service,
            failures,
            delay,
        } => warn!(%service, failures, ?delay, "crashing repeatedly; backing off"),
        Report::SpawnFailed { service, error } => error!(%service, "cannot start: {error}"),
        Report::Started { service, pid } => info!(%service, pid, "started"),
        Report::Exited { service, status } => info!(%service, %status, "exited"),
    }
}
