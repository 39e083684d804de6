//! ZooKeeper requests the core issues and the replies and events it consumes.
//! The driver maps these onto a real client; the simulator onto its model.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Why a multi holding a read (or another multi) fails: only creates, sets, deletes and
/// checks go in one. (The client reports it as "bad arguments: ...".)
pub const NOT_IN_MULTI: &str = "only create, set, delete and check go in a multi";

/// Why a check sent alone fails: the client has no request for it outside a multi.
pub const CHECK_ONLY_IN_MULTI: &str = "a check goes only in a multi";

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
        /// Who may do what with the new node. Open (anyone, everything) unless the
        /// namespace is secured; left out of journals when open, so they read as before.
        #[serde(default, skip_serializing_if = "Acl::is_open")]
        acl: Acl,
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
    /// Replaces a node's ACL (`version`: of the ACL, not the data). Never in a multi:
    /// ZooKeeper's transactions cannot hold it.
    SetAcl {
        path: String,
        acl: Acl,
        version: Option<i32>,
    },
    /// Fails unless the node exists at `version`; changes nothing. Only in a multi
    /// (ZooKeeper's `check` op): a transaction that depends on a node it does not write.
    Check {
        path: String,
        version: i32,
    },
    /// Adds a persistent recursive watch on `path` (ZooKeeper 3.6's `addWatch`, mode
    /// PERSISTENT_RECURSIVE), the node need not exist: every create, set and delete of
    /// the node or a descendant is heard of, the watch stays after firing and goes with
    /// the session. One of these on a machine's directory replaces a data watch per node
    /// under it (and the read re-arming each after it fired). Never in a multi.
    WatchTree {
        path: String,
    },
    /// Creates, sets, deletes and checks applied as one transaction: all or nothing.
    /// Only the operator's plans (`crate::plan`) send these; the agent never does.
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
            | ZkOp::Delete { path, .. }
            | ZkOp::SetAcl { path, .. }
            | ZkOp::Check { path, .. }
            | ZkOp::WatchTree { path } => path,
            ZkOp::Multi { ops } => ops.first().map_or("/", ZkOp::path),
        }
    }

    /// True for the ops a multi may hold: creates, sets, deletes and checks.
    pub fn fits_in_multi(&self) -> bool {
        matches!(
            self,
            ZkOp::Create { .. } | ZkOp::SetData { .. } | ZkOp::Delete { .. } | ZkOp::Check { .. }
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
    /// A check in a committed multi held.
    Checked,
    /// A tree watch was added (see [`ZkOp::WatchTree`]).
    Watching,
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
    /// The node's ACL does not let this session's credential do that. Permanent: the
    /// same request fails again until someone changes the ACL or the credential.
    NoAuth,
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
            ZkError::NoAuth => f.write_str("not authorised by the node's ACL"),
            ZkError::Other(s) => write!(f, "{s}"),
        }
    }
}

/// ZooKeeper's permission bits for one ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Perms(pub u8);

impl Perms {
    pub const READ: Perms = Perms(1);
    pub const WRITE: Perms = Perms(2);
    pub const CREATE: Perms = Perms(4);
    pub const DELETE: Perms = Perms(8);
    pub const ADMIN: Perms = Perms(16);
    pub const ALL: Perms = Perms(31);

    pub const fn and(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    pub const fn has(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Perms::ALL {
            return f.write_str("all");
        }
        let letters: String = [
            (Perms::READ, 'r'),
            (Perms::WRITE, 'w'),
            (Perms::CREATE, 'c'),
            (Perms::DELETE, 'd'),
            (Perms::ADMIN, 'a'),
        ]
        .iter()
        .filter(|(p, _)| self.has(*p))
        .map(|(_, c)| *c)
        .collect();
        f.write_str(if letters.is_empty() { "none" } else { &letters })
    }
}

/// One entry of a node's ACL: `scheme:id` may do `perms`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclEntry {
    pub perms: Perms,
    pub scheme: String,
    /// Written to journals without a digest's hash (see [`redacted_digest`]).
    #[serde(serialize_with = "serialize_redacted")]
    pub id: String,
}

/// A digest id (`user:BASE64(SHA1(user:password))`) as files may show it: `user:x`, as
/// ZooKeeper shows it to those who may not change the ACL. The hash of a weak password
/// can be reversed by trying passwords, so it is kept out of journals; a journal read
/// back has `user:x` in its config and its actions alike, so replay still matches.
pub fn redacted_digest(id: &str) -> String {
    match id.split_once(':') {
        Some((user, _)) => format!("{user}:x"),
        None => id.to_string(),
    }
}

/// Serializes an ACL entry's id with [`redacted_digest`] (ids of other schemes hold no
/// secret, but only digests appear in pop's ACLs besides `world:anyone`).
pub fn serialize_redacted<S: serde::Serializer>(id: &str, s: S) -> Result<S::Ok, S::Error> {
    if id == "anyone" {
        return s.serialize_str(id);
    }
    s.serialize_str(&redacted_digest(id))
}

/// A node's access control list, in a canonical order (sorted, one entry per id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Acl(Vec<AclEntry>);

impl Acl {
    /// Anyone may do anything: what every node of an unsecured namespace gets.
    pub fn open() -> Acl {
        Acl(vec![AclEntry {
            perms: Perms::ALL,
            scheme: "world".into(),
            id: "anyone".into(),
        }])
    }

    pub fn is_open(&self) -> bool {
        *self == Acl::open()
    }

    /// An empty list, to add entries to (an empty ACL is refused by ZooKeeper).
    pub fn none() -> Acl {
        Acl(Vec::new())
    }

    /// Adds `perms` for a digest id (`user:BASE64(SHA1(user:password))`), merging with
    /// an entry the id has already.
    pub fn digest(self, id: &str, perms: Perms) -> Acl {
        self.grant("digest", id, perms)
    }

    /// Adds `perms` for everyone.
    pub fn anyone(self, perms: Perms) -> Acl {
        self.grant("world", "anyone", perms)
    }

    fn grant(mut self, scheme: &str, id: &str, perms: Perms) -> Acl {
        match self.0.iter_mut().find(|e| e.scheme == scheme && e.id == id) {
            Some(entry) => entry.perms = entry.perms.and(perms),
            None => self.0.push(AclEntry {
                perms,
                scheme: scheme.into(),
                id: id.into(),
            }),
        }
        self.0
            .sort_by(|a, b| (&a.scheme, &a.id).cmp(&(&b.scheme, &b.id)));
        self
    }

    pub fn entries(&self) -> &[AclEntry] {
        &self.0
    }
}

impl Default for Acl {
    fn default() -> Acl {
        Acl::open()
    }
}

impl fmt::Display for Acl {
    /// Digest ids are shown by user only: the hash is no business of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|e| {
                let who = match e.scheme.as_str() {
                    "digest" => e.id.split(':').next().unwrap_or_default().to_string(),
                    _ => format!("{}:{}", e.scheme, e.id),
                };
                format!("{who}={}", e.perms)
            })
            .collect();
        write!(f, "[{}]", entries.join(" "))
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
