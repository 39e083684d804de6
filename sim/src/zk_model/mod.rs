//! A model of one ZooKeeper server: a tree of versioned nodes, sessions owning ephemerals
//! (optionally expiring on the model's own clock), one-shot data and child watches,
//! persistent recursive watches ([`tree_watches`]) and
//! all-or-nothing multis, per-node ACLs and per-session digest authentication (see
//! [`acl`]). Just enough semantics for pop's core, kept exact: replies,
//! errors and watch events are checked against a real server by
//! `tests/tests/model_conformance.rs`.
//!
//! Watches are counted per watched read, as the client delivers them: the server keeps one
//! watch per session and path and sends one event, but the client hands that event to
//! every watcher the session registered on the path (a data watch and a child watch of a
//! deleted node both fire; two watched reads of one node both fire). A notification here
//! is one fired watcher.

mod acl;
mod sessions;
mod tree_watches;

use pop_core::zk::{
    Acl, CreateMode, NodeStat, Perms, SessionId, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply,
};
use std::collections::{BTreeMap, BTreeSet};

pub use acl::INVALID_ACL;
pub use sessions::Session;
pub use tree_watches::UNIMPLEMENTED;

/// What production's `map_error` makes of the client's `NoChildrenForEphemerals` (the
/// core has no variant for it; the client's message becomes `ZkError::Other`).
pub const NO_CHILDREN_FOR_EPHEMERALS: &str = "ephemeral node can not have children";

/// The model's answer to a read (or a multi) inside a multi, which the real client cannot
/// even send; production answers the same (`pop_core::zk::NOT_IN_MULTI` as bad arguments).
pub const READ_IN_MULTI: &str = "bad arguments: only create, set, delete and check go in a multi";

/// The model's answer to a check sent alone, as production's
/// (`pop_core::zk::CHECK_ONLY_IN_MULTI` as bad arguments).
pub const CHECK_ALONE: &str = "bad arguments: a check goes only in a multi";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub data: Vec<u8>,
    pub version: i32,
    /// Changes to the node's children (each create or delete of a child adds one).
    pub cversion: i32,
    pub ephemeral_owner: i64,
    /// The transaction that last changed the data: grows across the whole tree.
    pub mzxid: i64,
    /// The transaction that last added or removed a child.
    pub pzxid: i64,
    /// Who may do what with the node (and, for CREATE and DELETE, with its children).
    pub acl: Acl,
    /// Changes to the ACL (`setACL`'s version checks it).
    pub aversion: i32,
}

impl Node {
    /// The stat the core sees.
    pub fn stat(&self) -> NodeStat {
        NodeStat {
            version: self.version,
            ephemeral_owner: self.ephemeral_owner,
            mzxid: self.mzxid,
            pzxid: self.pzxid,
        }
    }
}

/// A watch firing for a session.
pub type Notification = (SessionId, WatchEvent);

/// Watchers by path: one entry per watched read (a session may appear more than once).
type Watches = BTreeMap<String, Vec<i64>>;

/// The result of a multi: every reply, or the index and error of the first failing op.
pub type MultiResult = Result<Vec<ZkReply>, (usize, ZkError)>;

#[derive(Debug, Default)]
pub struct ZkModel {
    nodes: BTreeMap<String, Node>,
    /// The last transaction id handed out.
    zxid: i64,
    sessions: BTreeMap<i64, Session>,
    next_session: i64,
    /// The server's tickTime when sessions are clocked like a real server's; see
    /// [`ZkModel::with_tick`].
    tick_ms: Option<u64>,
    data_watches: Watches,
    child_watches: Watches,
    /// Persistent recursive watches: the sessions holding one, by path.
    tree_watches: BTreeMap<String, BTreeSet<i64>>,
    /// An older server: `addWatch` is answered [`UNIMPLEMENTED`].
    tree_watches_unimplemented: bool,
    /// By session: paths of the ephemerals it created and of the nodes it watched, at
    /// some time (more than it has now: nothing is taken out but by its expiry, which
    /// looks only there instead of at every node and watch of the tree).
    ephemerals_of: BTreeMap<i64, BTreeSet<String>>,
    watched_by: BTreeMap<i64, BTreeSet<String>>,
    /// What each session authenticated as (none: anonymous).
    auth: BTreeMap<i64, acl::Auth>,
}

/// A create a client refuses to send: its ACL is empty.
fn creates_without_acl(op: &ZkOp) -> bool {
    matches!(op, ZkOp::Create { acl, .. } if acl.entries().is_empty())
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    }
}

