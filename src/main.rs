//! The binary: parse the command line, start logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cutover_watchdog::cli::{Cli, Command};
use cutover_watchdog::demo::{self, DemoOptions};
use cutover_watchdog::{app, config::Config, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
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
            let config = Config::load(&args.config)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            app::run(config, shutdown).await?;
        }
        Command::Demo(args) => {
            let options = DemoOptions {
                scenario: args.scenario,
                exit_after: args.exit_after,
                prometheus: args.prometheus,
                alertmanager: args.alertmanager,
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            anyhow::ensure!(
                demo::run(&options, shutdown).await?,
                "the story did not end as the scenario expects"
            );
        }
    }
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to install SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
    Ok(())
}
