//! The `pop` command line, built inside the test package for the end-to-end tests.
fn main() -> std::process::ExitCode {
    pop_cli::main()
}
