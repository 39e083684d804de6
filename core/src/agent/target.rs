//! Reading the target state: this machine's index (see [`super::assignments`]), each
//! followed service's machines list and settings, with a watch on each, and what to do
//! when a read fails or the data is bad.

use super::service::Service;
use super::tasks::Following;
use super::{Agent, Pending};
use crate::event::{Action, Report};
use crate::names::ServiceName;
use crate::paths::{self, Watched};
use crate::settings::{parse_machines, Settings};
use crate::zk::{RequestId, ZkError, ZkOp, ZkReply};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What this agent has read of one service's target. The machines and settings are kept
/// beside the listing, not inside it: replies arrive in any order (a machines list may
/// be read before the index that names the service), and a service indexed again keeps
/// its last good view until the re-read arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Target {
    pub listing: Listing,
    pub machines: NodeRead<BTreeSet<String>>,
    /// Shared with the runs started from it, so passing it on costs no copy.
    pub settings: NodeRead<Arc<Settings>>,
}

/// Whether the service is in this machine's index (`/assignments/<m>`), which says what
/// to follow; whether it runs here is its machines list's to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Listing {
    /// No index read since this entry exists (a process adopted before the first read).
    NotYetRead,
    /// In the index (or its list names this machine and the agent made its entry):
    /// its machines list and settings are read and watched.
    #[serde(alias = "Listed")]
    Indexed,
    /// Gone from the index: still followed until a read of its machines list sent from
    /// request `confirm` on answers whether this machine is in it.
    Leaving { confirm: RequestId },
    /// Not deployed here (its list does not name this machine, or is gone): no more
    /// reads; forgotten once nothing of it runs.
    #[serde(alias = "Unlisted")]
    Gone,
}

impl Listing {
    /// Its machines list and settings are read and watched.
    pub(crate) fn is_followed(self) -> bool {
        !matches!(self, Listing::Gone)
    }

    /// The index has been read with it in, or it has been since: what its list and
    /// settings say goes.
    pub(crate) fn is_indexed(self) -> bool {
        matches!(self, Listing::Indexed | Listing::Leaving { .. })
    }
}

/// The last good data of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum NodeRead<T> {
    /// Not read yet, or only bad data was.
    NotYetRead,
    /// The node does not exist.
    Missing,
    Read(T),
}

impl<T> NodeRead<T> {
    pub(crate) fn value(&self) -> Option<&T> {
        match self {
            NodeRead::Read(value) => Some(value),
            NodeRead::NotYetRead | NodeRead::Missing => None,
        }
    }

    fn is_read(&self) -> bool {
        !matches!(self, NodeRead::NotYetRead)
    }
}

impl Target {
    pub(crate) fn new(listing: Listing) -> Self {
        Target {
            listing,
            machines: NodeRead::NotYetRead,
            settings: NodeRead::NotYetRead,
        }
    }

    /// Enough has been read to tell what ZooKeeper wants of this service.
    pub(crate) fn is_known(&self) -> bool {
        match self.listing {
            Listing::NotYetRead => false,
            Listing::Gone => true,
            Listing::Indexed | Listing::Leaving { .. } => {
                self.machines.is_read() && self.settings.is_read()
            }
        }
    }
}

impl Agent {
    pub(super) fn read(&mut self, watched: Watched) {
        if self.session_id().is_none() && !planted!(ReadWhileDisconnected) {
            // Re-read once connected.
            self.reread.insert(watched.path());
            return;
        }
        let path = watched.path();
        // One watch per path per session is enough; more would multiply the events. A
        // departed service's tasks are read once: no watch (see `Following::LastLook`).
        let once = matches!(&watched, Watched::Tasks(name)
            if matches!(self.tasks.following(name), Following::LastLook { .. }));
        let watch = !once && self.armed.insert(path.clone());
        let op = if watched.reads_children() {
            ZkOp::GetChildren { path, watch }
        } else {
            ZkOp::GetData { path, watch }
        };
        self.send(op, Pending::Read(watched));
    }

