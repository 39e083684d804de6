//! Coordinated tasks (`pop run`, `pop tasks`) against a real ZooKeeper with two agents
//! of their own machine ids on this host, checked with an independent client.

use pop_tests::{processes_with, unique, wait_for, Checker, Machine, Zk};
use serde_json::Value;

/// A user plugin with tasks: one that greets, one that fails on the machine it is
/// given, one that hangs with a process tree (one of it in a session of its own).
const GREETER: &str = r#"name = "greeter"
description = "answers with a greeting"
environment = "none"
[settings]
greeting = "hello"
[run]
command = ["sleep", "100000"]
[tasks.hello]
description = "say the greeting"
command = ["sh", "-c", "echo {greeting} from $POP_MACHINE_ID; echo attempt $POP_TASK_ATTEMPT >&2"]
[tasks.fail-on]
description = "fail on the machine given"
command = ["sh", "-c", "if [ \"$POP_MACHINE_ID\" = \"$0\" ]; then echo broken >&2; exit 3; fi; echo fine", "{args}"]
[tasks.hang]
description = "never end"
command = ["sh", "-c", "setsid sh -c 'sleep 1000; :' \"$0\" & sh -c 'sleep 1000; :' \"$0\"; :", "{args}"]
"#;

struct Cluster {
    _zk: Zk,
    m1: Machine,
    m2: Machine,
    zkc: Checker,
}

/// ZooKeeper, two machines, the plugin, a greeter service deployed on both.
fn cluster() -> Cluster {
    let zk = Zk::start();
    let m1 = Machine::new(&zk);
    let m2 = Machine::new(&zk);
    let zkc = Checker::connect(&zk);
    m1.ok(&["init"]);
    let file = m1.state_dir().join("greeter.toml");
    std::fs::write(&file, GREETER).expect("writing the manifest");
    m1.ok(&["plugin", "add", file.to_str().expect("a UTF-8 path")]);
    m1.ok(&["add", "greeter", "--set", "greeting=hi"]);
    m1.ok(&[
        "deploy",
        "greeter",
        "--machine",
        &m1.id,
        "--machine",
        &m2.id,
    ]);
    Cluster {
        _zk: zk,
        m1,
        m2,
        zkc,
    }
}

/// Every task id of the service, oldest first.
fn task_ids(zkc: &Checker) -> Vec<String> {
    zkc.children("/services/greeter/tasks")
}

fn result(zkc: &Checker, id: &str, machine: &str) -> Value {
    zkc.get_json(&format!("/services/greeter/tasks/{id}/{machine}"))
        .unwrap_or(Value::Null)
}

