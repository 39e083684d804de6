//! The loop every plan shares: read, decide, write, and on a conflict or a doubt read
//! again, within bounds. A command supplies only its reads and decisions ([`Steps`]).

use super::{Doing, Feedback, PlanError, Request, Step, MAX_CONFLICTS, MAX_FAILURES, RETRY_PAUSE};
use crate::time::Timestamp;
use crate::zk::{NodeStat, ZkError, ZkOp, ZkReply};

/// What one read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Got {
    Data { data: Vec<u8>, stat: NodeStat },
    Children(Vec<String>),
    Missing,
}

impl Got {
    pub(crate) fn exists(&self) -> bool {
        !matches!(self, Got::Missing)
    }

    pub(crate) fn data(&self) -> Option<&[u8]> {
        match self {
            Got::Data { data, .. } => Some(data),
            _ => None,
        }
    }
}

/// What a command does with what it read.
pub(crate) enum Decision<T> {
    Write(ZkOp),
    /// Read again at once: the command's reads changed (the next level of a tree, a new
    /// phase).
    Look,
    Done(Result<T, PlanError>),
}

/// What a command makes of a write ZooKeeper refused (nothing of it was applied).
pub(crate) enum Refused<T> {
    /// Someone else changed the nodes: read again and plan again (bounded).
    Conflict,
    /// Read again and decide, without counting a conflict (the command moved on).
    Look,
    /// Read again at this time.
    Pause(Timestamp),
    Done(Result<T, PlanError>),
}

/// One command's reads and decisions.
pub(crate) trait Steps {
    type Done;
    /// The nodes to read before the next decision; none: decide at once.
    fn reads(&self) -> Vec<ZkOp>;
    /// Given what the reads found, in the order asked.
    fn decide(&mut self, now: Timestamp, got: Vec<Got>) -> Decision<Self::Done>;
    /// The write succeeded: finish, or `None` to read and decide again.
    fn written(&mut self, reply: &ZkReply) -> Option<Result<Self::Done, PlanError>>;
    /// The write failed at `path` with a definite `error`.
    fn refused(&mut self, _now: Timestamp, path: &str, error: &ZkError) -> Refused<Self::Done> {
        refused_by_default(path, error)
    }
    /// The write's outcome is unknown: the next decision must find out whether it took
    /// effect.
    fn in_doubt(&mut self);
}

/// Races (a version moved, a node appeared or vanished) are conflicts; anything else
/// ends the plan with the error.
pub(crate) fn refused_by_default<T>(path: &str, error: &ZkError) -> Refused<T> {
    match error {
        ZkError::BadVersion | ZkError::NoNode | ZkError::NodeExists | ZkError::NotEmpty => {
            Refused::Conflict
        }
        ZkError::NoAuth => Refused::Done(Err(PlanError::NotAuthorised {
            doing: Doing::Writing,
            path: path.to_string(),
        })),
        other => Refused::Done(Err(PlanError::Zk {
            doing: Doing::Writing,
            path: path.to_string(),
            error: other.clone(),
        })),
    }
}

#[derive(Debug)]
enum Stage {
    NotStarted,
    Reading(Vec<ZkOp>),
    Writing(ZkOp),
    Waiting,
    Finished,
}

impl Stage {
    fn awaits(&self) -> &'static str {
        match self {
            Stage::NotStarted => "the start",
            Stage::Reading(_) => "read replies",
            Stage::Writing(_) => "a write reply",
            Stage::Waiting => "a wake-up",
            Stage::Finished => "nothing (it had finished)",
        }
    }
}

/// Decisions in a row without a request before the engine calls it a bug in the
/// command (a `Look` that reads nothing and decides `Look` again).
const MAX_LOOKS_WITHOUT_READING: u32 = 10_000;

pub(crate) struct Engine<S> {
    pub(crate) steps: S,
    stage: Stage,
    conflicts: u32,
    failures: u32,
    /// A write's outcome is unknown and nothing has been read since.
    write_in_doubt: bool,
}

