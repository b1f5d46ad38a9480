//! The command line. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

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
    CheckConfig(ConfigArg),
    /// Play the runbook's story on a local sandbox (no cluster needed): cutover, a fault in v2,
    /// detection, the revert. Needs the Debian packages prometheus and prometheus-alertmanager.
    Demo(crate::demo::DemoOptions),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path to the YAML config file.
    #[arg(long, env = "CUTOVER_WATCHDOG_CONFIG")]
    pub config: PathBuf,
}
