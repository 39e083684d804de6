//! What the agent does with the tasks it knows (the memory itself is in the parent
//! module): reads them, asks [`super::decide`] what to do, claims, runs and writes
//! results.

use super::decide::{decide, Context, Deployment, Fetch, InstallView, Next, TaskPython};
use super::{
    index_entry, replies, Following, Node, Own, Purpose, Run, StopReason, TaskIndex, TaskKey,
    TaskOutcome, Write,
};
use crate::agent::target::Listing;
use crate::agent::{Agent, Pending};
use crate::event::{Action, Report};
use crate::paths::{self, Watched};
use crate::task::{cut_text, AgentRef, TaskId, TaskResult, TaskState, TAIL_BYTES};
use crate::zk::ZkOp;
use std::collections::BTreeSet;

impl Agent {
    /// Whether `service` is indexed here and its machines list names this machine.
    pub(super) fn deployed_here(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|s| {
            s.target.listing.is_indexed()
                && s.target
                    .machines
                    .value()
                    .is_some_and(|m| m.contains(self.machine()))
        })
    }

    /// Where the service stands here, as its tasks see it.
    pub(super) fn deployment(&self, service: &str) -> Deployment {
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

    pub(super) fn agent_ref(&self) -> AgentRef {
        AgentRef {
            host: self.config.hostname.clone(),
            pid: self.config.agent_pid,
            started_ms: self.started_at.unwrap_or_default().as_millis(),
        }
    }

    /// Marks every task that may still do something, to be reconciled (the session is
    /// back, the agent stops).
    pub(in crate::agent) fn mark_active_tasks(&mut self) {
        let active: Vec<TaskKey> = self.task_index.active().cloned().collect();
        self.dirty.tasks.extend(active);
    }

    /// For the checkers: every task reconciled again.
    pub(in crate::agent) fn mark_all_tasks(&mut self) {
        self.dirty.tasks.extend(self.tasks.keys());
        let services: Vec<String> = self.tasks.services.keys().cloned().collect();
        self.dirty.services.extend(services);
    }

    /// Rebuilds the task index from the tasks.
    pub(in crate::agent) fn reindex_tasks(&mut self) {
        let mut index = TaskIndex::default();
        for key in self.tasks.keys() {
            if let Some(task) = self.tasks.get(&key) {
                index.put(&key, Some(index_entry(task, self.now)));
            }
        }
        self.task_index = index;
    }

    /// A new session: what was in flight is lost, watches too.
    pub(in crate::agent) fn tasks_new_session(&mut self) {
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
    pub(in crate::agent) fn retry_task_reads(&mut self) {
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
    pub(in crate::agent) fn converge_tasks(&mut self, services: &BTreeSet<String>) {
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
    pub(super) fn reconcile_service_tasks(&mut self, name: &str) {
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
    pub(super) fn drop_if_untasked(&mut self, name: &str) {
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

    pub(super) fn reconcile_task(&mut self, key: &TaskKey) {
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
    pub(super) fn task_python(&self, service: &str) -> TaskPython {
        use crate::agent::EnvironmentState;
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
    pub(super) fn install_view(&self, service: &str) -> InstallView {
        InstallView {
            settings_zxid: self
                .newest_read
                .get(&paths::service_settings(service))
                .copied()
                .unwrap_or_default(),
            environment: self.environment(service),
        }
    }

    pub(super) fn forget_task(&mut self, key: &TaskKey) {
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

    pub(super) fn fetch(&mut self, key: &TaskKey, fetch: Fetch) {
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

    pub(super) fn write_result(&mut self, key: &TaskKey, result: TaskResult, purpose: Purpose) {
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
    pub(super) fn written(&mut self, key: &TaskKey, write: Write, version: i32) {
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

    pub(in crate::agent) fn on_task_started(
        &mut self,
        service: &str,
        id: &TaskId,
        attempt: u32,
        pid: u32,
    ) {
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
    pub(in crate::agent) fn on_task_ended(
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
