//! `pop plugin add` and `pop plugin remove`: manifests stored at `/plugins/<name>` as
//! their TOML text, and how a plan finds a service type's manifest.
//!
//! A `pop add` of a plugin's type racing a `pop plugin remove` of it may leave a service
//! whose type is gone, as `pop plugin remove --force` does on purpose: the agent reports
//! such a service and does not start it.

use super::engine::{exactly, Decision, Engine, Got, Refused, Steps};
use super::{children, get, require_namespace, Feedback, Outcome, Plan, PlanError, Step};
use crate::access::Access;
use crate::names::PluginName;
use crate::paths;
use crate::plugin::{builtin, decode_stored, Manifest};
use crate::time::Timestamp;
use crate::zk::{CreateMode, ZkError, ZkOp, ZkReply};
use serde_json::Value;
use std::collections::BTreeSet;

/// The reads that find the manifest of type `name` (none for a built-in): its node, and
/// the stored names to list when there is none.
pub(super) fn type_reads(name: &PluginName) -> Vec<ZkOp> {
    if builtin::is_builtin(name.as_str()) {
        return Vec::new();
    }
    vec![get(paths::plugin(name.as_str())), children(paths::PLUGINS)]
}

/// The manifest of type `name`, given what [`type_reads`] found, in order.
pub(super) fn resolve(name: &PluginName, got: &[Got]) -> Result<Manifest, PlanError> {
    if let Some(manifest) = builtin::manifest(name.as_str()) {
        return Ok(manifest);
    }
    match got {
        [Got::Data { data, .. }, _] => {
            decode_stored(name.as_str(), data).map_err(|error| PlanError::StoredPluginInvalid {
                path: paths::plugin(name.as_str()),
                error,
            })
        }
        [_, stored] => Err(unknown_type(name.as_str(), stored)),
        _ => Err(PlanError::Misfed {
            expected: "the replies to a type's reads",
            got: "another number of replies",
        }),
    }
}

/// The error for a type nobody knows, listing the built-in and stored ones.
pub(super) fn unknown_type(name: &str, stored: &Got) -> PlanError {
    let mut known: Vec<String> = builtin::names().map(str::to_string).collect();
    if let Got::Children(names) = stored {
        known.extend(names.iter().cloned());
    }
    known.sort();
    known.dedup();
    PlanError::UnknownType {
        name: name.to_string(),
        known,
    }
}

pub struct PluginAdd(Engine<AddingPlugin>);

struct AddingPlugin {
    at: String,
    name: String,
    text: Vec<u8>,
    replace: bool,
    /// The last write sent replaces another manifest.
    replacing: bool,
    /// A write was sent whose outcome is unknown.
    in_doubt: bool,
    access: Access,
}

impl PluginAdd {
    /// The ACLs of a secured namespace for what it creates.
    pub fn with_access(mut self, access: Access) -> PluginAdd {
        self.0.steps.access = access;
        self
    }

    /// Refuses a manifest that does not decode, or takes a built-in's name, before
    /// anything is read. `origin` (the file) starts the messages about the manifest.
    pub fn new(at: &str, origin: &str, text: &str, replace: bool) -> Result<PluginAdd, PlanError> {
        let manifest = Manifest::parse(origin, text).map_err(PlanError::InvalidManifest)?;
        let name = manifest.name.to_string();
        if builtin::is_builtin(&name) {
            return Err(PlanError::BuiltinName { name });
        }
        Ok(PluginAdd(Engine::new(AddingPlugin {
            at: at.to_string(),
            name,
            text: text.as_bytes().to_vec(),
            replace,
            replacing: false,
            in_doubt: false,
            access: Access::Open,
        })))
    }
}

impl Plan for PluginAdd {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

impl AddingPlugin {
    fn plan(&mut self, pop: Got, plugins: Got, node: Got) -> Result<Decision<Outcome>, PlanError> {
        require_namespace(&self.at, &pop)?;
        let name = self.name.clone();
        let path = paths::plugin(&name);
        match node {
            Got::Data { data, .. } if data == self.text => {
                // After a write in doubt, the manifest as given is what the user wanted.
                Ok(Decision::Done(Ok(if self.in_doubt {
                    Outcome::PluginAdded {
                        name,
                        replaced: self.replacing,
                    }
                } else {
                    Outcome::PluginUnchanged { name }
                })))
            }
            Got::Data { stat, .. } if self.replace => {
                self.replacing = true;
                Ok(Decision::Write(ZkOp::SetData {
                    path,
                    data: self.text.clone(),
                    version: Some(stat.version),
                }))
            }
            Got::Data { .. } | Got::Children(_) => Err(PlanError::PluginExists { name }),
            Got::Missing => {
                self.replacing = false;
                let access = &self.access;
                let create = |path: String, data: Vec<u8>| ZkOp::Create {
                    acl: access.acl(&path, &BTreeSet::new()),
                    path,
                    data,
                    mode: CreateMode::Persistent,
                };
                let mut ops = Vec::new();
                // A namespace from before plugins gets /plugins now.
                if !plugins.exists() {
                    ops.push(create(paths::PLUGINS.to_string(), Vec::new()));
                }
                ops.push(create(path, self.text.clone()));
                Ok(Decision::Write(ZkOp::Multi { ops }))
            }
        }
    }
}

impl Steps for AddingPlugin {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        vec![
            get(paths::POP),
            get(paths::PLUGINS),
            get(paths::plugin(&self.name)),
        ]
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        let planned = exactly(got).and_then(|[pop, plugins, node]| self.plan(pop, plugins, node));
        planned.unwrap_or_else(|e| Decision::Done(Err(e)))
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        Some(Ok(Outcome::PluginAdded {
            name: self.name.clone(),
            replaced: self.replacing,
        }))
    }

