//! What comes back for the reads and writes of tasks: the tasks containers (and a
//! service's children while it has none), this machine's results, requests, settings,
//! and a rolling task's previous machine's result.

use super::{Following, Node, Own, Purpose, Task, TaskKey};
use crate::agent::Agent;
use crate::paths::{self, Watched};
use crate::task::{TaskId, TaskRequest, TaskResult};
use crate::zk::{ZkError, ZkReply};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// Which read (or write) of a task a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Read {
    Own,
    Request,
    Settings,
    /// The write of our result.
    Write,
}

impl Read {
    /// What it does, for messages.
    pub(crate) fn doing(self) -> &'static str {
        match self {
            Read::Write => "writing",
            Read::Own | Read::Request | Read::Settings => "reading",
        }
    }
}

impl Agent {
    pub(in crate::agent) fn on_task_reply(
        &mut self,
        service: String,
        id: TaskId,
        read: Read,
        reply: ZkReply,
    ) {
        let key: TaskKey = (service, id);
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        self.dirty.tasks.insert(key.clone());
        let retry = match read {
            Read::Own => match on_own(task, reply) {
                OwnRead::Confirmed(write, version) => return self.written(&key, write, version),
                OwnRead::Retry => true,
                OwnRead::Done => false,
            },
            Read::Request => {
                if let ZkReply::Data { stat, .. } = &reply {
                    task.request_zxid = stat.mzxid;
                }
                let path = paths::task(&key.0, key.1.as_str());
                task.request = node(reply, &path, |data| {
                    TaskRequest::parse(data)
                        .map(Arc::new)
                        .map_err(|e| e.to_string())
                });
                task.request == Node::Retry
            }
            Read::Settings => {
                let path = paths::service_settings(&key.0);
                task.settings = node(reply, &path, |data| match serde_json::from_slice(data) {
                    Ok(Value::Object(map)) => Ok(Arc::new(map)),
                    Ok(_) => Err("the settings are not a JSON object".to_string()),
                    Err(e) => Err(format!("the settings are not JSON: {e}")),
                });
                task.settings == Node::Retry
            }
            Read::Write => {
                let Some(write) = task.write.take() else {
                    return;
                };
                match reply {
                    ZkReply::Set { stat } => {
                        return self.written(&key, write, stat.version);
                    }
                    ZkReply::Error(e) if e.outcome_unknown() => {
                        // Applied or not: reading our result tells.
                        task.doubt = Some(write);
                        task.own = Node::Unread;
                    }
                    // Changed or deleted meanwhile (by hand): read it again.
                    _ => task.own = Node::Unread,
                }
                false
            }
        };
        if retry {
            self.schedule_retry();
        }
    }

    /// A read of a task's node with a watch: a tasks container, a service's children,
    /// a previous machine's result.
    pub(in crate::agent) fn on_task_watched_read(&mut self, watched: Watched, reply: ZkReply) {
        let path = watched.path();
        if let ZkReply::Error(error) = &reply {
            // No watch was left by a failed read.
            self.armed.remove(&path);
            let relevant = self.task_read_relevant(&watched);
            match (error, &watched) {
                (ZkError::NoNode, Watched::Tasks(service))
                    if self.tasks.following(service) == Following::Deployed =>
                {
                    // A service from before tasks: its container appears later.
                    self.read(Watched::ServiceChildren(service.clone()));
                }
                (ZkError::NoNode, Watched::ServiceChildren(_)) => {}
                (ZkError::NoNode, Watched::TaskResult { .. }) => {
                    self.set_previous(&watched, Node::Missing);
                }
                (_, Watched::TaskResult { .. }) => {
                    self.set_previous(&watched, Node::Retry);
                    self.schedule_retry();
                }
                _ if relevant => {
                    self.reread.insert(path);
                    self.schedule_retry();
                }
                _ => {}
            }
            return;
        }
        // Replies can arrive out of order: an older read must not undo a newer one.
        let zxid = match &reply {
            ZkReply::Data { stat, .. } => stat.mzxid,
            ZkReply::Children { stat, .. } => stat.pzxid,
            _ => return,
        };
        let newest = self.newest_read.entry(path.clone()).or_default();
        if zxid < *newest {
            return;
        }
        *newest = zxid;
        match (watched, reply) {
            (Watched::Tasks(service), ZkReply::Children { names, .. }) => {
                self.apply_task_list(&service, &names);
            }
            (Watched::ServiceChildren(service), ZkReply::Children { names, .. }) => {
                let tasks = Watched::Tasks(service.clone());
                let listed = self.armed.contains(&tasks.path());
                if names.iter().any(|n| n == "tasks") && !listed && self.task_read_relevant(&tasks)
                {
                    self.read(tasks);
                }
            }
            (watched @ Watched::TaskResult { .. }, ZkReply::Data { data, .. }) => {
                let node = match TaskResult::parse(&data) {
                    Ok(result) => {
                        self.clear_problem(&path);
                        Node::Read(result.state)
                    }
                    Err(e) => {
                        self.problem(&path, e.to_string());
                        Node::Bad(e.to_string())
                    }
                };
                self.set_previous(&watched, node);
            }
            (_, other) => self.problem(&path, format!("unexpected reply {other:?}")),
        }
    }

