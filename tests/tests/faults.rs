//! Faults between the agent and ZooKeeper: a server restart, a leader crash in an
//! ensemble, and session expiry, once with the agent frozen (SIGSTOP) and once with the
//! network partitioned (a proxy dropping bytes). Services keep running through all of
//! them (the default session-loss policy is keep-running); changes made meanwhile take
//! effect once the agent is back.
//!
//! Every wait is a condition with a deadline. The tests run one at a time (a lock):
//! they use short sessions and several JVMs, and two cores shared by parallel tests
//! would turn scheduling delays into spurious session expiries.

use pop_tests::{
    initialised, processes_with, session_alive, session_connected, wait_for, Agent, Checker,
    Ensemble, Machine, TcpProxy,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Session timeout of agents whose session the tests let expire (within ZooKeeper's
/// 0.4-4 s range at a 200 ms tick).
const SHORT_SESSION_MS: u32 = 2000;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static NEXT_SLEEP: AtomicU32 = AtomicU32::new(1);

/// A `command` service running `exec sleep N` with an N unique to this test process, so
/// its processes are found by command line; `V=1` in its environment. Deployed on `m`.
/// Returns the command-line marker.
fn add_sleeper(m: &Machine, name: &str) -> String {
    let seconds = format!(
        "{}{:02}",
        100_000 + std::process::id() % 900_000,
        NEXT_SLEEP.fetch_add(1, Ordering::SeqCst)
    );
    m.ok(&[
        "add",
        "command",
        "--name",
        name,
        "--set",
        &format!("command=exec sleep {seconds}"),
        "--set",
        "start_seconds=0.2",
        "--set",
        "stop_timeout=2",
        "--set",
        "env={\"V\":\"1\"}",
    ]);
    m.ok(&["deploy", name]);
    // The trailing space: the command line ends there (NULs read as spaces).
    format!("sleep {seconds} ")
}

/// The service's pid when both its nodes exist and agree: the state JSON's pid and the
/// machine's pid node.
fn consistent_pid(zkc: &Checker, m: &Machine, service: &str) -> Option<u64> {
    let state = zkc.get_json(&format!("/services/{service}/state/{}", m.id))?;
    let pid = state["pid"].as_u64()?;
    let (data, _) = zkc.get(&format!("/machines/{}/{service}", m.id))?;
    let node: u64 = String::from_utf8_lossy(&data).trim().parse().ok()?;
    (node == pid).then_some(pid)
}

fn running(zkc: &Checker, m: &Machine, service: &str) -> u64 {
    wait_for(&format!("{service} to run with consistent nodes"), || {
        consistent_pid(zkc, m, service)
    })
}

/// Ephemeral owners of the agent's report and of a service's two nodes.
fn owners(zkc: &Checker, m: &Machine, service: &str) -> [Option<i64>; 3] {
    [
        format!("/agents/{}", m.id),
        format!("/services/{service}/state/{}", m.id),
        format!("/machines/{}/{service}", m.id),
    ]
    .map(|p| zkc.get(&p).map(|(_, owner)| owner))
}

fn environ(pid: u64) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|e| String::from_utf8_lossy(&e).replace('\0', "\n"))
        .unwrap_or_default()
}

/// Exactly one process carries `marker`, and it is `pid` (a stopped predecessor may
/// take a moment to go).
fn only_process(marker: &str, pid: u64) {
    wait_for(
        &format!("exactly one process {marker:?}, pid {pid}"),
        || (processes_with(marker) == [pid as i32]).then_some(()),
    );
}

/// `pop set` restarts the service with the new setting: a new pid with `V=<value>`.
fn set_and_see_restart(m: &Machine, zkc: &Checker, service: &str, marker: &str, old: u64) -> u64 {
    m.ok(&["set", service, "env={\"V\":\"2\"}"]);
    let new = wait_for(&format!("{service} restarted with V=2"), || {
        consistent_pid(zkc, m, service).filter(|p| *p != old && environ(*p).contains("\nV=2\n"))
    });
    only_process(marker, new);
    new
}

