//! Who may do what in a secured namespace: the ACL every node pop creates gets, as a
//! pure function of the node's path and the principals (see README, Security).
//!
//! Principals are ZooKeeper digest ids, `user:BASE64(SHA1(user:password))`: the admin
//! given to `pop init --admin-identity`, and one per machine registered with `pop machine
//! add` (user = the machine id). An unsecured namespace gives every node the open ACL,
//! as before security existed.

use crate::zk::{Acl, Perms};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The registry of machine principals, admin-only: `/pop/machines/<id>` holds the
/// machine's digest id (never its secret).
pub const REGISTRY: &str = "/pop/machines";

/// The admin's digest id, for agents to name the admin in the ACLs of their own nodes
/// (ZooKeeper shows digests in ACLs only to who may change them). Registered machines
/// may read it, anonymous clients may not.
pub const ADMIN: &str = "/pop/admin";

pub fn registered(machine: &str) -> String {
    format!("{REGISTRY}/{machine}")
}

/// What the `/pop` marker says about security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    Open,
    /// Secured; only this digest user may change what pop's commands change.
    Secured {
        admin: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("/pop holds an invalid marker ({0}); fix it with `pop init --force`")]
pub struct MarkerError(String);

impl Marker {
    /// Decodes `/pop`'s data: `{"layout": 1}` or `{"layout": 1, "secured": {"admin": U}}`.
    pub fn parse(data: &[u8]) -> Result<Marker, MarkerError> {
        let value: Value = serde_json::from_slice(data).map_err(|e| MarkerError(e.to_string()))?;
        match value.get("secured") {
            None | Some(Value::Null) => Ok(Marker::Open),
            Some(secured) => match secured.get("admin") {
                Some(Value::String(admin)) if !admin.is_empty() => Ok(Marker::Secured {
                    admin: admin.clone(),
                }),
                _ => Err(MarkerError("secured.admin is not a user name".into())),
            },
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let value = match self {
            Marker::Open => serde_json::json!({ "layout": 1 }),
            Marker::Secured { admin } => {
                serde_json::json!({ "layout": 1, "secured": { "admin": admin } })
            }
        };
        value.to_string().into_bytes()
    }
}

/// The principals of a secured namespace, as a plan needs them to build ACLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principals {
    /// The admin's digest id.
    pub admin: String,
    /// Registered machines and their digest ids.
    pub machines: BTreeMap<String, String>,
}

/// How the nodes a plan creates are protected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Access {
    /// Unsecured namespace: every node open, as before.
    #[default]
    Open,
    Secured(Principals),
}

