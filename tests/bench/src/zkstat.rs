//! What ZooKeeper servers say about their load, through four-letter words: `mntr`
//! (packet counters, outstanding requests, connections) and `wchs` (watches held).
//! Counters are per server and count client packets only; a fleet's figure is the sum.

use anyhow::{anyhow, Context, Result};
use pop_zkserver::four_letter;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

/// One server's `mntr`, the numeric lines by key.
#[derive(Debug, Clone, Default)]
pub struct Mntr(BTreeMap<String, i64>);

impl Mntr {
    pub fn read(addr: SocketAddr) -> Result<Mntr> {
        let text = four_letter(addr, "mntr", TIMEOUT).with_context(|| format!("mntr of {addr}"))?;
        Ok(Mntr::parse(&text))
    }

    /// `key<TAB>value` lines; the non-numeric ones (version, state) are left out.
    fn parse(text: &str) -> Mntr {
        Mntr(
            text.lines()
                .filter_map(|l| {
                    let (key, value) = l.split_once('\t')?;
                    Some((key.trim().to_string(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> i64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Client packets received and sent since the server started.
    pub fn packets(&self) -> i64 {
        self.get("zk_packets_received") + self.get("zk_packets_sent")
    }

    pub fn outstanding(&self) -> i64 {
        self.get("zk_outstanding_requests")
    }

    pub fn connections(&self) -> i64 {
        self.get("zk_num_alive_connections")
    }
}

/// Packets received per session (`cons`: one line per connection, `recved=` and `sid=`;
/// a connection with no session yet, as the one asking, is left out).
pub fn received_by_session(addr: SocketAddr) -> Result<BTreeMap<i64, i64>> {
    let text = four_letter(addr, "cons", TIMEOUT).with_context(|| format!("cons of {addr}"))?;
    Ok(parse_cons(&text))
}

fn parse_cons(text: &str) -> BTreeMap<i64, i64> {
    let field = |line: &str, key: &str| -> Option<String> {
        let start = line.find(key)? + key.len();
        let rest = &line[start..];
        let end = rest.find([',', ')']).unwrap_or(rest.len());
        Some(rest[..end].to_string())
    };
    text.lines()
        .filter_map(|line| {
            let received = field(line, "recved=")?.parse().ok()?;
            let sid = field(line, "sid=0x")?;
            let sid = u64::from_str_radix(&sid, 16).ok()? as i64;
            Some((sid, received))
        })
        .collect()
}

/// Client packets over every server that answers (a server down counts nothing).
pub fn packets(servers: &[SocketAddr]) -> i64 {
    servers
        .iter()
        .filter_map(|a| Mntr::read(*a).ok())
        .map(|m| m.packets())
        .sum()
}

/// Watches held over all servers (`wchs`: "Total watches:N").
pub fn watches(servers: &[SocketAddr]) -> Result<i64> {
    let mut total = 0;
    for addr in servers {
        let text =
            four_letter(*addr, "wchs", TIMEOUT).with_context(|| format!("wchs of {addr}"))?;
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("Total watches:"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .ok_or_else(|| anyhow!("wchs of {addr} has no total: {text}"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mntr_keeps_numbers_and_skips_text() {
        let m = Mntr::parse(
            "zk_version\t3.8.0-1\nzk_packets_received\t70\nzk_packets_sent\t69\n\
             zk_outstanding_requests\t3\nzk_server_state\tleader\n",
        );
        assert_eq!((m.packets(), m.outstanding(), m.connections()), (139, 3, 0));
    }

    #[test]
    fn cons_gives_packets_per_session_and_skips_the_asker() {
        let text =
            " /127.0.0.1:40370[1](queued=0,recved=5031,sent=5030,sid=0x100044,lop=GETD,est=1)\n \
                    /127.0.0.1:40382[0](queued=0,recved=1,sent=0)\n";
        assert_eq!(parse_cons(text), [(0x100044, 5031)].into());
    }
}
