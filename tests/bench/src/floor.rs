//! The fork/exec floor: the least any supervisor can do after a crash. A dedicated
//! process forks and execs the service again the moment `waitpid` returns, with nothing
//! else to do; pop's restart latency is judged against this, measured in the same run.

use anyhow::{anyhow, Context, Result};
use std::ffi::CString;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::measure::monotonic_ns;

/// An argument vector ready for execv, built before any fork.
struct Argv {
    args: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl Argv {
    fn new(argv: &[String]) -> Result<Argv> {
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| anyhow!("argument {a:?} holds a NUL")))
            .collect::<Result<_>>()?;
        if args.is_empty() {
            return Err(anyhow!("nothing to run"));
        }
        let mut pointers: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        pointers.push(std::ptr::null());
        Ok(Argv { args, pointers })
    }

    fn fork_exec(&self) -> Result<libc::pid_t> {
        // SAFETY: the child only calls execv and _exit, both async-signal-safe; the
        // argument vector was built before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::execv(self.args[0].as_ptr(), self.pointers.as_ptr());
                libc::_exit(127);
            }
        }
        Ok(pid)
    }
}

/// The floor supervisor's loop (the hidden `pop-bench floor STAMP FILE NAME...`
/// command): starts `STAMP FILE NAME` for every name, one after the other, then
/// restarts whichever exits the moment `waitpid` returns it.
pub fn supervise(stamp: &str, file: &str, names: &[String]) -> Result<()> {
    // Started, but forks nothing until told: a deploy is timed from `Floor::go`, not
    // from this process's own start.
    let mut go = [0u8; 1];
    std::io::Read::read_exact(&mut std::io::stdin(), &mut go).context("waiting for go")?;
    let mut running = std::collections::BTreeMap::new();
    for name in names {
        let argv = Argv::new(&[stamp.to_string(), file.to_string(), name.clone()])?;
        running.insert(argv.fork_exec()?, argv);
    }
    loop {
        let mut status = 0;
        // SAFETY: waits for any of our children.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waitpid");
        }
        if let Some(argv) = running.remove(&pid) {
            running.insert(argv.fork_exec()?, argv);
        }
    }
}

/// A floor supervisor running the stamp program once per name, killed when dropped.
pub struct Floor {
    child: Child,
}

impl Floor {
    pub fn start(
        bench_exe: &Path,
        stamp_exe: &Path,
        stamp_file: &Path,
        names: &[String],
    ) -> Result<Floor> {
        let child = Command::new(bench_exe)
            .arg("floor")
            .arg(stamp_exe)
            .arg(stamp_file)
            .args(names)
            .stdin(Stdio::piped())
            .spawn()
            .context("starting the floor supervisor")?;
        Ok(Floor { child })
    }

    /// The floor supervisor's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it start its services; returns the clock just before.
    pub fn go(&mut self) -> Result<u128> {
        let at = monotonic_ns();
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("the floor supervisor has no stdin"))?;
        stdin
            .write_all(b"g")
            .context("starting the floor supervisor's services")?;
        Ok(at)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // Its service process is left behind; `measure::kill_stamped` ends it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
