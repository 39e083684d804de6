//! Running in a cgroup delegated to the agent (systemd's `Delegate=yes`): the agent's
//! own cgroup is its to manage, so the service cgroups go there rather than at the top of
//! the hierarchy, which belongs to systemd. systemd's rule for a delegated cgroup is that
//! processes live only in leaves, so the agent moves itself into a child, `agent/`, and
//! each service generation gets a sibling of it:
//!
//! ```text
//! /sys/fs/cgroup/system.slice/pop-agent.service/   delegated to the agent
//!     agent/                                       the agent itself
//!     web@3/                                       a service generation
//! ```
//!
//! A cgroup counts as delegated when systemd marks it so: the extended attribute
//! `trusted.delegate` (or `user.delegate`, for a user's service manager) is `1`
//! (systemd 251 and later). pop needs no controller in it: `cgroup.procs`,
//! `cgroup.events` and `cgroup.kill` are in every cgroup.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The child of the delegated cgroup the agent itself lives in.
pub(crate) const AGENT_LEAF: &str = "agent";

/// The cgroup v2 path of this process (`0::/path` in `/proc/self/cgroup`) as a directory
/// under `mount`; `None` at the root, which is never delegated.
fn own_cgroup(mount: &Path) -> Option<PathBuf> {
    let table = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = table.lines().find_map(|l| l.strip_prefix("0::"))?;
    let relative = path.trim().trim_start_matches('/');
    (!relative.is_empty()).then(|| mount.join(relative))
}

/// Whether the extended attribute `name` of `dir` is `1`.
fn xattr_is_one(dir: &Path, name: &str) -> bool {
    let (Ok(path), Ok(name)) = (CString::new(dir.as_os_str().as_bytes()), CString::new(name))
    else {
        return false;
    };
    let mut value = [0u8; 8];
    // SAFETY: both strings are NUL-terminated and outlive the call; the buffer's length
    // is passed with it.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    usize::try_from(n).is_ok_and(|n| value[..n].trim_ascii() == b"1")
}

fn is_delegated(dir: &Path) -> bool {
    xattr_is_one(dir, "trusted.delegate") || xattr_is_one(dir, "user.delegate")
}

/// The delegated cgroup this process runs in: its own cgroup, or the parent of its own
/// when that is already the `agent/` leaf (an agent moved there before, or systemd's
/// `DelegateSubgroup=agent`). `None` when the agent's cgroup is not delegated to it.
pub(crate) fn root(mount: &Path) -> Option<PathBuf> {
    let own = own_cgroup(mount)?;
    if own.file_name().is_some_and(|n| n == AGENT_LEAF) {
        if let Some(parent) = own
            .parent()
            .filter(|p| p.starts_with(mount) && is_delegated(p))
        {
            return Some(parent.to_path_buf());
        }
    }
    is_delegated(&own).then_some(own)
}

/// Moves this process (all its threads) into `<root>/agent/`, so that only leaves hold
/// processes.
pub(crate) fn enter_leaf(root: &Path) -> Result<(), String> {
    let leaf = root.join(AGENT_LEAF);
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
    }
    fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("cannot move the agent into {}: {e}", leaf.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_delegated() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(!is_delegated(dir.path()));
    }
}
