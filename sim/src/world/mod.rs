//! A deterministic world: several machines, each running the real `pop_core::Agent`,
//! against one modelled ZooKeeper and modelled processes. Time is virtual; every event
//! is ordered by (time, sequence), so one seed gives one history.

mod admin;
mod admin_checks;
mod checks;
mod keeper;
mod launches;
pub mod load;
mod network;
mod security;
mod tasks;
mod wanted;

pub use admin::{Command, Finished, Terminal, ADMIN_TIMEOUT, DELETE_PATIENCE, TERMINALS};
pub use checks::REACT_BOUND;
pub use launches::{tool_manifest, BROKEN_PACKAGE, BUILD_TIME, SIM_POP, SIM_STATE_DIR, TOOL};
pub use network::NetState;
pub use security::{Security, ADMIN_CREDENTIAL};
pub use tasks::{TaskKey, TaskProcess, JOB};

use crate::zk_model::{Notification, ZkModel};
use pop_core::backoff::{Backoff, SeededRng};
use pop_core::event::{Action, ExitStatus, Input};
use pop_core::journal::Record;
use pop_core::launch::Launch;
use pop_core::names::MachineId;
use pop_core::paths;
use pop_core::settings::Settings;
use pop_core::zk::{SessionEvent, SessionId, ZkError, ZkReply};
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

    /// The agent process dies (kill -9): its processes live on as orphans and its
    /// session lingers until the server expires it. A new agent starts and adopts them.
    pub fn crash_agent(&mut self, machine: usize) {
        self.trace
            .push(format!("{} m{machine} agent killed", self.now));
        if !self.machines[machine].processes.is_empty() {
            self.coverage("agent killed with services running");
        }
        // Killed mid-write, half the time: the journal's last line is torn.
        if self.process_rng.next_u64().is_multiple_of(2) {
            let m = &mut self.machines[machine];
            let last = m.journals.len().saturating_sub(1);
            m.torn_journals.insert(last);
        }
        // A new process: not frozen, and nothing waits for it.
        self.machines[machine].net.paused_since = None;
        if let Some(old) = self.machines[machine].session.take() {
            self.schedule(
                self.now + SESSION_TIMEOUT,
                Event::ExpireSession { session: old },
            );
        }
        self.start_agent(machine);
    }

    /// `pop stop --keep-services` then a new agent: detach, then start and adopt.
    pub fn upgrade_agent(&mut self, machine: usize) {
        if self.machines[machine].net.paused_since.is_some() {
            return; // a frozen agent cannot be asked to stop
        }
        self.trace
            .push(format!("{} m{machine} agent upgrade", self.now));
        self.deliver(machine, Input::Detach);
        self.start_agent(machine);
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

    /// The process of `service` on `machine` dies on its own.
    pub fn crash(&mut self, machine: usize, service: &str, status: ExitStatus) {
        let pid = self.machines[machine]
            .processes
            .values()
            .find(|p| p.service == service)
            .map(|p| p.pid);
        if let Some(pid) = pid {
            if let Some(p) = self.machines[machine].processes.remove(&pid) {
                self.trace
                    .push(format!("{} m{machine} crash {service} pid {pid}", self.now));
                // A process already asked to stop is replaced at once: not a crash loop.
                if !p.stopping {
                    let ran = self.now.saturating_since(p.started_at);
                    self.last_crash.insert(
                        (machine, p.service.clone()),
                        (self.now, ran, p.settings.clone()),
                    );
                }
                self.report_exit(machine, p.service, p.generation, status);
            }
        }
    }

    fn note_expiry(&mut self, machine: usize) {
        if !self.machines[machine].processes.is_empty() {
            self.coverage("session expiry while services run");
        }
        if !self.machines[machine].tasks.is_empty() {
            self.coverage("session expiry while a task runs");
        }
    }

    /// The server expires the machine's session.
    pub fn expire_session(&mut self, machine: usize) {
        self.note_expiry(machine);
        if let Some(session) = self.machines[machine].session.take() {
            self.trace
                .push(format!("{} m{machine} session expired", self.now));
            self.end_session(session);
            self.send_to_agent(
                machine,
                self.now + LATENCY,
                Input::Session(SessionEvent::Expired),
            );
        }
    }

    /// The connection drops without the session ending: the agent hears of it at once,
    /// while replies already on the way still arrive afterwards.
    pub fn disconnect(&mut self, machine: usize) {
        self.trace
            .push(format!("{} m{machine} disconnected", self.now));
        self.send_to_agent(
            machine,
            self.now,
            Input::Session(SessionEvent::Disconnected),
        );
    }

    /// The connection comes back within the same session.
    pub fn reconnect(&mut self, machine: usize) {
        if let Some(session) = self.machines[machine].session {
            self.trace
                .push(format!("{} m{machine} reconnected", self.now));
            self.deliver_connected(machine, session);
        }
    }

    pub fn shutdown(&mut self, machine: usize) {
        self.send_to_agent(machine, self.now, Input::Shutdown);
    }

    fn perform(&mut self, machine: usize, action: Action) {
        self.trace
            .push(format!("{} m{machine} {action:?}", self.now));
        match action {
            Action::Zk { id, op } => {
                let session = self.machines[machine].session;
                let incarnation = self.machines[machine].incarnation;
                let jitter = Duration::from_micros(self.net.next_u64() % 3000);
                self.schedule(
                    self.now + self.latency(machine) + jitter,
                    Event::Request {
                        machine,
                        incarnation,
                        session,
                        id,
                        op,
                    },
                );
            }
            Action::Spawn {
                service,
                generation,
                launch,
                settings,
            } => {
                if self.process_rng.next_u64() % 1000 < self.process_faults.spawn_fail_per_mille {
                    self.coverage("spawn failure");
                    self.send_to_agent(
                        machine,
                        self.now + PROCESS_DELAY,
                        Input::SpawnFailed {
                            service,
                            generation,
                            error: "simulated: cannot exec".into(),
                        },
                    );
                    return;
                }
                self.check_backoff(machine, &service, &settings);
                self.check_launch(machine, &service, &settings, &launch);
                let ignores_term =
                    self.process_rng.next_u64() % 1000 < self.process_faults.ignore_term_per_mille;
                self.next_pid += 1;
                let pid = self.next_pid;
                let port = launch.probe.as_ref().map(|probe| {
                    if probe.port == 0 {
                        20_000 + (pid % 10_000) as u16
                    } else {
                        probe.port
                    }
                });
                self.machines[machine].processes.insert(
                    pid,
                    Process {
                        service: service.clone(),
                        generation,
                        pid,
                        launch: launch.clone(),
                        settings: *settings,
                        started_at: self.now,
                        port,
                        ignores_term,
                        stopping: false,
                    },
                );
                let at = self.now + PROCESS_DELAY;
                self.send_to_agent(
                    machine,
                    at,
                    Input::Spawned {
                        service: service.clone(),
                        generation,
                        pid,
                    },
                );
                if let Some(port) = port.filter(|_| !self.never_ready.contains(&service)) {
                    self.send_to_agent(
                        machine,
                        at + PROCESS_DELAY,
                        Input::Ready {
                            service,
                            generation,
                            port: Some(port),
                        },
                    );
                }
            }
            Action::Stop {
                service,
                generation,
                grace,
            } => {
                // The agent asked it to stop (perhaps after it had already crashed,
                // unknown to the agent): what follows is a planned start.
                self.last_crash.remove(&(machine, service.clone()));
                let m = &mut self.machines[machine];
                let stubborn: Vec<u32> = m
                    .processes
                    .values_mut()
                    .filter(|p| p.service == service && p.generation == generation)
                    .filter(|p| p.ignores_term)
                    .map(|p| {
                        p.stopping = true;
                        p.pid
                    })
                    .collect();
                if let Some(pid) = stubborn.first() {
                    // SIGTERM is ignored; SIGKILL ends it at the end of the grace.
                    self.coverage("stop of a process that ignores SIGTERM");
                    self.schedule(self.now + grace, Event::Kill { machine, pid: *pid });
                    return;
                }
                m.processes
                    .retain(|_, p| !(p.service == service && p.generation == generation));
                let status = ExitStatus {
                    code: None,
                    signal: Some(15),
                };
                self.report_exit(machine, service, generation, status);
            }
            Action::BuildEnvironment { service, spec, .. } => {
                self.build_environment(machine, service, &spec)
            }
            Action::RemoveEnvironments { service, keep } => {
                self.check_environment_removal(machine, &service, &keep);
                self.machines[machine]
                    .environments
                    .retain(|(s, h)| *s != service || keep.contains(h));
            }
            Action::NewSession => self.connect(machine),
            Action::RunTask {
                service,
                task,
                attempt,
                argv,
                ..
            } => self.run_task(machine, (service, task), attempt, &argv),
            Action::StopTask {
                service,
                task,
                attempt,
                ..
            } => self.stop_task(machine, (service, task), attempt),
            Action::Report(_) => {}
            Action::Exit => {
                self.agent_gone(machine);
                self.machines[machine].exited = true;
                if let Some(session) = self.machines[machine].session.take() {
                    self.end_session(session);
                }
            }
        }
    }

    fn deliver(&mut self, machine: usize, input: Input) {
        if self.machines[machine].exited {
            return;
        }
        let incarnation = self.machines[machine].incarnation;
        if self.hold_if_paused(machine, incarnation, &input) {
            return;
        }
        // Like the driver's epochs: news of a session that is no longer the machine's
        // client never reaches the core.
        if let Input::Session(SessionEvent::Connected { session, .. }) = &input {
            if self.machines[machine].client != Some(*session) {
                return;
            }
        }
        self.trace
            .push(format!("{} m{machine} <- {input:?}", self.now));
        let now = self.now;
        let phases_before = if self.check_invariants {
            self.machines[machine].agent.service_phases()
        } else {
            BTreeMap::new()
        };
        let m = &mut self.machines[machine];
        if let Input::Session(event) = &input {
            m.session_lost_told = !matches!(event, SessionEvent::Connected { .. });
        }
        let journal = m.journals.last_mut();
        // Journaled as the production driver does: the input first, then the actions.
        if let Some(journal) = journal {
            journal.push(Record::Input {
                at: now,
                input: input.clone(),
            });
        }
        m.agent.handle(now, input);
        let actions: Vec<Action> = m.agent.drain_actions();
        m.tick_at = m.agent.poll_timeout();
        let pending = m.agent.pending_requests();
        self.load.set_pending(machine, pending);
        let m = &mut self.machines[machine];
        if let Some(journal) = m.journals.last_mut() {
            journal.push(Record::Actions {
                actions: actions.clone(),
            });
            // Rotate as the driver does at its size limit: the next file starts with a
            // snapshot, so replay is also checked from snapshots.
            if journal.len() >= self.journal_rotate_records {
                let snapshot = Record::Snapshot {
                    agent: Box::new(m.agent.clone()),
                };
                m.journals.push(vec![snapshot]);
            }
        }
        if self.check_invariants {
            self.check_bad_data_changes_nothing(machine, &actions, &phases_before);
            self.check_requests_only_when_connected(machine, &actions);
            self.check_bookkeeping(machine);
        }
        for action in actions {
            self.perform(machine, action);
        }
    }

    fn next_tick(&self) -> Option<(Timestamp, usize)> {
        self.machines
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.exited && m.net.paused_since.is_none())
            .filter_map(|(i, m)| m.tick_at.map(|t| (t.max(self.now), i)))
            .min()
    }

    /// Runs events until virtual time `until`.
    pub fn run_until(&mut self, until: Timestamp) {
        loop {
            let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let tick = self.next_tick();
            let take_tick = match (tick, next_event) {
                (Some((t, _)), Some(e)) => t < e,
                (Some(_), None) => true,
                _ => false,
            };
            if take_tick {
                let Some((t, machine)) = tick else { break };
                if t > until {
                    break;
                }
                self.advance(t);
                self.deliver(machine, Input::Tick);
                if self.after_event() {
                    break;
                }
                continue;
            }
            let Some(Reverse((t, _, key))) = self.queue.peek().copied() else {
                break;
            };
            if t > until {
                break;
            }
            self.queue.pop();
            self.advance(t);
            if let Some(event) = self.events.remove(&key) {
                self.dispatch(event);
            }
            if self.after_event() {
                break;
            }
        }
        if self.violation.is_none() {
            self.now = self.now.max(until);
        }
    }

    /// Counts the event and checks safety; true when the run must stop.
    fn after_event(&mut self) -> bool {
        self.events_handled += 1;
        if self.check_invariants {
            self.check_safety();
            if let Some(m) = self
                .machines
                .iter()
                .find(|m| m.tick_at != m.agent.poll_timeout())
            {
                self.violate(format!("{}: the simulator's next tick is stale", m.id));
            }
        }
        self.violation.is_some()
    }

    /// Moves virtual time to `t`, catching livelock: agents that keep acting without
    /// time passing would otherwise hang the simulation and grow without bound.
    fn advance(&mut self, t: Timestamp) {
        if t == self.now {
            self.events_at_now += 1;
            if self.events_at_now > self.max_events_at_one_time {
                let tail: Vec<&String> = self.trace.iter().rev().take(40).collect();
                panic!(
                    "livelock: over {} events at {} without time passing; last events:\n{tail:#?}",
                    self.max_events_at_one_time, self.now
                );
            }
        } else {
            self.events_at_now = 0;
        }
        self.now = t;
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn dispatch(&mut self, event: Event) {
        // A request on a cut link waits, or fails at the client, before reaching the server.
        if let Event::Request { machine, .. } = &event {
            if self.hold_request(*machine, &event) {
                return;
            }
        }
        match event {
            Event::Deliver {
                machine,
                incarnation,
                input,
            } => {
                if incarnation == self.machines[machine].incarnation {
                    self.deliver(machine, input);
                }
            }
            Event::Request {
                machine,
                incarnation,
                session,
                id,
                op,
            } => {
                self.load.on_request(self.now);
                self.check_own_write(machine, session, &op);
                let before = self.result_before(&op);
                let (reply, n) = match session {
                    Some(s) => self.zk.apply(s, &op),
                    None => (ZkReply::Error(ZkError::ConnectionLoss), Vec::new()),
                };
                self.check_task_write(machine, &op, before, &reply);
                if self.check_invariants {
                    self.check_agent_refusal(machine, &op, &reply);
                }
                self.notify(n);
                let input = Input::Reply { id, reply };
                if incarnation == self.machines[machine].incarnation
                    && self.hold_from_server(machine, &input)
                {
                    return;
                }
                let at = self.now + self.latency(machine);
                self.send_to_agent_as(machine, incarnation, at, input);
            }
            Event::ExpireSession { session } => {
                self.end_session(session);
            }
            Event::Link {
                machine,
                since,
                timer,
            } => self.on_link_timer(machine, since, timer),
            Event::Heal { machine } => self.heal(machine),
            Event::AdminRequest {
                terminal,
                step,
                request,
            } => self.on_admin_request(terminal, step, request),
            Event::AdminFeedback {
                terminal,
                step,
                feedback,
            } => {
                if self.terminals[terminal].step_is(step) {
                    self.admin_next(terminal, feedback);
                }
            }
            Event::TaskEnd {
                machine,
                key,
                pid,
                status,
            } => self.end_task(machine, key, pid, status),
            Event::Built {
                machine,
                incarnation,
                service,
                hash,
                ok,
            } => self.on_built(machine, incarnation, service, hash, ok),
            Event::Kill { machine, pid } => {
                if let Some(p) = self.machines[machine].processes.remove(&pid) {
                    let status = ExitStatus {
                        code: None,
                        signal: Some(9),
                    };
                    self.report_exit(machine, p.service, p.generation, status);
                }
            }
        }
    }
}
