//! The production driver under madsim: agents on two machines talking to a ZooKeeper
//! node over simulated TCP; one agent killed and restarted, one crashed mid-write, one
//! cut off, ZooKeeper restarted; the cluster converges after each and every journal
//! replays.
//! Run through sim/madsim.sh (one seed per process; see there why).
#![cfg(madsim)]

use pop_core::planted::{plant, Bug};
use pop_io::driver::StopRequest;
use pop_madsim::cluster::Cluster;
use pop_madsim::machine::AgentState;
use std::collections::BTreeMap;
use std::time::Duration;

const SERVICE: &str = "a";
const V1: &str = r#"{"type":"command","command":"serve","start_seconds":0.5}"#;
const V2: &str = r#"{"type":"command","command":"serve v2","start_seconds":0.5}"#;
const V3: &str = r#"{"type":"command","command":"serve v3","start_seconds":0.5}"#;
const MACHINES: [&str; 2] = ["m1", "m2"];
/// Covers the killed agent's old session expiring (4 s and a tick), madsim's restart
/// after a crash (1-10 s), a client giving up (5.6 s) and reconnect backoff.
/// Forced expiries in a run: each catches a stale reply only if a request falls in the
/// few milliseconds the client takes to learn of it.
const EXPIRIES: usize = 12;
/// Faults in a random run, 0-3 s apart.
const FAULTS: usize = 25;
/// After the heal: madsim may hold a clogged link's bytes up to 10 s more, a crashed
/// node restarts within 10 s, and sessions of killed agents must expire first.
const HEALED: Duration = Duration::from_secs(90);
const SETTLE: Duration = Duration::from_secs(60);

/// `POP_MADSIM_BUG=<name>` plants one of pop-core's bugs (the driver's are the point).
fn planted_bug() -> Option<Bug> {
    let name = std::env::var("POP_MADSIM_BUG")
        .ok()
        .filter(|n| !n.is_empty())?;
    let bug = Bug::ALL
        .iter()
        .find(|b| format!("{b:?}") == name)
        .unwrap_or_else(|| panic!("POP_MADSIM_BUG={name}: no such bug; one of {:?}", Bug::ALL));
    Some(*bug)
}

#[madsim::test]
async fn agents_killed_and_crashed_converge_and_their_journals_replay() {
    // On this (the seed's) thread: the switch is per thread.
    plant(planted_bug());
    let mut cluster = Cluster::start(&MACHINES);
    cluster.deploy(SERVICE, V1, &MACHINES);
    let first = cluster
        .wait_for("deployed", SETTLE, |c| c.converged(SERVICE, &MACHINES))
        .await;

    // SIGKILL of m1's agent, restarted a moment later: it adopts the running process
    // (same pid) and publishes it again once its old session has expired.
    cluster.kill("m1");
    let down = Duration::from_millis(madsim::rand::random::<u64>() % 3000);
    cluster.run_for(down).await;
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
    cluster.run_for(cut).await;
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

    // m2's service dies while m2 is cut off: the agent restarts it and publishes that
    // while no reply can come (a request in flight through a partition), and the cut
    // lasts past the session's expiry, with the agent's retries outstanding.
    cluster.clog("m2");
    cluster.process_dies("m2", SERVICE);
    let cut = Duration::from_millis(5000 + madsim::rand::random::<u64>() % 4000);
    cluster.run_for(cut).await;
    cluster.unclog("m2");
    cluster
        .wait_for("m2 reconnected", SETTLE, |c| {
            c.converged(SERVICE, &MACHINES)
        })
        .await;

    // m2 cut off one way while new settings are deployed: it hears of them and its
    // reads go unanswered (a request in flight through a partition), until past its
    // session's expiry; its retries may be outstanding when the client gives up.
    cluster.clog_out("m2");
    cluster.deploy(SERVICE, V3, &MACHINES);
    let cut = Duration::from_millis(5000 + madsim::rand::random::<u64>() % 4000);
    cluster.run_for(cut).await;
    cluster.unclog_out("m2");
    cluster
        .wait_for("v3 everywhere", SETTLE, |c| c.converged(SERVICE, &MACHINES))
        .await;

    // Forced expiries amid traffic: a service dies (its agent restarts and publishes it)
    // or new settings arrive, and a moment later the server expires that agent's session
    // and closes its connection, as ZooKeeper does. Requests the agent makes while its
    // client reconnects fail after the client reports `Expired`: stale replies.
    let mut settled = BTreeMap::new();
    for round in 0..EXPIRIES {
        let id = MACHINES[round % MACHINES.len()];
        if madsim::rand::random::<bool>() {
            cluster.process_dies(id, SERVICE);
        } else {
            let settings = if round % 2 == 0 { V2 } else { V3 };
            cluster.deploy(SERVICE, settings, &MACHINES);
        }
        cluster
            .run_for(Duration::from_millis(madsim::rand::random::<u64>() % 15))
            .await;
        cluster.expire(id);
        settled = cluster
            .wait_for("a new session after a forced expiry", SETTLE, |c| {
                c.converged(SERVICE, &MACHINES)
            })
            .await;
    }

    // ZooKeeper restarts: every agent reconnects (to its session, if still live).
    cluster.kill_zk();
    let down = Duration::from_millis(madsim::rand::random::<u64>() % 6000);
    cluster.run_for(down).await;
    cluster.restart_zk();
    let back = cluster
        .wait_for("ZooKeeper back", SETTLE, |c| {
            c.converged(SERVICE, &MACHINES)
        })
        .await;
    assert_eq!(back, settled, "nothing restarted for the ZooKeeper restart");

    let files = stop_and_check(&mut cluster).await;
    assert_eq!(cluster.torn_journals(), 1, "the crash tore one journal");
    println!(
        "seed {} replayed {files} journal files; trace {:?}",
        madsim::runtime::Handle::current().seed(),
        cluster.trace()
    );
    println!("digest {:016x}", cluster.digest());
}

