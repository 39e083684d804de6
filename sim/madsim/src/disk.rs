//! A machine's disk, in memory: every journal file its agents started, in order, rotated
//! and torn ones too, so each can be replayed after the run (production keeps only the
//! newest few). madsim's own file system cannot serve: it has no rename or append, and a
//! killed node keeps every byte it wrote.
//!
//! A crash can be aimed at a write: that write stops halfway and the agent node dies on
//! the spot (a panic its node restarts on), as a kill during write(2) leaves a journal.
//! Nothing after the torn line runs.

use pop_io::journal::JournalStore;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// The panic that kills an agent node mid-write; its node is built to restart on it.
pub const CRASH: &str = "simulated crash mid-write";

/// One journal file as written.
#[derive(Debug, Clone)]
pub struct JournalFile {
    /// Which start of the agent wrote it (0 for the first).
    pub incarnation: u32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Disk {
    files: Vec<JournalFile>,
    /// Whole writes left before the planned crash; the next one after them is torn.
    crash_after: Option<u32>,
    /// The agent incarnations that died tearing a write.
    crashed: Vec<u32>,
}

impl Disk {
    pub fn files(&self) -> &[JournalFile] {
        &self.files
    }

    /// Tears the write after the next `writes` (0: the very next one).
    pub fn crash_after(&mut self, writes: u32) {
        self.crash_after = Some(writes);
    }

    /// Calls off a crash not yet happened.
    pub fn cancel_crash(&mut self) {
        self.crash_after = None;
    }

    pub fn crashed(&self, incarnation: u32) -> bool {
        self.crashed.contains(&incarnation)
    }

    pub fn crash_pending(&self) -> bool {
        self.crash_after.is_some()
    }
}

/// The journal store of one agent incarnation, on its machine's disk.
pub struct DiskStore {
    pub(crate) disk: Arc<Mutex<Disk>>,
    pub(crate) incarnation: u32,
    pub(crate) machine: String,
}

pub(crate) fn lock(disk: &Mutex<Disk>) -> MutexGuard<'_, Disk> {
    disk.lock().unwrap_or_else(|e| e.into_inner())
}

impl JournalStore for DiskStore {
    fn location(&self) -> String {
        format!("{}:journal#{}", self.machine, self.incarnation)
    }

    fn start_fresh(&mut self, _keep: u32) -> io::Result<()> {
        lock(&self.disk).files.push(JournalFile {
            incarnation: self.incarnation,
            bytes: Vec::new(),
        });
        Ok(())
    }

    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let torn = {
            let mut disk = lock(&self.disk);
            let torn = match disk.crash_after {
                Some(0) => {
                    disk.crash_after = None;
                    true
                }
                Some(n) => {
                    disk.crash_after = Some(n - 1);
                    false
                }
                None => false,
            };
            let written = if torn { &line[..line.len() / 2] } else { line };
            let Some(file) = disk.files.last_mut() else {
                return Err(io::Error::other("no journal file started"));
            };
            file.bytes.extend_from_slice(written);
            if torn {
                disk.crashed.push(self.incarnation);
            }
            torn
        };
        // The lock is released first: a panic holding it would poison the disk.
        if torn {
            panic!("{CRASH}");
        }
        Ok(())
    }
}
