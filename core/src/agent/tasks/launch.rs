//! How a task becomes a process on this machine: its command rendered from the request
//! (the task's definition as issued) and the service's settings as read just before
//! it starts, the service's environment variables, its working directory.
//!
//! The task's definition comes with its request (what was issued, whatever happened to
//! the type since), so it is rendered here rather than by `launch::render_task` (which
//! takes the type's current manifest); the service's environment and working directory
//! are the ones its launches use (`launch::work_dir`, and the environment the agent
//! built for its current settings, `Agent::environment`).

use super::decide::Context;
use super::TaskLaunch;
use crate::packages::LIST_DISTRIBUTIONS_PY;
use crate::plugin::{self, PythonEnvironment, Variables};
use crate::task::{TaskKind, TaskRequest};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The grace between SIGTERM and SIGKILL when a service's settings give none.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The task's process on this machine: its command rendered from the service's
/// settings and the machine's variables, the service's environment variables, and its
/// working directory.
pub(super) fn launch(
    request: &TaskRequest,
    settings: &Map<String, Value>,
    cx: &Context<'_>,
    attempt: u32,
    python: Option<&PythonEnvironment>,
) -> Result<TaskLaunch, String> {
    let state_dir = crate::launch::work_dir(&cx.config.state_dir, cx.service);
    let python = python.cloned();
    let variables = Variables {
        machine: cx.machine.to_string(),
        service: cx.service.to_string(),
        state_dir: state_dir.clone(),
        pop: cx.config.pop.clone(),
        python: python.clone(),
    };
    let settings = plugin::effective(settings);
    let argv = match (request.kind, &python) {
        // Isolated (-I): what the environment holds, not what the directory it runs in
        // or the user's site-packages add.
        (TaskKind::Packages, Some(python)) => vec![
            python.python.clone(),
            "-I".to_string(),
            "-c".to_string(),
            LIST_DISTRIBUTIONS_PY.to_string(),
        ],
        (TaskKind::Packages | TaskKind::Install, _) => {
            return Err(format!("{} runs no command here", request.task))
        }
        (TaskKind::Command, _) => {
            let templates = request.templates()?;
            plugin::render(&templates, &settings, &variables, &request.args)
                .map_err(|e| format!("cannot render the command: {e}"))?
        }
    };
    let mut env = BTreeMap::new();
    env.insert("POP_SERVICE".to_string(), cx.service.to_string());
    env.insert("POP_MACHINE_ID".to_string(), cx.machine.to_string());
    env.insert("POP_TASK".to_string(), request.task.to_string());
    env.insert("POP_TASK_ID".to_string(), cx.task.to_string());
    env.insert("POP_TASK_ATTEMPT".to_string(), attempt.to_string());
    if let Some(Value::String(host)) = settings.get("host") {
        env.insert("POP_HOST".to_string(), host.clone());
    }
    if let Some(port) = settings.get("port").and_then(Value::as_u64) {
        env.insert("POP_PORT".to_string(), port.to_string());
    }
    let mut path_prepend = Vec::new();
    if let Some(python) = &python {
        env.insert("VIRTUAL_ENV".to_string(), python.env_dir.clone());
        path_prepend.push(format!("{}/bin", python.env_dir));
    }
    // The service's own variables, as for the service itself (never pop's own).
    match settings.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (name, value) in vars {
                if name.starts_with(crate::settings::RESERVED_ENV_PREFIX) {
                    return Err(crate::settings::DataError::ReservedVariable {
                        name: name.clone(),
                    }
                    .to_string());
                }
                let Value::String(value) = value else {
                    return Err(format!("setting env.{name} is not a string"));
                };
                env.insert(name.clone(), value.clone());
            }
        }
        Some(_) => return Err("setting env is not an object of strings".into()),
    }
    let run_as = crate::settings::run_as(&settings).map_err(|e| e.to_string())?;
    let grace = settings
        .get("stop_timeout")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && (0.0..=86400.0).contains(s))
        .map_or(DEFAULT_GRACE, Duration::from_secs_f64);
    Ok(TaskLaunch {
        argv,
        env,
        path_prepend,
        cwd: state_dir,
        run_as,
        grace,
        timeout: request.timeout(),
    })
}
