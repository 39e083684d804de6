//! Per-service log files with size-based rotation.
//!
//! The child's stdout and stderr share one pipe (so their lines interleave in
//! the order written); a plain thread drains it, because a blocking read is
//! the simplest thing that survives the runtime and needs no fd juggling.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::warn;

/// `<state_dir>/logs/<service>.log`; rotated files get `.1`, `.2`, ... appended.
pub fn log_path(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{service}.log"))
}

/// An append-only log file that rotates when it would exceed `max_bytes`.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

pub(crate) type SharedLog = Arc<Mutex<LogFile>>;

impl LogFile {
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            size,
            max_bytes,
            keep,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            // .keep-1 -> .keep (overwriting the oldest), ..., log -> .1
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            fs::rename(&self.path, self.rotated(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    /// Appends `buf`, rotating so that no file exceeds `max_bytes` (0 means
    /// no limit). Splits at line breaks where possible.
    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let room =
                usize::try_from(self.max_bytes.saturating_sub(self.size)).unwrap_or(usize::MAX);
            if self.max_bytes == 0 || buf.len() <= room {
                return self.append(buf);
            }
            let cut = match buf[..room].iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                // A line longer than the limit gets split.
                None if self.size == 0 => room,
                None => 0,
            };
            if cut > 0 {
                self.append(&buf[..cut])?;
                buf = &buf[cut..];
            }
            self.rotate()?;
        }
        Ok(())
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Writes a `--- pop: ...` marker line.
    pub fn marker(&mut self, text: &str) {
        if let Err(e) = self.write(format!("--- pop: {text}\n").as_bytes()) {
            warn!(path = %self.path.display(), error = %e, "cannot write log marker");
        }
    }
}

/// Locks a shared log, tolerating poisoning (a panicked writer leaves a valid file).
pub(crate) fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, LogFile> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drains `pipe` into `log` on a thread until every writer has closed it.
/// The returned receiver fires when the pipe is drained.
pub(crate) fn start_pump(
    service: &str,
    pipe: OwnedFd,
    log: SharedLog,
) -> io::Result<oneshot::Receiver<()>> {
    let (done_tx, done_rx) = oneshot::channel();
    let name = format!("pop-log-{service}");
    std::thread::Builder::new().name(name).spawn(move || {
        let mut pipe = File::from(pipe);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = lock(&log).write(&buf[..n]) {
                        warn!(error = %e, "cannot write service log");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "cannot read service output");
                    break;
                }
            }
        }
        let _ = done_tx.send(());
    })?;
    Ok(done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_n() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = log_path(dir.path(), "svc");
        let mut log = LogFile::open(path.clone(), 10, 2)?;
        for _ in 0..5 {
            log.write(b"0123456789")?;
        }
        assert_eq!(fs::read(&path)?, b"0123456789");
        assert!(dir.path().join("logs/svc.log.1").exists());
        assert!(dir.path().join("logs/svc.log.2").exists());
        assert!(!dir.path().join("logs/svc.log.3").exists());
        Ok(())
    }
}
