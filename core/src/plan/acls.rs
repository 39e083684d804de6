//! The plans that keep a secured namespace's ACLs as [`crate::access`] says: setting
//! every node's ACL (after `pop init --admin-identity`, `pop machine add` and `remove`),
//! the settings ACL around a deploy, and the machine registry itself.
//!
//! ZooKeeper's `multi` cannot set ACLs, so these are separate writes after (or, to grant
//! a machine read of settings, before) the change they follow. A crash between them
//! leaves a machine more access than it should have, never less than it needs; the next
//! deploy, `pop machine add/remove` or `pop init --admin-identity --force` repairs it.

use super::engine::{exactly, Decision, Engine, Got, Refused, Steps};
use super::{children, get, Feedback, Outcome, Plan, PlanError, Step};
use crate::access::{digest_user, registered, Principals, REGISTRY};
use crate::names::MachineId;
use crate::paths;
use crate::settings::parse_machines;
use crate::time::Timestamp;
use crate::zk::{Acl, CreateMode, ZkError, ZkOp, ZkReply};
use std::collections::{BTreeMap, BTreeSet};

/// Reads the registry of machine principals: its names, then each digest id.
#[derive(Debug)]
enum Registry {
    Names,
    Digests(Vec<String>),
    Loaded(BTreeMap<String, String>),
}

impl Registry {
    fn reads(&self) -> Vec<ZkOp> {
        match self {
            Registry::Names => vec![children(REGISTRY)],
            Registry::Digests(names) => names.iter().map(|m| get(registered(m))).collect(),
            Registry::Loaded(_) => Vec::new(),
        }
    }

    /// Takes what the reads found; `Err` names a registry entry that is not a digest id.
    fn take(&mut self, got: Vec<Got>) -> Result<(), PlanError> {
        *self = match std::mem::replace(self, Registry::Names) {
            Registry::Names => match got.into_iter().next() {
                Some(Got::Children(names)) => Registry::Digests(names),
                _ => Registry::Digests(Vec::new()),
            },
            Registry::Digests(names) => {
                let mut machines = BTreeMap::new();
                for (name, got) in names.into_iter().zip(got) {
                    let Some(data) = got.data() else { continue };
                    let id = String::from_utf8_lossy(data).into_owned();
                    if digest_user(&id) != name || !id.contains(':') {
                        return Err(PlanError::BadRegistryEntry {
                            path: registered(&name),
                        });
                    }
                    machines.insert(name, id);
                }
                Registry::Loaded(machines)
            }
            loaded => loaded,
        };
        Ok(())
    }
}

/// Sets the ACL of every node of the namespace to what it should be, walking the tree.
pub struct SyncAcls(Engine<Syncing>);

struct Syncing {
    admin: String,
    registry: Registry,
    /// Paths still to visit, the next last.
    queue: Vec<String>,
    /// The next path's children and (for settings) machines list were read.
    visited: Option<Visit>,
    nodes: usize,
}

struct Visit {
    path: String,
    acl: Acl,
}

impl SyncAcls {
    /// `admin`: the admin's digest id.
    pub fn new(admin: &str) -> SyncAcls {
        let mut queue: Vec<String> = paths::NAMESPACE.iter().map(|p| p.to_string()).collect();
        queue.reverse();
        SyncAcls(Engine::new(Syncing {
            admin: admin.to_string(),
            registry: Registry::Names,
            queue,
            visited: None,
            nodes: 0,
        }))
    }
}

