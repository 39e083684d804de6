//! A ZooKeeper server as a child process, killed when its handle is dropped.

use crate::*;
use nix::sys::signal::Signal;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// A ZooKeeper child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ZkServer {
    child: Option<Child>,
    /// With the port actually used, so that `restart` reuses it.
    config: ZkServerConfig,
    addr: SocketAddr,
    secure_addr: Option<SocketAddr>,
}

impl ZkServer {
    /// Starts a server and waits (up to [`READY_TIMEOUT`]) until it serves requests.
    pub fn start(config: ZkServerConfig) -> Result<ZkServer, ZkServerError> {
        let spawned = spawn_ready(&config, false)?;
        let tls = match (config.tls, spawned.secure_addr) {
            (Some(tls), Some(secure)) => Some(ServerTls {
                port: secure.port(),
                ..tls
            }),
            _ => None,
        };
        let config = ZkServerConfig {
            port: spawned.addr.port(),
            tls,
            ..config
        };
        Ok(ZkServer {
            child: Some(spawned.child),
            config,
            addr: spawned.addr,
            secure_addr: spawned.secure_addr,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`, for ZooKeeper clients.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT` of the secure client port (TLS), if configured.
    pub fn secure_connect_string(&self) -> Option<String> {
        self.secure_addr.map(|a| a.to_string())
    }

    /// The JVM's pid; `None` only after a failed `restart`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config(&self) -> &ZkServerConfig {
        &self.config
    }

    pub fn log_file(&self) -> PathBuf {
        self.config.log_path()
    }

    fn send(&self, sig: Signal) -> Result<(), ZkServerError> {
        signal(self.pid().ok_or(ZkServerError::NoProcess)?, sig)
    }

    /// Freezes the server (SIGSTOP) and waits until all its threads have stopped:
    /// connections stay open but nothing answers, so client sessions time out as in a
    /// network partition.
    pub fn pause(&self) -> Result<(), ZkServerError> {
        let pid = self.pid().ok_or(ZkServerError::NoProcess)?;
        signal(pid, Signal::SIGSTOP)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            if Instant::now() > deadline {
                return Err(ZkServerError::Io {
                    context: format!("pausing ZooKeeper (pid {pid})"),
                    source: io::Error::new(io::ErrorKind::TimedOut, "threads still running"),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) -> Result<(), ZkServerError> {
        self.send(Signal::SIGCONT)
    }

    /// Stops the server gracefully and starts it again on the same port and data
    /// directory, waiting until it is ready. Sessions survive if they have not expired.
    pub fn restart(&mut self) -> Result<(), ZkServerError> {
        if let Some(mut child) = self.child.take() {
            terminate_child(&mut child);
        }
        // The port is free again at once (ZooKeeper sets SO_REUSEADDR), unless someone
        // else grabbed it; allow a moment for stragglers.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match spawn_ready(&self.config, false) {
                Ok(spawned) => {
                    self.child = Some(spawned.child);
                    return Ok(());
                }
                Err(ZkServerError::PortInUse { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the server: SIGTERM, then SIGKILL if it is still there after 10 s.
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            terminate_child(&mut child);
        }
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a paused server.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
