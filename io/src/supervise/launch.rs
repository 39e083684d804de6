//! Starting a main process: everything the child needs is prepared here, then `spawn`
//! forks (into the generation's cgroup when the kernel allows), and the child sets up
//! stdio, its working directory and session, writes the start marker (a service's log
//! gets one, a one-off's files none) and execs, all before any service code runs.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

use super::adopt::ExitFuture;
use super::containment::Group;
use super::credentials;
use super::logs::LogFile;
use super::spawn::{self, above_stdio, CgroupTarget, ChildPlan, ExecTarget, StartMarker};
use super::{
    fdlimit, io_err, pidfd, reaper, ExitStatus, OutputFiles, ProcessSpec, SuperviseError, TOKEN_ENV,
};

fn c_string(what: &str, bytes: Vec<u8>) -> Result<CString, SuperviseError> {
    CString::new(bytes).map_err(|e| SuperviseError::Io {
        context: format!("{what} holds a NUL byte"),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })
}

/// The agent's environment, read once: the agent does not change its own.
fn agent_environment() -> &'static BTreeMap<OsString, OsString> {
    static ENV: OnceLock<BTreeMap<OsString, OsString>> = OnceLock::new();
    ENV.get_or_init(|| std::env::vars_os().collect())
}

/// The agent's environment without pop's own variables (`POP_*`: the agent's
/// configuration is not the service's) and `spec.unset`, with `spec.env` and the token
/// added.
fn environment(spec: &ProcessSpec, token: &str) -> BTreeMap<OsString, OsString> {
    let mut env = agent_environment().clone();
    env.retain(|name, _| !name.as_bytes().starts_with(b"POP_"));
    for name in &spec.unset {
        env.remove(OsStr::new(name));
    }
    for (k, v) in &spec.env {
        env.insert(k.into(), v.into());
    }
    env.insert(TOKEN_ENV.into(), token.into());
    env
}

/// `KEY=VALUE` strings.
fn env_strings(env: BTreeMap<OsString, OsString>) -> Result<Vec<CString>, SuperviseError> {
    env.into_iter()
        .map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            c_string("an environment variable", entry)
        })
        .collect()
}

/// Where `execvp` would look for `program`, in order: itself if it holds a `/`, else in
/// each directory of `path` (an empty entry is the working directory; no `PATH` means
/// glibc's default, `/bin:/usr/bin`).
fn exec_paths(program: &str, path: Option<&OsStr>) -> Vec<Vec<u8>> {
    if program.is_empty() {
        return Vec::new();
    }
    if program.contains('/') {
        return vec![program.as_bytes().to_vec()];
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], OsStr::as_bytes);
    path.split(|b| *b == b':')
        .map(|dir| {
            let mut full = dir.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(program.as_bytes());
            full
        })
        .collect()
}

