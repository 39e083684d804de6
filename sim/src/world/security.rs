//! A secured namespace in the simulated world: `pop init --admin-identity` and `pop
//! machine add` for every machine, run as the CLI's own plans before anything else; the
//! operators' terminals authenticate as the admin and each agent with its machine's own
//! credential, so the model's ACLs decide every request as ZooKeeper would.
//!
//! Checked: an agent never attempts a request its principal cannot make (a NoAuth reply
//! to an agent is a violation: in production the agent would exit), and the operators'
//! plans are never refused (a NoAuth reply to a terminal is a violation). Two refused
//! reads are expected of an agent doing its job: the settings of a service (it reads
//! those of every service, and is granted only those deployed on its machine) and a
//! task's request (the task fails, saying so).

use super::admin::{AT, DELETE_PATIENCE};
use super::World;
use crate::zk_model::Notification;
use pop_core::access::{registered, Access, AgentAccess, Principals, REGISTRY};
use pop_core::digest::digest_id;
use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::plan::{
    ChangeMachines, Feedback, Init, MachineRegistration, MachinesChange, Outcome, Plan, PlanError,
    Request, SettingsAcl, Step, SyncAcls,
};
use pop_core::settings::parse_machines;
use pop_core::zk::{SessionId, ZkError, ZkOp, ZkReply};
use pop_core::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

/// The admin's credential (`pop init --admin-identity`).
pub const ADMIN_CREDENTIAL: &str = "admin:sim-admin-secret";

/// The credentials of a secured world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// The admin's `user:password`.
    pub admin: String,
    /// Each machine's `id:secret`, as `pop machine add` printed it.
    pub machines: BTreeMap<String, String>,
}

impl Security {
    pub fn admin_id(&self) -> String {
        digest_id(&self.admin)
    }

    pub fn admin_user(&self) -> &str {
        self.admin.split(':').next().unwrap_or_default()
    }

    /// What the machine's agent is configured with (it reads the admin's id from
    /// `/pop/admin`; here it is given).
    pub(super) fn agent_access(&self, machine: &str) -> AgentAccess {
        match self.machines.get(machine) {
            Some(credential) => AgentAccess::Secured {
                admin: self.admin_id(),
                machine: digest_id(credential),
            },
            None => AgentAccess::Open,
        }
    }
}

/// `path` and its ancestors below the root, outermost first.
fn ancestors(path: &str) -> impl Iterator<Item = String> + '_ {
    path.match_indices('/')
        .map(|(i, _)| i)
        .skip(1)
        .map(|i| path[..i].to_string())
        .chain(std::iter::once(path.to_string()))
}

/// The settings next to a machines list path, if it is one.
fn settings_of_list(path: &str) -> Option<String> {
    let service = path.strip_suffix("/machines")?;
    let name = service.strip_prefix(paths::SERVICES)?.strip_prefix('/')?;
    (!name.contains('/')).then(|| paths::service_settings(name))
}

/// Whether a reply says an ACL refused the request (or an op of the multi).
fn refused(reply: &ZkReply) -> bool {
    matches!(
        reply,
        ZkReply::Error(ZkError::NoAuth)
            | ZkReply::MultiFailed {
                error: ZkError::NoAuth,
                ..
            }
    )
}

/// The reads an ACL may refuse an agent that does its job: a service's settings (not
/// deployed on its machine, or not granted yet) and a task's request (its task fails,
/// saying so). Any other refusal means the agent asked what its principal may not do,
/// and it exits.
fn refusal_expected(op: &ZkOp) -> bool {
    let ZkOp::GetData { path, .. } = op else {
        return false;
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["services", _, "settings"] | ["services", _, "tasks", _]
    )
}

impl World {
    /// Secures the namespace the way `pop init --admin-identity` then `pop machine add
    /// <id>` for each machine do, before any agent connects.
    pub(super) fn secure_namespace(&mut self, machine_ids: &[&str]) -> Security {
        let admin_id = digest_id(ADMIN_CREDENTIAL);
        let session = self.zk.open_session();
        self.zk.add_auth(session, ADMIN_CREDENTIAL);
        let user = ADMIN_CREDENTIAL.split(':').next().unwrap_or_default();
        let mut init = Init::new(AT, false, DELETE_PATIENCE).secured(user, &admin_id);
        self.setup_plan(session, &mut init);
        let mut machines = BTreeMap::new();
        for (i, id) in machine_ids.iter().enumerate() {
            // From the seed, drawing from no generator the rest of the world uses.
            let credential = format!("{id}:secret-{:016x}", self.seed.wrapping_add(i as u64));
            let machine = MachineId::new(id).unwrap_or_else(|e| panic!("bad machine id: {e}"));
            let mut add =
                MachineRegistration::add(AT, &admin_id, &machine, &digest_id(&credential))
                    .unwrap_or_else(|e| panic!("pop machine add {id}: {e}"));
            self.setup_plan(session, &mut add);
            machines.insert(id.to_string(), credential);
        }
        self.zk.expire(session);
        Security {
            admin: ADMIN_CREDENTIAL.to_string(),
            machines,
        }
    }

