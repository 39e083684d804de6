//! Coordinated tasks in the simulated world: the processes of tasks (what they do is
//! their argv: `work ok|fail|hang`), killed when their agent dies (the production
//! agent's start-up kills them), and what must hold of tasks: never run on a machine
//! not targeted; never twice on one machine unless its agent died while the result was
//! not final; a rolling task runs on a machine only once the one before it succeeded;
//! a final result is never written again; after healing, every live target the
//! service is still deployed on has a final result.

use super::{Event, World, PROCESS_DELAY};
use pop_core::event::{ExitStatus, Input};
use pop_core::paths;
use pop_core::settings::parse_machines;
use pop_core::task::{TaskId, TaskKind, TaskRequest, TaskResult, TaskState};
use pop_core::zk::{ZkOp, ZkReply};
use pop_core::Timestamp;
use std::collections::BTreeMap;
use std::time::Duration;

/// A task's process on a machine.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskProcess {
    pub attempt: u32,
    pub pid: u32,
    pub started_at: Timestamp,
}

/// What a task does, from its argv.
enum Behaviour {
    Exit(i32),
    Hang,
}

fn behaviour(argv: &[String]) -> Behaviour {
    match (
        argv.first().map(String::as_str),
        argv.get(1).map(String::as_str),
    ) {
        (Some("work"), Some("ok")) => Behaviour::Exit(0),
        (Some("work"), Some("fail")) => Behaviour::Exit(1),
        (Some("work"), Some("hang")) => Behaviour::Hang,
        // Not a program the simulated machines have.
        _ => Behaviour::Exit(127),
    }
}

/// How often a task ran on a machine, and how often it may have.
#[derive(Debug, Clone, Copy)]
pub(super) struct Runs {
    runs: u32,
    allowed: u32,
}

/// A task of a service.
pub type TaskKey = (String, TaskId);

/// A stored plugin of the simulator: a `command` with tasks.
pub const JOB: &str = r#"name = "job"
description = "a shell command with tasks, for the simulator"
environment = "none"
required = ["command"]
[run]
command = ["/bin/sh", "-c", "{command}"]
[tasks.work]
description = "succeeds, fails or hangs, as its argument says"
command = ["work", "{args}"]
[tasks.deploy]
description = "work, then restart the service where it succeeded"
command = ["work", "{args}"]
restart_after = true
"#;

impl World {
    /// The result of `machine` for a task, as ZooKeeper holds it.
    fn zk_result(&self, key: &TaskKey, machine: &str) -> Option<TaskResult> {
        let node = self
            .zk
            .get(&paths::task_result(&key.0, key.1.as_str(), machine))?;
        TaskResult::parse(&node.data).ok()
    }

    /// An operator's write created a task: remember what it asked for.
    pub(super) fn note_issued(&mut self, op: &ZkOp, reply: &ZkReply) {
        let (ZkOp::Multi { ops }, ZkReply::Multi { .. }) = (op, reply) else {
            return;
        };
        for op in ops {
            let ZkOp::Create { path, data, .. } = op else {
                continue;
            };
            let Some(key) = task_of(path) else {
                continue;
            };
            if let Ok(request) = TaskRequest::parse(data) {
                let down = request.machines.iter().any(|m| {
                    self.machines
                        .iter()
                        .position(|x| x.id == m.as_str())
                        .is_some_and(|i| self.is_down(i) || self.is_paused(i))
                });
                if down {
                    self.coverage("task issued while a target was cut off");
                }
                if request.rolling {
                    self.coverage("rolling task issued");
                }
                self.check_targets_deployed(&key, &request);
                self.issued.insert(key, request);
            }
        }
    }

    /// A task names only machines its service's list names as it is issued: `pop run`
    /// checks the list's version in the multi that writes it.
    fn check_targets_deployed(&mut self, key: &TaskKey, request: &TaskRequest) {
        let list = self
            .zk
            .get(&paths::service_machines(&key.0))
            .and_then(|n| parse_machines(&n.data).ok())
            .unwrap_or_default();
        if let Some(m) = request.machines.iter().find(|m| !list.contains(m.as_str())) {
            self.violate(format!(
                "task {} of {} was issued naming {m}, which its machines list {list:?} does not",
                key.1, key.0
            ));
        }
    }