impl ZkModel {
    pub fn new() -> Self {
        let mut m = ZkModel {
            next_session: 0x100,
            ..Default::default()
        };
        m.nodes.insert(
            "/".into(),
            Node {
                data: Vec::new(),
                version: 0,
                cversion: 0,
                ephemeral_owner: 0,
                mzxid: 0,
                pzxid: 0,
                acl: Acl::open(),
                aversion: 0,
            },
        );
        m
    }

    /// Watches held over all sessions (data and child watches, as `wchs` counts them,
    /// and tree watches once each).
    pub fn watch_count(&self) -> usize {
        self.data_watches.values().map(Vec::len).sum::<usize>()
            + self.child_watches.values().map(Vec::len).sum::<usize>()
            + self.tree_watch_count()
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn children(&self, path: &str) -> Vec<String> {
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| !p[prefix.len()..].contains('/'))
            .map(|(p, _)| p[prefix.len()..].to_string())
            .collect()
    }

    /// Whether `session` has a watch armed on `path` (a child watch if `children`, else
    /// a data watch): what a reconnecting client's `SetWatches` is checked against.
    pub fn is_watched_by(&self, session: SessionId, path: &str, children: bool) -> bool {
        let watches = if children {
            &self.child_watches
        } else {
            &self.data_watches
        };
        watches.get(path).is_some_and(|l| l.contains(&session.0))
    }

    pub fn paths(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    fn watch(&mut self, children: bool, path: &str, session: SessionId) {
        let watches = if children {
            &mut self.child_watches
        } else {
            &mut self.data_watches
        };
        watches.entry(path.to_string()).or_default().push(session.0);
        self.watched_by
            .entry(session.0)
            .or_default()
            .insert(path.to_string());
    }

    fn fire(watches: &mut Watches, path: &str, kind: WatchKind, out: &mut Vec<Notification>) {
        for s in watches.remove(path).unwrap_or_default() {
            out.push((
                SessionId(s),
                WatchEvent {
                    path: path.to_string(),
                    kind,
                },
            ));
        }
    }

    /// A child of `path`'s parent was added or removed, in the current transaction.
    fn bump_cversion(&mut self, path: &str) {
        let zxid = self.zxid;
        if let Some(n) = parent(path).and_then(|p| self.nodes.get_mut(p)) {
            n.cversion += 1;
            n.pzxid = zxid;
        }
    }

    /// Removes one node (its children must be gone) and fires its watches in the server's
    /// order: the node's data and child watches (Deleted), then the parent's child watches.
    fn remove_node(&mut self, path: &str, out: &mut Vec<Notification>) {
        if self.nodes.remove(path).is_none() {
            return;
        }
        self.zxid += 1;
        self.bump_cversion(path);
        Self::fire(&mut self.data_watches, path, WatchKind::Deleted, out);
        Self::fire(&mut self.child_watches, path, WatchKind::Deleted, out);
        self.fire_tree(path, WatchKind::Deleted, out);
        if let Some(p) = parent(path) {
            Self::fire(&mut self.child_watches, p, WatchKind::ChildrenChanged, out);
        }
    }

    /// Applies one request from `session`; returns the reply and the watches it fired.
    pub fn apply(&mut self, session: SessionId, op: &ZkOp) -> (ZkReply, Vec<Notification>) {
        let mut events = Vec::new();
        if !self.is_live(session) {
            return (ZkReply::Error(ZkError::SessionExpired), events);
        }
        if let ZkOp::Multi { ops } = op {
            let (result, events) = self.multi(session, ops);
            let reply = match result {
                Ok(replies) => ZkReply::Multi { replies },
                Err((index, error)) => ZkReply::MultiFailed { index, error },
            };
            return (reply, events);
        }
        if let ZkOp::Check { .. } = op {
            return (ZkReply::Error(ZkError::Other(CHECK_ALONE.into())), events);
        }
        let reply = match self.apply_live(session, op, &mut events) {
            Ok(reply) => reply,
            Err(e) => ZkReply::Error(e),
        };
        (reply, events)
    }

    /// Applies `ops` from `session` as one transaction: each op sees the effects of the
    /// ones before it; on the first failure nothing is applied, no watch fires, and its
    /// index and error are returned. Only Create, SetData, Delete and Check may appear (the
    /// client cannot put a read in a multi); an empty multi succeeds with no replies.
    /// `apply` runs a `ZkOp::Multi` through here.
    /// A request from an expired session fails as a whole: reported at index 0.
    pub fn multi(&mut self, session: SessionId, ops: &[ZkOp]) -> (MultiResult, Vec<Notification>) {
        if !self.is_live(session) {
            return (Err((0, ZkError::SessionExpired)), Vec::new());
        }
        if let Some(i) = ops.iter().position(|op| !op.fits_in_multi()) {
            return (Err((i, ZkError::Other(READ_IN_MULTI.into()))), Vec::new());
        }
        // The client refuses an empty ACL before it sends anything.
        if let Some(i) = ops.iter().position(creates_without_acl) {
            return (Err((i, ZkError::Other(INVALID_ACL.into()))), Vec::new());
        }
        let saved = (
            self.nodes.clone(),
            self.data_watches.clone(),
            self.child_watches.clone(),
        );
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match self.apply_live(session, op, &mut events) {
                Ok(reply) => replies.push(reply),
                Err(e) => {
                    (self.nodes, self.data_watches, self.child_watches) = saved;
                    return (Err((i, e)), Vec::new());
                }
            }
        }
        (Ok(replies), events)
    }

