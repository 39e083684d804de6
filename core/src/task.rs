//! Coordinated tasks (`pop run <service> <task> [args...]`): what a request and a
//! machine's result look like in ZooKeeper, shared by the plan that issues a task, the
//! agents that run it, `pop tasks` and the simulator.
//!
//! ```text
//! /services/<s>/tasks                   container (pop add; the first pop run for older services)
//! /services/<s>/tasks/<id>              the request, JSON (TaskRequest), written once
//! /services/<s>/tasks/<id>/<machine>    that machine's result, JSON (TaskResult)
//! ```
//!
//! `pop run` creates the request and a `{"state":"pending"}` result for every target in
//! one multi; afterwards only the target's agent writes its result, always with a
//! version check, and a final state is never written again.

use crate::names::{MachineId, TaskName};
use crate::plugin::{Environment, Template};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// Tasks kept per service: `pop run` deletes older ones after issuing a new one.
pub const KEEP_TASKS: usize = 20;
/// The end of a task's stdout and stderr kept in its result, each.
pub const TAIL_BYTES: usize = 4096;
/// The end of the stdout of `packages` kept in its result: the whole listing of a large
/// environment (about 400 distributions at 150 bytes a line), still far below what a
/// ZooKeeper node holds (1 MiB). The agent's driver reads this much of every task's
/// output; the core keeps [`TAIL_BYTES`] of it but for this task.
pub const LISTING_TAIL_BYTES: usize = 64 * 1024;
/// How long a task may run when neither `pop run --timeout` nor its manifest says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long after it is issued a task may still start on a machine, unless `pop run
/// --expire` says otherwise.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(3600);
/// The longest `--timeout` and `--expire` accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A task's id: `t<created, ms since the epoch, 13 digits>-<4 hex digits>`, chosen by
/// `pop run`, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("task id {0:?} is not t<13 digits>-<4 hex digits>")]
pub struct BadTaskId(pub String);

impl TaskId {
    /// The id of a task created at `created`, told apart from others of the same
    /// millisecond by `nonce` (random, from the caller).
    pub fn new(created: Timestamp, nonce: u16) -> TaskId {
        // 13 digits last until the year 2286.
        let ms = created.as_millis().min(9_999_999_999_999);
        TaskId(format!("t{ms:013}-{nonce:04x}"))
    }

