//! TOML text to a checked [`Manifest`], walking toml's spanned tree so every error names
//! the line and the field.

use super::template::{Placeholder, Template};
use super::{
    Environment, Manifest, Readiness, Requirement, Run, StopSignal, Task, MAX_MANIFEST_BYTES,
};
use crate::names::{PluginName, TaskName};
use crate::settings::{self, DataError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;
use thiserror::Error;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ManifestError {
    /// The file or znode it came from.
    pub origin: String,
    /// 1-based; `None` when the whole manifest is concerned (a missing top-level field).
    pub line: Option<usize>,
    /// The field, as a dotted path (`run.command`); `None` for a TOML syntax error.
    pub field: Option<String>,
    pub problem: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.problem)
    }
}

/// Deeper nesting in a settings value is refused (and never recursed into).
const MAX_DEPTH: usize = 32;
/// Longest duration a manifest may give, as for settings.
const MAX_SECONDS: f64 = 86400.0;

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "environment",
    "settings",
    "required",
    "run",
    "tasks",
];
const RUN_KEYS: &[&str] = &["command", "readiness", "stop_signal", "stop_timeout"];
const TASK_KEYS: &[&str] = &["description", "command", "restart_after", "timeout"];

pub(super) fn decode(origin: &str, text: &str) -> Result<Manifest, ManifestError> {
    let decoder = Decoder { origin, text };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(decoder.error(
            None,
            None,
            format!(
                "the manifest is {} bytes long; at most {MAX_MANIFEST_BYTES} are allowed",
                text.len()
            ),
        ));
    }
    let root = DeTable::parse(text).map_err(|e| {
        decoder.error(
            e.span(),
            None,
            format!("not valid TOML: {}", e.message().trim_end()),
        )
    })?;
    decoder.manifest(&Table {
        path: String::new(),
        span: None,
        map: root.get_ref(),
    })
}

struct Decoder<'a> {
    origin: &'a str,
    text: &'a str,
}

/// A table of the manifest and where it is.
struct Table<'t, 'i> {
    /// Dotted path to it; empty for the root.
    path: String,
    /// `None` for the root.
    span: Option<Range<usize>>,
    map: &'t DeTable<'i>,
}

type Item<'t, 'i> = &'t Spanned<DeValue<'i>>;

impl<'t, 'i> Table<'t, 'i> {
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<Item<'t, 'i>> {
        self.map.get(key)
    }