    fn apply_live(
        &mut self,
        session: SessionId,
        op: &ZkOp,
        events: &mut Vec<Notification>,
    ) -> Result<ZkReply, ZkError> {
        match op {
            // A read of a missing node, or one refused, leaves no watch (the server checks
            // the node, then its ACL, then registers the watch).
            ZkOp::GetData { path, watch } => {
                self.nodes.get(path).ok_or(ZkError::NoNode)?;
                self.check(session, path, Perms::READ)?;
                let n = self.nodes.get(path).ok_or(ZkError::NoNode)?;
                let reply = ZkReply::Data {
                    data: n.data.clone(),
                    stat: n.stat(),
                };
                if *watch {
                    self.watch(false, path, session);
                }
                Ok(reply)
            }
            ZkOp::GetChildren { path, watch } => {
                if !self.nodes.contains_key(path) {
                    return Err(ZkError::NoNode);
                }
                self.check(session, path, Perms::READ)?;
                if *watch {
                    self.watch(true, path, session);
                }
                let stat = self.nodes.get(path).map(Node::stat).unwrap_or_default();
                Ok(ZkReply::Children {
                    names: self.children(path),
                    stat,
                })
            }
            ZkOp::Create {
                path,
                data,
                mode,
                acl,
            } => {
                if acl.entries().is_empty() {
                    return Err(ZkError::Other(INVALID_ACL.into()));
                }
                // The server's order: missing parent, the parent's CREATE right, existing
                // node, ephemeral parent.
                let parent_path = parent(path).ok_or(ZkError::NoNode)?;
                let p = self.nodes.get(parent_path).ok_or(ZkError::NoNode)?;
                if !self.auth_of(session).allows(&p.acl, Perms::CREATE) {
                    return Err(ZkError::NoAuth);
                }
                if self.nodes.contains_key(path) {
                    return Err(ZkError::NodeExists);
                }
                if p.ephemeral_owner != 0 {
                    return Err(ZkError::Other(NO_CHILDREN_FOR_EPHEMERALS.into()));
                }
                let owner = match mode {
                    CreateMode::Persistent => 0,
                    CreateMode::Ephemeral => session.0,
                };
                self.zxid += 1;
                self.nodes.insert(
                    path.clone(),
                    Node {
                        data: data.clone(),
                        version: 0,
                        cversion: 0,
                        ephemeral_owner: owner,
                        mzxid: self.zxid,
                        pzxid: self.zxid,
                        acl: acl.clone(),
                        aversion: 0,
                    },
                );
                if owner != 0 {
                    self.ephemerals_of
                        .entry(owner)
                        .or_default()
                        .insert(path.clone());
                }
                self.bump_cversion(path);
                Self::fire(&mut self.data_watches, path, WatchKind::Created, events);
                self.fire_tree(path, WatchKind::Created, events);
                if let Some(p) = parent(path) {
                    Self::fire(
                        &mut self.child_watches,
                        p,
                        WatchKind::ChildrenChanged,
                        events,
                    );
                }
                Ok(ZkReply::Created)
            }
            ZkOp::SetData {
                path,
                data,
                version,
            } => {
                self.zxid += 1;
                let zxid = self.zxid;
                self.nodes.get(path).ok_or(ZkError::NoNode)?;
                self.check(session, path, Perms::WRITE)?;
                let n = self.nodes.get_mut(path).ok_or(ZkError::NoNode)?;
                if version.is_some_and(|v| v != n.version) {
                    return Err(ZkError::BadVersion);
                }
                n.data = data.clone();
                n.version += 1;
                n.mzxid = zxid;
                let stat = n.stat();
                Self::fire(&mut self.data_watches, path, WatchKind::DataChanged, events);
                self.fire_tree(path, WatchKind::DataChanged, events);
                Ok(ZkReply::Set { stat })
            }
            ZkOp::Delete { path, version } => {
                // The server's order: the parent's DELETE right (so a refused session
                // cannot learn whether the node exists), the node, the version, the
                // children.
                if let Some(p) = parent(path) {
                    self.check(session, p, Perms::DELETE)?;
                }
                let n = self.nodes.get(path).ok_or(ZkError::NoNode)?;
                if version.is_some_and(|v| v != n.version) {
                    return Err(ZkError::BadVersion);
                }
                if !self.children(path).is_empty() {
                    return Err(ZkError::NotEmpty);
                }
                self.remove_node(path, events);
                Ok(ZkReply::Deleted)
            }
            // No watch fires for an ACL change.
            ZkOp::SetAcl { path, acl, version } => {
                if acl.entries().is_empty() {
                    return Err(ZkError::Other(INVALID_ACL.into()));
                }
                self.nodes.get(path).ok_or(ZkError::NoNode)?;
                self.check(session, path, Perms::ADMIN)?;
                let n = self.nodes.get_mut(path).ok_or(ZkError::NoNode)?;
                if version.is_some_and(|v| v != n.aversion) {
                    return Err(ZkError::BadVersion);
                }
                n.acl = acl.clone();
                n.aversion += 1;
                Ok(ZkReply::Set { stat: n.stat() })
            }
            // As the server: the node must exist and be readable, then the version.
            ZkOp::Check { path, version } => {
                self.nodes.get(path).ok_or(ZkError::NoNode)?;
                self.check(session, path, Perms::READ)?;
                let n = self.nodes.get(path).ok_or(ZkError::NoNode)?;
                if *version != n.version {
                    return Err(ZkError::BadVersion);
                }
                Ok(ZkReply::Checked)
            }
            ZkOp::WatchTree { path } => {
                if self.tree_watches_unimplemented {
                    return Err(ZkError::Other(UNIMPLEMENTED.into()));
                }
                self.add_tree_watch(session, path);
                Ok(ZkReply::Watching)
            }
            ZkOp::Multi { .. } => Err(ZkError::Other(READ_IN_MULTI.into())),
        }
    }

