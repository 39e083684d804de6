//! The agent's own log file (`pop fg --log-file`, which `pop start` uses for
//! `agent.log`): the file becomes the process's stdout and stderr, so the agent's log
//! lines and anything else it prints (a panic) land in it, and it is rotated by size.
//!
//! Rotation renames (`agent.log` -> `agent.log.1` -> ... -> `agent.log.<keep>`, the
//! oldest dropped) and opens a new file onto stdout and stderr: nothing else writes to
//! them (services have their own log files). It is checked after each log line, so a
//! file exceeds the limit by at most one line. SIGHUP reopens the file at its path, for
//! tools that rotate it themselves (logrotate without copytruncate).

use anyhow::{anyhow, Context, Result};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Size limit and number of rotated files kept.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub max_bytes: u64,
    pub keep: u32,
}

impl LogLimits {
    /// 10 MiB keeping 3, like service logs; `POP_AGENT_LOG_MAX_BYTES` changes the size.
    pub fn from_env() -> Result<Self> {
        let mut limits = LogLimits {
            max_bytes: 10 * 1024 * 1024,
            keep: 3,
        };
        if let Ok(raw) = std::env::var("POP_AGENT_LOG_MAX_BYTES") {
            limits.max_bytes = raw.parse().map_err(|_| {
                anyhow!("POP_AGENT_LOG_MAX_BYTES={raw:?}: expected a number of bytes")
            })?;
        }
        Ok(limits)
    }
}

#[derive(Debug)]
struct AgentLog {
    path: PathBuf,
    limits: LogLimits,
    /// Bytes in the current file (the mutex also orders writes with rotation).
    written: Mutex<u64>,
}

static AGENT_LOG: OnceLock<AgentLog> = OnceLock::new();

fn lock(log: &AgentLog) -> MutexGuard<'_, u64> {
    log.written.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens `path` (appending) as this process's stdout and stderr, and rotates it from
/// now on. Call once, before logging starts.
pub fn install(path: &Path, limits: LogLimits) -> Result<()> {
    let size = redirect(path).with_context(|| format!("opening {}", path.display()))?;
    AGENT_LOG
        .set(AgentLog {
            path: path.to_path_buf(),
            limits,
            written: Mutex::new(size),
        })
        .map_err(|_| anyhow!("the agent log is already set up"))
}

/// Reopens the log file at its path (SIGHUP); `Ok(None)` without a log file.
pub fn reopen() -> io::Result<Option<&'static Path>> {
    let Some(log) = AGENT_LOG.get() else {
        return Ok(None);
    };
    let mut written = lock(log);
    *written = redirect(&log.path)?;
    Ok(Some(&log.path))
}

/// Opens `path` for appending onto stdout and stderr; returns its size.
fn redirect(path: &Path) -> io::Result<u64> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        nix::unistd::dup2(file.as_raw_fd(), fd).map_err(io::Error::from)?;
    }
    Ok(file.metadata()?.len())
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Moves the file to `.1` (and `.1` to `.2`, ..., dropping the oldest; with `keep` 0
/// just removes it) and starts a new file.
fn rotate(log: &AgentLog) -> io::Result<u64> {
    shift(&log.path, log.limits.keep)?;
    redirect(&log.path)
}

fn shift(path: &Path, keep: u32) -> io::Result<()> {
    if !path.exists() {
        // Moved away by a log rotator that has yet to send SIGHUP: just start anew.
        return Ok(());
    }
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

/// Where log lines go: stderr, counted against the agent log's limit when there is one.
pub struct Stderr;

/// The writer for `tracing_subscriber::fmt().with_writer(...)`.
pub fn stderr() -> Stderr {
    Stderr
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(log) = AGENT_LOG.get() else {
            return io::stderr().write(buf);
        };
        let mut written = lock(log);
        let n = io::stderr().write(buf)?;
        *written += n as u64;
        if log.limits.max_bytes > 0 && *written > log.limits.max_bytes {
            match rotate(log) {
                Ok(size) => *written = size,
                // Keep writing to the current file rather than lose lines; try again
                // after the next one.
                Err(e) => {
                    let _ = writeln!(
                        io::stderr(),
                        "pop: cannot rotate {}: {e}",
                        log.path.display()
                    );
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_keeps_n_files() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agent.log");
        std::fs::write(&path, "first")?;
        std::fs::write(rotated(&path, 1), "older")?;
        std::fs::write(rotated(&path, 2), "oldest")?;
        shift(&path, 2)?;
        assert!(!path.exists());
        assert_eq!(std::fs::read_to_string(rotated(&path, 1))?, "first");
        assert_eq!(std::fs::read_to_string(rotated(&path, 2))?, "older");
        assert!(!rotated(&path, 3).exists());
        Ok(())
    }
}
