//! Small, allocation-happy readers for `/proc`. Every function tolerates
//! processes vanishing between listing and reading: a missing file just means
//! "not there any more".

use std::collections::HashMap;
use std::fs;
use std::sync::OnceLock;

/// The fields of `/proc/<pid>/stat` we care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    /// Field 22, `starttime`: clock ticks after boot at which the process
    /// started. With the boot id, it tells a pid's reuse from the same process.
    pub start_ticks: u64,
}

impl Stat {
    /// Zombies and dead tasks no longer run code; they only wait to be reaped.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// All numeric entries of `/proc`.
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect()
}

/// Parses `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so we split after the *last* `)`.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    // Fields 6..=21 lie between pgid (5) and starttime (22).
    let start_ticks = fields.nth(16)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgid,
        start_ticks,
    })
}

/// `/proc/sys/kernel/random/boot_id`, trimmed; changes at every boot (so it is read
/// once per process).
pub(crate) fn boot_id() -> Option<String> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .clone()
}

/// Whether `/proc/<pid>/environ` contains exactly the entry `entry`
/// (e.g. `KEY=value`).
pub(crate) fn has_env_entry(pid: i32, entry: &[u8]) -> bool {
    match fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|b| *b == 0).any(|e| e == entry),
        Err(_) => false,
    }
}

/// The `key=value` entry of `key` in `/proc/<pid>/environ`, if any.
pub(crate) fn env_entry(pid: i32, key: &str) -> Option<Vec<u8>> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let key = key.as_bytes();
    env.split(|b| *b == 0)
        .find(|e| e.len() > key.len() && e.starts_with(key) && e[key.len()] == b'=')
        .map(<[u8]>::to_vec)
}

/// The value of `key` in `/proc/<pid>/environ`, if any.
pub(crate) fn env_value(pid: i32, key: &str) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|b| *b == 0)
        .find(|e| e.starts_with(prefix.as_bytes()))
        .map(|e| String::from_utf8_lossy(&e[prefix.len()..]).into_owned())
}

/// Inodes of the sockets open in `pid` (`/proc/<pid>/fd/* -> socket:[N]`).
pub(crate) fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Inode -> local port of every TCP socket in LISTEN state (v4 and v6).
pub(crate) fn listening_tcp_ports() -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(file) {
            parse_net_tcp(&text, &mut out);
        }
    }
    out
}

fn parse_net_tcp(text: &str, out: &mut HashMap<u64, u16>) {
    // Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 || cols[3] != "0A" {
            continue;
        }
        let port = cols[1]
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        let inode = cols[9].parse::<u64>().ok();
        if let (Some(port), Some(inode)) = (port, inode) {
            if inode != 0 {
                out.insert(inode, port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let line =
            "42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        let s = parse_stat(line).expect("parses");
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 7,
                pgid: 42,
                start_ticks: 987654,
            }
        );
        assert_eq!(parse_stat("42 (a) S 7 42 42 0 -1"), None);
    }

    #[test]
    fn own_stat_and_boot_id() {
        let me = stat(std::process::id() as i32).expect("own stat");
        assert!(me.start_ticks > 0);
        assert!(!me.is_dead());
        assert!(boot_id().is_some());
    }

    #[test]
    fn net_tcp_listen_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F91 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 100 0 0 10 0\n";
        let mut m = HashMap::new();
        parse_net_tcp(text, &mut m);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(&12345), Some(&8080));
    }
}
