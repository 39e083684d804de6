//! The agent's pid nodes under one tree watch (a persistent recursive watch on
//! /machines/<id>) instead of a data watch each, and what happens when that watch is
//! refused or misses events.

use pop_core::paths;
use pop_sim::World;
use std::time::Duration;

const CMD: &str = r#"{"type":"command","command":"serve","start_seconds":0.5}"#;

fn settle(w: &mut World) {
    w.run_for(Duration::from_secs(5));
    if let Err(e) = w.check_converged() {
        panic!("not converged: {e}\n{}", w.trace.join("\n"));
    }
}

fn sent(w: &World, request: &str) -> usize {
    w.trace.iter().filter(|l| l.contains(request)).count()
}

#[test]
fn pid_nodes_are_watched_by_one_tree_watch_and_not_read_again() {
    let mut w = World::new(&["m1"], 21);
    w.add_service("a", CMD, &["m1"]);
    w.add_service("b", CMD, &["m1"]);
    settle(&mut w);
    assert_eq!(sent(&w, r#"WatchTree { path: "/machines/m1" }"#), 1);
    assert_eq!(
        sent(&w, r#"GetData { path: "/machines/m1/"#),
        0,
        "a pid node was read"
    );
    assert!(w.zk.get(&paths::machine_service("m1", "a")).is_some());
}

#[test]
fn on_a_server_without_tree_watches_each_pid_node_is_watched_and_rewritten() {
    let mut w = World::new(&["m1"], 22);
    w.zk.refuse_tree_watches();
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    let watched = r#"GetData { path: "/machines/m1/job", watch: true }"#;
    assert_eq!(sent(&w, watched), 1);
    w.admin_remove(&paths::machine("m1"));
    settle(&mut w);
    assert!(w.zk.get(&paths::machine_service("m1", "job")).is_some());
}

#[test]
fn a_pid_node_deleted_while_the_connection_was_down_is_written_again() {
    let mut w = World::new(&["m1"], 23);
    w.add_service("job", CMD, &["m1"]);
    settle(&mut w);
    // Lost at once, back within the session: the tree watch's event is lost with it.
    w.partition(0, true, true, true);
    w.run_for(Duration::from_millis(500));
    w.admin_remove(&paths::machine_service("m1", "job"));
    w.run_for(Duration::from_millis(500));
    w.heal(0);
    settle(&mut w);
    assert!(w.zk.get(&paths::machine_service("m1", "job")).is_some());
}

/// The requests each of five restarts after a healthy run sends.
fn restarts(refuse_tree_watches: bool) -> Vec<Vec<String>> {
    use pop_core::event::ExitStatus;
    let mut w = World::new(&["m1"], 24);
    if refuse_tree_watches {
        w.zk.refuse_tree_watches();
    }
    w.add_service("job", CMD, &["m1"]);
    w.run_for(Duration::from_secs(20));
    let mut each = Vec::new();
    for _ in 0..5 {
        let before = w.trace.len();
        let killed = ExitStatus {
            code: None,
            signal: Some(9),
        };
        w.crash(0, "job", killed);
        w.run_for(Duration::from_secs(20));
        let sent = w.trace[before..]
            .iter()
            .filter(|l| l.contains(" Zk { id: "))
            .map(|l| {
                l.split(" op: ")
                    .nth(1)
                    .unwrap_or(l)
                    .chars()
                    .take(60)
                    .collect()
            })
            .collect();
        each.push(sent);
    }
    each
}

/// A restart sets the pid node and does not read it again to re-arm a watch: one
/// request fewer than with a watch per node (the old server's way).
#[test]
fn a_restart_writes_the_pid_node_without_reading_it_again() {
    let with_tree = restarts(false);
    let per_node = restarts(true);
    for (tree, node) in with_tree.iter().zip(&per_node) {
        assert!(
            !tree
                .iter()
                .any(|op| op.starts_with(r#"GetData { path: "/machines/m1/job""#)),
            "{tree:#?}"
        );
        assert_eq!(tree.len() + 1, node.len(), "{tree:#?}\n{node:#?}");
    }
    eprintln!(
        "requests per restart: {} with the tree watch, {} with a watch per node: {:#?}",
        with_tree[0].len(),
        per_node[0].len(),
        with_tree[0]
    );
}
