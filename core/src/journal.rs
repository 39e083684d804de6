//! The agent's journal: every input with its time, written by the driver *before* the
//! core sees it, and the actions the core emitted for it. Because the core is a pure
//! function of its inputs, feeding the inputs to a fresh core must give the same actions:
//! [`replay`] checks exactly that.
//!
//! One JSON record per line. A file starts with `Start` (the agent's configuration) or,
//! after the driver rotated the journal, with `Snapshot` (the whole core state between
//! two inputs), so every file replays on its own. A crash can leave the last line torn;
//! the reader drops it and says so.

use crate::agent::{Agent, AgentConfig};
use crate::event::{Action, Input};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Start {
        config: AgentConfig,
    },
    Snapshot {
        agent: Box<Agent>,
    },
    Input {
        at: Timestamp,
        input: Input,
    },
    /// What the live core emitted for the input just before.
    Actions {
        actions: Vec<Action>,
    },
}

impl Record {
    /// One line, without the newline.
    pub fn to_line(&self) -> String {
        // Every field is plain data (strings, numbers, maps with string keys).
        serde_json::to_string(self)
            .unwrap_or_else(|e| serde_json::json!({ "unencodable": e.to_string() }).to_string())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("line {line}: {error}")]
    BadLine { line: usize, error: String },
    #[error("the journal is empty")]
    Empty,
    #[error("line 1: a journal starts with a start or snapshot record, found {found}")]
    NoStart { found: String },
    #[error("line {line}: a second start or snapshot record")]
    SecondStart { line: usize },
    #[error("line {line}: actions recorded with no input before them")]
    ActionsWithoutInput { line: usize },
}

/// A decoded journal file.
#[derive(Debug, Clone)]
pub struct Journal {
    pub records: Vec<Record>,
    /// Bytes of an unfinished last line that did not decode (a crash mid-write).
    pub torn_tail: Option<usize>,
}

/// Decodes a journal. Only the last line may be bad, and only if it is unfinished (no
/// newline) or the file's final line: that is a torn write. Anything else is an error.
pub fn decode(text: &str) -> Result<Journal, JournalError> {
    let mut records = Vec::new();
    let mut torn_tail = None;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (index, raw) in lines.iter().enumerate() {
        let line = raw.trim_end_matches('\n');
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(record) => records.push(record),
            Err(_) if index + 1 == lines.len() => torn_tail = Some(raw.len()),
            Err(e) => {
                return Err(JournalError::BadLine {
                    line: index + 1,
                    error: e.to_string(),
                })
            }
        }
    }
    Ok(Journal { records, torn_tail })
}

/// One input as replayed: what the fresh core emitted, and what the live one had.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at: Timestamp,
    pub input: Input,
    pub actions: Vec<Action>,
    /// `None` when the live agent stopped before recording its actions.
    pub recorded: Option<Vec<Action>>,
}

impl Step {
    pub fn matches(&self) -> bool {
        self.recorded.as_ref().is_none_or(|r| *r == self.actions)
    }
}

/// Feeds the journal's inputs to a fresh core (built from its start or snapshot record)
/// and pairs each with the recorded actions.
pub fn replay(journal: &Journal) -> Result<Vec<Step>, JournalError> {
    let mut records = journal.records.iter().enumerate();
    let mut agent = match records.next() {
        None => return Err(JournalError::Empty),
        Some((_, Record::Start { config })) => Agent::new(config.clone()),
        Some((_, Record::Snapshot { agent })) => (**agent).clone(),
        Some((_, other)) => {
            return Err(JournalError::NoStart {
                found: kind(other).to_string(),
            })
        }
    };
    let mut steps: Vec<Step> = Vec::new();
    for (index, record) in records {
        // Lines are 1-based and blank lines are rare; report the record number.
        let line = index + 1;
        match record {
            Record::Start { .. } | Record::Snapshot { .. } => {
                return Err(JournalError::SecondStart { line })
            }
            Record::Input { at, input } => {
                agent.handle(*at, input.clone());
                let actions = agent.drain_actions();
                steps.push(Step {
                    at: *at,
                    input: input.clone(),
                    actions,
                    recorded: None,
                });
            }
            Record::Actions { actions } => match steps.last_mut() {
                Some(step) if step.recorded.is_none() => step.recorded = Some(actions.clone()),
                _ => return Err(JournalError::ActionsWithoutInput { line }),
            },
        }
    }
    Ok(steps)
}

