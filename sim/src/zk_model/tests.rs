use super::*;
use std::time::Duration;

fn create(path: &str, mode: CreateMode) -> ZkOp {
    ZkOp::Create {
        path: path.into(),
        data: b"x".to_vec(),
        mode,
        acl: Default::default(),
    }
}

fn get(path: &str) -> ZkOp {
    ZkOp::GetData {
        path: path.into(),
        watch: true,
    }
}

fn list(path: &str) -> ZkOp {
    ZkOp::GetChildren {
        path: path.into(),
        watch: true,
    }
}

fn event(s: SessionId, path: &str, kind: WatchKind) -> Notification {
    (
        s,
        WatchEvent {
            path: path.into(),
            kind,
        },
    )
}

#[test]
fn cversion_counts_child_creates_and_deletes() {
    let mut zk = ZkModel::new();
    let s = zk.open_session();
    zk.apply(s, &create("/a", CreateMode::Persistent));
    zk.apply(s, &create("/a/b", CreateMode::Persistent));
    zk.apply(s, &create("/a/c", CreateMode::Ephemeral));
    assert_eq!(zk.get("/a").map(|n| n.cversion), Some(2));
    zk.apply(
        s,
        &ZkOp::Delete {
            path: "/a/b".into(),
            version: None,
        },
    );
    zk.expire(s);
    assert_eq!(zk.get("/a").map(|n| (n.cversion, n.version)), Some((4, 0)));
}

#[test]
fn errors_as_the_server_gives_them() {
    let mut zk = ZkModel::new();
    let s = zk.open_session();
    let err = |r: (ZkReply, Vec<Notification>)| match r.0 {
        ZkReply::Error(e) => Some(e),
        _ => None,
    };
    assert_eq!(
        err(zk.apply(s, &create("/x/y", CreateMode::Persistent))),
        Some(ZkError::NoNode)
    );
    zk.apply(s, &create("/e", CreateMode::Ephemeral));
    assert_eq!(
        err(zk.apply(s, &create("/e/c", CreateMode::Persistent))),
        Some(ZkError::Other(NO_CHILDREN_FOR_EPHEMERALS.into()))
    );
    assert_eq!(
        err(zk.apply(s, &create("/e", CreateMode::Persistent))),
        Some(ZkError::NodeExists)
    );
    zk.apply(s, &create("/p", CreateMode::Persistent));
    zk.apply(s, &create("/p/c", CreateMode::Persistent));
    let delete = |version| ZkOp::Delete {
        path: "/p".into(),
        version,
    };
    // The version is checked before the children.
    assert_eq!(
        err(zk.apply(s, &delete(Some(3)))),
        Some(ZkError::BadVersion)
    );
    assert_eq!(err(zk.apply(s, &delete(Some(0)))), Some(ZkError::NotEmpty));
    zk.expire(s);
    assert_eq!(err(zk.apply(s, &get("/p"))), Some(ZkError::SessionExpired));
}

#[test]
fn a_failed_read_leaves_no_watch_and_each_watched_read_fires_once() {
    let mut zk = ZkModel::new();
    let a = zk.open_session();
    let b = zk.open_session();
    zk.apply(a, &get("/n"));
    zk.apply(a, &list("/n"));
    let (_, fired) = zk.apply(b, &create("/n", CreateMode::Persistent));
    assert!(fired.is_empty(), "{fired:?}");
    zk.apply(a, &get("/n"));
    zk.apply(a, &get("/n"));
    zk.apply(a, &list("/n"));
    let (_, fired) = zk.apply(b, &create("/n/c", CreateMode::Persistent));
    assert_eq!(fired, vec![event(a, "/n", WatchKind::ChildrenChanged)]);
    zk.apply(
        b,
        &ZkOp::Delete {
            path: "/n/c".into(),
            version: None,
        },
    );
    let (_, fired) = zk.apply(b, &list("/n"));
    assert!(fired.is_empty());
    let (_, fired) = zk.apply(
        b,
        &ZkOp::Delete {
            path: "/n".into(),
            version: None,
        },
    );
    // Two data watchers of `a`, the child watcher `b` set: all told of the deletion.
    assert_eq!(
        fired,
        vec![
            event(a, "/n", WatchKind::Deleted),
            event(a, "/n", WatchKind::Deleted),
            event(b, "/n", WatchKind::Deleted),
        ]
    );
}

