//! Digest credentials (`USER:PASSWORD`): parsing them, reading them from files that only
//! their owner may read, and the digest id ZooKeeper's ACLs name them by. The password is
//! never shown: not by `Debug`, not in any error.

pub use pop_core::digest::{base64, sha1};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

/// A digest user and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    user: String,
    password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}:<hidden>)", self.user)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CredentialError {
    /// The text itself is not repeated: it holds (or is) a password.
    #[error("expected USER:PASSWORD with a non-empty user (no whitespace) and password")]
    Malformed,
    #[error("cannot read the credential file {path}: {error}")]
    Unreadable { path: PathBuf, error: String },
    #[error("refusing the credential file {path}: its mode is {mode:04o}, so others may read it; `chmod 600 {path}`", path = path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the credential file {path}: {error}", path = path.display())]
    BadFile {
        path: PathBuf,
        error: Box<CredentialError>,
    },
}

impl FromStr for Credential {
    type Err = CredentialError;

    fn from_str(text: &str) -> Result<Credential, CredentialError> {
        let text = text.trim_end_matches(['\n', '\r']);
        let (user, password) = text.split_once(':').ok_or(CredentialError::Malformed)?;
        if user.is_empty() || password.is_empty() || user.contains(char::is_whitespace) {
            return Err(CredentialError::Malformed);
        }
        Ok(Credential {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

impl Credential {
    pub fn new(user: &str, password: &str) -> Result<Credential, CredentialError> {
        format!("{user}:{password}").parse()
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// What ZooKeeper's digest scheme is given to authenticate (`user:password`).
    pub fn auth_bytes(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }

    /// The line `pop machine add` prints and credential files hold.
    pub fn secret_line(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }

    /// The id ACLs name this credential by: `user:BASE64(SHA1(user:password))`.
    pub fn digest_id(&self) -> String {
        pop_core::digest::digest_id(&self.secret_line())
    }

    /// Reads a credential file: one line `USER:PASSWORD`, readable by its owner only.
    /// `Ok(None)` when there is no such file.
    pub fn from_file(path: &Path) -> Result<Option<Credential>, CredentialError> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CredentialError::Unreadable {
                    path: path.to_path_buf(),
                    error: e.to_string(),
                })
            }
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CredentialError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| CredentialError::Unreadable {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        line.trim()
            .parse()
            .map(Some)
            .map_err(|e| CredentialError::BadFile {
                path: path.to_path_buf(),
                error: Box::new(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_id_is_zookeepers() {
        // ZooKeeper's DigestAuthenticationProvider.generateDigest("super:test").
        let c: Credential = "super:test".parse().expect("a credential");
        assert_eq!(c.digest_id(), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
    }

    #[test]
    fn bad_credentials_are_refused_without_showing_them() {
        for bad in ["nocolon", ":pw", "user:", "us er:pw"] {
            let e = bad.parse::<Credential>().expect_err(bad);
            assert!(!e.to_string().contains(bad), "{e}");
        }
        let c: Credential = "u:s3cret".parse().expect("a credential");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn a_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("credentials");
        std::fs::write(&path, "admin:pw\n").expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Credential::from_file(&path).expect_err("0644 refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Credential::from_file(&path).expect("0600 read");
        assert_eq!(c.map(|c| c.user().to_string()), Some("admin".into()));
        assert_eq!(Credential::from_file(&dir.path().join("none")), Ok(None));
    }
}
