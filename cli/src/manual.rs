//! `pop completions <shell>` and `pop man`: shell completions and the manual page,
//! generated from the clap definition so they never disagree with `pop --help`.

use crate::Cli;
use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;
use std::path::Path;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<()> {
    let mut cmd = without_hidden_commands(Cli::command());
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pop", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("writing the completion script")
}

/// `cmd` without its hidden subcommands (the echo server pop runs for the `echo`
/// service type), which clap_complete would offer otherwise; clap has no way to remove
/// a subcommand, so the top level is assembled again from the same parts.
fn without_hidden_commands(cmd: clap::Command) -> clap::Command {
    let visible: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("pop")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(visible)
}

/// The environment variables pop reads.
const ENVIRONMENT: &[(&str, &str)] = &[
    ("POP_HOST", "the ZooKeeper connect string, as --host."),
    ("POP_MACHINE_ID", "this machine's id, as --machine-id."),
    ("POP_STATE_DIR", "the state directory, as --state-dir."),
    (
        "POP_AUTH",
        "USER:PASSWORD to authenticate to ZooKeeper with, as --auth (the admin's for commands, the machine's for the agent); never passed on to services.",
    ),
    (
        "POP_ADMIN_IDENTITY",
        "USER:PASSWORD of pop init --admin-identity, which secures the namespace.",
    ),
    (
        "POP_TLS_CA",
        "a PEM file of CA certificates, as --tls-ca: connect to ZooKeeper's secure client port over TLS, trusting them.",
    ),
    (
        "POP_TLS_CERT",
        "this client's certificate (PEM), as --tls-cert, for a server that requires one (mutual TLS).",
    ),
    ("POP_TLS_KEY", "the private key (PEM) of POP_TLS_CERT, as --tls-key."),
    (
        "POP_CONTAINMENT",
        "auto (default), cgroup or process-group: how the agent holds each service's processes together.",
    ),
    (
        "POP_SESSION_TIMEOUT_MS",
        "the ZooKeeper session timeout the agent asks for (default 10000).",
    ),
    (
        "POP_JOURNAL_MAX_BYTES",
        "the size past which the agent's journal is rotated (default 16 MiB).",
    ),
    (
        "POP_AGENT_LOG_MAX_BYTES",
        "the size past which the agent's log file (pop fg --log-file, agent.log of pop start) is rotated (default 10 MiB; 3 old files are kept).",
    ),
    (
        "RUST_LOG",
        "log filter, overriding -v (e.g. debug, or pop_io=trace).",
    ),
];

/// How the agent (pop fg, pop start) answers signals.
const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGTERM, SIGINT",
        "stop the services (each within its stop_timeout), then exit; a second one kills them at once (pop stop).",
    ),
    (
        "SIGUSR1",
        "exit leaving the services running, for the next agent to adopt (pop stop --keep-services).",
    ),
    (
        "SIGHUP",
        "carry on, and reopen the log file given with --log-file.",
    ),
];

/// Files pop reads or writes.
const FILES: &[(&str, &str)] = &[
    (
        "$XDG_CONFIG_HOME/pop/credentials",
        "(else ~/.config/pop/credentials) the operator's USER:PASSWORD when neither --auth nor POP_AUTH is given; refused unless mode 0600.",
    ),
    (
        "<state dir>/credential",
        "the agent's machine credential (the line pop machine add prints) when neither --auth nor POP_AUTH is given; refused unless mode 0600.",
    ),
    (
        "/etc/pop/machine-id",
        "this machine's id for every user, when set (else /etc/machine-id, then /var/lib/dbus/machine-id).",
    ),
    (
        "<state dir>/agent.pid",
        "the running agent's pid, locked (flock) for the agent's whole life.",
    ),
    (
        "<state dir>/agent.log",
        "the output of an agent started with pop start, rotated by size to agent.log.1 ... agent.log.3; SIGHUP makes the agent reopen it.",
    ),
    (
        "<state dir>/journal.jsonl",
        "every input of the agent and the actions it took (pop replay).",
    ),
    (
        "<state dir>/logs/<service>.log",
        "a service's output, size-rotated (pop logs).",
    ),
    (
        "<state dir>/run/<service>@<generation>.json",
        "run records, for a later agent to adopt running services.",
    ),
];

/// Text safe to put in a roff body: no escapes, no control-line starts.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn roff_list(out: &mut Vec<u8>, heading: &str, items: &[(&str, &str)]) -> std::io::Result<()> {
    writeln!(out, ".SH {heading}")?;
    for (term, text) in items {
        writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff_text(term), roff_text(text))?;
    }
    Ok(())
}

/// pop(1): clap's sections, plus the environment and files the agent uses.
fn main_page() -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(Cli::command());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    roff_list(&mut out, "ENVIRONMENT", ENVIRONMENT)?;
    roff_list(&mut out, "SIGNALS", SIGNALS)?;
    roff_list(&mut out, "FILES", FILES)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Prints pop(1) on stdout, or with `dir` writes it there as `pop.1` along with a page
/// per command (`pop-status.1`, ...), as `man` expects them in a `man1` directory.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let page = main_page().context("rendering the manual page")?;
    let Some(dir) = dir else {
        return std::io::stdout()
            .write_all(&page)
            .context("writing the manual page");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Every page, then pop.1 again with the extra sections.
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing manual pages to {}", dir.display()))?;
    let main = dir.join("pop.1");
    std::fs::write(&main, page).with_context(|| format!("writing {}", main.display()))?;
    println!("manual pages written to {}", dir.display());
    Ok(())
}
