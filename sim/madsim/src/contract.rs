//! The driver's contract with the core, checked over what a machine's agents left: every
//! journal file its disk ever held, and the effects its simulated OS performed. The
//! pure simulator cannot check these, since it is the driver there; here the driver is
//! production's `run_with`.
//!
//! 1. Replies are bounded: a `Zk` action at t is answered (an `Input::Reply` of its id)
//!    by t + op_timeout + [`MARGIN`], unless a `NewSession` or `Exit` comes first, or
//!    the journal ends (the agent died). A paused agent's timers are frozen: the bound
//!    counts from its resumption instead when that came later.
//! 2. Effects follow from journaled input: when the OS spawned or stopped a process, the
//!    last input on disk was that of the step asking for it. (Spawns are carried out
//!    before their step's actions are journaled, on purpose: see io's driver/mod.rs; its
//!    input is on disk before.)
//! 3. No stale-session input: after a `NewSession`, no reply to a request issued before
//!    it reaches the core, and no watch event for a path before a watched read of that
//!    path, issued after it, has been answered (the new session's watch on the path
//!    exists only from then; the driver hands a read's reply to the core before any
//!    event of its watch).

use crate::disk::JournalFile;
use crate::machine::{Effect, EffectKind};
use pop_core::event::{Action, Input};
use pop_core::journal::{decode, replay, Step};
use pop_core::zk::{RequestId, ZkOp};
use pop_core::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a reply may take beyond op_timeout: the hop from the request's task to the loop.
pub const MARGIN: Duration = Duration::from_millis(250);

fn steps_of(bytes: &[u8]) -> Result<Vec<Step>, String> {
    let text = String::from_utf8_lossy(bytes);
    let journal = decode(&text).map_err(|e| e.to_string())?;
    // Nothing written yet, or the agent died writing its first line.
    if journal.records.is_empty() {
        return Ok(Vec::new());
    }
    replay(&journal).map_err(|e| e.to_string())
}

/// What the core was told and asked, in one agent incarnation so far.
#[derive(Default)]
struct Requests {
    /// Unanswered requests, with when they were made.
    outstanding: BTreeMap<RequestId, Timestamp>,
    /// Requests made before the latest `NewSession`.
    old_session: BTreeSet<RequestId>,
    /// Unanswered watched reads made since the latest `NewSession`, with their path.
    watched_reads: BTreeMap<RequestId, String>,
    /// The paths a watched read made since the latest `NewSession` has been answered
    /// for: the only ones a watch event may name.
    armed: BTreeSet<String>,
}

