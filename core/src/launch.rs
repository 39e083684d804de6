//! How a service becomes a process: its type's manifest, its settings and the machine's
//! built-in variables rendered into the argv, environment, working directory, stop
//! signal and readiness probe the driver needs. Decided here, as a value, so every driver
//! (and the simulator and the checkers) agrees on what runs.

use crate::environment::SpecError;
use crate::names::TaskName;
use crate::plugin::{self, Manifest, PythonEnvironment, RenderError, StopSignal, Variables};
use crate::settings::{RunAs, Settings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

mod direct;
pub use direct::{plain_command, set_by_the_shell, shell_name};

/// Readiness: the service is ready once it accepts TCP connections on this port
/// (0: on whatever port it listens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub host: String,
    pub port: u16,
}

/// A process to run: a service's, or a task's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// `argv[0]` is the program, looked up in `PATH` unless it is a path.
    pub argv: Vec<String>,
    /// Added to the agent's environment (and winning over it).
    pub env: BTreeMap<String, String>,
    /// Directories put before the `PATH` the process would otherwise get (the `env`
    /// setting's `PATH`, else the agent's): a Python environment's `bin`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prepend: Vec<String>,
    /// The working directory (`{state_dir}`), created by the driver if missing.
    pub cwd: String,
    pub probe: Option<Probe>,
    /// The signal that asks it to stop; SIGKILL follows after `stop_timeout`.
    pub stop_signal: StopSignal,
    /// Grace between the stop signal and SIGKILL, also for what is left when the main
    /// process exits.
    pub stop_timeout: Duration,
    /// The user and group it runs as (`None`: the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
}

