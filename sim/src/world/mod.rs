//! A deterministic world: several machines, each running the real `pop_core::Agent`,
//! against one modelled ZooKeeper and modelled processes. Time is virtual; every event
//! is ordered by (time, sequence), so one seed gives one history.

mod admin;
mod admin_checks;
mod checks;
mod command;
mod drive;
mod faults;
mod keeper;
mod launches;
pub mod load;
mod network;
mod run;
mod security;
mod tasks;
mod wanted;

pub use admin::{Finished, Terminal, ADMIN_TIMEOUT, DELETE_PATIENCE, TERMINALS};
pub use checks::REACT_BOUND;
pub use command::Command;
pub use launches::{tool_manifest, BROKEN_PACKAGE, BUILD_TIME, SIM_POP, SIM_STATE_DIR, TOOL};
pub use network::NetState;
pub use security::{Security, ADMIN_CREDENTIAL};
pub use tasks::{TaskKey, TaskProcess, JOB};

use crate::zk_model::{Notification, ZkModel};
use pop_core::backoff::{Backoff, SeededRng};
use pop_core::event::{ExitStatus, Input};
use pop_core::journal::Record;
use pop_core::launch::Launch;
use pop_core::names::MachineId;
use pop_core::paths;
use pop_core::settings::Settings;
use pop_core::zk::{SessionEvent, SessionId};
use pop_core::{Agent, AgentConfig, Timestamp};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

/// One-way network latency between an agent and ZooKeeper.
const LATENCY: Duration = Duration::from_millis(1);
/// The negotiated session timeout the agents are told.
const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
/// More events than this at one virtual instant is a livelock (by default; see
/// [`World::max_events_at_one_time`]).
const MAX_EVENTS_AT_ONE_TIME: u64 = 10_000;
/// Journal records per file before the simulated driver rotates it (by default; see
/// [`World::journal_rotate_records`]).
const JOURNAL_ROTATE_RECORDS: usize = 150;
/// Time a process takes to start, to stop, or to bind its port.
const PROCESS_DELAY: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
enum Event {
    /// An input arriving at a machine's agent; dropped if that agent was replaced since.
    Deliver {
        machine: usize,
        incarnation: u32,
        input: Input,
    },
    /// A request reaching the server, from the machine's session at sending time.
    Request {
        machine: usize,
        incarnation: u32,
        session: Option<SessionId>,
        id: pop_core::zk::RequestId,
        op: pop_core::zk::ZkOp,
    },
    /// The server expires a session nobody pings any more (a dead agent's).
    ExpireSession {
        session: SessionId,
    },
    /// A timer of the network and client model, for the cut that began at `since`.
    Link {
        machine: usize,
        since: Timestamp,
        timer: network::LinkTimer,
    },
    Heal {
        machine: usize,
    },
    /// A process that ignored SIGTERM is killed at the end of its grace.
    Kill {
        machine: usize,
        pid: u32,
    },
    /// A task's process ends (if it still runs as `pid`).
    TaskEnd {
        machine: usize,
        key: TaskKey,
        pid: u32,
        status: ExitStatus,
    },
    /// An operator's request reaching the server.
    AdminRequest {
        terminal: usize,
        step: u64,
        request: pop_core::plan::Request,
    },
    /// What comes back to an operator's plan: replies, the client's error, a wake-up.
    AdminFeedback {
        terminal: usize,
        step: u64,
        feedback: pop_core::plan::Feedback,
    },
    /// An environment build of the machine's agent of `incarnation` ends.
    Built {
        machine: usize,
        incarnation: u32,
        service: String,
        hash: String,
        ok: bool,
    },
}

/// How often processes misbehave, in thousandths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessFaults {
    pub spawn_fail_per_mille: u64,
    pub ignore_term_per_mille: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub service: String,
    pub generation: u64,
    pub pid: u32,
    /// What it was started with, to check it runs the current settings.
    pub launch: Launch,
    pub settings: Settings,
    pub started_at: Timestamp,
    pub port: Option<u16>,
    /// Ignores SIGTERM: gone only when SIGKILLed at the end of the grace.
    pub ignores_term: bool,
    /// Asked to stop (it may linger until its grace ends).
    pub stopping: bool,
}

