//! A `command` that is a plain word list runs without `sh -c` (the agent execs the
//! program itself), and the program sees what the shell would have given it: the same
//! arguments, environment and working directory, `PWD` included.

use pop_tests::{wait_for, Machine, Zk};
use std::collections::BTreeMap;
use std::path::Path;

/// Prints its argv, cwd and environment as JSON (one line), then sleeps.
const REPORT: &str = "import json, os, sys, time\n\
print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}), flush=True)\n\
time.sleep(1000)\n";

fn report_of(m: &Machine, service: &str) -> serde_json::Value {
    let log = m.state_dir().join("logs").join(format!("{service}.log"));
    wait_for(&format!("{service} to report"), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let line = text.lines().find(|l| l.starts_with('{'))?;
        serde_json::from_str(line).ok()
    })
}

fn main_pid(m: &Machine, service: &str) -> u32 {
    wait_for(&format!("{service}'s pid"), || {
        let status = m.ok(&["--json", "status", service]);
        let v: serde_json::Value = serde_json::from_str(&status).ok()?;
        v["services"][0]["instances"][0]["pid"]
            .as_u64()
            .map(|p| p as u32)
    })
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_plain_command_runs_without_a_shell_and_sees_the_same() {
    let zk = Zk::start();
    let m = Machine::new(&zk);
    m.ok(&["init"]);
    let script = m.state_dir().join("report.py");
    std::fs::write(&script, REPORT).expect("script");
    assert!(
        script
            .display()
            .to_string()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
        "the script's path must be a plain word: {}",
        script.display()
    );
    // Not a pyenv shim, which would add its own variables.
    let plain = format!("/usr/bin/python3 {} one --two=2", script.display());
    // The same, but the `|| true` needs a shell.
    let shelled = format!("{plain} || true");
    for (name, command) in [("direct", &plain), ("shelled", &shelled)] {
        m.ok(&[
            "add",
            "command",
            "--name",
            name,
            "--set",
            &format!("command={command}"),
        ]);
        m.ok(&["set", name, "env={\"GREETING\":\"hello world\"}"]);
        m.ok(&["deploy", name]);
    }
    let _agent = m.agent();
    let direct = report_of(&m, "direct");
    let shelled = report_of(&m, "shelled");
    assert_eq!(comm(main_pid(&m, "direct")), "python3", "exec'd directly");
    assert_eq!(comm(main_pid(&m, "shelled")), "sh", "run by the shell");

    assert_eq!(direct["argv"], serde_json::json!(["one", "--two=2"]));
    assert_eq!(direct["argv"], shelled["argv"]);
    let cwd = |r: &serde_json::Value| r["cwd"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        Path::new(&cwd(&direct)),
        std::fs::canonicalize(m.state_dir().join("work/direct")).expect("work dir")
    );
    let env = |r: &serde_json::Value| -> BTreeMap<String, String> {
        serde_json::from_value(r["env"].clone()).expect("environment")
    };
    let (mut direct_env, mut shelled_env) = (env(&direct), env(&shelled));
    assert_eq!(
        direct_env.get("PWD"),
        Some(&cwd(&direct)),
        "PWD as the shell sets it"
    );
    assert_eq!(shelled_env.get("PWD"), Some(&cwd(&shelled)));
    assert_eq!(
        direct_env.get("GREETING").map(String::as_str),
        Some("hello world")
    );
    // Apart from what names the service, the environments are the same.
    for env in [&mut direct_env, &mut shelled_env] {
        for per_service in ["PWD", "POP_SERVICE", "POP_SUPERVISION_TOKEN"] {
            env.remove(per_service);
        }
    }
    assert_eq!(direct_env, shelled_env);
}
