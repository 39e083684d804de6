//! fork + exec, without `std::process::Command`, so that the child can be born in its
//! cgroup, cheaply.
//!
//! Moving a running process into a cgroup (a write to `cgroup.procs`) takes the kernel's
//! global `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period:
//! measured at 10-15 ms on this kind of machine, most of a restart. `clone3` with
//! `CLONE_INTO_CGROUP` (Linux 5.7) creates the child directly in the cgroup instead.
//!
//! Forking also costs in proportion to the agent's memory (its page tables are copied,
//! and its pages are copied on write afterwards): 0.1 ms at 1 MB, 0.5 ms at 32 MB here.
//! So on x86-64 the child is created the way `posix_spawn` does it, sharing the agent's
//! memory (`CLONE_VM | CLONE_VFORK`) on a stack of its own, while the calling thread
//! waits until the child has exec'd (see `clone`). Elsewhere, or where `clone3` is
//! unavailable (older kernels, seccomp filters), the child is a plain fork, and joins
//! its cgroup itself before exec if it was not born in it.
//!
//! Between clone and exec the child runs in (or in a copy of) a multi-threaded process,
//! so it makes only async-signal-safe system calls, never allocates and never writes to
//! memory it shares with the agent, but its own result slot: everything it needs is
//! prepared by the parent in a [`ChildPlan`] (see `child`). Signals are blocked around
//! the clone, so no handler of the agent's can run in the child; the child resets them
//! to the default and unblocks them before exec. It looks the program up in `PATH` like
//! `execvp` (including running a file without a `#!` line with `/bin/sh`), but with the
//! `PATH` of the child's environment, and reports a failure before or at exec as the
//! step that failed and its errno.

mod child;
mod clone;

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::c_char;

use super::credentials::Credentials;

/// What the child does before exec, and with what; all prepared before the clone.
pub(crate) struct ChildPlan<'a> {
    /// Where the program may be, in the order `execvp` tries them.
    pub targets: &'a [ExecTarget],
    /// NULL-terminated.
    pub argv: &'a [*const c_char],
    /// NULL-terminated `KEY=VALUE` strings.
    pub envp: &'a [*const c_char],
    pub cwd: Option<&'a CStr>,
    /// stdin, stdout and stderr (stdout and stderr may be one); all at least 3 (so no
    /// `dup2` overwrites another).
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub cgroup: Option<CgroupTarget<'a>>,
    /// Restored before exec (see `fdlimit`).
    pub nofile: Option<libc::rlimit>,
    /// Switched to before exec (groups, gid, uid, then `no_new_privs`): resolved by
    /// the parent, since the child cannot read the user database.
    pub credentials: Option<&'a Credentials>,
    /// Written to stdout by the child before exec (a service's log has one; a one-off's
    /// output has none).
    pub marker: Option<&'a StartMarker>,
    /// Get a pidfd of the child, where the way it is created allows (see `clone`).
    pub exit_by_pidfd: bool,
}

/// One place the program may be: its path, and the argv that runs it with `/bin/sh`
/// should the kernel not know its format (`ENOEXEC`), as `execvp` does. The pointers
/// point into strings the plan's owner keeps alive.
pub(crate) struct ExecTarget {
    pub path: *const c_char,
    /// NULL-terminated: `/bin/sh`, `path`, then the plan's arguments after `argv[0]`.
    pub script_argv: Vec<*const c_char>,
}

/// The cgroup the child must start in.
pub(crate) struct CgroupTarget<'a> {
    /// An open descriptor of the cgroup directory, for `CLONE_INTO_CGROUP`.
    pub dir: RawFd,
    /// Its `cgroup.procs`, for a child that was not born in it.
    pub procs: &'a CStr,
}

/// Which step of a child's set-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStep {
    Stdio,
    Chdir,
    Cgroup,
    Session,
    Limits,
    Credentials,
    Exec,
}