/// A standalone server restarts on the same port and data directory: the agent
/// reconnects, the service is not restarted, the nodes still tell the truth, and the
/// agent still acts on changes.
#[test]
fn zookeeper_restart_keeps_the_service() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let (mut zk, m, zkc) = initialised();
    let marker = add_sleeper(&m, "svc");
    let agent = m.agent();
    let pid = running(&zkc, &m, "svc");
    let agents = format!("/agents/{}", m.id);
    let [Some(owner), ..] = owners(&zkc, &m, "svc") else {
        panic!("no agent report")
    };
    drop(zkc);

    let fault = Instant::now();
    zk.restart();
    let restarted = fault.elapsed();
    let zkc = Checker::connect(&zk);
    // The agent's report is owned by a live session that a client is connected with.
    let now_owner = wait_for("the agent connected again", || {
        zkc.get(&agents)
            .map(|(_, o)| o)
            .filter(|o| zk.session_alive(*o) && zk.session_connected(*o))
    });
    let reconnected = fault.elapsed();
    let [a, s, p] = owners(&zkc, &m, "svc");
    assert_eq!(
        (a, s, p),
        (Some(now_owner), Some(now_owner), Some(now_owner)),
        "all three ephemerals belong to the agent's session"
    );
    assert_eq!(consistent_pid(&zkc, &m, "svc"), Some(pid), "not restarted");
    only_process(&marker, pid);
    let report = zkc.get_json(&agents).expect("report");
    eprintln!(
        "zookeeper restart: server back after {restarted:?}, agent connected after \
         {reconnected:?}, session {} (was 0x{owner:x}, now 0x{now_owner:x})",
        if owner == now_owner {
            "kept"
        } else {
            "replaced"
        }
    );
    eprintln!("agent report: {report}");

    // Still watching: a settings change restarts the service.
    set_and_see_restart(&m, &zkc, "svc", &marker, pid);
    eprintln!("zookeeper restart test took {:?}", t0.elapsed());
    drop(agent);
}

/// The leader of a 3-node ensemble crashes: a new leader is elected, the agent's session
/// moves to a surviving server, the service keeps running, and a later `pop set` still
/// restarts it.
#[test]
fn ensemble_leader_crash_keeps_the_service() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let mut ens = Ensemble::start(3).unwrap_or_else(|e| panic!("ensemble: {e}"));
    let formed = t0.elapsed();
    let hosts = ens.hosts();
    let m = Machine::with_hosts(&hosts);
    let zkc = Checker::connect_to(&hosts);
    m.ok(&["init"]);
    let marker = add_sleeper(&m, "svc");
    let agent = m.agent();
    let pid = running(&zkc, &m, "svc");
    let agents = format!("/agents/{}", m.id);
    let [Some(owner), ..] = owners(&zkc, &m, "svc") else {
        panic!("no agent report")
    };
    let leader = ens.leader().expect("a leader");

    let fault = Instant::now();
    ens.kill(leader);
    let new_leader = ens.wait_quorum().unwrap_or_else(|e| panic!("{e}"));
    let elected = fault.elapsed();
    assert_ne!(new_leader, leader);
    let live: Vec<String> = (0..ens.len())
        .filter(|i| *i != leader)
        .map(|i| ens.client_addr(i).to_string())
        .collect();
    wait_for("the agent's session on a surviving server", || {
        let connected = live.iter().any(|a| session_connected(a, owner));
        let tracked = session_alive(&ens.client_addr(new_leader).to_string(), owner);
        (connected && tracked).then_some(())
    });
    let reconnected = fault.elapsed();
    assert_eq!(
        owners(&zkc, &m, "svc"),
        [Some(owner); 3],
        "the same session still owns the agent's nodes"
    );
    assert_eq!(consistent_pid(&zkc, &m, "svc"), Some(pid), "not restarted");
    only_process(&marker, pid);
    let report = zkc.get_json(&agents).expect("report");
    eprintln!(
        "leader crash: ensemble formed in {formed:?}; node {leader} killed, node \
         {new_leader} elected after {elected:?}; agent connected after {reconnected:?}"
    );
    eprintln!("agent report: {report}");

    set_and_see_restart(&m, &zkc, "svc", &marker, pid);
    eprintln!("leader crash test took {:?}", t0.elapsed());
    drop(agent);
}

/// What both expiry tests check once the agent is back: a new session owns re-created
/// ephemerals, the change made meanwhile took effect, the service added meanwhile runs,
/// the untouched one kept its process, one process per service, and a change made
/// afterwards is acted on.
struct BeforeExpiry {
    owner: i64,
    keep: (u64, String),
    change: (u64, String),
}

fn assert_recovered(m: &Machine, zkc: &Checker, before: &BeforeExpiry, fresh_marker: &str) {
    let agents = format!("/agents/{}", m.id);
    let owner = wait_for("the agent report from a new session", || {
        zkc.get(&agents)
            .map(|(_, o)| o)
            .filter(|o| *o != before.owner)
    });
    let (keep_pid, keep_marker) = &before.keep;
    let (change_pid, change_marker) = &before.change;
    let changed = wait_for("the changed service restarted with V=2", || {
        consistent_pid(zkc, m, "change")
            .filter(|p| p != change_pid && environ(*p).contains("\nV=2\n"))
    });
    let fresh = running(zkc, m, "fresh");
    let kept = running(zkc, m, "keep");
    assert_eq!(kept, *keep_pid, "the unchanged service kept its process");
    assert!(environ(kept).contains("\nV=1\n"));
    for service in ["keep", "change", "fresh"] {
        wait_for(
            &format!("{service}'s ephemerals owned by the new session"),
            || (owners(zkc, m, service) == [Some(owner); 3]).then_some(()),
        );
    }
    only_process(keep_marker, kept);
    only_process(change_marker, changed);
    only_process(fresh_marker, fresh);
    // The watches were armed again in the new session: a later change is acted on.
    set_and_see_restart(m, zkc, "keep", keep_marker, kept);
}

