//! The seed's tutorial, end to end on a real ZooKeeper: init, add, status, start, deploy,
//! and the service answering; the znode layout checked by an independent client.

use pop_tests::{wait_for, Checker, Machine, Zk};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn seed_tutorial_with_the_echo_service() {
    let zk = Zk::start();
    let m = Machine::new(&zk);
    let zkc = Checker::connect(&zk);

    // 1. init; again refused; --force resets.
    assert!(m.ok(&["init"]).contains("initialised"));
    let err = m.fails(&["init"]);
    assert!(err.contains("--force"), "{err}");
    m.ok(&["add", "echo", "--name", "old"]);
    m.ok(&["init", "--force"]);
    assert!(zkc.children("/services").is_empty(), "--force resets");
    for p in ["/machines", "/services", "/agents", "/pop"] {
        assert!(zkc.get(p).is_some(), "{p} exists after init");
    }

    // 2. add with default settings, visible in status.
    m.ok(&["add", "echo", "--port", "0"]);
    let settings = zkc
        .get_json("/services/echo/settings")
        .expect("settings node");
    assert_eq!(settings["type"], "echo");
    assert_eq!(settings["port"], 0);
    assert_eq!(
        zkc.get_json("/services/echo/machines"),
        Some(serde_json::json!([]))
    );
    let status = m.ok(&["status", "echo"]);
    assert!(status.contains("not deployed"), "{status}");

    // 3. start the agent as a daemon; 4. deploy on the local machine.
    let started = m.ok(&["start"]);
    assert!(started.contains("started"), "{started}");
    let err = m.fails(&["start"]);
    assert!(err.contains("already running"), "{err}");
    m.ok(&["deploy", "echo"]);
    assert_eq!(
        zkc.get_json("/services/echo/machines"),
        Some(serde_json::json!([m.id]))
    );

    // The state node appears (ephemeral), with the real port.
    let state_path = format!("/services/echo/state/{}", m.id);
    let state = wait_for("the state node", || zkc.get_json(&state_path));
    let (_, owner) = zkc.get(&state_path).expect("state node");
    assert_ne!(owner, 0, "state node is ephemeral");
    let port = state["port"].as_u64().expect("port in state") as u16;
    assert_ne!(port, 0, "the real port, not 0: {state}");
    let pid = state["pid"].as_u64().expect("pid in state");
    assert!(state["started_at"].as_f64().is_some(), "{state}");
    assert!(state["host"].is_string(), "{state}");

    // /machines/<id>/echo = PID, ephemeral.
    let (data, owner) = zkc
        .get(&format!("/machines/{}/echo", m.id))
        .expect("machine node");
    assert_eq!(String::from_utf8_lossy(&data), pid.to_string());
    assert_ne!(owner, 0, "machine node is ephemeral");

    // The service answers.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to echo");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(b"hello pop\n").expect("write");
    let mut buf = [0u8; 10];
    conn.read_exact(&mut buf).expect("read echo");
    assert_eq!(&buf, b"hello pop\n");

    // status shows it running, in text and JSON.
    let status = m.ok(&["status"]);
    assert!(status.contains("running"), "{status}");
    assert!(status.contains(&pid.to_string()), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&m.ok(&["--json", "status"])).expect("status --json");
    let inst = &json["services"][0]["instances"][0];
    assert_eq!(inst["phase"], "running");
    assert_eq!(inst["pid"], pid);
    let detail = m.ok(&["status", "echo"]);
    assert!(
        detail.contains("is contained by"),
        "status says how: {detail}"
    );
    let machines = m.ok(&["machines"]);
    assert!(
        machines.contains(&m.id) && machines.contains("live"),
        "{machines}"
    );

    // The agent's logs show the echo server's output.
    let logs = m.ok(&["logs", "echo"]);
    assert!(logs.contains("listening"), "{logs}");

    // dump shows the whole layout.
    let dump: serde_json::Value =
        serde_json::from_str(&m.ok(&["dump", "--format", "json"])).expect("dump json");
    assert!(dump.get(&state_path).is_some(), "{dump}");
    assert!(m.ok(&["dump"]).contains("/services/echo/settings:\n"));

    // pop stop stops the agent and its service; the ephemerals go with the closed
    // session, at once (not after the session timeout).
    m.ok(&["stop"]);
    assert!(
        zkc.get(&format!("/agents/{}", m.id)).is_none(),
        "agent node gone when `pop stop` returns"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the echo process is gone once `pop stop` returns"
    );
    wait_for("the state node to go", || {
        zkc.get(&state_path).is_none().then_some(())
    });
    assert!(zkc.get(&format!("/machines/{}/echo", m.id)).is_none());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "echo stopped"
    );
    let err = m.fails(&["stop"]);
    assert!(err.contains("no agent"), "{err}");
}
