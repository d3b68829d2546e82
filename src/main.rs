#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = outbound_runner::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outbound-runner: cannot start the async runtime: {e}");
            return ExitCode::from(outbound_runner::exit::SOFTWARE);
        }
    };
    ExitCode::from(runtime.block_on(outbound_runner::cli::main(cli)))
}
