//! The keeper: one agent at a time repairs the assignment index after a machines list
//! is edited by a client that bypasses pop (pop's own plans keep the index with the
//! list, in one multi).
//!
//! Election: the agent creates the ephemeral [`paths::KEEPER`], holding its machine id.
//! If it exists, the agent reads it with a watch, which fires when it goes (the keeper's
//! session ended); then every agent tries once more: a herd per keeper loss, not per
//! change. A term ends with the session.
//!
//! While keeper, the repair ([`repair`]): `/services` and each service's machines list
//! are read and watched, the index is read once per term, and each entry is made to
//! agree with the lists.
//!
//! Like the rest of the agent, the keeper decides from its inputs alone: its state is
//! part of the agent's snapshot, its requests are actions, and a journal replays it.

mod repair;

use super::{Agent, Pending};
use crate::access::AgentAccess;
use crate::paths::{self, Watched};
use crate::zk::{CreateMode, SessionId, WatchKind, ZkError, ZkOp, ZkReply};
use repair::Repair;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One request the keeper needs; the reply comes back with it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum Job {
    /// Create `/pop/keeper`.
    Claim,
    /// Read `/pop/keeper` with a watch: whose it is, and when it goes.
    Check,
    /// Read the children of `/services`, with a watch.
    Services,
    /// Read a service's machines list, with a watch.
    List(String),
    /// Read the children of `/assignments`.
    Index,
    /// Read the children of `/assignments/<machine>`.
    Entries(String),
    /// Create `/assignments/<machine>`.
    Directory(String),
    /// Make `/assignments/<machine>/<service>` agree with the list: create or delete it.
    Entry { service: String, machine: String },
}

/// What was sent for a job, to read its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Sent {
    /// A read, and whether it set the session's watch on the path.
    Read {
        watch: bool,
    },
    Create,
    Delete,
}

impl Sent {
    pub(crate) fn doing(self) -> &'static str {
        match self {
            Sent::Read { .. } => "reading",
            Sent::Create => "creating",
            Sent::Delete => "deleting",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
enum Election {
    /// No session yet.
    #[default]
    Idle,
    /// The create of `/pop/keeper` is queued or out.
    Claiming,
    /// `/pop/keeper` exists: reading whose it is.
    Checking,
    /// Another agent keeps (its machine id, as its node says); the watch says when it goes.
    Following(String),
    /// An ACL keeps this machine out of the election until its next session.
    Refused,
    Keeping(Box<Repair>),
}

/// What the agent must do for the keeper besides sending its requests.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Effects {
    /// Problems to report (`Some`) or to clear (`None`), by path.
    pub problems: Vec<(String, Option<String>)>,
    /// A job failed and waits for the agent's retry timer.
    pub retry: bool,
}

impl Effects {
    fn problem(&mut self, path: String, error: String) {
        self.problems.push((path, Some(error)));
    }

