//! Scenario tests: the real core on two simulated machines.

use pop_core::event::ExitStatus;
use pop_core::paths;
use pop_sim::World;
use std::time::Duration;

const CMD: &str = r#"{"type":"command","command":"serve","start_seconds":0.5}"#;
const ECHO: &str = r#"{"type":"echo","host":"0.0.0.0","port":0}"#;

fn settle(w: &mut World) {
    w.run_for(Duration::from_secs(5));
    if let Err(e) = w.check_converged() {
        panic!("not converged: {e}\n{}", w.trace.join("\n"));
    }
}

fn pid_of(w: &World, machine: &str, service: &str) -> Option<String> {
    w.zk.get(&paths::machine_service(machine, service))
        .map(|n| String::from_utf8_lossy(&n.data).to_string())
}

#[test]
fn deploy_starts_and_publishes_only_on_chosen_machines() {
    let mut w = World::new(&["m1", "m2"], 1);
    w.add_service("web", ECHO, &["m1"]);
    w.add_service("job", CMD, &["m2"]);
    settle(&mut w);
    assert!(pid_of(&w, "m1", "web").is_some());
    assert!(pid_of(&w, "m2", "web").is_none());
    assert!(pid_of(&w, "m2", "job").is_some());
    let state =
        w.zk.get(&paths::service_state("web", "m1"))
            .expect("state node");
    let state: serde_json::Value = serde_json::from_slice(&state.data).expect("json");
    assert_eq!(state["host"], "host-m1");
    assert!(state["port"].as_u64().is_some_and(|p| p > 0), "{state}");
    let agent = w.zk.get(&paths::agent("m1")).expect("agent node");
    let agent: serde_json::Value = serde_json::from_slice(&agent.data).expect("json");
    assert_eq!(agent["services"]["web"]["phase"], "running");
}

#[test]
fn settings_change_restarts_with_new_settings() {
    let mut w = World::new(&["m1"], 2);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    let before = pid_of(&w, "m1", "job");
    w.admin_put(
        &paths::service_settings("job"),
        br#"{"type":"command","command":"serve --v2","start_seconds":0.5}"#,
    );
    settle(&mut w);
    let after = pid_of(&w, "m1", "job");
    assert_ne!(before, after);
    assert!(w
        .trace
        .iter()
        .any(|l| l.contains("serve --v2") && l.contains("Spawn")));
}

#[test]
fn rewriting_identical_settings_does_not_restart() {
    let mut w = World::new(&["m1"], 3);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    let before = pid_of(&w, "m1", "job");
    w.admin_put(&paths::service_settings("job"), CMD.as_bytes());
    settle(&mut w);
    assert_eq!(before, pid_of(&w, "m1", "job"));
}

