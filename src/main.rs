//! The `tugboat` command line: parses flags (each also read from a TUGBOAT_* environment
//! variable), sets up logging, runs one subcommand and maps failures to exit codes.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Configuration check: with TUGBOAT_CHECK_ARGS=1 the flags and TUGBOAT_* variables are
    // validated and nothing runs (tests/manifests.rs checks every manifest this way).
    if std::env::var_os("TUGBOAT_CHECK_ARGS").is_some_and(|v| v == "1") {
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
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}
