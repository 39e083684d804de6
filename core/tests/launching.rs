//! The agent launches from manifests and from Python environments: one agent against a
//! small in-test ZooKeeper (a map of nodes answering its reads), whose processes and
//! environment builds the tests report by hand. Every input is also checked with
//! `Agent::audit`, as the simulator does.

mod common;

use pop_core::agent::{EnvironmentState, TaskLaunchError};
use pop_core::event::{Action, ExitStatus, Input, Report};
use pop_core::launch::Launch;
use pop_core::names::TaskName;
use pop_core::paths;
use pop_core::plugin::builtin;
use pop_core::published::{AgentReport, Phase};
use pop_core::zk::{
    NodeStat, SessionEvent, SessionId, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply,
};
use pop_core::{Agent, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// The stored type of these tests: the command type under another name.
fn tool(version: u8) -> String {
    let text = builtin::text("command")
        .expect("built in")
        .replace("name = \"command\"", "name = \"tool\"");
    match version {
        0 => text,
        1 => text.replace("\"{command}\"]", "\"exec {command}\"]"),
        _ => text.replace(
            "description = \"runs the command setting with sh -c\"",
            "description = \"another description\"",
        ),
    }
}

struct Rig {
    agent: Agent,
    now: u64,
    nodes: BTreeMap<String, Vec<u8>>,
    zxid: i64,
    next_pid: u32,
    /// Every action since the last `take`.
    seen: Vec<Action>,
    /// Spawned and not exited: (service, generation) -> launch.
    running: BTreeMap<(String, u64), Launch>,
}

impl Rig {
    fn new() -> Rig {
        let agent = Agent::new(common::config("m1", 1, Default::default()));
        let mut rig = Rig {
            agent,
            now: 1_000_000,
            nodes: BTreeMap::new(),
            zxid: 10,
            next_pid: 100,
            seen: Vec::new(),
            running: BTreeMap::new(),
        };
        for path in paths::NAMESPACE {
            rig.nodes.insert(path.to_string(), Vec::new());
        }
        // Another machine's agent keeps the index: this one only follows its own.
        rig.nodes.insert(paths::KEEPER.to_string(), b"m9".to_vec());
        rig.feed(Input::Session(SessionEvent::Connected {
            session: SessionId(1),
            timeout: Duration::from_secs(4),
        }));
        rig
    }

    /// Feeds an input, answers every read and write it causes (at once, in order), and
    /// acknowledges spawns, until the agent asks nothing more.
    fn feed(&mut self, input: Input) {
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            self.now += 1;
            self.agent.handle(Timestamp::from_millis(self.now), input);
            self.agent
                .audit()
                .expect("the agent's bookkeeping is exact");
            for action in self.agent.drain_actions() {
                match &action {
                    Action::Zk { id, op } => {
                        let reply = self.answer(op);
                        queue.insert(0, Input::Reply { id: *id, reply });
                    }
                    Action::Spawn {
                        service,
                        generation,
                        launch,
                        ..
                    } => {
                        self.next_pid += 1;
                        self.running
                            .insert((service.clone(), *generation), launch.clone());
                        queue.insert(
                            0,
                            Input::Spawned {
                                service: service.clone(),
                                generation: *generation,
                                pid: self.next_pid,
                            },
                        );
                    }
                    Action::Stop {
                        service,
                        generation,
                        ..
                    } => {
                        self.running.remove(&(service.clone(), *generation));
                        queue.insert(
                            0,
                            Input::Exited {
                                service: service.clone(),
                                generation: *generation,
                                status: ExitStatus {
                                    code: None,
                                    signal: Some(15),
                                },
                            },
                        );
                    }
                    _ => {}
                }
                self.seen.push(action);
            }
        }
    }

    fn answer(&mut self, op: &ZkOp) -> ZkReply {
        let stat = |zxid: i64| NodeStat {
            version: 0,
            ephemeral_owner: 0,
            mzxid: zxid,
            pzxid: zxid,
        };
        match op {
            ZkOp::GetData { path, .. } => match self.nodes.get(path) {
                Some(data) => ZkReply::Data {
                    data: data.clone(),
                    stat: stat(self.zxid),
                },
                None => ZkReply::Error(ZkError::NoNode),
            },
            ZkOp::GetChildren { path, .. } => {
                let prefix = format!("{path}/");
                let names = self
                    .nodes
                    .keys()
                    .filter_map(|p| p.strip_prefix(&prefix))
                    .filter(|rest| !rest.contains('/'))
                    .map(str::to_string)
                    .collect();
                ZkReply::Children {
                    names,
                    stat: stat(self.zxid),
                }
            }
            ZkOp::Create { path, .. } if self.nodes.contains_key(path) => {
                ZkReply::Error(ZkError::NodeExists)
            }
            ZkOp::Create { path, data, .. } => {
                self.nodes.insert(path.clone(), data.clone());
                ZkReply::Created
            }
            ZkOp::SetData { path, data, .. } => {
                self.nodes.insert(path.clone(), data.clone());
                ZkReply::Set {
                    stat: stat(self.zxid),
                }
            }
            ZkOp::Delete { path, .. } => {
                self.nodes.remove(path);
                ZkReply::Deleted
            }
            ZkOp::Multi { .. } | ZkOp::Check { .. } => {
                ZkReply::Error(ZkError::Other("no multis".into()))
            }
            ZkOp::SetAcl { .. } => ZkReply::Error(ZkError::Other("no ACLs".into())),
            // As a server before 3.6: the agent watches each pid node itself.
            ZkOp::WatchTree { .. } => ZkReply::Error(ZkError::Other("unimplemented".into())),
        }
    }

    /// Writes (or, with `None`, deletes) a node as an operator would, and tells the agent.
    fn put(&mut self, path: &str, data: Option<&str>) {
        self.zxid += 1;
        let existed = self.nodes.contains_key(path);
        let kind = match data {
            Some(data) => {
                self.nodes
                    .insert(path.to_string(), data.as_bytes().to_vec());
                if existed {
                    WatchKind::DataChanged
                } else {
                    WatchKind::Created
                }
            }
            None => {
                self.nodes.remove(path);
                WatchKind::Deleted
            }
        };
        if existed || data.is_none() {
            self.feed(Input::Watch(WatchEvent {
                path: path.to_string(),
                kind,
            }));
        }
        if let Some(parent) = paths::parent(path) {
            if existed != self.nodes.contains_key(path) {
                self.feed(Input::Watch(WatchEvent {
                    path: parent.to_string(),
                    kind: WatchKind::ChildrenChanged,
                }));
            }
        }
    }

    /// Adds a service deployed on this machine.
    fn add(&mut self, service: &str, settings: &str) {
        self.put(&paths::service_settings(service), Some(settings));
        self.put(&paths::service_machines(service), Some(r#"["m1"]"#));
        self.put(&paths::service(service), Some(""));
        self.put(&paths::assignment("m1", service), Some(""));
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.seen)
    }

    fn advance(&mut self, by: Duration) {
        self.now += by.as_millis() as u64;
        self.feed(Input::Tick);
    }

    fn launch_of(&self, service: &str) -> Option<&Launch> {
        self.running
            .iter()
            .find(|((s, _), _)| s == service)
            .map(|(_, launch)| launch)
    }

    fn report(&self) -> AgentReport {
        let data = self.nodes.get(&paths::agent("m1")).expect("an agent node");
        AgentReport::parse(data).expect("a readable report")
    }
}

fn spawns(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Spawn { .. }))
        .count()
}

