//! Digest credentials (`USER:PASSWORD`): parsing them, reading them from files that only
//! their owner may read, and the digest id ZooKeeper's ACLs name them by. The password is
//! never shown: not by `Debug`, not in any error.

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
        format!(
            "{}:{}",
            self.user,
            base64(&sha1(format!("{}:{}", self.user, self.password).as_bytes()))
        )
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

/// SHA-1 (FIPS 180-4): what ZooKeeper's digest scheme hashes with. Only for naming
/// credentials in ACLs, as ZooKeeper does; not for anything else.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut message = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bits.to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_and_base64_match_their_standard_vectors() {
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(hex(&sha1(long)), "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

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
