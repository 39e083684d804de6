//! `pop run <service> install <requirement>...` and `pop run <service> packages` against a
//! real ZooKeeper with two agents (one building with uv, one with venv + pip), wheels
//! made in the test (no network): an install reported per machine and the service
//! restarted on it, a listing with version, source and time from each machine, a bad
//! requirement failing everywhere while the service keeps running, refusals that write
//! nothing, and the README's tutorial lines as written.

use pop_tests::python::{uv, wheel};
use pop_tests::{http_get, wait_for_within, Checker, Machine, Zk};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Building environments on a machine busy with other builds can take a while.
const BUILD_LIMIT: Duration = Duration::from_secs(240);

/// The published (pid, port) of `service` on `machine` once it answers GET / with `body`.
fn answering(zkc: &Checker, service: &str, machine: &str, body: &str) -> (u64, u16) {
    wait_for_within(
        &format!("{service} on {machine} to answer {body:?}"),
        BUILD_LIMIT,
        || {
            let state = zkc.get_json(&format!("/services/{service}/state/{machine}"))?;
            let pid = state["pid"].as_u64()?;
            let port = u16::try_from(state["port"].as_u64()?).ok()?;
            let (code, text) = http_get(port, "/")?;
            (code == 200 && text == body).then_some((pid, port))
        },
    )
}

