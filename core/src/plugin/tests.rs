use super::*;
use proptest::prelude::*;
use serde_json::json;

/// The issue's contract, as the tests of the issue use it.
const GREETER: &str = r#"name = "greeter"
description = "answers with a greeting"
environment = "none"            # or "python"
[settings]                      # defaults; `pop add --set` and `pop set` override
greeting = "hello"
port = 0
[run]
command = ["python3", "-c", "...", "{port}", "{greeting}"]
[tasks.hello]
description = "say the greeting"
command = ["sh", "-c", "echo {greeting} from $POP_MACHINE_ID"]
restart_after = false           # restart the service when the task succeeds
"#;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse("greeter.toml", text)
}

fn error(text: &str) -> String {
    parse(text).expect_err("refused").to_string()
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("an object"),
    }
}

fn variables(python: bool) -> Variables {
    Variables {
        machine: "m1".into(),
        service: "svc".into(),
        state_dir: "/state/work/svc".into(),
        pop: "/usr/bin/pop".into(),
        python: python.then(|| PythonEnvironment {
            env_dir: "/state/env/svc".into(),
            python: "/state/env/svc/bin/python".into(),
        }),
    }
}

#[test]
fn the_contract_manifest_decodes_with_its_settings_command_and_task() {
    let manifest = parse(GREETER).expect("valid");
    assert_eq!(manifest.name.as_str(), "greeter");
    assert_eq!(manifest.description, "answers with a greeting");
    assert_eq!(manifest.environment, Environment::None);
    assert_eq!(
        Value::Object(manifest.settings.clone()),
        json!({"greeting": "hello", "port": 0})
    );
    assert_eq!(manifest.run.readiness, Readiness::Port);
    assert_eq!(manifest.run.stop_signal, StopSignal::Term);
    let hello = TaskName::new("hello").expect("a valid name");
    let task = &manifest.tasks[&hello];
    assert_eq!(task.description, "say the greeting");
    assert!(!task.restart_after);
    assert_eq!(task.timeout, None);
    let settings = manifest.default_settings(Some(7000));
    let argv = render(&manifest.run.command, &settings, &variables(false), &[]);
    assert_eq!(
        argv,
        Ok(["python3", "-c", "...", "7000", "hello"]
            .map(String::from)
            .to_vec())
    );
}

#[test]
fn an_unknown_placeholder_names_the_file_line_field_and_the_settings() {
    let text = GREETER.replace("\"{port}\"", "\"{prot}\"");
    assert_eq!(
        error(&text),
        "greeter.toml line 8: run.command: unknown placeholder {prot}; settings are greeting, port"
    );
}

#[test]
fn placeholders_may_name_settings_every_type_has_and_builtin_variables() {
    let text = GREETER.replace(
        "\"{greeting}\"]",
        "\"{host}\", \"{stop_timeout}\", \"{machine}\", \"{service}\", \"{state_dir}\", \"{pop}\", \"{{literal}}\"]",
    );
    assert!(parse(&text).is_ok(), "{:?}", parse(&text));
}

#[test]
fn python_variables_are_refused_without_a_python_environment() {
    let text = GREETER.replace("\"python3\"", "\"{python}\"");
    assert_eq!(
        error(&text),
        "greeter.toml line 8: run.command: {python} needs environment = \"python\""
    );
    let python = text.replace("environment = \"none\"", "environment = \"python\"");
    assert!(parse(&python).is_ok());
}

