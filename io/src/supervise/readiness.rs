//! Readiness probes: a TCP connect to a known port, or discovery of the port
//! a service's processes listen on. The instance task aborts the probe when
//! the generation exits.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

use super::containment::Group;
use super::procfs;
use super::record::RunFile;
use super::{ReadinessProbe, SupervisorEvent};

const POLL: Duration = Duration::from_millis(50);

/// Wildcard listen addresses are not connectable; use loopback instead.
fn connect_host(host: &str) -> &str {
    match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "::1",
        h => h
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h),
    }
}

/// Polls until the service is ready, then sends `Ready` and returns.
pub(crate) async fn run(
    probe: ReadinessProbe,
    group: Arc<Group>,
    record: Option<Arc<RunFile>>,
    events: UnboundedSender<SupervisorEvent>,
    service: String,
    generation: u64,
) {
    let port = if probe.port > 0 {
        wait_connectable(connect_host(&probe.host), probe.port).await
    } else {
        wait_listening(&group).await
    };
    debug!(%service, generation, port, "ready");
    if let Some(record) = record {
        // The next agent reports it when it adopts this generation.
        tokio::task::spawn_blocking(move || record.set_port(port))
            .await
            .ok();
    }
    let _ = events.send(SupervisorEvent::Ready {
        service,
        generation,
        port: Some(port),
    });
}

async fn wait_connectable(host: &str, port: u16) -> u16 {
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect((host, port)));
        if let Ok(Ok(_stream)) = attempt.await {
            return port;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_listening(group: &Arc<Group>) -> u16 {
    loop {
        let g = Arc::clone(group);
        // /proc scans are blocking file I/O.
        let found = tokio::task::spawn_blocking(move || listening_port(&g))
            .await
            .ok()
            .flatten();
        if let Some(port) = found {
            return port;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The lowest TCP port in LISTEN state held open by any member of `group`.
pub(crate) fn listening_port(group: &Group) -> Option<u16> {
    let listening = procfs::listening_tcp_ports();
    if listening.is_empty() {
        return None;
    }
    group
        .members()
        .into_iter()
        .flat_map(procfs::socket_inodes)
        .filter_map(|inode| listening.get(&inode).copied())
        .min()
}
