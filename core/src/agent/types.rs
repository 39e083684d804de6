//! Service types: resolving a service's type to the manifest it launches from. Built-in
//! types resolve at once; a stored type is read from `/plugins/<type>` (with a watch)
//! only while a service wanted on this machine has it, and forgotten when none has.
//!
//! Per stored type the agent keeps the last manifest it read valid: a node that becomes
//! garbage, or is removed, leaves services running (and restarting) with it, and the
//! problem is reported. A type never read valid starts nothing.
//!
//! A missing node leaves no watch, so while a needed type is missing the agent watches
//! the children of `/plugins` to hear when it is added.

use super::Agent;
use crate::paths::{self, Watched};
use crate::plugin::{builtin, decode_stored, Manifest};
use crate::zk::{ZkError, ZkReply};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What this agent has read of the stored types its services need.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TypeReads {
    reads: BTreeMap<String, TypeRead>,
}

/// One stored type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TypeRead {
    node: TypeNode,
    /// The text of the last manifest read valid: kept when the node goes bad.
    last_good: Option<String>,
    /// `last_good`, decoded; rebuilt from it in an agent read from a snapshot.
    #[serde(skip)]
    manifest: Option<Arc<Manifest>>,
}

/// What the node held when last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TypeNode {
    NotYetRead,
    Missing,
    Valid,
    /// Not a manifest this agent can use, with why.
    Invalid(String),
}

/// A service's type, resolved.
pub(crate) enum Resolution<'a> {
    Manifest(&'a Manifest),
    /// Its manifest is being read.
    Pending,
    /// No manifest can be had: why, for the service's report.
    Unknown(String),
}

impl TypeRead {
    fn new() -> TypeRead {
        TypeRead {
            node: TypeNode::NotYetRead,
            last_good: None,
            manifest: None,
        }
    }

    /// The problem to report about the type, if any.
    fn problem(&self, name: &str) -> Option<String> {
        let kept = if self.manifest.is_some() {
            "services of this type keep running with the last manifest read"
        } else {
            "services of this type are not started"
        };
        match &self.node {
            TypeNode::NotYetRead | TypeNode::Valid => None,
            TypeNode::Missing => Some(match self.manifest {
                Some(_) => format!("plugin {name} was removed; {kept}"),
                None => format!(
                    "unknown service type {name:?}: not a built-in type, and /plugins/{name} does not exist"
                ),
            }),
            TypeNode::Invalid(error) => Some(format!("{error}; {kept}")),
        }
    }
}

impl TypeReads {
    /// The manifest a service of type `name` launches from.
    pub(crate) fn resolve(&self, name: &str) -> Resolution<'_> {
        if let Some(manifest) = builtin::get(name) {
            return Resolution::Manifest(manifest);
        }
        let Some(read) = self.reads.get(name) else {
            return Resolution::Pending;
        };
        if let Some(manifest) = &read.manifest {
            return Resolution::Manifest(manifest);
        }
        match &read.node {
            TypeNode::NotYetRead => Resolution::Pending,
            _ => Resolution::Unknown(
                read.problem(name)
                    .unwrap_or_else(|| format!("unknown service type {name:?}")),
            ),
        }
    }

    /// The manifest of a type, if this agent has one (built-in or read).
    pub(crate) fn manifest(&self, name: &str) -> Option<&Manifest> {
        match self.resolve(name) {
            Resolution::Manifest(m) => Some(m),
            Resolution::Pending | Resolution::Unknown(_) => None,
        }
    }

    /// The stored types being read, by name.
    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.reads.keys()
    }

    fn any_missing(&self) -> bool {
        self.reads.values().any(|r| r.node == TypeNode::Missing)
    }

    /// Decodes the kept manifests again (an agent read from a snapshot keeps their text).
    pub(crate) fn decode_kept(&mut self) {
        for (name, read) in &mut self.reads {
            if read.manifest.is_none() {
                read.manifest = read
                    .last_good
                    .as_ref()
                    .and_then(|text| decode_stored(name, text.as_bytes()).ok())
                    .map(Arc::new);
            }
        }
    }
}

