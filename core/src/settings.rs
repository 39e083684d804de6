//! Service settings (`/services/<name>/settings`) and machine lists (`/services/<name>/machines`):
//! parsing JSON written by anyone into values the agent can trust, with errors naming the problem.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DataError {
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("expected {expected}, found {found}")]
    WrongShape {
        expected: &'static str,
        found: &'static str,
    },
    #[error("setting {key:?}: expected {expected}, found {found}")]
    BadSetting {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("setting {key:?} is required for type {service_type:?}")]
    MissingSetting {
        key: &'static str,
        service_type: String,
    },
    #[error("unknown service type {0:?} (known types: command, echo)")]
    UnknownType(String),
    #[error("expected {expected}, found {found}")]
    BadNode {
        expected: &'static str,
        found: String,
    },
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Parses a machines list: a JSON list of machine id strings.
pub fn parse_machines(data: &[u8]) -> Result<BTreeSet<String>, DataError> {
    let value: Value =
        serde_json::from_slice(data).map_err(|e| DataError::InvalidJson(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(DataError::WrongShape {
            expected: "a list of machine ids",
            found: kind(&value),
        });
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Ok(s),
            other => Err(DataError::WrongShape {
                expected: "machine ids as strings",
                found: kind(&other),
            }),
        })
        .collect()
}

/// Renders a machines list the way pop writes it.
pub fn render_machines(machines: &BTreeSet<String>) -> Vec<u8> {
    let list: Vec<&String> = machines.iter().collect();
    serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
}

/// The built-in service types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ServiceType {
    /// Runs the `command` setting with `sh -c`.
    Command,
    /// A TCP echo server built into the pop binary.
    Echo,
}

impl ServiceType {
    pub const ALL: [ServiceType; 2] = [ServiceType::Command, ServiceType::Echo];

    pub fn parse(name: &str) -> Result<Self, DataError> {
        match name {
            "command" => Ok(ServiceType::Command),
            "echo" => Ok(ServiceType::Echo),
            other => Err(DataError::UnknownType(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Command => "command",
            ServiceType::Echo => "echo",
        }
    }

    /// The settings `pop add` writes for this type, before the user's overrides.
    pub fn default_settings(self, port: Option<u16>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), Value::from(self.as_str()));
        m.insert("restart".into(), Value::from("always"));
        m.insert("stop_timeout".into(), Value::from(10));
        m.insert("start_seconds".into(), Value::from(1));
        match self {
            ServiceType::Command => {
                if let Some(port) = port {
                    m.insert("port".into(), Value::from(port));
                }
            }
            ServiceType::Echo => {
                m.insert("host".into(), Value::from("127.0.0.1"));
                m.insert("port".into(), Value::from(port.unwrap_or(0)));
            }
        }
        m
    }
}

/// What to do when a service's process exits without pop asking it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// What a service does while its machine's ZooKeeper session is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SessionLoss {
    /// Keep running; the service may be unregistered for a while.
    #[default]
    KeepRunning,
    /// Stop before the session can expire (so nobody sees it registered while it is not
    /// supervised by a live session), start again once the session is back.
    Fence,
}

/// Validated settings of one service. Unknown keys are kept (`extra`) so plugins and
/// operators can add their own; a change to any of them restarts the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub service_type: ServiceType,
    pub command: Option<String>,
    pub host: String,
    /// `None`: the service has no port; `Some(0)`: the service picks one.
    pub port: Option<u16>,
    pub restart: RestartPolicy,
    pub session_loss: SessionLoss,
    pub stop_timeout: Duration,
    pub start_seconds: Duration,
    /// For services with a port: how long after its start it may take to accept
    /// connections before it counts as failed and is restarted. Defaulted when absent
    /// (settings recorded by an earlier agent for adoption have none).
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout: Duration,
    pub env: BTreeMap<String, String>,
    pub extra: BTreeMap<String, Value>,
}

const DEFAULT_HOST: &str = "0.0.0.0";
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

fn default_ready_timeout() -> Duration {
    DEFAULT_READY_TIMEOUT
}

fn seconds(key: &str, v: &Value) -> Result<Duration, DataError> {
    let bad = || DataError::BadSetting {
        key: key.to_string(),
        expected: "a number of seconds between 0 and 86400",
        found: v.to_string(),
    };
    let secs = v.as_f64().ok_or_else(bad)?;
    if !(0.0..=86400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_millis((secs * 1000.0).round() as u64))
}

/// Like [`seconds`], but a wait that must have room for something to happen.
fn positive_seconds(key: &str, v: &Value) -> Result<Duration, DataError> {
    match seconds(key, v) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(DataError::BadSetting {
            key: key.to_string(),
            expected: "a number of seconds greater than 0, at most 86400",
            found: v.to_string(),
        }),
    }
}

fn string(key: &str, v: &Value) -> Result<String, DataError> {
    v.as_str().map(str::to_string).ok_or(DataError::BadSetting {
        key: key.to_string(),
        expected: "a string",
        found: v.to_string(),
    })
}