/// What kind of node a path is, for its ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    /// `/pop`: anyone reads; machines create the keeper's node in it.
    Marker,
    /// `/pop/keeper`: the keeper's machine id, which anyone reads.
    Keeper,
    Registry,
    /// `/machines`, `/services`, `/plugins`: machines read.
    Container,
    /// `/agents`: machines publish their report under it.
    AgentsContainer,
    MachineDir(&'a str),
    /// `/assignments/<m>`: the machine's index. Every machine may add and delete entries
    /// in it (the keeper repairs any machine's index), only the machine itself more.
    IndexDir(&'a str),
    /// A node a machine creates for itself (pid, state, agent report).
    OwnedBy(&'a str),
    /// `/services/<s>`, its machines list, `/plugins/<t>`: machines read.
    AdminRead,
    Settings,
    StateContainer,
    /// `/services/<s>/tasks/<id>/<m>`: a machine's result of a task, which it writes
    /// (`pop run` creates it) and every machine reads (a rolling task's next machine
    /// reads it).
    TaskResult(&'a str),
    /// Anything else under the namespace: only the admin.
    AdminOnly,
}

fn kind(path: &str) -> Kind<'_> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["pop"] => Kind::Marker,
        ["pop", "keeper"] => Kind::Keeper,
        ["pop", "admin"] => Kind::Container,
        ["pop", "machines", ..] => Kind::Registry,
        ["machines"] | ["services"] | ["plugins"] | ["assignments"] => Kind::Container,
        ["agents"] => Kind::AgentsContainer,
        ["agents", m] => Kind::OwnedBy(m),
        ["machines", m] => Kind::MachineDir(m),
        ["machines", m, _] => Kind::OwnedBy(m),
        ["assignments", m] => Kind::IndexDir(m),
        // An index entry: its agent may create its own (see `AgentAccess::own_node`).
        ["assignments", m, _] => Kind::OwnedBy(m),
        ["services", _]
        | ["services", _, "machines"]
        | ["services", _, "tasks"]
        | ["services", _, "tasks", _]
        | ["plugins", _] => Kind::AdminRead,
        ["services", _, "tasks", _, m] => Kind::TaskResult(m),
        ["services", _, "settings"] => Kind::Settings,
        ["services", _, "state"] => Kind::StateContainer,
        ["services", _, "state", m] => Kind::OwnedBy(m),
        _ => Kind::AdminOnly,
    }
}

impl Principals {
    fn machine_id(&self, machine: &str) -> Option<&str> {
        self.machines.get(machine).map(String::as_str)
    }

    fn every_machine(&self, acl: Acl, perms: Perms) -> Acl {
        self.machines
            .values()
            .fold(acl, |acl, id| acl.digest(id, perms))
    }

    /// The ACL `path` should have. `deployed`: for settings, the machines its service is
    /// deployed on (they read it; nobody else but the admin may).
    pub fn acl(&self, path: &str, deployed: &BTreeSet<String>) -> Acl {
        let admin = Acl::none().digest(&self.admin, Perms::ALL);
        let read = Perms::READ;
        match kind(path) {
            Kind::Marker => self.every_machine(admin, Perms::CREATE).anyone(read),
            Kind::Keeper => admin.anyone(read),
            Kind::Registry | Kind::AdminOnly => admin,
            Kind::Container | Kind::AdminRead => self.every_machine(admin, read),
            Kind::AgentsContainer | Kind::StateContainer => {
                self.every_machine(admin, read.and(Perms::CREATE).and(Perms::DELETE))
            }
            Kind::MachineDir(m) => {
                let others = self.every_machine(admin, read);
                match self.machine_id(m) {
                    Some(id) => others.digest(id, Perms::ALL),
                    None => others,
                }
            }
            Kind::IndexDir(m) => {
                let others = self.every_machine(admin, read.and(Perms::CREATE).and(Perms::DELETE));
                match self.machine_id(m) {
                    Some(id) => others.digest(id, Perms::ALL),
                    None => others,
                }
            }
            Kind::TaskResult(m) => {
                let readers = self.every_machine(admin, read);
                match self.machine_id(m) {
                    Some(id) => readers.digest(id, read.and(Perms::WRITE)),
                    None => readers,
                }
            }
            Kind::OwnedBy(m) => match self.machine_id(m) {
                Some(id) => admin.digest(id, Perms::ALL),
                None => admin,
            },
            Kind::Settings => deployed
                .iter()
                .filter_map(|m| self.machine_id(m))
                .fold(admin, |acl, id| acl.digest(id, read)),
        }
    }
}

impl Access {
    /// The ACL for a node created at `path` (see [`Principals::acl`]).
    pub fn acl(&self, path: &str, deployed: &BTreeSet<String>) -> Acl {
        match self {
            Access::Open => Acl::open(),
            Access::Secured(principals) => principals.acl(path, deployed),
        }
    }

    pub fn is_secured(&self) -> bool {
        matches!(self, Access::Secured(_))
    }
}

/// What an agent's own nodes get: in a secured namespace only it and the admin may touch
/// them (other machines need not read them; `pop status` runs as the admin).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AgentAccess {
    #[default]
    Open,
    Secured {
        /// Digest ids (journaled as `user:x`, see [`crate::zk::redacted_digest`]).
        #[serde(serialize_with = "crate::zk::serialize_redacted")]
        admin: String,
        #[serde(serialize_with = "crate::zk::serialize_redacted")]
        machine: String,
    },
}

impl AgentAccess {
    pub fn is_open(&self) -> bool {
        *self == AgentAccess::Open
    }

    /// `/pop/keeper`: anyone reads whose it is; only the admin changes it (it goes with
    /// the keeper's session).
    pub fn keeper_node(&self) -> Acl {
        match self {
            AgentAccess::Open => Acl::open(),
            AgentAccess::Secured { admin, .. } => {
                Acl::none().digest(admin, Perms::ALL).anyone(Perms::READ)
            }
        }
    }

    /// A node of the assignment index the keeper makes: only the admin may change it
    /// (entries are made and removed through their directory's ACL).
    pub fn index_node(&self) -> Acl {
        match self {
            AgentAccess::Open => Acl::open(),
            AgentAccess::Secured { admin, .. } => Acl::none().digest(admin, Perms::ALL),
        }
    }

