use super::*;
use crate::zk::NodeStat;

const ME: SessionId = SessionId(7);

/// What the keeper sends now, as (job, what was sent, request).
fn sends(k: &mut Keeper, access: &AgentAccess) -> (Vec<(Job, Sent, ZkOp)>, Effects) {
    let mut fx = Effects::default();
    let mut out = Vec::new();
    while let Some(next) = k.next("m1", None, access, &mut fx) {
        out.push(next);
    }
    (out, fx)
}

fn open_sends(k: &mut Keeper) -> Vec<(Job, Sent, ZkOp)> {
    sends(k, &AgentAccess::Open).0
}

fn reply(k: &mut Keeper, job: &Job, sent: Sent, r: ZkReply) -> Effects {
    let mut fx = Effects::default();
    k.on_reply(job.clone(), sent, &r, Some(ME), &mut fx);
    fx
}

fn children(names: &[&str]) -> ZkReply {
    ZkReply::Children {
        names: names.iter().map(|n| n.to_string()).collect(),
        stat: NodeStat::default(),
    }
}

fn data(bytes: &[u8], owner: i64) -> ZkReply {
    ZkReply::Data {
        data: bytes.to_vec(),
        stat: NodeStat {
            ephemeral_owner: owner,
            ..NodeStat::default()
        },
    }
}

fn err(e: ZkError) -> ZkReply {
    ZkReply::Error(e)
}

/// Answers every request sent with what `answer` says, until nothing is sent; returns
/// the writes to the index, in order.
fn settle(k: &mut Keeper, mut answer: impl FnMut(&ZkOp) -> ZkReply) -> Vec<ZkOp> {
    let mut writes = Vec::new();
    for _ in 0..100 {
        let out = open_sends(k);
        if out.is_empty() {
            return writes;
        }
        for (job, sent, op) in out {
            let read = matches!(op, ZkOp::GetData { .. } | ZkOp::GetChildren { .. });
            if !read && op.path() != paths::KEEPER {
                writes.push(op.clone());
            }
            let r = answer(&op);
            reply(k, &job, sent, r);
        }
    }
    panic!("the keeper does not settle");
}

/// A keeper elected with `services`, the index `index` (machine, its entries) and the
/// lists `lists` (service, data); returns the writes it made to settle.
fn keeper_with(
    services: &[&str],
    index: &[(&str, &[&str])],
    lists: &[(&str, &[u8])],
) -> (Keeper, Vec<ZkOp>) {
    let mut k = Keeper::default();
    k.start(true, &mut Effects::default());
    let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    let index: Vec<(String, Vec<&str>)> = index
        .iter()
        .map(|(m, e)| (paths::assignments(m), e.to_vec()))
        .collect();
    let lists: Vec<(String, Vec<u8>)> = lists
        .iter()
        .map(|(s, d)| (paths::service_machines(s), d.to_vec()))
        .collect();
    let writes = settle(&mut k, |op| answer(op, &services, &index, &lists));
    assert!(k.is_keeper());
    (k, writes)
}

fn answer(
    op: &ZkOp,
    services: &[String],
    index: &[(String, Vec<&str>)],
    lists: &[(String, Vec<u8>)],
) -> ZkReply {
    match op {
        ZkOp::GetChildren { path, .. } if path == paths::SERVICES => {
            let names: Vec<&str> = services.iter().map(String::as_str).collect();
            children(&names)
        }
        ZkOp::GetChildren { path, .. } if path == paths::ASSIGNMENTS => {
            let names: Vec<&str> = index
                .iter()
                .filter_map(|(p, _)| p.rsplit('/').next())
                .collect();
            children(&names)
        }
        ZkOp::GetChildren { path, .. } => match index.iter().find(|(p, _)| p == path) {
            Some((_, entries)) => children(entries),
            None => err(ZkError::NoNode),
        },
        ZkOp::GetData { path, .. } => match lists.iter().find(|(p, _)| p == path) {
            Some((_, d)) => data(d, 0),
            None => err(ZkError::NoNode),
        },
        ZkOp::Create { .. } => ZkReply::Created,
        ZkOp::Delete { .. } => ZkReply::Deleted,
        other => panic!("unexpected {other:?}"),
    }
}

