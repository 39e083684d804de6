//! Stopping a service stops everything it started: a grandchild that ignores SIGTERM, a
//! child that called setsid, and a double-forked daemon. In both containment modes, both
//! on undeploy and on `pop stop`.

use pop_tests::{processes_with, wait_for, Checker, Machine, Zk};

/// A command leaving three kinds of hard-to-stop descendants; each `sleep` gets a unique
/// duration so the test finds exactly its own processes.
fn nasty_command(base: u64) -> (String, Vec<String>) {
    let markers: Vec<String> = (1..=4).map(|i| format!("sleep {base}{i} ")).collect();
    let command = format!(
        "sh -c 'trap \"\" TERM; sleep {base}1' & \
         setsid sleep {base}2 & \
         (setsid sh -c 'trap \"\" TERM; exec sleep {base}3' &) ; \
         exec sleep {base}4"
    );
    (command, markers)
}

/// Initialises pop and deploys `command` as the service "nasty" with a 1 s stop grace.
fn deploy_nasty(m: &Machine, command: &str) {
    m.ok(&["init"]);
    m.ok(&[
        "add",
        "command",
        "--name",
        "nasty",
        "--set",
        &format!("command={command}"),
        "--set",
        "stop_timeout=1",
        "--set",
        "start_seconds=0.2",
    ]);
    m.ok(&["deploy", "nasty"]);
}

fn wait_all_running(markers: &[String]) {
    wait_for("every process of the service to run", || {
        markers
            .iter()
            .all(|mk| !processes_with(mk).is_empty())
            .then_some(())
    });
}

fn leftovers(markers: &[String]) -> Vec<i32> {
    markers.iter().flat_map(|m| processes_with(m)).collect()
}

fn check_mode(containment: &'static str, expect_in_status: &str) {
    let zk = Zk::start();
    let mut m = Machine::new(&zk);
    m.containment = Some(containment);
    let zkc = Checker::connect(&zk);
    let base = 7_000_000
        + u64::from(std::process::id() % 100_000) * 10
        + if containment == "cgroup" { 0 } else { 5 };
    let (command, markers) = nasty_command(base);
    deploy_nasty(&m, &command);
    let mut agent = m.agent();
    wait_all_running(&markers);
    wait_for("the agent report", || {
        zkc.get_json(&format!("/agents/{}", m.id))
    });
    let machines = m.ok(&["machines"]);
    assert!(machines.contains(expect_in_status), "{machines}");

    // Undeploy: everything goes, including what ignores SIGTERM (killed after the grace).
    m.ok(&["undeploy", "nasty"]);
    wait_for("every descendant to be gone after undeploy", || {
        leftovers(&markers).is_empty().then_some(())
    });

    // Deploy again, then stop the agent: `pop stop` returns only when nothing is left.
    m.ok(&["deploy", "nasty"]);
    wait_all_running(&markers);
    let status = agent.stop();
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        agent.log_text()
    );
    assert_eq!(
        leftovers(&markers),
        Vec::<i32>::new(),
        "left behind after agent stop"
    );
}

#[test]
fn cgroup_containment_leaves_nothing() {
    if !std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
        && !std::path::Path::new("/sys/fs/cgroup/cgroup.procs").exists()
    {
        eprintln!("SKIPPED: no cgroup v2 on this machine");
        return;
    }
    check_mode("cgroup", "cgroup");
}

#[test]
fn process_group_containment_leaves_nothing() {
    check_mode("process-group", "process-group");
}

/// An agent killed with SIGKILL leaves its services running; the next agent for the same
/// machine and state directory adopts them (same processes, no restart), and stopping
/// it later still leaves nothing behind: not the setsid child, not the double-forked one.
#[test]
fn restarted_agent_adopts_its_services_and_leaves_no_orphans() {
    let zk = Zk::start();
    let m = Machine::new(&zk);
    let zkc = Checker::connect(&zk);
    let base = 8_000_000 + u64::from(std::process::id() % 100_000) * 10;
    let (command, markers) = nasty_command(base);
    deploy_nasty(&m, &command);
    let mut agent = m.agent();
    wait_all_running(&markers);
    let state = format!("/services/nasty/state/{}", m.id);
    let main = wait_for("the service to be published", || {
        zkc.get_json(&state).and_then(|s| s["pid"].as_i64())
    });
    let old = leftovers(&markers);
    agent.kill();
    let mut again = m.agent();
    wait_for(
        "the adopted service to be published by the new agent",
        || {
            let node = zkc.get(&state)?;
            let pid = serde_json::from_slice::<serde_json::Value>(&node.0).ok()?["pid"].as_i64()?;
            // A node of the new agent's session (the old one lingers until it expires).
            let (report, agent_owner) = zkc.get(&format!("/agents/{}", m.id))?;
            let report: serde_json::Value = serde_json::from_slice(&report).ok()?;
            let by_new = report["pid"].as_u64() == Some(u64::from(again.pid()));
            (by_new && node.1 == agent_owner).then_some(pid)
        },
    );
    assert_eq!(
        zkc.get_json(&state).and_then(|s| s["pid"].as_i64()),
        Some(main),
        "adopted, not restarted"
    );
    assert_eq!(
        leftovers(&markers),
        old,
        "the same processes, no second copy"
    );
    again.stop();
    assert_eq!(leftovers(&markers), Vec::<i32>::new());
}

/// When the main process exits by itself, what it left behind gets the service's own
/// `stop_timeout` (1 s here), not the 10 s default, before SIGKILL.
#[test]
fn leftovers_of_an_exited_main_get_the_services_stop_timeout() {
    let zk = Zk::start();
    let m = Machine::new(&zk);
    let zkc = Checker::connect(&zk);
    let base = 9_000_000 + u64::from(std::process::id() % 100_000) * 10;
    let marker = format!("sleep {base}1 ");
    m.ok(&["init"]);
    m.ok(&[
        "add",
        "command",
        "--name",
        "brief",
        "--set",
        &format!("command=sh -c 'trap \"\" TERM; exec sleep {base}1' & sleep 1"),
        "--set",
        "restart=never",
        "--set",
        "stop_timeout=1",
        "--set",
        "start_seconds=0.2",
    ]);
    m.ok(&["deploy", "brief"]);
    let _agent = m.agent();
    wait_for("the leftover to start", || {
        (!processes_with(&marker).is_empty()).then_some(())
    });
    let started = std::time::Instant::now();
    wait_for("the leftover to be killed", || {
        processes_with(&marker).is_empty().then_some(())
    });
    // Main runs ~1 s, then 1 s of grace: far below the 10 s default.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    wait_for("the exit in the agent report", || {
        let report = zkc.get_json(&format!("/agents/{}", m.id))?;
        (report["services"]["brief"]["phase"] == "exited").then_some(())
    });
}
