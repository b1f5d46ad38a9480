//! A local stand-in for a cluster and its monitoring, for the tests and the demo.
//!
//! - [`apiserver`]: an HTTP Kubernetes API double with the semantics the watchdog relies on
//!   (resourceVersion preconditions, merge patches, list+watch, Pods, Events), checked against
//!   the real kubectl by the test suite.
//! - [`traffic`]: a synthetic blue/green app whose version-labelled metrics Prometheus scrapes.
//! - [`processes`]: the real Prometheus (and Alertmanager) as child processes on free ports.
//! - [`faulty`]: a proxy between the watchdog and Prometheus that injects network and HTTP
//!   faults on demand.
//!
//! None of this runs in `serve`; it is compiled in so the demo and the tests share one copy.

pub mod apiserver;
pub mod faulty;
pub mod processes;
pub mod traffic;

use std::net::{SocketAddr, TcpListener};

use crate::error::{Error, Result};

/// Ports this process has handed out. A port is free again as soon as `free_port` returns, so
/// without this a sandbox that asks for several (the watchdog's two listeners, then Prometheus')
/// can be handed the same one twice. Sandbox-only: `serve` never calls this.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free loopback port, never one this process was handed before, for child processes and
/// listeners that must be told one up front.
pub fn free_port() -> Result<u16> {
    let mut handed = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..100 {
        let listener =
            TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|source| {
                Error::Io {
                    context: "failed to find a free loopback port".into(),
                    source,
                }
            })?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|source| Error::Io {
                context: "failed to read a bound port".into(),
                source,
            })?;
        if !handed.contains(&port) {
            handed.push(port);
            return Ok(port);
        }
    }
    Err(Error::Sandbox(
        "no unused loopback port after 100 tries".into(),
    ))
}
