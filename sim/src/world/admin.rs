//! Operators at their terminals. Each terminal runs one `pop` command at a time as the
//! very plan the CLI runs (`pop_core::plan`), over its own connection to the modelled
//! ZooKeeper: every step travels with a latency, so agents' events interleave with it,
//! and may be lost on the way (not applied) or on the way back (applied, reply lost), at
//! random or while the terminal's link is cut. The plan then hears, after the CLI's
//! timeout, that the request failed, as the CLI would.
//!
//! Also here: the raw writes of someone using a ZooKeeper client instead of pop (garbage
//! data, tests' setup), which bypass every plan.

use super::command::Command;
use super::security::settle;
use super::{Event, World, LATENCY};
use pop_core::access::Access;
use pop_core::paths::{self, Watched};
use pop_core::plan::{Feedback, Outcome, Plan, PlanError, Request, Step};
use pop_core::settings::parse_machines;
use pop_core::zk::{SessionId, ZkError, ZkOp, ZkReply};
use pop_core::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Operators that may run commands at the same time.
pub const TERMINALS: usize = 2;
/// How long a terminal waits for a reply before the command hears of a timeout (the CLI
/// waits 5 s; shorter here, so a chaos phase sees more commands).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `remove` waits for agents still publishing (as the CLI).
pub const DELETE_PATIENCE: Duration = Duration::from_secs(30);
/// What plans call the namespace in their messages.
pub(super) const AT: &str = "sim";

/// A command being carried out.
pub(super) struct Running {
    pub command: Command,
    plan: Box<dyn Plan>,
    /// For `add`: the settings data its plan writes.
    pub settings_data: Option<Vec<u8>>,
    /// Requests or replies of this command that were lost.
    pub faults: u32,
    /// An `add` whose create took effect while its reply was lost.
    pub applied_unacknowledged: bool,
    /// Every node's data when the server last answered this command: what its outcome
    /// must be true of.
    pub seen: BTreeMap<String, Vec<u8>>,
    /// What runs once the outcome is decided (a secured deploy or undeploy sets the
    /// settings ACL to the list as it is), and meanwhile the outcome and what the server
    /// has answered since (what a failure of the follow-up must be true of).
    follow_up: Option<Box<dyn Plan>>,
    decided: Option<(Outcome, BTreeMap<String, Vec<u8>>)>,
}

/// A terminal and its connection.
#[derive(Default)]
pub struct Terminal {
    session: Option<SessionId>,
    pub(super) running: Option<Running>,
    /// Counts requests; an event for an earlier one is stale.
    step: u64,
    /// Until when the link drops what goes to the server, and what comes back.
    cut_to_server: Option<Timestamp>,
    cut_from_server: Option<Timestamp>,
}

impl Terminal {
    /// True when `step` is the request the terminal waits on.
    pub(super) fn step_is(&self, step: u64) -> bool {
        self.step == step
    }
}

/// A command that ended, as the operator saw it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub terminal: usize,
    pub command: Command,
    pub result: Result<Outcome, PlanError>,
    pub faults: u32,
}

/// The data `op` creates the node at `path` with, if it does.
fn created_data(op: &ZkOp, path: &str) -> Option<Vec<u8>> {
    match op {
        ZkOp::Create { path: p, data, .. } if p == path => Some(data.clone()),
        ZkOp::Multi { ops } => ops.iter().find_map(|op| created_data(op, path)),
        _ => None,
    }
}

/// The paths a write may change the data of.
fn written_paths(op: &ZkOp) -> Vec<String> {
    match op {
        ZkOp::Create { path, .. } | ZkOp::SetData { path, .. } => vec![path.clone()],
        ZkOp::Multi { ops } => ops.iter().flat_map(written_paths).collect(),
        _ => Vec::new(),
    }
}

/// What a request becomes when its reply is lost: the CLI's own error.
fn failed(request: &Request, error: ZkError) -> Feedback {
    match request {
        Request::Read(ops) => Feedback::Read(vec![ZkReply::Error(error); ops.len()]),
        Request::Write(_) => Feedback::Wrote(ZkReply::Error(error)),
        Request::Wait(_) => Feedback::Woke,
    }
}

impl World {
    pub fn idle_terminals(&self) -> Vec<usize> {
        (0..self.terminals.len())
            .filter(|t| self.terminals[*t].running.is_none())
            .collect()
    }

    pub fn terminals_idle(&self) -> bool {
        self.terminals.iter().all(|t| t.running.is_none())
    }

