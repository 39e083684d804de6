//! Coordinated tasks on this machine (`pop run`, see [`crate::task`]).
//!
//! For each service deployed here the agent watches the service's tasks container.
//! For each task in it, it reads its own machine's result (no watch: only this agent
//! writes it) and, unless that is final, the request; a rolling task also watches the
//! result of the machine before this one. Then [`decide`] says what to do: write
//! `skipped`, `expired` or `waiting`, or claim the task by writing `running` (attempt+1,
//! with a version check) and only then run it. When the process has ended, its result
//! is written, again with a version check, and never written again once final.
//!
//! At least once: an agent finding its own result `running` while it runs nothing for
//! the task (its memory, [`Run`]) starts it again: the agent that claimed it died (or
//! was stopped) meanwhile, and its process was killed when the next agent started.
//! Nothing else ever starts a task twice on one machine.
//!
//! This module holds what the agent remembers of tasks; `reconcile` acts on it.

mod decide;
mod install;
mod last_look;
mod launch;
mod reconcile;
pub(super) mod replies;

use crate::task::{TaskId, TaskRequest, TaskResult, TaskState};
use crate::time::Timestamp;
pub(crate) use last_look::Following;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A task of a service.
pub(crate) type TaskKey = (String, TaskId);

/// Every task this agent knows, by service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tasks {
    services: BTreeMap<String, ServiceTasks>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ServiceTasks {
    #[serde(alias = "followed", deserialize_with = "last_look::following_or_flag")]
    following: Following,
    tasks: BTreeMap<TaskId, Task>,
}

/// What the agent knows of one node it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Node<T> {
    Unread,
    Reading,
    /// The read failed; it is sent again with the other retries.
    Retry,
    Missing,
    /// Unusable data, with why.
    Bad(String),
    Read(T),
}

impl<T> Node<T> {
    fn value(&self) -> Option<&T> {
        match self {
            Node::Read(value) => Some(value),
            _ => None,
        }
    }
}

/// This machine's result as last read or written, with the node's version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Own {
    result: TaskResult,
    version: i32,
}

/// What a write of our result is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Purpose {
    /// `running`: once written, run this.
    Claim(Box<TaskLaunch>),
    /// `running` for `install`: once written, watch the environment's build.
    Installing,
    Waiting,
    /// A final state.
    Final,
}

/// A write of our result in flight (or whose outcome is unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Write {
    result: TaskResult,
    purpose: Purpose,
}

/// How to run a task here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TaskLaunch {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// Directories to search before the `PATH` it would otherwise get.
    path_prepend: Vec<String>,
    cwd: String,
    /// The service's `user` and `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_as: Option<crate::settings::RunAs>,
    /// SIGTERM to SIGKILL, when it is stopped.
    grace: Duration,
    timeout: Duration,
}

/// Why the agent stops a task's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StopReason {
    /// It ran past its timeout: `timed_out`.
    TimedOut,
    /// The task (or its service) was deleted: nothing to write.
    Gone,
    /// The agent stops: nothing is written, the next agent runs it again.
    Shutdown,
}

