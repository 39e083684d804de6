//! Building the Python environments the core asks for (`Action::BuildEnvironment`),
//! off the event loop, and removing the ones nothing runs from any more.
//!
//! An environment is built where it stays, `<state dir>/env/<service>/<hash>` (a virtual
//! environment cannot be moved): with `uv venv` and `uv pip install` when uv is
//! available ([`Installer::from_env`]), else with `<python> -m venv` and the
//! environment's own pip. Either way it holds the interpreter the spec names and the
//! packages it lists; a venv-built one also has pip (and, before Python 3.12,
//! setuptools) from `ensurepip`. It is complete once `pop-environment.json`, written
//! last, records the very spec: asked again for a complete one (an agent restarted), the
//! builder answers at once; an incomplete one is removed and built again.
//!
//! The build's programs are children whose exits the supervisor's reaper reports (it
//! alone calls `waitpid`), each in a process group of its own, killed with it when the
//! agent stops or when a build takes longer than [`BUILD_TIMEOUT`]. They carry the
//! supervision token `<machine>/<service>/environment`, so the next agent kills what a
//! killed one left building (its start-up clean-up kills every process of the machine's
//! tokens it does not adopt), and builds again. Their output goes to
//! `<state dir>/logs/environments/<service>.log`. Builds and removals of one service run
//! one at a time, in the order asked.

use crate::supervise::{self, ExitStatus, TOKEN_ENV};
use pop_core::environment::EnvironmentSpec;
use pop_core::event::Input;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

/// The longest a build may take before it is killed and reported failed.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// The file that marks an environment complete, holding what it was built from.
const MARKER: &str = "pop-environment.json";

/// Selects the installer: `uv` (a path, or found on `PATH`), or `none` for venv + pip.
pub const INSTALLER_ENV: &str = "POP_UV";

/// How environments are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    /// `uv venv` + `uv pip install`, with this uv.
    Uv(PathBuf),
    /// `<python> -m venv` + the environment's pip.
    Venv,
}

impl Installer {
    /// [`INSTALLER_ENV`] if set (`none` or empty: venv + pip; else uv's path), else uv
    /// if it is on `PATH`, else venv + pip.
    pub fn from_env() -> Installer {
        match std::env::var_os(INSTALLER_ENV) {
            Some(v) if v.is_empty() || v == "none" => Installer::Venv,
            Some(path) => Installer::Uv(PathBuf::from(path)),
            None => find_on_path("uv").map_or(Installer::Venv, Installer::Uv),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Installer::Uv(path) => format!("uv ({})", path.display()),
            Installer::Venv => "venv + pip".to_string(),
        }
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// What `pop-environment.json` records.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Marker {
    spec: EnvironmentSpec,
    installer: String,
}

/// `<state dir>/logs/environments/<service>.log`: every build of the service's
/// environments, appended.
pub fn build_log_path(state_dir: &Path, service: &str) -> PathBuf {
    state_dir
        .join("logs")
        .join("environments")
        .join(format!("{service}.log"))
}

/// Builds and removes environments; see the module docs.
#[derive(Clone)]
pub struct EnvironmentBuilder {
    state_dir: PathBuf,
    machine_id: String,
    installer: Installer,
    events: UnboundedSender<Input>,
    /// One lock per service: its builds and removals run one at a time.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Process groups of the build programs running, to kill them at shutdown.
    running: Arc<Mutex<HashMap<u32, String>>>,
    stopped: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EnvironmentBuilder {
    /// Reports go to `events` as `Input::EnvironmentBuilt`.
    pub fn new(
        state_dir: PathBuf,
        machine_id: &str,
        installer: Installer,
        events: UnboundedSender<Input>,
    ) -> Self {
        info!(installer = %installer.name(), "Python environments are built with it");
        EnvironmentBuilder {
            state_dir,
            machine_id: machine_id.to_string(),
            installer,
            events,
            locks: Arc::default(),
            running: Arc::default(),
            stopped: Arc::default(),
        }
    }

    fn service_lock(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.locks).entry(service.to_string()).or_default())
    }

