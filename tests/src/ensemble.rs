//! A loopback ZooKeeper ensemble (`QuorumPeerMain`), each node a child process with its
//! own data directory, `myid` and free ports; every node killed when dropped.
//!
//! The JVM command line follows pop-zkserver's (same jars via its public
//! `find_installation`, same flags); only the main class and the configuration differ.

use pop_zkserver::{find_installation, four_letter, ZkInstallation};
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
const TICK_MS: u32 = 200;
/// How long an ensemble may take to elect a leader and serve.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(30);

struct Node {
    client: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Ensemble {
    install: ZkInstallation,
    nodes: Vec<Node>,
    _dir: TempDir,
}

/// `n` distinct free loopback ports (all held until every one is picked).
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The node's mode from `srvr` (`leader`, `follower`, `standalone`), `None` when it does
/// not serve (down, or looking for a leader).
fn mode(addr: SocketAddr) -> Option<String> {
    let answer = four_letter(addr, "srvr", Duration::from_millis(500)).ok()?;
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Mode:"))
        .map(|m| m.trim().to_string())
}

impl Ensemble {
    /// Starts an `n`-node ensemble and waits until a quorum serves.
    pub fn start(n: usize) -> Result<Ensemble, String> {
        let install = find_installation().map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let ports = free_ports(3 * n).map_err(|e| format!("free ports: {e}"))?;
        let servers: String = (0..n)
            .map(|i| {
                format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    i + 1,
                    ports[3 * i + 1],
                    ports[3 * i + 2]
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let data_dir = dir.path().join(format!("node{}", i + 1));
            fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
            fs::write(data_dir.join("myid"), format!("{}\n", i + 1))
                .map_err(|e| format!("myid: {e}"))?;
            let cfg = format!(
                "tickTime={TICK_MS}\n\
                 initLimit=10\n\
                 syncLimit=5\n\
                 dataDir={dir}\n\
                 clientPort={port}\n\
                 clientPortAddress=127.0.0.1\n\
                 maxClientCnxns=0\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=*\n\
                 forceSync=no\n\
                 {servers}",
                dir = data_dir.display(),
                port = ports[3 * i],
            );
            fs::write(data_dir.join("zoo.cfg"), cfg).map_err(|e| format!("zoo.cfg: {e}"))?;
            nodes.push(Node {
                client: SocketAddr::from(([127, 0, 0, 1], ports[3 * i])),
                log: data_dir.join("zookeeper.log"),
                data_dir,
                child: None,
            });
        }
        let mut ensemble = Ensemble {
            install,
            nodes,
            _dir: dir,
        };
        for i in 0..n {
            ensemble.spawn(i)?;
        }
        ensemble.wait_quorum()?;
        Ok(ensemble)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let open_log = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log)
                .map_err(|e| format!("{}: {e}", node.log.display()))
        };
        let child = Command::new(&self.install.java)
            .arg("-Xmx128m")
            .arg("-XX:+UseSerialGC")
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg("-Dzookeeper.4lw.commands.whitelist=*")
            .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
            .arg("-cp")
            .arg(self.install.classpath())
            .arg(MAIN_CLASS)
            .arg(node.data_dir.join("zoo.cfg"))
            .current_dir(&node.data_dir)
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            .spawn()
            .map_err(|e| format!("starting node {i}: {e}"))?;
        node.child = Some(child);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,…`: every node, for clients.
    pub fn hosts(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.client.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].client
    }

    pub fn log_file(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// Each node's mode, `None` for a node down or not serving.
    pub fn modes(&self) -> Vec<Option<String>> {
        self.nodes
            .iter()
            .map(|n| n.child.as_ref().and_then(|_| mode(n.client)))
            .collect()
    }

    /// The node that says it leads.
    pub fn leader(&self) -> Option<usize> {
        self.modes()
            .iter()
            .position(|m| m.as_deref() == Some("leader"))
    }

    /// The JVM's pid of node `i`, `None` if it is down.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// SIGKILLs node `i` (a crash: no goodbye to peers or clients) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again with its data directory (it rejoins the quorum).
    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].child.is_some() {
            return Ok(());
        }
        self.spawn(i)
    }

    /// Waits until one node leads and a majority of all nodes serve (leader or
    /// follower); returns the leader.
    pub fn wait_quorum(&self) -> Result<usize, String> {
        let end = Instant::now() + QUORUM_TIMEOUT;
        loop {
            let modes = self.modes();
            let serving = modes
                .iter()
                .filter(|m| matches!(m.as_deref(), Some("leader" | "follower")))
                .count();
            let leader = modes.iter().position(|m| m.as_deref() == Some("leader"));
            if let Some(l) = leader.filter(|_| serving > self.nodes.len() / 2) {
                return Ok(l);
            }
            if Instant::now() > end {
                let logs: String = (0..self.nodes.len())
                    .map(|i| {
                        let text = fs::read_to_string(self.log_file(i)).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(10).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        format!("--- node {i}:\n{}\n", tail.join("\n"))
                    })
                    .collect();
                return Err(format!(
                    "no quorum within {QUORUM_TIMEOUT:?}: modes {modes:?}\n{logs}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
