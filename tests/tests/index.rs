//! The assignment index (`/assignments/<machine>`, issue 15) against a real ZooKeeper
//! with several agents on one host: an agent watches only what is deployed on it, so a
//! change of a service wakes only the machines running it; pop's own plans keep the
//! index exactly as the machines lists say.

use pop_tests::{wait_for, Checker, Machine, Zk};
use std::collections::BTreeSet;

/// The session of `machine`'s agent: the owner of its report node.
fn agent_session(zkc: &Checker, machine: &str) -> i64 {
    wait_for(&format!("{machine}'s agent report"), || {
        zkc.get(&format!("/agents/{machine}"))
            .map(|(_, owner)| owner)
    })
}

/// The paths the agent of `machine` watches about `service`.
fn watches_on(zk: &Zk, session: i64, service: &str) -> Vec<String> {
    let prefix = format!("/services/{service}");
    zk.watches_by_session()
        .remove(&session)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .collect()
}

/// Every service's machines list and the index say the same.
fn assert_index_consistent(zkc: &Checker) {
    let mut listed = BTreeSet::new();
    for service in zkc.children("/services") {
        let list = zkc
            .get_json(&format!("/services/{service}/machines"))
            .unwrap_or_default();
        for m in list.as_array().into_iter().flatten() {
            let m = m.as_str().expect("a machine id");
            listed.insert((m.to_string(), service.clone()));
        }
    }
    let mut indexed = BTreeSet::new();
    for m in zkc.children("/assignments") {
        for service in zkc.children(&format!("/assignments/{m}")) {
            indexed.insert((m.clone(), service));
        }
    }
    assert_eq!(indexed, listed, "index (left) vs machines lists (right)");
}

#[test]
fn a_settings_change_wakes_only_the_machines_running_the_service() {
    let zk = Zk::start();
    let (m1, m2, m3) = (Machine::new(&zk), Machine::new(&zk), Machine::new(&zk));
    let zkc = Checker::connect(&zk);
    m1.ok(&["init"]);
    m1.ok(&["add", "echo", "--name", "alpha", "--port", "0"]);
    m1.ok(&["add", "echo", "--name", "beta", "--port", "0"]);
    m1.ok(&["deploy", "alpha", "--machine", &m1.id]);
    m1.ok(&["deploy", "beta", "--machine", &m2.id]);
    // m1's agent starts first and becomes the keeper (which watches every machines
    // list: one agent in the fleet); m2 and m3 then only follow their own index.
    let keeper = m1.agent();
    wait_for("m1 keeps the index", || {
        zkc.get("/pop/keeper")
            .filter(|(data, _)| data == m1.id.as_bytes())
    });
    let _agents = [keeper, m2.agent(), m3.agent()];
    let state =
        |service: &str, m: &Machine| zkc.get(&format!("/services/{service}/state/{}", m.id));
    let first = wait_for("alpha on m1", || state("alpha", &m1));
    wait_for("beta on m2", || state("beta", &m2));
    let sessions = [&m1, &m2, &m3].map(|m| agent_session(&zkc, &m.id));
    wait_for("m1 watches alpha's settings", || {
        watches_on(&zk, sessions[0], "alpha")
            .contains(&"/services/alpha/settings".to_string())
            .then_some(())
    });
    // Neither m2 nor m3 watches anything of alpha: ZooKeeper tells them nothing of a
    // change to it, so they read nothing (agents do not poll).
    for (m, session) in [(&m2, sessions[1]), (&m3, sessions[2])] {
        assert_eq!(
            watches_on(&zk, session, "alpha"),
            Vec::<String>::new(),
            "{}",
            m.id
        );
    }
    let all = zk.watches_by_session();
    let of_m3 = all.get(&sessions[2]).cloned().unwrap_or_default();
    let own_pid_nodes = format!("/machines/{}", m3.id);
    assert!(
        of_m3.iter().all(|p| p.starts_with("/assignments/")
            || p.starts_with("/agents/")
            || *p == own_pid_nodes
            || p == "/pop/keeper"),
        "m3 runs nothing and watches only its index, its report, its own pid nodes (one \
         tree watch) and who keeps: {of_m3:?}"
    );
    m1.ok(&["set", "alpha", "stop_timeout=3"]);
    wait_for("alpha restarted on m1", || {
        state("alpha", &m1).filter(|now| now.0 != first.0)
    });
    for (m, session) in [(&m2, sessions[1]), (&m3, sessions[2])] {
        assert_eq!(
            watches_on(&zk, session, "alpha"),
            Vec::<String>::new(),
            "{}",
            m.id
        );
    }
}

#[test]
fn deploy_undeploy_and_remove_keep_the_index_as_the_lists_say() {
    let zk = Zk::start();
    let (m1, m2) = (Machine::new(&zk), Machine::new(&zk));
    let zkc = Checker::connect(&zk);
    m1.ok(&["init"]);
    assert_eq!(zkc.children("/assignments"), Vec::<String>::new());
    m1.ok(&["add", "echo", "--name", "alpha", "--port", "0"]);
    m1.ok(&["deploy", "alpha", "--machine", &m1.id, "--machine", &m2.id]);
    assert_index_consistent(&zkc);
    assert_eq!(
        zkc.children(&format!("/assignments/{}", m2.id)),
        ["alpha".to_string()]
    );
    let _agents = [m1.agent(), m2.agent()];
    for m in [&m1, &m2] {
        wait_for(&format!("alpha on {}", m.id), || {
            zkc.get(&format!("/services/alpha/state/{}", m.id))
        });
    }
    m1.ok(&["undeploy", "alpha", "--machine", &m2.id]);
    assert_index_consistent(&zkc);
    wait_for("alpha stopped on m2", || {
        zkc.get(&format!("/services/alpha/state/{}", m2.id))
            .is_none()
            .then_some(())
    });
    m1.ok(&["remove", "alpha", "--force"]);
    assert_index_consistent(&zkc);
    for m in [&m1, &m2] {
        assert_eq!(
            zkc.children(&format!("/assignments/{}", m.id)),
            Vec::<String>::new()
        );
    }
    // `pop dump` shows the index with the rest.
    m1.ok(&["add", "echo", "--name", "beta", "--port", "0"]);
    m1.ok(&["deploy", "beta", "--machine", &m1.id]);
    let dump = m1.ok(&["dump"]);
    assert!(
        dump.contains(&format!("/assignments/{}/beta", m1.id)),
        "{dump}"
    );
    // `pop init --force` clears it with the services.
    m1.ok(&["init", "--force"]);
    assert_index_consistent(&zkc);
    assert_eq!(
        zkc.children(&format!("/assignments/{}", m1.id)),
        Vec::<String>::new()
    );
}
