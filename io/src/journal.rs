//! Writes the agent's journal (see `pop_core::journal`): one line per input, appended
//! before the core sees it, and one per batch of actions. Size-bounded: past `max_bytes`
//! journaled after its first line the file is rotated and the new one starts with a
//! snapshot of the core, so every file replays on its own. A snapshot larger than
//! `max_bytes` (an agent with thousands of services) raises the bound to its own size:
//! else every input would rotate and write the whole agent again, O(services) each. A journal that cannot be written is reported once and the agent
//! carries on: supervising services matters more than recording it.

use pop_core::event::{Action, Input};
use pop_core::journal::Record;
use pop_core::{Agent, AgentConfig, Timestamp};
use std::io;
use std::path::{Path, PathBuf};
use tracing::{info, warn};
#[cfg(not(madsim))]
use {
    pop_core::journal::{decode, Journal, JournalError},
    std::fs::{self, File, OpenOptions},
    std::io::Write,
    std::os::unix::fs::OpenOptionsExt,
    thiserror::Error,
};

/// Where the agent's journal lives in its state directory.
pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("journal.jsonl")
}

/// The `n`th older file (`journal.jsonl.1` is the newest of those).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[derive(Debug, Clone, Copy)]
pub struct JournalLimits {
    /// Rotate once more than this (or than the file's first line, a snapshot, if that
    /// is larger) was written after the file's first line.
    pub max_bytes: u64,
    /// Older files kept.
    pub keep: u32,
}

impl Default for JournalLimits {
    fn default() -> Self {
        JournalLimits {
            max_bytes: 16 * 1024 * 1024,
            keep: 2,
        }
    }
}

/// Where journal files are kept: the file system in production ([`FileStore`]), a
/// simulated disk under madsim (sim/madsim).
pub trait JournalStore: Send {
    /// Names the journal in logs.
    fn location(&self) -> String;
    /// Rotates the current file away, keeping `keep` older ones, and starts an empty one.
    fn start_fresh(&mut self, keep: u32) -> io::Result<()>;
    /// Appends one whole line: one write, so only a crash mid-write can tear it.
    fn append(&mut self, line: &[u8]) -> io::Result<()>;
}

/// The journal as files: `journal.jsonl` and its rotated `journal.jsonl.<n>`.
#[cfg(not(madsim))]
pub struct FileStore {
    path: PathBuf,
    file: Option<File>,
}

#[cfg(not(madsim))]
impl FileStore {
    pub fn new(path: PathBuf) -> Self {
        FileStore { path, file: None }
    }
}

#[cfg(not(madsim))]
impl JournalStore for FileStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn start_fresh(&mut self, keep: u32) -> io::Result<()> {
        self.file = None;
        if self.path.exists() {
            for n in (1..keep).rev() {
                let from = rotated_path(&self.path, n);
                if from.exists() {
                    fs::rename(&from, rotated_path(&self.path, n + 1))?;
                }
            }
            if keep == 0 {
                fs::remove_file(&self.path)?;
            } else {
                fs::rename(&self.path, rotated_path(&self.path, 1))?;
            }
        }
        // Settings (and so service environments, which may hold secrets) are journaled:
        // readable by the agent's user only.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.file = Some(file);
        Ok(())
    }

    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_all(line),
            None => Err(io::Error::other("no journal file open")),
        }
    }
}

pub struct JournalWriter {
    /// `None` once the journal could not be written: the agent carries on without it.
    store: Option<Box<dyn JournalStore>>,
    location: String,
    written: u64,
    /// The size of the current file's first line (a start record or a snapshot).
    first: u64,
    limits: JournalLimits,
}

