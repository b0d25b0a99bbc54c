//! The `tugboat` command line: parses flags (each also read from a TUGBOAT_* environment
//! variable), sets up logging, runs one subcommand and maps failures to exit codes.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse_from(cli::argv());
    // `--check-args`: the flags and TUGBOAT_* variables parsed, nothing runs
    // (tests/manifests.rs checks every manifest this way).
    if cli.check_args {
        return ExitCode::SUCCESS;
    }
    cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", tugboat::errors::render(failure.error.as_ref()));
            ExitCode::from(failure.code)
        }
    }
}
