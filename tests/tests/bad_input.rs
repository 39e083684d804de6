//! Bad input: a clear one-line error naming the problem, a non-zero exit, nothing written.
//! Bad data written into ZooKeeper by others: the agent reports it and keeps going.

use pop_tests::{initialised, wait_for, Checker, Machine, Zk};
use std::time::{Duration, Instant};

#[test]
fn bad_names_types_and_services_are_refused_and_write_nothing() {
    let zk = Zk::start();
    let m = Machine::new(&zk);
    let zkc = Checker::connect(&zk);

    // No namespace yet.
    let err = m.fails(&["add", "echo"]);
    assert!(err.contains("pop init"), "{err}");
    assert!(zkc.get("/services").is_none(), "nothing written");
    let err = m.fails(&["status"]);
    assert!(err.contains("pop init"), "{err}");

    m.ok(&["init"]);
    let long = "x".repeat(101);
    for bad in ["a/b", ".", "..", "", "tab\there", long.as_str()] {
        let err = m.fails(&["add", "echo", "--name", bad]);
        assert!(err.contains("service name"), "{bad:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let err = m.fails(&["add", "nosuchtype"]);
    assert!(err.contains("unknown service type \"nosuchtype\""), "{err}");
    let err = m.fails(&["add", "command"]);
    assert!(err.contains("command"), "{err}");
    let err = m.fails(&["add", "echo", "--set", "restart=sometimes"]);
    assert!(err.contains("restart"), "{err}");
    assert!(zkc.children("/services").is_empty(), "nothing written");

    m.ok(&["add", "echo"]);
    let err = m.fails(&["add", "echo"]);
    assert!(err.contains("exists already"), "{err}");
    for args in [
        vec!["deploy", "ghost"],
        vec!["undeploy", "ghost"],
        vec!["set", "ghost", "port=1"],
        vec!["remove", "ghost"],
        vec!["status", "ghost"],
    ] {
        let err = m.fails(&args);
        assert!(
            err.contains("no service named \"ghost\""),
            "{args:?}: {err}"
        );
    }
    let err = m.fails(&["deploy", "echo", "--machine", "a/b"]);
    assert!(err.contains("machine id"), "{err}");
    let before = zkc.get("/services/echo/settings").expect("settings");
    let err = m.fails(&["set", "echo", "port=99999"]);
    assert!(err.contains("port"), "{err}");
    let err = m.fails(&["set", "echo", "novalue"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    assert_eq!(
        zkc.get("/services/echo/settings"),
        Some(before),
        "settings unchanged"
    );
}

#[test]
fn unreachable_zookeeper_fails_fast_naming_the_host() {
    let zk = Zk::start();
    let mut m = Machine::new(&zk);
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    m.hosts = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let err = m.fails(&["status"]);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn agent_survives_bad_json_and_keeps_its_last_good_view() {
    let (_zk, m, zkc) = initialised();
    m.ok(&["add", "echo", "--port", "0"]);
    m.ok(&["deploy", "echo"]);
    let mut agent = m.agent();
    let state_path = format!("/services/echo/state/{}", m.id);
    let pid = wait_for("echo to run", || {
        zkc.get_json(&state_path).and_then(|s| s["pid"].as_u64())
    });

    zkc.set("/services/echo/machines", b"{this is not json");
    zkc.set(
        "/services/echo/settings",
        br#"{"type":"echo","port":"eighty"}"#,
    );
    // A service whose name is not a safe name, written behind pop's back.
    zkc.create("/services/bad name", b"");

    wait_for("the problems in the agent report", || {
        let report = zkc.get_json(&format!("/agents/{}", m.id))?;
        let problems = report["problems"].as_object()?;
        (problems.contains_key("/services/echo/machines")
            && problems.contains_key("/services/echo/settings"))
        .then_some(())
    });
    let status = m.ok(&["status"]);
    assert!(status.contains("invalid machines list"), "{status}");
    assert!(status.contains("/services/echo/settings"), "{status}");
    // Still running, same process, state node still there.
    assert_eq!(
        zkc.get_json(&state_path).and_then(|s| s["pid"].as_u64()),
        Some(pid)
    );
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Repaired data: the problem clears and nothing restarted.
    zkc.set(
        "/services/echo/machines",
        format!("[\"{}\"]", m.id).as_bytes(),
    );
    zkc.set(
        "/services/echo/settings",
        br#"{"type":"echo","host":"127.0.0.1","port":0}"#,
    );
    wait_for("the problems to clear", || {
        let report = zkc.get_json(&format!("/agents/{}", m.id))?;
        let problems = report["problems"].as_object()?;
        (!problems.contains_key("/services/echo/machines")).then_some(())
    });
    assert_eq!(
        zkc.get_json(&state_path).and_then(|s| s["pid"].as_u64()),
        Some(pid),
        "equivalent settings do not restart"
    );
    let status = agent.stop();
    assert!(status.success(), "{}", agent.log_text());
    assert!(!agent.log_text().contains("panicked"));
}

#[test]
fn an_agent_report_pop_cannot_read_is_a_problem_naming_its_node() {
    let (_zk, m, zkc) = initialised();
    m.ok(&["add", "echo", "--port", "0"]);
    m.ok(&["deploy", "echo", "--machine", "ghost-1"]);
    // Somebody else's node where an agent's report belongs.
    zkc.create("/agents/ghost-1", br#"{"machine":"ghost-1","pid":"one"}"#);

    let status = m.ok(&["status"]);
    assert!(
        status.contains("echo on ghost-1: cannot read the agent report /agents/ghost-1: "),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&m.ok(&["--json", "status"])).expect("status json");
    let instance = &json["services"][0]["instances"][0];
    assert_eq!(instance["agent_live"], true, "{instance}");
    assert_eq!(instance["phase"], "unknown", "{instance}");
    assert!(
        instance["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("/agents/ghost-1")),
        "{instance}"
    );

    let machines = m.ok(&["machines"]);
    assert!(
        machines.contains("cannot read the agent report /agents/ghost-1"),
        "{machines}"
    );
}