impl Agent {
    /// After the services an input touched were indexed: reads the stored types that
    /// became needed, and forgets those no wanted service has any more.
    pub(super) fn sync_types(&mut self) {
        for name in std::mem::take(&mut self.dirty.types) {
            let needed = self.index.services_of_type(&name).is_some();
            let known = self.types.reads.contains_key(&name);
            if needed && !known {
                self.types.reads.insert(name.clone(), TypeRead::new());
                self.read(Watched::Plugin(name));
            } else if !needed && known {
                self.types.reads.remove(&name);
                let path = paths::plugin(&name);
                self.clear_problem(&path);
                self.newest_read.remove(&path);
                self.reread.remove(&path);
                // Its watch, if armed, fires once more and is ignored.
            }
        }
    }

    /// A watch fired on a plugin path: read it again if it still matters.
    pub(super) fn on_plugin_watch(&mut self, watched: Watched) {
        match &watched {
            Watched::Plugin(name) if self.types.reads.contains_key(name) => self.read(watched),
            Watched::PluginList if self.types.any_missing() => self.read(watched),
            _ => {}
        }
    }

    /// A plugin read is worth retrying after a failure.
    pub(super) fn plugin_read_matters(&self, watched: &Watched) -> bool {
        match watched {
            Watched::Plugin(name) => self.types.reads.contains_key(name),
            Watched::PluginList => self.types.any_missing(),
            _ => false,
        }
    }

    /// The reply to a read of `/plugins/<name>` or `/plugins`. Errors other than a
    /// missing node are retried by the caller.
    pub(super) fn on_plugin_read(&mut self, watched: Watched, reply: ZkReply) {
        match (watched, reply) {
            (Watched::PluginList, ZkReply::Children { names, .. }) => {
                let appeared: Vec<String> = self
                    .types
                    .reads
                    .iter()
                    .filter(|(name, read)| read.node == TypeNode::Missing && names.contains(name))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in appeared {
                    self.read(Watched::Plugin(name));
                }
            }
            (Watched::Plugin(name), reply) => {
                let Some(read) = self.types.reads.get_mut(&name) else {
                    return; // forgotten meanwhile
                };
                let changed = match reply {
                    ZkReply::Error(ZkError::NoNode) => {
                        let changed = read.node != TypeNode::Missing;
                        read.node = TypeNode::Missing;
                        changed
                    }
                    ZkReply::Data { data, .. } => match decode_stored(&name, &data) {
                        Ok(manifest) => {
                            let text = String::from_utf8_lossy(&data).into_owned();
                            let changed = read.node != TypeNode::Valid
                                || read.last_good.as_ref() != Some(&text);
                            if read.last_good.as_ref() != Some(&text) {
                                read.last_good = Some(text);
                                read.manifest = Some(Arc::new(manifest));
                            }
                            read.node = TypeNode::Valid;
                            changed
                        }
                        Err(error) => {
                            let node = TypeNode::Invalid(error.to_string());
                            let changed = read.node != node;
                            read.node = node;
                            changed
                        }
                    },
                    other => {
                        let node = TypeNode::Invalid(format!("unexpected reply {other:?}"));
                        let changed = read.node != node;
                        read.node = node;
                        changed
                    }
                };
                let problem = read.problem(&name);
                let path = paths::plugin(&name);
                match problem {
                    Some(problem) => self.problem(&path, problem),
                    None => self.clear_problem(&path),
                }
                if changed {
                    if let Some(services) = self.index.services_of_type(&name) {
                        self.dirty.services.extend(services.iter().cloned());
                    }
                }
                let missing = self.types.any_missing();
                if missing && !self.armed.contains(paths::PLUGINS) {
                    self.read(Watched::PluginList);
                }
            }
            _ => {}
        }
    }

    /// Re-reads every type (a new session: watches are gone).
    pub(super) fn read_types_again(&mut self) {
        let names: Vec<String> = self.types.reads.keys().cloned().collect();
        for name in names {
            self.read(Watched::Plugin(name));
        }
    }

    /// For the tasks and the tests: the manifest `service` launches from on this
    /// machine: its type built in, or the last good manifest read from
    /// `/plugins/<type>`. `None` while its settings or its type are not read yet, or when
    /// its type was never read valid.
    pub fn manifest_of(&self, service: &str) -> Option<&Manifest> {
        let settings = self.services.get(service)?.target.settings.value()?;
        self.types.manifest(settings.service_type.as_str())
    }

    /// For the simulator: the stored types this agent reads (those of the services
    /// wanted on its machine).
    pub fn stored_types(&self) -> Vec<String> {
        self.types.names().cloned().collect()
    }
}
