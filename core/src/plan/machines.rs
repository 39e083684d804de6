//! `pop deploy` and `pop undeploy`: a compare-and-set of the service's machines list, so
//! a concurrent change by someone else is kept, not overwritten.

use super::engine::{exactly, Decision, Engine, Got, Steps};
use super::{get, require_service, Feedback, Outcome, Plan, PlanError, Step};
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
        ChangeMachines(Engine::new(Changing {
            at: at.to_string(),
            name: name.to_string(),
            change,
            machines,
            writing: BTreeSet::new(),
            in_doubt: false,
        }))
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

    fn plan(&mut self, pop: Got, service: Got, list: Got) -> Result<Decision<Outcome>, PlanError> {
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
        self.writing = wanted;
        Ok(Decision::Write(op))
    }
}

impl Steps for Changing {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        vec![
            get(paths::POP),
            get(paths::service(&self.name)),
            get(paths::service_machines(&self.name)),
        ]
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        let planned = exactly(got).and_then(|[pop, service, list]| self.plan(pop, service, list));
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
