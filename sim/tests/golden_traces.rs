//! Golden traces: what the real core hears and does, one line per input and action in
//! simulated time, for the canonical scenarios. A change in behaviour shows up as a
//! snapshot diff a reviewer reads (`cargo insta review`), not as a silent drift.
//!
//! The lines come from the agent's journal, the very records `pop replay` reads; the
//! `==` lines say what the scenario did to the world at that moment.

use pop_core::assignment::render_settings;
use pop_core::event::ExitStatus;
use pop_core::journal::Record;
use pop_core::paths;
use pop_core::plugin::builtin;
use pop_core::Timestamp;
use pop_sim::{tool_manifest, World, TOOL};
use std::time::Duration;

/// One machine's journal rendered as it grows.
struct Golden {
    world: World,
    start: Timestamp,
    /// How far the journal has been rendered: (file, record).
    read: (usize, usize),
    lines: Vec<String>,
}

impl Golden {
    fn new(seed: u64) -> Golden {
        let world = World::new(&["m1"], seed);
        let start = world.now;
        Golden {
            world,
            start,
            read: (0, 0),
            lines: Vec::new(),
        }
    }

    /// Renders what the agent heard and did since the last call.
    fn catch_up(&mut self) {
        let journals = &self.world.machines[0].journals;
        while self.read.0 < journals.len() {
            let file = &journals[self.read.0];
            for record in &file[self.read.1..] {
                match record {
                    Record::Start { config } => self
                        .lines
                        .push(format!("== agent started, pid {}", config.agent_pid)),
                    // Journal rotation: the same agent goes on.
                    Record::Snapshot { .. } => {}
                    Record::Input { at, input } => {
                        let offset = at.saturating_since(self.start).as_secs_f64();
                        self.lines.push(format!("{offset:>8.3}  <- {input}"));
                    }
                    Record::Actions { actions } => {
                        for action in actions {
                            self.lines.push(format!("{:>8}  -> {action}", ""));
                        }
                    }
                }
            }
            if self.read.0 + 1 < journals.len() {
                self.read = (self.read.0 + 1, 0);
            } else {
                self.read.1 = file.len();
                break;
            }
        }
    }

    /// Marks a scenario step in the trace, after everything before it.
    fn note(&mut self, what: &str) {
        self.catch_up();
        let offset = self.world.now.saturating_since(self.start).as_secs_f64();
        self.lines.push(format!("== {offset:.3} {what}"));
    }

    /// `pop set`: new settings data for `service`.
    fn put_settings(&mut self, service: &str, data: &str) {
        self.world
            .admin_put(&paths::service_settings(service), data.as_bytes());
    }

    /// `pop add` and `pop deploy` on this machine.
    fn add(&mut self, service: &str, settings: &str) {
        self.world.add_service(service, settings, &["m1"]);
    }

    fn run_for(&mut self, d: Duration) {
        self.world.run_for(d);
        self.catch_up();
    }

    /// Runs until a process of `service` runs again (the backoff is over).
    fn run_until_running(&mut self, service: &str) {
        for _ in 0..6000 {
            self.world.run_for(Duration::from_millis(10));
            if self.world.machines[0]
                .processes
                .values()
                .any(|p| p.service == service)
            {
                self.catch_up();
                return;
            }
        }
        panic!("{service} never started again\n{}", self.lines.join("\n"));
    }

    fn settle(&mut self) {
        self.run_for(Duration::from_secs(5));
        if let Err(e) = self.world.check_converged() {
            panic!("not converged: {e}\n{}", self.lines.join("\n"));
        }
    }

    fn trace(mut self) -> String {
        self.catch_up();
        self.lines.join("\n") + "\n"
    }
}

/// Settings as `pop add <type>` writes them.
fn added(service_type: &str, extra: &[(&str, serde_json::Value)]) -> String {
    let manifest = builtin::get(service_type)
        .cloned()
        .or_else(|| pop_core::plugin::decode_stored(TOOL, tool_manifest(0).as_bytes()).ok())
        .expect("a built-in type or the stored test type");
    let mut map = manifest.default_settings(None);
    for (key, value) in extra {
        map.insert(key.to_string(), value.clone());
    }
    String::from_utf8(render_settings(map)).expect("JSON is UTF-8")
}

fn command(line: &str) -> String {
    added(
        "command",
        &[
            ("command", line.into()),
            ("start_seconds", serde_json::Value::from(0.5)),
        ],
    )
}

/// The seed README's tutorial: `pop init`, `pop add plone4`, `pop start`,
/// `pop deploy plone4`: the agent connects, reads, starts it and publishes it.
#[test]
fn tutorial() {
    let mut g = Golden::new(1);
    g.note("pop init; pop start (the agent connects to an empty namespace)");
    g.run_for(Duration::from_secs(1));
    g.note("pop add plone4 (an echo service on any free port); pop deploy plone4");
    g.add("plone4", &added("echo", &[]));
    g.settle();
    insta::assert_snapshot!(g.trace());
}

