//! Service settings (`/services/<name>/settings`) and machine lists (`/services/<name>/machines`):
//! parsing JSON written by anyone into values the agent can trust, with errors naming the problem.

use crate::names::PluginName;
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
    #[error("setting \"env\": {name:?} is pop's own variable (names starting with POP_ are pop's and cannot be set)")]
    ReservedVariable { name: String },
    #[error("setting \"group\" needs setting \"user\" (without it the service would keep the agent's user)")]
    GroupWithoutUser,
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

/// A user or group of the machine, as the settings name it: resolved to an id by the
/// agent when it launches the process (the user database is the machine's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Account {
    Id(u32),
    Name(String),
}

impl Account {
    fn parse(key: &str, v: &Value) -> Result<Account, DataError> {
        let bad = || DataError::BadSetting {
            key: key.to_string(),
            expected: "a name (letters, digits, '.', '_', '-'; at most 32) or a numeric id",
            found: v.to_string(),
        };
        match v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .filter(|id| *id != u32::MAX)
                .map(Account::Id)
                .ok_or_else(bad),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<u32>()
                .ok()
                .filter(|id| *id != u32::MAX)
                .map(Account::Id)
                .ok_or_else(bad),
            Value::String(s)
                if (1..=32).contains(&s.len())
                    && !s.starts_with('-')
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
            {
                Ok(Account::Name(s.clone()))
            }
            _ => Err(bad()),
        }
    }

    fn value(&self) -> Value {
        match self {
            Account::Id(id) => Value::from(*id),
            Account::Name(name) => Value::from(name.as_str()),
        }
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Account::Id(id) => write!(f, "{id}"),
            Account::Name(name) => f.write_str(name),
        }
    }
}

/// Whom a service's processes run as (settings `user` and `group`): the user, with its
/// supplementary groups, and its primary group unless `group` names another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub user: Account,
    pub group: Option<Account>,
}

/// Settings `user` and `group`: whom the service's processes run as (`None`: the
/// agent's user). `group` alone is refused: the process would keep the agent's user.
pub fn run_as(map: &Map<String, Value>) -> Result<Option<RunAs>, DataError> {
    let user = map
        .get("user")
        .map(|v| Account::parse("user", v))
        .transpose()?;
    let group = map
        .get("group")
        .map(|v| Account::parse("group", v))
        .transpose()?;
    match (user, group) {
        (Some(user), group) => Ok(Some(RunAs { user, group })),
        (None, Some(_)) => Err(DataError::GroupWithoutUser),
        (None, None) => Ok(None),
    }
}

/// The prefix of the variables pop sets for a service; its `env` cannot set them.
pub const RESERVED_ENV_PREFIX: &str = "POP_";

/// Validated settings of one service: the settings every type has, checked here, and the
/// rest (`extra`: the type's own, like `command` or `packages`, and operators' own), kept
/// as they are for the type's manifest to use ([`Settings::values`]). A change to any of
/// them restarts the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Recorded")]
pub struct Settings {
    /// The type's name: a built-in type or a plugin stored at `/plugins/<name>`.
    pub service_type: PluginName,
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
    /// `None`: the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
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

    /// Reads the settings every type has; what the type needs of the rest is its
    /// manifest's to check (`Manifest::check_settings`, and rendering the launch).
    pub fn from_map(map: &Map<String, Value>) -> Result<Settings, DataError> {
        let service_type = match map.get("type") {
            Some(v) => {
                let name = string("type", v)?;
                PluginName::new(&name).map_err(|e| DataError::BadSetting {
                    key: "type".into(),
                    expected: "a service type's name",
                    found: e.to_string(),
                })?
            }
            None => {
                return Err(DataError::MissingSetting {
                    key: "type",
                    service_type: "any".into(),
                })
            }
        };
        let mut settings = Settings {
            service_type,
            host: DEFAULT_HOST.to_string(),
            port: None,
            restart: RestartPolicy::Always,
            session_loss: SessionLoss::KeepRunning,
            stop_timeout: Duration::from_secs(10),
            start_seconds: Duration::from_secs(1),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            env: BTreeMap::new(),
            run_as: None,
            extra: BTreeMap::new(),
        };
        for (key, v) in map {
            match key.as_str() {
                "type" => {}
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
                        if name.starts_with(RESERVED_ENV_PREFIX) {
                            return Err(DataError::ReservedVariable { name: name.clone() });
                        }
                        let value = string(&format!("env.{name}"), value)?;
                        settings.env.insert(name.clone(), value);
                    }
                }
                "user" | "group" => {}
                _ => {
                    settings.extra.insert(key.clone(), v.clone());
                }
            }
        }
        settings.run_as = run_as(map)?;
        Ok(settings)
    }

    /// Every setting as a value a command template can use: the ones every type has as
    /// `pop set` writes them (seconds as numbers), and the others as they were given.
    pub fn values(&self) -> Map<String, Value> {
        let mut map: Map<String, Value> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        map.insert("type".into(), Value::from(self.service_type.as_str()));
        map.insert("host".into(), Value::from(self.host.as_str()));
        if let Some(port) = self.port {
            map.insert("port".into(), Value::from(port));
        }
        let restart = match self.restart {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        };
        map.insert("restart".into(), Value::from(restart));
        let session_loss = match self.session_loss {
            SessionLoss::KeepRunning => "keep-running",
            SessionLoss::Fence => "fence",
        };
        map.insert("session_loss".into(), Value::from(session_loss));
        map.insert("stop_timeout".into(), seconds_value(self.stop_timeout));
        map.insert("start_seconds".into(), seconds_value(self.start_seconds));
        map.insert("ready_timeout".into(), seconds_value(self.ready_timeout));
        let env: Map<String, Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        map.insert("env".into(), Value::Object(env));
        if let Some(run_as) = &self.run_as {
            map.insert("user".into(), run_as.user.value());
            if let Some(group) = &run_as.group {
                map.insert("group".into(), group.value());
            }
        }
        map
    }
}

