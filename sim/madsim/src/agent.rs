//! The body of an agent node: the production loop (`run_with`) over this machine's
//! simulated ports, with its journal on the machine's disk. Run again from the start
//! each time madsim restarts the node (after a kill or a crash mid-write).

use crate::machine::Machine;
use crate::processes::SimProcesses;
use crate::zk_client::TcpZk;
use pop_core::backoff::Backoff;
use pop_core::AgentConfig;
use pop_io::clock::SystemClock;
use pop_io::driver::{run_with, Ports};
use pop_io::journal::{JournalLimits, JournalWriter};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What the agents ask of ZooKeeper.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// The pop binary and state directory the agents render launches with.
pub const POP: &str = "/usr/bin/pop";
pub const STATE_DIR: &str = "/var/lib/pop";

/// Small enough that a run rotates its journals: every rotated file must replay on its
/// own, from its snapshot.
pub const JOURNAL_LIMITS: JournalLimits = JournalLimits {
    max_bytes: 32 * 1024,
    keep: 2,
};

pub async fn agent_main(machine: Arc<Machine>) {
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    let (process_tx, process_rx) = mpsc::unbounded_channel();
    let (incarnation, store) = machine.start_agent(stop_tx, process_tx.clone());
    // std's clocks are madsim's virtual ones: the production clock as it is.
    let clock = SystemClock::new();
    let config = AgentConfig {
        access: Default::default(),
        machine: machine.id.clone(),
        hostname: machine.id.to_string(),
        agent_pid: 1000 + incarnation,
        version: "madsim".into(),
        containment: "madsim".into(),
        // From madsim's RNG: part of the seed, unlike the pid and wall time `run` uses.
        seed: madsim::rand::random(),
        backoff: Backoff::default(),
        pop: POP.into(),
        state_dir: STATE_DIR.into(),
    };
    let journal = JournalWriter::start_in(Box::new(store), &config, JOURNAL_LIMITS)
        .expect("the simulated disk refuses nothing");
    let ports = Ports {
        zk: TcpZk {
            machine: Arc::clone(&machine),
            session_timeout: SESSION_TIMEOUT,
            op_timeout: OP_TIMEOUT,
        },
        processes: SimProcesses {
            machine: Arc::clone(&machine),
            events: process_tx,
            clock,
        },
        clock,
    };
    let result = run_with(ports, config, Some(journal), process_rx, stop_rx).await;
    machine.agent_ended(incarnation, result.err().map(|r| format!("{r:?}")));
}