impl Plan for SyncAcls {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

/// The machines list next to a settings path, if it is one.
fn settings_of(path: &str) -> Option<String> {
    let name = path
        .strip_prefix(paths::SERVICES)?
        .strip_prefix('/')?
        .strip_suffix("/settings")?;
    (!name.contains('/')).then(|| paths::service_machines(name))
}

impl Steps for Syncing {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        if !matches!(self.registry, Registry::Loaded(_)) {
            return self.registry.reads();
        }
        match (&self.visited, self.queue.last()) {
            (None, Some(path)) => {
                let mut reads = vec![children(path.as_str())];
                reads.extend(settings_of(path).map(get));
                reads
            }
            _ => Vec::new(),
        }
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        let Registry::Loaded(machines) = &self.registry else {
            if let Err(e) = self.registry.take(got) {
                return Decision::Done(Err(e));
            }
            // A machine of the admin's name would get the admin's rights wherever the
            // ACLs name that machine (`pop init --admin-identity` after `machine add`).
            let admin = digest_user(&self.admin);
            if let Registry::Loaded(machines) = &self.registry {
                if machines.contains_key(admin) {
                    return Decision::Done(Err(PlanError::MachineIsAdmin {
                        machine: admin.to_string(),
                    }));
                }
            }
            return Decision::Look;
        };
        if let Some(visit) = &self.visited {
            return Decision::Write(ZkOp::SetAcl {
                path: visit.path.clone(),
                acl: visit.acl.clone(),
                version: None,
            });
        }
        let Some(path) = self.queue.pop() else {
            return Decision::Done(Ok(Outcome::AclsSet {
                nodes: self.nodes,
                machines: machines.keys().cloned().collect(),
            }));
        };
        let mut got = got.into_iter();
        let kids = match got.next() {
            Some(Got::Children(names)) => names,
            // Gone meanwhile: nothing to protect.
            _ => return Decision::Look,
        };
        let deployed = got
            .next()
            .and_then(|list| list.data().and_then(|d| parse_machines(d).ok()))
            .unwrap_or_default();
        let principals = Principals {
            admin: self.admin.clone(),
            machines: machines.clone(),
        };
        let acl = principals.acl(&path, &deployed);
        self.queue
            .extend(kids.iter().rev().map(|kid| format!("{path}/{kid}")));
        self.visited = Some(Visit { path, acl });
        Decision::Look
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        self.visited = None;
        self.nodes += 1;
        None
    }

    fn refused(&mut self, _now: Timestamp, path: &str, error: &ZkError) -> Refused<Outcome> {
        match error {
            ZkError::NoNode => {
                self.visited = None;
                Refused::Look
            }
            other => super::engine::refused_by_default(path, other),
        }
    }

    // Setting an ACL again is harmless: the next look sends it again.
    fn in_doubt(&mut self) {}
}

/// `pop machine add` / `remove`: the registry entry (and, on add, the machine's
/// directory), then every ACL through [`SyncAcls`].
pub struct MachineRegistration {
    stage: RegStage,
    admin: String,
    machine: String,
    adding: bool,
}

enum RegStage {
    Registering(Engine<Registering>),
    Syncing(Box<SyncAcls>),
}

/// The registry write.
struct Registering {
    at: String,
    machine: String,
    admin: String,
    /// The digest id to register; `None`: remove the machine.
    digest: Option<String>,
    in_doubt: bool,
}

impl MachineRegistration {
    /// Registers `machine` with the digest id of its new secret (made by the caller).
    pub fn add(
        at: &str,
        admin: &str,
        machine: &MachineId,
        digest: &str,
    ) -> Result<MachineRegistration, PlanError> {
        Self::new(at, admin, machine, Some(digest.to_string()))
    }

    pub fn remove(
        at: &str,
        admin: &str,
        machine: &MachineId,
    ) -> Result<MachineRegistration, PlanError> {
        Self::new(at, admin, machine, None)
    }

    fn new(
        at: &str,
        admin: &str,
        machine: &MachineId,
        digest: Option<String>,
    ) -> Result<MachineRegistration, PlanError> {
        let machine = machine.to_string();
        let adding = digest.is_some();
        if digest_user(admin) == machine {
            return Err(PlanError::MachineIsAdmin { machine });
        }
        Ok(MachineRegistration {
            stage: RegStage::Registering(Engine::new(Registering {
                at: at.to_string(),
                machine: machine.clone(),
                admin: admin.to_string(),
                digest,
                in_doubt: false,
            })),
            admin: admin.to_string(),
            machine,
            adding,
        })
    }
}

