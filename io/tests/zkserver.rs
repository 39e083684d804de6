//! The local ZooKeeper launcher against the real Debian package.

use pop_io::zkserver::{
    daemon_status, four_letter, start_daemon, stop_daemon, ZkServer, ZkServerConfig, ZkServerError,
};
use std::time::{Duration, Instant};

fn config(dir: &std::path::Path) -> ZkServerConfig {
    ZkServerConfig {
        port: 0,
        data_dir: dir.join("data"),
        tick_ms: 200,
        log_file: Some(dir.join("zk.log")),
        ..ZkServerConfig::default()
    }
}

fn gone(pid: u32) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        // A zombie (our own child, not yet reaped) has an empty command line.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn throwaway_servers_answer_and_die_with_their_handle() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = ZkServer::start(config(&dir.path().join("a"))).expect("server a");
    let b = ZkServer::start(config(&dir.path().join("b"))).expect("server b");
    assert_ne!(a.port(), b.port());
    let timeout = Duration::from_secs(2);
    assert_eq!(
        four_letter(a.port(), "ruok", timeout).expect("ruok"),
        "imok"
    );
    let srvr = four_letter(b.port(), "srvr", timeout).expect("srvr");
    assert!(srvr.contains("Mode: standalone"), "{srvr:?}");
    let (pid, port) = (a.pid().expect("pid"), a.port());
    drop(a);
    assert!(gone(pid), "dropping the handle kills the server");
    assert!(four_letter(port, "ruok", timeout).is_err(), "port closed");
}

#[test]
fn daemon_starts_once_reports_and_stops() {
    let dir = tempfile::tempdir().expect("tmp");
    let pid_file = dir.path().join("zk.pid");
    let cfg = config(dir.path());
    let started = start_daemon(&cfg, &pid_file).expect("daemon");
    assert!(started.running);
    let status = daemon_status(&pid_file).expect("status");
    assert!(status.running);
    assert!(status.to_string().contains("Mode: standalone"), "{status}");
    match start_daemon(&cfg, &pid_file) {
        Err(ZkServerError::AlreadyRunning { pid, .. }) => assert_eq!(Some(pid), started.pid),
        other => panic!("second start: {other:?}"),
    }
    stop_daemon(&pid_file).expect("stop");
    assert!(gone(started.pid.expect("pid")));
    assert!(!daemon_status(&pid_file).expect("status").running);
    assert!(matches!(
        stop_daemon(&pid_file),
        Err(ZkServerError::NotRunning { .. })
    ));
}
