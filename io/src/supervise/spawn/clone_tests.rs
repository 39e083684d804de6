//! Both ways of creating a child, run for real: what the program gets, and what is
//! reported when it cannot be run.

use super::*;
use crate::supervise::spawn::{CgroupTarget, ExecTarget, StartMarker};
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
        self.spawn_with(exit_by_pidfd, None, how).expect("clone")
    }

    /// Spawns `how`, with the child to start in `cgroup`.
    fn spawn_with(
        &self,
        exit_by_pidfd: bool,
        cgroup: Option<CgroupTarget<'_>>,
        how: impl FnOnce(&ChildPlan<'_>) -> Result<Spawned, i32>,
    ) -> Result<Spawned, i32> {
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
            stdout: self.out.as_raw_fd(),
            stderr: self.out.as_raw_fd(),
            cgroup,
            nofile: None,
            credentials: None,
            marker: Some(&self.marker),
            exit_by_pidfd,
        };
        let _blocked = SignalsBlocked::new();
        how(&plan)
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

/// A fresh cgroup v2 of this test's, removed when dropped; `None` (the test skips)
/// where there is no cgroup2 mount we may write to.
struct TestCgroup {
    dir: std::path::PathBuf,
    fd: OwnedFd,
    procs: CString,
}

impl TestCgroup {
    fn new(name: &str) -> Option<TestCgroup> {
        let mount = crate::supervise::containment::cgroup::find_mount()?;
        let dir = mount.join(format!("pop-spawn-test-{}-{name}", std::process::id()));
        if let Err(e) = fs::create_dir(&dir) {
            println!(
                "SKIPPED: cannot create a cgroup in {}: {e}",
                mount.display()
            );
            return None;
        }
        let fd = fs::File::open(&dir).expect("open the cgroup").into();
        let procs = CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("no NUL");
        Some(TestCgroup { dir, fd, procs })
    }

    fn target(&self) -> CgroupTarget<'_> {
        CgroupTarget {
            dir: self.fd.as_raw_fd(),
            procs: &self.procs,
        }
    }

    /// The line `/proc/self/cgroup` shows for a member, for cgroup v2.
    fn line(&self) -> String {
        let mount = crate::supervise::containment::cgroup::find_mount().expect("mount");
        let rel = self.dir.strip_prefix(&mount).expect("under the mount");
        format!("0::/{}", rel.display())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The cgroup v2 line of what the child printed of its `/proc/self/cgroup`.
fn printed_cgroup(dir: &std::path::Path) -> String {
    let out = fs::read_to_string(dir.join("out")).expect("output");
    out.lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {out}"))
        .to_string()
}

/// Born in the cgroup (clone3 with CLONE_INTO_CGROUP), or joining it before exec (the
/// fork): either way the program runs in it from its first instruction.
#[test]
fn every_way_starts_the_program_in_its_cgroup() {
    let Some(cgroup) = TestCgroup::new("ways") else {
        return;
    };
    let fd = cgroup.fd.as_raw_fd();
    type Creates = Box<dyn Fn(&ChildPlan<'_>) -> Result<Spawned, i32>>;
    let mut ways: Vec<(&str, Creates)> = vec![
        (
            "clone3 fork into the cgroup",
            Box::new(move |p| fork(p, Some(fd))),
        ),
        ("fork, joining", Box::new(|p| fork(p, None))),
    ];
    #[cfg(target_arch = "x86_64")]
    ways.push((
        "vfork into the cgroup",
        Box::new(move |p| vfork::spawn(p, Some(fd))),
    ));
    for (way, how) in ways {
        let dir = tempfile::tempdir().expect("dir");
        let child = Owned::new(dir.path(), &["cat", "/proc/self/cgroup"]);
        let (pid, pidfd, failure) = child
            .spawn_with(false, Some(cgroup.target()), how)
            .unwrap_or_else(|errno| panic!("{way}: errno {errno}"));
        assert_eq!(failure, None, "{way}");
        assert_eq!(status_of((pid, pidfd)), 0, "{way}");
        assert_eq!(printed_cgroup(dir.path()), cgroup.line(), "{way}");
    }
}

/// clone3 refusing the cgroup (here: a descriptor that is no cgroup, EBADF) is not a
/// failure to fork: the fork joins the cgroup by its `cgroup.procs` and runs there.
#[test]
fn a_cgroup_clone3_refuses_is_joined_by_the_fork() {
    let Some(cgroup) = TestCgroup::new("refused") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let not_a_cgroup: OwnedFd = fs::File::open(dir.path()).expect("open dir").into();
    let child = Owned::new(dir.path(), &["cat", "/proc/self/cgroup"]);
    let target = CgroupTarget {
        dir: not_a_cgroup.as_raw_fd(),
        procs: &cgroup.procs,
    };
    let (pid, pidfd, failure) = child
        .spawn_with(true, Some(target), |p| {
            spawn(p).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        })
        .expect("falls back to a fork");
    assert_eq!(failure, None);
    assert_eq!(status_of((pid, pidfd)), 0);
    assert_eq!(printed_cgroup(dir.path()), cgroup.line());
}
