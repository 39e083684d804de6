//! fork + exec, without `std::process::Command`, so that the child can be born in its
//! cgroup.
//!
//! Moving a running process into a cgroup (a write to `cgroup.procs`) takes the kernel's
//! global `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period:
//! measured at 10-15 ms on this kind of machine, most of a restart. `clone3` with
//! `CLONE_INTO_CGROUP` (Linux 5.7) creates the child directly in the cgroup instead,
//! at the cost of a plain fork. Where `clone3` is unavailable (older kernels, seccomp
//! filters) the child is forked and joins its cgroup itself before exec, as before.
//!
//! The child runs between fork and exec in a copy of a multi-threaded process, so it
//! makes only async-signal-safe system calls and never allocates: everything it needs
//! is prepared by the parent in a [`ChildPlan`]. A failure before or at exec is sent to
//! the parent over a close-on-exec pipe as the step that failed and its errno; the pipe
//! closing without data means the exec happened.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use libc::c_char;

/// What the child does before exec, and with what; all prepared before the fork.
pub(crate) struct ChildPlan<'a> {
    /// Looked up in the `PATH` of `envp` unless it contains a `/`.
    pub program: &'a CStr,
    /// NULL-terminated.
    pub argv: &'a [*const c_char],
    /// NULL-terminated `KEY=VALUE` strings.
    pub envp: &'a [*const c_char],
    pub cwd: Option<&'a CStr>,
    /// stdin, and stdout/stderr; both at least 3 (so no `dup2` overwrites the other).
    pub stdin: RawFd,
    pub output: RawFd,
    pub cgroup: Option<CgroupTarget<'a>>,
    /// Restored before exec (see `fdlimit`).
    pub nofile: Option<libc::rlimit>,
    /// Written to stdout by the child before exec.
    pub marker: &'a StartMarker,
}

/// The cgroup the child must start in.
pub(crate) struct CgroupTarget<'a> {
    /// An open descriptor of the cgroup directory, for `CLONE_INTO_CGROUP`.
    pub dir: RawFd,
    /// Its `cgroup.procs`, for a child that was forked without `clone3`.
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
    Exec,
}