    /// A watch on a task's node fired: read it again if it still matters.
    pub(in crate::agent) fn on_task_watch(&mut self, watched: Watched) {
        let ignored =
            planted!(PredecessorWatchIgnored) && matches!(watched, Watched::TaskResult { .. });
        if self.task_read_relevant(&watched) && !ignored {
            if let Watched::TaskResult { .. } = &watched {
                self.set_previous(&watched, Node::Reading);
            }
            self.read(watched);
        }
    }

    /// Whether a read of `watched` still serves a task: the service's tasks are
    /// followed (or looked at once more), or the previous machine's result is still
    /// waited for.
    pub(in crate::agent) fn task_read_relevant(&self, watched: &Watched) -> bool {
        match watched {
            Watched::Tasks(service) => self.tasks.following(service) != Following::No,
            Watched::ServiceChildren(service) => {
                self.tasks.following(service) == Following::Deployed
            }
            Watched::TaskResult { .. } => self.waiting_task(watched).is_some(),
            _ => false,
        }
    }

    /// The task whose previous machine's result `watched` is, while it waits for it.
    fn waiting_task(&self, watched: &Watched) -> Option<TaskKey> {
        let Watched::TaskResult {
            service,
            task,
            machine,
        } = watched
        else {
            return None;
        };
        let key = (service.clone(), TaskId::parse(task).ok()?);
        let entry = self.tasks.get(&key)?;
        let request = entry.request.value()?;
        let waits = request
            .predecessor(self.config.machine.as_str())
            .is_some_and(|p| p.as_str() == machine)
            && entry
                .own
                .value()
                .is_some_and(|own| !own.result.state.is_final());
        waits.then_some(key)
    }

    fn set_previous(&mut self, watched: &Watched, node: Node<crate::task::TaskState>) {
        if let Some(key) = self.waiting_task(watched) {
            if let Some(task) = self.tasks.get_mut(&key) {
                task.previous = node;
                self.dirty.tasks.insert(key);
            }
        }
    }

    /// The tasks container's children: new tasks are taken up, missing ones are gone.
    fn apply_task_list(&mut self, service: &str, names: &[String]) {
        let ids: std::collections::BTreeSet<TaskId> =
            names.iter().filter_map(|n| TaskId::parse(n).ok()).collect();
        let path = paths::service_tasks(service);
        match names.iter().find(|n| TaskId::parse(n).is_err()) {
            Some(bad) => self.problem(&path, format!("{bad:?} is not a task id")),
            None => self.clear_problem(&path),
        }
        // A late reply for a service gone from ZooKeeper: its tasks went with it.
        if !self.services.contains_key(service) {
            return;
        }
        let st = self.tasks.services.entry(service.to_string()).or_default();
        let mut touched = Vec::new();
        for (id, task) in st.tasks.iter_mut() {
            if !ids.contains(id) && !task.gone {
                task.gone = true;
                touched.push(id.clone());
            }
        }
        for id in ids {
            if !st.tasks.contains_key(&id) {
                st.tasks.insert(id.clone(), Task::new());
                touched.push(id);
            }
        }
        self.dirty
            .tasks
            .extend(touched.into_iter().map(|id| (service.to_string(), id)));
        // A late reply for a service no longer deployed here: its tasks are written
        // `skipped` (see `decide`); without any, no entry is kept, as when it left.
        self.drop_if_untasked(service);
    }
}

/// What a reply about our result node made of it.
enum OwnRead {
    /// A write whose outcome was unknown took effect, at this version.
    Confirmed(super::Write, i32),
    Retry,
    Done,
}

/// Our result node's reply: a result (checked against a write in doubt), missing, or a
/// failure to retry.
fn on_own(task: &mut Task, reply: ZkReply) -> OwnRead {
    let doubt = task.doubt.take();
    match reply {
        ZkReply::Data { data, stat } => match TaskResult::parse(&data) {
            Ok(result) => {
                if let Some(write) = doubt {
                    if write.result == result {
                        // Our write took effect: go on as if its reply had come.
                        return OwnRead::Confirmed(write, stat.version);
                    }
                    if let Purpose::Claim(_) = write.purpose {
                        // The claim did not take: claim again, with fresh settings.
                        task.settings = Node::Unread;
                    }
                }
                task.own = Node::Read(Own {
                    result,
                    version: stat.version,
                });
                OwnRead::Done
            }
            Err(e) => {
                task.own = Node::Bad(e.to_string());
                OwnRead::Done
            }
        },
        ZkReply::Error(ZkError::NoNode) => {
            task.own = Node::Missing;
            OwnRead::Done
        }
        _ => {
            task.doubt = doubt;
            task.own = Node::Retry;
            OwnRead::Retry
        }
    }
}

/// A read's reply as a node: decoded, missing, bad, or to be retried.
fn node<T>(reply: ZkReply, path: &str, decode: impl FnOnce(&[u8]) -> Result<T, String>) -> Node<T> {
    match reply {
        ZkReply::Data { data, .. } => match decode(&data) {
            Ok(value) => Node::Read(value),
            Err(e) => Node::Bad(e),
        },
        ZkReply::Error(ZkError::NoNode) => Node::Missing,
        // Refused again if read again: the task fails with the reason.
        ZkReply::Error(ZkError::NoAuth) => Node::Bad(format!(
            "ZooKeeper refused this machine reading {path}: not authorised"
        )),
        _ => Node::Retry,
    }
}
