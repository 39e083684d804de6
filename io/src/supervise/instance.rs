//! The task that watches one running service generation from spawn to
//! `Exited`: it waits for the main process, escalates TERM -> KILL on
//! request (or when the main process left leftovers behind), and reports
//! the exit only once the containment is empty. Spawned and adopted
//! generations differ only in how the main process's exit is learnt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::adopt::ExitFuture;
use super::containment::Group;
use super::logs::{self, SharedLog};
use super::record::RunFile;
use super::{readiness, ExitStatus, ReadinessProbe, SupervisorEvent};

const POLL: Duration = Duration::from_millis(50);

/// What the supervisor keeps about a running generation.
#[derive(Debug)]
pub(crate) struct Handle {
    pub pid: u32,
    pub stop: UnboundedSender<Duration>,
    pub task: Option<JoinHandle<()>>,
}

pub(crate) type Table = Arc<Mutex<HashMap<(String, u64), Handle>>>;

pub(crate) fn lock(table: &Table) -> MutexGuard<'_, HashMap<(String, u64), Handle>> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the instance task owns.
pub(crate) struct Instance {
    pub service: String,
    pub generation: u64,
    pub pid: u32,
    pub group: Arc<Group>,
    /// `None` if the log could not be opened (adopted generations only).
    pub log: Option<SharedLog>,
    /// The run record, deleted just before `Exited` is sent.
    pub record: Option<Arc<RunFile>>,
    pub events: UnboundedSender<SupervisorEvent>,
    pub table: Table,
    pub exit_grace: Duration,
    pub probe: Option<ReadinessProbe>,
}

impl Instance {
    /// Registers the generation in the table and starts its task; `exit`
    /// resolves with the main process's status.
    pub fn start(self, exit: ExitFuture) {
        let key = (self.service.clone(), self.generation);
        let table = Arc::clone(&self.table);
        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        lock(&table).insert(
            key.clone(),
            Handle {
                pid: self.pid,
                stop: stop_tx,
                task: None,
            },
        );
        let task = tokio::spawn(self.run(exit, stop_rx));
        // The task may already have finished and removed its entry.
        if let Some(h) = lock(&table).get_mut(&key) {
            h.task = Some(task);
        };
    }

    async fn run(mut self, mut exit: ExitFuture, mut stop_rx: UnboundedReceiver<Duration>) {
        let probe_task = self.probe.take().map(|probe| {
            tokio::spawn(readiness::run(
                probe,
                Arc::clone(&self.group),
                self.record.clone(),
                self.events.clone(),
                self.service.clone(),
                self.generation,
            ))
        });

        let mut status: Option<ExitStatus> = None;
        // Set once TERM has been sent; KILL is sent (repeatedly) from then on.
        let mut kill_at: Option<Instant> = None;
        let mut stop_open = true;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                st = &mut exit, if status.is_none() => {
                    info!(service = %self.service, generation = self.generation, pid = self.pid, status = %st, "main process exited");
                    status = Some(st);
                    if kill_at.is_none() {
                        // Leftovers of a main process that exited by itself.
                        self.group.signal_all(Signal::SIGTERM);
                        kill_at = Some(Instant::now() + self.exit_grace);
                    }
                }
                req = stop_rx.recv(), if stop_open => match req {
                    Some(grace) => {
                        debug!(service = %self.service, generation = self.generation, ?grace, "stopping");
                        let at = Instant::now() + grace;
                        if kill_at.is_none() {
                            self.group.signal_all(Signal::SIGTERM);
                        }
                        kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
                    }
                    None => stop_open = false,
                },
                _ = tick.tick() => {}
            }
            if kill_at.is_some_and(|k| Instant::now() >= k) {
                self.group.signal_all(Signal::SIGKILL);
            }
            if status.is_some() && self.group.is_empty() {
                break;
            }
        }
        let status = status.unwrap_or(ExitStatus {
            code: None,
            signal: None,
        });

        if let Some(task) = probe_task {
            task.abort();
            let _ = task.await;
        }
        // Every process is gone, so the marker follows all of their output.
        if let Some(log) = &self.log {
            logs::lock(log).marker(&format!(
                "exited {status} (pid {}, generation {})",
                self.pid, self.generation
            ));
        }
        let group = Arc::clone(&self.group);
        if tokio::task::spawn_blocking(move || group.remove())
            .await
            .is_err()
        {
            warn!(service = %self.service, "containment cleanup panicked");
        }
        if let Some(record) = &self.record {
            record.remove();
        }
        lock(&self.table).remove(&(self.service.clone(), self.generation));
        info!(service = %self.service, generation = self.generation, %status, "service exited and contained processes are gone");
        let _ = self.events.send(SupervisorEvent::Exited {
            service: self.service,
            generation: self.generation,
            status,
        });
    }
}