impl Plan for MachineRegistration {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        let mut feedback = feedback;
        loop {
            let done = match &mut self.stage {
                RegStage::Registering(e) => e.next(now, feedback),
                RegStage::Syncing(sync) => sync.next(now, feedback),
            };
            let result = match done {
                Step::Do(request) => return Step::Do(request),
                Step::Done(result) => result,
            };
            self.stage = match (&self.stage, result) {
                (_, Err(e)) => return Step::Done(Err(e)),
                (RegStage::Registering(_), Ok(_)) => {
                    RegStage::Syncing(Box::new(SyncAcls::new(&self.admin)))
                }
                (_, Ok(Outcome::AclsSet { nodes, .. })) => {
                    return Step::Done(Ok(Outcome::MachineRegistered {
                        machine: self.machine.clone(),
                        removed: !self.adding,
                        nodes,
                    }))
                }
                (_, Ok(other)) => return Step::Done(Ok(other)),
            };
            feedback = Feedback::Start;
        }
    }
}

impl Steps for Registering {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        vec![
            get(paths::POP),
            get(registered(&self.machine)),
            get(paths::machine(&self.machine)),
            get(paths::ASSIGNMENTS),
            get(paths::assignments(&self.machine)),
        ]
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        let [pop, entry, dir, index_root, index] = match exactly(got) {
            Ok(got) => got,
            Err(e) => return Decision::Done(Err(e)),
        };
        if let Err(e) = super::require_namespace(&self.at, &pop) {
            return Decision::Done(Err(e));
        }
        let done = || {
            Decision::Done(Ok(Outcome::AclsSet {
                nodes: 0,
                machines: Vec::new(),
            }))
        };
        match (&self.digest, entry) {
            (Some(digest), Got::Data { data, .. })
                if self.in_doubt && data == digest.as_bytes() =>
            {
                done()
            }
            (Some(_), Got::Data { .. } | Got::Children(_)) => {
                Decision::Done(Err(PlanError::MachineRegistered {
                    machine: self.machine.clone(),
                }))
            }
            (Some(digest), Got::Missing) => {
                let admin_only = Acl::none().digest(&self.admin, crate::zk::Perms::ALL);
                let mut ops = vec![ZkOp::Create {
                    path: registered(&self.machine),
                    data: digest.clone().into_bytes(),
                    mode: CreateMode::Persistent,
                    acl: admin_only.clone(),
                }];
                // Its directory, where its agent publishes pids; the sync sets its ACL.
                // Its index (in a namespace made before the index, `/assignments` too).
                let dirs = [
                    (paths::machine(&self.machine), dir),
                    (paths::ASSIGNMENTS.to_string(), index_root),
                    (paths::assignments(&self.machine), index),
                ];
                for (path, got) in dirs {
                    if !got.exists() {
                        ops.push(ZkOp::Create {
                            path,
                            data: Vec::new(),
                            mode: CreateMode::Persistent,
                            acl: admin_only.clone(),
                        });
                    }
                }
                Decision::Write(ZkOp::Multi { ops })
            }
            (None, Got::Missing) if self.in_doubt => done(),
            (None, Got::Missing) => Decision::Done(Err(PlanError::MachineNotRegistered {
                machine: self.machine.clone(),
            })),
            (None, Got::Data { stat, .. }) => Decision::Write(ZkOp::Delete {
                path: registered(&self.machine),
                version: Some(stat.version),
            }),
            (None, Got::Children(_)) => Decision::Write(ZkOp::Delete {
                path: registered(&self.machine),
                version: None,
            }),
        }
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        Some(Ok(Outcome::AclsSet {
            nodes: 0,
            machines: Vec::new(),
        }))
    }

    fn in_doubt(&mut self) {
        self.in_doubt = true;
    }
}

/// Grants the machines a service is (or is about to be) deployed on read of its
/// settings, and nobody else: before a deploy's list write with the machines added,
/// after an undeploy's with the list as it is.
pub struct SettingsAcl(Engine<SettingsAccess>);

struct SettingsAccess {
    name: String,
    principals: Principals,
    also: BTreeSet<String>,
}

impl SettingsAcl {
    pub fn new(name: &str, principals: Principals, also: BTreeSet<String>) -> SettingsAcl {
        SettingsAcl(Engine::new(SettingsAccess {
            name: name.to_string(),
            principals,
            also,
        }))
    }
}