    /// Runs a plan of the world's setup to its end, with no faults and no delay.
    fn setup_plan(&mut self, session: SessionId, plan: &mut dyn Plan) {
        match self.run_plan_at_once(session, plan) {
            Ok(outcome) => self.trace.push(format!("{} setup: {outcome}", self.now)),
            Err(e) => panic!("setting up the secured namespace: {e}"),
        }
    }

    fn run_plan_at_once(
        &mut self,
        session: SessionId,
        plan: &mut dyn Plan,
    ) -> Result<Outcome, PlanError> {
        let mut feedback = Feedback::Start;
        loop {
            feedback = match plan.next(self.now, feedback) {
                Step::Done(result) => return result,
                Step::Do(Request::Read(ops)) => {
                    Feedback::Read(ops.iter().map(|op| self.zk.apply(session, op).0).collect())
                }
                Step::Do(Request::Write(op)) => {
                    let (reply, notes) = self.zk.apply(session, &op);
                    self.notify(notes);
                    Feedback::Wrote(reply)
                }
                Step::Do(Request::Wait(_)) => Feedback::Woke,
            };
        }
    }

    /// What the operators' plans protect what they create with: the principals as the
    /// CLI reads them before a command (the admin's id and the machine registry).
    pub(super) fn operator_access(&self) -> Access {
        let Some(security) = &self.security else {
            return Access::Open;
        };
        let machines = self
            .zk
            .children(REGISTRY)
            .into_iter()
            .filter_map(|m| {
                let node = self.zk.get(&registered(&m))?;
                Some((m, String::from_utf8_lossy(&node.data).into_owned()))
            })
            .collect();
        Access::Secured(Principals {
            admin: security.admin_id(),
            machines,
        })
    }

    /// Sets every node's ACL as the plans would have (what `pop machine add` does after
    /// registering), at once and without faults: the operator's repair before the healed
    /// phase, after writes by hand left ACLs that do not match the machines lists.
    pub fn repair_acls(&mut self) {
        let Some(security) = self.security.clone() else {
            return;
        };
        let session = self.zk.open_session();
        self.zk.add_auth(session, &security.admin);
        let mut sync = SyncAcls::new(&security.admin_id());
        let result = self.run_plan_at_once(session, &mut sync);
        self.zk.expire(session);
        match result {
            Ok(outcome) => self.trace.push(format!("{} repair: {outcome}", self.now)),
            Err(e) => self.violate(format!("setting every ACL again failed: {e}")),
        }
    }

    /// Somebody with the admin's credential writes a node (and its missing parents) by
    /// hand with a ZooKeeper client, bypassing pop. In a secured namespace they keep
    /// pop's ACLs as pop's plans do: a machines list's settings are granted to the
    /// machines it will name before the write and set to the list after it, and the nodes
    /// the write creates get the ACL pop gives them. (Without that, an agent refused its
    /// settings keeps them withheld until its list changes again: ZooKeeper fires no
    /// watch when an ACL changes.)
    pub(super) fn put_keeping_acls(&mut self, path: &str, data: &[u8]) -> Vec<Notification> {
        let Access::Secured(principals) = self.operator_access() else {
            return self.zk.put(path, data);
        };
        let settings = settings_of_list(path);
        let old = self.listed_in(path);
        let new = parse_machines(data).ok();
        if let Some(settings) = &settings {
            let mut readers = old.clone().unwrap_or_default();
            readers.extend(new.clone().unwrap_or_default());
            self.set_acl_by_hand(settings, principals.acl(settings, &readers));
        }
        let existed: BTreeSet<String> = ancestors(path)
            .filter(|p| self.zk.get(p).is_some())
            .collect();
        let notes = self.zk.put(path, data);
        for created in ancestors(path).filter(|p| !existed.contains(p)) {
            let deployed = self.readers_of(&created);
            self.set_acl_by_hand(&created, principals.acl(&created, &deployed));
        }
        if let Some(settings) = &settings {
            // A list nobody can read leaves its readers as they were.
            let readers = new.or(old).unwrap_or_default();
            self.set_acl_by_hand(settings, principals.acl(settings, &readers));
        }
        notes
    }