    pub fn own_node(&self) -> Acl {
        match self {
            AgentAccess::Open => Acl::open(),
            AgentAccess::Secured { admin, machine } => {
                let admin_only = Acl::none().digest(admin, Perms::ALL);
                if planted!(OwnNodesLeaveOutTheMachine) {
                    return admin_only;
                }
                admin_only.digest(machine, Perms::ALL)
            }
        }
    }
}

/// The parts of a digest id before the hash: the user.
pub fn digest_user(id: &str) -> &str {
    id.split_once(':').map_or(id, |(user, _)| user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principals() -> Principals {
        Principals {
            admin: "root:AAA=".into(),
            machines: [("m1", "m1:B="), ("m2", "m2:C=")]
                .into_iter()
                .map(|(m, id)| (m.to_string(), id.to_string()))
                .collect(),
        }
    }

    fn shown(path: &str, deployed: &[&str]) -> String {
        let deployed = deployed.iter().map(|m| m.to_string()).collect();
        principals().acl(path, &deployed).to_string()
    }

    #[test]
    fn the_table_of_the_design() {
        assert_eq!(shown("/pop", &[]), "[m1=c m2=c root=all world:anyone=r]");
        assert_eq!(shown("/pop/keeper", &[]), "[root=all world:anyone=r]");
        assert_eq!(shown("/pop/machines/m1", &[]), "[root=all]");
        assert_eq!(shown("/pop/admin", &[]), "[m1=r m2=r root=all]");
        assert_eq!(shown("/services", &[]), "[m1=r m2=r root=all]");
        assert_eq!(shown("/agents", &[]), "[m1=rcd m2=rcd root=all]");
        assert_eq!(shown("/services/s/machines", &[]), "[m1=r m2=r root=all]");
        assert_eq!(
            shown("/services/s/settings", &["m2", "gone"]),
            "[m2=r root=all]"
        );
        assert_eq!(shown("/services/s/state", &[]), "[m1=rcd m2=rcd root=all]");
        assert_eq!(shown("/services/s/state/m1", &[]), "[m1=all root=all]");
        assert_eq!(shown("/machines/m2", &[]), "[m1=r m2=all root=all]");
        assert_eq!(shown("/machines/m2/s", &[]), "[m2=all root=all]");
        assert_eq!(shown("/agents/m1", &[]), "[m1=all root=all]");
        assert_eq!(shown("/plugins/t", &[]), "[m1=r m2=r root=all]");
        assert_eq!(shown("/assignments", &[]), "[m1=r m2=r root=all]");
        assert_eq!(shown("/assignments/m2", &[]), "[m1=rcd m2=all root=all]");
        assert_eq!(shown("/assignments/m2/s", &[]), "[m2=all root=all]");
    }

    #[test]
    fn every_machine_reads_tasks_and_each_writes_only_its_own_result() {
        assert_eq!(shown("/services/s/tasks", &[]), "[m1=r m2=r root=all]");
        let task = "/services/s/tasks/t1700000000000-00ff";
        assert_eq!(shown(task, &[]), "[m1=r m2=r root=all]");
        assert_eq!(shown(&format!("{task}/m1"), &[]), "[m1=rw m2=r root=all]");
        assert_eq!(
            shown(&format!("{task}/m2"), &["m1"]),
            "[m1=r m2=rw root=all]"
        );
        // A target not registered: every registered machine reads it, none writes it.
        assert_eq!(shown(&format!("{task}/m3"), &[]), "[m1=r m2=r root=all]");
        // Nothing deeper is pop's: only the admin.
        assert_eq!(shown(&format!("{task}/m1/x"), &[]), "[root=all]");
    }

    #[test]
    fn an_open_namespace_stays_open() {
        assert!(Access::Open
            .acl("/services/s/settings", &BTreeSet::new())
            .is_open());
        assert!(AgentAccess::Open.own_node().is_open());
    }

    #[test]
    fn markers_round_trip_and_bad_ones_are_refused() {
        for marker in [
            Marker::Open,
            Marker::Secured {
                admin: "root".into(),
            },
        ] {
            assert_eq!(Marker::parse(&marker.render()), Ok(marker));
        }
        assert_eq!(Marker::parse(b"{\"layout\":1}"), Ok(Marker::Open));
        assert!(Marker::parse(b"{\"secured\":{}}").is_err());
        assert!(Marker::parse(b"nope").is_err());
    }
}
