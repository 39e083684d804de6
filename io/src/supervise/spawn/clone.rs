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

/// What to do when `clone3` fails with `errno`: `true` to fall back to a fork.
fn clone3_failed(errno: i32, cgroup: Option<RawFd>) -> io::Result<()> {
    match errno {
        // No clone3, or a seccomp filter refusing it: never try again.
        libc::ENOSYS | libc::EPERM | libc::E2BIG => {
            CLONE3_UNUSABLE.store(true, Ordering::Relaxed);
            Ok(())
        }
        // A kernel without CLONE_INTO_CGROUP, or something wrong with the cgroup: the
        // fork says which, through the child's own join.
        libc::EINVAL | libc::EBUSY | libc::EOPNOTSUPP if cgroup.is_some() => Ok(()),
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
mod tests {
    use super::*;
    use crate::supervise::spawn::{ExecTarget, StartMarker};
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// A plan to run `argv` in `dir` (PATH=/usr/bin:/bin) with output to `dir/out`.
    struct Owned {
        argv: Vec<CString>,
        env: Vec<CString>,
        paths: Vec<CString>,
        cwd: CString,
        out: OwnedFd,
        null: OwnedFd,
        marker: StartMarker,
    }

    impl Owned {
        fn new(dir: &std::path::Path, argv: &[&str]) -> Owned {
            let c = |s: &str| CString::new(s).expect("no NUL");
            let program = argv[0];
            let paths = if program.contains('/') {
                vec![c(program)]
            } else {
                vec![
                    c(&format!("/usr/bin/{program}")),
                    c(&format!("/bin/{program}")),
                ]
            };
            let file = |path: std::path::PathBuf, write: bool| -> OwnedFd {
                fs::OpenOptions::new()
                    .read(!write)
                    .append(write)
                    .create(write)
                    .open(path)
                    .expect("open")
                    .into()
            };
            Owned {
                argv: argv.iter().map(|a| c(a)).collect(),
                env: vec![c("PATH=/usr/bin:/bin"), c("ANSWER=42")],
                paths,
                cwd: c(dir.to_str().expect("utf-8")),
                out: super::super::above_stdio(file(dir.join("out"), true)).expect("fd"),
                null: super::super::above_stdio(file("/dev/null".into(), false)).expect("fd"),
                marker: StartMarker::new(1, 0),
            }
        }

        fn spawn(&self, (exit_by_pidfd, how): Way) -> Spawned {
            let nul = |v: &[CString]| -> Vec<*const libc::c_char> {
                v.iter()
                    .map(|s| s.as_ptr())
                    .chain([std::ptr::null()])
                    .collect()
            };
            let (argv, envp) = (nul(&self.argv), nul(&self.env));
            let targets: Vec<ExecTarget> = self
                .paths
                .iter()
                .map(|p| ExecTarget {
                    path: p.as_ptr(),
                    script_argv: [c"/bin/sh".as_ptr(), p.as_ptr()]
                        .into_iter()
                        .chain(argv[1..].iter().copied())
                        .collect(),
                })
                .collect();
            let plan = ChildPlan {
                targets: &targets,
                argv: &argv,
                envp: &envp,
                cwd: Some(&self.cwd),
                stdin: self.null.as_raw_fd(),
                output: self.out.as_raw_fd(),
                cgroup: None,
                nofile: None,
                marker: &self.marker,
                exit_by_pidfd,
            };
            let _blocked = SignalsBlocked::new();
            how(&plan).expect("clone")
        }
    }

    /// The child's exit code (or 128 + signal).
    fn status_of(child: (u32, Option<OwnedFd>)) -> i32 {
        if let (_, Some(pidfd)) = &child {
            let mut poll = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one descriptor we own.
            let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
            assert_eq!(ready, 1, "the pidfd is readable at the exit");
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(child.0 as i32, &mut status, 0) };
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        }
    }

    fn fork_path(plan: &ChildPlan<'_>) -> Result<Spawned, i32> {
        fork(plan, None)
    }

    /// A way to create the child: whether it may report through a pidfd, and how.
    type Way = (bool, fn(&ChildPlan<'_>) -> Result<Spawned, i32>);

    #[cfg(target_arch = "x86_64")]
    fn vfork_path(plan: &ChildPlan<'_>) -> Result<Spawned, i32> {
        vfork::spawn(plan, None)
    }

    fn ways() -> Vec<(&'static str, Way)> {
        let mut ways: Vec<(&'static str, Way)> = vec![("fork", (true, fork_path))];
        #[cfg(target_arch = "x86_64")]
        ways.extend([
            (
                "vfork, pidfd",
                (true, vfork_path as fn(&ChildPlan<'_>) -> _),
            ),
            ("vfork, SIGCHLD", (false, vfork_path)),
        ]);
        ways
    }

    #[test]
    fn both_ways_run_the_program_as_set_up() {
        for (way, how) in ways() {
            let dir = tempfile::tempdir().expect("dir");
            let child = Owned::new(
                dir.path(),
                &["sh", "-c", "echo $ANSWER $0 $1 $(pwd)", "zero", "one"],
            );
            let (pid, pidfd, failure) = child.spawn(how);
            assert_eq!(failure, None, "{way}");
            assert_eq!(status_of((pid, pidfd)), 0, "{way}");
            let out = fs::read_to_string(dir.path().join("out")).expect("output");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(
                lines,
                [
                    format!("--- pop: started pid {pid} (generation 1) at 0"),
                    format!("42 zero one {}", dir.path().display())
                ],
                "{way}"
            );
        }
    }

    #[test]
    fn both_ways_give_the_program_a_fresh_signal_state() {
        for (way, how) in ways() {
            let dir = tempfile::tempdir().expect("dir");
            let child = Owned::new(
                dir.path(),
                &["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
            );
            let (pid, pidfd, failure) = child.spawn(how);
            assert_eq!(failure, None, "{way}");
            assert_eq!(status_of((pid, pidfd)), 0, "{way}");
            let out = fs::read_to_string(dir.path().join("out")).expect("output");
            let mask = |name: &str| {
                let line = out
                    .lines()
                    .find(|l| l.starts_with(name))
                    .expect("a mask line");
                u64::from_str_radix(line[name.len()..].trim(), 16).expect("hex")
            };
            // Nothing blocked (all was, around the clone); SIGPIPE not ignored (Rust
            // ignores it in this process).
            assert_eq!(mask("SigBlk:"), 0, "{way}: {out}");
            assert_eq!(
                mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)),
                0,
                "{way}: {out}"
            );
        }
    }

    /// A child that failed to exec: exits with 127.
    fn assert_failed(way: &str, (pid, pidfd, _): Spawned) {
        assert_eq!(status_of((pid, pidfd)), 127, "{way}");
    }

    #[test]
    fn both_ways_search_and_report_like_execvp() {
        for (way, how) in ways() {
            let dir = tempfile::tempdir().expect("dir");
            // Not found anywhere in PATH.
            let spawned = Owned::new(dir.path(), &["no-such-program-pop"]).spawn(how);
            assert_eq!(spawned.2, Some((ChildStep::Exec, libc::ENOENT)), "{way}");
            assert_failed(way, spawned);
            // Found but not executable.
            let plain = dir.path().join("plain");
            fs::write(&plain, "echo hi\n").expect("file");
            let spawned = Owned::new(dir.path(), &[plain.to_str().expect("utf-8")]).spawn(how);
            assert_eq!(spawned.2, Some((ChildStep::Exec, libc::EACCES)), "{way}");
            assert_failed(way, spawned);
            // Executable without `#!`: run by /bin/sh, with its arguments.
            fs::set_permissions(&plain, fs::Permissions::from_mode(0o755)).expect("chmod");
            fs::write(&plain, "echo script $1\n").expect("file");
            let (pid, pidfd, failure) =
                Owned::new(dir.path(), &[plain.to_str().expect("utf-8"), "arg"]).spawn(how);
            assert_eq!(failure, None, "{way}");
            assert_eq!(status_of((pid, pidfd)), 0, "{way}");
            let out = fs::read_to_string(dir.path().join("out")).expect("output");
            assert!(out.ends_with("script arg\n"), "{way}: {out}");
        }
    }

    /// Killed: the pidfd tells, and the status says by what.
    #[test]
    fn a_killed_child_is_told_by_its_pidfd() {
        for (way, how) in ways() {
            let dir = tempfile::tempdir().expect("dir");
            let (pid, pidfd, failure) = Owned::new(dir.path(), &["sleep", "100"]).spawn(how);
            assert_eq!(failure, None, "{way}");
            // SAFETY: kill with a pid and a signal number.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            assert_eq!(status_of((pid, pidfd)), 128 + libc::SIGKILL, "{way}");
        }
    }
}
