//! Creating the child: `clone3` into its cgroup, sharing the agent's memory until it
//! execs (x86-64) or as a copy of it (elsewhere); a plain `fork` where `clone3` cannot
//! be used.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::child::{self, Outcome, Report};
use super::{ChildPlan, ChildStep};

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

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// What became of the child: its pid, a pidfd if it reports its exit through one
/// rather than SIGCHLD (see `Child`), and the step that failed if it did not exec.
pub(super) type Spawned = (u32, Option<OwnedFd>, Option<(ChildStep, i32)>);

/// All signals blocked in the calling thread while it lives (see the module docs of
/// `spawn`), so that none is handled in the child before it has reset the handlers.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        // SAFETY: fills sigsets we own; pthread_sigmask only reads `all`.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// What to do when `clone3` fails with `errno`: `Ok` to fall back to a fork.
fn clone3_failed(errno: i32, cgroup: Option<RawFd>) -> io::Result<()> {
    match errno {
        // No clone3, or a seccomp filter refusing it: never try again.
        libc::ENOSYS | libc::EPERM | libc::E2BIG => {
            CLONE3_UNUSABLE.store(true, Ordering::Relaxed);
            Ok(())
        }
        // With a cgroup, any other refusal may be the cgroup's: a kernel without
        // CLONE_INTO_CGROUP (EINVAL), no right to place a process there (EACCES), a
        // cgroup removed meanwhile (ENOENT, ENODEV), not a leaf (EBUSY, EOPNOTSUPP), a
        // descriptor that is no cgroup (EBADF). The fork joins it itself and so says
        // which, as "cannot join the cgroup"; a failure that is not the cgroup's
        // (EAGAIN, ENOMEM) the fork reports as it would have anyway.
        _ if cgroup.is_some() => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Creates the child and waits until it has exec'd (or failed to).
pub(super) fn spawn(plan: &ChildPlan<'_>) -> io::Result<Spawned> {
    let _blocked = SignalsBlocked::new();
    let cgroup = plan.cgroup.as_ref().map(|c| c.dir);
    if !CLONE3_UNUSABLE.load(Ordering::Relaxed) {
        #[cfg(target_arch = "x86_64")]
        match vfork::spawn(plan, cgroup) {
            Ok(spawned) => return Ok(spawned),
            Err(errno) => clone3_failed(errno, cgroup)?,
        }
        #[cfg(not(target_arch = "x86_64"))]
        match fork(plan, cgroup) {
            Ok(spawned) => return Ok(spawned),
            Err(errno) => clone3_failed(errno, cgroup)?,
        }
    }
    fork(plan, None).map_err(io::Error::from_raw_os_error)
}

/// How a forked child came to be.
enum Forked {
    Parent {
        pid: libc::pid_t,
    },
    /// `in_cgroup`: born in the cgroup, so it need not join it.
    Child {
        in_cgroup: bool,
    },
}

/// Forks: with `clone3`, into `cgroup`, when given one; with `fork` otherwise. Returns
/// the errno of a failure.
fn fork_into(cgroup: Option<RawFd>, use_clone3: bool) -> Result<Forked, i32> {
    if use_clone3 {
        let mut args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let Some(fd) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
        }
        // SAFETY: without CLONE_VM and with no stack given, clone3 forks: the child
        // continues on its own copy of this stack. The child only runs `child::run`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        return match rc {
            0 => Ok(Forked::Child {
                in_cgroup: cgroup.is_some(),
            }),
            pid if pid > 0 => Ok(Forked::Parent {
                pid: pid as libc::pid_t,
            }),
            _ => Err(last_errno()),
        };
    }
    // SAFETY: the child only runs `child::run`, which makes async-signal-safe calls.
    match unsafe { libc::fork() } {
        0 => Ok(Forked::Child { in_cgroup: false }),
        pid if pid > 0 => Ok(Forked::Parent { pid }),
        _ => Err(last_errno()),
    }
}

fn report_pipe() -> Result<(OwnedFd, OwnedFd), i32> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(last_errno());
    }
    // SAFETY: pipe2 just returned these descriptors; each is owned once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((
        r,
        super::above_stdio(w).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?,
    ))
}

/// A forked child (a copy of the agent's memory) that reports over a close-on-exec
/// pipe: closed without a word once it has exec'd. `cgroup`: try `clone3` into it.
fn fork(plan: &ChildPlan<'_>, cgroup: Option<RawFd>) -> Result<Spawned, i32> {
    let (read_end, write_end) = report_pipe()?;
    let pid = match fork_into(cgroup, cgroup.is_some())? {
        // SAFETY: we are the freshly forked child.
        Forked::Child { in_cgroup } => unsafe {
            child::run(plan, in_cgroup, &Report::Pipe(write_end.as_raw_fd()))
        },
        Forked::Parent { pid } => pid as u32,
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
            _ => return Err(last_errno()),
        }
    }
    let failure = match got {
        // The pipe closed at exec: the program runs.
        0 => None,
        5 => Some((
            ChildStep::from_code(msg[0]).unwrap_or(ChildStep::Exec),
            i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]),
        )),
        _ => Some((ChildStep::Exec, libc::EIO)),
    };
    Ok((pid, None, failure))
}