    /// Starts `command` on an idle terminal; its first request leaves at once.
    pub fn run_command(&mut self, terminal: usize, command: Command) {
        if self.terminals[terminal].running.is_some() {
            return;
        }
        self.trace
            .push(format!("{} op{terminal} $ {command}", self.now));
        let access = self.operator_access();
        let admin = self
            .security
            .as_ref()
            .map(|s| (s.admin_user(), s.admin_id()));
        let admin = admin.as_ref().map(|(user, id)| (*user, id.as_str()));
        let (plan, settings_data) = match command.plan(self.now, &access, admin) {
            Ok(built) => built,
            // Refused before anything is read (settings the agent would reject).
            Err(e) => {
                self.trace
                    .push(format!("{} op{terminal} {command}: error: {e}", self.now));
                self.coverage("command refused");
                self.commands.push(Finished {
                    terminal,
                    command,
                    result: Err(e),
                    faults: 0,
                });
                return;
            }
        };
        if self.terminals[terminal].session.is_none() {
            // Opened on first use, so runs without an operator keep their session ids.
            let session = self.zk.open_session();
            self.authenticate_operator(session);
            self.terminals[terminal].session = Some(session);
        }
        let follow_up: Option<Box<dyn Plan>> = match (&command, &access) {
            (Command::Machines { name, .. }, Access::Secured(principals)) => {
                Some(Box::new(settle(name, principals.clone())))
            }
            _ => None,
        };
        self.terminals[terminal].running = Some(Running {
            command,
            plan,
            settings_data,
            faults: 0,
            applied_unacknowledged: false,
            seen: BTreeMap::new(),
            follow_up,
            decided: None,
        });
        self.admin_next(terminal, Feedback::Start);
    }

    /// Cuts the terminal's link until `until`: requests sent meanwhile are lost
    /// (`to_server`), or applied with their replies lost (`from_server`).
    pub fn cut_terminal(
        &mut self,
        terminal: usize,
        to_server: bool,
        from_server: bool,
        until: Timestamp,
    ) {
        self.trace.push(format!(
            "{} op{terminal} link cut to_server={to_server} from_server={from_server} until {until}",
            self.now
        ));
        let t = &mut self.terminals[terminal];
        if to_server {
            t.cut_to_server = Some(until);
        }
        if from_server {
            t.cut_from_server = Some(until);
        }
    }

    /// Somebody writes a node with a ZooKeeper client, bypassing pop, if it exists.
    pub fn admin_set_if_exists(&mut self, path: &str, data: &[u8]) {
        if self.zk.get(path).is_none() {
            return;
        }
        self.admin_put(path, data);
    }

    /// An administrator writes a node with a ZooKeeper client (and its missing parents);
    /// a machines list with its index entries, as pop's plans would.
    pub fn admin_put(&mut self, path: &str, data: &[u8]) {
        self.admin_put_unindexed(path, data);
        if let Some(Watched::Machines(service)) = Watched::parse(path) {
            if let Ok(list) = parse_machines(data) {
                self.index_by_hand(&service, &list);
            }
        }
    }

    /// Writes a node by hand and nothing else: a machines list written so reaches the
    /// machines it adds only through the keeper.
    pub(super) fn admin_put_unindexed(&mut self, path: &str, data: &[u8]) {
        let n = self.put_keeping_acls(path, data);
        self.note_plugin_write(path);
        self.trace.push(format!(
            "{} admin put {path} {}",
            self.now,
            String::from_utf8_lossy(data)
        ));
        self.notify(n);
    }

    /// An administrator deletes a subtree with a ZooKeeper client, deepest first, at once.
    pub fn admin_remove(&mut self, path: &str) {
        let n = self.zk.remove_tree(path);
        self.trace.push(format!("{} admin remove {path}", self.now));
        self.notify(n);
        let service = match Watched::parse(path) {
            Some(Watched::Machines(s) | Watched::ServiceChildren(s)) => Some(s),
            _ => None,
        };
        if let Some(service) = service {
            self.index_by_hand(&service, &BTreeSet::new());
        }
    }

    /// The tests' and the operator's writes by hand keep the index as pop's plans do;
    /// edits that bypass it ([`World::edit_list_by_hand`]) are the keeper's to repair.
    fn index_by_hand(&mut self, service: &str, list: &BTreeSet<String>) {
        let indexed: BTreeSet<String> = self.zk.children(paths::ASSIGNMENTS).into_iter().collect();
        for machine in indexed.union(list) {
            let entry = paths::assignment(machine, service);
            let exists = self.zk.get(&entry).is_some();
            if list.contains(machine) && !exists {
                self.admin_put(&entry, b"");
            } else if !list.contains(machine) && exists {
                self.admin_remove(&entry);
            }
        }
    }

