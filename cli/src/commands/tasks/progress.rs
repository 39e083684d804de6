//! How `pop run` shows progress while it waits, on stderr: on a terminal, a line per
//! machine rewritten in place; otherwise a plain line each time a machine's state
//! changes.

use super::Seen;
use crate::output;
use pop_core::task::{timestamp, TaskState};
use pop_core::Timestamp;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

pub(super) struct Progress {
    order: Vec<String>,
    mode: Mode,
    width: usize,
    /// Live: how many lines are on screen. Plain: the last line shown per machine.
    drawn: usize,
    shown: BTreeMap<String, String>,
}

#[derive(PartialEq, Eq)]
enum Mode {
    Quiet,
    Live,
    Plain,
}

impl Progress {
    pub(super) fn new(order: Vec<String>, show: bool) -> Progress {
        let mode = match (show, std::io::stderr().is_terminal()) {
            (false, _) => Mode::Quiet,
            (true, true) => Mode::Live,
            (true, false) => Mode::Plain,
        };
        if mode == Mode::Live {
            eprintln!("(Ctrl-C stops waiting, not the task: `pop tasks` shows it later)");
        }
        let width = order.iter().map(|m| m.chars().count()).max().unwrap_or(0);
        Progress {
            order,
            mode,
            width,
            drawn: 0,
            shown: BTreeMap::new(),
        }
    }

    pub(super) fn show(&mut self, seen: &BTreeMap<String, Seen>, now: Timestamp) {
        let mut err = std::io::stderr().lock();
        match self.mode {
            Mode::Quiet => {}
            Mode::Live => {
                if self.drawn > 0 {
                    // Back to the first line drawn.
                    let _ = write!(err, "\x1b[{}F", self.drawn);
                }
                for machine in &self.order {
                    let state = seen
                        .get(machine)
                        .map_or(String::new(), |s| describe(s, Some(now)));
                    let _ = writeln!(err, "\x1b[2K{machine:<w$}  {state}", w = self.width);
                }
                self.drawn = self.order.len();
            }
            Mode::Plain => {
                for machine in &self.order {
                    let Some(seen) = seen.get(machine) else {
                        continue;
                    };
                    if matches!(seen, Seen::Unread) {
                        continue;
                    }
                    let state = describe(seen, None);
                    if self.shown.get(machine) != Some(&state) {
                        let _ = writeln!(err, "{machine}: {state}");
                        self.shown.insert(machine.clone(), state);
                    }
                }
            }
        }
    }

    pub(super) fn finish(&mut self) {
        if self.mode == Mode::Live {
            let _ = std::io::stderr().flush();
        }
    }
}

/// A machine's state in words; with `now`, how long it has been running.
fn describe(seen: &Seen, now: Option<Timestamp>) -> String {
    let result = match seen {
        Seen::Unread => return "…".into(),
        Seen::Lost(why) => return format!("unknown: {why}"),
        Seen::Result(result) => result,
    };
    let attempt = if result.attempt > 1 {
        format!(" (attempt {})", result.attempt)
    } else {
        String::new()
    };
    match result.state {
        TaskState::Pending => "pending".into(),
        TaskState::Waiting => "waiting for the machine before it".into(),
        TaskState::Running => match (now, result.started_at) {
            (Some(now), Some(started)) => {
                let secs = now.saturating_since(timestamp(started)).as_secs_f64();
                format!("running{attempt} for {}", output::duration(secs))
            }
            _ => format!("running{attempt}"),
        },
        state => {
            let took = result.duration().map_or(String::new(), |d| {
                format!(" after {}", output::duration(d.as_secs_f64()))
            });
            let line = result.summary_line();
            let line = if line.is_empty() {
                String::new()
            } else {
                format!(": {line}")
            };
            format!("{state}{attempt}{took}{line}")
        }
    }
}
