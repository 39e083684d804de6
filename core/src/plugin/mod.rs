//! Service types as plugins: a manifest (TOML) says what a type runs, with which default
//! settings, in which environment, and which tasks it offers. Manifests are decoded and
//! checked here ([`Manifest::parse`]), and a command is rendered from a manifest, the
//! service's settings and the machine's built-in variables ([`template::render`]): pure,
//! so the agent's core, the CLI's plans and the simulator agree.
//!
//! The types `command`, `echo`, `python` and `http` are manifests compiled into pop
//! ([`builtin`]); others are stored in ZooKeeper at `/plugins/<name>` as their TOML text.

pub mod builtin;
mod decode;
pub mod template;

pub use decode::ManifestError;
pub use template::{
    render, Builtin, Placeholder, PythonEnvironment, RenderError, Template, Variables,
};

use crate::names::{PluginName, TaskName};
use crate::settings::{self, DataError};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// Longest manifest accepted: far more than any needs, far less than a znode holds.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// The `stop_timeout` setting `pop add` writes unless the manifest says otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A decoded, checked manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub name: PluginName,
    pub description: String,
    pub environment: Environment,
    /// Default settings: what `pop add` writes before `--port` and `--set`.
    pub settings: Map<String, Value>,
    /// Settings `pop add` must be given a value for (not null, not "").
    pub required: Vec<Requirement>,
    pub run: Run,
    pub tasks: BTreeMap<TaskName, Task>,
}

/// Where a service's programs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// The machine's own programs.
    None,
    /// A Python virtual environment of the service's own on each machine; `{python}` and
    /// `{env_dir}` name it.
    Python,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::None => "none",
            Environment::Python => "python",
        }
    }
}

/// A setting that must be given, or one of several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Requirement {
    Setting(String),
    OneOf(Vec<String>),
}

impl Requirement {
    fn names(&self) -> &[String] {
        match self {
            Requirement::Setting(name) => std::slice::from_ref(name),
            Requirement::OneOf(names) => names,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> = self.names().iter().map(|n| format!("{n:?}")).collect();
        f.write_str(&quoted.join(" or "))
    }
}

/// How the service runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub command: Vec<Template>,
    pub readiness: Readiness,
    pub stop_signal: StopSignal,
    /// The default of the `stop_timeout` setting, when the manifest gives one.
    #[serde(serialize_with = "seconds_option")]
    pub stop_timeout: Option<Duration>,
}

/// When a started service counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Once its `port` accepts connections (0: whatever port it listens on); a service
    /// without a `port` setting once it has run `start_seconds`.
    Port,
    /// Once it has run `start_seconds`, whatever its port.
    None,
}

/// The signal that asks the service to stop (SIGKILL follows after `stop_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopSignal {
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGQUIT")]
    Quit,
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGUSR1")]
    Usr1,
    #[serde(rename = "SIGUSR2")]
    Usr2,
}

impl StopSignal {
    pub const ALL: [StopSignal; 6] = [
        StopSignal::Term,
        StopSignal::Int,
        StopSignal::Quit,
        StopSignal::Hup,
        StopSignal::Usr1,
        StopSignal::Usr2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }

    /// Its number on Linux.
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Term => 15,
            StopSignal::Int => 2,
            StopSignal::Quit => 3,
            StopSignal::Hup => 1,
            StopSignal::Usr1 => 10,
            StopSignal::Usr2 => 12,
        }
    }

    /// `SIGTERM` or `TERM`.
    fn parse(text: &str) -> Option<StopSignal> {
        StopSignal::ALL
            .into_iter()
            .find(|s| s.name() == text || s.name().strip_prefix("SIG") == Some(text))
    }
}

/// A task the type offers (`pop run <service> <task> [args...]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub description: String,
    pub command: Vec<Template>,
    /// Restart the service on the machine once the task succeeded there.
    pub restart_after: bool,
    /// How long the task may run before it is killed; `None`: `pop run`'s default.
    #[serde(serialize_with = "seconds_option")]
    pub timeout: Option<Duration>,
}

fn seconds_option<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Why settings do not suit their type.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingsError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("setting {requirement} is required for type {service_type:?}")]
    Missing {
        requirement: Requirement,
        service_type: String,
    },
    #[error("setting \"type\" is the service's type, {service_type:?}; `pop add <type>` sets it")]
    TypeChanged { service_type: String },
    #[error("{error} (in {what})")]
    Unrenderable { what: String, error: RenderError },
    #[error(transparent)]
    Environment(#[from] crate::environment::SpecError),
}

impl Manifest {
    /// Decodes and checks a manifest; `origin` (a file name, a znode path) starts every
    /// error message.
    pub fn parse(origin: &str, text: &str) -> Result<Manifest, ManifestError> {
        decode::decode(origin, text)
    }

