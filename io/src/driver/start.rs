//! Starting the production agent: sets up process supervision, the system clock, the
//! journal file and the ZooKeeper client, then runs the event loop over them.

use super::ports::ProcessPort;
use super::production::{RealZk, SupervisedProcesses};
use super::{
    backoff_wait, run_with, Ports, Refusal, StopRequest, RECONNECT_INITIAL, RECONNECT_MAX,
};
use crate::clock::SystemClock;
use crate::environment::{EnvironmentBuilder, Installer};
use crate::journal::{journal_path, JournalLimits, JournalWriter};
use crate::supervise::{ContainmentChoice, Supervisor, SupervisorConfig};
use crate::zk::ZkConfig;
use pop_core::access::AgentAccess;
use pop_core::backoff::SeededRng;
use pop_core::event::Input;
use pop_core::AgentConfig;
use std::path::PathBuf;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

#[derive(Debug, Error)]
pub enum DriverError {
    #[error("cannot set up process supervision: {0}")]
    Supervise(#[from] crate::supervise::SuperviseError),
    #[error("setting up process supervision failed: {0}")]
    Setup(String),
    /// ZooKeeper refused this agent: its credential is missing, wrong or not allowed.
    #[error("{0}")]
    Refused(String),
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
    let supervisor_config = SupervisorConfig::new(
        config.machine_id.as_str(),
        config.state_dir.clone(),
        config.containment,
    );
    // Killing what an earlier agent left may wait for stubborn processes: not on the
    // event loop.
    let supervisor =
        tokio::task::spawn_blocking(move || Supervisor::new(supervisor_config, process_tx))
            .await
            .map_err(|e| DriverError::Setup(e.to_string()))??;
    let clock = SystemClock::new();
    let seed = u64::from(std::process::id()) ^ clock.now().as_millis();
    let access = agent_access(&config.zk, &config.machine_id, seed).await?;
    let environments = EnvironmentBuilder::new(
        config.state_dir.clone(),
        config.machine_id.as_str(),
        Installer::from_env(),
        environment_tx,
    );
    let processes = SupervisedProcesses::new(supervisor, environments, config.state_dir.clone());
    let agent_config = AgentConfig {
        access,
        machine: config.machine_id.clone(),
        hostname: config.hostname.clone(),
        agent_pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        containment: processes.containment(),
        seed,
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
        zk: RealZk {
            config: config.zk.clone(),
        },
        processes,
        clock,
    };
    // On the runtime's workers rather than the caller's thread (`block_on`): the tasks
    // that feed the loop then wake it on their own worker, without a thread switch.
    tokio::spawn(run_with(ports, agent_config, journal, process_rx, stop))
        .await
        .map_err(|e| DriverError::Setup(format!("the event loop failed: {e}")))?
        .map_err(|refusal| DriverError::Refused(refusal.explain(&config.zk, &config.machine_id)))
}

/// With a credential, what ACL the agent's own nodes get: it asks ZooKeeper (until it
/// can) whether the namespace is secured and by whom. Without one, open ACLs: in a
/// secured namespace its first refused request says what is missing.
async fn agent_access(
    zk: &ZkConfig,
    machine: &pop_core::names::MachineId,
    seed: u64,
) -> Result<AgentAccess, DriverError> {
    let Some(credential) = zk.auth.first() else {
        return Ok(AgentAccess::Open);
    };
    if credential.user() != machine.as_str() {
        warn!(
            user = credential.user(),
            "the agent authenticates as a user other than its machine id"
        );
    }
    // Jittered like the reconnects: agents started together (a fleet after an outage)
    // would otherwise ask again in lockstep.
    let mut rng = SeededRng::new(seed);
    let mut delay = RECONNECT_INITIAL;
    loop {
        match crate::zk::namespace_access(zk).await {
            Ok(None) => return Ok(AgentAccess::Open),
            Ok(Some(admin)) => {
                return Ok(AgentAccess::Secured {
                    admin,
                    machine: credential.digest_id(),
                })
            }
            Err(crate::zk::AccessError::Refused(message)) => {
                let refusal = Refusal::Session(message);
                return Err(DriverError::Refused(refusal.explain(zk, machine)));
            }
            Err(crate::zk::AccessError::Retry(message)) => {
                let wait = backoff_wait(delay, &mut rng);
                warn!("cannot learn whether the namespace is secured: {message}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(RECONNECT_MAX);
            }
        }
    }
}

impl Refusal {
    /// Names the credential in use and what to do: the message the agent exits with.
    pub fn explain(&self, zk: &ZkConfig, machine: &pop_core::names::MachineId) -> String {
        let what = match self {
            Refusal::Request { doing, path } => format!("ZooKeeper refused {doing} {path}"),
            Refusal::Session(message) => message.clone(),
        };
        match zk.auth.first() {
            None => format!(
                "{what}: this agent has no credential and the namespace is secured; give it machine {machine}'s (printed by `pop machine add {machine}`) in POP_AUTH, --auth or <state dir>/credential (mode 0600)"
            ),
            Some(credential) => format!(
                "{what} to user {}: is machine {machine} registered (`pop machine add {machine}`) and its secret the one printed then?",
                credential.user()
            ),
        }
    }
}

/// The supervisor's events as the core's inputs: those of a task's processes become
/// task inputs (the ends of its output are read from files, on the blocking pool: only
/// for a task's end, so services' events never wait for a thread), in the order they
/// came.
fn task_inputs(
    mut events: mpsc::UnboundedReceiver<Input>,
    state_dir: PathBuf,
) -> mpsc::UnboundedReceiver<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let input = if crate::tasks::reads_output(&event) {
                let dir = state_dir.clone();
                match tokio::task::spawn_blocking(move || crate::tasks::translate(&dir, event))
                    .await
                {
                    Ok(input) => input,
                    Err(e) => {
                        error!("reading a task's output failed: {e}");
                        continue;
                    }
                }
            } else {
                crate::tasks::translate(&state_dir, event)
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
    rx
}