#[test]
fn a_multi_is_all_or_nothing() {
    let mut zk = ZkModel::new();
    let a = zk.open_session();
    let b = zk.open_session();
    zk.apply(b, &list("/"));
    let (result, fired) = zk.multi(
        a,
        &[
            create("/m", CreateMode::Persistent),
            create("/m/x", CreateMode::Persistent),
            create("/m", CreateMode::Persistent),
        ],
    );
    assert_eq!(result, Err((2, ZkError::NodeExists)));
    assert!(fired.is_empty());
    assert!(zk.get("/m").is_none());
    assert_eq!(zk.get("/").map(|n| n.cversion), Some(0));
    let (result, fired) = zk.multi(
        a,
        &[
            create("/m", CreateMode::Persistent),
            ZkOp::SetData {
                path: "/m".into(),
                data: b"y".to_vec(),
                version: Some(0),
            },
            create("/m/x", CreateMode::Ephemeral),
        ],
    );
    let stat = NodeStat {
        version: 1,
        ephemeral_owner: 0,
        // The multi's create of /m was transaction 3, its set 4.
        mzxid: 4,
        pzxid: 3,
    };
    assert_eq!(
        result,
        Ok(vec![
            ZkReply::Created,
            ZkReply::Set { stat },
            ZkReply::Created
        ])
    );
    assert_eq!(fired, vec![event(b, "/", WatchKind::ChildrenChanged)]);
    assert_eq!(
        zk.multi(a, &[get("/m")]).0,
        Err((0, ZkError::Other(READ_IN_MULTI.into())))
    );
}

#[test]
fn clocked_sessions_expire_on_tick_boundaries() {
    let mut zk = ZkModel::with_tick(200);
    let a = zk.open_session_with_timeout(1_000, Duration::from_millis(100));
    let b = zk.open_session_with_timeout(1_000, Duration::from_secs(60));
    let forever = zk.open_session();
    assert_eq!(
        zk.session(a).and_then(|s| s.timeout),
        Some(Duration::from_millis(400))
    );
    assert_eq!(
        zk.session(b).and_then(|s| s.timeout),
        Some(Duration::from_millis(4_000))
    );
    zk.apply(a, &create("/eph", CreateMode::Ephemeral));
    zk.apply(b, &get("/eph"));
    assert_eq!(zk.expires_at(a), Some(1_600));
    zk.touch(a, 1_300);
    assert!(zk.expire_idle(1_799).is_empty());
    let expired = zk.expire_idle(1_800);
    assert_eq!(
        expired,
        vec![(a, vec![event(b, "/eph", WatchKind::Deleted)])]
    );
    assert!(zk.get("/eph").is_none());
    assert_eq!(
        zk.apply(a, &get("/")).0,
        ZkReply::Error(ZkError::SessionExpired)
    );
    assert_eq!(zk.expire_idle(u64::MAX).len(), 1);
    assert!(zk.is_live(forever));
}

#[test]
fn a_closing_session_hears_of_its_own_ephemerals() {
    let mut zk = ZkModel::new();
    let a = zk.open_session();
    zk.apply(a, &create("/p", CreateMode::Persistent));
    zk.apply(a, &create("/p/e", CreateMode::Ephemeral));
    zk.apply(a, &get("/p/e"));
    zk.apply(a, &get("/p"));
    assert_eq!(zk.expire(a), vec![event(a, "/p/e", WatchKind::Deleted)]);
    // Its other watches went with it.
    let b = zk.open_session();
    let (_, fired) = zk.apply(
        b,
        &ZkOp::SetData {
            path: "/p".into(),
            data: Vec::new(),
            version: None,
        },
    );
    assert!(fired.is_empty());
}

fn create_with(path: &str, acl: Acl) -> ZkOp {
    ZkOp::Create {
        path: path.into(),
        data: Vec::new(),
        mode: CreateMode::Persistent,
        acl,
    }
}

fn reply_error(r: (ZkReply, Vec<Notification>)) -> Option<ZkError> {
    match r.0 {
        ZkReply::Error(e) => Some(e),
        _ => None,
    }
}