impl Settings {
    /// Parses the settings znode's data.
    pub fn parse(data: &[u8]) -> Result<Settings, DataError> {
        let value: Value =
            serde_json::from_slice(data).map_err(|e| DataError::InvalidJson(e.to_string()))?;
        match value {
            Value::Object(map) => Settings::from_map(&map),
            other => Err(DataError::WrongShape {
                expected: "a JSON object of settings",
                found: kind(&other),
            }),
        }
    }

    pub fn from_map(map: &Map<String, Value>) -> Result<Settings, DataError> {
        let type_name = match map.get("type") {
            Some(v) => string("type", v)?,
            None => {
                return Err(DataError::MissingSetting {
                    key: "type",
                    service_type: "any".into(),
                })
            }
        };
        let service_type = ServiceType::parse(&type_name)?;
        let mut settings = Settings {
            service_type,
            command: None,
            host: DEFAULT_HOST.to_string(),
            port: None,
            restart: RestartPolicy::Always,
            session_loss: SessionLoss::KeepRunning,
            stop_timeout: Duration::from_secs(10),
            start_seconds: Duration::from_secs(1),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            env: BTreeMap::new(),
            extra: BTreeMap::new(),
        };
        for (key, v) in map {
            match key.as_str() {
                "type" => {}
                "command" => settings.command = Some(string(key, v)?),
                "host" => settings.host = string(key, v)?,
                "port" => {
                    settings.port = match v {
                        Value::Null => None,
                        _ => Some(v.as_u64().and_then(|p| u16::try_from(p).ok()).ok_or(
                            DataError::BadSetting {
                                key: key.clone(),
                                expected: "a port number from 0 to 65535 (0 = any free port)",
                                found: v.to_string(),
                            },
                        )?),
                    }
                }
                "restart" => {
                    settings.restart = match v.as_str() {
                        Some("always") => RestartPolicy::Always,
                        Some("on-failure") => RestartPolicy::OnFailure,
                        Some("never") => RestartPolicy::Never,
                        _ => {
                            return Err(DataError::BadSetting {
                                key: key.clone(),
                                expected: "one of \"always\", \"on-failure\", \"never\"",
                                found: v.to_string(),
                            })
                        }
                    }
                }
                "session_loss" => {
                    settings.session_loss = match v.as_str() {
                        Some("keep-running") => SessionLoss::KeepRunning,
                        Some("fence") => SessionLoss::Fence,
                        _ => {
                            return Err(DataError::BadSetting {
                                key: key.clone(),
                                expected: "one of \"keep-running\", \"fence\"",
                                found: v.to_string(),
                            })
                        }
                    }
                }
                "stop_timeout" => settings.stop_timeout = seconds(key, v)?,
                "start_seconds" => settings.start_seconds = seconds(key, v)?,
                "ready_timeout" => settings.ready_timeout = positive_seconds(key, v)?,
                "env" => {
                    let Value::Object(env) = v else {
                        return Err(DataError::BadSetting {
                            key: key.clone(),
                            expected: "an object of string values",
                            found: v.to_string(),
                        });
                    };
                    for (name, value) in env {
                        let value = string(&format!("env.{name}"), value)?;
                        settings.env.insert(name.clone(), value);
                    }
                }
                _ => {
                    settings.extra.insert(key.clone(), v.clone());
                }
            }
        }
        if service_type == ServiceType::Command && settings.command.is_none() {
            return Err(DataError::MissingSetting {
                key: "command",
                service_type: type_name,
            });
        }
        if service_type == ServiceType::Echo && settings.port.is_none() {
            return Err(DataError::MissingSetting {
                key: "port",
                service_type: type_name,
            });
        }
        Ok(settings)
    }
}

/// The settings every service type has, whatever its manifest says.
pub const COMMON_KEYS: [&str; 8] = [
    "restart",
    "session_loss",
    "stop_timeout",
    "start_seconds",
    "ready_timeout",
    "host",
    "port",
    "env",
];

/// The value the agent assumes for a setting every type has when a service's settings
/// leave it out (`port` and `env` have none: no port, no extra variables).
pub fn common_default(key: &str) -> Option<Value> {
    Some(match key {
        "restart" => Value::from("always"),
        "session_loss" => Value::from("keep-running"),
        "stop_timeout" => Value::from(10),
        "start_seconds" => Value::from(1),
        "ready_timeout" => Value::from(DEFAULT_READY_TIMEOUT.as_secs()),
        "host" => Value::from(DEFAULT_HOST),
        _ => return None,
    })
}

