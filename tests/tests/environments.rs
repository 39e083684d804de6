//! Building Python environments for real (`pop_io::environment`), with uv and with
//! `python3 -m venv` + pip, from wheels made in the test: no network.

use pop_core::environment::EnvironmentSpec;
use pop_io::environment::{build_log_path, Installer, LIST_DISTRIBUTIONS_PY};
use pop_tests::python::{install_uv, wheel, BuildRig};
use serde_json::Value;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What the tests need from programs of their own (wheels, uv), made before any builder
/// exists: a builder's supervisor reaps every child of the process, so a test's own
/// `Command::output` could find its child gone once one runs.
struct Fixtures {
    greet: PathBuf,
    alpha: PathBuf,
    beta: PathBuf,
    uv: Result<PathBuf, String>,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        // Kept for the whole test process.
        let dir = tempfile::tempdir().expect("a directory for wheels").keep();
        Fixtures {
            greet: wheel(&dir, "greet", "1.2", "WORD = 'hello'\n"),
            alpha: wheel(&dir, "alpha", "1.0", ""),
            beta: wheel(&dir, "beta", "2.0", ""),
            uv: install_uv(),
        }
    })
}

/// uv for the tests (installed from PyPI under target/tools when missing).
fn uv() -> PathBuf {
    fixtures().uv.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// A builder, once the fixtures are made.
fn rig_with(installer: Installer) -> BuildRig {
    fixtures();
    BuildRig::new(installer)
}

fn spec(packages: &[&Path]) -> EnvironmentSpec {
    EnvironmentSpec {
        python: "python3".into(),
        packages: packages
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
    }
}

fn python_of(dir: &Path) -> std::path::PathBuf {
    dir.join("bin").join("python")
}

/// What `LIST_DISTRIBUTIONS_PY` says of the environment.
fn distributions(rig: &BuildRig, dir: &Path) -> Vec<Value> {
    let out = rig.output(Command::new(python_of(dir)).args(["-I", "-c", LIST_DISTRIBUTIONS_PY]));
    assert!(out.success, "{}", out.stderr);
    let mut lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let count = lines.pop().expect("a last line");
    assert_eq!(count["count"].as_u64(), Some(lines.len() as u64), "{count}");
    lines
}

/// One installer end to end: a wheel built here is installed, importable, listed with
/// its version, its path as source and an install time; asked again, nothing is
/// rebuilt.
fn builds_with_a_local_wheel(installer: Installer) {
    let mut rig = rig_with(installer);
    let greet = fixtures().greet.as_path();
    let spec = spec(&[greet]);
    let before = std::time::SystemTime::now();
    rig.build("web", &spec).expect("built");
    let dir = rig.dir_of("web", &spec);
    let out =
        rig.output(Command::new(python_of(&dir)).args(["-c", "import greet; print(greet.WORD)"]));
    assert_eq!(out.stdout, "hello\n", "{}", out.stderr);
    let listed = distributions(&rig, &dir);
    let greet_entry = listed
        .iter()
        .find(|d| d["name"] == "greet")
        .unwrap_or_else(|| panic!("greet listed: {listed:?}"));
    assert_eq!(greet_entry["version"], "1.2");
    assert_eq!(greet_entry["source"], "path", "{greet_entry}");
    assert_eq!(greet_entry["location"], greet.to_string_lossy().as_ref());
    let installed_at = greet_entry["installed_at"].as_f64().expect("a time");
    let before = before
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64();
    assert!(installed_at >= before - 1.0, "{installed_at} < {before}");
    let log = std::fs::read_to_string(build_log_path(rig.state(), "web")).expect("a log");
    assert!(log.contains("--- pop: building"), "{log}");
    // Complete already: answered at once, not built again.
    let marker = dir.join("pop-environment.json");
    let written = std::fs::metadata(&marker).and_then(|m| m.modified()).ok();
    let started = Instant::now();
    rig.build("web", &spec).expect("built");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        std::fs::metadata(&marker).and_then(|m| m.modified()).ok(),
        written
    );
}

#[test]
fn venv_and_pip_build_an_environment_from_a_local_wheel() {
    builds_with_a_local_wheel(Installer::Venv);
}