impl Requests {
    fn step(
        &mut self,
        step: &Step,
        op_timeout: Duration,
        resumes: &[Timestamp],
    ) -> Result<(), String> {
        let bound = op_timeout + MARGIN;
        let resumed = resumes.iter().filter(|r| **r <= step.at).max().copied();
        if let Some((id, at)) = self.outstanding.iter().find(|(_, at)| {
            step.at
                .saturating_since((**at).max(resumed.unwrap_or(**at)))
                > bound
        }) {
            return Err(format!(
                "request {} made at {} ms is unanswered at {} ms, past op_timeout {op_timeout:?} (+{MARGIN:?})",
                id.0,
                at.as_millis(),
                step.at.as_millis()
            ));
        }
        if let Input::Reply { id, reply } = &step.input {
            if self.old_session.contains(id) {
                return Err(format!(
                    "at {} ms the core got {reply:?} for request {}, made in a session it had already replaced",
                    step.at.as_millis(),
                    id.0
                ));
            }
            self.outstanding.remove(id);
            if let Some(path) = self.watched_reads.remove(id) {
                self.armed.insert(path);
            }
        }
        if let Input::Watch(event) = &step.input {
            if !self.armed.contains(&event.path) {
                return Err(format!(
                    "at {} ms the core got {event:?}, but no watched read of {} made in its current session had been answered",
                    step.at.as_millis(),
                    event.path
                ));
            }
        }
        // What the agent did: its record when there is one (a crash may cut it off,
        // and then nothing after the spawns was carried out).
        for action in step.recorded.iter().flatten() {
            match action {
                Action::Zk { id, op } => {
                    self.outstanding.insert(*id, step.at);
                    if let ZkOp::GetData { path, watch: true }
                    | ZkOp::GetChildren { path, watch: true } = op
                    {
                        self.watched_reads.insert(*id, path.clone());
                    }
                }
                Action::NewSession | Action::Exit => {
                    self.old_session
                        .extend(std::mem::take(&mut self.outstanding).into_keys());
                    self.watched_reads.clear();
                    self.armed.clear();
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Contracts 1 and 3 over a machine's journal files (consecutive files of one
/// incarnation are one run of the agent, rotated).
pub fn check_requests(
    files: &[JournalFile],
    op_timeout: Duration,
    resumes: &[Timestamp],
) -> Result<(), String> {
    let mut requests = Requests::default();
    let mut incarnation = None;
    for (n, file) in files.iter().enumerate() {
        if incarnation != Some(file.incarnation) {
            requests = Requests::default();
            incarnation = Some(file.incarnation);
        }
        let steps = steps_of(&file.bytes).map_err(|e| format!("file {n}: {e}"))?;
        for step in &steps {
            requests
                .step(step, op_timeout, resumes)
                .map_err(|e| format!("file {n} (incarnation {}): {e}", file.incarnation))?;
        }
    }
    Ok(())
}

fn asks_for(action: &Action, effect: &Effect) -> bool {
    match (action, effect.kind) {
        (
            Action::Spawn {
                service,
                generation,
                ..
            },
            EffectKind::Spawn,
        )
        | (
            Action::Stop {
                service,
                generation,
                ..
            },
            EffectKind::Stop,
        ) => *service == effect.service && *generation == effect.generation,
        _ => false,
    }
}

/// Contract 2: each effect follows from the last input on disk when it happened (in the
/// file being written, or the one before it when a rotation had just begun a new one).
pub fn check_effects(files: &[JournalFile], effects: &[Effect]) -> Result<(), String> {
    for effect in effects {
        let file = files
            .get(effect.file)
            .ok_or_else(|| format!("{effect:?}: no such journal file"))?;
        let written = file.bytes.get(..effect.journaled).unwrap_or(&file.bytes);
        let mut last = steps_of(written)
            .map_err(|e| format!("file {} up to the {effect:?}: {e}", effect.file))?
            .pop();
        if last.is_none() && effect.file > 0 {
            let before = &files[effect.file - 1];
            if before.incarnation == file.incarnation {
                last = steps_of(&before.bytes)
                    .map_err(|e| format!("file {}: {e}", effect.file - 1))?
                    .pop();
            }
        }
        let Some(step) = last else {
            return Err(format!(
                "{:?} of {} generation {} with no input journaled before it",
                effect.kind, effect.service, effect.generation
            ));
        };
        if !step.actions.iter().any(|a| asks_for(a, effect)) {
            return Err(format!(
                "{:?} of {} generation {}: the last input on disk then (at {} ms, {}) asks no such thing",
                effect.kind,
                effect.service,
                effect.generation,
                step.at.as_millis(),
                short(&format!("{:?}", step.input))
            ));
        }
    }
    Ok(())
}

/// A one-line account of each step of every file, for a reader chasing a failure
/// (`POP_MADSIM_DUMP=1`).
pub fn dump(files: &[JournalFile]) -> String {
    let mut out = String::new();
    for (n, file) in files.iter().enumerate() {
        out.push_str(&format!("-- file {n} (incarnation {})\n", file.incarnation));
        for step in steps_of(&file.bytes).unwrap_or_default() {
            let input = format!("{:?}", step.input);
            let actions: Vec<String> = step
                .recorded
                .iter()
                .flatten()
                .map(|a| match a {
                    Action::Zk { id, op } => format!("Zk#{} {}", id.0, short(&format!("{op:?}"))),
                    other => short(&format!("{other:?}")),
                })
                .collect();
            out.push_str(&format!(
                "{} {} -> {}\n",
                step.at.as_millis() % 1_000_000,
                short(&input),
                actions.join("; ")
            ));
        }
    }
    out
}

fn short(text: &str) -> String {
    text.chars().take(90).collect()
}

#[cfg(test)]
mod tests {
    //! Contract 3 on hand-made steps: what a driver that let an old session's messages
    //! through would journal.
    use super::*;
    use pop_core::zk::{WatchEvent, WatchKind, ZkError, ZkReply};

    const OP_TIMEOUT: Duration = Duration::from_secs(1);

    fn step(at: u64, input: Input, actions: Vec<Action>) -> Step {
        Step {
            at: Timestamp::from_millis(at),
            input,
            actions: actions.clone(),
            recorded: Some(actions),
        }
    }

    fn read(id: u64, path: &str) -> Action {
        Action::Zk {
            id: RequestId(id),
            op: ZkOp::GetData {
                path: path.into(),
                watch: true,
            },
        }
    }

    fn reply(at: u64, id: u64) -> Step {
        let reply = ZkReply::Error(ZkError::NoNode);
        step(
            at,
            Input::Reply {
                id: RequestId(id),
                reply,
            },
            vec![],
        )
    }

    fn watch(at: u64, path: &str) -> Step {
        let event = WatchEvent {
            path: path.into(),
            kind: WatchKind::DataChanged,
        };
        step(at, Input::Watch(event), vec![])
    }

    /// The agent's first session: it reads /a with a watch, is answered; then the
    /// session expires and it asks for a new one and reads /a again.
    fn history() -> Vec<Step> {
        vec![
            step(0, Input::Tick, vec![read(1, "/a")]),
            reply(5, 1),
            watch(10, "/a"),
            step(20, Input::Tick, vec![Action::NewSession, read(2, "/a")]),
        ]
    }

    fn run(steps: &[Step]) -> Result<(), String> {
        let mut requests = Requests::default();
        steps
            .iter()
            .try_for_each(|s| requests.step(s, OP_TIMEOUT, &[]))
    }

    #[test]
    fn a_watch_of_the_current_session_passes() {
        let mut steps = history();
        steps.extend([reply(25, 2), watch(30, "/a")]);
        assert_eq!(run(&steps), Ok(()));
    }

    #[test]
    fn a_watch_before_the_new_sessions_read_is_answered_is_stale() {
        let mut steps = history();
        steps.push(watch(22, "/a"));
        let err = run(&steps).expect_err("an old session's watch event");
        assert!(err.contains("no watched read of /a"), "{err}");
    }

    #[test]
    fn a_reply_to_the_old_sessions_request_is_stale() {
        let mut steps = history();
        steps.truncate(1);
        steps.push(step(20, Input::Tick, vec![Action::NewSession]));
        steps.push(reply(22, 1));
        let err = run(&steps).expect_err("an old session's reply");
        assert!(err.contains("already replaced"), "{err}");
    }
}
