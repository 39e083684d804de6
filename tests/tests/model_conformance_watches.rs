//! The simulator's persistent recursive watches (`ZkOp::WatchTree`) against a real
//! ZooKeeper: one session holds a tree watch, others (and itself) change nodes under it,
//! next to it and above it, and the events it receives must be the model's, step by step.
//! On the real server the watch is added and read through production's
//! `pop_io::zk::add_tree_watch` and `tree_events`, so production's mapping is what is
//! compared. (The scripted one-shot watches are in model_conformance.rs.)

use futures_util::StreamExt;
use pop_core::zk::{Acl, CreateMode, NodeStat, SessionId, WatchKind, ZkOp, ZkReply};
use pop_sim::zk_model::ZkModel;
use pop_tests::{Zk, DEADLINE};
use std::time::Duration;
use zookeeper_client as zkc;

const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the watcher's events are waited for after the barrier (they came before it).
const DRAIN: Duration = Duration::from_millis(100);

/// The session holding the tree watch.
const WATCHER: usize = 0;

fn create(path: &str, mode: CreateMode) -> ZkOp {
    ZkOp::Create {
        path: path.into(),
        data: Vec::new(),
        mode,
        acl: Acl::open(),
    }
}

fn set(path: &str) -> ZkOp {
    ZkOp::SetData {
        path: path.into(),
        data: b"x".to_vec(),
        version: None,
    }
}

fn delete(path: &str) -> ZkOp {
    ZkOp::Delete {
        path: path.into(),
        version: None,
    }
}

#[derive(Debug, Clone)]
enum Step {
    Op(usize, ZkOp),
    /// The session's client closes it (its ephemerals go).
    Close(usize),
}

/// Per step: the reply (or `None` for a close) and the watcher's events.
type Record = Vec<(Option<ZkReply>, Vec<(String, WatchKind)>)>;

/// Zxids and raw session ids differ between model and server: a stat keeps its
/// versions, and its owner as the index of our session (or -1 for a persistent node).
fn comparable(reply: ZkReply, ids: &[i64]) -> ZkReply {
    let stat = |mut st: NodeStat| {
        st.mzxid = 0;
        st.pzxid = 0;
        st.ephemeral_owner = ids
            .iter()
            .position(|&id| id == st.ephemeral_owner)
            .map_or(-1, |i| i as i64);
        st
    };
    match reply {
        ZkReply::Data { data, stat: st } => ZkReply::Data {
            data,
            stat: stat(st),
        },
        ZkReply::Set { stat: st } => ZkReply::Set { stat: stat(st) },
        other => other,
    }
}

fn run_model(sessions: usize, steps: &[Step]) -> Record {
    let mut zk = ZkModel::new();
    let ids: Vec<SessionId> = (0..sessions).map(|_| zk.open_session()).collect();
    let mut record = Vec::new();
    for step in steps {
        let (reply, notes) = match step {
            Step::Op(s, op) => {
                let (reply, notes) = zk.apply(ids[*s], op);
                let raw: Vec<i64> = ids.iter().map(|id| id.0).collect();
                (Some(comparable(reply, &raw)), notes)
            }
            Step::Close(s) => (None, zk.expire(ids[*s])),
        };
        let events = notes
            .into_iter()
            .filter(|(s, _)| *s == ids[WATCHER])
            .map(|(_, e)| (e.path, e.kind))
            .collect();
        record.push((reply, events));
    }
    record
}

async fn connect(hosts: &str) -> zkc::Client {
    let mut connector = zkc::Client::connector();
    connector.session_timeout(Duration::from_secs(4));
    tokio::time::timeout(DEADLINE, connector.connect(hosts))
        .await
        .expect("connecting in time")
        .expect("connecting")
}

