//! File change notifications for the whole supervisor: one inotify instance and one
//! task, however many services there are.
//!
//! Two things are watched: a cgroup's `cgroup.events` (the kernel marks it modified when
//! `populated` changes), while a generation's leftovers are waited for; and the log file
//! of each running service, for rotation (see `logs`). A [`Registration`] wakes its
//! owner on the next change after it was made; a change that happens while the owner is
//! busy is remembered (once), so checking state after registering never misses one.
//!
//! inotify is a limited resource (`/proc/sys/fs/inotify/max_user_instances` and
//! `max_user_watches`, per user). When the instance cannot be created, or the watches
//! run out, [`Watcher::watch`] fails and its callers fall back to checking on a timer.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest as Readiness;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

const WATCH_LIMIT: &str = "/proc/sys/fs/inotify/max_user_watches";

/// How a registration whose watcher broke down waits instead.
const BROKEN_POLL: Duration = Duration::from_secs(1);

/// What changes wake a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Every modification until the registration is dropped.
    Modified,
    /// The next modification only (the kernel drops the watch then): for files written
    /// often, where one wake-up per check is enough.
    NextModification,
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

type Targets = HashMap<WatchDescriptor, Vec<Arc<Notify>>>;

struct Shared {
    fd: AsyncFd<InotifyFd>,
    /// Who to wake per watch. Watching one file twice gives the same descriptor, hence
    /// a list.
    targets: Mutex<Targets>,
    /// The task stopped reading events; registrations poll instead.
    broken: AtomicBool,
    /// The watch limit was reported once already.
    limit_reported: AtomicBool,
}

impl Shared {
    fn targets(&self) -> MutexGuard<'_, Targets> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_all(&self) {
        for list in self.targets().values() {
            list.iter().for_each(|n| n.notify_one());
        }
    }

    fn dispatch(&self, events: Vec<InotifyEvent>) {
        let targets = self.targets();
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: everyone looks again.
                drop(targets);
                self.wake_all();
                return;
            }
            if let Some(list) = targets.get(&event.wd) {
                list.iter().for_each(|n| n.notify_one());
            }
        }
    }
}