pub struct Machine {
    pub id: String,
    pub agent: Agent,
    /// Counts agent (re)starts; events for an earlier agent are dropped.
    pub incarnation: u32,
    /// The journal of each agent this machine ran, as the production driver writes it.
    pub journals: Vec<Vec<Record>>,
    /// Journals whose last line was torn by the agent's death.
    pub torn_journals: std::collections::BTreeSet<usize>,
    pub session: Option<SessionId>,
    /// The session of the driver's latest client (its epoch): news of any other session
    /// is dropped, as the driver drops messages from older epochs.
    pub client: Option<SessionId>,
    /// Live processes by pid.
    pub processes: BTreeMap<u32, Process>,
    /// Live task processes, by task.
    pub tasks: BTreeMap<TaskKey, TaskProcess>,
    pub exited: bool,
    pub net: NetState,
    /// The agent's last session news was "disconnected" or "expired".
    pub session_lost_told: bool,
    /// Python environments on the machine's disk: (service, spec hash).
    pub environments: BTreeSet<(String, String)>,
    /// The agent's `poll_timeout` since it last changed: the next tick is looked for
    /// after every event, over every machine (a fleet has thousands).
    tick_at: Option<Timestamp>,
}

pub struct World {
    pub seed: u64,
    pub now: Timestamp,
    pub zk: ZkModel,
    pub machines: Vec<Machine>,
    queue: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    seq: u64,
    next_pid: u32,
    pub trace: Vec<String>,
    events_at_now: u64,
    /// Network delays: requests of one agent may reach the server, and their replies
    /// the agent, in another order than sent (the driver runs each request on its own
    /// task, so the core must not rely on order).
    net: SeededRng,
    pub process_faults: ProcessFaults,
    /// Services whose processes never accept connections on their port.
    pub never_ready: BTreeSet<String>,
    process_rng: SeededRng,
    /// How often each rare situation happened, to show a batch of seeds covers them.
    pub coverage: BTreeMap<&'static str, u64>,
    /// The first safety violation seen; the run stops there.
    pub violation: Option<String>,
    /// Check safety after every event (the chaos runner turns it on).
    pub check_invariants: bool,
    /// Conditions that may hold only for a bounded time, with when they began.
    pending_since: crate::invariants::Pending,
    /// Since when each machine has been connected and running (for the bounds).
    healthy_from: BTreeMap<usize, Timestamp>,
    /// The keeper's term, as the bound for edits by hand counts it.
    term: Option<keeper::Term>,
    /// Edits of machines lists by hand not yet taken on by the machines they name.
    by_hand: keeper::ByHand,
    /// Per (machine, service): the last unplanned exit, the run length before it, and
    /// the settings, to check restarts keep to the backoff policy.
    last_crash: BTreeMap<(usize, String), (Timestamp, Duration, Settings)>,
    pub events_handled: u64,
    /// More events than this at one virtual instant is a livelock. Thousands of services
    /// deployed at once legitimately make more (time has millisecond steps).
    pub max_events_at_one_time: u64,
    /// Journal records per file before the simulated driver rotates it; each new file
    /// starts with a snapshot of the whole agent.
    pub journal_rotate_records: usize,
    /// The operators' terminals, and every command they finished.
    pub terminals: Vec<Terminal>,
    pub commands: Vec<Finished>,
    /// Requests and replies of the operators lost, in thousandths (half each way).
    pub operator_loss_per_mille: u64,
    /// The operators' network: its own draws, so agents' traffic is not shifted by it.
    admin_rng: SeededRng,
    /// Every task an operator issued, as it asked.
    pub issued: BTreeMap<TaskKey, pop_core::task::TaskRequest>,
    /// How often each task ran on each machine, and how often it may have.
    task_runs: tasks::TaskRuns,
    /// Every valid manifest ever stored per type, by the type's name.
    pub(crate) plugin_history: BTreeMap<String, Vec<pop_core::plugin::Manifest>>,
    /// The credentials of a secured namespace; `None`: unsecured (every node open).
    pub security: Option<Security>,
    /// What the agents cost the server (the simulator's fleet mode reports it).
    pub load: load::ServerLoad,
}

