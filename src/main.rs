//! The `waxwing` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    waxwing::cli::main()
}
