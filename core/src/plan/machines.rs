//! `pop deploy` and `pop undeploy`: a compare-and-set of the service's machines list, so
//! a concurrent change by someone else is kept, not overwritten. The same multi creates
//! or deletes the machines' index entries (`/assignments/<m>/<s>`), under the list's
//! version check.

use super::assignments::IndexReads;
use super::engine::{exactly, Decision, Engine, Got, Steps};
use super::{get, require_service, Feedback, Outcome, Plan, PlanError, Step};
use crate::access::Access;
use crate::names::{MachineId, ServiceName};
use crate::paths;
use crate::settings::{parse_machines, render_machines};
use crate::time::Timestamp;
use crate::zk::{ZkOp, ZkReply};
use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachinesChange {
    Deploy,
    Undeploy,
}

impl fmt::Display for MachinesChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MachinesChange::Deploy => "deployed",
            MachinesChange::Undeploy => "undeployed",
        })
    }
}

pub struct ChangeMachines(Engine<Changing>);

struct Changing {
    at: String,
    name: String,
    change: MachinesChange,
    machines: Vec<MachineId>,
    /// The index entries of the machines given.
    index: IndexReads,
    /// The ACLs of index nodes it creates.
    access: Access,
    /// The list last written.
    writing: BTreeSet<String>,
    /// A write was sent whose outcome is unknown.
    in_doubt: bool,
}

impl ChangeMachines {
    pub fn new(
        at: &str,
        name: &ServiceName,
        change: MachinesChange,
        machines: Vec<MachineId>,
    ) -> ChangeMachines {
        let index = IndexReads::new(name.as_str(), machines.iter().map(|m| m.to_string()));
        ChangeMachines(Engine::new(Changing {
            at: at.to_string(),
            name: name.to_string(),
            change,
            machines,
            index,
            access: Access::Open,
            writing: BTreeSet::new(),
            in_doubt: false,
        }))
    }
}

impl ChangeMachines {
    /// The ACLs of the index nodes it creates (a secured namespace's).
    pub fn with_access(mut self, access: Access) -> ChangeMachines {
        self.0.steps.access = access;
        self
    }
}

impl Plan for ChangeMachines {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

impl Changing {
    fn changed(&self, now: BTreeSet<String>) -> Outcome {
        Outcome::MachinesChanged {
            name: self.name.clone(),
            change: self.change,
            machines: self.machines.clone(),
            now,
        }
    }

    fn plan(
        &mut self,
        pop: Got,
        service: Got,
        list: Got,
        index: &[Got],
    ) -> Result<Decision<Outcome>, PlanError> {
        require_service(&self.at, &self.name, &pop, &service)?;
        let path = paths::service_machines(&self.name);
        let Got::Data { data, stat } = list else {
            return Err(PlanError::NodeMissing { path });
        };
        let current = parse_machines(&data).map_err(|error| PlanError::InvalidMachines {
            path: path.clone(),
            error,
        })?;
        let mut wanted = current.clone();
        for id in &self.machines {
            match self.change {
                MachinesChange::Deploy => wanted.insert(id.as_str().to_string()),
                MachinesChange::Undeploy => wanted.remove(id.as_str()),
            };
        }
        if wanted == current {
            // After a write in doubt the list being as asked is what the user wanted to
            // hear, whoever made it so.
            let outcome = if self.in_doubt {
                self.changed(current)
            } else {
                Outcome::MachinesUnchanged {
                    name: self.name.clone(),
                    now: current,
                }
            };
            return Ok(Decision::Done(Ok(outcome)));
        }
        let op = ZkOp::SetData {
            path,
            data: render_machines(&wanted),
            version: Some(stat.version),
        };
        let found = self.index.found(index)?;
        let mut ops = self.index.ops(&found, &current, &wanted, &self.access);
        self.writing = wanted;
        if ops.is_empty() {
            return Ok(Decision::Write(op));
        }
        ops.insert(0, op);
        Ok(Decision::Write(ZkOp::Multi { ops }))
    }
}

impl Steps for Changing {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        let mut reads = vec![
            get(paths::POP),
            get(paths::service(&self.name)),
            get(paths::service_machines(&self.name)),
        ];
        reads.extend(self.index.reads());
        reads
    }