    /// The machines a list at `path` names, if it is a readable list.
    fn listed_in(&self, path: &str) -> Option<BTreeSet<String>> {
        self.zk.get(path).and_then(|n| parse_machines(&n.data).ok())
    }

    /// For a settings path, the machines its service's list names; else none.
    fn readers_of(&self, path: &str) -> BTreeSet<String> {
        path.strip_suffix("/settings")
            .map(|service| format!("{service}/machines"))
            .and_then(|list| self.listed_in(&list))
            .unwrap_or_default()
    }

    fn set_acl_by_hand(&mut self, path: &str, acl: pop_core::zk::Acl) {
        if self.zk.get(path).is_none() {
            return;
        }
        let session = self.zk.open_superuser_session();
        let op = ZkOp::SetAcl {
            path: path.to_string(),
            acl,
            version: None,
        };
        self.zk.apply(session, &op);
        self.zk.expire(session);
    }

    /// A new session of the machine's agent authenticates with its credential.
    pub(super) fn authenticate_agent(&mut self, machine: usize, session: SessionId) {
        let credential = self
            .security
            .as_ref()
            .and_then(|s| s.machines.get(&self.machines[machine].id))
            .cloned();
        if let Some(credential) = credential {
            self.zk.add_auth(session, &credential);
        }
    }

    /// A terminal's new session authenticates as the admin.
    pub(super) fn authenticate_operator(&mut self, session: SessionId) {
        if let Some(admin) = self.security.as_ref().map(|s| s.admin.clone()) {
            self.zk.add_auth(session, &admin);
        }
    }

    /// An agent's request refused by an ACL: its principal may not make it (but for the
    /// reads [`refusal_expected`] allows).
    pub(super) fn check_agent_refusal(&mut self, machine: usize, op: &ZkOp, reply: &ZkReply) {
        if self.security.is_some() {
            self.coverage("request of an agent in a secured namespace");
        }
        if refused(reply) && !refusal_expected(op) {
            let id = self.machines[machine].id.clone();
            let what = if matches!(op, ZkOp::GetData { .. } | ZkOp::GetChildren { .. }) {
                "a read"
            } else {
                "a write"
            };
            self.violate(format!(
                "{id}'s agent attempted {what} its principal may not make (NoAuth): {op:?}"
            ));
        }
    }

    /// An operator's request refused by an ACL: the admin may do everything pop does.
    pub(super) fn check_operator_refusal(&mut self, terminal: usize, op: &ZkOp, reply: &ZkReply) {
        if refused(reply) {
            let command = self.terminals[terminal]
                .running
                .as_ref()
                .map(|r| r.command.to_string())
                .unwrap_or_default();
            self.violate(format!(
                "`{command}` was refused by an ACL (NoAuth): {op:?}"
            ));
        }
    }
}

/// `pop deploy` in a secured namespace, as the CLI runs it: the settings ACL first
/// grants the machines added, then the list changes. (The CLI then sets the ACL to the
/// list as it is, revoking what an undeploy removed: [`settle`], which the terminal runs
/// after the command's outcome is decided.)
pub(super) struct GrantThenDeploy {
    grant: Option<SettingsAcl>,
    change: ChangeMachines,
}

impl GrantThenDeploy {
    pub(super) fn new(
        name: &ServiceName,
        principals: Principals,
        machines: Vec<MachineId>,
    ) -> GrantThenDeploy {
        let added = machines.iter().map(|m| m.to_string()).collect();
        let access = Access::Secured(principals.clone());
        GrantThenDeploy {
            grant: Some(SettingsAcl::new(name.as_str(), principals, added)),
            change: ChangeMachines::new(AT, name, MachinesChange::Deploy, machines)
                .with_access(access),
        }
    }
}

impl Plan for GrantThenDeploy {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        let Some(grant) = self.grant.as_mut() else {
            return self.change.next(now, feedback);
        };
        match grant.next(now, feedback) {
            Step::Do(request) => Step::Do(request),
            Step::Done(Err(e)) => Step::Done(Err(e)),
            Step::Done(Ok(_)) => {
                self.grant = None;
                self.change.next(now, Feedback::Start)
            }
        }
    }
}

/// The settings ACL of `name` as its machines list now says (after a deploy or undeploy).
pub(super) fn settle(name: &ServiceName, principals: Principals) -> SettingsAcl {
    SettingsAcl::new(name.as_str(), principals, BTreeSet::new())
}
