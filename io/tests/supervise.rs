//! Real-process tests of `pop_io::supervise`, each run in both containment
//! modes. "Our" processes are found by the supervision token in
//! `/proc/<pid>/environ`, never by name, because tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pop_io::supervise::{
    log_path, AdoptedProcess, ContainmentChoice, ContainmentKind, ExitStatus, ProcessSpec,
    ReadinessProbe, SuperviseError, Supervisor, SupervisorConfig, SupervisorEvent, TOKEN_ENV,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

#[path = "supervise/adopt.rs"]
mod adopt;
use adopt::*;

#[path = "supervise/events.rs"]
mod events;
use events::*;
#[path = "supervise/one_off.rs"]
mod one_off;
use one_off::*;
#[path = "supervise/stops.rs"]
mod stops;
use stops::*;

const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Cgroup,
    Pgroup,
}

struct Harness {
    sup: Supervisor,
    rx: UnboundedReceiver<SupervisorEvent>,
    config: SupervisorConfig,
    _dir: tempfile::TempDir,
}

fn unique_machine() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn config(mode: Mode, dir: &Path) -> SupervisorConfig {
    let choice = match mode {
        Mode::Cgroup => ContainmentChoice::Cgroup,
        Mode::Pgroup => ContainmentChoice::ProcessGroup,
    };
    let mut c = SupervisorConfig::new(unique_machine(), dir, choice);
    c.exit_grace = Duration::from_secs(1);
    c
}

/// `None` (with a message) only when cgroup v2 is genuinely unavailable.
fn start_with(config: SupervisorConfig, dir: tempfile::TempDir) -> Option<Harness> {
    let (tx, rx) = unbounded_channel();
    match Supervisor::new(config.clone(), tx) {
        Ok(sup) => Some(Harness {
            sup,
            rx,
            config,
            _dir: dir,
        }),
        Err(SuperviseError::CgroupUnavailable(why)) => {
            println!("SKIPPED: cgroup v2 unavailable: {why}");
            None
        }
        Err(e) => panic!("Supervisor::new: {e}"),
    }
}

fn start(mode: Mode) -> Option<Harness> {
    start_tweaked(mode, |_| {})
}

fn start_tweaked(mode: Mode, tweak: impl FnOnce(&mut SupervisorConfig)) -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(mode, dir.path());
    tweak(&mut c);
    start_with(c, dir)
}

fn spec(service: &str, generation: u64, argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        service: service.to_string(),
        generation,
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

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

fn token(h: &Harness, service: &str, generation: u64) -> String {
    format!("{}/{service}/{generation}", h.config.machine_id)
}

/// Live (non-zombie) processes carrying `token`, with their comm.
fn token_procs(token: &str) -> Vec<(i32, String)> {
    let entry = format!("{TOKEN_ENV}={token}").into_bytes();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("X");
        if state == "Z" || state == "X" {
            continue;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|x| x == entry) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `n` processes named `comm` carry `token`; returns all token processes.
async fn wait_for_comm(token: &str, comm: &str, n: usize) -> Vec<(i32, String)> {
    let mut procs = Vec::new();
    wait_until(&format!("{n} x {comm} with {token}"), || {
        procs = token_procs(token);
        procs.iter().filter(|(_, c)| c == comm).count() >= n
    })
    .await;
    procs
}

async fn next_event(rx: &mut UnboundedReceiver<SupervisorEvent>) -> SupervisorEvent {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("event channel closed")
}

async fn expect_spawned(h: &mut Harness) -> u32 {
    match next_event(&mut h.rx).await {
        SupervisorEvent::Spawned { pid, .. } => pid,
        other => panic!("expected Spawned, got {other:?}"),
    }
}

async fn expect_exited(h: &mut Harness) -> ExitStatus {
    loop {
        match next_event(&mut h.rx).await {
            SupervisorEvent::Exited { status, .. } => return status,
            SupervisorEvent::Ready { .. } => continue,
            other => panic!("expected Exited, got {other:?}"),
        }
    }
}

fn cgroup_dir(h: &Harness, service: &str, generation: u64) -> Option<PathBuf> {
    match h.sup.containment() {
        ContainmentKind::Cgroup(dir) => Some(dir.join(format!("{service}@{generation}"))),
        ContainmentKind::ProcessGroup => None,
    }
}

/// Nothing of the generation is left: no token process, none of `pids` (all gone by
/// the time `Exited` is sent), and soon no cgroup and no run record (removed just
/// after it).
async fn assert_gone(h: &Harness, service: &str, generation: u64, pids: &[(i32, String)]) {
    let tok = token(h, service, generation);
    assert_eq!(token_procs(&tok), vec![], "processes left for {tok}");
    let still: Vec<_> = token_procs(&tok)
        .into_iter()
        .filter(|(p, _)| pids.iter().any(|(q, _)| q == p))
        .collect();
    assert!(still.is_empty(), "recorded pids alive: {still:?}");
    if let Some(dir) = cgroup_dir(h, service, generation) {
        wait_until(&format!("cgroup {} removed", dir.display()), || {
            !dir.exists()
        })
        .await;
    }
    let record = record_path(h, service, generation);
    wait_until("run record removed", || !record.exists()).await;
}

async fn finish(mut h: Harness) {
    h.sup.shutdown(Duration::from_secs(1)).await;
    assert!(h.sup.running().is_empty());
    if let ContainmentKind::Cgroup(dir) = h.sup.containment() {
        assert!(
            !dir.exists(),
            "machine cgroup {} not removed",
            dir.display()
        );
    }
}

macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod cgroup {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Cgroup).await;
                }
            )*
        }
        mod pgroup {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Pgroup).await;
                }
            )*
        }
    };
}

