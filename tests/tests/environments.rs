//! Building Python environments for real (`pop_io::environment`), with uv and with
//! `python3 -m venv` + pip, from wheels made in the test: no network.

use pop_core::environment::{env_dir, EnvironmentSpec};
use pop_core::event::Input;
use pop_io::environment::{build_log_path, EnvironmentBuilder, Installer, LIST_DISTRIBUTIONS_PY};
use pop_io::supervise::{ContainmentChoice, Supervisor, SupervisorConfig};
use pop_tests::python::{uv, wheel};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A builder in a runtime of its own, with a supervisor (whose reaper the builds need).
struct Rig {
    runtime: tokio::runtime::Runtime,
    builder: EnvironmentBuilder,
    events: UnboundedReceiver<Input>,
    _supervisor: Supervisor,
    machine: String,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new(installer: Installer) -> Rig {
        let dir = tempfile::tempdir().expect("a state dir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let machine = format!("envtest-{}-{n}", std::process::id());
        let (tx, events) = unbounded_channel();
        let (supervisor, builder) = runtime.block_on(async {
            let config =
                SupervisorConfig::new(&machine, dir.path(), ContainmentChoice::ProcessGroup);
            let supervisor = Supervisor::new(config, tx.clone()).expect("a supervisor");
            let builder =
                EnvironmentBuilder::new(dir.path().to_path_buf(), &machine, installer, tx);
            (supervisor, builder)
        });
        Rig {
            runtime,
            builder,
            events,
            _supervisor: supervisor,
            machine,
            dir,
        }
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Builds `spec` for `service` and waits for the outcome.
    fn build(&mut self, service: &str, spec: &EnvironmentSpec) -> Result<(), String> {
        let state = self.state().to_string_lossy().into_owned();
        let dir = env_dir(&state, service, &spec.hash());
        let builder = self.builder.clone();
        let spec2 = spec.clone();
        let service2 = service.to_string();
        self.runtime
            .block_on(async move { builder.build(&service2, spec2, &dir) });
        let hash = spec.hash();
        self.runtime.block_on(async {
            let wait = async {
                while let Some(input) = self.events.recv().await {
                    if let Input::EnvironmentBuilt {
                        service: s,
                        spec_hash,
                        result,
                    } = input
                    {
                        if s == service && spec_hash == hash {
                            return result;
                        }
                    }
                }
                Err("no more events".to_string())
            };
            tokio::time::timeout(Duration::from_secs(300), wait)
                .await
                .expect("the build ends within 5 minutes")
        })
    }

    fn dir_of(&self, service: &str, spec: &EnvironmentSpec) -> std::path::PathBuf {
        self.state().join("env").join(service).join(spec.hash())
    }
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
fn distributions(dir: &Path) -> Vec<Value> {
    let out = Command::new(python_of(dir))
        .args(["-I", "-c", LIST_DISTRIBUTIONS_PY])
        .output()
        .expect("running the environment's python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("a JSON array") {
        Value::Array(list) => list,
        other => panic!("not a list: {other}"),
    }
}

/// One installer end to end: a wheel built here is installed, importable, listed with
/// its version, its path as source and an install time; asked again, nothing is
/// rebuilt.
fn builds_with_a_local_wheel(installer: Installer) {
    let mut rig = Rig::new(installer);
    let wheels = rig.state().join("wheels");
    let greet = wheel(&wheels, "greet", "1.2", "WORD = 'hello'\n");
    let spec = spec(&[&greet]);
    let before = std::time::SystemTime::now();
    rig.build("web", &spec).expect("built");
    let dir = rig.dir_of("web", &spec);
    let out = Command::new(python_of(&dir))
        .args(["-c", "import greet; print(greet.WORD)"])
        .output()
        .expect("running python");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let listed = distributions(&dir);
    let greet_entry = listed
        .iter()
        .find(|d| d["name"] == "greet")
        .unwrap_or_else(|| panic!("greet listed: {listed:?}"));
    assert_eq!(greet_entry["version"], "1.2");
    assert_eq!(greet_entry["source"]["kind"], "path", "{greet_entry}");
    assert_eq!(
        greet_entry["source"]["location"],
        greet.to_string_lossy().as_ref()
    );
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
        let mut rig = Rig::new(installer);
        let wheels = rig.state().join("wheels");
        let a = wheel(&wheels, "alpha", "1.0", "");
        let b = wheel(&wheels, "beta", "2.0", "");
        let spec = spec(&[&a, &b]);
        rig.build("svc", &spec).expect("built");
        let mut names: Vec<String> = distributions(&rig.dir_of("svc", &spec))
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
        let mut rig = Rig::new(installer.clone());
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
    let mut rig = Rig::new(Installer::Venv);
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
    let rig = Rig::new(Installer::Venv);
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
    let mut rig = Rig::new(Installer::Venv);
    let hang = rig.state().join("hang");
    std::fs::write(&hang, "#!/bin/sh\nsleep 300\n").expect("a script");
    Command::new("chmod")
        .args(["+x"])
        .arg(&hang)
        .status()
        .expect("chmod");
    let spec = EnvironmentSpec {
        python: hang.to_string_lossy().into_owned(),
        packages: Vec::new(),
    };
    let state = rig.state().to_string_lossy().into_owned();
    let dir = env_dir(&state, "web", &spec.hash());
    let builder = rig.builder.clone();
    let spec2 = spec.clone();
    rig.runtime
        .block_on(async move { builder.build("web", spec2, &dir) });
    // The shell running the script and its sleep: both carry the build's token.
    let token = format!("POP_SUPERVISION_TOKEN={}/web/environment", rig.machine);
    let sleeping = pop_tests::wait_for("the build to run", || {
        let found = with_environment(&token);
        (found.len() >= 2).then_some(found)
    });
    rig.builder.stop_all();
    let result = rig.build_result_within(&spec, Duration::from_secs(10));
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

impl Rig {
    fn build_result_within(
        &mut self,
        spec: &EnvironmentSpec,
        limit: Duration,
    ) -> Result<(), String> {
        let hash = spec.hash();
        self.runtime.block_on(async {
            let wait = async {
                while let Some(input) = self.events.recv().await {
                    if let Input::EnvironmentBuilt {
                        spec_hash, result, ..
                    } = input
                    {
                        if spec_hash == hash {
                            return result;
                        }
                    }
                }
                Err("no more events".to_string())
            };
            tokio::time::timeout(limit, wait)
                .await
                .unwrap_or_else(|_| Err("no outcome in time".into()))
        })
    }
}
