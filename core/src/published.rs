//! What an agent publishes: about a running service, the pid node
//! (`/machines/<machine>/<service>`) and the state node
//! (`/services/<service>/state/<machine>`); about itself, the report
//! (`/agents/<machine>`). Written by the agent, read by `pop status` and by anyone else;
//! reading them never trusts that the writer was pop.
//!
//! The report's size does not grow with the number of services: it counts services per
//! phase and lists only those that are not running as they should (at most
//! [`REPORT_LIMIT`], and how many more there are). A service running as it should is
//! described by its state node.

use crate::settings::DataError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The pid node's data: the pid in decimal.
pub fn render_pid(pid: u32) -> Vec<u8> {
    pid.to_string().into_bytes()
}

pub fn parse_pid(data: &[u8]) -> Result<u32, DataError> {
    let bad = || DataError::BadNode {
        expected: "a process id in decimal",
        found: String::from_utf8_lossy(data).chars().take(40).collect(),
    };
    let text = std::str::from_utf8(data).map_err(|_| bad())?;
    match text.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(bad()),
    }
}

/// At most this many services, and this many problems, are listed in an agent report.
pub const REPORT_LIMIT: usize = 100;

/// Consecutive quick failures from which a service is in a crash loop.
pub const CRASH_LOOP_FAILURES: u32 = 3;

/// The state node: where and since when a service instance runs. Fields in name order,
/// the order they are written in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateNode {
    pub generation: u64,
    /// Where clients reach it: the service's host setting, or the machine's host name
    /// when the service listens on all addresses.
    pub host: String,
    /// How the run before this one ended, in words; absent when this agent saw none end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    pub machine: String,
    pub pid: u32,
    /// The port it listens on (the real one when the setting was 0); none for services
    /// without a port.
    pub port: Option<u16>,
    pub restarts: u32,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
}

impl StateNode {
    pub fn render(&self) -> Vec<u8> {
        // Plain data: always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(data: &[u8]) -> Result<StateNode, DataError> {
        serde_json::from_slice(data).map_err(|e| DataError::BadNode {
            expected: "a state object (generation, host, machine, pid, port, restarts, started_at)",
            found: e.to_string(),
        })
    }
}

/// The agent's own node: who it is, how many of its services are in each phase, and
/// those that are not running as they should. Fields in name order, the order they are
/// written in. Decoding ignores fields it does not know (a newer agent's) and defaults
/// the optional ones (an older agent's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// How services are contained ("cgroup-v2 ...", "process-group ...").
    pub containment: String,
    pub hostname: String,
    pub machine: String,
    /// The services this machine should run or still runs, counted by phase.
    #[serde(default)]
    pub phases: PhaseCounts,
    /// The agent's own pid.
    pub pid: u32,
    /// Paths whose data the agent cannot use, with the problem: the first
    /// [`REPORT_LIMIT`] by path.
    #[serde(default)]
    pub problems: BTreeMap<String, String>,
    /// Problems left out of `problems` (written only when there are).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub problems_omitted: u32,
    /// The services not running as they should (starting, backing off, exited, stopping,
    /// stopped while wanted, or running after a crash loop or a failed readiness), by
    /// name: the first [`REPORT_LIMIT`]. One running as it should is not listed: its
    /// state node describes it.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceReport>,
    /// Services left out of `services` (written only when there are).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub services_omitted: u32,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub started_at: Option<f64>,
    pub version: String,
}

/// One service in the agent report. Fields in name order, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The newest generation started (0: none yet).
    #[serde(default)]
    pub generation: u64,
    /// How the last run ended, in words.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// While backing off: when the next start is due (seconds since the Unix epoch).
    #[serde(default)]
    pub next_start_at: Option<f64>,
    /// The last run was stopped for not becoming ready within this many seconds (its
    /// `ready_timeout`); absent once a run is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_within: Option<f64>,
    pub phase: Phase,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Why it is not launched as its settings say (its type, a setting its command needs,
    /// its environment): absent when nothing keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Consecutive runs that ended too soon; 3 or more is a crash loop.
    #[serde(default)]
    pub quick_failures: u32,
    #[serde(default)]
    pub restarts: u32,
    /// When the current process started (seconds since the Unix epoch).
    #[serde(default)]
    pub since: Option<f64>,
}

/// What a service's process is doing, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not running and not wanted.
    Stopped,
    /// Wanted, and not started: its type, a setting its command needs or its
    /// environment is not there yet (the service's `problem` says which).
    Waiting,
    /// Waiting out a crash-loop delay before starting again.
    Backoff,
    /// Ended, and its restart policy leaves it so.
    Exited,
    /// Started and not ready yet.
    Starting,
    Running,
    Stopping,
    /// A phase this version does not know (written by a newer agent).
    #[serde(other)]
    Unknown,
}

