//! The bodies of the cargo-fuzz targets in `fuzz/`. Each takes the fuzzer's bytes and
//! panics when a property fails, so a crash is a bug.

use crate::checker::{check_steps, Summary, Violation};
use crate::steps::TimedStep;
use arbitrary::{Arbitrary, Unstructured};
use pop_core::assignment::{edit_settings, parse_assignment, render_settings};
use pop_core::journal::{decode, replay, JournalError, Record};
use pop_core::launch::{self, Host};
use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::plugin::{builtin, decode_stored, Manifest};
use pop_core::published::{parse_pid, render_pid, AgentReport, StateNode};
use pop_core::settings::{parse_machines, render_machines, Settings};
use serde_json::Value;

/// A fuzz target: its name (as under `fuzz/fuzz_targets/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, for the corpus replay.
pub const TARGETS: [Target; 6] = [
    ("input_sequence", input_sequence),
    ("znode_payload", znode_payload),
    ("journal_reader", journal_reader),
    ("name", name),
    ("settings_assignment", settings_assignment),
    ("plugin_manifest", plugin_manifest),
];

/// The core over a sequence of inputs decoded from the bytes; see [`check_steps`].
pub fn input_sequence(data: &[u8]) {
    if let Err(violation) = input_sequence_summary(data) {
        panic!("{violation}");
    }
}

/// [`input_sequence`], saying how far the sequence got or which property failed.
pub fn input_sequence_summary(data: &[u8]) -> Result<Summary, Violation> {
    match Vec::<TimedStep>::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(steps) => check_steps(&steps),
        Err(_) => Ok(Summary::default()),
    }
}

/// Data anybody may have written into a machines, settings, state or pid znode: a value
/// or a typed error, valid values round-trip, and parsed settings make a launch.
pub fn znode_payload(data: &[u8]) {
    if let Ok(machines) = parse_machines(data) {
        let again = parse_machines(&render_machines(&machines));
        assert_eq!(again.as_ref(), Ok(&machines), "a rendered list re-parses");
    }
    if let Ok(settings) = Settings::parse(data) {
        if let Some(manifest) = builtin::get(settings.service_type.as_str()) {
            let host = Host {
                machine: "machine".into(),
                pop: "pop".into(),
                state_dir: "/state".into(),
            };
            let _ = launch::render("fuzz", &host, &settings, manifest, None);
        }
        // As pop would write the same settings back (pop set with nothing to change).
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(data) {
            let again = Settings::parse(&render_settings(map));
            assert_eq!(
                again.as_ref(),
                Ok(&settings),
                "re-rendered settings re-parse"
            );
        }
    }
    if let Ok(pid) = parse_pid(data) {
        assert_eq!(parse_pid(&render_pid(pid)), Ok(pid), "a pid re-parses");
    }
    if let Ok(state) = StateNode::parse(data) {
        let again = StateNode::parse(&state.render());
        // NaN is not JSON, so every parsed number compares equal to itself.
        assert_eq!(again.as_ref(), Ok(&state), "a rendered state re-parses");
    }
    if let Ok(report) = AgentReport::parse(data) {
        let again = AgentReport::parse(&report.render());
        assert_eq!(again.as_ref(), Ok(&report), "a rendered report re-parses");
    }
}

/// A journal file, torn or corrupt anywhere: decoding gives records or an error naming
/// a line; a torn tail is only ever the last line; whatever decodes replays without
/// panicking and re-encodes to records that decode the same.
pub fn journal_reader(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let journal = match decode(&text) {
        Ok(journal) => journal,
        Err(JournalError::BadLine { line, .. }) => {
            // A bad last line is a torn write, not an error.
            let lines = text.split_inclusive('\n').count();
            assert!(line >= 1 && line < lines, "line {line} of {lines}");
            return;
        }
        Err(e) => panic!("decode returns only bad lines: {e}"),
    };
    if let Some(bytes) = journal.torn_tail {
        assert!(
            bytes <= text.len() && bytes > 0,
            "the torn tail is in the file"
        );
    }
    let encode =
        |records: &[Record]| -> String { records.iter().map(|r| r.to_line() + "\n").collect() };
    let encoded = encode(&journal.records);
    let again = decode(&encoded).expect("encoded records decode");
    assert_eq!(again.torn_tail, None);
    assert_eq!(
        encode(&again.records),
        encoded,
        "records re-encode the same"
    );
    let _ = replay(&journal);
}

