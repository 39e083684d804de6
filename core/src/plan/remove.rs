//! `pop remove [--force]`, in the order that lets agents stop the service cleanly: first
//! its machines list and settings (one multi; without `--force` only if the list is still
//! empty, by version), so every agent stops it and no longer publishes for it; then the
//! rest of the tree, deepest first, in one multi. The first multi also deletes the
//! service's index entries (`/assignments/<m>/<s>`) of the machines its list names. An agent still stopping may add a state
//! node meanwhile: the tree is read again and the delete retried until a deadline.

use super::assignments::IndexReads;
use super::engine::{exactly, refused_by_default, Decision, Engine, Got, Refused, Steps};
use super::{children, get, require_service, Feedback, Outcome, Plan, PlanError, Step};
use crate::access::Access;
use crate::names::ServiceName;
use crate::paths;
use crate::settings::parse_machines;
use crate::time::Timestamp;
use crate::zk::{ZkError, ZkOp, ZkReply};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long to wait between attempts while children keep appearing.
pub const CHILD_PAUSE: Duration = Duration::from_millis(50);

pub struct Remove(Engine<Removing>);

struct Removing {
    at: String,
    name: String,
    force: bool,
    /// How long agents may keep adding children before the plan gives up.
    patience: Duration,
    phase: Phase,
    /// The index entries of the machines its list named when last read.
    index: IndexReads,
    /// The planted ordering bug has already deleted the state nodes.
    state_deleted_first: bool,
}

enum Phase {
    /// Check the service may go, then delete its machines list and settings.
    Unregister,
    /// Delete everything under `root` and `root` itself, deepest first.
    Tree {
        root: String,
        then: AfterTree,
        /// Nodes found so far, parents before children.
        found: Vec<String>,
        /// Nodes whose children are to be read next.
        frontier: Vec<String>,
        deadline: Option<Timestamp>,
    },
}

enum AfterTree {
    Finish,
    /// Only under the planted bug: the state nodes went first.
    Unregister,
}

impl Phase {
    fn tree(root: String, then: AfterTree) -> Phase {
        Phase::Tree {
            frontier: vec![root.clone()],
            root,
            then,
            found: Vec::new(),
            deadline: None,
        }
    }
}

impl Remove {
    /// `patience`: how long to wait for agents that keep publishing under the service.
    pub fn new(at: &str, name: &ServiceName, force: bool, patience: Duration) -> Remove {
        Remove::named(at, name.as_str(), force, patience)
    }

    /// For `pop init --force`, which removes whatever is under /services, even names pop
    /// would not accept.
    pub(super) fn named(at: &str, name: &str, force: bool, patience: Duration) -> Remove {
        Remove(Engine::new(Removing {
            at: at.to_string(),
            name: name.to_string(),
            force,
            patience,
            phase: Phase::Unregister,
            index: IndexReads::default(),
            state_deleted_first: false,
        }))
    }
}

