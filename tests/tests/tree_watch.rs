//! The agent's pid nodes under its tree watch (a persistent recursive watch on
//! /machines/<id>) on a real ZooKeeper: no watch of their own, and one deleted by
//! someone else is heard of through the tree watch and written again.

use pop_tests::{initialised, wait_for, TcpProxy};

#[test]
fn a_pid_node_deleted_by_someone_else_is_written_again_without_a_watch_of_its_own() {
    let (zk, m, zkc) = initialised();
    m.ok(&["add", "echo"]);
    m.ok(&["deploy", "echo"]);
    let _agent = m.agent();
    let pid_node = format!("/machines/{}/echo", m.id);
    let (pid, _) = wait_for("the pid node", || zkc.get(&pid_node));
    let watches = zk.watches_by_session();
    assert!(
        !watches.values().any(|paths| paths.contains(&pid_node)),
        "the pid node has a watch of its own: {watches:?}"
    );
    // `wchc` lists the tree watch by its path.
    let machine_dir = format!("/machines/{}", m.id);
    assert!(
        watches.values().any(|paths| paths.contains(&machine_dir)),
        "no tree watch: {watches:?}"
    );
    zkc.delete(&pid_node);
    let (again, _) = wait_for("the pid node written again", || zkc.get(&pid_node));
    assert_eq!(pid, again, "the same process");
}

/// A persistent watch hears nothing of what happened while its connection was down
/// (ZOOKEEPER-4698: the client re-registers it, the server does not replay), so after
/// reconnecting within its session the agent reads its pid nodes again.
#[test]
fn a_pid_node_deleted_while_the_agent_was_cut_off_is_written_again_in_the_same_session() {
    let (zk, m, zkc) = initialised();
    let proxy = TcpProxy::start(zk.server.addr()).expect("proxy");
    m.ok(&["add", "echo"]);
    m.ok(&["deploy", "echo"]);
    let agent = m.agent_with(&proxy.connect_string(), 4000);
    let pid_node = format!("/machines/{}/echo", m.id);
    let (pid, owner) = wait_for("the pid node", || zkc.get(&pid_node));
    let forwarded = proxy.forwarded();
    proxy.partition();
    wait_for("the agent's traffic to be dropped", || {
        (proxy.dropped() > 0).then_some(())
    });
    zkc.delete(&pid_node);
    proxy.heal();
    wait_for("the agent's session through a new connection", || {
        (proxy.forwarded() > forwarded && zk.session_connected(owner)).then_some(())
    });
    let (again, same) = wait_for("the pid node written again", || zkc.get(&pid_node));
    assert_eq!(
        (pid, owner),
        (again, same),
        "the same process, the same session"
    );
    let log = agent.log_text();
    assert!(!log.contains("expired"), "{log}");
}