impl JournalWriter {
    /// Starts a new journal for a new agent: an earlier agent's file is rotated away.
    #[cfg(not(madsim))]
    pub fn start(path: PathBuf, config: &AgentConfig, limits: JournalLimits) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        Self::start_in(Box::new(FileStore::new(path)), config, limits)
    }

    /// Starts a new journal in `store`: an earlier agent's file is rotated away.
    pub fn start_in(
        store: Box<dyn JournalStore>,
        config: &AgentConfig,
        limits: JournalLimits,
    ) -> io::Result<Self> {
        let mut writer = JournalWriter {
            location: store.location(),
            store: Some(store),
            written: 0,
            first: 0,
            limits,
        };
        writer.open_fresh(&Record::Start {
            config: config.clone(),
        })?;
        Ok(writer)
    }

    fn open_fresh(&mut self, first: &Record) -> io::Result<()> {
        let Some(store) = self.store.as_mut() else {
            return Err(io::Error::other("the journal is no longer recorded"));
        };
        if let Err(e) = store.start_fresh(self.limits.keep) {
            self.store = None;
            return Err(e);
        }
        self.written = 0;
        self.write(first);
        self.first = self.written;
        Ok(())
    }

    fn write(&mut self, record: &Record) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let mut line = record.to_line();
        line.push('\n');
        // One write per line, so only a crash mid-write can tear one.
        match store.append(line.as_bytes()) {
            Ok(()) => self.written += line.len() as u64,
            Err(e) => {
                warn!(path = %self.location, "cannot write the journal, no longer recording: {e}");
                self.store = None;
            }
        }
    }

    pub fn input(&mut self, at: Timestamp, input: &Input) {
        self.write(&Record::Input {
            at,
            input: input.clone(),
        });
    }

    pub fn actions(&mut self, actions: &[Action]) {
        self.write(&Record::Actions {
            actions: actions.to_vec(),
        });
    }

    /// Between inputs: past the size limit, start a new file with a snapshot of `agent`.
    pub fn rotate_if_full(&mut self, agent: &Agent) {
        let since_first = self.written.saturating_sub(self.first);
        if self.store.is_none() || since_first <= self.limits.max_bytes.max(self.first) {
            return;
        }
        info!(path = %self.location, bytes = self.written, "rotating the journal");
        let snapshot = Record::Snapshot {
            agent: Box::new(agent.clone()),
        };
        if let Err(e) = self.open_fresh(&snapshot) {
            warn!(path = %self.location, "cannot rotate the journal, no longer recording: {e}");
            self.store = None;
        }
    }
}

#[cfg(not(madsim))]
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a journal: not UTF-8 text")]
    NotText { path: PathBuf },
    #[error("{path}: {source}")]
    Bad {
        path: PathBuf,
        #[source]
        source: JournalError,
    },
}

/// Reads and decodes a journal file.
#[cfg(not(madsim))]
pub fn read(path: &Path) -> Result<Journal, ReadError> {
    let bytes = fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // A torn last line may end inside a multi-byte character: keep the valid prefix.
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let tail_has_newline = bytes[valid..].contains(&b'\n');
            if tail_has_newline {
                return Err(ReadError::NotText {
                    path: path.to_path_buf(),
                });
            }
            String::from_utf8_lossy(&bytes[..valid]).into_owned()
        }
    };
    decode(&text).map_err(|source| ReadError::Bad {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use pop_core::backoff::Backoff;
    use pop_core::names::MachineId;

    fn config() -> AgentConfig {
        AgentConfig {
            machine: MachineId::new("m1").expect("machine id"),
            hostname: "h".into(),
            agent_pid: 1,
            version: "t".into(),
            containment: "none".into(),
            seed: 1,
            backoff: Backoff::default(),
            pop: "/usr/bin/pop".into(),
            state_dir: "/var/lib/pop".into(),
            access: Default::default(),
        }
    }

    fn tick(writer: &mut JournalWriter, agent: &Agent, at: u64) {
        writer.input(
            Timestamp::from_millis(at),
            &Input::Spawned {
                service: "s".into(),
                generation: at,
                pid: 1,
            },
        );
        writer.rotate_if_full(agent);
    }

    /// A snapshot larger than the limit: the next file is not rotated again at once
    /// (each rotation would write the whole agent for every input), only once as much
    /// again was journaled after it.
    #[test]
    fn a_snapshot_over_the_limit_is_not_rewritten_for_every_input() {
        let dir = tempfile::tempdir().expect("dir");
        let path = journal_path(dir.path());
        let limits = JournalLimits {
            max_bytes: 50,
            keep: 5,
        };
        let agent = Agent::new(config());
        let snapshot_len = Record::Snapshot {
            agent: Box::new(agent.clone()),
        }
        .to_line()
        .len();
        assert!(snapshot_len > 200, "the snapshot is over the limit");
        let mut writer = JournalWriter::start(path.clone(), &config(), limits).expect("start");
        let longest_input = Record::Input {
            at: Timestamp::from_millis(999),
            input: Input::Spawned {
                service: "s".into(),
                generation: 999,
                pid: 1,
            },
        }
        .to_line()
        .len()
            + 1;
        // Past the limit (or the start record) after the start record: rotated, the new
        // file begins with a snapshot.
        let mut at = 0;
        while !rotated_path(&path, 1).exists() {
            tick(&mut writer, &agent, at);
            at += 1;
            assert!(at < 100, "never rotated");
        }
        let rotated_at = at;
        // A few inputs after the snapshot: not rotated again.
        for _ in 0..3 {
            tick(&mut writer, &agent, at);
            at += 1;
        }
        assert!(!rotated_path(&path, 2).exists(), "no rotation per input");
        // As much as the snapshot journaled after it: rotated again.
        while !rotated_path(&path, 2).exists() {
            tick(&mut writer, &agent, at);
            at += 1;
            assert!(at < 999, "never rotated again");
        }
        let inputs = (at - rotated_at) as usize;
        assert!(
            inputs * longest_input > snapshot_len,
            "rotated after {inputs} inputs, the snapshot is {snapshot_len} bytes"
        );
    }
}