    /// Entries in the order they were written.
    fn entries(&self) -> Vec<(&'t Spanned<std::borrow::Cow<'i, str>>, Item<'t, 'i>)> {
        let mut entries: Vec<_> = self.map.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        entries
    }
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl Decoder<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn error(
        &self,
        span: Option<Range<usize>>,
        field: Option<String>,
        problem: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            origin: self.origin.to_string(),
            line: span.map(|s| self.line(s.start)),
            field,
            problem: problem.into(),
        }
    }

    fn at(&self, value: Item<'_, '_>, field: String, problem: impl Into<String>) -> ManifestError {
        self.error(Some(value.span()), Some(field), problem)
    }

    fn unknown_keys(&self, table: &Table<'_, '_>, allowed: &[&str]) -> Result<(), ManifestError> {
        match table
            .entries()
            .into_iter()
            .find(|(key, _)| !allowed.contains(&key.get_ref().as_ref()))
        {
            Some((key, _)) => Err(self.error(
                Some(key.span()),
                Some(table.field(key.get_ref())),
                format!("unknown field; expected one of {}", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn missing(&self, table: &Table<'_, '_>, key: &str) -> ManifestError {
        self.error(table.span.clone(), Some(table.field(key)), "missing")
    }

    fn string(&self, table: &Table<'_, '_>, key: &str) -> Result<Option<String>, ManifestError> {
        match table.get(key) {
            None => Ok(None),
            Some(value) => match value.get_ref() {
                DeValue::String(s) => Ok(Some(s.to_string())),
                other => Err(self.at(
                    value,
                    table.field(key),
                    format!("expected a string, found {}", type_name(other)),
                )),
            },
        }
    }

    fn table<'t, 'i>(
        &self,
        parent: &Table<'t, 'i>,
        key: &str,
    ) -> Result<Option<Table<'t, 'i>>, ManifestError> {
        match parent.get(key) {
            None => Ok(None),
            Some(value) => match value.get_ref() {
                DeValue::Table(map) => Ok(Some(Table {
                    path: parent.field(key),
                    span: Some(value.span()),
                    map,
                })),
                other => Err(self.at(
                    value,
                    parent.field(key),
                    format!("expected a table, found {}", type_name(other)),
                )),
            },
        }
    }

    fn boolean(&self, table: &Table<'_, '_>, key: &str) -> Result<Option<bool>, ManifestError> {
        match table.get(key) {
            None => Ok(None),
            Some(value) => match value.get_ref() {
                DeValue::Boolean(b) => Ok(Some(*b)),
                other => Err(self.at(
                    value,
                    table.field(key),
                    format!("expected true or false, found {}", type_name(other)),
                )),
            },
        }
    }

    fn seconds(&self, table: &Table<'_, '_>, key: &str) -> Result<Option<Duration>, ManifestError> {
        let Some(value) = table.get(key) else {
            return Ok(None);
        };
        let secs = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|i| i as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => None,
        };
        match secs {
            Some(secs) if (0.0..=MAX_SECONDS).contains(&secs) => {
                Ok(Some(Duration::from_millis((secs * 1000.0).round() as u64)))
            }
            _ => Err(self.at(
                value,
                table.field(key),
                format!("expected a number of seconds between 0 and {MAX_SECONDS}"),
            )),
        }
    }

    fn manifest(&self, root: &Table<'_, '_>) -> Result<Manifest, ManifestError> {
        self.unknown_keys(root, TOP_KEYS)?;
        let name_value = root.get("name").ok_or_else(|| self.missing(root, "name"))?;
        let name = self
            .string(root, "name")?
            .ok_or_else(|| self.missing(root, "name"))?;
        let name = PluginName::new(&name)
            .map_err(|e| self.at(name_value, "name".into(), e.to_string()))?;
        let description = self.string(root, "description")?.unwrap_or_default();
        let environment = match self.string(root, "environment")?.as_deref() {
            None | Some("none") => Environment::None,
            Some("python") => Environment::Python,
            Some(other) => {
                let value = root.get("environment").unwrap_or(name_value);
                return Err(self.at(
                    value,
                    "environment".into(),
                    format!("expected \"none\" or \"python\", found {other:?}"),
                ));
            }
        };
        let settings = match self.table(root, "settings")? {
            Some(table) => self.settings(&table)?,
            None => Map::new(),
        };
        let required = self.required(root)?;
        let run = self
            .table(root, "run")?
            .ok_or_else(|| self.missing(root, "run"))?;
        let mut manifest = Manifest {
            name,
            description,
            environment,
            settings,
            required,
            run: Run {
                command: Vec::new(),
                readiness: Readiness::Port,
                stop_signal: StopSignal::Term,
                stop_timeout: None,
            },
            tasks: BTreeMap::new(),
        };
        manifest.run = self.run(&manifest, &run)?;
        if manifest.run.stop_timeout.is_some() && manifest.settings.contains_key("stop_timeout") {
            let value = run.get("stop_timeout").unwrap_or(name_value);
            return Err(self.at(
                value,
                "run.stop_timeout".into(),
                "given twice: here and as settings.stop_timeout",
            ));
        }
        if let Some(tasks) = self.table(root, "tasks")? {
            manifest.tasks = self.tasks(&manifest, &tasks)?;
        }
        Ok(manifest)
    }

    fn settings(&self, table: &Table<'_, '_>) -> Result<Map<String, Value>, ManifestError> {
        let mut map = Map::new();
        for (key, value) in table.entries() {
            let field = table.field(key.get_ref());
            if key.get_ref() == "type" {
                return Err(self.error(
                    Some(key.span()),
                    Some(field),
                    "a service's type is the manifest's name",
                ));
            }
            map.insert(key.get_ref().to_string(), self.json(value, &field, 0)?);
        }
        // Defaults every service of the type gets must be settings the agent accepts.
        settings::check_common(&map).map_err(|error| {
            let key = match &error {
                DataError::BadSetting { key, .. } => key.split('.').next().unwrap_or(key),
                _ => "",
            };
            match table.get(key) {
                Some(value) => self.at(value, table.field(key), error.to_string()),
                None => self.error(
                    table.span.clone(),
                    Some(table.path.clone()),
                    error.to_string(),
                ),
            }
        })?;
        Ok(map)
    }

    /// A settings value as the JSON the settings node holds.
    fn json(&self, value: Item<'_, '_>, field: &str, depth: usize) -> Result<Value, ManifestError> {
        if depth > MAX_DEPTH {
            return Err(self.at(
                value,
                field.into(),
                format!("nested more than {MAX_DEPTH} deep"),
            ));
        }
        Ok(match value.get_ref() {
            DeValue::String(s) => Value::from(s.to_string()),
            DeValue::Boolean(b) => Value::from(*b),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(i) => Value::from(i),
                Err(_) => return Err(self.at(value, field.into(), "integer out of range")),
            },
            DeValue::Float(f) => match f
                .as_str()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Value::Number(n),
                None => {
                    return Err(self.at(
                        value,
                        field.into(),
                        "not a finite number (JSON has no inf or nan)",
                    ))
                }
            },
            DeValue::Datetime(_) => {
                return Err(self.at(
                    value,
                    field.into(),
                    "dates and times cannot be settings; write them as strings",
                ))
            }
            DeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.json(item, &format!("{field}[{i}]"), depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Table(map) => {
                let table = Table {
                    path: field.to_string(),
                    span: Some(value.span()),
                    map,
                };
                let mut object = Map::new();
                for (key, item) in table.entries() {
                    let value = self.json(item, &table.field(key.get_ref()), depth + 1)?;
                    object.insert(key.get_ref().to_string(), value);
                }
                Value::Object(object)
            }
        })
    }

    fn required(&self, root: &Table<'_, '_>) -> Result<Vec<Requirement>, ManifestError> {
        let Some(value) = root.get("required") else {
            return Ok(Vec::new());
        };
        let expected = "expected a list of setting names, or of lists of names (one of them)";
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.at(value, "required".into(), expected));
        };
        let name = |item: Item<'_, '_>| match item.get_ref() {
            DeValue::String(s) if !s.is_empty() && s != "type" => Ok(s.to_string()),
            _ => Err(self.at(item, "required".into(), expected)),
        };
        items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::Array(names) if !names.is_empty() => Ok(Requirement::OneOf(
                    names.iter().map(name).collect::<Result<_, _>>()?,
                )),
                _ => name(item).map(Requirement::Setting),
            })
            .collect()
    }

    fn run(&self, manifest: &Manifest, table: &Table<'_, '_>) -> Result<Run, ManifestError> {
        self.unknown_keys(table, RUN_KEYS)?;
        let command = self.command(manifest, table, Use::Service)?;
        let readiness = match self.string(table, "readiness")?.as_deref() {
            None | Some("port") => Readiness::Port,
            Some("none") => Readiness::None,
            Some(other) => {
                return Err(self.field_error(
                    table,
                    "readiness",
                    format!("expected \"port\" or \"none\", found {other:?}"),
                ))
            }
        };
        let stop_signal = match self.string(table, "stop_signal")? {
            None => StopSignal::Term,
            Some(text) => StopSignal::parse(&text).ok_or_else(|| {
                let names: Vec<&str> = StopSignal::ALL.iter().map(|s| s.name()).collect();
                self.field_error(
                    table,
                    "stop_signal",
                    format!("expected one of {}, found {text:?}", names.join(", ")),
                )
            })?,
        };
        Ok(Run {
            command,
            readiness,
            stop_signal,
            stop_timeout: self.seconds(table, "stop_timeout")?,
        })
    }

    fn field_error(&self, table: &Table<'_, '_>, key: &str, problem: String) -> ManifestError {
        match table.get(key) {
            Some(value) => self.at(value, table.field(key), problem),
            None => self.missing(table, key),
        }
    }

    fn tasks(
        &self,
        manifest: &Manifest,
        tasks: &Table<'_, '_>,
    ) -> Result<BTreeMap<TaskName, Task>, ManifestError> {
        let mut decoded = BTreeMap::new();
        for (key, _) in tasks.entries() {
            let name = TaskName::new(key.get_ref()).map_err(|e| {
                self.error(
                    Some(key.span()),
                    Some(tasks.field(key.get_ref())),
                    e.to_string(),
                )
            })?;
            if manifest.environment == Environment::Python
                && crate::task::TaskKind::builtin(name.as_str()).is_some()
            {
                return Err(self.error(
                    Some(key.span()),
                    Some(tasks.field(key.get_ref())),
                    format!("{name} is built into every type with environment = \"python\"; give the task another name"),
                ));
            }
            let Some(table) = self.table(tasks, key.get_ref())? else {
                continue;
            };
            self.unknown_keys(&table, TASK_KEYS)?;
            let task = Task {
                description: self.string(&table, "description")?.unwrap_or_default(),
                command: self.command(manifest, &table, Use::Task)?,
                restart_after: self.boolean(&table, "restart_after")?.unwrap_or(false),
                timeout: self.seconds(&table, "timeout")?,
            };
            decoded.insert(name, task);
        }
        Ok(decoded)
    }

    /// A command: a non-empty list of templates whose placeholders all mean something.
    fn command(
        &self,
        manifest: &Manifest,
        table: &Table<'_, '_>,
        usage: Use,
    ) -> Result<Vec<Template>, ManifestError> {
        let field = table.field("command");
        let value = table
            .get("command")
            .ok_or_else(|| self.missing(table, "command"))?;
        let expected = "expected a non-empty list of strings (the argv)";
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.at(value, field, expected));
        };
        if items.is_empty() {
            return Err(self.at(value, field, expected));
        }
        let mut command = Vec::with_capacity(items.len());
        let mut args = 0;
        for item in items.iter() {
            let DeValue::String(text) = item.get_ref() else {
                return Err(self.at(item, field, expected));
            };
            let template = Template::parse(text)
                .map_err(|e| self.at(item, field.clone(), format!("{text:?}: {e}")))?;
            for placeholder in template.placeholders() {
                let problem = match placeholder {
                    Placeholder::Setting(key) if !manifest.has_setting(key) => {
                        Some(unknown_placeholder(manifest, key))
                    }
                    Placeholder::Builtin(b)
                        if b.needs_python_environment()
                            && manifest.environment != Environment::Python =>
                    {
                        Some(format!("{{{}}} needs environment = \"python\"", b.name()))
                    }
                    Placeholder::Args if usage == Use::Service => {
                        Some("{args} is for tasks; the service's command takes no arguments".into())
                    }
                    Placeholder::Args => {
                        args += 1;
                        (args > 1).then(|| "{args} appears more than once".to_string())
                    }
                    _ => None,
                };
                if let Some(problem) = problem {
                    return Err(self.at(item, field, problem));
                }
            }
            command.push(template);
        }
        Ok(command)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Service,
    Task,
}

fn unknown_placeholder(manifest: &Manifest, key: &str) -> String {
    let mut own: Vec<&str> = manifest.settings.keys().map(String::as_str).collect();
    for requirement in &manifest.required {
        own.extend(requirement.names().iter().map(String::as_str));
    }
    own.sort_unstable();
    own.dedup();
    if own.is_empty() {
        format!("unknown placeholder {{{key}}}; the type has no settings of its own")
    } else {
        format!(
            "unknown placeholder {{{key}}}; settings are {}",
            own.join(", ")
        )
    }
}
