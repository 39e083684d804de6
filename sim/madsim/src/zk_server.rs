//! The ZooKeeper node: the pure simulator's model (`pop_sim::zk_model`) served over
//! madsim's simulated TCP. Its state lives in an `Arc` the harness holds (ZooKeeper's
//! snapshot and log), so killing and restarting the node keeps the tree and the sessions,
//! and every live session gets its full timeout again, as after a real restart.
//!
//! Each connection starts with `Connect`: a new session; or a live one resumed, naming the
//! watches its client still waits on, of which those no longer armed (they fired while
//! the event could not reach the client) fire again at once, as `SetWatches` makes a real
//! server do; or a dead one, answered `SessionExpired` and closed.
//! Requests and pings keep the session heard from; a ticker expires the sessions not
//! heard from within their timeout, at tick boundaries, and closes their connections.

use crate::wire::{self, ToClient, ToServer, WatchClass, ZK_ADDR};
use pop_core::zk::{SessionId, WatchEvent, WatchKind};
use pop_sim::zk_model::{Notification, ZkModel};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The server's tickTime.
pub const TICK: Duration = Duration::from_millis(200);

pub struct ServerState {
    pub model: ZkModel,
    started: Instant,
    /// Each session's current connection (its number, where its frames go).
    connections: BTreeMap<i64, (u64, mpsc::UnboundedSender<ToClient>)>,
    /// Every session ever opened (a restart gives the live ones their time again).
    opened: BTreeSet<i64>,
    next_connection: u64,
}

impl ServerState {
    /// Milliseconds since the server first started: the model's clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn route(&mut self, notifications: Vec<Notification>) {
        for (session, event) in notifications {
            // No connection: the client names the watch when it reconnects.
            if let Some((_, tx)) = self.connections.get(&session.0) {
                let _ = tx.send(ToClient::Watch { event });
            }
        }
    }

    /// Writes a node as an administrator would, telling its watchers.
    pub fn put(&mut self, path: &str, data: &[u8]) {
        let notifications = self.model.put(path, data);
        self.route(notifications);
    }

    /// Ends a session: its ephemerals go, watchers are told (itself first, on the
    /// connection it still has), then its connection is closed.
    pub fn expire(&mut self, session: SessionId) {
        let notifications = self.model.expire(session);
        self.route(notifications);
        self.connections.remove(&session.0);
    }

    fn expire_idle(&mut self) {
        let now = self.now_ms();
        for (session, notifications) in self.model.expire_idle(now) {
            self.route(notifications);
            self.connections.remove(&session.0);
        }
    }

    /// A connection's `Connect`: the session it now serves, and the connection's number;
    /// `None` for a session that is gone. Its first frames are queued on `tx`.
    fn accept(
        &mut self,
        session: Option<SessionId>,
        timeout_ms: u64,
        watches: Vec<(String, WatchClass)>,
        tx: mpsc::UnboundedSender<ToClient>,
    ) -> Option<(SessionId, u64)> {
        let now = self.now_ms();
        let session = match session {
            None => {
                let id = self
                    .model
                    .open_session_with_timeout(now, Duration::from_millis(timeout_ms));
                self.opened.insert(id.0);
                id
            }
            Some(id) if self.model.is_live(id) => {
                self.model.touch(id, now);
                id
            }
            Some(_) => return None,
        };
        let negotiated = self
            .model
            .session(session)
            .and_then(|s| s.timeout)
            .map_or(timeout_ms, |t| {
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
            });
        self.next_connection += 1;
        let connection = self.next_connection;
        let _ = tx.send(ToClient::Connected {
            session,
            timeout_ms: negotiated,
        });
        for (path, class) in watches {
            let children = class == WatchClass::Children;
            if self.model.is_watched_by(session, &path, children) {
                continue;
            }
            let kind = match (self.model.get(&path).is_some(), children) {
                (false, _) => WatchKind::Deleted,
                (true, false) => WatchKind::DataChanged,
                (true, true) => WatchKind::ChildrenChanged,
            };
            let _ = tx.send(ToClient::Watch {
                event: WatchEvent { path, kind },
            });
        }
        // A newer connection of the session replaces the older one (whose frames stop).
        self.connections.insert(session.0, (connection, tx));
        Some((session, connection))
    }

    /// The frame goes out on `connection` if it is still the session's.
    fn reply(&self, session: SessionId, connection: u64, frame: ToClient) {
        if let Some((current, tx)) = self.connections.get(&session.0) {
            if *current == connection {
                let _ = tx.send(frame);
            }
        }
    }
}