impl Plan for SettingsAcl {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

impl Steps for SettingsAccess {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        vec![
            get(paths::service(&self.name)),
            get(paths::service_machines(&self.name)),
        ]
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        let [service, list] = match exactly(got) {
            Ok(got) => got,
            Err(e) => return Decision::Done(Err(e)),
        };
        if !service.exists() {
            return Decision::Done(Err(PlanError::NoSuchService {
                name: self.name.clone(),
            }));
        }
        // A service without its list (half written by hand) is reported as such, as
        // `pop deploy` itself reports it.
        let Some(data) = list.data() else {
            return Decision::Done(Err(PlanError::NodeMissing {
                path: paths::service_machines(&self.name),
            }));
        };
        let mut deployed = match parse_machines(data) {
            Ok(list) => list,
            Err(error) => {
                return Decision::Done(Err(PlanError::InvalidMachines {
                    path: paths::service_machines(&self.name),
                    error,
                }))
            }
        };
        deployed.extend(self.also.iter().cloned());
        let path = paths::service_settings(&self.name);
        let acl = self.principals.acl(&path, &deployed);
        Decision::Write(ZkOp::SetAcl {
            path,
            acl,
            version: None,
        })
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        Some(Ok(Outcome::AclsSet {
            nodes: 1,
            machines: Vec::new(),
        }))
    }

    fn refused(&mut self, _now: Timestamp, path: &str, error: &ZkError) -> Refused<Outcome> {
        match error {
            // Removed meanwhile (by `pop remove`, or by hand).
            ZkError::NoNode => Refused::Done(Err(PlanError::NodeMissing {
                path: path.to_string(),
            })),
            other => super::engine::refused_by_default(path, other),
        }
    }

