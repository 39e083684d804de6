//! The agent's ZooKeeper client in the simulation: a `ZkPort` over madsim's simulated
//! TCP to the ZooKeeper node, with the timing of the client production uses
//! (`zookeeper-client` 0.10.2, session/mod.rs): a tick of T/20 (T the negotiated
//! timeout), a ping after 3 ticks without sending, `Disconnected` after 8 ticks without
//! hearing from the server (or at once when the connection ends), reconnects until 7/5 T
//! after it last heard from the server, each try at most 8 ticks, 0 then 100 ms doubling
//! (at most 1 s) plus jitter between them, and `Expired` when the server says so or the
//! client gives up. On expiry it reports `Expired` first, then fails what was queued or
//! in flight with `SessionExpired`, as that client does. Requests made while
//! disconnected wait and go out after the reconnect; those in flight when the
//! connection broke fail with `ConnectionLoss` (their outcome unknown).

use crate::machine::Machine;
use crate::wire::{self, FrameReader, FrameWriter, ToClient, ToServer, WatchClass, ZK_ADDR};
use pop_core::zk::{SessionEvent, SessionId, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply};
use pop_io::driver::ports::{ConnectFailure, WatchFuture, ZkPort, ZkSession};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The client's tick for a negotiated session timeout (no connect timeout configured).
pub fn tick(timeout: Duration) -> Duration {
    timeout / 20
}

/// Opens sessions on the ZooKeeper node.
pub struct TcpZk {
    /// The timeout asked for (the server clamps it).
    pub session_timeout: Duration,
    pub op_timeout: Duration,
    /// Told how its sessions fare, for the harness's checks.
    pub machine: Arc<Machine>,
}

impl ZkPort for TcpZk {
    type Session = TcpSession;

    fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    async fn connect(&self) -> Result<TcpSession, ConnectFailure> {
        let attempt = tick(self.session_timeout) * 8;
        let handshake =
            tokio::time::timeout(attempt, handshake(None, self.session_timeout, Vec::new()));
        let (reader, writer, session, timeout) = match handshake.await {
            Ok(Ok(Handshake::Connected {
                reader,
                writer,
                session,
                timeout,
            })) => (reader, writer, session, timeout),
            Ok(Ok(Handshake::Expired)) => {
                return Err(ConnectFailure::Retry("a new session was refused".into()))
            }
            Ok(Err(e)) => {
                return Err(ConnectFailure::Retry(format!(
                    "cannot reach ZooKeeper: {e}"
                )))
            }
            Err(_) => {
                return Err(ConnectFailure::Retry(
                    "connecting to ZooKeeper timed out".into(),
                ))
            }
        };
        self.machine.connected(session);
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let now = Instant::now();
        let client = Client {
            machine: Arc::clone(&self.machine),
            session,
            timeout,
            tick: tick(timeout),
            commands,
            events: events_tx,
            next_xid: 0,
            in_flight: BTreeMap::new(),
            watches: BTreeMap::new(),
            last_received: now,
            last_sent: now,
            closing: None,
        };
        // On the calling (agent) node: the connection dies with it.
        tokio::spawn(client.run(reader, writer));
        Ok(TcpSession(Arc::new(Handle {
            session,
            timeout,
            commands: commands_tx,
            events: Mutex::new(Some(events)),
        })))
    }
}

enum Handshake {
    Connected {
        reader: FrameReader,
        writer: FrameWriter,
        session: SessionId,
        timeout: Duration,
    },
    Expired,
}

