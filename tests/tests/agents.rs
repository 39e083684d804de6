//! Several agents (machine ids) on one host: each runs only its own services; concurrent
//! deploys from many clients all land.

use pop_tests::{initialised, wait_for, Checker, Machine, Zk};
use std::collections::BTreeSet;

#[test]
fn two_agents_run_only_their_own_services() {
    let zk = Zk::start();
    let a = Machine::new(&zk);
    let b = Machine::new(&zk);
    let zkc = Checker::connect(&zk);
    a.ok(&["init"]);
    a.ok(&["add", "echo", "--name", "alpha", "--port", "0"]);
    a.ok(&["add", "echo", "--name", "beta", "--port", "0"]);
    a.ok(&["add", "echo", "--name", "both", "--port", "0"]);
    a.ok(&["deploy", "alpha"]);
    b.ok(&["deploy", "beta"]);
    a.ok(&["deploy", "both", "--machine", &a.id, "--machine", &b.id]);
    let _agent_a = a.agent();
    let _agent_b = b.agent();
    for (machine, service) in [
        (&a.id, "alpha"),
        (&b.id, "beta"),
        (&a.id, "both"),
        (&b.id, "both"),
    ] {
        wait_for(&format!("{service} on {machine}"), || {
            zkc.get(&format!("/services/{service}/state/{machine}"))
        });
    }
    let on_a: BTreeSet<String> = zkc
        .children(&format!("/machines/{}", a.id))
        .into_iter()
        .collect();
    let on_b: BTreeSet<String> = zkc
        .children(&format!("/machines/{}", b.id))
        .into_iter()
        .collect();
    assert_eq!(on_a, ["alpha", "both"].map(String::from).into());
    assert_eq!(on_b, ["beta", "both"].map(String::from).into());
    let machines = a.ok(&["machines"]);
    assert!(
        machines.contains(&a.id) && machines.contains(&b.id),
        "{machines}"
    );
}

#[test]
fn concurrent_deploys_all_land() {
    let (_zk, m, zkc) = initialised();
    m.ok(&["add", "echo", "--name", "web"]);
    let ids: Vec<String> = (0..12).map(|i| format!("node-{i}")).collect();
    let children: Vec<_> = ids
        .iter()
        .map(|id| {
            m.command(&["deploy", "web", "--machine", id])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn deploy")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("deploy");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = zkc.get_json("/services/web/machines").expect("machines");
    let got: BTreeSet<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    assert_eq!(got, ids.iter().cloned().collect::<BTreeSet<_>>());
}

/// `--host host:port/chroot` keeps separate pop namespaces on one ZooKeeper.
#[test]
fn chroots_are_separate_namespaces() {
    let zk = Zk::start();
    let mut prod = Machine::new(&zk);
    prod.hosts = format!("{}/pop/prod", zk.hosts());
    let mut staging = Machine::new(&zk);
    staging.hosts = format!("{}/pop/staging", zk.hosts());
    prod.ok(&["init"]);
    staging.ok(&["init"]);
    prod.ok(&["add", "echo", "--name", "web"]);
    let zkc = Checker::connect(&zk);
    assert!(zkc.get("/pop/prod/services/web/settings").is_some());
    assert!(zkc.children("/pop/staging/services").is_empty());
    let err = staging.fails(&["status", "web"]);
    assert!(err.contains("no service named"), "{err}");
}

/// Found in review: an agent with nothing to stop must still close its session on exit,
/// so its node goes at once instead of after the session timeout.
#[test]
fn an_idle_agent_leaves_no_node_behind() {
    let (_zk, m, zkc) = initialised();
    let mut agent = m.agent();
    let node = format!("/agents/{}", m.id);
    wait_for("the agent node", || zkc.get(&node));
    let status = agent.stop();
    assert!(status.success(), "{}", agent.log_text());
    assert!(
        zkc.get(&node).is_none(),
        "agent node still there after exit"
    );
}

/// The agent's event loop runs on its main thread (a current-thread runtime): no tokio
/// worker threads, whose sibling wake-ups cost an idle agent about a third of its
/// context switches. Besides it only the ZooKeeper client's reactor (`async-io`) and
/// the blocking pool, named so it is not taken for workers, even after a restart
/// (spawn and clean-up run on the pool).
#[test]
fn the_agent_runs_its_event_loop_on_its_main_thread() {
    let (_zk, m, zkc) = initialised();
    m.ok(&[
        "add",
        "command",
        "--name",
        "sleeper",
        "--set",
        "command=exec sleep 100000",
        "--set",
        "start_seconds=0",
    ]);
    m.ok(&["deploy", "sleeper"]);
    let agent = m.agent();
    let pid_of = || {
        zkc.get_json(&format!("/services/sleeper/state/{}", m.id))
            .and_then(|s| s["pid"].as_u64())
    };
    let first = wait_for("sleeper to run", pid_of);
    pop_tests::signal(first as i32, libc::SIGKILL);
    wait_for("a restarted sleeper", || pid_of().filter(|p| *p != first));
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).expect("tasks");
    let mut names = BTreeSet::new();
    for task in tasks {
        let path = task.expect("task").path();
        if let Ok(comm) = std::fs::read_to_string(path.join("comm")) {
            names.insert(comm.trim().to_string());
        }
    }
    let exe = pop_tests::pop_exe();
    let main = exe.file_name().expect("exe name").to_string_lossy();
    let allowed: BTreeSet<String> = [&*main, "async-io", "pop-blocking"]
        .map(String::from)
        .into();
    assert!(
        names.is_subset(&allowed),
        "agent threads {names:?}, expected only {allowed:?}"
    );
    assert!(names.contains(&*main), "{names:?}");
}