both_modes!(
    term_stops_plain_sleep,
    grandchild_ignoring_term_is_killed_after_grace,
    setsid_child_is_stopped,
    double_forked_daemon_is_stopped,
    main_exit_waits_for_leftovers,
    readiness_discovers_port,
    readiness_fixed_port,
    logs_and_rotation,
    detached_generation_is_adopted_and_stoppable,
    adopted_exit_is_noticed_and_leftovers_killed,
    mismatched_start_time_is_not_adopted,
    corrupt_record_is_not_adopted,
    adopted_service_keeps_logging,
    agent_killed_by_sigkill,
    spawn_failure_is_reported,
    leftover_daemon_is_waited_for_until_it_exits,
    one_off_output_goes_to_its_files_and_its_tree_is_stopped,
    a_detached_one_off_is_killed_by_the_next_supervisor,
    a_shorter_second_grace_kills_sooner,
    shutdown_reaches_every_generation,
);

/// Tests of what only cgroups have.
mod cgroup_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cgroups_made_by_the_service_are_removed() {
        super::cgroups_made_by_the_service_are_removed(super::Mode::Cgroup).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_old_cgroup_does_not_hold_up_other_restarts() {
        super::a_stuck_old_cgroup_does_not_hold_up_other_restarts(super::Mode::Cgroup).await;
    }
}

async fn term_stops_plain_sleep(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    h.sup.spawn(spec("plain", 1, &["sleep", "1000"]));
    let pid = expect_spawned(&mut h).await;
    let tok = token(&h, "plain", 1);
    let procs = wait_for_comm(&tok, "sleep", 1).await;
    assert_eq!(procs[0].0 as u32, pid);
    assert_eq!(h.sup.running(), vec![("plain".to_string(), 1, pid)]);
    h.sup.stop("plain", 1, Duration::from_secs(5));
    let status = expect_exited(&mut h).await;
    assert_eq!(
        status,
        ExitStatus {
            code: None,
            signal: Some(15)
        }
    );
    assert_gone(&h, "plain", 1, &procs).await;
    assert!(h.sup.running().is_empty());
    finish(h).await;
}

