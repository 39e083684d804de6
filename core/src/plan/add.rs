//! `pop add`: the service node, its settings, an empty machines list, the state
//! directory and the tasks container, created in one multi, so nobody ever sees half a
//! service. The settings are the type's defaults (its manifest: built in, or read from
//! `/plugins/<type>`), then `--port`, then `--set`.

use super::engine::{exactly, Decision, Engine, Got, Refused, Steps};
use super::plugins::{resolve, type_reads};
use super::{get, require_namespace, Doing, Feedback, Outcome, Plan, PlanError, Step};
use crate::access::Access;
use crate::assignment::render_settings;
use crate::names::{PluginName, ServiceName};
use crate::paths;
use crate::plugin::{builtin, Manifest, SettingsError};
use crate::time::Timestamp;
use crate::zk::{CreateMode, ZkError, ZkOp, ZkReply};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// What `pop add` was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct AddRequest {
    pub service_type: String,
    pub port: Option<u16>,
    /// `--set KEY=VALUE`, in order.
    pub set: Vec<(String, Value)>,
}

pub struct Add(Engine<Adding>);

struct Adding {
    at: String,
    name: String,
    service_type: PluginName,
    request: AddRequest,
    /// The settings for a built-in type, decided before anything is read.
    builtin: Option<Settled>,
    /// The settings node's data last sent.
    written: Option<Settled>,
    /// A create was sent whose outcome is unknown.
    in_doubt: bool,
    access: Access,
}

/// Settings decided on, and the settings node's data they make.
#[derive(Debug, Clone)]
struct Settled {
    settings: Map<String, Value>,
    data: Vec<u8>,
}

/// The settings `request` gives a service of this type, checked against its manifest.
fn settle(name: &str, manifest: &Manifest, request: &AddRequest) -> Result<Settled, PlanError> {
    let invalid = |error: SettingsError| PlanError::InvalidSettings {
        name: name.to_string(),
        error,
        hint: if manifest.name.as_str() == "command" {
            " (e.g. --set command='python3 -m http.server')"
        } else {
            ""
        },
    };
    let mut settings = manifest.default_settings(request.port);
    for (key, value) in &request.set {
        settings.insert(key.clone(), value.clone());
    }
    let type_name = Value::from(manifest.name.as_str());
    if settings.get("type") != Some(&type_name) {
        return Err(invalid(SettingsError::TypeChanged {
            service_type: manifest.name.to_string(),
        }));
    }
    manifest.check_settings(&settings).map_err(invalid)?;
    Ok(Settled {
        data: render_settings(settings.clone()),
        settings,
    })
}

impl Add {
    /// Refuses a type that cannot be one, and settings a built-in type would reject,
    /// before anything is read.
    pub fn new(at: &str, name: &ServiceName, request: AddRequest) -> Result<Add, PlanError> {
        let service_type =
            PluginName::new(&request.service_type).map_err(PlanError::InvalidTypeName)?;
        let builtin = match builtin::manifest(service_type.as_str()) {
            Some(manifest) => Some(settle(name.as_str(), &manifest, &request)?),
            None => None,
        };
        Ok(Add(Engine::new(Adding {
            at: at.to_string(),
            name: name.to_string(),
            service_type,
            request,
            builtin,
            written: None,
            in_doubt: false,
            access: Access::Open,
        })))
    }

    /// The ACLs of a secured namespace for what it creates.
    pub fn with_access(mut self, access: Access) -> Add {
        self.0.steps.access = access;
        self
    }

    /// What the plan writes into the settings node, when known before reading (a
    /// built-in type).
    pub fn settings_data(&self) -> Option<&[u8]> {
        self.0.steps.builtin.as_ref().map(|s| s.data.as_slice())
    }
}

impl Plan for Add {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        self.0.next(now, feedback)
    }
}

/// A persistent node with the ACL `access` gives its path (nobody is deployed yet).
fn create(access: &Access, path: String, data: Vec<u8>) -> ZkOp {
    ZkOp::Create {
        acl: access.acl(&path, &BTreeSet::new()),
        path,
        data,
        mode: CreateMode::Persistent,
    }
}

