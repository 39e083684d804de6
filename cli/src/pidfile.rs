//! The agent's pid file and its lock: one agent per state directory.
//!
//! The running agent holds an exclusive flock on `agent.pid` for its whole life, so a
//! file left by a crash is told apart from a live agent without trusting the pid in it.
//! A lock only excludes others while the locked file is the one at the path, so:
//! - whoever removes the file (an exiting agent, `pop stop` clearing a stale one) unlinks
//!   it while still holding the lock, never after letting go; and
//! - whoever takes the lock then checks that the file it locked is still the one at the
//!   path (same device and inode): it may have opened the file just before a holder
//!   unlinked it, and a lock on an unlinked file excludes nobody. It then tries again.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A held lock on the pid file at `path`.
#[derive(Debug)]
pub struct PidLock {
    file: File,
    path: PathBuf,
}

/// How often the file may be replaced under us before giving up: each retry means
/// another process removed or recreated it in the meantime, which settles at once.
const ATTEMPTS: u32 = 100;

impl PidLock {
    /// Takes the lock, creating the file if needed; `Ok(None)` when another process
    /// holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<PidLock>> {
        for _ in 0..ATTEMPTS {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            if !try_flock(&file)? {
                return Ok(None);
            }
            let locked = file.metadata()?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                    return Ok(Some(PidLock {
                        file,
                        path: path.to_path_buf(),
                    }));
                }
                // Unlinked or replaced since we opened it: our lock guards nothing.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "{} keeps being replaced by other processes",
            path.display()
        )))
    }

    /// Replaces the file's content with `pid`.
    pub fn write_pid(&mut self, pid: u32) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        writeln!(self.file, "{pid}")?;
        self.file.flush()
    }

    /// Removes the file, then lets go of the lock (in that order; see the module docs).
    pub fn remove(self) -> io::Result<()> {
        let removed = std::fs::remove_file(&self.path);
        drop(self.file);
        match removed {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// A non-blocking exclusive flock: `Ok(false)` when someone else holds it.
fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The pid written in the file at `path`, if any.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Agents starting and exiting while `pop stop` clears what it takes for a stale
    /// file, all at once: never two holders at the same time. flock locks belong to
    /// open files, not processes, so threads contend as processes would.
    #[test]
    fn never_two_holders_while_agents_come_and_go_and_stop_clears_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.pid");
        let holders = Arc::new(AtomicU32::new(0));
        let worst = Arc::new(AtomicU32::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let acquired = Arc::new(AtomicU32::new(0));
        let mut threads = Vec::new();
        for role in 0..6 {
            let (path, holders, worst, done, acquired) = (
                path.clone(),
                Arc::clone(&holders),
                Arc::clone(&worst),
                Arc::clone(&done),
                Arc::clone(&acquired),
            );
            threads.push(std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let Some(mut lock) = PidLock::try_acquire(&path).expect("acquire") else {
                        continue;
                    };
                    let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                    worst.fetch_max(now, Ordering::SeqCst);
                    acquired.fetch_add(1, Ordering::Relaxed);
                    if role % 2 == 0 {
                        // An agent: writes its pid, runs a little, exits.
                        lock.write_pid(std::process::id()).expect("write pid");
                        std::thread::yield_now();
                    }
                    holders.fetch_sub(1, Ordering::SeqCst);
                    // Both an exiting agent and `pop stop` finding a stale file remove it.
                    lock.remove().expect("remove");
                }
            }));
        }
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end && worst.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(10));
        }
        done.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("thread");
        }
        assert!(
            acquired.load(Ordering::Relaxed) > 100,
            "the lock changed hands"
        );
        assert_eq!(
            worst.load(Ordering::SeqCst),
            1,
            "two processes held the agent lock at once"
        );
    }

    #[test]
    fn a_held_lock_is_refused_and_a_stale_file_is_taken() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("agent.pid");
        std::fs::write(&path, "12345\n").expect("stale pid file");
        let mut held = PidLock::try_acquire(&path)
            .expect("acquire")
            .expect("a stale file is free");
        held.write_pid(42).expect("write");
        assert_eq!(read_pid(&path), Some(42));
        assert!(PidLock::try_acquire(&path).expect("acquire").is_none());
        held.remove().expect("remove");
        assert!(!path.exists());
    }
}