/// Seconds as pop writes them into settings: whole seconds as integers.
pub fn seconds_value(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.as_secs())
    } else {
        Value::from(d.as_secs_f64())
    }
}

/// Settings as an agent recorded them (journal, run records), this version's or an
/// earlier one's: before plugins the type was `"Command"` or `"Echo"` and `command` a
/// field of its own. Read into the same [`Settings`] the settings node gives, so an
/// upgraded agent adopting a process sees no change.
#[derive(Deserialize)]
struct Recorded {
    service_type: String,
    #[serde(default)]
    command: Option<String>,
    host: String,
    port: Option<u16>,
    restart: RestartPolicy,
    session_loss: SessionLoss,
    stop_timeout: Duration,
    start_seconds: Duration,
    #[serde(default = "default_ready_timeout")]
    ready_timeout: Duration,
    env: BTreeMap<String, String>,
    #[serde(default)]
    run_as: Option<RunAs>,
    extra: BTreeMap<String, Value>,
}

impl TryFrom<Recorded> for Settings {
    type Error = crate::names::NameError;

    fn try_from(r: Recorded) -> Result<Settings, Self::Error> {
        let name = match r.service_type.as_str() {
            "Command" => "command",
            "Echo" => "echo",
            other => other,
        };
        let service_type = PluginName::new(name)?;
        let mut extra = r.extra;
        if let Some(command) = r.command {
            extra.insert("command".into(), Value::from(command));
        }
        Ok(Settings {
            service_type,
            host: r.host,
            port: r.port,
            restart: r.restart,
            session_loss: r.session_loss,
            stop_timeout: r.stop_timeout,
            start_seconds: r.start_seconds,
            ready_timeout: r.ready_timeout,
            env: r.env,
            run_as: r.run_as,
            extra,
        })
    }
}

