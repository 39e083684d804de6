//! The agent's state directory holds settings (journal, run records): it is the agent's
//! user's alone (0700, files 0600), whatever an earlier agent left there.

use pop_tests::{initialised, processes_with, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn the_state_dir_journals_and_run_records_are_private_after_an_agent_ran() {
    let (_zk, m, _zkc) = initialised();
    let marker = format!("46{}", std::process::id());
    m.ok(&[
        "add",
        "command",
        "--name",
        "web",
        "--set",
        &format!("command=exec sleep {marker}"),
        "--set",
        r#"env={"SECRET":"s3cret"}"#,
    ]);
    m.ok(&["deploy", "web"]);
    // What an earlier pop left: an open state directory, readable journals and records.
    let dir = m.state_dir();
    chmod(dir, 0o755);
    std::fs::create_dir(dir.join("run")).expect("run dir");
    chmod(&dir.join("run"), 0o755);
    for old in ["journal.jsonl", "journal.jsonl.1", "run/old@1.json"] {
        std::fs::write(dir.join(old), "{}\n").expect("an old file");
        chmod(&dir.join(old), 0o644);
    }
    let _agent = m.agent();
    wait_for("the service", || {
        processes_with(&format!("sleep {marker}")).first().copied()
    });
    let record = wait_for("its run record", || {
        std::fs::read_dir(dir.join("run"))
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("web@") && n.ends_with(".json"))
            })
    });
    let record_text = std::fs::read_to_string(&record).expect("the record");
    assert!(record_text.contains("s3cret"), "the settings are in it");
    assert_eq!(mode(dir), 0o700, "the state dir");
    assert_eq!(mode(&dir.join("run")), 0o700, "run/");
    assert_eq!(mode(&record), 0o600, "{}", record.display());
    for journal in ["journal.jsonl", "journal.jsonl.1", "journal.jsonl.2"] {
        assert_eq!(mode(&dir.join(journal)), 0o600, "{journal}");
    }
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).expect("journal");
    assert!(journal.contains("s3cret"), "the settings are journaled");
}
