//! Writes the agent's journal (see `pop_core::journal`): one line per input, appended
//! before the core sees it, and one per batch of actions. Size-bounded: past `max_bytes`
//! the file is rotated and the new one starts with a snapshot of the core, so every file
//! replays on its own. A journal that cannot be written is reported once and the agent
//! carries on: supervising services matters more than recording it.

use pop_core::event::{Action, Input};
use pop_core::journal::{decode, Journal, JournalError, Record};
use pop_core::{Agent, AgentConfig, Timestamp};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tracing::{info, warn};

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
    /// Rotate once the current file is larger than this.
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

pub struct JournalWriter {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    limits: JournalLimits,
}

impl JournalWriter {
    /// Starts a new journal for a new agent: an earlier agent's file is rotated away.
    pub fn start(path: PathBuf, config: &AgentConfig, limits: JournalLimits) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut writer = JournalWriter {
            path,
            file: None,
            written: 0,
            limits,
        };
        writer.open_fresh(&Record::Start {
            config: config.clone(),
        })?;
        Ok(writer)
    }

    fn open_fresh(&mut self, first: &Record) -> io::Result<()> {
        self.file = None;
        if self.path.exists() {
            for n in (1..self.limits.keep).rev() {
                let from = rotated_path(&self.path, n);
                if from.exists() {
                    fs::rename(&from, rotated_path(&self.path, n + 1))?;
                }
            }
            if self.limits.keep == 0 {
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
        self.written = 0;
        self.write(first);
        Ok(())
    }

    fn write(&mut self, record: &Record) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut line = record.to_line();
        line.push('\n');
        // One write per line, so only a crash mid-write can tear one.
        match file.write_all(line.as_bytes()) {
            Ok(()) => self.written += line.len() as u64,
            Err(e) => {
                warn!(path = %self.path.display(), "cannot write the journal, no longer recording: {e}");
                self.file = None;
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
        if self.file.is_none() || self.written <= self.limits.max_bytes {
            return;
        }
        info!(path = %self.path.display(), bytes = self.written, "rotating the journal");
        let snapshot = Record::Snapshot {
            agent: Box::new(agent.clone()),
        };
        if let Err(e) = self.open_fresh(&snapshot) {
            warn!(path = %self.path.display(), "cannot rotate the journal, no longer recording: {e}");
            self.file = None;
        }
    }
}

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