/// A service name or machine id: accepted ones make exactly one path component under
/// the namespace that ZooKeeper accepts, rejected ones carry a reason.
pub fn name(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ServiceName::new(&text) {
        Ok(service) => {
            assert!(
                zookeeper_accepts(&text),
                "{text:?} would be refused by ZooKeeper"
            );
            let path = paths::service_settings(service.as_str());
            assert_eq!(path.matches('/').count(), 3, "{path}");
            assert_eq!(
                paths::Watched::parse(&path),
                Some(paths::Watched::Settings(text.to_string())),
                "{path} routes back to its service"
            );
            assert!(MachineId::new(&text).is_ok(), "ids and names share rules");
            let machine = paths::machine_service(&text, service.as_str());
            assert_eq!(
                paths::parent(&machine),
                Some(paths::machine(&text).as_str())
            );
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(MachineId::new(&text).is_err(), "ids and names share rules");
        }
    }
}

/// ZooKeeper's own rule for a path component (`PathUtils.validatePath`, over UTF-16 code
/// units), written out independently of `names`.
fn zookeeper_accepts(component: &str) -> bool {
    !component.is_empty()
        && component != "."
        && component != ".."
        && !component.contains('/')
        && component.encode_utf16().all(
            |u| !matches!(u, 0x0000..=0x001F | 0x007F..=0x009F | 0xD800..=0xF8FF | 0xFFF0..=0xFFFF),
        )
}

/// What `pop set` is given: the node's current data, `KEY=VALUE` arguments and `--unset`.
#[derive(Debug, Arbitrary)]
struct SetCommand {
    current: CurrentSettings,
    assignments: Vec<String>,
    unset: Vec<String>,
}

#[derive(Debug, Arbitrary)]
enum CurrentSettings {
    Echo,
    Command,
    Raw(String),
}

impl CurrentSettings {
    fn data(&self) -> &[u8] {
        match self {
            CurrentSettings::Echo => br#"{"type":"echo","port":0,"mine":[1,2]}"#,
            CurrentSettings::Command => {
                br#"{"type":"command","command":"sleep 9","env":{"A":"1"}}"#
            }
            CurrentSettings::Raw(text) => text.as_bytes(),
        }
    }
}

/// `pop set KEY=VALUE ... --unset KEY` applied to settings data as the CLI does: each
/// argument splits at its first `=`; an edit is valid settings holding exactly what was
/// assigned and kept; applying it again changes nothing.
pub fn settings_assignment(data: &[u8]) {
    let Ok(command) = SetCommand::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut set = Vec::new();
    for assignment in &command.assignments {
        let Ok((key, value)) = parse_assignment(assignment) else {
            assert!(!assignment.contains('=') || assignment.starts_with('='));
            return;
        };
        let raw = &assignment[key.len() + 1..];
        assert_eq!(format!("{key}={raw}"), *assignment);
        assert!(!key.is_empty() && !key.contains('='), "{assignment:?}");
        set.push((key, value));
    }
    let current = command.current.data();
    let Ok(Some(edited)) = edit_settings(current, &set, &command.unset) else {
        return;
    };
    let settings = Settings::parse(&edited);
    assert!(settings.is_ok(), "an edit is valid settings: {settings:?}");
    let map: serde_json::Map<String, Value> =
        serde_json::from_slice(&edited).expect("edited settings are an object");
    let mut expected: serde_json::Map<String, Value> =
        serde_json::from_slice(current).expect("it was an object");
    for (key, value) in &set {
        expected.insert(key.clone(), value.clone());
    }
    for key in &command.unset {
        expected.remove(key);
    }
    assert_eq!(map, expected, "assigned, kept and removed keys");
    assert_eq!(
        edit_settings(&edited, &set, &command.unset),
        Ok(None),
        "a second identical edit changes nothing"
    );
}

/// A plugin manifest anybody may have written (`pop plugin add`, or straight into
/// `/plugins/<name>`): decoding gives a manifest or an error that starts with where it
/// came from and names a line of the text; a decoded manifest decodes the same as stored
/// under its name, and checking settings against it never panics.
pub fn plugin_manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Manifest::parse("fuzz.toml", &text) {
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("fuzz.toml"), "{message}");
            if let Some(line) = error.line {
                assert!(
                    (1..=text.split('\n').count()).contains(&line),
                    "line {line} of a {}-line text",
                    text.split('\n').count()
                );
            }
        }
        Ok(manifest) => {
            let stored = decode_stored(manifest.name.as_str(), text.as_bytes());
            assert_eq!(
                stored.as_ref(),
                Ok(&manifest),
                "stored, it decodes the same"
            );
            let _ = manifest.check_settings(&manifest.default_settings(None));
            let json = serde_json::to_value(&manifest);
            assert!(json.is_ok(), "a manifest serializes: {json:?}");
        }
    }
}
