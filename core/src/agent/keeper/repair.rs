//! The keeper's repair of the assignment index, for one term.
//!
//! `/services` and each listed service's machines list are read with a watch; the index
//! (`/assignments` and each `/assignments/<m>`) is read once, and from then on known from
//! the keeper's own writes (a plan's write it did not see costs one Create or Delete
//! that finds the work done) and, for the keeper's own machine, from that machine's
//! agent's reads of its index, which it watches anyway. An entry is created when its service's list names the
//! machine, and deleted when the list does not, or the service is gone.
//!
//! A view is acted on only when settled: read, and no watch fired since. A list being
//! read again, missing or bad changes nothing (its entries stay as the last good list
//! left them). A list change costs a read and O(machines of that service) work.

use super::{Effects, Job, Sent};
use crate::names::{MachineId, ServiceName};
use crate::paths;
use crate::settings::parse_machines;
use crate::zk::{ZkError, ZkReply};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the keeper knows of one node it reads with a watch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
enum View<T> {
    /// Being read (first, or again after its watch fired): nothing is decided on it.
    #[default]
    Reading,
    /// Read, and no watch fired since.
    Settled(T),
    /// Missing or bad: nothing is decided on it until it is read good.
    Unusable,
}

/// How far the once-per-term read of the index is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
enum IndexRead {
    #[default]
    Listing,
    /// These machines' directories are still being read.
    Reading(BTreeSet<String>),
    Read,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Repair {
    services: View<BTreeSet<String>>,
    /// Names under `/services` that are no service names (reported, ignored).
    bad_names: BTreeSet<String>,
    /// Each listed service's machines list (valid machine ids only).
    lists: BTreeMap<String, View<BTreeSet<String>>>,
    /// The mzxid of each list as last read good: with it the agent can take a settled
    /// list as its own read (see [`Repair::settled_list`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    list_zxids: BTreeMap<String, i64>,
    /// Per service, what its list names that is no machine id (reported, ignored).
    bad_ids: BTreeMap<String, BTreeSet<String>>,
    index: IndexRead,
    /// The index entries: per service, the machines with one.
    entries: BTreeMap<String, BTreeSet<String>>,
    /// The machines whose directory `/assignments/<m>` exists.
    directories: BTreeSet<String>,
    /// Per machine, the services whose entry waits for its directory.
    waiting: BTreeMap<String, BTreeSet<String>>,
    /// Entries (service, machine) whose write was refused: left alone until the list is
    /// read again.
    refused: BTreeSet<(String, String)>,
    /// Problems at paths only the keeper reports (under `/assignments`): cleared when
    /// fixed, and when the term ends.
    raised: BTreeSet<String>,
}

impl Repair {
    /// A new term, and what it reads first.
    pub(super) fn begin() -> (Repair, [Job; 2]) {
        (Repair::default(), [Job::Services, Job::Index])
    }

    pub(super) fn end(&mut self, fx: &mut Effects) {
        for path in std::mem::take(&mut self.raised) {
            fx.clear(path);
        }
    }

    fn raise(&mut self, fx: &mut Effects, path: String, error: String) {
        self.raised.insert(path.clone());
        fx.problem(path, error);
    }

    fn lower(&mut self, fx: &mut Effects, path: String) {
        if self.raised.remove(&path) {
            fx.clear(path);
        }
    }

    /// `/services` changed: read it again.
    pub(super) fn services_changed(&mut self) -> Option<Job> {
        self.services = View::Reading;
        Some(Job::Services)
    }

    /// A machines list changed: read it again, if its service is listed.
    pub(super) fn list_changed(&mut self, service: String) -> Option<Job> {
        let view = self.lists.get_mut(&service)?;
        *view = View::Reading;
        Some(Job::List(service))
    }

    /// The service's machines list, and its mzxid, when it is settled (read, and no
    /// watch fired since) and every id in it is a machine id: then it is the whole list
    /// as the agent would parse it.
    pub(super) fn settled_list(&self, service: &str) -> Option<(&BTreeSet<String>, i64)> {
        match self.lists.get(service) {
            Some(View::Settled(list)) if !self.bad_ids.contains_key(service) => {
                Some((list, *self.list_zxids.get(service)?))
            }
            _ => None,
        }
    }