    fn decide(&mut self, _now: Timestamp, mut got: Vec<Got>) -> Decision<Outcome> {
        let index = got.split_off(got.len().min(3));
        let planned =
            exactly(got).and_then(|[pop, service, list]| self.plan(pop, service, list, &index));
        planned.unwrap_or_else(|e| Decision::Done(Err(e)))
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        let now = std::mem::take(&mut self.writing);
        Some(Ok(self.changed(now)))
    }

    fn in_doubt(&mut self) {
        self.in_doubt = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{Fate, Tree};
    use crate::plan::Request;

    fn change(change: MachinesChange, ids: &[&str]) -> ChangeMachines {
        let name = ServiceName::new("s").expect("a valid name");
        let ids = ids
            .iter()
            .map(|id| MachineId::new(id).expect("a valid id"))
            .collect();
        ChangeMachines::new("zk", &name, change, ids)
    }

    #[test]
    fn deploy_retries_after_a_version_conflict_and_keeps_the_other_writers_machine() {
        let mut tree = Tree::with_service("[]", "{}");
        let mut raced = false;
        let outcome = tree.run_with(
            &mut change(MachinesChange::Deploy, &["m1"]),
            |tree, request| {
                if matches!(request, Request::Write(_)) && !raced {
                    raced = true;
                    tree.set("/services/s/machines", "[\"m2\"]");
                }
                Fate::Deliver
            },
        );
        let outcome = outcome.expect("deployed");
        assert_eq!(
            outcome.to_string(),
            "deployed s on m1; it now runs on: m1, m2"
        );
        assert_eq!(tree.data("/services/s/machines"), Some("[\"m1\",\"m2\"]"));
    }

    #[test]
    fn deploy_on_a_listed_machine_writes_nothing() {
        let mut tree = Tree::with_service("[\"m1\"]", "{}");
        let outcome = tree.run(&mut change(MachinesChange::Deploy, &["m1"]));
        assert_eq!(
            outcome.map(|o| o.to_string()),
            Ok("nothing to do: s runs on: m1".into())
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn undeploy_whose_reply_was_lost_reports_undeployed() {
        let mut tree = Tree::with_service("[\"m1\"]", "{}");
        let mut lost = false;
        let outcome = tree.run_with(
            &mut change(MachinesChange::Undeploy, &["m1"]),
            |_, request| {
                if matches!(request, Request::Write(_)) && !lost {
                    lost = true;
                    return Fate::LoseReply;
                }
                Fate::Deliver
            },
        );
        assert_eq!(
            outcome.map(|o| o.to_string()),
            Ok("undeployed s on m1; it now runs on: nowhere".into())
        );
        assert_eq!(tree.writes.len(), 1);
    }

    #[test]
    fn deploy_refuses_an_invalid_machines_list_and_leaves_it() {
        let mut tree = Tree::with_service("[\"m1\", 7", "{}");
        let outcome = tree.run(&mut change(MachinesChange::Deploy, &["m2"]));
        let message = outcome.expect_err("refused").to_string();
        assert!(
            message.starts_with("/services/s/machines holds an invalid machines list ("),
            "{message}"
        );
        assert!(message.ends_with("pop will not overwrite it"), "{message}");
        assert!(tree.writes.is_empty());
    }

    /// The tree's index of `s`, as (machine, entry exists) for m1 and m2.
    fn indexed(tree: &Tree) -> Vec<&'static str> {
        ["m1", "m2"]
            .into_iter()
            .filter(|m| tree.data(&paths::assignment(m, "s")).is_some())
            .collect()
    }

    #[test]
    fn deploy_creates_the_index_entries_in_the_multi_that_writes_the_list() {
        let mut tree = Tree::with_service("[]", "{}");
        let outcome = tree.run(&mut change(MachinesChange::Deploy, &["m1", "m2"]));
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(indexed(&tree), ["m1", "m2"]);
        assert_eq!(tree.writes.len(), 1, "one multi: {:?}", tree.writes);
        assert!(
            tree.writes[0].contains("create /assignments/m1/s"),
            "{:?}",
            tree.writes
        );
    }

    #[test]
    fn undeploy_deletes_the_index_entry_with_the_list_and_keeps_the_others() {
        let mut tree = Tree::with_service("[]", "{}");
        tree.run(&mut change(MachinesChange::Deploy, &["m1", "m2"]))
            .expect("deployed");
        tree.run(&mut change(MachinesChange::Undeploy, &["m1"]))
            .expect("undeployed");
        assert_eq!(tree.data("/services/s/machines"), Some("[\"m2\"]"));
        assert_eq!(indexed(&tree), ["m2"]);
        assert_eq!(tree.children("/assignments/m1"), Vec::<String>::new());
        assert_eq!(tree.writes.len(), 2, "{:?}", tree.writes);
    }

    #[test]
    fn deploy_racing_another_deploy_ends_with_the_index_as_the_list_says() {
        let mut tree = Tree::with_service("[]", "{}");
        let mut raced = false;
        tree.run_with(
            &mut change(MachinesChange::Deploy, &["m1"]),
            |tree, request| {
                if matches!(request, Request::Write(_)) && !raced {
                    raced = true;
                    let mut other = change(MachinesChange::Deploy, &["m2"]);
                    tree.run(&mut other).expect("the other deploy");
                }
                Fate::Deliver
            },
        )
        .expect("deployed");
        assert_eq!(tree.data("/services/s/machines"), Some("[\"m1\",\"m2\"]"));
        assert_eq!(indexed(&tree), ["m1", "m2"]);
    }

    #[test]
    fn deploy_where_an_entry_was_left_makes_it_again_so_the_agent_hears_of_it() {
        let mut tree = Tree::with_service("[]", "{}");
        for path in ["/assignments", "/assignments/m1", "/assignments/m1/s"] {
            tree.set(path, "");
        }
        tree.run(&mut change(MachinesChange::Deploy, &["m1"]))
            .expect("deployed");
        assert_eq!(
            tree.writes,
            ["multi [set /services/s/machines v0 '[\"m1\"]'; delete /assignments/m1/s any version; create /assignments/m1/s '']"],
        );
    }

    #[test]
    fn deploy_of_another_machine_leaves_a_listed_machines_entry_alone() {
        let mut tree = Tree::with_service("[]", "{}");
        tree.run(&mut change(MachinesChange::Deploy, &["m1"]))
            .expect("deployed");
        tree.run(&mut change(MachinesChange::Deploy, &["m1", "m2"]))
            .expect("deployed");
        assert!(
            !tree.writes[1].contains("/assignments/m1"),
            "{:?}",
            tree.writes
        );
        assert_eq!(indexed(&tree), ["m1", "m2"]);
    }

    #[test]
    fn deploy_whose_reply_was_lost_leaves_one_entry() {
        let mut tree = Tree::with_service("[]", "{}");
        let mut lost = false;
        tree.run_with(
            &mut change(MachinesChange::Deploy, &["m1"]),
            |_, request| {
                if matches!(request, Request::Write(_)) && !lost {
                    lost = true;
                    return Fate::LoseReply;
                }
                Fate::Deliver
            },
        )
        .expect("deployed");
        assert_eq!(indexed(&tree), ["m1"]);
        assert_eq!(tree.writes.len(), 1);
    }

    #[test]
    fn deploy_of_a_missing_service_names_it() {
        let mut tree = Tree::with(&[("/pop", ""), ("/services", "")]);
        let outcome = tree.run(&mut change(MachinesChange::Deploy, &["m1"]));
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err("no service named \"s\" (see `pop status`)".into())
        );
    }
}
