//! The agent's state directory is its user's alone: settings (and so services'
//! environments, which may hold secrets) are in its journal and run records. New files
//! that hold them are created 0600 (see `journal`, `supervise::record`); this module
//! creates the directory 0700 and, as an agent starts, tightens what an earlier agent
//! (or an earlier pop) left looser.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The directory's mode; a service running as another user opens it to 0711 (passing
/// through, never listing: see `supervise::credentials`).
pub const DIR_MODE: u32 = 0o700;
/// The mode of files that hold settings.
pub const FILE_MODE: u32 = 0o600;

/// Creates the state directory (and missing parents) 0700.
pub fn create(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates the state directory if needed and takes from it, its run records'
/// directory, run records and journals (the rotated ones too) every permission of group
/// and others. Returns what it changed, for the log.
pub fn secure(dir: &Path) -> io::Result<Vec<String>> {
    create(dir)?;
    let mut changed = Vec::new();
    tighten(dir, DIR_MODE, &mut changed)?;
    let run = dir.join("run");
    if run.is_dir() {
        tighten(&run, DIR_MODE, &mut changed)?;
        for entry in fs::read_dir(&run)? {
            let path = entry?.path();
            if path.is_file() {
                tighten(&path, FILE_MODE, &mut changed)?;
            }
        }
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let journal = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("journal.jsonl"));
        if journal && path.is_file() {
            tighten(&path, FILE_MODE, &mut changed)?;
        }
    }
    Ok(changed)
}

/// Lets others pass through the state directory (0711: search, never list), so a
/// service running as another user reaches its working directory and Python
/// environment inside it. Called as such a service is launched or adopted.
pub fn let_others_through(dir: &Path) -> io::Result<()> {
    let now = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if now & 0o011 != 0o011 {
        fs::set_permissions(dir, Permissions::from_mode(now | 0o011))?;
    }
    Ok(())
}

/// Clears the permissions of group and others that `mode` does not have.
fn tighten(path: &Path, mode: u32, changed: &mut Vec<String>) -> io::Result<()> {
    let now = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    let tight = now & !(0o077 & !mode);
    if tight != now {
        fs::set_permissions(path, Permissions::from_mode(tight))?;
        changed.push(format!("{} {now:04o} -> {tight:04o}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn what_others_could_read_is_tightened_and_the_rest_left_alone() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("a/state");
        create(&dir).expect("created");
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir(dir.join("run")).expect("run dir");
        for (name, m) in [
            ("run/web@1.json", 0o644),
            ("journal.jsonl", 0o644),
            ("journal.jsonl.2", 0o640),
            ("agent.log", 0o644),
        ] {
            fs::write(dir.join(name), "x").expect("written");
            fs::set_permissions(dir.join(name), Permissions::from_mode(m)).expect("chmod");
        }
        let changed = secure(&dir).expect("secured");
        assert_eq!(changed.len(), 5, "{changed:?}");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("run")), 0o700);
        assert_eq!(mode(&dir.join("run/web@1.json")), 0o600);
        assert_eq!(mode(&dir.join("journal.jsonl")), 0o600);
        assert_eq!(mode(&dir.join("journal.jsonl.2")), 0o600);
        assert_eq!(mode(&dir.join("agent.log")), 0o644, "not pop's to tighten");
        assert!(secure(&dir).expect("again").is_empty());
    }
}
