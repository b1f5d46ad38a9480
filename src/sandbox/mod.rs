//! A local stand-in for a cluster and its monitoring, for the tests and the demo.
//!
//! - [`apiserver`]: an HTTP Kubernetes API double with the semantics the watchdog relies on
//!   (resourceVersion preconditions, merge patches, list+watch, Pods, Events), checked against
//!   the real kubectl by the test suite.
//! - [`traffic`]: a synthetic blue/green app whose version-labelled metrics Prometheus scrapes.
//! - [`processes`]: the real Prometheus (and Alertmanager) as child processes on free ports.
//!
//! None of this runs in `serve`; it is compiled in so the demo and the tests share one copy.

pub mod apiserver;
pub mod processes;
pub mod traffic;

use std::net::{SocketAddr, TcpListener};

use crate::error::{Error, Result};

/// A free loopback port, for child processes that must be told one up front.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|source| Error::Io {
            context: "failed to find a free loopback port".into(),
            source,
        })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            context: "failed to read a bound port".into(),
            source,
        })
}
