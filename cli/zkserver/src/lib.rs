//! A local standalone ZooKeeper from Debian's `zookeeper` package: for `pop zk start` on a
//! single machine (a detached daemon with a pid file), and as the throwaway server of the
//! end-to-end tests (a child process killed when its handle is dropped).
//!
//! Plain blocking code. The server is
//! `java -cp zookeeper.jar:… org.apache.zookeeper.server.ZooKeeperServerMain <zoo.cfg>`
//! with a `zoo.cfg` written into its data directory; it counts as ready once the `srvr`
//! four-letter command reports a mode (`ruok` answers `imok` a little earlier, before the
//! server serves requests).

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

mod daemon;
mod server;

pub use daemon::{daemon_status, start_daemon, stop_daemon, DaemonStatus, StoppedDaemon};
pub use server::ZkServer;

/// Where Debian's `libzookeeper-java` puts its jars. `zookeeper.jar`'s manifest names its
/// dependencies (netty, metrics, jackson, …) by absolute path under this directory.
pub(crate) const JAVA_DIR: &str = "/usr/share/java";
/// Jars that must be there: the server, its wire format, the logging API.
pub(crate) const REQUIRED_JARS: [&str; 3] =
    ["zookeeper.jar", "zookeeper-jute.jar", "slf4j-api.jar"];
/// A logging backend writing to stderr (part of `libslf4j-java`); without it the server
/// is silent.
pub(crate) const LOG_BACKEND_JAR: &str = "slf4j-simple.jar";
/// An upstream-style installation's jars, used too when present.
pub(crate) const UPSTREAM_LIB_DIR: &str = "/usr/share/zookeeper/lib";
/// Netty jars a secure client port needs that `zookeeper.jar`'s manifest does not name
/// (Debian's `libnetty-java`, a dependency of the package).
pub(crate) const TLS_JARS: [&str; 3] = [
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-unix-common.jar",
];
pub(crate) const MAIN_CLASS: &str = "org.apache.zookeeper.server.ZooKeeperServerMain";
pub(crate) const INSTALL_HINT: &str = "on Debian: apt-get install -y zookeeper";

/// How long a server may take to answer after its JVM started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM may take before SIGKILL.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts on different free ports when a picked port was taken meanwhile.
pub(crate) const PORT_ATTEMPTS: usize = 5;
pub(crate) const POLL: Duration = Duration::from_millis(25);

#[derive(Debug, Error)]
pub enum ZkServerError {
    #[error("ZooKeeper is not installed: {missing} not found; {INSTALL_HINT}")]
    NotInstalled { missing: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("port {port} on {bind} is already in use (another ZooKeeper? `ss -ltnp` shows who); choose another port")]
    PortInUse { bind: IpAddr, port: u16 },
    #[error("ZooKeeper (pid {pid}) did not answer on {addr} within {}s; killed it. Its log {}:\n{log_tail}", READY_TIMEOUT.as_secs(), log_file.display())]
    NotReady {
        pid: u32,
        addr: SocketAddr,
        log_file: PathBuf,
        log_tail: String,
    },
    #[error("ZooKeeper exited during start-up ({status}) on {addr}. Its log {}:\n{log_tail}", log_file.display())]
    Exited {
        status: String,
        addr: SocketAddr,
        log_file: PathBuf,
        log_tail: String,
    },
    #[error(
        "a local ZooKeeper is already running (pid {pid}, port {port}); `pop zk stop` stops it"
    )]
    AlreadyRunning { pid: u32, port: u16 },
    #[error("no local ZooKeeper is running ({reason})")]
    NotRunning { reason: String },
    #[error("the server has no running process (a restart failed); start a new one")]
    NoProcess,
    #[error("four-letter command {command:?} to {addr}: {source}")]
    FourLetter {
        addr: String,
        command: String,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ZkServerError {
    let context = context.into();
    move |source| ZkServerError::Io { context, source }
}

/// Where `java` and the ZooKeeper jars are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkInstallation {
    pub java: PathBuf,
    pub jars: Vec<PathBuf>,
}