    /// Is this the name of a setting a template may use: the manifest's own (with a
    /// default or required) or one every type has?
    pub fn has_setting(&self, key: &str) -> bool {
        self.settings.contains_key(key)
            || self
                .required
                .iter()
                .any(|r| r.names().iter().any(|n| n == key))
            || settings::COMMON_KEYS.contains(&key)
    }

    /// The settings `pop add` writes before the user's `--set`: the type, the restart
    /// policy and stop and start times every type gets, the manifest's defaults, then
    /// `port`.
    pub fn default_settings(&self, port: Option<u16>) -> Map<String, Value> {
        let stop_timeout = self.run.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT);
        let mut map = Map::new();
        map.insert("type".into(), Value::from(self.name.as_str()));
        map.insert("restart".into(), Value::from("always"));
        map.insert("stop_timeout".into(), settings::seconds_value(stop_timeout));
        map.insert("start_seconds".into(), Value::from(1));
        map.extend(self.settings.clone());
        if let Some(port) = port {
            map.insert("port".into(), Value::from(port));
        }
        map
    }

    /// Refuses settings a service of this type could not run with: the settings every
    /// type has (for `command` and `echo`, everything the agent checks today), the
    /// required ones, and every value a command or task needs.
    pub fn check_settings(&self, settings: &Map<String, Value>) -> Result<(), SettingsError> {
        settings::check_common(settings)?;
        for requirement in &self.required {
            let given = requirement.names().iter().any(|name| {
                !matches!(settings.get(name), None | Some(Value::Null))
                    && settings.get(name) != Some(&Value::from(""))
            });
            if !given {
                return Err(SettingsError::Missing {
                    requirement: requirement.clone(),
                    service_type: self.name.to_string(),
                });
            }
        }
        if self.environment == Environment::Python {
            crate::environment::EnvironmentSpec::from_values(settings)?;
        }
        let variables = self.sample_variables();
        self.command_argv(settings, &variables)
            .map_err(|error| SettingsError::Unrenderable {
                what: "run.command".into(),
                error,
            })?;
        for (name, task) in &self.tasks {
            self.task_argv(task, settings, &variables, &[])
                .map_err(|error| SettingsError::Unrenderable {
                    what: format!("tasks.{name}.command"),
                    error,
                })?;
        }
        Ok(())
    }

    /// The service's argv on a machine: `run.command` rendered from its settings (with
    /// the values the agent assumes for common settings they leave out).
    pub fn command_argv(
        &self,
        settings: &Map<String, Value>,
        variables: &Variables,
    ) -> Result<Vec<String>, RenderError> {
        render(&self.run.command, &effective(settings), variables, &[])
    }

    /// A task's argv on a machine, with its arguments.
    pub fn task_argv(
        &self,
        task: &Task,
        settings: &Map<String, Value>,
        variables: &Variables,
        args: &[String],
    ) -> Result<Vec<String>, RenderError> {
        render(&task.command, &effective(settings), variables, args)
    }

    /// Stand-ins for the built-in variables, to find what settings are missing.
    fn sample_variables(&self) -> Variables {
        Variables {
            machine: "machine".into(),
            service: "service".into(),
            state_dir: "state".into(),
            pop: "pop".into(),
            python: (self.environment == Environment::Python).then(|| PythonEnvironment {
                env_dir: "env".into(),
                python: "env/bin/python".into(),
            }),
        }
    }
}

/// Decodes a manifest stored at `/plugins/<name>`, written by anyone: it must be UTF-8
/// TOML and be named after its node.
pub fn decode_stored(name: &str, data: &[u8]) -> Result<Manifest, ManifestError> {
    let origin = crate::paths::plugin(name);
    let problem = |problem: &str| ManifestError {
        origin: origin.clone(),
        line: None,
        field: None,
        problem: problem.to_string(),
    };
    let text = std::str::from_utf8(data).map_err(|_| problem("not UTF-8 text"))?;
    let manifest = Manifest::parse(&origin, text)?;
    if manifest.name.as_str() != name {
        return Err(ManifestError {
            field: Some("name".into()),
            ..problem(&format!(
                "the manifest is named {:?}, not after its node",
                manifest.name.as_str()
            ))
        });
    }
    Ok(manifest)
}

/// Settings with the common ones they leave out at the values the agent assumes.
pub(crate) fn effective(settings: &Map<String, Value>) -> Map<String, Value> {
    let mut map = settings.clone();
    for key in settings::COMMON_KEYS {
        if let (None, Some(default)) = (map.get(key), settings::common_default(key)) {
            map.insert(key.to_string(), default);
        }
    }
    map
}

#[cfg(test)]
mod tests;
