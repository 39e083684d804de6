//! Service types as plugins stored in ZooKeeper: `pop plugin add|list|show|remove` and
//! `pop add` of a stored type, against a real ZooKeeper, checked with an independent
//! client.

use pop_tests::{initialised, Checker, Machine};
use std::path::PathBuf;

/// The issue's contract manifest.
pub const GREETER: &str = r#"name = "greeter"
description = "answers with a greeting"
environment = "none"            # or "python"
[settings]                      # defaults; `pop add --set` and `pop set` override
greeting = "hello"
port = 0
[run]
command = ["python3", "-c", "...", "{port}", "{greeting}"]
[tasks.hello]
description = "say the greeting"
command = ["sh", "-c", "echo {greeting} from $POP_MACHINE_ID"]
restart_after = false           # restart the service when the task succeeds
"#;

/// Writes a manifest file into the machine's directory.
fn manifest_file(m: &Machine, name: &str, text: &str) -> PathBuf {
    let path = m.state_dir().join(name);
    std::fs::write(&path, text).expect("writing the manifest");
    path
}

fn stored(zkc: &Checker, name: &str) -> Option<String> {
    zkc.get(&format!("/plugins/{name}"))
        .map(|(data, _)| String::from_utf8(data).expect("UTF-8"))
}

#[test]
fn plugin_add_list_show_remove_round_trip() {
    let (_zk, m, zkc) = initialised();
    let file = manifest_file(&m, "greeter.toml", GREETER);
    let file = file.to_str().expect("a UTF-8 path");
    assert_eq!(m.ok(&["plugin", "add", file]), "added plugin greeter\n");
    assert_eq!(
        stored(&zkc, "greeter").as_deref(),
        Some(GREETER),
        "the text as given"
    );
    assert_eq!(
        m.ok(&["plugin", "add", file]),
        "nothing to do: plugin greeter is stored as given already\n"
    );

    let list = m.ok(&["plugin", "list"]);
    for name in ["command", "echo", "http", "python"] {
        assert!(list.contains(&format!("\n{name} ")), "{list}");
    }
    assert!(
        list.lines().any(|l| l.starts_with("greeter ")
            && l.contains(" stored ")
            && l.contains("answers with a greeting")),
        "{list}"
    );
    assert_eq!(m.ok(&["plugin", "show", "greeter"]), GREETER);
    let decoded: serde_json::Value =
        serde_json::from_str(&m.ok(&["--json", "plugin", "show", "greeter"])).expect("JSON");
    assert_eq!(decoded["name"], "greeter");
    assert_eq!(decoded["settings"]["greeting"], "hello");
    assert_eq!(decoded["run"]["command"][4], "{greeting}");
    assert!(m.ok(&["plugin", "show", "echo"]).contains("echo-server"));
    // The tasks built into Python types are shown with them, not with the others.
    assert!(m
        .ok(&["plugin", "show", "http"])
        .contains("install <requirement>"));
    assert!(!m
        .ok(&["plugin", "show", "echo"])
        .contains("install <requirement>"));

    // A service of the stored type: its defaults, then --port and --set.
    m.ok(&["add", "greeter", "--port", "7000", "--set", "greeting=hi"]);
    assert_eq!(
        zkc.get_json("/services/greeter/settings"),
        Some(serde_json::json!({
            "type": "greeter", "greeting": "hi", "port": 7000,
            "restart": "always", "stop_timeout": 10, "start_seconds": 1
        }))
    );
    let listed: serde_json::Value =
        serde_json::from_str(&m.ok(&["--json", "plugin", "list"])).expect("JSON");
    let greeter = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "greeter"))
        .expect("listed");
    assert_eq!(greeter["services"], serde_json::json!(["greeter"]));
    assert_eq!(greeter["source"], "stored");

    // pop set is checked against the stored manifest too.
    let err = m.fails(&["set", "greeter", "--unset", "greeting"]);
    assert!(err.contains("needs setting \"greeting\""), "{err}");
    m.ok(&["set", "greeter", "greeting=howdy"]);

    // Not while a service is of its type.
    let err = m.fails(&["plugin", "remove", "greeter"]);
    assert!(
        err.contains("plugin greeter is the type of service greeter"),
        "{err}"
    );
    assert!(stored(&zkc, "greeter").is_some(), "still there");
    m.ok(&["remove", "greeter"]);
    assert_eq!(
        m.ok(&["plugin", "remove", "greeter"]),
        "removed plugin greeter\n"
    );
    assert!(zkc.children("/plugins").is_empty());
    let err = m.fails(&["add", "greeter"]);
    assert!(
        err.contains("unknown service type \"greeter\" (known types: command, echo, http, python)"),
        "{err}"
    );
}

