//! Coordinated tasks on this machine (`pop run`, see [`crate::task`]).
//!
//! For each service deployed here the agent watches the service's tasks container.
//! For each task in it, it reads its own machine's result (no watch: only this agent
//! writes it) and, unless that is final, the request; a rolling task also watches the
//! result of the machine before this one. Then [`decide`] says what to do: write
//! `skipped`, `expired` or `waiting`, or claim the task by writing `running` (attempt+1,
//! with a version check) and only then run it. When the process has ended, its result
//! is written, again with a version check, and never written again once final.
//!
//! At least once: an agent finding its own result `running` while it runs nothing for
//! the task (its memory, [`Run`]) starts it again: the agent that claimed it died (or
//! was stopped) meanwhile, and its process was killed when the next agent started.
//! Nothing else ever starts a task twice on one machine.

mod decide;
mod install;
mod last_look;
mod launch;
pub(super) mod replies;

use super::target::Listing;
use super::{Agent, Pending};
use crate::event::{Action, Report};
use crate::paths::{self, Watched};
use crate::task::{cut_text, AgentRef, TaskId, TaskRequest, TaskResult, TaskState, TAIL_BYTES};
use crate::time::Timestamp;
use crate::zk::ZkOp;
use decide::{decide, Context, Deployment, Fetch, InstallView, Next, TaskPython};
pub(crate) use last_look::Following;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A task of a service.
pub(crate) type TaskKey = (String, TaskId);

/// Every task this agent knows, by service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tasks {
    services: BTreeMap<String, ServiceTasks>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ServiceTasks {
    #[serde(alias = "followed", deserialize_with = "last_look::following_or_flag")]
    following: Following,
    tasks: BTreeMap<TaskId, Task>,
}

/// What the agent knows of one node it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Node<T> {
    Unread,
    Reading,
    /// The read failed; it is sent again with the other retries.
    Retry,
    Missing,
    /// Unusable data, with why.
    Bad(String),
    Read(T),
}

impl<T> Node<T> {
    fn value(&self) -> Option<&T> {
        match self {
            Node::Read(value) => Some(value),
            _ => None,
        }
    }
}

/// This machine's result as last read or written, with the node's version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Own {
    result: TaskResult,
    version: i32,
}

/// What a write of our result is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Purpose {
    /// `running`: once written, run this.
    Claim(Box<TaskLaunch>),
    /// `running` for `install`: once written, watch the environment's build.
    Installing,
    Waiting,
    /// A final state.
    Final,
}

/// A write of our result in flight (or whose outcome is unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Write {
    result: TaskResult,
    purpose: Purpose,
}

/// How to run a task here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TaskLaunch {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// Directories to search before the `PATH` it would otherwise get.
    path_prepend: Vec<String>,
    cwd: String,
    /// The service's `user` and `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_as: Option<crate::settings::RunAs>,
    /// SIGTERM to SIGKILL, when it is stopped.
    grace: Duration,
    timeout: Duration,
}

/// Why the agent stops a task's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StopReason {
    /// It ran past its timeout: `timed_out`.
    TimedOut,
    /// The task (or its service) was deleted: nothing to write.
    Gone,
    /// The agent stops: nothing is written, the next agent runs it again.
    Shutdown,
}

