//! cutover-watchdog: the automatic safety net after a blue-green Service cutover.

pub mod config;
pub mod decision;
pub mod error;
pub mod promql;

pub use error::{Error, Result};

/// Sent with every Kubernetes and Prometheus request, so audit logs can tell our writes apart.
pub const USER_AGENT: &str = concat!("cutover-watchdog/", env!("CARGO_PKG_VERSION"));
