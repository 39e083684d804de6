//! The agent's pid nodes under its tree watch (a persistent recursive watch on
//! /machines/<id>) on a real ZooKeeper: no watch of their own, and one deleted by
//! someone else is heard of through the tree watch and written again.

use pop_tests::{initialised, wait_for};

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