    /// The keeper's own machine's agent read that machine's index directory (with its
    /// watch): a fresher record of the entries there than the keeper's own, so an entry
    /// a plan wrote with its list (`pop deploy`) is known without a create that finds it.
    pub(super) fn own_directory_read(
        &mut self,
        machine: &str,
        services: &BTreeSet<String>,
        next: &mut Vec<Job>,
    ) {
        if self.index != IndexRead::Read {
            return; // the term's own read of the index decides first
        }
        self.directories.insert(machine.to_string());
        let had: BTreeSet<String> = self
            .entries
            .iter()
            .filter(|(_, machines)| machines.contains(machine))
            .map(|(service, _)| service.clone())
            .collect();
        for service in services.symmetric_difference(&had) {
            self.set_has(service, machine, services.contains(service));
            self.review(service, machine, next);
        }
    }

    /// Whether the service's list is being read (first, or again after its watch fired).
    pub(super) fn reading_list(&self, service: &str) -> bool {
        matches!(self.lists.get(service), Some(View::Reading))
    }

    /// Whether the lists want the entry, if the keeper can tell.
    fn wants(&self, service: &str, machine: &str) -> Option<bool> {
        match self.lists.get(service) {
            Some(View::Settled(list)) => Some(list.contains(machine)),
            Some(View::Reading | View::Unusable) => None,
            None => matches!(self.services, View::Settled(_)).then_some(false),
        }
    }

    fn has(&self, service: &str, machine: &str) -> bool {
        self.entries
            .get(service)
            .is_some_and(|machines| machines.contains(machine))
    }

    fn set_has(&mut self, service: &str, machine: &str, has: bool) {
        if has {
            self.entries
                .entry(service.to_string())
                .or_default()
                .insert(machine.to_string());
        } else if let Some(machines) = self.entries.get_mut(service) {
            machines.remove(machine);
            if machines.is_empty() {
                self.entries.remove(service);
            }
        }
    }

    /// Queues the entry's write if the lists and the index disagree on it.
    fn review(&self, service: &str, machine: &str, next: &mut Vec<Job>) {
        if self.index != IndexRead::Read
            || self
                .refused
                .contains(&(service.to_string(), machine.to_string()))
        {
            return;
        }
        if self
            .wants(service, machine)
            .is_some_and(|wants| wants != self.has(service, machine))
        {
            next.push(Job::Entry {
                service: service.to_string(),
                machine: machine.to_string(),
            });
        }
    }

    /// Reviews every entry of the service and every machine its list names.
    fn review_service(&self, service: &str, next: &mut Vec<Job>) {
        let listed = match self.lists.get(service) {
            Some(View::Settled(list)) => Some(list),
            _ => None,
        };
        let machines: BTreeSet<&String> = listed
            .into_iter()
            .flatten()
            .chain(self.entries.get(service).into_iter().flatten())
            .collect();
        for machine in machines {
            self.review(service, machine, next);
        }
    }

    /// Once per term, when the index has been read: everything.
    fn review_all(&self, next: &mut Vec<Job>) {
        let services: BTreeSet<&String> = self.lists.keys().chain(self.entries.keys()).collect();
        for service in services {
            self.review_service(service, next);
        }
    }

    /// At sending time: whether to create (`true`) or delete the entry, or nothing. An
    /// entry whose machine has no directory waits for it (created in an open namespace;
    /// in a secured one `pop machine add` makes it).
    pub(super) fn write_for(
        &mut self,
        service: &str,
        machine: &str,
        open: bool,
        todo: &mut BTreeSet<Job>,
        fx: &mut Effects,
    ) -> Option<bool> {
        if self.index != IndexRead::Read
            || self
                .refused
                .contains(&(service.to_string(), machine.to_string()))
        {
            return None;
        }
        let wants = self.wants(service, machine)?;
        if wants == self.has(service, machine) {
            return None;
        }
        if wants && !self.directories.contains(machine) {
            if open {
                self.waiting
                    .entry(machine.to_string())
                    .or_default()
                    .insert(service.to_string());
                todo.insert(Job::Directory(machine.to_string()));
            } else {
                self.refused
                    .insert((service.to_string(), machine.to_string()));
                self.raise(
                    fx,
                    paths::assignments(machine),
                    format!("missing, so {service} cannot be indexed for {machine}: `pop machine add {machine}` makes it"),
                );
            }
            return None;
        }
        Some(wants)
    }

