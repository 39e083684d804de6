//! A local standalone ZooKeeper from Debian's `zookeeper` package: for `pop zk start` on a
//! single machine, and as the throwaway server of the end-to-end tests.
//!
//! Plain blocking code: it starts a JVM and waits until `srvr` reports a mode.

use serde::Serialize;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

const JAVA_DIR: &str = "/usr/share/java";
/// Jars of the Debian packages `zookeeper`/`libzookeeper-java` and their logging backend.
const JARS: [&str; 4] = [
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "slf4j-simple.jar",
];
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum ZkServerError {
    #[error(
        "ZooKeeper is not installed ({missing} not found); on Debian: apt-get install -y zookeeper"
    )]
    NotInstalled { missing: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("ZooKeeper on port {port} did not become ready within {}s: {log_tail}", READY_TIMEOUT.as_secs())]
    NotReady { port: u16, log_tail: String },
    #[error("ZooKeeper exited during start-up on port {port}: {log_tail}")]
    Exited { port: u16, log_tail: String },
    #[error("a local ZooKeeper is already running (pid {pid}, port {port})")]
    AlreadyRunning { pid: u32, port: u16 },
    #[error("no local ZooKeeper is running (no live process in {})", pid_file.display())]
    NotRunning { pid_file: PathBuf },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ZkServerError {
    let context = context.into();
    move |source| ZkServerError::Io { context, source }
}

/// Where `java` and the ZooKeeper jars are.
#[derive(Debug, Clone)]
pub struct ZkInstallation {
    pub java: PathBuf,
    pub classpath: String,
}

pub fn find_installation() -> Result<ZkInstallation, ZkServerError> {
    let java = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("java"))
        .find(|p| p.is_file())
        .ok_or(ZkServerError::NotInstalled {
            missing: "java".into(),
        })?;
    let main = Path::new(JAVA_DIR).join(JARS[0]);
    if !main.is_file() {
        return Err(ZkServerError::NotInstalled {
            missing: main.display().to_string(),
        });
    }
    let classpath = JARS
        .iter()
        .map(|j| Path::new(JAVA_DIR).join(j))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    Ok(ZkInstallation { java, classpath })
}

#[derive(Debug, Clone)]
pub struct ZkServerConfig {
    /// Client port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    pub data_dir: PathBuf,
    /// Sessions may last 2 to 20 ticks.
    pub tick_ms: u32,
    pub heap_mb: u32,
    /// The server's output; discarded when `None`.
    pub log_file: Option<PathBuf>,
}

impl Default for ZkServerConfig {
    fn default() -> Self {
        ZkServerConfig {
            port: 2181,
            data_dir: PathBuf::from("zookeeper-data"),
            tick_ms: 2000,
            heap_mb: 256,
            log_file: None,
        }
    }
}

/// Sends a four-letter command (`ruok`, `srvr`, `mntr`) and returns the answer.
pub fn four_letter(port: u16, command: &str, timeout: Duration) -> io::Result<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(command.as_bytes())?;
    let _ = conn.shutdown(Shutdown::Write);
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    Ok(answer)
}

fn free_port() -> Result<u16, ZkServerError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