impl Phase {
    /// The phases an agent reports; `Unknown` is only ever read.
    pub const KNOWN: [Phase; 7] = [
        Phase::Stopped,
        Phase::Waiting,
        Phase::Backoff,
        Phase::Exited,
        Phase::Starting,
        Phase::Running,
        Phase::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Waiting => "waiting",
            Phase::Backoff => "backoff",
            Phase::Exited => "exited",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many services are in each phase. Fields in name order, as written, and only those
/// not 0; a phase not written reads as 0, one this version does not know is ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhaseCounts {
    #[serde(skip_serializing_if = "is_zero")]
    pub backoff: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub exited: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub running: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub starting: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub stopped: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub stopping: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub waiting: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl PhaseCounts {
    pub fn get(&self, phase: Phase) -> u32 {
        match phase {
            Phase::Stopped => self.stopped,
            Phase::Waiting => self.waiting,
            Phase::Backoff => self.backoff,
            Phase::Exited => self.exited,
            Phase::Starting => self.starting,
            Phase::Running => self.running,
            Phase::Stopping => self.stopping,
            Phase::Unknown => 0,
        }
    }

    fn slot(&mut self, phase: Phase) -> Option<&mut u32> {
        match phase {
            Phase::Stopped => Some(&mut self.stopped),
            Phase::Waiting => Some(&mut self.waiting),
            Phase::Backoff => Some(&mut self.backoff),
            Phase::Exited => Some(&mut self.exited),
            Phase::Starting => Some(&mut self.starting),
            Phase::Running => Some(&mut self.running),
            Phase::Stopping => Some(&mut self.stopping),
            Phase::Unknown => None,
        }
    }

    pub fn add(&mut self, phase: Phase) {
        if let Some(n) = self.slot(phase) {
            *n = n.saturating_add(1);
        }
    }

    pub fn remove(&mut self, phase: Phase) {
        if let Some(n) = self.slot(phase) {
            *n = n.saturating_sub(1);
        }
    }

    /// Services with a process: starting, running or stopping.
    pub fn with_process(&self) -> u32 {
        self.starting
            .saturating_add(self.running)
            .saturating_add(self.stopping)
    }
}

impl AgentReport {
    pub fn render(&self) -> Vec<u8> {
        // Plain data: always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(data: &[u8]) -> Result<AgentReport, DataError> {
        serde_json::from_slice(data).map_err(|e| DataError::BadNode {
            expected: "an agent report object (containment, hostname, machine, pid, version, ...)",
            found: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_positive_decimal_numbers() {
        assert_eq!(parse_pid(&render_pid(4242)), Ok(4242));
        for bad in [
            &b""[..],
            b"0",
            b"-1",
            b" 12",
            b"12\n",
            b"4294967296",
            b"\xff",
        ] {
            assert!(parse_pid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_nodes_round_trip_and_name_what_is_wrong() {
        let state = StateNode {
            generation: 2,
            host: "h".into(),
            last_exit: None,
            machine: "m1".into(),
            pid: 7,
            port: None,
            restarts: 1,
            started_at: 1000.25,
        };
        assert_eq!(StateNode::parse(&state.render()), Ok(state.clone()));
        let after_a_crash = StateNode {
            last_exit: Some("killed by signal 9 (SIGKILL)".into()),
            ..state
        };
        assert_eq!(StateNode::parse(&after_a_crash.render()), Ok(after_a_crash));
        let err = StateNode::parse(br#"{"pid":1}"#).expect_err("incomplete");
        assert!(err.to_string().contains("generation"), "{err}");
    }

    fn report() -> AgentReport {
        let web = ServiceReport {
            generation: 3,
            last_exit: Some("exit code 1".into()),
            next_start_at: None,
            not_ready_within: None,
            phase: Phase::Running,
            problem: None,
            pid: Some(42),
            quick_failures: 1,
            restarts: 2,
            since: Some(1000.5),
        };
        AgentReport {
            containment: "process-group".into(),
            hostname: "h".into(),
            machine: "m1".into(),
            phases: PhaseCounts {
                running: 9,
                backoff: 1,
                ..PhaseCounts::default()
            },
            pid: 7,
            problems: [("/services/x/settings".into(), "bad".into())].into(),
            problems_omitted: 0,
            services: [("web".into(), web)].into(),
            services_omitted: 2,
            started_at: Some(999.25),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn agent_reports_are_written_in_name_order_and_read_back() {
        let report = report();
        let text = String::from_utf8(report.render()).expect("utf-8");
        assert_eq!(
            text,
            r#"{"containment":"process-group","hostname":"h","machine":"m1","phases":{"backoff":1,"running":9},"pid":7,"problems":{"/services/x/settings":"bad"},"services":{"web":{"generation":3,"last_exit":"exit code 1","next_start_at":null,"phase":"running","pid":42,"quick_failures":1,"restarts":2,"since":1000.5}},"services_omitted":2,"started_at":999.25,"version":"0.1.0"}"#
        );
        assert_eq!(AgentReport::parse(text.as_bytes()), Ok(report));
    }

    #[test]
    fn agent_reports_from_other_versions_are_read() {
        // Newer: an unknown field and an unknown phase. Older: optional fields missing.
        let data = br#"{"containment":"c","hostname":"h","machine":"m1","pid":7,"version":"9",
            "weather":"fine","services":{"web":{"phase":"hibernating","colour":1}},
            "phases":{"running":3,"hibernating":2}}"#;
        let report = AgentReport::parse(data).expect("tolerated");
        assert_eq!(report.started_at, None);
        assert!(report.problems.is_empty());
        assert_eq!((report.problems_omitted, report.services_omitted), (0, 0));
        assert_eq!(
            report.phases,
            PhaseCounts {
                running: 3,
                ..PhaseCounts::default()
            }
        );
        let web = &report.services["web"];
        assert_eq!(web.phase, Phase::Unknown);
        assert_eq!((web.pid, web.restarts, web.generation), (None, 0, 0));
    }

    #[test]
    fn agent_reports_that_cannot_be_read_say_what_was_expected() {
        let err = AgentReport::parse(br#"{"machine":"m1"}"#).expect_err("incomplete");
        assert!(err.to_string().contains("agent report"), "{err}");
        assert!(AgentReport::parse(b"").is_err());
    }
}
