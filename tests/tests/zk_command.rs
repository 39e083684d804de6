//! `pop zk start|status|stop`: a local ZooKeeper with its data under the state directory.

use pop_tests::Machine;

#[test]
fn local_zookeeper_starts_reports_and_stops() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let state = tempfile::tempdir().expect("temp dir");
    let m = Machine {
        id: pop_tests::unique("zk"),
        hosts: format!("127.0.0.1:{port}"),
        state,
        containment: None,
    };
    let port_arg = port.to_string();
    let out = m.ok(&["zk", "start", "--port", &port_arg, "--tick-ms", "200"]);
    assert!(out.contains(&port_arg), "{out}");
    assert!(
        m.state_dir().join("zookeeper").exists(),
        "data under the state dir"
    );
    let err = m.fails(&["zk", "start", "--port", &port_arg]);
    assert!(err.contains("already running"), "{err}");
    let status = m.ok(&["zk", "status"]);
    assert!(status.contains("standalone"), "{status}");
    // It works as pop's ZooKeeper.
    m.ok(&["init"]);
    assert!(m.ok(&["status"]).contains("no services"));
    m.ok(&["zk", "stop"]);
    let status = m.ok(&["zk", "status"]);
    assert!(status.contains("not running"), "{status}");
    let err = m.fails(&["status"]);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}