impl ChildStep {
    const ALL: [ChildStep; 7] = [
        ChildStep::Stdio,
        ChildStep::Chdir,
        ChildStep::Cgroup,
        ChildStep::Session,
        ChildStep::Limits,
        ChildStep::Credentials,
        ChildStep::Exec,
    ];

    pub(super) fn code(self) -> u8 {
        self as u8
    }

    pub(super) fn from_code(code: u8) -> Option<ChildStep> {
        ChildStep::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// Why a child did not get to run its program.
#[derive(Debug)]
pub struct SpawnError {
    /// `None`: the fork itself failed.
    pub step: Option<ChildStep>,
    pub error: io::Error,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.step {
            None => "cannot fork",
            Some(ChildStep::Stdio) => "cannot set up stdin/stdout/stderr",
            Some(ChildStep::Chdir) => "cannot change to the working directory",
            Some(ChildStep::Cgroup) => "cannot join the cgroup",
            Some(ChildStep::Session) => "cannot start a session",
            Some(ChildStep::Limits) => "cannot restore the open-file limit",
            Some(ChildStep::Credentials) => "cannot switch to the service's user and groups",
            Some(ChildStep::Exec) => "cannot execute the program",
        };
        write!(f, "{what}: {}", self.error)
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<io::Error> for SpawnError {
    fn from(error: io::Error) -> Self {
        SpawnError { step: None, error }
    }
}

/// The `--- pop: started pid <pid> ...` line, written by the child itself
/// (it alone knows its pid before running service code), so that it
/// precedes all of the service's output.
pub(crate) struct StartMarker {
    prefix: &'static [u8],
    suffix: Vec<u8>,
}

impl StartMarker {
    pub fn new(generation: u64, at_secs: u64) -> Self {
        Self {
            prefix: b"--- pop: started pid ",
            suffix: format!(" (generation {generation}) at {at_secs}\n").into_bytes(),
        }
    }

    /// Async-signal-safe: formats into a stack buffer, one `write(2)` to stdout.
    pub(super) fn write_from_child(&self) {
        let mut buf = [0u8; 256];
        let mut digits = [0u8; 10];
        // SAFETY: getpid has no preconditions.
        let mut pid = unsafe { libc::getpid() }.unsigned_abs();
        let mut nd = 0;
        loop {
            digits[digits.len() - 1 - nd] = b'0' + (pid % 10) as u8;
            nd += 1;
            pid /= 10;
            if pid == 0 || nd == digits.len() {
                break;
            }
        }
        let parts: [&[u8]; 3] = [self.prefix, &digits[digits.len() - nd..], &self.suffix];
        let mut len = 0;
        for part in parts {
            let Some(dst) = buf.get_mut(len..len + part.len()) else {
                return;
            };
            dst.copy_from_slice(part);
            len += part.len();
        }
        // SAFETY: writes `len` initialised bytes of a local buffer to fd 1.
        // A failure only loses the marker.
        unsafe {
            libc::write(1, buf.as_ptr().cast(), len);
        }
    }
}

/// A descriptor numbered 3 or above (close-on-exec), so that setting up the child's
/// stdio cannot overwrite it.
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicates a descriptor we own; the new one is returned owned.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this descriptor, nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A child that has exec'd its program.
pub(crate) struct Child {
    pub pid: u32,
    /// Readable once it has exited, when the plan asked for one and the way it was
    /// created allows (see `clone`).
    pub pidfd: Option<OwnedFd>,
}

/// Creates the child and has it exec `plan`; returns once the exec has happened, or
/// with the step that failed (the child exits with 127 then, and is reaped by the
/// reaper as an orphan).
pub(crate) fn spawn(plan: &ChildPlan<'_>) -> Result<Child, SpawnError> {
    let (pid, pidfd, failure) = clone::spawn(plan)?;
    match failure {
        None => Ok(Child { pid, pidfd }),
        Some((step, errno)) => Err(SpawnError {
            step: Some(step),
            error: io::Error::from_raw_os_error(errno),
        }),
    }
}
