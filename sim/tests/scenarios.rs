//! Scenario tests: the real core on two simulated machines.

use pop_core::event::ExitStatus;
use pop_core::paths;
use pop_core::published::AgentReport;
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
    // Running as it should: counted, and described by its state node, not listed.
    assert_eq!(
        agent["phases"],
        serde_json::json!({ "running": 1 }),
        "{agent}"
    );
    assert_eq!(agent["services"], serde_json::json!({}), "{agent}");
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
    // The agent reads its index, not /services: a bad name there is its problem.
    w.admin_put("/assignments/m1/bad name", b"");
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.machines[0].agent.problems().len(), 2);
    w.admin_remove(&paths::service("job"));
    w.admin_remove("/assignments/m1/bad name");
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

const FENCED: &str =
    r#"{"type":"command","command":"primary","start_seconds":0.1,"session_loss":"fence"}"#;

fn pids(w: &World, machine: usize) -> Vec<(String, u32)> {
    w.machines[machine]
        .processes
        .values()
        .map(|p| (p.service.clone(), p.pid))
        .collect()
}

#[test]
fn a_killed_agent_s_processes_are_adopted_not_restarted() {
    let mut w = World::new(&["m1"], 21);
    w.add_service("a", CMD, &["m1"]);
    w.add_service("b", ECHO, &["m1"]);
    settle(&mut w);
    let before = pids(&w, 0);
    w.crash_agent(0);
    // The dead agent's session (and its nodes) linger until the server expires it;
    // the new agent replaces them with its own.
    settle(&mut w);
    assert_eq!(pids(&w, 0), before, "same processes, none restarted");
    w.check_replay().unwrap();
}

#[test]
fn an_upgrade_keeps_services_running() {
    let mut w = World::new(&["m1"], 22);
    w.add_service("a", CMD, &["m1"]);
    settle(&mut w);
    let before = pids(&w, 0);
    w.upgrade_agent(0);
    settle(&mut w);
    assert_eq!(pids(&w, 0), before);
}

#[test]
fn adopted_processes_follow_changes_made_while_the_agent_was_down() {
    let mut w = World::new(&["m1"], 23);
    w.add_service("a", CMD, &["m1"]);
    w.add_service("b", CMD, &["m1"]);
    settle(&mut w);
    let b_before = pids(&w, 0).into_iter().find(|(s, _)| s == "b");
    w.crash_agent(0);
    w.admin_put(
        &paths::service_settings("a"),
        br#"{"type":"command","command":"serve v2","start_seconds":0.5}"#,
    );
    w.admin_put(&paths::service_machines("b"), b"[]");
    settle(&mut w);
    let after = pids(&w, 0);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].0, "a");
    assert!(b_before.is_some());
}

#[test]
fn fence_services_stop_before_the_session_can_expire_and_start_when_it_is_back() {
    let mut w = World::new(&["m1"], 24);
    w.add_service("primary", FENCED, &["m1"]);
    w.add_service("cache", CMD, &["m1"]);
    settle(&mut w);
    let running = |w: &World| -> Vec<String> {
        w.machines[0]
            .processes
            .values()
            .map(|p| p.service.clone())
            .collect()
    };
    w.disconnect(0);
    // The session timeout is 4 s: fence at 1 s, SIGKILL at most 0.5 s later.
    w.run_for(Duration::from_millis(900));
    assert_eq!(running(&w), ["cache", "primary"]);
    w.run_for(Duration::from_millis(700));
    assert_eq!(running(&w), ["cache"], "{}", w.trace.join("\n"));
    let stop = w
        .trace
        .iter()
        .find(|l| l.contains("Stop") && l.contains("primary"))
        .cloned()
        .unwrap_or_default();
    assert!(stop.contains("grace: 500ms"), "{stop}");
    w.reconnect(0);
    settle(&mut w);
    assert_eq!(running(&w), ["cache", "primary"]);
    // Expiry (without a disconnect first) fences at once.
    w.expire_session(0);
    w.run_for(Duration::from_millis(5));
    settle(&mut w);
    assert_eq!(running(&w), ["cache", "primary"]);
    w.check_replay().unwrap();
}

/// The replay check must catch a journal whose recorded actions are not what the core
/// decides (here: one recorded action edited).
#[test]
fn replay_check_catches_a_tampered_journal() {
    let mut w = World::new(&["m1"], 25);
    w.add_service("a", CMD, &["m1"]);
    settle(&mut w);
    w.check_replay().unwrap();
    let journal = w.machines[0].journals.last_mut().unwrap();
    let spawn = journal
        .iter_mut()
        .find_map(|r| match r {
            pop_core::journal::Record::Actions { actions } => actions
                .iter_mut()
                .find(|a| matches!(a, pop_core::Action::Spawn { .. })),
            _ => None,
        })
        .unwrap();
    if let pop_core::Action::Spawn { generation, .. } = spawn {
        *generation += 1;
    }
    let err = w.check_replay().unwrap_err();
    assert!(err.contains("replays differently"), "{err}");
}

