//! The service types compiled into pop, as manifests like any plugin's.

use super::Manifest;
use std::sync::OnceLock;

/// Each built-in type's name and manifest text, in the order `pop plugin list` shows them.
pub const MANIFESTS: [(&str, &str); 4] = [
    ("command", include_str!("builtin/command.toml")),
    ("echo", include_str!("builtin/echo.toml")),
    ("http", include_str!("builtin/http.toml")),
    ("python", include_str!("builtin/python.toml")),
];

/// The names of the built-in types.
pub fn names() -> impl Iterator<Item = &'static str> {
    MANIFESTS.iter().map(|(name, _)| *name)
}

pub fn is_builtin(name: &str) -> bool {
    names().any(|n| n == name)
}

/// The manifest text of a built-in type.
pub fn text(name: &str) -> Option<&'static str> {
    MANIFESTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// The decoded manifest of a built-in type.
pub fn manifest(name: &str) -> Option<Manifest> {
    let text = text(name)?;
    // Compiled in, and every one decoded by the tests: a failure is a bug in pop.
    let decoded = Manifest::parse(&format!("built-in type {name}"), text);
    Some(decoded.unwrap_or_else(|e| panic!("{e}")))
}

/// Every built-in manifest, decoded.
pub fn all() -> Vec<Manifest> {
    names().filter_map(manifest).collect()
}

/// The decoded manifest of a built-in type, decoded once for the process: the agent
/// resolves every service's type on each change, and decoding is deterministic.
pub fn get(name: &str) -> Option<&'static Manifest> {
    static DECODED: OnceLock<Vec<Manifest>> = OnceLock::new();
    DECODED
        .get_or_init(all)
        .iter()
        .find(|m| m.name.as_str() == name)
}
