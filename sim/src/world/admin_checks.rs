//! What must hold of the operators' commands, whatever the faults:
//! - a command that reports success did what it says, in ZooKeeper as the server had it
//!   when it last answered the command (added: the settings it wrote; removed: no node
//!   of the service left; deployed/undeployed: the list as reported, with or without the
//!   machines; set: the settings already as asked; initialised: the namespace exists);
//! - a refusal names something true (missing, exists already, deployed on those
//!   machines, an invalid list...); any other failure needs a fault on the operator's
//!   own connection to excuse it, so e.g. `remove --force` racing live agents finishes;
//! - an `add` whose create took effect is not reported as a failure while its service
//!   is still there (unless its connection never came back, and it says the write may
//!   have taken effect), and no service is ever half created (a multi is all or
//!   nothing);
//! - the operator never unregisters a service that still runs as wanted: a state node
//!   goes only once the service is no longer wanted there (whoever reads the state nodes
//!   would take it for stopped).

use super::admin::Running;
use super::command::Command;
use super::launches::Target;
use super::World;
use pop_core::assignment::edit_unchecked;
use pop_core::paths;
use pop_core::plan::{MachinesChange, Outcome, PlanError};
use pop_core::settings::parse_machines;
use pop_core::zk::{ZkOp, ZkReply};
use std::collections::BTreeMap;

type Seen = BTreeMap<String, Vec<u8>>;

/// The state node paths a write deletes: (service, machine).
fn state_deletes(op: &ZkOp) -> Vec<(String, String)> {
    match op {
        ZkOp::Delete { path, .. } => {
            let rest = path
                .strip_prefix(paths::SERVICES)
                .and_then(|r| r.strip_prefix('/'));
            rest.and_then(|r| r.split_once("/state/"))
                .filter(|(_, m)| !m.contains('/'))
                .map(|(s, m)| vec![(s.to_string(), m.to_string())])
                .unwrap_or_default()
        }
        ZkOp::Multi { ops } => ops.iter().flat_map(state_deletes).collect(),
        _ => Vec::new(),
    }
}

fn deletes(op: &ZkOp, path: &str) -> bool {
    match op {
        ZkOp::Delete { path: p, .. } => p == path,
        ZkOp::Multi { ops } => ops.iter().any(|op| deletes(op, path)),
        _ => false,
    }
}

fn applied(reply: &ZkReply) -> bool {
    !matches!(reply, ZkReply::Error(_) | ZkReply::MultiFailed { .. })
}

impl World {
    /// The process of `service` on `machine` that runs as ZooKeeper wants it, if any.
    fn runs_as_wanted(&self, service: &str, machine: &str) -> Option<u32> {
        let index = self.machines.iter().position(|m| m.id == machine)?;
        let Target::Run(_, launch) = self.target(service, index) else {
            return None;
        };
        self.machines[index]
            .processes
            .values()
            .find(|p| p.service == service && !p.stopping && p.launch == *launch)
            .map(|p| p.pid)
    }

    /// After an operator's write reached the server (and was applied, or not).
    pub(super) fn check_admin_write(
        &mut self,
        terminal: usize,
        op: &ZkOp,
        reply: &ZkReply,
        service_existed: bool,
    ) {
        let Some(command) = self.terminals[terminal]
            .running
            .as_ref()
            .map(|r| r.command.clone())
        else {
            return;
        };
        if applied(reply) {
            for (service, machine) in state_deletes(op) {
                if let Some(pid) = self.runs_as_wanted(&service, &machine) {
                    self.violate(format!(
                        "`{command}` deleted the state node of {service} on {machine} while it runs there as wanted (pid {pid}): readers take it for stopped"
                    ));
                }
            }
        }
        let Some(service) = command.service() else {
            return;
        };
        if let (Command::Add { .. }, false) = (&command, service_existed) {
            let parts = [
                paths::service(service),
                paths::service_settings(service),
                paths::service_machines(service),
                paths::service_state_dir(service),
            ];
            let present = parts.iter().filter(|p| self.zk.get(p).is_some()).count();
            if present != 0 && present != parts.len() {
                self.violate(format!(
                    "`{command}` left half a service: {present} of its {} nodes",
                    parts.len()
                ));
            }
        }
        if let Command::Remove { force: true, .. } = command {
            let unregistering = applied(reply) && deletes(op, &paths::service_machines(service));
            let racing = self.machines.iter().any(|m| {
                m.session.is_some_and(|s| self.zk.is_live(s))
                    && m.processes.values().any(|p| p.service == service)
            });
            if unregistering && racing {
                self.coverage("remove --force racing a live agent that still runs the service");
            }
        }
    }