async fn handshake(
    session: Option<SessionId>,
    timeout: Duration,
    watches: Vec<(String, WatchClass)>,
) -> io::Result<Handshake> {
    let stream = TcpStream::connect(ZK_ADDR).await?;
    let (mut reader, mut writer) = wire::split(stream);
    writer
        .send(&ToServer::Connect {
            session,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            watches,
        })
        .await?;
    match wire::receive::<ToClient>(&mut reader).await? {
        Some(ToClient::Connected {
            session,
            timeout_ms,
        }) => Ok(Handshake::Connected {
            reader,
            writer,
            session,
            timeout: Duration::from_millis(timeout_ms),
        }),
        Some(ToClient::SessionExpired) => Ok(Handshake::Expired),
        Some(other) => Err(io::Error::other(format!(
            "unexpected first frame {other:?}"
        ))),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

enum Command {
    Op {
        op: ZkOp,
        reply: oneshot::Sender<(ZkReply, Option<WatchFuture>)>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

fn watch_of(op: &ZkOp) -> Option<(String, WatchClass)> {
    match op {
        ZkOp::GetData { path, watch: true } => Some((path.clone(), WatchClass::Data)),
        ZkOp::GetChildren { path, watch: true } => Some((path.clone(), WatchClass::Children)),
        _ => None,
    }
}

fn fires(kind: WatchKind) -> &'static [WatchClass] {
    match kind {
        WatchKind::Created | WatchKind::DataChanged => &[WatchClass::Data],
        WatchKind::ChildrenChanged => &[WatchClass::Children],
        WatchKind::Deleted => &[WatchClass::Data, WatchClass::Children],
    }
}

type Reply = oneshot::Sender<(ZkReply, Option<WatchFuture>)>;

/// How a connection ended.
enum Ended {
    Disconnected,
    Expired,
    /// Closed by request, or every handle dropped (the close was sent).
    Closed,
}

/// The session's task on the agent node.
struct Client {
    machine: Arc<Machine>,
    session: SessionId,
    timeout: Duration,
    tick: Duration,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<SessionEvent>,
    next_xid: u64,
    in_flight: BTreeMap<u64, (Option<(String, WatchClass)>, Reply)>,
    watches: BTreeMap<(String, WatchClass), Vec<oneshot::Sender<WatchEvent>>>,
    last_received: Instant,
    last_sent: Instant,
    closing: Option<oneshot::Sender<()>>,
}

impl Client {
    async fn run(mut self, mut reader: FrameReader, mut writer: FrameWriter) {
        loop {
            match self.serve(&mut reader, &mut writer).await {
                Ended::Closed => return,
                Ended::Expired => return self.expired(),
                Ended::Disconnected => {
                    self.fail_in_flight(ZkError::ConnectionLoss);
                    self.machine.disconnected(self.session);
                    let _ = self.events.send(SessionEvent::Disconnected);
                    match self.reconnect().await {
                        Some((r, w)) => {
                            (reader, writer) = (r, w);
                            self.machine.connected(self.session);
                            let _ = self.events.send(SessionEvent::Connected {
                                session: self.session,
                                timeout: self.timeout,
                            });
                        }
                        None => return self.expired(),
                    }
                }
            }
        }
    }

    /// One connection, until it ends.
    async fn serve(&mut self, reader: &mut FrameReader, writer: &mut FrameWriter) -> Ended {
        // A close asked for before the connection broke is asked again on the new one.
        if self.closing.is_some() && writer.send(&ToServer::Close).await.is_err() {
            return Ended::Disconnected;
        }
        let mut next_tick = Instant::now() + self.tick;
        loop {
            tokio::select! {
                command = self.commands.recv(), if self.closing.is_none() => match command {
                    None => {
                        let _ = writer.send(&ToServer::Close).await;
                        return Ended::Closed;
                    }
                    Some(Command::Op { op, reply }) => {
                        self.next_xid += 1;
                        let xid = self.next_xid;
                        self.in_flight.insert(xid, (watch_of(&op), reply));
                        self.last_sent = Instant::now();
                        if writer.send(&ToServer::Request { xid, op }).await.is_err() {
                            return Ended::Disconnected;
                        }
                    }
                    Some(Command::Close { done }) => {
                        self.closing = Some(done);
                        if writer.send(&ToServer::Close).await.is_err() {
                            return Ended::Disconnected;
                        }
                    }
                },
                frame = wire::receive::<ToClient>(reader) => match frame {
                    Ok(Some(frame)) => {
                        self.last_received = Instant::now();
                        if let Some(ended) = self.received(frame) {
                            return ended;
                        }
                    }
                    Ok(None) | Err(_) => return Ended::Disconnected,
                },
                () = tokio::time::sleep_until(next_tick) => {
                    next_tick += self.tick;
                    let now = Instant::now();
                    if now - self.last_received >= self.tick * 8 {
                        return Ended::Disconnected;
                    }
                    if now - self.last_sent >= self.tick * 3 {
                        self.last_sent = now;
                        if writer.send(&ToServer::Ping).await.is_err() {
                            return Ended::Disconnected;
                        }
                    }
                }
            }
        }
    }

    fn received(&mut self, frame: ToClient) -> Option<Ended> {
        match frame {
            ToClient::Reply { xid, reply } => {
                if let Some((watch, tx)) = self.in_flight.remove(&xid) {
                    let watch = match watch {
                        Some(key) if !matches!(reply, ZkReply::Error(_)) => {
                            let (watch_tx, watch_rx) = oneshot::channel();
                            self.watches.entry(key).or_default().push(watch_tx);
                            Some(Box::pin(async move { watch_rx.await.ok() }) as WatchFuture)
                        }
                        _ => None,
                    };
                    let _ = tx.send((reply, watch));
                }
            }
            ToClient::Watch { event } => {
                for class in fires(event.kind) {
                    for tx in self
                        .watches
                        .remove(&(event.path.clone(), *class))
                        .unwrap_or_default()
                    {
                        let _ = tx.send(event.clone());
                    }
                }
            }
            ToClient::Closed => {
                if let Some(done) = self.closing.take() {
                    let _ = done.send(());
                }
                return Some(Ended::Closed);
            }
            ToClient::SessionExpired => return Some(Ended::Expired),
            ToClient::Pong | ToClient::Connected { .. } => {}
        }
        None
    }

    /// Tries again and again until the server answers for the session, or until 7/5 of
    /// its timeout after the client last heard from it.
    async fn reconnect(&mut self) -> Option<(FrameReader, FrameWriter)> {
        let give_up = self.last_received + self.timeout * 7 / 5;
        let mut attempt: u32 = 0;
        loop {
            if attempt > 0 {
                let base = Duration::from_millis(100) * 2u32.saturating_pow(attempt - 1);
                let jitter = Duration::from_millis(madsim::rand::random::<u64>() % 100);
                tokio::time::sleep(base.min(Duration::from_secs(1)) + jitter).await;
            }
            let now = Instant::now();
            if now >= give_up {
                return None;
            }
            let limit = (self.tick * 8).min(give_up - now);
            let watches = self.watches.keys().cloned().collect();
            let connecting = handshake(Some(self.session), self.timeout, watches);
            match tokio::time::timeout(limit, connecting).await {
                Ok(Ok(Handshake::Connected { reader, writer, .. })) => {
                    let now = Instant::now();
                    self.last_received = now;
                    self.last_sent = now;
                    return Some((reader, writer));
                }
                Ok(Ok(Handshake::Expired)) => return None,
                Ok(Err(_)) | Err(_) => attempt += 1,
            }
        }
    }

    fn fail_in_flight(&mut self, error: ZkError) {
        for (_, (_, tx)) in std::mem::take(&mut self.in_flight) {
            let _ = tx.send((ZkReply::Error(error.clone()), None));
        }
    }

    /// The session is over: `Expired` first, then everything waiting fails and every
    /// watch ends unfired.
    fn expired(mut self) {
        self.machine.expired(self.session);
        let _ = self.events.send(SessionEvent::Expired);
        self.fail_in_flight(ZkError::SessionExpired);
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Op { reply, .. } => {
                    let _ = reply.send((ZkReply::Error(ZkError::SessionExpired), None));
                }
                Command::Close { done } => {
                    let _ = done.send(());
                }
            }
        }
        if let Some(done) = self.closing.take() {
            let _ = done.send(());
        }
        self.watches.clear();
    }
}

struct Handle {
    session: SessionId,
    timeout: Duration,
    commands: mpsc::UnboundedSender<Command>,
    events: Mutex<Option<mpsc::UnboundedReceiver<SessionEvent>>>,
}

/// A session; dropping the last clone closes it (unless its node was killed: then the
/// connection just ends and the session lingers until the server expires it).
#[derive(Clone)]
pub struct TcpSession(Arc<Handle>);

impl ZkSession for TcpSession {
    fn id(&self) -> SessionId {
        self.0.session
    }

    fn timeout(&self) -> Duration {
        self.0.timeout
    }

    fn events(&self) -> mpsc::UnboundedReceiver<SessionEvent> {
        let taken = self
            .0
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Asked twice: the second receiver ends at once.
        taken.unwrap_or_else(|| mpsc::unbounded_channel().1)
    }

    async fn execute(&self, op: ZkOp) -> (ZkReply, Option<WatchFuture>) {
        let (reply, answer) = oneshot::channel();
        if self.0.commands.send(Command::Op { op, reply }).is_err() {
            return (ZkReply::Error(ZkError::SessionExpired), None);
        }
        answer
            .await
            .unwrap_or((ZkReply::Error(ZkError::SessionExpired), None))
    }

    async fn close(self, limit: Duration) {
        let (done, closed) = oneshot::channel();
        if self.0.commands.send(Command::Close { done }).is_err() {
            return;
        }
        drop(self);
        let _ = tokio::time::timeout(limit, closed).await;
    }
}