/// The settings every service type has, whatever its manifest says.
pub const COMMON_KEYS: [&str; 10] = [
    "restart",
    "session_loss",
    "stop_timeout",
    "start_seconds",
    "ready_timeout",
    "host",
    "port",
    "env",
    "user",
    "group",
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
/// reads them, ignoring the rest (a manifest's defaults have no type of their own).
pub fn check_common(map: &Map<String, Value>) -> Result<(), DataError> {
    let mut common: Map<String, Value> = map
        .iter()
        .filter(|(key, _)| COMMON_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    common.insert("type".into(), Value::from("any"));
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
    fn any_type_name_is_read_and_the_type_own_settings_are_kept_as_given() {
        let s = Settings::parse(br#"{"type":"greeter","greeting":"hi","command":7}"#).unwrap();
        assert_eq!(s.service_type.as_str(), "greeter");
        assert_eq!(s.extra.get("greeting"), Some(&Value::from("hi")));
        assert_eq!(s.extra.get("command"), Some(&Value::from(7)));
        let err = Settings::parse(br#"{"type":"a b"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("setting \"type\": expected a service type's name"),
            "{err}"
        );
    }

    #[test]
    fn values_give_templates_every_setting_as_pop_set_writes_it() {
        let s = Settings::parse(
            br#"{"type":"echo","port":7,"stop_timeout":1.5,"mine":[1],"env":{"A":"b"}}"#,
        )
        .unwrap();
        let values = s.values();
        assert_eq!(values["type"], Value::from("echo"));
        assert_eq!(values["port"], Value::from(7));
        assert_eq!(values["host"], Value::from("0.0.0.0"));
        assert_eq!(values["stop_timeout"], Value::from(1.5));
        assert_eq!(values["start_seconds"], Value::from(1));
        assert_eq!(values["restart"], Value::from("always"));
        assert_eq!(values["mine"], serde_json::json!([1]));
        assert_eq!(values["env"], serde_json::json!({"A": "b"}));
        // What values gives, read again, is the same settings.
        assert_eq!(Settings::from_map(&values), Ok(s));
    }

    /// A run record written before plugins: the type as the old enum, `command` a field.
    #[test]
    fn settings_recorded_by_an_agent_before_plugins_read_as_todays() {
        let today = Settings::parse(br#"{"type":"command","command":"sleep 5","port":9}"#).unwrap();
        let mut recorded = serde_json::to_value(&today).unwrap();
        let fields = recorded.as_object_mut().unwrap();
        fields.insert("service_type".into(), Value::from("Command"));
        fields.insert("command".into(), Value::from("sleep 5"));
        fields.insert("extra".into(), serde_json::json!({}));
        let read: Settings = serde_json::from_value(recorded).expect("an old record reads");
        assert_eq!(read, today);
        let echo = serde_json::json!({"service_type":"Echo","command":null,"host":"h",
            "port":0,"restart":"Always","session_loss":"KeepRunning",
            "stop_timeout":{"secs":10,"nanos":0},"start_seconds":{"secs":1,"nanos":0},
            "env":{},"extra":{}});
        let read: Settings = serde_json::from_value(echo).expect("an old echo record reads");
        assert_eq!(read.service_type.as_str(), "echo");
        assert!(read.extra.is_empty());
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
            (r#"{"port":1}"#, "type"),
            (r#"{"type":"no/pe"}"#, "type"),
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

    #[test]
    fn user_and_group_are_names_or_ids_and_group_needs_user() {
        let parse =
            |extra: &str| Settings::parse(format!(r#"{{"type":"echo"{extra}}}"#).as_bytes());
        assert_eq!(parse("").expect("valid").run_as, None);
        let run_as = |extra: &str| parse(extra).expect("valid").run_as.expect("a user");
        assert_eq!(
            run_as(r#","user":"nobody""#),
            RunAs {
                user: Account::Name("nobody".into()),
                group: None
            }
        );
        assert_eq!(
            run_as(r#","user":65534,"group":"nogroup""#),
            RunAs {
                user: Account::Id(65534),
                group: Some(Account::Name("nogroup".into()))
            }
        );
        // A string of digits is an id, as in chown.
        assert_eq!(run_as(r#","user":"0","group":"100""#).user, Account::Id(0));
        assert_eq!(
            run_as(r#","user":"svc-1.a_b""#).user,
            Account::Name("svc-1.a_b".into())
        );
        for bad in [
            r#""""#,
            r#""-x""#,
            r#""a b""#,
            r#""a/b""#,
            "-1",
            "4294967295",
            "4294967296",
            "1.5",
            "null",
            "[]",
            r#""aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#,
        ] {
            for key in ["user", "group"] {
                let err = parse(&format!(r#","user":"u","{key}":{bad}"#)).expect_err(bad);
                assert_eq!(
                    err.to_string(),
                    format!("setting \"{key}\": expected a name (letters, digits, '.', '_', '-'; at most 32) or a numeric id, found {bad}")
                );
            }
        }
        assert_eq!(
            parse(r#","group":"adm""#).expect_err("group alone"),
            DataError::GroupWithoutUser
        );
        // As every common setting: what values gives reads back the same.
        let s = parse(r#","user":"nobody","group":7"#).expect("valid");
        let values = s.values();
        assert_eq!(values["user"], Value::from("nobody"));
        assert_eq!(values["group"], Value::from(7));
        assert_eq!(Settings::from_map(&values), Ok(s.clone()));
        // And a run record keeps it; one without it (an earlier agent's) reads as none.
        let recorded: Settings =
            serde_json::from_value(serde_json::to_value(&s).expect("serializes")).expect("reads");
        assert_eq!(recorded, s);
        let plain = parse("").expect("valid");
        let json = serde_json::to_value(&plain).expect("serializes");
        assert!(json.get("run_as").is_none(), "{json}");
    }

    #[test]
    fn env_cannot_set_pop_own_variables() {
        for name in ["POP_AUTH", "POP_PORT", "POP_SUPERVISION_TOKEN", "POP_"] {
            let json = format!(r#"{{"type":"echo","env":{{"A":"1","{name}":"x"}}}}"#);
            let err = Settings::parse(json.as_bytes()).expect_err(name);
            assert_eq!(
                err.to_string(),
                format!("setting \"env\": \"{name}\" is pop's own variable (names starting with POP_ are pop's and cannot be set)")
            );
        }
        let ok = Settings::parse(br#"{"type":"echo","env":{"pop_x":"1","XPOP_":"2"}}"#);
        assert!(ok.is_ok(), "{ok:?}");
    }
}
