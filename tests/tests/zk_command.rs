//! `pop zk start|status|stop`: a local ZooKeeper with its data under the state directory.

use pop_tests::Machine;
use std::time::Duration;

#[test]
fn local_zookeeper_starts_reports_and_stops() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let state = tempfile::tempdir().expect("temp dir");
    let m = Machine {
        id: pop_tests::unique("zk"),
        hosts: format!("127.0.0.1:{port}"),
        state,
        containment: None,
        env: Vec::new(),
    };
    let port_arg = port.to_string();
    let out = m.ok(&["zk", "start", "--port", &port_arg, "--tick-ms", "200"]);
    assert!(out.contains(&port_arg), "{out}");
    assert!(
        m.state_dir().join("zookeeper").exists(),
        "data under the state dir"
    );
    let err = m.fails(&["zk", "start", "--port", &port_arg]);
    assert!(err.contains("already running"), "{err}");
    let status = m.ok(&["zk", "status"]);
    assert!(status.contains("standalone"), "{status}");
    // It works as pop's ZooKeeper.
    m.ok(&["init"]);
    assert!(m.ok(&["status"]).contains("no services"));
    m.ok(&["zk", "stop"]);
    let status = m.ok(&["zk", "status"]);
    assert!(status.contains("not running"), "{status}");
    let err = m.fails(&["status"]);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// An anonymous client of its own (the zookeeper-client crate, not pop's code): what the
/// server does to it, as an error.
fn digest_get_anonymous(hosts: &str) -> Result<Vec<u8>, String> {
    let path = "/";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut connector = zookeeper_client::Client::connector();
        let connect = connector.connect(hosts);
        let client = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Err(_) => return Err("connect: timed out".to_string()),
            Ok(Err(e)) => return Err(format!("connect: {e:?}")),
            Ok(Ok(client)) => client,
        };
        match tokio::time::timeout(Duration::from_secs(10), client.get_data(path)).await {
            Err(_) => Err("get: timed out".to_string()),
            Ok(Err(e)) => Err(format!("get: {e:?}")),
            Ok(Ok((data, _))) => Ok(data),
        }
    })
}

/// What the server answers a bare session: the reply to a ConnectRequest (its session id),
/// then the error code of a getData of `/` sent on it, and whether the server then
/// closed the connection. Speaks the wire protocol itself, so no client library's
/// handling stands in between.
fn raw_session_get(port: u16) -> (i64, i32, bool) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let frame = |body: Vec<u8>| {
        let mut f = u32::try_from(body.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        f.extend(body);
        f
    };
    let read_frame = |conn: &mut std::net::TcpStream| -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut body).ok()?;
        Some(body)
    };
    // protocolVersion, lastZxidSeen, timeOut, sessionId, passwd (16 zero bytes), readOnly.
    let mut connect = Vec::new();
    connect.extend(0i32.to_be_bytes());
    connect.extend(0i64.to_be_bytes());
    connect.extend(10_000i32.to_be_bytes());
    connect.extend(0i64.to_be_bytes());
    connect.extend(16i32.to_be_bytes());
    connect.extend([0u8; 16]);
    connect.push(0);
    conn.write_all(&frame(connect)).expect("ConnectRequest");
    let reply = read_frame(&mut conn).expect("ConnectResponse");
    let session = i64::from_be_bytes(reply[8..16].try_into().expect("8 bytes"));
    // xid 1, getData (4) of "/", no watch.
    let mut get = Vec::new();
    get.extend(1i32.to_be_bytes());
    get.extend(4i32.to_be_bytes());
    get.extend(1i32.to_be_bytes());
    get.push(b'/');
    get.push(0);
    conn.write_all(&frame(get)).expect("getData");
    let reply = read_frame(&mut conn).expect("a reply header");
    let err = i32::from_be_bytes(reply[12..16].try_into().expect("4 bytes"));
    let closed = read_frame(&mut conn).is_none();
    (session, err, closed)
}

