//! A service's Python environment, as the core decides about it: what it is built from
//! (an interpreter and the `packages` setting), a content hash of that, and where it lives
//! on the machine. Building it is the driver's (`Action::BuildEnvironment`); the core only
//! starts a service once the environment its settings want is built.
//!
//! Each spec gets its own directory, `<state dir>/env/<service>/<hash>`: a new one is built
//! beside the one in use ("aside"), the service is restarted onto it once it is complete
//! ("swap"), and the old one is removed after. A virtual environment cannot be moved (its
//! scripts name its path), so it is built where it stays.

use crate::plugin::PythonEnvironment;
use crate::settings::Settings;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// The interpreter an environment is built from when the settings name none.
pub const DEFAULT_PYTHON: &str = "python3";

/// What an environment is built from. Packages are sorted and without duplicates, so two
/// settings that ask for the same packages in another order want the same environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EnvironmentSpec {
    /// The interpreter the environment is made from (`python3`, `python3.11`, a path).
    pub python: String,
    /// Requirements as pip and uv take them: names with versions, URLs, paths of wheels.
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("setting \"packages\": expected a list of requirements (strings), found {found}")]
    Packages { found: String },
    #[error("setting \"packages\": {requirement:?} is not a requirement ({why})")]
    Requirement {
        requirement: String,
        why: &'static str,
    },
    #[error(
        "setting \"python\": expected the interpreter to build from, as a string, found {found}"
    )]
    Python { found: String },
}

impl EnvironmentSpec {
    /// The spec a service's settings want: `python` (default [`DEFAULT_PYTHON`]) and
    /// `packages` (default none).
    pub fn from_settings(settings: &Settings) -> Result<EnvironmentSpec, SpecError> {
        Self::from_parts(settings.extra.get("python"), settings.extra.get("packages"))
    }

    /// The same from settings as written (what `pop add` and `pop set` check).
    pub fn from_values(settings: &Map<String, Value>) -> Result<EnvironmentSpec, SpecError> {
        Self::from_parts(settings.get("python"), settings.get("packages"))
    }

    fn from_parts(
        python: Option<&Value>,
        packages: Option<&Value>,
    ) -> Result<EnvironmentSpec, SpecError> {
        let python = match python {
            None | Some(Value::Null) => DEFAULT_PYTHON.to_string(),
            Some(Value::String(s)) if !s.trim().is_empty() && !s.starts_with('-') => s.clone(),
            Some(other) => {
                return Err(SpecError::Python {
                    found: other.to_string(),
                })
            }
        };
        let mut list = Vec::new();
        match packages {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let Value::String(requirement) = item else {
                        return Err(SpecError::Packages {
                            found: item.to_string(),
                        });
                    };
                    check_requirement(requirement)?;
                    list.push(requirement.trim().to_string());
                }
            }
            Some(other) => {
                return Err(SpecError::Packages {
                    found: other.to_string(),
                })
            }
        }
        list.sort();
        list.dedup();
        Ok(EnvironmentSpec {
            python,
            packages: list,
        })
    }

    /// A content hash of the spec: 16 hex digits, the same in every version of pop (the
    /// directory of an environment built by an earlier agent is found again).
    pub fn hash(&self) -> String {
        // FNV-1a, 64 bits, over an unambiguous encoding (lengths before contents). The
        // builder also records the spec in the environment and rebuilds on a mismatch,
        // so a collision costs a rebuild, not a wrong environment.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for byte in bytes {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        let mut field = |text: &str| {
            feed(&(text.len() as u64).to_le_bytes());
            feed(text.as_bytes());
        };
        field("pop-environment-1");
        field(&self.python);
        for package in &self.packages {
            field(package);
        }
        format!("{hash:016x}")
    }
}

/// A requirement goes to the installer as one argument: it must not be taken for an
/// option, nor be empty, nor span lines.
fn check_requirement(requirement: &str) -> Result<(), SpecError> {
    let why = if requirement.trim().is_empty() {
        "empty"
    } else if requirement.trim_start().starts_with('-') {
        "it would be read as an option"
    } else if requirement.contains(['\n', '\r', '\0']) {
        "it spans lines"
    } else {
        return Ok(());
    };
    Err(SpecError::Requirement {
        requirement: requirement.to_string(),
        why,
    })
}

/// Where the environments of `service` live: `<state dir>/env/<service>`.
pub fn env_root(state_dir: &str, service: &str) -> String {
    format!("{state_dir}/env/{service}")
}

/// The environment of `service` built from the spec with `hash`.
pub fn env_dir(state_dir: &str, service: &str, hash: &str) -> String {
    format!("{}/{hash}", env_root(state_dir, service))
}

/// The variables `{env_dir}` and `{python}` of an environment directory.
pub fn python_environment(env_dir: &str) -> PythonEnvironment {
    PythonEnvironment {
        env_dir: env_dir.to_string(),
        python: format!("{env_dir}/bin/python"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> Result<EnvironmentSpec, SpecError> {
        let Value::Object(map) = value else {
            panic!("settings are an object")
        };
        EnvironmentSpec::from_values(&map)
    }

    #[test]
    fn the_spec_is_the_interpreter_and_the_sorted_packages() {
        let a = spec(json!({"packages": ["b==1", "a", "b==1"]})).expect("valid");
        assert_eq!(a.python, "python3");
        assert_eq!(a.packages, ["a", "b==1"]);
        let b = spec(json!({"python": "python3", "packages": ["a", "b==1"]})).expect("valid");
        assert_eq!(a.hash(), b.hash(), "the same packages in another order");
        let c = spec(json!({"python": "python3.11", "packages": ["a", "b==1"]})).expect("valid");
        assert_ne!(a.hash(), c.hash(), "another interpreter");
        let d = spec(json!({"packages": ["a", "b==2"]})).expect("valid");
        assert_ne!(a.hash(), d.hash(), "another version");
        assert_eq!(a.hash().len(), 16);
    }

    /// Lengths are hashed, so moving text between packages changes the hash.
    #[test]
    fn the_hash_tells_apart_packages_that_concatenate_alike() {
        let a = spec(json!({"packages": ["ab", "c"]})).expect("valid");
        let b = spec(json!({"packages": ["a", "bc"]})).expect("valid");
        assert_ne!(a.hash(), b.hash());
    }

    /// Pinned: an upgraded agent finds the environments an earlier one built.
    #[test]
    fn the_hash_is_stable_across_versions() {
        let empty = spec(json!({})).expect("valid");
        assert_eq!(empty.hash(), "5fc539da37d0b7a5");
    }

    #[test]
    fn bad_packages_and_interpreters_are_refused_naming_the_setting() {
        for (settings, needle) in [
            (
                json!({"packages": "a b"}),
                "setting \"packages\": expected a list",
            ),
            (
                json!({"packages": [1]}),
                "setting \"packages\": expected a list",
            ),
            (json!({"packages": ["--index-url=x"]}), "read as an option"),
            (json!({"packages": [" "]}), "empty"),
            (json!({"packages": ["a\nb"]}), "spans lines"),
            (json!({"python": 3}), "setting \"python\""),
            (json!({"python": ""}), "setting \"python\""),
        ] {
            let err = spec(settings.clone()).expect_err("refused").to_string();
            assert!(err.contains(needle), "{settings}: {err}");
        }
    }

    #[test]
    fn each_spec_has_its_own_directory_under_the_service() {
        assert_eq!(env_dir("/var/pop", "web", "00ff"), "/var/pop/env/web/00ff");
        let env = python_environment("/var/pop/env/web/00ff");
        assert_eq!(env.python, "/var/pop/env/web/00ff/bin/python");
    }
}