#[test]
fn a_bad_manifest_is_refused_naming_line_and_field_and_nothing_is_written() {
    let (_zk, m, zkc) = initialised();
    let bad = manifest_file(&m, "greeter.toml", &GREETER.replace("{port}", "{prot}"));
    let err = m.fails(&["plugin", "add", bad.to_str().expect("UTF-8")]);
    assert!(
        err.trim_end().ends_with(
            "greeter.toml line 8: run.command: unknown placeholder {prot}; settings are greeting, port"
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(zkc.children("/plugins").is_empty(), "nothing written");

    let builtin = manifest_file(&m, "echo.toml", &GREETER.replace("\"greeter\"", "\"echo\""));
    let err = m.fails(&["plugin", "add", builtin.to_str().expect("UTF-8")]);
    assert!(err.contains("\"echo\" is a type built into pop"), "{err}");
    let err = m.fails(&["plugin", "remove", "command"]);
    assert!(err.contains("cannot be removed"), "{err}");
    assert!(zkc.children("/plugins").is_empty(), "nothing written");
}

#[test]
fn replacing_a_plugin_needs_replace_and_an_older_namespace_gets_plugins() {
    let (_zk, m, zkc) = initialised();
    // A namespace `pop init` made before plugins existed.
    zkc.delete("/plugins");
    let file = manifest_file(&m, "greeter.toml", GREETER);
    m.ok(&["plugin", "add", file.to_str().expect("UTF-8")]);
    assert_eq!(stored(&zkc, "greeter").as_deref(), Some(GREETER));

    let howdy = GREETER.replace("\"hello\"", "\"howdy\"");
    let changed = manifest_file(&m, "greeter2.toml", &howdy);
    let changed = changed.to_str().expect("UTF-8");
    let err = m.fails(&["plugin", "add", changed]);
    assert!(
        err.contains("another plugin named \"greeter\" is stored already"),
        "{err}"
    );
    assert_eq!(stored(&zkc, "greeter").as_deref(), Some(GREETER), "kept");
    assert_eq!(
        m.ok(&["plugin", "add", changed, "--replace"]),
        "replaced plugin greeter\n"
    );
    assert_eq!(stored(&zkc, "greeter").as_deref(), Some(howdy.as_str()));
}

#[test]
fn plugin_data_written_by_others_is_reported_not_fatal() {
    let (_zk, m, zkc) = initialised();
    zkc.create("/plugins/junk", b"\xff\xfe not text");
    zkc.create(
        "/plugins/broken",
        b"name = \"broken\"\n[run]\ncommand = []\n",
    );
    let list = m.ok(&["plugin", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("junk ") && l.contains("INVALID: /plugins/junk: not UTF-8 text")),
        "{list}"
    );
    assert!(
        list.contains("INVALID: /plugins/broken line 3: run.command: expected a non-empty list"),
        "{list}"
    );
    let err = m.fails(&["plugin", "show", "broken"]);
    assert!(
        err.contains("/plugins/broken line 3: run.command:"),
        "{err}"
    );
    let err = m.fails(&["add", "broken"]);
    assert!(err.contains("/plugins/broken line 3"), "{err}");
    assert!(zkc.children("/services").is_empty(), "nothing written");
    // Removing it is how it is mended.
    m.ok(&["plugin", "remove", "broken"]);
    assert!(stored(&zkc, "broken").is_none());
}
