//! The command line, and what each command does. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::cutover::{self, Exit};
use crate::error::{Error, Result};
use crate::promql::Prometheus;
use crate::telemetry::LogFormat;
use crate::{app, discover, preflight};

/// Automatic safety net after a blue-green Service cutover: watches version-labelled metrics
/// and Alertmanager alerts, and reverts the Service selector to blue when green misbehaves.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        value_enum,
        global = true,
        env = "CUTOVER_WATCHDOG_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the guarded Services and revert them when a check trips.
    Serve(ConfigArg),
    /// Validate a config file and exit: non-zero, naming the key, if it is invalid.
    CheckConfig(CheckConfigArgs),
    /// List every Service in the config's namespaces (from the cluster in KUBECONFIG, else
    /// in-cluster), its serving version, and the guard that covers it, or why none does.
    Discover(DiscoverArgs),
    /// The runbook's pre-deployment checklist for switching one guarded Service to a version:
    /// PASS, WARN or FAIL per item, with the evidence. Changes nothing. Exit 0: no FAIL; 1: a
    /// FAIL or an error; 2: a usage error.
    Preflight(PreflightArgs),
    /// Preflight, then switch the Service's selector to a version with the window's record in
    /// the same write, then follow the window until it ends. Exit 0: stable; 1: a preflight
    /// FAIL or an error; 2: usage; 3: rolled back; 4: expired; 5: superseded; 130: Ctrl-C
    /// (which stops following, not guarding).
    Cutover(CutoverArgs),
    /// What the watchdog would have decided over a past cutover's window, from Prometheus's
    /// history, with the very decision core `serve` runs; `--since` finds the past cutovers,
    /// `--set` tries other thresholds. Exit 0 whatever the outcome; 1: an error; 2: usage.
    Replay(ReplayArgs),
    /// Play the runbook's story on a local sandbox (no cluster needed): cutover, a fault in v2,
    /// detection, the revert. Needs the Debian packages prometheus and prometheus-alertmanager.
    #[cfg(feature = "sandbox")]
    Demo(crate::demo::DemoOptions),
    /// The demo, in a binary built without the sandbox (the image): unlisted, and it answers
    /// with [`DEMO_NOT_BUILT`] whatever its arguments.
    #[cfg(not(feature = "sandbox"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What `demo` answers in a binary built without the sandbox.
pub const DEMO_NOT_BUILT: &str = "the demo is not built into this binary (the image carries no sandbox); \
     run it from a checkout of cutover-watchdog: cargo run --release --features sandbox -- demo";

impl Command {
    /// Runs the command to its end; what it prints goes to stdout. The exit code says how it
    /// ended where that is more than success ([`Exit`]).
    pub async fn run(self) -> Result<Exit> {
        crate::tls::ring_as_default();
        match self {
            Self::Preflight(args) => {
                let config = Config::load(&args.config.config)?;
                let prometheus = Prometheus::new(&config.prometheus)?;
                let client = app::kube_client().await?;
                let checked = preflight::check(
                    &config,
                    &client,
                    &prometheus,
                    (&args.guard, &args.to),
                    false,
                )
                .await?;
                match args.output {
                    Output::Text => print!("{}", checked.report.text()),
                    Output::Json => println!("{}", json(&checked.report)?),
                }
                return Ok(if checked.report.failed() {
                    Exit::FAIL
                } else {
                    Exit::OK
                });
            }
            Self::Replay(args) => return crate::replay::command(args).await,
            Self::Cutover(args) => {
                let config = Config::load(&args.config.config)?;
                let prometheus = Prometheus::new(&config.prometheus)?;
                let client = app::kube_client().await?;
                let interrupt = app::shutdown_on_signal()?;
                let request = cutover::Request {
                    guard: args.guard,
                    to: args.to,
                    force: args.force,
                    follow: !args.no_follow,
                };
                return cutover::run(&config, &client, &prometheus, &request, interrupt).await;
            }
            Self::CheckConfig(args) => {
                let path = &args.config.config;
                let config = Config::load(path)?;
                println!(
                    "{}: ok, {} guard(s), {} template(s)",
                    path.display(),
                    config.guards.len(),
                    config.templates.len()
                );
                if args.connect {
                    let url = &config.prometheus.url;
                    let prometheus = Prometheus::new(&config.prometheus)?;
                    let version = prometheus.probe().await.map_err(|source| Error::Connect {
                        url: url.to_string(),
                        source,
                    })?;
                    println!("{url}: ok, vector(1) answered; {version}");
                }
            }
            Self::Serve(args) => app::run(args.config, app::shutdown_on_signal()?).await?,
            Self::Discover(args) => {
                let config = Config::load(&args.config.config)?;
                let rows = discover::discover(&config, &app::kube_client().await?).await?;
                match args.output {
                    Output::Text => print!("{}", discover::table(&rows)),
                    Output::Json => println!("{}", json(&rows)?),
                }
            }
            #[cfg(feature = "sandbox")]
            Self::Demo(options) => {
                let ended = crate::demo::run(&options, app::shutdown_on_signal()?).await?;
                if !ended {
                    return Err(Error::Sandbox(
                        "the story did not end as the scenario expects".into(),
                    ));
                }
            }
            #[cfg(not(feature = "sandbox"))]
            Self::Demo { .. } => return Err(Error::Unusable(DEMO_NOT_BUILT.into())),
        }
        Ok(Exit::OK)
    }