    /// The reply to one of the term's requests; true when the job is to be retried.
    pub(super) fn on_reply(
        &mut self,
        job: &Job,
        sent: Sent,
        reply: &ZkReply,
        stale: bool,
        next: &mut Vec<Job>,
        fx: &mut Effects,
    ) -> bool {
        match (job, reply) {
            // Read again anyway: this one may predate the change.
            (Job::Services | Job::List(_), _) if stale => false,
            (Job::Services, ZkReply::Children { names, .. }) => {
                self.on_services(names, next, fx);
                false
            }
            (Job::Services, ZkReply::Error(ZkError::NoNode)) => {
                fx.problem(
                    paths::SERVICES.to_string(),
                    "missing: run `pop init`".to_string(),
                );
                true
            }
            (Job::List(service), ZkReply::Data { data, stat }) => {
                self.on_list(service, data, stat.mzxid, next, fx);
                false
            }
            (Job::List(service), ZkReply::Error(ZkError::NoNode)) => {
                // No watch was left: read again later, while it is listed.
                match self.lists.get_mut(service) {
                    Some(view) => {
                        *view = View::Unusable;
                        true
                    }
                    None => false,
                }
            }
            (Job::Index, ZkReply::Children { names, .. }) => {
                self.on_index(names, next, fx);
                false
            }
            (Job::Entries(machine), ZkReply::Children { names, .. }) => {
                for name in names {
                    match ServiceName::new(name) {
                        Ok(_) => self.set_has(name, machine, true),
                        Err(e) => self.raise(
                            fx,
                            paths::assignment(machine, name),
                            format!("{e}; ignored"),
                        ),
                    }
                }
                self.directory_read(machine, next);
                false
            }
            (Job::Entries(machine), ZkReply::Error(ZkError::NoNode)) => {
                self.directories.remove(machine);
                self.directory_read(machine, next);
                false
            }
            (Job::Index | Job::Directory(_), ZkReply::Error(ZkError::NoNode)) => {
                self.raise(
                    fx,
                    paths::ASSIGNMENTS.to_string(),
                    "missing: run `pop init`".to_string(),
                );
                true
            }
            (Job::Directory(machine), ZkReply::Created | ZkReply::Error(ZkError::NodeExists)) => {
                self.lower(fx, paths::ASSIGNMENTS.to_string());
                self.directories.insert(machine.clone());
                for service in self.waiting.remove(machine).unwrap_or_default() {
                    self.review(&service, machine, next);
                }
                false
            }
            (Job::Entry { service, machine }, reply) => {
                self.on_entry_written(service, machine, sent, reply, next, fx)
            }
            (job, ZkReply::Error(ZkError::NoAuth)) => {
                self.on_refused(job, next, fx);
                false
            }
            // Failed (the connection, a timeout) or of a shape no driver sends: again.
            _ => true,
        }
    }

    fn on_services(&mut self, names: &[String], next: &mut Vec<Job>, fx: &mut Effects) {
        fx.clear(paths::SERVICES.to_string());
        let mut listed = BTreeSet::new();
        let mut bad = BTreeSet::new();
        for name in names {
            match ServiceName::new(name) {
                Ok(_) => {
                    listed.insert(name.clone());
                }
                Err(e) => {
                    fx.problem(paths::service(name), e.to_string());
                    bad.insert(name.clone());
                }
            }
        }
        for name in self.bad_names.difference(&bad) {
            fx.clear(paths::service(name));
        }
        self.bad_names = bad;
        let gone: Vec<String> = self
            .lists
            .keys()
            .filter(|s| !listed.contains(*s))
            .cloned()
            .collect();
        for service in gone {
            self.lists.remove(&service);
            self.list_zxids.remove(&service);
            self.forget_list_problems(&service, fx);
        }
        for service in &listed {
            if !self.lists.contains_key(service) {
                self.lists.insert(service.clone(), View::Reading);
                next.push(Job::List(service.clone()));
            }
        }
        self.services = View::Settled(listed);
        // Entries of services no longer listed go.
        let unlisted: Vec<&String> = self
            .entries
            .keys()
            .filter(|s| !self.lists.contains_key(*s))
            .collect();
        for service in unlisted {
            self.review_service(service, next);
        }
    }

    /// Problems about a list's machine ids, and refusals of its entries, are forgotten
    /// when it is read again (or its service goes).
    fn forget_list_problems(&mut self, service: &str, fx: &mut Effects) {
        let refused: Vec<(String, String)> = self
            .refused
            .iter()
            .filter(|(s, _)| s == service)
            .cloned()
            .collect();
        for (s, machine) in refused {
            self.refused.remove(&(s, machine.clone()));
            self.lower(fx, paths::assignment(&machine, service));
            self.lower(fx, paths::assignments(&machine));
        }
        for machine in self.bad_ids.remove(service).unwrap_or_default() {
            self.lower(fx, paths::assignment(&machine, service));
        }
    }

