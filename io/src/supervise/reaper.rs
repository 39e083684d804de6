//! The one place that calls `waitpid`.
//!
//! The agent is a child subreaper, so orphaned descendants of services are
//! reparented to it and must be reaped here. `waitpid(-1)` reaps *any* child,
//! so the routing table is process-global (several `Supervisor`s, e.g. in
//! parallel tests, share it) and the same lock is held while spawning and
//! while reaping, so that a child cannot exit and be reaped before its pid is
//! registered.
//!
//! Exits are learnt from SIGCHLD, and, for a child created with a pidfd, sooner from
//! the pidfd: its task then reaps it with [`reap`], under the same lock. A slow sweep backs it up (signals coalesce, and
//! with several runtimes in one process another one's driver may consume the
//! wakeup); it is a safety net, not how exits are normally noticed, so it is rare
//! enough to cost nothing while idle.

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, trace, warn};

use super::spawn::Child;
use super::ExitStatus;

type Routes = HashMap<i32, oneshot::Sender<ExitStatus>>;

static ROUTES: OnceLock<Mutex<Routes>> = OnceLock::new();

fn routes() -> MutexGuard<'static, Routes> {
    ROUTES
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        // A panic while holding the lock cannot leave the map inconsistent.
        .unwrap_or_else(|e| e.into_inner())
}

/// How often the reaper looks for exited children without being told by SIGCHLD.
const SWEEP: Duration = Duration::from_secs(5);

/// Runs `spawn` and registers the child's pid before anyone can reap it; its status
/// arrives on the receiver. (A child whose set-up failed is reaped as an orphan.)
pub(crate) fn spawn_registered<E>(
    spawn: impl FnOnce() -> Result<Child, E>,
) -> Result<(Child, oneshot::Receiver<ExitStatus>), E> {
    let mut table = routes();
    let child = spawn()?;
    let (tx, rx) = oneshot::channel();
    table.insert(child.pid as i32, tx);
    Ok((child, rx))
}

/// Reaps `pid` if it has exited (its pidfd said so), routing its status as usual.
/// If the reaper holds the lock, it is reaping (the same SIGCHLD woke it): its
/// delivery is awaited instead of the lock.
pub(crate) fn reap(pid: u32) {
    let mut table = match ROUTES.get().map(Mutex::try_lock) {
        Some(Ok(table)) => table,
        Some(Err(TryLockError::Poisoned(e))) => e.into_inner(),
        Some(Err(TryLockError::WouldBlock)) | None => return,
    };
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                let status = ExitStatus {
                    code: Some(code),
                    signal: None,
                };
                return deliver(&mut table, pid, status);
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                let status = ExitStatus {
                    code: None,
                    signal: Some(sig as i32),
                };
                return deliver(&mut table, pid, status);
            }
            Err(Errno::EINTR) => continue,
            // Not exited after all, or reaped already (by `reap_all`).
            _ => return,
        }
    }
}

/// Reaps every child that has exited, routing registered pids' statuses.
pub(crate) fn reap_all() {
    let mut table = routes();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => deliver(
                &mut table,
                pid,
                ExitStatus {
                    code: Some(code),
                    signal: None,
                },
            ),
            Ok(WaitStatus::Signaled(pid, sig, _)) => deliver(
                &mut table,
                pid,
                ExitStatus {
                    code: None,
                    signal: Some(sig as i32),
                },
            ),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(other) => trace!(?other, "ignoring wait status"),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "waitpid failed");
                break;
            }
        }
    }
}

fn deliver(table: &mut Routes, pid: Pid, status: ExitStatus) {
    match table.remove(&pid.as_raw()) {
        Some(tx) => {
            debug!(pid = pid.as_raw(), %status, "main process exited");
            // The receiver may be gone (a detached or dropped supervisor); nothing to do then.
            let _ = tx.send(status);
        }
        None => trace!(pid = pid.as_raw(), %status, "reaped orphan"),
    }
}

/// Makes this process a child subreaper and starts a reaper task on the
/// current runtime. The SIGCHLD stream is registered before this returns, so
/// no exit of a later spawn can be missed.
pub(crate) fn start() -> io::Result<JoinHandle<()>> {
    // SAFETY: plain prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sigchld = signal(SignalKind::child())?;
    // Children may have exited before the handler existed.
    reap_all();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                got = sigchld.recv() => {
                    if got.is_none() {
                        break;
                    }
                }
                // Belt and braces: signals coalesce, and another runtime's
                // driver may be the one that consumed the wakeup.
                _ = tokio::time::sleep(SWEEP) => {}
            }
            reap_all();
        }
    }))
}