    /// The default log level: `info`, or `warn` for commands whose output is on stdout.
    #[must_use]
    pub fn default_log_level(&self) -> &'static str {
        match self {
            // The demo's and discover's output is their story or table; the log only says what
            // went wrong.
            Self::Demo { .. }
            | Self::Discover(_)
            | Self::Preflight(_)
            | Self::Cutover(_)
            | Self::Replay(_) => "warn",
            Self::Serve(_) | Self::CheckConfig(_) => "info",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Also send one query (`vector(1)`) to `prometheus.url` with the configured TLS,
    /// credentials and headers, and say what happened.
    #[arg(long)]
    pub connect: bool,
}

#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// `text`: an aligned table; `json`: the same rows as a JSON array.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The guard: its name in `guards[]`, or NAMESPACE/SERVICE for a template's.
    #[arg(long)]
    pub guard: String,
    /// The version to switch to (green).
    #[arg(long)]
    pub to: String,
    /// `text`: one line per item; `json`: the report as JSON.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The guard: its name in `guards[]`, or NAMESPACE/SERVICE for a template's.
    #[arg(long)]
    pub guard: String,
    /// The version to switch to (green).
    #[arg(long)]
    pub to: String,
    /// Switch even if preflight fails (and say so).
    #[arg(long)]
    pub force: bool,
    /// Return once switched, without following the window.
    #[arg(long)]
    pub no_follow: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The guard: its name in `guards[]`, or NAMESPACE/SERVICE for a template's (its
    /// placeholders filled from the cluster).
    #[arg(long)]
    pub guard: String,
    /// When the cutover happened (RFC 3339); with `--version` and `--previous`.
    #[arg(long, requires_all = ["version", "previous"], conflicts_with = "since")]
    pub cutover_at: Option<String>,
    /// The green version of that cutover.
    #[arg(long)]
    pub version: Option<String>,
    /// The blue version of that cutover.
    #[arg(long)]
    pub previous: Option<String>,
    /// Replay every window the watchdog recorded in this past span (e.g. `7d`), from
    /// `cutover_watchdog_window_info`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// With `--since`: a PromQL expression whose series (by their `version` label) mark which
    /// version served, the highest value at each step; each change it marks is replayed too,
    /// for cutovers the watchdog never recorded. E.g.
    /// `sum by (version) (rate(http_requests_total{app="my-microservice"}[1m]))`.
    #[arg(long, requires = "since", value_name = "PROMQL")]
    pub version_changes: Option<String>,
    /// The poll interval to replay at; the config's `poll_interval` by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub step: Option<std::time::Duration>,
    /// Try another threshold: `checks.<name>.<above|below|for|on_no_data>=<value>`, repeatable.
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// `text`: the timeline (or, with `--since`, a summary); `json`: the same as data.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Pretty JSON for stdout.
pub(crate) fn json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Unusable(format!("output as JSON: {e}")))
}

/// How `discover` and `preflight` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path to the YAML config file.
    #[arg(long, env = "CUTOVER_WATCHDOG_CONFIG")]
    pub config: PathBuf,
}