/// The server's state, shared by the harness and the ZooKeeper node.
#[derive(Clone)]
pub struct SharedServer(Arc<Mutex<ServerState>>);

impl Default for SharedServer {
    fn default() -> Self {
        SharedServer(Arc::new(Mutex::new(ServerState {
            model: ZkModel::with_tick(u64::try_from(TICK.as_millis()).unwrap_or(200)),
            started: Instant::now(),
            connections: BTreeMap::new(),
            opened: BTreeSet::new(),
            next_connection: 0,
        })))
    }
}

impl SharedServer {
    pub fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The body of the ZooKeeper node.
pub async fn zk_main(server: SharedServer) {
    {
        let mut state = server.lock();
        // A restart: the old connections died with the node; sessions start afresh.
        state.connections.clear();
        let now = state.now_ms();
        let opened: Vec<i64> = state.opened.iter().copied().collect();
        for session in opened {
            state.model.touch(SessionId(session), now);
        }
    }
    // A restart always follows a kill, which unbinds the port.
    let listener = TcpListener::bind(ZK_ADDR)
        .await
        .expect("the ZooKeeper port is free");
    tokio::spawn(expire_every_tick(server.clone()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve(server.clone(), stream));
    }
}

async fn expire_every_tick(server: SharedServer) {
    loop {
        tokio::time::sleep(TICK).await;
        server.lock().expire_idle();
    }
}

/// One client connection, until either side ends it.
async fn serve(server: SharedServer, stream: TcpStream) {
    let (mut reader, mut writer) = wire::split(stream);
    let Ok(Some(ToServer::Connect {
        session,
        timeout_ms,
        watches,
    })) = wire::receive::<ToServer>(&mut reader).await
    else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let Some((session, connection)) = server.lock().accept(session, timeout_ms, watches, tx) else {
        let _ = writer.send(&ToClient::SessionExpired).await;
        return;
    };
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => {
                    let closed = matches!(frame, ToClient::Closed);
                    if writer.send(&frame).await.is_err() || closed {
                        break;
                    }
                }
                // Expired, or replaced by a newer connection: close this one.
                None => break,
            },
            frame = wire::receive::<ToServer>(&mut reader) => match frame {
                Ok(Some(frame)) => handle(&server, session, connection, frame),
                // The client went away: the session stays until it expires.
                Ok(None) | Err(_) => break,
            },
        }
    }
    let mut state = server.lock();
    if state
        .connections
        .get(&session.0)
        .is_some_and(|(c, _)| *c == connection)
    {
        state.connections.remove(&session.0);
    }
}

fn handle(server: &SharedServer, session: SessionId, connection: u64, frame: ToServer) {
    let mut state = server.lock();
    if !state.model.is_live(session) {
        return;
    }
    let now = state.now_ms();
    state.model.touch(session, now);
    match frame {
        ToServer::Connect { .. } => {}
        ToServer::Ping => state.reply(session, connection, ToClient::Pong),
        ToServer::Request { xid, op } => {
            let (reply, notifications) = state.model.apply(session, &op);
            // The reply before the watch events it caused, as the server orders them.
            state.reply(session, connection, ToClient::Reply { xid, reply });
            state.route(notifications);
        }
        ToServer::Close => {
            let tx = state.connections.get(&session.0).map(|(_, tx)| tx.clone());
            state.expire(session);
            if let Some(tx) = tx {
                let _ = tx.send(ToClient::Closed);
            }
        }
    }
}
