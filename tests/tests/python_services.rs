//! Services launched from manifests by real agents against a real ZooKeeper: a stored
//! plugin on two machines (a changed plugin restarts them), the built-in `http` type
//! answering HTTP, and `python` services in environments built from wheels made in the
//! test (no network), with venv + pip and with uv: rebuilt when `packages` changes, a
//! failed build keeping the running service and shown by `pop status`.

use pop_tests::python::uv;
use pop_tests::{http_get, initialised, wait_for_within, Checker, Machine, Zk};
use std::path::Path;
use std::time::Duration;

/// Building an environment on a machine busy with other builds can take a while.
const BUILD_LIMIT: Duration = Duration::from_secs(180);

/// The published state of `service` on `machine`: (pid, port), once it is there.
fn published(zkc: &Checker, service: &str, machine: &str) -> Option<(u64, u16)> {
    let state = zkc.get_json(&format!("/services/{service}/state/{machine}"))?;
    let pid = state["pid"].as_u64()?;
    let port = u16::try_from(state["port"].as_u64()?).ok()?;
    Some((pid, port))
}

/// Waits until `service` on `machine` answers `GET path` with `body`; its (pid, port).
fn answering(zkc: &Checker, service: &str, machine: &str, path: &str, body: &str) -> (u64, u16) {
    wait_for_within(
        &format!("{service} on {machine} to answer {path} with {body:?}"),
        BUILD_LIMIT,
        || {
            let (pid, port) = published(zkc, service, machine)?;
            let (code, text) = http_get(port, path)?;
            (code == 200 && text == body).then_some((pid, port))
        },
    )
}

/// The environments of `service` on the machine (one directory per spec).
fn environments(m: &Machine, service: &str) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(m.state_dir().join("env").join(service))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

fn packages(wheel: &Path) -> String {
    format!("packages=[{:?}]", wheel.to_string_lossy())
}

/// One installer end to end: built before the first start, rebuilt aside and swapped
/// when `packages` changes, a failed build keeps what runs and is reported.
fn python_service_lifecycle(installer: &str) {
    let (_zk, m, zkc) = initialised();
    let wheels = tempfile::tempdir().expect("a directory for wheels");
    let one = pop_tests::python::server_wheel(wheels.path(), "hello", "1.0", "one");
    let two = pop_tests::python::server_wheel(wheels.path(), "hello", "2.0", "two");
    m.ok(&[
        "add",
        "python",
        "--name",
        "web",
        "--port",
        "0",
        "--set",
        "module=hello",
        "--set",
        &packages(&one),
    ]);
    let _agent = pop_tests::python::offline_agent(&m, installer);
    m.ok(&["deploy", "web"]);
    let (first_pid, _) = answering(&zkc, "web", &m.id, "/", "one");
    let first_env = environments(&m, "web");
    assert_eq!(first_env.len(), 1, "{first_env:?}");

    // Another version: built aside, then the service restarts onto it and the old
    // environment goes.
    m.ok(&["set", "web", &packages(&two)]);
    let (second_pid, port) = answering(&zkc, "web", &m.id, "/", "two");
    assert_ne!(second_pid, first_pid, "restarted onto the new environment");
    let second_env = wait_for_within("the old environment removed", BUILD_LIMIT, || {
        let dirs = environments(&m, "web");
        (dirs.len() == 1 && dirs != first_env).then_some(dirs)
    });

    // A build that fails: the service keeps running from its environment, and
    // `pop status` says why the new one is not used.
    let missing = wheels.path().join("missing-1.0-py3-none-any.whl");
    m.ok(&["set", "web", &packages(&missing)]);
    let status = wait_for_within("the failed build in pop status", BUILD_LIMIT, || {
        let status = m.ok(&["status", "web"]);
        status
            .contains("building its Python environment failed")
            .then_some(status)
    });
    assert!(status.contains("environments/web.log"), "{status}");
    assert_eq!(published(&zkc, "web", &m.id), Some((second_pid, port)));
    assert_eq!(http_get(port, "/"), Some((200, "two".to_string())));
    assert_eq!(
        environments(&m, "web"),
        second_env,
        "nothing half-built left"
    );

    // Back to a good spec: it is built and used, and the problem is gone.
    m.ok(&["set", "web", &packages(&one)]);
    answering(&zkc, "web", &m.id, "/", "one");
    let status = wait_for_within("the problem cleared", BUILD_LIMIT, || {
        let status = m.ok(&["status", "web"]);
        (!status.contains("failed")).then_some(status)
    });
    assert!(!status.contains("Python environment"), "{status}");
}

