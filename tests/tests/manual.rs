//! `pop completions <shell>` and `pop man`: generated from the command line's definition,
//! they name every command; the bash script completes in a real bash, the manual page
//! renders with man(1) and groff reports no problem in it.

use pop_tests::pop_exe;
use std::process::{Command, Output};

/// Every command an operator types (the hidden echo server is not one).
const COMMANDS: &[&str] = &[
    "init",
    "add",
    "status",
    "machines",
    "machine",
    "start",
    "fg",
    "stop",
    "deploy",
    "undeploy",
    "set",
    "remove",
    "plugin",
    "dump",
    "logs",
    "replay",
    "sim",
    "zk",
    "completions",
    "man",
];

fn pop(args: &[&str]) -> String {
    let out = Command::new(pop_exe())
        .args(args)
        .output()
        .expect("running pop");
    assert!(
        out.status.success(),
        "pop {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn completions_name_every_command_and_not_the_hidden_one() {
    for shell in ["bash", "zsh", "fish"] {
        let script = pop(&["completions", shell]);
        for command in COMMANDS {
            assert!(
                script.contains(command),
                "{shell} completions lack {command}"
            );
        }
        assert!(
            !script.contains("echo-server"),
            "{shell} completions offer the hidden echo-server"
        );
    }
    let bad = Command::new(pop_exe())
        .args(["completions", "tcsh"])
        .output()
        .expect("running pop");
    assert!(!bad.status.success(), "an unknown shell is refused");
}

/// The bash script, sourced into bash, completes a command name and a command's argument.
#[test]
fn bash_completion_completes() {
    let script = pop(&["completions", "bash"]);
    let complete = |words: &str, cword: usize| {
        let program = format!(
            "{script}\nCOMP_WORDS=({words}); COMP_CWORD={cword}; \
             _pop pop \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .expect("running bash");
        succeeded("bash completion", out)
    };
    assert_eq!(complete("pop dep", 1), "deploy\n");
    assert_eq!(complete("pop un", 1), "undeploy\n");
    let shells = complete("pop completions ''", 2);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.lines().any(|l| l == shell), "{shells}");
    }
}

/// Renders a roff page with man(1) (plain text, fixed width) and checks groff finds no
/// problem in it (`-ww`: all warnings).
fn render(page: &std::path::Path) -> String {
    let text = succeeded(
        "man -l",
        Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(page)
            .env("MANWIDTH", "100")
            .env_remove("MAN_KEEP_FORMATTING")
            .output()
            .expect("running man (apt-get install man-db; .ci/run does)"),
    );
    // Bold and underline as overstrikes (`N\bN`), should man keep them: plain text.
    let mut plain = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    let groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .expect("running groff (groff-base, a dependency of man-db)");
    assert!(
        groff.status.success() && groff.stderr.is_empty(),
        "groff warns about {}: {}",
        page.display(),
        String::from_utf8_lossy(&groff.stderr)
    );
    plain
}

#[test]
fn the_manual_page_renders_with_its_sections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("stdout.1");
    std::fs::write(&page, pop(&["man"])).expect("writing the page");
    let text = render(&page);
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "SUBCOMMANDS",
        "ENVIRONMENT",
        "SIGNALS",
        "FILES",
    ] {
        assert!(
            text.lines().any(|l| l == section),
            "no {section} section in:\n{text}"
        );
    }
    for command in COMMANDS {
        assert!(
            text.contains(&format!("pop-{command}(1)")),
            "pop(1) does not list {command}"
        );
    }
    for variable in [
        "POP_HOST",
        "POP_CONTAINMENT",
        "POP_SESSION_TIMEOUT_MS",
        "POP_AUTH",
        "POP_TLS_CA",
    ] {
        assert!(text.contains(variable), "ENVIRONMENT lacks {variable}");
    }

    // --dir: pop.1 (the same page) and one page per command, each rendering.
    let man1 = dir.path().join("man1");
    pop(&["man", "--dir", man1.to_str().expect("UTF-8 path")]);
    assert_eq!(
        std::fs::read(man1.join("pop.1")).expect("pop.1"),
        std::fs::read(&page).expect("page")
    );
    for command in COMMANDS {
        let sub = man1.join(format!("pop-{command}.1"));
        let text = render(&sub);
        assert!(text.contains("SYNOPSIS"), "{}:\n{text}", sub.display());
    }
    assert!(render(&man1.join("pop-zk-start.1")).contains("pop-zk-start"));
}
