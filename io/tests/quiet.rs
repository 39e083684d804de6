//! The supervisor costs no CPU while nothing happens: no timer per running service, no
//! interval over every log, and while a generation's leftovers linger after its main
//! process exited, nothing polls for them either. And stopping them all costs little:
//! without cgroups, the /proc scans that find each generation's processes are shared.
//! Measured as this process's CPU time (children excluded), so this test has a binary
//! of its own: nothing else runs in it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pop_io::supervise::{
    ContainmentChoice, ProcessSpec, SuperviseError, Supervisor, SupervisorConfig, SupervisorEvent,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const SERVICES: usize = 100;
const WINDOW: Duration = Duration::from_secs(2);
/// What the window may cost: a hundredth of what a 50 ms poll per service did.
const BUDGET: Duration = Duration::from_millis(10);
/// What stopping all of them may cost (about 40 ms here); a /proc scan per service and
/// look took 550 ms with 100 services, and seconds with more.
const STOP_BUDGET: Duration = Duration::from_millis(200);

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills in the struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// This process's CPU time over `WINDOW` of doing nothing.
async fn idle_cost() -> Duration {
    let before = cpu_time();
    tokio::time::sleep(WINDOW).await;
    cpu_time() - before
}

fn spec(service: &str, argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        service: service.to_string(),
        generation: 1,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        unset: Vec::new(),
        cwd: None,
        probe: None,
        exit_grace: None,
        note: serde_json::Value::Null,
        output: None,
        run_as: None,
    }
}

async fn next_event(rx: &mut UnboundedReceiver<SupervisorEvent>) -> SupervisorEvent {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("event channel closed")
}

async fn quiet_in(choice: ContainmentChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SupervisorConfig::new(
        format!("quiet-{}-{choice:?}", std::process::id()),
        dir.path(),
        choice,
    );
    config.exit_grace = Duration::from_secs(30);
    let (tx, mut rx) = unbounded_channel();
    let mut sup = match Supervisor::new(config, tx) {
        Ok(sup) => sup,
        Err(SuperviseError::CgroupUnavailable(why)) => {
            println!("SKIPPED cgroup mode: {why}");
            return;
        }
        Err(e) => panic!("Supervisor::new: {e}"),
    };
    for i in 0..SERVICES {
        sup.spawn(spec(&format!("idle{i}"), &["sleep", "1000"]));
        assert!(
            matches!(next_event(&mut rx).await, SupervisorEvent::Spawned { .. }),
            "spawn {i}"
        );
    }
    // What starting them left to do is done: each start marker written to a log
    // wakes its rotation check once, a second later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = idle_cost().await;
    assert!(
        idle < BUDGET,
        "{choice:?}: {idle:?} of CPU in {WINDOW:?} with {SERVICES} idle services"
    );

    // The main process exits at once; its child ignores TERM and lives 4 s more.
    let t0 = Instant::now();
    sup.spawn(spec(
        "lingers",
        &[
            "sh",
            "-c",
            r#"sh -c 'trap "" TERM; exec sleep 4' & sleep 0.2"#,
        ],
    ));
    assert!(matches!(
        next_event(&mut rx).await,
        SupervisorEvent::Spawned { .. }
    ));
    // Past the main exit and the first look at what is left.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let waiting = idle_cost().await;
    assert!(
        waiting < BUDGET,
        "{choice:?}: {waiting:?} of CPU in {WINDOW:?} waiting for a leftover"
    );
    match next_event(&mut rx).await {
        SupervisorEvent::Exited { service, .. } => assert_eq!(service, "lingers"),
        other => panic!("expected Exited, got {other:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "{choice:?}: the leftover's exit was noticed only after {took:?}"
    );
    // All of them at once, as `pop stop` does.
    let before = cpu_time();
    sup.shutdown(Duration::from_secs(2)).await;
    let stopping = cpu_time() - before;
    assert!(sup.running().is_empty());
    assert!(
        stopping < STOP_BUDGET,
        "{choice:?}: stopping {SERVICES} services took {stopping:?} of CPU"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervision_is_quiet() {
    quiet_in(ContainmentChoice::Cgroup).await;
    quiet_in(ContainmentChoice::ProcessGroup).await;
}