fn create(machine: &str, service: &str) -> ZkOp {
    ZkOp::Create {
        path: paths::assignment(machine, service),
        data: Vec::new(),
        mode: CreateMode::Persistent,
        acl: crate::zk::Acl::open(),
    }
}

fn delete(machine: &str, service: &str) -> ZkOp {
    ZkOp::Delete {
        path: paths::assignment(machine, service),
        version: None,
    }
}

#[test]
fn the_first_to_create_the_node_keeps_and_reads_the_lists_and_the_index() {
    let mut k = Keeper::default();
    k.start(true, &mut Effects::default());
    let out = open_sends(&mut k);
    assert_eq!(out.len(), 1);
    let (job, sent, op) = &out[0];
    assert_eq!(
        *op,
        ZkOp::Create {
            path: "/pop/keeper".into(),
            data: b"m1".to_vec(),
            mode: CreateMode::Ephemeral,
            acl: crate::zk::Acl::open(),
        }
    );
    reply(&mut k, job, *sent, ZkReply::Created);
    assert!(k.is_keeper());
    let ops: Vec<ZkOp> = open_sends(&mut k)
        .into_iter()
        .map(|(_, _, op)| op)
        .collect();
    assert_eq!(
        ops,
        vec![
            ZkOp::GetChildren {
                path: "/services".into(),
                watch: true
            },
            ZkOp::GetChildren {
                path: "/assignments".into(),
                watch: false
            },
        ]
    );
}

#[test]
fn an_agent_that_finds_a_keeper_follows_it_and_tries_again_when_it_goes() {
    let mut k = Keeper::default();
    k.start(true, &mut Effects::default());
    let (job, sent, _) = open_sends(&mut k).remove(0);
    reply(&mut k, &job, sent, err(ZkError::NodeExists));
    let (job, sent, op) = open_sends(&mut k).remove(0);
    assert_eq!(
        op,
        ZkOp::GetData {
            path: "/pop/keeper".into(),
            watch: true
        }
    );
    reply(&mut k, &job, sent, data(b"m2", 99));
    assert_eq!(k.election, Election::Following("m2".into()));
    assert!(
        open_sends(&mut k).is_empty(),
        "a follower sends nothing more"
    );
    k.on_watch("/pop/keeper", WatchKind::Deleted);
    let (job, _, _) = open_sends(&mut k).remove(0);
    assert_eq!(job, Job::Claim, "tries once more when the keeper goes");
}

#[test]
fn a_create_of_unknown_outcome_that_went_through_makes_it_the_keeper() {
    let mut k = Keeper::default();
    k.start(true, &mut Effects::default());
    let (job, sent, _) = open_sends(&mut k).remove(0);
    reply(&mut k, &job, sent, err(ZkError::ConnectionLoss));
    let (job, sent, _) = open_sends(&mut k).remove(0);
    assert_eq!(job, Job::Check);
    reply(&mut k, &job, sent, data(b"m1", ME.0));
    assert!(k.is_keeper());
}

#[test]
fn a_keeper_gone_before_it_is_read_is_claimed_again() {
    let mut k = Keeper::default();
    k.start(true, &mut Effects::default());
    let (job, sent, _) = open_sends(&mut k).remove(0);
    reply(&mut k, &job, sent, err(ZkError::NodeExists));
    let (job, sent, _) = open_sends(&mut k).remove(0);
    reply(&mut k, &job, sent, err(ZkError::NoNode));
    assert_eq!(open_sends(&mut k).remove(0).0, Job::Claim);
}

#[test]
fn an_acl_refusal_keeps_the_machine_out_of_the_election_and_says_so() {
    let mut k = Keeper::default();
    k.start(false, &mut Effects::default());
    let (job, sent, _) = open_sends(&mut k).remove(0);
    let fx = reply(&mut k, &job, sent, err(ZkError::NoAuth));
    assert_eq!(k.election, Election::Refused);
    assert_eq!(fx.problems.len(), 1, "{fx:?}");
    assert!(open_sends(&mut k).is_empty());
}