impl World {
    /// A world whose namespace is as `pop init` makes it: unsecured.
    pub fn new(machine_ids: &[&str], seed: u64) -> World {
        World::build(machine_ids, seed, false)
    }

    /// A world whose namespace is secured (`pop init --admin-identity`, then `pop machine
    /// add` for every machine): see `security`.
    pub fn new_secured(machine_ids: &[&str], seed: u64) -> World {
        World::build(machine_ids, seed, true)
    }

    fn build(machine_ids: &[&str], seed: u64, secured: bool) -> World {
        let mut zk = ZkModel::new();
        if !secured {
            // A namespace as `pop init` makes it.
            for p in paths::NAMESPACE {
                zk.put(p, b"");
            }
        }
        let mut world = World {
            seed,
            now: Timestamp::from_millis(1_000_000),
            zk,
            machines: Vec::new(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            next_pid: 1000,
            trace: Vec::new(),
            events_at_now: 0,
            net: SeededRng::new(seed ^ 0x6e65_7477_6f72_6b21),
            process_faults: ProcessFaults::default(),
            never_ready: BTreeSet::new(),
            process_rng: SeededRng::new(seed ^ 0x7072_6f63_6573_7321),
            coverage: BTreeMap::new(),
            violation: None,
            check_invariants: false,
            pending_since: Default::default(),
            healthy_from: BTreeMap::new(),
            term: None,
            by_hand: BTreeMap::new(),
            last_crash: BTreeMap::new(),
            events_handled: 0,
            max_events_at_one_time: MAX_EVENTS_AT_ONE_TIME,
            journal_rotate_records: JOURNAL_ROTATE_RECORDS,
            terminals: (0..TERMINALS).map(|_| Terminal::default()).collect(),
            commands: Vec::new(),
            operator_loss_per_mille: 0,
            admin_rng: SeededRng::new(seed ^ 0x6f70_6572_6174_6f72),
            issued: BTreeMap::new(),
            task_runs: BTreeMap::new(),
            plugin_history: BTreeMap::new(),
            security: None,
            load: load::ServerLoad::default(),
        };
        if secured {
            world.security = Some(world.secure_namespace(machine_ids));
        }
        for (i, id) in machine_ids.iter().enumerate() {
            let config = world.agent_config(id, 0);
            let agent = Agent::new(config.clone());
            world.machines.push(Machine {
                id: id.to_string(),
                tick_at: agent.poll_timeout(),
                agent,
                incarnation: 0,
                journals: vec![vec![Record::Start { config }]],
                torn_journals: Default::default(),
                session: None,
                client: None,
                processes: BTreeMap::new(),
                tasks: BTreeMap::new(),
                exited: false,
                net: NetState::default(),
                session_lost_told: false,
                environments: BTreeSet::new(),
            });
            world.connect(i);
        }
        world
    }

    fn agent_config(&self, id: &str, incarnation: u32) -> AgentConfig {
        AgentConfig {
            access: self
                .security
                .as_ref()
                .map(|s| s.agent_access(id))
                .unwrap_or_default(),
            machine: MachineId::new(id).unwrap_or_else(|e| panic!("bad machine id: {e}")),
            hostname: format!("host-{id}"),
            agent_pid: 1 + incarnation,
            version: "sim".into(),
            containment: "sim".into(),
            seed: self
                .seed
                .wrapping_add(u64::from(incarnation) << 32)
                .wrapping_add(id.len() as u64),
            backoff: Backoff::default(),
            pop: SIM_POP.to_string(),
            state_dir: SIM_STATE_DIR.to_string(),
        }
    }

    pub(crate) fn coverage(&mut self, situation: &'static str) {
        *self.coverage.entry(situation).or_default() += 1;
    }

    /// Schedules an input for the machine's current agent.
    fn send_to_agent(&mut self, machine: usize, at: Timestamp, input: Input) {
        let incarnation = self.machines[machine].incarnation;
        self.send_to_agent_as(machine, incarnation, at, input);
    }

    /// Schedules an input for the machine's agent of `incarnation`.
    fn send_to_agent_as(&mut self, machine: usize, incarnation: u32, at: Timestamp, input: Input) {
        self.schedule(
            at,
            Event::Deliver {
                machine,
                incarnation,
                input,
            },
        );
    }

    /// A new agent on the machine: it adopts every live process (as the production
    /// supervisor does from its run records), then opens a session.
    fn start_agent(&mut self, machine: usize) {
        // A new agent does not know the crash history: its first start is not a
        // backoff violation.
        self.last_crash.retain(|(m, _), _| *m != machine);
        // Its start-up kills what is left of the old agent's tasks.
        self.agent_gone(machine);
        let incarnation = self.machines[machine].incarnation + 1;
        let config = self.agent_config(&self.machines[machine].id.clone(), incarnation);
        let m = &mut self.machines[machine];
        m.incarnation = incarnation;
        m.agent = Agent::new(config.clone());
        m.tick_at = m.agent.poll_timeout();
        m.journals.push(vec![Record::Start { config }]);
        m.exited = false;
        m.session_lost_told = false;
        let mut adopted: Vec<Process> = m.processes.values().cloned().collect();
        adopted.sort_by_key(|p| p.generation);
        for p in adopted {
            self.deliver(
                machine,
                Input::Adopted {
                    service: p.service,
                    generation: p.generation,
                    pid: p.pid,
                    started_at: p.started_at,
                    port: p.port,
                    settings: p.settings,
                    launch: Some(Box::new(p.launch)),
                },
            );
        }
        self.connect(machine);
    }

    fn schedule(&mut self, at: Timestamp, event: Event) {
        self.seq += 1;
        let key = self.seq as usize;
        self.events.insert(key, event);
        self.queue.push(Reverse((at, self.seq, key)));
    }

    /// The server ends `session`: its ephemerals go and their watchers hear of it.
    pub(super) fn end_session(&mut self, session: SessionId) {
        let n = self.zk.expire(session);
        self.notify(n);
    }

    /// A process is gone; its agent hears of it a moment later.
    fn report_exit(
        &mut self,
        machine: usize,
        service: String,
        generation: u64,
        status: ExitStatus,
    ) {
        self.send_to_agent(
            machine,
            self.now + PROCESS_DELAY,
            Input::Exited {
                service,
                generation,
                status,
            },
        );
    }

    fn connect(&mut self, machine: usize) {
        if !self.connect_when_possible(machine) {
            return;
        }
        let session = self.zk.open_session();
        self.authenticate_agent(machine, session);
        self.machines[machine].client = Some(session);
        // The driver drops its old client for the new one, which ends the old session.
        if let Some(old) = self.machines[machine].session.replace(session) {
            self.end_session(old);
        }
        self.deliver_connected(machine, session);
    }

    /// The agent hears that `session` is connected, one network hop from now.
    fn deliver_connected(&mut self, machine: usize, session: SessionId) {
        self.send_to_agent(
            machine,
            self.now + LATENCY,
            Input::Session(SessionEvent::Connected {
                session,
                timeout: SESSION_TIMEOUT,
            }),
        );
    }

    fn notify(&mut self, notifications: Vec<Notification>) {
        for (session, event) in notifications {
            if let Some(machine) = self
                .machines
                .iter()
                .position(|m| m.session == Some(session))
            {
                self.load.notifications += 1;
                let input = Input::Watch(event);
                if !self.hold_from_server(machine, &input) {
                    let at = self.now + self.latency(machine);
                    self.send_to_agent(machine, at, input);
                }
            }
        }
    }
}