    fn in_doubt(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::names::ServiceName;
    use crate::plan::testing::Tree;
    use crate::plan::{Add, AddRequest, Doing, Init};
    use std::time::Duration;

    const ROOT: &str = "root:R=";

    fn secured() -> Tree {
        let mut tree = Tree::with(&[]);
        let init = Init::new("zk", false, Duration::from_secs(1)).secured("root", ROOT);
        tree.run(&mut { init }).expect("initialised");
        tree
    }

    fn machine(id: &str) -> MachineId {
        MachineId::new(id).expect("a machine id")
    }

    fn add_machine(tree: &mut Tree, id: &str) -> Result<Outcome, PlanError> {
        let digest = format!("{id}:D=");
        tree.run(&mut MachineRegistration::add(
            "zk",
            ROOT,
            &machine(id),
            &digest,
        )?)
    }

    fn principals(tree: &Tree) -> Principals {
        let machines = tree
            .children(REGISTRY)
            .into_iter()
            .map(|m| {
                let id = tree.data(&registered(&m)).unwrap_or_default().to_string();
                (m, id)
            })
            .collect();
        Principals {
            admin: ROOT.into(),
            machines,
        }
    }

    fn add_service(tree: &mut Tree) {
        let name = ServiceName::new("s").expect("a name");
        let request = AddRequest {
            service_type: "echo".into(),
            port: None,
            set: Vec::new(),
        };
        let plan = Add::new("zk", &name, request).expect("a plan");
        let access = Access::Secured(principals(tree));
        tree.run(&mut plan.with_access(access)).expect("added");
    }

    #[test]
    fn a_secured_init_marks_the_namespace_and_protects_every_node() {
        let tree = secured();
        assert_eq!(
            tree.data("/pop"),
            Some("{\"layout\":1,\"secured\":{\"admin\":\"root\"}}")
        );
        assert_eq!(tree.data(crate::access::ADMIN), Some(ROOT));
        assert_eq!(tree.acl("/pop"), "[root=all world:anyone=r]");
        for path in ["/services", "/machines", "/plugins", REGISTRY] {
            assert_eq!(tree.acl(path), "[root=all]", "{path}");
        }
        assert_eq!(tree.acl("/agents"), "[root=all]");
    }

    #[test]
    fn machine_add_registers_it_and_grants_it_what_it_needs() {
        let mut tree = secured();
        add_service(&mut tree);
        let outcome = add_machine(&mut tree, "m1").expect("added");
        assert_eq!(
            outcome.to_string(),
            "added machine m1; set the ACLs of 16 nodes"
        );
        assert_eq!(tree.acl("/assignments"), "[m1=r root=all]");
        assert_eq!(tree.acl("/assignments/m1"), "[m1=all root=all]");
        assert_eq!(tree.acl("/pop"), "[m1=c root=all world:anyone=r]");
        assert_eq!(tree.data("/pop/machines/m1"), Some("m1:D="));
        assert_eq!(tree.acl("/pop/machines/m1"), "[root=all]");
        assert_eq!(tree.acl("/machines/m1"), "[m1=all root=all]");
        assert_eq!(tree.acl("/agents"), "[m1=rcd root=all]");
        assert_eq!(tree.acl("/services/s/state"), "[m1=rcd root=all]");
        assert_eq!(tree.acl("/services/s/machines"), "[m1=r root=all]");
        assert_eq!(tree.acl("/services/s/tasks"), "[m1=r root=all]");
        // Not deployed there: it may not read the settings.
        assert_eq!(tree.acl("/services/s/settings"), "[root=all]");
        assert_eq!(
            add_machine(&mut tree, "m1"),
            Err(PlanError::MachineRegistered {
                machine: "m1".into()
            })
        );
    }

    #[test]
    fn deployed_machines_alone_read_settings_and_removal_revokes_everything() {
        let mut tree = secured();
        add_service(&mut tree);
        add_machine(&mut tree, "m1").expect("m1");
        add_machine(&mut tree, "m2").expect("m2");
        let deployed = ["m2".to_string()].into_iter().collect();
        tree.run(&mut SettingsAcl::new("s", principals(&tree), deployed))
            .expect("granted");
        assert_eq!(tree.acl("/services/s/settings"), "[m2=r root=all]");
        let removed = tree
            .run(&mut MachineRegistration::remove("zk", ROOT, &machine("m2")).expect("a plan"))
            .expect("removed");
        assert!(
            removed.to_string().starts_with("removed machine m2"),
            "{removed}"
        );
        assert_eq!(tree.data("/pop/machines/m2"), None);
        for (path, acl) in tree.acls.iter() {
            assert!(!acl.to_string().contains("m2="), "{path}: {acl}");
        }
        assert_eq!(
            tree.run(&mut MachineRegistration::remove("zk", ROOT, &machine("m2")).expect("a plan")),
            Err(PlanError::MachineNotRegistered {
                machine: "m2".into()
            })
        );
    }

    #[test]
    fn the_admin_name_is_no_machine_id_either_way() {
        assert!(matches!(
            MachineRegistration::add("zk", ROOT, &machine("root"), "root:X="),
            Err(PlanError::MachineIsAdmin { .. })
        ));
        // A namespace re-secured with an admin named as a registered machine.
        let mut tree = secured();
        add_machine(&mut tree, "m1").expect("m1");
        let before = tree.clone();
        let init = Init::new("zk", true, Duration::from_secs(1)).secured("m1", "m1:O=");
        assert_eq!(
            tree.run(&mut { init }),
            Err(PlanError::MachineIsAdmin {
                machine: "m1".into()
            })
        );
        assert_eq!(tree.nodes, before.nodes, "nothing written");
    }

    #[test]
    fn a_write_an_acl_refuses_ends_the_plan_naming_it() {
        let mut tree = secured();
        let outcome = tree.run_with(
            &mut MachineRegistration::add("zk", ROOT, &machine("m1"), "m1:D=").expect("a plan"),
            |tree, request| {
                if let crate::plan::Request::Write(_) = request {
                    // What ZooKeeper does to a write without the admin's credential.
                    tree.refuse_writes = true;
                }
                crate::plan::testing::Fate::Deliver
            },
        );
        assert_eq!(
            outcome,
            Err(PlanError::NotAuthorised {
                doing: Doing::Writing,
                path: "/pop/machines/m1".into()
            })
        );
        assert_eq!(tree.data("/pop/machines/m1"), None, "nothing half-written");
    }
}
