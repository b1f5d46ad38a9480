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
    /// The demo narrates on stdout: only warnings from the watchdog inside it are worth showing.
    #[must_use]
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Self::Demo { .. } => "warn",
            Self::Serve(_) | Self::CheckConfig(_) => "info",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path to the YAML config file.
    #[arg(long, env = "CUTOVER_WATCHDOG_CONFIG")]
    pub config: PathBuf,
}