    /// When a command ended: its outcome or error must be true of what it last saw.
    pub(super) fn check_command_result(
        &mut self,
        terminal: usize,
        running: &Running,
        result: &Result<Outcome, PlanError>,
    ) {
        let command = &running.command;
        let problem = match result {
            Ok(outcome) => untrue_outcome(running, outcome),
            Err(e) => untrue_error(running, e),
        };
        if let Some(problem) = problem {
            self.violate(format!("op{terminal} `{command}`: {problem}"));
        }
    }
}

fn has(seen: &Seen, path: &str) -> bool {
    seen.contains_key(path)
}

fn machines_in(seen: &Seen, service: &str) -> Option<std::collections::BTreeSet<String>> {
    seen.get(&paths::service_machines(service))
        .and_then(|d| parse_machines(d).ok())
}

/// Why a reported outcome is false of what the command last saw, if it is.
fn untrue_outcome(running: &Running, outcome: &Outcome) -> Option<String> {
    let seen = &running.seen;
    let claim = format!("reported \"{outcome}\"");
    match (outcome, &running.command) {
        (Outcome::Initialised { .. }, _) => paths::NAMESPACE
            .iter()
            .find(|p| !has(seen, p))
            .map(|p| format!("{claim} but {p} was missing")),
        (Outcome::Added { name, .. }, _) => {
            let settings = seen.get(&paths::service_settings(name));
            let complete = has(seen, &paths::service_machines(name))
                && has(seen, &paths::service_state_dir(name));
            (settings != running.settings_data.as_ref() || !complete)
                .then(|| format!("{claim} but the service was not as it wrote it"))
        }
        (
            Outcome::MachinesChanged { name, now, .. } | Outcome::MachinesUnchanged { name, now },
            Command::Machines {
                change, machines, ..
            },
        ) => {
            let list = machines_in(seen, name);
            let asked = machines.iter().all(|m| match change {
                MachinesChange::Deploy => now.contains(m.as_str()),
                MachinesChange::Undeploy => !now.contains(m.as_str()),
            });
            (list.as_ref() != Some(now) || !asked)
                .then(|| format!("{claim} but the list was {list:?}"))
        }
        (
            Outcome::SettingsUpdated { name } | Outcome::SettingsUnchanged { name },
            Command::Set {
                assignments, unset, ..
            },
        ) => {
            let data = seen.get(&paths::service_settings(name));
            // Unchecked: what is valid depends on the type (a stored one, too).
            let as_asked = data.is_some_and(|d| {
                edit_unchecked(d, assignments, unset).is_ok_and(|edited| !edited.changed)
            });
            (!as_asked).then(|| format!("{claim} but the settings were not as asked"))
        }
        (Outcome::Removed { name }, _) => {
            let root = paths::service(name);
            seen.keys()
                .find(|p| **p == root || p.starts_with(&format!("{root}/")))
                .map(|p| format!("{claim} but {p} was still there"))
        }
        // What became of the task is the task checks' (world::tasks).
        (Outcome::TaskIssued { .. }, Command::Run { .. }) => None,
        (
            Outcome::PluginAdded { name, .. } | Outcome::PluginUnchanged { name },
            Command::PluginAdd { text, .. },
        ) => (seen.get(&paths::plugin(name)) != Some(&text.as_bytes().to_vec()))
            .then(|| format!("{claim} but the manifest stored was not the one given")),
        (Outcome::PluginRemoved { name, .. }, Command::PluginRemove { .. }) => {
            has(seen, &paths::plugin(name)).then(|| format!("{claim} but it was still there"))
        }
        (outcome, command) => Some(format!("{outcome:?} is no outcome of {command:?}")),
    }
}

