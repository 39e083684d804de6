use super::*;
use crate::agent::tasks::{Own, Write};
use crate::agent::EnvironmentState;
use crate::backoff::Backoff;
use crate::names::{MachineId, TaskName};
use crate::plugin::Environment;
use crate::task::{TaskKind, TaskRequest};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

fn config() -> AgentConfig {
    AgentConfig {
        access: Default::default(),
        machine: MachineId::new("m2").expect("an id"),
        hostname: "host2".into(),
        agent_pid: 7,
        version: "test".into(),
        containment: "test".into(),
        seed: 1,
        backoff: Backoff::default(),
        state_dir: "/var/pop".into(),
        pop: "/usr/bin/pop".into(),
    }
}

fn agent() -> AgentRef {
    AgentRef {
        host: "host2".into(),
        pid: 7,
        started_ms: 5,
    }
}

const NOW: u64 = 1_000_000;

fn request(rolling: bool) -> TaskRequest {
    TaskRequest {
        kind: TaskKind::Command,
        task: TaskName::new("hello").expect("a name"),
        args: vec!["x y".into()],
        machines: ["m1", "m2", "m3"]
            .iter()
            .map(|m| MachineId::new(m).expect("an id"))
            .collect(),
        rolling,
        author: "me@here".into(),
        created_at: 900.0,
        expires_at: 2_000.0,
        timeout_s: 30.0,
        command: vec!["sh".into(), "-c".into(), "echo {greeting}".into()],
        environment: Environment::None,
        restart_after: false,
    }
}

fn settings() -> Map<String, Value> {
    serde_json::from_str(
        r#"{"type":"greeter","greeting":"hi","port":8080,"stop_timeout":3,"env":{"A":"b"}}"#,
    )
    .expect("an object")
}

fn own(state: TaskState, attempt: u32) -> Node<Own> {
    Node::Read(Own {
        result: TaskResult {
            attempt,
            ..TaskResult::pending().with_state(state)
        },
        version: 4,
    })
}

/// A task whose nodes are all read, pending here.
fn ready(rolling: bool) -> Task {
    Task {
        own: own(TaskState::Pending, 0),
        request: Node::Read(Arc::new(request(rolling))),
        previous: Node::Unread,
        settings: Node::Read(Arc::new(settings())),
        ..Task::new()
    }
}

fn listed(machines: &[&str]) -> BTreeSet<String> {
    machines.iter().map(|m| m.to_string()).collect()
}