fn log_tail(log: Option<&Path>) -> String {
    let Some(text) = log.and_then(|p| fs::read_to_string(p).ok()) else {
        return "no log".into();
    };
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Builds the JVM command for `config` on `port`, writing its zoo.cfg beside the data.
fn command(config: &ZkServerConfig, port: u16) -> Result<Command, ZkServerError> {
    let install = find_installation()?;
    fs::create_dir_all(&config.data_dir)
        .map_err(io_err(format!("creating {}", config.data_dir.display())))?;
    let data_dir = fs::canonicalize(&config.data_dir)
        .map_err(io_err(format!("resolving {}", config.data_dir.display())))?;
    let cfg_path = data_dir.join("zoo.cfg");
    let cfg = format!(
        "tickTime={}\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
         maxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=*\n",
        config.tick_ms,
        data_dir.display()
    );
    fs::write(&cfg_path, cfg).map_err(io_err(format!("writing {}", cfg_path.display())))?;
    let mut cmd = Command::new(&install.java);
    cmd.arg(format!("-Xmx{}m", config.heap_mb))
        .arg("-Dzookeeper.admin.enableServer=false")
        .arg("-Dzookeeper.4lw.commands.whitelist=*")
        .arg("-cp")
        .arg(&install.classpath)
        .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
        .arg(&cfg_path)
        .stdin(Stdio::null());
    match &config.log_file {
        Some(path) => {
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_err(format!("opening {}", path.display())))?;
            let err = file
                .try_clone()
                .map_err(io_err(format!("opening {}", path.display())))?;
            cmd.stdout(file).stderr(err);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    Ok(cmd)
}

/// Waits until the server serves requests, or fails with what its log says.
fn wait_ready(child: &mut Child, port: u16, log: Option<&Path>) -> Result<(), ZkServerError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        // `ruok` says imok before the server serves requests; `srvr` knows better.
        if let Ok(answer) = four_letter(port, "srvr", Duration::from_millis(500)) {
            if answer.contains("Mode:") {
                return Ok(());
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(ZkServerError::Exited {
                port,
                log_tail: log_tail(log),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ZkServerError::NotReady {
                port,
                log_tail: log_tail(log),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A ZooKeeper child process, killed when dropped.
pub struct ZkServer {
    child: Option<Child>,
    config: ZkServerConfig,
    port: u16,
}

impl ZkServer {
    pub fn start(config: ZkServerConfig) -> Result<ZkServer, ZkServerError> {
        // A picked port can be taken by someone else before the JVM binds it: retry.
        let attempts = if config.port == 0 { 3 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let port = if config.port == 0 {
                free_port()?
            } else {
                config.port
            };
            match Self::start_on(&config, port) {
                Ok(child) => {
                    return Ok(ZkServer {
                        child: Some(child),
                        config,
                        port,
                    })
                }
                Err(e @ ZkServerError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ZkServerError::NotReady {
            port: config.port,
            log_tail: String::new(),
        }))
    }

    fn start_on(config: &ZkServerConfig, port: u16) -> Result<Child, ZkServerError> {
        let mut child = command(config, port)?
            .spawn()
            .map_err(io_err("starting java"))?;
        wait_ready(&mut child, port, config.log_file.as_deref())?;
        Ok(child)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// Freezes the server (SIGSTOP): clients see it as unreachable, sessions age.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// Stops gracefully (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Stops and starts again on the same port and data directory.
    pub fn restart(&mut self) -> Result<(), ZkServerError> {
        self.terminate();
        let child = Self::start_on(&self.config, self.port)?;
        self.child = Some(child);
        Ok(())
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server ignores everything but KILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What `pop zk status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// The `srvr` answer's key lines (mode, zxid, connections).
    pub summary: Vec<String>,
}

impl fmt::Display for DaemonStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.running {
            return f.write_str("not running");
        }
        write!(
            f,
            "running: pid {}, 127.0.0.1:{}",
            self.pid.unwrap_or(0),
            self.port.unwrap_or(0)
        )?;
        for line in &self.summary {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

#[derive(Debug, serde::Deserialize, Serialize)]
struct PidRecord {
    pid: u32,
    port: u16,
}

fn read_record(pid_file: &Path) -> Option<PidRecord> {
    serde_json::from_str(&fs::read_to_string(pid_file).ok()?).ok()
}

fn is_live_zookeeper(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("org.apache.zookeeper"))
        .unwrap_or(false)
}

fn srvr_summary(port: u16) -> Vec<String> {
    four_letter(port, "srvr", Duration::from_secs(2))
        .map(|answer| {
            answer
                .lines()
                .filter(|l| {
                    ["Mode:", "Zxid:", "Connections:", "Node count:"]
                        .iter()
                        .any(|k| l.starts_with(k))
                })
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("not answering: {e}")])
}

pub fn daemon_status(pid_file: &Path) -> Result<DaemonStatus, ZkServerError> {
    match read_record(pid_file) {
        Some(r) if is_live_zookeeper(r.pid) => Ok(DaemonStatus {
            running: true,
            pid: Some(r.pid),
            port: Some(r.port),
            summary: srvr_summary(r.port),
        }),
        _ => Ok(DaemonStatus {
            running: false,
            pid: None,
            port: None,
            summary: Vec::new(),
        }),
    }
}

/// Starts a detached server that outlives this process; its pid and port go to `pid_file`.
pub fn start_daemon(
    config: &ZkServerConfig,
    pid_file: &Path,
) -> Result<DaemonStatus, ZkServerError> {
    if let Some(r) = read_record(pid_file) {
        if is_live_zookeeper(r.pid) {
            return Err(ZkServerError::AlreadyRunning {
                pid: r.pid,
                port: r.port,
            });
        }
    }
    let port = if config.port == 0 {
        free_port()?
    } else {
        config.port
    };
    let mut cmd = command(config, port)?;
    // SAFETY: setsid is async-signal-safe; it detaches the server from our session.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err("starting java"))?;
    wait_ready(&mut child, port, config.log_file.as_deref())?;
    let record = PidRecord {
        pid: child.id(),
        port,
    };
    let text = serde_json::to_string(&record).unwrap_or_default();
    fs::write(pid_file, text).map_err(io_err(format!("writing {}", pid_file.display())))?;
    Ok(DaemonStatus {
        running: true,
        pid: Some(record.pid),
        port: Some(port),
        summary: Vec::new(),
    })
}

pub fn stop_daemon(pid_file: &Path) -> Result<(), ZkServerError> {
    let record = read_record(pid_file)
        .filter(|r| is_live_zookeeper(r.pid))
        .ok_or_else(|| ZkServerError::NotRunning {
            pid_file: pid_file.to_path_buf(),
        })?;
    let pid = nix::unistd::Pid::from_raw(record.pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_live_zookeeper(record.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_live_zookeeper(record.pid) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = fs::remove_file(pid_file);
    Ok(())
}
