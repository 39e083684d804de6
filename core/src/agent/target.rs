//! Reading the target state: the service list, each service's machines list and
//! settings, with a watch on each, and what to do when a read fails or the data is bad.

use super::service::Service;
use super::{Agent, Pending};
use crate::event::{Action, Report};
use crate::names::ServiceName;
use crate::paths::{self, Watched};
use crate::settings::{parse_machines, Settings};
use crate::zk::{ZkError, ZkOp, ZkReply};
use std::collections::BTreeSet;

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
        let op = match watched {
            Watched::ServiceList => ZkOp::GetChildren { path, watch },
            _ => ZkOp::GetData { path, watch },
        };
        self.send(op, Pending::Read(watched));
    }

    pub(super) fn on_read(&mut self, watched: Watched, reply: ZkReply) {
        let path = watched.path();
        if let ZkReply::Error(err) = &reply {
            // No watch was left by a failed read.
            self.armed.remove(&path);
            match (err, &watched) {
                (ZkError::NoNode, Watched::Machines(name)) => {
                    self.clear_problem(&path);
                    self.update_service(name, |s| {
                        s.machines = None;
                        s.machines_read = true;
                    });
                }
                (ZkError::NoNode, Watched::Settings(name)) => {
                    self.clear_problem(&path);
                    self.update_service(name, |s| {
                        s.settings = None;
                        s.settings_read = true;
                    });
                }
                (ZkError::NoNode, Watched::ServiceList) => {
                    self.problem(&path, "missing: run `pop init`".to_string());
                    self.apply_service_list(Vec::new());
                }
                _ => {}
            }
            // The node may appear later (written in steps by another client), or the
            // error was transient: look again soon, unless the service is gone.
            let still_relevant = match &watched {
                Watched::ServiceList => true,
                Watched::Machines(n) | Watched::Settings(n) => {
                    self.services.get(n).is_some_and(|s| s.listed)
                }
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
        }
        match (watched, reply) {
            (Watched::ServiceList, ZkReply::Children { names, .. }) => {
                self.clear_problem(&path);
                self.apply_service_list(names);
            }
            (Watched::Machines(name), ZkReply::Data { data, .. }) => match parse_machines(&data) {
                Ok(machines) => {
                    self.clear_problem(&path);
                    self.update_service(&name, |s| {
                        s.machines = Some(machines);
                        s.machines_read = true;
                    });
                }
                Err(e) => self.problem(&path, e.to_string()),
            },
            (Watched::Settings(name), ZkReply::Data { data, .. }) => match Settings::parse(&data) {
                Ok(settings) => {
                    self.clear_problem(&path);
                    self.update_service(&name, |s| {
                        s.settings = Some(settings);
                        s.settings_read = true;
                    });
                }
                Err(e) => self.problem(&path, e.to_string()),
            },
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
            // Removed and added again: what we knew of it is stale.
            if now_listed && !service.listed {
                fresh.push(name.clone());
            }
            service.listed = now_listed;
            service.listing_read = true;
            if !now_listed {
                // Gone from ZooKeeper: an adopted process has nothing to wait for.
                service.awaiting_target = false;
            }
        }
        for name in listed {
            if !self.services.contains_key(&name) {
                let mut service = Service::new(name.clone());
                service.listing_read = true;
                self.services.insert(name.clone(), service);
                fresh.push(name);
            }
        }
        for name in fresh {
            self.read(Watched::Machines(name.clone()));
            self.read(Watched::Settings(name));
        }
    }

    pub(super) fn update_service(&mut self, name: &str, f: impl FnOnce(&mut Service)) {
        if let Some(service) = self.services.get_mut(name) {
            f(service);
        }
    }

    pub(super) fn problem(&mut self, path: &str, error: String) {
        if self.problems.get(path) != Some(&error) {
            self.actions.push_back(Action::Report(Report::BadData {
                path: path.to_string(),
                error: error.clone(),
            }));
            self.problems.insert(path.to_string(), error);
        }
    }

    pub(super) fn clear_problem(&mut self, path: &str) {
        if self.problems.remove(path).is_some() {
            self.actions.push_back(Action::Report(Report::DataRepaired {
                path: path.to_string(),
            }));
        }
    }
}
