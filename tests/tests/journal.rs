//! The journal and `pop replay`: a real agent's run, with faults (a service killed, a
//! settings change, its session expired while it was frozen, the agent itself killed),
//! replays on a fresh core to exactly the actions the live agent emitted, across
//! journal rotations (each file starts from a snapshot) and with a torn last line.

use pop_tests::{initialised, signal, wait_for, Checker, Machine};
use std::path::{Path, PathBuf};

fn published(zkc: &Checker, m: &Machine, service: &str) -> Option<i64> {
    let agent_owner = zkc.get(&format!("/agents/{}", m.id))?.1;
    let (state, owner) = zkc.get(&format!("/services/{service}/state/{}", m.id))?;
    let pid = serde_json::from_slice::<serde_json::Value>(&state).ok()?["pid"].as_i64()?;
    (owner == agent_owner).then_some(pid)
}

fn journals(state_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state_dir)
        .expect("state dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal.jsonl"))
        })
        .collect();
    files.sort();
    files
}

fn replay_json(m: &Machine, journal: &Path) -> (bool, serde_json::Value) {
    let out = m.pop(&["--json", "replay", &journal.to_string_lossy()]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "replay of {} printed no JSON ({e}): {}",
            journal.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

#[test]
fn replay_reproduces_a_real_run_with_faults() {
    let (_zk, m, zkc) = initialised();
    m.ok(&[
        "add",
        "command",
        "--name",
        "svc",
        "--set",
        "command=exec sleep 4321987",
        "--set",
        "start_seconds=0.2",
    ]);
    m.ok(&["deploy", "svc"]);
    m.ok(&["add", "echo"]);
    m.ok(&["deploy", "echo"]);
    // A small journal, so the run rotates it and replay must start from snapshots.
    let env = [
        ("POP_JOURNAL_MAX_BYTES", "20000"),
        ("POP_SESSION_TIMEOUT_MS", "2000"),
    ];
    let mut agent = m.agent_env(&env);
    let pid = wait_for("svc published", || published(&zkc, &m, "svc"));

    // Faults: the service killed, a settings change, the session expired while frozen.
    signal(pid as i32, libc::SIGKILL);
    let pid = wait_for("svc restarted", || {
        published(&zkc, &m, "svc").filter(|p| *p != pid)
    });
    m.ok(&["set", "echo", "env={\"V\":\"2\"}"]);
    agent.pause();
    wait_for("the frozen agent's session to expire", || {
        zkc.get(&format!("/agents/{}", m.id))
            .is_none()
            .then_some(())
    });
    agent.resume();
    wait_for("republished under a new session", || {
        (published(&zkc, &m, "svc") == Some(pid)).then_some(())
    });
    // The agent itself killed: its journal must still replay (its last line may be torn).
    agent.kill();
    let killed_run: Vec<PathBuf> = journals(m.state_dir());
    assert!(
        killed_run.len() >= 2,
        "the journal rotated at least once: {killed_run:?}"
    );
    let current = m.state_dir().join("journal.jsonl");
    let first_line = std::fs::read_to_string(&current)
        .expect("journal")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(first_line.starts_with("{\"snapshot\""), "{first_line:.80}");
    let mut replayed = 0;
    for journal in &killed_run {
        let (ok, report) = replay_json(&m, journal);
        assert!(ok, "{}: {report}", journal.display());
        assert_eq!(report["identical"], true, "{report}");
        replayed += report["inputs"].as_u64().unwrap_or(0);
    }
    eprintln!("replayed {replayed} inputs from {} files", killed_run.len());
    assert!(replayed > 50, "{replayed}");

    // A torn last line (a crash mid-write) is reported and ignored. (The largest file:
    // the current one may hold little more than its snapshot.)
    let largest = killed_run
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|md| md.len()).unwrap_or(0))
        .expect("a journal");
    let torn = m.state_dir().join("torn.jsonl");
    let mut text = std::fs::read_to_string(largest).expect("journal");
    text.push_str("{\"input\":{\"at\":17,\"inp");
    std::fs::write(&torn, &text).expect("write");
    let (ok, report) = replay_json(&m, &torn);
    assert!(ok, "{report}");
    assert!(report["torn_tail_bytes"].as_u64().is_some(), "{report}");

    // The check can fail: a journal whose recorded actions were edited does not replay.
    let tampered = m.state_dir().join("tampered.jsonl");
    let edited = text.replacen(
        "\"Spawn\":{\"service\":\"svc\"",
        "\"Spawn\":{\"service\":\"other\"",
        1,
    );
    let edited = if edited == text {
        text.replacen(
            "\"GetData\":{\"path\":\"/services",
            "\"GetData\":{\"path\":\"/elsewhere",
            1,
        )
    } else {
        edited
    };
    assert_ne!(edited, text, "nothing to tamper with");
    std::fs::write(&tampered, edited).expect("write");
    let (ok, report) = replay_json(&m, &tampered);
    assert!(
        !ok,
        "a tampered journal must not replay as identical: {report}"
    );
    assert_eq!(report["identical"], false, "{report}");

    // The next agent starts a new journal and keeps the killed one's as the newest old file.
    let mut next = m.agent_env(&env);
    // Republished by the new agent itself (its own report), not the dead one's nodes.
    let agents = format!("/agents/{}", m.id);
    wait_for("adopted and republished by the new agent", || {
        let report = zkc.get_json(&agents)?;
        let by_next = report["pid"].as_u64() == Some(u64::from(next.pid()));
        (by_next && published(&zkc, &m, "svc") == Some(pid)).then_some(())
    });
    next.stop();
    for journal in journals(m.state_dir()) {
        let (ok, report) = replay_json(&m, &journal);
        assert!(ok, "{}: {report}", journal.display());
    }
}
