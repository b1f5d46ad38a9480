//! The binary: parse the command line, start logging, run the command until it ends (`serve`:
//! SIGTERM or Ctrl-C).

use std::process::ExitCode;

use clap::Parser;
use cutover_watchdog::cli::Cli;
use cutover_watchdog::cutover::Exit;
use cutover_watchdog::{error, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(exit) => ExitCode::from(exit.0),
        Err(e) => {
            // One line, each cause once: "invalid config c.yaml: guards[0].name: ...".
            eprintln!("error: {e:#}");
            let usage = matches!(e.downcast_ref(), Some(error::Error::Usage(_)));
            ExitCode::from(if usage { Exit::USAGE.0 } else { Exit::FAIL.0 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Exit> {
    telemetry::init(cli.log_format, cli.command.default_log_level())?;
    Ok(cli.command.run().await?)
}