impl Adding {
    fn added(&self, settled: &Settled) -> Outcome {
        Outcome::Added {
            name: self.name.clone(),
            service_type: self.service_type.to_string(),
            settings: settled.settings.clone(),
        }
    }

    fn plan(&mut self, mut got: Vec<Got>) -> Result<Decision<Outcome>, PlanError> {
        let type_got = got.split_off(got.len().min(3));
        let [pop, service, settings] = exactly(got)?;
        // A multi is all or nothing: our settings there mean our create took effect,
        // whatever else has happened since (the marker may be read gone while another
        // terminal's `init --force` deletes the namespace around it).
        if let Some(written) = self.written.as_ref().filter(|_| self.in_doubt) {
            if service.exists() && settings.data() == Some(written.data.as_slice()) {
                return Ok(Decision::Done(Ok(self.added(written))));
            }
        }
        require_namespace(&self.at, &pop)?;
        if service.exists() {
            return Err(PlanError::ExistsAlready {
                name: self.name.clone(),
            });
        }
        let settled = match &self.builtin {
            Some(settled) => settled.clone(),
            None => {
                let manifest = resolve(&self.service_type, &type_got)?;
                settle(&self.name, &manifest, &self.request)?
            }
        };
        let name = &self.name;
        let write = ZkOp::Multi {
            ops: vec![
                create(&self.access, paths::service(name), Vec::new()),
                create(
                    &self.access,
                    paths::service_settings(name),
                    settled.data.clone(),
                ),
                create(&self.access, paths::service_machines(name), b"[]".to_vec()),
                create(&self.access, paths::service_state_dir(name), Vec::new()),
                create(&self.access, paths::service_tasks(name), Vec::new()),
            ],
        };
        self.written = Some(settled);
        Ok(Decision::Write(write))
    }
}

impl Steps for Adding {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        let mut reads = vec![
            get(paths::POP),
            get(paths::service(&self.name)),
            get(paths::service_settings(&self.name)),
        ];
        reads.extend(type_reads(&self.service_type));
        reads
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        self.plan(got).unwrap_or_else(|e| Decision::Done(Err(e)))
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        let written = self.written.as_ref()?;
        Some(Ok(self.added(written)))
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
    use crate::plan::testing::GREETER;
    use crate::plan::testing::{Fate, Tree};
    use crate::plan::{Request, MAX_FAILURES};
    use serde_json::json;

    fn namespace() -> Tree {
        Tree::with(&[
            ("/pop", "{\"layout\":1}"),
            ("/machines", ""),
            ("/services", ""),
            ("/agents", ""),
        ])
    }