    /// An ACL refused reading the service's settings: not deployed here (in a secured
    /// namespace the admin grants read before listing a machine). Not there for this
    /// machine, until its machines list names it. If the list already names it, the ACL
    /// lags the list (two deploys racing, each granting what it read; or ACLs set again
    /// after writes by hand) and will catch up with no watch firing (ZooKeeper has none
    /// for ACL changes): read again after a pause, until it can.
    pub(super) fn withhold_settings(&mut self, name: String) {
        let path = paths::service_settings(&name);
        self.armed.remove(&path);
        if self.listed_here(&name) {
            self.reread.insert(path);
            self.schedule_retry();
        }
        self.update_service(&name, |s| s.target.settings = NodeRead::Missing);
        self.withheld.insert(name);
    }

    pub(super) fn on_read(&mut self, watched: Watched, reply: ZkReply) {
        if let Watched::Tasks(_) | Watched::ServiceChildren(_) | Watched::TaskResult { .. } =
            watched
        {
            return self.on_task_watched_read(watched, reply);
        }
        let path = watched.path();
        if let ZkReply::Error(err) = &reply {
            // No watch was left by a failed read; the keeper may have counted on it.
            self.armed.remove(&path);
            if *err != ZkError::NoNode {
                self.keeper
                    .on_watch(&path, crate::zk::WatchKind::DataChanged);
            }
            match (err, &watched) {
                (ZkError::NoNode, Watched::Machines(name)) => {
                    self.clear_problem(&path);
                    self.update_service(name, |s| s.target.machines = NodeRead::Missing);
                }
                (ZkError::NoNode, Watched::Settings(name)) => {
                    self.clear_problem(&path);
                    self.update_service(name, |s| s.target.settings = NodeRead::Missing);
                }
                (ZkError::NoNode, Watched::Assignments(_)) => self.index_missing(),
                _ => {}
            }
            // The node may appear later (written in steps by another client), or the
            // error was transient: look again soon, unless the service is gone.
            if let (ZkError::NoNode, Watched::Plugin(_)) = (err, &watched) {
                // Missing is an answer: `/plugins` is watched for it to appear.
                self.on_plugin_read(watched, reply);
                return;
            }
            let followed = |n: &str| {
                self.services
                    .get(n)
                    .is_some_and(|s| s.target.listing.is_followed())
            };
            let still_relevant = match &watched {
                Watched::Assignments(_) => true,
                Watched::ServiceList => false,
                // Missing while indexed: removed (its entry goes in the same multi, and
                // the index read that follows ends this), or re-added meanwhile (a read
                // in flight from before; a missing node leaves no watch). Leaving: the
                // answer (see `confirm_departure`).
                Watched::Machines(n) if *err == ZkError::NoNode => self
                    .services
                    .get(n)
                    .is_some_and(|s| s.target.listing == Listing::Indexed),
                Watched::Machines(n) => followed(n),
                // Missing while its list names this machine: written in steps by hand.
                Watched::Settings(n) => {
                    followed(n) && (*err != ZkError::NoNode || self.listed_here(n))
                }
                Watched::Plugin(_) | Watched::PluginList => self.plugin_read_matters(&watched),
                task => self.task_read_relevant(task),
            };
            if still_relevant {
                self.reread.insert(path);
                self.schedule_retry();
            }
            return;
        }
        // Replies can arrive out of order (the driver runs requests concurrently): an
        // older read must not undo what a newer one showed.
        let freshness = match &reply {
            ZkReply::Data { stat, .. } => Some(stat.mzxid),
            ZkReply::Children { stat, .. } => Some(stat.pzxid),
            _ => None,
        };
        if let Some(zxid) = freshness {
            let newest = self.newest_read.entry(path.clone()).or_default();
            if zxid < *newest {
                return;
            }
            *newest = zxid;
            // Noted as a change even if the service is gone, so the entry goes with it.
            if let Watched::Machines(name) | Watched::Settings(name) = &watched {
                self.dirty.services.insert(name.clone());
            }
        }
        match (watched, reply) {
            (Watched::Assignments(_), ZkReply::Children { names, .. }) => {
                self.clear_problem(&path);
                if self.keeper.is_keeper() {
                    let entries = names
                        .iter()
                        .filter(|name| ServiceName::new(name).is_ok())
                        .cloned()
                        .collect();
                    let machine = self.config.machine.as_str();
                    self.keeper.own_directory_read(machine, &entries);
                }
                self.apply_index(names);
            }
            (Watched::Machines(name), ZkReply::Data { data, .. }) => match parse_machines(&data) {
                Ok(machines) => {
                    // Read by the agent itself: no longer waiting for the keeper's read.
                    self.awaiting_keepers_list.remove(&name);
                    self.clear_problem(&path);
                    let here = machines.contains(self.machine());
                    // Settings found missing (a read from before the service was written
                    // again: a missing node leaves no watch) are read again once the list
                    // names this machine, as are settings an ACL kept from it.
                    let missing = self
                        .services
                        .get(&name)
                        .is_some_and(|s| s.target.settings == NodeRead::Missing);
                    self.update_service(&name, |s| s.target.machines = NodeRead::Read(machines));
                    if here && (self.withheld.remove(&name) || missing) {
                        self.read(Watched::Settings(name));
                    }
                }
                Err(e) => self.problem(&path, e.to_string()),
            },
            (Watched::Settings(name), ZkReply::Data { data, .. }) => match Settings::parse(&data) {
                Ok(settings) => {
                    self.clear_problem(&path);
                    self.withheld.remove(&name);
                    let settings = Arc::new(settings);
                    self.update_service(&name, |s| s.target.settings = NodeRead::Read(settings));
                }
                Err(e) => self.problem(&path, e.to_string()),
            },
            (watched @ (Watched::Plugin(_) | Watched::PluginList), reply) => {
                self.on_plugin_read(watched, reply)
            }
            (_, other) => self.problem(&path, format!("unexpected reply {other:?}")),
        }
    }

