//! ZooKeeper for the skeleton: the pure simulator's model (`pop_sim::zk_model`) called
//! in-process, shaped as sim/tests/driver_ports.rs, with clocked sessions: each session
//! pings from a task on its agent's node, and the server expires the sessions it stopped
//! hearing from. A killed agent node takes its ping task with it, so its session lingers
//! until the server expires it, as a crashed client's does. No network yet: the client
//! never sees `Disconnected` (ZooKeeper over madsim's simulated TCP replaces this).

use crate::machine::Machine;
use pop_core::zk::{SessionEvent, SessionId, WatchEvent, ZkError, ZkOp, ZkReply};
use pop_io::driver::ports::{ConnectFailure, WatchFuture, ZkPort, ZkSession};
use pop_sim::zk_model::{Notification, ZkModel};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The server's tickTime: sessions expire at tick boundaries, as on a real server.
pub const TICK: Duration = Duration::from_millis(200);

pub struct ZkServer {
    pub model: ZkModel,
    started: Instant,
    /// One-shot watches waiting, by session: (path, where to deliver).
    watches: BTreeMap<i64, Vec<(String, oneshot::Sender<WatchEvent>)>>,
    /// Where each live session's state changes go.
    events: BTreeMap<i64, mpsc::UnboundedSender<SessionEvent>>,
}

impl ZkServer {
    /// Milliseconds since the server started: the model's clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn route(&mut self, notifications: Vec<Notification>) {
        for (session, event) in notifications {
            let waiting = self.watches.entry(session.0).or_default();
            let (fire, keep): (Vec<_>, Vec<_>) = std::mem::take(waiting)
                .into_iter()
                .partition(|(path, _)| *path == event.path);
            *waiting = keep;
            for (_, tx) in fire {
                let _ = tx.send(event.clone());
            }
        }
    }

    /// Writes a node as an administrator would, telling its watchers.
    pub fn put(&mut self, path: &str, data: &[u8]) {
        let notifications = self.model.put(path, data);
        self.route(notifications);
    }

    /// The session ended (expired or closed): its watches end unfired, its client is told.
    fn ended(&mut self, session: SessionId, notifications: Vec<Notification>) {
        self.route(notifications);
        self.watches.remove(&session.0);
        if let Some(events) = self.events.remove(&session.0) {
            let _ = events.send(SessionEvent::Expired);
        }
    }

    /// Expires the sessions not heard from within their timeout.
    fn expire_idle(&mut self) {
        let now = self.now_ms();
        for (session, notifications) in self.model.expire_idle(now) {
            self.ended(session, notifications);
        }
    }
}

/// The server, shared by the harness (node 0) and every agent's port.
#[derive(Clone)]
pub struct SharedZk(Arc<Mutex<ZkServer>>);

impl Default for SharedZk {
    fn default() -> Self {
        SharedZk(Arc::new(Mutex::new(ZkServer {
            model: ZkModel::with_tick(u64::try_from(TICK.as_millis()).unwrap_or(200)),
            started: Instant::now(),
            watches: BTreeMap::new(),
            events: BTreeMap::new(),
        })))
    }
}

impl SharedZk {
    pub fn lock(&self) -> MutexGuard<'_, ZkServer> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server's expiry ticker; runs on the node that spawns it, for good.
    pub async fn expire_sessions(self) {
        loop {
            tokio::time::sleep(TICK).await;
            self.lock().expire_idle();
        }
    }
}

/// Opens sessions on the shared server.
pub struct InProcessZk {
    pub server: SharedZk,
    /// Told each session opened, for the harness's checks.
    pub machine: Arc<Machine>,
    /// The timeout asked for (the server clamps it to [2, 20] ticks).
    pub session_timeout: Duration,
    pub op_timeout: Duration,
}

impl ZkPort for InProcessZk {
    type Session = InProcessSession;

    fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    async fn connect(&self) -> Result<InProcessSession, ConnectFailure> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (id, timeout) = {
            let mut server = self.server.lock();
            let now = server.now_ms();
            let id = server
                .model
                .open_session_with_timeout(now, self.session_timeout);
            let timeout = server
                .model
                .session(id)
                .and_then(|s| s.timeout)
                .unwrap_or(self.session_timeout);
            server.events.insert(id.0, tx);
            (id, timeout)
        };
        self.machine.connected(id);
        let inner = Arc::new(SessionInner {
            id,
            timeout,
            server: self.server.clone(),
            events: Mutex::new(Some(rx)),
        });
        // On the calling (agent) node: it dies with the node, and the server stops
        // hearing from the session.
        tokio::spawn(ping(Arc::downgrade(&inner)));
        Ok(InProcessSession(inner))
    }
}

/// Keeps the session heard from while its client lives (a third of its timeout apart).
async fn ping(session: Weak<SessionInner>) {
    loop {
        let Some(every) = session.upgrade().map(|s| s.timeout / 3) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(session) = session.upgrade() else {
            return;
        };
        let mut server = session.server.lock();
        if !server.model.is_live(session.id) {
            return;
        }
        let now = server.now_ms();
        server.model.touch(session.id, now);
    }
}

struct SessionInner {
    id: SessionId,
    timeout: Duration,
    server: SharedZk,
    events: Mutex<Option<mpsc::UnboundedReceiver<SessionEvent>>>,
}

/// Dropping the last clone does not close the session (that is how a killed node's
/// session lingers); the driver closes it explicitly when it exits.
#[derive(Clone)]
pub struct InProcessSession(Arc<SessionInner>);

impl ZkSession for InProcessSession {
    fn id(&self) -> SessionId {
        self.0.id
    }

    fn timeout(&self) -> Duration {
        self.0.timeout
    }

    fn events(&self) -> mpsc::UnboundedReceiver<SessionEvent> {
        let taken = self
            .0
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Asked twice: the second receiver ends at once.
        taken.unwrap_or_else(|| mpsc::unbounded_channel().1)
    }

    async fn execute(&self, op: ZkOp) -> (ZkReply, Option<WatchFuture>) {
        let mut server = self.0.server.lock();
        let id = self.0.id;
        if !server.model.is_live(id) {
            return (ZkReply::Error(ZkError::SessionExpired), None);
        }
        let now = server.now_ms();
        server.model.touch(id, now);
        let (reply, notifications) = server.model.apply(id, &op);
        server.route(notifications);
        let watched = matches!(
            op,
            ZkOp::GetData { watch: true, .. } | ZkOp::GetChildren { watch: true, .. }
        );
        if !watched || matches!(reply, ZkReply::Error(_)) {
            return (reply, None);
        }
        let (tx, rx) = oneshot::channel();
        server
            .watches
            .entry(id.0)
            .or_default()
            .push((op.path().to_string(), tx));
        (reply, Some(Box::pin(async move { rx.await.ok() })))
    }

    async fn close(self, _limit: Duration) {
        let mut server = self.0.server.lock();
        let notifications = server.model.expire(self.0.id);
        server.ended(self.0.id, notifications);
    }
}
