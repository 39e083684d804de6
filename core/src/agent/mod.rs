//! The agent state machine: one machine's view of ZooKeeper and its supervised processes.
//!
//! Sans-IO: call [`Agent::handle`] with each input and the current time, then drain
//! [`Agent::poll_action`] until it returns `None`, then sleep until [`Agent::poll_timeout`]
//! (or the next input) and deliver [`Input::Tick`] when it is reached.

mod assignments;
mod ephemeral;
mod index;
mod keeper;
mod outstanding;
mod publish;
mod query;
mod readiness;
mod service;
mod target;
mod tasks;
mod tree_watch;
mod types;
mod wanted;

use crate::access::AgentAccess;
use crate::backoff::{Backoff, SeededRng};
use crate::event::{Action, Input, Report};
use crate::names::MachineId;
use crate::paths::{self, Watched};
use crate::time::Timestamp;
use crate::zk::{Acl, CreateMode, RequestId, SessionEvent, SessionId, ZkError, ZkOp, ZkReply};
use ephemeral::{EphemeralNode, Step};
use index::{Dirty, Index};
use keeper::Keeper;
use serde::{Deserialize, Serialize};
use service::{Control, Desired, Outbox, RunSpec, Service};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use target::Listing;
use tasks::{TaskIndex, TaskOutcome, Tasks};
use tree_watch::TreeWatch;
use types::TypeReads;

pub use outstanding::MAX_OUTSTANDING_READS;
pub use query::{EnvironmentState, EnvironmentView, TaskLaunchError};

/// `fence` services are stopped this fraction of the session timeout after the session
/// is lost, with at most `FENCE_GRACE_DIVISOR`th of it between SIGTERM and SIGKILL.
/// The client notices a silent server about half a timeout after the last exchange, so
/// they are down by ~7/8 of the timeout, before the server can expire the session.
const FENCE_AFTER_DIVISOR: u32 = 4;
const FENCE_GRACE_DIVISOR: u32 = 8;

/// What the driver knows about its host, fixed for the agent's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub machine: MachineId,
    pub hostname: String,
    pub agent_pid: u32,
    pub version: String,
    /// How services are contained ("cgroup-v2 ...", "process-group ..."), shown by `pop status`.
    pub containment: String,
    /// Seeds the backoff jitter.
    pub seed: u64,
    pub backoff: Backoff,
    /// The pop binary (`{pop}` in commands: the `echo` type runs it).
    #[serde(default)]
    pub pop: String,
    /// The agent's state directory: services work in `<state_dir>/work/<service>` and
    /// their environments are in `<state_dir>/env/<service>/`.
    #[serde(default)]
    pub state_dir: String,
    /// The ACL of the nodes it creates; open unless the namespace is secured.
    #[serde(default, skip_serializing_if = "AgentAccess::is_open")]
    pub access: AgentAccess,
}

