//! The agent's event loop: feeds ZooKeeper, process and timer events into the core and
//! carries out the actions it emits.
//!
//! The loop is written against small ports ([`ports`]) so the same code runs in
//! production ([`production`]) and under simulation. Every input is appended to the
//! journal before the core sees it, and the actions after, so `pop replay` can check
//! that the core's decisions follow from its inputs alone.
//!
//! Every spawned task reports back over one channel. Messages from an older ZooKeeper
//! session are tagged with its epoch and dropped, so a reply or watch from an expired
//! session never reaches the core.

pub mod ports;
pub mod production;

use crate::clock::SystemClock;
use crate::environment::{EnvironmentBuilder, Installer};
use crate::journal::{journal_path, JournalLimits, JournalWriter};
use crate::supervise::{ContainmentChoice, Supervisor, SupervisorConfig};
use crate::zk::ZkConfig;
use pop_core::event::{Action, Input, Report};
use pop_core::zk::{SessionEvent, ZkError, ZkReply};
use pop_core::{Agent, AgentConfig};
use ports::{Clock, ProcessPort, ZkPort, ZkSession};
use production::{RealZk, SupervisedProcesses};
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
    pub journal: JournalLimits,
}

/// Why the agent is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// Stop every service, then exit. A second one cuts the grace short.
    Stop,
    /// Exit now and leave the services running for the next agent (an upgrade).
    KeepServices,
}

/// How long closing the session may take before the agent exits anyway.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

enum Msg<S> {
    /// An input that does not depend on the session (processes, signals).
    Local(Input),
    /// An input from the ZooKeeper session of `epoch`.
    Session {
        epoch: u64,
        input: Input,
    },
    Connected {
        epoch: u64,
        session: S,
    },
}

/// Runs the production agent until `stop` asks it to end (and, for `Stop`, every
/// service has stopped).
pub async fn run(
    config: DriverConfig,
    stop: mpsc::UnboundedReceiver<StopRequest>,
) -> Result<(), DriverError> {
    let work_dir = config.state_dir.join("work");
    std::fs::create_dir_all(&work_dir).map_err(|source| DriverError::StateDir {
        path: work_dir.clone(),
        source,
    })?;
    // Services get absolute paths (their working directory, their environment's
    // interpreter), whatever the agent's own working directory.
    let mut config = config;
    if let Ok(absolute) = std::fs::canonicalize(&config.state_dir) {
        config.state_dir = absolute;
    }
    let (process_tx, supervisor_rx) = mpsc::unbounded_channel();
    let process_rx = task_inputs(supervisor_rx, config.state_dir.clone());
    let environment_tx = process_tx.clone();
    let supervisor = Supervisor::new(
        SupervisorConfig::new(
            config.machine_id.as_str(),
            config.state_dir.clone(),
            config.containment,
        ),
        process_tx,
    )?;
    let clock = SystemClock::new();
    let environments = EnvironmentBuilder::new(
        config.state_dir.clone(),
        config.machine_id.as_str(),
        Installer::from_env(),
        environment_tx,
    );
    let processes = SupervisedProcesses {
        supervisor,
        environments,
        state_dir: config.state_dir.clone(),
    };
    let agent_config = AgentConfig {
        machine: config.machine_id.clone(),
        hostname: config.hostname.clone(),
        agent_pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        containment: processes.containment(),
        seed: u64::from(std::process::id()) ^ clock.now().as_millis(),
        backoff: Default::default(),
        pop: config.pop_exe.to_string_lossy().into_owned(),
        state_dir: config.state_dir.to_string_lossy().into_owned(),
    };
    let journal = match JournalWriter::start(
        journal_path(&config.state_dir),
        &agent_config,
        config.journal,
    ) {
        Ok(journal) => Some(journal),
        Err(e) => {
            warn!("cannot start the journal, running without one: {e}");
            None
        }
    };
    info!(machine = %config.machine_id, containment = %agent_config.containment, zk = %config.zk.hosts, "agent starting");
    let ports = Ports {
        zk: RealZk { config: config.zk },
        processes,
        clock,
    };
    run_with(ports, agent_config, journal, process_rx, stop).await;
    Ok(())
}