fn published_pid(zkc: &Checker, service: &str, machine: &str) -> Option<u64> {
    zkc.get_json(&format!("/services/{service}/state/{machine}"))?["pid"].as_u64()
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn packages_setting(zkc: &Checker, service: &str) -> Value {
    zkc.get_json(&format!("/services/{service}/settings"))
        .expect("the settings")["packages"]
        .clone()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn install_of_a_local_wheel_on_two_machines_then_packages_lists_it_on_both() {
    let zk = Zk::start();
    let (m1, m2) = (Machine::new(&zk), Machine::new(&zk));
    let zkc = Checker::connect(&zk);
    let wheels = tempfile::tempdir().expect("a directory for wheels");
    let app = pop_tests::python::server_wheel(wheels.path(), "app", "1.0", "one");
    let extra = wheel(wheels.path(), "extra", "2.0", "WORD = 'extra'\n");
    m1.ok(&["init"]);
    let packages = format!("packages=[{:?}]", path(&app));
    m1.ok(&[
        "add",
        "python",
        "--name",
        "web",
        "--port",
        "0",
        "--set",
        "module=app",
        "--set",
        &packages,
    ]);
    let _a1 = pop_tests::python::offline_agent(&m1, path(&uv()));
    let _a2 = pop_tests::python::offline_agent(&m2, "none");
    m1.ok(&["deploy", "web", "--machine", &m1.id, "--machine", &m2.id]);
    let (pid1, _) = answering(&zkc, "web", &m1.id, "one");
    let (pid2, _) = answering(&zkc, "web", &m2.id, "one");

    // Install: added to packages, rebuilt on each machine, reported per machine.
    let out = m1.ok(&["run", "web", "install", path(&extra), "--timeout", "4m"]);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[0].starts_with("MACHINE"), "{out}");
    for (row, m) in rows[1..].iter().zip([&m1, &m2]) {
        assert!(row.starts_with(m.id.as_str()), "{out}");
        assert!(row.contains("succeeded"), "{out}");
        assert!(
            row.contains(&format!("built with {}", path(&extra))),
            "{out}"
        );
    }
    assert_eq!(
        packages_setting(&zkc, "web"),
        serde_json::json!([path(&app), path(&extra)])
    );
    // Restarted on the new environment.
    for (m, before) in [(&m1, pid1), (&m2, pid2)] {
        let (pid, _) = answering(&zkc, "web", &m.id, "one");
        assert_ne!(pid, before, "{} restarted", m.id);
    }

    // Packages: every distribution with its version, source and time, per machine.
    let listed = json(&m1.ok(&["--json", "run", "web", "packages"]));
    let machines = listed["machines"].as_array().expect("machines");
    assert_eq!(machines.len(), 2, "{listed}");
    for (entry, (m, installer)) in machines.iter().zip([(&m1, "uv"), (&m2, "pip")]) {
        assert_eq!(entry["machine"], m.id.as_str(), "{listed}");
        assert_eq!(entry["state"], "succeeded", "{entry}");
        let dists = entry["distributions"].as_array().expect("distributions");
        let find = |name: &str| {
            dists
                .iter()
                .find(|d| d["name"] == name)
                .unwrap_or_else(|| panic!("{name} listed on {}: {entry}", m.id))
        };
        for (name, version, wheel) in [("app", "1.0", &app), ("extra", "2.0", &extra)] {
            let d = find(name);
            assert_eq!(d["version"], version, "{d}");
            assert_eq!(d["source"], "path", "{d}");
            assert_eq!(d["location"], path(wheel), "{d}");
            assert_eq!(d["installer"], installer, "{d}");
            let at = d["installed_at"].as_f64().expect("an install time");
            assert!(at > 1_600_000_000.0, "{d}");
        }
    }
    let table = m1.ok(&["run", "web", "packages"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("MACHINE") && header.contains("VERSION") && header.ends_with("SOURCE"),
        "{table}"
    );
    for m in [&m1, &m2] {
        let row = table
            .lines()
            .find(|l| l.starts_with(m.id.as_str()) && l.contains(" extra "))
            .unwrap_or_else(|| panic!("extra on {}: {table}", m.id));
        assert!(row.contains(" 2.0 "), "{row}");
        assert!(row.ends_with(&format!("path {}", path(&extra))), "{row}");
        assert!(row.contains("Z "), "an install time: {row}");
    }

    // A requirement that cannot be installed fails on each machine with the build's
    // error; the service keeps running on its environment.
    let (pid1, port1) = answering(&zkc, "web", &m1.id, "one");
    let (pid2, _) = answering(&zkc, "web", &m2.id, "one");
    let missing = wheels.path().join("missing-1.0-py3-none-any.whl");
    let out = m1.pop(&[
        "--json",
        "run",
        "web",
        "install",
        path(&missing),
        "--timeout",
        "4m",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = json(&String::from_utf8_lossy(&out.stdout));
    for (entry, m) in report["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .zip([&m1, &m2])
    {
        assert_eq!(entry["machine"], m.id.as_str(), "{report}");
        assert_eq!(entry["state"], "failed", "{entry}");
        let error = entry["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("building environment"), "{entry}");
        let stderr = entry["stderr_tail"].as_str().unwrap_or_default();
        assert!(
            stderr.contains("environments/web.log"),
            "the build's error: {entry}"
        );
    }
    assert_eq!(published_pid(&zkc, "web", &m1.id), Some(pid1));
    assert_eq!(published_pid(&zkc, "web", &m2.id), Some(pid2));
    assert_eq!(http_get(port1, "/"), Some((200, "one".to_string())));
}

/// Everything `install` refuses is refused before anything is written.
#[test]
fn install_refusals_name_the_problem_and_write_nothing() {
    let zk = Zk::start();
    let m = Machine::new(&zk);
    m.ok(&["init"]);
    m.ok(&["add", "echo", "--port", "0"]);
    m.ok(&["deploy", "echo"]);
    m.ok(&["add", "python", "--name", "app", "--set", "module=app"]);
    let before = m.ok(&["dump", "--format", "json"]);
    m.ok(&["deploy", "app"]);
    let deployed = m.ok(&["dump", "--format", "json"]);
    for (args, needle, dump) in [
        (
            vec!["run", "echo", "install", "x==1"],
            "install is a task of types with a Python environment; echo is of type echo, which has none",
            &deployed,
        ),
        (
            vec!["run", "app", "install"],
            "install needs one or more requirements",
            &deployed,
        ),
        (
            vec!["run", "app", "install", "ok==1", "--", "--index-url=http://x"],
            "would be read as an option",
            &deployed,
        ),
        (
            vec!["run", "app", "install", "x==1", "--rolling"],
            "--machine and --rolling do not apply",
            &deployed,
        ),
        (
            vec!["run", "app", "packages", "x"],
            "packages takes no arguments",
            &deployed,
        ),
    ] {
        let err = m.fails(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(&m.ok(&["dump", "--format", "json"]), dump, "{args:?} wrote");
    }
    m.ok(&["undeploy", "app"]);
    let undeployed = m.ok(&["dump", "--format", "json"]);
    assert_eq!(undeployed.len(), before.len(), "back to deployed nowhere");
    let err = m.fails(&["run", "app", "install", "x==1"]);
    assert!(err.contains("app is deployed nowhere"), "{err}");
    assert_eq!(m.ok(&["dump", "--format", "json"]), undeployed);
}

/// Splits a line of the README's shell into words: plain words and '...' quoted ones,
/// up to a comment.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut started) = (false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                started = true;
            }
            '#' if !quoted && !started => break,
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// The README tutorial's Python lines as written, with its `/wheels` and `/srv/www`
/// made here: `pop run app install` reports success and `pop run app packages` lists
/// what was installed.
#[test]
fn the_readme_tutorial_of_python_environments_runs_as_written() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split_once("```sh\npop add http --name site")
        .and_then(|(_, rest)| rest.split_once("\n```\n"))
        .map(|(text, _)| format!("pop add http --name site{text}"))
        .expect("the README's tutorial has the Python block");
    let zk = Zk::start();
    let m = Machine::new(&zk);
    let zkc = Checker::connect(&zk);
    let wheels = tempfile::tempdir().expect("a directory for wheels");
    let www = tempfile::tempdir().expect("a directory to serve");
    pop_tests::python::server_wheel(wheels.path(), "myapp", "1.0", "1.0");
    pop_tests::python::server_wheel(wheels.path(), "myapp", "1.1", "1.1");
    wheel(wheels.path(), "extra", "2.0", "WORD = 'extra'\n");
    m.ok(&["init"]);
    let _agent = pop_tests::python::offline_agent(&m, path(&uv()));
    let mut outputs = Vec::new();
    for line in block.lines() {
        let line = line
            .replace("/wheels", path(wheels.path()))
            .replace("/srv/www", path(www.path()));
        let words = shell_words(&line);
        let Some(("pop", args)) = words.split_first().map(|(p, a)| (p.as_str(), a)) else {
            panic!("not a pop command: {line}");
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if args.first() == Some(&"run") {
            // Wait for the environment being built from `pop set` first: the output
            // is then about the install alone.
            answering(&zkc, "app", &m.id, "1.1");
        }
        outputs.push((args.join(" "), m.ok(&args)));
    }
    let find = |prefix: &str| {
        outputs
            .iter()
            .find(|(command, _)| command.starts_with(prefix))
            .map(|(_, out)| out.clone())
            .unwrap_or_else(|| panic!("the README runs `pop {prefix}`"))
    };
    let installed = find("run app install");
    assert!(installed.contains("succeeded"), "{installed}");
    let listed = find("run app packages");
    let extra = listed
        .lines()
        .find(|l| l.contains(" extra "))
        .unwrap_or_else(|| panic!("extra listed: {listed}"));
    assert!(
        extra.starts_with(m.id.as_str()) && extra.contains(" 2.0 "),
        "{listed}"
    );
    assert!(
        listed.contains(" myapp ") && listed.contains(" 1.1 "),
        "{listed}"
    );
}

/// A listing of 150 distributions (each line about 150 bytes: 20 KiB, five times what a
/// task's result keeps of other tasks' output) comes back whole from the machine.
#[test]
fn a_listing_of_many_distributions_is_not_cut() {
    const MANY: usize = 150;
    let zk = Zk::start();
    let m = Machine::new(&zk);
    let wheels = tempfile::tempdir().expect("a directory for wheels");
    let sleeper = "import time\nif __name__ == '__main__':\n    time.sleep(100000)\n";
    let mut requirements = vec![path(&wheel(wheels.path(), "app", "1.0", sleeper)).to_string()];
    for n in 0..MANY {
        let dist = wheel(wheels.path(), &format!("dist{n:03}"), "1.0", "X = 1\n");
        requirements.push(path(&dist).to_string());
    }
    m.ok(&["init"]);
    let packages = format!("packages={}", serde_json::json!(requirements));
    m.ok(&[
        "add",
        "python",
        "--name",
        "app",
        "--set",
        "module=app",
        "--set",
        &packages,
    ]);
    let _agent = pop_tests::python::offline_agent(&m, path(&uv()));
    m.ok(&["deploy", "app"]);
    let listed = json(&m.ok(&["--json", "run", "app", "packages", "--timeout", "4m"]));
    let entry = &listed["machines"][0];
    assert_eq!(entry["state"], "succeeded", "{entry}");
    let stdout = entry["stdout_tail"].as_str().unwrap_or_default();
    assert!(stdout.len() > 4 * 4096, "{} bytes", stdout.len());
    let dists = entry["distributions"].as_array().expect("distributions");
    for n in 0..MANY {
        let name = format!("dist{n:03}");
        assert!(
            dists.iter().any(|d| d["name"] == name.as_str()),
            "{name} missing of {}",
            dists.len()
        );
    }
    let table = m.ok(&["run", "app", "packages"]);
    assert!(!table.contains("more not shown"), "{table}");
    assert!(table.lines().count() > MANY + 1, "{table}");
}
