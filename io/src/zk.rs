//! The ZooKeeper client, behind timeouts, speaking the core's request/reply types.

use pop_core::zk::{
    CreateMode, NodeStat, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply, NOT_IN_MULTI,
};
use std::time::Duration;
use thiserror::Error;
use zookeeper_client as zkc;

pub use zkc::{Client, OneshotWatcher, SessionState};

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("cannot reach ZooKeeper at {hosts} within {}s (is it running? `pop zk start` runs a local one)", timeout.as_secs_f64())]
    Unreachable { hosts: String, timeout: Duration },
    #[error("cannot connect to ZooKeeper at {hosts}: {source}")]
    Failed {
        hosts: String,
        #[source]
        source: zkc::Error,
    },
}

/// How to reach ZooKeeper.
#[derive(Debug, Clone)]
pub struct ZkConfig {
    /// Connect string: `host:port[,host:port...][/chroot]`.
    pub hosts: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    /// Every request gives up after this; a write's outcome is then unknown.
    pub op_timeout: Duration,
}

impl ZkConfig {
    pub fn new(hosts: &str) -> Self {
        ZkConfig {
            hosts: hosts.to_string(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens a session, failing within `connect_timeout` with the hosts named.
pub async fn connect(config: &ZkConfig) -> Result<Client, ConnectError> {
    let mut connector = Client::connector();
    connector
        .session_timeout(config.session_timeout)
        .connection_timeout(config.connect_timeout);
    match tokio::time::timeout(config.connect_timeout, connector.connect(&config.hosts)).await {
        Err(_) => Err(ConnectError::Unreachable {
            hosts: config.hosts.clone(),
            timeout: config.connect_timeout,
        }),
        Ok(Err(source)) => Err(ConnectError::Failed {
            hosts: config.hosts.clone(),
            source,
        }),
        Ok(Ok(client)) => Ok(client),
    }
}

pub fn map_error(err: zkc::Error) -> ZkError {
    match err {
        zkc::Error::NoNode => ZkError::NoNode,
        zkc::Error::NodeExists => ZkError::NodeExists,
        zkc::Error::BadVersion => ZkError::BadVersion,
        zkc::Error::NotEmpty => ZkError::NotEmpty,
        zkc::Error::ConnectionLoss => ZkError::ConnectionLoss,
        zkc::Error::SessionExpired => ZkError::SessionExpired,
        zkc::Error::Timeout => ZkError::Timeout,
        other => ZkError::Other(other.to_string()),
    }
}

fn stat(s: &zkc::Stat) -> NodeStat {
    NodeStat {
        version: s.version,
        ephemeral_owner: s.ephemeral_owner,
        mzxid: s.mzxid,
        pzxid: s.pzxid,
    }
}

fn create_options(mode: CreateMode) -> zkc::CreateOptions<'static> {
    match mode {
        CreateMode::Persistent => zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all()),
        CreateMode::Ephemeral => zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all()),
    }
}

/// Runs one request under `timeout`. A watch request also returns its watcher.
pub async fn execute(
    client: &Client,
    op: &ZkOp,
    timeout: Duration,
) -> (ZkReply, Option<OneshotWatcher>) {
    if let ZkOp::Multi { ops } = op {
        return (execute_multi(client, ops, timeout).await, None);
    }
    let work = async {
        match op {
            ZkOp::GetData { path, watch: true } => {
                client.get_and_watch_data(path).await.map(|(data, s, w)| {
                    (
                        ZkReply::Data {
                            data,
                            stat: stat(&s),
                        },
                        Some(w),
                    )
                })
            }
            ZkOp::GetData { path, watch: false } => client.get_data(path).await.map(|(data, s)| {
                (
                    ZkReply::Data {
                        data,
                        stat: stat(&s),
                    },
                    None,
                )
            }),
            ZkOp::GetChildren { path, watch: true } => client
                .get_and_watch_children(path)
                .await
                .map(|(names, s, w)| {
                    let stat = stat(&s);
                    (ZkReply::Children { names, stat }, Some(w))
                }),
            ZkOp::GetChildren { path, watch: false } => {
                client.get_children(path).await.map(|(names, s)| {
                    let stat = stat(&s);
                    (ZkReply::Children { names, stat }, None)
                })
            }
            ZkOp::Create { path, data, mode } => client
                .create(path, data, &create_options(*mode))
                .await
                .map(|_| (ZkReply::Created, None)),
            ZkOp::SetData {
                path,
                data,
                version,
            } => client
                .set_data(path, data, *version)
                .await
                .map(|s| (ZkReply::Set { stat: stat(&s) }, None)),
            ZkOp::Delete { path, version } => client
                .delete(path, *version)
                .await
                .map(|()| (ZkReply::Deleted, None)),
            ZkOp::Multi { .. } => Err(zkc::Error::BadArguments(&NOT_IN_MULTI)),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => (ZkReply::Error(ZkError::Timeout), None),
        Ok(Err(e)) => (ZkReply::Error(map_error(e)), None),
        Ok(Ok(done)) => done,
    }
}

/// Runs creates, sets and deletes as one transaction under `timeout`: every reply, or
/// the index and error of the op that made it apply nothing.
async fn execute_multi(client: &Client, ops: &[ZkOp], timeout: Duration) -> ZkReply {
    let mut writer = client.new_multi_writer();
    for (index, op) in ops.iter().enumerate() {
        let added = match op {
            ZkOp::Create { path, data, mode } => {
                writer.add_create(path, data, &create_options(*mode))
            }
            ZkOp::SetData {
                path,
                data,
                version,
            } => writer.add_set_data(path, data, *version),
            ZkOp::Delete { path, version } => writer.add_delete(path, *version),
            ZkOp::GetData { .. } | ZkOp::GetChildren { .. } | ZkOp::Multi { .. } => {
                Err(zkc::Error::BadArguments(&NOT_IN_MULTI))
            }
        };
        if let Err(e) = added {
            return ZkReply::MultiFailed {
                index,
                error: map_error(e),
            };
        }
    }
    match tokio::time::timeout(timeout, writer.commit()).await {
        Err(_) => ZkReply::Error(ZkError::Timeout),
        Ok(Ok(results)) => ZkReply::Multi {
            replies: results
                .into_iter()
                .map(|r| match r {
                    zkc::MultiWriteResult::Create { .. } => ZkReply::Created,
                    zkc::MultiWriteResult::SetData { stat: s } => ZkReply::Set { stat: stat(&s) },
                    zkc::MultiWriteResult::Delete => ZkReply::Deleted,
                    other => {
                        ZkReply::Error(ZkError::Other(format!("unexpected multi result {other:?}")))
                    }
                })
                .collect(),
        },
        Ok(Err(zkc::MultiWriteError::OperationFailed { index, source })) => ZkReply::MultiFailed {
            index,
            error: map_error(source),
        },
        Ok(Err(zkc::MultiWriteError::RequestFailed { source })) => {
            ZkReply::Error(map_error(source))
        }
    }
}

/// Waits for a one-shot watch; `None` when it ended with the session rather than a node event.
pub async fn watch_event(watcher: OneshotWatcher) -> Option<WatchEvent> {
    let event = watcher.changed().await;
    let kind = match event.event_type {
        zkc::EventType::NodeCreated => WatchKind::Created,
        zkc::EventType::NodeDeleted => WatchKind::Deleted,
        zkc::EventType::NodeDataChanged => WatchKind::DataChanged,
        zkc::EventType::NodeChildrenChanged => WatchKind::ChildrenChanged,
        zkc::EventType::Session => return None,
    };
    Some(WatchEvent {
        path: event.path,
        kind,
    })
}
