//! cgroup v2 containment: one cgroup per service generation.
//!
//! The child joins its cgroup in `pre_exec`, before running any service code,
//! so everything it ever forks is a member. `cgroup.kill` kills the whole tree
//! atomically (no fork race) and `cgroup.events` says when it is empty.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::delegated;

/// Finds the cgroup2 mount point in `/proc/self/mounts`.
pub(crate) fn find_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(dir)))
    })
}

/// /proc/mounts escapes spaces etc. as `\040`-style octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where this agent's service cgroups go, checked to be usable: the agent's own cgroup
/// when it is delegated to it (the agent then moves into its `agent/` leaf; see
/// `delegated`), else `<mount>/pop/<machine_id>`. Returns the directory, or why cgroups
/// are unusable.
pub(crate) fn prepare_services_dir(machine_id: &str) -> Result<PathBuf, String> {
    let mount = find_mount().ok_or_else(|| "no cgroup2 mount in /proc/self/mounts".to_string())?;
    if let Some(root) = delegated::root(&mount) {
        probe(&root)?;
        delegated::enter_leaf(&root)?;
        return Ok(root);
    }
    let dir = legacy_dir(&mount, machine_id);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    probe(&dir)?;
    Ok(dir)
}

/// `<mount>/pop/<machine_id>`: the service cgroups of an agent whose own cgroup is not
/// delegated to it.
pub(crate) fn legacy_dir(mount: &Path, machine_id: &str) -> PathBuf {
    mount.join("pop").join(machine_id)
}

/// A throwaway child proves we may create service cgroups in `dir`, and that the kernel
/// has cgroup.kill (5.14+), which we rely on.
fn probe(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let _ = fs::remove_dir(&probe);
    fs::create_dir(&probe).map_err(|e| format!("cannot create {}: {e}", probe.display()))?;
    let ok = (|| {
        if !probe.join("cgroup.kill").exists() {
            return Err("kernel lacks cgroup.kill".to_string());
        }
        fs::OpenOptions::new()
            .write(true)
            .open(probe.join("cgroup.procs"))
            .map_err(|e| format!("cgroup.procs not writable: {e}"))?;
        Ok(())
    })();
    let _ = fs::remove_dir(&probe);
    ok
}

/// One service generation's cgroup.
#[derive(Debug)]
pub(crate) struct CgroupGroup {
    dir: PathBuf,
}