async fn run_real(zk: &Zk, sessions: usize, steps: &[Step]) -> Record {
    let mut clients = Vec::new();
    for _ in 0..sessions {
        clients.push(Some(connect(&zk.hosts()).await));
    }
    let ids: Vec<i64> = clients.iter().flatten().map(|c| c.session_id().0).collect();
    let mut events = None;
    let mut record = Vec::new();
    for step in steps {
        let reply = match step {
            Step::Op(s, ZkOp::WatchTree { path }) => {
                let client = clients[*s].as_ref().expect("open");
                match pop_io::zk::add_tree_watch(client, path, OP_TIMEOUT).await {
                    Ok(watcher) => {
                        events = Some(Box::pin(pop_io::zk::tree_events(watcher)));
                        Some(ZkReply::Watching)
                    }
                    Err(e) => Some(ZkReply::Error(e)),
                }
            }
            Step::Op(s, op) => {
                let client = clients[*s].as_ref().expect("open");
                let (reply, _) = pop_io::zk::execute(client, op, OP_TIMEOUT).await;
                Some(comparable(reply, &ids))
            }
            Step::Close(s) => {
                let client = clients[*s].take().expect("open");
                let mut state = client.state_watcher();
                drop(client);
                let closed = async { while !state.changed().await.is_terminated() {} };
                tokio::time::timeout(DEADLINE, closed)
                    .await
                    .expect("closed in time");
                None
            }
        };
        // A barrier: the server sends the watcher's events before the reply to its
        // next request, and the client hands them on before that reply.
        let watcher = clients[WATCHER].as_ref().expect("the watcher stays");
        watcher.get_data("/").await.expect("barrier");
        let mut seen = Vec::new();
        if let Some(stream) = events.as_mut() {
            while let Ok(Some(e)) = tokio::time::timeout(DRAIN, stream.next()).await {
                seen.push((e.path, e.kind));
            }
        }
        record.push((reply, seen));
    }
    record
}

fn conform(sessions: usize, steps: &[Step]) {
    let expected = run_model(sessions, steps);
    let zk = Zk::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let actual = runtime.block_on(run_real(&zk, sessions, steps));
    for ((m, r), step) in expected.iter().zip(&actual).zip(steps) {
        assert_eq!(m, r, "model (left) and server (right) differ at {step:?}");
    }
    assert_eq!(expected.len(), actual.len());
}

#[test]
fn a_tree_watch_hears_every_change_under_its_node_and_stays() {
    use CreateMode::{Ephemeral, Persistent};
    let steps = vec![
        // On a node that does not exist yet.
        Step::Op(WATCHER, ZkOp::WatchTree { path: "/m".into() }),
        Step::Op(1, create("/m", Persistent)),
        Step::Op(1, create("/m/a", Persistent)),
        Step::Op(1, set("/m/a")),
        Step::Op(1, set("/m/a")),
        Step::Op(1, create("/m/a/b", Persistent)),
        Step::Op(1, set("/m")),
        // Its own writes are heard too.
        Step::Op(WATCHER, set("/m/a")),
        Step::Op(WATCHER, create("/m/w", Ephemeral)),
        // Not under it: a sibling sharing its name's prefix, and the parent.
        Step::Op(1, create("/mx", Persistent)),
        Step::Op(1, set("/")),
        // Reads fire nothing, failed writes neither.
        Step::Op(
            1,
            ZkOp::GetData {
                path: "/m/a".into(),
                watch: false,
            },
        ),
        Step::Op(1, create("/m/a", Persistent)),
        Step::Op(1, delete("/m/a")),
        Step::Op(1, delete("/m/a/b")),
        Step::Op(1, delete("/m/a")),
        // Ephemerals of an ending session go with events, as deletes by anyone.
        Step::Op(2, create("/m/e", Ephemeral)),
        Step::Close(2),
        Step::Op(1, delete("/m/w")),
        // The watched node itself, deleted and created again: the watch stays.
        Step::Op(1, delete("/m")),
        Step::Op(1, create("/m", Persistent)),
        Step::Op(1, create("/m/again", Persistent)),
    ];
    conform(3, &steps);
}
