//! Logging setup: structured `tracing` events, as text or JSON lines.
//!
//! The level comes from `RUST_LOG` (default `info`; `warn` in the demo). Nothing here knows about secrets: callers
//! never put them in fields.

use tracing_subscriber::EnvFilter;

use crate::error::{Error, Result};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber, writing to stderr; `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) -> Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| Error::Telemetry(e.to_string()))
}
