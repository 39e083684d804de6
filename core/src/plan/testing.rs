//! A small in-memory tree that runs plans in the unit tests: versions, all-or-nothing
//! multis, and hooks that let a test play another writer, an agent, or a lost message.

use super::{Feedback, Outcome, Plan, PlanError, Request, Step};
use crate::time::Timestamp;
use crate::zk::{Acl, NodeStat, ZkError, ZkOp, ZkReply};
use std::collections::BTreeMap;

/// The issue's contract manifest.
pub(crate) const GREETER: &str = r#"name = "greeter"
description = "answers with a greeting"
environment = "none"
[settings]
greeting = "hello"
port = 0
[run]
command = ["python3", "-c", "...", "{port}", "{greeting}"]
[tasks.hello]
description = "say the greeting"
command = ["sh", "-c", "echo {greeting} from $POP_MACHINE_ID"]
restart_after = false
"#;

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Deliver,
    /// Lost on the way to the server: not applied; the client reports a timeout.
    LoseRequest,
    /// Applied, but the reply is lost: the client reports a lost connection.
    LoseReply,
}

#[derive(Debug, Clone)]
pub(crate) struct Tree {
    pub nodes: BTreeMap<String, (Vec<u8>, i32)>,
    pub now: Timestamp,
    /// Every write applied, as text, in order.
    pub writes: Vec<String>,
    /// Nodes' ACLs, as created or set (open when absent).
    pub acls: BTreeMap<String, Acl>,
    /// Every write is refused by an ACL (NoAuth), as for a client without the credential.
    pub refuse_writes: bool,
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl Tree {
    /// A tree holding these nodes (and the root).
    pub fn with(nodes: &[(&str, &str)]) -> Tree {
        let mut tree = Tree {
            nodes: BTreeMap::new(),
            now: Timestamp::from_millis(1_000),
            writes: Vec::new(),
            acls: BTreeMap::new(),
            refuse_writes: false,
        };
        tree.nodes.insert("/".into(), (Vec::new(), 0));
        for (path, data) in nodes {
            tree.nodes
                .insert(path.to_string(), (data.as_bytes().to_vec(), 0));
        }
        tree
    }

    /// A namespace with one service `s` whose machines list and settings are given.
    pub fn with_service(machines: &str, settings: &str) -> Tree {
        Tree::with(&[
            ("/pop", "{\"layout\":1}"),
            ("/machines", ""),
            ("/services", ""),
            ("/agents", ""),
            ("/services/s", ""),
            ("/services/s/machines", machines),
            ("/services/s/settings", settings),
            ("/services/s/state", ""),
        ])
    }

    /// A namespace with `/plugins` holding the issue's `greeter` manifest.
    pub fn with_greeter() -> Tree {
        Tree::with(&[
            ("/pop", "{\"layout\":1}"),
            ("/machines", ""),
            ("/services", ""),
            ("/agents", ""),
            ("/plugins", ""),
            ("/plugins/greeter", GREETER),
        ])
    }

    /// A node's ACL as text (open when never set).
    pub fn acl(&self, path: &str) -> String {
        self.acls.get(path).cloned().unwrap_or_default().to_string()
    }

    pub fn data(&self, path: &str) -> Option<&str> {
        self.nodes
            .get(path)
            .map(|(d, _)| std::str::from_utf8(d).unwrap_or("<binary>"))
    }

    pub fn children(&self, path: &str) -> Vec<String> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        self.nodes
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .collect()
    }

    /// Sets a node's data as another writer would, bumping its version.
    pub fn set(&mut self, path: &str, data: &str) {
        let (d, v) = self.nodes.entry(path.to_string()).or_default();
        *d = data.as_bytes().to_vec();
        *v += 1;
    }

    fn stat(version: i32) -> NodeStat {
        NodeStat {
            version,
            ..Default::default()
        }
    }