/// Two services deployed and running under an agent with a short session, connected to
/// `agent_hosts`.
fn two_services(m: &Machine, zkc: &Checker, agent_hosts: &str) -> (BeforeExpiry, Agent) {
    let keep = add_sleeper(m, "keep");
    let change = add_sleeper(m, "change");
    let agent = m.agent_with(agent_hosts, SHORT_SESSION_MS);
    let keep_pid = running(zkc, m, "keep");
    let change_pid = running(zkc, m, "change");
    let owner = wait_for("the agent report", || {
        zkc.get(&format!("/agents/{}", m.id)).map(|(_, o)| o)
    });
    let before = BeforeExpiry {
        owner,
        keep: (keep_pid, keep),
        change: (change_pid, change),
    };
    (before, agent)
}

fn wait_expired(zkc: &Checker, m: &Machine) {
    // The server expired the session: its ephemerals are gone.
    wait_for("the server to expire the agent's session", || {
        let [a, s, p] = owners(zkc, m, "keep");
        (a.is_none() && s.is_none() && p.is_none()).then_some(())
    });
}

/// The middle of both expiry tests: `cut` keeps the agent from the server until the
/// session expires; the target state changes meanwhile; after `restore` (which may first
/// check the cut state) the agent must catch up. Prints how long each part took.
fn expire_change_and_recover(
    m: &Machine,
    zkc: &Checker,
    before: &BeforeExpiry,
    agent: &Agent,
    what: &str,
    cut: impl FnOnce(),
    restore: impl FnOnce(),
) {
    let t0 = Instant::now();
    cut();
    wait_expired(zkc, m);
    let expired = t0.elapsed();
    m.ok(&["set", "change", "env={\"V\":\"2\"}"]);
    let fresh = add_sleeper(m, "fresh");
    let restored = Instant::now();
    restore();
    assert_recovered(m, zkc, before, &fresh);
    eprintln!(
        "{what}: session expired {expired:?} after the fault; recovered {:?} after it ended",
        restored.elapsed()
    );
    let log = agent.log_text();
    assert!(log.contains("expired"), "{log}");
}

/// The agent is frozen past its session timeout; the server expires the session; the
/// target state changes meanwhile; the agent thaws and catches up.
#[test]
fn session_expiry_while_the_agent_is_frozen() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let (_zk, m, zkc) = initialised();
    let (before, agent) = two_services(&m, &zkc, &m.hosts);
    expire_change_and_recover(
        &m,
        &zkc,
        &before,
        &agent,
        "frozen agent (SIGSTOP, then SIGCONT)",
        || agent.pause(),
        || agent.resume(),
    );
    eprintln!("test took {:?}", t0.elapsed());
}

/// The network between agent and server drops everything past the session timeout; the
/// server expires the session; the target state changes meanwhile; the network heals
/// and the agent catches up.
#[test]
fn session_expiry_across_a_partition() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let (zk, m, zkc) = initialised();
    let proxy = TcpProxy::start(zk.server.addr()).expect("proxy");
    // Only the agent goes through the proxy; `pop` commands and the checker do not.
    let (before, agent) = two_services(&m, &zkc, &proxy.connect_string());
    assert!(
        proxy.forwarded() >= 1,
        "the agent connected through the proxy"
    );
    expire_change_and_recover(
        &m,
        &zkc,
        &before,
        &agent,
        "partition",
        || proxy.partition(),
        || {
            assert!(
                processes_with(&before.keep.1) == [before.keep.0 as i32],
                "the service runs on while the agent is cut off"
            );
            proxy.heal()
        },
    );
    eprintln!("test took {:?}", t0.elapsed());
}

