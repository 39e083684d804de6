//! The ZooKeeper client, behind timeouts, speaking the core's request/reply types.

use crate::credential::Credential;
use crate::tls::TlsConfig;
use pop_core::zk::{
    Acl, CreateMode, NodeStat, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply, CHECK_ONLY_IN_MULTI,
    NOT_IN_MULTI,
};
use std::time::Duration;
use thiserror::Error;
use zookeeper_client as zkc;

pub use zkc::{Client, OneshotWatcher, SessionState};

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("cannot reach ZooKeeper at {hosts} within {}s (is it running? `pop zk start` runs a local one)", timeout.as_secs_f64())]
    Unreachable { hosts: String, timeout: Duration },
    #[error("ZooKeeper at {hosts} {}", refusal(user))]
    AuthFailed { hosts: String, user: String },
    #[error("cannot reach ZooKeeper at {hosts} over TLS: {detail}")]
    Tls { hosts: String, detail: String },
    #[error("ZooKeeper at {hosts} accepts connections but opened no session within {}s (is it overloaded or stopped? or is it a TLS port, a secureClientPort? then give --tls-ca)", timeout.as_secs_f64())]
    NoSession { hosts: String, timeout: Duration },
    #[error("cannot connect to ZooKeeper at {hosts}: {source}")]
    Failed {
        hosts: String,
        #[source]
        source: zkc::Error,
    },
}

/// What an authentication failure means: a refused credential, or, without one, a
/// server that requires authentication (`pop zk start --require-auth`, ZooKeeper's
/// `enforce.auth.enabled`: it closes an anonymous session at its first request).
fn refusal(user: &str) -> String {
    if user.is_empty() {
        "requires authentication, and pop has no credential (give one with --auth \
         USER:PASSWORD, POP_AUTH or a credentials file)"
            .to_string()
    } else {
        format!("refused the credential of user {user} (authentication failed)")
    }
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
    /// Authenticates the session (digest scheme); anonymous without.
    pub auth: Vec<Credential>,
    /// Connect over TLS (every server of `hosts` is a secure client port); plain without.
    pub tls: Option<TlsConfig>,
}

impl ZkConfig {
    pub fn new(hosts: &str) -> Self {
        ZkConfig {
            hosts: hosts.to_string(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(5),
            auth: Vec::new(),
            tls: None,
        }
    }
}

/// Opens a session, failing within `connect_timeout` with the hosts named.
pub async fn connect(config: &ZkConfig) -> Result<Client, ConnectError> {
    let mut connector = Client::connector();
    connector
        .session_timeout(config.session_timeout)
        .connection_timeout(config.connect_timeout);
    for credential in &config.auth {
        connector.auth("digest".to_string(), credential.auth_bytes());
    }
    let connecting = async {
        match &config.tls {
            Some(tls) => {
                connector.tls(tls.client_options());
                connector.secure_connect(&config.hosts).await
            }
            None => connector.connect(&config.hosts).await,
        }
    };
    match tokio::time::timeout(config.connect_timeout, connecting).await {
        Err(_) | Ok(Err(zkc::Error::Timeout | zkc::Error::ConnectionLoss)) => {
            Err(diagnose(config).await)
        }
        Ok(Err(zkc::Error::AuthFailed)) => Err(ConnectError::AuthFailed {
            hosts: config.hosts.clone(),
            user: config
                .auth
                .iter()
                .map(Credential::user)
                .collect::<Vec<_>>()
                .join(", "),
        }),
        Ok(Err(source)) => Err(ConnectError::Failed {
            hosts: config.hosts.clone(),
            source,
        }),
        Ok(Ok(client)) => Ok(client),
    }
}

/// Why no session opened: the client only says it timed out, so look at the first
/// server ourselves (a TLS handshake when TLS is configured, else whether it accepts TCP).
async fn diagnose(config: &ZkConfig) -> ConnectError {
    let hosts = config.hosts.clone();
    let timeout = config.connect_timeout;
    let probe_timeout = Duration::from_secs(2);
    let tls = config.tls.clone();
    let probe = {
        let hosts = hosts.clone();
        tokio::task::spawn_blocking(move || match tls {
            Some(tls) => tls
                .diagnose(&hosts, probe_timeout)
                .map_or(Finding::Nothing, Finding::Tls),
            None => {
                let accepts = crate::tls::first_server(&hosts).is_some_and(|(host, port)| {
                    crate::tls::connect(&format!("{host}:{port}"), probe_timeout).is_ok()
                });
                if accepts {
                    Finding::AcceptsPlain
                } else {
                    Finding::Nothing
                }
            }
        })
    };
    match probe.await {
        Ok(Finding::Tls(detail)) => ConnectError::Tls { hosts, detail },
        Ok(Finding::AcceptsPlain) => ConnectError::NoSession { hosts, timeout },
        Ok(Finding::Nothing) | Err(_) => ConnectError::Unreachable { hosts, timeout },
    }
}

/// What [`diagnose`] found out about the first server.
enum Finding {
    /// What went wrong with TLS.
    Tls(String),
    /// It accepts a plain TCP connection (and yet no session opened).
    AcceptsPlain,
    Nothing,
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
        zkc::Error::NoAuth => ZkError::NoAuth,
        other => ZkError::Other(other.to_string()),
    }
}