    fn in_doubt(&mut self) {
        self.in_doubt = true;
    }
}

pub struct PluginRemove(Engine<RemovingPlugin>);

struct RemovingPlugin {
    at: String,
    name: String,
    force: bool,
    phase: Phase,
    /// Services of its type when the delete was sent.
    users: Vec<String>,
    /// A delete was sent whose outcome is unknown.
    in_doubt: bool,
}

enum Phase {
    /// The namespace, the plugin and the service names.
    Survey,
    /// The plugin again and every service's settings, to find those of its type.
    Users { services: Vec<String> },
}

impl PluginRemove {
    pub fn new(at: &str, name: &PluginName, force: bool) -> Result<PluginRemove, PlanError> {
        if builtin::is_builtin(name.as_str()) {
            return Err(PlanError::BuiltinCannotGo {
                name: name.to_string(),
            });
        }
        Ok(PluginRemove(Engine::new(RemovingPlugin {
            at: at.to_string(),
            name: name.to_string(),
            force,
            phase: Phase::Survey,
            users: Vec::new(),
            in_doubt: false,
        })))
    }
}

impl Plan for PluginRemove {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

/// The type named in a service's settings, if they say one.
fn type_of(settings: &Got) -> Option<String> {
    let value: Value = serde_json::from_slice(settings.data()?).ok()?;
    value.get("type")?.as_str().map(str::to_string)
}

impl RemovingPlugin {
    fn gone(&self) -> Result<Outcome, PlanError> {
        if self.in_doubt {
            Ok(self.removed())
        } else {
            Err(PlanError::NoSuchPlugin {
                name: self.name.clone(),
            })
        }
    }

    fn removed(&self) -> Outcome {
        Outcome::PluginRemoved {
            name: self.name.clone(),
            still_used_by: self.users.clone(),
        }
    }

    fn survey(&mut self, got: Vec<Got>) -> Result<Decision<Outcome>, PlanError> {
        let [pop, node, services] = exactly(got)?;
        require_namespace(&self.at, &pop)?;
        if !node.exists() {
            return self.gone().map(|o| Decision::Done(Ok(o)));
        }
        let services = match services {
            Got::Children(names) => names,
            _ => Vec::new(),
        };
        self.phase = Phase::Users { services };
        Ok(Decision::Look)
    }

    fn users(
        &mut self,
        services: &[String],
        got: Vec<Got>,
    ) -> Result<Decision<Outcome>, PlanError> {
        let mut got = got.into_iter();
        let Some(Got::Data { stat, .. }) = got.next() else {
            return self.gone().map(|o| Decision::Done(Ok(o)));
        };
        let users: Vec<String> = services
            .iter()
            .zip(got)
            .filter(|(_, settings)| type_of(settings).as_deref() == Some(self.name.as_str()))
            .map(|(service, _)| service.clone())
            .collect();
        if !users.is_empty() && !self.force {
            return Err(PlanError::PluginInUse {
                name: self.name.clone(),
                services: users,
            });
        }
        self.users = users;
        Ok(Decision::Write(ZkOp::Delete {
            path: paths::plugin(&self.name),
            version: Some(stat.version),
        }))
    }
}

impl Steps for RemovingPlugin {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        match &self.phase {
            Phase::Survey => vec![
                get(paths::POP),
                get(paths::plugin(&self.name)),
                children(paths::SERVICES),
            ],
            Phase::Users { services } => std::iter::once(get(paths::plugin(&self.name)))
                .chain(services.iter().map(|s| get(paths::service_settings(s))))
                .collect(),
        }
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        let planned = match std::mem::replace(&mut self.phase, Phase::Survey) {
            Phase::Survey => self.survey(got),
            Phase::Users { services } => {
                let planned = self.users(&services, got);
                self.phase = Phase::Users { services };
                planned
            }
        };
        planned.unwrap_or_else(|e| Decision::Done(Err(e)))
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        Some(Ok(self.removed()))
    }

    fn refused(&mut self, _now: Timestamp, path: &str, error: &ZkError) -> Refused<Outcome> {
        // Changed or deleted meanwhile, or a service was added: survey again.
        self.phase = Phase::Survey;
        super::engine::refused_by_default(path, error)
    }

    fn in_doubt(&mut self) {
        self.phase = Phase::Survey;
        self.in_doubt = true;
    }
}

#[cfg(test)]
mod tests;
