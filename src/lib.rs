//! cutover-watchdog: the automatic safety net after a blue-green Service cutover.
//!
//! It watches a Service's selector, opens a window when the version changes, polls
//! version-labelled checks in Prometheus, and reverts the selector to the previous version when
//! a check trips: once, safely, never onto a version with no Ready pods, never over a human's
//! change. See the README for the contract.

pub mod access;
pub mod app;
pub mod cli;
pub mod config;
pub mod coverage;
pub mod cutover;
pub mod decision;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod discover;
pub mod error;
pub mod executor;
pub mod fleet;
pub mod forward;
pub mod gitops;
pub mod guard;
pub mod http;
pub mod leader;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod poller;
pub mod preflight;
pub mod probe;
pub mod promql;
pub mod reload;
pub mod replay;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod selector;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod webhook;

pub use error::{Error, Result};

/// Sent with every Kubernetes and Prometheus request, so audit logs can tell our writes apart.
pub const USER_AGENT: &str = concat!("cutover-watchdog/", env!("CARGO_PKG_VERSION"));
