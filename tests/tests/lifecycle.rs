//! A deployed service's life: killed and restarted, reconfigured, undeployed, removed.

use pop_tests::{signal, wait_for, Checker, Machine, Zk};

fn state_pid(zkc: &Checker, service: &str, machine: &str) -> Option<u64> {
    zkc.get_json(&format!("/services/{service}/state/{machine}"))
        .and_then(|s| s["pid"].as_u64())
}

#[test]
fn kill_settings_change_undeploy_remove() {
    let zk = Zk::start();
    let m = Machine::new(&zk);
    let zkc = Checker::connect(&zk);
    m.ok(&["init"]);
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
    assert!(zkc.get(&format!("/machines/{}/worker", m.id)).is_none());
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
