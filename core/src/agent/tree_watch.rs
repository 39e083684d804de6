//! One persistent recursive watch on the machine's own directory (`/machines/<id>`) in
//! place of a data watch on each pid node under it. A data watch fires on the agent's
//! own writes too, so each was read again (to re-arm it) after every create and set: one
//! request per service deployed and per restart. The tree watch is added once per
//! session and stays; the nodes under it only listen for deletions by others.
//!
//! A server's requests from one session are applied in order, so nodes written after the
//! request are covered from the moment it is sent. If it fails, the nodes fall back to a
//! watch each: on a server older than 3.6 (no `addWatch`) for the whole session, after a
//! lost connection until the retry succeeds. A persistent watch hears nothing of what
//! happened while the connection was down (ZOOKEEPER-4698; the client re-registers it on
//! reconnect but the server does not replay), so after a reconnect the nodes are read again.

use super::{Agent, Pending};
use crate::paths;
use crate::zk::{ZkError, ZkOp, ZkReply};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) enum TreeWatch {
    /// Not asked for in this session, or asking failed with an unknown outcome.
    #[default]
    Unasked,
    /// Asked for and not yet answered: covers already (see the module's comment).
    Asked,
    /// The server confirmed it: it fires for every change under the directory until the
    /// session ends.
    Held,
    /// Refused (a server without `addWatch`): a watch per node for this session.
    Refused,
}

impl TreeWatch {
    fn covers(self) -> bool {
        matches!(self, TreeWatch::Asked | TreeWatch::Held)
    }
}

impl Agent {
    /// Whether `path` is one of this machine's pid nodes and the tree watch covers it.
    pub(super) fn covered(&self, path: &str) -> bool {
        self.tree_watch.covers()
            && paths::parent(path) == Some(paths::machine(self.machine()).as_str())
    }

    /// Asks for the tree watch unless it is held or asked for already (or refused).
    pub(super) fn ask_tree_watch(&mut self) {
        if self.tree_watch != TreeWatch::Unasked || self.session_id().is_none() {
            return;
        }
        self.tree_watch = TreeWatch::Asked;
        let path = paths::machine(self.machine());
        self.send(ZkOp::WatchTree { path }, Pending::TreeWatch);
    }

    pub(super) fn on_tree_watch_reply(&mut self, reply: &ZkReply) {
        self.tree_watch = match reply {
            ZkReply::Watching => TreeWatch::Held,
            ZkReply::Error(ZkError::ConnectionLoss | ZkError::Timeout) => {
                self.schedule_retry();
                TreeWatch::Unasked
            }
            _ => TreeWatch::Refused,
        };
        if !self.tree_watch.covers() {
            // Uncovered: each node sets a watch of its own, reading it again as it does.
            let prefix = format!("{}/", paths::machine(self.machine()));
            let pid_nodes = self.nodes.keys().filter(|p| p.starts_with(&prefix));
            self.dirty.nodes.extend(pid_nodes.cloned());
        }
    }

    /// The connection came back within the session: whatever the tree watch missed
    /// meanwhile is found by reading the covered nodes again.
    pub(super) fn recheck_covered(&mut self) {
        if !self.tree_watch.covers() {
            return;
        }
        let prefix = format!("{}/", paths::machine(self.machine()));
        for (path, node) in self.nodes.iter_mut() {
            if path.starts_with(&prefix) {
                node.recheck();
                self.dirty.nodes.insert(path.clone());
            }
        }
    }
}