/// A `/dev/null` for every child's stdin, opened once.
fn dev_null() -> io::Result<&'static OwnedFd> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")?;
    let fd = above_stdio(OwnedFd::from(file))?;
    Ok(NULL.get_or_init(|| fd))
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Where the main process's stdout and stderr go.
pub(crate) enum Output<'a> {
    /// Both append to the service's log, after the start marker.
    Log(&'a LogFile),
    /// A one-off's own files, created or truncated, without a marker.
    Files(&'a OutputFiles),
}

/// The child's stdout and stderr descriptors (one and the same for a log), at least 3.
fn open_output(output: &Output<'_>) -> Result<(OwnedFd, Option<OwnedFd>), SuperviseError> {
    match output {
        Output::Log(log) => {
            let file: File = log.for_child().map_err(io_err("cannot open log"))?;
            let fd = above_stdio(file.into()).map_err(io_err("cannot open log"))?;
            Ok((fd, None))
        }
        Output::Files(files) => {
            let create = |path: &std::path::Path| {
                let context = || format!("cannot create {}", path.display());
                let file = File::create(path).map_err(io_err(context()))?;
                above_stdio(file.into()).map_err(io_err(context()))
            };
            Ok((create(&files.stdout)?, Some(create(&files.stderr)?)))
        }
    }
}

/// Forks and execs the main process inside `group`, with stdout and stderr to
/// `output`; returns its pid and what resolves with its exit status.
/// Must run inside the runtime.
/// `state_dir`: the agent's, made passable for a process of another user.
pub(crate) fn launch(
    spec: &ProcessSpec,
    token: &str,
    group: &Group,
    output: Output<'_>,
    started_at_ms: u64,
    state_dir: &std::path::Path,
) -> Result<(u32, ExitFuture), SuperviseError> {
    let program = spec.argv.first().ok_or(SuperviseError::EmptyArgv)?;
    let credentials = match &spec.run_as {
        Some(run_as) => {
            let credentials = credentials::resolve(run_as)?;
            credentials::prepare(&credentials, spec.cwd.as_deref(), state_dir)?;
            Some(credentials)
        }
        None => None,
    };
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| c_string("an argument", a.clone().into_bytes()))
        .collect::<Result<_, _>>()?;
    let env = environment(spec, token);
    let paths: Vec<CString> = exec_paths(program, env.get(OsStr::new("PATH")).map(|p| &**p))
        .into_iter()
        .map(|p| c_string("the program's path", p))
        .collect::<Result<_, _>>()?;
    let envp = env_strings(env)?;
    let cwd = spec
        .cwd
        .as_ref()
        .map(|d| c_string("the working directory", d.as_os_str().as_bytes().to_vec()))
        .transpose()?;
    let (stdout, stderr) = open_output(&output)?;
    let stdin = dev_null().map_err(io_err("cannot open /dev/null"))?;
    let cgroup = match group.cgroup() {
        Some(g) => {
            let dir = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(g.dir())
                .map_err(io_err(format!("cannot open {}", g.dir().display())))?;
            let procs = g.procs_path().map_err(io_err("bad cgroup path"))?;
            Some((OwnedFd::from(dir), procs))
        }
        None => None,
    };
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);
    let targets: Vec<ExecTarget> = paths
        .iter()
        .map(|path| ExecTarget {
            path: path.as_ptr(),
            script_argv: [c"/bin/sh".as_ptr(), path.as_ptr()]
                .into_iter()
                .chain(argv_ptrs[1..].iter().copied())
                .collect(),
        })
        .collect();
    let marker = match output {
        Output::Log(_) => Some(StartMarker::new(spec.generation, started_at_ms / 1000)),
        Output::Files(_) => None,
    };
    let plan = ChildPlan {
        targets: &targets,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
        cwd: cwd.as_deref(),
        stdin: stdin.as_raw_fd(),
        stdout: stdout.as_raw_fd(),
        stderr: stderr.as_ref().unwrap_or(&stdout).as_raw_fd(),
        cgroup: cgroup.as_ref().map(|(dir, procs)| CgroupTarget {
            dir: dir.as_raw_fd(),
            procs,
        }),
        nofile: fdlimit::for_children(),
        credentials: credentials.as_ref(),
        marker: marker.as_ref(),
        exit_by_pidfd: pidfd::budget_allows(),
    };
    let (child, reaped) = reaper::spawn_registered(|| spawn::spawn(&plan)).map_err(|source| {
        SuperviseError::Spawn {
            program: program.clone(),
            source,
        }
    })?;
    let pid = child.pid;
    let exit: ExitFuture = match child.pidfd {
        Some(fd) => Box::pin(pidfd::child_exit(pid, pidfd::Held::new(fd), reaped)),
        None => Box::pin(async move {
            // A dropped sender cannot happen short of a reaper bug; report
            // an unknown status rather than hang.
            reaped.await.unwrap_or(ExitStatus {
                code: None,
                signal: None,
            })
        }),
    };
    Ok((pid, exit))
}
