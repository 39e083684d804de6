//! `pop set`: a compare-and-set of the service's settings, made by the same pure edit
//! the fuzzer checks (`assignment::edit_settings`).

use super::engine::{exactly, Decision, Engine, Got, Steps};
use super::{get, require_service, Feedback, Outcome, Plan, PlanError, Step};
use crate::assignment::{edit_settings, EditError};
use crate::names::ServiceName;
use crate::paths;
use crate::time::Timestamp;
use crate::zk::{ZkOp, ZkReply};
use serde_json::Value;

pub struct Set(Engine<Setting>);

struct Setting {
    at: String,
    name: String,
    assignments: Vec<(String, Value)>,
    unset: Vec<String>,
    /// A write was sent whose outcome is unknown.
    in_doubt: bool,
}

impl Set {
    pub fn new(
        at: &str,
        name: &ServiceName,
        assignments: Vec<(String, Value)>,
        unset: Vec<String>,
    ) -> Set {
        Set(Engine::new(Setting {
            at: at.to_string(),
            name: name.to_string(),
            assignments,
            unset,
            in_doubt: false,
        }))
    }
}

impl Plan for Set {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

impl Setting {
    fn plan(&self, pop: Got, service: Got, settings: Got) -> Result<Decision<Outcome>, PlanError> {
        require_service(&self.at, &self.name, &pop, &service)?;
        let path = paths::service_settings(&self.name);
        let Got::Data { data, stat } = settings else {
            return Err(PlanError::NodeMissing { path });
        };
        let edited = edit_settings(&data, &self.assignments, &self.unset).map_err(|e| match e {
            EditError::NotAnObject => PlanError::NotAnObject { path: path.clone() },
            EditError::Invalid(error) => PlanError::InvalidSettings {
                name: self.name.clone(),
                error,
                hint: "",
            },
        })?;
        let Some(new) = edited else {
            let name = self.name.clone();
            // After a write in doubt, settings as asked are what the user wanted.
            let outcome = if self.in_doubt {
                Outcome::SettingsUpdated { name }
            } else {
                Outcome::SettingsUnchanged { name }
            };
            return Ok(Decision::Done(Ok(outcome)));
        };
        Ok(Decision::Write(ZkOp::SetData {
            path,
            data: new,
            version: Some(stat.version),
        }))
    }
}

impl Steps for Setting {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        vec![
            get(paths::POP),
            get(paths::service(&self.name)),
            get(paths::service_settings(&self.name)),
        ]
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        let planned =
            exactly(got).and_then(|[pop, service, settings]| self.plan(pop, service, settings));
        planned.unwrap_or_else(|e| Decision::Done(Err(e)))
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        Some(Ok(Outcome::SettingsUpdated {
            name: self.name.clone(),
        }))
    }

    fn in_doubt(&mut self) {
        self.in_doubt = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::parse_assignment;
    use crate::plan::testing::{Fate, Tree};
    use crate::plan::Request;

    const ECHO: &str = "{\"type\":\"echo\",\"port\":0}";

    fn set(assignments: &[&str], unset: &[&str]) -> Set {
        let name = ServiceName::new("s").expect("a valid name");
        let parsed = assignments
            .iter()
            .map(|a| parse_assignment(a).expect("KEY=VALUE"))
            .collect();
        Set::new(
            "zk",
            &name,
            parsed,
            unset.iter().map(|k| k.to_string()).collect(),
        )
    }

    fn settings(tree: &Tree) -> Value {
        serde_json::from_str(tree.data("/services/s/settings").expect("settings"))
            .expect("JSON settings")
    }

    #[test]
    fn set_retries_after_a_version_conflict_and_keeps_the_other_writers_change() {
        let mut tree = Tree::with_service("[]", ECHO);
        let mut raced = false;
        let outcome = tree.run_with(&mut set(&["stop_timeout=3"], &[]), |tree, request| {
            if matches!(request, Request::Write(_)) && !raced {
                raced = true;
                tree.set("/services/s/settings", "{\"type\":\"echo\",\"port\":9}");
            }
            Fate::Deliver
        });
        assert_eq!(
            outcome.map(|o| o.to_string()),
            Ok("updated settings of s; it restarts wherever it runs".into())
        );
        let now = settings(&tree);
        assert_eq!(now["port"], 9, "{now}");
        assert_eq!(now["stop_timeout"], 3, "{now}");
    }

    #[test]
    fn set_of_values_already_there_writes_nothing() {
        let mut tree = Tree::with_service("[]", ECHO);
        let outcome = tree.run(&mut set(&["port=0"], &[]));
        assert_eq!(
            outcome.map(|o| o.to_string()),
            Ok("nothing to do: settings of s are already so".into())
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn set_whose_reply_was_lost_reports_updated() {
        let mut tree = Tree::with_service("[]", ECHO);
        let mut lost = false;
        let outcome = tree.run_with(&mut set(&["port=8"], &[]), |_, request| {
            if matches!(request, Request::Write(_)) && !lost {
                lost = true;
                return Fate::LoseReply;
            }
            Fate::Deliver
        });
        assert_eq!(outcome, Ok(Outcome::SettingsUpdated { name: "s".into() }));
        assert_eq!(tree.writes.len(), 1);
    }

    #[test]
    fn set_refuses_settings_that_are_not_an_object_and_leaves_them() {
        let mut tree = Tree::with_service("[]", "[1,2]");
        let outcome = tree.run(&mut set(&["port=1"], &[]));
        assert_eq!(
            outcome,
            Err(PlanError::NotAnObject {
                path: "/services/s/settings".into()
            })
        );
        assert_eq!(tree.data("/services/s/settings"), Some("[1,2]"));
    }

    #[test]
    fn set_refuses_settings_the_agent_would_reject() {
        let mut tree = Tree::with_service("[]", ECHO);
        let outcome = tree.run(&mut set(&[], &["port"]));
        let message = outcome.expect_err("refused").to_string();
        assert!(message.starts_with("invalid settings for s: "), "{message}");
        assert!(tree.writes.is_empty());
    }
}