impl ChildStep {
    const ALL: [ChildStep; 6] = [
        ChildStep::Stdio,
        ChildStep::Chdir,
        ChildStep::Cgroup,
        ChildStep::Session,
        ChildStep::Limits,
        ChildStep::Exec,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<ChildStep> {
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
    fn write_from_child(&self) {
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

/// `struct clone_args` of clone3(2), as of Linux 5.7.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Set once `clone3` turned out not to exist (or to be forbidden): fork from then on.
static CLONE3_UNUSABLE: AtomicBool = AtomicBool::new(false);

/// How the child came to be.
enum Forked {
    Parent {
        pid: libc::pid_t,
    },
    /// `in_cgroup`: born in the cgroup, so it need not join it.
    Child {
        in_cgroup: bool,
    },
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Forks, into `cgroup` when `clone3` allows.
fn fork_into(cgroup: Option<RawFd>) -> io::Result<Forked> {
    if !CLONE3_UNUSABLE.load(Ordering::Relaxed) {
        let mut args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let Some(fd) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
        }
        // SAFETY: without CLONE_VM and with no stack given, clone3 forks: the child
        // continues on its own copy of this stack. The child only runs `child_main`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match rc {
            0 => {
                return Ok(Forked::Child {
                    in_cgroup: cgroup.is_some(),
                })
            }
            pid if pid > 0 => {
                return Ok(Forked::Parent {
                    pid: pid as libc::pid_t,
                })
            }
            _ => match last_errno() {
                // No clone3, or a seccomp filter refusing it: never try again.
                libc::ENOSYS | libc::EPERM | libc::E2BIG => {
                    CLONE3_UNUSABLE.store(true, Ordering::Relaxed);
                }
                // A kernel without CLONE_INTO_CGROUP, or something wrong with the
                // cgroup: the fork below says which, through the child's own join.
                libc::EINVAL | libc::EBUSY | libc::EOPNOTSUPP if cgroup.is_some() => {}
                errno => return Err(io::Error::from_raw_os_error(errno)),
            },
        }
    }
    // SAFETY: the child only runs `child_main`, which makes async-signal-safe calls.
    match unsafe { libc::fork() } {
        0 => Ok(Forked::Child { in_cgroup: false }),
        pid if pid > 0 => Ok(Forked::Parent { pid }),
        _ => Err(io::Error::last_os_error()),
    }
}

extern "C" {
    static mut environ: *const *const c_char;
}

/// Reports `step` failing with `errno` to the parent and exits.
///
/// # Safety
/// Only in the child: it exits the process.
unsafe fn child_fail(report: RawFd, step: ChildStep, errno: i32) -> ! {
    let e = errno.to_ne_bytes();
    let msg = [step.code(), e[0], e[1], e[2], e[3]];
    libc::write(report, msg.as_ptr().cast(), msg.len());
    libc::_exit(127)
}

/// The child between fork and exec: async-signal-safe calls only, no allocation.
///
/// # Safety
/// Only in a freshly forked child; never returns.
unsafe fn child_main(plan: &ChildPlan<'_>, in_cgroup: bool, report: RawFd) -> ! {
    // Signal state as a fresh process expects it: nothing blocked, SIGPIPE not ignored
    // (Rust ignores it in the agent). Caught signals reset to default at exec.
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);

    for (fd, target) in [(plan.stdin, 0), (plan.output, 1), (plan.output, 2)] {
        if libc::dup2(fd, target) < 0 {
            child_fail(report, ChildStep::Stdio, last_errno());
        }
    }
    if let Some(cwd) = plan.cwd {
        if libc::chdir(cwd.as_ptr()) < 0 {
            child_fail(report, ChildStep::Chdir, last_errno());
        }
    }
    if let (Some(cgroup), false) = (&plan.cgroup, in_cgroup) {
        let fd = libc::open(cgroup.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            child_fail(report, ChildStep::Cgroup, last_errno());
        }
        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            child_fail(report, ChildStep::Cgroup, last_errno());
        }
        libc::close(fd);
    }
    // Its own session and process group, and no controlling terminal.
    if libc::setsid() < 0 {
        child_fail(report, ChildStep::Session, last_errno());
    }
    if let Some(limit) = &plan.nofile {
        if libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0 {
            child_fail(report, ChildStep::Limits, last_errno());
        }
    }
    plan.marker.write_from_child();
    // execvp searches the PATH of the environment in force, so that must be the
    // service's (std::process::Command does the same).
    environ = plan.envp.as_ptr();
    libc::execvp(plan.program.as_ptr(), plan.argv.as_ptr());
    child_fail(report, ChildStep::Exec, last_errno())
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

fn report_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; each is owned once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((r, above_stdio(w)?))
}

/// Forks and execs `plan`; returns the child's pid once the exec has happened (or the
/// step that failed: the child then exits with 127 and must still be reaped).
pub(crate) fn spawn(plan: &ChildPlan<'_>) -> Result<u32, SpawnError> {
    let (read_end, write_end) = report_pipe()?;
    let pid = match fork_into(plan.cgroup.as_ref().map(|c| c.dir))? {
        // SAFETY: we are the freshly forked child.
        Forked::Child { in_cgroup } => unsafe {
            child_main(plan, in_cgroup, write_end.as_raw_fd())
        },
        Forked::Parent { pid } => pid,
    };
    drop(write_end);
    let mut msg = [0u8; 5];
    let mut got = 0;
    while got < msg.len() {
        // SAFETY: reads into the unfilled part of a local buffer.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                msg[got..].as_mut_ptr().cast(),
                msg.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if last_errno() == libc::EINTR => continue,
            _ => return Err(io::Error::last_os_error().into()),
        }
    }
    match got {
        // The pipe closed at exec: the program runs.
        0 => Ok(pid as u32),
        5 => Err(SpawnError {
            step: ChildStep::from_code(msg[0]),
            error: io::Error::from_raw_os_error(i32::from_ne_bytes([
                msg[1], msg[2], msg[3], msg[4],
            ])),
        }),
        _ => Err(io::Error::other("the child's set-up report was cut short").into()),
    }
}
