//! `pop run <service> install <requirement>...` on this machine. The multi that issued
//! it also added the requirements to the service's `packages`, so the agent rebuilds
//! the service's environment for those settings as for any change of them (built aside,
//! then the service restarts on it). The task runs no process: it is claimed (`running`)
//! and then follows that build, ending `succeeded` once the environment of settings
//! holding every requirement is built here, `failed` with the build's error when it
//! failed, `failed` when a later change of the settings dropped a requirement, and
//! `timed_out` when no build ended within the task's timeout.
//!
//! Settings read before the request was written may not hold the requirements yet: the
//! agent decides only on settings read from the request's transaction on (ZooKeeper
//! numbers its transactions in order), so a lagging read waits and a later `pop set`
//! that dropped a requirement is told apart from it.

use super::decide::{Context, Next};
use super::{Own, Purpose};
use crate::agent::EnvironmentState;
use crate::task::{timestamp, TaskRequest, TaskResult, TaskState};
use crate::time::Timestamp;

pub(super) fn decide_install(
    own: &Own,
    request: &TaskRequest,
    request_zxid: i64,
    cx: &Context<'_>,
) -> Next {
    let end = |state: TaskState, stdout: String, stderr: String, error: Option<String>| {
        let result = TaskResult {
            state,
            ended_at: Some(cx.now.as_secs_f64()),
            stdout_tail: stdout,
            stderr_tail: stderr,
            error,
            agent: Some(cx.agent.clone()),
            ..own.result.clone()
        };
        Next::Write(Box::new(result), Purpose::Final)
    };
    if own.result.state != TaskState::Running {
        if cx.now >= request.expires() {
            let error = format!("not started before it expired at {}", request.expires());
            return end(
                TaskState::Expired,
                String::new(),
                String::new(),
                Some(error),
            );
        }
        let claim = TaskResult {
            state: TaskState::Running,
            attempt: own.result.attempt.saturating_add(1),
            started_at: Some(cx.now.as_secs_f64()),
            agent: Some(cx.agent.clone()),
            ..TaskResult::pending()
        };
        return Next::Write(Box::new(claim), Purpose::Installing);
    }
    if deadline(own, request).is_some_and(|at| cx.now >= at) {
        let error = format!(
            "no environment with {} was built within {}s",
            request.args.join(" "),
            request.timeout_s
        );
        return end(
            TaskState::TimedOut,
            String::new(),
            String::new(),
            Some(error),
        );
    }
    if cx.install.settings_zxid < request_zxid {
        return Next::Nothing; // the settings with the requirements are still to be read
    }
    let Some(view) = &cx.install.environment else {
        let error = format!(
            "{} has no Python environment on {} (its settings are not read, or its packages are not valid)",
            cx.service, cx.machine
        );
        return end(TaskState::Failed, String::new(), String::new(), Some(error));
    };
    let dropped: Vec<&str> = request
        .args
        .iter()
        .map(|r| r.trim())
        .filter(|r| !view.spec.packages.iter().any(|p| p == r))
        .collect();
    if !dropped.is_empty() {
        let error = format!(
            "a later change of the settings of {} took {} out of its packages",
            cx.service,
            dropped.join(" ")
        );
        return end(TaskState::Failed, String::new(), String::new(), Some(error));
    }
    let building = matches!(
        view.state,
        EnvironmentState::Building | EnvironmentState::Waiting
    );
    match &view.state {
        _ if building && planted!(InstallSucceedsWhileBuilding) => {
            let stdout = format!(
                "environment {} built with {}\n",
                view.hash,
                request.args.join(" ")
            );
            end(TaskState::Succeeded, stdout, String::new(), None)
        }
        EnvironmentState::Ready => {
            let stdout = format!(
                "environment {} built with {}\n",
                view.hash,
                request.args.join(" ")
            );
            end(TaskState::Succeeded, stdout, String::new(), None)
        }
        EnvironmentState::Failed { error } => end(
            TaskState::Failed,
            String::new(),
            format!("{error}\n"),
            Some(format!("building environment {} failed", view.hash)),
        ),
        EnvironmentState::Building | EnvironmentState::Waiting => Next::Nothing,
    }
}

/// When a claimed `install` times out.
pub(super) fn deadline(own: &Own, request: &TaskRequest) -> Option<Timestamp> {
    let started = timestamp(own.result.started_at?);
    Some(started + request.timeout())
}
