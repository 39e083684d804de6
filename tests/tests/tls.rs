//! TLS to ZooKeeper on a real server with a secure client port and mutual TLS
//! (`ssl.clientAuth=need`), certificates made by the openssl command in the test: pop's
//! commands and an agent work over TLS only; a client without a certificate, one that
//! does not trust the server's CA, TLS to a plaintext port and plaintext to the TLS port
//! fail quickly with errors that say so; bad files are named.

use pop_tests::{wait_for, Checker, Machine, Zk};
use pop_zkserver::{ClientAuth, ServerTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A CA, a server certificate for 127.0.0.1, a client certificate, and a second CA
/// nobody uses (what a client with the wrong CA file trusts).
struct Pki {
    dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                p,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=pop test {ca}"),
                ],
            );
        }
        for (name, san, usage) in [
            ("server", "IP:127.0.0.1,DNS:localhost", "serverAuth"),
            ("client", "DNS:pop-client", "clientAuth"),
        ] {
            openssl(
                p,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            );
            std::fs::write(
                p.join(format!("{name}.ext")),
                format!(
                    "subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
                ),
            )
            .expect("write extensions");
            openssl(
                p,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        // ZooKeeper's PEM key store: the private key, then the certificate.
        let key = std::fs::read_to_string(p.join("server.key")).expect("server key");
        let cert = std::fs::read_to_string(p.join("server.pem")).expect("server cert");
        std::fs::write(p.join("server-keystore.pem"), key + &cert).expect("key store");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self) -> ServerTls {
        ServerTls {
            port: 0,
            key_store: self.path("server-keystore.pem"),
            trust_store: self.path("ca.pem"),
            client_auth: ClientAuth::Need,
        }
    }

    /// The environment of a client trusting `ca`, with the client certificate or not.
    fn env(&self, ca: &str, with_cert: bool) -> Vec<(String, String)> {
        let mut env = vec![("POP_TLS_CA".to_string(), self.file(ca))];
        if with_cert {
            env.push(("POP_TLS_CERT".to_string(), self.file("client.pem")));
            env.push(("POP_TLS_KEY".to_string(), self.file("client.key")));
        }
        env
    }

    fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// A machine that reaches `hosts` with the environment `env`.
fn machine(hosts: &str, env: Vec<(String, String)>) -> Machine {
    let mut m = Machine::with_hosts(hosts);
    m.env = env;
    m
}

/// `pop status` fails, soon (a refusal is not retried until some long deadline), and
/// its error says `expected`.
fn refused(m: &Machine, expected: &[&str]) -> String {
    let started = Instant::now();
    let err = m.fails(&["status"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    for part in expected {
        assert!(err.contains(part), "expected {part:?} in: {err}");
    }
    err
}

#[test]
fn commands_and_an_agent_work_over_tls_only() {
    let pki = Pki::new();
    let zk = Zk::start_tls(pki.server());
    // pop reaches only the secure port; the checker (an independent client) reads what
    // pop wrote through the plaintext one.
    let m = machine(&zk.secure_hosts(), pki.env("ca.pem", true));
    let checker = Checker::connect(&zk);
    assert!(m.ok(&["init"]).contains("initialised"));
    m.ok(&["add", "echo", "--port", "0"]);

    // `pop start` hands the files to the agent, made absolute: given relative to a
    // directory the agent does not run in.
    let mut start = m.command(&["start"]);
    start
        .current_dir(pki.dir.path())
        .env("POP_TLS_CA", "ca.pem")
        .env("POP_TLS_CERT", "client.pem")
        .env("POP_TLS_KEY", "client.key");
    let out = start.output().expect("pop start");
    assert!(
        out.status.success(),
        "pop start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.ok(&["deploy", "echo"]);
    let state_path = format!("/services/echo/state/{}", m.id);
    let state = wait_for("the service's state node", || checker.get_json(&state_path));
    assert!(state["pid"].as_u64().is_some(), "{state}");
    wait_for("status to show it running", || {
        m.ok(&["status"]).contains("running").then_some(())
    });
    m.ok(&["stop"]);
}

#[test]
fn refusals_are_clear_and_quick() {
    let pki = Pki::new();
    let zk = Zk::start_tls(pki.server());
    let secure = zk.secure_hosts();

    // The server requires a client certificate (mutual TLS).
    refused(
        &machine(&secure, pki.env("ca.pem", false)),
        &[
            "over TLS",
            "refused this client in the TLS handshake",
            "--tls-cert",
        ],
    );
    // The client does not trust the server's CA.
    refused(
        &machine(&secure, pki.env("other-ca.pem", true)),
        &[
            "over TLS",
            "certificate is not trusted",
            "UnknownIssuer",
            "--tls-ca",
        ],
    );
    // TLS to the plaintext port.
    refused(
        &machine(&zk.hosts(), pki.env("ca.pem", true)),
        &[
            "closed the connection during the TLS handshake",
            "secureClientPort",
        ],
    );
    // Plaintext to the TLS port.
    refused(
        &machine(&secure, Vec::new()),
        &["opened no session", "--tls-ca"],
    );
    // With everything right, the same commands work.
    machine(&secure, pki.env("ca.pem", true)).ok(&["init"]);
}

#[test]
fn bad_files_are_named() {
    let pki = Pki::new();
    // No server needed: the files are read before any connection.
    let hosts = "127.0.0.1:1";
    let missing = pki.file("missing.pem");
    let err = machine(hosts, vec![("POP_TLS_CA".into(), missing.clone())]).fails(&["status"]);
    assert!(
        err.contains(&missing) && err.contains("cannot read the TLS CA file"),
        "{err}"
    );
    // A key where the certificate should be.
    let mut env = pki.env("ca.pem", true);
    env[1].1 = pki.file("client.key");
    let err = machine(hosts, env).fails(&["status"]);
    assert!(
        err.contains(&pki.file("client.key")) && err.contains("no PEM certificate"),
        "{err}"
    );
    // A key that is not the certificate's.
    let mut env = pki.env("ca.pem", true);
    env[2].1 = pki.file("server.key");
    let err = machine(hosts, env).fails(&["status"]);
    assert!(err.contains("do not go together"), "{err}");
    // --tls-cert without --tls-key.
    let m = machine(hosts, Vec::new());
    let out = m
        .command(&[
            "--tls-ca",
            &pki.file("ca.pem"),
            "--tls-cert",
            &pki.file("client.pem"),
            "status",
        ])
        .output()
        .expect("pop");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn pop_zk_start_opens_a_mutual_tls_port() {
    let pki = Pki::new();
    let (port, tls_port) = (free_port(), free_port());
    let m = machine(&format!("127.0.0.1:{tls_port}"), pki.env("ca.pem", true));
    let out = m.ok(&[
        "zk",
        "start",
        "--port",
        &port.to_string(),
        "--tick-ms",
        "200",
        "--tls-port",
        &tls_port.to_string(),
        "--tls-key-store",
        &pki.file("server-keystore.pem"),
        "--tls-trust-store",
        &pki.file("ca.pem"),
    ]);
    assert!(
        out.contains(&format!(
            "TLS (client certificates required) on 127.0.0.1:{tls_port}"
        )),
        "{out}"
    );
    assert!(m.ok(&["init"]).contains("initialised"));
    refused(
        &machine(&format!("127.0.0.1:{tls_port}"), pki.env("ca.pem", false)),
        &["refused this client in the TLS handshake"],
    );
    m.ok(&["zk", "stop"]);
}
