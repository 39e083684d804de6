//! A simulated machine: what outlives its agent. The processes it runs (killing or
//! crashing the agent node leaves them running, as SIGKILL of the agent leaves its
//! children, for the next agent to adopt), its disk, and how the harness reaches the
//! agent running now.

use crate::disk::{self, Disk, DiskStore};
use pop_core::event::{ExitStatus, Input};
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

/// What the simulated OS did for an agent: a process started or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectKind {
    Spawn,
    Stop,
}

/// An effect and how much of the journal was on disk when it happened (the contract
/// checks ask whether the input it follows from was already there).
#[derive(Debug, Clone)]
pub struct Effect {
    pub kind: EffectKind,
    pub service: String,
    pub generation: u64,
    /// The disk's file being written then, and its length.
    pub file: usize,
    pub journaled: usize,
}

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
    /// The session the machine's agents last connected to, kept after it ended.
    last_session: Option<SessionId>,
    /// The running agent's process events, for a process that dies of itself.
    process_events: Option<mpsc::UnboundedSender<Input>>,
    effects: Vec<Effect>,
    /// When the harness let the agent go on after pausing it (journal time).
    resumes: Vec<Timestamp>,
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
                last_session: None,
                process_events: None,
                effects: Vec::new(),
                resumes: Vec::new(),
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
    pub(crate) fn start_agent(
        &self,
        stop: mpsc::UnboundedSender<StopRequest>,
        process_events: mpsc::UnboundedSender<Input>,
    ) -> (u32, DiskStore) {
        let mut state = self.state();
        state.process_events = Some(process_events);
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
        state.process_events = None;
    }

    /// The client opened `session`, or reconnected to it.
    pub(crate) fn connected(&self, session: SessionId) {
        let mut state = self.state();
        state.session = Some((session, Link::Connected));
        state.last_session = Some(session);
    }

    /// The session the machine's agents last connected to, even if it has ended since.
    pub fn last_session(&self) -> Option<SessionId> {
        self.state().last_session
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
    /// (None once the agent died tearing a journal write: its node waits for madsim to
    /// restart it.)
    pub fn connected_session(&self) -> Option<SessionId> {
        let state = self.state();
        if let Some(AgentState::Running { incarnation }) = state.agent {
            if self.disk().crashed(incarnation) {
                return None;
            }
        }
        match state.session {
            Some((session, Link::Connected)) => Some(session),
            _ => None,
        }
    }

    /// The running agent's session, connected or not (None once its client gave up on
    /// it, or the agent died tearing a journal write).
    pub fn agent_session(&self) -> Option<SessionId> {
        let state = self.state();
        if let Some(AgentState::Running { incarnation }) = state.agent {
            if self.disk().crashed(incarnation) {
                return None;
            }
        }
        state.session.map(|(session, _)| session)
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

    /// Notes an effect the agent asked of the OS, with the journal as it is on disk.
    pub(crate) fn effect(&self, kind: EffectKind, service: &str, generation: u64) {
        let (file, journaled) = {
            let disk = self.disk();
            let files = disk.files();
            (
                files.len().saturating_sub(1),
                files.last().map_or(0, |f| f.bytes.len()),
            )
        };
        self.state().effects.push(Effect {
            kind,
            service: service.to_string(),
            generation,
            file,
            journaled,
        });
    }

    /// The agent was paused and now goes on (or was killed while paused), at `at` on
    /// the agents' clock: its timers were frozen till then.
    pub(crate) fn resumed(&self, at: Timestamp) {
        self.state().resumes.push(at);
    }

    pub fn resumes(&self) -> Vec<Timestamp> {
        self.state().resumes.clone()
    }

    pub fn effects(&self) -> Vec<Effect> {
        self.state().effects.clone()
    }

    /// A service's process dies of itself (SIGKILL from outside): gone from the table,
    /// its exit reported to the running agent. False when it was not running.
    pub fn process_dies(&self, service: &str) -> bool {
        let mut state = self.state();
        let Some(key) = state.processes.keys().find(|(s, _)| s == service).cloned() else {
            return false;
        };
        state.processes.remove(&key);
        if let Some(tx) = &state.process_events {
            let _ = tx.send(Input::Exited {
                service: key.0,
                generation: key.1,
                status: ExitStatus {
                    code: None,
                    signal: Some(9),
                },
            });
        }
        true
    }

    pub(crate) fn with_processes<T>(&self, f: impl FnOnce(&mut ProcessTable, &mut u32) -> T) -> T {
        let mut state = self.state();
        let state = &mut *state;
        f(&mut state.processes, &mut state.next_pid)
    }
}
