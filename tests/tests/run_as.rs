//! Services as users (settings `user` and `group`): the agent (root) runs a service's
//! process and its tasks with the user's uid, gid and groups and `no_new_privs`; an
//! unknown user, or an agent that is not root, is a clear problem in `pop status` while
//! the agent keeps running. And pop's own variables never reach a service.

use pop_tests::{initialised, pop_exe, processes_with, unique, wait_for, Machine};
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

/// A plugin whose task reports whom it runs as.
const WHOAMI: &str = r#"name = "whoami"
description = "sleeps; its task says whom it runs as"
environment = "none"
[run]
command = ["sh", "-c", "echo started as $(id -un); touch made-here; exec sleep {marker}"]
[settings]
marker = "1"
[tasks.who]
description = "print the credentials of the task's process"
command = ["sh", "-c", "grep -E '^(Uid|Gid|Groups|NoNewPrivs):' /proc/self/status"]
"#;

/// `Uid`, `Gid`, `Groups` and `NoNewPrivs` of /proc/<pid>/status (or of such text),
/// whitespace normalised.
fn credentials_in(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "NoNewPrivs:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// What nobody's processes must show: its uid and primary group everywhere, its groups
/// as the user database lists them (`id -G nobody`), and no new privileges.
fn nobodys_credentials() -> Vec<String> {
    let out = Command::new("id")
        .args(["-G", "nobody"])
        .output()
        .expect("running id");
    assert!(out.status.success(), "no user nobody on this machine");
    let mut groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|g| g.parse().expect("a gid"))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let gid = Command::new("id")
        .args(["-g", "nobody"])
        .output()
        .expect("running id");
    let gid = String::from_utf8_lossy(&gid.stdout).trim().to_string();
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    vec![
        "Uid: 65534 65534 65534 65534".to_string(),
        format!("Gid: {gid} {gid} {gid} {gid}"),
        format!("Groups: {}", groups.join(" ")),
        "NoNewPrivs: 1".to_string(),
    ]
}

fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