/// A partition shorter than the session timeout: the agent's connection goes silent,
/// the network heals, the agent notices the dead connection and resumes the same session
/// through a new one; nothing is restarted or re-created.
#[test]
fn brief_partition_keeps_the_session() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let (zk, m, zkc) = initialised();
    let proxy = TcpProxy::start(zk.server.addr()).expect("proxy");
    let marker = add_sleeper(&m, "svc");
    // The longest session ZooKeeper grants at a 200 ms tick: 4 s.
    let agent = m.agent_with(&proxy.connect_string(), 4000);
    let pid = running(&zkc, &m, "svc");
    let [Some(owner), ..] = owners(&zkc, &m, "svc") else {
        panic!("no agent report")
    };
    let forwarded = proxy.forwarded();

    let fault = Instant::now();
    proxy.partition();
    // The partition bit: the agent's client sent something (a ping) into the black hole.
    wait_for("the agent's traffic to be dropped", || {
        (proxy.dropped() > 0).then_some(())
    });
    proxy.heal();
    let healed = fault.elapsed();
    // The old connection stays a black hole: the client must notice and reconnect.
    wait_for("the agent's session through a new connection", || {
        (proxy.forwarded() > forwarded && zk.session_connected(owner)).then_some(())
    });
    let resumed = fault.elapsed();
    assert_eq!(owners(&zkc, &m, "svc"), [Some(owner); 3], "same session");
    assert_eq!(consistent_pid(&zkc, &m, "svc"), Some(pid), "not restarted");
    only_process(&marker, pid);
    let log = agent.log_text();
    assert!(!log.contains("expired"), "{log}");
    eprintln!(
        "brief partition: healed after {healed:?}, session resumed after {resumed:?}; \
         test took {:?}",
        t0.elapsed()
    );
    // Still watching.
    set_and_see_restart(&m, &zkc, "svc", &marker, pid);
}

/// A service crashes while its agent is cut off from ZooKeeper: the agent restarts it
/// without asking ZooKeeper, and publishes the new process once the network is back.
#[test]
fn crash_during_a_partition_is_restarted_locally() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let (zk, m, zkc) = initialised();
    let proxy = TcpProxy::start(zk.server.addr()).expect("proxy");
    let marker = add_sleeper(&m, "svc");
    let agent = m.agent_with(&proxy.connect_string(), SHORT_SESSION_MS);
    let pid = running(&zkc, &m, "svc");

    proxy.partition();
    let fault = Instant::now();
    pop_tests::signal(pid as i32, libc::SIGKILL);
    let local = wait_for("a new process while cut off", || {
        match processes_with(&marker).as_slice() {
            [p] if *p != pid as i32 => Some(*p as u64),
            _ => None,
        }
    });
    let restarted = fault.elapsed();
    proxy.heal();
    let published = wait_for("the new process published", || {
        consistent_pid(&zkc, &m, "svc").filter(|p| *p == local)
    });
    let published_after = fault.elapsed();
    only_process(&marker, published);
    let state = zkc
        .get_json(&format!("/services/svc/state/{}", m.id))
        .expect("state");
    assert_eq!(state["restarts"], 1, "{state}");
    eprintln!(
        "crash while partitioned: restarted locally {restarted:?} after the kill, published \
         {published_after:?} after it; test took {:?}",
        t0.elapsed()
    );
    drop(agent);
}

/// The ensemble loses its quorum (two of three nodes crash) for longer than the agent's
/// session timeout: the service runs on; once the nodes are back the agent opens a
/// session again, republishes the same process, and acts on changes.
#[test]
fn ensemble_quorum_loss_keeps_the_service() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let mut ens = Ensemble::start(3).unwrap_or_else(|e| panic!("ensemble: {e}"));
    let hosts = ens.hosts();
    let m = Machine::with_hosts(&hosts);
    let zkc = Checker::connect_to(&hosts);
    m.ok(&["init"]);
    let marker = add_sleeper(&m, "svc");
    let agent = m.agent_with(&hosts, SHORT_SESSION_MS);
    let pid = running(&zkc, &m, "svc");
    drop(zkc);
    let leader = ens.leader().expect("a leader");
    let follower = (0..ens.len()).find(|i| *i != leader).expect("a follower");

    let fault = Instant::now();
    ens.kill(follower);
    ens.kill(leader);
    // The agent's client gave up on its session (no quorum for a whole session timeout).
    wait_for("the agent to give up its session", || {
        agent.log_text().contains("session expired").then_some(())
    });
    let gave_up = fault.elapsed();
    assert_eq!(processes_with(&marker), [pid as i32], "the service runs on");
    ens.start_node(follower).expect("restart a node");
    ens.start_node(leader).expect("restart a node");
    ens.wait_quorum().unwrap_or_else(|e| panic!("{e}"));
    let zkc = Checker::connect_to(&hosts);
    let owner = wait_for("the agent report", || {
        zkc.get(&format!("/agents/{}", m.id)).map(|(_, o)| o)
    });
    assert_eq!(
        running(&zkc, &m, "svc"),
        pid,
        "the same process, republished"
    );
    wait_for(
        "the service's ephemerals owned by the agent's session",
        || (owners(&zkc, &m, "svc") == [Some(owner); 3]).then_some(()),
    );
    only_process(&marker, pid);
    let recovered = fault.elapsed();
    set_and_see_restart(&m, &zkc, "svc", &marker, pid);
    eprintln!(
        "quorum loss: agent gave up its session {gave_up:?} after the crash, recovered \
         {recovered:?} after it; test took {:?}",
        t0.elapsed()
    );
}