    /// The agent asked to run a task: check it may, and start its process.
    pub(super) fn run_task(&mut self, machine: usize, key: TaskKey, attempt: u32, argv: &[String]) {
        let id = self.machines[machine].id.clone();
        self.coverage("task run");
        if attempt > 1 {
            self.coverage("task run again after its agent died");
        }
        match self.issued.get(&key).cloned() {
            None => self.violate(format!("{id} runs {key:?}, which nobody issued")),
            Some(request) => {
                if !request.targets(&id) {
                    self.violate(format!("{id} runs {key:?}, which does not target it"));
                }
                if let Some(previous) = request.predecessor(&id) {
                    let state = self.zk_result(&key, previous.as_str()).map(|r| r.state);
                    if state != Some(TaskState::Succeeded) {
                        self.violate(format!(
                            "{id} runs rolling {key:?} while {previous} is {state:?}"
                        ));
                    }
                }
                if request.rolling {
                    let others: Vec<String> = self
                        .machines
                        .iter()
                        .filter(|m| m.id != id && m.tasks.contains_key(&key))
                        .map(|m| m.id.clone())
                        .collect();
                    if !others.is_empty() {
                        self.violate(format!(
                            "{id} runs rolling {key:?} while {others:?} run it too"
                        ));
                    }
                }
            }
        }
        let runs = self
            .task_runs
            .entry((machine, key.clone()))
            .or_insert(Runs {
                runs: 0,
                allowed: 1,
            });
        runs.runs += 1;
        if runs.runs > runs.allowed {
            let n = runs.runs;
            self.violate(format!(
                "{id} runs {key:?} again (run {n}) though its agent never died while it was unfinished"
            ));
        }
        self.next_pid += 1;
        let pid = self.next_pid;
        let at = self.now + PROCESS_DELAY;
        self.machines[machine].tasks.insert(
            key.clone(),
            TaskProcess {
                attempt,
                pid,
                started_at: self.now,
            },
        );
        self.send_to_agent(
            machine,
            at,
            Input::TaskStarted {
                service: key.0.clone(),
                task: key.1.clone(),
                attempt,
                pid,
            },
        );
        if let Behaviour::Exit(code) = behaviour(argv) {
            let took = Duration::from_millis(5 + self.process_rng.next_u64() % 5000);
            let status = ExitStatus {
                code: Some(code),
                signal: None,
            };
            self.schedule(
                at + took,
                Event::TaskEnd {
                    machine,
                    key,
                    pid,
                    status,
                },
            );
        }
    }

    /// The agent asked to stop a task's process: SIGTERM ends it.
    pub(super) fn stop_task(&mut self, machine: usize, key: TaskKey, attempt: u32) {
        let Some(p) = self.machines[machine].tasks.get(&key) else {
            return;
        };
        if p.attempt != attempt {
            return;
        }
        let pid = p.pid;
        let status = ExitStatus {
            code: None,
            signal: Some(15),
        };
        self.schedule(
            self.now + PROCESS_DELAY,
            Event::TaskEnd {
                machine,
                key,
                pid,
                status,
            },
        );
    }

    /// A task's process ended; its agent hears of it with the ends of its output.
    pub(super) fn end_task(&mut self, machine: usize, key: TaskKey, pid: u32, status: ExitStatus) {
        let live = self.machines[machine]
            .tasks
            .get(&key)
            .is_some_and(|p| p.pid == pid);
        if !live {
            return; // killed with its agent, or ended already
        }
        let Some(p) = self.machines[machine].tasks.remove(&key) else {
            return;
        };
        self.send_to_agent(
            machine,
            self.now + PROCESS_DELAY,
            Input::TaskExited {
                service: key.0,
                task: key.1,
                attempt: p.attempt,
                status,
                stdout_tail: format!("pid {pid}\n"),
                stderr_tail: String::new(),
            },
        );
    }

    /// The machine's agent is gone (killed, upgraded, stopped): its task processes are
    /// killed (by the next agent's start-up, in production), and a task whose result
    /// is not final may run again there.
    pub(super) fn agent_gone(&mut self, machine: usize) {
        if !self.machines[machine].tasks.is_empty() {
            self.coverage("agent gone while a task ran");
        }
        self.machines[machine].tasks.clear();
        let id = self.machines[machine].id.clone();
        let keys: Vec<TaskKey> = self
            .task_runs
            .keys()
            .filter(|(m, _)| *m == machine)
            .map(|(_, key)| key.clone())
            .collect();
        for key in keys {
            let unfinished = self
                .zk_result(&key, &id)
                .is_some_and(|r| !r.state.is_final());
            if let Some(runs) = self.task_runs.get_mut(&(machine, key)) {
                if unfinished && runs.runs > 0 {
                    runs.allowed = runs.runs + 1;
                }
            }
        }
    }

