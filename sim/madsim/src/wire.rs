//! ZooKeeper's client-server protocol as the simulation speaks it over madsim's simulated
//! TCP: one JSON line per frame. A TCP stream is ordered and reliable, holds its bytes
//! while a link is clogged and ends when the peer node dies, as ZooKeeper's does.

use pop_core::zk::{SessionId, WatchEvent, ZkOp, ZkReply};
use serde::{Deserialize, Serialize};
use std::io;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Where the ZooKeeper node listens.
pub const ZK_ADDR: &str = "10.0.0.1:2181";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToServer {
    /// The first frame of a connection: a new session, or an existing one resumed with
    /// the watches its client still waits on (ZooKeeper's `SetWatches`).
    Connect {
        session: Option<SessionId>,
        timeout_ms: u64,
        watches: Vec<(String, WatchClass)>,
    },
    Request {
        xid: u64,
        op: ZkOp,
    },
    Ping,
    /// Ends the session (its ephemerals go at once).
    Close,
}

/// What a watched read watches: data watches fire on data changes, creation and
/// deletion; child watches on child changes and deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WatchClass {
    Data,
    Children,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToClient {
    /// The session, with the timeout the server negotiated.
    Connected {
        session: SessionId,
        timeout_ms: u64,
    },
    /// The session asked for is gone; the server closes the connection.
    SessionExpired,
    Reply {
        xid: u64,
        reply: ZkReply,
    },
    /// A watch of the session fired (one frame per watched read that set it).
    Watch {
        event: WatchEvent,
    },
    Pong,
    Closed,
}

pub type FrameReader = Lines<BufReader<ReadHalf<TcpStream>>>;

pub struct FrameWriter(WriteHalf<TcpStream>);

pub fn split(stream: TcpStream) -> (FrameReader, FrameWriter) {
    let (read, write) = tokio::io::split(stream);
    (BufReader::new(read).lines(), FrameWriter(write))
}

impl FrameWriter {
    /// One frame; madsim sends what was written only on flush.
    pub async fn send<T: Serialize>(&mut self, frame: &T) -> io::Result<()> {
        let mut line = serde_json::to_string(frame).map_err(io::Error::other)?;
        line.push('\n');
        self.0.write_all(line.as_bytes()).await?;
        self.0.flush().await
    }
}

/// The next frame; `None` at the end of the stream. Cancel safe (a line is read whole).
pub async fn receive<T: for<'de> Deserialize<'de>>(
    reader: &mut FrameReader,
) -> io::Result<Option<T>> {
    match reader.next_line().await? {
        None => Ok(None),
        Some(line) => serde_json::from_str(&line)
            .map(Some)
            .map_err(io::Error::other),
    }
}