impl AgentConfig {
    /// What rendering a launch needs of the machine.
    pub fn host(&self) -> crate::launch::Host {
        crate::launch::Host {
            machine: self.machine.as_str().to_string(),
            pop: self.pop.clone(),
            state_dir: self.state_dir.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Pending {
    Read(Watched),
    Ephemeral {
        path: String,
        step: Step,
    },
    /// Creating /machines/<id>; the result does not matter beyond the log.
    MachineNode,
    /// Adding the watch on /machines/<id> (see `tree_watch`).
    TreeWatch,
    /// Creating `/assignments`, this machine's index, or its entry for `service`.
    IndexNode {
        service: Option<String>,
        path: String,
    },
    /// A request of the keeper's (see `keeper`).
    Keeper {
        job: keeper::Job,
        sent: keeper::Sent,
    },
    /// A read or write of a task's node without a watch.
    Task {
        service: String,
        task: crate::task::TaskId,
        read: tasks::replies::Read,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum SessionState {
    Connecting,
    Connected(SessionId),
    Disconnected(SessionId),
    Expired,
}

/// Serializable, so the driver can snapshot it into its journal between inputs.
///
/// An input costs what it changes: it notes the services and nodes it touched
/// ([`Dirty`]), and only those are reconciled and published; deadlines, counts and the
/// report's list are kept in an [`Index`]. Neither is serialized: they follow from the
/// rest, and an agent read from a snapshot rebuilds them on its first input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agent {
    config: AgentConfig,
    now: Timestamp,
    started_at: Option<Timestamp>,
    session: SessionState,
    /// Negotiated timeout of the current (or last) session.
    session_timeout: Duration,
    /// When the session was lost (disconnected or expired), until it is back.
    lost_since: Option<Timestamp>,
    /// Lost long enough: `fence` services are kept down until the session is back.
    fenced: bool,
    next_request: u64,
    pending: BTreeMap<RequestId, Pending>,
    /// The reads among `pending` (at most [`MAX_OUTSTANDING_READS`]).
    #[serde(default)]
    reads_in_flight: BTreeSet<RequestId>,
    /// Reads waiting for room under the cap, in order.
    #[serde(default)]
    queued_reads: VecDeque<(ZkOp, Pending)>,
    /// Paths with a watch registered in this session.
    armed: BTreeSet<String>,
    /// The watch on this machine's pid nodes, in this session.
    #[serde(default)]
    tree_watch: TreeWatch,
    /// Reads that failed and are retried when `retry_at` passes.
    reread: BTreeSet<String>,
    retry_at: Option<Timestamp>,
    services: BTreeMap<String, Service>,
    /// Coordinated tasks of the services deployed here.
    #[serde(default)]
    tasks: Tasks,
    nodes: BTreeMap<String, EphemeralNode>,
    /// The newest data seen per read path (its mzxid), so a late reply is not applied.
    #[serde(default)]
    newest_read: BTreeMap<String, i64>,
    /// Paths whose data is bad, with the problem; shown in the agent report.
    problems: BTreeMap<String, String>,
    /// The stored types the wanted services have, as read.
    #[serde(default)]
    types: TypeReads,
    /// Services whose settings an ACL keeps from this machine (a secured namespace lets
    /// a machine read only the settings of services deployed on it): read again once
    /// its machines list names this machine.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    withheld: BTreeSet<String>,
    /// The election of the agent that repairs the assignment index, and its repair.
    #[serde(default)]
    keeper: Keeper,
    /// Services new in the index whose machines list the keeper is reading: each takes
    /// the keeper's read when it lands instead of reading the list a second time.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    awaiting_keepers_list: BTreeSet<String>,
    /// Reads of this machine's index sent or queued and not yet answered: while one is
    /// out, the keeper's writes of this machine's entries wait for what it says.
    #[serde(default)]
    own_index_reads: u32,
    shutting_down: bool,
    exited: bool,
    actions: VecDeque<Action>,
    rng: SeededRng,
    #[serde(skip)]
    index: Index,
    #[serde(skip)]
    task_index: TaskIndex,
    #[serde(skip)]
    dirty: Dirty,
    /// Ephemeral nodes waiting for the retry timer, by path.
    #[serde(skip)]
    stalled: BTreeSet<String>,
    /// False in an agent read from a snapshot, until it has rebuilt the fields above.
    #[serde(skip)]
    indexed: bool,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Self {
        let rng = SeededRng::new(config.seed);
        Agent {
            config,
            now: Timestamp::default(),
            started_at: None,
            session: SessionState::Connecting,
            session_timeout: Duration::ZERO,
            lost_since: None,
            fenced: false,
            next_request: 1,
            pending: BTreeMap::new(),
            reads_in_flight: BTreeSet::new(),
            queued_reads: VecDeque::new(),
            armed: BTreeSet::new(),
            tree_watch: TreeWatch::default(),
            reread: BTreeSet::new(),
            retry_at: None,
            services: BTreeMap::new(),
            tasks: Tasks::default(),
            nodes: BTreeMap::new(),
            newest_read: BTreeMap::new(),
            problems: BTreeMap::new(),
            types: TypeReads::default(),
            withheld: BTreeSet::new(),
            keeper: Keeper::default(),
            awaiting_keepers_list: BTreeSet::new(),
            own_index_reads: 0,
            shutting_down: false,
            exited: false,
            actions: VecDeque::new(),
            rng,
            index: Index::default(),
            task_index: TaskIndex::default(),
            dirty: Dirty {
                report: true,
                ..Dirty::default()
            },
            stalled: BTreeSet::new(),
            indexed: true,
        }
    }

    pub fn machine(&self) -> &str {
        self.config.machine.as_str()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Feeds one input. Afterwards drain `poll_action`.
    pub fn handle(&mut self, now: Timestamp, input: Input) {
        if !self.indexed {
            self.reindex();
        }
        self.now = self.now.max(now);
        self.started_at.get_or_insert(self.now);
        match input {
            Input::Session(event) => self.on_session(event),
            Input::Reply { id, reply } => self.on_reply(id, reply),
            Input::Watch(event) => {
                if !planted!(ForgetToRearmWatch) {
                    self.armed.remove(&event.path);
                }
                // The keeper looks at some paths the agent reads too: the one event is for both.
                self.keeper.on_watch(&event.path, event.kind);
                let covered = self.covered(&event.path);
                if let Some(node) = self.nodes.get_mut(&event.path) {
                    node.on_watch(event.kind, covered);
                    self.dirty.nodes.insert(event.path);
                } else if let Some(watched) = Watched::parse(&event.path) {
                    match watched {
                        Watched::Assignments(_) => self.read(watched),
                        // A watch left on a service no longer followed fires once more.
                        Watched::Machines(ref name) | Watched::Settings(ref name) => {
                            if self
                                .services
                                .get(name)
                                .is_some_and(|s| s.target.listing.is_followed())
                            {
                                self.read(watched)
                            }
                        }
                        Watched::ServiceList => {}
                        Watched::Plugin(_) | Watched::PluginList => self.on_plugin_watch(watched),
                        task => self.on_task_watch(task),
                    }
                }
            }
            Input::Spawned {
                service,
                generation,
                pid,
            } => self.with_service(&service, |s, out| s.on_spawned(generation, pid, out)),
            Input::SpawnFailed {
                service,
                generation,
                error,
            } => self.with_service(&service, |s, out| s.on_spawn_failed(generation, error, out)),
            Input::Ready {
                service,
                generation,
                port,
            } => self.with_service(&service, |s, _| s.on_ready(generation, port)),
            Input::Exited {
                service,
                generation,
                status,
            } => {
                self.with_service(&service, |s, out| s.on_exited(generation, status, out));
                if planted!(ExitNotNoted) {
                    self.dirty.services.remove(&service);
                }
            }
            Input::Adopted {
                service,
                generation,
                pid,
                started_at,
                port,
                settings,
                launch,
            } => {
                // Known or not, it is ours now; reading ZooKeeper decides its fate.
                if !self.services.contains_key(&service) {
                    let fresh = Service::new(service.clone(), Listing::NotYetRead);
                    self.services.insert(service.clone(), fresh);
                }
                let spec = RunSpec {
                    settings: Arc::new(settings),
                    launch: launch.map(|l| Arc::new(*l)),
                    environment: None,
                };
                self.with_service(&service, |s, out| {
                    s.adopt(generation, pid, started_at, port, spec, out)
                });
            }
            Input::TaskStarted {
                service,
                task,
                attempt,
                pid,
            } => self.on_task_started(&service, &task, attempt, pid),
            Input::TaskFailedToStart {
                service,
                task,
                attempt,
                error,
            } => self.on_task_ended(&service, &task, attempt, TaskOutcome::NotStarted { error }),
            Input::TaskExited {
                service,
                task,
                attempt,
                status,
                stdout_tail,
                stderr_tail,
            } => {
                let outcome = TaskOutcome::Exited {
                    status,
                    stdout_tail,
                    stderr_tail,
                };
                self.on_task_ended(&service, &task, attempt, outcome);
            }
            Input::EnvironmentBuilt {
                service,
                spec_hash,
                result,
            } => self.with_service(&service, |s, out| {
                s.on_environment_built(spec_hash, result, out)
            }),
            Input::Tick => self.on_tick(),
            Input::Shutdown => {
                if !self.shutting_down {
                    self.shutting_down = true;
                    self.mark_all_services();
                    self.mark_active_tasks();
                    self.dirty.report = true;
                }
            }
            Input::Detach => {
                if !self.exited {
                    self.exited = true;
                    self.actions.push_back(Action::Exit);
                }
                return;
            }
        }
        self.converge();
        self.send_keeper_jobs();
        self.send_queued();
    }

    /// The next action to perform, in order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// All pending actions at once, in order (for callers that record them as a batch).
    /// The queue's buffer goes with them: kept, it would stay as large as the biggest
    /// step ever made (thousands of actions when a thousand services start, about
    /// 0.6 MB) for the agent's whole life.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        Vec::from(std::mem::take(&mut self.actions))
    }

    /// When to deliver the next `Input::Tick`, if anything is scheduled.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if !self.indexed {
            // Read from a snapshot and fed nothing yet: ask an indexed copy.
            let mut copy = self.clone();
            copy.reindex();
            return copy.poll_timeout();
        }
        self.index
            .next_deadline()
            .into_iter()
            .chain(self.task_index.next_deadline())
            .chain(self.retry_at)
            .chain(self.fence_deadline())
            .min()
    }

    /// Whether any service runs under the `fence` policy (see `fenced_runners`).
    fn any_fenced_runner(&self) -> bool {
        self.index
            .fenced_runners()
            .iter()
            .any(|name| !self.dirty.services.contains(name))
            || self
                .dirty
                .services
                .iter()
                .any(|name| self.services.get(name).is_some_and(Service::runs_fenced))
    }

    /// The services running under the `fence` policy, by name, as they are now (the
    /// index, except for the services this input changed).
    fn fenced_runners(&self) -> Vec<String> {
        let mut runners: BTreeSet<&String> = self
            .index
            .fenced_runners()
            .iter()
            .filter(|name| !self.dirty.services.contains(*name))
            .collect();
        runners.extend(
            self.dirty
                .services
                .iter()
                .filter(|name| self.services.get(*name).is_some_and(Service::runs_fenced)),
        );
        runners.into_iter().cloned().collect()
    }

    /// The session has been lost for long enough that `fence` services must not run.
    fn fence_overdue(&self) -> bool {
        !self.fenced
            && self
                .lost_since
                .is_some_and(|since| self.now >= since + self.session_timeout / FENCE_AFTER_DIVISOR)
    }

    /// When `fence` services must be stopped, if the session is lost and any runs.
    fn fence_deadline(&self) -> Option<Timestamp> {
        if self.fenced || !self.any_fenced_runner() {
            return None;
        }
        self.lost_since
            .map(|since| since + self.session_timeout / FENCE_AFTER_DIVISOR)
    }

    fn outbox_grace_cap(&self) -> Option<Duration> {
        self.fenced
            .then(|| self.session_timeout / FENCE_GRACE_DIVISOR)
    }

    fn session_id(&self) -> Option<SessionId> {
        match self.session {
            SessionState::Connected(id) => Some(id),
            _ => None,
        }
    }

    /// The session our ephemerals belong to: still ours while disconnected, until expiry.
    fn owner_session(&self) -> Option<SessionId> {
        match self.session {
            SessionState::Connected(id) | SessionState::Disconnected(id) => Some(id),
            _ => None,
        }
    }

    fn on_session(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Connected { session, timeout } => {
                self.session_timeout = timeout;
                self.lost_since = None;
                if self.fenced {
                    self.fenced = false;
                    self.mark_all_services();
                }
                let same = matches!(self.session,
                    SessionState::Connected(id) | SessionState::Disconnected(id) if id == session);
                self.session = SessionState::Connected(session);
                // Tasks that waited for the session go on.
                self.mark_active_tasks();
                if same {
                    // Watches survive a reconnect within the session; retry what failed meanwhile.
                    self.retry_now();
                    self.recheck_covered();
                } else {
                    self.start_session();
                }
            }
            SessionEvent::Disconnected => {
                if let SessionState::Connected(id) = self.session {
                    self.session = SessionState::Disconnected(id);
                    self.lost_since = Some(self.now);
                }
            }
            SessionEvent::Expired => {
                if self.session == SessionState::Expired {
                    return; // already opening a new session
                }
                // Processes keep running (unless fenced: our ephemerals are gone now); the
                // new session re-reads everything and republishes.
                self.lost_since.get_or_insert(self.now);
                self.fence();
                self.keeper_end();
                self.session = SessionState::Expired;
                self.actions.push_back(Action::NewSession);
            }
        }
    }

    fn start_session(&mut self) {
        // Replies and watches from an older session are meaningless now.
        self.forget_requests();
        self.armed.clear();
        self.tree_watch = TreeWatch::Unasked;
        self.reread.clear();
        // The new session reads every followed service's list below.
        self.awaiting_keepers_list.clear();
        if !planted!(NoEphemeralsAfterExpiry) {
            for node in self.nodes.values_mut() {
                node.forget();
            }
            self.stalled.clear();
        }
        self.dirty.nodes.extend(self.nodes.keys().cloned());
        self.tasks_new_session();
        // In a secured namespace `pop machine add` made them, and only the admin may.
        let machine = self.config.machine.as_str().to_string();
        if self.config.access.is_open() {
            self.send(
                ZkOp::Create {
                    path: paths::machine(&machine),
                    data: Vec::new(),
                    mode: CreateMode::Persistent,
                    acl: Acl::open(),
                },
                Pending::MachineNode,
            );
            self.create_index_node(None, paths::assignments(&machine));
        }
        // Before any pid node is written, so each is covered from its creation.
        self.ask_tree_watch();
        // Only what is deployed here, or runs here: never the whole fleet's services.
        self.read(Watched::Assignments(machine));
        self.keeper_start();
        let names: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.target.listing.is_followed())
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            self.read(Watched::Machines(name.clone()));
            self.read(Watched::Settings(name));
        }
        self.read_types_again();
    }

    fn retry_now(&mut self) {
        self.retry_at = None;
        for path in std::mem::take(&mut self.reread) {
            if let Some(w) = Watched::parse(&path) {
                self.read(w);
            }
        }
        self.keeper.retry();
        self.ask_tree_watch();
        for path in std::mem::take(&mut self.stalled) {
            if let Some(node) = self.nodes.get_mut(&path) {
                node.stalled = false;
                self.dirty.nodes.insert(path);
            }
        }
        self.retry_task_reads();
    }

    /// From now until the session is back, `fence` services are not wanted.
    fn fence(&mut self) {
        if self.fenced {
            return;
        }
        let services = self.fenced_runners();
        self.fenced = true;
        self.mark_all_services();
        if !services.is_empty() {
            self.actions
                .push_back(Action::Report(Report::Fenced { services }));
        }
    }

    fn on_tick(&mut self) {
        if self.retry_at.is_some_and(|t| self.now >= t) {
            self.retry_now();
        }
        if self.fence_deadline().is_some_and(|t| self.now >= t) {
            self.fence();
        }
        for name in self.index.due(self.now) {
            self.with_service(&name, Service::on_tick);
        }
    }

    fn on_reply(&mut self, id: RequestId, reply: ZkReply) {
        let Some(pending) = self.answered(id) else {
            return; // stale: from an older session
        };
        // The server says the session is gone, whether or not the client told us yet.
        if reply == ZkReply::Error(ZkError::SessionExpired) {
            self.on_session(SessionEvent::Expired);
            return;
        }
        // Refused by an ACL: it would be refused again, so the agent cannot do its job
        // with this credential. It says what was refused and exits; its services keep
        // running for the next agent (with the right credential) to adopt.
        if reply == ZkReply::Error(ZkError::NoAuth) {
            let refused = match &pending {
                Pending::MachineNode => return,
                // Not allowed to watch: per-node watches instead, as on an old server.
                Pending::TreeWatch => None,
                Pending::IndexNode { path, .. } => {
                    let path = path.clone();
                    self.problem(&path, "cannot create it: not authorised".to_string());
                    return;
                }
                Pending::Read(Watched::Settings(name)) => {
                    let name = name.clone();
                    self.withhold_settings(name);
                    return;
                }
                Pending::Read(watched) => Some((watched.path(), "reading")),
                Pending::Ephemeral { path, step } => Some((path.clone(), step.doing())),
                // The keeper reports it and leaves alone what it may not touch.
                Pending::Keeper { .. } => None,
                // A task's request or settings it may not read: the task fails, saying
                // so in its result (see `on_task_reply`), and the agent goes on.
                Pending::Task {
                    read: tasks::replies::Read::Request | tasks::replies::Read::Settings,
                    ..
                } => None,
                // Its own result it may not read or write: it cannot do its job.
                Pending::Task {
                    service,
                    task,
                    read,
                } => Some((
                    paths::task_result(service, task.as_str(), self.config.machine.as_str()),
                    read.doing(),
                )),
            };
            if let Some((path, doing)) = refused {
                if !self.exited {
                    self.exited = true;
                    self.actions
                        .push_back(Action::Report(Report::NotAuthorised {
                            path,
                            doing: doing.to_string(),
                        }));
                    self.actions.push_back(Action::Exit);
                }
                return;
            }
        }
        match pending {
            Pending::MachineNode => {}
            Pending::TreeWatch => self.on_tree_watch_reply(&reply),
            Pending::Ephemeral { path, step } => {
                let session = self.owner_session();
                if let Some(node) = self.nodes.get_mut(&path) {
                    node.on_reply(step, &reply, session);
                    if node.stalled {
                        self.stalled.insert(path.clone());
                        self.schedule_retry();
                    }
                    self.dirty.nodes.insert(path);
                }
            }
            Pending::IndexNode { service, path } => self.on_index_node_reply(service, path, reply),
            Pending::Read(watched) => {
                if let Some(name) = self.confirming(id, &watched) {
                    self.on_read(watched, reply.clone());
                    self.confirm_departure(&name, &reply);
                } else if let Some(name) = self.looking_at(id, &watched) {
                    self.on_read(watched, reply.clone());
                    self.end_last_look(&name, &reply);
                } else {
                    self.on_read(watched, reply);
                }
            }
            Pending::Keeper { job, sent } => self.on_keeper_reply(job, sent, reply),
            Pending::Task {
                service,
                task,
                read,
            } => self.on_task_reply(service, task, read, reply),
        }
    }

    fn with_service(&mut self, name: &str, f: impl FnOnce(&mut Service, &mut Outbox<'_>)) {
        let stop_grace_cap = self.outbox_grace_cap();
        if let Some(service) = self.services.get_mut(name) {
            let mut out = Outbox {
                actions: &mut self.actions,
                rng: &mut self.rng,
                backoff: &self.config.backoff,
                now: self.now,
                stop_grace_cap,
            };
            f(service, &mut out);
            self.dirty.services.insert(name.to_string());
        }
    }

    /// After every input: move each service it touched, and each whose deadline has
    /// come, towards its target; publish what changed; finish a shutdown once
    /// everything has stopped.
    fn converge(&mut self) {
        if self.exited {
            return;
        }
        // Fencing is due by the clock, not only by the tick scheduled for it: that tick
        // exists only while a fence service runs, and one may be about to start (out of
        // a backoff, or first read) long after the session was lost.
        if self.fence_overdue() {
            self.fence();
        }
        // A backoff that has run out is served by whichever input comes first (other
        // deadlines by the tick).
        let due = self.index.due_restarts(self.now);
        self.dirty.services.extend(due);
        let names = std::mem::take(&mut self.dirty.services);
        let machine = self.config.machine.as_str().to_string();
        let host = self.config.host();
        let stop_grace_cap = self.outbox_grace_cap();
        for name in &names {
            let Some(service) = self.services.get_mut(name) else {
                continue;
            };
            if service.control == Control::AwaitingTarget
                && (self.shutting_down || (self.fenced && service.runs_fenced()))
            {
                // Stopping an adopted process no longer depends on what ZooKeeper wants.
                service.control = Control::FollowsTarget;
            }
            let wanted = service
                .desired(&machine, self.shutting_down, self.fenced)
                .cloned();
            // Fencing stops what runs; a service waiting out a backoff keeps waiting
            // (fencing must not reset its crash-loop delay).
            let fenced_only = wanted.is_none()
                && service
                    .desired(&machine, self.shutting_down, false)
                    .is_some();
            if fenced_only && service.is_quiet() {
                continue;
            }
            let desired = match wanted {
                None => Desired::Stopped,
                Some(settings) => wanted::desire(
                    service,
                    settings,
                    &self.types,
                    &host,
                    self.now,
                    &mut self.actions,
                ),
            };
            let mut out = Outbox {
                actions: &mut self.actions,
                rng: &mut self.rng,
                backoff: &self.config.backoff,
                now: self.now,
                stop_grace_cap,
            };
            service.reconcile(desired, &mut out);
        }
        for name in &names {
            self.settle(name);
        }
        self.sync_types();
        self.converge_tasks(&names);
        for name in std::mem::take(&mut self.dirty.untasked) {
            self.settle(&name);
        }
        self.publish();
        if self.shutting_down
            && self.index.phases().with_process() == 0
            && self.task_index.processes() == 0
        {
            self.exited = true;
            self.actions.push_back(Action::Exit);
        }
    }

    /// For tests and the simulator: what each service is doing.
    pub fn service_phases(&self) -> BTreeMap<String, String> {
        self.services
            .iter()
            .map(|(n, s)| (n.clone(), s.phase().as_str().to_string()))
            .collect()
    }

    /// For the simulator: whether this agent has read a machines list of `service` that
    /// names its machine (it takes the service on from there).
    pub fn knows_deployed_here(&self, service: &str) -> bool {
        self.services
            .get(service)
            .and_then(|s| s.target.machines.value())
            .is_some_and(|machines| machines.contains(self.machine()))
    }

    /// For the simulator: requests sent and not yet answered (must stay bounded).
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// For the simulator: whether a watch is armed on `path` in the current session.
    pub fn is_watching(&self, path: &str) -> bool {
        self.session_id().is_some() && self.armed.contains(path)
    }

    /// For tests and the simulator: current problems by path.
    pub fn problems(&self) -> &BTreeMap<String, String> {
        &self.problems
    }
}
