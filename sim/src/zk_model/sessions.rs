//! Sessions: opened, heard from, expired (on request or on the model's clock).

use super::{Notification, ZkModel};
use pop_core::zk::SessionId;
use std::time::Duration;

/// A live session as the server tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The negotiated timeout; `None` for a session that only ends when told to.
    pub timeout: Option<Duration>,
    /// When the session was last heard from, on the model's clock (milliseconds).
    pub last_heard_ms: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ZkModel {
    /// A model whose clocked sessions behave as on a server with this tickTime: the
    /// timeout a client asks for is clamped to [2, 20] ticks, and a session expires at the
    /// first tick boundary after its timeout has run out (the server's expiry buckets).
    pub fn with_tick(tick_ms: u64) -> Self {
        ZkModel {
            tick_ms: Some(tick_ms.max(1)),
            ..ZkModel::new()
        }
    }

    /// A session that never times out on its own (only [`ZkModel::expire`] ends it).
    pub fn open_session(&mut self) -> SessionId {
        self.add_session(Session {
            timeout: None,
            last_heard_ms: 0,
        })
    }

    /// A session asking for `timeout`, opened (and heard from) at `now_ms`; it expires
    /// in [`ZkModel::expire_idle`] once not heard from for its negotiated timeout.
    pub fn open_session_with_timeout(&mut self, now_ms: u64, timeout: Duration) -> SessionId {
        let timeout = match self.tick_ms {
            Some(tick) => {
                let ms = millis(timeout).clamp(2 * tick, 20 * tick);
                Duration::from_millis(ms)
            }
            None => timeout,
        };
        self.add_session(Session {
            timeout: Some(timeout),
            last_heard_ms: now_ms,
        })
    }

    fn add_session(&mut self, session: Session) -> SessionId {
        self.next_session += 1;
        self.sessions.insert(self.next_session, session);
        SessionId(self.next_session)
    }

    pub fn is_live(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session.0)
    }

    /// The live session's state (its negotiated timeout, as the client is told).
    pub fn session(&self, session: SessionId) -> Option<Session> {
        self.sessions.get(&session.0).copied()
    }

    /// The session was heard from at `now_ms` (a request or a ping).
    pub fn touch(&mut self, session: SessionId, now_ms: u64) {
        if let Some(s) = self.sessions.get_mut(&session.0) {
            s.last_heard_ms = s.last_heard_ms.max(now_ms);
        }
    }

    /// When a clocked session expires if not heard from again.
    pub fn expires_at(&self, session: SessionId) -> Option<u64> {
        let s = self.sessions.get(&session.0)?;
        let end = s.last_heard_ms.saturating_add(millis(s.timeout?));
        Some(match self.tick_ms {
            Some(tick) => (end / tick + 1).saturating_mul(tick),
            None => end,
        })
    }

    /// Expires every clocked session not heard from within its timeout at `now_ms`, in
    /// session order: their ephemerals go and watchers are told.
    pub fn expire_idle(&mut self, now_ms: u64) -> Vec<(SessionId, Vec<Notification>)> {
        let due: Vec<SessionId> = self
            .sessions
            .keys()
            .map(|&id| SessionId(id))
            .filter(|&id| self.expires_at(id).is_some_and(|at| at <= now_ms))
            .collect();
        due.into_iter().map(|id| (id, self.expire(id))).collect()
    }

    /// Ends a session (expired, or closed by its client): its ephemerals go and watchers
    /// are told, then its remaining watches go. As on the server, the session's own
    /// watches fire too: the server deletes the ephemerals before dropping the connection,
    /// so a client that closes its session, or whose connection is still open when it
    /// expires (a paused process), receives those events. A caller modelling a dead
    /// connection drops them. Nothing happens for a session already gone.
    pub fn expire(&mut self, session: SessionId) -> Vec<Notification> {
        let mut events = Vec::new();
        if self.sessions.remove(&session.0).is_none() {
            return events;
        }
        self.auth.remove(&session.0);
        // In path order, as a walk of the whole tree would find them.
        let owned: Vec<String> = self
            .ephemerals_of
            .remove(&session.0)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                self.nodes
                    .get(p)
                    .is_some_and(|n| n.ephemeral_owner == session.0)
            })
            .collect();
        for path in owned {
            self.remove_node(&path, &mut events);
        }
        for path in self.watched_by.remove(&session.0).unwrap_or_default() {
            self.drop_tree_watches(session, &path);
            for watches in [&mut self.data_watches, &mut self.child_watches] {
                if let Some(list) = watches.get_mut(&path) {
                    list.retain(|&s| s != session.0);
                    if list.is_empty() {
                        watches.remove(&path);
                    }
                }
            }
        }
        events
    }
}