    /// Reads `watched`, unless what was read is not `stale` and a read with a watch went
    /// out for it in this session: that reply, and the watch after it, tell what the node
    /// holds. (A new session reads the services it adopted before the listing arrives.)
    pub(super) fn read_unless_watched(&mut self, watched: Watched, stale: bool) {
        let path = watched.path();
        if stale || !(self.session_id().is_some() && self.armed.contains(&path)) {
            self.read(watched);
        }
    }

    /// Whether the service's machines list, as last read, names this machine.
    pub(super) fn listed_here(&self, name: &str) -> bool {
        self.services
            .get(name)
            .and_then(|s| s.target.machines.value())
            .is_some_and(|machines| machines.contains(self.machine()))
    }

    /// Changes one service (if it is known) and notes the change.
    pub(super) fn update_service(&mut self, name: &str, f: impl FnOnce(&mut Service)) {
        if let Some(service) = self.services.get_mut(name) {
            f(service);
            self.dirty.services.insert(name.to_string());
        }
    }

    pub(super) fn problem(&mut self, path: &str, error: String) {
        if self.problems.get(path) != Some(&error) {
            self.actions.push_back(Action::Report(Report::BadData {
                path: path.to_string(),
                error: error.clone(),
            }));
            self.problems.insert(path.to_string(), error);
            self.dirty.report = true;
        }
    }

    pub(super) fn clear_problem(&mut self, path: &str) {
        if self.problems.remove(path).is_some() {
            self.actions.push_back(Action::Report(Report::DataRepaired {
                path: path.to_string(),
            }));
            self.dirty.report = true;
        }
    }
}