fn stops(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Stop { .. }))
        .count()
}

fn reads_of(actions: &[Action], path: &str) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Zk { op: ZkOp::GetData { path: p, .. }, .. } if p == path))
        .count()
}

const TOOL_SERVICE: &str = r#"{"type":"tool","command":"serve","start_seconds":0.1}"#;

#[test]
fn a_service_of_a_stored_type_starts_once_its_manifest_is_read_and_as_it_says() {
    let mut rig = Rig::new();
    rig.put(&paths::plugin("tool"), Some(&tool(0)));
    rig.take();
    rig.add("web", TOOL_SERVICE);
    let actions = rig.take();
    assert_eq!(reads_of(&actions, "/plugins/tool"), 1, "{actions:?}");
    assert_eq!(spawns(&actions), 1);
    let launch = rig.launch_of("web").expect("running");
    assert_eq!(launch.argv, ["/bin/sh", "-c", "serve"]);
    assert_eq!(launch.cwd, "/var/lib/pop/work/web");
    assert!(rig.agent.is_watching("/plugins/tool"));
    assert_eq!(
        rig.agent.manifest_of("web").map(|m| m.name.to_string()),
        Some("tool".to_string())
    );
}

#[test]
fn a_stored_type_is_read_only_while_a_service_wanted_here_has_it() {
    let mut rig = Rig::new();
    rig.put(&paths::plugin("tool"), Some(&tool(0)));
    rig.put(&paths::service_settings("web"), Some(TOOL_SERVICE));
    rig.put(&paths::service_machines("web"), Some(r#"["m2"]"#));
    rig.put(&paths::service("web"), Some(""));
    let actions = rig.take();
    assert_eq!(reads_of(&actions, "/plugins/tool"), 0, "not wanted here");
    assert!(rig.agent.stored_types().is_empty());
    // Deployed here, as `pop deploy` does it: the list and the index entry.
    rig.put(&paths::service_machines("web"), Some(r#"["m1"]"#));
    rig.put(&paths::assignment("m1", "web"), Some(""));
    assert_eq!(reads_of(&rig.take(), "/plugins/tool"), 1);
    assert_eq!(rig.agent.stored_types(), ["tool"]);
    rig.put(&paths::service_machines("web"), Some(r#"["m2"]"#));
    rig.put(&paths::assignment("m1", "web"), None);
    assert!(rig.agent.stored_types().is_empty(), "forgotten");
    // Its watch fires once more; the agent does not read it again.
    rig.take();
    rig.put(&paths::plugin("tool"), Some(&tool(1)));
    assert_eq!(reads_of(&rig.take(), "/plugins/tool"), 0);
}

#[test]
fn a_manifest_change_restarts_its_services_only_when_what_they_launch_changes() {
    let mut rig = Rig::new();
    rig.put(&paths::plugin("tool"), Some(&tool(0)));
    rig.add("a", TOOL_SERVICE);
    rig.add("b", TOOL_SERVICE);
    rig.add("c", r#"{"type":"command","command":"serve"}"#);
    rig.take();
    rig.put(&paths::plugin("tool"), Some(&tool(2)));
    let actions = rig.take();
    assert_eq!(spawns(&actions) + stops(&actions), 0, "description only");
    rig.put(&paths::plugin("tool"), Some(&tool(1)));
    let actions = rig.take();
    assert_eq!(stops(&actions), 2, "a and b, not c: {actions:?}");
    assert_eq!(spawns(&actions), 2);
    assert_eq!(
        rig.launch_of("a").map(|l| l.argv.clone()),
        Some(vec!["/bin/sh".into(), "-c".into(), "exec serve".into()])
    );
}

#[test]
fn garbage_or_a_removed_manifest_keeps_services_running_with_the_last_good_one() {
    let mut rig = Rig::new();
    rig.put(&paths::plugin("tool"), Some(&tool(0)));
    rig.add("a", TOOL_SERVICE);
    rig.take();
    rig.put(&paths::plugin("tool"), Some("name = \"tool\"\n[run"));
    let actions = rig.take();
    assert_eq!(spawns(&actions) + stops(&actions), 0);
    let problem = rig.agent.problems().get("/plugins/tool").cloned();
    assert!(
        problem
            .as_deref()
            .is_some_and(|p| p.starts_with("/plugins/tool line 2") && p.contains("keep running")),
        "{problem:?}"
    );
    rig.put(&paths::plugin("tool"), None);
    let actions = rig.take();
    assert_eq!(spawns(&actions) + stops(&actions), 0);
    assert_eq!(
        rig.agent.problems().get("/plugins/tool").map(String::as_str),
        Some("plugin tool was removed; services of this type keep running with the last manifest read")
    );
    // A crash restarts it with the last manifest read.
    let generation = rig.running.keys().next().expect("runs").1;
    rig.running.clear();
    rig.feed(Input::Exited {
        service: "a".into(),
        generation,
        status: ExitStatus {
            code: Some(1),
            signal: None,
        },
    });
    rig.advance(Duration::from_secs(5));
    assert!(rig.launch_of("a").is_some(), "restarted");
    // Added again: the problem goes; the children watch on /plugins told of it.
    rig.put(&paths::plugin("tool"), Some(&tool(0)));
    assert_eq!(rig.agent.problems().get("/plugins/tool"), None);
}

#[test]
fn a_service_whose_type_was_never_valid_waits_and_says_why() {
    let mut rig = Rig::new();
    rig.add("a", TOOL_SERVICE);
    let actions = rig.take();
    assert_eq!(spawns(&actions), 0);
    let report = rig.report();
    let a = report.services.get("a").expect("listed");
    assert_eq!(a.phase, Phase::Waiting);
    assert_eq!(
        a.problem.as_deref(),
        Some(
            "unknown service type \"tool\": not a built-in type, and /plugins/tool does not exist"
        )
    );
    assert_eq!(report.phases.waiting, 1);
    // Garbage is no better.
    rig.put(&paths::plugin("tool"), Some("[run"));
    assert_eq!(spawns(&rig.take()), 0);
    rig.put(&paths::plugin("tool"), Some(&tool(0)));
    assert_eq!(spawns(&rig.take()), 1);
    rig.advance(Duration::from_secs(1));
    assert!(
        !rig.report().services.contains_key("a"),
        "running as it should"
    );
}

#[test]
fn settings_a_command_cannot_be_made_from_hold_the_running_process() {
    let mut rig = Rig::new();
    rig.add(
        "a",
        r#"{"type":"command","command":"serve","start_seconds":0.1}"#,
    );
    rig.take();
    rig.put(
        &paths::service_settings("a"),
        Some(r#"{"type":"command","start_seconds":0.1}"#),
    );
    let actions = rig.take();
    assert_eq!(spawns(&actions) + stops(&actions), 0, "{actions:?}");
    let report = rig.agent.service_report("a").expect("known");
    assert_eq!(
        report.problem.as_deref(),
        Some("cannot launch it: the command needs setting \"command\", which is not set (in run.command)")
    );
}

const PYTHON_SERVICE: &str =
    r#"{"type":"python","module":"app","script":"","packages":["b==1","a"],"start_seconds":0.1}"#;

fn built(rig: &mut Rig, service: &str, result: Result<(), String>) {
    let hash = rig
        .take()
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::BuildEnvironment {
                service: s, spec, ..
            } if s == service => Some(spec.hash()),
            _ => None,
        })
        .expect("a build was asked for");
    rig.feed(Input::EnvironmentBuilt {
        service: service.into(),
        spec_hash: hash,
        result,
    });
}

#[test]
fn a_python_service_starts_once_its_environment_is_built_and_runs_from_it() {
    let mut rig = Rig::new();
    rig.add("app", PYTHON_SERVICE);
    let actions = rig.take();
    assert_eq!(spawns(&actions), 0);
    let (spec, dir) = actions
        .iter()
        .find_map(|a| match a {
            Action::BuildEnvironment { spec, dir, .. } => Some((spec.clone(), dir.clone())),
            _ => None,
        })
        .expect("a build");
    assert_eq!(spec.packages, ["a", "b==1"]);
    assert_eq!(dir, format!("/var/lib/pop/env/app/{}", spec.hash()));
    let view = rig.agent.environment("app").expect("a python service");
    assert_eq!(view.state, EnvironmentState::Building);
    rig.seen = actions;
    built(&mut rig, "app", Ok(()));
    let launch = rig.launch_of("app").expect("running");
    assert_eq!(launch.argv[0], format!("{dir}/bin/python"));
    assert_eq!(launch.env["VIRTUAL_ENV"], dir);
    assert_eq!(launch.path_prepend, [format!("{dir}/bin")]);
    assert_eq!(
        rig.agent.environment("app").map(|v| v.state),
        Some(EnvironmentState::Ready)
    );
}

#[test]
fn new_packages_are_built_beside_the_running_process_which_restarts_once_they_are_ready() {
    let mut rig = Rig::new();
    rig.add("app", PYTHON_SERVICE);
    built(&mut rig, "app", Ok(()));
    let old = rig.launch_of("app").cloned().expect("running");
    rig.put(
        &paths::service_settings("app"),
        Some(r#"{"type":"python","module":"app","script":"","packages":["a","b==2"],"start_seconds":0.1}"#),
    );
    let actions = rig.take();
    assert_eq!(
        stops(&actions),
        0,
        "keeps running while it builds: {actions:?}"
    );
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::BuildEnvironment { .. })));
    assert_eq!(rig.launch_of("app"), Some(&old));
    rig.seen = actions;
    built(&mut rig, "app", Ok(()));
    let actions = rig.take();
    assert_eq!(stops(&actions), 1);
    let new = rig.launch_of("app").cloned().expect("running again");
    assert_ne!(new.env["VIRTUAL_ENV"], old.env["VIRTUAL_ENV"]);
    // The old environment goes, once nothing runs from it.
    let keep = actions.iter().find_map(|a| match a {
        Action::RemoveEnvironments { keep, .. } => Some(keep.clone()),
        _ => None,
    });
    let new_hash = new.env["VIRTUAL_ENV"]
        .rsplit('/')
        .next()
        .map(str::to_string);
    assert_eq!(keep, new_hash.map(|h| vec![h]));
}

#[test]
fn a_failed_build_keeps_the_running_process_reports_it_and_is_tried_again_later() {
    let mut rig = Rig::new();
    rig.add("app", PYTHON_SERVICE);
    built(&mut rig, "app", Ok(()));
    rig.advance(Duration::from_secs(1));
    let old = rig.launch_of("app").cloned().expect("running");
    rig.put(
        &paths::service_settings("app"),
        Some(r#"{"type":"python","module":"app","script":"","packages":["nope"],"start_seconds":0.1}"#),
    );
    built(
        &mut rig,
        "app",
        Err("pip install (exit code 1): no nope".into()),
    );
    let actions = rig.take();
    assert_eq!(stops(&actions) + spawns(&actions), 0);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Report(Report::EnvironmentFailed { .. }))));
    assert_eq!(rig.launch_of("app"), Some(&old));
    let report = rig.report();
    let app = report
        .services
        .get("app")
        .expect("listed: it needs attention");
    assert_eq!(app.phase, Phase::Running);
    assert_eq!(
        app.problem.as_deref(),
        Some("building its Python environment failed: pip install (exit code 1): no nope")
    );
    rig.advance(Duration::from_secs(60));
    assert!(!rig
        .take()
        .iter()
        .any(|a| matches!(a, Action::BuildEnvironment { .. })));
    rig.advance(Duration::from_secs(300));
    assert!(rig
        .take()
        .iter()
        .any(|a| matches!(a, Action::BuildEnvironment { .. })));
}

#[test]
fn an_adopted_process_is_restarted_when_what_it_was_launched_with_changed_meanwhile() {
    let settings = r#"{"type":"tool","command":"serve","start_seconds":0.1}"#;
    for (recorded, restarted) in [(0, false), (1, true)] {
        // What an earlier agent launched, with the manifest it had then.
        let mut earlier = Rig::new();
        earlier.put(&paths::plugin("tool"), Some(&tool(recorded)));
        earlier.add("a", settings);
        let launch = earlier.launch_of("a").cloned().expect("running");
        // Now the manifest is version 0; the next agent adopts the process.
        let mut rig = Rig::new();
        rig.put(&paths::plugin("tool"), Some(&tool(0)));
        rig.add("a", settings);
        let mut next = Rig::new();
        next.nodes = rig.nodes.clone();
        next.agent = Agent::new(rig.agent.config().clone());
        next.feed(Input::Adopted {
            service: "a".into(),
            generation: 3,
            pid: 4242,
            started_at: Timestamp::from_millis(1),
            port: None,
            settings: pop_core::settings::Settings::parse(settings.as_bytes()).expect("valid"),
            launch: Some(Box::new(launch.clone())),
        });
        next.running.insert(("a".into(), 3), launch);
        next.take();
        next.feed(Input::Session(SessionEvent::Connected {
            session: SessionId(2),
            timeout: Duration::from_secs(4),
        }));
        let actions = next.take();
        assert_eq!(stops(&actions) == 1, restarted, "{recorded}: {actions:?}");
        assert_eq!(spawns(&actions) == 1, restarted, "{recorded}: {actions:?}");
    }
}

#[test]
fn a_task_launches_in_the_service_directory_and_environment() {
    let mut rig = Rig::new();
    let text = r#"
name = "greeter"
environment = "python"
[settings]
greeting = "hello"
packages = []
[run]
command = ["{python}", "-m", "http.server"]
[tasks.hello]
command = ["{python}", "-c", "print('{greeting}')", "{args}"]
"#;
    rig.put(&paths::plugin("greeter"), Some(text));
    rig.add(
        "g",
        r#"{"type":"greeter","greeting":"hi","start_seconds":0.1}"#,
    );
    let hello = TaskName::new("hello").expect("a name");
    let err = rig
        .agent
        .task_launch("g", &hello, &[])
        .expect_err("not built");
    assert!(
        matches!(err, TaskLaunchError::EnvironmentNotReady { .. }),
        "{err:?}"
    );
    built(&mut rig, "g", Ok(()));
    let launch = rig
        .agent
        .task_launch("g", &hello, &["x".into()])
        .expect("renders");
    let dir = rig.agent.environment("g").expect("python").dir;
    assert_eq!(
        launch.argv,
        [
            format!("{dir}/bin/python"),
            "-c".into(),
            "print('hi')".into(),
            "x".into()
        ]
    );
    assert_eq!(launch.cwd, "/var/lib/pop/work/g");
    assert_eq!(launch.env["VIRTUAL_ENV"], dir);
    let nope = TaskName::new("nope").expect("a name");
    assert!(rig.agent.task_launch("g", &nope, &[]).is_err());
}
