//! `pop add`: the service node, its settings, an empty machines list and the state
//! directory, created in one multi, so nobody ever sees half a service.

use super::engine::{exactly, Decision, Engine, Got, Refused, Steps};
use super::{get, require_namespace, Doing, Feedback, Outcome, Plan, PlanError, Step};
use crate::assignment::render_settings;
use crate::names::ServiceName;
use crate::paths;
use crate::settings::{ServiceType, Settings};
use crate::time::Timestamp;
use crate::zk::{CreateMode, ZkError, ZkOp, ZkReply};
use serde_json::{Map, Value};

pub struct Add(Engine<Adding>);

struct Adding {
    at: String,
    name: String,
    service_type: ServiceType,
    settings: Map<String, Value>,
    /// The settings node's data, as written.
    data: Vec<u8>,
    /// A create was sent whose outcome is unknown.
    in_doubt: bool,
}

impl Add {
    /// Refuses settings the agent would reject before anything is read.
    pub fn new(
        at: &str,
        name: &ServiceName,
        service_type: ServiceType,
        settings: Map<String, Value>,
    ) -> Result<Add, PlanError> {
        Settings::from_map(&settings).map_err(|error| PlanError::InvalidSettings {
            name: name.to_string(),
            error,
            hint: if service_type == ServiceType::Command {
                " (e.g. --set command='python3 -m http.server')"
            } else {
                ""
            },
        })?;
        Ok(Add(Engine::new(Adding {
            at: at.to_string(),
            name: name.to_string(),
            service_type,
            data: render_settings(settings.clone()),
            settings,
            in_doubt: false,
        })))
    }

    /// What the plan writes into the settings node.
    pub fn settings_data(&self) -> &[u8] {
        &self.0.steps.data
    }
}

impl Plan for Add {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

fn create(path: String, data: Vec<u8>) -> ZkOp {
    ZkOp::Create {
        path,
        data,
        mode: CreateMode::Persistent,
    }
}

impl Adding {
    fn added(&self) -> Outcome {
        Outcome::Added {
            name: self.name.clone(),
            service_type: self.service_type,
            settings: self.settings.clone(),
        }
    }
}

impl Steps for Adding {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        vec![
            get(paths::POP),
            get(paths::service(&self.name)),
            get(paths::service_settings(&self.name)),
        ]
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        let [pop, service, settings] = match exactly(got) {
            Ok(got) => got,
            Err(e) => return Decision::Done(Err(e)),
        };
        if let Err(e) = require_namespace(&self.at, &pop) {
            return Decision::Done(Err(e));
        }
        if service.exists() {
            // A multi is all or nothing: our settings there mean our create took effect.
            if self.in_doubt && settings.data() == Some(self.data.as_slice()) {
                return Decision::Done(Ok(self.added()));
            }
            return Decision::Done(Err(PlanError::ExistsAlready {
                name: self.name.clone(),
            }));
        }
        let name = &self.name;
        Decision::Write(ZkOp::Multi {
            ops: vec![
                create(paths::service(name), Vec::new()),
                create(paths::service_settings(name), self.data.clone()),
                create(paths::service_machines(name), b"[]".to_vec()),
                create(paths::service_state_dir(name), Vec::new()),
            ],
        })
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        Some(Ok(self.added()))
    }

    fn refused(&mut self, _now: Timestamp, path: &str, error: &ZkError) -> Refused<Outcome> {
        match error {
            // Created by someone else meanwhile: the next look says so.
            ZkError::NodeExists => Refused::Conflict,
            other => Refused::Done(Err(PlanError::Zk {
                doing: Doing::Writing,
                path: path.to_string(),
                error: other.clone(),
            })),
        }
    }