#[test]
fn undeploy_and_remove_stop_and_clean_nodes() {
    let mut w = World::new(&["m1", "m2"], 4);
    w.add_service("job", CMD, &["m1", "m2"]);
    settle(&mut w);
    w.admin_put(&paths::service_machines("job"), br#"["m2"]"#);
    settle(&mut w);
    assert!(pid_of(&w, "m1", "job").is_none());
    assert!(w.zk.get(&paths::service_state("job", "m1")).is_none());
    assert!(pid_of(&w, "m2", "job").is_some());
    w.admin_remove(&paths::service("job"));
    settle(&mut w);
    assert!(w.machines.iter().all(|m| m.processes.is_empty()));
}

#[test]
fn crash_after_healthy_run_restarts_at_once_quick_crashes_back_off() {
    let mut w = World::new(&["m1"], 5);
    w.add_service("job", CMD, &["m1"]);
    w.run_for(Duration::from_secs(20));
    let killed = ExitStatus {
        code: None,
        signal: Some(9),
    };
    w.crash(0, "job", killed);
    w.run_for(Duration::from_millis(20));
    assert_eq!(w.machines[0].processes.len(), 1, "restarted at once");
    // Crash it as soon as it is up, repeatedly: the delays must grow.
    let mut spawn_times = Vec::new();
    for _ in 0..6 {
        w.crash(0, "job", killed);
        let start = w.now;
        while w.machines[0].processes.is_empty() {
            w.run_for(Duration::from_millis(10));
        }
        spawn_times.push(w.now.saturating_since(start));
    }
    for pair in spawn_times.windows(2).skip(1) {
        assert!(pair[1] > pair[0], "backoff not growing: {spawn_times:?}");
    }
    settle(&mut w);
}

#[test]
fn bad_data_is_reported_and_the_last_good_view_kept() {
    let mut w = World::new(&["m1"], 6);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    let before = pid_of(&w, "m1", "job");
    w.admin_put(&paths::service_machines("job"), b"{not json");
    w.admin_put(
        &paths::service_settings("job"),
        br#"{"type":"command","port":"x"}"#,
    );
    w.run_for(Duration::from_secs(2));
    assert_eq!(before, pid_of(&w, "m1", "job"), "kept running");
    let problems = w.machines[0].agent.problems();
    assert!(
        problems.contains_key("/services/job/machines"),
        "{problems:?}"
    );
    assert!(
        problems.contains_key("/services/job/settings"),
        "{problems:?}"
    );
    let agent = w.zk.get(&paths::agent("m1")).expect("agent node");
    let agent: serde_json::Value = serde_json::from_slice(&agent.data).expect("json");
    assert!(
        agent["problems"]["/services/job/settings"].is_string(),
        "{agent}"
    );
    // Repaired data clears the problem.
    w.admin_put(&paths::service_machines("job"), br#"["m1"]"#);
    w.admin_put(&paths::service_settings("job"), CMD.as_bytes());
    settle(&mut w);
    assert!(w.machines[0].agent.problems().is_empty());
    assert_eq!(before, pid_of(&w, "m1", "job"));
}

#[test]
fn session_expiry_keeps_processes_and_republishes() {
    let mut w = World::new(&["m1"], 7);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    let before = pid_of(&w, "m1", "job");
    w.expire_session(0);
    w.run_for(Duration::from_millis(1));
    settle(&mut w);
    assert_eq!(
        before,
        pid_of(&w, "m1", "job"),
        "same process, node recreated"
    );
}

#[test]
fn shutdown_stops_everything_and_exits() {
    let mut w = World::new(&["m1"], 8);
    w.add_service("a", CMD, &["m1"]);
    w.add_service("b", ECHO, &["m1"]);
    settle(&mut w);
    w.shutdown(0);
    w.run_for(Duration::from_secs(1));
    assert!(w.machines[0].exited);
    assert!(w.machines[0].processes.is_empty());
    assert!(w.zk.children(&paths::machine("m1")).is_empty());
}

#[test]
fn same_seed_same_history() {
    let run = |seed| {
        let mut w = World::new(&["m1", "m2"], seed);
        w.add_service("a", CMD, &["m1", "m2"]);
        w.run_for(Duration::from_secs(1));
        w.crash(1, "a", ExitStatus::default());
        w.expire_session(0);
        w.run_for(Duration::from_secs(3));
        w.trace
    };
    assert_eq!(run(11), run(11));
}

/// The convergence checker must catch a machine running what it should not.
#[test]
fn checker_catches_a_planted_extra_process() {
    let mut w = World::new(&["m1"], 9);
    w.add_service("a", CMD, &["m1"]);
    settle(&mut w);
    let extra = w.machines[0]
        .processes
        .values()
        .next()
        .cloned()
        .expect("a process");
    w.machines[0].processes.insert(99_999, extra);
    assert!(w.check_converged().is_err());
}

#[test]
fn new_settings_end_a_crash_loop_backoff_at_once() {
    let mut w = World::new(&["m1"], 10);
    w.add_service("job", CMD, &["m1"]);
    w.run_for(Duration::from_secs(1));
    let failed = ExitStatus {
        code: Some(1),
        signal: None,
    };
    // Crash it quickly many times: the backoff grows to seconds.
    for _ in 0..8 {
        w.crash(0, "job", failed);
        while w.machines[0].processes.is_empty() {
            w.run_for(Duration::from_millis(10));
        }
    }
    w.crash(0, "job", failed);
    w.run_for(Duration::from_millis(20));
    assert!(w.machines[0].processes.is_empty(), "backing off");
    w.admin_put(
        &paths::service_settings("job"),
        br#"{"type":"command","command":"serve --fixed","start_seconds":0.5}"#,
    );
    w.run_for(Duration::from_millis(20));
    assert_eq!(
        w.machines[0].processes.len(),
        1,
        "fixed settings start at once"
    );
    settle(&mut w);
}

#[test]
fn a_service_removed_and_added_again_runs_again() {
    let mut w = World::new(&["m1"], 12);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    w.admin_remove(&paths::service("job"));
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    assert!(pid_of(&w, "m1", "job").is_some());
    w.admin_remove(&paths::service("job"));
    w.run_for(Duration::from_millis(3));
    w.add_service("job", ECHO, &["m1"]);
    settle(&mut w);
    assert!(pid_of(&w, "m1", "job").is_some());
}

#[test]
fn ephemerals_deleted_by_someone_else_are_written_again() {
    let mut w = World::new(&["m1"], 13);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    w.admin_remove(&paths::service_state("job", "m1"));
    w.admin_remove(&paths::machine("m1"));
    w.admin_remove(&paths::agent("m1"));
    settle(&mut w);
}

/// Found in review: a reply that arrives after `Disconnected` must still count our own
/// node as ours, or the agent deletes and re-creates it on reconnect.
#[test]
fn replies_after_a_disconnect_do_not_disown_our_nodes() {
    let mut w = World::new(&["m1"], 14);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    for round in 0..20 {
        // Make the agent write its report, then drop the connection mid-flight.
        let version =
            format!(r#"{{"type":"command","command":"serve {round}","start_seconds":0.5}}"#);
        w.admin_put(&paths::service_settings("job"), version.as_bytes());
        w.run_for(Duration::from_millis(1 + round % 4));
        w.disconnect(0);
        w.run_for(Duration::from_millis(3));
        w.reconnect(0);
        settle(&mut w);
    }
    let own_deletes = w
        .trace
        .iter()
        .filter(|l| l.contains("Delete { path: \"/agents/m1\""))
        .count();
    assert_eq!(own_deletes, 0, "the agent deleted its own node");
}

/// Found in review: problems recorded for a service go when the service goes.
#[test]
fn problems_of_a_removed_service_are_forgotten() {
    let mut w = World::new(&["m1"], 15);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    w.admin_put(&paths::service_settings("job"), b"{not json");
    w.admin_put("/services/bad name", b"");
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.machines[0].agent.problems().len(), 2);
    w.admin_remove(&paths::service("job"));
    w.admin_remove("/services/bad name");
    settle(&mut w);
    assert!(
        w.machines[0].agent.problems().is_empty(),
        "{:?}",
        w.machines[0].agent.problems()
    );
    let agent = w.zk.get(&paths::agent("m1")).expect("agent node");
    let report: serde_json::Value = serde_json::from_slice(&agent.data).expect("json");
    assert_eq!(report["problems"], serde_json::json!({}));
}
