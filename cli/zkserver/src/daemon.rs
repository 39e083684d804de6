//! The detached ZooKeeper of `pop zk start|stop|status`, found again through its pid file.

use crate::*;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `pop zk status` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// `standalone`, from `srvr`.
    pub mode: Option<String>,
    pub zxid: Option<String>,
    pub connections: Option<u64>,
    /// The `srvr` answer's key lines (`Mode: standalone`, `Zxid: 0x0`, …), or why there
    /// is none.
    pub summary: Vec<String>,
}

impl fmt::Display for DaemonStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(pid) = self.pid.filter(|_| self.running) else {
            return f.write_str("not running");
        };
        write!(f, "running: pid {pid}")?;
        if let Some(port) = self.port {
            write!(f, ", port {port}")?;
        }
        for line in &self.summary {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

/// The daemon's record, as JSON next to its pid file (`zookeeper.pid` → `zookeeper.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DaemonState {
    pid: u32,
    port: u16,
    bind: IpAddr,
    data_dir: PathBuf,
    log_file: PathBuf,
}

pub(crate) fn state_file(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("json")
}

/// The pid in the pid file and what the state file says about it (if it agrees).
pub(crate) fn read_daemon(pid_file: &Path) -> Option<(u32, Option<DaemonState>)> {
    let pid: u32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let state = fs::read_to_string(state_file(pid_file))
        .ok()
        .and_then(|t| serde_json::from_str::<DaemonState>(&t).ok())
        .filter(|s| s.pid == pid);
    Some((pid, state))
}

pub(crate) fn remove_daemon_files(pid_file: &Path) {
    for path in [pid_file.to_path_buf(), state_file(pid_file)] {
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove");
            }
        }
    }
}

pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), ZkServerError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, text).map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("writing {}", path.display())))
}

/// Whether `pid` is a live (not zombie) ZooKeeper server.
pub(crate) fn is_live_zookeeper(pid: u32) -> bool {
    // A zombie's command line is empty.
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(MAIN_CLASS))
        .unwrap_or(false)
}

/// Whether `pid` is gone: reaped, if it is our own child (the daemon started by this very
/// process, e.g. in tests), so that no zombie lingers; else no longer a live ZooKeeper.
pub(crate) fn is_gone(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
        // Our child, still running or still exiting.
        Ok(WaitStatus::StillAlive) => false,
        Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => true,
        Ok(_) => false,
        // Not our child: someone else reaps it; a zombie has no command line.
        Err(_) => !is_live_zookeeper(pid),
    }
}

pub(crate) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if is_gone(pid) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

pub(crate) fn srvr_status(pid: u32, addr: Option<SocketAddr>) -> DaemonStatus {
    let mut status = DaemonStatus {
        running: true,
        pid: Some(pid),
        port: addr.map(|a| a.port()),
        ..DaemonStatus::default()
    };
    let Some(addr) = addr else {
        status.summary = vec!["port unknown (state file missing)".into()];
        return status;
    };
    match four_letter_to(addr, "srvr", Duration::from_secs(2)) {
        Ok(answer) => {
            for line in answer.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match key {
                    "Mode" => status.mode = Some(value.to_string()),
                    "Zxid" => status.zxid = Some(value.to_string()),
                    "Connections" => status.connections = value.parse().ok(),
                    "Node count" => {}
                    _ => continue,
                }
                status.summary.push(line.trim().to_string());
            }
            if status.mode.is_none() {
                status.summary.push(answer.trim().to_string());
            }
        }
        Err(e) => status.summary = vec![format!("not answering on {addr}: {e}")],
    }
    status
}