    fn in_doubt(&mut self) {
        self.in_doubt = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{Fate, Tree};
    use crate::plan::{Request, MAX_FAILURES};

    fn namespace() -> Tree {
        Tree::with(&[
            ("/pop", "{\"layout\":1}"),
            ("/machines", ""),
            ("/services", ""),
            ("/agents", ""),
        ])
    }

    fn echo() -> Add {
        let name = ServiceName::new("s").expect("a valid name");
        let settings = ServiceType::Echo.default_settings(Some(0));
        Add::new("zk", &name, ServiceType::Echo, settings).expect("valid settings")
    }

    fn is_write(request: &Request) -> bool {
        matches!(request, Request::Write(_))
    }

    #[test]
    fn adds_every_node_of_a_service_in_one_multi() {
        let mut tree = namespace();
        let mut plan = echo();
        let outcome = tree.run(&mut plan).expect("added");
        assert!(
            outcome.to_string().starts_with("added s (echo): {"),
            "{outcome}"
        );
        assert_eq!(tree.writes.len(), 1, "{:?}", tree.writes);
        assert!(tree.writes[0].starts_with("multi ["), "{:?}", tree.writes);
        assert_eq!(
            tree.data("/services/s/settings").map(str::as_bytes),
            Some(plan.settings_data())
        );
        assert_eq!(tree.data("/services/s/machines"), Some("[]"));
        assert_eq!(tree.data("/services/s/state"), Some(""));
    }

    #[test]
    fn add_whose_reply_was_lost_but_took_effect_reports_added() {
        let mut tree = namespace();
        let mut lost = false;
        let outcome = tree.run_with(&mut echo(), |_, request| {
            if is_write(request) && !lost {
                lost = true;
                return Fate::LoseReply;
            }
            Fate::Deliver
        });
        assert!(matches!(outcome, Ok(Outcome::Added { .. })), "{outcome:?}");
        assert_eq!(tree.writes.len(), 1, "written once: {:?}", tree.writes);
    }

    #[test]
    fn add_whose_request_was_lost_sends_it_again() {
        let mut tree = namespace();
        let mut lost = false;
        let outcome = tree.run_with(&mut echo(), |_, request| {
            if is_write(request) && !lost {
                lost = true;
                return Fate::LoseRequest;
            }
            Fate::Deliver
        });
        assert!(matches!(outcome, Ok(Outcome::Added { .. })), "{outcome:?}");
        assert_eq!(tree.writes.len(), 1, "{:?}", tree.writes);
    }

    #[test]
    fn add_in_doubt_finding_someone_elses_service_reports_it_exists() {
        let mut tree = namespace();
        let mut lost = false;
        let outcome = tree.run_with(&mut echo(), |tree, request| {
            if is_write(request) && !lost {
                lost = true;
                // Another `pop add` of the same name, with other settings, got there first.
                for (path, data) in [
                    ("/services/s", ""),
                    ("/services/s/settings", "{\"type\":\"echo\",\"port\":7}"),
                    ("/services/s/machines", "[]"),
                    ("/services/s/state", ""),
                ] {
                    tree.set(path, data);
                }
                return Fate::LoseRequest;
            }
            Fate::Deliver
        });
        assert_eq!(outcome, Err(PlanError::ExistsAlready { name: "s".into() }));
        assert_eq!(
            tree.data("/services/s/settings"),
            Some("{\"type\":\"echo\",\"port\":7}"),
            "the other writer's settings stay"
        );
    }

    #[test]
    fn add_racing_another_add_reports_it_exists_and_keeps_the_other() {
        let mut tree = namespace();
        let outcome = tree.run_with(&mut echo(), |tree, request| {
            if is_write(request) && tree.data("/services/s").is_none() {
                tree.set("/services/s", "");
                tree.set("/services/s/settings", "{\"type\":\"echo\"}");
            }
            Fate::Deliver
        });
        assert_eq!(outcome, Err(PlanError::ExistsAlready { name: "s".into() }));
        assert_eq!(
            tree.data("/services/s/settings"),
            Some("{\"type\":\"echo\"}")
        );
        assert!(tree.writes.is_empty(), "{:?}", tree.writes);
    }

    #[test]
    fn add_that_loses_its_connection_after_its_create_says_it_may_have_taken_effect() {
        let mut tree = namespace();
        let outcome = tree.run_with(&mut echo(), |tree, request| {
            if is_write(request) {
                return Fate::LoseReply;
            }
            // Once the create is in, the connection is gone for good.
            if tree.writes.is_empty() {
                Fate::Deliver
            } else {
                Fate::LoseRequest
            }
        });
        let error = outcome.expect_err("gave up");
        assert!(
            matches!(
                error,
                PlanError::GaveUp {
                    write_in_doubt: true,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("may or may not have taken effect"),
            "{error}"
        );
    }

    #[test]
    fn add_refuses_an_existing_service_and_writes_nothing() {
        let mut tree = Tree::with_service("[]", "{}");
        let outcome = tree.run(&mut echo());
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err("a service named \"s\" exists already (`pop remove s` first, or pick another --name)".into())
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn add_without_a_namespace_says_to_run_init() {
        let mut tree = Tree::with(&[("/services", "")]);
        let outcome = tree.run(&mut echo());
        assert_eq!(
            outcome,
            Err(PlanError::NamespaceMissing { at: "zk".into() })
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn add_refuses_settings_the_agent_would_reject_before_reading() {
        let name = ServiceName::new("web").expect("a valid name");
        let settings = ServiceType::Command.default_settings(None);
        let refused = Add::new("zk", &name, ServiceType::Command, settings).err();
        assert_eq!(
            refused.map(|e| e.to_string()),
            Some("invalid settings for web: setting \"command\" is required for type \"command\" (e.g. --set command='python3 -m http.server')".into())
        );
    }

    #[test]
    fn add_gives_up_on_a_dead_connection_naming_the_path() {
        let mut tree = namespace();
        let outcome = tree.run_with(&mut echo(), |_, _| Fate::LoseRequest);
        assert_eq!(
            outcome,
            Err(PlanError::GaveUp {
                doing: Doing::Reading,
                path: "/pop".into(),
                error: ZkError::Timeout,
                attempts: MAX_FAILURES + 1,
                write_in_doubt: false,
            })
        );
    }
}
