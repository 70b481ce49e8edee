//! The `pocketvl` binary: everything is in `pocketvl::cli`.

fn main() -> std::process::ExitCode {
    pocketvl::cli::main()
}