/// Why [`namespace_access`] could not tell.
#[derive(Debug)]
pub enum AccessError {
    Retry(String),
    Refused(String),
}

/// Whether pop's namespace is secured: `Some(admin digest id)` if so, read from the
/// marker (the admin's user) and `/pop/admin` (its digest id, readable by machines).
pub async fn namespace_access(config: &ZkConfig) -> Result<Option<String>, AccessError> {
    use pop_core::access::{digest_user, Marker};
    let client = connect(config).await.map_err(|e| match e {
        ConnectError::AuthFailed { .. } => AccessError::Refused(e.to_string()),
        other => AccessError::Retry(other.to_string()),
    })?;
    let retry = |e: zkc::Error| AccessError::Retry(format!("reading /pop: {e}"));
    let data = match tokio::time::timeout(config.op_timeout, client.get_data(pop_core::paths::POP))
        .await
    {
        Err(_) => return Err(AccessError::Retry("reading /pop: timed out".into())),
        Ok(Err(zkc::Error::NoNode)) => return Ok(None),
        Ok(Err(e)) => return Err(retry(e)),
        Ok(Ok((data, _))) => data,
    };
    let admin = match Marker::parse(&data) {
        Ok(Marker::Secured { admin }) => admin,
        // An unreadable marker is reported by the commands; the agent acts as before.
        Ok(Marker::Open) | Err(_) => return Ok(None),
    };
    match tokio::time::timeout(config.op_timeout, client.get_data(pop_core::access::ADMIN)).await {
        Err(_) => Err(AccessError::Retry("reading /pop/admin: timed out".into())),
        Ok(Err(zkc::Error::NoAuth)) => Err(AccessError::Refused(format!(
            "ZooKeeper refused reading {}",
            pop_core::access::ADMIN
        ))),
        Ok(Err(e)) => Err(AccessError::Retry(format!("reading /pop/admin: {e}"))),
        Ok(Ok((data, _))) => {
            let id = String::from_utf8_lossy(&data).into_owned();
            if digest_user(&id) == admin && id.contains(':') {
                Ok(Some(id))
            } else {
                Err(AccessError::Refused(format!(
                    "/pop/admin does not hold {admin}'s digest id; run `pop init --admin-identity ... --force`"
                )))
            }
        }
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

/// The client's ACL entries for ours.
pub fn client_acl(acl: &Acl) -> Vec<zkc::Acl> {
    acl.entries()
        .iter()
        .map(|e| {
            let perms = [
                (pop_core::zk::Perms::READ, zkc::Permission::READ),
                (pop_core::zk::Perms::WRITE, zkc::Permission::WRITE),
                (pop_core::zk::Perms::CREATE, zkc::Permission::CREATE),
                (pop_core::zk::Perms::DELETE, zkc::Permission::DELETE),
                (pop_core::zk::Perms::ADMIN, zkc::Permission::ADMIN),
            ]
            .into_iter()
            .filter(|(ours, _)| e.perms.has(*ours))
            .fold(zkc::Permission::NONE, |all, (_, theirs)| all | theirs);
            zkc::Acl::new(perms, zkc::AuthId::new(&e.scheme, &e.id))
        })
        .collect()
}

fn create_options(mode: CreateMode, acl: &[zkc::Acl]) -> zkc::CreateOptions<'_> {
    let acls = zkc::Acls::new(acl);
    match mode {
        CreateMode::Persistent => zkc::CreateMode::Persistent.with_acls(acls),
        CreateMode::Ephemeral => zkc::CreateMode::Ephemeral.with_acls(acls),
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
            ZkOp::Create {
                path,
                data,
                mode,
                acl,
            } => {
                let acl = client_acl(acl);
                client
                    .create(path, data, &create_options(*mode, &acl))
                    .await
                    .map(|_| (ZkReply::Created, None))
            }
            ZkOp::SetAcl { path, acl, version } => client
                .set_acl(path, &client_acl(acl), *version)
                .await
                .map(|s| (ZkReply::Set { stat: stat(&s) }, None)),
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
            ZkOp::Check { .. } => Err(zkc::Error::BadArguments(&CHECK_ONLY_IN_MULTI)),
            // Its watcher must be kept (dropped, it is removed): see `add_tree_watch`.
            ZkOp::WatchTree { .. } => Err(zkc::Error::BadArguments(&TREE_WATCH_APART)),
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
            ZkOp::Create {
                path,
                data,
                mode,
                acl,
            } => {
                let acl = client_acl(acl);
                writer.add_create(path, data, &create_options(*mode, &acl))
            }
            ZkOp::SetData {
                path,
                data,
                version,
            } => writer.add_set_data(path, data, *version),
            ZkOp::Delete { path, version } => writer.add_delete(path, *version),
            ZkOp::Check { path, version } => writer.add_check_version(path, *version),
            ZkOp::GetData { .. }
            | ZkOp::GetChildren { .. }
            | ZkOp::SetAcl { .. }
            | ZkOp::WatchTree { .. }
            | ZkOp::Multi { .. } => Err(zkc::Error::BadArguments(&NOT_IN_MULTI)),
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
                    zkc::MultiWriteResult::Check => ZkReply::Checked,
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

/// Why `execute` refuses a tree watch: `add_tree_watch` runs it and gives its watcher.
const TREE_WATCH_APART: &str = "a tree watch is added by add_tree_watch";

/// Adds a persistent recursive watch on `path` ([`ZkOp::WatchTree`]) under `timeout`.
/// A server older than 3.6 answers `Unimplemented` ("unimplemented operation").
pub async fn add_tree_watch(
    client: &Client,
    path: &str,
    timeout: Duration,
) -> Result<zkc::PersistentWatcher, ZkError> {
    let added = client.watch(path, zkc::AddWatchMode::PersistentRecursive);
    match tokio::time::timeout(timeout, added).await {
        Err(_) => Err(ZkError::Timeout),
        Ok(Err(e)) => Err(map_error(e)),
        Ok(Ok(watcher)) => Ok(watcher),
    }
}

/// What a node event says happened; `None` for a session event.
fn node_kind(event_type: zkc::EventType) -> Option<WatchKind> {
    Some(match event_type {
        zkc::EventType::NodeCreated => WatchKind::Created,
        zkc::EventType::NodeDeleted => WatchKind::Deleted,
        zkc::EventType::NodeDataChanged => WatchKind::DataChanged,
        zkc::EventType::NodeChildrenChanged => WatchKind::ChildrenChanged,
        zkc::EventType::Session => return None,
    })
}

/// The node events of a persistent watch, until its session ends. The client also hands
/// it the session's state changes, which are left out: the session's own events say
/// those (and the watcher must not be polled past a terminal one).
pub fn tree_events(
    watcher: zkc::PersistentWatcher,
) -> impl futures_util::Stream<Item = WatchEvent> + Send {
    futures_util::stream::unfold(watcher, |mut watcher| async move {
        loop {
            let event = watcher.changed().await;
            let Some(kind) = node_kind(event.event_type) else {
                if event.session_state.is_terminated() {
                    return None;
                }
                continue;
            };
            let event = WatchEvent {
                path: event.path,
                kind,
            };
            return Some((event, watcher));
        }
    })
}

/// Waits for a one-shot watch; `None` when it ended with the session rather than a node event.
pub async fn watch_event(watcher: OneshotWatcher) -> Option<WatchEvent> {
    let event = watcher.changed().await;
    let kind = node_kind(event.event_type)?;
    Some(WatchEvent {
        path: event.path,
        kind,
    })
}