#[test]
fn the_term_ends_with_the_session() {
    let (mut k, _) = keeper_with(&["s1"], &[("m1", &["s1"])], &[("s1", b"[\"m1\"]")]);
    k.end(&mut Effects::default());
    assert!(!k.is_keeper());
    k.on_watch("/services", WatchKind::ChildrenChanged);
    assert!(open_sends(&mut k).is_empty());
}

#[test]
fn a_list_edited_by_hand_gets_its_missing_entries_and_loses_its_stale_ones() {
    let (_, writes) = keeper_with(
        &["s1"],
        &[("m1", &["s1"]), ("m2", &[])],
        &[("s1", b"[\"m2\"]")],
    );
    assert_eq!(writes, vec![delete("m1", "s1"), create("m2", "s1")]);
}

#[test]
fn an_index_that_agrees_with_the_lists_costs_no_write() {
    let (_, writes) = keeper_with(
        &["s1", "s2"],
        &[("m1", &["s1", "s2"]), ("m2", &["s2"])],
        &[("s1", b"[\"m1\"]"), ("s2", b"[\"m1\",\"m2\"]")],
    );
    assert_eq!(writes, Vec::<ZkOp>::new());
}

#[test]
fn a_list_change_is_read_on_its_watch_and_repaired() {
    let (mut k, _) = keeper_with(
        &["s1"],
        &[("m1", &["s1"]), ("m2", &[])],
        &[("s1", b"[\"m1\"]")],
    );
    k.on_watch("/services/s1/machines", WatchKind::DataChanged);
    let services = vec!["s1".to_string()];
    let lists = vec![(paths::service_machines("s1"), b"[\"m2\"]".to_vec())];
    let writes = settle(&mut k, |op| answer(op, &services, &[], &lists));
    assert_eq!(writes, vec![delete("m1", "s1"), create("m2", "s1")]);
}

#[test]
fn bad_list_data_is_reported_and_changes_nothing() {
    let (mut k, _) = keeper_with(&["s1"], &[("m1", &["s1"])], &[("s1", b"[\"m1\"]")]);
    k.on_watch("/services/s1/machines", WatchKind::DataChanged);
    let (job, sent, _) = open_sends(&mut k).remove(0);
    let fx = reply(&mut k, &job, sent, data(b"[\"m1\", 7", 0));
    assert_eq!(fx.problems.len(), 1, "{fx:?}");
    assert_eq!(fx.problems[0].0, "/services/s1/machines");
    assert!(open_sends(&mut k).is_empty(), "nothing written on bad data");
}

#[test]
fn entries_of_a_removed_service_are_deleted() {
    let (mut k, _) = keeper_with(&["s1"], &[("m1", &["s1"])], &[("s1", b"[\"m1\"]")]);
    k.on_watch("/services", WatchKind::ChildrenChanged);
    let writes = settle(&mut k, |op| answer(op, &[], &[], &[]));
    assert_eq!(writes, vec![delete("m1", "s1")]);
}

#[test]
fn a_machine_without_a_directory_gets_one_first_in_an_open_namespace() {
    let (_, writes) = keeper_with(&["s1"], &[], &[("s1", b"[\"m3\"]")]);
    let directory = ZkOp::Create {
        path: "/assignments/m3".into(),
        data: Vec::new(),
        mode: CreateMode::Persistent,
        acl: crate::zk::Acl::open(),
    };
    assert_eq!(writes, vec![directory, create("m3", "s1")]);
}

#[test]
fn exists_and_no_node_count_as_done() {
    let mut k = Keeper::default();
    k.start(true, &mut Effects::default());
    let services = vec!["s1".to_string(), "s2".to_string()];
    let index = vec![
        (paths::assignments("m1"), vec!["s2"]),
        (paths::assignments("m2"), vec![]),
    ];
    let lists = vec![
        (paths::service_machines("s1"), b"[\"m2\"]".to_vec()),
        (paths::service_machines("s2"), b"[]".to_vec()),
    ];
    let writes = settle(&mut k, |op| match op {
        // Done meanwhile by someone else (a plan).
        ZkOp::Create { path, .. } if path.starts_with("/assignments/m2/") => {
            err(ZkError::NodeExists)
        }
        ZkOp::Delete { .. } => err(ZkError::NoNode),
        other => answer(other, &services, &index, &lists),
    });
    assert_eq!(writes, vec![create("m2", "s1"), delete("m1", "s2")]);
    assert!(k.stalled.is_empty(), "nothing left to retry");
}

