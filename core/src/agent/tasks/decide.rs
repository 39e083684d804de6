//! What to do next about one task on this machine, from what the agent knows of it: a
//! pure function of the task's entry and the agent's situation, so reconciling it again
//! without news decides nothing new.

use super::install::decide_install;
use super::launch::launch;
use super::{Node, Purpose, Run, StopReason, Task};
use crate::agent::{AgentConfig, EnvironmentView};
use crate::names::MachineId;
use crate::plugin::{Environment, PythonEnvironment};
use crate::task::{AgentRef, TaskId, TaskKind, TaskResult, TaskState};
use crate::time::Timestamp;
use std::collections::BTreeSet;

/// What the agent's situation is, as far as one task cares.
pub(super) struct Context<'a> {
    pub now: Timestamp,
    pub machine: &'a str,
    pub service: &'a str,
    pub task: &'a TaskId,
    /// Requests can be sent.
    pub connected: bool,
    pub deployment: Deployment,
    /// The service's machines list as this agent last read it (None: not read): a
    /// rolling task's machine before this one that has left it will not run the task.
    pub machines: Option<&'a BTreeSet<String>>,
    pub shutting_down: bool,
    pub config: &'a AgentConfig,
    pub agent: &'a AgentRef,
    /// The service's Python environment on this machine, for a task that runs in one.
    pub python: TaskPython,
    /// The same for `install`, which waits for a build of the environment.
    pub install: InstallView,
}

/// Where the task's service stands on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deployment {
    /// Indexed, and its machines list names this machine: its tasks run here.
    Here,
    /// Not deployed here (or not yet known to be): a task naming this machine that it
    /// has not begun is written `skipped`; what is known of the others is kept, until
    /// the service's departure is confirmed and its tasks container read once more.
    NotHere,
    /// Departed and its tasks container read since (or the service is forgotten): a
    /// task that is done here, or does not name this machine, is dropped.
    Departed,
}

/// The environment the service's settings, as this agent read them, want here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InstallView {
    /// The transaction of the settings as read (see `Task::request_zxid`).
    pub settings_zxid: i64,
    /// None: its settings are not read, or want no Python environment.
    pub environment: Option<EnvironmentView>,
}

/// Where a Python environment's task stands with the service's environment here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TaskPython {
    /// Built for the service's current settings: the task runs from it.
    Ready(PythonEnvironment),
    /// Being built, or waiting for its build: the task waits (its expiry still counts).
    Pending,
    /// Its build failed, or the service has none: the task fails, saying why.
    Unavailable(String),
}

/// Which node to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fetch {
    Own,
    Request,
    /// The result of the machine before this one (rolling), with a watch.
    Previous(MachineId),
    /// The service's settings, to render the command.
    Settings,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Next {
    Nothing,
    Read(Fetch),
    /// Write this result over ours (with its version).
    Write(Box<TaskResult>, Purpose),
    /// Stop the process (or note to, until its pid is known).
    Stop(StopReason),
    /// Gone from ZooKeeper and nothing runs: drop the entry.
    Forget,
}

