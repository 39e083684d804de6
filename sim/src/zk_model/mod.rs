//! A model of one ZooKeeper server: a tree of versioned nodes, sessions owning ephemerals,
//! one-shot data and child watches. Just enough semantics for pop's core, kept exact.

use pop_core::zk::{
    CreateMode, NodeStat, SessionId, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply,
};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub data: Vec<u8>,
    pub version: i32,
    pub ephemeral_owner: i64,
}

/// A watch firing for a session.
pub type Notification = (SessionId, WatchEvent);

#[derive(Debug, Default)]
pub struct ZkModel {
    nodes: BTreeMap<String, Node>,
    live_sessions: BTreeSet<i64>,
    next_session: i64,
    data_watches: BTreeMap<String, BTreeSet<i64>>,
    child_watches: BTreeMap<String, BTreeSet<i64>>,
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
                ephemeral_owner: 0,
            },
        );
        m
    }

    pub fn open_session(&mut self) -> SessionId {
        self.next_session += 1;
        self.live_sessions.insert(self.next_session);
        SessionId(self.next_session)
    }

    pub fn is_live(&self, session: SessionId) -> bool {
        self.live_sessions.contains(&session.0)
    }

    /// Ends a session: its ephemerals go, and watchers of them are told.
    pub fn expire(&mut self, session: SessionId) -> Vec<Notification> {
        self.live_sessions.remove(&session.0);
        for set in self
            .data_watches
            .values_mut()
            .chain(self.child_watches.values_mut())
        {
            set.remove(&session.0);
        }
        let owned: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.ephemeral_owner == session.0)
            .map(|(p, _)| p.clone())
            .collect();
        let mut events = Vec::new();
        for path in owned {
            self.nodes.remove(&path);
            self.fire_removed(&path, &mut events);
        }
        events
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

    pub fn paths(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    fn fire(
        watches: &mut BTreeMap<String, BTreeSet<i64>>,
        path: &str,
        kind: WatchKind,
        out: &mut Vec<Notification>,
    ) {
        if let Some(sessions) = watches.remove(path) {
            for s in sessions {
                out.push((
                    SessionId(s),
                    WatchEvent {
                        path: path.to_string(),
                        kind,
                    },
                ));
            }
        }
    }

    fn fire_removed(&mut self, path: &str, out: &mut Vec<Notification>) {
        Self::fire(&mut self.data_watches, path, WatchKind::Deleted, out);
        Self::fire(&mut self.child_watches, path, WatchKind::Deleted, out);
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
        let reply = match op {
            ZkOp::GetData { path, watch } => match self.nodes.get(path) {
                Some(n) => {
                    if *watch {
                        self.data_watches
                            .entry(path.clone())
                            .or_default()
                            .insert(session.0);
                    }
                    ZkReply::Data {
                        data: n.data.clone(),
                        stat: NodeStat {
                            version: n.version,
                            ephemeral_owner: n.ephemeral_owner,
                        },
                    }
                }
                None => ZkReply::Error(ZkError::NoNode),
            },
            ZkOp::GetChildren { path, watch } => {
                if self.nodes.contains_key(path) {
                    if *watch {
                        self.child_watches
                            .entry(path.clone())
                            .or_default()
                            .insert(session.0);
                    }
                    ZkReply::Children(self.children(path))
                } else {
                    ZkReply::Error(ZkError::NoNode)
                }
            }
            ZkOp::Create { path, data, mode } => {
                if self.nodes.contains_key(path) {
                    ZkReply::Error(ZkError::NodeExists)
                } else {
                    match parent(path).and_then(|p| self.nodes.get(p)) {
                        None => ZkReply::Error(ZkError::NoNode),
                        Some(p) if p.ephemeral_owner != 0 => {
                            ZkReply::Error(ZkError::Other("NoChildrenForEphemerals".into()))
                        }
                        Some(_) => {
                            let owner = match mode {
                                CreateMode::Persistent => 0,
                                CreateMode::Ephemeral => session.0,
                            };
                            self.nodes.insert(
                                path.clone(),
                                Node {
                                    data: data.clone(),
                                    version: 0,
                                    ephemeral_owner: owner,
                                },
                            );
                            Self::fire(
                                &mut self.data_watches,
                                path,
                                WatchKind::Created,
                                &mut events,
                            );
                            if let Some(p) = parent(path) {
                                Self::fire(
                                    &mut self.child_watches,
                                    p,
                                    WatchKind::ChildrenChanged,
                                    &mut events,
                                );
                            }
                            ZkReply::Created
                        }
                    }
                }
            }
            ZkOp::SetData {
                path,
                data,
                version,
            } => match self.nodes.get_mut(path) {
                None => ZkReply::Error(ZkError::NoNode),
                Some(n) if version.is_some_and(|v| v != n.version) => {
                    ZkReply::Error(ZkError::BadVersion)
                }
                Some(n) => {
                    n.data = data.clone();
                    n.version += 1;
                    let stat = NodeStat {
                        version: n.version,
                        ephemeral_owner: n.ephemeral_owner,
                    };
                    Self::fire(
                        &mut self.data_watches,
                        path,
                        WatchKind::DataChanged,
                        &mut events,
                    );
                    ZkReply::Set { stat }
                }
            },
            ZkOp::Delete { path, version } => match self.nodes.get(path) {
                None => ZkReply::Error(ZkError::NoNode),
                Some(n) if version.is_some_and(|v| v != n.version) => {
                    ZkReply::Error(ZkError::BadVersion)
                }
                Some(_) if !self.children(path).is_empty() => ZkReply::Error(ZkError::NotEmpty),
                Some(_) => {
                    self.nodes.remove(path);
                    self.fire_removed(path, &mut events);
                    ZkReply::Deleted
                }
            },
        };
        (reply, events)
    }

    /// Writes a node and its missing parents as an administrator would (tests' setup).
    pub fn put(&mut self, path: &str, data: &[u8]) -> Vec<Notification> {
        let admin = self.open_session();
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
            }
        };
        events.extend(self.apply(admin, &op).1);
        self.live_sessions.remove(&admin.0);
        events
    }

    /// Deletes a subtree as an administrator would.
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
            self.nodes.remove(&p);
            self.fire_removed(&p, &mut events);
        }
        events
    }
}