#[test]
fn invalid_names_are_ignored_with_a_problem() {
    let mut k = Keeper::default();
    k.start(true, &mut Effects::default());
    let mut problems = Vec::new();
    for _ in 0..10 {
        let (out, fx) = sends(&mut k, &AgentAccess::Open);
        problems.extend(fx.problems);
        for (job, sent, op) in out {
            let r = match op.path() {
                "/services" => children(&["s1", "bad name"]),
                "/assignments" => children(&["m1", "no/good"]),
                "/assignments/m1" => children(&["s1", "x y"]),
                "/services/s1/machines" => data(b"[\"m1\", \"a b\"]", 0),
                _ => ZkReply::Created,
            };
            problems.extend(reply(&mut k, &job, sent, r).problems);
        }
    }
    let paths: BTreeSet<&str> = problems
        .iter()
        .filter(|(_, p)| p.is_some())
        .map(|(path, _)| path.as_str())
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "/services/bad name",
            "/assignments/no/good",
            "/assignments/m1/x y",
            "/assignments/a b/s1",
        ])
    );
}

#[test]
fn a_watch_that_fires_while_its_read_is_out_reads_again() {
    let (mut k, _) = keeper_with(&["s1"], &[("m1", &["s1"])], &[("s1", b"[\"m1\"]")]);
    k.on_watch("/services/s1/machines", WatchKind::DataChanged);
    let (job, sent, _) = open_sends(&mut k).remove(0);
    // Changed again before the reply: that reply may show the list before the change.
    k.on_watch("/services/s1/machines", WatchKind::DataChanged);
    assert!(open_sends(&mut k).is_empty(), "one read out at a time");
    reply(&mut k, &job, sent, data(b"[]", 0));
    let out = open_sends(&mut k);
    assert_eq!(
        out.len(),
        1,
        "read again, and nothing written on the old reply: {out:?}"
    );
    assert_eq!(out[0].0, Job::List("s1".into()));
}

#[test]
fn a_failed_write_is_retried_on_the_timer() {
    let (mut k, _) = keeper_with(&["s1"], &[("m1", &[])], &[("s1", b"[]")]);
    k.on_watch("/services/s1/machines", WatchKind::DataChanged);
    let (job, sent, _) = open_sends(&mut k).remove(0);
    reply(&mut k, &job, sent, data(b"[\"m1\"]", 0));
    let (job, sent, op) = open_sends(&mut k).remove(0);
    assert_eq!(op, create("m1", "s1"));
    let fx = reply(&mut k, &job, sent, err(ZkError::Timeout));
    assert!(fx.retry);
    assert!(open_sends(&mut k).is_empty(), "waits for the timer");
    k.retry();
    assert_eq!(open_sends(&mut k).remove(0).2, create("m1", "s1"));
}

#[test]
fn a_secured_namespace_without_the_machines_directory_reports_it() {
    let mut k = Keeper::default();
    k.start(false, &mut Effects::default());
    let access = AgentAccess::Secured {
        admin: "root:A=".into(),
        machine: "m1:B=".into(),
    };
    let mut problems = Vec::new();
    let mut writes = Vec::new();
    for _ in 0..10 {
        let (out, fx) = sends(&mut k, &access);
        problems.extend(fx.problems);
        for (job, sent, op) in out {
            let r = match op.path() {
                "/services" => children(&["s1"]),
                "/assignments" => children(&[]),
                "/services/s1/machines" => data(b"[\"m9\"]", 0),
                _ => {
                    writes.push(op.clone());
                    ZkReply::Created
                }
            };
            problems.extend(reply(&mut k, &job, sent, r).problems);
        }
    }
    assert_eq!(writes.len(), 1, "only its claim: {writes:?}");
    assert!(
        problems
            .iter()
            .any(|(path, p)| path == "/assignments/m9" && p.is_some()),
        "{problems:?}"
    );
}
