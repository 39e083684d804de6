//! What this machine follows: the services in its index (`/assignments/<m>`, see
//! [`crate::paths`]) and those it runs or knows locally. The index is a hint that pop's
//! plans keep with the machines lists; whether a service runs here is its list's to say.
//! So a service that leaves the index is followed until one read of its list, sent after
//! it left, answers: not here (or gone), and it is stopped and forgotten; here, and the
//! agent keeps it and makes its own entry again.

use super::service::{Control, Service};
use super::target::{Listing, NodeRead};
use super::{Agent, Pending};
use crate::names::ServiceName;
use crate::paths::{self, Watched};
use crate::zk::{Acl, CreateMode, RequestId, ZkError, ZkOp, ZkReply};
use std::collections::BTreeSet;

impl Agent {
    /// The index as read: services in it are followed; those that left it are
    /// confirmed by a read of their list; names that are not services' are problems.
    pub(super) fn apply_index(&mut self, names: Vec<String>) {
        let machine = self.machine().to_string();
        let mut indexed = BTreeSet::new();
        let mut bad = BTreeSet::new();
        for name in names {
            match ServiceName::new(&name) {
                Ok(_) => {
                    indexed.insert(name);
                }
                Err(e) => {
                    let path = paths::assignment(&machine, &name);
                    self.problem(&path, e.to_string());
                    bad.insert(path);
                }
            }
        }
        // Problems about names that are gone from the index go with them.
        let prefix = format!("{}/", paths::assignments(&machine));
        let stale: Vec<String> = self
            .problems
            .keys()
            .filter(|path| path.starts_with(&prefix) && !bad.contains(*path))
            .cloned()
            .collect();
        for path in stale {
            self.clear_problem(&path);
        }
        let mut fresh = Vec::new();
        let mut leaving = Vec::new();
        for (name, service) in self.services.iter_mut() {
            let listing = service.target.listing;
            match (indexed.contains(name), listing) {
                // Its list was missing, and a missing node leaves no watch: the index
                // changing (an entry made again by a deploy) is the time to look again.
                (true, Listing::Indexed) if service.target.machines == NodeRead::Missing => {
                    fresh.push((name.clone(), true));
                    continue;
                }
                (true, Listing::Indexed) => continue,
                (true, Listing::Gone) => {
                    // Undeployed and deployed again: what we knew of it is stale.
                    fresh.push((name.clone(), true));
                    service.target.listing = Listing::Indexed;
                }
                (true, Listing::NotYetRead | Listing::Leaving { .. }) => {
                    // Adopted before any index: the new session read it already, unless
                    // that failed. Leaving: its reads and watches are still out.
                    fresh.push((name.clone(), false));
                    service.target.listing = Listing::Indexed;
                }
                (false, Listing::Indexed | Listing::NotYetRead) => leaving.push(name.clone()),
                (false, Listing::Leaving { .. } | Listing::Gone) => continue,
            }
            self.dirty.services.insert(name.clone());
        }
        for name in indexed {
            if !self.services.contains_key(&name) {
                let service = Service::new(name.clone(), Listing::Indexed);
                self.services.insert(name.clone(), service);
                self.dirty.services.insert(name.clone());
                fresh.push((name, true));
            }
        }
        for (name, stale) in fresh {
            if stale && self.take_keepers_list(&name) {
                // Taken: current, and watched.
            } else if stale && self.keeper.reading_list(&name) {
                // A deploy writes the list and the entry together: the keeper's read of
                // the list, sent on its watch, lands soon; take that one.
                self.awaiting_keepers_list.insert(name.clone());
            } else {
                self.read_unless_watched(Watched::Machines(name.clone()), stale);
            }
            self.read_unless_watched(Watched::Settings(name), stale);
        }
        for name in leaving {
            self.leave(&name);
        }
    }

    /// On the keeper's machine, a service new in the index takes its machines list from
    /// the keeper instead of reading it again: the keeper read it with the session's
    /// watch, and that watch has not fired since (its view is settled), so the list is
    /// current, and a change from now on fires the watch, which makes this agent read it
    /// (the service is followed from here on). True when the list was taken.
    ///
    /// Only the list is taken: the settings read that `apply_index` sends next does what
    /// a read list naming this machine would do for settings found missing or withheld.
    fn take_keepers_list(&mut self, name: &str) -> bool {
        let path = paths::service_machines(name);
        if self.session_id().is_none() || !self.armed.contains(&path) {
            return false;
        }
        let Some((machines, mzxid)) = self.keeper.settled_list(name) else {
            return false;
        };
        let machines = machines.clone();
        let newest = self.newest_read.entry(path.clone()).or_default();
        if mzxid < *newest {
            return false; // this agent has seen a newer list: read it again
        }
        *newest = mzxid;
        self.clear_problem(&path);
        self.update_service(name, |s| s.target.machines = NodeRead::Read(machines));
        true
    }