    /// Builds `spec` at `dir` unless it is there complete; reports when done.
    pub fn build(&self, service: &str, spec: EnvironmentSpec, dir: &str) {
        let builder = self.clone();
        let service = service.to_string();
        let dir = PathBuf::from(dir);
        let serial = self.service_lock(&service);
        tokio::spawn(async move {
            let _turn = serial.lock().await;
            let spec_hash = spec.hash();
            let result = builder.build_at(&service, &spec, &dir).await;
            match &result {
                Ok(()) => info!(%service, dir = %dir.display(), "environment ready"),
                Err(e) => warn!(%service, dir = %dir.display(), "environment failed: {e}"),
            }
            let _ = builder.events.send(Input::EnvironmentBuilt {
                service,
                spec_hash,
                result,
            });
        });
    }

    /// Removes the environments of `service` whose hash is not in `keep` (all of them,
    /// and its directory, when `keep` is empty).
    pub fn remove(&self, service: &str, keep: Vec<String>) {
        let root = self.state_dir.join("env").join(service);
        let serial = self.service_lock(service);
        let service = service.to_string();
        tokio::spawn(async move {
            let _turn = serial.lock().await;
            let removed = tokio::task::spawn_blocking(move || remove_except(&root, &keep)).await;
            match removed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(%service, "cannot remove old environments: {e}"),
                Err(e) => warn!(%service, "removing old environments failed: {e}"),
            }
        });
    }

    /// Kills every build running now, and any started later (the agent is stopping).
    pub fn stop_all(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for (pgid, service) in lock(&self.running).iter() {
            warn!(%service, pgid, "killing an environment build: the agent is stopping");
            kill_group(*pgid);
        }
    }

    async fn build_at(
        &self,
        service: &str,
        spec: &EnvironmentSpec,
        dir: &Path,
    ) -> Result<(), String> {
        let marker = Marker {
            spec: spec.clone(),
            installer: self.installer.name(),
        };
        let done = read_marker(dir).is_some_and(|m| m.spec == *spec);
        if done {
            return Ok(());
        }
        let log_path = build_log_path(&self.state_dir, service);
        let (dir_owned, log_owned) = (dir.to_path_buf(), log_path.clone());
        let mut log = tokio::task::spawn_blocking(move || prepare(&dir_owned, &log_owned))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot prepare {}: {e}", dir.display()))?;
        let _ = writeln!(
            log,
            "--- pop: building {} with {}: python {:?}, packages {:?}",
            dir.display(),
            self.installer.name(),
            spec.python,
            spec.packages
        );
        let result = self.run_steps(service, spec, dir, &log, &log_path).await;
        let result = match result {
            Ok(()) => write_marker(dir, &marker)
                .map_err(|e| format!("cannot write {}: {e}", dir.join(MARKER).display())),
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(()) => "built".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        let _ = writeln!(log, "--- pop: {} {outcome}", dir.display());
        if result.is_err() {
            // Incomplete: a later build starts afresh.
            let dir = dir.to_path_buf();
            let _ = tokio::task::spawn_blocking(move || fs::remove_dir_all(dir)).await;
        }
        result
    }

    async fn run_steps(
        &self,
        service: &str,
        spec: &EnvironmentSpec,
        dir: &Path,
        log: &File,
        log_path: &Path,
    ) -> Result<(), String> {
        let python = dir.join("bin").join("python");
        let dir_arg = dir.to_string_lossy().into_owned();
        let python_arg = python.to_string_lossy().into_owned();
        let mut steps: Vec<Vec<String>> = Vec::new();
        match &self.installer {
            Installer::Uv(uv) => {
                let uv = uv.to_string_lossy().into_owned();
                steps.push(vec![
                    uv.clone(),
                    "venv".into(),
                    "--python".into(),
                    spec.python.clone(),
                    dir_arg,
                ]);
                if !spec.packages.is_empty() {
                    let mut install = vec![
                        uv,
                        "pip".into(),
                        "install".into(),
                        "--python".into(),
                        python_arg,
                    ];
                    install.extend(spec.packages.iter().cloned());
                    steps.push(install);
                }
            }
            Installer::Venv => {
                steps.push(vec![
                    spec.python.clone(),
                    "-m".into(),
                    "venv".into(),
                    dir_arg,
                ]);
                if !spec.packages.is_empty() {
                    let mut install = vec![
                        python_arg,
                        "-m".into(),
                        "pip".into(),
                        "install".into(),
                        "--no-input".into(),
                        "--disable-pip-version-check".into(),
                    ];
                    install.extend(spec.packages.iter().cloned());
                    steps.push(install);
                }
            }
        }
        for argv in steps {
            if self.stopped.load(Ordering::SeqCst) {
                return Err("the agent is stopping".into());
            }
            let _ = writeln!(&*log, "--- pop: running {argv:?}");
            let status = self.run(service, &argv, log).await?;
            if !status.success() {
                let last = last_output_line(log_path).unwrap_or_default();
                let mut error = format!("{} {} ({status})", argv[0], argv[1]);
                if !last.is_empty() {
                    error.push_str(&format!(": {last}"));
                }
                error.push_str(&format!("; see {}", log_path.display()));
                return Err(error);
            }
        }
        Ok(())
    }

    /// Runs one program of a build to its end, in a process group of its own.
    async fn run(&self, service: &str, argv: &[String], log: &File) -> Result<ExitStatus, String> {
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .current_dir(&self.state_dir)
            .process_group(0)
            // uv: only the interpreter asked for, never one it would download.
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_PYTHON_PREFERENCE", "only-system")
            .env("UV_CACHE_DIR", self.state_dir.join("cache").join("uv"))
            .env("UV_NO_PROGRESS", "1")
            .env("PIP_NO_INPUT", "1")
            .env(
                TOKEN_ENV,
                format!("{}/{service}/environment", self.machine_id),
            )
            .env_remove("VIRTUAL_ENV")
            .env_remove("PYTHONHOME")
            .env_remove("PYTHONPATH");
        let (pid, exited) = supervise::spawn_helper(&mut cmd)
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        lock(&self.running).insert(pid, service.to_string());
        if self.stopped.load(Ordering::SeqCst) {
            kill_group(pid);
        }
        let status = tokio::time::timeout(BUILD_TIMEOUT, exited).await;
        lock(&self.running).remove(&pid);
        match status {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(_)) => Err(format!("{} vanished", argv[0])),
            Err(_) => {
                kill_group(pid);
                Err(format!("{} took longer than {BUILD_TIMEOUT:?}", argv[0]))
            }
        }
    }
}

fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn read_marker(dir: &Path) -> Option<Marker> {
    let data = fs::read(dir.join(MARKER)).ok()?;
    serde_json::from_slice(&data).ok()
}

fn write_marker(dir: &Path, marker: &Marker) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(marker).map_err(io::Error::other)?;
    let tmp = dir.join(format!("{MARKER}.tmp"));
    fs::write(&tmp, json)?;
    fs::rename(&tmp, dir.join(MARKER))
}

/// Clears what an earlier, unfinished build left at `dir`, and opens the build log.
fn prepare(dir: &Path, log: &Path) -> io::Result<File> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(log)
}

fn remove_except(root: &Path, keep: &[String]) -> io::Result<()> {
    if keep.is_empty() {
        return match fs::remove_dir_all(root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            info!(dir = %entry.path().display(), "removing an environment nothing runs from");
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// The last line of a build's output, to say why it failed.
fn last_output_line(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with("--- pop:"))
        .map(|line| line.chars().take(300).collect())
}

/// The script `pop run <service> packages` runs (kept in the core, which launches it).
pub use pop_core::packages::LIST_DISTRIBUTIONS_PY;