    /// Adds a service as `pop add` leaves it and deploys it to `machines`, by hand.
    pub fn add_service(&mut self, name: &str, settings: &str, machines: &[&str]) {
        self.admin_put(&paths::service_settings(name), settings.as_bytes());
        self.admin_put(&paths::service_state_dir(name), b"");
        let list = serde_json::to_vec(machines).unwrap_or_default();
        self.admin_put(&paths::service_machines(name), &list);
    }

    /// As [`World::add_service`], for a name never used in this world (fleet mode's
    /// thousands): no index entry of it can be left anywhere, so only the entries of
    /// `machines` are written instead of every machine's index being looked at.
    pub fn add_new_service(&mut self, name: &str, settings: &str, machines: &[&str]) {
        self.admin_put(&paths::service_settings(name), settings.as_bytes());
        self.admin_put(&paths::service_state_dir(name), b"");
        let list = serde_json::to_vec(machines).unwrap_or_default();
        self.admin_put_unindexed(&paths::service_machines(name), &list);
        let mut named: Vec<&str> = machines.to_vec();
        named.sort_unstable();
        named.dedup();
        for machine in named {
            self.admin_put(&paths::assignment(machine, name), b"");
        }
    }

    fn lost(&mut self, cut_until: Option<Timestamp>) -> bool {
        let cut = cut_until.is_some_and(|until| self.now < until);
        // Half the loss rate each way.
        let random = self.admin_rng.next_u64() % 2000 < self.operator_loss_per_mille;
        cut || random
    }

    fn admin_latency(&mut self) -> Duration {
        LATENCY + Duration::from_micros(self.admin_rng.next_u64() % 3000)
    }

    /// Feeds the terminal's plan and carries out what it asks next.
    pub(super) fn admin_next(&mut self, terminal: usize, feedback: Feedback) {
        let now = self.now;
        let Some(running) = self.terminals[terminal].running.as_mut() else {
            return;
        };
        let mut step = running.plan.next(now, feedback);
        // The outcome is decided: the follow-up runs, then the command ends with it.
        if let Step::Done(Ok(outcome)) = &step {
            if let Some(follow_up) = running.follow_up.take() {
                running.decided = Some((outcome.clone(), BTreeMap::new()));
                running.plan = follow_up;
                step = running.plan.next(now, Feedback::Start);
            }
        }
        if let Step::Done(result) = &step {
            if let Some((outcome, seen_since)) = running.decided.take() {
                step = Step::Done(match result {
                    Ok(_) => Ok(outcome),
                    // A failure of the follow-up is checked against what it read.
                    Err(e) => {
                        running.seen = seen_since;
                        Err(e.clone())
                    }
                });
            }
        }
        self.terminals[terminal].step += 1;
        let id = self.terminals[terminal].step;
        let request = match step {
            Step::Done(result) => return self.finish_command(terminal, result),
            Step::Do(Request::Wait(until)) => {
                let feedback = Feedback::Woke;
                let at = until.max(now);
                return self.schedule(
                    at,
                    Event::AdminFeedback {
                        terminal,
                        step: id,
                        feedback,
                    },
                );
            }
            Step::Do(request) => request,
        };
        if let Request::Write(op) = &request {
            self.trace.push(format!("{now} op{terminal} {op}"));
            // For a stored type the settings are known only once the plan read it.
            if let Some(running) = self.terminals[terminal].running.as_mut() {
                if let Command::Add { name, .. } = &running.command {
                    let path = paths::service_settings(name.as_str());
                    if let Some(data) = created_data(op, &path) {
                        running.settings_data = Some(data);
                    }
                }
            }
        }
        if self.lost(self.terminals[terminal].cut_to_server) {
            self.trace
                .push(format!("{now} op{terminal} request lost on the way"));
            if let Some(running) = self.terminals[terminal].running.as_mut() {
                running.faults += 1;
            }
            let feedback = failed(&request, ZkError::Timeout);
            let at = now + ADMIN_TIMEOUT;
            return self.schedule(
                at,
                Event::AdminFeedback {
                    terminal,
                    step: id,
                    feedback,
                },
            );
        }
        let at = now + self.admin_latency();
        self.schedule(
            at,
            Event::AdminRequest {
                terminal,
                step: id,
                request,
            },
        );
    }