impl Plan for Remove {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

impl Removing {
    fn unregister(
        &mut self,
        pop: Got,
        service: Got,
        machines: Got,
        settings: Got,
        index: &[Got],
    ) -> Result<Decision<Outcome>, PlanError> {
        require_service(&self.at, &self.name, &pop, &service)?;
        let machines_path = paths::service_machines(&self.name);
        let mut ops = Vec::new();
        let mut index_ops = Vec::new();
        if let Got::Data { data, stat } = &machines {
            let deployed = parse_machines(data);
            let version = match deployed {
                // Its entries go with the list they were read beside (by version).
                Ok(deployed) if self.force => {
                    let listed: Vec<String> = deployed.iter().cloned().collect();
                    if listed != self.index.machines() {
                        self.index = IndexReads::new(&self.name, listed);
                        return Ok(Decision::Look);
                    }
                    let found = self.index.found(index)?;
                    let none = BTreeSet::new();
                    index_ops = self.index.ops(&found, &deployed, &none, &Access::Open);
                    Some(stat.version)
                }
                // Unreadable: nobody can tell its entries (the keeper deletes them).
                Err(_) if self.force => None,
                Err(error) => {
                    return Err(PlanError::MachinesUnreadable {
                        path: machines_path.clone(),
                        name: self.name.clone(),
                        error,
                    })
                }
                Ok(deployed) if !deployed.is_empty() => {
                    return Err(PlanError::Deployed {
                        name: self.name.clone(),
                        machines: deployed.into_iter().collect(),
                    });
                }
                // Deleted only if nobody deployed it since.
                Ok(_) => Some(stat.version),
            };
            ops.push(ZkOp::Delete {
                path: machines_path,
                version,
            });
        }
        if planted!(RemoveTreeFirst) && !self.state_deleted_first {
            self.state_deleted_first = true;
            let root = paths::service_state_dir(&self.name);
            self.phase = Phase::tree(root, AfterTree::Unregister);
            return Ok(Decision::Look);
        }
        if settings.exists() {
            ops.push(ZkOp::Delete {
                path: paths::service_settings(&self.name),
                version: None,
            });
        }
        ops.extend(index_ops);
        if ops.is_empty() {
            self.phase = Phase::tree(paths::service(&self.name), AfterTree::Finish);
            return Ok(Decision::Look);
        }
        Ok(Decision::Write(ZkOp::Multi { ops }))
    }

    /// The tree is gone: finish, or (planted bug) go on to unregister.
    fn tree_gone(&mut self) -> Option<Result<Outcome, PlanError>> {
        match &self.phase {
            Phase::Tree {
                then: AfterTree::Unregister,
                ..
            } => {
                self.phase = Phase::Unregister;
                None
            }
            _ => Some(Ok(Outcome::Removed {
                name: self.name.clone(),
            })),
        }
    }

    /// Forgets what was listed, to read the tree afresh.
    fn relist(&mut self) {
        if let Phase::Tree {
            root,
            found,
            frontier,
            ..
        } = &mut self.phase
        {
            found.clear();
            *frontier = vec![root.clone()];
        }
    }
}

impl Steps for Removing {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        match &self.phase {
            Phase::Unregister => {
                let mut reads = vec![
                    get(paths::POP),
                    get(paths::service(&self.name)),
                    get(paths::service_machines(&self.name)),
                    get(paths::service_settings(&self.name)),
                ];
                reads.extend(self.index.reads());
                reads
            }
            Phase::Tree { frontier, .. } => frontier.iter().map(children).collect(),
        }
    }

    fn decide(&mut self, now: Timestamp, mut got: Vec<Got>) -> Decision<Outcome> {
        let patience = self.patience;
        let Phase::Tree {
            root,
            found,
            frontier,
            deadline,
            ..
        } = &mut self.phase
        else {
            let index = got.split_off(got.len().min(4));
            let planned = exactly(got).and_then(|[pop, service, machines, settings]| {
                self.unregister(pop, service, machines, settings, &index)
            });
            return planned.unwrap_or_else(|e| Decision::Done(Err(e)));
        };
        deadline.get_or_insert(now + patience);
        let mut next = Vec::new();
        for (node, listed) in frontier.iter().zip(got) {
            match listed {
                Got::Children(names) => {
                    found.push(node.clone());
                    next.extend(names.iter().map(|child| format!("{node}/{child}")));
                }
                // Gone meanwhile: one node less to delete.
                _ if node != root => {}
                _ => {
                    return match self.tree_gone() {
                        Some(result) => Decision::Done(result),
                        None => Decision::Look,
                    }
                }
            }
        }
        if !next.is_empty() {
            *frontier = next;
            return Decision::Look;
        }
        frontier.clear();
        let ops = found
            .iter()
            .rev()
            .map(|path| ZkOp::Delete {
                path: path.clone(),
                version: None,
            })
            .collect();
        Decision::Write(ZkOp::Multi { ops })
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        match self.phase {
            Phase::Unregister => {
                self.phase = Phase::tree(paths::service(&self.name), AfterTree::Finish);
                None
            }
            Phase::Tree { .. } => self.tree_gone(),
        }
    }

