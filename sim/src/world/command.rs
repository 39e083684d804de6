//! The commands an operator types, each built as the very plan the CLI runs.

use super::admin::{AT, DELETE_PATIENCE};
use super::security::GrantThenDeploy;
use pop_core::access::Access;
use pop_core::names::{MachineId, PluginName, ServiceName};
use pop_core::plan::{
    Add, AddRequest, ChangeMachines, Init, MachinesChange, Plan, PlanError, PluginAdd,
    PluginRemove, Remove, Run, RunRequest, Set,
};
use pop_core::Timestamp;
use serde_json::{Map, Value};
use std::fmt;

/// A command as the operator typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Init {
        force: bool,
    },
    Add {
        name: ServiceName,
        /// A built-in type, or one of the simulator's stored ones (`tool`, `job`).
        service_type: String,
        settings: Map<String, Value>,
    },
    Machines {
        name: ServiceName,
        change: MachinesChange,
        machines: Vec<MachineId>,
    },
    Set {
        name: ServiceName,
        assignments: Vec<(String, Value)>,
        unset: Vec<String>,
    },
    Remove {
        name: ServiceName,
        force: bool,
    },
    /// `pop run --detach`: the operator does not wait for the results.
    Run {
        name: ServiceName,
        request: RunRequest,
        /// The random part of the task's id.
        nonce: u16,
    },
    /// `pop plugin add [--replace] <file>` with the file's text.
    PluginAdd {
        text: String,
        replace: bool,
    },
    PluginRemove {
        name: PluginName,
        force: bool,
    },
}

impl Command {
    pub fn service(&self) -> Option<&str> {
        match self {
            Command::Init { .. } | Command::PluginAdd { .. } | Command::PluginRemove { .. } => None,
            Command::Add { name, .. }
            | Command::Machines { name, .. }
            | Command::Set { name, .. }
            | Command::Remove { name, .. }
            | Command::Run { name, .. } => Some(name.as_str()),
        }
    }

    /// The plan that carries it out, and for `add` the settings data it writes. A task
    /// is created at `now`. In a secured namespace (`admin`: the admin's user and digest
    /// id) what the plans create gets `access`'s ACLs, as the CLI does it.
    pub(super) fn plan(
        &self,
        now: Timestamp,
        access: &Access,
        admin: Option<(&str, &str)>,
    ) -> Result<Built, PlanError> {
        Ok(match self {
            Command::Init { force } => {
                let init = Init::new(AT, *force, DELETE_PATIENCE);
                match admin {
                    Some((user, id)) => (Box::new(init.secured(user, id)), None),
                    None => (Box::new(init), None),
                }
            }
            Command::Add {
                name,
                service_type,
                settings,
            } => {
                // The settings as `--set`s over the type's defaults, which they all give.
                let request = AddRequest {
                    service_type: service_type.clone(),
                    port: None,
                    set: settings.clone().into_iter().collect(),
                };
                let add = Add::new(AT, name, request)?.with_access(access.clone());
                let data = add
                    .settings_data()
                    .map(<[u8]>::to_vec)
                    .or_else(|| stored_type_settings(service_type, settings));
                (Box::new(add), data)
            }
            Command::Machines {
                name,
                change,
                machines,
            } => match (access, change) {
                (Access::Secured(principals), MachinesChange::Deploy) => (
                    Box::new(GrantThenDeploy::new(
                        name,
                        principals.clone(),
                        machines.clone(),
                    )),
                    None,
                ),
                _ => (
                    Box::new(
                        ChangeMachines::new(AT, name, *change, machines.clone())
                            .with_access(access.clone()),
                    ),
                    None,
                ),
            },
            Command::Set {
                name,
                assignments,
                unset,
            } => (
                Box::new(Set::new(AT, name, assignments.clone(), unset.clone())),
                None,
            ),
            Command::Remove { name, force } => (
                Box::new(Remove::new(AT, name, *force, DELETE_PATIENCE)),
                None,
            ),
            Command::Run {
                name,
                request,
                nonce,
            } => (
                Box::new(
                    Run::new(AT, name, request.clone(), now, *nonce)?.with_access(access.clone()),
                ),
                None,
            ),
            Command::PluginAdd { text, replace } => (
                Box::new(
                    PluginAdd::new(AT, "plugin.toml", text, *replace)?.with_access(access.clone()),
                ),
                None,
            ),
            Command::PluginRemove { name, force } => {
                (Box::new(PluginRemove::new(AT, name, *force)?), None)
            }
        })
    }
}

/// A command's plan, and for `add` the settings data it writes.
type Built = (Box<dyn Plan>, Option<Vec<u8>>);

/// The settings data `pop add` writes for a service of the stored `job` type: its
/// defaults, then the `--set`s (as the plan does once it has read the manifest).
fn stored_type_settings(service_type: &str, settings: &Map<String, Value>) -> Option<Vec<u8>> {
    if service_type != "job" {
        return None;
    }
    let manifest = pop_core::plugin::Manifest::parse("job", super::JOB).ok()?;
    let mut map = manifest.default_settings(None);
    map.extend(settings.clone());
    Some(pop_core::assignment::render_settings(map))
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let force = |force: &bool| if *force { " --force" } else { "" };
        match self {
            Command::Init { force: x } => write!(f, "pop init{}", force(x)),
            Command::Add {
                name, service_type, ..
            } => write!(f, "pop add {service_type} --name {name}"),
            Command::Machines {
                name,
                change,
                machines,
            } => {
                let verb = match change {
                    MachinesChange::Deploy => "deploy",
                    MachinesChange::Undeploy => "undeploy",
                };
                write!(f, "pop {verb} {name}")?;
                machines
                    .iter()
                    .try_for_each(|m| write!(f, " --machine {m}"))
            }
            Command::Set {
                name,
                assignments,
                unset,
            } => {
                write!(f, "pop set {name}")?;
                for (key, value) in assignments {
                    write!(f, " {key}={value}")?;
                }
                unset.iter().try_for_each(|k| write!(f, " --unset {k}"))
            }
            Command::Remove { name, force: x } => write!(f, "pop remove {name}{}", force(x)),
            Command::Run { name, request, .. } => {
                write!(f, "pop run {name} {}", request.task)?;
                for arg in &request.args {
                    write!(f, " {arg}")?;
                }
                for m in &request.machines {
                    write!(f, " --machine {m}")?;
                }
                if request.rolling {
                    f.write_str(" --rolling")?;
                }
                if let Some(t) = request.timeout {
                    write!(f, " --timeout {}s", t.as_secs())?;
                }
                if let Some(e) = request.expire {
                    write!(f, " --expire {}s", e.as_secs())?;
                }
                f.write_str(" --detach")
            }
            Command::PluginAdd { text, replace } => {
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("name = "))
                    .unwrap_or("?");
                let replace = if *replace { " --replace" } else { "" };
                write!(f, "pop plugin add{replace} <{name} manifest>")
            }
            Command::PluginRemove { name, force: x } => {
                write!(f, "pop plugin remove {name}{}", force(x))
            }
        }
    }
}
