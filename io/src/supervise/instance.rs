//! The task that watches one running service generation from spawn to
//! `Exited`: it waits for the main process, escalates TERM -> KILL on
//! request (or when the main process left leftovers behind), and reports
//! the exit once the containment is empty. Spawned and adopted generations
//! differ only in how the main process's exit is learnt.
//!
//! Nothing here polls. The task sleeps until the main process exits (told by its pidfd,
//! or by the reaper), a stop is requested, or a KILL is due. Emptiness is
//! checked once right after the main exit; only if something is left is it watched:
//! `cgroup.events` through inotify in cgroup mode, the leftovers' pidfds in
//! process-group mode (then the group is scanned again). Without inotify or pidfds it
//! falls back to a timer, still only while leftovers exist.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::adopt::ExitFuture;
use super::containment::scan::Scanner;
use super::containment::Group;
use super::logs::SharedLog;
use super::record::RunFile;
use super::stop::{stop_cell, StopReceiver, StopSender};
use super::watch::{Interest as Change, Registration, Watcher};
use super::{pidfd, readiness, ExitStatus, ReadinessProbe, SupervisorEvent};

/// How often leftovers are looked for when they cannot be watched.
const UNWATCHED_POLL: Duration = Duration::from_millis(100);
/// At most this many leftovers are waited for through pidfds at once; with more, a
/// timer backs them up.
const MAX_PIDFDS: usize = 64;

pub(crate) type Key = (String, u64);

/// Where a generation is in the supervisor's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Being spawned off the event loop (an old cgroup of the same name is reclaimed).
    Starting,
    Running {
        pid: u32,
    },
    /// `Exited` was sent; its record and cgroup are being removed.
    CleaningUp,
}

/// What the supervisor keeps about a generation.
#[derive(Debug)]
pub(crate) struct Handle {
    pub phase: Phase,
    pub stop: StopSender,
    pub task: Option<JoinHandle<()>>,
}

/// Every generation from spawn to the end of its clean-up.
#[derive(Debug, Default)]
pub(crate) struct Table {
    entries: Mutex<HashMap<Key, Handle>>,
    emptied: Notify,
}

impl Table {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<Key, Handle>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a generation in `phase`; `None` if it is already there.
    pub fn register(&self, key: Key, phase: Phase) -> Option<StopReceiver> {
        let mut entries = self.lock();
        if entries.contains_key(&key) {
            return None;
        }
        let (stop, stop_rx) = stop_cell();
        entries.insert(
            key,
            Handle {
                phase,
                stop,
                task: None,
            },
        );
        Some(stop_rx)
    }

    pub fn set_phase(&self, key: &Key, phase: Phase) {
        if let Some(h) = self.lock().get_mut(key) {
            h.phase = phase;
        }
    }

