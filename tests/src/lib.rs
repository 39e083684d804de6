//! Helpers for pop's end-to-end tests: a throwaway ZooKeeper, the real `pop` binary,
//! agents as child processes, an independent ZooKeeper client, and waiting with deadlines.

pub mod ensemble;
pub mod proxy;
pub mod python;

pub use ensemble::Ensemble;
pub use proxy::TcpProxy;

use pop_zkserver::{four_letter, ServerTls, ZkServer, ZkServerConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long any condition in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` until it returns `Some`, failing the test after `DEADLINE`.
pub fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tests' ZooKeeper tick: sessions expire within seconds (at most 20 ticks).
const TEST_TICK_MS: u32 = 200;

/// A standalone ZooKeeper on a free loopback port with its own data directory,
/// killed when dropped.
pub struct Zk {
    pub server: ZkServer,
    _dir: TempDir,
}

impl Zk {
    pub fn start() -> Zk {
        Zk::start_with(None, TEST_TICK_MS)
    }

    /// A server with ZooKeeper's default tick (2 s, as `pop zk start` and a real
    /// deployment): sessions of up to 40 s, so an agent keeps its 10 s one. The tests'
    /// short tick caps sessions at 4 s, and the ZooKeeper client then wakes every
    /// 200 ms instead of every 625 ms: fine for tests, wrong for measuring idleness.
    pub fn start_with_default_tick() -> Zk {
        Zk::start_with(None, ZkServerConfig::default().tick_ms)
    }

    /// A server with a secure client port (TLS) too: [`Zk::secure_hosts`]. Its plaintext
    /// port stays (for the readiness check and four-letter words).
    pub fn start_tls(tls: ServerTls) -> Zk {
        Zk::start_with(Some(tls), TEST_TICK_MS)
    }

    fn start_with(tls: Option<ServerTls>, tick_ms: u32) -> Zk {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = ZkServerConfig {
            port: 0,
            data_dir: dir.path().join("data"),
            tick_ms,
            log_file: Some(dir.path().join("zookeeper.log")),
            // pop's, and what the tests ask about sessions (`session_connected`,
            // `session_alive`).
            // `wchc`: who watches what (tests/tests/index.rs).
            four_letter_words: ["srvr", "cons", "dump", "wchc"].map(String::from).to_vec(),
            tls,
            ..ZkServerConfig::default()
        };
        let server = ZkServer::start(config).unwrap_or_else(|e| {
            panic!("cannot start ZooKeeper for the tests: {e}\n(on Debian: apt-get install -y zookeeper)")
        });
        Zk { server, _dir: dir }
    }

    pub fn hosts(&self) -> String {
        self.server.connect_string()
    }

    /// The connect string of the secure client port ([`Zk::start_tls`]).
    pub fn secure_hosts(&self) -> String {
        self.server
            .secure_connect_string()
            .expect("a server started with Zk::start_tls")
    }

    /// Stops the server gracefully and starts it again on the same port and data
    /// directory (sessions that have not expired survive).
    pub fn restart(&mut self) {
        self.server
            .restart()
            .unwrap_or_else(|e| panic!("restarting ZooKeeper: {e}"));
    }

    /// Whether the server tracks `session` as live (the `dump` four-letter command).
    pub fn session_alive(&self, session: i64) -> bool {
        session_alive(&self.hosts(), session)
    }

    /// Whether a client is connected to the server with `session` (`cons`).
    pub fn session_connected(&self, session: i64) -> bool {
        session_connected(&self.hosts(), session)
    }

    /// The paths each session holds a watch on (the `wchc` four-letter command).
    pub fn watches_by_session(&self) -> BTreeMap<i64, BTreeSet<String>> {
        let text = four_letter(self.hosts(), "wchc", Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("wchc: {e}"));
        let mut watches: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        let mut session = None;
        for line in text.lines() {
            if let Some(path) = line.strip_prefix('\t') {
                if let Some(s) = session {
                    watches
                        .entry(s)
                        .or_default()
                        .insert(path.trim().to_string());
                }
            } else if let Some(hex) = line.trim().strip_prefix("0x") {
                let id = u64::from_str_radix(hex, 16)
                    .unwrap_or_else(|e| panic!("wchc session {line:?}: {e}"));
                session = Some(id as i64);
                watches.entry(id as i64).or_default();
            }
        }
        watches
    }
}

/// Whether a client is connected to the server at `addr` with `session`: `cons` lists
/// every connection with its `sid`.
pub fn session_connected(addr: &str, session: i64) -> bool {
    four_letter(addr, "cons", Duration::from_secs(2))
        .is_ok_and(|cons| cons.contains(&format!("sid=0x{session:x},")))
}

/// Whether the server at `addr` (a standalone server or an ensemble's leader) tracks
/// `session` as live: its id is in the session tracker part of `dump`.
pub fn session_alive(addr: &str, session: i64) -> bool {
    let Ok(dump) = four_letter(addr, "dump", Duration::from_secs(2)) else {
        return false;
    };
    let tracker = dump
        .split("ephemeral nodes dump")
        .next()
        .unwrap_or_default();
    tracker.contains(&format!("0x{session:x}"))
}

/// The `pop` command line as built by this package (`pop-under-test`), next to the test
/// executable's `deps/` directory; cargo builds it before this package's tests run.
pub fn pop_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let pop = dir.join("pop-under-test");
    assert!(pop.exists(), "{} not built", pop.display());
    pop
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The common start of a test: a ZooKeeper, one machine, an independent client, and
/// `pop init` done.
pub fn initialised() -> (Zk, Machine, Checker) {
    let zk = Zk::start();
    let machine = Machine::new(&zk);
    let checker = Checker::connect(&zk);
    machine.ok(&["init"]);
    (zk, machine, checker)
}

/// A unique token for this test process, for machine ids and process markers.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The environment of one simulated machine: a machine id and a state directory.
pub struct Machine {
    pub id: String,
    pub hosts: String,
    pub state: TempDir,
    pub containment: Option<&'static str>,
    /// Set for every command of this machine (e.g. `POP_TLS_CA`).
    pub env: Vec<(String, String)>,
}

impl Machine {
    pub fn new(zk: &Zk) -> Machine {
        Machine::with_hosts(&zk.hosts())
    }

    /// A machine whose commands use the connect string `hosts` (an ensemble, a proxy).
    pub fn with_hosts(hosts: &str) -> Machine {
        Machine {
            id: unique("m"),
            hosts: hosts.to_string(),
            state: tempfile::tempdir().expect("temp dir"),
            containment: None,
            env: Vec::new(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_via(&self.hosts, args)
    }

    /// `pop <args>` as this machine, but connecting to `hosts`.
    pub fn command_via(&self, hosts: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(pop_exe());
        cmd.env_remove("POP_HOST")
            .env_remove("POP_MACHINE_ID")
            .env_remove("POP_STATE_DIR")
            .env_remove("POP_TLS_CA")
            .env_remove("POP_TLS_CERT")
            .env_remove("POP_TLS_KEY")
            .env("POP_SESSION_TIMEOUT_MS", "4000")
            .env_remove("RUST_LOG")
            .arg("--host")
            .arg(hosts)
            .arg("--machine-id")
            .arg(&self.id)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .stdin(Stdio::null());
        if let Some(c) = self.containment {
            cmd.env("POP_CONTAINMENT", c);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `pop <args>` and returns its output.
    pub fn pop(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running pop")
    }

    /// Runs `pop <args>`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.pop(args);
        assert!(
            out.status.success(),
            "pop {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `pop <args>`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.pop(args);
        assert!(
            !out.status.success(),
            "pop {args:?} should have failed but printed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts `pop fg` as a child; stopped (SIGTERM, then SIGKILL) when dropped.
    pub fn agent(&self) -> Agent {
        self.spawn_agent(self.command(&["fg"]))
    }

    /// Starts `pop fg` connecting to `hosts` instead of the machine's connect string (a
    /// proxy in front of ZooKeeper) with a session timeout of `session_ms`.
    pub fn agent_with(&self, hosts: &str, session_ms: u32) -> Agent {
        let mut cmd = self.command_via(hosts, &["fg"]);
        cmd.env("POP_SESSION_TIMEOUT_MS", session_ms.to_string());
        self.spawn_agent(cmd)
    }

    /// Starts `pop fg` with extra environment variables (e.g. `POP_SESSION_TIMEOUT_MS`).
    pub fn agent_env(&self, vars: &[(&str, &str)]) -> Agent {
        let mut cmd = self.command(&["fg"]);
        cmd.envs(vars.iter().copied());
        self.spawn_agent(cmd)
    }

    /// Starts `pop fg` inside the cgroup v2 directory `cgroup`, as systemd starts a
    /// unit's main process in the unit's cgroup.
    pub fn agent_in_cgroup(&self, cgroup: &Path) -> Agent {
        let fg = self.command(&["fg"]);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(cgroup)
            .arg(fg.get_program())
            .args(fg.get_args())
            .stdin(Stdio::null());
        for (key, value) in fg.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        self.spawn_agent(cmd)
    }

    fn spawn_agent(&self, mut cmd: Command) -> Agent {
        let log = self.state.path().join("fg.log");
        let file = std::fs::File::create(&log).expect("agent log");
        let child = cmd
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("starting pop fg");
        Agent {
            child: Some(child),
            log,
        }
    }
}

/// A failed test must not leave daemons behind: an agent started with `pop start` or a
/// ZooKeeper started with `pop zk start` from this machine's state directory is stopped.
impl Drop for Machine {
    fn drop(&mut self) {
        let pid_file = self.state.path().join("agent.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            signal(pid, libc::SIGTERM);
            let end = Instant::now() + DEADLINE;
            while Instant::now() < end
                && std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            signal(pid, libc::SIGKILL);
        }
        let zk_pid = self.state.path().join("zookeeper").join("zookeeper.pid");
        if zk_pid.exists() {
            let _ = pop_zkserver::stop_daemon(&zk_pid);
        }
        // Services outlive a killed agent by design (the next one adopts them); a test
        // that ends without a next agent must not leave them running.
        let token = format!("POP_SUPERVISION_TOKEN={}/", self.id);
        let end = Instant::now() + DEADLINE;
        loop {
            let left = processes_with_env_prefix(&token);
            if left.is_empty() || Instant::now() > end {
                break;
            }
            for pid in left {
                signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Live (not zombie) processes with an environment entry starting with `prefix`.
fn processes_with_env_prefix(prefix: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            !zombie
                && env
                    .split(|b| *b == 0)
                    .any(|e| e.starts_with(prefix.as_bytes()))
        })
        .collect()
}

pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for a clean exit (services stopped first).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        signal(child.id() as i32, libc::SIGTERM);
        wait_for("the agent to exit", || child.try_wait().ok().flatten())
    }

    /// Freezes the agent (SIGSTOP): its session is neither used nor kept alive.
    pub fn pause(&self) {
        signal(self.pid() as i32, libc::SIGSTOP);
    }

    /// Thaws a paused agent (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid() as i32, libc::SIGCONT);
    }

    /// `Some` once the agent process has exited (by itself, or asked by `pop stop`).
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Kills the agent with SIGKILL, leaving its services behind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, libc::SIGTERM);
            // A paused agent must wake up to handle it.
            signal(child.id() as i32, libc::SIGCONT);
            let end = Instant::now() + DEADLINE;
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we own; no memory involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Pids of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // Zombies have an empty cmdline and are gone for our purposes.
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// An independent ZooKeeper client (not pop's code path) to check the znode layout.
pub struct Checker {
    runtime: tokio::runtime::Runtime,
    client: zookeeper_client::Client,
}

impl Checker {
    pub fn connect(zk: &Zk) -> Checker {
        Checker::connect_to(&zk.hosts())
    }

    /// Connects to any connect string (an ensemble's `hosts()`).
    pub fn connect_to(hosts: &str) -> Checker {
        // A worker thread keeps the session alive (pings) between the test's calls.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime
            .block_on(zookeeper_client::Client::connect(hosts))
            .expect("checker connects");
        Checker { runtime, client }
    }

    /// Data and ephemeral owner of a node, `None` if missing.
    pub fn get(&self, path: &str) -> Option<(Vec<u8>, i64)> {
        match self.runtime.block_on(self.client.get_data(path)) {
            Ok((data, stat)) => Some((data, stat.ephemeral_owner)),
            Err(zookeeper_client::Error::NoNode) => None,
            Err(e) => panic!("reading {path}: {e}"),
        }
    }

    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        self.get(path)
            .map(|(d, _)| serde_json::from_slice(&d).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    pub fn children(&self, path: &str) -> Vec<String> {
        match self.runtime.block_on(self.client.list_children(path)) {
            Ok(mut c) => {
                c.sort();
                c
            }
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(e) => panic!("listing {path}: {e}"),
        }
    }

    pub fn set(&self, path: &str, data: &[u8]) {
        self.runtime
            .block_on(self.client.set_data(path, data, None))
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }

    pub fn delete(&self, path: &str) {
        self.runtime
            .block_on(self.client.delete(path, None))
            .unwrap_or_else(|e| panic!("deleting {path}: {e}"));
    }

    pub fn create(&self, path: &str, data: &[u8]) {
        let opts = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        self.runtime
            .block_on(self.client.create(path, data, &opts))
            .unwrap_or_else(|e| panic!("creating {path}: {e}"));
    }
}

/// Like [`wait_for`], with its own deadline: for what takes longer than [`DEADLINE`]
/// allows, e.g. building a Python environment on a busy machine.
pub fn wait_for_within<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` over HTTP/1.0 from 127.0.0.1:`port`: the status code and the body, or
/// `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}