    fn on_list(
        &mut self,
        service: &str,
        data: &[u8],
        mzxid: i64,
        next: &mut Vec<Job>,
        fx: &mut Effects,
    ) {
        if !self.lists.contains_key(service) {
            return; // no longer listed
        }
        let path = paths::service_machines(service);
        let machines = match parse_machines(data) {
            Ok(machines) => machines,
            Err(e) => {
                // Bad data changes nothing: the entries stay as the last good list left them.
                fx.problem(path, e.to_string());
                self.lists.insert(service.to_string(), View::Unusable);
                return;
            }
        };
        fx.clear(path);
        self.forget_list_problems(service, fx);
        let mut valid = BTreeSet::new();
        let mut bad = BTreeSet::new();
        for machine in machines {
            match MachineId::new(&machine) {
                Ok(_) => {
                    valid.insert(machine);
                }
                Err(e) => {
                    self.raise(
                        fx,
                        paths::assignment(&machine, service),
                        format!("the machines list of {service} names {machine:?}: {e}; it gets no index entry"),
                    );
                    bad.insert(machine);
                }
            }
        }
        if !bad.is_empty() {
            self.bad_ids.insert(service.to_string(), bad);
        }
        self.lists.insert(service.to_string(), View::Settled(valid));
        self.list_zxids.insert(service.to_string(), mzxid);
        self.review_service(service, next);
    }

    fn on_index(&mut self, names: &[String], next: &mut Vec<Job>, fx: &mut Effects) {
        self.lower(fx, paths::ASSIGNMENTS.to_string());
        let mut machines = BTreeSet::new();
        for name in names {
            match MachineId::new(name) {
                Ok(_) => {
                    machines.insert(name.clone());
                }
                Err(e) => self.raise(fx, paths::assignments(name), format!("{e}; ignored")),
            }
        }
        next.extend(machines.iter().cloned().map(Job::Entries));
        self.directories = machines.clone();
        if machines.is_empty() {
            self.index = IndexRead::Read;
            self.review_all(next);
        } else {
            self.index = IndexRead::Reading(machines);
        }
    }

    /// One directory of the index has been read (or found gone).
    fn directory_read(&mut self, machine: &str, next: &mut Vec<Job>) {
        if let IndexRead::Reading(left) = &mut self.index {
            left.remove(machine);
            if left.is_empty() {
                self.index = IndexRead::Read;
                self.review_all(next);
            }
        }
    }

    fn on_entry_written(
        &mut self,
        service: &str,
        machine: &str,
        sent: Sent,
        reply: &ZkReply,
        next: &mut Vec<Job>,
        fx: &mut Effects,
    ) -> bool {
        let done = match (sent, reply) {
            (Sent::Create, ZkReply::Created | ZkReply::Error(ZkError::NodeExists)) => Some(true),
            (Sent::Create, ZkReply::Error(ZkError::NoNode)) => {
                // Its directory went: made again (or waited for) on the next look.
                self.directories.remove(machine);
                None
            }
            (Sent::Delete, ZkReply::Deleted | ZkReply::Error(ZkError::NoNode)) => Some(false),
            (_, ZkReply::Error(ZkError::NoAuth | ZkError::NotEmpty)) => {
                let error = match reply {
                    ZkReply::Error(e) => e.to_string(),
                    _ => String::new(),
                };
                self.refused
                    .insert((service.to_string(), machine.to_string()));
                self.raise(
                    fx,
                    paths::assignment(machine, service),
                    format!(
                        "{} it failed: {error}; left alone until the list changes",
                        sent.doing()
                    ),
                );
                return false;
            }
            _ => return true,
        };
        if let Some(has) = done {
            self.set_has(service, machine, has);
        }
        // The list may have changed while the write was out.
        self.review(service, machine, next);
        false
    }

    fn on_refused(&mut self, job: &Job, next: &mut Vec<Job>, fx: &mut Effects) {
        let path = match job {
            Job::Services => paths::SERVICES.to_string(),
            Job::List(service) => paths::service_machines(service),
            Job::Index => paths::ASSIGNMENTS.to_string(),
            Job::Entries(machine) | Job::Directory(machine) => paths::assignments(machine),
            Job::Claim | Job::Check | Job::Entry { .. } => paths::KEEPER.to_string(),
        };
        if let Job::Directory(machine) | Job::Entries(machine) = job {
            for service in self.waiting.remove(machine).unwrap_or_default() {
                self.refused.insert((service, machine.clone()));
            }
            if let Job::Entries(machine) = job {
                self.directory_read(machine, next);
            }
        }
        self.raise(
            fx,
            path,
            "an ACL refused the keeper; `pop machine add` sets the ACLs again".to_string(),
        );
    }
}