/// Found by the random histories: an adopted process that exits before the new agent
/// has read its target left a backoff deadline that was never served, and the agent
/// ticked forever at one instant (the simulator's livelock check fired).
#[test]
fn an_adopted_process_that_exits_before_the_target_is_read_is_restarted() {
    let mut w = World::new(&["m1"], 26);
    w.add_service("a", CMD, &["m1"]);
    settle(&mut w);
    // Garbage in the machines list: the new agent cannot learn the target.
    w.admin_put(&paths::service_machines("a"), b"[not json");
    w.upgrade_agent(0);
    // The new agent has listed the services, but cannot read the machines list.
    w.run_for(Duration::from_millis(20));
    w.crash(
        0,
        "a",
        ExitStatus {
            code: Some(1),
            signal: None,
        },
    );
    w.run_for(Duration::from_secs(5));
    w.admin_put(&paths::service_machines("a"), br#"["m1"]"#);
    settle(&mut w);
    w.check_replay().unwrap();
}

/// Found on a real ZooKeeper: the new agent's read of a machines list was answered
/// before the service listing (the driver runs requests concurrently), so an adopted
/// service looked unlisted and was restarted. Over many seeds the network reorders
/// replies; adoption must never restart anything.
#[test]
fn adoption_never_restarts_whatever_the_reply_order() {
    for seed in 0..100 {
        let mut w = World::new(&["m1"], seed);
        w.add_service("a", CMD, &["m1"]);
        w.add_service("b", ECHO, &["m1"]);
        settle(&mut w);
        let before = pids(&w, 0);
        if seed % 2 == 0 {
            w.crash_agent(0);
        } else {
            w.upgrade_agent(0);
        }
        settle(&mut w);
        assert_eq!(pids(&w, 0), before, "seed {seed}");
    }
}

/// Disconnected for ten minutes with a service crash-looping: processes are still
/// supervised locally, and nothing is sent to ZooKeeper or queued for it meanwhile.
#[test]
fn nothing_is_sent_or_queued_while_disconnected() {
    let mut w = World::new(&["m1"], 27);
    w.add_service("a", CMD, &["m1"]);
    w.add_service("b", CMD, &["m1"]);
    settle(&mut w);
    w.disconnect(0);
    w.run_for(Duration::from_millis(10));
    let from = w.trace.len();
    for _ in 0..20 {
        w.crash(
            0,
            "a",
            ExitStatus {
                code: Some(1),
                signal: None,
            },
        );
        w.run_for(Duration::from_secs(30));
    }
    let sent = w.trace[from..]
        .iter()
        .filter(|line| line.contains(" Zk {"))
        .count();
    assert_eq!(sent, 0, "requests sent while disconnected");
    assert!(
        w.trace[from..].iter().any(|l| l.contains("Spawn")),
        "crashes are still restarted locally"
    );
    w.reconnect(0);
    settle(&mut w);
}

#[test]
fn a_service_that_never_accepts_connections_fails_readiness_and_restarts_with_growing_delays() {
    let mut w = World::new(&["m1"], 11);
    w.check_invariants = true;
    w.never_ready.insert("web".into());
    w.add_service(
        "web",
        r#"{"type":"command","command":"serve","port":8080,"ready_timeout":1}"#,
        &["m1"],
    );
    // When each new process appeared.
    let mut spawned_at = Vec::new();
    let mut last_pid = None;
    for _ in 0..2000 {
        w.run_for(Duration::from_millis(10));
        assert_eq!(w.violation, None, "{}", w.trace.join("\n"));
        let pid = w.machines[0].processes.keys().next().copied();
        if pid.is_some() && pid != last_pid {
            spawned_at.push(w.now);
        }
        last_pid = pid;
        assert!(
            w.zk.get(&paths::service_state("web", "m1")).is_none(),
            "a service that is not ready is never published"
        );
    }
    assert!(spawned_at.len() >= 5, "{spawned_at:?}");
    let gaps: Vec<Duration> = spawned_at
        .windows(2)
        .map(|pair| pair[1].saturating_since(pair[0]))
        .collect();
    for (gap, next) in gaps.iter().zip(&gaps[1..]) {
        assert!(
            *gap > Duration::from_secs(1),
            "waited out the timeout: {gaps:?}"
        );
        assert!(next > gap, "the crash-loop delay grows: {gaps:?}");
    }
    let trace = w.trace.join("\n");
    assert!(
        trace.contains(r#"NotReady { service: "web", port: 8080, waited: 1s }"#),
        "{trace}"
    );
    let node = w.zk.get(&paths::agent("m1")).expect("agent node");
    let report = AgentReport::parse(&node.data).expect("a report pop reads");
    let web = report.services.get("web").expect("web reported");
    assert_eq!(web.not_ready_within, Some(1.0), "{web:?}");
    assert!(web.quick_failures >= 3 && web.restarts >= 4, "{web:?}");
}
