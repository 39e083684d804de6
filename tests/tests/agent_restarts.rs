//! The agent itself goes away and comes back: killed with SIGKILL, or stopped with
//! `--keep-services` for an upgrade. The next agent adopts the services (same pid, no
//! restart), notices their exits, and acts on changes; there is never a second copy.
//! And the `fence` session-loss policy: down before the session can expire, up again
//! once it is back.

use pop_tests::{initialised, processes_with, signal, wait_for, Checker, Machine, TcpProxy};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(1);

/// Adds and deploys a `command` service running `exec sleep N`, N unique to this test
/// process; returns the command-line marker that finds its process.
fn add_sleeper(m: &Machine, name: &str, extra: &[&str]) -> String {
    let seconds = format!(
        "{}{:02}",
        200_000 + std::process::id() % 700_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let command = format!("command=exec sleep {seconds}");
    let mut args = vec![
        "add",
        "command",
        "--name",
        name,
        "--set",
        &command,
        "--set",
        "start_seconds=0.2",
        "--set",
        "stop_timeout=2",
    ];
    for e in extra {
        args.extend(["--set", e]);
    }
    m.ok(&args);
    m.ok(&["deploy", name]);
    format!("sleep {seconds} ")
}

/// The pid of `service` as published by the agent's *current* session: the state node's
/// pid, agreeing with the pid node, both owned by the session that owns the agent node.
fn published(zkc: &Checker, m: &Machine, service: &str) -> Option<i64> {
    let agent_owner = zkc.get(&format!("/agents/{}", m.id))?.1;
    let (state, state_owner) = zkc.get(&format!("/services/{service}/state/{}", m.id))?;
    let (pid_node, pid_owner) = zkc.get(&format!("/machines/{}/{service}", m.id))?;
    let pid = serde_json::from_slice::<serde_json::Value>(&state).ok()?["pid"].as_i64()?;
    let node: i64 = String::from_utf8_lossy(&pid_node).trim().parse().ok()?;
    (state_owner == agent_owner && pid_owner == agent_owner && node == pid).then_some(pid)
}

/// Waits until the agent `agent` itself reports (not a dead predecessor's nodes).
fn reporting(zkc: &Checker, m: &Machine, agent: &pop_tests::Agent) {
    let agents = format!("/agents/{}", m.id);
    wait_for("the new agent's own report", || {
        let report = zkc.get_json(&agents)?;
        (report["pid"].as_u64() == Some(u64::from(agent.pid()))).then_some(())
    });
}

fn published_as(zkc: &Checker, m: &Machine, service: &str, want: i64) {
    wait_for(&format!("{service} published with pid {want}"), || {
        (published(zkc, m, service) == Some(want)).then_some(())
    });
}

fn only_process(marker: &str, pid: i64) {
    wait_for(&format!("exactly one {marker:?}, pid {pid}"), || {
        (processes_with(marker) == [pid as i32]).then_some(())
    });
}

#[test]
fn a_killed_agent_s_services_are_adopted_and_still_supervised() {
    let (_zk, m, zkc) = initialised();
    let marker = add_sleeper(&m, "svc", &[]);
    m.ok(&["add", "echo", "--name", "echo"]);
    m.ok(&["deploy", "echo"]);
    let mut agent = m.agent();
    let pid = wait_for("svc published", || published(&zkc, &m, "svc"));
    let echo = wait_for("echo published", || published(&zkc, &m, "echo"));
    let echo_port = zkc
        .get_json(&format!("/services/echo/state/{}", m.id))
        .and_then(|s| s["port"].as_u64());
    agent.kill();

    let started = Instant::now();
    let again = m.agent();
    reporting(&zkc, &m, &again);
    published_as(&zkc, &m, "svc", pid);
    published_as(&zkc, &m, "echo", echo);
    eprintln!("adopted and republished in {:?}", started.elapsed());
    only_process(&marker, pid);
    assert_eq!(
        zkc.get_json(&format!("/services/echo/state/{}", m.id))
            .and_then(|s| s["port"].as_u64()),
        echo_port,
        "the adopted echo keeps its port"
    );

    // Its exit is still noticed (it is not the new agent's child): restarted.
    signal(pid as i32, libc::SIGKILL);
    let restarted = wait_for("svc restarted after its adopted process died", || {
        published(&zkc, &m, "svc").filter(|p| *p != pid)
    });
    only_process(&marker, restarted);

    // And changes still apply to adopted processes.
    m.ok(&["set", "echo", "env={\"V\":\"2\"}"]);
    wait_for("echo restarted with the new settings", || {
        published(&zkc, &m, "echo").filter(|p| *p != echo)
    });
}

#[test]
fn changes_made_while_no_agent_runs_apply_to_adopted_services() {
    let (_zk, m, zkc) = initialised();
    let changed = add_sleeper(&m, "changed", &[]);
    let dropped = add_sleeper(&m, "dropped", &[]);
    let mut agent = m.agent();
    let changed_pid = wait_for("published", || published(&zkc, &m, "changed"));
    let dropped_pid = wait_for("published", || published(&zkc, &m, "dropped"));
    agent.kill();
    m.ok(&["set", "changed", "env={\"V\":\"2\"}"]);
    m.ok(&["undeploy", "dropped"]);
    let again = m.agent();
    reporting(&zkc, &m, &again);
    let new_pid = wait_for("changed restarted with V=2", || {
        published(&zkc, &m, "changed").filter(|p| *p != changed_pid)
    });
    only_process(&changed, new_pid);
    wait_for("dropped stopped", || {
        processes_with(&dropped).is_empty().then_some(())
    });
    assert!(!processes_with(&dropped).contains(&(dropped_pid as i32)));
}

#[test]
fn stop_keep_services_then_a_new_agent_adopts_them() {
    let (_zk, m, zkc) = initialised();
    let marker = add_sleeper(&m, "svc", &[]);
    let mut agent = m.agent();
    let pid = wait_for("published", || published(&zkc, &m, "svc"));

    let out = m.ok(&["stop", "--keep-services"]);
    assert!(out.contains("left running"), "{out}");
    wait_for("the agent to exit", || agent.try_exit());
    // The session was closed, so its nodes went at once; the service did not.
    wait_for("the agent's nodes gone", || {
        zkc.get(&format!("/machines/{}/svc", m.id))
            .is_none()
            .then_some(())
    });
    only_process(&marker, pid);

    let upgraded = m.agent();
    reporting(&zkc, &m, &upgraded);
    published_as(&zkc, &m, "svc", pid);
    only_process(&marker, pid);
    let log =
        std::fs::read_to_string(m.state_dir().join("logs").join("svc.log")).expect("service log");
    assert!(log.contains("adopted"), "{log}");
}

/// `session_loss=fence`: partitioned from ZooKeeper, the service is stopped before the
/// server can expire the session (so nobody sees it registered while unsupervised) and
/// started again once the agent has a session; a keep-running service is untouched.
#[test]
fn fence_stops_the_service_before_its_session_can_expire() {
    let (zk, m, zkc) = initialised();
    let proxy = TcpProxy::start(zk.server.addr()).expect("proxy");
    let fenced = add_sleeper(&m, "primary", &["session_loss=fence"]);
    let kept = add_sleeper(&m, "cache", &[]);
    let session = Duration::from_millis(4000);
    let _agent = m.agent_with(&proxy.connect_string(), session.as_millis() as u32);
    let primary = wait_for("primary published", || published(&zkc, &m, "primary"));
    let cache = wait_for("cache published", || published(&zkc, &m, "cache"));
    let pid_node = format!("/machines/{}/primary", m.id);

    let cut = Instant::now();
    proxy.partition();
    let mut stopped_at = None;
    let mut expired_at = None;
    wait_for("the fenced service stopped and the session expired", || {
        if stopped_at.is_none() && processes_with(&fenced).is_empty() {
            stopped_at = Some(cut.elapsed());
        }
        if expired_at.is_none() && zkc.get(&pid_node).is_none() {
            expired_at = Some(cut.elapsed());
        }
        stopped_at.zip(expired_at)
    });
    let (stopped, expired) = (
        stopped_at.unwrap_or_default(),
        expired_at.unwrap_or_default(),
    );
    eprintln!("partitioned: primary stopped after {stopped:?}, its nodes expired after {expired:?} (session {session:?})");
    assert!(
        stopped < expired,
        "the fenced service ran until {stopped:?}, past its session's expiry at {expired:?}"
    );
    only_process(&kept, cache);

    proxy.heal();
    let again = wait_for("primary running again once the session is back", || {
        published(&zkc, &m, "primary").filter(|p| *p != primary)
    });
    only_process(&fenced, again);
    published_as(&zkc, &m, "cache", cache);
}
