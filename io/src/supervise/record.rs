//! Run records: `<state_dir>/run/<service>@<generation>.json`, one per
//! running generation, so that the next agent can tell whether a process it
//! finds is provably the one this agent started (see `adopt.rs`).
//!
//! A record is written atomically (temporary file + rename) right after the
//! spawn, before `Spawned` is sent, rewritten when the readiness probe reports a
//! port, and deleted just after the generation's `Exited` is sent.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::procfs;

/// Where a generation's processes are held, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordContainment {
    /// The generation's cgroup directory.
    Cgroup(PathBuf),
    /// The process group (the main process's pid).
    Pgid(i32),
}

/// What a `<state_dir>/run/<service>@<generation>.json` file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub service: String,
    pub generation: u64,
    /// The main process.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: with `boot_id`, identifies the process
    /// even if its pid is later reused.
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id` at spawn.
    pub boot_id: String,
    /// The value of `POP_SUPERVISION_TOKEN` in the generation's processes.
    pub token: String,
    pub containment: RecordContainment,
    /// Wall-clock spawn time, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// TERM-to-KILL grace for leftovers when the main process exits by itself.
    pub exit_grace_ms: u64,
    /// The port the readiness probe found, once it has.
    pub port: Option<u16>,
    /// [`super::ProcessSpec::note`], verbatim.
    pub note: serde_json::Value,
}

/// `<run_dir>/<service>@<generation>.json`.
pub(crate) fn record_path(run_dir: &Path, service: &str, generation: u64) -> PathBuf {
    run_dir.join(format!("{service}@{generation}.json"))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Writes `rec` to `path` atomically: a reader sees the old or the new
/// content, never a torn file.
pub(crate) fn write_atomic(path: &Path, rec: &RunRecord) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Settings are in it: the agent's user's alone, from its creation (a leftover
    // temporary file would keep its mode).
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::state_dir::FILE_MODE)
        .open(&tmp)?;
    file.write_all(&json)?;
    drop(file);
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Reads and parses a record.
pub(crate) fn read(path: &Path) -> Result<RunRecord, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Deletes a record; a missing file is fine.
pub(crate) fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot remove run record");
        }
    }
}

/// A record still missing what only the running process can tell (its start time)
/// and the boot id.
#[derive(Debug)]
pub(crate) struct RecordDraft {
    pub path: PathBuf,
    pub service: String,
    pub generation: u64,
    pub pid: u32,
    pub token: String,
    pub containment: RecordContainment,
    pub started_at_ms: u64,
    pub exit_grace_ms: u64,
    pub note: serde_json::Value,
}

impl RecordDraft {
    /// Completes and writes the record (blocking). Without one, the generation cannot
    /// be adopted (a later agent kills it instead), so failures are only logged.
    pub fn write(self) -> Option<RunFile> {
        let (Some(stat), Some(boot_id)) = (procfs::stat(self.pid as i32), procfs::boot_id()) else {
            warn!(service = %self.service, pid = self.pid, "cannot identify the process; no run record");
            return None;
        };
        let rec = RunRecord {
            service: self.service,
            generation: self.generation,
            pid: self.pid,
            start_ticks: stat.start_ticks,
            boot_id,
            token: self.token,
            containment: self.containment,
            started_at_ms: self.started_at_ms,
            exit_grace_ms: self.exit_grace_ms,
            port: None,
            note: self.note,
        };
        let service = rec.service.clone();
        RunFile::create(self.path, rec)
            .inspect_err(|e| warn!(%service, error = %e, "cannot write run record"))
            .ok()
    }
}

/// The live record of one running generation, owned by its instance task. Only the
/// file holds the record: kept in memory, its note (the settings) would cost a few
/// KB per running generation, for a port update that comes once if at all.
#[derive(Debug)]
pub(crate) struct RunFile {
    path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    Written,
    /// Removed, so a late port update cannot resurrect the file.
    Removed,
}

impl RunFile {
    /// Writes the record and returns its handle.
    pub fn create(path: PathBuf, record: RunRecord) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            crate::state_dir::create(dir)?;
        }
        write_atomic(&path, &record)?;
        Ok(Self::existing(path))
    }

    /// A handle on a record already on disk (an adopted generation's).
    pub fn existing(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::new(FileState::Written),
        }
    }

    /// Records the port the readiness probe found (blocking: reads and rewrites the
    /// file).
    pub fn set_port(&self, port: u16) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == FileState::Removed {
            return;
        }
        let mut rec = match read(&self.path) {
            Ok(rec) => rec,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read run record to add the port");
                return;
            }
        };
        if rec.port == Some(port) {
            return;
        }
        rec.port = Some(port);
        if let Err(e) = write_atomic(&self.path, &rec) {
            warn!(path = %self.path.display(), error = %e, "cannot rewrite run record");
        }
    }

    pub fn remove(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = FileState::Removed;
        remove(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_port_rewrite() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = record_path(dir.path(), "web", 3);
        assert!(path.ends_with("web@3.json"));
        let rec = RunRecord {
            service: "web".into(),
            generation: 3,
            pid: 42,
            start_ticks: 7,
            boot_id: "b".into(),
            token: "m/web/3".into(),
            containment: RecordContainment::Pgid(42),
            started_at_ms: 1,
            exit_grace_ms: 10_000,
            port: None,
            note: serde_json::json!({"cmd": "x"}),
        };
        let file = RunFile::create(path.clone(), rec.clone())?;
        assert_eq!(read(&path)?, rec);
        file.set_port(8080);
        assert_eq!(read(&path)?.port, Some(8080));
        assert_eq!(fs::read_dir(dir.path())?.count(), 1, "no tmp file left");
        file.remove();
        assert!(!path.exists());
        file.set_port(9090);
        assert!(!path.exists(), "a late port update does not bring it back");
        fs::write(&path, b"{not json")?;
        assert!(read(&path).is_err());
        Ok(())
    }
}
