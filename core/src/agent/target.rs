//! Reading the target state: the service list, each service's machines list and
//! settings, with a watch on each, and what to do when a read fails or the data is bad.

use super::service::{Control, Service};
use super::{Agent, Pending};
use crate::event::{Action, Report};
use crate::names::ServiceName;
use crate::paths::{self, Watched};
use crate::settings::{parse_machines, Settings};
use crate::zk::{ZkError, ZkOp, ZkReply};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What this agent has read of one service's target. The machines and settings are kept
/// beside the listing, not inside it: replies arrive in any order (a machines list may
/// be read before the listing that names the service), and a service listed again keeps
/// its last good view until the re-read arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Target {
    pub listing: Listing,
    pub machines: NodeRead<BTreeSet<String>>,
    /// Shared with the runs started from it, so passing it on costs no copy.
    pub settings: NodeRead<Arc<Settings>>,
}

/// Whether the service is listed under /services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Listing {
    /// No listing read since this entry exists (a process adopted before the first read).
    NotYetRead,
    Unlisted,
    Listed,
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
            Listing::Unlisted => true,
            Listing::Listed => self.machines.is_read() && self.settings.is_read(),
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
        // One watch per path per session is enough; more would multiply the events.
        let watch = self.armed.insert(path.clone());
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
        let listed_here = self
            .services
            .get(&name)
            .and_then(|s| s.target.machines.value())
            .is_some_and(|machines| machines.contains(self.machine()));
        if listed_here {
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
                (ZkError::NoNode, Watched::ServiceList) => {
                    self.problem(&path, "missing: run `pop init`".to_string());
                    self.apply_service_list(Vec::new());
                }
                _ => {}
            }
            // The node may appear later (written in steps by another client), or the
            // error was transient: look again soon, unless the service is gone.
            if let (ZkError::NoNode, Watched::Plugin(_)) = (err, &watched) {
                // Missing is an answer: `/plugins` is watched for it to appear.
                self.on_plugin_read(watched, reply);
                return;
            }
            let still_relevant = match &watched {
                Watched::ServiceList => true,
                Watched::Machines(n) | Watched::Settings(n) => self
                    .services
                    .get(n)
                    .is_some_and(|s| s.target.listing == Listing::Listed),
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
            (Watched::ServiceList, ZkReply::Children { names, .. }) => {
                self.clear_problem(&path);
                self.apply_service_list(names);
            }
            (Watched::Machines(name), ZkReply::Data { data, .. }) => match parse_machines(&data) {
                Ok(machines) => {
                    self.clear_problem(&path);
                    let here = machines.contains(self.machine());
                    self.update_service(&name, |s| s.target.machines = NodeRead::Read(machines));
                    if here && self.withheld.remove(&name) {
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

    pub(super) fn apply_service_list(&mut self, names: Vec<String>) {
        let mut listed = BTreeSet::new();
        let mut bad = BTreeSet::new();
        for name in names {
            match ServiceName::new(&name) {
                Ok(_) => {
                    listed.insert(name);
                }
                Err(e) => {
                    let path = paths::service(&name);
                    self.problem(&path, e.to_string());
                    bad.insert(path);
                }
            }
        }
        // Problems about services that are gone (or names that are gone) go with them.
        let stale: Vec<String> = self
            .problems
            .keys()
            .filter(|path| {
                let Some(rest) = path
                    .strip_prefix(paths::SERVICES)
                    .and_then(|r| r.strip_prefix('/'))
                else {
                    return false;
                };
                let name = rest.split('/').next().unwrap_or(rest);
                !listed.contains(name) && !bad.contains(path.as_str())
            })
            .cloned()
            .collect();
        for path in stale {
            self.clear_problem(&path);
        }
        let mut fresh = Vec::new();
        for (name, service) in self.services.iter_mut() {
            let now_listed = listed.contains(name);
            let listing = if now_listed {
                Listing::Listed
            } else {
                Listing::Unlisted
            };
            let unchanged = service.target.listing == listing
                && (now_listed || service.control == Control::FollowsTarget);
            if unchanged {
                continue;
            }
            if now_listed {
                // Removed and added again: what we knew of it is stale. Adopted before
                // any listing: the new session read it already, unless that failed.
                let stale = service.target.listing == Listing::Unlisted;
                fresh.push((name.clone(), stale));
            } else {
                // Gone from ZooKeeper: an adopted process has nothing to wait for.
                service.control = Control::FollowsTarget;
            }
            service.target.listing = listing;
            self.dirty.services.insert(name.clone());
        }
        for name in listed {
            if !self.services.contains_key(&name) {
                let service = Service::new(name.clone(), Listing::Listed);
                self.services.insert(name.clone(), service);
                self.dirty.services.insert(name.clone());
                fresh.push((name, true));
            }
        }
        for (name, stale) in fresh {
            self.read_unless_watched(Watched::Machines(name.clone()), stale);
            self.read_unless_watched(Watched::Settings(name), stale);
        }
    }

    /// Reads `watched`, unless what was read is not `stale` and a read with a watch went
    /// out for it in this session: that reply, and the watch after it, tell what the node
    /// holds. (A new session reads the services it adopted before the listing arrives.)
    fn read_unless_watched(&mut self, watched: Watched, stale: bool) {
        let path = watched.path();
        if stale || !(self.session_id().is_some() && self.armed.contains(&path)) {
            self.read(watched);
        }
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
