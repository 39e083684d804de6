//! `pop fg`, `pop start` and `pop stop`: the agent process and its pid file (locked for
//! the agent's whole life; see `pidfile`).

use crate::agent_log;
use crate::auth;
use crate::context;
use crate::pidfile::{read_pid, PidLock};
use crate::Cli;
use anyhow::{anyhow, bail, Context, Result};
use pop_io::driver::{self, DriverConfig, StopRequest};
use pop_io::journal::JournalLimits;
use pop_io::supervise::ContainmentChoice;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

fn pid_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.pid")
}

pub fn agent_log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.log")
}

fn lock_pid_file(path: &Path) -> Result<Option<PidLock>> {
    PidLock::try_acquire(path).with_context(|| format!("locking {}", path.display()))
}

/// The pid of the agent holding the lock; it writes it right after taking the lock.
fn agent_pid(pid_file: &Path) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(pid) = read_pid(pid_file) {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("{} holds no pid", pid_file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alive and not a zombie: an exited daemon stays a zombie until init reaps it.
fn alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waiting for a process to exit: told by a pidfd (it polls readable at the exit),
/// or checking every 50 ms where there are none (before Linux 5.3).
struct ExitWatch {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl ExitWatch {
    fn new(pid: i32) -> ExitWatch {
        // SAFETY: a plain syscall with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = RawFd::try_from(fd)
            .ok()
            .filter(|fd| *fd >= 0)
            // SAFETY: the kernel just returned this descriptor; nothing else owns it.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        ExitWatch { pid, pidfd }
    }

    /// True once the process has exited (or is a zombie), false after `limit`.
    fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !alive(self.pid) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match &self.pidfd {
                Some(fd) => {
                    let mut poll = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
                    // SAFETY: polls one descriptor we own, described by a local struct.
                    unsafe { libc::poll(&mut poll, 1, ms) };
                }
                None => std::thread::sleep(Duration::from_millis(50).min(left)),
            }
        }
    }
}

fn session_timeout() -> Duration {
    std::env::var("POP_SESSION_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10))
}

/// `POP_JOURNAL_MAX_BYTES` bounds each journal file (tests use a small one to rotate).
fn journal_limits() -> Result<JournalLimits> {
    let mut limits = JournalLimits::default();
    if let Ok(raw) = std::env::var("POP_JOURNAL_MAX_BYTES") {
        limits.max_bytes = raw
            .parse()
            .map_err(|_| anyhow!("POP_JOURNAL_MAX_BYTES={raw:?}: expected a number of bytes"))?;
    }
    Ok(limits)
}

fn containment() -> Result<ContainmentChoice> {
    match std::env::var("POP_CONTAINMENT").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(ContainmentChoice::Auto),
        Ok("cgroup") => Ok(ContainmentChoice::Cgroup),
        Ok("process-group") => Ok(ContainmentChoice::ProcessGroup),
        Ok(other) => bail!("POP_CONTAINMENT={other:?}: expected auto, cgroup or process-group"),
    }
}

pub async fn foreground(cli: &Cli) -> Result<()> {
    let machine = context::machine_id(cli)?;
    if let Some(warning) = context::machine_id_changed(cli, &machine) {
        tracing::warn!("{warning}");
    }
    let state_dir = context::state_dir(cli)?;
    // Settings are in the journal and run records: the state directory and those files
    // are the agent's user's alone, whatever an earlier pop left.
    let tightened = pop_io::state_dir::secure(&state_dir)
        .with_context(|| format!("securing state directory {}", state_dir.display()))?;
    for change in tightened {
        tracing::info!("tightened the mode of {change}");
    }
    let pid_file = pid_path(&state_dir);
    let Some(mut lock) = lock_pid_file(&pid_file)? else {
        let pid = read_pid(&pid_file).map_or("?".to_string(), |p| p.to_string());
        bail!(
            "an agent for machine {machine} is already running (pid {pid}, state dir {})",
            state_dir.display()
        );
    };
    lock.write_pid(std::process::id())
        .with_context(|| format!("writing {}", pid_file.display()))?;

    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGUSR1 (`pop stop --keep-services`): the agent goes, its services stay.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    // SIGHUP (the terminal of `pop fg` closed, or a log rotator): carry on, reopen the log.
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = term.recv() => StopRequest::Stop,
                _ = int.recv() => StopRequest::Stop,
                _ = usr1.recv() => StopRequest::KeepServices,
                _ = hup.recv() => {
                    reopen_log();
                    continue;
                }
            };
            if stop_tx.send(request).is_err() {
                return;
            }
        }
    });
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string());
    let mut zk = crate::context::zk_config(cli)?;
    zk.session_timeout = session_timeout();
    let credential = auth::agent(cli, &state_dir)?;
    match &credential {
        Some(c) => tracing::info!(user = c.user(), "authenticating to ZooKeeper"),
        None => tracing::info!("no credential: anonymous to ZooKeeper"),
    }
    zk.auth.extend(credential);
    let config = DriverConfig {
        zk,
        machine_id: machine,
        state_dir: state_dir.clone(),
        containment: containment()?,
        pop_exe: std::env::current_exe().context("finding the pop binary")?,
        hostname,
        journal: journal_limits()?,
    };
    let result = driver::run(config, stop_rx).await;
    if let Err(e) = lock.remove() {
        tracing::warn!("cannot remove {}: {e}", pid_file.display());
    }
    Ok(result?)
}