fn kind(record: &Record) -> &'static str {
    match record {
        Record::Start { .. } => "start",
        Record::Snapshot { .. } => "snapshot",
        Record::Input { .. } => "input",
        Record::Actions { .. } => "actions",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;
    use crate::names::MachineId;
    use crate::zk::{SessionEvent, SessionId, WatchEvent, WatchKind};
    use std::time::Duration;

    fn config() -> AgentConfig {
        AgentConfig {
            access: Default::default(),
            machine: MachineId::new("m1").unwrap(),
            hostname: "h".into(),
            agent_pid: 1,
            version: "t".into(),
            containment: "none".into(),
            seed: 3,
            backoff: Backoff::default(),
            pop: "/usr/bin/pop".into(),
            state_dir: "/var/lib/pop".into(),
        }
    }

    /// Runs inputs on a live agent and journals them as the driver does.
    fn live(agent: &mut Agent, inputs: &[Input], at: u64) -> Vec<Record> {
        let mut records = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let at = Timestamp::from_millis(at + i as u64);
            records.push(Record::Input {
                at,
                input: input.clone(),
            });
            agent.handle(at, input.clone());
            let actions = agent.drain_actions();
            records.push(Record::Actions { actions });
        }
        records
    }

    fn text(records: &[Record]) -> String {
        records.iter().map(|r| r.to_line() + "\n").collect()
    }

    fn connected() -> Input {
        Input::Session(SessionEvent::Connected {
            session: SessionId(9),
            timeout: Duration::from_secs(4),
        })
    }

    #[test]
    fn replays_from_start_and_from_a_snapshot() {
        let mut agent = Agent::new(config());
        let mut first = vec![Record::Start { config: config() }];
        first.extend(live(&mut agent, &[connected(), Input::Tick], 1000));
        let snapshot = Record::Snapshot {
            agent: Box::new(agent.clone()),
        };
        let mut second = vec![snapshot];
        second.extend(live(
            &mut agent,
            &[
                Input::Session(SessionEvent::Disconnected),
                connected(),
                Input::Watch(WatchEvent {
                    path: "/assignments/m1".into(),
                    kind: WatchKind::ChildrenChanged,
                }),
            ],
            2000,
        ));
        for records in [first, second] {
            let steps = replay(&decode(&text(&records)).unwrap()).unwrap();
            assert!(steps.len() >= 2);
            assert!(steps.iter().all(Step::matches));
            assert!(steps.iter().any(|s| !s.actions.is_empty()));
        }
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_middle_line_is_an_error() {
        let mut agent = Agent::new(config());
        let mut records = vec![Record::Start { config: config() }];
        records.extend(live(&mut agent, &[connected()], 1000));
        let good = text(&records);
        let torn = format!("{good}{{\"input\":{{\"at\":5");
        let journal = decode(&torn).unwrap();
        assert_eq!(journal.torn_tail, Some(16));
        assert_eq!(journal.records.len(), records.len());
        let bad_middle = format!("{{\"input\":nope}}\n{good}");
        assert!(matches!(
            decode(&bad_middle),
            Err(JournalError::BadLine { line: 1, .. })
        ));
        assert_eq!(
            replay(&decode("").unwrap()).unwrap_err(),
            JournalError::Empty
        );
        let no_start = text(&records[1..]);
        assert!(matches!(
            replay(&decode(&no_start).unwrap()),
            Err(JournalError::NoStart { .. })
        ));
    }
}
