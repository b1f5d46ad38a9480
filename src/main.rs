//! The binary: parse the command line, start logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use cutover_watchdog::cli::{Cli, Command};
use cutover_watchdog::{app, config::Config, demo, telemetry};

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
    // The demo narrates on stdout; only warnings from the watchdog inside it are worth showing.
    let quiet = matches!(cli.command, Command::Demo(_));
    telemetry::init(cli.log_format, if quiet { "warn" } else { "info" })?;
    match cli.command {
        Command::CheckConfig(args) => {
            let config = Config::load(&args.config)?;
            println!(
                "{}: ok, {} guard(s)",
                args.config.display(),
                config.guards.len()
            );
        }
        Command::Serve(args) => {
            app::run(Config::load(&args.config)?, app::shutdown_on_signal()?).await?;
        }
        Command::Demo(options) => {
            let as_expected = demo::run(&options, app::shutdown_on_signal()?).await?;
            anyhow::ensure!(as_expected, "the story did not end as the scenario expects");
        }
    }
    Ok(())
}