    /// An agent's write of a task result: never over a final one. Called before the
    /// write is applied, with what the server answered once it was.
    pub(super) fn check_task_write(
        &mut self,
        machine: usize,
        op: &ZkOp,
        before: Option<TaskResult>,
        reply: &ZkReply,
    ) {
        let ZkOp::SetData { path, data, .. } = op else {
            return;
        };
        if task_of_result(path).is_none() || !matches!(reply, ZkReply::Set { .. }) {
            return;
        }
        let id = self.machines[machine].id.clone();
        if let Some(before) = before.filter(|b| b.state.is_final()) {
            self.violate(format!(
                "{id} rewrote the final result at {path} ({}): {}",
                before.state,
                String::from_utf8_lossy(data)
            ));
        }
        let Ok(written) = TaskResult::parse(data) else {
            return;
        };
        if let Some((key, _)) = task_of_result(path) {
            let install = self
                .issued
                .get(&key)
                .is_some_and(|r| r.kind == TaskKind::Install);
            if install {
                self.check_install_result(machine, &key, &written);
            }
        }
        match written.state {
            TaskState::Expired => self.coverage("task expired"),
            TaskState::TimedOut => self.coverage("task timed out"),
            TaskState::Skipped => self.coverage("task skipped"),
            _ => {}
        }
    }

    /// `install` succeeds on a machine only once an environment of the service holding
    /// every requirement is on its disk: the one its result names.
    fn check_install_result(&mut self, machine: usize, key: &TaskKey, written: &TaskResult) {
        match written.state {
            TaskState::Succeeded => {
                self.coverage("install succeeded");
                let hash = written
                    .stdout_tail
                    .strip_prefix("environment ")
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap_or_default()
                    .to_string();
                let built = self.machines[machine]
                    .environments
                    .contains(&(key.0.clone(), hash.clone()));
                if !built {
                    let id = self.machines[machine].id.clone();
                    self.violate(format!(
                        "{id}: install {key:?} succeeded with environment {hash:?}, which is not on its disk"
                    ));
                }
            }
            TaskState::Failed => self.coverage("install failed"),
            _ => {}
        }
    }

    /// The result node's data before an agent's write, for [`World::check_task_write`].
    pub(super) fn result_before(&self, op: &ZkOp) -> Option<TaskResult> {
        let ZkOp::SetData { path, .. } = op else {
            return None;
        };
        task_of_result(path)?;
        TaskResult::parse(&self.zk.get(path)?.data).ok()
    }

    /// Liveness: every task still in ZooKeeper has a final result for each of its
    /// targets that is running an agent and still has the service deployed.
    pub fn check_tasks_final(&self) -> Result<(), String> {
        for (key, request) in &self.issued {
            if self.zk.get(&paths::task(&key.0, key.1.as_str())).is_none() {
                continue; // pruned or removed with its service
            }
            let deployed = self
                .zk
                .get(&paths::service_machines(&key.0))
                .and_then(|n| parse_machines(&n.data).ok())
                .unwrap_or_default();
            for machine in &request.machines {
                let live = self
                    .machines
                    .iter()
                    .any(|m| m.id == machine.as_str() && !m.exited);
                if !live || !deployed.contains(machine.as_str()) {
                    continue;
                }
                let state = self.zk_result(key, machine.as_str()).map(|r| r.state);
                if !state.is_some_and(TaskState::is_final) {
                    return Err(format!("{machine}: task {key:?} is {state:?}, not final"));
                }
            }
        }
        Ok(())
    }
}

/// The task a node under a tasks container is (the request node itself).
fn task_of(path: &str) -> Option<TaskKey> {
    let rest = path.strip_prefix(paths::SERVICES)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts[..] {
        [service, "tasks", id] => Some((service.to_string(), TaskId::parse(id).ok()?)),
        _ => None,
    }
}

/// The task and machine of a result node.
fn task_of_result(path: &str) -> Option<(TaskKey, String)> {
    let (parent, machine) = path.rsplit_once('/')?;
    Some((task_of(parent)?, machine.to_string()))
}

/// What the simulated machines keep per task run, by machine and task.
pub(super) type TaskRuns = BTreeMap<(usize, TaskKey), Runs>;