/// Faults drawn from madsim's RNG for the seed, some overlapping: partitions (both ways,
/// or only what a machine sends), agents killed and restarted or paused and resumed,
/// crashes at a journal write, ZooKeeper down and up, forced expiries, services dying,
/// new settings, the service moved between machines. The pure simulator's safety
/// invariants are checked every 100 ms throughout. Then everything heals; the cluster
/// must converge (the pure simulator's liveness checks), every journal replay and the
/// driver keep its contract.
#[madsim::test]
async fn random_faults_then_heal_converge_and_keep_the_contract() {
    plant(planted_bug());
    let mut cluster = Cluster::start(&MACHINES);
    cluster.deploy(SERVICE, V1, &MACHINES);
    cluster
        .wait_for("deployed", SETTLE, |c| c.converged(SERVICE, &MACHINES))
        .await;
    let rand = |n: u64| madsim::rand::random::<u64>() % n;
    // Where the service is deployed now.
    let mut on: &[&str] = &MACHINES;
    for _ in 0..FAULTS {
        let id = MACHINES[usize::try_from(rand(2)).expect("small")];
        match rand(16) {
            0 => {
                // Cut off amid traffic, at times: the agent restarts its service and
                // publishes that while no reply can come.
                cluster.clog(id);
                if rand(2) == 0 {
                    cluster.process_dies(id, SERVICE);
                }
            }
            1 => cluster.unclog(id),
            2 => {
                // Its sends cut, at times as new settings come: it hears of them, and
                // its reads go unanswered.
                cluster.clog_out(id);
                if rand(2) == 0 {
                    let settings = [V1, V2, V3][usize::try_from(rand(3)).expect("small")];
                    cluster.deploy(SERVICE, settings, on);
                }
            }
            3 if !cluster.is_killed(id) => cluster.kill(id),
            3 | 4 if cluster.is_killed(id) => cluster.restart(id),
            5 => cluster.crash_at_write(id, u32::try_from(rand(8)).expect("small")),
            6 if !cluster.zk_down() => cluster.kill_zk(),
            6 | 7 if cluster.zk_down() => cluster.restart_zk(),
            8 | 13..=15 if cluster.connected(id) => {
                // A forced expiry amid traffic (as in the scripted test): the agent's
                // requests for a restart or new settings fail after its client reports
                // the expiry, and must not reach the core.
                if rand(2) == 0 {
                    cluster.process_dies(id, SERVICE);
                } else {
                    let settings = [V1, V2, V3][usize::try_from(rand(3)).expect("small")];
                    cluster.deploy(SERVICE, settings, on);
                }
                cluster.run_for(Duration::from_millis(rand(15))).await;
                cluster.expire(id);
            }
            9 => cluster.process_dies(id, SERVICE),
            10 => {
                let settings = [V1, V2, V3][usize::try_from(rand(3)).expect("small")];
                on = [&MACHINES[..], &MACHINES[..1], &MACHINES[1..]]
                    [usize::try_from(rand(3)).expect("small")];
                cluster.deploy(SERVICE, settings, on);
            }
            11 if !cluster.is_paused(id) && !cluster.is_killed(id) => cluster.pause(id),
            11 | 12 if cluster.is_paused(id) => cluster.resume(id),
            _ => {}
        }
        cluster.run_for(Duration::from_millis(rand(3000))).await;
    }
    cluster.heal();
    cluster
        .wait_for("healed", HEALED, |c| {
            c.check_converged()?;
            c.converged(SERVICE, on)
        })
        .await;
    let files = stop_and_check(&mut cluster).await;
    println!(
        "seed {} replayed {files} journal files; trace {:?}",
        madsim::runtime::Handle::current().seed(),
        cluster.trace()
    );
    println!("digest {:016x}", cluster.digest());
}

/// A clean stop everywhere, so the journals end as the agents leave them; then every
/// journal replays and the driver kept its contract with the core. The files replayed.
async fn stop_and_check(cluster: &mut Cluster) -> usize {
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
    if std::env::var_os("POP_MADSIM_DUMP").is_some() {
        for m in &cluster.machines {
            println!(
                "{}:\n{}",
                m.machine.id,
                pop_madsim::contract::dump(m.machine.disk().files())
            );
        }
    }
    // Each was connected when asked to stop (the last convergence says so): its close
    // reached the server.
    for id in MACHINES {
        // (Its client may have learnt of the close as an expiry, on a reconnect.)
        let Some(session) = cluster.machine(id).machine.last_session() else {
            panic!(
                "{id}: no session after the stop ({:?}); faults {:?}",
                cluster.machine(id).machine.agent(),
                cluster.trace()
            );
        };
        assert!(
            !cluster.zk.lock().model.is_live(session),
            "{id}'s agent closed its session as it exited"
        );
    }

    let files = cluster.replay_journals().expect("every journal replays");
    if let Err(broken) = cluster.check_contracts() {
        panic!(
            "the driver broke its contract: {broken}\nfaults: {:?}",
            cluster.trace()
        );
    }
    files
}
