//! One ephemeral znode the agent wants to exist with some content, or not to exist.
//!
//! Writes can fail with an unknown outcome (a lost connection, a timeout), and a node can
//! be left over from an earlier session of this machine, so "create" is a small state
//! machine: create; if it exists, read its owner; delete what is not ours; re-read on doubt.
//! Once published, the node is watched, so a node deleted by someone else (`pop remove
//! --force`, `pop init --force`) is noticed and written again if still wanted. A node
//! under the machine's tree watch (see `tree_watch.rs`) needs no watch of its own: it is
//! "covered", and only a deletion heard there matters (the creates and sets it reports
//! are the agent's own).

use crate::paths;
use serde::{Deserialize, Serialize};

use crate::zk::{Acl, CreateMode, SessionId, WatchKind, ZkError, ZkOp, ZkReply};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Have {
    /// Nothing known: after start, a new session or an unknown outcome.
    Unknown,
    Absent,
    /// Exists, owner not yet read.
    Exists,
    /// Exists, owned by this session, with this data.
    Ours(#[serde(with = "crate::bytes")] Vec<u8>),
    /// Exists, owned by another session (an earlier agent): it must go.
    Foreign,
    ParentMissing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Step {
    Create,
    CreateParent,
    Read,
    /// Read with a watch, to hear of changes by others.
    Watch,
    Set,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EphemeralNode {
    path: String,
    #[serde(with = "crate::bytes::option")]
    want: Option<Vec<u8>>,
    have: Have,
    /// The step in flight and the data it sent (the wanted data may change meanwhile).
    in_flight: Option<(Step, Option<Vec<u8>>)>,
    /// Set after a failure; the agent clears it when its retry timer fires.
    pub(crate) stalled: bool,
    /// A watch is registered on the node in this session.
    watched: bool,
    /// Covered, it heard of a deletion while a request was out: what the reply says may
    /// be older than the deletion, so the node is read once more after it.
    #[serde(default)]
    doubt: bool,
}

impl Step {
    /// What the step does, for messages.
    pub(crate) fn doing(self) -> &'static str {
        match self {
            Step::Create | Step::CreateParent => "creating",
            Step::Read | Step::Watch => "reading",
            Step::Set => "writing",
            Step::Delete => "deleting",
        }
    }
}

impl EphemeralNode {
    pub(crate) fn new(path: String) -> Self {
        EphemeralNode {
            path,
            want: None,
            have: Have::Unknown,
            in_flight: None,
            stalled: false,
            watched: false,
            doubt: false,
        }
    }

    pub(crate) fn want(&mut self, data: Option<Vec<u8>>) {
        self.want = data;
    }

    /// A new session: our old ephemerals may linger until the server expires them.
    pub(crate) fn forget(&mut self) {
        self.have = Have::Unknown;
        self.in_flight = None;
        self.stalled = false;
        self.watched = false;
        self.doubt = false;
    }

    /// Someone changed or deleted the node: look again. `covered`: the event came from
    /// the tree watch, which stays armed and reports the agent's own creates and sets
    /// too; only a deletion is news (by someone else, or ours, which a reply settles).
    pub(crate) fn on_watch(&mut self, kind: WatchKind, covered: bool) {
        if covered {
            if kind == WatchKind::Deleted {
                match self.in_flight {
                    None => self.have = Have::Absent,
                    Some(_) => self.doubt = true,
                }
            }
            return;
        }
        self.watched = false;
        if kind == WatchKind::Deleted && self.in_flight.is_none() {
            self.have = Have::Absent;
        }
    }

    /// The tree watch may have missed events (the connection was lost: a persistent
    /// watch re-registered on reconnect hears nothing of what happened meanwhile), so a
    /// node believed ours is read again.
    pub(crate) fn recheck(&mut self) {
        match (&self.in_flight, &self.have) {
            (Some(_), _) => self.doubt = true,
            (None, Have::Ours(_)) => self.have = Have::Exists,
            (None, _) => {}
        }
    }

    /// No request is out for it and none waits for the retry timer: the next change of
    /// what it should hold may be sent at once.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_none() && !self.stalled
    }

    /// Nothing wanted and nothing there: the agent may drop this node.
    pub(crate) fn settled_absent(&self) -> bool {
        self.want.is_none()
            && matches!(self.have, Have::Absent | Have::ParentMissing)
            && self.in_flight.is_none()
    }

    /// True when the node exists with the wanted data, owned by us.
    #[cfg(test)]
    pub(crate) fn published(&self) -> bool {
        matches!((&self.want, &self.have), (Some(w), Have::Ours(h)) if w == h)
    }

    /// The parent this agent may create: only a machine's own directory. A missing
    /// /services/<name>/state means the service is being removed: creating it would
    /// resurrect part of the service and fight the remover.
    fn own_parent(&self) -> Option<&str> {
        paths::parent(&self.path).filter(|p| paths::parent(p) == Some(paths::MACHINES))
    }

    /// The next request to send, if any; the caller sends it and reports back via `on_reply`.
    /// `covered`: the node is under the machine's tree watch, so it needs no watch of its own.
    pub(crate) fn next(&mut self, acl: &Acl, covered: bool) -> Option<(Step, ZkOp)> {
        if self.in_flight.is_some() || self.stalled {
            return None;
        }
        let path = self.path.clone();
        let (step, op) = match (&self.want, &self.have) {
            (Some(data), Have::Unknown | Have::Absent) => (
                Step::Create,
                ZkOp::Create {
                    path,
                    data: data.clone(),
                    mode: CreateMode::Ephemeral,
                    acl: acl.clone(),
                },
            ),
            (Some(data), Have::ParentMissing) => match self.own_parent() {
                Some(parent) => (
                    Step::CreateParent,
                    ZkOp::Create {
                        path: parent.to_string(),
                        data: Vec::new(),
                        mode: CreateMode::Persistent,
                        acl: acl.clone(),
                    },
                ),
                // Not ours to create: try the node again (the retry timer paces this).
                None => (
                    Step::Create,
                    ZkOp::Create {
                        path,
                        data: data.clone(),
                        mode: CreateMode::Ephemeral,
                        acl: acl.clone(),
                    },
                ),
            },
            (Some(_), Have::Exists) => (Step::Read, ZkOp::GetData { path, watch: false }),
            (Some(data), Have::Ours(current)) if data != current => (
                Step::Set,
                ZkOp::SetData {
                    path,
                    data: data.clone(),
                    version: None,
                },
            ),
            (Some(_), Have::Ours(_)) if !self.watched && !covered => {
                (Step::Watch, ZkOp::GetData { path, watch: true })
            }
            (Some(_), Have::Foreign) | (None, Have::Unknown | Have::Exists | Have::Ours(_)) => (
                Step::Delete,
                ZkOp::Delete {
                    path,
                    version: None,
                },
            ),
            // A foreign node we do not want either: an earlier agent's; remove the stale claim.
            (None, Have::Foreign) => (
                Step::Delete,
                ZkOp::Delete {
                    path,
                    version: None,
                },
            ),
            _ => return None,
        };
        self.in_flight = Some((step, self.want.clone()));
        Some((step, op))
    }

    pub(crate) fn on_reply(&mut self, step: Step, reply: &ZkReply, session: Option<SessionId>) {
        let sent = self.in_flight.take().and_then(|(_, data)| data);
        let doubt = std::mem::take(&mut self.doubt);
        self.have = match (step, reply) {
            (Step::Create, ZkReply::Created) => match sent {
                Some(d) => Have::Ours(d),
                None => Have::Exists,
            },
            (Step::Create, ZkReply::Error(ZkError::NodeExists)) => Have::Exists,
            (Step::Create, ZkReply::Error(ZkError::NoNode)) => {
                // Retried on the agent's timer unless the parent is ours to create.
                self.stalled = self.own_parent().is_none();
                Have::ParentMissing
            }
            (Step::CreateParent, ZkReply::Created | ZkReply::Error(ZkError::NodeExists)) => {
                Have::Absent
            }
            (Step::CreateParent, ZkReply::Error(ZkError::NoNode)) => {
                // The grandparent is gone too (the service was removed): wait and retry.
                self.stalled = true;
                Have::ParentMissing
            }
            (Step::Read | Step::Watch, ZkReply::Data { data, stat }) => {
                if step == Step::Watch {
                    self.watched = true;
                }
                if session.is_some_and(|s| s.0 == stat.ephemeral_owner) {
                    Have::Ours(data.clone())
                } else {
                    Have::Foreign
                }
            }
            (Step::Set, ZkReply::Set { stat }) => {
                if session.is_some_and(|s| s.0 == stat.ephemeral_owner) {
                    sent.map(Have::Ours).unwrap_or(Have::Exists)
                } else {
                    Have::Foreign
                }
            }
            (Step::Read | Step::Watch | Step::Set, ZkReply::Error(ZkError::NoNode)) => Have::Absent,
            (Step::Delete, ZkReply::Deleted | ZkReply::Error(ZkError::NoNode)) => Have::Absent,
            (_, ZkReply::Error(_)) => {
                self.stalled = true;
                Have::Unknown
            }
            // A reply of the wrong shape cannot come from a correct driver; re-read to be safe.
            _ => {
                self.stalled = true;
                Have::Unknown
            }
        };
        if doubt && matches!(self.have, Have::Ours(_)) {
            self.have = Have::Exists;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zk::NodeStat;

    const ME: SessionId = SessionId(7);

    fn drive(node: &mut EphemeralNode, reply: ZkReply) -> Step {
        let (step, _) = node.next(&Acl::open(), false).expect("a request");
        node.on_reply(step, &reply, Some(ME));
        step
    }

    #[test]
    fn creates_then_is_published() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"1".to_vec()));
        assert_eq!(drive(&mut n, ZkReply::Created), Step::Create);
        assert!(n.published());
        let mine = ZkReply::Data {
            data: b"1".to_vec(),
            stat: NodeStat {
                version: 0,
                ephemeral_owner: ME.0,
                ..Default::default()
            },
        };
        assert_eq!(drive(&mut n, mine), Step::Watch);
        assert!(
            n.next(&Acl::open(), false).is_none(),
            "published and watched: nothing to do"
        );
        // Deleted behind our back: created again.
        n.on_watch(WatchKind::Deleted, false);
        assert_eq!(drive(&mut n, ZkReply::Created), Step::Create);
    }

    #[test]
    fn replaces_a_node_left_by_an_earlier_session() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"2".to_vec()));
        drive(&mut n, ZkReply::Error(ZkError::NodeExists));
        let stale = NodeStat {
            version: 0,
            ephemeral_owner: 99,
            ..Default::default()
        };
        assert_eq!(
            drive(
                &mut n,
                ZkReply::Data {
                    data: b"1".to_vec(),
                    stat: stale
                }
            ),
            Step::Read
        );
        assert_eq!(drive(&mut n, ZkReply::Deleted), Step::Delete);
        assert_eq!(drive(&mut n, ZkReply::Created), Step::Create);
        assert!(n.published());
    }

    #[test]
    fn unknown_outcome_rereads_and_adopts_our_own_node() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"3".to_vec()));
        drive(&mut n, ZkReply::Error(ZkError::Timeout));
        assert!(
            n.next(&Acl::open(), false).is_none(),
            "stalled until the retry timer"
        );
        n.stalled = false;
        drive(&mut n, ZkReply::Error(ZkError::NodeExists));
        let ours = NodeStat {
            version: 0,
            ephemeral_owner: ME.0,
            ..Default::default()
        };
        drive(
            &mut n,
            ZkReply::Data {
                data: b"3".to_vec(),
                stat: ours,
            },
        );
        assert!(n.published());
    }

    #[test]
    fn never_creates_a_services_state_directory() {
        let mut n = EphemeralNode::new("/services/s/state/m".into());
        n.want(Some(b"{}".to_vec()));
        drive(&mut n, ZkReply::Error(ZkError::NoNode));
        assert!(
            n.next(&Acl::open(), false).is_none(),
            "waits for the retry timer"
        );
        n.stalled = false;
        let (step, _) = n.next(&Acl::open(), false).expect("a retry");
        assert_eq!(step, Step::Create, "retries the node, not its parent");
    }

    #[test]
    fn creates_a_missing_machine_directory_once() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"1".to_vec()));
        drive(&mut n, ZkReply::Error(ZkError::NoNode));
        let (step, op) = n.next(&Acl::open(), false).expect("parent create");
        assert_eq!(step, Step::CreateParent);
        assert_eq!(op.path(), "/machines/m");
        n.on_reply(step, &ZkReply::Created, Some(ME));
        assert_eq!(drive(&mut n, ZkReply::Created), Step::Create);
    }

    #[test]
    fn unwanted_node_is_deleted_and_settles() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"1".to_vec()));
        drive(&mut n, ZkReply::Created);
        n.want(None);
        assert_eq!(drive(&mut n, ZkReply::Deleted), Step::Delete);
        assert!(n.settled_absent());
    }

    fn ours(data: &[u8]) -> ZkReply {
        ZkReply::Data {
            data: data.to_vec(),
            stat: NodeStat {
                version: 0,
                ephemeral_owner: ME.0,
                ..Default::default()
            },
        }
    }

    fn drive_covered(node: &mut EphemeralNode, reply: ZkReply) -> Step {
        let (step, _) = node.next(&Acl::open(), true).expect("a request");
        node.on_reply(step, &reply, Some(ME));
        step
    }

    #[test]
    fn a_covered_node_sets_no_watch_of_its_own_and_its_own_writes_cost_nothing_more() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"1".to_vec()));
        assert_eq!(drive_covered(&mut n, ZkReply::Created), Step::Create);
        n.on_watch(WatchKind::Created, true);
        assert!(n.next(&Acl::open(), true).is_none(), "no read to re-arm");
        n.want(Some(b"2".to_vec()));
        let set = ZkReply::Set {
            stat: NodeStat {
                version: 1,
                ephemeral_owner: ME.0,
                ..Default::default()
            },
        };
        assert_eq!(drive_covered(&mut n, set), Step::Set);
        n.on_watch(WatchKind::DataChanged, true);
        assert!(n.next(&Acl::open(), true).is_none(), "a restart is one set");
        assert!(n.published());
    }

    #[test]
    fn a_covered_node_deleted_by_someone_else_is_created_again() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"1".to_vec()));
        drive_covered(&mut n, ZkReply::Created);
        n.on_watch(WatchKind::Deleted, true);
        assert_eq!(drive_covered(&mut n, ZkReply::Created), Step::Create);
        assert!(n.published());
    }

    #[test]
    fn a_deletion_heard_while_a_write_is_out_is_read_again_after_its_reply() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"1".to_vec()));
        drive_covered(&mut n, ZkReply::Created);
        n.want(Some(b"2".to_vec()));
        let (step, _) = n.next(&Acl::open(), true).expect("a set");
        // The set was applied, then someone deleted the node; the reply comes last.
        n.on_watch(WatchKind::Deleted, true);
        let set = ZkReply::Set {
            stat: NodeStat {
                version: 1,
                ephemeral_owner: ME.0,
                ..Default::default()
            },
        };
        n.on_reply(step, &set, Some(ME));
        assert_eq!(
            drive_covered(&mut n, ZkReply::Error(ZkError::NoNode)),
            Step::Read
        );
        assert_eq!(drive_covered(&mut n, ZkReply::Created), Step::Create);
        assert!(n.published());
    }

    #[test]
    fn a_recheck_reads_a_node_believed_ours_once() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"1".to_vec()));
        drive_covered(&mut n, ZkReply::Created);
        n.recheck();
        assert_eq!(drive_covered(&mut n, ours(b"1")), Step::Read);
        assert!(n.next(&Acl::open(), true).is_none());
        assert!(n.published());
    }

    #[test]
    fn an_uncovered_node_watches_itself_again_after_each_event() {
        let mut n = EphemeralNode::new("/machines/m/s".into());
        n.want(Some(b"1".to_vec()));
        drive_covered(&mut n, ZkReply::Created);
        // The tree watch was refused: the node needs a watch of its own.
        assert_eq!(drive(&mut n, ours(b"1")), Step::Watch);
        n.on_watch(WatchKind::DataChanged, false);
        assert_eq!(drive(&mut n, ours(b"1")), Step::Watch);
    }
}
