//! Persistent recursive watches (ZooKeeper 3.6's `addWatch` in mode PERSISTENT_RECURSIVE),
//! as a 3.8 server keeps them: one per session and path (asking again changes nothing),
//! on a node that need not exist; it fires for every create, set and delete of the node
//! and of each descendant, with the changed node's path, and stays; never for a change
//! of children as such (a created or deleted child is reported as that child's event);
//! it goes with its session. Checked against a real server by
//! `tests/tests/model_conformance_watches.rs`.

use super::{Notification, ZkModel};
use pop_core::zk::{SessionId, WatchEvent, WatchKind};

/// What production's `map_error` makes of the client's `Unimplemented`: the answer of a
/// server older than 3.6 to `addWatch` (see [`ZkModel::refuse_tree_watches`]).
pub const UNIMPLEMENTED: &str = "unimplemented operation";

impl ZkModel {
    /// From now on a server without `addWatch` (before 3.6): it answers
    /// [`UNIMPLEMENTED`], so what falls back to one-shot watches can be tried.
    pub fn refuse_tree_watches(&mut self) {
        self.tree_watches_unimplemented = true;
    }

    pub(super) fn add_tree_watch(&mut self, session: SessionId, path: &str) {
        self.tree_watches
            .entry(path.to_string())
            .or_default()
            .insert(session.0);
        self.watched_by
            .entry(session.0)
            .or_default()
            .insert(path.to_string());
    }

    /// Whether `session` holds a tree watch on `path` or one of its ancestors.
    pub fn is_tree_watched_by(&self, session: SessionId, path: &str) -> bool {
        ancestors_or_self(path).any(|p| {
            self.tree_watches
                .get(p)
                .is_some_and(|sessions| sessions.contains(&session.0))
        })
    }

    /// The tree watches on `path` and its ancestors fire for a change of `path`, nearest
    /// first (the order the client hands the server's one event to its watchers).
    pub(super) fn fire_tree(&self, path: &str, kind: WatchKind, out: &mut Vec<Notification>) {
        if self.tree_watches.is_empty() {
            return;
        }
        for p in ancestors_or_self(path) {
            for &s in self.tree_watches.get(p).into_iter().flatten() {
                let event = WatchEvent {
                    path: path.to_string(),
                    kind,
                };
                out.push((SessionId(s), event));
            }
        }
    }

    /// A session ended: its tree watches go with it.
    pub(super) fn drop_tree_watches(&mut self, session: SessionId, path: &str) {
        if let Some(sessions) = self.tree_watches.get_mut(path) {
            sessions.remove(&session.0);
            if sessions.is_empty() {
                self.tree_watches.remove(path);
            }
        }
    }

    /// Tree watches held over all sessions.
    pub(super) fn tree_watch_count(&self) -> usize {
        self.tree_watches.values().map(|s| s.len()).sum()
    }
}

/// `/a/b/c`, `/a/b`, `/a`, `/`.
fn ancestors_or_self(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            Some(0) if current.len() > 1 => Some("/"),
            Some(0) | None => None,
            Some(i) => Some(&current[..i]),
        };
        Some(current)
    })
}
