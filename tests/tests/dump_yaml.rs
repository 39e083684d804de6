//! `pop dump` as YAML reads back, with independent YAML readers, as exactly the data
//! `pop dump --format json` shows: keys and strings a reader would take for booleans,
//! nulls, numbers or dates stay strings. Read with yaml-rust2 (YAML 1.2) and PyYAML
//! (YAML 1.1, Debian's python3-yaml, which .ci/run installs).

use pop_tests::initialised;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use yaml_rust2::{Yaml, YamlLoader};

/// Settings whose keys and values a careless YAML writer gets wrong.
fn tricky_settings() -> Value {
    json!({
        "type": "command",
        "command": "exec sleep 1000",
        "true": "false",
        "null": "null",
        "123": "456",
        "1.5": "2.5",
        "yes": "no",
        "off": "on",
        "Y": "n",
        "~": "~",
        "2024-01-01": "2024-01-01",
        "0x1f": "0o17",
        ".inf": ".nan",
        "": "",
        "- a": "- b",
        "#x": "a #b",
        "key: v": "{x: 1}",
        "'q'": "\"dq\"",
        "ctl\u{7f}\u{85}\u{1}": "line\nbreak\u{2028}\u{feff}tab\t",
        "ünïcode ☃": "🎉",
        "numbers": [0, -7, 1e100, 1.5e-7, 0.25, 123_456_789_012_i64],
        "nested": {"true": {"null": []}, "empty": {}},
        "flags": [true, false, null],
    })
}

/// A YAML 1.2 document as JSON; every mapping key must be a string.
fn yaml_to_json(doc: &Yaml) -> Value {
    match doc {
        Yaml::Hash(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let Yaml::String(key) = k else {
                    panic!("yaml-rust2 reads a mapping key as {k:?}, not a string");
                };
                out.insert(key.clone(), yaml_to_json(v));
            }
            Value::Object(out)
        }
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => json!(r.parse::<f64>().expect("a YAML float parses")),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

/// PyYAML's reading of `yaml`, as JSON; fails on any non-string key or a value that is
/// not a JSON type (a date, say).
const PYYAML_STRICT: &str = r#"
import json, sys, yaml
def strict(v):
    if isinstance(v, dict):
        for k in v:
            if not isinstance(k, str):
                sys.exit(f"PyYAML reads a mapping key as {type(k).__name__} {k!r}")
        return {k: strict(x) for k, x in v.items()}
    if isinstance(v, list):
        return [strict(x) for x in v]
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    sys.exit(f"PyYAML reads a value as {type(v).__name__} {v!r}")
json.dump(strict(yaml.safe_load(sys.stdin.read())), sys.stdout)
"#;

fn pyyaml_to_json(yaml: &str) -> Value {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PYYAML_STRICT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running /usr/bin/python3 (apt-get install python3-yaml; .ci/run does)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("writing to python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "PyYAML (python3-yaml) could not read the dump back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

#[test]
fn yaml_dump_reads_back_as_the_json_dump() {
    let (_zk, m, zkc) = initialised();
    m.ok(&["add", "echo", "--name", "web"]);
    let settings = tricky_settings();
    zkc.set("/services/web/settings", settings.to_string().as_bytes());
    // Node data that is not JSON is dumped as a string; "yes" and "2024-01-01" must stay so.
    zkc.create("/services/web/yes", b"yes");
    zkc.create("/services/web/2024-01-01", b"2024-01-01");

    let from_json: Value =
        serde_json::from_str(&m.ok(&["dump", "--format", "json"])).expect("JSON dump");
    assert_eq!(from_json["/services/web/settings"]["data"], settings);
    assert_eq!(from_json["/services/web/yes"]["data"], "yes");

    let yaml = m.ok(&["dump"]);
    let docs = YamlLoader::load_from_str(&yaml)
        .unwrap_or_else(|e| panic!("yaml-rust2 cannot parse the dump: {e}\n{yaml}"));
    assert_eq!(docs.len(), 1, "one YAML document");
    assert_eq!(
        yaml_to_json(&docs[0]),
        from_json,
        "yaml-rust2 reading\n{yaml}"
    );
    assert_eq!(pyyaml_to_json(&yaml), from_json, "PyYAML reading\n{yaml}");
}
