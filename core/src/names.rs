//! Names that become znode path components: service names, machine ids, and the names of
//! plugins (service types) and their tasks.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// Longest service name or machine id accepted.
pub const MAX_NAME_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {name:?} is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong {
        what: &'static str,
        name: String,
        len: usize,
    },
    #[error("{what} {name:?} is not allowed (\".\" and \"..\" are reserved)")]
    Reserved { what: &'static str, name: String },
    #[error("{what} {name:?} contains {found}, which cannot be part of a ZooKeeper node name")]
    BadCharacter {
        what: &'static str,
        name: String,
        found: String,
    },
}

fn check(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            name: name.to_string(),
            len,
        });
    }
    if name == "." || name == ".." || name == "zookeeper" {
        return Err(NameError::Reserved {
            what,
            name: name.to_string(),
        });
    }
    for c in name.chars() {
        let found = match c {
            '/' => Some("'/'".to_string()),
            c if c.is_control() => Some(format!("a control character (U+{:04X})", c as u32)),
            c if c.is_whitespace() => Some("white space".to_string()),
            c if zookeeper_rejects(c) => Some(format!("the character U+{:04X}", c as u32)),
            _ => None,
        };
        if let Some(found) = found {
            return Err(NameError::BadCharacter {
                what,
                name: name.to_string(),
                found,
            });
        }
    }
    Ok(())
}

/// Characters ZooKeeper refuses in paths (its `PathUtils.validatePath` checks UTF-16 code
/// units): private use, anything outside the Basic Multilingual Plane (a surrogate pair,
/// so emoji), and U+FFF0 to U+FFFF (U+FFFD, the replacement character, among them).
/// Control characters are refused earlier.
fn zookeeper_rejects(c: char) -> bool {
    matches!(c as u32, 0xE000..=0xF8FF | 0xFFF0..=0xFFFF | 0x10000..)
}

/// A validated service name: safe as one znode path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        check("service name", name)?;
        Ok(ServiceName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated machine id: safe as one znode path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

impl MachineId {
    pub fn new(id: &str) -> Result<Self, NameError> {
        check("machine id", id)?;
        Ok(MachineId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        ServiceName::new(&s)
    }
}

impl From<ServiceName> for String {
    fn from(n: ServiceName) -> String {
        n.0
    }
}

impl TryFrom<String> for MachineId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        MachineId::new(&s)
    }
}

impl From<MachineId> for String {
    fn from(n: MachineId) -> String {
        n.0
    }
}

/// A name checked by the shared rules, with what it names for messages; serialized as
/// the plain string.
macro_rules! checked_name {
    ($(#[$doc:meta])* $type:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $type(String);

        impl $type {
            pub fn new(name: &str) -> Result<Self, NameError> {
                check($what, name)?;
                Ok($type(name.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $type {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $type::new(&s)
            }
        }

        impl From<$type> for String {
            fn from(n: $type) -> String {
                n.0
            }
        }
    };
}

checked_name!(
    /// A validated service type (plugin) name: `/plugins/<name>` and the settings' `type`.
    PluginName,
    "plugin name"
);
checked_name!(
    /// A validated task name of a plugin (`[tasks.<name>]`).
    TaskName,
    "task name"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["plone4", "web-1", "a.b", "x_y", "日本"] {
            assert!(ServiceName::new(ok).is_ok(), "{ok}");
        }
        assert!(ServiceName::new(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn rejects_unsafe_names() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/",
            "a\nb",
            "a\u{7f}",
            "a b",
            "a\u{e000}",
            "a\u{fffd}",
            "emoji\u{1f600}",
            long.as_str(),
        ] {
            assert!(ServiceName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_names_the_problem() {
        let err = ServiceName::new("a/b").unwrap_err().to_string();
        assert!(err.contains("'/'"), "{err}");
        let err = ServiceName::new("\u{1f600}").unwrap_err().to_string();
        assert!(err.contains("U+1F600"), "{err}");
        let err = MachineId::new("").unwrap_err().to_string();
        assert_eq!(err, "machine id is empty");
    }

    #[test]
    fn plugin_and_task_names_follow_the_same_rules_and_say_what_they_name() {
        assert!(PluginName::new("greeter").is_ok());
        assert!(TaskName::new("install").is_ok());
        let err = PluginName::new("a b").unwrap_err().to_string();
        assert!(err.starts_with("plugin name \"a b\""), "{err}");
        let err = TaskName::new("").unwrap_err().to_string();
        assert_eq!(err, "task name is empty");
    }
}
