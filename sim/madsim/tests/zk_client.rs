//! The simulated ZooKeeper client and server over madsim's TCP, against the timing of
//! the client production uses (zookeeper-client 0.10.2): T = 4 s gives a tick of 200 ms,
//! `Disconnected` 8 ticks after the last frame heard, `Expired` 7/5 T after it.
#![cfg(madsim)]

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use pop_core::names::MachineId;
use pop_core::zk::{SessionEvent, WatchKind, ZkError, ZkOp, ZkReply};
use pop_io::driver::ports::{ZkPort, ZkSession};
use pop_madsim::machine::Machine;
use pop_madsim::zk_client::{tick, TcpSession, TcpZk};
use pop_madsim::zk_server::{zk_main, SharedServer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, Instant};

const T: Duration = Duration::from_secs(4);

struct Setup {
    server: SharedServer,
    zk: NodeHandle,
    client: NodeHandle,
}

fn setup() -> Setup {
    let handle = Handle::current();
    let server = SharedServer::default();
    server.lock().put("/pop", b"v1");
    let s = server.clone();
    let zk = handle
        .create_node()
        .name("zk")
        .ip("10.0.0.1".parse().expect("an address"))
        .init(move || zk_main(s.clone()))
        .build();
    let client = handle
        .create_node()
        .name("client")
        .ip("10.0.1.1".parse().expect("an address"))
        .build();
    Setup { server, zk, client }
}

/// A session opened from the client node (its task runs there).
async fn connect(setup: &Setup) -> (TcpSession, UnboundedReceiver<SessionEvent>) {
    // The server node binds its port first.
    tokio::time::sleep(Duration::from_millis(10)).await;
    setup
        .client
        .spawn(async {
            let zk = TcpZk {
                session_timeout: T,
                op_timeout: Duration::from_secs(1),
                machine: Arc::new(Machine::new(MachineId::new("c").expect("an id"))),
            };
            let session = zk
                .connect()
                .await
                .map_err(|e| format!("{e:?}"))
                .expect("connects");
            let events = session.events();
            (session, events)
        })
        .await
        .expect("the client node runs")
}

async fn next(events: &mut UnboundedReceiver<SessionEvent>, within: Duration) -> SessionEvent {
    timeout(within, events.recv())
        .await
        .expect("an event in time")
        .expect("the session reports")
}

#[madsim::test]
async fn cut_off_it_is_disconnected_after_8_ticks_and_expires_at_7_5_of_the_timeout() {
    let setup = setup();
    let (session, mut events) = connect(&setup).await;
    assert_eq!(
        session.timeout(),
        T,
        "the server grants 4 s (within 2-20 ticks)"
    );
    assert_eq!(tick(T), Duration::from_millis(200));
    // Pings keep it alive while idle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(setup.server.lock().model.is_live(session.id()));

    let cut = Instant::now();
    NetSim::current().clog_node(setup.client.id());
    assert_eq!(next(&mut events, T).await, SessionEvent::Disconnected);
    let disconnected = cut.elapsed();
    // The last pong came at most 3 ticks (a ping's interval) before the cut.
    assert!(
        disconnected >= tick(T) * 5 && disconnected <= tick(T) * 9,
        "disconnected {disconnected:?} after the cut"
    );
    assert_eq!(next(&mut events, 2 * T).await, SessionEvent::Expired);
    let expired = cut.elapsed();
    assert!(
        expired >= T * 7 / 5 - tick(T) * 3 && expired <= T * 7 / 5 + Duration::from_millis(1200),
        "expired {expired:?} after the cut"
    );
    assert!(
        !setup.server.lock().model.is_live(session.id()),
        "the server expired it too"
    );
    let (reply, _) = session
        .execute(ZkOp::GetData {
            path: "/pop".into(),
            watch: false,
        })
        .await;
    assert_eq!(reply, ZkReply::Error(ZkError::SessionExpired));
}

#[madsim::test]
async fn a_restarted_server_keeps_the_session() {
    let setup = setup();
    let (session, mut events) = connect(&setup).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handle = Handle::current();
    handle.kill(setup.zk.id());
    let killed = Instant::now();
    assert_eq!(next(&mut events, T).await, SessionEvent::Disconnected);
    assert!(
        killed.elapsed() < Duration::from_millis(50),
        "the connection ends at once"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    handle.restart(setup.zk.id());
    assert_eq!(
        next(&mut events, T).await,
        SessionEvent::Connected {
            session: session.id(),
            timeout: T
        },
        "the same session"
    );
    let (reply, _) = session
        .execute(ZkOp::GetData {
            path: "/pop".into(),
            watch: false,
        })
        .await;
    assert!(matches!(reply, ZkReply::Data { .. }), "{reply:?}");
}

#[madsim::test]
async fn a_session_the_server_expires_is_reported_expired() {
    let setup = setup();
    let (session, mut events) = connect(&setup).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    setup.server.lock().expire(session.id());
    assert_eq!(next(&mut events, T).await, SessionEvent::Disconnected);
    assert_eq!(next(&mut events, T).await, SessionEvent::Expired);
}

#[madsim::test]
async fn a_watch_that_fired_while_cut_off_fires_after_the_reconnect() {
    let setup = setup();
    let (session, mut events) = connect(&setup).await;
    let (reply, watch) = session
        .execute(ZkOp::GetData {
            path: "/pop".into(),
            watch: true,
        })
        .await;
    assert!(matches!(reply, ZkReply::Data { .. }), "{reply:?}");
    let watch = watch.expect("a watch");
    NetSim::current().clog_node(setup.client.id());
    assert_eq!(next(&mut events, T).await, SessionEvent::Disconnected);
    setup.server.lock().put("/pop", b"v2");
    // A request made while disconnected waits for the reconnect.
    let s = session.clone();
    let waiting = setup.client.spawn(async move {
        s.execute(ZkOp::GetData {
            path: "/pop".into(),
            watch: false,
        })
        .await
        .0
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    NetSim::current().unclog_node(setup.client.id());
    assert_eq!(
        next(&mut events, T).await,
        SessionEvent::Connected {
            session: session.id(),
            timeout: T
        }
    );
    let event = timeout(Duration::from_secs(1), watch)
        .await
        .expect("fired after the reconnect")
        .expect("a node event");
    assert_eq!(event.kind, WatchKind::DataChanged);
    let reply = timeout(Duration::from_secs(1), waiting)
        .await
        .expect("answered after the reconnect")
        .expect("the client node runs");
    assert!(
        matches!(reply, ZkReply::Data { ref data, .. } if data == b"v2"),
        "{reply:?}"
    );
}