/// The supervisor's inotify instance and the task reading it.
pub(crate) struct Watcher {
    shared: Option<Arc<Shared>>,
    task: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Creates the instance and its task on the current runtime; without one (say the
    /// per-user instance limit is reached), every [`Watcher::watch`] fails.
    pub fn start() -> Watcher {
        let shared = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(io::Error::from)
            .and_then(|inotify| {
                // SAFETY: `InotifyFd` owns the descriptor, always returns it from
                // `as_raw_fd`, and closes it only when dropped with the `AsyncFd`.
                unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Readiness::READABLE) }
                    .map_err(io::Error::from)
            });
        let shared = match shared {
            Ok(fd) => Arc::new(Shared {
                fd,
                targets: Mutex::default(),
                broken: AtomicBool::new(false),
                limit_reported: AtomicBool::new(false),
            }),
            Err(e) => {
                warn!(error = %e, "no inotify: cgroups and logs are checked on timers instead");
                return Watcher {
                    shared: None,
                    task: None,
                };
            }
        };
        debug!(
            max_user_watches = fs::read_to_string(WATCH_LIMIT).unwrap_or_default().trim(),
            "inotify ready"
        );
        let task = tokio::spawn(read_events(Arc::clone(&shared)));
        Watcher {
            shared: Some(shared),
            task: Some(task),
        }
    }

    /// Starts watching `path`. Fails when inotify is unavailable or out of watches (the
    /// caller then polls), or when the file does not exist.
    pub fn watch(&self, path: &Path, interest: Interest) -> io::Result<Registration> {
        let shared = self
            .shared
            .as_ref()
            .filter(|s| !s.broken.load(Ordering::Relaxed))
            .ok_or_else(|| io::Error::other("inotify is unavailable"))?;
        let mut mask = AddWatchFlags::IN_MODIFY;
        if interest == Interest::NextModification {
            mask |= AddWatchFlags::IN_ONESHOT;
        }
        let notify = Arc::new(Notify::new());
        // Under the lock, so an event for the new watch finds its target.
        let mut targets = shared.targets();
        let wd = match shared.fd.get_ref().0.add_watch(path, mask) {
            Ok(wd) => wd,
            Err(Errno::ENOSPC) => {
                if !shared.limit_reported.swap(true, Ordering::Relaxed) {
                    warn!(
                        limit = fs::read_to_string(WATCH_LIMIT).unwrap_or_default().trim(),
                        "out of inotify watches ({WATCH_LIMIT}); checking on timers for what cannot be watched"
                    );
                }
                return Err(io::Error::from(Errno::ENOSPC));
            }
            Err(e) => return Err(io::Error::from(e)),
        };
        targets.entry(wd).or_default().push(Arc::clone(&notify));
        Ok(Registration {
            wd,
            notify,
            shared: Arc::clone(shared),
        })
    }

    /// Stops the task; registrations poll from then on.
    pub fn stop(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(shared) = &self.shared {
            shared.broken.store(true, Ordering::Relaxed);
            shared.wake_all();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn read_events(shared: Arc<Shared>) {
    loop {
        let mut ready = match shared.fd.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                warn!(error = %e, "cannot wait for inotify events; checking on timers instead");
                break;
            }
        };
        match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
            Ok(Ok(events)) => shared.dispatch(events),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read inotify events; checking on timers instead");
                break;
            }
            // Drained: readiness was cleared, wait again.
            Err(_would_block) => {}
        }
    }
    shared.broken.store(true, Ordering::Relaxed);
    shared.wake_all();
}

/// One watch; dropping it stops watching.
pub(crate) struct Registration {
    wd: WatchDescriptor,
    notify: Arc<Notify>,
    shared: Arc<Shared>,
}

impl Registration {
    /// Resolves at the next change (or at once if one happened since the last call).
    pub async fn changed(&self) {
        if self.shared.broken.load(Ordering::Relaxed) {
            tokio::time::sleep(BROKEN_POLL).await;
        } else {
            self.notify.notified().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut targets = self.shared.targets();
        let Some(list) = targets.get_mut(&self.wd) else {
            return;
        };
        list.retain(|n| !Arc::ptr_eq(n, &self.notify));
        if list.is_empty() {
            targets.remove(&self.wd);
            // Fails harmlessly (EINVAL) when the kernel already dropped the watch: a
            // one-shot that fired, or a file that is gone.
            let _ = self.shared.fd.get_ref().0.rm_watch(self.wd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait(reg: &Registration) -> io::Result<()> {
        tokio::time::timeout(Duration::from_secs(5), reg.changed())
            .await
            .map_err(|_| io::Error::other("no change seen"))
    }

    #[tokio::test]
    async fn a_change_after_registering_is_seen_and_one_shots_fire_once() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (path, other) = (dir.path().join("f"), dir.path().join("g"));
        fs::write(&path, b"a")?;
        fs::write(&other, b"a")?;
        let watcher = Watcher::start();
        let reg = watcher.watch(&path, Interest::Modified)?;
        // Written before anyone waits: remembered.
        fs::write(&path, b"b")?;
        wait(&reg).await?;
        fs::write(&path, b"c")?;
        wait(&reg).await?;
        let once = watcher.watch(&other, Interest::NextModification)?;
        fs::write(&other, b"b")?;
        wait(&once).await?;
        drop(once);
        // A new one-shot on the same file works like the first.
        let again = watcher.watch(&other, Interest::NextModification)?;
        fs::write(&other, b"c")?;
        wait(&again).await?;
        assert!(watcher
            .watch(&dir.path().join("missing"), Interest::Modified)
            .is_err());
        Ok(())
    }
}