/// Checks the settings every type has ([`COMMON_KEYS`]) exactly as [`Settings::from_map`]
/// reads them, ignoring the rest: for the types this module does not know (plugins').
/// They are read with the echo type's rules, which check nothing beyond them once echo's
/// required port is there.
pub fn check_common(map: &Map<String, Value>) -> Result<(), DataError> {
    let mut common: Map<String, Value> = map
        .iter()
        .filter(|(key, _)| COMMON_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    common.insert("type".into(), Value::from(ServiceType::Echo.as_str()));
    if common.get("port").is_none_or(Value::is_null) {
        common.insert("port".into(), Value::from(0));
    }
    Settings::from_map(&common).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_list_parses_and_rejects() {
        let m = parse_machines(br#"["a","b","a"]"#).unwrap();
        assert_eq!(m.len(), 2);
        assert!(parse_machines(b"[1]").is_err());
        assert!(parse_machines(b"{}").is_err());
        assert!(parse_machines(b"not json").is_err());
        assert_eq!(render_machines(&m), br#"["a","b"]"#);
    }

    #[test]
    fn defaults_are_valid_settings() {
        for t in ServiceType::ALL {
            let mut m = t.default_settings(Some(0));
            if t == ServiceType::Command {
                m.insert("command".into(), Value::from("sleep 1"));
            }
            let s = Settings::from_map(&m).unwrap();
            assert_eq!(s.service_type, t);
            assert_eq!(s.restart, RestartPolicy::Always);
        }
    }

    #[test]
    fn common_settings_are_checked_whatever_the_type_and_other_keys_are_left_alone() {
        let map = |json: &str| -> Map<String, Value> {
            serde_json::from_str(json).expect("a JSON object")
        };
        let ok = map(r#"{"type":"greeter","greeting":[1],"command":7,"restart":"never"}"#);
        assert_eq!(check_common(&ok), Ok(()));
        let bad = map(r#"{"type":"greeter","port":70000}"#);
        let err = check_common(&bad).expect_err("a bad port").to_string();
        assert!(err.starts_with("setting \"port\""), "{err}");
        let bad = map(r#"{"env":{"A":1}}"#);
        assert!(check_common(&bad).is_err());
    }

    #[test]
    fn common_defaults_are_what_the_agent_assumes_for_a_missing_setting() {
        let bare: Map<String, Value> =
            serde_json::from_str(r#"{"type":"echo","port":0}"#).expect("a JSON object");
        let assumed = Settings::from_map(&bare).expect("valid");
        for key in COMMON_KEYS {
            let Some(default) = common_default(key) else {
                continue;
            };
            let mut given = bare.clone();
            given.insert(key.to_string(), default);
            assert_eq!(Settings::from_map(&given).as_ref(), Ok(&assumed), "{key}");
        }
    }

    #[test]
    fn ready_timeout_is_a_positive_number_of_seconds_defaulting_to_a_minute() {
        let parse = |extra: &str| {
            Settings::parse(format!(r#"{{"type":"echo","port":1{extra}}}"#).as_bytes())
        };
        assert_eq!(parse("").unwrap().ready_timeout, Duration::from_secs(60));
        assert_eq!(
            parse(r#","ready_timeout":1.5"#).unwrap().ready_timeout,
            Duration::from_millis(1500)
        );
        for bad in ["0", "-1", "86401", "\"1\"", "null"] {
            let err = parse(&format!(r#","ready_timeout":{bad}"#)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "setting \"ready_timeout\": expected a number of seconds greater than 0, at most 86400, found {bad}"
                )
            );
        }
    }

    /// Settings as an earlier agent recorded them for adoption, before `ready_timeout`.
    #[test]
    fn settings_recorded_without_a_ready_timeout_read_with_the_default() {
        let settings = Settings::parse(br#"{"type":"echo","port":1}"#).expect("valid");
        let mut recorded = serde_json::to_value(&settings).expect("serializes");
        if let Value::Object(fields) = &mut recorded {
            fields.remove("ready_timeout");
        }
        let read: Settings = serde_json::from_value(recorded).expect("an earlier record reads");
        assert_eq!(
            read, settings,
            "the same settings: an upgrade restarts nothing"
        );
    }

    #[test]
    fn bad_settings_name_the_key() {
        let cases = [
            (r#"{"type":"echo","port":70000}"#, "port"),
            (
                r#"{"type":"echo","port":1,"restart":"sometimes"}"#,
                "restart",
            ),
            (r#"{"type":"command"}"#, "command"),
            (r#"{"type":"nope"}"#, "nope"),
            (
                r#"{"type":"echo","port":1,"stop_timeout":-1}"#,
                "stop_timeout",
            ),
            (r#"{"type":"echo","port":1,"env":{"A":1}}"#, "env.A"),
            (
                r#"{"type":"echo","port":1,"ready_timeout":0}"#,
                "ready_timeout",
            ),
            (
                r#"{"type":"echo","port":1,"ready_timeout":"soon"}"#,
                "ready_timeout",
            ),
            (
                r#"{"type":"echo","port":1,"session_loss":"panic"}"#,
                "session_loss",
            ),
            (r#"[1]"#, "object"),
        ];
        for (json, needle) in cases {
            let err = Settings::parse(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
