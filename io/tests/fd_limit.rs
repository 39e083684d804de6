//! Open files: the supervisor raises its soft limit (but not its services'), and the
//! descriptors it holds for services (pidfds of main processes) stay under half of it,
//! so even a limit it cannot raise does not bound how many services it runs. The limit
//! is process-wide, so this test has a binary of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use pop_io::supervise::{
    ContainmentChoice, ProcessSpec, Supervisor, SupervisorConfig, SupervisorEvent,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// How many services, and under what limit: several times as many as the limit
/// (`POP_FD_TEST_SERVICES` and `POP_FD_TEST_LIMIT` change them, e.g. 10000 and 1024
/// for the usual default limit).
fn sizes() -> (usize, u64) {
    let var = |name: &str, default| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        var("POP_FD_TEST_SERVICES", 600) as usize,
        var("POP_FD_TEST_LIMIT", 200),
    )
}

fn set_nofile(soft: u64, hard: u64) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

/// "Max open files" soft limit of `pid`, from /proc.
fn soft_limit_of(pid: u32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn spec(service: String) -> ProcessSpec {
    ProcessSpec {
        service,
        generation: 1,
        argv: vec!["sleep".into(), "1000".into()],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_services_under_a_low_open_file_limit() {
    let (services, limit) = sizes();
    let (_, hard) = nofile();
    set_nofile(64, hard.min(limit));
    let dir = tempfile::tempdir().unwrap();
    let config = SupervisorConfig::new(
        format!("fds-{}", std::process::id()),
        dir.path(),
        ContainmentChoice::Auto,
    );
    let (tx, mut rx) = unbounded_channel();
    let mut sup = Supervisor::new(config, tx).expect("supervisor");
    // Raised to the hard limit for the agent, which is low ...
    assert_eq!(nofile(), (hard.min(limit), hard.min(limit)));
    let before = open_fds();
    for i in 0..services {
        sup.spawn(spec(format!("many{i}")));
        match next_event(&mut rx).await {
            SupervisorEvent::Spawned { pid, .. } => {
                if i == 0 {
                    // ... but not for its services.
                    assert_eq!(soft_limit_of(pid), 64, "a service's open-file limit");
                }
            }
            other => panic!("service {i} of {services}: {other:?}"),
        }
    }
    assert_eq!(sup.running().len(), services);
    let held = open_fds().saturating_sub(before) as u64;
    assert!(
        held <= limit / 2 + 5,
        "{held} more descriptors open with {services} services running"
    );
    // Those beyond the pidfds report their exits with SIGCHLD: all are seen to stop.
    let t = std::time::Instant::now();
    sup.shutdown(Duration::from_secs(5)).await;
    println!(
        "{services} services under a limit of {limit}: {held} descriptors held, stopped in {:?}",
        t.elapsed()
    );
    assert!(sup.running().is_empty());
}
