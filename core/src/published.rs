//! What an agent publishes about a running service: the pid node
//! (`/machines/<machine>/<service>`) and the state node
//! (`/services/<service>/state/<machine>`). Written by the agent, read by `pop status`
//! and by anyone else; reading them never trusts that the writer was pop.

use crate::settings::DataError;
use serde::{Deserialize, Serialize};

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

/// The state node: where and since when a service instance runs. Fields in name order,
/// the order they are written in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateNode {
    pub generation: u64,
    /// Where clients reach it: the service's host setting, or the machine's host name
    /// when the service listens on all addresses.
    pub host: String,
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
            machine: "m1".into(),
            pid: 7,
            port: None,
            restarts: 1,
            started_at: 1000.25,
        };
        assert_eq!(StateNode::parse(&state.render()), Ok(state));
        let err = StateNode::parse(br#"{"pid":1}"#).expect_err("incomplete");
        assert!(err.to_string().contains("generation"), "{err}");
    }
}