/// Why a reported error is false of what the command last saw, or unexcused.
fn untrue_error(running: &Running, error: &PlanError) -> Option<String> {
    let seen = &running.seen;
    let claim = format!("reported \"{error}\"");
    if let (true, Command::Add { name, .. }) = (running.applied_unacknowledged, &running.command) {
        // Unless it could never read again, it must have found out.
        let could_not_tell = matches!(
            error,
            PlanError::GaveUp {
                write_in_doubt: true,
                ..
            }
        );
        let ours =
            seen.get(&paths::service_settings(name.as_str())) == running.settings_data.as_ref();
        if ours && !could_not_tell {
            return Some(format!("{claim} though its create took effect"));
        }
    }
    let true_of_seen = match error {
        PlanError::NamespaceMissing { .. } => !has(seen, paths::POP),
        PlanError::AlreadyInitialised { .. } => has(seen, paths::POP),
        PlanError::NoSuchService { name } => !has(seen, &paths::service(name)),
        PlanError::ExistsAlready { name } => has(seen, &paths::service(name)),
        PlanError::NodeMissing { path } => !has(seen, path),
        PlanError::InvalidMachines { path, .. } | PlanError::MachinesUnreadable { path, .. } => {
            seen.get(path).is_some_and(|d| parse_machines(d).is_err())
        }
        PlanError::NotAnObject { path } => seen.get(path).is_some_and(|d| {
            !matches!(
                serde_json::from_slice::<serde_json::Value>(d),
                Ok(serde_json::Value::Object(_))
            )
        }),
        PlanError::Deployed { name, machines } => {
            machines_in(seen, name).is_some_and(|m| !m.is_empty() && m.iter().eq(machines.iter()))
        }
        // The settings the command would write: the agent would reject them.
        PlanError::InvalidSettings { .. } => true,
        // Decided before reading: the simulated operators add only built-in types.
        PlanError::InvalidTypeName(_)
        | PlanError::InvalidManifest(_)
        | PlanError::BuiltinName { .. }
        | PlanError::BuiltinCannotGo { .. } => true,
        PlanError::UnknownType { name, .. } | PlanError::NoSuchPlugin { name } => {
            !has(seen, &paths::plugin(name))
        }
        PlanError::PluginExists { name } => has(seen, &paths::plugin(name)),
        PlanError::StoredPluginInvalid { path, .. } => has(seen, path),
        PlanError::PluginInUse { name, .. } => has(seen, &paths::plugin(name)),
        PlanError::DeployedNowhere { name } => {
            machines_in(seen, name).is_some_and(|m| m.is_empty())
        }
        PlanError::NotDeployedOn { name, machine, .. } => {
            machines_in(seen, name).is_some_and(|m| !m.contains(machine))
        }
        // Decided by the task's manifest and the service's settings, or before reading.
        PlanError::UnknownTask { .. }
        | PlanError::NoPythonEnvironment { .. }
        | PlanError::BadTaskArguments { .. }
        | PlanError::TaskUnrenderable { .. } => true,
        // Ids are unique per command.
        PlanError::TaskIdTaken { .. } => false,
        // Failing to talk to ZooKeeper needs a fault on the operator's connection.
        PlanError::ChildrenKeepAppearing { .. }
        | PlanError::StillConflicting { .. }
        | PlanError::GaveUp { .. }
        | PlanError::Zk { .. } => {
            return (running.faults == 0)
                .then(|| format!("{claim} though its connection lost nothing"));
        }
        // The operators are the admin (in a secured namespace) or the namespace is open:
        // no ACL refuses them, and they neither add nor remove machine principals.
        PlanError::NotAuthorised { .. }
        | PlanError::BadRegistryEntry { .. }
        | PlanError::MachineRegistered { .. }
        | PlanError::MachineNotRegistered { .. }
        | PlanError::MachineIsAdmin { .. }
        | PlanError::NotSecured { .. }
        | PlanError::Misfed { .. } => false,
    };
    (!true_of_seen).then(|| format!("{claim}, untrue of what it last read"))
}
