//! Command templates: one argv element with `{key}` placeholders (`{{` and `}}` for literal
//! braces), and rendering a command from settings and the machine's built-in variables.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use thiserror::Error;

/// The variables pop provides itself; in a template they win over a setting of the same
/// name (the `python` type's `python` setting is the interpreter its environment is
/// built from, `{python}` the environment's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// The machine's id.
    Machine,
    /// The service's name.
    Service,
    /// The service's own directory on the machine (its working directory).
    StateDir,
    /// The pop binary, for types built into it (`echo`).
    Pop,
    /// The service's Python environment (`environment = "python"` only).
    EnvDir,
    /// The Python interpreter of that environment (`environment = "python"` only).
    Python,
}

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::Machine,
        Builtin::Service,
        Builtin::StateDir,
        Builtin::Pop,
        Builtin::EnvDir,
        Builtin::Python,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Machine => "machine",
            Builtin::Service => "service",
            Builtin::StateDir => "state_dir",
            Builtin::Pop => "pop",
            Builtin::EnvDir => "env_dir",
            Builtin::Python => "python",
        }
    }

    fn parse(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Only a service with a Python environment has these.
    pub fn needs_python_environment(self) -> bool {
        matches!(self, Builtin::EnvDir | Builtin::Python)
    }
}

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Builtin(Builtin),
    /// A setting of the service (the manifest's own or one every type has).
    Setting(String),
    /// A task's arguments, each its own argv element: only as a whole element, in tasks.
    Args,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Placeholder(Placeholder),
}

/// A template's syntax error, at a byte offset into the template.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SyntaxError {
    #[error("a {{ without its }} (write {{{{ for a literal brace)")]
    Unclosed,
    #[error("a }} without its {{ (write }}}} for a literal brace)")]
    Unopened,
    #[error("an empty placeholder {{}}")]
    Empty,
    #[error("{{args}} must be an element of its own, not part of {text:?}")]
    ArgsInsideText { text: String },
}

/// One argv element of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written in the manifest, for messages and `pop plugin show --json`.
    text: String,
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, SyntaxError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(SyntaxError::Unopened),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => return Err(SyntaxError::Unclosed),
                            Some(c) => name.push(c),
                        }
                    }
                    if name.is_empty() {
                        return Err(SyntaxError::Empty);
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    let placeholder = match Builtin::parse(&name) {
                        Some(builtin) => Placeholder::Builtin(builtin),
                        None if name == "args" => Placeholder::Args,
                        None => Placeholder::Setting(name),
                    };
                    pieces.push(Piece::Placeholder(placeholder));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        let args = pieces.contains(&Piece::Placeholder(Placeholder::Args));
        if args && pieces.len() > 1 {
            return Err(SyntaxError::ArgsInsideText {
                text: text.to_string(),
            });
        }
        Ok(Template {
            text: text.to_string(),
            pieces,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Placeholder(p) => Some(p),
            Piece::Text(_) => None,
        })
    }

    fn is_args(&self) -> bool {
        self.pieces == [Piece::Placeholder(Placeholder::Args)]
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// The values of the built-in variables on one machine, for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variables {
    pub machine: String,
    pub service: String,
    pub state_dir: String,
    pub pop: String,
    /// `None` for a service without a Python environment.
    pub python: Option<PythonEnvironment>,
}

/// Where a service's Python environment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnvironment {
    pub env_dir: String,
    pub python: String,
}