/// `pop set`: new settings stop the running generation and start the next with them.
#[test]
fn settings_change() {
    let mut g = Golden::new(2);
    g.add("job", &command("serve"));
    g.settle();
    g.note("pop set job command='serve --v2' env='{\"V\":\"2\"}'");
    let changed = added(
        "command",
        &[
            ("command", "serve --v2".into()),
            ("start_seconds", serde_json::Value::from(0.5)),
            ("env", serde_json::json!({"V": "2"})),
        ],
    );
    g.put_settings("job", &changed);
    g.settle();
    insta::assert_snapshot!(g.trace());
}

/// A service that keeps dying at once: restarted with growing delays and reported as a
/// crash loop; new settings (the likely fix) are tried at once.
#[test]
fn crash_loop_with_backoff() {
    let mut g = Golden::new(3);
    g.add("flaky", &command("flaky"));
    g.settle();
    for _ in 0..4 {
        g.note("flaky exits with code 1 as soon as it is started");
        g.world.crash(
            0,
            "flaky",
            ExitStatus {
                code: Some(1),
                signal: None,
            },
        );
        g.run_until_running("flaky");
    }
    g.note("pop set flaky command=fixed");
    g.put_settings("flaky", &command("fixed"));
    g.settle();
    insta::assert_snapshot!(g.trace());
}

/// The server expires the session: the agent opens a new one, re-reads everything,
/// republishes its ephemeral nodes, and the service keeps running throughout.
#[test]
fn session_expiry_and_reregistration() {
    let mut g = Golden::new(4);
    g.add("web", &added("echo", &[]));
    g.settle();
    g.note("the server expires the agent's session");
    g.world.expire_session(0);
    g.settle();
    insta::assert_snapshot!(g.trace());
}

/// The agent is killed with SIGKILL; the next agent adopts the running services from
/// their run records, reads the target, and keeps them (same pid) or restarts them.
#[test]
fn agent_restart_with_adoption() {
    let mut g = Golden::new(5);
    g.add("web", &added("echo", &[]));
    g.add("job", &command("serve"));
    g.settle();
    g.note("the agent is killed; job's settings change before the next agent reads them");
    g.world.crash_agent(0);
    g.put_settings("job", &command("serve --v2"));
    g.settle();
    insta::assert_snapshot!(g.trace());
}

/// Somebody writes garbage into a settings node: the agent reports it, keeps running
/// what it had, and acts again once the data is good.
#[test]
fn garbage_settings_json() {
    let mut g = Golden::new(6);
    g.add("job", &command("serve"));
    g.settle();
    g.note("somebody writes {\"type\": \"command\", (cut off) into job's settings");
    g.put_settings("job", "{\"type\": \"command\",");
    g.run_for(Duration::from_secs(5));
    g.note("the settings are repaired, with a new command");
    g.put_settings("job", &command("serve --fixed"));
    g.settle();
    insta::assert_snapshot!(g.trace());
}

/// A stored type (a copy of `command` as `tool`) and two services of it: changing what
/// the manifest launches restarts both; changing only its description restarts none;
/// garbage in its node and its removal keep them running with the last manifest read.
#[test]
fn plugin_change_restarts_its_services() {
    let mut g = Golden::new(7);
    g.note("pop plugin add tool.toml (a copy of the command type); pop add tool (two)");
    g.world
        .admin_put(&paths::plugin(TOOL), tool_manifest(0).as_bytes());
    let tool = |line: &str| {
        added(
            TOOL,
            &[
                ("command", line.into()),
                ("start_seconds", serde_json::Value::from(0.5)),
            ],
        )
    };
    g.add("a", &tool("serve a"));
    g.add("b", &tool("serve b"));
    g.settle();
    g.note("pop plugin add --replace: only the description changes");
    g.world
        .admin_put(&paths::plugin(TOOL), tool_manifest(2).as_bytes());
    g.settle();
    g.note("pop plugin add --replace: run.command is now sh -c 'exec {command}'");
    g.world
        .admin_put(&paths::plugin(TOOL), tool_manifest(1).as_bytes());
    g.settle();
    g.note("somebody writes garbage into /plugins/tool");
    g.world
        .admin_put(&paths::plugin(TOOL), b"name = \"tool\"\n[run");
    g.run_for(Duration::from_secs(2));
    g.note("pop plugin remove --force tool");
    g.world.admin_remove(&paths::plugin(TOOL));
    g.run_for(Duration::from_secs(2));
    g.note("pop plugin add tool.toml again, as it was before the garbage");
    g.world
        .admin_put(&paths::plugin(TOOL), tool_manifest(1).as_bytes());
    g.settle();
    insta::assert_snapshot!(g.trace());
}
