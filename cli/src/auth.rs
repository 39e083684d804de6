//! Which credential a command authenticates with, and what a secured namespace lets it
//! do. The password is never printed, logged or put in another process's argv.

use crate::Cli;
use anyhow::{bail, Context, Result};
use pop_io::credential::Credential;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The text of `--auth` / `POP_AUTH`, kept out of `Debug` output. Parsed later (by
/// [`given`]) so a malformed one is not echoed by the argument parser either.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// `--auth USER:PASSWORD` or `POP_AUTH`, if given.
pub fn given(cli: &Cli) -> Result<Option<Credential>> {
    match &cli.auth {
        None => Ok(None),
        Some(Secret(text)) => Ok(Some(
            text.parse()
                .context("invalid --auth (or POP_AUTH) credential")?,
        )),
    }
}

/// `$XDG_CONFIG_HOME/pop/credentials`, else `~/.config/pop/credentials`.
pub fn credentials_file() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("pop").join("credentials"))
}

/// The credential of the operator's commands: `--auth`/`POP_AUTH`, else the user's
/// credentials file (refused unless only its owner can read it), else none.
pub fn operator(cli: &Cli) -> Result<Option<Credential>> {
    if let Some(credential) = given(cli)? {
        return Ok(Some(credential));
    }
    match credentials_file() {
        Some(path) => Ok(Credential::from_file(&path)?),
        None => Ok(None),
    }
}

/// The agent's credential file in its state directory.
pub fn agent_file(state_dir: &Path) -> PathBuf {
    state_dir.join("credential")
}

/// The agent's credential: `POP_AUTH`/`--auth`, else `<state dir>/credential`.
pub fn agent(cli: &Cli, state_dir: &Path) -> Result<Option<Credential>> {
    if let Some(credential) = given(cli)? {
        return Ok(Some(credential));
    }
    Ok(Credential::from_file(&agent_file(state_dir))?)
}

/// Who a command runs as, for messages about refusals.
pub fn described(credential: Option<&Credential>) -> String {
    match credential {
        Some(c) => format!("authenticated as {}", c.user()),
        None => {
            let file = credentials_file().map_or("the credentials file".to_string(), |p| {
                p.display().to_string()
            });
            format!("no credential given: --auth USER:PASSWORD, POP_AUTH or {file} (mode 0600)")
        }
    }
}

/// `USER:PASSWORD` of `pop init --admin-identity`.
pub fn admin_identity(Secret(text): &Secret) -> Result<Credential> {
    let credential: Credential = text.parse().context("invalid --admin-identity")?;
    if credential.user() == "anyone" {
        bail!("invalid --admin-identity: pick a user name other than \"anyone\"");
    }
    Ok(credential)
}

/// A new machine's secret: 24 random bytes from the kernel, base64url without padding.
pub fn new_secret() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a machine secret")?;
    Ok(pop_io::credential::base64(&bytes)
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string())
}