    fn apply_one(&mut self, op: &ZkOp) -> Result<ZkReply, ZkError> {
        match op {
            ZkOp::GetData { path, .. } => {
                let (data, version) = self.nodes.get(path).ok_or(ZkError::NoNode)?;
                Ok(ZkReply::Data {
                    data: data.clone(),
                    stat: Tree::stat(*version),
                })
            }
            ZkOp::GetChildren { path, .. } => {
                if !self.nodes.contains_key(path) {
                    return Err(ZkError::NoNode);
                }
                Ok(ZkReply::Children {
                    names: self.children(path),
                    stat: NodeStat::default(),
                })
            }
            ZkOp::Create {
                path, data, acl, ..
            } => {
                if !self.nodes.contains_key(parent(path)) {
                    return Err(ZkError::NoNode);
                }
                if self.nodes.contains_key(path) {
                    return Err(ZkError::NodeExists);
                }
                self.nodes.insert(path.clone(), (data.clone(), 0));
                self.acls.insert(path.clone(), acl.clone());
                Ok(ZkReply::Created)
            }
            // Plans watch nothing; a tree keeps no watches.
            ZkOp::WatchTree { .. } => Ok(ZkReply::Watching),
            ZkOp::SetAcl { path, acl, .. } => {
                let (_, v) = self.nodes.get(path).ok_or(ZkError::NoNode)?;
                let stat = Tree::stat(*v);
                self.acls.insert(path.clone(), acl.clone());
                Ok(ZkReply::Set { stat })
            }
            ZkOp::SetData {
                path,
                data,
                version,
            } => {
                let (d, v) = self.nodes.get_mut(path).ok_or(ZkError::NoNode)?;
                if version.is_some_and(|want| want != *v) {
                    return Err(ZkError::BadVersion);
                }
                *d = data.clone();
                *v += 1;
                Ok(ZkReply::Set {
                    stat: Tree::stat(*v),
                })
            }
            ZkOp::Delete { path, version } => {
                let (_, v) = self.nodes.get(path).ok_or(ZkError::NoNode)?;
                if version.is_some_and(|want| want != *v) {
                    return Err(ZkError::BadVersion);
                }
                if !self.children(path).is_empty() {
                    return Err(ZkError::NotEmpty);
                }
                self.nodes.remove(path);
                self.acls.remove(path);
                Ok(ZkReply::Deleted)
            }
            ZkOp::Check { path, version } => {
                let (_, v) = self.nodes.get(path).ok_or(ZkError::NoNode)?;
                if *version != *v {
                    return Err(ZkError::BadVersion);
                }
                Ok(ZkReply::Checked)
            }
            ZkOp::Multi { .. } => Err(ZkError::Other("a multi in a multi".into())),
        }
    }

    pub fn apply(&mut self, op: &ZkOp) -> ZkReply {
        let read = matches!(op, ZkOp::GetData { .. } | ZkOp::GetChildren { .. });
        if self.refuse_writes && !read {
            return match op {
                ZkOp::Multi { .. } => ZkReply::MultiFailed {
                    index: 0,
                    error: ZkError::NoAuth,
                },
                _ => ZkReply::Error(ZkError::NoAuth),
            };
        }
        if let ZkOp::Check { .. } = op {
            // As the client: a check exists only inside a multi.
            return ZkReply::Error(ZkError::Other("a check outside a multi".into()));
        }
        let ZkOp::Multi { ops } = op else {
            let reply = self.apply_one(op).unwrap_or_else(ZkReply::Error);
            if !matches!(op, ZkOp::GetData { .. } | ZkOp::GetChildren { .. })
                && !matches!(reply, ZkReply::Error(_))
            {
                self.writes.push(op.to_string());
            }
            return reply;
        };
        let saved = self.nodes.clone();
        let mut replies = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            match self.apply_one(op) {
                Ok(reply) => replies.push(reply),
                Err(error) => {
                    self.nodes = saved;
                    return ZkReply::MultiFailed { index, error };
                }
            }
        }
        self.writes.push(op.to_string());
        ZkReply::Multi { replies }
    }

    /// Runs `plan` to its end with nothing else happening.
    pub fn run(&mut self, plan: &mut dyn Plan) -> Result<Outcome, PlanError> {
        self.run_with(plan, |_, _| Fate::Deliver)
    }

    /// Runs `plan` to its end; before each request `hook` may change the tree (another
    /// writer, an agent) and says what becomes of the request.
    pub fn run_with(
        &mut self,
        plan: &mut dyn Plan,
        mut hook: impl FnMut(&mut Tree, &Request) -> Fate,
    ) -> Result<Outcome, PlanError> {
        let mut feedback = Feedback::Start;
        for _ in 0..100_000 {
            let request = match plan.next(self.now, feedback) {
                Step::Done(result) => return result,
                Step::Do(request) => request,
            };
            let fate = hook(self, &request);
            feedback = match request {
                Request::Wait(until) => {
                    self.now = self.now.max(until);
                    Feedback::Woke
                }
                Request::Read(ops) => Feedback::Read(
                    ops.iter()
                        .map(|op| match fate {
                            Fate::Deliver => self.apply(op),
                            Fate::LoseRequest => ZkReply::Error(ZkError::Timeout),
                            Fate::LoseReply => ZkReply::Error(ZkError::ConnectionLoss),
                        })
                        .collect(),
                ),
                Request::Write(op) => Feedback::Wrote(match fate {
                    Fate::Deliver => self.apply(&op),
                    Fate::LoseRequest => ZkReply::Error(ZkError::Timeout),
                    Fate::LoseReply => {
                        self.apply(&op);
                        ZkReply::Error(ZkError::ConnectionLoss)
                    }
                }),
            };
            self.now = self.now + std::time::Duration::from_millis(1);
        }
        panic!("the plan did not end within 100000 steps")
    }
}
