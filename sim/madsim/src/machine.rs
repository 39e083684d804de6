//! A simulated machine: what outlives its agent. The processes it runs (killing or
//! crashing the agent node leaves them running, as SIGKILL of the agent leaves its
//! children, for the next agent to adopt), its disk, and how the harness reaches the
//! agent running now.

use crate::disk::{self, Disk, DiskStore};
use pop_core::launch::Launch;
use pop_core::names::MachineId;
use pop_core::settings::Settings;
use pop_core::zk::SessionId;
use pop_core::Timestamp;
use pop_io::driver::StopRequest;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// A running service process.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub started_at: Timestamp,
    pub port: Option<u16>,
    pub settings: Settings,
    pub launch: Launch,
}

/// Processes by (service, generation).
pub type ProcessTable = BTreeMap<(String, u64), Process>;

/// Whether a client is connected to its session right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Connected,
    Disconnected,
}

/// How the agent of a machine last ended, as the harness saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// Started and not yet returned (or killed: a kill gives no word).
    Running { incarnation: u32 },
    /// `run_with` returned.
    Exited {
        incarnation: u32,
        refused: Option<String>,
    },
}

#[derive(Debug)]
struct State {
    processes: ProcessTable,
    next_pid: u32,
    incarnations: u32,
    agent: Option<AgentState>,
    /// The session of the running agent's client, unless it gave up on it.
    session: Option<(SessionId, Link)>,
    stop: Option<mpsc::UnboundedSender<StopRequest>>,
}

#[derive(Debug)]
pub struct Machine {
    pub id: MachineId,
    state: Mutex<State>,
    disk: Arc<Mutex<Disk>>,
}

impl Machine {
    pub fn new(id: MachineId) -> Self {
        Machine {
            id,
            state: Mutex::new(State {
                processes: BTreeMap::new(),
                next_pid: 100,
                incarnations: 0,
                agent: None,
                session: None,
                stop: None,
            }),
            disk: Arc::new(Mutex::new(Disk::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn disk(&self) -> MutexGuard<'_, Disk> {
        disk::lock(&self.disk)
    }

    /// Registers a new start of the agent: its number, and the journal store it writes.
    pub(crate) fn start_agent(&self, stop: mpsc::UnboundedSender<StopRequest>) -> (u32, DiskStore) {
        let mut state = self.state();
        let incarnation = state.incarnations;
        state.incarnations += 1;
        state.agent = Some(AgentState::Running { incarnation });
        state.session = None;
        state.stop = Some(stop);
        let store = DiskStore {
            disk: Arc::clone(&self.disk),
            incarnation,
            machine: self.id.to_string(),
        };
        (incarnation, store)
    }

    pub(crate) fn agent_ended(&self, incarnation: u32, refused: Option<String>) {
        self.state().agent = Some(AgentState::Exited {
            incarnation,
            refused,
        });
    }

    /// The agent node was killed: its session is no longer the machine's.
    pub(crate) fn agent_killed(&self) {
        let mut state = self.state();
        state.session = None;
        state.stop = None;
    }

    /// The client opened `session`, or reconnected to it.
    pub(crate) fn connected(&self, session: SessionId) {
        self.state().session = Some((session, Link::Connected));
    }

    pub(crate) fn disconnected(&self, session: SessionId) {
        let mut state = self.state();
        if state.session.is_some_and(|(s, _)| s == session) {
            state.session = Some((session, Link::Disconnected));
        }
    }

    /// The client reported the session expired (the server may keep it a while longer).
    pub(crate) fn expired(&self, session: SessionId) {
        let mut state = self.state();
        if state.session.is_some_and(|(s, _)| s == session) {
            state.session = None;
        }
    }

    /// The running agent's session, as its client sees it.
    pub fn session(&self) -> Option<(SessionId, Link)> {
        self.state().session
    }

    /// The running agent's session if its client is connected.
    pub fn connected_session(&self) -> Option<SessionId> {
        match self.state().session {
            Some((session, Link::Connected)) => Some(session),
            _ => None,
        }
    }

    pub fn agent(&self) -> Option<AgentState> {
        self.state().agent.clone()
    }

    /// Asks the running agent to end; false if none can be asked.
    pub fn request_stop(&self, request: StopRequest) -> bool {
        self.state()
            .stop
            .as_ref()
            .is_some_and(|tx| tx.send(request).is_ok())
    }

    pub fn processes(&self) -> ProcessTable {
        self.state().processes.clone()
    }

    pub(crate) fn with_processes<T>(&self, f: impl FnOnce(&mut ProcessTable, &mut u32) -> T) -> T {
        let mut state = self.state();
        let state = &mut *state;
        f(&mut state.processes, &mut state.next_pid)
    }
}
