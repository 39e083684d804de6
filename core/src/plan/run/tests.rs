use super::*;
use crate::plan::testing::{Fate, Tree, GREETER};
use crate::plan::Request;
use crate::task::TaskState;

const CREATED: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn greeter_service(machines: &str) -> Tree {
    let mut tree = Tree::with_service(machines, r#"{"type":"greeter","greeting":"hi","port":0}"#);
    tree.set("/plugins", "");
    tree.set("/plugins/greeter", GREETER);
    tree
}

fn request(task: &str, machines: &[&str]) -> RunRequest {
    RunRequest {
        task: task.into(),
        args: vec!["a b".into()],
        machines: machines
            .iter()
            .map(|m| MachineId::new(m).expect("an id"))
            .collect(),
        rolling: false,
        timeout: None,
        expire: None,
        author: "me@here".into(),
    }
}

fn run(request: RunRequest) -> Run {
    let name = ServiceName::new("s").expect("a name");
    Run::new("zk", &name, request, CREATED, 0xbeef).expect("valid arguments")
}

const ID: &str = "t1700000000000-beef";

fn is_multi(request: &Request) -> bool {
    matches!(request, Request::Write(ZkOp::Multi { .. }))
}

#[test]
fn issues_the_request_and_a_pending_result_per_machine_in_one_multi() {
    let mut tree = greeter_service(r#"["m2","m1"]"#);
    let outcome = tree.run(&mut run(request("hello", &[]))).expect("issued");
    assert_eq!(
        outcome.to_string(),
        format!("issued task hello of s as {ID} on m1, m2")
    );
    assert_eq!(tree.writes.len(), 1, "{:?}", tree.writes);
    assert_eq!(
        tree.data("/services/s/tasks"),
        Some(""),
        "the container, for a service from before tasks"
    );
    let data = tree
        .data(&format!("/services/s/tasks/{ID}"))
        .expect("the request");
    let request = TaskRequest::parse(data.as_bytes()).expect("a request the agents read");
    assert_eq!(
        request.command,
        ["sh", "-c", "echo {greeting} from $POP_MACHINE_ID"]
    );
    assert_eq!(request.args, ["a b"]);
    let machines: Vec<&str> = request.machines.iter().map(MachineId::as_str).collect();
    assert_eq!(machines, ["m1", "m2"], "the machines list's order");
    assert_eq!(request.timeout(), DEFAULT_TIMEOUT);
    assert_eq!(request.expires(), CREATED + DEFAULT_EXPIRY);
    assert_eq!(request.author, "me@here");
    for m in ["m1", "m2"] {
        let data = tree.data(&format!("/services/s/tasks/{ID}/{m}"));
        assert_eq!(data, Some(r#"{"state":"pending"}"#));
        let result = TaskResult::parse(data.unwrap_or_default().as_bytes()).expect("read back");
        assert_eq!(result.state, TaskState::Pending);
    }
}

#[test]
fn in_a_secured_namespace_machines_read_the_task_and_each_writes_its_own_result() {
    let mut tree = greeter_service(r#"["m1","m2"]"#);
    let access = Access::Secured(crate::access::Principals {
        admin: "root:R=".into(),
        machines: [("m1", "m1:A="), ("m2", "m2:B=")]
            .into_iter()
            .map(|(m, id)| (m.to_string(), id.to_string()))
            .collect(),
    });
    tree.run(&mut run(request("hello", &[])).with_access(access))
        .expect("issued");
    assert_eq!(tree.acl("/services/s/tasks"), "[m1=r m2=r root=all]");
    let task = format!("/services/s/tasks/{ID}");
    assert_eq!(tree.acl(&task), "[m1=r m2=r root=all]");
    assert_eq!(tree.acl(&format!("{task}/m1")), "[m1=rw m2=r root=all]");
    assert_eq!(tree.acl(&format!("{task}/m2")), "[m1=r m2=rw root=all]");
}

#[test]
fn given_machines_keep_their_order_and_must_be_deployed_on() {
    let mut tree = greeter_service(r#"["m1","m2","m3"]"#);
    let mut req = request("hello", &["m3", "m1"]);
    req.rolling = true;
    req.timeout = Some(Duration::from_secs(5));
    let outcome = tree.run(&mut run(req)).expect("issued");
    assert!(
        outcome
            .to_string()
            .ends_with("on m3, m1, one machine at a time"),
        "{outcome}"
    );
    let data = tree
        .data(&format!("/services/s/tasks/{ID}"))
        .expect("the request");
    let issued = TaskRequest::parse(data.as_bytes()).expect("a request");
    assert!(issued.rolling);
    assert_eq!(issued.timeout(), Duration::from_secs(5));

    let mut tree = greeter_service(r#"["m1"]"#);
    let err = tree
        .run(&mut run(request("hello", &["m9"])))
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "s is not deployed on m9 (it is deployed on: m1)"
    );
    assert!(tree.writes.is_empty());
}

#[test]
fn refusals_name_the_problem_and_write_nothing() {
    let cases = [
        (
            r#"["m1"]"#,
            "nope",
            "no task \"nope\" for s (its type greeter has: hello)",
        ),
        (
            "[]",
            "hello",
            "s is deployed nowhere: `pop deploy s --machine ID` first",
        ),
        (r#"["m1", 7"#, "hello", "holds an invalid machines list"),
    ];
    for (machines, task, message) in cases {
        let mut tree = greeter_service(machines);
        let err = tree.run(&mut run(request(task, &[]))).expect_err("refused");
        assert!(err.to_string().contains(message), "{err}");
        assert!(tree.writes.is_empty(), "{:?}", tree.writes);
    }
    // A built-in type without tasks.
    let mut tree = Tree::with_service(r#"["m1"]"#, r#"{"type":"echo","port":0}"#);
    let err = tree
        .run(&mut run(request("hello", &[])))
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "no task \"hello\" for s (type echo has no tasks)"
    );
    // No such service.
    let mut tree = greeter_service(r#"["m1"]"#);
    let name = ServiceName::new("other").expect("a name");
    let mut plan = Run::new("zk", &name, request("hello", &[]), CREATED, 1).expect("valid");
    let err = tree.run(&mut plan).expect_err("refused");
    assert_eq!(
        err,
        PlanError::NoSuchService {
            name: "other".into()
        }
    );
    assert!(tree.writes.is_empty());
}

#[test]
fn settings_the_command_cannot_render_with_are_refused() {
    let mut tree = greeter_service(r#"["m1"]"#);
    tree.set("/services/s/settings", r#"{"type":"greeter"}"#);
    let err = tree
        .run(&mut run(request("hello", &[])))
        .expect_err("refused");
    assert!(
        err.to_string().starts_with(
            "task hello of s cannot run with its settings: the command needs setting \"greeting\""
        ),
        "{err}"
    );
    assert!(tree.writes.is_empty());
}

#[test]
fn bad_arguments_are_refused_before_reading() {
    let name = ServiceName::new("s").expect("a name");
    let twice = request("hello", &["m1", "m1"]);
    let mut nul = request("hello", &[]);
    nul.args = vec!["a\0".into()];
    let mut zero = request("hello", &[]);
    zero.timeout = Some(Duration::ZERO);
    let mut long = request("hello", &[]);
    long.expire = Some(MAX_DURATION * 2);
    let bad_name = request("a b", &[]);
    for (req, needle) in [
        (twice, "--machine m1 is given twice"),
        (nul, "NUL"),
        (zero, "--timeout must be longer than 0"),
        (long, "--expire is at most 168h"),
        (bad_name, "task name \"a b\""),
    ] {
        let err = Run::new("zk", &name, req, CREATED, 1)
            .err()
            .expect("refused");
        assert!(err.to_string().starts_with("bad arguments: "), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn a_lost_reply_finds_its_task_written_and_issues_it_once() {
    let mut tree = greeter_service(r#"["m1"]"#);
    let mut lost = false;
    let outcome = tree.run_with(&mut run(request("hello", &[])), |_, r| {
        if is_multi(r) && !lost {
            lost = true;
            return Fate::LoseReply;
        }
        Fate::Deliver
    });
    assert!(
        matches!(outcome, Ok(Outcome::TaskIssued { .. })),
        "{outcome:?}"
    );
    assert_eq!(tree.writes.len(), 1, "{:?}", tree.writes);
}

/// Before its first multi, `pop undeploy s --machine m2` lands.
fn undeploy_m2_before_the_multi(tree: &mut Tree, request: &Request, raced: &mut bool) -> Fate {
    if is_multi(request) && !*raced {
        *raced = true;
        tree.set("/services/s/machines", r#"["m1"]"#);
    }
    Fate::Deliver
}

#[test]
fn an_undeploy_between_the_read_and_the_write_is_read_again_and_not_targeted() {
    let mut tree = greeter_service(r#"["m1","m2"]"#);
    let mut raced = false;
    let outcome = tree.run_with(&mut run(request("hello", &[])), |tree, r| {
        undeploy_m2_before_the_multi(tree, r, &mut raced)
    });
    assert_eq!(
        outcome.expect("issued").to_string(),
        format!("issued task hello of s as {ID} on m1")
    );
    let data = tree
        .data(&format!("/services/s/tasks/{ID}"))
        .expect("the request");
    let request = TaskRequest::parse(data.as_bytes()).expect("a request");
    let machines: Vec<&str> = request.machines.iter().map(MachineId::as_str).collect();
    assert_eq!(machines, ["m1"]);
    assert_eq!(tree.data(&format!("/services/s/tasks/{ID}/m2")), None);
}

#[test]
fn a_named_machine_undeployed_between_the_read_and_the_write_is_refused() {
    let mut tree = greeter_service(r#"["m1","m2"]"#);
    let mut raced = false;
    let outcome = tree.run_with(&mut run(request("hello", &["m2"])), |tree, r| {
        undeploy_m2_before_the_multi(tree, r, &mut raced)
    });
    assert!(
        matches!(outcome, Err(PlanError::NotDeployedOn { ref machine, .. }) if machine == "m2"),
        "{outcome:?}"
    );
    assert_eq!(tree.data(&format!("/services/s/tasks/{ID}")), None);
}

#[test]
fn someone_elses_task_with_the_same_id_is_not_taken_for_ours() {
    let mut tree = greeter_service(r#"["m1"]"#);
    tree.set("/services/s/tasks", "");
    tree.set(&format!("/services/s/tasks/{ID}"), "{}");
    let err = tree
        .run(&mut run(request("hello", &[])))
        .expect_err("refused");
    assert_eq!(err, PlanError::TaskIdTaken { id: ID.into() });
}

fn with_old_tasks(n: u64) -> Tree {
    let mut tree = greeter_service(r#"["m1"]"#);
    tree.set("/services/s/tasks", "");
    tree.set("/services/s/tasks/not-a-task", "");
    for i in 0..n {
        let id = TaskId::new(Timestamp::from_millis(1_000 + i), 0);
        tree.set(&format!("/services/s/tasks/{id}"), "{}");
        tree.set(
            &format!("/services/s/tasks/{id}/m1"),
            r#"{"state":"succeeded"}"#,
        );
    }
    tree
}

#[test]
fn the_oldest_tasks_beyond_the_last_twenty_go_results_first() {
    let mut tree = with_old_tasks(KEEP_TASKS as u64 + 1);
    let outcome = tree.run(&mut run(request("hello", &[]))).expect("issued");
    let Outcome::TaskIssued {
        pruned,
        prune_error,
        ..
    } = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!((*pruned, prune_error), (2, &None));
    assert!(
        outcome.to_string().ends_with("; deleted 2 old tasks"),
        "{outcome}"
    );
    let left: Vec<String> = tree.children("/services/s/tasks");
    assert_eq!(
        left.len(),
        KEEP_TASKS + 1,
        "20 tasks and the foreign node: {left:?}"
    );
    assert!(left.contains(&ID.to_string()) && left.contains(&"not-a-task".to_string()));
    let oldest = TaskId::new(Timestamp::from_millis(1_000), 0);
    assert!(!left.contains(&oldest.to_string()));
    assert!(tree
        .data(&format!("/services/s/tasks/{oldest}/m1"))
        .is_none());
}

#[test]
fn a_failure_to_prune_is_told_but_the_task_is_issued() {
    let mut tree = with_old_tasks(KEEP_TASKS as u64);
    let mut issued = false;
    let outcome = tree.run_with(&mut run(request("hello", &[])), |_, r| {
        if issued {
            return Fate::LoseRequest;
        }
        issued = is_multi(r);
        Fate::Deliver
    });
    let Ok(Outcome::TaskIssued {
        pruned: 0,
        prune_error: Some(error),
        ..
    }) = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert!(error.contains("gave up"), "{error}");
    assert!(tree.data(&format!("/services/s/tasks/{ID}/m1")).is_some());
}

// `install` and `packages`, built into types with a Python environment.

const APP: &str = r#"{"type":"python","module":"app","script":"","packages":["a==1"],"port":0}"#;

fn install(args: &[&str]) -> RunRequest {
    RunRequest {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..request("install", &[])
    }
}

fn packages_of(tree: &Tree) -> Value {
    let settings: Value =
        serde_json::from_str(tree.data("/services/s/settings").expect("settings")).expect("JSON");
    settings["packages"].clone()
}

#[test]
fn install_adds_its_requirements_to_packages_in_the_multi_that_issues_it() {
    let mut tree = Tree::with_service(r#"["m1","m2"]"#, APP);
    let outcome = tree
        .run(&mut run(install(&["b==2", "a==1", " b==2", "/w/c.whl"])))
        .expect("issued");
    assert_eq!(
        outcome.to_string(),
        format!("issued task install of s as {ID} on m1, m2; added to its packages: b==2 /w/c.whl")
    );
    assert_eq!(tree.writes.len(), 1, "one multi: {:?}", tree.writes);
    assert_eq!(
        packages_of(&tree),
        serde_json::json!(["a==1", "b==2", "/w/c.whl"]),
        "kept, then added once each"
    );
    let data = tree
        .data(&format!("/services/s/tasks/{ID}"))
        .expect("the request");
    let request = TaskRequest::parse(data.as_bytes()).expect("a request the agents read");
    assert_eq!(request.kind, TaskKind::Install);
    assert!(request.command.is_empty());
    for m in ["m1", "m2"] {
        assert_eq!(
            tree.data(&format!("/services/s/tasks/{ID}/{m}")),
            Some(r#"{"state":"pending"}"#)
        );
    }
}

#[test]
fn install_retries_after_a_concurrent_set_and_keeps_its_change() {
    let mut tree = Tree::with_service(r#"["m1"]"#, APP);
    let mut raced = false;
    let outcome = tree.run_with(&mut run(install(&["b==2"])), |tree, request| {
        if is_multi(request) && !raced {
            raced = true;
            tree.set(
                "/services/s/settings",
                r#"{"type":"python","module":"app","script":"","packages":["z"],"port":0}"#,
            );
        }
        Fate::Deliver
    });
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(packages_of(&tree), serde_json::json!(["z", "b==2"]));
}

#[test]
fn install_of_requirements_already_there_issues_the_task_and_leaves_the_settings() {
    let mut tree = Tree::with_service(r#"["m1"]"#, APP);
    let before = tree.data("/services/s/settings").map(str::to_string);
    tree.run(&mut run(install(&["a==1"]))).expect("issued");
    assert_eq!(
        tree.data("/services/s/settings").map(str::to_string),
        before
    );
    assert!(tree.data(&format!("/services/s/tasks/{ID}")).is_some());
}

#[test]
fn install_whose_reply_was_lost_is_found_issued() {
    let mut tree = Tree::with_service(r#"["m1"]"#, APP);
    let mut lost = false;
    let outcome = tree.run_with(&mut run(install(&["b==2"])), |_, request| {
        if is_multi(request) && !lost {
            lost = true;
            return Fate::LoseReply;
        }
        Fate::Deliver
    });
    assert!(
        matches!(outcome, Ok(Outcome::TaskIssued { .. })),
        "{outcome:?}"
    );
    assert_eq!(packages_of(&tree), serde_json::json!(["a==1", "b==2"]));
}

#[test]
fn install_refusals_name_the_problem_and_write_nothing() {
    let cases: Vec<(&str, &str, RunRequest, &str)> = vec![
        (r#"["m1"]"#, APP, install(&[]), "install needs one or more requirements"),
        (r#"["m1"]"#, APP, install(&["--index-url=http://x"]), "read as an option"),
        (r#"["m1"]"#, APP, install(&["ok", "a\nb"]), "spans lines"),
        ("[]", APP, install(&["b"]), "deployed nowhere"),
        (
            r#"["m1"]"#,
            APP,
            RunRequest {
                rolling: true,
                ..install(&["b"])
            },
            "--rolling do not apply",
        ),
        (
            r#"["m1"]"#,
            APP,
            RunRequest {
                machines: vec![MachineId::new("m1").expect("an id")],
                ..install(&["b"])
            },
            "--machine and --rolling do not apply",
        ),
        (
            r#"["m1"]"#,
            r#"{"type":"echo","port":0}"#,
            install(&["b"]),
            "install is a task of types with a Python environment; s is of type echo, which has none",
        ),
        (
            r#"["m1"]"#,
            r#"{"type":"python","module":"app","script":"","packages":"a b","port":0}"#,
            install(&["b"]),
            "setting \"packages\"",
        ),
    ];
    for (machines, settings, request, needle) in cases {
        let mut tree = Tree::with_service(machines, settings);
        let outcome = tree.run(&mut run(request));
        let error = outcome.expect_err("refused").to_string();
        assert!(error.contains(needle), "{needle}: {error}");
        assert!(tree.writes.is_empty(), "{needle}: {:?}", tree.writes);
    }
}

#[test]
fn packages_is_issued_with_no_command_and_refuses_arguments() {
    let mut tree = Tree::with_service(r#"["m1"]"#, APP);
    tree.run(&mut run(RunRequest {
        args: Vec::new(),
        ..request("packages", &[])
    }))
    .expect("issued");
    let data = tree
        .data(&format!("/services/s/tasks/{ID}"))
        .expect("the request");
    let request = TaskRequest::parse(data.as_bytes()).expect("a request");
    assert_eq!(request.kind, TaskKind::Packages);
    let mut tree = Tree::with_service(r#"["m1"]"#, APP);
    let error = tree
        .run(&mut run(request_with_args("packages", &["x"])))
        .expect_err("refused")
        .to_string();
    assert!(error.contains("packages takes no arguments"), "{error}");
    assert!(tree.writes.is_empty());
}

#[test]
fn an_unknown_task_of_a_python_type_lists_the_built_in_ones() {
    let mut tree = Tree::with_service(r#"["m1"]"#, APP);
    let error = tree
        .run(&mut run(request("nope", &[])))
        .expect_err("refused")
        .to_string();
    assert!(error.contains("install, packages"), "{error}");
}

fn request_with_args(task: &str, args: &[&str]) -> RunRequest {
    RunRequest {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..request(task, &[])
    }
}
