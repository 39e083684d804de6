//! The simulator's ZooKeeper model against a real server: scripted scenarios run on both,
//! and everything the agent could observe must agree.
//!
//! Each scenario is a list of steps by numbered sessions. On the real server every session
//! is a `zookeeper-client` connection through its own TCP proxy (so that it can be made to
//! time out), and requests go through production's `pop_io::zk::execute` (multis too, as
//! `ZkOp::Multi`, the way the CLI's plans send them), so production's mapping of
//! replies and errors is what is compared. Compared per step: the reply (data, version,
//! ephemeral owner as "which of our sessions", children sorted, error) and the watch events
//! each session received, in order. At the end the trees are compared, child versions
//! included, and so are the session timeouts the server negotiated.
//!
//! Known differences, not observable by the agent, and how they are handled here:
//! - When a session ends, the server deletes its ephemerals in hash-set order; the model
//!   deletes them in path order. Events of a step ending a session are compared sorted.
//! - The server sends one event per session and path; the client hands it to every
//!   watcher registered on the path. Events are compared as the client delivers them, one
//!   per watcher (production awaits each watcher on its own task), which the model counts.
//! - Raw session ids, zxids and times differ and are not compared.
//!
//! ACL scenarios authenticate sessions mid-scenario (`Step::Auth`, the client's
//! `addAuth`), and also compare `getACL` (digest ids whole or as `user:x`) and `exists`
//! (which the server answers without checking any ACL). The final tree is read by a
//! session authenticated with every credential the scenario used, and holds each node's
//! ACL (by user).

use pop_core::digest::digest_id;
use pop_core::zk::{
    Acl, CreateMode, NodeStat, Perms, SessionId, WatchKind, ZkError, ZkOp, ZkReply,
};
use pop_sim::zk_model::{Notification, ZkModel, INVALID_ACL, NO_CHILDREN_FOR_EPHEMERALS};
use pop_tests::{TcpProxy, Zk, DEADLINE};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zookeeper_client as zkc;