    fn request(service_type: &str, set: &[(&str, Value)]) -> AddRequest {
        AddRequest {
            service_type: service_type.into(),
            port: None,
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    fn echo() -> Add {
        let name = ServiceName::new("s").expect("a valid name");
        Add::new("zk", &name, request("echo", &[])).expect("valid settings")
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
            plan.settings_data()
        );
        assert_eq!(tree.data("/services/s/machines"), Some("[]"));
        assert_eq!(tree.data("/services/s/state"), Some(""));
        assert_eq!(tree.data("/services/s/tasks"), Some(""));
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

    /// Found by the simulator (7 machines, seed 4): the marker read gone while our
    /// service was still there (another terminal's `init --force` was deleting the
    /// namespace) made an add that took effect report "no pop namespace".
    #[test]
    fn add_in_doubt_finding_its_service_reports_added_even_if_the_marker_is_gone() {
        let mut tree = namespace();
        let mut wrote = false;
        let outcome = tree.run_with(&mut echo(), |tree, request| {
            if is_write(request) && !wrote {
                wrote = true;
                return Fate::LoseReply;
            }
            if wrote {
                tree.apply(&ZkOp::Delete {
                    path: "/pop".into(),
                    version: None,
                });
            }
            Fate::Deliver
        });
        assert!(matches!(outcome, Ok(Outcome::Added { .. })), "{outcome:?}");
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
        let refused = Add::new("zk", &name, request("command", &[])).err();
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

    fn greeter(set: &[(&str, Value)], port: Option<u16>) -> Add {
        let name = ServiceName::new("g").expect("a valid name");
        let mut request = request("greeter", set);
        request.port = port;
        Add::new("zk", &name, request).expect("a type that may exist")
    }

    fn settings(tree: &Tree, name: &str) -> Value {
        let data = tree
            .data(&format!("/services/{name}/settings"))
            .expect("settings written");
        serde_json::from_str(data).expect("JSON settings")
    }

    #[test]
    fn add_of_a_stored_plugin_writes_its_defaults_then_port_then_set() {
        let mut tree = Tree::with_greeter();
        let mut plan = greeter(&[("greeting", json!("hi"))], Some(7000));
        assert_eq!(plan.settings_data(), None, "known once the plugin is read");
        let outcome = tree.run(&mut plan).expect("added");
        assert!(
            outcome.to_string().starts_with("added g (greeter): {"),
            "{outcome}"
        );
        assert_eq!(
            settings(&tree, "g"),
            json!({
                "type": "greeter", "greeting": "hi", "port": 7000,
                "restart": "always", "stop_timeout": 10, "start_seconds": 1
            })
        );
    }

    #[test]
    fn add_of_builtin_command_and_echo_writes_what_it_always_wrote() {
        let common = json!({"restart": "always", "stop_timeout": 10, "start_seconds": 1});
        for (service_type, set, written) in [
            (
                "echo",
                vec![],
                json!({"type": "echo", "host": "127.0.0.1", "port": 8080}),
            ),
            (
                "command",
                vec![("command", json!("sleep 1"))],
                json!({"type": "command", "command": "sleep 1", "port": 8080}),
            ),
        ] {
            let mut tree = namespace();
            let name = ServiceName::new("s").expect("a valid name");
            let mut request = request(service_type, &set);
            request.port = Some(8080);
            tree.run(&mut Add::new("zk", &name, request).expect("valid"))
                .expect("added");
            let mut expected = common.clone();
            if let (Value::Object(expected), Value::Object(written)) = (&mut expected, written) {
                expected.extend(written);
            }
            assert_eq!(settings(&tree, "s"), expected);
        }
    }

    #[test]
    fn add_of_an_unknown_type_lists_the_builtin_and_stored_ones_and_writes_nothing() {
        let mut tree = Tree::with_greeter();
        let name = ServiceName::new("s").expect("a valid name");
        let mut plan = Add::new("zk", &name, request("nope", &[])).expect("may exist");
        assert_eq!(
            tree.run(&mut plan).map_err(|e| e.to_string()),
            Err(
                "unknown service type \"nope\" (known types: command, echo, greeter, http, python)"
                    .into()
            )
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn add_of_a_type_whose_stored_manifest_is_invalid_names_its_problem() {
        let mut tree = Tree::with_greeter();
        tree.set(
            "/plugins/greeter",
            "name = \"greeter\"\n[run]\ncommand = 5\n",
        );
        let outcome = tree.run(&mut greeter(&[], None));
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err("/plugins/greeter line 3: run.command: expected a non-empty list of strings (the argv); replace it with `pop plugin add --replace <file>`".into())
        );
        tree.set(
            "/plugins/greeter",
            &GREETER.replace("\"greeter\"", "\"other\""),
        );
        let outcome = tree.run(&mut greeter(&[], None));
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err("/plugins/greeter: name: the manifest is named \"other\", not after its node; replace it with `pop plugin add --replace <file>`".into())
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn add_refuses_a_value_a_plugin_command_needs_but_lacks() {
        let mut tree = Tree::with_greeter();
        let outcome = tree.run(&mut greeter(&[("greeting", Value::Null)], None));
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err("invalid settings for g: the command needs setting \"greeting\", which is not set (in run.command)".into())
        );
        assert!(tree.writes.is_empty());
    }

    #[test]
    fn add_refuses_a_set_of_another_type() {
        let name = ServiceName::new("s").expect("a valid name");
        let refused = Add::new("zk", &name, request("echo", &[("type", json!("command"))])).err();
        assert_eq!(
            refused.map(|e| e.to_string()),
            Some("invalid settings for s: setting \"type\" is the service's type, \"echo\"; `pop add <type>` sets it".into())
        );
    }
}