fn decide_at(task: &Task, now: u64, tweak: impl FnOnce(&mut Context<'_>)) -> Next {
    decide_listing(task, now, &["m1", "m2", "m3"], tweak)
}

/// Decides with the service's machines list as this agent read it.
fn decide_listing(
    task: &Task,
    now: u64,
    list: &[&str],
    tweak: impl FnOnce(&mut Context<'_>),
) -> Next {
    let config = config();
    let agent = agent();
    let id = TaskId::new(Timestamp::from_millis(900_000), 1);
    let machines = listed(list);
    let mut cx = Context {
        now: Timestamp::from_millis(now),
        machine: "m2",
        service: "web",
        task: &id,
        connected: true,
        deployment: Deployment::Here,
        machines: Some(&machines),
        shutting_down: false,
        config: &config,
        agent: &agent,
        python: TaskPython::Ready(crate::environment::python_environment(
            "/var/pop/env/web/0123456789abcdef",
        )),
        install: InstallView {
            settings_zxid: 0,
            environment: None,
        },
    };
    tweak(&mut cx);
    decide(task, &cx)
}

fn decided(task: &Task) -> Next {
    decide_at(task, NOW, |_| {})
}

fn written(next: Next) -> (TaskResult, Purpose) {
    match next {
        Next::Write(result, purpose) => (*result, purpose),
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn a_new_task_is_read_own_result_first_then_request_then_settings() {
    let mut task = Task::new();
    assert_eq!(decided(&task), Next::Read(Fetch::Own));
    task.own = own(TaskState::Pending, 0);
    assert_eq!(decided(&task), Next::Read(Fetch::Request));
    task.request = Node::Read(Arc::new(request(false)));
    assert_eq!(decided(&task), Next::Read(Fetch::Settings));
}

#[test]
fn a_pending_task_is_claimed_with_its_command_rendered_and_the_service_environment() {
    let (result, purpose) = written(decided(&ready(false)));
    assert_eq!(result.state, TaskState::Running);
    assert_eq!(result.attempt, 1);
    assert_eq!(result.started_at, Some(1_000.0));
    assert_eq!(result.agent, Some(agent()));
    let Purpose::Claim(launch) = purpose else {
        panic!("a claim, got {purpose:?}");
    };
    assert_eq!(launch.argv, ["sh", "-c", "echo hi", "x y"]);
    assert_eq!(launch.cwd, "/var/pop/work/web");
    assert_eq!(launch.grace, Duration::from_secs(3));
    assert_eq!(launch.timeout, Duration::from_secs(30));
    let env: Vec<(&str, &str)> = launch
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("A", "b"),
            ("POP_HOST", "0.0.0.0"),
            ("POP_MACHINE_ID", "m2"),
            ("POP_PORT", "8080"),
            ("POP_SERVICE", "web"),
            ("POP_TASK", "hello"),
            ("POP_TASK_ATTEMPT", "1"),
            ("POP_TASK_ID", "t0000000900000-0001"),
        ]
    );
}

#[test]
fn a_running_result_this_agent_does_not_run_is_run_again_as_the_next_attempt() {
    let mut task = ready(false);
    task.own = own(TaskState::Running, 1);
    let (result, _) = written(decided(&task));
    assert_eq!((result.state, result.attempt), (TaskState::Running, 2));
}

#[test]
fn a_final_result_is_never_touched_again() {
    for state in TaskState::ALL.into_iter().filter(|s| s.is_final()) {
        let mut task = ready(false);
        task.own = own(state, 1);
        assert_eq!(decided(&task), Next::Nothing, "{state}");
    }
}

#[test]
fn nothing_runs_where_the_request_does_not_ask_for_it() {
    let mut task = ready(false);
    let mut elsewhere = request(false);
    elsewhere.machines.retain(|m| m.as_str() != "m2");
    task.request = Node::Read(Arc::new(elsewhere));
    assert_eq!(decided(&task), Next::Nothing);
}

#[test]
fn an_undeployed_service_skips_and_an_expired_task_expires() {
    let (result, _) = written(decide_at(&ready(false), NOW, |cx| {
        cx.deployment = Deployment::NotHere
    }));
    assert_eq!(result.state, TaskState::Skipped);
    assert_eq!(result.error.as_deref(), Some("web is not deployed on m2"));
    let (result, purpose) = written(decide_at(&ready(false), 2_000_000, |_| {}));
    assert_eq!(
        (result.state, purpose),
        (TaskState::Expired, Purpose::Final)
    );
    assert_eq!(
        deadline(&ready(false), Timestamp::from_millis(NOW)),
        Some(Timestamp::from_millis(2_000_000))
    );
    assert_eq!(
        deadline(&ready(false), Timestamp::from_millis(2_000_000)),
        None
    );
}

#[test]
fn a_task_done_here_is_kept_while_its_service_is_not_here_and_dropped_once_it_departed() {
    let mut done = ready(false);
    done.own = own(TaskState::Succeeded, 1);
    let mut elsewhere = ready(false);
    elsewhere.own = Node::Missing;
    for task in [&done, &elsewhere] {
        let not_here = decide_at(task, NOW, |cx| cx.deployment = Deployment::NotHere);
        assert_eq!(not_here, Next::Nothing);
        let departed = decide_at(task, NOW, |cx| cx.deployment = Deployment::Departed);
        assert_eq!(departed, Next::Forget);
    }
    // One not done is skipped, departed or not; one running runs to its end.
    let departed = decide_at(&ready(false), NOW, |cx| {
        cx.deployment = Deployment::Departed
    });
    assert_eq!(written(departed).0.state, TaskState::Skipped);
    let mut running = ready(false);
    running.own = own(TaskState::Running, 1);
    running.run = Run::Started {
        attempt: 1,
        pid: Some(9),
        deadline: Timestamp::from_millis(NOW + 10),
        grace: Duration::from_secs(1),
        stop: None,
    };
    let departed = decide_at(&running, NOW, |cx| cx.deployment = Deployment::Departed);
    assert_eq!(departed, Next::Nothing);
}

#[test]
fn rolling_waits_for_the_machine_before_and_stops_at_its_failure() {
    let mut task = ready(true);
    assert_eq!(
        decided(&task),
        Next::Read(Fetch::Previous(MachineId::new("m1").expect("an id")))
    );
    task.previous = Node::Read(TaskState::Running);
    let (result, purpose) = written(decided(&task));
    assert_eq!(
        (result.state, purpose),
        (TaskState::Waiting, Purpose::Waiting)
    );
    task.own = own(TaskState::Waiting, 0);
    assert_eq!(decided(&task), Next::Nothing);
    task.previous = Node::Read(TaskState::Failed);
    let (result, _) = written(decided(&task));
    assert_eq!(result.state, TaskState::Skipped);
    assert_eq!(result.error.as_deref(), Some("m1 failed"));
    task.previous = Node::Read(TaskState::Succeeded);
    let (result, _) = written(decided(&task));
    assert_eq!(result.state, TaskState::Running);
}

#[test]
fn a_machine_before_this_one_that_left_the_list_unstarted_is_taken_as_not_succeeded() {
    let mut task = ready(true);
    let without_m1 = |task: &Task| decide_listing(task, NOW, &["m2", "m3"], |_| {});
    for state in [TaskState::Pending, TaskState::Waiting] {
        task.previous = Node::Read(state);
        let (result, purpose) = written(without_m1(&task));
        assert_eq!(
            (result.state, purpose),
            (TaskState::Skipped, Purpose::Final)
        );
        assert_eq!(
            result.error,
            Some(format!(
                "m1 is {state} and no longer in web's machines list"
            ))
        );
        // Still listed: it waits.
        assert_eq!(
            written(decided(&task)).0.state,
            TaskState::Waiting,
            "{state}"
        );
    }
    // One that runs it runs it to its end and writes its result: waited for.
    task.previous = Node::Read(TaskState::Running);
    assert_eq!(written(without_m1(&task)).0.state, TaskState::Waiting);
    task.own = own(TaskState::Waiting, 0);
    assert_eq!(without_m1(&task), Next::Nothing);
    task.previous = Node::Read(TaskState::Succeeded);
    assert_eq!(written(without_m1(&task)).0.state, TaskState::Running);
}

#[test]
fn a_machine_before_this_one_is_waited_for_while_the_list_is_not_read() {
    let mut task = ready(true);
    task.previous = Node::Read(TaskState::Pending);
    let unread = decide_at(&task, NOW, |cx| cx.machines = None);
    assert_eq!(written(unread).0.state, TaskState::Waiting);
}

#[test]
fn the_first_machine_of_a_rolling_task_waits_for_nobody() {
    let mut task = ready(true);
    let mut first = request(true);
    first.machines.rotate_left(1); // m2, m3, m1
    task.request = Node::Read(Arc::new(first));
    assert_eq!(written(decided(&task)).0.state, TaskState::Running);
}

#[test]
fn a_running_process_is_stopped_at_its_timeout_at_shutdown_and_when_gone() {
    let mut task = ready(false);
    task.own = own(TaskState::Running, 1);
    task.run = Run::Started {
        attempt: 1,
        pid: Some(9),
        deadline: Timestamp::from_millis(NOW + 10),
        grace: Duration::from_secs(1),
        stop: None,
    };
    assert_eq!(decided(&task), Next::Nothing);
    assert_eq!(
        decide_at(&task, NOW + 10, |_| {}),
        Next::Stop(StopReason::TimedOut)
    );
    assert_eq!(
        decide_at(&task, NOW, |cx| cx.shutting_down = true),
        Next::Stop(StopReason::Shutdown)
    );
    task.gone = true;
    assert_eq!(decided(&task), Next::Stop(StopReason::Gone));
}

#[test]
fn an_ended_run_writes_its_result_once_connected() {
    let mut task = ready(false);
    task.own = own(TaskState::Running, 1);
    let done = TaskResult::pending().with_state(TaskState::Succeeded);
    task.run = Run::Ended {
        result: Box::new(done.clone()),
    };
    assert_eq!(
        decide_at(&task, NOW, |cx| cx.connected = false),
        Next::Nothing
    );
    assert_eq!(
        decided(&task),
        Next::Write(Box::new(done.clone()), Purpose::Final)
    );
    task.write = Some(Write {
        result: done,
        purpose: Purpose::Final,
    });
    assert_eq!(decided(&task), Next::Nothing);
}

#[test]
fn settings_that_cannot_render_the_command_fail_the_task() {
    let mut task = ready(false);
    let mut bare = settings();
    bare.remove("greeting");
    task.settings = Node::Read(Arc::new(bare));
    let (result, _) = written(decided(&task));
    assert_eq!(result.state, TaskState::Failed);
    let error = result.error.unwrap_or_default();
    assert!(error.contains("greeting"), "{error}");
}

#[test]
fn nothing_is_sent_without_a_session_or_while_stopping() {
    assert_eq!(
        decide_at(&Task::new(), NOW, |cx| cx.connected = false),
        Next::Nothing
    );
    assert_eq!(
        decide_at(&ready(false), NOW, |cx| cx.connected = false),
        Next::Nothing
    );
    assert_eq!(
        decide_at(&ready(false), NOW, |cx| cx.shutting_down = true),
        Next::Nothing
    );
}

#[test]
fn a_python_task_gets_its_environment() {
    let mut task = ready(false);
    let mut python = request(false);
    python.environment = Environment::Python;
    python.command = vec!["{python}".into(), "-V".into()];
    task.request = Node::Read(Arc::new(python));
    let (_, purpose) = written(decided(&task));
    let Purpose::Claim(launch) = purpose else {
        panic!("a claim");
    };
    let env = "/var/pop/env/web/0123456789abcdef";
    assert_eq!(
        launch.argv,
        [format!("{env}/bin/python"), "-V".into(), "x y".into()]
    );
    assert_eq!(launch.env.get("VIRTUAL_ENV").map(String::as_str), Some(env));
    assert_eq!(launch.path_prepend, [format!("{env}/bin")]);
    // Waits while the environment is built; fails if it cannot be.
    assert_eq!(
        decide_at(&task, NOW, |cx| cx.python = TaskPython::Pending),
        Next::Nothing
    );
    let (failed, _) = written(decide_at(&task, NOW, |cx| {
        cx.python = TaskPython::Unavailable("its build failed: no such package".into())
    }));
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("no Python environment: its build failed: no such package")
    );
}

// `install` and `packages`, the tasks built into types with a Python environment.

fn builtin(kind: TaskKind, args: &[&str]) -> TaskRequest {
    TaskRequest {
        kind,
        task: TaskName::new(match kind {
            TaskKind::Install => "install",
            _ => "packages",
        })
        .expect("a name"),
        args: args.iter().map(|a| a.to_string()).collect(),
        rolling: false,
        command: Vec::new(),
        environment: Environment::Python,
        ..request(false)
    }
}

/// An `install` of `requirements`, its request written in transaction 50.
fn install_task(state: TaskState) -> Task {
    let mut task = ready(false);
    task.request = Node::Read(Arc::new(builtin(
        TaskKind::Install,
        &["hello==1.0", "/w/b.whl"],
    )));
    task.request_zxid = 50;
    task.own = own(state, u32::from(state == TaskState::Running));
    if let Node::Read(own) = &mut task.own {
        own.result.started_at = Some(999.0);
    }
    task
}

/// The environment of settings read in transaction `zxid` with `packages`, in `state`.
fn view(zxid: i64, packages: &[&str], state: EnvironmentState) -> InstallView {
    let spec = crate::environment::EnvironmentSpec {
        python: "python3".into(),
        packages: packages.iter().map(|p| p.to_string()).collect(),
    };
    InstallView {
        settings_zxid: zxid,
        environment: Some(EnvironmentView {
            hash: spec.hash(),
            dir: "/var/pop/env/web/h".into(),
            python: "/var/pop/env/web/h/bin/python".into(),
            spec,
            state,
        }),
    }
}

fn install_decided(task: &Task, install: InstallView) -> Next {
    decide_at(task, NOW, |cx| cx.install = install)
}

#[test]
fn an_install_is_claimed_without_a_process_and_then_follows_the_environment() {
    let task = install_task(TaskState::Pending);
    let (claim, purpose) = written(install_decided(
        &task,
        view(0, &[], EnvironmentState::Ready),
    ));
    assert_eq!(claim.state, TaskState::Running);
    assert_eq!(claim.attempt, 1);
    assert_eq!(purpose, Purpose::Installing, "no process is launched");
}

#[test]
fn an_install_waits_for_settings_read_after_its_request_was_written() {
    let task = install_task(TaskState::Running);
    // Read before the install's write: they cannot hold the requirements yet.
    let stale = view(49, &["old"], EnvironmentState::Ready);
    assert_eq!(install_decided(&task, stale), Next::Nothing);
}

#[test]
fn an_install_succeeds_once_the_environment_holding_its_requirements_is_built() {
    let task = install_task(TaskState::Running);
    let packages = ["/w/b.whl", "hello==1.0", "old"];
    let building = view(50, &packages, EnvironmentState::Building);
    assert_eq!(install_decided(&task, building), Next::Nothing);
    let (result, purpose) = written(install_decided(
        &task,
        view(50, &packages, EnvironmentState::Ready),
    ));
    assert_eq!(purpose, Purpose::Final);
    assert_eq!(result.state, TaskState::Succeeded);
    assert!(
        result.stdout_tail.contains("hello==1.0 /w/b.whl"),
        "{}",
        result.stdout_tail
    );
}

#[test]
fn an_install_fails_with_the_build_error_when_the_environment_does_not_build() {
    let task = install_task(TaskState::Running);
    let failed = EnvironmentState::Failed {
        error: "No matching distribution found for hello==1.0".into(),
    };
    let (result, _) = written(install_decided(
        &task,
        view(60, &["/w/b.whl", "hello==1.0"], failed),
    ));
    assert_eq!(result.state, TaskState::Failed);
    assert!(
        result.stderr_tail.contains("No matching distribution"),
        "{result:?}"
    );
    assert!(result.summary_line().contains("No matching distribution"));
}

#[test]
fn an_install_fails_when_a_later_change_of_settings_dropped_a_requirement() {
    let task = install_task(TaskState::Running);
    let (result, _) = written(install_decided(
        &task,
        view(70, &["hello==1.0"], EnvironmentState::Ready),
    ));
    assert_eq!(result.state, TaskState::Failed);
    let error = result.error.unwrap_or_default();
    assert!(error.contains("took /w/b.whl out"), "{error}");
}

#[test]
fn an_install_times_out_when_no_build_ends_in_time_and_expires_unclaimed() {
    let task = install_task(TaskState::Running);
    // Started at 999 s with a 30 s timeout.
    assert_eq!(
        deadline(&task, Timestamp::from_millis(NOW)),
        Some(Timestamp::from_millis(1_029_000))
    );
    let building = view(50, &["/w/b.whl", "hello==1.0"], EnvironmentState::Building);
    let next = decide_at(&task, 1_029_000, |cx| cx.install = building);
    assert_eq!(written(next).0.state, TaskState::TimedOut);
    let pending = install_task(TaskState::Pending);
    let next = decide_at(&pending, 2_000_000, |cx| {
        cx.install = view(0, &[], EnvironmentState::Ready)
    });
    assert_eq!(written(next).0.state, TaskState::Expired);
}

#[test]
fn packages_runs_the_listing_script_with_the_environment_interpreter() {
    let mut task = ready(false);
    task.request = Node::Read(Arc::new(builtin(TaskKind::Packages, &[])));
    let (_, purpose) = written(decided(&task));
    let Purpose::Claim(launch) = purpose else {
        panic!("a process is launched: {purpose:?}")
    };
    assert_eq!(
        launch.argv[..3],
        ["/var/pop/env/web/0123456789abcdef/bin/python", "-I", "-c"]
    );
    assert_eq!(launch.argv[3], crate::packages::LIST_DISTRIBUTIONS_PY);
}
