//! Per-service log files with copy-truncate rotation.
//!
//! A service's stdout and stderr *are* its log file, opened with `O_APPEND`
//! (so lines interleave in the order written, and nothing depends on the agent
//! staying alive: a pipe would hand the service SIGPIPE once the agent is
//! gone, which would make adoption impossible). The supervisor appends its
//! `--- pop: ...` markers to the same file through its own `O_APPEND`
//! descriptor.
//!
//! Because the services hold the file open, it cannot be renamed away;
//! rotation copies it to `.1` (after shifting `.1` -> `.2` ...) and then
//! truncates it. Writers with `O_APPEND` simply continue at the new end.
//! **Output written between the end of the copy and the truncation is lost**;
//! the window is one `copy_file_range` plus one `ftruncate`, and rotation only
//! happens when a file is over the limit, checked every [`CHECK_EVERY`] and
//! before each spawn. A file can therefore exceed the limit by whatever the
//! services write in one check interval.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::warn;

/// How often every open log is checked for rotation.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `<state_dir>/logs/<service>.log`; rotated files get `.1`, `.2`, ... appended.
pub fn log_path(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{service}.log"))
}

/// The supervisor's handle on one service's log.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
    max_bytes: u64,
    keep: u32,
}

pub(crate) type SharedLog = Arc<Mutex<LogFile>>;
/// Every log this supervisor has opened, by service.
pub(crate) type Logs = Arc<Mutex<HashMap<String, SharedLog>>>;

impl LogFile {
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        Ok(Self {
            path,
            file,
            max_bytes,
            keep,
        })
    }

    /// A new `O_APPEND` descriptor on the log, for a child's stdout/stderr.
    pub fn for_child(&self) -> io::Result<File> {
        open_append(&self.path)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Copy-truncates the file if it is over the limit (0 means no limit).
    /// Returns whether it rotated.
    pub fn rotate_if_needed(&mut self) -> io::Result<bool> {
        if self.max_bytes == 0 || self.file.metadata()?.len() <= self.max_bytes {
            return Ok(false);
        }
        if self.keep > 0 {
            // .keep-1 -> .keep (overwriting the oldest), ..., .1 -> .2
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            // Copy under a temporary name so `.1` is never seen half written.
            let mut tmp = self.rotated(1).into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            fs::copy(&self.path, &tmp)?;
            fs::rename(&tmp, self.rotated(1))?;
        }
        // Lines written since the copy finished are lost here (see module docs).
        self.file.set_len(0)?;
        Ok(true)
    }

    /// Writes a `--- pop: ...` marker line (one `write`, so it never splits
    /// a line of the service's that was written with one `write` either).
    pub fn marker(&mut self, text: &str) {
        if let Err(e) = self.file.write_all(format!("--- pop: {text}\n").as_bytes()) {
            warn!(path = %self.path.display(), error = %e, "cannot write log marker");
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Locks a shared log, tolerating poisoning (a panicked writer leaves a valid file).
pub(crate) fn lock(log: &SharedLog) -> MutexGuard<'_, LogFile> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_all(logs: &Logs) -> MutexGuard<'_, HashMap<String, SharedLog>> {
    logs.lock().unwrap_or_else(|e| e.into_inner())
}

/// The log of `service`, opened on first use and then kept for rotation.
pub(crate) fn get_or_open(
    logs: &Logs,
    state_dir: &Path,
    service: &str,
    max_bytes: u64,
    keep: u32,
) -> io::Result<SharedLog> {
    let mut all = lock_all(logs);
    if let Some(l) = all.get(service) {
        return Ok(Arc::clone(l));
    }
    let file = LogFile::open(log_path(state_dir, service), max_bytes, keep)?;
    let shared = Arc::new(Mutex::new(file));
    all.insert(service.to_string(), Arc::clone(&shared));
    Ok(shared)
}

/// Rotates one log if needed, logging failures.
pub(crate) fn check(log: &SharedLog) {
    let mut l = lock(log);
    if let Err(e) = l.rotate_if_needed() {
        warn!(path = %l.path.display(), error = %e, "cannot rotate log");
    }
}

/// Checks every log every [`CHECK_EVERY`] (file I/O on the blocking pool).
pub(crate) fn start_rotator(logs: Logs) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let all: Vec<SharedLog> = lock_all(&logs).values().cloned().collect();
            let _ = tokio::task::spawn_blocking(move || all.iter().for_each(check)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_truncate_keeps_n() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = log_path(dir.path(), "svc");
        let mut log = LogFile::open(path.clone(), 10, 2)?;
        // A writer that, like a service, holds its own O_APPEND descriptor.
        let mut child = log.for_child()?;
        for round in 0..4u8 {
            child.write_all(&[b'a' + round; 15])?;
            assert!(log.rotate_if_needed()?);
            assert!(!log.rotate_if_needed()?, "now under the limit");
        }
        child.write_all(b"tail")?;
        // Same inode, written at the new end after truncation (no hole).
        assert_eq!(fs::read(&path)?, b"tail");
        assert_eq!(fs::read(dir.path().join("logs/svc.log.1"))?, [b'd'; 15]);
        assert_eq!(fs::read(dir.path().join("logs/svc.log.2"))?, [b'c'; 15]);
        assert!(!dir.path().join("logs/svc.log.3").exists());
        log.marker("hi");
        assert_eq!(fs::read(&path)?, b"tail--- pop: hi\n");
        Ok(())
    }

    #[test]
    fn keep_zero_only_truncates() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = log_path(dir.path(), "svc");
        let mut log = LogFile::open(path.clone(), 4, 0)?;
        log.marker("long enough");
        assert!(log.rotate_if_needed()?);
        assert_eq!(fs::read(&path)?.len(), 0);
        assert!(!dir.path().join("logs/svc.log.1").exists());
        Ok(())
    }
}
