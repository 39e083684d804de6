//! The local ZooKeeper launcher against the real Debian package
//! (`apt-get install -y zookeeper`).

use pop_zkserver::{
    daemon_status, find_installation, four_letter, start_daemon, stop_daemon, ZkServer,
    ZkServerConfig, ZkServerError,
};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(2);

fn config(dir: &Path) -> ZkServerConfig {
    ZkServerConfig {
        port: 0,
        data_dir: dir.join("data"),
        tick_ms: 200,
        log_file: Some(dir.join("zk.log")),
        fsync: false,
        four_letter_words: ["srvr", "ruok", "mntr"].map(String::from).to_vec(),
        ..ZkServerConfig::default()
    }
}

/// Polls `cond` until it holds or 10 s have passed.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// No process (not even a zombie) has this pid.
fn no_process(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn ruok(port: u16) -> Result<String, ZkServerError> {
    four_letter(("127.0.0.1", port), "ruok", TIMEOUT)
}

#[test]
fn installation_is_found() {
    let install = find_installation().expect("apt-get install -y zookeeper");
    assert!(install.java.is_file());
    assert!(install.classpath().contains("zookeeper.jar"));
}

#[test]
fn a_server_answers_and_dies_with_its_handle() {
    let dir = tempfile::tempdir().expect("tmp");
    let zk = ZkServer::start(config(dir.path())).expect("server");
    assert_eq!(zk.connect_string(), format!("127.0.0.1:{}", zk.port()));
    assert_eq!(ruok(zk.port()).expect("ruok"), "imok");
    let srvr = four_letter(zk.connect_string(), "srvr", TIMEOUT).expect("srvr");
    assert!(srvr.contains("Mode: standalone"), "{srvr:?}");
    let mntr = four_letter(zk.addr(), "mntr", TIMEOUT).expect("mntr");
    assert!(mntr.contains("zk_server_state\tstandalone"), "{mntr:?}");

    let (pid, port) = (zk.pid().expect("pid"), zk.port());
    drop(zk);
    // Drop kills and reaps at once: no process, no zombie, nothing on the port.
    assert!(no_process(pid), "pid {pid} still there after drop");
    assert!(ruok(port).is_err(), "port {port} still answers");
}

#[test]
fn two_servers_get_different_ports() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = ZkServer::start(config(&dir.path().join("a"))).expect("server a");
    let b = ZkServer::start(config(&dir.path().join("b"))).expect("server b");
    assert_ne!(a.port(), b.port());
    assert_eq!(ruok(a.port()).expect("ruok a"), "imok");
    assert_eq!(ruok(b.port()).expect("ruok b"), "imok");
}

#[test]
fn a_taken_port_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let err = ZkServer::start(ZkServerConfig {
        port,
        ..config(dir.path())
    })
    .expect_err("port is taken");
    assert!(
        matches!(err, ZkServerError::PortInUse { port: p, .. } if p == port),
        "{err}"
    );
}

#[test]
fn pause_resume_restart_and_stop() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut zk = ZkServer::start(config(dir.path())).expect("server");
    let port = zk.port();

    zk.pause().expect("pause");
    let short = Duration::from_millis(300);
    assert!(four_letter(("127.0.0.1", port), "ruok", short).is_err());
    zk.resume().expect("resume");
    assert!(eventually(|| ruok(port).is_ok()), "answers after resume");

    let old = zk.pid().expect("pid");
    zk.restart().expect("restart");
    assert_eq!(zk.port(), port, "same port");
    assert_ne!(zk.pid(), Some(old), "a new process");
    assert!(no_process(old), "the old process is reaped");
    assert_eq!(ruok(port).expect("ruok"), "imok");

    // A paused server still stops.
    zk.pause().expect("pause");
    let pid = zk.pid().expect("pid");
    zk.stop();
    assert!(no_process(pid));
    assert!(ruok(port).is_err());
}

#[test]
fn daemon_starts_once_reports_and_stops() {
    let dir = tempfile::tempdir().expect("tmp");
    let pid_file = dir.path().join("run").join("zookeeper.pid");
    let cfg = config(dir.path());

    assert!(!daemon_status(&pid_file).expect("status").running);
    let started = start_daemon(&cfg, &pid_file).expect("daemon");
    // Stops the daemon even if an assertion below fails.
    struct Cleanup<'a>(&'a std::path::Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = stop_daemon(self.0);
        }
    }
    let _cleanup = Cleanup(&pid_file);
    assert!(started.running);
    let (pid, port) = (started.pid.expect("pid"), started.port.expect("port"));
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file").trim(),
        pid.to_string()
    );
    assert_eq!(ruok(port).expect("ruok"), "imok");

    let status = daemon_status(&pid_file).expect("status");
    assert!(status.running);
    assert_eq!((status.pid, status.port), (Some(pid), Some(port)));
    assert_eq!(status.mode.as_deref(), Some("standalone"));
    assert!(status.to_string().contains("Mode: standalone"), "{status}");

    match start_daemon(&cfg, &pid_file) {
        Err(e @ ZkServerError::AlreadyRunning { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("pid {pid}")), "{msg}");
            assert!(msg.contains(&format!("port {port}")), "{msg}");
        }
        other => panic!("second start: {other:?}"),
    }

    let stopped = stop_daemon(&pid_file).expect("stop");
    assert_eq!((stopped.pid, stopped.port), (pid, Some(port)));
    let log = std::fs::read_to_string(dir.path().join("zk.log")).unwrap_or_default();
    assert!(!stopped.killed, "SIGTERM was not enough; log:\n{log}");
    assert!(eventually(|| no_process(pid)), "daemon gone");
    assert!(ruok(port).is_err());
    assert!(!pid_file.exists());

    let status = daemon_status(&pid_file).expect("status");
    assert!(!status.running);
    assert_eq!(status.to_string(), "not running");
    let err = stop_daemon(&pid_file).expect_err("nothing to stop");
    assert!(matches!(err, ZkServerError::NotRunning { .. }), "{err}");
}

#[test]
fn a_stale_pid_file_does_not_block_a_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let pid_file = dir.path().join("zookeeper.pid");
    // A pid that is surely not a ZooKeeper: this test process.
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).expect("write");
    assert!(!daemon_status(&pid_file).expect("status").running);
    let started = start_daemon(&config(dir.path()), &pid_file).expect("daemon");
    assert!(started.running);
    stop_daemon(&pid_file).expect("stop");
}

/// `pop zk start`'s server answers only the four-letter words pop sends (`srvr`); the
/// others get ZooKeeper's refusal, and no answer to what they ask.
#[test]
fn by_default_a_server_answers_only_the_four_letter_words_pop_sends() {
    let dir = tempfile::tempdir().expect("tmp");
    let zk = ZkServer::start(ZkServerConfig {
        four_letter_words: pop_zkserver::POP_FOUR_LETTER_WORDS
            .map(String::from)
            .to_vec(),
        ..config(dir.path())
    })
    .expect("server");
    let srvr = four_letter(zk.addr(), "srvr", TIMEOUT).expect("srvr");
    assert!(srvr.contains("Mode: standalone"), "{srvr:?}");
    for word in [
        "ruok", "mntr", "stat", "cons", "dump", "wchs", "envi", "conf", "crst",
    ] {
        let answer = four_letter(zk.addr(), word, TIMEOUT).expect(word);
        assert_eq!(
            answer,
            format!("{word} is not executed because it is not in the whitelist.\n"),
            "{word}"
        );
    }
}
