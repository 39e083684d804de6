//! The task that watches one running service generation from spawn to
//! `Exited`: it waits for the main process, escalates TERM -> KILL on
//! request (or when the main process left leftovers behind), and reports
//! the exit only once the containment is empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::containment::Group;
use super::logs::{self, SharedLog};
use super::{readiness, ExitStatus, ReadinessProbe, SupervisorEvent};

const POLL: Duration = Duration::from_millis(50);
/// How long to wait for the log pump to drain once every process is gone.
const LOG_DRAIN: Duration = Duration::from_secs(2);

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
    pub log: SharedLog,
    pub log_done: Option<oneshot::Receiver<()>>,
    pub events: UnboundedSender<SupervisorEvent>,
    pub table: Table,
    pub exit_grace: Duration,
    pub probe: Option<ReadinessProbe>,
}

impl Instance {
    pub async fn run(
        mut self,
        mut exit_rx: oneshot::Receiver<ExitStatus>,
        mut stop_rx: UnboundedReceiver<Duration>,
    ) {
        let probe_task = self.probe.take().map(|probe| {
            tokio::spawn(readiness::run(
                probe,
                Arc::clone(&self.group),
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
                got = &mut exit_rx, if status.is_none() => {
                    // A dropped sender cannot happen short of a reaper bug;
                    // report an unknown status rather than hang.
                    let st = got.unwrap_or(ExitStatus { code: None, signal: None });
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
        // Every writer of the pipe is dead now, so the pump sees EOF soon.
        if let Some(done) = self.log_done.take() {
            if tokio::time::timeout(LOG_DRAIN, done).await.is_err() {
                warn!(service = %self.service, "log pump did not finish");
            }
        }
        logs::lock(&self.log).marker(&format!(
            "exited {status} (pid {}, generation {})",
            self.pid, self.generation
        ));
        let group = Arc::clone(&self.group);
        if tokio::task::spawn_blocking(move || group.remove())
            .await
            .is_err()
        {
            warn!(service = %self.service, "containment cleanup panicked");
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