/// The supervisor's events as the core's inputs: those of a task's processes become
/// task inputs (the ends of its output are read from files, on the blocking pool), in
/// the order they came.
fn task_inputs(
    mut events: mpsc::UnboundedReceiver<Input>,
    state_dir: PathBuf,
) -> mpsc::UnboundedReceiver<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let dir = state_dir.clone();
            let input =
                match tokio::task::spawn_blocking(move || crate::tasks::translate(&dir, event))
                    .await
                {
                    Ok(input) => input,
                    Err(e) => {
                        error!("reading a task's output failed: {e}");
                        continue;
                    }
                };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
    rx
}

/// What the loop talks to.
pub struct Ports<Z, P, C> {
    pub zk: Z,
    pub processes: P,
    pub clock: C,
}

struct Driver<Z: ZkPort, P, C> {
    zk: std::sync::Arc<Z>,
    processes: Option<P>,
    clock: C,
    agent: Agent,
    journal: Option<JournalWriter>,
    session: Option<Z::Session>,
    epoch: u64,
    tx: mpsc::UnboundedSender<Msg<Z::Session>>,
}

/// The event loop over any ports. Returns when the core emits `Exit`, or at once after a
/// second `Stop` request (services are then killed without the full grace).
pub async fn run_with<Z: ZkPort, P: ProcessPort, C: Clock>(
    ports: Ports<Z, P, C>,
    agent_config: AgentConfig,
    journal: Option<JournalWriter>,
    mut process_events: mpsc::UnboundedReceiver<Input>,
    mut stop: mpsc::UnboundedReceiver<StopRequest>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let fwd = tx.clone();
    tokio::spawn(async move {
        while let Some(event) = process_events.recv().await {
            if fwd.send(Msg::Local(event)).is_err() {
                break;
            }
        }
    });
    let mut driver = Driver {
        zk: std::sync::Arc::new(ports.zk),
        processes: Some(ports.processes),
        clock: ports.clock,
        agent: Agent::new(agent_config),
        journal,
        session: None,
        epoch: 0,
        tx,
    };
    // What an earlier agent left running is known before anything else happens.
    let adopted = driver
        .processes
        .as_mut()
        .map(ProcessPort::take_adopted)
        .unwrap_or_default();
    for input in adopted {
        if driver.step(input).await {
            return;
        }
    }
    driver.start_session();
    let mut stop_requested = false;
    let mut stop_closed = false;
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
                Some(Msg::Connected { epoch, session }) => driver.on_connected(epoch, session),
                None => None,
            },
            () = sleep => Some(Input::Tick),
            request = stop.recv(), if !stop_closed => match request {
                // Nobody can ask any more; carry on until told otherwise by the core.
                None => {
                    stop_closed = true;
                    None
                }
                Some(StopRequest::KeepServices) => {
                    info!("stopping the agent only: services keep running for the next agent");
                    Some(Input::Detach)
                }
                Some(StopRequest::Stop) if stop_requested => {
                    warn!("second stop request: killing services now");
                    if let Some(processes) = driver.processes.as_mut() {
                        processes.shutdown(Duration::from_millis(500)).await;
                    }
                    driver.close_session().await;
                    return;
                }
                Some(StopRequest::Stop) => {
                    stop_requested = true;
                    info!("stopping: services first, then the agent");
                    Some(Input::Shutdown)
                }
            }
        };
        let Some(input) = input else { continue };
        if driver.step(input).await {
            return;
        }
    }
}

impl<Z: ZkPort, P: ProcessPort, C: Clock> Driver<Z, P, C> {
    /// Journals one input, hands it to the core and performs what it asks; true when
    /// the agent is done.
    async fn step(&mut self, input: Input) -> bool {
        debug!(?input, "input");
        let now = self.clock.now();
        let detach = input == Input::Detach;
        if let Some(journal) = self.journal.as_mut() {
            journal.input(now, &input);
        }
        self.agent.handle(now, input);
        let actions: Vec<Action> = self.agent.drain_actions();
        if let Some(journal) = self.journal.as_mut() {
            journal.actions(&actions);
            journal.rotate_if_full(&self.agent);
        }
        for action in actions {
            if self.perform(action) {
                if detach {
                    if let Some(processes) = self.processes.take() {
                        processes.detach();
                    }
                    info!("agent detached; closing the ZooKeeper session");
                } else {
                    if let Some(processes) = self.processes.as_mut() {
                        processes.stop_builds();
                    }
                    info!("all services stopped; closing the ZooKeeper session");
                }
                self.close_session().await;
                return true;
            }
        }
        false
    }