/// What an agent knows of its machine for rendering: from its `AgentConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub machine: String,
    /// The pop binary (`{pop}`).
    pub pop: String,
    /// The agent's state directory; services work in `<state_dir>/work/<service>`.
    pub state_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LaunchError {
    #[error("{error} (in {what})")]
    Render { what: String, error: RenderError },
    #[error(transparent)]
    Environment(#[from] SpecError),
    #[error("type {service_type:?} has no task {task:?}")]
    NoSuchTask { service_type: String, task: String },
}

/// A service's own directory, its working directory and `{state_dir}`.
pub fn work_dir(state_dir: &str, service: &str) -> String {
    format!("{state_dir}/work/{service}")
}

/// The built-in variables of `service` on the host.
pub fn variables(service: &str, host: &Host, python: Option<&PythonEnvironment>) -> Variables {
    Variables {
        machine: host.machine.clone(),
        service: service.to_string(),
        state_dir: work_dir(&host.state_dir, service),
        pop: host.pop.clone(),
        python: python.cloned(),
    }
}

/// The service's process, from its type's manifest and its settings. `python`: its
/// environment, for types with `environment = "python"` (without it, a command using
/// `{python}` or `{env_dir}` does not render).
pub fn render(
    service: &str,
    host: &Host,
    settings: &Settings,
    manifest: &Manifest,
    python: Option<&PythonEnvironment>,
) -> Result<Launch, LaunchError> {
    let vars = variables(service, host, python);
    let argv = manifest
        .command_argv(&settings.values(), &vars)
        .map_err(|error| LaunchError::Render {
            what: "run.command".into(),
            error,
        })?;
    let probe = match (manifest.run.readiness, settings.port) {
        (plugin::Readiness::Port, Some(port)) => Some(Probe {
            host: settings.host.clone(),
            port,
        }),
        _ => None,
    };
    Ok(process(
        argv,
        service,
        host,
        settings,
        python,
        probe,
        manifest.run.stop_signal,
    ))
}

/// A task of the service's type, run with `args`: in the service's directory and
/// environment, like the service.
pub fn render_task(
    service: &str,
    host: &Host,
    settings: &Settings,
    manifest: &Manifest,
    task: &TaskName,
    args: &[String],
    python: Option<&PythonEnvironment>,
) -> Result<Launch, LaunchError> {
    let Some(spec) = manifest.tasks.get(task) else {
        return Err(LaunchError::NoSuchTask {
            service_type: manifest.name.to_string(),
            task: task.to_string(),
        });
    };
    let vars = variables(service, host, python);
    let argv = manifest
        .task_argv(spec, &settings.values(), &vars, args)
        .map_err(|error| LaunchError::Render {
            what: format!("tasks.{task}.command"),
            error,
        })?;
    Ok(process(
        argv,
        service,
        host,
        settings,
        python,
        None,
        StopSignal::Term,
    ))
}

fn process(
    argv: Vec<String>,
    service: &str,
    host: &Host,
    settings: &Settings,
    python: Option<&PythonEnvironment>,
    probe: Option<Probe>,
    stop_signal: StopSignal,
) -> Launch {
    let mut env = BTreeMap::new();
    env.insert("POP_SERVICE".to_string(), service.to_string());
    env.insert("POP_MACHINE_ID".to_string(), host.machine.clone());
    env.insert("POP_HOST".to_string(), settings.host.clone());
    if let Some(port) = settings.port {
        env.insert("POP_PORT".to_string(), port.to_string());
    }
    let mut path_prepend = Vec::new();
    if let Some(python) = python {
        // What `activate` would set.
        env.insert("VIRTUAL_ENV".to_string(), python.env_dir.clone());
        path_prepend.push(format!("{}/bin", python.env_dir));
    }
    // The service's own variables (never POP_*: settings refuse them).
    env.extend(settings.env.clone());
    Launch {
        argv,
        env,
        path_prepend,
        cwd: work_dir(&host.state_dir, service),
        probe,
        stop_signal,
        stop_timeout: settings.stop_timeout,
        run_as: settings.run_as.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::builtin;

    fn host() -> Host {
        Host {
            machine: "m1".into(),
            pop: "/usr/bin/pop".into(),
            state_dir: "/var/lib/pop".into(),
        }
    }

    fn settings(json: &str) -> Settings {
        Settings::parse(json.as_bytes()).expect("valid settings")
    }

    fn launch(json: &str) -> Launch {
        let settings = settings(json);
        let manifest = builtin::get(settings.service_type.as_str()).expect("built in");
        render("web", &host(), &settings, manifest, None).expect("renders")
    }

    #[test]
    fn a_command_runs_with_the_shell_in_the_service_directory() {
        let l = launch(r#"{"type":"command","command":"sleep 5 && echo 'a b'","env":{"A":"1"}}"#);
        assert_eq!(l.argv, ["/bin/sh", "-c", "sleep 5 && echo 'a b'"]);
        assert_eq!(l.cwd, "/var/lib/pop/work/web");
        assert_eq!(l.probe, None);
        assert_eq!(l.stop_signal, StopSignal::Term);
        assert_eq!(l.env["POP_SERVICE"], "web");
        assert_eq!(l.env["POP_MACHINE_ID"], "m1");
        assert_eq!(l.env["A"], "1");
        assert!(l.path_prepend.is_empty());
    }

    #[test]
    fn echo_runs_pop_and_is_probed_on_its_port() {
        let l = launch(r#"{"type":"echo","host":"127.0.0.1","port":0,"stop_timeout":2}"#);
        assert_eq!(
            l.argv,
            [
                "/usr/bin/pop",
                "echo-server",
                "--host",
                "127.0.0.1",
                "--port",
                "0"
            ]
        );
        assert_eq!(
            l.probe,
            Some(Probe {
                host: "127.0.0.1".into(),
                port: 0
            })
        );
        assert_eq!(l.stop_timeout, Duration::from_secs(2));
        assert_eq!(l.env["POP_PORT"], "0");
    }

    /// `readiness = "port"` is the default; a command with a port is probed on it.
    #[test]
    fn a_port_setting_is_probed_unless_the_manifest_says_readiness_none() {
        let l = launch(r#"{"type":"command","command":"x","port":8080}"#);
        assert_eq!(l.probe.map(|p| p.port), Some(8080));
        let text = builtin::text("command")
            .expect("built in")
            .replace(
                "[run]",
                "[run]\nreadiness = \"none\"\nstop_signal = \"SIGINT\"",
            )
            .replace("name = \"command\"", "name = \"tool\"");
        let manifest = Manifest::parse("tool.toml", &text).expect("valid");
        let s = settings(r#"{"type":"tool","command":"x","port":8080}"#);
        let l = render("web", &host(), &s, &manifest, None).expect("renders");
        assert_eq!(l.probe, None);
        assert_eq!(l.stop_signal, StopSignal::Int);
    }

    #[test]
    fn a_python_service_runs_its_environment_interpreter_with_its_bin_first_on_path() {
        let s = settings(r#"{"type":"python","module":"app","script":""}"#);
        let manifest = builtin::get("python").expect("built in");
        let err = render("web", &host(), &s, manifest, None).expect_err("no environment");
        assert_eq!(
            err.to_string(),
            "{python} needs a Python environment, which this service does not have (in run.command)"
        );
        let env = crate::environment::python_environment("/var/lib/pop/env/web/ab");
        let l = render("web", &host(), &s, manifest, Some(&env)).expect("renders");
        assert_eq!(l.argv[0], "/var/lib/pop/env/web/ab/bin/python");
        assert_eq!(l.env["VIRTUAL_ENV"], "/var/lib/pop/env/web/ab");
        assert_eq!(l.path_prepend, ["/var/lib/pop/env/web/ab/bin"]);
    }

    #[test]
    fn a_setting_the_command_needs_and_lacks_is_an_error_naming_it() {
        let s = settings(r#"{"type":"command"}"#);
        let manifest = builtin::get("command").expect("built in");
        let err = render("web", &host(), &s, manifest, None).expect_err("no command");
        assert_eq!(
            err.to_string(),
            "the command needs setting \"command\", which is not set (in run.command)"
        );
    }

    #[test]
    fn a_task_runs_in_the_service_directory_with_its_arguments() {
        let text = r#"
name = "greeter"
environment = "none"
[settings]
greeting = "hello"
[run]
command = ["sleep", "1"]
[tasks.hello]
command = ["echo", "{greeting}", "{args}"]
"#;
        let manifest = Manifest::parse("greeter.toml", text).expect("valid");
        let s = settings(r#"{"type":"greeter","greeting":"hi"}"#);
        let hello = TaskName::new("hello").expect("a name");
        let l = render_task("web", &host(), &s, &manifest, &hello, &["x".into()], None)
            .expect("renders");
        assert_eq!(l.argv, ["echo", "hi", "x"]);
        assert_eq!(l.cwd, "/var/lib/pop/work/web");
        let nope = TaskName::new("nope").expect("a name");
        let err = render_task("web", &host(), &s, &manifest, &nope, &[], None).expect_err("none");
        assert_eq!(err.to_string(), "type \"greeter\" has no task \"nope\"");
    }
}
