//! A deployed service's life: killed and restarted, reconfigured, undeployed, removed.

use pop_tests::{initialised, signal, wait_for, Checker};

fn state_pid(zkc: &Checker, service: &str, machine: &str) -> Option<u64> {
    zkc.get_json(&format!("/services/{service}/state/{machine}"))
        .and_then(|s| s["pid"].as_u64())
}

#[test]
fn kill_settings_change_undeploy_remove() {
    let (_zk, m, zkc) = initialised();
    m.ok(&[
        "add",
        "command",
        "--name",
        "worker",
        "--set",
        "command=echo \"worker $GREETING\"; exec sleep 100000",
        "--set",
        "start_seconds=0.2",
        "--set",
        "stop_timeout=2",
        "--set",
        "env={\"GREETING\":\"v1\"}",
    ]);
    m.ok(&["deploy", "worker"]);
    let _agent = m.agent();
    let first = wait_for("worker to run", || state_pid(&zkc, "worker", &m.id));

    // kill -9 of the service: restarted (a first quick crash waits only ~100 ms).
    signal(first as i32, libc::SIGKILL);
    let second = wait_for("a restarted worker", || {
        state_pid(&zkc, "worker", &m.id).filter(|p| *p != first)
    });
    assert!(!pid_alive(first));
    let state = zkc
        .get_json(&format!("/services/worker/state/{}", m.id))
        .expect("state");
    assert_eq!(state["restarts"], 1, "{state}");

    // A settings change restarts it with the new settings.
    m.ok(&["set", "worker", "env={\"GREETING\":\"v2\"}"]);
    let third = wait_for("a reconfigured worker", || {
        state_pid(&zkc, "worker", &m.id).filter(|p| *p != second)
    });
    let environ = std::fs::read(format!("/proc/{third}/environ")).expect("environ");
    assert!(
        String::from_utf8_lossy(&environ).contains("GREETING=v2"),
        "new process has the new settings"
    );
    wait_for("the v2 greeting in the log", || {
        m.ok(&["logs", "worker"])
            .contains("worker v2")
            .then_some(())
    });
    // Setting the same value again changes nothing and restarts nothing.
    let out = m.ok(&["set", "worker", "env={\"GREETING\":\"v2\"}"]);
    assert!(out.contains("nothing to do"), "{out}");

    // Undeploy: stopped, both ephemerals gone.
    m.ok(&["undeploy", "worker"]);
    wait_for("worker to stop", || {
        zkc.get(&format!("/services/worker/state/{}", m.id))
            .is_none()
            .then_some(())
    });
    // The two nodes are deleted by separate requests; either may land first.
    wait_for("its pid node to go too", || {
        zkc.get(&format!("/machines/{}/worker", m.id))
            .is_none()
            .then_some(())
    });
    wait_for("the process to be gone", || {
        (!pid_alive(third)).then_some(())
    });

    // Remove: refused while deployed, done when not.
    m.ok(&["deploy", "worker"]);
    let err = m.fails(&["remove", "worker"]);
    assert!(err.contains("--force"), "{err}");
    m.ok(&["remove", "worker", "--force"]);
    assert!(zkc.get("/services/worker").is_none());
    wait_for("no worker process", || {
        zkc.children(&format!("/machines/{}", m.id))
            .is_empty()
            .then_some(())
    });
}

