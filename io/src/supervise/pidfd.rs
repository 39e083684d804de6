//! Process descriptors: waiting for a process that is not necessarily our child to
//! exit, without polling (a pidfd polls readable once its process has exited).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

use super::{fdlimit, reaper, ExitStatus};

/// `pidfd_open(2)` (Linux 5.3).
pub(crate) fn open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pidfds held for children's exits.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Whether a new child may report its exit through a pidfd: while those held stay
/// under half the open-file limit. Beyond, children report with SIGCHLD, which costs
/// no descriptor, so the number of services is not bound by the limit.
pub(crate) fn budget_allows() -> bool {
    let limit = fdlimit::soft().unwrap_or(1024);
    (HELD.load(Ordering::Relaxed) as u64) < limit / 2
}

/// A pidfd of a child's, counted against [`budget_allows`] while it is open.
pub(crate) struct Held(OwnedFd);

impl Held {
    pub fn new(fd: OwnedFd) -> Held {
        HELD.fetch_add(1, Ordering::Relaxed);
        Held(fd)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsRawFd for Held {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The exit status of our child `pid`, delivered by the reaper on `reaped`; `pidfd`
/// tells the moment it exits (epoll wakes this task directly), and the child is then
/// reaped at once, before the reaper's SIGCHLD gets to it. Must be called inside the
/// runtime.
pub(crate) fn child_exit(
    pid: u32,
    pidfd: Held,
    reaped: oneshot::Receiver<ExitStatus>,
) -> impl Future<Output = ExitStatus> {
    // SAFETY: `Held` owns a valid descriptor, always returns it from `as_raw_fd`, and
    // closes it only when dropped along with the `AsyncFd`.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    async move {
        let mut reaped = std::pin::pin!(reaped);
        if let Ok(fd) = registered {
            tokio::select! {
                status = &mut reaped => return status.unwrap_or(UNKNOWN),
                ready = fd.readable() => if ready.is_ok() {
                    reaper::reap(pid);
                },
            }
        }
        // A dropped sender cannot happen short of a reaper bug; report an unknown
        // status rather than hang.
        reaped.await.unwrap_or(UNKNOWN)
    }
}

const UNKNOWN: ExitStatus = ExitStatus {
    code: None,
    signal: None,
};

/// Resolves once the process of `pidfd` has exited. Must be called inside the runtime.
pub(crate) fn exited(pidfd: OwnedFd) -> io::Result<impl Future<Output = io::Result<()>>> {
    // SAFETY: `OwnedFd` owns a valid descriptor, always returns it from `as_raw_fd`,
    // and closes it only when dropped along with the `AsyncFd`.
    let fd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
    Ok(async move { fd.readable().await.map(drop) })
}