/// The problems `pop status --json` lists for `service` on `m`.
fn problems(m: &Machine, service: &str) -> Vec<String> {
    let status: Value = match serde_json::from_str(&m.ok(&["--json", "status", service])) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    status["services"][0]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["machine"] == m.id.as_str())
        .flat_map(|i| i["problems"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

fn add_whoami(m: &Machine) {
    let file = m.state_dir().join("whoami.toml");
    std::fs::write(&file, WHOAMI).expect("writing the manifest");
    m.ok(&["plugin", "add", file.to_str().expect("a UTF-8 path")]);
}

#[test]
fn a_service_and_its_task_run_as_the_user_its_settings_name() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests run the agent as root (as CI does)"
    );
    let (_zk, m, _zkc) = initialised();
    add_whoami(&m);
    let marker = format!("43{}", std::process::id());
    m.ok(&[
        "add",
        "whoami",
        "--name",
        "web",
        "--set",
        &format!("marker={marker}"),
        "--set",
        "user=nobody",
    ]);
    m.ok(&["deploy", "web"]);
    let _agent = m.agent();
    let pid = wait_for("the service's process", || {
        processes_with(&format!("sleep {marker}")).first().copied()
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    assert_eq!(credentials_in(&status), nobodys_credentials(), "{status}");

    // Its working directory is nobody's; the agent's state directory only lets it
    // through (0711), listing nothing.
    let work = m.state_dir().join("work/web");
    let meta = std::fs::metadata(&work).expect("the working directory");
    assert_eq!(meta.uid(), 65534, "{}", work.display());
    // Made by the service after it started: waited for, not assumed.
    let made = wait_for("a file the service made", || {
        std::fs::metadata(work.join("made-here")).ok()
    });
    assert_eq!(made.uid(), 65534);
    // Its log is the agent's (opened by the agent, handed over), and has its output.
    let log = m.state_dir().join("logs/web.log");
    wait_for("the service's output in its log", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("started as nobody\n").then_some(())
    });
    assert_eq!(std::fs::metadata(&log).expect("log").uid(), 0);
    let state_mode = std::fs::metadata(m.state_dir()).expect("state dir").mode() & 0o777;
    assert_eq!(state_mode, 0o711, "{state_mode:o}");

    // pop's own variables are the ones it sets for the service, not the agent's.
    let env = environ(pid);
    assert!(env.iter().any(|e| e == "POP_SERVICE=web"), "{env:?}");
    assert!(
        !env.iter().any(|e| e.starts_with("POP_SESSION_TIMEOUT_MS=")),
        "the agent's own configuration leaked into the service: {env:?}"
    );

    // A task of the service runs as nobody too.
    let out = m.ok(&["--json", "run", "web", "who"]);
    let run: Value = serde_json::from_str(&out).expect("JSON");
    let result = &run["machines"][0];
    assert_eq!(result["state"], "succeeded", "{run}");
    let stdout = result["stdout_tail"].as_str().expect("its output");
    assert_eq!(credentials_in(stdout), nobodys_credentials(), "{stdout}");
}

#[test]
fn an_unknown_user_is_a_problem_in_status_and_the_agent_keeps_running() {
    let (_zk, m, _zkc) = initialised();
    let user = unique("nosuchuser").replace('-', "_");
    m.ok(&[
        "add",
        "command",
        "--name",
        "ghost",
        "--set",
        "command=sleep 1000",
        "--set",
        &format!("user={user}"),
    ]);
    let marker = format!("44{}", std::process::id());
    m.ok(&[
        "add",
        "command",
        "--name",
        "fine",
        "--set",
        &format!("command=exec sleep {marker}"),
    ]);
    m.ok(&["deploy", "ghost"]);
    m.ok(&["deploy", "fine"]);
    let mut agent = m.agent();
    let expected = format!("cannot start: setting \"user\": no user \"{user}\" on this machine");
    wait_for("the problem in pop status", || {
        problems(&m, "ghost").contains(&expected).then_some(())
    });
    // The other service runs, and the agent is still there.
    wait_for("the other service", || {
        processes_with(&format!("sleep {marker}")).first().copied()
    });
    assert!(agent.try_exit().is_none(), "{}", agent.log_text());
    let text = m.ok(&["status", "ghost"]);
    assert!(text.contains(&expected), "{text}");
}

#[test]
fn an_agent_that_is_not_root_refuses_user_clearly() {
    let (_zk, m, _zkc) = initialised();
    let marker = format!("45{}", std::process::id());
    m.ok(&[
        "add",
        "command",
        "--name",
        "svc",
        "--set",
        &format!("command=exec sleep {marker}"),
        "--set",
        "user=daemon",
    ]);
    m.ok(&["deploy", "svc"]);
    // A copy of pop and a state directory nobody may use.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    let pop = dir.path().join("pop");
    std::fs::copy(pop_exe(), &pop).expect("copying pop");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown state dir");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let mut agent = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&pop)
        .args(["--host", &m.hosts, "--machine-id", &m.id, "--state-dir"])
        .arg(&state)
        .arg("fg")
        .env_remove("POP_HOST")
        .env_remove("POP_MACHINE_ID")
        .env_remove("POP_STATE_DIR")
        .env_remove("RUST_LOG")
        .env("HOME", "/nonexistent")
        .env("POP_CONTAINMENT", "process-group")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("running setpriv (util-linux)");
    let expected =
        "cannot start: setting \"user\" needs the agent to run as root (it runs as uid 65534)";
    let seen = std::panic::catch_unwind(|| {
        wait_for("the refusal in pop status", || {
            problems(&m, "svc")
                .iter()
                .any(|p| p == expected)
                .then_some(())
        })
    });
    let still_running = agent.try_wait().expect("agent status").is_none();
    let nothing_started = processes_with(&format!("sleep {marker}")).is_empty();
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert!(seen.is_ok(), "{log}");
    assert!(still_running, "the agent ended: {log}");
    assert!(nothing_started, "the service ran anyway");
}

#[test]
fn env_cannot_set_pop_variables_from_pop_set_or_from_settings_written_by_others() {
    let (_zk, m, zkc) = initialised();
    let marker = format!("48{}", std::process::id());
    m.ok(&[
        "add",
        "command",
        "--name",
        "svc",
        "--set",
        &format!("command=exec sleep {marker}"),
    ]);
    let err = m.fails(&[
        "set",
        "svc",
        r#"env={"A":"1","POP_MACHINE_ID":"elsewhere"}"#,
    ]);
    assert!(
        err.contains("\"POP_MACHINE_ID\" is pop's own variable"),
        "{err}"
    );
    let err = m.fails(&[
        "add",
        "command",
        "--name",
        "other",
        "--set",
        "command=x",
        "--set",
        r#"env={"POP_AUTH":"x"}"#,
    ]);
    assert!(err.contains("\"POP_AUTH\" is pop's own variable"), "{err}");
    assert!(zkc.get("/services/other").is_none(), "nothing half-written");
    // Written by hand: the agent does not run it, and says why.
    let mut settings = zkc.get_json("/services/svc/settings").expect("settings");
    settings["env"] = serde_json::json!({"POP_PORT": "1"});
    zkc.set("/services/svc/settings", settings.to_string().as_bytes());
    m.ok(&["deploy", "svc"]);
    let _agent = m.agent();
    let problem = wait_for("the agent's refusal in its report", || {
        let report = zkc.get_json(&format!("/agents/{}", m.id))?;
        report["problems"]["/services/svc/settings"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        problem.contains("\"POP_PORT\" is pop's own variable"),
        "{problem}"
    );
    assert!(processes_with(&format!("sleep {marker}")).is_empty());
    let text = m.ok(&["status", "svc"]);
    assert!(
        text.contains("\"POP_PORT\" is pop's own variable"),
        "{text}"
    );
}