fn wait_for_state(zkc: &Checker, id: &str, machine: &str, state: &str) -> Value {
    wait_for(&format!("{machine}'s result {state}"), || {
        let r = result(zkc, id, machine);
        (r["state"] == state).then_some(r)
    })
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn a_user_plugin_task_runs_on_both_machines_with_a_result_from_each() {
    let c = cluster();
    let _a1 = c.m1.agent();
    let _a2 = c.m2.agent();
    let out = c.m1.pop(&["run", "greeter", "hello"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(
        stderr.starts_with("issued task hello of greeter as t"),
        "{stderr}"
    );
    // Not a terminal: a plain line per change of state.
    for m in [&c.m1.id, &c.m2.id] {
        assert!(stderr.contains(&format!("{m}: succeeded")), "{stderr}");
    }
    let mut lines = stdout.lines();
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["MACHINE", "STATE", "EXIT", "DURATION", "OUTPUT"])
    );
    for m in [&c.m1.id, &c.m2.id] {
        let row = lines.next().unwrap_or_default();
        assert!(row.starts_with(m.as_str()), "{stdout}");
        assert!(row.contains(" succeeded "), "{row}");
        assert!(row.ends_with(&format!("hi from {m}")), "{row}");
    }
    let [id] = <[String; 1]>::try_from(task_ids(&c.zkc)).expect("one task");
    let request = c
        .zkc
        .get_json(&format!("/services/greeter/tasks/{id}"))
        .expect("the request");
    assert_eq!(request["task"], "hello");
    assert_eq!(request["machines"], serde_json::json!([c.m1.id, c.m2.id]));
    for m in [&c.m1.id, &c.m2.id] {
        let r = result(&c.zkc, &id, m);
        assert_eq!(r["state"], "succeeded");
        assert_eq!(r["attempt"], 1);
        assert_eq!(r["exit_code"], 0);
        assert_eq!(r["stdout_tail"], format!("hi from {m}\n"));
        assert_eq!(r["stderr_tail"], "attempt 1\n");
        assert!(r["ended_at"].as_f64() >= r["started_at"].as_f64(), "{r}");
    }

    // The same as JSON, for scripts, and the list of tasks.
    let out =
        c.m1.ok(&["--json", "run", "greeter", "hello", "--machine", &c.m2.id]);
    let run = json(&out);
    assert_eq!(run["machines"][0]["machine"], c.m2.id.as_str());
    assert_eq!(run["machines"][0]["state"], "succeeded");
    assert_eq!(
        run["machines"][0]["stdout_tail"],
        format!("hi from {}\n", c.m2.id)
    );
    let listed = c.m1.ok(&["tasks", "greeter"]);
    let rows: Vec<&str> = listed.lines().collect();
    assert_eq!(rows.len(), 3, "{listed}");
    assert!(rows[0].starts_with("ID "), "{listed}");
    assert!(
        rows[2].starts_with(&id)
            && rows[2].contains(&format!("{} succeeded, {} succeeded", c.m1.id, c.m2.id)),
        "the oldest last: {listed}"
    );
    let listed = json(&c.m1.ok(&["--json", "tasks", "greeter"]));
    assert_eq!(listed[1]["id"], id.as_str());
    assert_eq!(
        listed[1]["results"][1]["stdout_tail"],
        format!("hi from {}\n", c.m2.id)
    );
}

#[test]
fn a_rolling_task_stops_at_the_first_machine_that_fails() {
    let c = cluster();
    let _a1 = c.m1.agent();
    let _a2 = c.m2.agent();
    let out = c.m1.pop(&[
        "run",
        "greeter",
        "fail-on",
        &c.m1.id,
        "--rolling",
        "--machine",
        &c.m1.id,
        "--machine",
        &c.m2.id,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "pop: error: task fail-on of greeter did not succeed on {} (failed), {} (skipped)",
            c.m1.id, c.m2.id
        )),
        "{stderr}"
    );
    let [id] = <[String; 1]>::try_from(task_ids(&c.zkc)).expect("one task");
    let first = result(&c.zkc, &id, &c.m1.id);
    assert_eq!(first["state"], "failed");
    assert_eq!(first["exit_code"], 3);
    assert_eq!(first["stderr_tail"], "broken\n");
    let second = result(&c.zkc, &id, &c.m2.id);
    assert_eq!(second["state"], "skipped");
    assert_eq!(second["error"], format!("{} failed", c.m1.id));
    assert!(
        second.get("started_at").is_none(),
        "never started: {second}"
    );

    // The other way round, the first succeeds, the second runs after it and fails.
    let out = c.m1.pop(&[
        "--json",
        "run",
        "greeter",
        "fail-on",
        &c.m2.id,
        "--rolling",
        "--machine",
        &c.m1.id,
        "--machine",
        &c.m2.id,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let run = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(run["machines"][0]["state"], "succeeded");
    assert_eq!(run["machines"][1]["state"], "failed");
    let (first_end, second_start) = (
        run["machines"][0]["ended_at"].as_f64().expect("ended"),
        run["machines"][1]["started_at"].as_f64().expect("started"),
    );
    assert!(second_start >= first_end, "one at a time: {run}");
}

#[test]
fn a_task_issued_while_an_agent_is_stopped_runs_when_it_starts_again() {
    let c = cluster();
    let _a1 = c.m1.agent();
    let out = c.m1.ok(&["run", "greeter", "hello", "--detach"]);
    assert!(
        out.starts_with("issued task hello of greeter as t"),
        "{out}"
    );
    let [id] = <[String; 1]>::try_from(task_ids(&c.zkc)).expect("one task");
    wait_for_state(&c.zkc, &id, &c.m1.id, "succeeded");
    assert_eq!(result(&c.zkc, &id, &c.m2.id)["state"], "pending");
    let _a2 = c.m2.agent();
    let r = wait_for_state(&c.zkc, &id, &c.m2.id, "succeeded");
    assert_eq!(r["stdout_tail"], format!("hi from {}\n", c.m2.id));
}

#[test]
fn a_task_past_its_timeout_is_killed_with_its_whole_tree() {
    let c = cluster();
    let _a1 = c.m1.agent();
    let marker = unique("hang");
    let out = c.m1.pop(&[
        "run",
        "greeter",
        "hang",
        &marker,
        "--machine",
        &c.m1.id,
        "--timeout",
        "3s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" timed_out "), "{stdout}");
    let [id] = <[String; 1]>::try_from(task_ids(&c.zkc)).expect("one task");
    let r = result(&c.zkc, &id, &c.m1.id);
    assert_eq!(r["state"], "timed_out");
    assert_eq!(r["error"], "timed out after 3s");
    assert_eq!(r["signal"], 15, "{r}");
    assert_eq!(
        processes_with(&marker),
        Vec::<i32>::new(),
        "the tree is gone"
    );
    let out_file =
        c.m1.state_dir()
            .join("tasks/greeter")
            .join(format!("{id}.1.stdout"));
    assert!(out_file.exists(), "{}", out_file.display());
}

/// At least once: an agent killed while its task runs leaves the result `running`; the
/// next agent kills what is left of the task and runs it again.
#[test]
fn a_task_whose_agent_died_is_killed_and_run_again_by_the_next_agent() {
    let c = cluster();
    let mut a1 = c.m1.agent();
    let marker = unique("rerun");
    c.m1.ok(&[
        "run",
        "greeter",
        "hang",
        &marker,
        "--machine",
        &c.m1.id,
        "--timeout",
        "1h",
        "--detach",
    ]);
    let [id] = <[String; 1]>::try_from(task_ids(&c.zkc)).expect("one task");
    wait_for("the task's processes", || {
        (processes_with(&marker).len() == 3).then_some(())
    });
    let first = processes_with(&marker);
    a1.kill();
    assert_eq!(result(&c.zkc, &id, &c.m1.id)["attempt"], 1);
    let _a1 = c.m1.agent();
    let r = wait_for("the second attempt", || {
        let r = result(&c.zkc, &id, &c.m1.id);
        (r["attempt"] == 2 && r["state"] == "running").then_some(r)
    });
    assert_eq!(r["state"], "running");
    wait_for("the second attempt's processes", || {
        let now = processes_with(&marker);
        (now.len() == 3 && now.iter().all(|p| !first.contains(p))).then_some(())
    });
}

#[test]
fn pop_run_refuses_what_it_cannot_do_and_writes_nothing() {
    let c = cluster();
    let m = &c.m1;
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["run", "greeter", "nope"],
            "no task \"nope\" for greeter (its type greeter has: fail-on, hang, hello)".into(),
        ),
        (
            vec!["run", "ghost", "hello"],
            "no service named \"ghost\" (see `pop status`)".into(),
        ),
        (
            vec!["run", "greeter", "hello", "--machine", "m-nowhere"],
            format!(
                "greeter is not deployed on m-nowhere (it is deployed on: {})",
                [&c.m1.id, &c.m2.id]
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (
            vec![
                "run",
                "greeter",
                "hello",
                "--machine",
                &c.m1.id,
                "--machine",
                &c.m1.id,
            ],
            format!("bad arguments: --machine {} is given twice", c.m1.id),
        ),
        (
            vec!["run", "greeter", "hello", "--timeout", "0"],
            "bad arguments: --timeout must be longer than 0".into(),
        ),
    ];
    for (args, message) in cases {
        let err = m.fails(&args);
        assert_eq!(err, format!("pop: error: {message}\n"), "{args:?}");
    }
    // Refused by the argument parser, naming the option.
    let err = m.fails(&["run", "greeter", "hello", "--expire", "soon"]);
    assert!(err.contains("--expire") && err.contains("soon"), "{err}");
    // A service deployed nowhere.
    m.ok(&["add", "echo", "--name", "idle"]);
    let err = m.fails(&["run", "idle", "hello"]);
    assert_eq!(
        err,
        "pop: error: no task \"hello\" for idle (type echo has no tasks)\n"
    );
    m.ok(&[
        "undeploy",
        "greeter",
        "--machine",
        &c.m1.id,
        "--machine",
        &c.m2.id,
    ]);
    let err = m.fails(&["run", "greeter", "hello"]);
    assert_eq!(
        err,
        "pop: error: greeter is deployed nowhere: `pop deploy greeter --machine ID` first\n"
    );
    assert_eq!(task_ids(&c.zkc), Vec::<String>::new(), "nothing written");
    assert_eq!(c.zkc.children("/services/idle/tasks"), Vec::<String>::new());
}

/// The README's tutorial of tasks, with the manifest as the README gives it.
#[test]
fn the_readme_tutorial_of_tasks_runs_as_written() {
    let readme = include_str!("../../README.md");
    let manifest = readme
        .split_once("cat > greeter.toml <<'TOML'\n")
        .and_then(|(_, rest)| rest.split_once("\nTOML\n"))
        .map(|(text, _)| text)
        .expect("the README's tutorial has greeter.toml");
    let zk = Zk::start();
    let m = Machine::new(&zk);
    let zkc = Checker::connect(&zk);
    m.ok(&["init"]);
    let file = m.state_dir().join("greeter.toml");
    std::fs::write(&file, manifest).expect("writing the manifest");
    m.ok(&["plugin", "add", file.to_str().expect("a UTF-8 path")]);
    m.ok(&[
        "add",
        "greeter",
        "--name",
        "greet",
        "--set",
        "greeting=howdy",
    ]);
    let _agent = m.agent();
    m.ok(&["deploy", "greet"]);
    let out = m.ok(&["run", "greet", "hello"]);
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with(m.id.as_str()) && row.ends_with(&format!("howdy from {}", m.id)),
        "{out}"
    );
    let detached = m.ok(&["run", "greet", "hello", "--rolling", "--detach"]);
    assert!(
        detached.starts_with("issued task hello of greet as t"),
        "{detached}"
    );
    let ids = zkc.children("/services/greet/tasks");
    assert_eq!(ids.len(), 2, "{ids:?}");
    wait_for("the rolling task's result", || {
        let r = zkc
            .get_json(&format!("/services/greet/tasks/{}/{}", ids[1], m.id))
            .unwrap_or(Value::Null);
        (r["state"] == "succeeded").then_some(())
    });
    let listed = m.ok(&["tasks", "greet"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
}

/// A task of a type with a Python environment runs from the environment the agent built
/// for the service (issued before it is built, it waits for it).
#[test]
fn a_python_task_runs_in_the_services_environment() {
    const PYJOB: &str = r#"name = "pyjob"
description = "a Python service with a task"
environment = "python"
[settings]
packages = []
python = "python3"
[run]
command = ["{python}", "-c", "import time; time.sleep(100000)"]
readiness = "none"
[tasks.where]
description = "say where it runs"
command = ["{python}", "-c", "import sys, hello; print(hello.WORD, sys.prefix)"]
"#;
    let zk = Zk::start();
    let m = Machine::new(&zk);
    m.ok(&["init"]);
    let file = m.state_dir().join("pyjob.toml");
    std::fs::write(&file, PYJOB).expect("writing the manifest");
    m.ok(&["plugin", "add", file.to_str().expect("a UTF-8 path")]);
    let wheels = tempfile::tempdir().expect("a directory for wheels");
    let hello = pop_tests::python::wheel(wheels.path(), "hello", "1.0", "WORD = 'hi'\n");
    let packages = format!("packages=[{:?}]", hello.to_string_lossy());
    m.ok(&["add", "pyjob", "--name", "py", "--set", &packages]);
    let _agent = m.agent_env(&[("POP_UV", "none"), ("PIP_NO_INDEX", "1")]);
    m.ok(&["deploy", "py"]);
    // Issued at once: the environment is still being built.
    let out = json(&m.ok(&["--json", "run", "py", "where", "--timeout", "5m"]));
    let result = &out["machines"][0];
    assert_eq!(result["state"], "succeeded", "{out}");
    let env = std::fs::canonicalize(m.state_dir())
        .expect("the state dir")
        .join("env/py");
    let line = result["stdout_tail"].as_str().unwrap_or_default().trim();
    let (word, prefix) = line.split_once(' ').unwrap_or_default();
    assert_eq!(word, "hi", "{line}");
    assert!(
        prefix.starts_with(&format!("{}/", env.display())),
        "{prefix} is not under {}",
        env.display()
    );
}
