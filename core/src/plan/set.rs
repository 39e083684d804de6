//! `pop set`: a compare-and-set of the service's settings, made by the same pure edit
//! the fuzzer checks (`assignment::edit_settings`), checked against the manifest of the
//! type the edited settings name (read from `/plugins/<type>` for a stored plugin).

use super::engine::{exactly, Decision, Engine, Got, Steps};
use super::plugins::{resolve, type_reads};
use super::{get, require_service, Feedback, Outcome, Plan, PlanError, Step};
use crate::assignment::{edit_unchecked, render_settings, EditError};
use crate::names::{PluginName, ServiceName};
use crate::paths;
use crate::plugin::{builtin, Manifest, SettingsError};
use crate::settings::Settings;
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
    /// A stored type whose manifest the reads fetch: the type the edit ends with.
    stored_type: Option<PluginName>,
}

/// What checks the edited settings.
enum Checker {
    Manifest(Manifest),
    /// Settings without a usable type: the agent's own reading says what is wrong.
    Agent,
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
            stored_type: None,
        }))
    }
}

impl Plan for Set {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

impl Setting {
    fn plan(&mut self, mut got: Vec<Got>) -> Result<Decision<Outcome>, PlanError> {
        let type_got = got.split_off(got.len().min(3));
        let [pop, service, settings] = exactly(got)?;
        require_service(&self.at, &self.name, &pop, &service)?;
        let path = paths::service_settings(&self.name);
        let Got::Data { data, stat } = settings else {
            return Err(PlanError::NodeMissing { path });
        };
        let edited =
            edit_unchecked(&data, &self.assignments, &self.unset).map_err(|e| match e {
                EditError::NotAnObject => PlanError::NotAnObject { path: path.clone() },
                EditError::Invalid(error) => self.invalid(error.into()),
            })?;
        let service_type = edited
            .map
            .get("type")
            .and_then(|t| t.as_str())
            .and_then(|t| PluginName::new(t).ok());
        let checker = match service_type {
            None => Checker::Agent,
            Some(t) => match builtin::manifest(t.as_str()) {
                Some(manifest) => Checker::Manifest(manifest),
                None if self.stored_type.as_ref() == Some(&t) => {
                    Checker::Manifest(resolve(&t, &type_got)?)
                }
                None => {
                    self.stored_type = Some(t);
                    return Ok(Decision::Look);
                }
            },
        };
        let checked = match checker {
            Checker::Manifest(manifest) => manifest.check_settings(&edited.map),
            Checker::Agent => Settings::from_map(&edited.map)
                .map(|_| ())
                .map_err(SettingsError::from),
        };
        checked.map_err(|error| self.invalid(error))?;
        if !edited.changed {
            let name = self.name.clone();
            // After a write in doubt, settings as asked are what the user wanted.
            let outcome = if self.in_doubt {
                Outcome::SettingsUpdated { name }
            } else {
                Outcome::SettingsUnchanged { name }
            };
            return Ok(Decision::Done(Ok(outcome)));
        }
        Ok(Decision::Write(ZkOp::SetData {
            path,
            data: render_settings(edited.map),
            version: Some(stat.version),
        }))
    }

    fn invalid(&self, error: SettingsError) -> PlanError {
        PlanError::InvalidSettings {
            name: self.name.clone(),
            error,
            hint: "",
        }
    }
}

impl Steps for Setting {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        let mut reads = vec![
            get(paths::POP),
            get(paths::service(&self.name)),
            get(paths::service_settings(&self.name)),
        ];
        if let Some(stored) = &self.stored_type {
            reads.extend(type_reads(stored));
        }
        reads
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        self.plan(got).unwrap_or_else(|e| Decision::Done(Err(e)))
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
    use crate::plan::testing::{Fate, Tree, GREETER};
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

    fn greeter_service(settings: &str) -> Tree {
        let mut tree = Tree::with_greeter();
        for (path, data) in [
            ("/services/s", ""),
            ("/services/s/machines", "[]"),
            ("/services/s/settings", settings),
            ("/services/s/state", ""),
        ] {
            tree.set(path, data);
        }
        tree
    }

    const GREETING: &str = "{\"type\":\"greeter\",\"greeting\":\"hi\",\"port\":0}";

    #[test]
    fn set_of_a_plugin_service_is_checked_against_its_stored_manifest() {
        let mut tree = greeter_service(GREETING);
        let outcome = tree.run(&mut set(&[], &["greeting"]));
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err("invalid settings for s: the command needs setting \"greeting\", which is not set (in run.command)".into())
        );
        assert!(tree.writes.is_empty());
        let outcome = tree.run(&mut set(&["greeting=howdy"], &[]));
        assert_eq!(outcome, Ok(Outcome::SettingsUpdated { name: "s".into() }));
        assert_eq!(settings(&tree)["greeting"], "howdy");
        assert!(GREETER.contains("{greeting}"));
    }

    #[test]
    fn set_of_a_service_whose_plugin_is_gone_says_the_type_is_unknown() {
        let mut tree = greeter_service(GREETING);
        tree.nodes.remove("/plugins/greeter");
        let outcome = tree.run(&mut set(&["greeting=howdy"], &[]));
        assert!(
            matches!(outcome, Err(PlanError::UnknownType { .. })),
            "{outcome:?}"
        );
        // Changing it to a type that exists is how it is mended.
        let outcome = tree.run(&mut set(&["type=command", "command=sleep 1"], &[]));
        assert_eq!(outcome, Ok(Outcome::SettingsUpdated { name: "s".into() }));
    }
}
