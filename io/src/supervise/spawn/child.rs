//! What the child does between clone and exec. Everything here runs in the child,
//! possibly in the agent's own memory (a vfork-style clone), so: async-signal-safe
//! system calls only, no allocation, no panic, and no write to memory but the
//! [`Report`] slot.

use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use libc::c_int;

use super::{ChildPlan, ChildStep};

/// How the child tells the parent what failed.
pub(super) enum Report<'a> {
    /// A close-on-exec pipe (a forked child: separate memory).
    Pipe(c_int),
    /// A slot in memory shared with the parent, read once the child has exec'd or exited.
    Shared(&'a Outcome),
}

/// The failure of a child sharing the parent's memory; step 0 means none.
#[derive(Default)]
pub(super) struct Outcome {
    step: AtomicU8,
    errno: AtomicI32,
}

impl Outcome {
    pub fn failure(&self) -> Option<(ChildStep, i32)> {
        let step = ChildStep::from_code(self.step.load(Ordering::Acquire).checked_sub(1)?)?;
        Some((step, self.errno.load(Ordering::Acquire)))
    }
}

/// Encodes a failure for the pipe: the step, then the errno.
pub(super) fn encode(step: ChildStep, errno: i32) -> [u8; 5] {
    let e = errno.to_ne_bytes();
    [step.code(), e[0], e[1], e[2], e[3]]
}

fn errno() -> c_int {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Reports `step` failing with `errno` and exits.
///
/// # Safety
/// Only in the child: it ends the process.
unsafe fn fail(report: &Report<'_>, step: ChildStep, errno: c_int) -> ! {
    match report {
        Report::Pipe(fd) => {
            let msg = encode(step, errno);
            libc::write(*fd, msg.as_ptr().cast(), msg.len());
        }
        Report::Shared(outcome) => {
            outcome.errno.store(errno, Ordering::Release);
            outcome.step.store(step.code() + 1, Ordering::Release);
        }
    }
    libc::_exit(127)
}

/// Signal handlers of the agent's must not run in the child (they would act on the
/// agent's memory): every caught signal goes back to its default, and so does SIGPIPE
/// (which Rust ignores in the agent); other ignored signals stay ignored, as across a
/// fork and exec. Then nothing is blocked, as a fresh process expects.
unsafe fn reset_signals() {
    let mut default: libc::sigaction = std::mem::zeroed();
    default.sa_sigaction = libc::SIG_DFL;
    // 1 to 64: every signal Linux has.
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            continue;
        }
        let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if caught || sig == libc::SIGPIPE {
            libc::sigaction(sig, &default, std::ptr::null_mut());
        }
    }
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
}

/// `execvp`'s search, over the plan's targets: the first that execs wins; a missing or
/// unusable one is skipped (EACCES remembered); any other error ends the search.
unsafe fn exec(plan: &ChildPlan<'_>) -> c_int {
    let mut denied = false;
    for target in plan.targets {
        libc::execve(target.path, plan.argv.as_ptr(), plan.envp.as_ptr());
        if errno() == libc::ENOEXEC {
            libc::execve(
                c"/bin/sh".as_ptr(),
                target.script_argv.as_ptr(),
                plan.envp.as_ptr(),
            );
        }
        match errno() {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            other => return other,
        }
    }
    if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }
}

/// Drops to the service's user: supplementary groups, gid, then uid (after which no
/// other can be set), and `no_new_privs`, so no setuid program gives privileges back.
/// Raw system calls, not glibc's `setuid` & co.: those change the credentials of every
/// thread of what glibc believes is the process, which for a child sharing the agent's
/// memory would be the agent's threads. Returns -1 with errno set on a failure.
unsafe fn switch_user(credentials: &super::Credentials) -> libc::c_long {
    let groups = &credentials.groups;
    let (uid, gid) = (
        libc::c_long::from(credentials.uid),
        libc::c_long::from(credentials.gid),
    );
    let count = groups.len() as libc::c_long;
    if libc::syscall(libc::SYS_setgroups, count, groups.as_ptr()) < 0
        || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
        || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
    {
        return -1;
    }
    let no_new_privs = libc::c_long::from(libc::PR_SET_NO_NEW_PRIVS);
    let (one, zero): (libc::c_long, libc::c_long) = (1, 0);
    libc::syscall(libc::SYS_prctl, no_new_privs, one, zero, zero, zero)
}

/// Sets the child up and execs the program; never returns.
///
/// # Safety
/// Only in a freshly cloned child (see the module docs).
pub(super) unsafe fn run(plan: &ChildPlan<'_>, in_cgroup: bool, report: &Report<'_>) -> ! {
    reset_signals();
    for (fd, target) in [(plan.stdin, 0), (plan.stdout, 1), (plan.stderr, 2)] {
        if libc::dup2(fd, target) < 0 {
            fail(report, ChildStep::Stdio, errno());
        }
    }
    if let Some(cwd) = plan.cwd {
        if libc::chdir(cwd.as_ptr()) < 0 {
            fail(report, ChildStep::Chdir, errno());
        }
    }
    if let (Some(cgroup), false) = (&plan.cgroup, in_cgroup) {
        let fd = libc::open(cgroup.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            fail(report, ChildStep::Cgroup, errno());
        }
        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            fail(report, ChildStep::Cgroup, errno());
        }
        libc::close(fd);
    }
    // Its own session and process group, and no controlling terminal.
    if libc::setsid() < 0 {
        fail(report, ChildStep::Session, errno());
    }
    if let Some(limit) = &plan.nofile {
        if libc::setrlimit(libc::RLIMIT_NOFILE, limit) < 0 {
            fail(report, ChildStep::Limits, errno());
        }
    }
    if let Some(credentials) = plan.credentials {
        if switch_user(credentials) < 0 {
            fail(report, ChildStep::Credentials, errno());
        }
    }
    if let Some(marker) = plan.marker {
        marker.write_from_child();
    }
    let errno = exec(plan);
    fail(report, ChildStep::Exec, errno)
}