    /// The keeper's read of `service`'s list came back (or `/services`, which may have
    /// dropped it): a service new in the index that waited for it takes it; while the
    /// keeper is still reading (the read failed and goes again, or another change came)
    /// it waits on; otherwise (the list is bad or missing, the keeper reads it no more)
    /// it reads the list itself.
    pub(super) fn keepers_list_landed(&mut self, service: &str) {
        if !self.awaiting_keepers_list.contains(service) || self.keeper.reading_list(service) {
            return;
        }
        self.awaiting_keepers_list.remove(service);
        let indexed = self
            .services
            .get(service)
            .is_some_and(|s| s.target.listing == Listing::Indexed);
        if indexed && !self.take_keepers_list(service) {
            self.read(Watched::Machines(service.to_string()));
        }
    }

    /// The index does not exist: as if empty (what runs here is confirmed by its lists),
    /// and it is read again soon. An open namespace's agent makes it; a secured
    /// namespace's is made by `pop machine add`.
    pub(super) fn index_missing(&mut self) {
        let path = paths::assignments(self.machine());
        let hint = if self.config.access.is_open() {
            "missing: run `pop init`"
        } else {
            "missing: run `pop machine add` for this machine"
        };
        self.problem(&path, hint.to_string());
        if self.config.access.is_open() {
            self.create_index_node(None, paths::ASSIGNMENTS.to_string());
        }
        self.apply_index(Vec::new());
    }

    /// `name` left the index: it is followed until a read of its list sent from now on
    /// says whether it is still deployed here.
    fn leave(&mut self, name: &str) {
        let confirm = RequestId(self.next_request);
        self.update_service(name, |s| s.target.listing = Listing::Leaving { confirm });
        self.read(Watched::Machines(name.to_string()));
    }

    /// The service whose departure from the index the reply to request `id` answers.
    pub(super) fn confirming(&self, id: RequestId, watched: &Watched) -> Option<String> {
        let Watched::Machines(name) = watched else {
            return None;
        };
        let service = self.services.get(name)?;
        matches!(service.target.listing, Listing::Leaving { confirm } if id >= confirm)
            .then(|| name.clone())
    }

    /// The read of `name`'s list after it left the index came back (and was applied):
    /// decides whether it is still deployed here.
    pub(super) fn confirm_departure(&mut self, name: &str, reply: &ZkReply) {
        let answered = match reply {
            ZkReply::Error(ZkError::NoNode) => true,
            // Bad data is no answer: the last good list stays, and the next read decides.
            ZkReply::Data { .. } => !self.problems.contains_key(&paths::service_machines(name)),
            _ => false,
        };
        let Some(service) = self.services.get(name) else {
            return;
        };
        if !answered || !matches!(service.target.listing, Listing::Leaving { .. }) {
            return;
        }
        let here = match &service.target.machines {
            NodeRead::Read(machines) => machines.contains(self.machine()),
            NodeRead::Missing => false,
            NodeRead::NotYetRead => return,
        };
        if here {
            // Deployed here without its entry (a list written by hand, before the keeper
            // repairs it): it keeps running, and the entry is made.
            self.update_service(name, |s| s.target.listing = Listing::Indexed);
            let entry = paths::assignment(self.machine(), name);
            self.create_index_node(Some(name.to_string()), entry);
        } else {
            self.update_service(name, |s| {
                s.target.listing = Listing::Gone;
                // Gone from ZooKeeper: an adopted process has nothing to wait for.
                s.control = Control::FollowsTarget;
            });
            // A task issued while this agent was away may name this machine.
            self.look_at_tasks_once_more(name);
        }
    }

    /// Creates `path`: `/assignments`, this machine's index, or its entry for `service`
    /// (`None` for the first two). A missing parent is made first, in an open namespace.
    pub(super) fn create_index_node(&mut self, service: Option<String>, path: String) {
        if self.session_id().is_none() {
            // A new session makes the index; the index read after it, the entry.
            return;
        }
        self.send(
            ZkOp::Create {
                path: path.clone(),
                data: Vec::new(),
                mode: CreateMode::Persistent,
                acl: self.index_node_acl(&path),
            },
            Pending::IndexNode { service, path },
        );
    }

    /// An entry is the machine's own node; `/assignments` and its index are made open
    /// only in an open namespace (a secured one's by `pop machine add`).
    fn index_node_acl(&self, path: &str) -> Acl {
        if paths::parent(path) == Some(paths::assignments(self.machine()).as_str()) {
            self.config.access.own_node()
        } else {
            Acl::open()
        }
    }

    pub(super) fn on_index_node_reply(
        &mut self,
        service: Option<String>,
        path: String,
        reply: ZkReply,
    ) {
        let index = paths::assignments(self.machine());
        let entry = service
            .as_ref()
            .map(|s| paths::assignment(self.machine(), s));
        match reply {
            ZkReply::Created | ZkReply::Error(ZkError::NodeExists) => {
                self.clear_problem(&path);
                // The parent is there now: the child it was made for next.
                let next = if path == paths::ASSIGNMENTS {
                    Some(index)
                } else if path == index {
                    entry
                } else {
                    None
                };
                if let Some(next) = next {
                    self.create_index_node(service, next);
                }
            }
            ZkReply::Error(ZkError::NoNode) if self.config.access.is_open() => {
                if let Some(parent) = paths::parent(&path) {
                    let parent = parent.to_string();
                    self.create_index_node(service, parent);
                }
            }
            // The next departure from the index (or session) tries again.
            other => self.problem(&path, format!("cannot create it: {other:?}")),
        }
    }
}