impl<S: Steps> Engine<S> {
    pub(crate) fn new(steps: S) -> Self {
        Engine {
            steps,
            stage: Stage::NotStarted,
            conflicts: 0,
            failures: 0,
            write_in_doubt: false,
        }
    }

    pub(crate) fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step<S::Done> {
        let stage = std::mem::replace(&mut self.stage, Stage::Finished);
        match (stage, feedback) {
            (Stage::NotStarted, Feedback::Start) | (Stage::Waiting, Feedback::Woke) => {
                self.look(now)
            }
            (Stage::Reading(ops), Feedback::Read(replies)) => match read_all(&ops, replies) {
                Ok(got) => {
                    self.write_in_doubt = false;
                    self.decide(now, got)
                }
                Err(ReadFailure::Retry { path, error }) => {
                    self.failed(now, Doing::Reading, path, error)
                }
                Err(ReadFailure::Fatal(e)) => Step::Done(Err(e)),
            },
            (Stage::Writing(op), Feedback::Wrote(reply)) => self.on_write(now, &op, reply),
            (stage, feedback) => Step::Done(Err(PlanError::Misfed {
                expected: stage.awaits(),
                got: feedback.name(),
            })),
        }
    }

    fn look(&mut self, now: Timestamp) -> Step<S::Done> {
        for _ in 0..MAX_LOOKS_WITHOUT_READING {
            let ops = self.steps.reads();
            if !ops.is_empty() {
                self.stage = Stage::Reading(ops.clone());
                return Step::Do(Request::Read(ops));
            }
            match self.steps.decide(now, Vec::new()) {
                Decision::Look => continue,
                decision => return self.act(now, decision),
            }
        }
        Step::Done(Err(PlanError::Misfed {
            expected: "a plan that reads or writes",
            got: "endless decisions",
        }))
    }

    fn decide(&mut self, now: Timestamp, got: Vec<Got>) -> Step<S::Done> {
        let decision = self.steps.decide(now, got);
        self.act(now, decision)
    }

    fn act(&mut self, now: Timestamp, decision: Decision<S::Done>) -> Step<S::Done> {
        match decision {
            Decision::Write(op) => {
                self.stage = Stage::Writing(op.clone());
                Step::Do(Request::Write(op))
            }
            Decision::Look => self.look(now),
            Decision::Done(result) => Step::Done(result),
        }
    }

    fn on_write(&mut self, now: Timestamp, op: &ZkOp, reply: ZkReply) -> Step<S::Done> {
        match reply {
            ZkReply::Error(error) if error.outcome_unknown() => {
                self.steps.in_doubt();
                self.write_in_doubt = true;
                self.failed(now, Doing::Writing, op.path().to_string(), error)
            }
            ZkReply::Error(error) => self.refused(now, op.path().to_string(), error),
            ZkReply::MultiFailed { index, error } => {
                let path = match op {
                    ZkOp::Multi { ops } => ops.get(index).map_or(op.path(), ZkOp::path),
                    _ => op.path(),
                };
                self.refused(now, path.to_string(), error)
            }
            reply => match self.steps.written(&reply) {
                Some(result) => Step::Done(result),
                None => self.look(now),
            },
        }
    }

    fn refused(&mut self, now: Timestamp, path: String, error: ZkError) -> Step<S::Done> {
        match self.steps.refused(now, &path, &error) {
            Refused::Conflict => {
                self.conflicts += 1;
                if self.conflicts >= MAX_CONFLICTS {
                    return Step::Done(Err(PlanError::StillConflicting {
                        path,
                        attempts: self.conflicts,
                    }));
                }
                self.look(now)
            }
            Refused::Look => self.look(now),
            Refused::Pause(until) => {
                self.stage = Stage::Waiting;
                Step::Do(Request::Wait(until))
            }
            Refused::Done(result) => Step::Done(result),
        }
    }

    /// A request failed without a definite answer: pause and read again, a few times.
    fn failed(
        &mut self,
        now: Timestamp,
        doing: Doing,
        path: String,
        error: ZkError,
    ) -> Step<S::Done> {
        self.failures += 1;
        if self.failures > MAX_FAILURES {
            return Step::Done(Err(PlanError::GaveUp {
                doing,
                path,
                error,
                attempts: self.failures,
                write_in_doubt: self.write_in_doubt,
            }));
        }
        self.stage = Stage::Waiting;
        Step::Do(Request::Wait(now + RETRY_PAUSE))
    }
}

