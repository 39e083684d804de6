//! Finding process groups' members in /proc, for all of them at once.
//!
//! Without cgroups, a generation's processes are found by scanning /proc (see
//! `pgroup`): reading every process's `stat` and `environ`. When many generations stop
//! together (`pop stop`, a fence), one scan per generation per look costs O(services x
//! processes). So the generations that want their members now share scans: a request
//! joins the next scan (never one already under way, which could have missed a process
//! that started before the request), and one scan, on the blocking pool, answers every
//! request waiting for it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::super::procfs;
use super::super::TOKEN_ENV;
use super::pgroup::PgroupGroup;

/// One group's question: the processes in `pgid` or carrying `entry`, and their
/// descendants.
struct Request {
    pgid: Option<i32>,
    entry: Vec<u8>,
    reply: oneshot::Sender<Vec<i32>>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Request>,
    /// A blocking task is scanning, and takes the waiting requests when done.
    scanning: bool,
}

/// Shares /proc scans between process groups.
#[derive(Default)]
pub(crate) struct Scanner {
    state: Mutex<State>,
}

impl Scanner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live members of `group`, found by a scan that starts after this call. Must
    /// be called inside the runtime.
    pub async fn members(self: &Arc<Self>, group: &PgroupGroup) -> Vec<i32> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push(Request {
                pgid: group.pgid(),
                entry: group.entry().to_vec(),
                reply,
            });
            !std::mem::replace(&mut state.scanning, true)
        };
        if start {
            let scanner = Arc::clone(self);
            tokio::task::spawn_blocking(move || scanner.serve());
        }
        answer.await.unwrap_or_default()
    }

    /// Scans for the waiting requests until none is left.
    fn serve(&self) {
        loop {
            let requests = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.scanning = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let queries: Vec<(Option<i32>, &[u8])> = requests
                .iter()
                .map(|r| (r.pgid, r.entry.as_slice()))
                .collect();
            let answers = find_many(&queries);
            for (request, members) in requests.into_iter().zip(answers) {
                let _ = request.reply.send(members);
            }
        }
    }
}

/// For each query, the live processes in its pgid or carrying its token entry, plus all
/// their live descendants; one pass over /proc. Never the agent itself or init.
pub(crate) fn find_many(queries: &[(Option<i32>, &[u8])]) -> Vec<Vec<i32>> {
    let me = std::process::id() as i32;
    let stats: HashMap<i32, procfs::Stat> = procfs::all_pids()
        .into_iter()
        .filter(|p| *p != me && *p > 1)
        .filter_map(|p| procfs::stat(p).map(|s| (p, s)))
        .filter(|(_, s)| !s.is_dead())
        .collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, stat) in &stats {
        children.entry(stat.ppid).or_default().push(*pid);
    }
    let mut by_pgid: HashMap<i32, Vec<usize>> = HashMap::new();
    let mut by_entry: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, (pgid, entry)) in queries.iter().enumerate() {
        if let Some(pgid) = pgid {
            by_pgid.entry(*pgid).or_default().push(i);
        }
        by_entry.entry(entry).or_default().push(i);
    }
    let mut seeds: Vec<Vec<i32>> = vec![Vec::new(); queries.len()];
    for (pid, stat) in &stats {
        let mut hit: HashSet<usize> = HashSet::new();
        if let Some(qs) = by_pgid.get(&stat.pgid) {
            hit.extend(qs);
        }
        // One read of the environment per process, whatever the number of queries.
        if let Some(entry) = procfs::env_entry(*pid, TOKEN_ENV) {
            if let Some(qs) = by_entry.get(entry.as_slice()) {
                hit.extend(qs);
            }
        }
        for q in hit {
            seeds[q].push(*pid);
        }
    }
    seeds
        .into_iter()
        .map(|seed| {
            // Descendants that dropped the token (e.g. exec with a clean environment).
            let mut members: HashSet<i32> = seed.iter().copied().collect();
            let mut todo = seed;
            while let Some(pid) = todo.pop() {
                for child in children.get(&pid).into_iter().flatten() {
                    if members.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
            let mut v: Vec<i32> = members.into_iter().collect();
            v.sort_unstable();
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    fn start(cmd: &mut Command) -> Child {
        cmd.process_group(0).spawn().expect("spawn")
    }

    fn children_of(pid: u32) -> Vec<i32> {
        procfs::all_pids()
            .into_iter()
            .filter(|p| procfs::stat(*p).is_some_and(|s| s.ppid == pid as i32))
            .collect()
    }

    #[test]
    fn one_scan_answers_each_group_with_its_descendants() {
        let entry = |token: &str| format!("{TOKEN_ENV}={token}").into_bytes();
        let mut a = start(Command::new("sleep").arg("300").env(TOKEN_ENV, "m/a/1"));
        // The token is dropped by the child: found as a descendant.
        let mut b = start(
            Command::new("sh")
                .args(["-c", "env -u POP_SUPERVISION_TOKEN sleep 301 & wait"])
                .env(TOKEN_ENV, "m/b/1"),
        );
        let mut c = start(Command::new("sleep").arg("302").env_remove(TOKEN_ENV));
        let deadline = Instant::now() + Duration::from_secs(10);
        while children_of(b.id()).is_empty() {
            assert!(Instant::now() < deadline, "b's child did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let b_child = children_of(b.id())[0];
        let (ea, eb, none) = (entry("m/a/1"), entry("m/b/1"), entry("m/none/1"));
        let found = find_many(&[
            (None, ea.as_slice()),
            (None, eb.as_slice()),
            (Some(c.id() as i32), none.as_slice()),
            (None, none.as_slice()),
        ]);
        let mut b_members = vec![b.id() as i32, b_child];
        b_members.sort_unstable();
        assert_eq!(
            found,
            vec![vec![a.id() as i32], b_members, vec![c.id() as i32], vec![]]
        );
        for child in [&mut a, &mut b, &mut c] {
            let _ = child.kill();
            let _ = child.wait();
        }
        // SAFETY: kill with a pid and a signal number.
        unsafe { libc::kill(b_child, libc::SIGKILL) };
    }
}