impl CgroupGroup {
    /// Creates the cgroup; fails with `AlreadyExists` if an earlier run of the same
    /// generation left it (see [`CgroupGroup::reclaim`]).
    pub fn create(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Takes over a cgroup left by an earlier run of the same generation: kills what
    /// is in it and waits (blocking, at most 5 s) until it is empty.
    pub fn reclaim(dir: PathBuf) -> io::Result<Self> {
        let g = Self { dir };
        g.kill_all();
        if !g.wait_empty(Duration::from_secs(5)) {
            return Err(io::Error::other(format!(
                "{} still holds processes after SIGKILL",
                g.dir.display()
            )));
        }
        Ok(g)
    }

    /// An existing cgroup (an adopted generation's); nothing is created.
    pub fn existing(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `pid` is directly in this cgroup.
    pub fn contains(&self, pid: i32) -> bool {
        self.members().contains(&pid)
    }

    /// Path of `cgroup.procs` as a C string, for the async-signal-safe
    /// `pre_exec` hook (which must not allocate).
    pub fn procs_path(&self) -> io::Result<CString> {
        CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// `cgroup.events`, whose `populated` line says whether anything is left.
    pub fn events_path(&self) -> PathBuf {
        self.dir.join("cgroup.events")
    }

    /// The processes directly in this cgroup.
    pub fn members(&self) -> Vec<i32> {
        procs_of(&self.dir)
    }

    /// The processes in this cgroup and in any cgroup a service made inside it.
    pub fn all_members(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in subtree(&self.dir) {
            pids.extend(procs_of(&dir));
        }
        pids
    }

    pub fn signal_all(&self, sig: Signal) {
        if sig == Signal::SIGKILL {
            self.kill_all();
            return;
        }
        for pid in self.all_members() {
            // ESRCH: it exited meanwhile.
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    fn kill_all(&self) {
        if let Err(e) = fs::write(self.dir.join("cgroup.kill"), "1") {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(dir = %self.dir.display(), error = %e, "cgroup.kill failed");
            }
            // Fall back to signalling the pids we can see.
            for pid in self.all_members() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match read_control_file(&self.dir.join("cgroup.events")) {
            Ok(s) => s.lines().any(|l| l.trim() == "populated 0"),
            // The directory is gone: certainly nothing left in it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(_) => self.all_members().is_empty(),
        }
    }

    fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.is_empty() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Removes the (empty) cgroup, and any a service made inside it, deepest first.
    /// Blocking: retries briefly, because the kernel may still be tearing down exiting
    /// tasks.
    pub fn remove(&self) {
        let mut dirs = subtree(&self.dir);
        // Children after their parents in `subtree`, so reversed they go first.
        dirs.reverse();
        for dir in dirs {
            remove_dir_patiently(&dir);
        }
    }
}

fn procs_of(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `dir` and every cgroup below it, parents before children.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while let Some(d) = all.get(i).cloned() {
        if let Ok(entries) = fs::read_dir(&d) {
            // Only directories: the control files are regular files.
            all.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    all
}

/// Reads a small control file such as `cgroup.events` (about 20 bytes) with one `read`:
/// it is read right after every exit, before `Exited` is sent, and `fs::read_to_string`
/// would add a `statx` and a second `read` to the restart's path.
fn read_control_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut buf = [0u8; 256];
    let n = file.read(&mut buf)?;
    let mut text = buf[..n].to_vec();
    if n == buf.len() {
        // Longer than expected: the rest too.
        file.read_to_end(&mut text)?;
    }
    String::from_utf8(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn remove_dir_patiently(dir: &Path) {
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    warn!(dir = %dir.display(), "cannot remove cgroup");
}

/// Kills every process in every cgroup under the services directory (left
/// by an earlier agent that died) and removes those cgroups, except the
/// `spared` ones (adopted generations) and the agent's own leaf. Every group is
/// killed first and then all are waited for together, so start-up waits at most
/// ~5 s however many are stubborn.
pub(crate) fn kill_leftovers(services_dir: &Path, spared: &HashSet<PathBuf>) {
    let Ok(entries) = fs::read_dir(services_dir) else {
        return;
    };
    let stale: Vec<CgroupGroup> = entries
        .filter_map(|e| e.ok())
        // The agent's own leaf in a delegated cgroup is no leftover.
        .filter(|e| e.file_name() != delegated::AGENT_LEAF)
        .map(|e| e.path())
        .filter(|path| path.is_dir() && !spared.contains(path))
        .map(|dir| CgroupGroup { dir })
        .collect();
    for g in stale.iter().filter(|g| !g.is_empty()) {
        warn!(cgroup = %g.dir.display(), pids = ?g.all_members(), "killing leftovers of a previous agent");
        g.kill_all();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for g in &stale {
        if !g.wait_empty(deadline.saturating_duration_since(Instant::now())) {
            warn!(cgroup = %g.dir.display(), "leftover cgroup still populated");
            continue;
        }
        debug!(cgroup = %g.dir.display(), "removing stale cgroup");
        g.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_files_are_read_whole() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let short = dir.path().join("cgroup.events");
        fs::write(&short, "populated 0\nfrozen 0\n")?;
        assert_eq!(read_control_file(&short)?, "populated 0\nfrozen 0\n");
        // Past the first read's buffer: still all of it.
        let long = dir.path().join("long");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        fs::write(&long, &text)?;
        assert_eq!(read_control_file(&long)?, text);
        Ok(())
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