/// The test server's tickTime (`Zk::start`).
const TICK_MS: u64 = 200;
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that stays up for the whole scenario (the server's maximum, 20 ticks).
const LONG: Duration = Duration::from_secs(4);
/// A session the scenario lets time out (the server's minimum, 2 ticks).
const SHORT: Duration = Duration::from_millis(400);

#[derive(Debug, Clone)]
enum Step {
    Op(usize, ZkOp),
    Multi(usize, Vec<ZkOp>),
    /// The session's client closes it.
    Close(usize),
    /// The session is no longer heard from (its proxy drops everything) until the server
    /// expires it; then its connection works again and the client learns of the expiry.
    Expire(usize),
    /// The session authenticates: `addAuth("digest", "user:password")`.
    Auth(usize, &'static str),
    /// `getACL`.
    GetAcl(usize, &'static str),
    /// `exists` (no watch).
    Exists(usize, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Persistent,
    Ours(usize),
    Stranger,
}

/// A reply as the agent sees it, with session ids made comparable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Data {
        data: String,
        version: i32,
        owner: Owner,
    },
    Children(Vec<String>),
    Created,
    Set {
        version: i32,
        owner: Owner,
    },
    Deleted,
    Checked,
    Watching,
    Error(ZkError),
    Multi(Vec<Seen>),
    MultiFailed(usize, ZkError),
    /// A `getACL`: each entry as `scheme:id=perms`, ids as the server showed them.
    Acl(Vec<String>),
    /// An `exists`: the node's version and owner, if it is there.
    Exists(Option<(i32, Owner)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Reply(Seen),
    Ended,
    Authenticated,
}

/// Watch events per session, in the order received.
type Events = Vec<Vec<(String, WatchKind)>>;

#[derive(Debug, PartialEq, Eq)]
struct Record {
    step: String,
    outcome: Outcome,
    events: Events,
}

#[derive(Debug, PartialEq, Eq)]
struct TreeNode {
    path: String,
    data: String,
    version: i32,
    cversion: i32,
    owner: Owner,
    /// The ACL by user (`Acl`'s display), as the tree's reader may see it.
    acl: String,
}

#[derive(Debug, PartialEq, Eq)]
struct Run {
    timeouts: Vec<Duration>,
    records: Vec<Record>,
    tree: Vec<TreeNode>,
}

fn owner(raw: i64, ids: &[i64]) -> Owner {
    if raw == 0 {
        return Owner::Persistent;
    }
    ids.iter()
        .position(|&id| id == raw)
        .map_or(Owner::Stranger, Owner::Ours)
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn seen(reply: ZkReply, ids: &[i64]) -> Seen {
    let stat = |s: NodeStat| (s.version, owner(s.ephemeral_owner, ids));
    match reply {
        ZkReply::Data { data, stat: s } => {
            let (version, owner) = stat(s);
            Seen::Data {
                data: text(&data),
                version,
                owner,
            }
        }
        ZkReply::Children { mut names, .. } => {
            names.sort();
            Seen::Children(names)
        }
        ZkReply::Created => Seen::Created,
        ZkReply::Set { stat: s } => {
            let (version, owner) = stat(s);
            Seen::Set { version, owner }
        }
        ZkReply::Deleted => Seen::Deleted,
        ZkReply::Checked => Seen::Checked,
        // Tree watches are compared in model_conformance_watches.rs.
        ZkReply::Watching => Seen::Watching,
        ZkReply::Error(e) => Seen::Error(e),
        ZkReply::Multi { replies } => {
            Seen::Multi(replies.into_iter().map(|r| seen(r, ids)).collect())
        }
        ZkReply::MultiFailed { index, error } => Seen::MultiFailed(index, error),
    }
}

fn acl_entries(acl: &Acl) -> Vec<String> {
    acl.entries()
        .iter()
        .map(|e| format!("{}:{}={}", e.scheme, e.id, e.perms))
        .collect()
}

/// The client's ACL as the core's.
fn core_acl(acl: &[zkc::Acl]) -> Acl {
    acl.iter().fold(Acl::none(), |out, entry| {
        let perms = [
            (zkc::Permission::READ, Perms::READ),
            (zkc::Permission::WRITE, Perms::WRITE),
            (zkc::Permission::CREATE, Perms::CREATE),
            (zkc::Permission::DELETE, Perms::DELETE),
            (zkc::Permission::ADMIN, Perms::ADMIN),
        ]
        .into_iter()
        .filter(|(theirs, _)| entry.permission().has(*theirs))
        .fold(Perms(0), |all, (_, ours)| all.and(ours));
        match entry.scheme() {
            "digest" => out.digest(entry.id(), perms),
            "world" if entry.id() == "anyone" => out.anyone(perms),
            other => panic!("unexpected ACL scheme {other}:{}", entry.id()),
        }
    })
}

/// Events of a step that ends a session come in an order the model does not reproduce.
fn normalise(step: &Step, mut events: Events) -> Events {
    if matches!(step, Step::Close(_) | Step::Expire(_)) {
        for list in &mut events {
            list.sort_by_key(|(path, kind)| (path.clone(), format!("{kind:?}")));
        }
    }
    events
}

// ---------------------------------------------------------------------------------------
// The model

fn run_model(timeouts: &[Duration], steps: &[Step]) -> Run {
    let mut zk = ZkModel::with_tick(TICK_MS);
    let mut now = 0;
    let ids: Vec<SessionId> = timeouts
        .iter()
        .map(|&t| zk.open_session_with_timeout(now, t))
        .collect();
    let raw: Vec<i64> = ids.iter().map(|s| s.0).collect();
    let negotiated = ids
        .iter()
        .map(|&s| zk.session(s).and_then(|s| s.timeout).unwrap_or_default())
        .collect();
    let events_of = |notes: Vec<Notification>| {
        let mut events: Events = vec![Vec::new(); ids.len()];
        for (s, e) in notes {
            if let Some(i) = ids.iter().position(|&id| id == s) {
                events[i].push((e.path, e.kind));
            }
        }
        events
    };
    let mut records = Vec::new();
    for step in steps {
        let (outcome, notes) = match step {
            Step::Op(s, op) => {
                let (reply, notes) = zk.apply(ids[*s], op);
                (Outcome::Reply(seen(reply, &raw)), notes)
            }
            Step::Multi(s, ops) => {
                let multi = ZkOp::Multi { ops: ops.clone() };
                let (reply, notes) = zk.apply(ids[*s], &multi);
                (Outcome::Reply(seen(reply, &raw)), notes)
            }
            Step::Close(s) => (Outcome::Ended, zk.expire(ids[*s])),
            Step::Auth(s, credential) => {
                zk.add_auth(ids[*s], credential);
                (Outcome::Authenticated, Vec::new())
            }
            Step::GetAcl(s, path) => {
                let seen = match zk.get_acl(ids[*s], path) {
                    Ok((acl, _)) => Seen::Acl(acl_entries(&acl)),
                    Err(e) => Seen::Error(e),
                };
                (Outcome::Reply(seen), Vec::new())
            }
            Step::Exists(_, path) => {
                let stat = zk
                    .get(path)
                    .map(|n| (n.version, owner(n.ephemeral_owner, &raw)));
                (Outcome::Reply(Seen::Exists(stat)), Vec::new())
            }
            Step::Expire(s) => {
                // Everyone else is heard from; the session times out on the model's clock.
                now += 60_000;
                for (i, &id) in ids.iter().enumerate() {
                    if i != *s {
                        zk.touch(id, now);
                    }
                }
                let mut expired = zk.expire_idle(now);
                assert_eq!(expired.len(), 1, "model expired {expired:?}");
                let (id, notes) = expired.remove(0);
                assert_eq!(id, ids[*s]);
                // Its connection is dead: its own watches' events never reach it.
                let notes = notes.into_iter().filter(|(to, _)| *to != id).collect();
                (Outcome::Ended, notes)
            }
        };
        records.push(Record {
            step: format!("{step:?}"),
            outcome,
            events: normalise(step, events_of(notes)),
        });
    }
    let tree = zk
        .paths()
        .filter(|(p, _)| p.as_str() != "/")
        .map(|(p, n)| TreeNode {
            path: p.clone(),
            data: text(&n.data),
            version: n.version,
            cversion: n.cversion,
            owner: owner(n.ephemeral_owner, &raw),
            acl: n.acl.to_string(),
        })
        .collect();
    Run {
        timeouts: negotiated,
        records,
        tree,
    }
}

// ---------------------------------------------------------------------------------------
// The real server

struct Real<'a> {
    zk: &'a Zk,
    proxies: Vec<TcpProxy>,
    clients: Vec<Option<zkc::Client>>,
    ids: Vec<i64>,
    /// Events received by each session's watchers since the last step.
    events: Arc<Mutex<Events>>,
    /// Sessions closed or expired.
    ended: Vec<usize>,
}

async fn connect(hosts: &str, timeout: Duration) -> zkc::Client {
    let mut connector = zkc::Client::connector();
    connector.session_timeout(timeout);
    tokio::time::timeout(DEADLINE, connector.connect(hosts))
        .await
        .expect("connecting in time")
        .expect("connecting")
}

impl Real<'_> {
    fn client(&self, s: usize) -> &zkc::Client {
        self.clients[s]
            .as_ref()
            .unwrap_or_else(|| panic!("session {s} was closed"))
    }

    async fn op(&mut self, s: usize, op: &ZkOp) -> Seen {
        let (reply, watcher) = pop_io::zk::execute(self.client(s), op, OP_TIMEOUT).await;
        if let Some(w) = watcher {
            let events = self.events.clone();
            tokio::spawn(async move {
                if let Some(e) = pop_io::zk::watch_event(w).await {
                    events.lock().expect("events")[s].push((e.path, e.kind));
                }
            });
        }
        seen(reply, &self.ids)
    }

    async fn close(&mut self, s: usize) {
        let client = self.clients[s].take().expect("session open");
        let mut state = client.state_watcher();
        // Dropping the last clone of the client sends the close; the server answers once
        // the session's ephemerals are gone.
        drop(client);
        let closed = async { while !state.changed().await.is_terminated() {} };
        tokio::time::timeout(DEADLINE, closed)
            .await
            .expect("the session closes");
        self.ended.push(s);
    }

    async fn expire(&mut self, s: usize) {
        self.proxies[s].partition();
        let end = Instant::now() + DEADLINE;
        while self.zk.session_alive(self.ids[s]) {
            assert!(Instant::now() < end, "session {s} did not expire");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // New connections go through again: the client hears that its session expired.
        self.proxies[s].heal();
        self.ended.push(s);
    }

    /// Waits until every event caused by the last step has reached its watcher: the server
    /// sends a session its events before the reply to any later request of that session,
    /// and the client hands them to the watchers before completing the request.
    async fn barrier(&mut self) -> Events {
        for (s, client) in self.clients.iter().enumerate() {
            if let (Some(c), false) = (client, self.ended.contains(&s)) {
                tokio::time::timeout(OP_TIMEOUT, c.get_data("/"))
                    .await
                    .expect("barrier in time")
                    .expect("barrier read");
            }
        }
        // Let the woken watcher tasks run (a current-thread runtime runs them in order).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let mut events = self.events.lock().expect("events");
        std::mem::replace(&mut *events, vec![Vec::new(); self.ids.len()])
    }

    async fn tree(&self, path: &str, credentials: &[&str], out: &mut Vec<TreeNode>) {
        let client = connect(&self.zk.hosts(), LONG).await;
        for credential in credentials {
            tokio::time::timeout(
                OP_TIMEOUT,
                client.auth("digest".into(), credential.as_bytes().to_vec()),
            )
            .await
            .expect("authenticating in time")
            .expect("authenticating");
        }
        let mut todo = vec![path.to_string()];
        while let Some(p) = todo.pop() {
            let (names, stat) = client.get_children(&p).await.expect("listing");
            if p != "/" {
                let (data, _) = client.get_data(&p).await.expect("reading");
                let (acl, _) = client.get_acl(&p).await.expect("reading the ACL");
                out.push(TreeNode {
                    path: p.clone(),
                    data: text(&data),
                    version: stat.version,
                    cversion: stat.cversion,
                    owner: owner(stat.ephemeral_owner, &self.ids),
                    acl: core_acl(&acl).to_string(),
                });
            }
            for name in names {
                let child = if p == "/" {
                    format!("/{name}")
                } else {
                    format!("{p}/{name}")
                };
                if child != "/zookeeper" {
                    todo.push(child);
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

async fn run_real(zk: &Zk, timeouts: &[Duration], steps: &[Step]) -> Run {
    let upstream = zk.server.addr();
    let proxies: Vec<TcpProxy> = timeouts
        .iter()
        .map(|_| TcpProxy::start(upstream).expect("proxy"))
        .collect();
    let mut clients = Vec::new();
    for (proxy, &t) in proxies.iter().zip(timeouts) {
        clients.push(Some(connect(&proxy.connect_string(), t).await));
    }
    let ids = clients.iter().flatten().map(|c| c.session_id().0).collect();
    let negotiated = clients
        .iter()
        .flatten()
        .map(zkc::Client::session_timeout)
        .collect();
    let mut real = Real {
        zk,
        proxies,
        clients,
        ids,
        events: Arc::new(Mutex::new(vec![Vec::new(); timeouts.len()])),
        ended: Vec::new(),
    };
    let mut records = Vec::new();
    for step in steps {
        let outcome = match step {
            Step::Op(s, op) => Outcome::Reply(real.op(*s, op).await),
            Step::Multi(s, ops) => {
                let multi = ZkOp::Multi { ops: ops.clone() };
                Outcome::Reply(real.op(*s, &multi).await)
            }
            Step::Close(s) => {
                real.close(*s).await;
                Outcome::Ended
            }
            Step::Expire(s) => {
                real.expire(*s).await;
                Outcome::Ended
            }
            Step::Auth(s, credential) => {
                let auth = real
                    .client(*s)
                    .auth("digest".into(), credential.as_bytes().to_vec());
                tokio::time::timeout(OP_TIMEOUT, auth)
                    .await
                    .expect("authenticating in time")
                    .expect("authenticating");
                Outcome::Authenticated
            }
            Step::GetAcl(s, path) => {
                let got = tokio::time::timeout(OP_TIMEOUT, real.client(*s).get_acl(path))
                    .await
                    .expect("getACL in time");
                Outcome::Reply(match got {
                    Ok((acl, _)) => Seen::Acl(acl_entries(&core_acl(&acl))),
                    Err(e) => Seen::Error(pop_io::zk::map_error(e)),
                })
            }
            Step::Exists(s, path) => {
                let got = tokio::time::timeout(OP_TIMEOUT, real.client(*s).check_stat(path))
                    .await
                    .expect("exists in time")
                    .expect("exists");
                let ids = &real.ids;
                Outcome::Reply(Seen::Exists(
                    got.map(|stat| (stat.version, owner(stat.ephemeral_owner, ids))),
                ))
            }
        };
        let events = real.barrier().await;
        records.push(Record {
            step: format!("{step:?}"),
            outcome,
            events: normalise(step, events),
        });
    }
    let credentials: Vec<&str> = steps
        .iter()
        .filter_map(|step| match step {
            Step::Auth(_, credential) => Some(*credential),
            _ => None,
        })
        .collect();
    let mut tree = Vec::new();
    real.tree("/", &credentials, &mut tree).await;
    Run {
        timeouts: negotiated,
        records,
        tree,
    }
}

/// Runs `steps` on the model and on a fresh real server and asserts they agree.
fn conform(timeouts: &[Duration], steps: &[Step]) {
    let expected = run_model(timeouts, steps);
    let zk = Zk::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let actual = runtime.block_on(run_real(&zk, timeouts, steps));
    assert_eq!(expected.timeouts, actual.timeouts, "negotiated timeouts");
    for (m, r) in expected.records.iter().zip(&actual.records) {
        assert_eq!(m, r, "model (left) and server (right) differ");
    }
    assert_eq!(expected.records.len(), actual.records.len());
    assert_eq!(expected.tree, actual.tree, "final trees");
}

// ---------------------------------------------------------------------------------------
// Steps

fn create(s: usize, path: &str, data: &str) -> Step {
    Step::Op(s, create_op(path, data, CreateMode::Persistent))
}

fn ephemeral(s: usize, path: &str) -> Step {
    Step::Op(s, create_op(path, "", CreateMode::Ephemeral))
}

fn create_op(path: &str, data: &str, mode: CreateMode) -> ZkOp {
    ZkOp::Create {
        path: path.into(),
        data: data.as_bytes().to_vec(),
        mode,
        acl: Default::default(),
    }
}

fn set_op(path: &str, data: &str, version: Option<i32>) -> ZkOp {
    ZkOp::SetData {
        path: path.into(),
        data: data.as_bytes().to_vec(),
        version,
    }
}

fn check_op(path: &str, version: i32) -> ZkOp {
    ZkOp::Check {
        path: path.into(),
        version,
    }
}

fn delete_op(path: &str, version: Option<i32>) -> ZkOp {
    ZkOp::Delete {
        path: path.into(),
        version,
    }
}

fn set(s: usize, path: &str, data: &str, version: Option<i32>) -> Step {
    Step::Op(s, set_op(path, data, version))
}

fn delete(s: usize, path: &str, version: Option<i32>) -> Step {
    Step::Op(s, delete_op(path, version))
}

fn get(s: usize, path: &str) -> Step {
    Step::Op(
        s,
        ZkOp::GetData {
            path: path.into(),
            watch: false,
        },
    )
}

fn watch_data(s: usize, path: &str) -> Step {
    Step::Op(
        s,
        ZkOp::GetData {
            path: path.into(),
            watch: true,
        },
    )
}

fn list(s: usize, path: &str) -> Step {
    Step::Op(
        s,
        ZkOp::GetChildren {
            path: path.into(),
            watch: false,
        },
    )
}

fn watch_children(s: usize, path: &str) -> Step {
    Step::Op(
        s,
        ZkOp::GetChildren {
            path: path.into(),
            watch: true,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[test]
fn create_get_set_delete_with_versions() {
    conform(
        &[LONG],
        &[
            create(0, "/a", "1"),
            get(0, "/a"),
            set(0, "/a", "2", Some(0)),
            set(0, "/a", "x", Some(0)),
            set(0, "/a", "3", None),
            get(0, "/a"),
            delete(0, "/a", Some(1)),
            create(0, "/a", "again"),
            delete(0, "/a", Some(2)),
            get(0, "/a"),
            set(0, "/a", "x", None),
            delete(0, "/a", None),
            create(0, "/a", "new"),
            get(0, "/a"),
        ],
    );
}

#[test]
fn ephemerals_of_two_sessions_and_their_owners() {
    conform(
        &[LONG, LONG],
        &[
            ephemeral(0, "/e0"),
            ephemeral(1, "/e1"),
            create(0, "/p", "persistent"),
            get(1, "/e0"),
            get(0, "/e1"),
            get(1, "/p"),
            set(1, "/e0", "by 1", None),
            ephemeral(1, "/e0"),
            delete(1, "/e0", None),
            ephemeral(1, "/e0"),
            get(0, "/e0"),
        ],
    );
}

#[test]
fn children_and_child_watches() {
    conform(
        &[LONG, LONG],
        &[
            create(0, "/d", ""),
            watch_children(1, "/d"),
            create(0, "/d/a", ""),
            // The watch fired once: the next child goes unnoticed.
            create(0, "/d/b", ""),
            watch_children(1, "/d"),
            // A data change of the parent or of a child is not a children change.
            set(0, "/d", "x", None),
            set(0, "/d/b", "x", None),
            delete(0, "/d/a", None),
            list(1, "/d"),
            watch_children(1, "/d"),
            ephemeral(0, "/d/e"),
            watch_children(1, "/d"),
            watch_children(0, "/d"),
            Step::Close(0),
            list(1, "/d"),
            // A child watch on a leaf fires when it gets a child.
            watch_children(1, "/d/b"),
            create(1, "/d/b/c", ""),
        ],
    );
}

#[test]
fn a_data_watch_fires_once_per_watched_read() {
    conform(
        &[LONG, LONG],
        &[
            create(0, "/w", "0"),
            watch_data(1, "/w"),
            set(0, "/w", "1", None),
            set(0, "/w", "2", None),
            // Two watched reads: the client hands the one event to both watchers.
            watch_data(1, "/w"),
            watch_data(1, "/w"),
            watch_data(0, "/w"),
            set(0, "/w", "3", Some(2)),
            set(0, "/w", "4", Some(3)),
            // A data watch does not fire for children.
            watch_data(1, "/w"),
            create(0, "/w/c", ""),
            set(0, "/w", "5", None),
        ],
    );
}

#[test]
fn watches_on_a_deleted_node() {
    conform(
        &[LONG, LONG, LONG],
        &[
            create(0, "/top", ""),
            create(0, "/top/x", "x"),
            watch_data(1, "/top/x"),
            watch_children(1, "/top/x"),
            watch_children(1, "/top"),
            watch_data(2, "/top/x"),
            delete(0, "/top/x", None),
            // A read of a missing node fails and leaves no watch behind.
            watch_data(1, "/top/x"),
            watch_children(2, "/top/x"),
            create(0, "/top/x", "back"),
            set(0, "/top/x", "changed", None),
            delete(0, "/top/x", None),
        ],
    );
}

#[test]
fn delete_with_children_is_refused() {
    conform(
        &[LONG],
        &[
            create(0, "/n", ""),
            create(0, "/n/c", ""),
            delete(0, "/n", None),
            // The version is checked before the children.
            delete(0, "/n", Some(5)),
            delete(0, "/n", Some(0)),
            delete(0, "/n/c", None),
            delete(0, "/n", Some(0)),
        ],
    );
}

#[test]
fn create_under_a_missing_parent() {
    conform(
        &[LONG],
        &[
            create(0, "/m/x", ""),
            ephemeral(0, "/m/x"),
            create(0, "/m/x/y", ""),
            create(0, "/m", ""),
            create(0, "/m/x", ""),
        ],
    );
}

#[test]
fn an_ephemeral_has_no_children() {
    // Production maps the client's NoChildrenForEphemerals to this `Other`.
    let refused = ZkError::Other(NO_CHILDREN_FOR_EPHEMERALS.into());
    assert_eq!(
        pop_io::zk::map_error(zkc::Error::NoChildrenForEphemerals),
        refused
    );
    conform(
        &[LONG, LONG],
        &[
            ephemeral(0, "/ep"),
            create(0, "/ep/c", ""),
            ephemeral(1, "/ep/c"),
            // A missing parent is reported before the ephemeral one, and an existing node
            // before its ephemeral parent.
            create(0, "/ep/missing/c", ""),
            ephemeral(1, "/ep"),
            get(1, "/ep"),
        ],
    );
}

#[test]
fn a_multi_that_commits_and_its_watches() {
    conform(
        &[LONG, LONG],
        &[
            create(0, "/mu", "0"),
            watch_children(1, "/mu"),
            watch_data(1, "/mu"),
            Step::Multi(
                0,
                vec![
                    create_op("/mu/a", "a", CreateMode::Persistent),
                    set_op("/mu", "1", Some(0)),
                    create_op("/mu/b", "", CreateMode::Ephemeral),
                    // Each op sees the ones before it.
                    set_op("/mu/a", "a1", Some(0)),
                    set_op("/mu/a", "a2", Some(1)),
                    delete_op("/mu/a", Some(2)),
                ],
            ),
            get(1, "/mu"),
            list(1, "/mu"),
            get(1, "/mu/b"),
            watch_data(1, "/mu/b"),
            Step::Multi(
                0,
                vec![set_op("/mu/b", "", None), delete_op("/mu/b", Some(1))],
            ),
            Step::Multi(1, vec![]),
        ],
    );
}

#[test]
fn a_multi_that_fails_applies_nothing() {
    conform(
        &[LONG, LONG],
        &[
            create(0, "/mf", "0"),
            watch_children(1, "/mf"),
            watch_data(1, "/mf"),
            // Fails at its second op.
            Step::Multi(
                0,
                vec![
                    create_op("/mf/a", "", CreateMode::Persistent),
                    create_op("/mf/a", "", CreateMode::Persistent),
                    set_op("/mf", "1", None),
                ],
            ),
            get(1, "/mf/a"),
            get(1, "/mf"),
            Step::Multi(
                0,
                vec![set_op("/mf", "1", Some(0)), set_op("/mf", "2", Some(0))],
            ),
            Step::Multi(
                0,
                vec![
                    create_op("/mf/x", "", CreateMode::Persistent),
                    create_op("/mf/x/y", "", CreateMode::Persistent),
                    delete_op("/mf/x", None),
                ],
            ),
            Step::Multi(
                0,
                vec![
                    create_op("/mf/e", "", CreateMode::Ephemeral),
                    create_op("/mf/e/c", "", CreateMode::Persistent),
                ],
            ),
            Step::Multi(
                0,
                vec![set_op("/mf", "1", None), delete_op("/mf/none", None)],
            ),
            // A read cannot go in a multi: refused before anything is sent or applied.
            Step::Multi(
                0,
                vec![
                    set_op("/mf", "1", None),
                    ZkOp::GetData {
                        path: "/mf".into(),
                        watch: false,
                    },
                ],
            ),
            list(1, "/mf"),
            get(1, "/mf"),
            // The watches set before the failures are still there.
            create(0, "/mf/z", ""),
            set(0, "/mf", "9", None),
        ],
    );
}

#[test]
fn a_check_holds_a_multi_to_a_node_it_does_not_write() {
    conform(
        &[LONG, LONG],
        &[
            create(0, "/ck", "0"),
            set(0, "/ck", "1", None),
            watch_children(1, "/ck"),
            // The version holds: the multi commits, the check's reply in its place.
            Step::Multi(
                0,
                vec![
                    check_op("/ck", 1),
                    create_op("/ck/a", "", CreateMode::Persistent),
                ],
            ),
            // Another version: nothing is applied, the check is the failing op.
            Step::Multi(
                0,
                vec![
                    create_op("/ck/b", "", CreateMode::Persistent),
                    check_op("/ck", 0),
                ],
            ),
            // A missing node fails the check too.
            Step::Multi(
                0,
                vec![
                    check_op("/ck/none", 0),
                    create_op("/ck/c", "", CreateMode::Persistent),
                ],
            ),
            // An op before it in the multi changes the version the check sees.
            Step::Multi(0, vec![set_op("/ck", "2", Some(1)), check_op("/ck", 2)]),
            Step::Multi(0, vec![set_op("/ck", "3", Some(2)), check_op("/ck", 2)]),
            // Alone, a check is refused before anything is sent.
            Step::Op(0, check_op("/ck", 2)),
            list(1, "/ck"),
            get(1, "/ck"),
        ],
    );
}

#[test]
fn a_closed_session_takes_its_ephemerals() {
    conform(
        &[LONG, LONG, LONG],
        &[
            create(0, "/cs", ""),
            ephemeral(0, "/cs/a"),
            ephemeral(0, "/cs/b"),
            create(0, "/cs/p", ""),
            watch_data(1, "/cs/a"),
            watch_children(1, "/cs"),
            watch_data(2, "/cs/b"),
            watch_data(2, "/cs/p"),
            // The closing session's own watches fire before its connection goes.
            watch_data(0, "/cs/a"),
            watch_children(0, "/cs"),
            watch_data(0, "/cs/p"),
            Step::Close(0),
            list(1, "/cs"),
            get(2, "/cs/p"),
        ],
    );
}

#[test]
fn an_expired_session_takes_its_ephemerals() {
    conform(
        &[LONG, LONG, SHORT],
        &[
            create(0, "/se", ""),
            ephemeral(2, "/se/a"),
            ephemeral(2, "/e"),
            watch_data(0, "/se/a"),
            watch_children(1, "/se"),
            watch_data(1, "/e"),
            watch_data(2, "/se"),
            watch_data(2, "/e"),
            Step::Expire(2),
            list(0, "/se"),
            get(1, "/e"),
            get(2, "/se"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// ACL scenarios: session 0 the admin, 1 a machine, 2 anonymous (until it authenticates).

const ADMIN: &str = "admin:pw";
const MACHINE: &str = "m1:s3cret";

fn admin_all() -> Acl {
    Acl::none().digest(&digest_id(ADMIN), Perms::ALL)
}

fn machine_id() -> String {
    digest_id(MACHINE)
}

fn create_acl_op(path: &str, data: &str, mode: CreateMode, acl: Acl) -> ZkOp {
    ZkOp::Create {
        path: path.into(),
        data: data.as_bytes().to_vec(),
        mode,
        acl,
    }
}

fn create_acl(s: usize, path: &str, acl: Acl) -> Step {
    Step::Op(s, create_acl_op(path, "", CreateMode::Persistent, acl))
}

fn set_acl(s: usize, path: &str, acl: Acl, version: Option<i32>) -> Step {
    Step::Op(
        s,
        ZkOp::SetAcl {
            path: path.into(),
            acl,
            version,
        },
    )
}

/// The nodes of a secured namespace in miniature: a container machines may create and
/// delete under, a node only the admin may touch, one anyone may read.
fn secured_setup() -> Vec<Step> {
    let rcd = Perms::READ.and(Perms::CREATE).and(Perms::DELETE);
    vec![
        Step::Auth(0, ADMIN),
        Step::Auth(1, MACHINE),
        create_acl(0, "/open", admin_all().anyone(Perms::READ)),
        create_acl(0, "/state", admin_all().digest(&machine_id(), rcd)),
        create_acl(0, "/secret", admin_all()),
        create_acl(0, "/secret/child", admin_all()),
    ]
}

#[test]
fn each_op_kind_for_anonymous_and_digest_sessions() {
    let own = admin_all().digest(&machine_id(), Perms::ALL);
    let mut steps = secured_setup();
    steps.extend([
        // Reads need READ on the node.
        get(2, "/open"),
        get(2, "/secret"),
        get(1, "/secret"),
        list(2, "/secret"),
        list(2, "/open"),
        get(0, "/secret"),
        // A refused watched read leaves no watch.
        watch_data(2, "/secret"),
        watch_children(1, "/secret"),
        set(0, "/secret", "changed", None),
        create_acl(0, "/secret/other", admin_all()),
        // exists is not checked.
        Step::Exists(2, "/secret"),
        Step::Exists(2, "/secret/none"),
        // create: CREATE on the parent, after the parent's existence, before the node's.
        create_acl(2, "/open/x", Acl::open()),
        create_acl(2, "/none/x", Acl::open()),
        create_acl(2, "/secret/child", Acl::open()),
        Step::Op(
            1,
            create_acl_op("/state/m1", "up", CreateMode::Ephemeral, own.clone()),
        ),
        // The parent's CREATE covers any name: m1 creates another machine's node.
        Step::Op(
            1,
            create_acl_op("/state/m2", "forged", CreateMode::Ephemeral, own.clone()),
        ),
        create_acl(1, "/secret/x", own.clone()),
        // setData: WRITE on the node, before the version.
        set(2, "/open", "x", Some(5)),
        set(1, "/state/m1", "running", Some(0)),
        set(1, "/secret", "x", None),
        set(0, "/state/m1", "by admin", None),
        // delete: DELETE on the parent, then the node's existence, then the version.
        delete(2, "/secret/none", None),
        delete(2, "/secret/child", Some(3)),
        delete(1, "/state/m1", Some(7)),
        delete(1, "/secret/child", None),
        delete(1, "/state/m2", None),
        // setACL: ADMIN on the node, then the ACL version.
        set_acl(1, "/secret", Acl::open(), None),
        set_acl(0, "/secret/child", Acl::open(), Some(1)),
        set_acl(0, "/secret/child", admin_all().anyone(Perms::READ), Some(0)),
        get(2, "/secret/child"),
        // getACL: READ or ADMIN; digests whole only with ADMIN.
        Step::GetAcl(2, "/open"),
        Step::GetAcl(0, "/open"),
        Step::GetAcl(1, "/state"),
        Step::GetAcl(1, "/secret"),
        Step::GetAcl(2, "/secret/child"),
        Step::GetAcl(1, "/state/m1"),
        Step::GetAcl(2, "/none"),
        // The client refuses an empty ACL.
        create_acl(0, "/secret/empty", Acl::none()),
    ]);
    assert_eq!(
        pop_io::zk::map_error(zkc::Error::InvalidAcl),
        ZkError::Other(INVALID_ACL.into())
    );
    conform(&[LONG, LONG, LONG], &steps);
}

#[test]
fn a_multi_with_one_refused_op_applies_nothing() {
    let own = admin_all().digest(&machine_id(), Perms::ALL);
    let mut steps = secured_setup();
    steps.extend([
        watch_children(0, "/state"),
        watch_data(0, "/secret"),
        // The first op is allowed, the second refused: nothing happens, no watch fires.
        Step::Multi(
            1,
            vec![
                create_acl_op("/state/m1", "", CreateMode::Ephemeral, own.clone()),
                set_op("/secret", "evil", None),
                delete_op("/state/none", None),
            ],
        ),
        list(0, "/state"),
        // A refusal after another failure: the first failing op is reported.
        Step::Multi(
            1,
            vec![
                delete_op("/state/none", None),
                set_op("/secret", "evil", None),
            ],
        ),
        Step::Multi(
            2,
            vec![
                create_acl_op("/open/a", "", CreateMode::Persistent, Acl::open()),
                create_acl_op("/open/a/b", "", CreateMode::Persistent, Acl::open()),
            ],
        ),
        // Each op is checked against the nodes as the ops before it left them.
        Step::Multi(
            0,
            vec![
                create_acl_op("/secret/mine", "", CreateMode::Persistent, own.clone()),
                create_acl_op("/secret/mine/x", "", CreateMode::Persistent, admin_all()),
            ],
        ),
        Step::Multi(
            1,
            vec![
                create_acl_op("/secret/mine/y", "", CreateMode::Persistent, own.clone()),
                delete_op("/secret/mine/x", None),
                set_op("/secret/mine", "by m1", Some(0)),
            ],
        ),
        // A check needs READ on its node: refused where the machine cannot read.
        Step::Multi(
            1,
            vec![
                check_op("/secret", 0),
                create_acl_op("/state/m2", "", CreateMode::Ephemeral, own.clone()),
            ],
        ),
        Step::Multi(
            1,
            vec![
                check_op("/open", 0),
                create_acl_op("/state/m3", "", CreateMode::Ephemeral, own.clone()),
            ],
        ),
        list(0, "/state"),
        get(0, "/secret"),
        get(0, "/secret/mine"),
    ]);
    conform(&[LONG, LONG, LONG], &steps);
}

#[test]
fn authenticating_mid_session_adds_an_id() {
    let mut steps = secured_setup();
    steps.extend([
        get(2, "/secret"),
        // A wrong password authenticates too, as another id: still refused.
        Step::Auth(2, "admin:wrong"),
        get(2, "/secret"),
        Step::GetAcl(2, "/secret"),
        Step::Auth(2, ADMIN),
        get(2, "/secret"),
        Step::GetAcl(2, "/secret"),
        // Two ids on one session: either grants.
        Step::Auth(2, MACHINE),
        create_acl(2, "/state/m1", admin_all()),
        // The machine left itself out of its node's ACL: it can no longer write it.
        set(1, "/state/m1", "x", None),
        delete(1, "/state/m1", None),
    ]);
    conform(&[LONG, LONG, LONG], &steps);
}
