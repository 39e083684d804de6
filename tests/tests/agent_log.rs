//! The agent's own output: `agent.log` of a `pop start` daemon is rotated by size and
//! stays bounded; SIGHUP neither kills `pop fg` (its terminal closing) nor a daemon, and
//! makes the daemon reopen its log file (for logrotate-style tools).

use pop_tests::{initialised, signal, wait_for, Checker, Machine};
use std::path::{Path, PathBuf};

fn rotated(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The pid the agent publishes for `service` on machine `m`.
fn published(zkc: &Checker, m: &Machine, service: &str) -> Option<i64> {
    zkc.get_json(&format!("/services/{service}/state/{}", m.id))?["pid"].as_i64()
}

fn add_sleeper(m: &Machine, name: &str) {
    m.ok(&[
        "add",
        "command",
        "--name",
        name,
        "--set",
        "command=exec sleep 100000",
        "--set",
        "start_seconds=0.2",
        "--set",
        "stop_timeout=1",
    ]);
}

/// Changes a setting (the agent restarts the service and logs it) each time it is called.
fn churn(m: &Machine, round: &mut u32) {
    *round += 1;
    m.ok(&["set", "svc", &format!("env={{\"ROUND\":\"{round}\"}}")]);
}

#[test]
fn sighup_does_not_stop_pop_fg_and_it_keeps_converging() {
    let (_zk, m, zkc) = initialised();
    add_sleeper(&m, "svc");
    m.ok(&["deploy", "svc"]);
    let mut agent = m.agent();
    wait_for("svc published", || published(&zkc, &m, "svc"));

    signal(agent.pid() as i32, libc::SIGHUP);
    wait_for("the agent to log the SIGHUP", || {
        if let Some(status) = agent.try_exit() {
            panic!("pop fg exited on SIGHUP: {status}");
        }
        agent.log_text().contains("SIGHUP").then_some(())
    });
    assert!(agent.try_exit().is_none(), "pop fg exited on SIGHUP");

    add_sleeper(&m, "later");
    m.ok(&["deploy", "later"]);
    wait_for("a service deployed after the SIGHUP to run", || {
        published(&zkc, &m, "later")
    });
    assert!(agent.try_exit().is_none(), "pop fg exited on SIGHUP");
    assert!(agent.stop().success(), "{}", agent.log_text());
}

#[test]
fn agent_log_is_rotated_by_size_and_reopened_on_sighup() {
    const MAX: u64 = 3000;
    const KEEP: u32 = 3;
    let (_zk, m, zkc) = initialised();
    add_sleeper(&m, "svc");
    m.ok(&["deploy", "svc"]);
    let out = m
        .command(&["-v", "start"])
        .env("POP_AGENT_LOG_MAX_BYTES", MAX.to_string())
        .output()
        .expect("pop start");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = m.state_dir().join("agent.log");
    wait_for("svc published", || published(&zkc, &m, "svc"));

    // Restarts make the agent log; go on until every rotated file has been written.
    let mut round = 0;
    wait_for("agent.log to rotate more often than it keeps files", || {
        churn(&m, &mut round);
        (rotated(&log, KEEP).exists() && round > 40).then_some(())
    });
    assert!(
        !rotated(&log, KEEP + 1).exists(),
        "only {KEEP} old files are kept"
    );
    // One log line is far below 2 KiB: a file exceeds the limit by at most one line.
    let files: Vec<PathBuf> = std::iter::once(log.clone())
        .chain((1..=KEEP).map(|n| rotated(&log, n)))
        .collect();
    for file in &files {
        assert!(
            size(file) <= MAX + 2048,
            "{} has {} bytes, limit {MAX}",
            file.display(),
            size(file)
        );
    }
    assert!(files.iter().map(|f| size(f)).sum::<u64>() <= (u64::from(KEEP) + 1) * (MAX + 2048));
    // The lines just before the last rotation may all be about the agent's own report
    // (a reply with its data is logged as ~1.5 KB of bytes): look in every kept file.
    assert!(
        (1..=KEEP).any(|n| std::fs::read_to_string(rotated(&log, n))
            .expect("a rotated file")
            .contains("svc")),
        "the rotated files hold the agent's log lines"
    );

    // A log rotator moves the file away and sends SIGHUP: the agent writes a new one
    // (which, busy, it may have rotated since: the line is looked for in all of them).
    let moved = m.state_dir().join("agent.log.moved");
    std::fs::rename(&log, &moved).expect("moving agent.log away");
    let pid: i32 = std::fs::read_to_string(m.state_dir().join("agent.pid"))
        .expect("agent.pid")
        .trim()
        .parse()
        .expect("a pid");
    signal(pid, libc::SIGHUP);
    let logged = |text: &str| {
        files
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(text)))
    };
    wait_for("the reopening logged in the new agent.log", || {
        logged("reopened the log file").then_some(())
    });
    let moved_size = size(&moved);
    let before = published(&zkc, &m, "svc");
    churn(&m, &mut round);
    let after = wait_for("the daemon to restart svc after the SIGHUP", || {
        published(&zkc, &m, "svc").filter(|p| Some(*p) != before)
    });
    wait_for("the restart logged in the new files", || {
        logged(&format!("pid={after}")).then_some(())
    });
    assert_eq!(
        size(&moved),
        moved_size,
        "nothing more goes to the moved file"
    );
    m.ok(&["stop"]);
}
