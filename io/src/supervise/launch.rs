//! Starting a main process: fork, join the containment, write the start
//! marker, exec, all before any service code runs.

use std::ffi::CStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::containment::Group;
use super::logs;
use super::{io_err, reaper, ExitStatus, ProcessSpec, SuperviseError, TOKEN_ENV};

/// Forks and execs the main process inside `group`, with stdout and stderr
/// appending to `log`; returns its pid and the channel its exit status
/// arrives on.
pub(crate) fn launch(
    spec: &ProcessSpec,
    token: &str,
    group: &Group,
    log: &logs::SharedLog,
    started_at_ms: u64,
) -> Result<(u32, tokio::sync::oneshot::Receiver<ExitStatus>), SuperviseError> {
    let (out, err) = {
        let l = logs::lock(log);
        let out = l.for_child().map_err(io_err("cannot open log"))?;
        let err = out.try_clone().map_err(io_err("cannot dup log"))?;
        (out, err)
    };
    let marker = StartMarker::new(spec.generation, started_at_ms / 1000);
    launch_to(spec, token, group, out, err, Some(marker))
}

/// Forks and execs the main process inside `group`, its stdout and stderr to
/// these files, the start marker first if there is one.
pub(crate) fn launch_to(
    spec: &ProcessSpec,
    token: &str,
    group: &Group,
    out: std::fs::File,
    err: std::fs::File,
    marker: Option<StartMarker>,
) -> Result<(u32, tokio::sync::oneshot::Receiver<ExitStatus>), SuperviseError> {
    let join = group.join_path().map_err(io_err("bad cgroup path"))?;
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .envs(&spec.env)
        .env(TOKEN_ENV, token)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: the hook only makes async-signal-safe syscalls and does not allocate.
    unsafe {
        cmd.pre_exec(move || child_setup(join.as_deref(), marker.as_ref()));
    }
    let spawned = reaper::spawn_registered(&mut cmd);
    spawned.map_err(io_err(format!("cannot start {:?}", spec.argv[0])))
}

/// The `--- pop: started pid <pid> ...` line, written by the child itself
/// (it alone knows its pid before running service code), so that it
/// precedes all of the service's output.
pub(crate) struct StartMarker {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

impl StartMarker {
    fn new(generation: u64, at_secs: u64) -> Self {
        Self {
            prefix: b"--- pop: started pid ".to_vec(),
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
        let parts: [&[u8]; 3] = [&self.prefix, &digits[digits.len() - nd..], &self.suffix];
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

/// Runs in the forked child before exec (after stdio is set up): join the
/// cgroup (so nothing the service does can escape it), start a new session
/// (own process group, no controlling terminal) and write the start marker.
fn child_setup(cgroup_procs: Option<&CStr>, marker: Option<&StartMarker>) -> io::Result<()> {
    if let Some(path) = cgroup_procs {
        // SAFETY: raw syscalls on a valid NUL-terminated path and a local buffer.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
    }
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(marker) = marker {
        marker.write_from_child();
    }
    Ok(())
}