    pub fn remove(&self, key: &Key) {
        let mut entries = self.lock();
        entries.remove(key);
        if entries.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Resolves once the table is empty.
    pub async fn emptied(&self) {
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Everything the instance task owns.
pub(crate) struct Instance {
    pub service: String,
    pub generation: u64,
    pub pid: u32,
    pub group: Arc<Group>,
    /// `None` if the log could not be opened (adopted generations only).
    pub log: Option<SharedLog>,
    /// The run record, deleted just after `Exited` is sent.
    pub record: Option<Arc<RunFile>>,
    pub events: UnboundedSender<SupervisorEvent>,
    pub table: Arc<Table>,
    pub watcher: Arc<Watcher>,
    pub scanner: Arc<Scanner>,
    pub exit_grace: Duration,
    pub probe: Option<ReadinessProbe>,
}

/// How the leftovers of an exited main process are waited for.
enum Leftovers {
    /// `cgroup.events` changes.
    Watched(Registration),
    /// The processes found by the last scan (process-group mode); `backup` when not all
    /// of them could be given a pidfd.
    Exits {
        pidfds: Vec<AsyncFd<OwnedFd>>,
        backup: Option<tokio::time::Interval>,
    },
    /// Neither works: look again now and then.
    Poll(tokio::time::Interval),
}

impl Leftovers {
    fn poll() -> Leftovers {
        Leftovers::Poll(tokio::time::interval_at(
            Instant::now() + UNWATCHED_POLL,
            UNWATCHED_POLL,
        ))
    }

    /// Resolves when the group may have emptied and should be checked again.
    async fn changed(&mut self) {
        match self {
            Leftovers::Watched(registration) => registration.changed().await,
            Leftovers::Poll(every) => {
                every.tick().await;
            }
            Leftovers::Exits { pidfds, backup } => {
                let all_exited = async {
                    for fd in pidfds.iter() {
                        if fd.readable().await.is_err() {
                            // Cannot tell; the backup (or the next scan) does.
                            std::future::pending::<()>().await;
                        }
                    }
                };
                match backup {
                    Some(every) => tokio::select! {
                        () = all_exited => {}
                        _ = every.tick() => {}
                    },
                    None => all_exited.await,
                }
            }
        }
    }

    /// Waits for the exits of `pids` (the group's members) through pidfds.
    fn exits_of(pids: &[i32]) -> Leftovers {
        let mut pidfds = Vec::new();
        let mut complete = pids.len() <= MAX_PIDFDS;
        for &pid in pids.iter().take(MAX_PIDFDS) {
            let fd = pidfd::open(pid).and_then(|fd| {
                // SAFETY: `OwnedFd` owns a valid descriptor, always returns it from
                // `as_raw_fd`, and closes it only when dropped with the `AsyncFd`.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(std::io::Error::from)
            });
            match fd {
                Ok(fd) => pidfds.push(fd),
                // Already gone.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(_) => complete = false,
            }
        }
        if pidfds.is_empty() {
            return Leftovers::poll();
        }
        let backup = (!complete)
            .then(|| tokio::time::interval_at(Instant::now() + UNWATCHED_POLL, UNWATCHED_POLL));
        Leftovers::Exits { pidfds, backup }
    }
}

impl Instance {
    /// Starts the task and records it in the table, where the generation is already
    /// registered with the receiving end of `stop_rx`. `exit` resolves with the main
    /// process's status. Must run inside the runtime.
    pub fn start(self, exit: ExitFuture, stop_rx: StopReceiver) {
        let key = (self.service.clone(), self.generation);
        let table = Arc::clone(&self.table);
        table.set_phase(&key, Phase::Running { pid: self.pid });
        let task = tokio::spawn(self.run(exit, stop_rx));
        // The task may already have finished and removed its entry.
        if let Some(h) = table.lock().get_mut(&key) {
            h.task = Some(task);
        };
    }

    /// TERM or KILL to every process of the generation; in process-group mode, the
    /// group at once and those that left it after a /proc scan (shared, off the event
    /// loop).
    async fn signal(&self, sig: Signal) {
        match self.group.as_ref() {
            Group::Cgroup(g) => g.signal_all(sig),
            Group::Pgroup(g) => {
                g.signal(sig, &[]);
                let members = self.scanner.members(g).await;
                g.signal(sig, &members);
            }
        }
    }

    /// Whether the group is empty; when it is not, `leftovers` is set up to say when
    /// to look again.
    async fn is_empty(&self, leftovers: &mut Option<Leftovers>) -> bool {
        match self.group.as_ref() {
            Group::Cgroup(g) => {
                if g.is_empty() {
                    return true;
                }
                if leftovers.is_none() {
                    *leftovers = Some(
                        match self.watcher.watch(&g.events_path(), Change::Modified) {
                            Ok(registration) => Leftovers::Watched(registration),
                            Err(e) => {
                                debug!(service = %self.service, error = %e, "cannot watch cgroup.events; polling for leftovers");
                                Leftovers::poll()
                            }
                        },
                    );
                    // It may have emptied before the watch existed.
                    return g.is_empty();
                }
                false
            }
            Group::Pgroup(g) => {
                let members = self.scanner.members(g).await;
                if members.is_empty() {
                    return true;
                }
                *leftovers = Some(Leftovers::exits_of(&members));
                false
            }
        }
    }

    /// The task lives as long as its process, idle nearly always: what runs only on a
    /// stop, an exit or leftovers (signalling, the scan, the clean-up) is boxed when it
    /// runs, so the task's future is only the wait (it was 1.15 KB per generation).
    async fn run(mut self, mut exit: ExitFuture, mut stop_rx: StopReceiver) {
        let record = self.record.take();
        let probe_task = self.probe.take().map(|probe| {
            tokio::spawn(readiness::run(
                probe,
                Arc::clone(&self.group),
                record.clone(),
                self.events.clone(),
                self.service.clone(),
                self.generation,
            ))
        });

        let mut status: Option<ExitStatus> = None;
        // Set once TERM has been sent; KILL follows then.
        let mut kill_at: Option<Instant> = None;
        let mut killed = false;
        let mut leftovers: Option<Leftovers> = None;
        loop {
            let kill_due = kill_at.filter(|_| !killed);
            tokio::select! {
                st = &mut exit, if status.is_none() => {
                    debug!(service = %self.service, generation = self.generation, pid = self.pid, status = %st, "main process exited");
                    status = Some(st);
                }
                grace = stop_rx.recv() => {
                    debug!(service = %self.service, generation = self.generation, ?grace, "stopping");
                    if kill_at.is_none() {
                        Box::pin(self.signal(Signal::SIGTERM)).await;
                    }
                    let at = Instant::now() + grace;
                    kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
                }
                () = sleep_until(kill_due), if kill_due.is_some() => {
                    Box::pin(self.signal(Signal::SIGKILL)).await;
                    killed = true;
                }
                () = changed(&mut leftovers), if leftovers.is_some() => {}
            }
            if status.is_none() {
                continue;
            }
            if Box::pin(self.is_empty(&mut leftovers)).await {
                break;
            }
            if kill_at.is_none() {
                // Leftovers of a main process that exited by itself.
                Box::pin(self.signal(Signal::SIGTERM)).await;
                kill_at = Some(Instant::now() + self.exit_grace);
            } else if killed {
                // Forked since the last KILL (process groups are not killed atomically).
                Box::pin(self.signal(Signal::SIGKILL)).await;
            }
        }
        drop(leftovers);
        let status = status.unwrap_or(ExitStatus {
            code: None,
            signal: None,
        });
        Box::pin(self.finish(status, record, probe_task)).await;
    }

    /// Reports the exit, then cleans up. `Exited` goes first so that a restart does not
    /// wait for the clean-up (see "Exit semantics" in the module docs of `supervise`).
    async fn finish(
        self,
        status: ExitStatus,
        record: Option<Arc<RunFile>>,
        probe_task: Option<JoinHandle<()>>,
    ) {
        if let Some(task) = probe_task {
            task.abort();
            let _ = task.await;
        }
        // Every process is gone, so the marker follows all of their output, and it
        // precedes the next generation's start marker.
        if let Some(log) = &self.log {
            log.marker(&format!(
                "exited {status} (pid {}, generation {})",
                self.pid, self.generation
            ));
        }
        let key = (self.service.clone(), self.generation);
        self.table.set_phase(&key, Phase::CleaningUp);
        debug!(service = %self.service, generation = self.generation, %status, "service exited and contained processes are gone");
        let _ = self.events.send(SupervisorEvent::Exited {
            service: self.service.clone(),
            generation: self.generation,
            status,
        });
        // Lets the restart that `Exited` may bring run first (the loop's task was just
        // woken on this worker): otherwise the clean-up goes ahead of it, starting a
        // blocking thread if none is idle, and the next generation, finding the log
        // released, opens it and starts its rotation task afresh.
        tokio::task::yield_now().await;
        let group = Arc::clone(&self.group);
        let cleaned = tokio::task::spawn_blocking(move || {
            if let Some(record) = record {
                record.remove();
            }
            group.remove();
        })
        .await;
        if cleaned.is_err() {
            warn!(service = %self.service, "clean-up after exit panicked");
        }
        // The log (and its rotation) is released with the last generation using it.
        drop(self.log);
        self.table.remove(&key);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => std::future::pending().await,
    }
}

async fn changed(leftovers: &mut Option<Leftovers>) {
    match leftovers {
        Some(l) => Box::pin(l.changed()).await,
        None => std::future::pending().await,
    }
}