impl Variables {
    fn get(&self, builtin: Builtin) -> Option<&str> {
        match builtin {
            Builtin::Machine => Some(&self.machine),
            Builtin::Service => Some(&self.service),
            Builtin::StateDir => Some(&self.state_dir),
            Builtin::Pop => Some(&self.pop),
            Builtin::EnvDir => self.python.as_ref().map(|p| p.env_dir.as_str()),
            Builtin::Python => self.python.as_ref().map(|p| p.python.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    #[error("the command needs setting {0:?}, which is not set")]
    MissingSetting(String),
    #[error("the command needs setting {key:?} as text, but it is {found}; only strings, numbers and booleans go into a command")]
    NotText { key: String, found: &'static str },
    #[error("{{{0}}} needs a Python environment, which this service does not have")]
    NoPythonEnvironment(&'static str),
    #[error("the command is empty")]
    Empty,
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A setting as argv text: strings as they are, numbers and booleans as JSON writes them.
fn setting_text(settings: &Map<String, Value>, key: &str) -> Result<String, RenderError> {
    match settings.get(key) {
        None | Some(Value::Null) => Err(RenderError::MissingSetting(key.to_string())),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(other) => Err(RenderError::NotText {
            key: key.to_string(),
            found: kind(other),
        }),
    }
}

/// The argv of a command: each template with its placeholders replaced. A task's
/// arguments go where its `{args}` element is, one argv element each; without one they
/// are appended (a run command has no arguments).
pub fn render(
    command: &[Template],
    settings: &Map<String, Value>,
    variables: &Variables,
    args: &[String],
) -> Result<Vec<String>, RenderError> {
    let mut argv = Vec::with_capacity(command.len() + args.len());
    let mut args_placed = false;
    for template in command {
        if template.is_args() {
            argv.extend(args.iter().cloned());
            args_placed = true;
            continue;
        }
        let mut element = String::new();
        for piece in &template.pieces {
            match piece {
                Piece::Text(text) => element.push_str(text),
                Piece::Placeholder(Placeholder::Builtin(b)) => match variables.get(*b) {
                    Some(value) => element.push_str(value),
                    None => return Err(RenderError::NoPythonEnvironment(b.name())),
                },
                Piece::Placeholder(Placeholder::Setting(key)) => {
                    element.push_str(&setting_text(settings, key)?)
                }
                // Only ever a whole element, handled above.
                Piece::Placeholder(Placeholder::Args) => {}
            }
        }
        argv.push(element);
    }
    if !args_placed {
        argv.extend(args.iter().cloned());
    }
    if argv.is_empty() {
        return Err(RenderError::Empty);
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn command(texts: &[&str]) -> Vec<Template> {
        texts
            .iter()
            .map(|t| Template::parse(t).expect("a valid template"))
            .collect()
    }

    fn variables() -> Variables {
        Variables {
            machine: "m1".into(),
            service: "web".into(),
            state_dir: "/var/pop/work/web".into(),
            pop: "/usr/bin/pop".into(),
            python: None,
        }
    }

    fn settings(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("settings are an object"),
        }
    }

    #[test]
    fn placeholders_are_replaced_by_settings_and_variables_inside_an_element() {
        let argv = render(
            &command(&["{pop}", "--port={port}", "{greeting} from {machine}"]),
            &settings(json!({"port": 8080, "greeting": "hello"})),
            &variables(),
            &[],
        );
        assert_eq!(
            argv,
            Ok(vec![
                "/usr/bin/pop".to_string(),
                "--port=8080".into(),
                "hello from m1".into()
            ])
        );
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        let argv = render(
            &command(&["{{\"a\": {n}}}"]),
            &settings(json!({"n": 1})),
            &variables(),
            &[],
        );
        assert_eq!(argv, Ok(vec!["{\"a\": 1}".to_string()]));
    }

    #[test]
    fn task_arguments_go_where_args_is_each_as_its_own_element() {
        let args = ["a b".to_string(), "c".to_string()];
        let argv = render(
            &command(&["pip", "{args}", "--quiet"]),
            &Map::new(),
            &variables(),
            &args,
        );
        assert_eq!(
            argv,
            Ok(vec![
                "pip".to_string(),
                "a b".into(),
                "c".into(),
                "--quiet".into()
            ])
        );
    }

    #[test]
    fn task_arguments_are_appended_without_an_args_element() {
        let args = ["x".to_string()];
        let argv = render(&command(&["echo"]), &Map::new(), &variables(), &args);
        assert_eq!(argv, Ok(vec!["echo".to_string(), "x".into()]));
    }

    #[test]
    fn a_missing_or_structured_setting_is_an_error_naming_it() {
        let render = |value: Value| {
            render(
                &command(&["x", "{packages}"]),
                &settings(value),
                &variables(),
                &[],
            )
        };
        assert_eq!(
            render(json!({})),
            Err(RenderError::MissingSetting("packages".into()))
        );
        assert_eq!(
            render(json!({"packages": null})),
            Err(RenderError::MissingSetting("packages".into()))
        );
        assert_eq!(
            render(json!({"packages": ["a"]})),
            Err(RenderError::NotText {
                key: "packages".into(),
                found: "a list"
            })
        );
    }

    #[test]
    fn python_variables_need_a_python_environment() {
        let err = render(&command(&["{python}"]), &Map::new(), &variables(), &[]);
        assert_eq!(err, Err(RenderError::NoPythonEnvironment("python")));
        let mut vars = variables();
        vars.python = Some(PythonEnvironment {
            env_dir: "/e".into(),
            python: "/e/bin/python".into(),
        });
        let argv = render(
            &command(&["{python}", "{env_dir}"]),
            &Map::new(),
            &vars,
            &[],
        );
        assert_eq!(argv, Ok(vec!["/e/bin/python".to_string(), "/e".into()]));
    }

    #[test]
    fn builtin_variables_win_over_settings_of_the_same_name() {
        let mut vars = variables();
        vars.python = Some(PythonEnvironment {
            env_dir: "/e".into(),
            python: "/e/bin/python".into(),
        });
        let argv = render(
            &command(&["{python}"]),
            &settings(json!({"python": "python3.11"})),
            &vars,
            &[],
        );
        assert_eq!(argv, Ok(vec!["/e/bin/python".to_string()]));
    }

    #[test]
    fn malformed_templates_say_what_is_wrong() {
        assert_eq!(Template::parse("{port"), Err(SyntaxError::Unclosed));
        assert_eq!(Template::parse("a}b"), Err(SyntaxError::Unopened));
        assert_eq!(Template::parse("{}"), Err(SyntaxError::Empty));
        assert_eq!(Template::parse("{a{b}}"), Err(SyntaxError::Unclosed));
        assert!(matches!(
            Template::parse("--x={args}"),
            Err(SyntaxError::ArgsInsideText { .. })
        ));
    }

    #[test]
    fn a_command_that_renders_to_nothing_is_an_error() {
        let argv = render(&command(&["{args}"]), &Map::new(), &variables(), &[]);
        assert_eq!(argv, Err(RenderError::Empty));
    }
}