fn pid_alive(pid: u64) -> bool {
    // A zombie is dead for our purposes: its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Found in review: removing a service (or resetting everything) while an agent runs it
/// must finish, stop the service, and leave nothing of it behind.
#[test]
fn remove_force_and_init_force_under_a_running_agent() {
    let (_zk, m, zkc) = initialised();
    for name in ["a", "b"] {
        m.ok(&["add", "echo", "--name", name]);
        m.ok(&["deploy", name]);
    }
    let _agent = m.agent();
    for name in ["a", "b"] {
        wait_for("both to run", || state_pid(&zkc, name, &m.id));
    }
    let a_pid = state_pid(&zkc, "a", &m.id).expect("a runs");
    m.ok(&["remove", "a", "--force"]);
    assert!(zkc.get("/services/a").is_none(), "nothing of a is left");
    wait_for("a to stop", || (!pid_alive(a_pid)).then_some(()));

    let b_pid = state_pid(&zkc, "b", &m.id).expect("b runs");
    m.ok(&["init", "--force"]);
    assert!(zkc.children("/services").is_empty());
    wait_for("b to stop", || (!pid_alive(b_pid)).then_some(()));
    // The agent is still there, and reports itself.
    wait_for("the agent report", || zkc.get(&format!("/agents/{}", m.id)));
    assert!(m.ok(&["machines"]).contains("live"));
}

/// Corrupt data written by someone else is never silently overwritten or ignored.
#[test]
fn set_and_remove_refuse_corrupt_nodes() {
    let (_zk, m, zkc) = initialised();
    m.ok(&["add", "echo"]);
    zkc.set("/services/echo/settings", b"[1,2]");
    let err = m.fails(&["set", "echo", "type=echo", "port=1"]);
    assert!(err.contains("not a JSON object"), "{err}");
    assert_eq!(
        zkc.get("/services/echo/settings").map(|(d, _)| d),
        Some(b"[1,2]".to_vec())
    );
    zkc.set("/services/echo/machines", b"{oops");
    let err = m.fails(&["remove", "echo"]);
    assert!(err.contains("--force"), "{err}");
    assert!(zkc.get("/services/echo").is_some());
}

/// The session expires while the agent cannot reach ZooKeeper (the server is frozen for
/// longer than the session timeout): the service keeps running, and once ZooKeeper is
/// back the agent opens a new session and publishes the same process again.
#[test]
fn session_expiry_keeps_the_service_and_republishes() {
    let (zk, m, zkc) = initialised();
    m.ok(&["add", "echo"]);
    m.ok(&["deploy", "echo"]);
    let agent = m.agent();
    let state = format!("/services/echo/state/{}", m.id);
    let pid = wait_for("echo to run", || state_pid(&zkc, "echo", &m.id));
    let (_, old_owner) = zkc.get(&state).expect("state node");
    drop(zkc);

    // Sessions are 4 s here; freeze the server for longer (the fault, not a wait).
    zk.server.pause().expect("pause");
    std::thread::sleep(std::time::Duration::from_secs(7));
    zk.server.resume().expect("resume");

    let zkc = Checker::connect(&zk);
    let owner = wait_for("the state node from a new session", || {
        zkc.get(&state)
            .map(|(_, owner)| owner)
            .filter(|o| *o != old_owner)
    });
    assert_ne!(owner, old_owner);
    assert_eq!(state_pid(&zkc, "echo", &m.id), Some(pid), "same process");
    assert!(pid_alive(pid));
    assert!(agent.log_text().contains("expired"), "{}", agent.log_text());
}

/// A port nothing listens on: bound and released at once.
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The `deaf` instance on this machine in `pop status --json`.
fn deaf_instance(m: &pop_tests::Machine) -> Option<serde_json::Value> {
    let status: serde_json::Value = serde_json::from_str(&m.ok(&["--json", "status"])).ok()?;
    let instances = status["services"][0]["instances"].as_array()?;
    instances.iter().find(|i| i["machine"] == m.id).cloned()
}

fn fails_readiness(instance: &serde_json::Value) -> bool {
    instance["problems"].as_array().is_some_and(|problems| {
        problems.iter().any(|p| {
            p.as_str()
                .is_some_and(|p| p.contains("failed readiness") && p.contains("within 1s"))
        })
    })
}

#[test]
fn a_service_whose_port_never_accepts_connections_fails_readiness_and_is_restarted() {
    let (_zk, m, zkc) = initialised();
    let port = unused_port().to_string();
    m.ok(&[
        "add",
        "command",
        "--name",
        "deaf",
        "--port",
        &port,
        "--set",
        "command=exec sleep 4321988",
        "--set",
        "ready_timeout=1",
    ]);
    m.ok(&["deploy", "deaf"]);
    let _agent = m.agent();

    let first = wait_for("deaf to be started", || {
        deaf_instance(&m).filter(|i| i["phase"] == "starting" && i["pid"].is_u64())
    });
    let first_pid = first["pid"].as_u64().expect("a pid");
    let failed = wait_for("pop status to report failing readiness", || {
        deaf_instance(&m).filter(fails_readiness)
    });
    assert_eq!(failed["desired"], true, "{failed}");
    wait_for("a new process after the failure", || {
        deaf_instance(&m).filter(|i| {
            i["pid"].as_u64().is_some_and(|pid| pid != first_pid)
                && i["restarts"].as_u64().is_some_and(|r| r >= 1)
        })
    });
    assert!(!pid_alive(first_pid), "the failed run was stopped");
    // Still not ready, so never published, and failing again.
    let again = wait_for("a second readiness failure", || {
        deaf_instance(&m).filter(|i| i["restarts"].as_u64().is_some_and(|r| r >= 2))
    });
    assert!(fails_readiness(&again), "{again}");
    assert!(
        zkc.get(&format!("/services/deaf/state/{}", m.id)).is_none(),
        "never published"
    );
    let table = m.ok(&["status"]);
    assert!(
        table.contains(&format!(
            "deaf on {}: failed readiness: port {port} accepted no connection within 1s",
            m.id
        )),
        "{table}"
    );
}
