//! Resync after an outage (issue 15: a fleet resyncing together must not flood the
//! servers): a new session reads its index and every service in it again, with at most
//! `MAX_OUTSTANDING_READS` of those reads outstanding, the rest sent as replies come back;
//! and agents whose reads failed together retry apart (jitter from the agent's seed).

mod common;

use pop_core::event::{Action, Input};
use pop_core::zk::{NodeStat, RequestId, SessionEvent, SessionId, ZkOp, ZkReply};
use pop_core::{Agent, Timestamp, MAX_OUTSTANDING_READS};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

const SERVICES: usize = 1000;

fn agent() -> Agent {
    seeded(1)
}

fn seeded(seed: u64) -> Agent {
    Agent::new(common::config("m1", seed, Default::default()))
}

fn name(i: usize) -> String {
    format!("s{i:04}")
}

/// The index of m1, the agent's first read.
const INDEX: &str = "/assignments/m1";

/// What a ZooKeeper holding SERVICES services, all deployed on m1, answers; another
/// machine keeps the index (so m1 reads only its own).
fn answer(op: &ZkOp) -> ZkReply {
    let stat = NodeStat {
        mzxid: 1,
        ..NodeStat::default()
    };
    match op {
        ZkOp::GetChildren { path, .. } if path == INDEX => ZkReply::Children {
            names: (0..SERVICES).map(name).collect(),
            stat,
        },
        ZkOp::Create { path, .. } if path == "/pop/keeper" => {
            ZkReply::Error(pop_core::zk::ZkError::NodeExists)
        }
        ZkOp::GetData { path, .. } if path == "/pop/keeper" => ZkReply::Data {
            data: b"m9".to_vec(),
            stat,
        },
        ZkOp::GetChildren { .. } => ZkReply::Children {
            names: Vec::new(),
            stat,
        },
        ZkOp::GetData { path, .. } if path.ends_with("/machines") => ZkReply::Data {
            data: b"[\"m1\"]".to_vec(),
            stat,
        },
        ZkOp::GetData { .. } => ZkReply::Data {
            data: br#"{"type":"command","command":"serve"}"#.to_vec(),
            stat,
        },
        ZkOp::Create { .. } => ZkReply::Created,
        ZkOp::SetData { .. } => ZkReply::Set { stat },
        ZkOp::Delete { .. } => ZkReply::Deleted,
        ZkOp::SetAcl { .. } => ZkReply::Set { stat },
        ZkOp::Check { .. } => ZkReply::Checked,
        ZkOp::WatchTree { .. } => ZkReply::Watching,
        ZkOp::Multi { ops } => ZkReply::Multi {
            replies: ops.iter().map(answer).collect(),
        },
    }
}

fn is_read(op: &ZkOp) -> bool {
    matches!(op, ZkOp::GetData { .. } | ZkOp::GetChildren { .. })
}

/// Feeds `input`, then answers every request in the order sent, one reply per input,
/// checking after each input that no more than the cap of reads is outstanding.
/// Returns the reads answered, by path.
fn run_until_quiet(a: &mut Agent, clock: &mut u64, input: Input) -> BTreeMap<String, usize> {
    let mut in_flight: VecDeque<(RequestId, ZkOp)> = VecDeque::new();
    let mut reads: BTreeMap<String, usize> = BTreeMap::new();
    let mut next = Some(input);
    while let Some(input) = next.take() {
        *clock += 1;
        a.handle(Timestamp::from_millis(*clock), input);
        for action in a.drain_actions() {
            if let Action::Zk { id, op } = action {
                in_flight.push_back((id, op));
            }
        }
        let outstanding = in_flight.iter().filter(|(_, op)| is_read(op)).count();
        assert!(
            outstanding <= MAX_OUTSTANDING_READS,
            "{outstanding} reads outstanding, the cap is {MAX_OUTSTANDING_READS}"
        );
        assert_eq!(a.reads_in_flight(), outstanding);
        if let Some((id, op)) = in_flight.pop_front() {
            if is_read(&op) {
                *reads.entry(op.path().to_string()).or_default() += 1;
            }
            next = Some(Input::Reply {
                id,
                reply: answer(&op),
            });
        }
    }
    assert_eq!(a.queued_reads(), 0, "reads left waiting");
    reads
}