    fn refused(&mut self, now: Timestamp, path: &str, error: &ZkError) -> Refused<Outcome> {
        self.relist();
        let Phase::Tree { deadline, .. } = &self.phase else {
            // Deployed, or deleted, meanwhile: the next look says which.
            return refused_by_default(path, error);
        };
        match error {
            // An agent still stopping published a child meanwhile.
            ZkError::NotEmpty if deadline.is_some_and(|d| now >= d) => {
                Refused::Done(Err(PlanError::ChildrenKeepAppearing {
                    path: path.to_string(),
                    waited: self.patience,
                }))
            }
            ZkError::NotEmpty => Refused::Pause(now + CHILD_PAUSE),
            // A node went meanwhile (an agent deleting its own): list again.
            other => refused_by_default(path, other),
        }
    }

    fn in_doubt(&mut self) {
        self.relist();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{Fate, Tree};
    use crate::plan::{MachinesChange, Request};

    const PATIENCE: Duration = Duration::from_secs(30);

    fn remove(force: bool) -> Remove {
        let name = ServiceName::new("s").expect("a valid name");
        Remove::new("zk", &name, force, PATIENCE)
    }

    /// A deployed service an agent on m1 runs and publishes.
    fn running() -> Tree {
        let mut tree = Tree::with_service("[\"m1\"]", "{\"type\":\"echo\"}");
        tree.set("/services/s/state/m1", "{\"pid\":7}");
        tree
    }

    fn nothing_left(tree: &Tree) -> bool {
        !tree.nodes.keys().any(|p| p.starts_with("/services/s"))
    }

    #[test]
    fn remove_force_deletes_the_index_entries_of_its_machines_with_the_list() {
        let mut tree = running();
        for path in ["/assignments", "/assignments/m1", "/assignments/m1/s"] {
            tree.set(path, "");
        }
        tree.run(&mut remove(true)).expect("removed");
        assert!(nothing_left(&tree));
        assert_eq!(tree.children("/assignments/m1"), Vec::<String>::new());
        assert!(
            tree.writes[0].contains("delete /assignments/m1/s"),
            "with the list: {:?}",
            tree.writes
        );
    }

    #[test]
    fn remove_force_of_a_list_deployed_meanwhile_deletes_the_new_entry_too() {
        let mut tree = running();
        let mut raced = false;
        tree.run_with(&mut remove(true), |tree, request| {
            if matches!(request, Request::Write(_)) && !raced {
                raced = true;
                let name = ServiceName::new("s").expect("a valid name");
                let ids = vec![crate::names::MachineId::new("m2").expect("an id")];
                let mut deploy =
                    crate::plan::ChangeMachines::new("zk", &name, MachinesChange::Deploy, ids);
                tree.run(&mut deploy).expect("deployed meanwhile");
            }
            Fate::Deliver
        })
        .expect("removed");
        assert!(nothing_left(&tree));
        assert_eq!(tree.children("/assignments/m2"), Vec::<String>::new());
    }

    #[test]
    fn remove_deletes_machines_and_settings_before_anything_else() {
        let mut tree = running();
        let outcome = tree.run(&mut remove(true));
        assert_eq!(outcome, Ok(Outcome::Removed { name: "s".into() }));
        assert_eq!(
            tree.writes,
            [
                "multi [delete /services/s/machines v0; delete /services/s/settings any version]",
                "multi [delete /services/s/state/m1 any version; delete /services/s/state any version; delete /services/s any version]",
            ]
        );
        assert!(nothing_left(&tree));
    }

    #[test]
    fn remove_without_force_refuses_a_deployed_service_and_writes_nothing() {
        let mut tree = running();
        let outcome = tree.run(&mut remove(false));
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err(
                "s is deployed on m1; `pop undeploy` it first or use `pop remove s --force`".into()
            )
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn remove_without_force_refuses_an_unreadable_machines_list() {
        let mut tree = Tree::with_service("{oops", "{}");
        let outcome = tree.run(&mut remove(false)).expect_err("refused");
        assert!(
            matches!(outcome, PlanError::MachinesUnreadable { .. }),
            "{outcome}"
        );
        assert!(outcome.to_string().ends_with("use `pop remove s --force`"));
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn remove_without_force_refuses_a_service_deployed_while_it_looked() {
        let mut tree = Tree::with_service("[]", "{}");
        let mut raced = false;
        let outcome = tree.run_with(&mut remove(false), |tree, request| {
            if matches!(request, Request::Write(_)) && !raced {
                raced = true;
                tree.set("/services/s/machines", "[\"m2\"]");
            }
            Fate::Deliver
        });
        assert!(
            matches!(outcome, Err(PlanError::Deployed { .. })),
            "{outcome:?}"
        );
        assert!(tree.writes.is_empty(), "{:?}", tree.writes);
        assert_eq!(tree.data("/services/s/machines"), Some("[\"m2\"]"));
    }

    #[test]
    fn remove_waits_for_an_agent_that_publishes_once_more_then_finishes() {
        let mut tree = running();
        let mut published = false;
        let outcome = tree.run_with(&mut remove(true), |tree, request| {
            // An agent that has not yet heard of the removal publishes its state.
            if let Request::Write(ZkOp::Multi { ops }) = request {
                if ops.len() > 2 && !published {
                    published = true;
                    tree.set("/services/s/state/m2", "{}");
                }
            }
            Fate::Deliver
        });
        assert_eq!(outcome, Ok(Outcome::Removed { name: "s".into() }));
        assert!(nothing_left(&tree));
    }

    #[test]
    fn remove_gives_up_once_children_keep_appearing_past_its_patience() {
        let mut tree = running();
        let mut n = 0;
        let name = ServiceName::new("s").expect("a valid name");
        let patience = Duration::from_secs(1);
        let mut plan = Remove::new("zk", &name, true, patience);
        let outcome = tree.run_with(&mut plan, |tree, request| {
            if let Request::Write(ZkOp::Multi { ops }) = request {
                if ops.len() > 2 {
                    n += 1;
                    tree.set(&format!("/services/s/state/x{n}"), "{}");
                }
            }
            Fate::Deliver
        });
        assert_eq!(
            outcome,
            Err(PlanError::ChildrenKeepAppearing {
                path: "/services/s/state".into(),
                waited: patience,
            })
        );
        assert!(n >= 20, "kept trying for its patience: {n} attempts");
    }

    #[test]
    fn remove_whose_last_reply_was_lost_reports_removed() {
        let mut tree = running();
        let outcome = tree.run_with(&mut remove(true), |tree, request| {
            let last = tree.writes.len() == 1 && matches!(request, Request::Write(_));
            if last {
                return Fate::LoseReply;
            }
            Fate::Deliver
        });
        assert_eq!(outcome, Ok(Outcome::Removed { name: "s".into() }));
        assert!(nothing_left(&tree));
    }

    #[test]
    fn remove_of_a_half_removed_service_finishes_it() {
        let mut tree = running();
        tree.nodes.remove("/services/s/machines");
        tree.nodes.remove("/services/s/settings");
        let outcome = tree.run(&mut remove(false));
        assert_eq!(outcome, Ok(Outcome::Removed { name: "s".into() }));
        assert!(nothing_left(&tree));
    }

    #[cfg(feature = "planted-bugs")]
    #[test]
    fn the_planted_ordering_bug_deletes_the_state_nodes_first() {
        crate::planted::plant(Some(crate::planted::Bug::RemoveTreeFirst));
        let mut tree = running();
        let outcome = tree.run(&mut remove(true));
        crate::planted::plant(None);
        assert_eq!(outcome, Ok(Outcome::Removed { name: "s".into() }));
        assert!(
            tree.writes[0].contains("delete /services/s/state/m1"),
            "{:?}",
            tree.writes
        );
    }
}
