//! `pop init [--force]`: creates the namespace's nodes that are missing. On an
//! initialised namespace it refuses, unless `--force`, which first removes every service
//! the way `pop remove --force` does (agents stop them; their index entries go with their
//! machines lists), prunes machine directories with nothing published in them and drops
//! the marker, then creates the namespace again. What live agents publish about
//! themselves (/agents, their ephemerals, their empty indexes) is theirs and stays.

use super::acls::SyncAcls;
use super::engine::{exactly, Decision, Engine, Got, Refused, Steps};
use super::remove::Remove;
use super::{children, get, Feedback, Outcome, Plan, PlanError, Step};
use crate::access::{Access, Marker, Principals, ADMIN, REGISTRY};
use crate::paths;
use crate::time::Timestamp;
use crate::zk::{CreateMode, ZkError, ZkOp, ZkReply};
use std::collections::BTreeSet;
use std::time::Duration;

pub struct Init {
    at: String,
    force: bool,
    patience: Duration,
    stage: Stage,
    /// `--admin-identity`: the admin's user and digest id; the namespace is secured.
    admin: Option<(String, String)>,
}

enum Stage {
    Survey(Engine<Survey>),
    Removing {
        current: Box<Remove>,
        rest: Vec<String>,
        machines: Vec<String>,
    },
    Pruning(Engine<Prune>),
    Creating(Engine<Create>),
    Securing(Box<SyncAcls>),
    Finished,
}

/// What `pop init --force` has to clear.
struct Found {
    services: Vec<String>,
    machines: Vec<String>,
}

impl Init {
    /// `patience`: how long each service's removal waits for agents still publishing.
    pub fn new(at: &str, force: bool, patience: Duration) -> Init {
        Init {
            at: at.to_string(),
            force,
            patience,
            stage: Stage::Survey(Engine::new(Survey {
                at: at.to_string(),
                force,
                admin: None,
            })),
            admin: None,
        }
    }

    /// `pop init --admin-identity`: the namespace becomes secured by this admin (`user`
    /// and its digest id), and every node's ACL is set (migrating an existing one).
    pub fn secured(mut self, user: &str, digest: &str) -> Init {
        if let Stage::Survey(survey) = &mut self.stage {
            survey.steps.admin = Some(user.to_string());
        }
        self.admin = Some((user.to_string(), digest.to_string()));
        self
    }

    fn create(&self) -> Stage {
        let marker = match &self.admin {
            Some((user, _)) => Marker::Secured {
                admin: user.clone(),
            },
            None => Marker::Open,
        };
        let access = match &self.admin {
            Some((_, digest)) => Access::Secured(Principals {
                admin: digest.clone(),
                machines: Default::default(),
            }),
            None => Access::Open,
        };
        Stage::Creating(Engine::new(Create { marker, access }))
    }

    /// The stage after the services are gone.
    fn prune(machines: Vec<String>) -> Stage {
        let mut queue: Vec<String> = machines.iter().map(|m| paths::machine(m)).collect();
        queue.push(paths::POP.to_string());
        Stage::Pruning(Engine::new(Prune { queue }))
    }

    fn remove_next(&self, mut rest: Vec<String>, machines: Vec<String>) -> Stage {
        if rest.is_empty() {
            return Init::prune(machines);
        }
        let name = rest.remove(0);
        Stage::Removing {
            current: Box::new(Remove::named(&self.at, &name, true, self.patience)),
            rest,
            machines,
        }
    }
}

/// How a stage ended.
enum Ended {
    /// `None`: nothing to clear.
    Surveyed(Option<Found>),
    Removed,
    Pruned,
    Created,
    Secured,
}

impl Plan for Init {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        let mut feedback = feedback;
        loop {
            let ended = match &mut self.stage {
                Stage::Survey(e) => match e.next(now, feedback) {
                    Step::Do(r) => return Step::Do(r),
                    Step::Done(result) => result.map(Ended::Surveyed),
                },
                Stage::Removing { current, .. } => match current.next(now, feedback) {
                    Step::Do(r) => return Step::Do(r),
                    // Removed by someone else meanwhile is removed too.
                    Step::Done(Ok(_) | Err(PlanError::NoSuchService { .. })) => Ok(Ended::Removed),
                    Step::Done(Err(e)) => Err(e),
                },
                Stage::Pruning(e) => match e.next(now, feedback) {
                    Step::Do(r) => return Step::Do(r),
                    Step::Done(result) => result.map(|()| Ended::Pruned),
                },
                Stage::Creating(e) => match e.next(now, feedback) {
                    Step::Do(r) => return Step::Do(r),
                    Step::Done(result) => result.map(|()| Ended::Created),
                },
                Stage::Securing(sync) => match sync.next(now, feedback) {
                    Step::Do(r) => return Step::Do(r),
                    Step::Done(result) => result.map(|_| Ended::Secured),
                },
                Stage::Finished => Err(PlanError::Misfed {
                    expected: "nothing (it had finished)",
                    got: feedback.name(),
                }),
            };
            let stage = std::mem::replace(&mut self.stage, Stage::Finished);
            self.stage = match (ended, stage) {
                (Err(e), _) => return Step::Done(Err(e)),
                (Ok(Ended::Surveyed(None)) | Ok(Ended::Pruned), _) => self.create(),
                // A secured namespace's machine directories are made by `pop machine
                // add`, and their agents may not make them again: they stay.
                (Ok(Ended::Surveyed(Some(found))), _) if self.admin.is_some() => {
                    self.remove_next(found.services, Vec::new())
                }
                (Ok(Ended::Surveyed(Some(found))), _) => {
                    self.remove_next(found.services, found.machines)
                }
                (Ok(Ended::Removed), Stage::Removing { rest, machines, .. }) => {
                    self.remove_next(rest, machines)
                }
                (Ok(Ended::Removed), _) => Stage::Finished,
                (Ok(Ended::Created), _) if self.admin.is_some() => {
                    let digest = self.admin.as_ref().map_or("", |(_, d)| d.as_str());
                    Stage::Securing(Box::new(SyncAcls::new(digest)))
                }
                (Ok(Ended::Created | Ended::Secured), _) => {
                    return Step::Done(Ok(Outcome::Initialised {
                        at: self.at.clone(),
                        reset: self.force,
                    }))
                }
            };
            // The next stage starts afresh.
            feedback = Feedback::Start;
        }
    }
}