#[test]
fn every_mistake_names_its_line_and_field() {
    let cases = [
        (GREETER.replace("[run]", "[rnu]"), "greeter.toml line 7: rnu: unknown field; expected one of name, description, environment, settings, required, run, tasks"),
        (GREETER.replace("command = [\"python3\"", "comand = [\"python3\""), "greeter.toml line 8: run.comand: unknown field; expected one of command, readiness, stop_signal, stop_timeout"),
        (GREETER.replace("name = \"greeter\"", "name = \"gree ter\""), "greeter.toml line 1: name: plugin name \"gree ter\" contains white space, which cannot be part of a ZooKeeper node name"),
        (GREETER.replace("name = \"greeter\"", "name = 5"), "greeter.toml line 1: name: expected a string, found an integer"),
        (GREETER.replace("environment = \"none\"", "environment = \"ruby\""), "greeter.toml line 3: environment: expected \"none\" or \"python\", found \"ruby\""),
        (GREETER.replace("port = 0", "port = 70000"), "greeter.toml line 6: settings.port: setting \"port\": expected a port number from 0 to 65535 (0 = any free port), found 70000"),
        (GREETER.replace("port = 0", "type = \"x\""), "greeter.toml line 6: settings.type: a service's type is the manifest's name"),
        (GREETER.replace("port = 0", "when = 1979-05-27"), "greeter.toml line 6: settings.when: dates and times cannot be settings; write them as strings"),
        (GREETER.replace("[\"python3\", \"-c\", \"...\", \"{port}\", \"{greeting}\"]", "[]"), "greeter.toml line 8: run.command: expected a non-empty list of strings (the argv)"),
        (GREETER.replace("\"...\"", "3"), "greeter.toml line 8: run.command: expected a non-empty list of strings (the argv)"),
        (GREETER.replace("\"...\"", "\"{oops\""), "greeter.toml line 8: run.command: \"{oops\": a { without its } (write {{ for a literal brace)"),
        (GREETER.replace("\"...\"", "\"{args}\""), "greeter.toml line 8: run.command: {args} is for tasks; the service's command takes no arguments"),
        (GREETER.replace("[run]", "[run]\nreadiness = \"tcp\""), "greeter.toml line 8: run.readiness: expected \"port\" or \"none\", found \"tcp\""),
        (GREETER.replace("[run]", "[run]\nstop_signal = \"SIGSTOP\""), "greeter.toml line 8: run.stop_signal: expected one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, found \"SIGSTOP\""),
        (GREETER.replace("[run]", "[run]\nstop_timeout = -1"), "greeter.toml line 8: run.stop_timeout: expected a number of seconds between 0 and 86400"),
        (GREETER.replace("[tasks.hello]", "[tasks.\"he llo\"]"), "greeter.toml line 9: tasks.he llo: task name \"he llo\" contains white space, which cannot be part of a ZooKeeper node name"),
        (GREETER.replace("restart_after = false", "restart_after = \"no\""), "greeter.toml line 12: tasks.hello.restart_after: expected true or false, found a string"),
        (GREETER.replace("restart_after = false", "timeout = \"1h\""), "greeter.toml line 12: tasks.hello.timeout: expected a number of seconds between 0 and 86400"),
        (GREETER.replace("restart_after = false", "command = [\"x\"]"), "greeter.toml line 12: not valid TOML: duplicate key"),
        (GREETER.replace("{greeting} from", "{greting} from"), "greeter.toml line 11: tasks.hello.command: unknown placeholder {greting}; settings are greeting, port"),
        (GREETER.replace("[run]\ncommand = [\"python3\", \"-c\", \"...\", \"{port}\", \"{greeting}\"]\n", ""), "greeter.toml: run: missing"),
        (GREETER.replace("command = [\"python3\", \"-c\", \"...\", \"{port}\", \"{greeting}\"]", "readiness = \"none\""), "greeter.toml line 7: run.command: missing"),
        (GREETER.replace("name = \"greeter\"\n", ""), "greeter.toml: name: missing"),
        (format!("required = 3\n{GREETER}"), "greeter.toml line 1: required: expected a list of setting names, or of lists of names (one of them)"),
        (GREETER.replace("[settings]", "[settings]\nstop_timeout = 3").replace("[run]", "[run]\nstop_timeout = 4"), "greeter.toml line 9: run.stop_timeout: given twice: here and as settings.stop_timeout"),
    ];
    for (text, expected) in cases {
        assert_eq!(error(&text), expected, "{text}");
    }
}