    /// The terminal's request reaches the server.
    pub(super) fn on_admin_request(&mut self, terminal: usize, step: u64, request: Request) {
        if self.terminals[terminal].step != step {
            return;
        }
        let Some(session) = self.terminals[terminal].session else {
            return;
        };
        let feedback = match &request {
            Request::Read(ops) => {
                let mut replies = Vec::with_capacity(ops.len());
                for op in ops {
                    let (reply, n) = self.zk.apply(session, op);
                    self.notify(n);
                    if self.check_invariants {
                        self.check_operator_refusal(terminal, op, &reply);
                    }
                    replies.push(reply);
                }
                Feedback::Read(replies)
            }
            Request::Write(op) => {
                let service_existed = self.command_service_exists(terminal);
                let (reply, n) = self.zk.apply(session, op);
                self.notify(n);
                if self.check_invariants {
                    self.check_operator_refusal(terminal, op, &reply);
                }
                for path in written_paths(op) {
                    self.note_plugin_write(&path);
                }
                self.check_admin_write(terminal, op, &reply, service_existed);
                self.note_issued(op, &reply);
                Feedback::Wrote(reply)
            }
            Request::Wait(_) => Feedback::Woke,
        };
        let seen: BTreeMap<String, Vec<u8>> = self
            .zk
            .paths()
            .map(|(p, n)| (p.clone(), n.data.clone()))
            .collect();
        if let Some(running) = self.terminals[terminal].running.as_mut() {
            match running.decided.as_mut() {
                Some((_, seen_since)) => *seen_since = seen,
                None => running.seen = seen,
            }
        }
        if self.lost(self.terminals[terminal].cut_from_server) {
            self.reply_lost(terminal, &request, &feedback);
            let feedback = failed(&request, ZkError::ConnectionLoss);
            let at = self.now + ADMIN_TIMEOUT;
            return self.schedule(
                at,
                Event::AdminFeedback {
                    terminal,
                    step,
                    feedback,
                },
            );
        }
        match &feedback {
            Feedback::Wrote(ZkReply::Error(ZkError::BadVersion)) => {
                self.coverage("CAS retried after a BadVersion");
            }
            Feedback::Wrote(ZkReply::MultiFailed {
                error: ZkError::NotEmpty,
                ..
            }) => self.coverage("remove waited for a node that appeared under it"),
            Feedback::Wrote(ZkReply::MultiFailed { index, .. })
                if matches!(&request, Request::Write(ZkOp::Multi { ops })
                    if matches!(ops.get(*index), Some(ZkOp::Check { .. }))) =>
            {
                self.coverage("pop run read again after its machines list changed")
            }
            _ => {}
        }
        let at = self.now + self.admin_latency();
        self.schedule(
            at,
            Event::AdminFeedback {
                terminal,
                step,
                feedback,
            },
        );
    }

    fn reply_lost(&mut self, terminal: usize, request: &Request, feedback: &Feedback) {
        self.trace.push(format!(
            "{} op{terminal} reply lost on the way back",
            self.now
        ));
        let Some(running) = self.terminals[terminal].running.as_mut() else {
            return;
        };
        running.faults += 1;
        let applied_add = matches!(running.command, Command::Add { .. })
            && matches!(request, Request::Write(ZkOp::Multi { .. }))
            && matches!(feedback, Feedback::Wrote(ZkReply::Multi { .. }));
        if applied_add {
            running.applied_unacknowledged = true;
            self.coverage("add whose reply was lost");
        }
    }

    /// Whether the running command's service exists (before its write is applied).
    fn command_service_exists(&self, terminal: usize) -> bool {
        let service = self.terminals[terminal]
            .running
            .as_ref()
            .and_then(|r| r.command.service());
        service.is_some_and(|s| self.zk.get(&paths::service(s)).is_some())
    }

    fn finish_command(&mut self, terminal: usize, result: Result<Outcome, PlanError>) {
        let Some(running) = self.terminals[terminal].running.take() else {
            return;
        };
        let shown = match &result {
            Ok(outcome) => outcome.to_string(),
            Err(e) => format!("error: {e}"),
        };
        self.trace.push(format!(
            "{} op{terminal} {}: {shown}",
            self.now, running.command
        ));
        self.check_command_result(terminal, &running, &result);
        match &result {
            Ok(_) => self.coverage("command succeeded"),
            Err(e) if e.is_refusal() => self.coverage("command refused"),
            Err(_) => self.coverage("command failed under operator faults"),
        }
        self.commands.push(Finished {
            terminal,
            command: running.command,
            result,
            faults: running.faults,
        });
    }
}