/// Reads whether the namespace exists and what is in it.
struct Survey {
    at: String,
    force: bool,
    /// `--admin-identity`'s user: it must not be a registered machine's id.
    admin: Option<String>,
}

impl Steps for Survey {
    type Done = Option<Found>;

    fn reads(&self) -> Vec<ZkOp> {
        let mut reads = vec![
            get(paths::POP),
            children(paths::SERVICES),
            children(paths::MACHINES),
        ];
        if self.admin.is_some() {
            reads.push(children(REGISTRY));
        }
        reads
    }

    fn decide(&mut self, _now: Timestamp, mut got: Vec<Got>) -> Decision<Option<Found>> {
        let registry = got.split_off(got.len().min(3));
        let [pop, services, machines] = match exactly(got) {
            Ok(got) => got,
            Err(e) => return Decision::Done(Err(e)),
        };
        if let (Some(admin), Some(Got::Children(registered))) = (&self.admin, registry.first()) {
            if registered.contains(admin) {
                return Decision::Done(Err(PlanError::MachineIsAdmin {
                    machine: admin.clone(),
                }));
            }
        }
        let names = |got: Got| match got {
            Got::Children(names) => names,
            _ => Vec::new(),
        };
        if !pop.exists() {
            return Decision::Done(Ok(None));
        }
        let services = names(services);
        if !self.force {
            return Decision::Done(Err(PlanError::AlreadyInitialised {
                at: self.at.clone(),
                services: services.len(),
            }));
        }
        Decision::Done(Ok(Some(Found {
            services,
            machines: names(machines),
        })))
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Option<Found>, PlanError>> {
        Some(Ok(None))
    }

    fn in_doubt(&mut self) {}
}

/// Deletes each path in turn if it has no children (machine directories, then the
/// marker).
struct Prune {
    queue: Vec<String>,
}

impl Steps for Prune {
    type Done = ();

    fn reads(&self) -> Vec<ZkOp> {
        Vec::new()
    }

    fn decide(&mut self, _now: Timestamp, _got: Vec<Got>) -> Decision<()> {
        match self.queue.first() {
            Some(path) => Decision::Write(ZkOp::Delete {
                path: path.clone(),
                version: None,
            }),
            None => Decision::Done(Ok(())),
        }
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<(), PlanError>> {
        self.queue.remove(0);
        None
    }

    fn refused(&mut self, _now: Timestamp, path: &str, error: &ZkError) -> Refused<()> {
        match error {
            // Something is published there (it stays), or it is gone already.
            ZkError::NotEmpty | ZkError::NoNode => {
                self.queue.remove(0);
                Refused::Look
            }
            other => super::engine::refused_by_default(path, other),
        }
    }

    // A delete in doubt is sent again; "no node" then means it took effect.
    fn in_doubt(&mut self) {}
}

/// Creates the namespace's missing nodes in one multi, with the marker (rewritten when
/// `/pop` stayed: a secured namespace's keeps its machine registry).
struct Create {
    marker: Marker,
    access: Access,
}

impl Create {
    /// The namespace's nodes and what each holds (`None`: nothing, and whatever it holds
    /// stays); a secured one's also the registry and the admin's id.
    fn nodes(&self) -> Vec<(&'static str, Option<Vec<u8>>)> {
        let mut nodes: Vec<(&'static str, Option<Vec<u8>>)> = paths::NAMESPACE
            .iter()
            .map(|p| (*p, (*p == paths::POP).then(|| self.marker.render())))
            .collect();
        if let Access::Secured(principals) = &self.access {
            nodes.push((REGISTRY, None));
            nodes.push((ADMIN, Some(principals.admin.clone().into_bytes())));
        }
        nodes
    }
}

impl Steps for Create {
    type Done = ();

