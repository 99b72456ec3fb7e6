//! `ghl-sync`: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use ghl_sync::cli::{Cli, execute};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(execute(cli))
}
