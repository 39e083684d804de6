//! Services' working directories, created once and their physical paths remembered.
//!
//! A spawn needs its working directory to exist and, when the command is exec'd without
//! `sh`, its physical path for `PWD`. Creating it (`mkdir`, failing with EEXIST, then a
//! `stat`) and resolving it (a `readlink` per component) at every spawn put six system
//! calls on the restart path. Here they are done at a service's first spawn, and again
//! only when its directory changes: a later spawn costs one `stat`, which also tells
//! whether the directory is still the same one (same device and inode), so one that was
//! removed is created again and one that a symlink now points elsewhere is resolved
//! again, as before.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tracing::warn;

/// Below this many entries the cache is never pruned.
const PRUNE_FLOOR: usize = 64;

/// What is known of one service's working directory.
#[derive(Debug)]
struct Known {
    dir: PathBuf,
    /// Device and inode of the directory when it was resolved.
    identity: (u64, u64),
    /// The physical path (no symlinks), as `sh` would set `PWD`.
    physical: String,
}

/// The working directories of the services spawned, by service.
#[derive(Debug)]
pub(crate) struct WorkDirs {
    by_service: BTreeMap<String, Known>,
    /// Once the cache holds this many entries, those of services with nothing running
    /// are dropped (so removed services do not accumulate).
    prune_at: usize,
    /// How many times a directory was created and resolved (for tests).
    #[cfg(test)]
    resolved: usize,
}

impl Default for WorkDirs {
    fn default() -> Self {
        WorkDirs {
            by_service: BTreeMap::new(),
            prune_at: PRUNE_FLOOR,
            #[cfg(test)]
            resolved: 0,
        }
    }
}

impl WorkDirs {
    /// Makes sure `dir`, the working directory of `service`, exists; returns its
    /// physical path, or `None` when it cannot be created or resolved (then the spawn
    /// goes ahead and fails or succeeds on its own, as it would have).
    /// `running` names the services with a generation running; it is asked only now
    /// and then, to drop the entries of the others.
    pub fn prepare(
        &mut self,
        service: &str,
        dir: &Path,
        running: impl FnOnce() -> BTreeSet<String>,
    ) -> Option<String> {
        if let Some(known) = self.by_service.get(service).filter(|k| k.dir == dir) {
            let same = std::fs::metadata(dir)
                .is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == known.identity);
            if same {
                return Some(known.physical.clone());
            }
        }
        self.by_service.remove(service);
        self.prune(service, running);
        let known = self.resolve(service, dir)?;
        let physical = known.physical.clone();
        self.by_service.insert(service.to_string(), known);
        Some(physical)
    }

    fn resolve(&mut self, service: &str, dir: &Path) -> Option<Known> {
        #[cfg(test)]
        {
            self.resolved += 1;
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            warn!(%service, "cannot create working directory {}: {e}", dir.display());
            return None;
        }
        let physical = std::fs::canonicalize(dir).ok()?;
        let metadata = std::fs::metadata(&physical).ok()?;
        Some(Known {
            dir: dir.to_path_buf(),
            identity: (metadata.dev(), metadata.ino()),
            physical: physical.to_string_lossy().into_owned(),
        })
    }

    /// Drops the entries of services with nothing running but `keep`, once the cache
    /// has doubled since the last time: amortized O(1) per spawn.
    fn prune(&mut self, keep: &str, running: impl FnOnce() -> BTreeSet<String>) {
        if self.by_service.len() < self.prune_at {
            return;
        }
        let running = running();
        self.by_service
            .retain(|service, _| service == keep || running.contains(service));
        self.prune_at = (self.by_service.len() * 2).max(PRUNE_FLOOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn a_restart_does_not_create_or_resolve_again() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("work/web");
        let mut dirs = WorkDirs::default();
        let physical = dirs.prepare("web", &dir, none);
        assert!(dir.is_dir(), "created at the first spawn");
        let expected = std::fs::canonicalize(&dir)?;
        assert_eq!(physical.as_deref(), expected.to_str());
        assert_eq!(dirs.prepare("web", &dir, none), physical);
        assert_eq!(dirs.prepare("web", &dir, none), physical);
        assert_eq!(dirs.resolved, 1, "resolved once for three spawns");
        Ok(())
    }

    #[test]
    fn a_removed_directory_is_created_again() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("work/web");
        let mut dirs = WorkDirs::default();
        let physical = dirs.prepare("web", &dir, none);
        std::fs::remove_dir(&dir)?;
        assert_eq!(dirs.prepare("web", &dir, none), physical);
        assert!(dir.is_dir());
        assert_eq!(dirs.resolved, 2);
        // Removed and made again by someone else: resolved again, or found the same if
        // the file system gave it the old inode number (tmpfs and ext4 may); the path
        // is the same either way.
        std::fs::remove_dir(&dir)?;
        std::fs::create_dir(&dir)?;
        assert_eq!(dirs.prepare("web", &dir, none), physical);
        Ok(())
    }

    #[test]
    fn a_symlink_pointed_elsewhere_gives_the_new_physical_path() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir(&a)?;
        std::fs::create_dir(&b)?;
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&a, &link)?;
        let mut dirs = WorkDirs::default();
        let physical_a = std::fs::canonicalize(&a)?;
        assert_eq!(
            dirs.prepare("web", &link, none).as_deref(),
            physical_a.to_str()
        );
        std::fs::remove_file(&link)?;
        std::os::unix::fs::symlink(&b, &link)?;
        let physical_b = std::fs::canonicalize(&b)?;
        assert_eq!(
            dirs.prepare("web", &link, none).as_deref(),
            physical_b.to_str()
        );
        Ok(())
    }

    #[test]
    fn new_settings_with_another_directory_are_resolved() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let (one, two) = (root.path().join("one"), root.path().join("two"));
        let mut dirs = WorkDirs::default();
        dirs.prepare("web", &one, none);
        let physical = dirs.prepare("web", &two, none);
        assert!(two.is_dir());
        assert_eq!(
            physical,
            std::fs::canonicalize(&two)?.to_str().map(String::from)
        );
        assert_eq!(dirs.resolved, 2);
        Ok(())
    }

    #[test]
    fn entries_of_services_not_running_are_dropped_in_time() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let mut dirs = WorkDirs::default();
        let running: BTreeSet<String> = ["s0".to_string()].into();
        for i in 0..(PRUNE_FLOOR * 4) {
            let name = format!("s{i}");
            dirs.prepare(&name, &root.path().join(&name), || running.clone());
            assert!(dirs.by_service.len() <= PRUNE_FLOOR, "bounded by the floor");
        }
        assert!(
            dirs.by_service.contains_key("s0"),
            "a running service is kept"
        );
        Ok(())
    }
}