#[test]
fn a_task_may_take_its_arguments_once_as_an_element_of_their_own() {
    let text = GREETER.replace("\"sh\", \"-c\"", "\"pip\", \"{args}\", \"-c\"");
    let manifest = parse(&text).expect("valid");
    let hello = TaskName::new("hello").expect("a valid name");
    let args = ["a".to_string(), "b".to_string()];
    let argv = render(
        &manifest.tasks[&hello].command,
        &manifest.default_settings(None),
        &variables(false),
        &args,
    )
    .expect("renders");
    assert_eq!(argv[..4], ["pip", "a", "b", "-c"]);
    let twice = GREETER.replace("\"sh\", \"-c\"", "\"{args}\", \"{args}\"");
    assert_eq!(
        error(&twice),
        "greeter.toml line 11: tasks.hello.command: {args} appears more than once"
    );
}

#[test]
fn a_manifest_past_the_size_limit_is_refused_before_parsing() {
    let text = format!("{GREETER}#{}", "x".repeat(MAX_MANIFEST_BYTES));
    assert!(error(&text).starts_with("greeter.toml: the manifest is "));
}

#[test]
fn deeply_nested_settings_are_refused_not_recursed_into() {
    let nested = |depth: usize| {
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        error(&GREETER.replace("port = 0", &format!("deep = {deep}")))
    };
    let message = nested(40);
    assert!(
        message.starts_with("greeter.toml line 6: settings.deep"),
        "{message}"
    );
    assert!(message.ends_with("nested more than 32 deep"), "{message}");
    // Deeper still, toml's parser stops first.
    let message = nested(20_000);
    assert!(
        message.starts_with("greeter.toml line 6: not valid TOML"),
        "{message}"
    );
}

#[test]
fn every_builtin_manifest_decodes_under_its_own_name() {
    let names: Vec<String> = builtin::all().iter().map(|m| m.name.to_string()).collect();
    assert_eq!(names, ["command", "echo", "http", "python"]);
}

/// `pop add command|echo` writes exactly what it wrote before types were manifests.
#[test]
fn builtin_command_and_echo_default_to_the_settings_pop_add_always_wrote() {
    let common = json!({"restart": "always", "stop_timeout": 10, "start_seconds": 1});
    let with = |extra: Value| {
        let mut map = object(common.clone());
        map.extend(object(extra));
        map
    };
    let cases = [
        ("command", None, with(json!({"type": "command"}))),
        (
            "command",
            Some(8080),
            with(json!({"type": "command", "port": 8080})),
        ),
        (
            "echo",
            None,
            with(json!({"type": "echo", "host": "127.0.0.1", "port": 0})),
        ),
        (
            "echo",
            Some(7),
            with(json!({"type": "echo", "host": "127.0.0.1", "port": 7})),
        ),
    ];
    for (name, port, expected) in cases {
        let manifest = builtin::manifest(name).expect("built in");
        assert_eq!(manifest.default_settings(port), expected, "{name} {port:?}");
    }
}

/// What the driver ran before types were manifests: `sh -c <command>`, and the pop
/// binary's echo server.
#[test]
fn builtin_command_and_echo_render_the_argv_the_agent_launched_before_plugins() {
    let cases = [
        (
            json!({"type": "command", "command": "python3 -m http.server 8000 'a b'"}),
            vec!["/bin/sh", "-c", "python3 -m http.server 8000 'a b'"],
        ),
        (
            json!({"type": "command", "command": "sleep 5", "port": 9}),
            vec!["/bin/sh", "-c", "sleep 5"],
        ),
        (
            json!({"type": "echo", "host": "0.0.0.0", "port": 0}),
            vec![
                "/usr/bin/pop",
                "echo-server",
                "--host",
                "0.0.0.0",
                "--port",
                "0",
            ],
        ),
        (
            json!({"type": "echo", "port": 5}),
            vec![
                "/usr/bin/pop",
                "echo-server",
                "--host",
                "0.0.0.0",
                "--port",
                "5",
            ],
        ),
    ];
    for (case, argv) in cases {
        let map = object(case);
        let manifest = builtin::get(map["type"].as_str().expect("a type")).expect("built in");
        let argv: Vec<String> = argv.into_iter().map(String::from).collect();
        assert_eq!(
            manifest.command_argv(&map, &variables(false)),
            Ok(argv),
            "{map:?}"
        );
    }
}