fn connected(session: i64) -> Input {
    Input::Session(SessionEvent::Connected {
        session: SessionId(session),
        timeout: Duration::from_secs(4),
    })
}

#[test]
fn a_new_session_with_a_thousand_services_keeps_reads_under_the_cap() {
    let mut a = agent();
    let mut clock = 1000;
    let first = run_until_quiet(&mut a, &mut clock, connected(1));
    // Every service's machines list and settings read, each once.
    for i in 0..SERVICES {
        assert_eq!(
            first.get(&format!("/services/{}/machines", name(i))),
            Some(&1)
        );
        assert_eq!(
            first.get(&format!("/services/{}/settings", name(i))),
            Some(&1)
        );
    }
    // The thousands of reads queued and the actions drained leave no buffer behind of
    // the size they reached.
    assert_eq!(a.queue_capacity(), 0, "the queues keep their buffers");
    // The session expires; the new one reads them all again, under the cap again.
    clock += 1;
    a.handle(
        Timestamp::from_millis(clock),
        Input::Session(SessionEvent::Expired),
    );
    assert!(a.drain_actions().contains(&Action::NewSession));
    let second = run_until_quiet(&mut a, &mut clock, connected(2));
    assert_eq!(second.len(), first.len(), "every path read again");
    assert_eq!(a.queue_capacity(), 0, "the queues keep their buffers");
}

/// Reads queued under the cap survive a snapshot of the agent (the journal's): the copy
/// sends exactly what the original sends.
#[test]
fn queued_reads_are_part_of_the_snapshot() {
    let mut a = agent();
    a.handle(Timestamp::from_millis(1), connected(1));
    let first = a.drain_actions();
    let list = first
        .iter()
        .find_map(|action| match action {
            Action::Zk {
                id,
                op: op @ ZkOp::GetChildren { path, .. },
            } if path == INDEX => Some((*id, op.clone())),
            _ => None,
        })
        .expect("the index is read");
    a.handle(
        Timestamp::from_millis(2),
        Input::Reply {
            id: list.0,
            reply: answer(&list.1),
        },
    );
    let _ = a.drain_actions();
    assert!(
        a.queued_reads() > 0,
        "the thousand services wait under the cap"
    );
    let json = serde_json::to_string(&a).expect("snapshot");
    let mut copy: Agent = serde_json::from_str(&json).expect("restore");
    assert_eq!(copy.queued_reads(), a.queued_reads());
    // The first service's machines list, read after the index (#3) and the keeper's
    // claim (#5).
    let reply = Input::Reply {
        id: RequestId(6),
        reply: ZkReply::Data {
            data: b"[]".to_vec(),
            stat: NodeStat::default(),
        },
    };
    a.handle(Timestamp::from_millis(3), reply.clone());
    copy.handle(Timestamp::from_millis(3), reply);
    assert_eq!(a.drain_actions(), copy.drain_actions());
}

/// Agents whose index read failed at the same moment retry at different times,
/// each within the retry delay plus its jitter (500 ms to 1 s).
#[test]
fn failed_reads_are_retried_with_jitter() {
    let retry_at = |seed: u64| {
        let mut a = seeded(seed);
        a.handle(Timestamp::from_millis(1000), connected(1));
        let list = a
            .drain_actions()
            .into_iter()
            .find_map(|action| match action {
                Action::Zk {
                    id,
                    op: ZkOp::GetChildren { path, .. },
                } if path == INDEX => Some(id),
                _ => None,
            })
            .expect("the index is read");
        let failed = Input::Reply {
            id: list,
            reply: ZkReply::Error(pop_core::zk::ZkError::ConnectionLoss),
        };
        a.handle(Timestamp::from_millis(1000), failed);
        a.poll_timeout().expect("a retry").as_millis()
    };
    let times: std::collections::BTreeSet<u64> = (1..=8).map(retry_at).collect();
    assert!(times.iter().all(|t| (1500..2000).contains(t)), "{times:?}");
    assert!(times.len() >= 6, "8 agents retry at only {times:?}");
}