    fn clear(&mut self, path: String) {
        self.problems.push((path, None));
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Keeper {
    election: Election,
    /// Jobs to send once connected, in order. A job already out is sent again after its
    /// reply (a watch fired meanwhile: that reply may be older than the change).
    todo: BTreeSet<Job>,
    in_flight: BTreeSet<Job>,
    /// Failed; queued again when the agent's retry timer fires.
    stalled: BTreeSet<Job>,
    /// The namespace is open: the keeper may create a machine's index directory (in a
    /// secured one `pop machine add` makes it).
    open: bool,
}

impl Keeper {
    /// A new session: any term is over; try to become the keeper.
    pub(crate) fn start(&mut self, open: bool, fx: &mut Effects) {
        self.end(fx);
        self.open = open;
        self.election = Election::Claiming;
        self.todo.insert(Job::Claim);
    }

    /// The session is gone, and with it the term and every request out.
    pub(crate) fn end(&mut self, fx: &mut Effects) {
        if let Election::Keeping(repair) = &mut self.election {
            repair.end(fx);
        }
        self.election = Election::Idle;
        self.todo.clear();
        self.in_flight.clear();
        self.stalled.clear();
    }

    pub(crate) fn is_keeper(&self) -> bool {
        matches!(self.election, Election::Keeping(_))
    }

    /// A service's machines list as the keeper last read it, with its mzxid, if it is
    /// settled (read, and no watch fired since): see `Agent::take_keepers_list`.
    pub(crate) fn settled_list(&self, service: &str) -> Option<(&BTreeSet<String>, i64)> {
        match &self.election {
            Election::Keeping(repair) => repair.settled_list(service),
            _ => None,
        }
    }

    /// Whether the keeper is reading `service`'s machines list: a read is out or queued,
    /// and its reply will settle the list or queue the read again.
    pub(crate) fn reading_list(&self, service: &str) -> bool {
        match &self.election {
            Election::Keeping(repair) => repair.reading_list(service),
            _ => false,
        }
    }

    /// This machine's agent read its index directory: see `Repair::own_directory_read`.
    pub(crate) fn own_directory_read(&mut self, machine: &str, services: &BTreeSet<String>) {
        if let Election::Keeping(repair) = &mut self.election {
            let mut next = Vec::new();
            repair.own_directory_read(machine, services, &mut next);
            self.todo.extend(next);
        }
    }

    /// The retry timer fired: failed jobs go again.
    pub(crate) fn retry(&mut self) {
        self.todo.append(&mut self.stalled);
    }

    fn stall(&mut self, job: Job, fx: &mut Effects) {
        self.stalled.insert(job);
        fx.retry = true;
    }

    /// The next request to send, if any (the caller sends only while connected). The
    /// entries of machine `hold` wait in `todo` (see `Agent::send_keeper_jobs`).
    pub(crate) fn next(
        &mut self,
        machine: &str,
        hold: Option<&str>,
        access: &AgentAccess,
        fx: &mut Effects,
    ) -> Option<(Job, Sent, ZkOp)> {
        let held =
            |job: &Job| matches!(job, Job::Entry { machine, .. } if Some(machine.as_str()) == hold);
        loop {
            let job = self
                .todo
                .iter()
                .find(|job| !self.in_flight.contains(*job) && !held(job))
                .cloned()?;
            self.todo.remove(&job);
            if let Some((sent, op)) = self.request(&job, machine, access, fx) {
                self.in_flight.insert(job.clone());
                return Some((job, sent, op));
            }
        }
    }

    /// The request for `job`, or `None` when there is nothing to do for it any more.
    fn request(
        &mut self,
        job: &Job,
        machine: &str,
        access: &AgentAccess,
        fx: &mut Effects,
    ) -> Option<(Sent, ZkOp)> {
        let read = |path: String, children: bool| {
            let op = if children {
                ZkOp::GetChildren { path, watch: true }
            } else {
                ZkOp::GetData { path, watch: true }
            };
            Some((Sent::Read { watch: true }, op))
        };
        let unwatched = |path: String| {
            Some((
                Sent::Read { watch: false },
                ZkOp::GetChildren { path, watch: false },
            ))
        };
        match job {
            Job::Claim => Some((
                Sent::Create,
                ZkOp::Create {
                    path: paths::KEEPER.to_string(),
                    data: machine.as_bytes().to_vec(),
                    mode: CreateMode::Ephemeral,
                    acl: access.keeper_node(),
                },
            )),
            Job::Check => read(paths::KEEPER.to_string(), false),
            Job::Services => read(paths::SERVICES.to_string(), true),
            Job::List(service) => read(paths::service_machines(service), false),
            Job::Index => unwatched(paths::ASSIGNMENTS.to_string()),
            Job::Entries(m) => unwatched(paths::assignments(m)),
            Job::Directory(m) => Some((
                Sent::Create,
                ZkOp::Create {
                    path: paths::assignments(m),
                    data: Vec::new(),
                    mode: CreateMode::Persistent,
                    acl: access.index_node(),
                },
            )),
            Job::Entry { service, machine } => {
                let Election::Keeping(repair) = &mut self.election else {
                    return None;
                };
                let create = repair.write_for(service, machine, self.open, &mut self.todo, fx)?;
                let path = paths::assignment(machine, service);
                Some(if create {
                    (
                        Sent::Create,
                        ZkOp::Create {
                            path,
                            data: Vec::new(),
                            mode: CreateMode::Persistent,
                            acl: access.index_node(),
                        },
                    )
                } else {
                    (
                        Sent::Delete,
                        ZkOp::Delete {
                            path,
                            version: None,
                        },
                    )
                })
            }
        }
    }

    /// A watch fired on `path` (or a read that set it failed): look again at what it
    /// shows, if the keeper looks at it.
    pub(crate) fn on_watch(&mut self, path: &str, kind: WatchKind) {
        if path == paths::KEEPER {
            if let Election::Following(_) = self.election {
                let job = if kind == WatchKind::Deleted {
                    Job::Claim
                } else {
                    Job::Check
                };
                self.election = if job == Job::Claim {
                    Election::Claiming
                } else {
                    Election::Checking
                };
                self.todo.insert(job);
            }
            return;
        }
        let Election::Keeping(repair) = &mut self.election else {
            return;
        };
        let job = match Watched::parse(path) {
            Some(Watched::ServiceList) => repair.services_changed(),
            Some(Watched::Machines(service)) => {
                if planted!(KeeperIgnoresListChanges) {
                    return;
                }
                repair.list_changed(service)
            }
            _ => None,
        };
        self.todo.extend(job);
    }

    /// The reply to a job's request.
    pub(crate) fn on_reply(
        &mut self,
        job: Job,
        sent: Sent,
        reply: &ZkReply,
        session: Option<SessionId>,
        fx: &mut Effects,
    ) {
        self.in_flight.remove(&job);
        // A watch fired while it was out: the reply may predate the change; ask again.
        let stale = self.todo.contains(&job);
        match job {
            Job::Claim => self.on_claim(reply, fx),
            Job::Check => self.on_check(reply, session, stale, fx),
            job => {
                let Election::Keeping(repair) = &mut self.election else {
                    return; // the term ended meanwhile
                };
                let mut next = Vec::new();
                let retry = repair.on_reply(&job, sent, reply, stale, &mut next, fx);
                self.todo.extend(next);
                if retry {
                    self.stall(job, fx);
                }
            }
        }
    }

    fn on_claim(&mut self, reply: &ZkReply, fx: &mut Effects) {
        match reply {
            ZkReply::Created => self.begin_term(fx),
            // Someone keeps, or our own create went through unseen: read whose it is.
            ZkReply::Error(ZkError::NodeExists) => {
                self.election = Election::Checking;
                self.todo.insert(Job::Check);
            }
            ZkReply::Error(ZkError::NoAuth) => self.refused(fx),
            ZkReply::Error(e) if e.outcome_unknown() => {
                self.election = Election::Checking;
                self.todo.insert(Job::Check);
            }
            // No `/pop` (not initialised): the agent reports `/services` missing.
            _ => self.stall(Job::Claim, fx),
        }
    }

    fn on_check(
        &mut self,
        reply: &ZkReply,
        session: Option<SessionId>,
        stale: bool,
        fx: &mut Effects,
    ) {
        if stale {
            return;
        }
        match reply {
            ZkReply::Data { stat, .. } if session.is_some_and(|s| s.0 == stat.ephemeral_owner) => {
                self.begin_term(fx)
            }
            ZkReply::Data { data, .. } => {
                self.election = Election::Following(String::from_utf8_lossy(data).into_owned());
                fx.clear(paths::KEEPER.to_string());
            }
            // Gone meanwhile: try again.
            ZkReply::Error(ZkError::NoNode) => {
                self.election = Election::Claiming;
                self.todo.insert(Job::Claim);
            }
            ZkReply::Error(ZkError::NoAuth) => self.refused(fx),
            _ => self.stall(Job::Check, fx),
        }
    }

    fn refused(&mut self, fx: &mut Effects) {
        self.election = Election::Refused;
        fx.problem(
            paths::KEEPER.to_string(),
            "an ACL keeps this machine from taking part in the keeper's election; \
             `pop machine add` sets the ACLs again"
                .to_string(),
        );
    }

    fn begin_term(&mut self, fx: &mut Effects) {
        fx.clear(paths::KEEPER.to_string());
        let (repair, jobs) = Repair::begin();
        self.election = Election::Keeping(Box::new(repair));
        self.todo.extend(jobs);
    }
}

impl Agent {
    /// A new session: the keeper's election starts again.
    pub(super) fn keeper_start(&mut self) {
        let mut fx = Effects::default();
        let open = self.config.access.is_open();
        self.keeper.start(open, &mut fx);
        self.keeper_effects(fx);
    }

    /// The session expired: the term (if any) is over.
    pub(super) fn keeper_end(&mut self) {
        let mut fx = Effects::default();
        self.keeper.end(&mut fx);
        self.keeper_effects(fx);
    }

    pub(super) fn on_keeper_reply(&mut self, job: Job, sent: Sent, reply: ZkReply) {
        if let (Sent::Read { watch: true }, ZkReply::Error(_)) = (sent, &reply) {
            // The session's watch on the path went with the failed read; the agent may
            // have counted on it too.
            if let Some(path) = self.keeper_read_path(&job) {
                self.armed.remove(&path);
                if let Some(Watched::ServiceList | Watched::Machines(_)) = Watched::parse(&path) {
                    self.reread.insert(path);
                    self.schedule_retry();
                }
            }
        }
        let landed = match &job {
            Job::List(service) => vec![service.clone()],
            // A service gone from `/services` is no longer read by the keeper.
            Job::Services => self.awaiting_keepers_list.iter().cloned().collect(),
            _ => Vec::new(),
        };
        let mut fx = Effects::default();
        let session = self.owner_session();
        self.keeper.on_reply(job, sent, &reply, session, &mut fx);
        self.keeper_effects(fx);
        for service in landed {
            self.keepers_list_landed(&service);
        }
    }

    fn keeper_read_path(&self, job: &Job) -> Option<String> {
        match job {
            Job::Check => Some(paths::KEEPER.to_string()),
            Job::Services => Some(paths::SERVICES.to_string()),
            Job::List(service) => Some(paths::service_machines(service)),
            _ => None,
        }
    }

    fn keeper_effects(&mut self, fx: Effects) {
        for (path, problem) in fx.problems {
            match problem {
                Some(error) => self.problem(&path, error),
                None => self.clear_problem(&path),
            }
        }
        if fx.retry {
            self.schedule_retry();
        }
    }

    /// Sends what the keeper needs, while connected. One watch per path per session: a
    /// path the agent already watches is read without one (the event reaches both).
    pub(super) fn send_keeper_jobs(&mut self) {
        if self.session_id().is_none() || self.exited {
            return;
        }
        let machine = self.config.machine.as_str();
        let access = &self.config.access;
        // This machine's index changed and is being read again: its entries wait for
        // that read, which says whether a plan wrote them already.
        let hold = (self.own_index_reads > 0).then_some(machine);
        let mut fx = Effects::default();
        let mut out = Vec::new();
        while let Some(next) = self.keeper.next(machine, hold, access, &mut fx) {
            out.push(next);
        }
        self.keeper_effects(fx);
        for (job, mut sent, mut op) in out {
            if let ZkOp::GetData { path, watch } | ZkOp::GetChildren { path, watch } = &mut op {
                if *watch {
                    *watch = self.armed.insert(path.clone());
                    sent = Sent::Read { watch: *watch };
                }
            }
            self.send(op, Pending::Keeper { job, sent });
        }
    }

    /// For the simulator and tests: whether this agent is the keeper now.
    pub fn is_keeper(&self) -> bool {
        self.keeper.is_keeper()
    }
}

#[cfg(test)]
mod tests;