#[test]
fn acls_are_checked_where_the_server_checks_them() {
    let mut zk = ZkModel::new();
    let admin = zk.open_session();
    zk.add_auth(admin, "admin:pw");
    let anon = zk.open_session();
    let id = pop_core::digest::digest_id("admin:pw");
    let admin_only = Acl::none().digest(&id, Perms::ALL);
    let read_anyone = admin_only.clone().anyone(Perms::READ);
    assert_eq!(
        reply_error(zk.apply(admin, &create_with("/a", read_anyone))),
        None
    );
    assert_eq!(
        reply_error(zk.apply(admin, &create_with("/a/s", admin_only))),
        None
    );
    // create and delete: the parent's right; the node's own ACL does not matter.
    assert_eq!(
        reply_error(zk.apply(anon, &create_with("/a/x", Acl::open()))),
        Some(ZkError::NoAuth)
    );
    let delete = ZkOp::Delete {
        path: "/a/s".into(),
        version: Some(7),
    };
    assert_eq!(reply_error(zk.apply(anon, &delete)), Some(ZkError::NoAuth));
    // The parent's DELETE right is checked before the node is looked for; a missing
    // parent is reported before its CREATE right.
    let delete_missing = ZkOp::Delete {
        path: "/a/none".into(),
        version: None,
    };
    assert_eq!(
        reply_error(zk.apply(anon, &delete_missing)),
        Some(ZkError::NoAuth)
    );
    assert_eq!(
        reply_error(zk.apply(anon, &create_with("/a/none/x", Acl::open()))),
        Some(ZkError::NoNode)
    );
    // Reads need READ on the node; a refused watched read leaves no watch.
    assert_eq!(reply_error(zk.apply(anon, &get("/a"))), None);
    assert_eq!(
        reply_error(zk.apply(anon, &get("/a/s"))),
        Some(ZkError::NoAuth)
    );
    assert_eq!(
        reply_error(zk.apply(anon, &list("/a/s"))),
        Some(ZkError::NoAuth)
    );
    let set = ZkOp::SetData {
        path: "/a/s".into(),
        data: b"x".to_vec(),
        version: None,
    };
    let (_, fired) = zk.apply(admin, &set);
    assert!(fired.is_empty(), "{fired:?}");
    // setData needs WRITE on the node, checked before the version.
    let set_old = ZkOp::SetData {
        path: "/a".into(),
        data: Vec::new(),
        version: Some(9),
    };
    assert_eq!(reply_error(zk.apply(anon, &set_old)), Some(ZkError::NoAuth));
    // getACL: READ shows digests as user:x; ADMIN shows them whole; neither: refused.
    let (shown, _) = zk.get_acl(anon, "/a").expect("anyone may read /a");
    assert_eq!(shown.to_string(), "[admin=all world:anyone=r]");
    assert!(shown.entries().iter().any(|e| e.id == "admin:x"));
    let (whole, _) = zk.get_acl(admin, "/a").expect("the admin reads /a's ACL");
    assert!(whole.entries().iter().any(|e| e.id == id));
    assert_eq!(zk.get_acl(anon, "/a/s").err(), Some(ZkError::NoAuth));
    // setACL needs ADMIN, then checks the ACL version.
    let set_acl = |version| ZkOp::SetAcl {
        path: "/a/s".into(),
        acl: Acl::open(),
        version,
    };
    assert_eq!(
        reply_error(zk.apply(anon, &set_acl(None))),
        Some(ZkError::NoAuth)
    );
    assert_eq!(
        reply_error(zk.apply(admin, &set_acl(Some(1)))),
        Some(ZkError::BadVersion)
    );
    assert_eq!(reply_error(zk.apply(admin, &set_acl(Some(0)))), None);
    assert_eq!(zk.aversion("/a/s"), Some(1));
    assert_eq!(reply_error(zk.apply(anon, &get("/a/s"))), None);
    // The client refuses an empty ACL.
    assert_eq!(
        reply_error(zk.apply(admin, &create_with("/a/e", Acl::none()))),
        Some(ZkError::Other(INVALID_ACL.into()))
    );
}

#[test]
fn a_multi_refused_anywhere_applies_nothing() {
    let mut zk = ZkModel::new();
    let admin = zk.open_session();
    zk.add_auth(admin, "admin:pw");
    let machine = zk.open_session();
    zk.add_auth(machine, "m1:secret");
    let admin_id = pop_core::digest::digest_id("admin:pw");
    let m1 = pop_core::digest::digest_id("m1:secret");
    let state = Acl::none()
        .digest(&admin_id, Perms::ALL)
        .digest(&m1, Perms::READ.and(Perms::CREATE).and(Perms::DELETE));
    zk.apply(admin, &create_with("/s", state));
    zk.apply(
        admin,
        &create_with("/settings", Acl::none().digest(&admin_id, Perms::ALL)),
    );
    let ops = vec![
        create_with("/s/m1", Acl::none().digest(&m1, Perms::ALL)),
        ZkOp::SetData {
            path: "/settings".into(),
            data: b"evil".to_vec(),
            version: None,
        },
    ];
    let (result, fired) = zk.multi(machine, &ops);
    assert_eq!(result, Err((1, ZkError::NoAuth)));
    assert!(fired.is_empty());
    assert!(zk.get("/s/m1").is_none());
    // Its own create alone is allowed: CREATE on the parent covers any child's name.
    let (result, _) = zk.multi(machine, &ops[..1]);
    assert!(result.is_ok(), "{result:?}");
    let other = create_with("/s/m2", Acl::none().digest(&m1, Perms::ALL));
    assert_eq!(reply_error(zk.apply(machine, &other)), None);
    // A superuser passes every check.
    let root = zk.open_superuser_session();
    assert_eq!(reply_error(zk.apply(root, &ops[1])), None);
}
