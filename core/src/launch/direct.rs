//! Running a service's `sh -c <command>` without the shell, when the shell would do
//! nothing but run one program with the command's words: a restart then costs one exec
//! instead of two. Decided here from the rendered argv and environment, so the driver
//! only carries it out (see [`Launch::direct_argv`] for what the driver must add).

use super::Launch;

impl Launch {
    /// The argv to exec in place of `sh -c <command>`, when the shell would do nothing
    /// but run one program with the command's words: a restart then skips starting a
    /// shell. `None` when the shell might do anything else (see [`plain_command`]), or
    /// when the service's environment sets `PWD` (the shell keeps it only if it names
    /// the working directory), a variable of [`set_by_the_shell`], or one whose name is
    /// not a [`shell_name`] (the shell would drop it).
    ///
    /// The driver must set `PWD` to the physical working directory, as the shell does
    /// when the inherited `PWD` (the agent's) names another directory, drop inherited
    /// variables whose names are not [`shell_name`]s, and keep the shell when the
    /// agent's own environment has a variable of [`set_by_the_shell`].
    /// A missing program is then a failed spawn (naming the program and the error)
    /// rather than the shell's "not found" and exit code 127.
    pub fn direct_argv(&self) -> Option<Vec<String>> {
        let [shell, dash_c, command] = self.argv.as_slice() else {
            return None;
        };
        if shell != "/bin/sh" || dash_c != "-c" {
            return None;
        }
        if self
            .env
            .keys()
            .any(|k| k == "PWD" || set_by_the_shell(k) || !shell_name(k))
        {
            return None;
        }
        plain_command(command)
    }
}

/// Whether `sh` sets or reads the environment variable `name` (other than `PWD`) in a
/// way a program it runs could see: dash resets `OPTIND`, `PPID` and `IFS`; bash (as
/// `sh` elsewhere) imports functions from `BASH_FUNC_*`.
pub fn set_by_the_shell(name: &str) -> bool {
    matches!(name, "OPTIND" | "PPID" | "IFS") || name.starts_with("BASH_FUNC_")
}

/// Whether the shell passes the environment variable `name` on to the programs it
/// runs: only names it could use as variables (a letter or `_`, then letters, digits
/// and `_`) are imported, so others are dropped.
pub fn shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Words a shell treats specially in command position: reserved words, and the
/// builtins of dash, POSIX and bash (a builtin may behave unlike the program of the
/// same name, as dash's `echo` does).
const SHELL_WORDS: &[&str] = &[
    "!",
    "{",
    "}",
    "[[",
    "]]",
    "case",
    "coproc",
    "do",
    "done",
    "elif",
    "else",
    "esac",
    "fi",
    "for",
    "function",
    "if",
    "in",
    "select",
    "then",
    "time",
    "until",
    "while",
    ".",
    ":",
    "[",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "cd",
    "chdir",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
];

/// A character the shell takes literally wherever it appears in a word. Everything
/// else (quotes, `$`, `\`, globs, `~`, `#`, operators, braces, newlines, non-ASCII)
/// keeps the shell.
fn literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-./:,+@%=".contains(c)
}

/// Whether `word` in command position names a program to look up in `PATH`: not an
/// assignment, option, reserved word or builtin.
fn program_word(word: &str) -> bool {
    !word.starts_with('-') && !word.contains('=') && !SHELL_WORDS.contains(&word)
}

/// The words of `command` when `sh -c <command>` would only run one program with them:
/// words of literal characters separated by spaces or tabs, the first naming a program
/// (not a builtin, reserved word or assignment), optionally after `exec` (which the
/// shell would replace itself with anyway). `None` for anything else.
pub fn plain_command(command: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    if !words.iter().all(|w| w.chars().all(literal)) {
        return None;
    }
    let words = match words.split_first() {
        Some((&"exec", rest)) => rest,
        _ => &words[..],
    };
    let program = words.first()?;
    program_word(program).then(|| words.iter().map(|w| w.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::{render, Host};
    use crate::plugin::builtin;
    use crate::settings::Settings;

    /// What the agent launches for a `command` service with these settings.
    fn command_launch(settings: &Settings) -> Launch {
        let host = Host {
            machine: "m".into(),
            pop: "/usr/bin/pop".into(),
            state_dir: "/var/lib/pop".into(),
        };
        let manifest = builtin::get("command").expect("built in");
        render("s", &host, settings, manifest, None).expect("renders")
    }

    fn words(command: &str) -> Option<Vec<String>> {
        plain_command(command)
    }

    fn strings(words: &[&str]) -> Option<Vec<String>> {
        Some(words.iter().map(|w| w.to_string()).collect())
    }

    #[test]
    fn plain_word_lists_run_without_a_shell() {
        assert_eq!(words("sleep 100"), strings(&["sleep", "100"]));
        assert_eq!(
            words("exec /opt/bin/stamp /tmp/stamps crash0"),
            strings(&["/opt/bin/stamp", "/tmp/stamps", "crash0"])
        );
        assert_eq!(words(" \tsleep  100\t "), strings(&["sleep", "100"]));
        assert_eq!(
            words("python3 -m http.server --bind=127.0.0.1 8000"),
            strings(&["python3", "-m", "http.server", "--bind=127.0.0.1", "8000"])
        );
        // An assignment only counts before the program.
        assert_eq!(words("env a=b"), strings(&["env", "a=b"]));
        assert_eq!(
            words("./run +x @y %z a:b,c"),
            strings(&["./run", "+x", "@y", "%z", "a:b,c"])
        );
    }

    #[test]
    fn anything_the_shell_would_treat_differently_keeps_the_shell() {
        for command in [
            "",
            "   ",
            "exec",
            "exec -a name prog",
            "FOO=1 prog",
            "-prog",
            "prog $HOME",
            "prog ${X}",
            "prog `date`",
            "prog 'a b'",
            "prog \"a\"",
            "prog a\\ b",
            "prog > out",
            "prog < in",
            "prog | cat",
            "prog && other",
            "prog || other",
            "prog; other",
            "prog &",
            "prog\nother",
            "prog\r",
            "prog *",
            "prog file?",
            "prog [ab]",
            "prog ~/x",
            "prog {a,b}",
            "(prog)",
            "# a comment",
            "prog # a comment",
            "prog !x",
            "prog é",
            "if true",
            "while prog",
            "time prog",
            "! prog",
            "{ prog; }",
            "cd /tmp",
            "echo hi",
            "printf x",
            "kill 1",
            "true",
            "test -f x",
            "[ -f x ]",
            ". ./script",
            "source script",
            "exec echo hi",
            "exec cd /",
        ] {
            assert_eq!(plain_command(command), None, "{command:?}");
        }
    }

    #[test]
    fn a_service_env_the_shell_would_change_keeps_the_shell() {
        let mut settings =
            Settings::parse(br#"{"type":"command","command":"sleep 5"}"#).expect("valid settings");
        let launch = command_launch(&settings);
        assert_eq!(launch.direct_argv(), strings(&["sleep", "5"]));
        for var in [
            "PWD",
            "OPTIND",
            "PPID",
            "IFS",
            "BASH_FUNC_f%%",
            "a-b",
            "1x",
            "é",
        ] {
            settings.env.insert(var.into(), "x".into());
            let launch = command_launch(&settings);
            assert_eq!(launch.direct_argv(), None, "{var}");
            settings.env.remove(var);
        }
        settings.env.insert("HOME".into(), "/h".into());
        settings.env.insert("_x1".into(), "y".into());
        assert!(command_launch(&settings).direct_argv().is_some());
    }
}