/// The task's process on this machine, as this agent ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Run {
    Idle,
    /// `running` is written and the process asked for (its pid once it started).
    Started {
        attempt: u32,
        pid: Option<u32>,
        deadline: Timestamp,
        grace: Duration,
        stop: Option<StopReason>,
    },
    /// The process is gone; this result is to be written.
    Ended {
        result: Box<TaskResult>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Task {
    own: Node<Own>,
    request: Node<Arc<TaskRequest>>,
    /// The transaction that wrote the request (and, for `install`, the settings with
    /// its requirements): settings this agent read from then on hold them, or were
    /// changed again after.
    #[serde(default)]
    request_zxid: i64,
    /// The state of the machine before this one (rolling).
    previous: Node<TaskState>,
    /// The service's settings, read just before a start.
    settings: Node<Arc<Map<String, Value>>>,
    write: Option<Write>,
    /// A write whose outcome is unknown: the next read of our result tells.
    doubt: Option<Write>,
    run: Run,
    /// No longer in the tasks container (pruned, or the service removed).
    gone: bool,
}

impl Task {
    fn new() -> Task {
        Task {
            own: Node::Unread,
            request: Node::Unread,
            request_zxid: 0,
            previous: Node::Unread,
            settings: Node::Unread,
            write: None,
            doubt: None,
            run: Run::Idle,
            gone: false,
        }
    }

    /// A process runs for it.
    fn has_process(&self) -> bool {
        matches!(self.run, Run::Started { .. })
    }

    /// More may happen to it: the agent follows it after reconnecting.
    fn is_active(&self) -> bool {
        match (&self.own, &self.run) {
            (_, Run::Started { .. } | Run::Ended { .. }) => true,
            (Node::Missing, _) => false,
            (Node::Read(own), _) => !own.result.state.is_final() || self.write.is_some(),
            _ => true,
        }
    }
}

/// What the agent keeps about its tasks so that an input costs what it changed:
/// derived from them, rebuilt from a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TaskIndex {
    deadlines: BTreeSet<(Timestamp, TaskKey)>,
    entries: BTreeMap<TaskKey, IndexEntry>,
    processes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct IndexEntry {
    deadline: Option<Timestamp>,
    process: bool,
    active: bool,
}

impl TaskIndex {
    fn put(&mut self, key: &TaskKey, entry: Option<IndexEntry>) {
        if let Some(old) = self.entries.remove(key) {
            if let Some(at) = old.deadline {
                self.deadlines.remove(&(at, key.clone()));
            }
            self.processes -= usize::from(old.process);
        }
        if let Some(new) = entry.filter(|e| *e != IndexEntry::default()) {
            if let Some(at) = new.deadline {
                self.deadlines.insert((at, key.clone()));
            }
            self.processes += usize::from(new.process);
            self.entries.insert(key.clone(), new);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    fn due(&self, now: Timestamp) -> Vec<TaskKey> {
        self.deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Task processes running (or starting).
    pub(crate) fn processes(&self) -> usize {
        self.processes
    }

    fn active(&self) -> impl Iterator<Item = &TaskKey> {
        self.entries
            .iter()
            .filter(|(_, e)| e.active)
            .map(|(key, _)| key)
    }
}

fn index_entry(task: &Task, now: Timestamp) -> IndexEntry {
    IndexEntry {
        deadline: decide::deadline(task, now),
        process: task.has_process(),
        active: task.is_active(),
    }
}

impl Tasks {
    fn get(&self, key: &TaskKey) -> Option<&Task> {
        self.services.get(&key.0)?.tasks.get(&key.1)
    }

    fn get_mut(&mut self, key: &TaskKey) -> Option<&mut Task> {
        self.services.get_mut(&key.0)?.tasks.get_mut(&key.1)
    }

    fn keys(&self) -> Vec<TaskKey> {
        self.services
            .iter()
            .flat_map(|(s, st)| st.tasks.keys().map(|id| (s.clone(), id.clone())))
            .collect()
    }

    /// For the audit: where `other` differs from these tasks, in words.
    pub(crate) fn first_difference(&self, other: &Tasks) -> String {
        let names: BTreeSet<&String> = self.services.keys().chain(other.services.keys()).collect();
        for name in names {
            let (a, b) = (self.services.get(name), other.services.get(name));
            if a == b {
                continue;
            }
            let (Some(a), Some(b)) = (a, b) else {
                return format!("{name}: {a:?} became {b:?}");
            };
            if a.following != b.following {
                return format!(
                    "{name}: following {:?} became {:?}",
                    a.following, b.following
                );
            }
            let ids: BTreeSet<&TaskId> = a.tasks.keys().chain(b.tasks.keys()).collect();
            for id in ids {
                let (x, y) = (a.tasks.get(id), b.tasks.get(id));
                if x != y {
                    return format!("{name} {id}: {x:?} became {y:?}");
                }
            }
        }
        "nothing".to_string()
    }

    /// Whether anything of the service's tasks is kept (followed, or tasks of it here).
    pub(crate) fn keeps(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// How the service's tasks container is read.
    pub(crate) fn following(&self, service: &str) -> Following {
        self.services
            .get(service)
            .map_or(Following::No, |st| st.following)
    }

    /// Every key of the service's tasks.
    fn of_service(&self, service: &str) -> Vec<TaskKey> {
        self.services.get(service).map_or_else(Vec::new, |st| {
            st.tasks
                .keys()
                .map(|id| (service.to_string(), id.clone()))
                .collect()
        })
    }
}

impl Agent {
    /// Whether `service` is indexed here and its machines list names this machine.
    fn deployed_here(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|s| {
            s.target.listing.is_indexed()
                && s.target
                    .machines
                    .value()
                    .is_some_and(|m| m.contains(self.machine()))
        })
    }

    /// Where the service stands here, as its tasks see it.
    fn deployment(&self, service: &str) -> Deployment {
        if self.deployed_here(service) {
            return Deployment::Here;
        }
        let departed = self
            .services
            .get(service)
            .is_none_or(|s| s.target.listing == Listing::Gone);
        match self.tasks.following(service) {
            Following::No if departed => Deployment::Departed,
            _ => Deployment::NotHere,
        }
    }

    fn agent_ref(&self) -> AgentRef {
        AgentRef {
            host: self.config.hostname.clone(),
            pid: self.config.agent_pid,
            started_ms: self.started_at.unwrap_or_default().as_millis(),
        }
    }

    /// Marks every task that may still do something, to be reconciled (the session is
    /// back, the agent stops).
    pub(super) fn mark_active_tasks(&mut self) {
        let active: Vec<TaskKey> = self.task_index.active().cloned().collect();
        self.dirty.tasks.extend(active);
    }

    /// For the checkers: every task reconciled again.
    pub(super) fn mark_all_tasks(&mut self) {
        self.dirty.tasks.extend(self.tasks.keys());
        let services: Vec<String> = self.tasks.services.keys().cloned().collect();
        self.dirty.services.extend(services);
    }

    /// Rebuilds the task index from the tasks.
    pub(super) fn reindex_tasks(&mut self) {
        let mut index = TaskIndex::default();
        for key in self.tasks.keys() {
            if let Some(task) = self.tasks.get(&key) {
                index.put(&key, Some(index_entry(task, self.now)));
            }
        }
        self.task_index = index;
    }

    /// A new session: what was in flight is lost, watches too.
    pub(super) fn tasks_new_session(&mut self) {
        let mut looks = Vec::new();
        for (name, st) in self.tasks.services.iter_mut() {
            match st.following {
                Following::Deployed => st.following = Following::No,
                // Its read went with the session: sent again (a later request).
                Following::LastLook { .. } => looks.push(name.clone()),
                Following::No => {}
            }
            for task in st.tasks.values_mut() {
                if planted!(ForgetsTaskRunsOnNewSession) {
                    task.run = Run::Idle;
                }
                if let Some(write) = task.write.take() {
                    task.doubt = Some(write);
                    task.own = Node::Unread;
                }
                for node in [&mut task.own] {
                    if matches!(node, Node::Reading | Node::Retry) {
                        *node = Node::Unread;
                    }
                }
                if matches!(task.request, Node::Reading | Node::Retry) {
                    task.request = Node::Unread;
                }
                if matches!(task.settings, Node::Reading | Node::Retry) {
                    task.settings = Node::Unread;
                }
                // Its watch is gone with the session.
                if !matches!(task.previous, Node::Read(s) if s.is_final()) {
                    task.previous = Node::Unread;
                }
            }
        }
        for name in looks {
            self.read(Watched::Tasks(name));
        }
        self.mark_all_tasks();
    }

    /// After the retry pause: reads that failed are sent again.
    pub(super) fn retry_task_reads(&mut self) {
        for key in self.tasks.keys() {
            let Some(task) = self.tasks.get_mut(&key) else {
                continue;
            };
            let mut retried = false;
            if task.own == Node::Retry {
                task.own = Node::Unread;
                retried = true;
            }
            if task.request == Node::Retry {
                task.request = Node::Unread;
                retried = true;
            }
            if task.settings == Node::Retry {
                task.settings = Node::Unread;
                retried = true;
            }
            if task.previous == Node::Retry {
                task.previous = Node::Unread;
                retried = true;
            }
            if retried {
                self.dirty.tasks.insert(key);
            }
        }
    }

    /// Part of converging: follows the tasks of services whose deployment here changed,
    /// then reconciles every task the input touched or whose deadline has come.
    pub(super) fn converge_tasks(&mut self, services: &BTreeSet<String>) {
        for name in services {
            self.reconcile_service_tasks(name);
            // What the service's environment is may have changed: a task waits for it.
            let waiting = self.tasks.of_service(name);
            self.dirty.tasks.extend(waiting);
        }
        let due = self.task_index.due(self.now);
        self.dirty.tasks.extend(due);
        for key in std::mem::take(&mut self.dirty.tasks) {
            self.reconcile_task(&key);
            let now = self.now;
            let entry = self.tasks.get(&key).map(|t| index_entry(t, now));
            self.task_index.put(&key, entry);
        }
    }

    /// Starts or stops following a service's tasks as it is deployed here or not; a
    /// service gone from ZooKeeper takes its tasks with it.
    fn reconcile_service_tasks(&mut self, name: &str) {
        let deployed = self.deployed_here(name);
        let known = self.services.contains_key(name);
        let following = self.tasks.following(name);
        let followed = following == Following::Deployed;
        if deployed && !followed {
            self.tasks
                .services
                .entry(name.to_string())
                .or_default()
                .following = Following::Deployed;
            self.read(Watched::Tasks(name.to_string()));
        } else if !deployed && followed {
            if let Some(st) = self.tasks.services.get_mut(name) {
                st.following = Following::No;
            }
        }
        let mut keys = self.tasks.of_service(name);
        if !known {
            for key in &keys {
                if let Some(task) = self.tasks.get_mut(key) {
                    task.gone = true;
                }
            }
        }
        if deployed == followed && known {
            // Nothing changed for its tasks.
            keys.clear();
        }
        self.dirty.tasks.extend(keys);
        self.drop_if_untasked(name);
    }

    /// No more is read of the service's tasks and none is kept: its entry goes, and with
    /// it what kept the service.
    fn drop_if_untasked(&mut self, name: &str) {
        let empty = self
            .tasks
            .services
            .get(name)
            .is_some_and(|st| st.following == Following::No && st.tasks.is_empty());
        if empty {
            self.tasks.services.remove(name);
            self.dirty.untasked.insert(name.to_string());
            self.newest_read
                .remove(&Watched::Tasks(name.to_string()).path());
            self.newest_read
                .remove(&Watched::ServiceChildren(name.to_string()).path());
        }
    }

    fn reconcile_task(&mut self, key: &TaskKey) {
        let agent = self.agent_ref();
        let next = {
            let Some(task) = self.tasks.get(key) else {
                return;
            };
            let cx = Context {
                now: self.now,
                machine: self.config.machine.as_str(),
                service: &key.0,
                task: &key.1,
                connected: self.session_id().is_some(),
                deployment: self.deployment(&key.0),
                machines: self
                    .services
                    .get(&key.0)
                    .and_then(|s| s.target.machines.value()),
                shutting_down: self.shutting_down,
                config: &self.config,
                agent: &agent,
                python: self.task_python(&key.0),
                install: self.install_view(&key.0),
            };
            decide(task, &cx)
        };
        match next {
            Next::Nothing => {}
            Next::Read(fetch) => self.fetch(key, fetch),
            Next::Write(result, purpose) => self.write_result(key, *result, purpose),
            Next::Stop(reason) => {
                let Some(task) = self.tasks.get_mut(key) else {
                    return;
                };
                if let Run::Started {
                    attempt,
                    pid,
                    grace,
                    stop,
                    ..
                } = &mut task.run
                {
                    *stop = Some(reason);
                    // Stopped once it is known to run (see `on_task_started`).
                    if pid.is_some() {
                        self.actions.push_back(Action::StopTask {
                            service: key.0.clone(),
                            task: key.1.clone(),
                            attempt: *attempt,
                            grace: *grace,
                        });
                    }
                }
            }
            Next::Forget => self.forget_task(key),
        }
    }

    /// The service's Python environment as a task of it sees it.
    fn task_python(&self, service: &str) -> TaskPython {
        use super::EnvironmentState;
        match self.environment(service) {
            None => TaskPython::Unavailable(format!(
                "{service} has none on this machine (its type, or its packages)"
            )),
            Some(view) => match view.state {
                EnvironmentState::Ready => {
                    TaskPython::Ready(crate::environment::python_environment(&view.dir))
                }
                EnvironmentState::Building | EnvironmentState::Waiting => TaskPython::Pending,
                EnvironmentState::Failed { error } => {
                    TaskPython::Unavailable(format!("its build failed: {error}"))
                }
            },
        }
    }

    /// The service's environment as an `install` task sees it: the one its settings,
    /// as this agent last read them, want.
    fn install_view(&self, service: &str) -> InstallView {
        InstallView {
            settings_zxid: self
                .newest_read
                .get(&paths::service_settings(service))
                .copied()
                .unwrap_or_default(),
            environment: self.environment(service),
        }
    }

    fn forget_task(&mut self, key: &TaskKey) {
        let Some(st) = self.tasks.services.get_mut(&key.0) else {
            return;
        };
        if let Some(task) = st.tasks.remove(&key.1) {
            let predecessor = match &task.request {
                Node::Read(request) => request.predecessor(self.config.machine.as_str()),
                _ => None,
            };
            if let Some(machine) = predecessor {
                let path = paths::task_result(&key.0, key.1.as_str(), machine.as_str());
                self.newest_read.remove(&path);
            }
        }
        self.drop_if_untasked(&key.0);
    }

    fn fetch(&mut self, key: &TaskKey, fetch: Fetch) {
        let (service, id) = (key.0.clone(), key.1.clone());
        let machine = self.config.machine.as_str().to_string();
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let (path, node) = match fetch {
            Fetch::Own => {
                task.own = Node::Reading;
                (
                    paths::task_result(&service, id.as_str(), &machine),
                    replies::Read::Own,
                )
            }
            Fetch::Request => {
                task.request = Node::Reading;
                (paths::task(&service, id.as_str()), replies::Read::Request)
            }
            Fetch::Settings => {
                task.settings = Node::Reading;
                (paths::service_settings(&service), replies::Read::Settings)
            }
            Fetch::Previous(previous) => {
                task.previous = Node::Reading;
                self.read(Watched::TaskResult {
                    service,
                    task: id.to_string(),
                    machine: previous.to_string(),
                });
                return;
            }
        };
        self.send(
            ZkOp::GetData { path, watch: false },
            Pending::Task {
                service: key.0.clone(),
                task: key.1.clone(),
                read: node,
            },
        );
    }

    fn write_result(&mut self, key: &TaskKey, result: TaskResult, purpose: Purpose) {
        let machine = self.config.machine.as_str().to_string();
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let Node::Read(own) = &task.own else {
            return;
        };
        let op = ZkOp::SetData {
            path: paths::task_result(&key.0, key.1.as_str(), &machine),
            data: result.render(),
            version: Some(own.version),
        };
        if purpose == Purpose::Final {
            self.actions.push_back(Action::Report(Report::TaskEnded {
                service: key.0.clone(),
                task: key.1.clone(),
                attempt: result.attempt,
                state: result.state,
            }));
        }
        task.write = Some(Write { result, purpose });
        self.send(
            op,
            Pending::Task {
                service: key.0.clone(),
                task: key.1.clone(),
                read: replies::Read::Write,
            },
        );
    }

    /// Our result is as `write` says (the write succeeded, or a read after a doubt
    /// shows it did): go on from there.
    fn written(&mut self, key: &TaskKey, write: Write, version: i32) {
        let now = self.now;
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let state = write.result.state;
        let attempt = write.result.attempt;
        task.own = Node::Read(Own {
            result: write.result,
            version,
        });
        match write.purpose {
            Purpose::Claim(launch) => {
                let launch = *launch;
                task.settings = Node::Unread;
                task.run = Run::Started {
                    attempt,
                    pid: None,
                    deadline: now + launch.timeout,
                    grace: launch.grace,
                    stop: None,
                };
                self.actions.push_back(Action::RunTask {
                    service: key.0.clone(),
                    task: key.1.clone(),
                    attempt,
                    argv: launch.argv,
                    env: launch.env,
                    path_prepend: launch.path_prepend,
                    cwd: launch.cwd,
                    run_as: launch.run_as,
                });
            }
            Purpose::Waiting | Purpose::Installing => {}
            Purpose::Final => {
                task.run = Run::Idle;
                let restart = state == TaskState::Succeeded
                    && matches!(&task.request, Node::Read(r) if r.restart_after);
                if restart {
                    // The service's next generation sees what the task did.
                    let service = key.0.clone();
                    self.with_service(&service, |s, out| s.restart(out));
                }
            }
        }
        self.dirty.tasks.insert(key.clone());
    }

    pub(super) fn on_task_started(&mut self, service: &str, id: &TaskId, attempt: u32, pid: u32) {
        let key = (service.to_string(), id.clone());
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        let Run::Started {
            attempt: ours,
            pid: known,
            grace,
            stop,
            ..
        } = &mut task.run
        else {
            return;
        };
        if *ours != attempt || known.is_some() {
            return;
        }
        *known = Some(pid);
        if stop.is_some() {
            self.actions.push_back(Action::StopTask {
                service: key.0.clone(),
                task: key.1.clone(),
                attempt,
                grace: *grace,
            });
        }
        self.dirty.tasks.insert(key);
    }

    /// The process of `attempt` is gone: `outcome` is its exit status and the ends of its
    /// output, or why it did not start.
    pub(super) fn on_task_ended(
        &mut self,
        service: &str,
        id: &TaskId,
        attempt: u32,
        outcome: TaskOutcome,
    ) {
        let key = (service.to_string(), id.clone());
        let now = self.now;
        let agent = self.agent_ref();
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        let Run::Started {
            attempt: ours,
            stop,
            ..
        } = &task.run
        else {
            return;
        };
        if *ours != attempt {
            return;
        }
        let stop = *stop;
        let claimed = task.own.value().map(|own| own.result.clone());
        self.dirty.tasks.insert(key.clone());
        let (Some(claimed), None | Some(StopReason::TimedOut)) = (claimed, stop) else {
            // Gone, or interrupted by the agent's stop: nothing to write (the next agent
            // runs an interrupted task again).
            task.run = Run::Idle;
            return;
        };
        let mut result = TaskResult {
            ended_at: Some(now.as_secs_f64()),
            agent: Some(agent),
            ..claimed
        };
        match outcome {
            TaskOutcome::Exited {
                status,
                stdout_tail,
                stderr_tail,
            } => {
                result.state = if stop == Some(StopReason::TimedOut) {
                    let timeout = match &task.request {
                        Node::Read(r) => r.timeout_s,
                        _ => 0.0,
                    };
                    result.error = Some(format!("timed out after {timeout}s"));
                    TaskState::TimedOut
                } else if status.success() {
                    TaskState::Succeeded
                } else {
                    TaskState::Failed
                };
                // The driver reads more than most tasks keep (see `LISTING_TAIL_BYTES`).
                let kind = task.request.value().map(|r| r.kind).unwrap_or_default();
                result.exit_code = status.code;
                result.signal = status.signal;
                result.stdout_tail = cut_text(stdout_tail, kind.stdout_tail_bytes());
                result.stderr_tail = cut_text(stderr_tail, TAIL_BYTES);
            }
            TaskOutcome::NotStarted { error } => {
                result.state = TaskState::Failed;
                result.error = Some(format!("cannot start: {error}"));
            }
        }
        task.run = Run::Ended {
            result: Box::new(result),
        };
    }

    /// For tests and the simulator: this machine's view of a task.
    pub fn task_phase(&self, service: &str, id: &TaskId) -> Option<String> {
        let task = self.tasks.get(&(service.to_string(), id.clone()))?;
        Some(match &task.run {
            Run::Started { .. } => "running".to_string(),
            Run::Ended { .. } => "ended".to_string(),
            Run::Idle => match &task.own {
                Node::Read(own) => own.result.state.to_string(),
                _ => "unknown".to_string(),
            },
        })
    }
}

/// How a task's process ended.
pub(super) enum TaskOutcome {
    Exited {
        status: crate::event::ExitStatus,
        stdout_tail: String,
        stderr_tail: String,
    },
    NotStarted {
        error: String,
    },
}
