//! TLS to ZooKeeper's secure client port: the PEM files given (`--tls-ca`, `--tls-cert`,
//! `--tls-key`), read and checked once, and a diagnosis of a failed connection (the
//! client itself only reports "connection lost" and retries until its deadline).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::fmt;
use std::io::{self, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use zookeeper_client as zkc;

/// The files of `--tls-ca`, `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificates the server's certificate must chain to.
    pub ca: PathBuf,
    /// This client's certificate and its private key, for servers that require one.
    pub identity: Option<ClientIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {what} {} is not usable: {reason}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the client certificate {} and key {} do not go together: {reason}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

const CA: &str = "TLS CA file (--tls-ca)";
const CERT: &str = "TLS client certificate (--tls-cert)";
const KEY: &str = "TLS client key (--tls-key)";

/// What a TLS connection needs, loaded from [`TlsFiles`].
#[derive(Clone)]
pub struct TlsConfig {
    /// For the client's connections.
    options: zkc::TlsOptions,
    /// The same trust and identity, for [`TlsConfig::diagnose`]'s own handshake.
    probe: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConfig {
    // The client options hold the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConfig { .. }")
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Unreadable {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, e))?;
    if certs.is_empty() {
        return Err(invalid(
            what,
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        ));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Reads and checks the files; every error names the file.
    pub fn load(files: &TlsFiles) -> Result<TlsConfig, TlsError> {
        let ca_pem = read(CA, &files.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in certificates(CA, &files.ca, &ca_pem)? {
            roots
                .add(cert)
                .map_err(|e| invalid(CA, &files.ca, format!("a certificate in it: {e}")))?;
        }
        let options = zkc::TlsOptions::new()
            .with_pem_ca(&ca_pem)
            .map_err(|e| invalid(CA, &files.ca, e))?;
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let (options, probe) = match &files.identity {
            None => (options, builder.with_no_client_auth()),
            Some(identity) => {
                let cert_pem = read(CERT, &identity.cert)?;
                let key_pem = read(KEY, &identity.key)?;
                let chain = certificates(CERT, &identity.cert, &cert_pem)?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
                    invalid(
                        KEY,
                        &identity.key,
                        format!("no PEM private key in it ({e})"),
                    )
                })?;
                let mismatch = |reason: String| TlsError::Mismatch {
                    cert: identity.cert.clone(),
                    key: identity.key.clone(),
                    reason,
                };
                let probe = builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| mismatch(e.to_string()))?;
                let options = options
                    .with_pem_identity(&cert_pem, &key_pem)
                    .map_err(|e| mismatch(e.to_string()))?;
                (options, probe)
            }
        };
        Ok(TlsConfig {
            options,
            probe: Arc::new(probe),
        })
    }

    pub fn client_options(&self) -> zkc::TlsOptions {
        self.options.clone()
    }

    /// Why a TLS connection to the first server of `hosts` fails, found by a handshake
    /// of our own (blocking; at most a few `timeout`s): `None` when it succeeds.
    pub fn diagnose(&self, hosts: &str, timeout: Duration) -> Option<String> {
        let (host, port) = first_server(hosts)?;
        let addr = format!("{host}:{port}");
        let name = match ServerName::try_from(host.clone()) {
            Ok(name) => name,
            Err(e) => return Some(format!("{host} is not a name TLS can verify: {e}")),
        };
        let tcp = match connect(&addr, timeout) {
            Ok(tcp) => tcp,
            Err(e) => return Some(format!("cannot connect to {addr}: {e}")),
        };
        let conn = match ClientConnection::new(self.probe.clone(), name) {
            Ok(conn) => conn,
            Err(e) => return Some(format!("cannot start TLS to {addr}: {e}")),
        };
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Some(handshake_failure(&addr, &e));
            }
        }
        // With TLS 1.3 the server checks the client's certificate after the client has
        // finished: a refusal arrives as an alert on the first read. Silence means the
        // server accepted this client.
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Err(e) if is_timeout(&e) => None,
            Err(e) => Some(refused_client(&addr, &e)),
            Ok(_) => None,
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn handshake_failure(addr: &str, e: &io::Error) -> String {
    let tls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::AlertReceived(_)) => refused_client(addr, e),
        Some(rustls::Error::InvalidCertificate(_)) => format!(
            "{addr}'s certificate is not trusted: {e} (is --tls-ca the CA that signed it, \
             and does the certificate name the host as --host gives it?)"
        ),
        _ => match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => format!(
                "{addr} closed the connection during the TLS handshake ({e}): is it \
                 ZooKeeper's plaintext clientPort rather than its secureClientPort?"
            ),
            _ if is_timeout(e) => {
                format!("{addr} did not answer the TLS handshake ({e}): is it a TLS port?")
            }
            _ => format!("TLS handshake with {addr} failed: {e}"),
        },
    }
}

fn refused_client(addr: &str, e: &io::Error) -> String {
    format!(
        "{addr} refused this client in the TLS handshake: {e} (does it require a client \
         certificate (--tls-cert/--tls-key) signed by a CA it trusts?)"
    )
}

pub(crate) fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(timeout))?;
                tcp.set_write_timeout(Some(timeout))?;
                return Ok(tcp);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The host and port of the first server of a connect string
/// (`host:port[,host:port...][/chroot]`; 2181 when no port).
pub(crate) fn first_server(hosts: &str) -> Option<(String, u16)> {
    let servers = hosts.split_once('/').map_or(hosts, |(servers, _)| servers);
    let first = servers.split(',').next()?.trim();
    let (host, port) = match first.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (first, 2181),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_server_of_a_connect_string() {
        assert_eq!(
            first_server("zk1:2281,zk2:2281/pop"),
            Some(("zk1".into(), 2281))
        );
        assert_eq!(first_server("zk1"), Some(("zk1".into(), 2181)));
        assert_eq!(first_server("[::1]:2281"), Some(("::1".into(), 2281)));
        assert_eq!(first_server("zk1:port"), None);
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let err = TlsConfig::load(&TlsFiles {
            ca: missing.clone(),
            identity: None,
        })
        .expect_err("a missing CA file");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = TlsConfig::load(&TlsFiles {
            ca: empty.clone(),
            identity: None,
        })
        .expect_err("a CA file without certificates");
        assert!(
            err.to_string().contains(&empty.display().to_string())
                && err.to_string().contains("no PEM certificate"),
            "{err}"
        );
    }
}
