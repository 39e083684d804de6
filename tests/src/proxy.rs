//! A TCP proxy in front of a ZooKeeper server that can partition the network the way a
//! firewall dropping packets does: connections stay open, nothing gets through, and
//! neither side sees a reset or an end of stream.
//!
//! Plain threads: one accepts, two per connection pump bytes (one per direction).
//!
//! `partition()` black-holes every existing connection and every connection accepted
//! while partitioned (those are not even connected upstream: the server sees nothing).
//! `heal()` lets NEW connections through again; connections black-holed by the partition
//! stay black holes until a side closes them. That is deliberate: bytes were discarded in
//! the middle of their streams, so ZooKeeper's length-prefixed framing is lost and
//! resuming them would feed garbage to both sides (real TCP never loses bytes mid-stream;
//! it stalls, and the client gives up on the connection after its own read timeout). The
//! client detects the silence itself and reconnects, which is the behaviour under test.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A running proxy on `127.0.0.1:<free port>`; stopped (every connection closed) when
/// dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    partitioned: AtomicBool,
    stopped: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connections accepted so far, and how many of them reached the upstream.
    accepted: AtomicU64,
    forwarded: AtomicU64,
    /// Bytes read and discarded because their connection was black-holed.
    dropped: AtomicU64,
}

struct Conn {
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// Set by a partition; checked under this lock before every write, so that once
    /// `partition()` returns not one more byte gets through this connection.
    black_hole: Mutex<bool>,
    /// Pump threads still running; the last one out removes the connection.
    pumps: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking pump thread must not take the proxy down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TcpProxy {
    /// Starts forwarding to `upstream` (e.g. a ZooKeeper's client address).
    pub fn start(upstream: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            partitioned: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &s))?;
        Ok(TcpProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, for ZooKeeper clients.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// From now on nothing gets through in either direction, on existing and new
    /// connections; bytes are read and discarded, no connection is closed.
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::SeqCst);
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).values().cloned().collect();
        for conn in conns {
            *lock(&conn.black_hole) = true;
        }
    }

    /// New connections are forwarded again; connections black-holed by the partition
    /// stay silent (see the module documentation).
    pub fn heal(&self) {
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }

    pub fn is_partitioned(&self) -> bool {
        self.shared.partitioned.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted so far that were connected to the upstream.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Bytes discarded so far (sent into a black hole by either side).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the acceptor; it sees `stopped` and returns.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        // Shutting the sockets down ends the pumps' blocked reads.
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).drain().map(|(_, c)| c).collect();
        for conn in conns {
            let _ = conn.client.shutdown(Shutdown::Both);
            if let Some(up) = &conn.upstream {
                let _ = up.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let partitioned = shared.partitioned.load(Ordering::SeqCst);
        let upstream = if partitioned {
            None
        } else {
            match TcpStream::connect(shared.upstream) {
                Ok(up) => {
                    let _ = up.set_nodelay(true);
                    shared.forwarded.fetch_add(1, Ordering::SeqCst);
                    Some(up)
                }
                Err(_) => {
                    // The server is down: like a refused connection.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let conn = Arc::new(Conn {
            client,
            upstream,
            black_hole: Mutex::new(partitioned),
            pumps: AtomicU64::new(0),
        });
        lock(&shared.conns).insert(id, Arc::clone(&conn));
        let directions: &[bool] = if conn.upstream.is_some() {
            &[true, false]
        } else {
            &[true]
        };
        conn.pumps.store(directions.len() as u64, Ordering::SeqCst);
        for &to_upstream in directions {
            let c = Arc::clone(&conn);
            let s = Arc::clone(shared);
            let spawned = std::thread::Builder::new()
                .name(format!("proxy-conn-{id}"))
                .spawn(move || {
                    pump(&c, &s, to_upstream);
                    if c.pumps.fetch_sub(1, Ordering::SeqCst) == 1 {
                        lock(&s.conns).remove(&id);
                    }
                });
            if spawned.is_err() {
                let _ = conn.client.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies one direction until end of stream or an error; discards while black-holed.
fn pump(conn: &Conn, shared: &Shared, to_upstream: bool) {
    let (mut from, to) = if to_upstream {
        (&conn.client, conn.upstream.as_ref())
    } else {
        match &conn.upstream {
            Some(up) => (up, Some(&conn.client)),
            None => return,
        }
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let gate = lock(&conn.black_hole);
        if *gate {
            if n == 0 {
                // A dropped FIN: the other side learns nothing. Our descriptors close
                // when the last pump of this connection is done.
                return;
            }
            shared.dropped.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        let Some(mut to) = to else { continue };
        if n == 0 {
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server counting the connections it accepted.
    fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                c.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    fn connect(proxy: &TcpProxy) -> TcpStream {
        let s = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).expect("write");
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).expect("echo");
        assert_eq!(got, msg);
    }

    /// Nothing arrives for a while, and the connection is neither reset nor closed.
    fn silent(s: &mut TcpStream) {
        s.write_all(b"anyone?")
            .expect("writing into a black hole succeeds");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }

    #[test]
    fn forwards_partitions_and_heals() {
        let (upstream, upstream_conns) = echo_server();
        let proxy = TcpProxy::start(upstream).expect("proxy");
        let mut a = connect(&proxy);
        roundtrip(&mut a, b"hello");
        roundtrip(&mut a, b"again");
        assert_eq!(upstream_conns.load(Ordering::SeqCst), 1);

        proxy.partition();
        assert!(proxy.is_partitioned());
        silent(&mut a);
        // New connections are accepted, but black-holed and never reach the upstream.
        let mut b = connect(&proxy);
        silent(&mut b);
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(proxy.forwarded(), 1);
        assert_eq!(upstream_conns.load(Ordering::SeqCst), 1);
        assert_eq!(proxy.dropped(), 2 * b"anyone?".len() as u64);

        proxy.heal();
        let mut c = connect(&proxy);
        roundtrip(&mut c, b"healed");
        // Connections black-holed by the partition stay silent.
        silent(&mut a);
        silent(&mut b);
        assert_eq!(proxy.forwarded(), 2);
    }

    #[test]
    fn closing_either_side_is_forwarded_and_drop_closes_everything() {
        let (upstream, _) = echo_server();
        let proxy = TcpProxy::start(upstream).expect("proxy");
        let mut a = connect(&proxy);
        roundtrip(&mut a, b"x");
        a.shutdown(Shutdown::Write).expect("half-close");
        // The echo server sees end of stream and closes; we see it too.
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).expect("end of stream");
        assert!(rest.is_empty());

        let mut b = connect(&proxy);
        roundtrip(&mut b, b"y");
        drop(proxy);
        let mut rest = Vec::new();
        // After the proxy is gone the connection ends (EOF or reset, not silence).
        let _ = b.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
}
