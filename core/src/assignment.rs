//! Settings changed from the command line: `KEY=VALUE` arguments applied to the JSON in a
//! settings znode, as `pop add --set` and `pop set` do. Pure, so the fuzzer and the
//! simulator's operator run exactly what the CLI runs.

use crate::settings::{DataError, Settings};
use serde_json::{Map, Value};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AssignmentError {
    #[error("{0:?} is not KEY=VALUE")]
    NotAssignment(String),
    #[error("{0:?} has an empty key")]
    EmptyKey(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EditError {
    /// The node holds something other than a JSON object: pop does not overwrite it.
    #[error("the settings are not a JSON object; fix them with a ZooKeeper client, pop will not overwrite them")]
    NotAnObject,
    /// The result would be settings the agent rejects.
    #[error(transparent)]
    Invalid(#[from] DataError),
}

/// Parses `KEY=VALUE`: VALUE is JSON when it parses as JSON (numbers, true, null,
/// objects), else a plain string.
pub fn parse_assignment(text: &str) -> Result<(String, Value), AssignmentError> {
    let (key, raw) = text
        .split_once('=')
        .ok_or_else(|| AssignmentError::NotAssignment(text.to_string()))?;
    if key.is_empty() {
        return Err(AssignmentError::EmptyKey(text.to_string()));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    Ok((key.to_string(), value))
}

/// Applies assignments, then removals, to the settings JSON in `current`. Returns the
/// new node data, or `None` when nothing would change (so nothing is written and the
/// service is not restarted). Never returns settings the agent would reject.
pub fn edit_settings(
    current: &[u8],
    set: &[(String, Value)],
    unset: &[String],
) -> Result<Option<Vec<u8>>, EditError> {
    let edited = edit_unchecked(current, set, unset)?;
    Settings::from_map(&edited.map)?;
    Ok(edited.changed.then(|| render_settings(edited.map)))
}

/// Settings after an edit, before anyone checked them.
#[derive(Debug, Clone, PartialEq)]
pub struct Edited {
    pub map: Map<String, Value>,
    /// False when the edit changes nothing.
    pub changed: bool,
}

/// [`edit_settings`] without the check, for settings whose type decides what is valid
/// (a plugin's manifest: `plan::Set`).
pub fn edit_unchecked(
    current: &[u8],
    set: &[(String, Value)],
    unset: &[String],
) -> Result<Edited, EditError> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(current) else {
        return Err(EditError::NotAnObject);
    };
    let before = map.clone();
    for (key, value) in set {
        map.insert(key.clone(), value.clone());
    }
    for key in unset {
        map.remove(key);
    }
    let changed = map != before;
    Ok(Edited { map, changed })
}

/// Settings as pop writes them: pretty JSON, for whoever reads the znode by hand.
pub fn render_settings(map: Map<String, Value>) -> Vec<u8> {
    // A map of JSON values always serializes.
    serde_json::to_vec_pretty(&Value::Object(map)).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_take_json_or_strings() {
        assert_eq!(
            parse_assignment("port=80").expect("valid").1,
            Value::from(80)
        );
        assert_eq!(
            parse_assignment("command=sleep 5").expect("valid").1,
            Value::from("sleep 5")
        );
        assert_eq!(
            parse_assignment("novalue"),
            Err(AssignmentError::NotAssignment("novalue".into()))
        );
        assert_eq!(
            parse_assignment("=1"),
            Err(AssignmentError::EmptyKey("=1".into()))
        );
    }

    #[test]
    fn edits_change_only_what_is_asked_and_keep_settings_valid() {
        let current = br#"{"type":"echo","port":0,"mine":1}"#;
        let port = vec![("port".to_string(), Value::from(8080))];
        let edited = edit_settings(current, &port, &[])
            .expect("valid")
            .expect("changed");
        let map: Value = serde_json::from_slice(&edited).expect("json");
        assert_eq!(map["port"], 8080);
        assert_eq!(map["mine"], 1);
        assert_eq!(edit_settings(&edited, &port, &[]), Ok(None));
        assert!(matches!(
            edit_settings(current, &[], &["type".into()]),
            Err(EditError::Invalid(_))
        ));
        assert_eq!(
            edit_settings(b"[1]", &port, &[]),
            Err(EditError::NotAnObject)
        );
    }

    /// Found by the fuzzer: without serde_json's exact float parsing, a number read back
    /// differed in its last digit, so repeating the same `pop set` restarted the service.
    #[test]
    fn repeating_an_edit_with_a_long_float_changes_nothing() {
        let current = br#"{"type":"echo","port":0}"#;
        let set =
            vec![
                parse_assignment("x=21111111111113333333333333333111111113333333333333333133")
                    .expect("valid"),
            ];
        let edited = edit_settings(current, &set, &[])
            .expect("valid")
            .expect("changed");
        assert_eq!(edit_settings(&edited, &set, &[]), Ok(None));
    }
}
