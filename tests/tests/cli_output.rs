//! Snapshots of what `pop` prints, against a real ZooKeeper and a real agent: the status
//! table, `--json`, and error messages. Values that differ between runs (pids, ports,
//! durations, times, session ids, the host name) are replaced by placeholders; tables
//! also have their runs of spaces collapsed, since column widths follow those values
//! (alignment itself is checked by `output::table`'s own tests).

use pop_tests::{wait_for, Checker, Machine, Zk};

/// Placeholders for everything that changes from run to run.
fn filters(hostname: &str) -> Vec<(String, String)> {
    let mut filters: Vec<(String, String)> = vec![
        (
            r#""(pid|agent_pid)": ?\d+"#.into(),
            r#""$1":"[pid]""#.into(),
        ),
        (r#""port": ?[1-9]\d*"#.into(), r#""port":"[port]""#.into()),
        (
            r#""(started_at|uptime_seconds|agent_uptime_seconds|since|next_start_at)": ?[\d.]+"#
                .into(),
            r#""$1":"[time]""#.into(),
        ),
        (r"127\.0\.0\.1:\d+".into(), "127.0.0.1:[port]".into()),
        (r"\b0x[0-9a-f]+\b".into(), "[session]".into()),
        (r"\b\d+[dhms](\d+[hms])?\b".into(), "[duration]".into()),
        (r"/tmp/\.tmp\w+".into(), "[dir]".into()),
    ];
    if !hostname.is_empty() {
        filters.push((regex_escape(hostname), "[hostname]".into()));
    }
    filters
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// Pids, as the status table shows them: bare numbers in their column.
fn without_pids(text: &str, pids: &[u64]) -> String {
    let mut out = text.to_string();
    for pid in pids {
        out = out.replace(&format!(" {pid} "), " [pid] ");
    }
    out
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

macro_rules! snapshot {
    ($name:expr, $text:expr) => {{
        let mut settings = insta::Settings::clone_current();
        for (pattern, replacement) in filters(&hostname()) {
            settings.add_filter(&pattern, replacement);
        }
        settings.bind(|| insta::assert_snapshot!($name, $text));
    }};
}

macro_rules! table_snapshot {
    ($name:expr, $text:expr) => {{
        let mut settings = insta::Settings::clone_current();
        for (pattern, replacement) in filters(&hostname()) {
            settings.add_filter(&pattern, replacement);
        }
        settings.add_filter(" {2,}", "  ");
        settings.bind(|| insta::assert_snapshot!($name, $text));
    }};
}

/// `pop <args>` that must fail: its exit code and what it printed on stderr.
fn failure(m: &Machine, args: &[&str]) -> String {
    let out = m.pop(args);
    assert!(!out.status.success(), "pop {args:?} should fail");
    format!(
        "$ pop {}\nexit {}\n{}",
        args.join(" "),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn error_messages() {
    let zk = Zk::start();
    let mut m = Machine::new(&zk);
    // Not the other test's id: a dropped Machine kills whatever carries its id's token.
    m.id = "web-0".into();
    let before_init = failure(&m, &["status"]);
    m.ok(&["init"]);
    m.ok(&["add", "echo", "--port", "0"]);
    let errors = [
        before_init,
        failure(&m, &["init"]),
        failure(&m, &["add", "nope"]),
        failure(&m, &["add", "echo", "--name", "a/b"]),
        failure(&m, &["add", "echo", "--name", "smile\u{1f600}"]),
        failure(&m, &["add", "echo", "--name", "x", "--set", "port=99999"]),
        failure(&m, &["add", "echo", "--name", "y", "--set", "noequals"]),
        failure(&m, &["add", "command", "--name", "z"]),
        failure(&m, &["add", "echo"]),
        failure(&m, &["deploy", "nosuch"]),
        failure(&m, &["deploy", "echo", "--machine", "bad id"]),
        failure(&m, &["set", "echo", "restart=sometimes"]),
        failure(&m, &["set", "echo", "=1"]),
        failure(&m, &["status", "nosuch"]),
        failure(&m, &["remove", "nosuch"]),
    ];
    snapshot!("error_messages", errors.join("\n"));
}

#[test]
fn status_and_machines_output() {
    let zk = Zk::start();
    let mut m = Machine::new(&zk);
    m.id = "web-1".into();
    let zkc = Checker::connect(&zk);
    m.ok(&["init"]);
    let mut transcript = vec![
        format!("$ pop status\n{}", m.ok(&["status"])),
        format!(
            "$ pop add echo --port 0\n{}",
            m.ok(&["add", "echo", "--port", "0"])
        ),
        format!(
            "$ pop add command --name job --set command='sleep 600'\n{}",
            m.ok(&[
                "add",
                "command",
                "--name",
                "job",
                "--set",
                "command=sleep 600"
            ])
        ),
        format!("$ pop deploy echo\n{}", m.ok(&["deploy", "echo"])),
        format!("$ pop deploy job\n{}", m.ok(&["deploy", "job"])),
        format!("$ pop deploy job\n{}", m.ok(&["deploy", "job"])),
    ];
    snapshot!("admin_commands", transcript.join("\n"));
    transcript.clear();

    let _agent = m.agent();
    let state = |service: &str| zkc.get_json(&format!("/services/{service}/state/web-1"));
    let echo = wait_for("echo running", || state("echo"));
    let job = wait_for("job running", || state("job"));
    let report = wait_for("the agent reports both running", || {
        let report = zkc.get_json("/agents/web-1")?;
        // Running as they should: counted, and not listed.
        let settled = report["phases"]["running"] == 2
            && report["services"].as_object().is_some_and(|s| s.is_empty());
        settled.then_some(report)
    });
    let pids: Vec<u64> = [&echo["pid"], &job["pid"], &report["pid"]]
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();

    table_snapshot!("status_table", without_pids(&m.ok(&["status"]), &pids));
    snapshot!("status_json", m.ok(&["--json", "status"]));
    table_snapshot!(
        "status_of_one_service",
        without_pids(&m.ok(&["status", "echo"]), &pids)
    );
    table_snapshot!("machines_table", without_pids(&m.ok(&["machines"]), &pids));
    snapshot!("machines_json", m.ok(&["--json", "machines"]));

    // Somebody writes garbage: status names the node and the problem the agent reports,
    // and a state node pop cannot read.
    zkc.set("/services/job/settings", b"{\"type\": \"command\",");
    zkc.create("/services/echo/state/other-1", b"{\"pid\": \"one\"}");
    wait_for("the agent reports the bad settings", || {
        let report = zkc.get_json("/agents/web-1")?;
        report["problems"]
            .as_object()
            .is_some_and(|p| !p.is_empty())
            .then_some(())
    });
    table_snapshot!(
        "status_with_bad_settings",
        without_pids(&m.ok(&["status"]), &pids)
    );
}

/// The issue's contract manifest, in a file in the machine's directory (its path is a
/// `[dir]` placeholder in the snapshots).
fn greeter_file(m: &Machine, name: &str, text: &str) -> String {
    let path = m.state_dir().join(name);
    std::fs::write(&path, text).expect("writing the manifest");
    path.to_str().expect("a UTF-8 path").to_string()
}

const GREETER: &str = r#"name = "greeter"
description = "answers with a greeting"
environment = "none"
[settings]
greeting = "hello"
port = 0
[run]
command = ["python3", "-c", "...", "{port}", "{greeting}"]
[tasks.hello]
description = "say the greeting"
command = ["sh", "-c", "echo {greeting} from $POP_MACHINE_ID"]
restart_after = false
"#;

#[test]
fn plugin_output_and_errors() {
    let zk = Zk::start();
    let mut m = Machine::new(&zk);
    m.id = "web-2".into();
    let zkc = Checker::connect(&zk);
    m.ok(&["init"]);
    let greeter = greeter_file(&m, "greeter.toml", GREETER);
    let mut transcript = vec![
        format!(
            "$ pop plugin add [dir]/greeter.toml\n{}",
            m.ok(&["plugin", "add", &greeter])
        ),
        format!(
            "$ pop add greeter --set greeting=hi\n{}",
            m.ok(&["add", "greeter", "--set", "greeting=hi"])
        ),
        format!("$ pop add echo\n{}", m.ok(&["add", "echo"])),
    ];
    zkc.create(
        "/plugins/broken",
        b"name = \"broken\"\n[run]\ncommand = []\n",
    );
    transcript.push(format!("$ pop plugin list\n{}", m.ok(&["plugin", "list"])));
    snapshot!("plugin_commands", transcript.join("\n"));
    snapshot!("plugin_list_json", m.ok(&["--json", "plugin", "list"]));

    let bad = greeter_file(&m, "bad.toml", &GREETER.replace("{port}", "{prot}"));
    let typo = greeter_file(&m, "typo.toml", &GREETER.replace("[run]", "[rnu]"));
    let echo = greeter_file(&m, "echo.toml", &GREETER.replace("\"greeter\"", "\"echo\""));
    let other = greeter_file(&m, "other.toml", &GREETER.replace("hello", "howdy"));
    let errors = [
        failure(&m, &["plugin", "add", &bad]),
        failure(&m, &["plugin", "add", &typo]),
        failure(&m, &["plugin", "add", &echo]),
        failure(&m, &["plugin", "add", &other]),
        failure(&m, &["plugin", "remove", "greeter"]),
        failure(&m, &["plugin", "remove", "command"]),
        failure(&m, &["plugin", "remove", "nosuch"]),
        failure(&m, &["plugin", "show", "nosuch"]),
        failure(&m, &["plugin", "show", "broken"]),
        failure(&m, &["add", "nosuch"]),
        failure(
            &m,
            &["add", "greeter", "--name", "g2", "--set", "greeting=null"],
        ),
        failure(&m, &["add", "python"]),
        failure(&m, &["add", "http"]),
    ];
    snapshot!("plugin_error_messages", errors.join("\n"));
}