    /// Writes a node and its missing parents as an administrator would (tests' setup),
    /// past any ACL; nodes it creates are open.
    pub fn put(&mut self, path: &str, data: &[u8]) -> Vec<Notification> {
        let admin = self.open_superuser_session();
        let mut events = Vec::new();
        let mut prefix = String::new();
        for part in path.trim_start_matches('/').split('/') {
            prefix.push('/');
            prefix.push_str(part);
            if prefix != path && !self.nodes.contains_key(&prefix) {
                let op = ZkOp::Create {
                    path: prefix.clone(),
                    data: Vec::new(),
                    mode: CreateMode::Persistent,
                    acl: Default::default(),
                };
                events.extend(self.apply(admin, &op).1);
            }
        }
        let op = if self.nodes.contains_key(path) {
            ZkOp::SetData {
                path: path.into(),
                data: data.to_vec(),
                version: None,
            }
        } else {
            ZkOp::Create {
                path: path.into(),
                data: data.to_vec(),
                mode: CreateMode::Persistent,
                acl: Default::default(),
            }
        };
        events.extend(self.apply(admin, &op).1);
        self.sessions.remove(&admin.0);
        self.auth.remove(&admin.0);
        events
    }

    /// Deletes a subtree as an administrator would (deepest nodes first).
    pub fn remove_tree(&mut self, path: &str) -> Vec<Notification> {
        let prefix = format!("{path}/");
        let mut doomed: Vec<String> = self
            .nodes
            .keys()
            .filter(|p| p.as_str() == path || p.starts_with(&prefix))
            .cloned()
            .collect();
        doomed.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let mut events = Vec::new();
        for p in doomed {
            self.remove_node(&p, &mut events);
        }
        events
    }
}

#[cfg(test)]
mod tests;