/// An authenticated client of its own: its reading of `path`.
fn digest_get(hosts: &str, auth: &str, path: &str) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut connector = zookeeper_client::Client::connector();
        connector.auth("digest".to_string(), auth.as_bytes().to_vec());
        let client = connector
            .connect(hosts)
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        client
            .get_data(path)
            .await
            .map(|(data, _)| data)
            .map_err(|e| format!("get: {e:?}"))
    })
}

/// `--require-auth` (ZooKeeper's `enforce.auth.enabled=true`, `enforce.auth.schemes=digest`,
/// 3.7+): the server still creates an anonymous client's session, but answers its first
/// request with SESSIONCLOSEDREQUIRESASLAUTH (-124) and closes it; the zookeeper-client
/// crate reports that as AuthFailed while connecting, pop as a missing credential. Any
/// digest credential passes this gate (digest authentication itself never fails): what
/// it may then do is the ACLs' business. pop with the admin's and a machine's
/// credentials works as on any server.
#[test]
fn a_local_zookeeper_started_with_require_auth_refuses_anonymous_clients() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let m = Machine {
        id: pop_tests::unique("zk"),
        hosts: format!("127.0.0.1:{port}"),
        state: tempfile::tempdir().expect("temp dir"),
        containment: None,
        env: Vec::new(),
    };
    let port_arg = port.to_string();
    let out = m.ok(&[
        "zk",
        "start",
        "--port",
        &port_arg,
        "--tick-ms",
        "200",
        "--require-auth",
    ]);
    assert!(out.contains("authentication required"), "{out}");

    let (session, err, closed) = raw_session_get(port);
    assert_ne!(session, 0, "an anonymous session is created");
    assert_eq!(err, -124, "SESSIONCLOSEDREQUIRESASLAUTH");
    assert!(closed, "and the connection closed");
    let anonymous = digest_get_anonymous(&m.hosts);
    assert_eq!(anonymous, Err("connect: AuthFailed".to_string()));
    let err = m.fails(&["init"]);
    assert!(
        err.contains(&format!(
            "ZooKeeper at 127.0.0.1:{port} requires authentication, and pop has no credential"
        )),
        "{err}"
    );

    // The admin secures the namespace, a machine gets its credential, its agent runs a
    // service.
    let admin = "admin:correct-horse";
    let as_admin = |args: &[&str]| {
        let out = m
            .command(args)
            .env("POP_AUTH", admin)
            .env("POP_ADMIN_IDENTITY", admin)
            .output()
            .expect("pop");
        assert!(
            out.status.success(),
            "pop {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    as_admin(&["init"]);
    let credential = as_admin(&["machine", "add", &m.id]).trim().to_string();
    let marker = format!("47{}", std::process::id());
    as_admin(&[
        "add",
        "command",
        "--name",
        "svc",
        "--set",
        &format!("command=exec sleep {marker}"),
    ]);
    as_admin(&["deploy", "svc"]);
    let mut agent = m.command(&["fg"]);
    agent.env("POP_AUTH", &credential);
    let log = std::fs::File::create(m.state_dir().join("fg.log")).expect("log");
    let mut agent = agent
        .stdout(log.try_clone().expect("fd"))
        .stderr(log)
        .spawn()
        .expect("pop fg");
    let started = std::panic::catch_unwind(|| {
        pop_tests::wait_for("the service", || {
            pop_tests::processes_with(&format!("sleep {marker}"))
                .first()
                .copied()
        })
    });
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        started.is_ok(),
        "{}",
        std::fs::read_to_string(m.state_dir().join("fg.log")).unwrap_or_default()
    );
    // Anyone with a digest credential passes the gate; the ACLs still decide.
    assert!(digest_get(&m.hosts, "mallory:guess", "/pop").is_ok());
    assert_eq!(
        digest_get(&m.hosts, "mallory:guess", "/services/svc/settings"),
        Err("get: NoAuth".to_string())
    );
    m.ok(&["zk", "stop"]);
}