enum ReadFailure {
    /// The outcome is unknown (lost connection, timeout): read again later.
    Retry {
        path: String,
        error: ZkError,
    },
    Fatal(PlanError),
}

fn read_all(ops: &[ZkOp], replies: Vec<ZkReply>) -> Result<Vec<Got>, ReadFailure> {
    if replies.len() != ops.len() {
        return Err(ReadFailure::Fatal(PlanError::Misfed {
            expected: "one reply per read",
            got: "another number of replies",
        }));
    }
    ops.iter()
        .zip(replies)
        .map(|(op, reply)| {
            let path = op.path().to_string();
            match (op, reply) {
                (ZkOp::GetData { .. }, ZkReply::Data { data, stat }) => {
                    Ok(Got::Data { data, stat })
                }
                (ZkOp::GetChildren { .. }, ZkReply::Children { mut names, .. }) => {
                    names.sort();
                    Ok(Got::Children(names))
                }
                (_, ZkReply::Error(ZkError::NoNode)) => Ok(Got::Missing),
                (_, ZkReply::Error(ZkError::NoAuth)) => {
                    Err(ReadFailure::Fatal(PlanError::NotAuthorised {
                        doing: Doing::Reading,
                        path,
                    }))
                }
                (_, ZkReply::Error(error)) if error.outcome_unknown() => {
                    Err(ReadFailure::Retry { path, error })
                }
                (_, ZkReply::Error(error)) => Err(ReadFailure::Fatal(PlanError::Zk {
                    doing: Doing::Reading,
                    path,
                    error,
                })),
                (_, other) => Err(ReadFailure::Fatal(PlanError::Zk {
                    doing: Doing::Reading,
                    path,
                    error: ZkError::Other(format!("unexpected reply: {other}")),
                })),
            }
        })
        .collect()
}

/// `got` as exactly `N` results (the engine hands back one per read asked).
pub(crate) fn exactly<const N: usize>(got: Vec<Got>) -> Result<[Got; N], PlanError> {
    <[Got; N]>::try_from(got).map_err(|_| PlanError::Misfed {
        expected: "one reply per read",
        got: "another number of replies",
    })
}

#[cfg(test)]
mod tests {
    use crate::names::ServiceName;
    use crate::plan::{Feedback, Plan, PlanError, Remove, Request, Step};
    use crate::time::Timestamp;
    use crate::zk::{ZkError, ZkReply};
    use std::time::Duration;

    fn remove() -> Remove {
        let name = ServiceName::new("s").expect("a valid name");
        Remove::new("zk", &name, true, Duration::from_secs(1))
    }

    #[test]
    fn a_plan_fed_a_reply_it_did_not_ask_for_says_so() {
        let now = Timestamp::from_millis(1);
        let mut plan = remove();
        assert!(matches!(
            plan.next(now, Feedback::Start),
            Step::Do(Request::Read(_))
        ));
        let reply = ZkReply::Deleted;
        assert_eq!(
            plan.next(now, Feedback::Wrote(reply)),
            Step::Done(Err(PlanError::Misfed {
                expected: "read replies",
                got: "a write reply",
            }))
        );
    }

    #[test]
    fn a_lost_read_is_read_again_after_a_pause() {
        let now = Timestamp::from_millis(1);
        let mut plan = remove();
        let Step::Do(Request::Read(ops)) = plan.next(now, Feedback::Start) else {
            panic!("a read first");
        };
        let lost = vec![ZkReply::Error(ZkError::ConnectionLoss); ops.len()];
        assert_eq!(
            plan.next(now, Feedback::Read(lost)),
            Step::Do(Request::Wait(now + crate::plan::RETRY_PAUSE))
        );
        assert_eq!(
            plan.next(now + crate::plan::RETRY_PAUSE, Feedback::Woke),
            Step::Do(Request::Read(ops))
        );
    }
}
