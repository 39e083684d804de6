//! ZooKeeper requests the core issues and the replies and events it consumes.
//! The driver maps these onto a real client; the simulator onto its model.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Why a multi holding a read (or another multi) fails: only creates, sets and deletes
/// go in one. (The client reports it as "bad arguments: ...".)
pub const NOT_IN_MULTI: &str = "only create, set and delete go in a multi";

/// Identifies a request so its reply can be matched; replies to unknown ids are stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// A ZooKeeper session id as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreateMode {
    Persistent,
    Ephemeral,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZkOp {
    GetData {
        path: String,
        watch: bool,
    },
    GetChildren {
        path: String,
        watch: bool,
    },
    Create {
        path: String,
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
        mode: CreateMode,
    },
    SetData {
        path: String,
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
        version: Option<i32>,
    },
    Delete {
        path: String,
        version: Option<i32>,
    },
    /// Creates, sets and deletes applied as one transaction: all or nothing. Only the
    /// operator's plans (`crate::plan`) send these; the agent never does.
    Multi {
        ops: Vec<ZkOp>,
    },
}

impl ZkOp {
    /// The node the request is about; for a multi, its first op's (`/` when empty).
    pub fn path(&self) -> &str {
        match self {
            ZkOp::GetData { path, .. }
            | ZkOp::GetChildren { path, .. }
            | ZkOp::Create { path, .. }
            | ZkOp::SetData { path, .. }
            | ZkOp::Delete { path, .. } => path,
            ZkOp::Multi { ops } => ops.first().map_or("/", ZkOp::path),
        }
    }

    /// True for the ops a multi may hold: creates, sets and deletes.
    pub fn fits_in_multi(&self) -> bool {
        matches!(
            self,
            ZkOp::Create { .. } | ZkOp::SetData { .. } | ZkOp::Delete { .. }
        )
    }
}

/// The parts of a znode's stat the core uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeStat {
    pub version: i32,
    /// Session owning an ephemeral node; 0 for persistent nodes.
    pub ephemeral_owner: i64,
    /// The transaction that last changed the data. Transaction ids grow across the
    /// whole ensemble, so of two replies about one node the larger is the newer.
    #[serde(default)]
    pub mzxid: i64,
    /// The transaction that last added or removed a child: orders children replies.
    #[serde(default)]
    pub pzxid: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZkReply {
    Data {
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
        stat: NodeStat,
    },
    Children {
        names: Vec<String>,
        stat: NodeStat,
    },
    Created,
    Set {
        stat: NodeStat,
    },
    Deleted,
    Error(ZkError),
    /// A multi that committed: one reply per op, in order.
    Multi {
        replies: Vec<ZkReply>,
    },
    /// A multi that applied nothing because the op at `index` failed with `error`.
    MultiFailed {
        index: usize,
        error: ZkError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZkError {
    NoNode,
    NodeExists,
    BadVersion,
    NotEmpty,
    /// The connection dropped; a write may or may not have happened.
    ConnectionLoss,
    SessionExpired,
    /// The driver gave up waiting; a write may or may not have happened.
    Timeout,
    Other(String),
}

impl ZkError {
    /// True when a write's outcome is unknown and the node must be re-read.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ZkError::ConnectionLoss | ZkError::Timeout | ZkError::Other(_)
        )
    }
}

impl fmt::Display for ZkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZkError::NoNode => f.write_str("node does not exist"),
            ZkError::NodeExists => f.write_str("node already exists"),
            ZkError::BadVersion => f.write_str("version conflict"),
            ZkError::NotEmpty => f.write_str("node has children"),
            ZkError::ConnectionLoss => f.write_str("connection lost"),
            ZkError::SessionExpired => f.write_str("session expired"),
            ZkError::Timeout => f.write_str("timed out"),
            ZkError::Other(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchKind {
    Created,
    Deleted,
    DataChanged,
    ChildrenChanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub path: String,
    pub kind: WatchKind,
}

/// What the driver tells the core about its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEvent {
    Connected {
        session: SessionId,
        timeout: Duration,
    },
    Disconnected,
    Expired,
}
