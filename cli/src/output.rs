//! Plain, aligned output for people; JSON and YAML for scripts.

use serde_json::Value;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DumpFormat {
    Yaml,
    Json,
}

/// Prints data for scripts (`--json`): pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{:<width$}  ", cell, width = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// "3d4h", "5m2s": a duration in its two largest units.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Seconds since the epoch as `2024-05-01T12:00:03Z` (UTC, to the second).
pub fn utc(secs: f64) -> String {
    let secs = if secs.is_finite() {
        secs.max(0.0) as i64
    } else {
        0
    };
    let (days, rest) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// YAML for a JSON value, read back as the same value by YAML 1.1 and 1.2 readers:
/// strings are double-quoted (a bare `true`, `null`, `123`, `yes` or `2024-01-01` would
/// be read as a boolean, null, number or date), and mapping keys are plain only when
/// they are words or paths no reader could take for anything but a string.
pub fn yaml(value: &Value) -> String {
    let mut out = String::new();
    yaml_into(value, 0, &mut out);
    out
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Object(m) if m.is_empty() => Some("{}".into()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(_) | Value::Array(_) => None,
        Value::String(s) => Some(yaml_string(s)),
        Value::Number(n) => Some(yaml_number(n)),
        Value::Bool(_) | Value::Null => Some(value.to_string()),
    }
}

/// A number both YAML 1.1 and 1.2 read as one: YAML 1.1 floats need a `.` in the
/// mantissa and a sign in the exponent (`1e100` would be a string), so `1.0e+100`.
fn yaml_number(n: &serde_json::Number) -> String {
    let text = n.to_string();
    let Some((mantissa, exponent)) = text.split_once(['e', 'E']) else {
        return text;
    };
    let dot = if mantissa.contains('.') { "" } else { ".0" };
    let sign = if exponent.starts_with(['-', '+']) {
        ""
    } else {
        "+"
    };
    format!("{mantissa}{dot}e{sign}{exponent}")
}

/// Words YAML 1.1 or 1.2 read as a boolean or null when plain (any case).
const RESERVED_WORDS: &[&str] = &["true", "false", "yes", "no", "on", "off", "y", "n", "null"];

/// A mapping key: plain when it is a word or a path starting with a letter or `/` (so
/// never a number, date or special float) and not a reserved word, else double-quoted.
fn yaml_key(key: &str) -> String {
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.'))
        && !RESERVED_WORDS.contains(&key.to_ascii_lowercase().as_str());
    if plain {
        key.to_string()
    } else {
        yaml_string(key)
    }
}

/// A YAML double-quoted scalar. Characters YAML does not allow raw (controls, DEL, C1,
/// U+FFFE/FFFF) and those a reader folds as line breaks (NEL, U+2028, U+2029) or may
/// drop (the BOM) are escaped.
fn yaml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{d7ff}' => out.push(c),
            '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' | '\u{10000}'.. => out.push(c),
            c if u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

fn yaml_into(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = yaml_key(k);
                match scalar(v) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}{key}: {s}");
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{key}:");
                        yaml_into(v, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for v in items {
                match scalar(v) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}- {s}");
                    }
                    None => {
                        let _ = writeln!(out, "{pad}-");
                        yaml_into(v, indent + 2, out);
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utc_times_are_calendar_dates() {
        assert_eq!(utc(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000.9), "2023-11-14T22:13:20Z");
        assert_eq!(utc(f64::NAN), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn yaml_nests_and_quotes() {
        let y = yaml(&json!({"/a": {"b": [1, "x: y"], "c d": {}}}));
        assert_eq!(y, "/a:\n  b:\n    - 1\n    - \"x: y\"\n  \"c d\": {}\n");
    }

    #[test]
    fn yaml_quotes_keys_a_reader_would_reinterpret() {
        for key in [
            "true",
            "NULL",
            "Yes",
            "off",
            "123",
            "1.5",
            "2024-01-01",
            "0x1f",
            ".inf",
            "",
        ] {
            assert_eq!(yaml_key(key), format!("\"{key}\""), "{key}");
        }
        for key in ["/services/web", "web", "stop_timeout", "a-b.c", "nully"] {
            assert_eq!(yaml_key(key), key);
        }
    }

    #[test]
    fn yaml_escapes_what_yaml_does_not_allow_raw() {
        assert_eq!(
            yaml_string("a\u{7f}\u{85}\u{2028}\u{feff}\u{1}b\"\\\n"),
            "\"a\\x7f\\x85\\u2028\\ufeff\\x01b\\\"\\\\\\n\""
        );
        assert_eq!(yaml_string("é ☃ 🎉"), "\"é ☃ 🎉\"");
    }

    #[test]
    fn yaml_floats_read_as_floats_in_yaml_1_1() {
        let n = |v: Value| match v {
            Value::Number(n) => yaml_number(&n),
            _ => unreachable!(),
        };
        assert_eq!(n(json!(1e100)), "1.0e+100");
        assert_eq!(n(json!(1.5e-7)), "1.5e-7");
        assert_eq!(n(json!(0.25)), "0.25");
        assert_eq!(n(json!(-3)), "-3");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(5.0), "5s");
        assert_eq!(duration(65.0), "1m5s");
        assert_eq!(duration(90061.0), "1d1h");
    }
}