#[test]
fn uv_builds_an_environment_from_a_local_wheel() {
    builds_with_a_local_wheel(Installer::Uv(uv()));
}

/// The same spec gives the same packages either way (pip comes with venv only).
#[test]
fn uv_and_venv_install_the_same_requested_packages() {
    let names = |installer: Installer| {
        let mut rig = rig_with(installer);
        let spec = spec(&[&fixtures().alpha, &fixtures().beta]);
        rig.build("svc", &spec).expect("built");
        let mut names: Vec<String> = distributions(&rig, &rig.dir_of("svc", &spec))
            .iter()
            .filter_map(|d| d["name"].as_str().map(str::to_string))
            .filter(|n| !["pip", "setuptools"].contains(&n.as_str()))
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(Installer::Venv), ["alpha", "beta"]);
    assert_eq!(names(Installer::Uv(uv())), ["alpha", "beta"]);
}

#[test]
fn a_build_that_fails_says_why_and_leaves_nothing_behind() {
    for installer in [Installer::Venv, Installer::Uv(uv())] {
        let mut rig = rig_with(installer.clone());
        let missing = rig.state().join("nope-1.0-py3-none-any.whl");
        let spec = spec(&[&missing]);
        let error = rig.build("web", &spec).expect_err("no such wheel");
        let log = build_log_path(rig.state(), "web");
        assert!(
            error.contains(&format!("see {}", log.display())),
            "{installer:?}: {error}"
        );
        assert!(
            error.contains("exit code"),
            "{installer:?}: says how it ended: {error}"
        );
        assert!(!rig.dir_of("web", &spec).exists(), "{installer:?}");
    }
}

#[test]
fn an_interpreter_that_does_not_exist_fails_the_build_naming_it() {
    let mut rig = rig_with(Installer::Venv);
    let spec = EnvironmentSpec {
        python: "python-that-does-not-exist".into(),
        packages: Vec::new(),
    };
    let error = rig.build("web", &spec).expect_err("no such python");
    assert!(
        error.starts_with("cannot run python-that-does-not-exist"),
        "{error}"
    );
}

#[test]
fn removal_keeps_only_the_environments_asked_for() {
    let rig = rig_with(Installer::Venv);
    let root = rig.state().join("env").join("web");
    for hash in ["aaaa", "bbbb"] {
        std::fs::create_dir_all(root.join(hash)).expect("a directory");
    }
    let builder = rig.builder.clone();
    rig.runtime
        .block_on(async move { builder.remove("web", vec!["bbbb".into()]) });
    pop_tests::wait_for("aaaa removed", || {
        (!root.join("aaaa").exists()).then_some(())
    });
    assert!(root.join("bbbb").exists());
    let builder = rig.builder.clone();
    rig.runtime
        .block_on(async move { builder.remove("web", Vec::new()) });
    pop_tests::wait_for("all removed", || (!root.exists()).then_some(()));
}

/// A build that hangs is killed, with its process group, when the agent stops.
#[test]
fn stopping_kills_a_build_in_flight() {
    let mut rig = rig_with(Installer::Venv);
    let hang = rig.state().join("hang");
    std::fs::write(&hang, "#!/bin/sh\nsleep 300\n").expect("a script");
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&hang, executable).expect("chmod +x");
    let spec = EnvironmentSpec {
        python: hang.to_string_lossy().into_owned(),
        packages: Vec::new(),
    };
    rig.start_build("web", &spec);
    // The shell running the script and its sleep: both carry the build's token.
    let token = format!("POP_SUPERVISION_TOKEN={}/web/environment", rig.machine);
    let sleeping = pop_tests::wait_for("the build to run", || {
        let found = with_environment(&token);
        (found.len() >= 2).then_some(found)
    });
    rig.builder.stop_all();
    let result = rig.outcome_within(&spec, Duration::from_secs(10));
    assert!(result.is_err(), "{result:?}");
    pop_tests::wait_for("the build's processes to be gone", || {
        sleeping
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .then_some(())
    });
}

/// Processes whose environment has `entry` (`KEY=VALUE`).
fn with_environment(entry: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = dir.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(dir.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|e| e == entry.as_bytes()) {
            found.push(pid);
        }
    }
    found
}