/// The task's process on this machine, as this agent ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Run {
    Idle,
    /// `running` is written and the process asked for (its pid once it started).
    Started {
        attempt: u32,
        pid: Option<u32>,
        deadline: Timestamp,
        grace: Duration,
        stop: Option<StopReason>,
    },
    /// The process is gone; this result is to be written.
    Ended {
        result: Box<TaskResult>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Task {
    own: Node<Own>,
    request: Node<Arc<TaskRequest>>,
    /// The transaction that wrote the request (and, for `install`, the settings with
    /// its requirements): settings this agent read from then on hold them, or were
    /// changed again after.
    #[serde(default)]
    request_zxid: i64,
    /// The state of the machine before this one (rolling).
    previous: Node<TaskState>,
    /// The service's settings, read just before a start.
    settings: Node<Arc<Map<String, Value>>>,
    write: Option<Write>,
    /// A write whose outcome is unknown: the next read of our result tells.
    doubt: Option<Write>,
    run: Run,
    /// No longer in the tasks container (pruned, or the service removed).
    gone: bool,
}

impl Task {
    fn new() -> Task {
        Task {
            own: Node::Unread,
            request: Node::Unread,
            request_zxid: 0,
            previous: Node::Unread,
            settings: Node::Unread,
            write: None,
            doubt: None,
            run: Run::Idle,
            gone: false,
        }
    }

    /// A process runs for it.
    fn has_process(&self) -> bool {
        matches!(self.run, Run::Started { .. })
    }

    /// More may happen to it: the agent follows it after reconnecting.
    fn is_active(&self) -> bool {
        match (&self.own, &self.run) {
            (_, Run::Started { .. } | Run::Ended { .. }) => true,
            (Node::Missing, _) => false,
            (Node::Read(own), _) => !own.result.state.is_final() || self.write.is_some(),
            _ => true,
        }
    }
}

/// What the agent keeps about its tasks so that an input costs what it changed:
/// derived from them, rebuilt from a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TaskIndex {
    deadlines: BTreeSet<(Timestamp, TaskKey)>,
    entries: BTreeMap<TaskKey, IndexEntry>,
    processes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct IndexEntry {
    deadline: Option<Timestamp>,
    process: bool,
    active: bool,
}

impl TaskIndex {
    fn put(&mut self, key: &TaskKey, entry: Option<IndexEntry>) {
        if let Some(old) = self.entries.remove(key) {
            if let Some(at) = old.deadline {
                self.deadlines.remove(&(at, key.clone()));
            }
            self.processes -= usize::from(old.process);
        }
        if let Some(new) = entry.filter(|e| *e != IndexEntry::default()) {
            if let Some(at) = new.deadline {
                self.deadlines.insert((at, key.clone()));
            }
            self.processes += usize::from(new.process);
            self.entries.insert(key.clone(), new);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    fn due(&self, now: Timestamp) -> Vec<TaskKey> {
        self.deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Task processes running (or starting).
    pub(crate) fn processes(&self) -> usize {
        self.processes
    }

    fn active(&self) -> impl Iterator<Item = &TaskKey> {
        self.entries
            .iter()
            .filter(|(_, e)| e.active)
            .map(|(key, _)| key)
    }
}

fn index_entry(task: &Task, now: Timestamp) -> IndexEntry {
    IndexEntry {
        deadline: decide::deadline(task, now),
        process: task.has_process(),
        active: task.is_active(),
    }
}

impl Tasks {
    fn get(&self, key: &TaskKey) -> Option<&Task> {
        self.services.get(&key.0)?.tasks.get(&key.1)
    }

    fn get_mut(&mut self, key: &TaskKey) -> Option<&mut Task> {
        self.services.get_mut(&key.0)?.tasks.get_mut(&key.1)
    }

    fn keys(&self) -> Vec<TaskKey> {
        self.services
            .iter()
            .flat_map(|(s, st)| st.tasks.keys().map(|id| (s.clone(), id.clone())))
            .collect()
    }

    /// For the audit: where `other` differs from these tasks, in words.
    pub(crate) fn first_difference(&self, other: &Tasks) -> String {
        let names: BTreeSet<&String> = self.services.keys().chain(other.services.keys()).collect();
        for name in names {
            let (a, b) = (self.services.get(name), other.services.get(name));
            if a == b {
                continue;
            }
            let (Some(a), Some(b)) = (a, b) else {
                return format!("{name}: {a:?} became {b:?}");
            };
            if a.following != b.following {
                return format!(
                    "{name}: following {:?} became {:?}",
                    a.following, b.following
                );
            }
            let ids: BTreeSet<&TaskId> = a.tasks.keys().chain(b.tasks.keys()).collect();
            for id in ids {
                let (x, y) = (a.tasks.get(id), b.tasks.get(id));
                if x != y {
                    return format!("{name} {id}: {x:?} became {y:?}");
                }
            }
        }
        "nothing".to_string()
    }

    /// Whether anything of the service's tasks is kept (followed, or tasks of it here).
    pub(crate) fn keeps(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// How the service's tasks container is read.
    pub(crate) fn following(&self, service: &str) -> Following {
        self.services
            .get(service)
            .map_or(Following::No, |st| st.following)
    }

    /// Every key of the service's tasks.
    fn of_service(&self, service: &str) -> Vec<TaskKey> {
        self.services.get(service).map_or_else(Vec::new, |st| {
            st.tasks
                .keys()
                .map(|id| (service.to_string(), id.clone()))
                .collect()
        })
    }
}

/// How a task's process ended.
pub(super) enum TaskOutcome {
    Exited {
        status: crate::event::ExitStatus,
        stdout_tail: String,
        stderr_tail: String,
    },
    NotStarted {
        error: String,
    },
}
