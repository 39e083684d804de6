//! Per-service log files with copy-truncate rotation.
//!
//! A service's stdout and stderr *are* its log file, opened with `O_APPEND`
//! (so lines interleave in the order written, and nothing depends on the agent
//! staying alive: a pipe would hand the service SIGPIPE once the agent is
//! gone, which would make adoption impossible). The supervisor appends its
//! `--- pop: ...` markers to the same file, opening it for each one: it keeps no
//! descriptor of any log, so the agent's open files do not grow with its services.
//!
//! Because the services hold the file open, it cannot be renamed away;
//! rotation copies it to `.1` (after shifting `.1` -> `.2` ...) and then
//! truncates it. Writers with `O_APPEND` simply continue at the new end.
//! **Output written between the end of the copy and the truncation is lost**
//! (a marker too); the window is one copy plus one `ftruncate`.
//!
//! # When a log is checked
//!
//! Only logs that are written are checked, so idle services cost nothing: while a
//! generation of the service runs, a one-shot inotify watch wakes the service's
//! rotation task at the next write; it waits [`DEBOUNCE`] more (a busy log is checked
//! once per interval, not once per write), re-arms the watch and rotates if the file is
//! over the limit. A file can therefore exceed the limit by what the services write in
//! [`DEBOUNCE`]. A log that cannot be watched (inotify unavailable or out of watches) is
//! checked every [`UNWATCHED_CHECK`] instead, and may exceed it by that much output.
//! Rotation copies on the blocking pool, never on the event loop.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::warn;

use super::watch::{Interest, Watcher};

/// How long after a write a log is checked, batching the writes in between.
pub(crate) const DEBOUNCE: Duration = Duration::from_secs(1);
/// How often a log without an inotify watch is checked.
pub(crate) const UNWATCHED_CHECK: Duration = Duration::from_secs(5);

/// `<state_dir>/logs/<service>.log`; rotated files get `.1`, `.2`, ... appended.
pub fn log_path(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{service}.log"))
}

/// One service's log file; holds no descriptor.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// Held while rotating, so two rotations never overlap.
    rotating: Mutex<()>,
}

impl LogFile {
    /// Creates the file (and its directory, if that went missing) if needed.
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> io::Result<Self> {
        // The supervisor made `logs/`: the directory is only made again if it went.
        let opened = match open_append(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)?;
                }
                open_append(&path)
            }
            other => other,
        };
        opened?;
        Ok(Self {
            path,
            max_bytes,
            keep,
            rotating: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new `O_APPEND` descriptor on the log, for a child's stdout/stderr.
    pub fn for_child(&self) -> io::Result<fs::File> {
        open_append(&self.path)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.rotating.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copy-truncates the file if it is over the limit (0 means no limit).
    /// Returns whether it rotated.
    pub fn rotate_if_needed(&self) -> io::Result<bool> {
        let _rotating = self.lock();
        if self.max_bytes == 0 || fs::metadata(&self.path)?.len() <= self.max_bytes {
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
        OpenOptions::new()
            .write(true)
            .open(&self.path)?
            .set_len(0)?;
        Ok(true)
    }

    /// Appends a `--- pop: ...` marker line (one `write`, so it never splits a line of
    /// the service's that was written with one `write` either). Never waits for a
    /// rotation in progress: a marker is as safe as the service's own output. The log is
    /// not read first: after output that does not end with a newline, the marker
    /// continues that line.
    pub fn marker(&self, text: &str) {
        let written = open_append(&self.path)
            .and_then(|mut f| f.write_all(format!("--- pop: {text}\n").as_bytes()));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = %e, "cannot write log marker");
        }
    }
}

fn open_append(path: &Path) -> io::Result<fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

type Registry = Mutex<HashMap<String, Weak<ServiceLog>>>;

/// The log of a service with a generation running (or draining): the file, and the task
/// that rotates it meanwhile. Shared by the service's generations; when the last one
/// ends, the task stops and the registry forgets the service.
#[derive(Debug)]
pub(crate) struct ServiceLog {
    service: String,
    file: Arc<LogFile>,
    rotation: JoinHandle<()>,
    registry: Weak<Registry>,
}

impl std::ops::Deref for ServiceLog {
    type Target = LogFile;

    fn deref(&self) -> &LogFile {
        &self.file
    }
}

impl Drop for ServiceLog {
    fn drop(&mut self) {
        self.rotation.abort();
        if let Some(registry) = self.registry.upgrade() {
            let mut by_service = lock(&registry);
            // Only our own (now dead) entry: a new one may have replaced it.
            if by_service
                .get(&self.service)
                .is_some_and(|w| w.strong_count() == 0)
            {
                by_service.remove(&self.service);
            }
        }
    }
}

pub(crate) type SharedLog = Arc<ServiceLog>;

fn lock(registry: &Registry) -> MutexGuard<'_, HashMap<String, Weak<ServiceLog>>> {
    registry.lock().unwrap_or_else(|e| e.into_inner())
}