    fn reads(&self) -> Vec<ZkOp> {
        self.nodes()
            .into_iter()
            .map(|(path, _)| get(path))
            .collect()
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<()> {
        let mut ops = Vec::new();
        for ((path, wanted), got) in self.nodes().into_iter().zip(got) {
            match (got, wanted) {
                (Got::Missing, wanted) => ops.push(ZkOp::Create {
                    path: path.to_string(),
                    data: wanted.unwrap_or_default(),
                    mode: CreateMode::Persistent,
                    acl: self.access.acl(path, &BTreeSet::new()),
                }),
                (Got::Data { data, stat }, Some(wanted)) if data != wanted => {
                    ops.push(ZkOp::SetData {
                        path: path.to_string(),
                        data: wanted,
                        version: Some(stat.version),
                    })
                }
                _ => {}
            }
        }
        if ops.is_empty() {
            return Decision::Done(Ok(()));
        }
        Decision::Write(ZkOp::Multi { ops })
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<(), PlanError>> {
        Some(Ok(()))
    }

    // Created meanwhile (by us or another `pop init`): the next look creates the rest.
    fn in_doubt(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{Fate, Tree};
    use crate::plan::Request;

    const PATIENCE: Duration = Duration::from_secs(30);

    fn initialised() -> Tree {
        let mut tree = Tree::with_service("[\"m1\"]", "{\"type\":\"echo\"}");
        for (path, data) in [
            ("/services/s/state/m2", "{}"),
            ("/services/t", ""),
            ("/services/t/settings", "{}"),
            ("/machines/m1", ""),
            ("/machines/m2", ""),
            ("/machines/m2/s", "7"),
            ("/agents/m2", "{}"),
            ("/assignments", ""),
            ("/assignments/m1", ""),
            ("/assignments/m1/s", ""),
        ] {
            tree.set(path, data);
        }
        tree
    }

    #[test]
    fn init_creates_the_namespace_with_its_marker() {
        let mut tree = Tree::with(&[("/machines", "")]);
        let outcome = tree.run(&mut Init::new("zk", false, PATIENCE));
        assert_eq!(
            outcome.map(|o| o.to_string()),
            Ok("initialised pop at zk".into())
        );
        assert_eq!(tree.data("/pop"), Some("{\"layout\":1}"));
        for path in paths::NAMESPACE {
            assert!(tree.data(path).is_some(), "{path}");
        }
        assert_eq!(tree.writes.len(), 1, "one multi: {:?}", tree.writes);
    }

    #[test]
    fn init_refuses_an_initialised_namespace_and_writes_nothing() {
        let mut tree = initialised();
        let outcome = tree.run(&mut Init::new("zk", false, PATIENCE));
        assert_eq!(
            outcome,
            Err(PlanError::AlreadyInitialised {
                at: "zk".into(),
                services: 2
            })
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn init_force_removes_every_service_and_keeps_what_agents_publish_about_themselves() {
        let mut tree = initialised();
        let outcome = tree.run(&mut Init::new("zk", true, PATIENCE));
        assert_eq!(
            outcome.map(|o| o.to_string()),
            Ok("initialised pop at zk (reset)".into())
        );
        assert!(tree.children("/services").is_empty());
        assert!(tree.children("/assignments/m1").is_empty(), "the index too");
        assert_eq!(tree.children("/machines"), ["m2"], "m1 had nothing in it");
        assert_eq!(tree.data("/agents/m2"), Some("{}"));
        assert_eq!(tree.data("/pop"), Some("{\"layout\":1}"));
        // Each service loses its machines list and settings before the rest.
        let s_unregistered = tree
            .writes
            .iter()
            .position(|w| w.contains("delete /services/s/settings"));
        let s_tree = tree
            .writes
            .iter()
            .position(|w| w.contains("delete /services/s/state/m2"));
        assert!(s_unregistered < s_tree, "{:?}", tree.writes);
    }

    #[test]
    fn init_force_finishes_when_a_service_is_removed_by_someone_else_meanwhile() {
        let mut tree = initialised();
        let outcome = tree.run_with(&mut Init::new("zk", true, PATIENCE), |tree, request| {
            let first_write = matches!(request, Request::Write(_)) && tree.writes.is_empty();
            if first_write {
                tree.nodes.retain(|p, _| !p.starts_with("/services/s"));
            }
            Fate::Deliver
        });
        assert!(
            matches!(outcome, Ok(Outcome::Initialised { reset: true, .. })),
            "{outcome:?}"
        );
        assert!(tree.children("/services").is_empty());
    }

    #[test]
    fn init_whose_create_reply_was_lost_reports_initialised() {
        let mut tree = Tree::with(&[]);
        let outcome = tree.run_with(&mut Init::new("zk", false, PATIENCE), |tree, request| {
            if matches!(request, Request::Write(_)) && tree.writes.is_empty() {
                return Fate::LoseReply;
            }
            Fate::Deliver
        });
        assert!(
            matches!(outcome, Ok(Outcome::Initialised { .. })),
            "{outcome:?}"
        );
        assert_eq!(tree.writes.len(), 1);
    }
}
