//! The production driver under madsim: agents on two machines talking to a ZooKeeper
//! node over simulated TCP; one agent killed and restarted, one crashed mid-write, one
//! cut off, ZooKeeper restarted; the cluster converges after each and every journal
//! replays.
//! Run through sim/madsim.sh (one seed per process; see there why).
#![cfg(madsim)]

use pop_io::driver::StopRequest;
use pop_madsim::cluster::Cluster;
use pop_madsim::machine::AgentState;
use std::time::Duration;

const SERVICE: &str = "a";
const V1: &str = r#"{"type":"command","command":"serve","start_seconds":0.5}"#;
const V2: &str = r#"{"type":"command","command":"serve v2","start_seconds":0.5}"#;
const MACHINES: [&str; 2] = ["m1", "m2"];
/// Covers the killed agent's old session expiring (4 s and a tick), madsim's restart
/// after a crash (1-10 s), a client giving up (5.6 s) and reconnect backoff.
const SETTLE: Duration = Duration::from_secs(60);

#[madsim::test]
async fn agents_killed_and_crashed_converge_and_their_journals_replay() {
    let mut cluster = Cluster::start(&MACHINES);
    cluster.deploy(SERVICE, V1, &MACHINES);
    let first = cluster
        .wait_for("deployed", SETTLE, |c| c.converged(SERVICE, &MACHINES))
        .await;

    // SIGKILL of m1's agent, restarted a moment later: it adopts the running process
    // (same pid) and publishes it again once its old session has expired.
    cluster.kill("m1");
    let down = Duration::from_millis(madsim::rand::random::<u64>() % 3000);
    tokio::time::sleep(down).await;
    cluster.restart("m1");
    let adopted = cluster
        .wait_for("m1 back", SETTLE, |c| {
            let pids = c.converged(SERVICE, &MACHINES)?;
            (pids == first)
                .then_some(pids)
                .ok_or_else(|| "not the adopted pids".to_string())
        })
        .await;
    assert_eq!(
        adopted, first,
        "m1 adopted its process rather than restarting it"
    );

    // m2's agent dies mid-write while it restarts the service with new settings.
    let writes = u32::try_from(madsim::rand::random::<u64>() % 6).expect("small");
    cluster.crash_at_write("m2", writes);
    cluster.deploy(SERVICE, V2, &MACHINES);
    let v2 = cluster
        .wait_for("v2 everywhere", SETTLE, |c| c.converged(SERVICE, &MACHINES))
        .await;
    assert!(
        !cluster.machine("m2").machine.disk().crash_pending(),
        "the crash happened"
    );

    // m1 cut off: a short cut only delays its traffic, a long one (past 7/5 of the 4 s
    // session timeout) expires its session; either way the service keeps running and m1
    // publishes it again, in a live session of its own.
    let cut = Duration::from_millis(500 + madsim::rand::random::<u64>() % 7500);
    let before = cluster.machine("m1").machine.connected_session();
    cluster.clog("m1");
    tokio::time::sleep(cut).await;
    cluster.unclog("m1");
    let healed = cluster
        .wait_for("m1 reconnected", SETTLE, |c| {
            c.converged(SERVICE, &MACHINES)
        })
        .await;
    assert_eq!(healed, v2, "nothing restarted for the cut");
    let after = cluster.machine("m1").machine.connected_session();
    // Past the server's 4 s (and a tick, and a ping's interval) it expired; before the
    // client's 8 ticks (1.6 s, less a ping's interval) it was not even disconnected.
    if cut >= Duration::from_secs(5) {
        assert_ne!(after, before, "a {cut:?} cut expires the session");
    }
    if cut < Duration::from_millis(900) {
        assert_eq!(after, before, "a {cut:?} cut keeps the session");
    }

    // ZooKeeper restarts: every agent reconnects (to its session, if still live).
    cluster.kill_zk();
    let down = Duration::from_millis(madsim::rand::random::<u64>() % 6000);
    tokio::time::sleep(down).await;
    cluster.restart_zk();
    let back = cluster
        .wait_for("ZooKeeper back", SETTLE, |c| {
            c.converged(SERVICE, &MACHINES)
        })
        .await;
    assert_eq!(back, v2, "nothing restarted for the ZooKeeper restart");

    // A clean stop everywhere, so the journals end as the agents leave them.
    for id in MACHINES {
        assert!(
            cluster.machine(id).machine.request_stop(StopRequest::Stop),
            "{id}'s agent takes requests"
        );
    }
    cluster
        .wait_for("agents stopped", SETTLE, |c| {
            let left: usize = MACHINES
                .iter()
                .map(|id| c.machine(id).machine.processes().len())
                .sum();
            let running = MACHINES
                .iter()
                .filter(|id| {
                    !matches!(
                        c.machine(id).machine.agent(),
                        Some(AgentState::Exited { refused: None, .. })
                    )
                })
                .count();
            (left == 0 && running == 0)
                .then_some(())
                .ok_or_else(|| format!("{left} processes left, {running} agents not exited"))
        })
        .await;
    // Each was connected when asked to stop (the last convergence says so): its close
    // reached the server.
    for id in MACHINES {
        let (session, _) = cluster.machine(id).machine.session().expect("a session");
        assert!(
            !cluster.zk.lock().model.is_live(session),
            "{id}'s agent closed its session as it exited"
        );
    }

    let files = cluster.replay_journals().expect("every journal replays");
    assert_eq!(cluster.torn_journals(), 1, "the crash tore one journal");
    println!(
        "seed {} replayed {files} journal files; trace {:?}",
        madsim::runtime::Handle::current().seed(),
        cluster.trace()
    );
    println!("digest {:016x}", cluster.digest());
}