/// The logs of the services that have a generation running.
pub(crate) struct Logs {
    state_dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    watcher: Arc<Watcher>,
    registry: Arc<Registry>,
}

impl Logs {
    pub fn new(state_dir: PathBuf, max_bytes: u64, keep: u32, watcher: Arc<Watcher>) -> Self {
        Self {
            state_dir,
            max_bytes,
            keep,
            watcher,
            registry: Arc::default(),
        }
    }

    /// The log of `service`, with its rotation task started if it was not running.
    /// Must run inside the runtime.
    pub fn get_or_open(&self, service: &str) -> io::Result<SharedLog> {
        let mut by_service = lock(&self.registry);
        if let Some(log) = by_service.get(service).and_then(Weak::upgrade) {
            return Ok(log);
        }
        let file = Arc::new(LogFile::open(
            log_path(&self.state_dir, service),
            self.max_bytes,
            self.keep,
        )?);
        let rotation = tokio::spawn(rotate_while_running(
            Arc::clone(&file),
            Arc::clone(&self.watcher),
        ));
        let log = Arc::new(ServiceLog {
            service: service.to_string(),
            file,
            rotation,
            registry: Arc::downgrade(&self.registry),
        });
        by_service.insert(service.to_string(), Arc::downgrade(&log));
        Ok(log)
    }

    /// How many services' logs are in use (for tests of what is released).
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        lock(&self.registry).len()
    }
}

/// Rotates `file` when needed, for as long as the task lives (see the module docs).
async fn rotate_while_running(file: Arc<LogFile>, watcher: Arc<Watcher>) {
    if file.max_bytes == 0 {
        return;
    }
    loop {
        // Armed before the check, so a write after the check is not missed.
        let watch = watcher.watch(file.path(), Interest::NextModification).ok();
        let f = Arc::clone(&file);
        let checked = tokio::task::spawn_blocking(move || f.rotate_if_needed()).await;
        if let Ok(Err(e)) = checked {
            warn!(path = %file.path().display(), error = %e, "cannot rotate log");
        }
        match &watch {
            Some(watch) => watch.changed().await,
            None => tokio::time::sleep(UNWATCHED_CHECK).await,
        }
        drop(watch);
        tokio::time::sleep(DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_truncate_keeps_n() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = log_path(dir.path(), "svc");
        let log = LogFile::open(path.clone(), 10, 2)?;
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
        let log = LogFile::open(path.clone(), 4, 0)?;
        log.marker("long enough");
        assert!(log.rotate_if_needed()?);
        assert_eq!(fs::read(&path)?.len(), 0);
        assert!(!dir.path().join("logs/svc.log.1").exists());
        Ok(())
    }

    /// Written by a "service" (a descriptor of its own), checked after the write.
    #[tokio::test]
    async fn a_written_log_is_rotated() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let logs = Logs::new(dir.path().into(), 100, 1, Arc::new(Watcher::start()));
        let log = logs.get_or_open("svc")?;
        let mut service = log.for_child()?;
        // Under the limit: the first check finds nothing to do.
        service.write_all(&[b'a'; 60])?;
        tokio::time::sleep(DEBOUNCE / 2).await;
        service.write_all(&[b'b'; 60])?;
        let rotated = dir.path().join("logs/svc.log.1");
        let deadline = tokio::time::Instant::now() + DEBOUNCE * 5;
        while !rotated.exists() {
            assert!(tokio::time::Instant::now() < deadline, "not rotated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fs::read(&rotated)?.len(), 120);
        assert_eq!(fs::metadata(log.path())?.len(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_log_is_forgotten_when_its_last_user_is_gone() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let logs = Logs::new(dir.path().into(), 100, 1, Arc::new(Watcher::start()));
        let a = logs.get_or_open("a")?;
        let again = logs.get_or_open("a")?;
        assert!(Arc::ptr_eq(&a, &again), "one per service");
        let b = logs.get_or_open("b")?;
        assert_eq!(logs.in_use(), 2);
        drop((a, again));
        assert_eq!(logs.in_use(), 1);
        drop(b);
        assert_eq!(logs.in_use(), 0);
        Ok(())
    }
}
