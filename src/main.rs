//! The binary: parse the command line, start logging, run the command until it ends (`serve`:
//! SIGTERM or Ctrl-C).

use std::process::ExitCode;

use clap::Parser;
use cutover_watchdog::cli::Cli;
use cutover_watchdog::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause once: "invalid config c.yaml: guards[0].name: ...".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    telemetry::init(cli.log_format, cli.command.default_log_level())?;
    cli.command.run().await?;
    Ok(())
}