impl ZkInstallation {
    /// The jars joined with `:`.
    pub fn classpath(&self) -> String {
        self.jars
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

pub(crate) fn find_java() -> Option<PathBuf> {
    let from_home = std::env::var_os("JAVA_HOME").map(|h| PathBuf::from(h).join("bin/java"));
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|dir| dir.join("java"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_home
        .into_iter()
        .chain(on_path)
        .chain([PathBuf::from("/usr/bin/java")])
        .find(|p| p.is_file())
}

/// Finds `java` (`$JAVA_HOME/bin/java`, else on `PATH`) and the ZooKeeper jars of Debian's
/// `zookeeper` package; the error says how to install what is missing.
pub fn find_installation() -> Result<ZkInstallation, ZkServerError> {
    let java = find_java().ok_or_else(|| ZkServerError::NotInstalled {
        missing: "java (neither $JAVA_HOME/bin/java nor java on PATH)".into(),
    })?;
    let dir = Path::new(JAVA_DIR);
    let mut jars = Vec::new();
    for jar in REQUIRED_JARS {
        let path = dir.join(jar);
        if !path.is_file() {
            return Err(ZkServerError::NotInstalled {
                missing: path.display().to_string(),
            });
        }
        jars.push(path);
    }
    let backend = dir.join(LOG_BACKEND_JAR);
    if backend.is_file() {
        jars.push(backend);
    } else {
        tracing::warn!(jar = %backend.display(), "no slf4j backend: ZooKeeper will log nothing");
    }
    if let Ok(entries) = fs::read_dir(UPSTREAM_LIB_DIR) {
        let mut extra: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        extra.sort();
        jars.extend(extra);
    }
    Ok(ZkInstallation { java, jars })
}

/// The four-letter words pop itself sends: `srvr` (is the server up, in which mode: the
/// readiness check and `pop zk status`). A server answers no other (`4lw.commands.whitelist`).
pub const POP_FOUR_LETTER_WORDS: [&str; 1] = ["srvr"];

#[derive(Debug, Clone)]
pub struct ZkServerConfig {
    /// Client port; 0 picks a free one.
    pub port: u16,
    /// Snapshots, transaction logs and the generated `zoo.cfg`; created if missing.
    pub data_dir: PathBuf,
    /// ZooKeeper's tick; session timeouts are clamped to 2 to 20 ticks.
    pub tick_ms: u32,
    /// The JVM's maximum heap.
    pub heap_mb: u32,
    /// The server's stdout and stderr (appended); `None`: `zookeeper.log` in `data_dir`.
    pub log_file: Option<PathBuf>,
    /// The address the client port binds; loopback by default.
    pub bind: IpAddr,
    /// Whether the transaction log is fsynced on every write. Throwaway test servers can
    /// turn it off to be fast on slow disks.
    pub fsync: bool,
    /// The four-letter words the server answers; it refuses the others.
    pub four_letter_words: Vec<String>,
    /// Refuse every request of a client that has not authenticated with the digest
    /// scheme (ZooKeeper 3.7+: `enforce.auth.enabled`).
    pub require_auth: bool,
    /// A secure client port (TLS) besides the plaintext one.
    pub tls: Option<ServerTls>,
}

/// ZooKeeper's `secureClientPort` with PEM files (Netty connection factory).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The secure client port; 0 picks a free one.
    pub port: u16,
    /// PEM: the server's private key (unencrypted PKCS#8) and its certificate chain.
    pub key_store: PathBuf,
    /// PEM: the CA certificates a client's certificate must chain to.
    pub trust_store: PathBuf,
    pub client_auth: ClientAuth,
}

/// Whether a TLS client must present a certificate (`ssl.clientAuth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mutual TLS: a client without a certificate its trust store accepts is refused.
    Need,
    /// Any client that trusts the server's certificate may connect.
    None,
}

impl ServerTls {
    /// The `zoo.cfg` lines of a secure client port on `port`.
    fn config_lines(&self, bind: IpAddr, port: u16) -> String {
        let client_auth = match self.client_auth {
            ClientAuth::Need => "need",
            ClientAuth::None => "none",
        };
        format!(
            "secureClientPort={port}\n\
             secureClientPortAddress={bind}\n\
             serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
             ssl.keyStore.location={key}\n\
             ssl.keyStore.type=PEM\n\
             ssl.trustStore.location={trust}\n\
             ssl.trustStore.type=PEM\n\
             ssl.clientAuth={client_auth}\n",
            key = self.key_store.display(),
            trust = self.trust_store.display(),
        )
    }
}

impl Default for ZkServerConfig {
    fn default() -> Self {
        ZkServerConfig {
            port: 2181,
            data_dir: PathBuf::from("zookeeper-data"),
            tick_ms: 2000,
            heap_mb: 256,
            log_file: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            fsync: true,
            four_letter_words: POP_FOUR_LETTER_WORDS.map(String::from).to_vec(),
            require_auth: false,
            tls: None,
        }
    }
}

impl ZkServerConfig {
    /// `4lw.commands.whitelist`'s value.
    fn whitelist(&self) -> String {
        self.four_letter_words.join(",")
    }

