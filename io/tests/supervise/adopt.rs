//! Adoption: a generation left running by a detached (or killed) supervisor
//! is taken over by the next one with the same machine id and state
//! directory, or killed if it is not provably the same process.

use super::*;

pub(super) const UNKNOWN: ExitStatus = ExitStatus {
    code: None,
    signal: None,
};

pub(super) fn record_path(h: &Harness, service: &str, generation: u64) -> PathBuf {
    h.config
        .state_dir
        .join("run")
        .join(format!("{service}@{generation}.json"))
}

fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s != "Z" && s != "X")
}

fn proc_state(pid: i32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

/// Spawns `argv` as `service`@`generation`, waits for `n` processes named
/// `comm`, then detaches the supervisor, as `pop stop --keep-services` (or a
/// kill -9) would leave things. Returns the main pid, the generation's
/// processes, and what a new agent needs.
async fn spawn_and_detach(
    mut h: Harness,
    s: ProcessSpec,
    comm: &str,
    n: usize,
) -> (u32, Vec<(i32, String)>, SupervisorConfig, tempfile::TempDir) {
    let (service, generation) = (s.service.clone(), s.generation);
    h.sup.spawn(s);
    let pid = expect_spawned(&mut h).await;
    let procs = wait_for_comm(&token(&h, &service, generation), comm, n).await;
    assert!(record_path(&h, &service, generation).exists(), "run record");
    let Harness {
        sup, config, _dir, ..
    } = h;
    sup.detach();
    (pid, procs, config, _dir)
}

pub(super) async fn detached_generation_is_adopted_and_stoppable(mode: Mode) {
    let Some(h) = start(mode) else { return };
    // Main sleep, a setsid child ignoring TERM, and a double-forked daemon.
    let mut s = spec(
        "kept",
        4,
        &sh(r#"setsid sh -c 'trap "" TERM; exec sleep 1000' &
               (setsid sh -c 'exec sleep 1000' &)
               exec sleep 1000"#),
    );
    s.note = serde_json::json!({"command": "sleep", "replicas": 1});
    s.exit_grace = Some(Duration::from_millis(700));
    let t_spawn = std::time::SystemTime::now();
    let (pid, procs, config, dir) = spawn_and_detach(h, s, "sleep", 3).await;
    let tok = format!("{}/kept/4", config.machine_id);
    assert_eq!(token_procs(&tok).len(), 3, "all still run after detach");

    let mut h2 = start_with(config, dir).expect("second supervisor");
    let adopted = h2.sup.take_adopted();
    let started = t_spawn
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    let a: &AdoptedProcess = &adopted[0];
    assert_eq!((a.service.as_str(), a.generation, a.pid), ("kept", 4, pid));
    assert_eq!(
        a.note,
        serde_json::json!({"command": "sleep", "replicas": 1})
    );
    assert_eq!(a.port, None);
    assert!(a.started_at_ms.abs_diff(started) < 5000, "{a:?}");
    assert!(h2.sup.take_adopted().is_empty(), "taken once");
    // Same processes, untouched.
    assert!(alive(pid as i32));
    assert_eq!(token_procs(&tok).len(), 3);
    assert_eq!(h2.sup.running(), vec![("kept".to_string(), 4, pid)]);
    if let Some(cg) = cgroup_dir(&h2, "kept", 4) {
        assert!(cg.exists(), "adopted cgroup kept");
    }
    let log = fs::read_to_string(log_path(&h2.config.state_dir, "kept")).unwrap();
    assert!(
        log.contains(&format!("--- pop: adopted pid {pid} (generation 4)")),
        "{log}"
    );

    // Spawning the same generation again is refused: never two copies.
    h2.sup.spawn(spec("kept", 4, &["sleep", "1000"]));
    assert!(matches!(
        next_event(&mut h2.rx).await,
        SupervisorEvent::SpawnFailed { generation: 4, .. }
    ));

    let t0 = Instant::now();
    h2.sup.stop("kept", 4, Duration::from_millis(500));
    match next_event(&mut h2.rx).await {
        SupervisorEvent::Exited {
            service,
            generation: 4,
            status,
        } if service == "kept" => assert_eq!(status, UNKNOWN),
        other => panic!("expected Exited, got {other:?}"),
    }
    // The TERM-ignoring child needed the KILL after the grace.
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    assert_gone(&h2, "kept", 4, &procs).await;
    assert!(!alive(pid as i32));
    assert!(h2.sup.running().is_empty());
    finish(h2).await;
}

pub(super) async fn adopted_exit_is_noticed_and_leftovers_killed(mode: Mode) {
    let Some(h) = start(mode) else { return };
    let mut s = spec(
        "quits",
        2,
        &sh(r#"sh -c 'trap "" TERM; exec sleep 1000' & exec sleep 1000"#),
    );
    // The recorded grace applies after adoption too.
    s.exit_grace = Some(Duration::from_millis(1200));
    let (pid, procs, config, dir) = spawn_and_detach(h, s, "sleep", 2).await;
    let mut h2 = start_with(config, dir).expect("second supervisor");
    assert_eq!(h2.sup.take_adopted().len(), 1);

    // The main process exits by itself (well, by someone else's hand).
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    match next_event(&mut h2.rx).await {
        SupervisorEvent::Exited {
            generation: 2,
            status,
            ..
        } => assert_eq!(status, UNKNOWN),
        other => panic!("expected Exited, got {other:?}"),
    }
    let took = t0.elapsed();
    // The leftover ignores TERM: it went only with the KILL after the grace.
    assert!(took >= Duration::from_millis(1100), "took {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_gone(&h2, "quits", 2, &procs).await;
    finish(h2).await;
}

pub(super) async fn mismatched_start_time_is_not_adopted(mode: Mode) {
    let Some(h) = start(mode) else { return };
    let (pid, procs, config, dir) = spawn_and_detach(
        h,
        spec("reused", 1, &sh("setsid sleep 1000 & exec sleep 1000")),
        "sleep",
        2,
    )
    .await;
    // As if the pid now belonged to another process.
    let path = config.state_dir.join("run/reused@1.json");
    let mut rec: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(rec["pid"], pid);
    let ticks = rec["start_ticks"].as_u64().unwrap();
    rec["start_ticks"] = (ticks + 1).into();
    fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();

    let mut h2 = start_with(config, dir).expect("second supervisor");
    assert!(h2.sup.take_adopted().is_empty());
    assert!(h2.sup.running().is_empty());
    // Killed (with its setsid child) by Supervisor::new; zombies may linger until reaped.
    let tok = token(&h2, "reused", 1);
    wait_until("not-adopted processes gone", || {
        token_procs(&tok).is_empty()
    })
    .await;
    assert_gone(&h2, "reused", 1, &procs).await;
    assert!(!path.exists(), "record deleted");
    assert!(h2.rx.try_recv().is_err(), "no event for a killed leftover");
    finish(h2).await;
}

pub(super) async fn corrupt_record_is_not_adopted(mode: Mode) {
    let Some(h) = start(mode) else { return };
    let (_pid, procs, config, dir) =
        spawn_and_detach(h, spec("garbled", 3, &["sleep", "1000"]), "sleep", 1).await;
    let path = config.state_dir.join("run/garbled@3.json");
    fs::write(&path, b"{\"service\": \"garbled\", \"pid\": ").unwrap();
    // Also a record for nothing at all, and a torn temporary file.
    fs::write(config.state_dir.join("run/ghost@1.json"), b"\x00\xff").unwrap();
    fs::write(config.state_dir.join("run/ghost@2.json.tmp"), b"{").unwrap();

    let mut h2 = start_with(config, dir).expect("no panic on a corrupt record");
    assert!(h2.sup.take_adopted().is_empty());
    let tok = token(&h2, "garbled", 3);
    wait_until("unidentified leftovers gone", || {
        token_procs(&tok).is_empty()
    })
    .await;
    assert_gone(&h2, "garbled", 3, &procs).await;
    let run = h2.config.state_dir.join("run");
    assert_eq!(
        fs::read_dir(run).unwrap().count(),
        0,
        "stale records removed"
    );
    finish(h2).await;
}

pub(super) async fn adopted_service_keeps_logging(mode: Mode) {
    // The first agent never rotates; the second rotates at 1000 bytes.
    let Some(h) = start(mode) else { return };
    let s = spec(
        "ticker",
        1,
        &sh("i=0; while :; do echo tick-$i-yyyyyyyyyyyyyyyyyyyy; i=$((i+1)); sleep 0.01; done"),
    );
    let path = log_path(&h.config.state_dir, "ticker");
    let (pid, _procs, mut config, dir) = spawn_and_detach(h, s, "sh", 1).await;
    wait_until("ticks in the log", || {
        fs::read_to_string(&path).is_ok_and(|t| t.contains("tick-3-"))
    })
    .await;
    // Nobody supervises the service now, and nobody reads a pipe: with the
    // log as its stdout it keeps writing (no SIGPIPE).
    let len = fs::metadata(&path).unwrap().len();
    wait_until("writes while detached", || {
        fs::metadata(&path).unwrap().len() > len + 200
    })
    .await;
    assert!(alive(pid as i32));

    config.log_max_bytes = 1000;
    config.log_keep = 3;
    let mut h2 = start_with(config, dir).expect("second supervisor");
    assert_eq!(h2.sup.take_adopted()[0].pid, pid);
    let marker = format!("--- pop: adopted pid {pid} (generation 1)");
    // Output after adoption lands in the same file, which the new agent rotates.
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    wait_until("rotation by the adopting agent", || rotated(1).exists()).await;
    wait_until("output after the rotation", || {
        fs::read_to_string(&path).is_ok_and(|t| t.contains("tick-"))
    })
    .await;
    // Oldest first, the current file last: the marker may have been the last line
    // copied at the rotation, with what followed it in the current file.
    let all: String = (1..=3)
        .rev()
        .filter_map(|n| fs::read_to_string(rotated(n)).ok())
        .chain(fs::read_to_string(&path).ok())
        .collect();
    assert!(
        all.contains(&marker),
        "adoption marker rotated out with old output"
    );
    let after = &all[all.find(&marker).unwrap()..];
    assert!(after.contains("tick-"), "output after adoption: {after}");
    assert!(alive(pid as i32), "still the same process");

    h2.sup.stop("ticker", 1, Duration::from_secs(2));
    expect_exited(&mut h2).await;
    // The rotator may have moved the marker to `.1` already.
    let mut all: String = (1..=3)
        .rev()
        .filter_map(|n| fs::read_to_string(rotated(n)).ok())
        .collect();
    all.push_str(&fs::read_to_string(&path).unwrap());
    let end = format!("--- pop: exited unknown status (pid {pid}, generation 1)\n");
    assert!(
        all.ends_with(&end),
        "{}",
        &all[all.len().saturating_sub(300)..]
    );
    finish(h2).await;
}

const AGENT_ENV: &str = "POP_TEST_KILL9_AGENT";

/// Not a test by itself: the agent process that `agent_killed_by_sigkill`
/// runs (this test binary again, with [`AGENT_ENV`] set) and then kill -9s.
/// Without the variable it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_agent_child() {
    let Ok(arg) = std::env::var(AGENT_ENV) else {
        return;
    };
    let [mode, machine, dir]: [&str; 3] = arg
        .splitn(3, ':')
        .collect::<Vec<_>>()
        .try_into()
        .expect("mode:machine:dir");
    let choice = match mode {
        "cgroup" => ContainmentChoice::Cgroup,
        _ => ContainmentChoice::ProcessGroup,
    };
    let c = SupervisorConfig::new(machine, dir, choice);
    let (tx, mut rx) = unbounded_channel();
    let mut sup = Supervisor::new(c, tx).unwrap();
    let mut s = spec(
        "survivor",
        9,
        &sh(r#"(setsid sh -c 'exec sleep 1000' &)
               i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.01; done"#),
    );
    s.note = serde_json::json!("from the killed agent");
    sup.spawn(s);
    let pid = match next_event(&mut rx).await {
        SupervisorEvent::Spawned { pid, .. } => pid,
        other => panic!("expected Spawned, got {other:?}"),
    };
    let ready = Path::new(dir).join("agent-ready");
    fs::write(ready.with_extension("tmp"), pid.to_string()).unwrap();
    fs::rename(ready.with_extension("tmp"), &ready).unwrap();
    // Killed long before this, unless the parent test failed.
    tokio::time::sleep(Duration::from_secs(120)).await;
    sup.detach();
}

/// SIGKILLs the agent process when dropped, so a failed assertion leaves
/// no agent behind.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The real thing: the agent process dies by SIGKILL (no detach), the
/// service keeps running and logging, and a new supervisor adopts it.
pub(super) async fn agent_killed_by_sigkill(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(mode, dir.path());
    let arg = format!(
        "{}:{}:{}",
        if mode == Mode::Cgroup {
            "cgroup"
        } else {
            "pgroup"
        },
        config.machine_id,
        dir.path().display()
    );
    // std's Child is never waited for: our reaper, if running, reaps it.
    let agent = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "adopt::kill9_agent_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(AGENT_ENV, arg)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent_pid = agent.id() as i32;
    let agent_guard = KillOnDrop(agent_pid);
    drop(agent);
    let ready = dir.path().join("agent-ready");
    let mut pid = 0u32;
    wait_until("the agent process spawned its service", || {
        fs::read_to_string(&ready)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(|p| pid = p)
            .is_some()
    })
    .await;
    let tok = format!("{}/survivor/9", config.machine_id);
    // The double-forked `sleep 1000` (not the loop's short sleeps).
    let daemon = || {
        token_procs(&tok).into_iter().find(|(p, _)| {
            fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.ends_with(b"1000\0"))
        })
    };
    // Keep what the wait found: a second scan can miss the daemon while it execs (its
    // /proc files are briefly unreadable then), as seen once under load.
    let mut daemon_pid = 0;
    wait_until("the daemon running", || {
        daemon().map(|(p, _)| daemon_pid = p).is_some()
    })
    .await;
    let path = log_path(dir.path(), "survivor");
    drop(agent_guard); // kill -9 the agent
    wait_until("the agent is dead", || !alive(agent_pid)).await;
    // Its log pipe would be gone now; the log file is not.
    let len = fs::metadata(&path).unwrap().len();
    wait_until("output after the agent died", || {
        fs::metadata(&path).unwrap().len() > len + 100
    })
    .await;
    assert!(alive(pid as i32), "no SIGPIPE, no kill");

    let Some(mut h) = start_with(config, dir) else {
        return;
    };
    let adopted = h.sup.take_adopted();
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0].pid, pid);
    assert_eq!(adopted[0].note, serde_json::json!("from the killed agent"));
    assert!(alive(pid as i32) && alive(daemon_pid), "nothing was killed");
    let marker = format!("--- pop: adopted pid {pid} (generation 9)");
    wait_until("output after adoption", || {
        let log = fs::read_to_string(&path).unwrap();
        log.find(&marker)
            .is_some_and(|at| log[at..].contains("tick-"))
    })
    .await;
    let procs = token_procs(&tok);
    h.sup.stop("survivor", 9, Duration::from_secs(2));
    assert_eq!(expect_exited(&mut h).await, UNKNOWN);
    assert_gone(&h, "survivor", 9, &procs).await;
    assert!(!alive(daemon_pid));
    finish(h).await;
}