#[test]
fn a_python_service_runs_in_an_environment_built_with_venv_and_pip() {
    python_service_lifecycle("none");
}

#[test]
fn a_python_service_runs_in_an_environment_built_with_uv() {
    python_service_lifecycle(&uv().to_string_lossy());
}

/// A `packages` setting that is no list of requirements is refused before anything is
/// written, naming the setting.
#[test]
fn bad_packages_are_refused_and_nothing_is_written() {
    let (_zk, m, zkc) = initialised();
    for bad in [
        "packages=\"hello\"",
        "packages=[1]",
        "packages=[\"--index-url=x\"]",
    ] {
        let err = m.fails(&[
            "add", "python", "--name", "web", "--set", "module=m", "--set", bad,
        ]);
        assert!(err.contains("setting \"packages\""), "{bad}: {err}");
    }
    assert!(zkc.children("/services").is_empty(), "nothing written");
    m.ok(&["add", "python", "--name", "web", "--set", "module=m"]);
    let before = zkc.get("/services/web/settings").expect("settings");
    let err = m.fails(&["set", "web", "packages={\"a\": 1}"]);
    assert!(err.contains("setting \"packages\""), "{err}");
    assert_eq!(zkc.get("/services/web/settings"), Some(before));
}

/// The built-in `http` type: Python's http.server, in the service's own environment,
/// serving the `directory` setting.
#[test]
fn the_http_type_answers_http() {
    let (_zk, m, zkc) = initialised();
    let site = tempfile::tempdir().expect("a directory to serve");
    std::fs::write(site.path().join("hello.txt"), "hello from pop\n").expect("a file");
    let directory = format!("directory={}", site.path().display());
    m.ok(&["add", "http", "--name", "site", "--set", &directory]);
    let _agent = pop_tests::python::offline_agent(&m, "none");
    m.ok(&["deploy", "site"]);
    answering(&zkc, "site", &m.id, "/hello.txt", "hello from pop\n");
}

/// A stored plugin: a greeter answering on its port with its greeting.
fn greeter(punctuation: &str) -> String {
    format!(
        r#"name = "greeter"
description = "answers with a greeting"
environment = "none"
[settings]
greeting = "hello"
port = 0
[run]
command = ["python3", "-c", """
import http.server, sys
port, word = int(sys.argv[1]), sys.argv[2] + "{punctuation}"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = word.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""", "{{port}}", "{{greeting}}"]
[tasks.hello]
description = "say the greeting"
command = ["sh", "-c", "echo {{greeting}} from $POP_MACHINE_ID"]
"#
    )
}

/// The issue's first scenario, as far as launching goes: a user plugin added, deployed
/// on two machines, running there; a changed plugin restarts its services there.
#[test]
fn a_stored_plugin_runs_on_two_machines_and_a_change_restarts_them() {
    let zk = Zk::start();
    let zkc = Checker::connect(&zk);
    let (a, b) = (Machine::new(&zk), Machine::new(&zk));
    a.ok(&["init"]);
    let file = a.state_dir().join("greeter.toml");
    std::fs::write(&file, greeter("")).expect("a manifest");
    let file = file.to_string_lossy().into_owned();
    a.ok(&["plugin", "add", &file]);
    a.ok(&[
        "add",
        "greeter",
        "--name",
        "greet",
        "--set",
        "greeting=howdy",
    ]);
    let (_agent_a, _agent_b) = (a.agent(), b.agent());
    a.ok(&["deploy", "greet", "--machine", &a.id, "--machine", &b.id]);
    let pids: Vec<u64> = [&a, &b]
        .iter()
        .map(|m| answering(&zkc, "greet", &m.id, "/", "howdy").0)
        .collect();

    std::fs::write(&file, greeter("!")).expect("a manifest");
    a.ok(&["plugin", "add", "--replace", &file]);
    for (m, old) in [&a, &b].iter().zip(pids) {
        let (pid, _) = answering(&zkc, "greet", &m.id, "/", "howdy!");
        assert_ne!(pid, old, "restarted on {}", m.id);
    }
    let status = a.ok(&["status", "greet"]);
    assert!(!status.contains("problem"), "{status}");
}