fn reopen_log() {
    match agent_log::reopen() {
        Ok(Some(path)) => tracing::info!("SIGHUP: reopened the log file {}", path.display()),
        Ok(None) => tracing::info!("SIGHUP: no log file to reopen; carrying on"),
        Err(e) => tracing::warn!("SIGHUP: cannot reopen the log file: {e}"),
    }
}

/// Gives the agent the TLS files as absolute paths (it runs elsewhere), once they load:
/// a bad file fails `pop start` itself rather than the agent in the background.
fn hand_over_tls(cli: &Cli, cmd: &mut Command) -> Result<()> {
    let Some(files) = crate::context::tls_files(cli) else {
        return Ok(());
    };
    pop_io::tls::TlsConfig::load(&files)?;
    let absolute = |path: &std::path::Path| {
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
    };
    cmd.env("POP_TLS_CA", absolute(&files.ca)?);
    if let Some(identity) = &files.identity {
        cmd.env("POP_TLS_CERT", absolute(&identity.cert)?)
            .env("POP_TLS_KEY", absolute(&identity.key)?);
    }
    Ok(())
}

pub fn start(cli: &Cli) -> Result<()> {
    let machine = context::machine_id(cli)?;
    if let Some(warning) = context::machine_id_changed(cli, &machine) {
        eprintln!("pop: warning: {warning}");
    }
    let state_dir = context::state_dir(cli)?;
    pop_io::state_dir::create(&state_dir)
        .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    let pid_file = pid_path(&state_dir);
    match lock_pid_file(&pid_file)? {
        None => {
            let pid = read_pid(&pid_file).map_or("?".to_string(), |p| p.to_string());
            bail!("an agent for machine {machine} is already running (pid {pid})");
        }
        Some(lock) => drop(lock),
    }
    let log_path = agent_log_path(&state_dir);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("finding the pop binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--host")
        .arg(&cli.host)
        .arg("--machine-id")
        .arg(machine.as_str())
        .arg("--state-dir")
        .arg(&state_dir);
    for _ in 0..cli.verbose {
        cmd.arg("-v");
    }
    // Through the environment, never argv (which anyone may read in ps); `main` took it
    // out of ours, so only the agent gets it.
    if let Some(credential) = auth::given(cli)? {
        cmd.env("POP_AUTH", credential.secret_line());
    }
    hand_over_tls(cli, &mut cmd)?;
    // The agent rotates the file itself; until it has opened it (and for an error
    // in its arguments) its output goes there too.
    cmd.arg("fg")
        .arg("--log-file")
        .arg(&log_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the agent from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the agent")?;
    let child_pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the agent exited at once ({status}): {}",
                log_tail(&log_path, log_start)
            );
        }
        if read_pid(&pid_file) == Some(child_pid) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent (pid {child_pid}) did not start within 15s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "agent for machine {machine} started (pid {child_pid}); log: {}",
        log_path.display()
    );
    Ok(())
}

fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    if tail.is_empty() {
        format!("see {}", path.display())
    } else {
        tail.join(" / ")
    }
}

/// Stops the agent: with its services, or (`keep_services`) leaving them running for
/// the next agent to adopt.
pub fn stop(cli: &Cli, keep_services: bool) -> Result<()> {
    let machine = context::machine_id(cli)?;
    let state_dir = context::state_dir(cli)?;
    let pid_file = pid_path(&state_dir);
    if !pid_file.exists() {
        bail!(
            "no agent is running for machine {machine} (no {})",
            pid_file.display()
        );
    }
    if let Some(lock) = lock_pid_file(&pid_file)? {
        lock.remove()
            .with_context(|| format!("removing the stale {}", pid_file.display()))?;
        bail!("no agent is running for machine {machine} (removed a stale pid file)");
    }
    let pid = agent_pid(&pid_file)?;
    // Opened before the signal, so the wait below is for this very process.
    let exited = ExitWatch::new(pid);
    let signal = if keep_services {
        nix::sys::signal::Signal::SIGUSR1
    } else {
        nix::sys::signal::Signal::SIGTERM
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("signalling the agent (pid {pid})"))?;
    if keep_services {
        eprintln!("stopping agent {pid}; its services keep running...");
    } else {
        eprintln!("stopping agent {pid} and its services...");
    }
    // Services get their own stop_timeout each; wait generously but not forever.
    if !exited.wait(Duration::from_secs(300)) {
        bail!("the agent (pid {pid}) is still running after 300s");
    }
    if keep_services {
        println!("agent for machine {machine} stopped; services left running for the next agent");
    } else {
        println!("agent for machine {machine} stopped");
    }
    Ok(())
}
