fn main() -> std::process::ExitCode {
    pop_cli::main()
}