    fn on_connected(&mut self, epoch: u64, session: Z::Session) -> Option<Input> {
        if epoch != self.epoch {
            return None;
        }
        let (id, timeout) = (session.id(), session.timeout());
        info!(session = %format!("{:#x}", id.0), ?timeout, "ZooKeeper session established");
        let mut events = session.events();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let input = Input::Session(event);
                if tx.send(Msg::Session { epoch, input }).is_err() {
                    return;
                }
            }
        });
        self.session = Some(session);
        Some(Input::Session(SessionEvent::Connected {
            session: id,
            timeout,
        }))
    }

    /// Drops the old session and connects anew, retrying until it works.
    fn start_session(&mut self) {
        self.session = None;
        self.epoch += 1;
        let epoch = self.epoch;
        let tx = self.tx.clone();
        let zk = std::sync::Arc::clone(&self.zk);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match zk.connect().await {
                    Ok(session) => {
                        let _ = tx.send(Msg::Connected { epoch, session });
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

    /// Closes the session so our ephemerals go at once rather than at its timeout.
    async fn close_session(&mut self) {
        if let Some(session) = self.session.take() {
            session.close(CLOSE_LIMIT).await;
        }
    }

    /// Carries out one action; true when the agent should exit.
    fn perform(&mut self, action: Action) -> bool {
        match action {
            Action::Zk { id, op } => {
                let tx = self.tx.clone();
                let epoch = self.epoch;
                let Some(session) = self.session.clone() else {
                    let reply = ZkReply::Error(ZkError::ConnectionLoss);
                    let input = Input::Reply { id, reply };
                    let _ = tx.send(Msg::Session { epoch, input });
                    return false;
                };
                tokio::spawn(async move {
                    let (reply, watch) = session.execute(op).await;
                    // Only live requests may hold the session: dropping the last clone
                    // closes it, which shutdown relies on.
                    drop(session);
                    let input = Input::Reply { id, reply };
                    if tx.send(Msg::Session { epoch, input }).is_err() {
                        return;
                    }
                    if let Some(watch) = watch {
                        if let Some(event) = watch.await {
                            let input = Input::Watch(event);
                            let _ = tx.send(Msg::Session { epoch, input });
                        }
                    }
                });
            }
            Action::Spawn {
                service,
                generation,
                launch,
                settings,
            } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.spawn(&service, generation, launch, &settings);
                }
            }
            Action::Stop {
                service,
                generation,
                grace,
            } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.stop(&service, generation, grace);
                }
            }
            Action::RunTask {
                service,
                task,
                attempt,
                argv,
                env,
                path_prepend,
                cwd,
            } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.run_task(crate::tasks::TaskLaunch {
                        service,
                        task,
                        attempt,
                        argv,
                        env,
                        path_prepend,
                        cwd: PathBuf::from(cwd),
                    });
                }
            }
            Action::StopTask {
                service,
                task,
                attempt,
                grace,
            } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.stop_task(&service, &task, attempt, grace);
                }
            }
            Action::BuildEnvironment { service, spec, dir } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.build_environment(&service, spec, &dir);
                }
            }
            Action::RemoveEnvironments { service, keep } => {
                if let Some(processes) = self.processes.as_mut() {
                    processes.remove_environments(&service, keep);
                }
            }
            Action::NewSession => {
                warn!("ZooKeeper session expired; opening a new one");
                self.start_session();
            }
            Action::Report(report) => log_report(&report),
            Action::Exit => return true,
        }
        false
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
        Report::Adopted { service, pid } => {
            info!(%service, pid, "adopted a running process of the previous agent")
        }
        Report::NotReady {
            service,
            port,
            waited,
        } => warn!(%service, port, ?waited, "not ready in time (ready_timeout); restarting it"),
        Report::TaskEnded {
            service,
            task,
            attempt,
            state,
        } => info!(%service, %task, attempt, %state, "task ended"),
        Report::Fenced { services } => {
            warn!(
                ?services,
                "ZooKeeper session lost too long: stopping fence services"
            )
        }
        Report::Waiting { service, reason } => warn!(%service, "not started: {reason}"),
        Report::EnvironmentReady { service, spec_hash } => {
            info!(%service, spec_hash, "environment ready")
        }
        Report::EnvironmentFailed {
            service,
            spec_hash,
            error,
        } => error!(%service, spec_hash, "environment build failed: {error}"),
    }
}
