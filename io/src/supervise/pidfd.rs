//! Process descriptors: waiting for a process that is not necessarily our child to
//! exit, without polling (a pidfd polls readable once its process has exited).

use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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

/// Resolves once the process of `pidfd` has exited. Must be called inside the runtime.
pub(crate) fn exited(pidfd: OwnedFd) -> io::Result<impl Future<Output = io::Result<()>>> {
    // SAFETY: `OwnedFd` owns a valid descriptor, always returns it from `as_raw_fd`,
    // and closes it only when dropped along with the `AsyncFd`.
    let fd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
    Ok(async move { fd.readable().await.map(drop) })
}