    pub fn parse(text: &str) -> Result<TaskId, BadTaskId> {
        let bad = || BadTaskId(text.to_string());
        let rest = text.strip_prefix('t').ok_or_else(bad)?;
        let (ms, nonce) = rest.split_once('-').ok_or_else(bad)?;
        let digits = ms.len() == 13 && ms.bytes().all(|b| b.is_ascii_digit());
        let hex = nonce.len() == 4
            && nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if digits && hex {
            Ok(TaskId(text.to_string()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the task was created, from its id.
    pub fn created(&self) -> Timestamp {
        let ms = self.0.get(1..14).and_then(|d| d.parse().ok()).unwrap_or(0);
        Timestamp::from_millis(ms)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TaskId {
    type Error = BadTaskId;
    fn try_from(s: String) -> Result<Self, BadTaskId> {
        TaskId::parse(&s)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.0
    }
}

/// Where a machine is with a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Issued; the machine's agent has not taken it up yet.
    Pending,
    /// Rolling: waits for the machine before it in order.
    Waiting,
    /// Started (the `attempt`th time); an agent that finds its own machine's result
    /// `running` without running it itself starts it again (at least once: see README).
    Running,
    Succeeded,
    Failed,
    /// Killed after the task's timeout.
    TimedOut,
    /// Not started before its expiry.
    Expired,
    /// Not run: an earlier machine of a rolling task did not succeed, or the service is
    /// no longer deployed on the machine.
    Skipped,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Waiting,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Expired,
        TaskState::Skipped,
    ];

    /// Nothing more happens to a result in a final state.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TaskState::Pending | TaskState::Waiting | TaskState::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Waiting => "waiting",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Expired => "expired",
            TaskState::Skipped => "skipped",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a task does: a command of its type's manifest, or one of the tasks built into
/// every type with a Python environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// The manifest's `[tasks.<name>]` command, copied into the request.
    #[default]
    Command,
    /// `install <requirement>...`: the same write that issued it added the requirements
    /// to the service's `packages`; it succeeds on a machine once the environment for
    /// settings holding them is built there, and fails with that build's error. No
    /// process of its own: the agent's environment build is the work.
    Install,
    /// `packages`: the environment's interpreter lists its distributions, one JSON line
    /// each ([`crate::packages`]).
    Packages,
}

impl TaskKind {
    /// The task built into types with a Python environment under `name`, if any.
    pub fn builtin(name: &str) -> Option<TaskKind> {
        match name {
            "install" => Some(TaskKind::Install),
            "packages" => Some(TaskKind::Packages),
            _ => None,
        }
    }

    fn is_command(&self) -> bool {
        *self == TaskKind::Command
    }

    /// How much of the end of the task's stdout its result keeps.
    pub fn stdout_tail_bytes(self) -> usize {
        match self {
            TaskKind::Packages => LISTING_TAIL_BYTES,
            TaskKind::Command | TaskKind::Install => TAIL_BYTES,
        }
    }
}

/// Why data at a task node cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TaskDataError {
    #[error("not a task request: {0}")]
    Request(String),
    #[error("not a task result: {0}")]
    Result(String),
}

/// `/services/<s>/tasks/<id>`: what to run where, fixed when issued. The task's
/// definition (command, environment, `restart_after`) is copied from its type's manifest
/// then, so every machine runs the task that was issued, whatever happens to the plugin
/// meanwhile. Times are seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    pub task: TaskName,
    /// Absent in requests of manifest commands (and in those from before built-in tasks).
    #[serde(default, skip_serializing_if = "TaskKind::is_command")]
    pub kind: TaskKind,
    pub args: Vec<String>,
    /// The targets, in the order a rolling task goes through them.
    pub machines: Vec<MachineId>,
    pub rolling: bool,
    /// `user@host` of whoever issued it.
    pub author: String,
    pub created_at: f64,
    /// A machine that has not started the task by then does not: `expired`.
    pub expires_at: f64,
    pub timeout_s: f64,
    /// The task's command templates, as its manifest had them (empty for a built-in task).
    pub command: Vec<String>,
    pub environment: Environment,
    pub restart_after: bool,
}

/// Seconds since the epoch as a timestamp (negative and non-finite values as 0).
pub fn timestamp(secs: f64) -> Timestamp {
    if secs.is_finite() && secs > 0.0 {
        Timestamp::from_millis((secs * 1000.0).round() as u64)
    } else {
        Timestamp::default()
    }
}

impl TaskRequest {
    /// Decodes a request written by anyone: a JSON object with every field, sensible
    /// values, and a command that is a list of templates.
    pub fn parse(data: &[u8]) -> Result<TaskRequest, TaskDataError> {
        let bad = |e: String| TaskDataError::Request(e);
        let request: TaskRequest = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
        if request.machines.is_empty() {
            return Err(bad("it targets no machine".into()));
        }
        for (i, machine) in request.machines.iter().enumerate() {
            if request.machines[..i].contains(machine) {
                return Err(bad(format!("machine {machine} is targeted twice")));
            }
        }
        let times = [request.created_at, request.expires_at, request.timeout_s];
        if times.iter().any(|t| !t.is_finite() || *t < 0.0) || request.timeout_s == 0.0 {
            return Err(bad("its times are not positive numbers of seconds".into()));
        }
        match request.kind {
            TaskKind::Command if request.command.is_empty() => {
                return Err(bad("its command is empty".into()));
            }
            TaskKind::Install if request.args.is_empty() => {
                return Err(bad("install names no requirement".into()));
            }
            TaskKind::Install | TaskKind::Packages
                if request.environment != Environment::Python =>
            {
                return Err(bad(format!(
                    "{} is a task of types with a Python environment",
                    request.task
                )));
            }
            _ => {}
        }
        request.templates().map_err(bad)?;
        if request.args.iter().any(|a| a.contains('\0')) {
            return Err(bad("an argument holds a NUL character".into()));
        }
        Ok(request)
    }

    pub fn render(&self) -> Vec<u8> {
        // Plain data: always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The command as templates.
    pub fn templates(&self) -> Result<Vec<Template>, String> {
        self.command
            .iter()
            .map(|t| Template::parse(t).map_err(|e| format!("command element {t:?}: {e}")))
            .collect()
    }

    pub fn targets(&self, machine: &str) -> bool {
        self.machines.iter().any(|m| m.as_str() == machine)
    }

    /// For a rolling task, the machine that must succeed before `machine` starts.
    pub fn predecessor(&self, machine: &str) -> Option<&MachineId> {
        if !self.rolling {
            return None;
        }
        let at = self.machines.iter().position(|m| m.as_str() == machine)?;
        at.checked_sub(1).map(|i| &self.machines[i])
    }

    pub fn created(&self) -> Timestamp {
        timestamp(self.created_at)
    }

    pub fn expires(&self) -> Timestamp {
        timestamp(self.expires_at)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis((self.timeout_s * 1000.0).round().min(u64::MAX as f64) as u64)
    }

    /// What `pop run` would have been typed as, for lists.
    pub fn command_line(&self) -> String {
        let mut line = self.task.to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }
}

/// Who ran a task: the agent process, so a re-run after a crash is visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRef {
    pub host: String,
    pub pid: u32,
    /// When that agent started, ms since the epoch.
    pub started_ms: u64,
}

/// `/services/<s>/tasks/<id>/<machine>`: that machine's progress and outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub state: TaskState,
    /// How often it was started on this machine (more than once only after an agent
    /// died while running it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The end of its output (at most [`TAIL_BYTES`] each).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRef>,
    /// Why pop ended it so, in words (a timeout, an expiry, a predecessor's failure, a
    /// command that could not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskResult {
    /// What `pop run` writes for every target.
    pub fn pending() -> TaskResult {
        TaskResult {
            state: TaskState::Pending,
            attempt: 0,
            exit_code: None,
            signal: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            started_at: None,
            ended_at: None,
            agent: None,
            error: None,
        }
    }

    /// The same result in another state.
    pub fn with_state(&self, state: TaskState) -> TaskResult {
        TaskResult {
            state,
            ..self.clone()
        }
    }

    pub fn parse(data: &[u8]) -> Result<TaskResult, TaskDataError> {
        serde_json::from_slice(data).map_err(|e| TaskDataError::Result(e.to_string()))
    }

    pub fn render(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// How long it ran, once it ended.
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = (self.started_at?, self.ended_at?);
        Some(timestamp(end).saturating_since(timestamp(start)))
    }

    /// The last line of its output (stdout, else stderr), else the error, for tables.
    pub fn summary_line(&self) -> &str {
        fn last(text: &str) -> Option<&str> {
            text.lines().rev().find(|l| !l.trim().is_empty())
        }
        last(&self.stdout_tail)
            .or_else(|| last(&self.stderr_tail))
            .or(self.error.as_deref())
            .unwrap_or("")
    }
}

/// The end of `output`: at most [`TAIL_BYTES`], cut at a character boundary, invalid
/// UTF-8 replaced.
pub fn tail(output: &[u8]) -> String {
    tail_of(output, TAIL_BYTES)
}

/// The end of `output`: at most `limit` bytes, cut at a character boundary, invalid
/// UTF-8 replaced.
pub fn tail_of(output: &[u8], limit: usize) -> String {
    let start = output.len().saturating_sub(limit);
    let text = String::from_utf8_lossy(&output[start..]);
    cut_text(text.into_owned(), limit)
}

/// The end of `text`: at most `limit` bytes, cut at a character boundary.
pub fn cut_text(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut cut = text.len() - limit;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TaskRequest {
        TaskRequest {
            task: TaskName::new("hello").expect("a name"),
            kind: TaskKind::Command,
            args: vec!["a".into()],
            machines: vec![
                MachineId::new("m1").expect("an id"),
                MachineId::new("m2").expect("an id"),
            ],
            rolling: true,
            author: "me@here".into(),
            created_at: 1_700_000_000.5,
            expires_at: 1_700_003_600.5,
            timeout_s: 30.0,
            command: vec!["echo".into(), "{greeting}".into()],
            environment: Environment::None,
            restart_after: false,
        }
    }

    #[test]
    fn ids_sort_by_creation_and_say_when() {
        let a = TaskId::new(Timestamp::from_millis(1_700_000_000_123), 0xbeef);
        assert_eq!(a.as_str(), "t1700000000123-beef");
        assert_eq!(a.created(), Timestamp::from_millis(1_700_000_000_123));
        let b = TaskId::new(Timestamp::from_millis(1_700_000_000_124), 0);
        assert!(a < b);
        assert_eq!(TaskId::parse(a.as_str()), Ok(a));
        for bad in [
            "",
            "t1-beef",
            "x1700000000123-beef",
            "t1700000000123-BEEF",
            "t1700000000123_beef",
            "t1700000000123-beefy",
        ] {
            assert!(TaskId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_request_round_trips_and_knows_the_order() {
        let r = request();
        assert_eq!(TaskRequest::parse(&r.render()), Ok(r.clone()));
        assert_eq!(r.predecessor("m1"), None);
        assert_eq!(r.predecessor("m2").map(MachineId::as_str), Some("m1"));
        assert_eq!(r.predecessor("m3"), None);
        assert!(r.targets("m2") && !r.targets("m3"));
        assert_eq!(r.timeout(), Duration::from_secs(30));
        assert_eq!(r.expires(), Timestamp::from_millis(1_700_003_600_500));
        let parallel = TaskRequest {
            rolling: false,
            ..r
        };
        assert_eq!(parallel.predecessor("m2"), None);
    }

    #[test]
    fn a_command_request_is_written_as_before_built_in_tasks_and_built_in_ones_say_their_kind() {
        let r = request();
        let text = String::from_utf8(r.render()).expect("UTF-8");
        assert!(!text.contains("kind"), "{text}");
        let install = TaskRequest {
            kind: TaskKind::Install,
            command: Vec::new(),
            environment: Environment::Python,
            ..r.clone()
        };
        let text = String::from_utf8(install.render()).expect("UTF-8");
        assert!(text.contains(r#""kind":"install""#), "{text}");
        assert_eq!(TaskRequest::parse(text.as_bytes()), Ok(install.clone()));
        let no_requirement = TaskRequest {
            args: Vec::new(),
            ..install.clone()
        };
        assert!(TaskRequest::parse(&no_requirement.render()).is_err());
        let no_python = TaskRequest {
            environment: Environment::None,
            ..install
        };
        assert!(TaskRequest::parse(&no_python.render()).is_err());
        assert_eq!(TaskKind::Packages.stdout_tail_bytes(), LISTING_TAIL_BYTES);
    }

    #[test]
    fn bad_requests_say_why() {
        type Change = fn(&mut TaskRequest);
        let cases: [(Change, &str); 5] = [
            (|r| r.machines.clear(), "no machine"),
            (
                |r| r.machines.push(MachineId::new("m1").expect("an id")),
                "twice",
            ),
            (|r| r.timeout_s = 0.0, "times"),
            (|r| r.command = vec!["{x".into()], "command element"),
            (|r| r.args = vec!["a\0b".into()], "NUL"),
        ];
        for (change, needle) in cases {
            let mut r = request();
            change(&mut r);
            let err = TaskRequest::parse(&r.render())
                .expect_err("refused")
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(TaskRequest::parse(b"{}").is_err());
        assert!(TaskRequest::parse(b"\xff").is_err());
    }

    #[test]
    fn the_placeholder_is_tiny_and_results_round_trip() {
        assert_eq!(TaskResult::pending().render(), br#"{"state":"pending"}"#);
        assert_eq!(
            TaskResult::parse(br#"{"state":"pending"}"#),
            Ok(TaskResult::pending())
        );
        let done = TaskResult {
            state: TaskState::Succeeded,
            attempt: 2,
            exit_code: Some(0),
            stdout_tail: "a\nlast\n\n".into(),
            started_at: Some(10.0),
            ended_at: Some(12.5),
            ..TaskResult::pending()
        };
        assert_eq!(TaskResult::parse(&done.render()), Ok(done.clone()));
        assert_eq!(done.duration(), Some(Duration::from_millis(2500)));
        assert_eq!(done.summary_line(), "last");
        assert!(TaskResult::parse(br#"{"state":"done"}"#).is_err());
        assert!(TaskState::ALL.iter().filter(|s| s.is_final()).count() == 5);
    }

    #[test]
    fn a_tail_is_the_end_cut_at_a_character() {
        assert_eq!(tail(b"short"), "short");
        let long = "é".repeat(TAIL_BYTES);
        let t = tail(long.as_bytes());
        assert!(
            t.len() <= TAIL_BYTES && t.chars().all(|c| c == 'é'),
            "{}",
            t.len()
        );
        let mut bytes = vec![b'x'; TAIL_BYTES];
        bytes.push(0xff);
        assert!(tail(&bytes).len() <= TAIL_BYTES);
    }
}
