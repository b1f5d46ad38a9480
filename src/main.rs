//! The binary: parse the command line, start logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use cutover_watchdog::cli::{Cli, Command, Output};
use cutover_watchdog::{app, config::Config, discover, telemetry};

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
    match cli.command {
        Command::CheckConfig(args) => {
            let config = Config::load(&args.config)?;
            println!(
                "{}: ok, {} guard(s), {} template(s)",
                args.config.display(),
                config.guards.len(),
                config.templates.len()
            );
        }
        Command::Discover(args) => {
            let config = Config::load(&args.config.config)?;
            let rows = discover::discover(&config, &app::kube_client().await?).await?;
            match args.output {
                Output::Text => print!("{}", discover::table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
        }
        Command::Serve(args) => {
            app::run(args.config, app::shutdown_on_signal()?).await?;
        }
        #[cfg(feature = "sandbox")]
        Command::Demo(options) => {
            let story = cutover_watchdog::demo::run(&options, app::shutdown_on_signal()?);
            anyhow::ensure!(
                story.await?,
                "the story did not end as the scenario expects"
            );
        }
        #[cfg(not(feature = "sandbox"))]
        Command::Demo { .. } => anyhow::bail!(cutover_watchdog::cli::DEMO_NOT_BUILT),
    }
    Ok(())
}