pub(super) fn decide(task: &Task, cx: &Context<'_>) -> Next {
    if task.write.is_some() {
        return Next::Nothing; // its reply decides
    }
    match &task.run {
        Run::Started { deadline, stop, .. } => {
            if stop.is_some() {
                return Next::Nothing;
            }
            let reason = if task.gone {
                StopReason::Gone
            } else if cx.shutting_down {
                StopReason::Shutdown
            } else if cx.now >= *deadline {
                StopReason::TimedOut
            } else {
                return Next::Nothing;
            };
            return Next::Stop(reason);
        }
        Run::Ended { result } => {
            if task.gone {
                return Next::Forget;
            }
            return match &task.own {
                Node::Read(_) if cx.connected => Next::Write(result.clone(), Purpose::Final),
                Node::Unread if cx.connected => Next::Read(Fetch::Own),
                Node::Missing => Next::Forget,
                _ => Next::Nothing,
            };
        }
        Run::Idle => {}
    }
    if task.gone {
        return Next::Forget;
    }
    let departed = cx.deployment == Deployment::Departed;
    let own = match &task.own {
        Node::Unread if cx.connected => return Next::Read(Fetch::Own),
        // Nothing more to do here: final, never asked of this machine, or unreadable.
        Node::Read(own) if own.result.state.is_final() && departed => return Next::Forget,
        Node::Missing | Node::Bad(_) if departed => return Next::Forget,
        Node::Read(own) => own,
        _ => return Next::Nothing,
    };
    if own.result.state.is_final() || cx.shutting_down || !cx.connected {
        return Next::Nothing;
    }
    let end = |state: TaskState, error: String| {
        let result = TaskResult {
            state,
            ended_at: Some(cx.now.as_secs_f64()),
            error: Some(error),
            agent: Some(cx.agent.clone()),
            ..own.result.clone()
        };
        Next::Write(Box::new(result), Purpose::Final)
    };
    let request = match &task.request {
        Node::Unread => return Next::Read(Fetch::Request),
        Node::Read(request) => request,
        Node::Bad(error) => return end(TaskState::Failed, error.clone()),
        Node::Reading | Node::Retry | Node::Missing => return Next::Nothing,
    };
    if !request.targets(cx.machine) && !planted!(RunsUntargeted) {
        return Next::Nothing; // never run where it was not asked for
    }
    if cx.deployment != Deployment::Here {
        let error = format!("{} is not deployed on {}", cx.service, cx.machine);
        return end(TaskState::Skipped, error);
    }
    if request.kind == TaskKind::Install {
        return decide_install(own, request, task.request_zxid, cx);
    }
    if cx.now >= request.expires() {
        let error = format!("not started before it expired at {}", request.expires());
        return end(TaskState::Expired, error);
    }
    if let Some(previous) = request.predecessor(cx.machine) {
        if !planted!(RollingIgnoresPredecessor) {
            match &task.previous {
                Node::Unread => return Next::Read(Fetch::Previous(previous.clone())),
                Node::Read(TaskState::Succeeded) => {}
                Node::Read(state) if state.is_final() => {
                    return end(TaskState::Skipped, format!("{previous} {state}"));
                }
                Node::Missing => {
                    return end(TaskState::Skipped, format!("{previous} has no result"));
                }
                // Its agent may never learn of the task (one back knowing nothing of the
                // service); one that was running it ends it and writes its result.
                Node::Read(state @ (TaskState::Pending | TaskState::Waiting))
                    if !listed(cx, previous) =>
                {
                    let error = format!(
                        "{previous} is {state} and no longer in {}'s machines list",
                        cx.service
                    );
                    return end(TaskState::Skipped, error);
                }
                Node::Read(_) if own.result.state != TaskState::Waiting => {
                    let waiting = own.result.with_state(TaskState::Waiting);
                    return Next::Write(Box::new(waiting), Purpose::Waiting);
                }
                Node::Read(_) | Node::Reading | Node::Retry | Node::Bad(_) => return Next::Nothing,
            }
        }
    }
    let settings = match &task.settings {
        Node::Unread => return Next::Read(Fetch::Settings),
        Node::Read(settings) => settings,
        Node::Missing => return end(TaskState::Failed, format!("{} has no settings", cx.service)),
        Node::Bad(error) => return end(TaskState::Failed, error.clone()),
        Node::Reading | Node::Retry => return Next::Nothing,
    };
    let python = match (request.environment, &cx.python) {
        (Environment::None, _) => None,
        (Environment::Python, TaskPython::Ready(python)) => Some(python),
        (Environment::Python, TaskPython::Pending) => return Next::Nothing,
        (Environment::Python, TaskPython::Unavailable(why)) => {
            return end(TaskState::Failed, format!("no Python environment: {why}"))
        }
    };
    let attempt = own.result.attempt.saturating_add(1);
    match launch(request, settings, cx, attempt, python) {
        Ok(launch) => {
            let claim = TaskResult {
                state: TaskState::Running,
                attempt,
                started_at: Some(cx.now.as_secs_f64()),
                agent: Some(cx.agent.clone()),
                ..TaskResult::pending()
            };
            Next::Write(Box::new(claim), Purpose::Claim(Box::new(launch)))
        }
        Err(error) => end(TaskState::Failed, error),
    }
}

/// Whether the service's machines list, as this agent read it, names `machine`; a list
/// not read (yet) is taken to name it: a skip needs the list to say so.
fn listed(cx: &Context<'_>, machine: &MachineId) -> bool {
    cx.machines
        .is_none_or(|machines| machines.contains(machine.as_str()))
}

/// When, with no news, the decision may change: a run's timeout, a task's expiry. Only
/// a time after `now`: one that has come was acted on.
pub(super) fn deadline(task: &Task, now: Timestamp) -> Option<Timestamp> {
    let at = match &task.run {
        Run::Started {
            deadline,
            stop: None,
            ..
        } => *deadline,
        Run::Started { .. } | Run::Ended { .. } => return None,
        Run::Idle => {
            let own = task.own.value()?;
            let request = task.request.value()?;
            if own.result.state.is_final() || task.gone {
                return None;
            }
            if request.kind == TaskKind::Install && own.result.state == TaskState::Running {
                super::install::deadline(own, request)?
            } else {
                request.expires()
            }
        }
    };
    (at > now).then_some(at)
}

#[cfg(test)]
mod tests;