#[cfg(target_arch = "x86_64")]
mod vfork {
    //! The child shares the agent's memory (`CLONE_VM`) on a stack of its own until it
    //! execs, while the calling thread is suspended (`CLONE_VFORK`): no page tables are
    //! copied and nothing is copied on write. As `posix_spawn` does, but with
    //! `CLONE_INTO_CGROUP`, which needs `clone3`, which no libc wraps: hence the few
    //! instructions of assembly that start the child on its stack.
    //!
    //! When the plan asks, the parent also gets a pidfd of the child (`CLONE_PIDFD`):
    //! epoll wakes the thread that waits for the exit directly, with no signal handler
    //! in between. (An exit signal other than SIGCHLD would not help: exec resets it.)

    use super::*;

    /// Plenty for `child::run`, which keeps a few hundred bytes on its stack.
    const STACK_SIZE: usize = 64 * 1024;

    /// The child's stack, with an inaccessible page below it; one for the process, as
    /// spawns take turns (the lock is held while a child uses it).
    struct ChildStack {
        low: *mut c_void,
        len: usize,
    }

    // SAFETY: the mapping is only used by one child at a time, under `STACK`'s lock.
    unsafe impl Send for ChildStack {}

    static STACK: Mutex<Option<ChildStack>> = Mutex::new(None);

    fn stack() -> Result<MutexGuard<'static, Option<ChildStack>>, i32> {
        let mut stack = STACK.lock().unwrap_or_else(|e| e.into_inner());
        if stack.is_none() {
            // SAFETY: sysconf has no preconditions.
            let page =
                usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
            let len = STACK_SIZE + page;
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            let low = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                )
            };
            if low == libc::MAP_FAILED {
                return Err(last_errno());
            }
            // SAFETY: the lowest page of the mapping just made; an overflow faults.
            if unsafe { libc::mprotect(low, page, libc::PROT_NONE) } != 0 {
                return Err(last_errno());
            }
            *stack = Some(ChildStack { low, len });
        }
        Ok(stack)
    }

    struct Context<'a, 'p> {
        plan: &'a ChildPlan<'p>,
        outcome: &'a Outcome,
        in_cgroup: bool,
    }

    /// Where the child starts, on its own stack.
    unsafe extern "C" fn entry(context: *mut c_void) -> ! {
        let context = &*(context as *const Context<'_, '_>);
        child::run(
            context.plan,
            context.in_cgroup,
            &Report::Shared(context.outcome),
        )
    }

    /// clone3 that starts the child at `entry(arg)` on the stack given in `args`.
    /// Returns in the parent only: the child's pid, or -errno.
    unsafe fn clone3_calling(
        args: &mut CloneArgs,
        entry: unsafe extern "C" fn(*mut c_void) -> !,
        arg: *mut c_void,
    ) -> i64 {
        let ret: i64;
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            // The child, on its new (16-byte aligned) stack: entry(arg), which never
            // returns.
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        ret
    }

    /// Returns the errno of a failed clone3.
    pub(super) fn spawn(plan: &ChildPlan<'_>, cgroup: Option<RawFd>) -> Result<Spawned, i32> {
        let stack = stack()?;
        let Some(child_stack) = stack.as_ref() else {
            return Err(libc::ENOMEM);
        };
        let outcome = Outcome::default();
        let context = Context {
            plan,
            outcome: &outcome,
            in_cgroup: cgroup.is_some(),
        };
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: child_stack.low as u64,
            stack_size: child_stack.len as u64,
            ..CloneArgs::default()
        };
        if plan.exit_by_pidfd {
            args.flags |= libc::CLONE_PIDFD as u64;
            args.pidfd = &mut pidfd as *mut libc::c_int as u64;
        }
        if let Some(fd) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
        }
        // SAFETY: the child runs `child::run` on the stack we own (locked), shares our
        // memory but writes only `outcome`, and this thread waits until it has exec'd
        // or exited, so `plan`, `context` and `outcome` outlive its use of them.
        let rc = unsafe {
            clone3_calling(
                &mut args,
                entry,
                &context as *const Context<'_, '_> as *mut c_void,
            )
        };
        drop(stack);
        if rc < 0 {
            return Err(i32::try_from(-rc).unwrap_or(libc::EIO));
        }
        // SAFETY: clone3 succeeded, so a pidfd it returned is new and owned by nobody.
        let pidfd = plan
            .exit_by_pidfd
            .then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
        Ok((rc as u32, pidfd, outcome.failure()))
    }
}

#[cfg(test)]
#[path = "clone_tests.rs"]
mod tests;