    fn log_path(&self) -> PathBuf {
        self.log_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("zookeeper.log"))
    }
}

/// The address clients use for a server bound to `bind`.
pub(crate) fn client_addr(bind: IpAddr, port: u16) -> SocketAddr {
    let ip = match bind {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, port)
}

/// Sends a four-letter command (`ruok`, `srvr`, `mntr`, …) to `addr` (`"127.0.0.1:2181"`,
/// `("127.0.0.1", port)`, a `SocketAddr`) and returns the whole answer.
pub fn four_letter(
    addr: impl ToSocketAddrs + fmt::Debug,
    command: &str,
    timeout: Duration,
) -> Result<String, ZkServerError> {
    let fail = |source| ZkServerError::FourLetter {
        addr: format!("{addr:?}"),
        command: command.to_string(),
        source,
    };
    let addrs = addr.to_socket_addrs().map_err(fail)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match four_letter_to(a, command, timeout) {
            Ok(answer) => return Ok(answer),
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

pub(crate) fn four_letter_to(
    addr: SocketAddr,
    command: &str,
    timeout: Duration,
) -> io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(command.as_bytes())?;
    // The server answers and closes; a failed half-close only matters if it doesn't.
    let _ = conn.shutdown(Shutdown::Write);
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A port nobody listens on right now (the server binds it a moment later; a race with
/// another process is handled by retrying on a new port).
pub(crate) fn free_port(bind: IpAddr) -> Result<u16, ZkServerError> {
    let context = format!("finding a free port on {bind}");
    let listener = TcpListener::bind((bind, 0)).map_err(io_err(context.clone()))?;
    Ok(listener.local_addr().map_err(io_err(context))?.port())
}

/// The last lines the server wrote since `from` (its log is appended across runs).
pub(crate) fn log_since(path: &Path, from: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return "(no log)".into();
    };
    let mut bytes = Vec::new();
    match file
        .seek(SeekFrom::Start(from))
        .and_then(|_| file.read_to_end(&mut bytes))
    {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(unreadable log: {e})"),
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let tail = all[start..].join("\n");
    if tail.is_empty() {
        "(the log is empty)".into()
    } else {
        tail
    }
}

pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Creates the data directory, writes its `zoo.cfg` and builds the JVM command.
pub(crate) fn command(
    config: &ZkServerConfig,
    port: u16,
    secure_port: Option<u16>,
    log: &Path,
) -> Result<Command, ZkServerError> {
    let mut install = find_installation()?;
    let mut tls = String::new();
    if let (Some(server_tls), Some(secure_port)) = (&config.tls, secure_port) {
        for jar in TLS_JARS {
            let path = Path::new(JAVA_DIR).join(jar);
            if !path.is_file() {
                return Err(ZkServerError::NotInstalled {
                    missing: format!("{} (for TLS)", path.display()),
                });
            }
            install.jars.push(path);
        }
        tls = server_tls.config_lines(config.bind, secure_port);
    }
    fs::create_dir_all(&config.data_dir).map_err(io_err(format!(
        "creating ZooKeeper's data directory {}",
        config.data_dir.display()
    )))?;
    let data_dir = fs::canonicalize(&config.data_dir)
        .map_err(io_err(format!("resolving {}", config.data_dir.display())))?;
    let cfg_path = data_dir.join("zoo.cfg");
    let cfg = format!(
        "# written by pop; rewritten at every start\n\
         tickTime={tick}\n\
         dataDir={dir}\n\
         clientPort={port}\n\
         clientPortAddress={bind}\n\
         maxClientCnxns=0\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist={whitelist}\n\
         forceSync={sync}\n\
         autopurge.snapRetainCount=3\n\
         autopurge.purgeInterval=1\n{auth}{tls}",
        tick = config.tick_ms,
        dir = data_dir.display(),
        bind = config.bind,
        whitelist = config.whitelist(),
        sync = if config.fsync { "yes" } else { "no" },
        auth = if config.require_auth {
            "enforce.auth.enabled=true\nenforce.auth.schemes=digest\n"
        } else {
            ""
        },
    );
    fs::write(&cfg_path, cfg).map_err(io_err(format!("writing {}", cfg_path.display())))?;
    if let Some(parent) = log.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
    }
    let open_log = || {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(format!("opening ZooKeeper's log {}", log.display())))
    };
    let mut cmd = Command::new(&install.java);
    cmd.arg(format!("-Xmx{}m", config.heap_mb))
        .arg("-XX:+UseSerialGC")
        .arg("-Dzookeeper.admin.enableServer=false")
        .arg(format!(
            "-Dzookeeper.4lw.commands.whitelist={}",
            config.whitelist()
        ))
        .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
        .arg("-cp")
        .arg(install.classpath())
        .arg(MAIN_CLASS)
        .arg(&cfg_path)
        .current_dir(&data_dir)
        .stdin(Stdio::null())
        .stdout(open_log()?)
        .stderr(open_log()?);
    Ok(cmd)
}

/// Waits until the server serves requests. On failure the child is killed and reaped,
/// and the error carries what its log says.
pub(crate) fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    log: &Path,
    log_from: u64,
) -> Result<(), ZkServerError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(answer) = four_letter_to(addr, "srvr", Duration::from_millis(500)) {
            if answer.contains("Mode:") {
                return Ok(());
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let text = log_since(log, log_from);
                if text.contains("Address already in use") {
                    return Err(ZkServerError::PortInUse {
                        bind: addr.ip(),
                        port: addr.port(),
                    });
                }
                return Err(ZkServerError::Exited {
                    status: status.to_string(),
                    addr,
                    log_file: log.to_path_buf(),
                    log_tail: tail(&text, 15),
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "checking on ZooKeeper's process"),
        }
        if Instant::now() > deadline {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            return Err(ZkServerError::NotReady {
                pid,
                addr,
                log_file: log.to_path_buf(),
                log_tail: tail(&log_since(log, log_from), 15),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// A started server's process and where clients reach it.
pub(crate) struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    /// The secure client port's address, when TLS is configured.
    pub secure_addr: Option<SocketAddr>,
}

/// Starts a server on `port` (0: free ports, retried when taken meanwhile) and waits until
/// it is ready. `detach` puts it in its own session, to outlive this process.
pub(crate) fn spawn_ready(config: &ZkServerConfig, detach: bool) -> Result<Spawned, ZkServerError> {
    let log = config.log_path();
    let attempts = if config.port == 0 { PORT_ATTEMPTS } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = match config.port {
            0 => free_port(config.bind)?,
            p => p,
        };
        let addr = client_addr(config.bind, port);
        let secure_port = match &config.tls {
            None => None,
            Some(tls) if tls.port == 0 => Some(free_port(config.bind)?),
            Some(tls) => Some(tls.port),
        };
        let mut cmd = command(config, port, secure_port, &log)?;
        if detach {
            // SAFETY: only setsid(2), async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
            }
        }
        let log_from = file_len(&log);
        let mut child = cmd.spawn().map_err(io_err(format!(
            "starting ZooKeeper with {}",
            cmd.get_program().to_string_lossy()
        )))?;
        tracing::debug!(pid = child.id(), %addr, "ZooKeeper starting");
        match wait_ready(&mut child, addr, &log, log_from) {
            Ok(()) => {
                tracing::info!(pid = child.id(), %addr, data_dir = %config.data_dir.display(), "ZooKeeper ready");
                let secure_addr = secure_port.map(|p| client_addr(config.bind, p));
                return Ok(Spawned {
                    child,
                    addr,
                    secure_addr,
                });
            }
            Err(ZkServerError::PortInUse { .. }) if attempt < attempts => {
                tracing::debug!(port, "port taken meanwhile; trying another");
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn signal(pid: u32, sig: Signal) -> Result<(), ZkServerError> {
    let raw = i32::try_from(pid).map_err(|_| ZkServerError::Io {
        context: format!("pid {pid}"),
        source: io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"),
    })?;
    kill(Pid::from_raw(raw), sig).map_err(|e| ZkServerError::Io {
        context: format!("sending {sig} to ZooKeeper (pid {pid})"),
        source: e.into(),
    })
}

/// Whether every thread of `pid` is stopped (or exiting), from `/proc/PID/task/*/stat`.
pub(crate) fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // `pid (comm) S ...`: the state follows the last parenthesis.
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        matches!(state, Some('T' | 't' | 'Z' | 'X') | None)
    })
}

/// SIGTERM (and SIGCONT, in case it is paused), then SIGKILL after `STOP_TIMEOUT`; reaps.
/// Returns whether it had to be killed.
pub(crate) fn terminate_child(child: &mut Child) -> bool {
    let pid = child.id();
    let _ = signal(pid, Signal::SIGTERM);
    let _ = signal(pid, Signal::SIGCONT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(POLL);
    }
    tracing::warn!(pid, "ZooKeeper ignored SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 2), "(the log is empty)");
    }

    #[test]
    fn unspecified_bind_is_reached_on_loopback() {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert_eq!(client_addr(any, 5).to_string(), "127.0.0.1:5");
        let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        assert_eq!(client_addr(v6, 5).to_string(), "[::1]:5");
    }
}