async fn grandchild_ignoring_term_is_killed_after_grace(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    h.sup.spawn(spec(
        "stubborn",
        1,
        &sh(r#"sh -c 'trap "" TERM; sleep 1000' & wait"#),
    ));
    expect_spawned(&mut h).await;
    let tok = token(&h, "stubborn", 1);
    let procs = wait_for_comm(&tok, "sleep", 1).await;
    let grace = Duration::from_millis(1500);
    let t0 = Instant::now();
    h.sup.stop("stubborn", 1, grace);
    let status = expect_exited(&mut h).await;
    let took = t0.elapsed();
    assert_eq!(status.signal, Some(15), "main sh dies of TERM: {status}");
    assert!(took >= grace - Duration::from_millis(100), "took {took:?}");
    assert!(took < grace + Duration::from_secs(3), "took {took:?}");
    assert_gone(&h, "stubborn", 1, &procs).await;
    finish(h).await;
}

async fn setsid_child_is_stopped(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    h.sup
        .spawn(spec("sess", 1, &sh("setsid sleep 1000 & wait")));
    expect_spawned(&mut h).await;
    let tok = token(&h, "sess", 1);
    let procs = wait_for_comm(&tok, "sleep", 1).await;
    h.sup.stop("sess", 1, Duration::from_secs(2));
    expect_exited(&mut h).await;
    assert_gone(&h, "sess", 1, &procs).await;
    finish(h).await;
}

async fn double_forked_daemon_is_stopped(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    h.sup.spawn(spec(
        "daemon",
        1,
        &sh(r#"(setsid sh -c 'trap "" TERM; exec sleep 1000' &) ; exec sleep 1000"#),
    ));
    let main = expect_spawned(&mut h).await;
    let tok = token(&h, "daemon", 1);
    let procs = wait_for_comm(&tok, "sleep", 2).await;
    // The daemon's parent (the subshell) exited, so it was reparented to us.
    let me = std::process::id() as i32;
    let daemon = procs
        .iter()
        .find(|(p, c)| c == "sleep" && *p as u32 != main)
        .expect("daemon sleep");
    wait_until("daemon reparented to the agent", || {
        ppid(daemon.0) == Some(me)
    })
    .await;
    let t0 = Instant::now();
    h.sup.stop("daemon", 1, Duration::from_millis(500));
    let status = expect_exited(&mut h).await;
    assert_eq!(status.signal, Some(15));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_gone(&h, "daemon", 1, &procs).await;
    finish(h).await;
}

async fn main_exit_waits_for_leftovers(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    // The background child ignores TERM, so it lives until KILL after exit_grace (1 s).
    h.sup.spawn(spec(
        "leaver",
        1,
        &sh(r#"sh -c 'trap "" TERM; exec sleep 1000' & sleep 0.3; exit 3"#),
    ));
    expect_spawned(&mut h).await;
    let tok = token(&h, "leaver", 1);
    let procs = wait_for_comm(&tok, "sleep", 1).await;
    let t0 = Instant::now();
    let status = expect_exited(&mut h).await;
    assert_eq!(
        status,
        ExitStatus {
            code: Some(3),
            signal: None
        }
    );
    // Exited was sent only once the leftover was gone.
    assert_gone(&h, "leaver", 1, &procs).await;
    assert!(t0.elapsed() < Duration::from_secs(6));
    finish(h).await;
}

const PY_LISTEN: &str = "import socket,sys,time\n\
s=socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('127.0.0.1', int(sys.argv[1])))\n\
s.listen()\n\
time.sleep(1000)\n";

async fn readiness_discovers_port(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    let mut s = spec("web", 1, &["python3", "-c", PY_LISTEN, "0"]);
    s.probe = Some(ReadinessProbe {
        host: "0.0.0.0".to_string(),
        port: 0,
    });
    h.sup.spawn(s);
    expect_spawned(&mut h).await;
    let port = match next_event(&mut h.rx).await {
        SupervisorEvent::Ready {
            service,
            generation,
            port: Some(port),
        } if service == "web" && generation == 1 => port,
        other => panic!("expected Ready, got {other:?}"),
    };
    assert!(port > 0);
    // It really is the service's listening port.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to discovered port");
    h.sup.stop("web", 1, Duration::from_secs(2));
    expect_exited(&mut h).await;
    assert_gone(&h, "web", 1, &[]).await;
    finish(h).await;
}

async fn readiness_fixed_port(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Listen only after a while, so the probe has to retry.
    let script = format!("import time; time.sleep(0.5)\n{PY_LISTEN}");
    let mut s = spec("fixed", 7, &["python3", "-c", &script, &port.to_string()]);
    s.probe = Some(ReadinessProbe {
        host: "127.0.0.1".to_string(),
        port,
    });
    h.sup.spawn(s);
    expect_spawned(&mut h).await;
    match next_event(&mut h.rx).await {
        SupervisorEvent::Ready {
            generation: 7,
            port: got,
            ..
        } => assert_eq!(got, Some(port)),
        other => panic!("expected Ready, got {other:?}"),
    }
    // The port is in the run record, so an adopting agent learns it.
    let rec: serde_json::Value =
        serde_json::from_slice(&fs::read(record_path(&h, "fixed", 7)).unwrap()).unwrap();
    assert_eq!(rec["port"], port);
    let Harness {
        sup, config, _dir, ..
    } = h;
    sup.detach();
    let mut h = start_with(config, _dir).expect("second supervisor");
    let adopted = h.sup.take_adopted();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].port, Some(port));
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("still listening");
    h.sup.stop("fixed", 7, Duration::from_secs(2));
    assert_eq!(expect_exited(&mut h).await, UNKNOWN);
    assert_gone(&h, "fixed", 7, &[]).await;
    finish(h).await;
}

async fn logs_and_rotation(mode: Mode) {
    let Some(mut h) = start_tweaked(mode, |c| {
        c.log_max_bytes = 2000;
        c.log_keep = 2;
    }) else {
        return;
    };
    h.sup
        .spawn(spec("talk", 1, &sh("echo hello-out; echo hello-err >&2")));
    let pid = expect_spawned(&mut h).await;
    assert_eq!(
        expect_exited(&mut h).await,
        ExitStatus {
            code: Some(0),
            signal: None
        }
    );
    let path = log_path(&h.config.state_dir, "talk");
    let text = fs::read_to_string(&path).unwrap();
    // The child writes the start marker itself, before exec: it precedes all output.
    let started_at = text
        .find(&format!("--- pop: started pid {pid} (generation 1)"))
        .unwrap_or_else(|| panic!("start marker: {text}"));
    assert!(
        started_at < text.find("hello-out\n").expect("stdout"),
        "{text}"
    );
    assert!(text.contains("hello-err\n"), "{text}");
    let exited_at = text
        .find("--- pop: exited exit code 0")
        .expect("exit marker");
    assert!(exited_at > text.find("hello-err").unwrap(), "{text}");

    // Three chunks of ~3 KB with a 2000-byte limit; after each, the service
    // waits until the supervisor has copy-truncated the log (it checks every
    // second), so nothing is written during a rotation and nothing is lost.
    let mut s = spec(
        "talk",
        2,
        &sh(r#"for i in 1 2 3; do
                 j=0; while [ $j -lt 60 ]; do echo chunk-$i-line-$j-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; j=$((j+1)); done
                 until grep -q "chunk-$i-line-59-" "$LOG.1" 2>/dev/null; do sleep 0.05; done
               done
               echo final-line"#),
    );
    s.env.insert("LOG".into(), path.display().to_string());
    h.sup.spawn(s);
    let pid = expect_spawned(&mut h).await;
    expect_exited(&mut h).await;
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    let one = fs::read_to_string(rotated(1)).unwrap();
    let two = fs::read_to_string(rotated(2)).unwrap();
    assert!(!rotated(3).exists(), "keeps only 2");
    // chunk 1 was rotated out; every line of chunks 2 and 3 was kept.
    for j in 0..60 {
        assert!(two.contains(&format!("chunk-2-line-{j}-")), "{two}");
        assert!(one.contains(&format!("chunk-3-line-{j}-")), "{one}");
    }
    assert!(!one.contains("chunk-1-") && !two.contains("chunk-1-"));
    let current = fs::read_to_string(&path).unwrap();
    assert_eq!(
        current,
        format!("final-line\n--- pop: exited exit code 0 (pid {pid}, generation 2)\n")
    );
    finish(h).await;
}

async fn spawn_failure_is_reported(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    h.sup
        .spawn(spec("nope", 1, &["/nonexistent/pop-test-binary"]));
    match next_event(&mut h.rx).await {
        SupervisorEvent::SpawnFailed { service, error, .. } => {
            assert_eq!(service, "nope");
            assert!(error.contains("No such file"), "{error}");
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
    // The service's log says why, naming the program.
    let log = fs::read_to_string(log_path(&h.config.state_dir, "nope")).unwrap();
    assert!(
        log.contains(
            "--- pop: generation 1 failed to start: cannot start \"/nonexistent/pop-test-binary\": \
             cannot execute the program: No such file or directory"
        ),
        "{log}"
    );
    assert!(h.sup.running().is_empty());
    if let Some(dir) = cgroup_dir(&h, "nope", 1) {
        wait_until("the cgroup of a failed spawn removed", || !dir.exists()).await;
    }
    h.sup.spawn(spec("nope", 2, &[]));
    assert!(matches!(
        next_event(&mut h.rx).await,
        SupervisorEvent::SpawnFailed { generation: 2, .. }
    ));
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containment_kind_display() {
    let dir = tempfile::tempdir().unwrap();
    let c = SupervisorConfig::new(
        unique_machine(),
        dir.path(),
        ContainmentChoice::ProcessGroup,
    );
    let h = start_with(c, dir).unwrap();
    assert_eq!(h.sup.containment().to_string(), "process-group+subreaper");
    finish(h).await;

    let dir = tempfile::tempdir().unwrap();
    let c = SupervisorConfig::new(unique_machine(), dir.path(), ContainmentChoice::Auto);
    let h = start_with(c, dir).unwrap();
    let shown = h.sup.containment().to_string();
    match h.sup.containment() {
        ContainmentKind::Cgroup(p) => {
            assert_eq!(shown, format!("cgroup-v2 ({})", p.display()));
            assert!(p.ends_with(format!("pop/{}", h.config.machine_id)));
        }
        ContainmentKind::ProcessGroup => println!("auto chose process groups: cgroup v2 unusable"),
    }
    finish(h).await;
}
