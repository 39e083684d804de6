//! The `pop` binary, built inside the test package so tests find it as CARGO_BIN_EXE_pop.
fn main() -> std::process::ExitCode {
    pop_cli::main()
}
