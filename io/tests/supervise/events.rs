//! Event-driven supervision: leftovers are noticed when they go (not at a poll, not at
//! the grace's KILL), clean-up never holds up `Exited`, and a generation whose old
//! cgroup cannot be emptied does not hold up anyone else.

use super::*;

/// Waits for the event `want` picks out, keeping the others for later.
async fn event_where(
    h: &mut Harness,
    stash: &mut Vec<SupervisorEvent>,
    want: impl Fn(&SupervisorEvent) -> bool,
) -> SupervisorEvent {
    if let Some(i) = stash.iter().position(&want) {
        return stash.remove(i);
    }
    loop {
        let e = next_event(&mut h.rx).await;
        if want(&e) {
            return e;
        }
        stash.push(e);
    }
}

fn is_exited(service: &str, generation: u64) -> impl Fn(&SupervisorEvent) -> bool + '_ {
    move |e| matches!(e, SupervisorEvent::Exited { service: s, generation: g, .. } if s == service && *g == generation)
}

fn is_spawned(service: &str, generation: u64) -> impl Fn(&SupervisorEvent) -> bool + '_ {
    move |e| matches!(e, SupervisorEvent::Spawned { service: s, generation: g, .. } if s == service && *g == generation)
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap_or(0) + 1..]
            .split_whitespace()
            .next()
            .unwrap_or("X");
        state != "Z" && state != "X"
    })
}

/// A daemon that outlives the main process and then exits by itself (it ignores TERM,
/// and the grace is long): `Exited` comes once it is gone, and well before the grace
/// would have killed it.
pub(super) async fn leftover_daemon_is_waited_for_until_it_exits(mode: Mode) {
    let Some(mut h) = start_tweaked(mode, |c| c.exit_grace = Duration::from_secs(20)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("daemon.pid");
    let mut s = spec(
        "lingers",
        1,
        // The main process waits until the daemon ignores TERM, so the TERM its
        // leftovers get cannot come first.
        &sh(
            r#"(setsid sh -c 'trap "" TERM; echo $$ > "$PID_FILE"; exec sleep 1.5' &)
               until [ -s "$PID_FILE" ]; do sleep 0.01; done"#,
        ),
    );
    s.env
        .insert("PID_FILE".into(), pid_file.display().to_string());
    let t0 = Instant::now();
    h.sup.spawn(s);
    expect_spawned(&mut h).await;
    let mut daemon = 0;
    wait_until("the daemon's pid", || {
        fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .map(|p| daemon = p)
            .is_some()
    })
    .await;
    let status = expect_exited(&mut h).await;
    let took = t0.elapsed();
    assert_eq!(status.code, Some(0), "the main process's status: {status}");
    assert!(
        !alive(daemon),
        "Exited while the daemon {daemon} still runs"
    );
    assert!(
        took >= Duration::from_millis(1400),
        "Exited too early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "the daemon's own exit went unnoticed until {took:?}"
    );
    assert_gone(&h, "lingers", 1, &[]).await;
    finish(h).await;
}

/// A service that made a cgroup inside its own (as root it may): removing the
/// generation's cgroup must remove that one first, and `Exited` does not wait for it.
pub(super) async fn cgroups_made_by_the_service_are_removed(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    let Some(dir) = cgroup_dir(&h, "nest", 1) else {
        return;
    };
    let mut s = spec("nest", 1, &sh(r#"mkdir "$SUB" && mkdir "$SUB/deeper""#));
    s.env
        .insert("SUB".into(), dir.join("sub").display().to_string());
    h.sup.spawn(s);
    expect_spawned(&mut h).await;
    let status = expect_exited(&mut h).await;
    assert_eq!(status.code, Some(0), "{status}");
    wait_until("the service's cgroups removed", || !dir.exists()).await;
    finish(h).await;
}

/// A process in a frozen cgroup v1 freezer group: it does not die of SIGKILL until it
/// is thawed, like a process stuck in the kernel. Thawed when dropped.
struct Frozen {
    freezer: PathBuf,
    pid: i32,
}

impl Frozen {
    /// `None` where there is no cgroup v1 freezer to use.
    fn start(into_cgroup: &Path) -> Option<Frozen> {
        let root = Path::new("/sys/fs/cgroup/freezer");
        if !root.join("tasks").exists() {
            println!("SKIPPED: no cgroup v1 freezer");
            return None;
        }
        let freezer = root.join(format!("pop-test-{}", unique_machine()));
        fs::create_dir(&freezer).ok()?;
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("sleep");
        // The supervisor's reaper reaps it; nobody waits for it here.
        let pid = child.id() as i32;
        drop(child);
        fs::write(into_cgroup.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
        fs::write(freezer.join("tasks"), pid.to_string()).expect("join freezer");
        fs::write(freezer.join("freezer.state"), "FROZEN").expect("freeze");
        Some(Frozen { freezer, pid })
    }

    fn thaw(&self) {
        let _ = fs::write(self.freezer.join("freezer.state"), "THAWED");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
        // SAFETY: kill with a pid and a signal number.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let deadline = Instant::now() + DEADLINE;
        while alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let _ = fs::remove_dir(&self.freezer);
    }
}

/// A generation whose cgroup an earlier run left with a process that will not die
/// (yet) is started off the event loop: meanwhile another service's crash is reported
/// and it is restarted at once.
pub(super) async fn a_stuck_old_cgroup_does_not_hold_up_other_restarts(mode: Mode) {
    let Some(mut h) = start(mode) else { return };
    let Some(stale) = cgroup_dir(&h, "stuck", 1) else {
        return;
    };
    h.sup.spawn(spec("other", 1, &["sleep", "1000"]));
    let other = expect_spawned(&mut h).await;
    fs::create_dir(&stale).expect("stale cgroup");
    let Some(frozen) = Frozen::start(&stale) else {
        fs::remove_dir(&stale).expect("remove stale cgroup");
        finish(h).await;
        return;
    };
    let t0 = Instant::now();
    // Kills the frozen process and waits for it (up to 5 s) before it can start.
    h.sup.spawn(spec("stuck", 1, &["sleep", "1000"]));
    // SAFETY: kill with a pid and a signal number.
    unsafe { libc::kill(other as i32, libc::SIGKILL) };
    let mut stash = Vec::new();
    event_where(&mut h, &mut stash, is_exited("other", 1)).await;
    h.sup.spawn(spec("other", 2, &["sleep", "1000"]));
    event_where(&mut h, &mut stash, is_spawned("other", 2)).await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the restart of another service waited {took:?} for the stuck one"
    );
    // The stuck generation can be stopped while it waits; thawed, its old process
    // dies and it starts (and is stopped at once).
    h.sup.stop("stuck", 1, Duration::from_secs(1));
    frozen.thaw();
    event_where(&mut h, &mut stash, is_spawned("stuck", 1)).await;
    event_where(&mut h, &mut stash, is_exited("stuck", 1)).await;
    drop(frozen);
    finish(h).await;
}