#[test]
fn settings_missing_a_required_value_are_refused_naming_it_and_the_type() {
    let check = |name: &str, value: Value| {
        let manifest = builtin::manifest(name).expect("built in");
        let mut settings = manifest.default_settings(None);
        settings.extend(object(value));
        manifest
            .check_settings(&settings)
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        check("command", json!({})),
        Err("setting \"command\" is required for type \"command\"".into())
    );
    assert_eq!(check("command", json!({"command": "true"})), Ok(()));
    assert_eq!(
        check("python", json!({})),
        Err("setting \"module\" or \"script\" is required for type \"python\"".into())
    );
    assert_eq!(check("python", json!({"script": "app.py"})), Ok(()));
    assert_eq!(check("python", json!({"module": "app"})), Ok(()));
    assert_eq!(
        check("http", json!({"directory": ""})),
        Err("setting \"directory\" is required for type \"http\"".into())
    );
    assert_eq!(check("http", json!({"directory": "/srv"})), Ok(()));
    assert_eq!(
        check("http", json!({"directory": "/srv", "restart": "sometimes"})),
        Err("setting \"restart\": expected one of \"always\", \"on-failure\", \"never\", found \"sometimes\"".into())
    );
}

#[test]
fn settings_a_command_cannot_use_are_refused_naming_the_command() {
    let manifest = parse(GREETER).expect("valid");
    let mut settings = manifest.default_settings(None);
    settings.remove("greeting");
    assert_eq!(
        manifest
            .check_settings(&settings)
            .map_err(|e| e.to_string()),
        Err("the command needs setting \"greeting\", which is not set (in run.command)".into())
    );
    settings.insert("greeting".into(), json!({"a": 1}));
    let err = manifest
        .check_settings(&settings)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("it is an object"), "{err}");
}

#[test]
fn the_http_type_serves_its_directory_with_pythons_http_server() {
    let manifest = builtin::manifest("http").expect("built in");
    let mut settings = manifest.default_settings(Some(8000));
    settings.insert("directory".into(), json!("/srv/www"));
    let argv = render(&manifest.run.command, &settings, &variables(true), &[]);
    assert_eq!(
        argv,
        Ok([
            "/state/env/svc/bin/python",
            "-m",
            "http.server",
            "8000",
            "--bind",
            "127.0.0.1",
            "--directory",
            "/srv/www"
        ]
        .map(String::from)
        .to_vec())
    );
}

#[test]
fn the_decoded_manifest_serializes_with_its_templates_as_written() {
    let manifest = parse(GREETER).expect("valid");
    let json = serde_json::to_value(&manifest).expect("serializes");
    assert_eq!(json["run"]["command"][3], "{port}");
    assert_eq!(json["tasks"]["hello"]["restart_after"], false);
    assert_eq!(json["run"]["stop_signal"], "SIGTERM");
    assert_eq!(json["environment"], "none");
}

proptest! {
    #[test]
    fn decoding_never_panics_on_any_text(text in "\\PC{0,400}") {
        let _ = Manifest::parse("fuzz.toml", &text);
    }

    #[test]
    fn decoding_never_panics_on_a_damaged_manifest(at in 0usize..600, junk in "[\\[\\]{}=\"'\n#a-z0-9., ]{0,12}") {
        let mut text = GREETER.to_string();
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.insert_str(at, &junk);
        if let Err(e) = Manifest::parse("fuzz.toml", &text) {
            prop_assert!(e.to_string().starts_with("fuzz.toml"));
        }
    }
}

#[test]
fn a_python_type_cannot_define_the_tasks_built_into_it() {
    let manifest = "name = \"p\"\nenvironment = \"python\"\n[run]\ncommand = [\"{python}\"]\n[tasks.install]\ncommand = [\"true\"]\n";
    let err = error(manifest);
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("install is built into every type"), "{err}");
    // A type without an environment may have a task of that name.
    let plain =
        "name = \"p\"\n[run]\ncommand = [\"true\"]\n[tasks.install]\ncommand = [\"true\"]\n";
    assert!(parse(plain).is_ok());
}