/// Starts a detached server (its own session; it outlives this process, output to the
/// log file), waits until it is ready, and records its pid in `pid_file` and its port in
/// the JSON file next to it. Refused if `pid_file` names a live ZooKeeper.
pub fn start_daemon(
    config: &ZkServerConfig,
    pid_file: &Path,
) -> Result<DaemonStatus, ZkServerError> {
    if let Some((pid, state)) = read_daemon(pid_file) {
        if is_live_zookeeper(pid) {
            return Err(ZkServerError::AlreadyRunning {
                pid,
                port: state.map_or(config.port, |s| s.port),
            });
        }
        tracing::info!(pid, pid_file = %pid_file.display(), "removing a stale pid file");
        remove_daemon_files(pid_file);
    }
    if let Some(dir) = pid_file.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    let Spawned {
        mut child, addr, ..
    } = spawn_ready(config, true)?;
    let pid = child.id();
    let state = DaemonState {
        pid,
        port: addr.port(),
        bind: config.bind,
        data_dir: config.data_dir.clone(),
        log_file: config.log_path(),
    };
    let written = serde_json::to_string_pretty(&state)
        .map_err(|e| ZkServerError::Io {
            context: "encoding the daemon state".into(),
            source: e.into(),
        })
        .and_then(|json| write_atomically(&state_file(pid_file), &json))
        .and_then(|()| write_atomically(pid_file, &format!("{pid}\n")));
    if let Err(e) = written {
        terminate_child(&mut child);
        remove_daemon_files(pid_file);
        return Err(e);
    }
    // The child handle is dropped without waiting: the server runs on.
    drop(child);
    Ok(srvr_status(pid, Some(addr)))
}

/// How a daemon was stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoppedDaemon {
    pub pid: u32,
    pub port: Option<u16>,
    /// It ignored SIGTERM and was killed.
    pub killed: bool,
}

/// Stops the daemon named by `pid_file`: SIGTERM, SIGKILL after 10 s; removes the pid and
/// state files. `NotRunning` if there is none (stale files are removed too).
pub fn stop_daemon(pid_file: &Path) -> Result<StoppedDaemon, ZkServerError> {
    let Some((pid, state)) = read_daemon(pid_file) else {
        return Err(ZkServerError::NotRunning {
            reason: format!("no pid file {}", pid_file.display()),
        });
    };
    if !is_live_zookeeper(pid) {
        remove_daemon_files(pid_file);
        return Err(ZkServerError::NotRunning {
            reason: format!(
                "pid {pid} from {} is gone; removed the stale pid file",
                pid_file.display()
            ),
        });
    }
    signal(pid, Signal::SIGTERM)?;
    let _ = signal(pid, Signal::SIGCONT);
    let mut killed = false;
    if !wait_gone(pid, STOP_TIMEOUT) {
        tracing::warn!(pid, "ZooKeeper ignored SIGTERM; killing it");
        killed = true;
        let _ = signal(pid, Signal::SIGKILL);
        if !wait_gone(pid, Duration::from_secs(5)) {
            return Err(ZkServerError::Io {
                context: format!("stopping ZooKeeper (pid {pid})"),
                source: io::Error::new(io::ErrorKind::TimedOut, "still alive after SIGKILL"),
            });
        }
    }
    remove_daemon_files(pid_file);
    tracing::info!(pid, "ZooKeeper stopped");
    Ok(StoppedDaemon {
        pid,
        port: state.map(|s| s.port),
        killed,
    })
}

/// Whether the daemon named by `pid_file` runs, and if so its pid, port and `srvr`
/// summary (mode, zxid, connections).
pub fn daemon_status(pid_file: &Path) -> Result<DaemonStatus, ZkServerError> {
    match read_daemon(pid_file) {
        Some((pid, state)) if is_live_zookeeper(pid) => {
            Ok(srvr_status(pid, state.map(|s| client_addr(s.bind, s.port))))
        }
        _ => Ok(DaemonStatus::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_sits_next_to_the_pid_file() {
        assert_eq!(
            state_file(Path::new("/s/zookeeper.pid")),
            Path::new("/s/zookeeper.json")
        );
    }

    #[test]
    fn not_running_status_says_so() {
        assert_eq!(DaemonStatus::default().to_string(), "not running");
    }
}
