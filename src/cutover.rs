//! `cutover-watchdog cutover`: the runbook's switch as one guarded command. Preflight first; then
//! one merge patch that switches the selector and writes the window's record together, so the
//! window's clock is the switch's and no watch can see one without the other; then the window,
//! followed live from the Service's annotations until it ends.
//!
//! It does not guard anything itself: the running watchdog adopts the window it wrote, and
//! stopping this command (Ctrl-C) stops only the following. Its exit code says how the window
//! ended ([`Exit`]).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GuardConfig};
use crate::decision::{Persisted, Phase};
use crate::error::{Error, Result};
use crate::preflight::{self, CLI_MANAGER};
use crate::promql::Prometheus;
use crate::service;

/// How a command ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub u8);

impl Exit {
    /// Done; for `cutover`, the window ended stable.
    pub const OK: Self = Self(0);
    /// A preflight FAIL, or an error.
    pub const FAIL: Self = Self(1);
    /// The command line named something that does not exist.
    pub const USAGE: Self = Self(2);
    pub const ROLLED_BACK: Self = Self(3);
    pub const EXPIRED: Self = Self(4);
    pub const SUPERSEDED: Self = Self(5);
    /// Ctrl-C: following stopped; the watchdog goes on guarding.
    pub const INTERRUPTED: Self = Self(130);
}

/// What `cutover` was asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub guard: String,
    pub to: String,
    /// Switch even if preflight fails.
    pub force: bool,
    /// Return after the switch.
    pub follow: bool,
}

/// Preflight, switch, follow. `interrupt` is Ctrl-C.
pub async fn run(
    config: &Config,
    client: &kube::Client,
    prometheus: &Prometheus,
    request: &Request,
    interrupt: CancellationToken,
) -> Result<Exit> {
    let checked = preflight::check(
        config,
        client,
        prometheus,
        (&request.guard, &request.to),
        true,
    )
    .await?;
    let (report, guard, svc) = (checked.report, checked.guard, checked.service);
    print!("{}", report.text());
    if report.failed() {
        if !request.force {
            println!("preflight failed: not switching (--force switches anyway)");
            return Ok(Exit::FAIL);
        }
        println!("preflight failed: switching anyway, as --force asks");
    }
    let Some(from) = report.from.clone() else {
        return Err(Error::Usage(format!(
            "service {}/{} has no {} key in its selector: nothing to switch",
            guard.namespace, guard.service, guard.version_label
        )));
    };
    let record = switch(client, &guard, &svc, &from, &request.to).await?;
    println!(
        "switched {}/{}: {}={} -> {} at {}",
        guard.namespace, guard.service, guard.version_label, from, request.to, record.cutover_at
    );
    if !request.follow {
        return Ok(Exit::OK);
    }
    follow(client, &guard, &record, interrupt).await
}

/// The selector and the window's record in one merge patch, preconditioned on the Service as
/// preflight read it.
async fn switch(
    client: &kube::Client,
    guard: &GuardConfig,
    svc: &Service,
    from: &str,
    to: &str,
) -> Result<Persisted> {
    let now = Timestamp::now();
    let record = Persisted {
        version: to.to_owned(),
        previous: from.to_owned(),
        cutover_at: now.round(jiff::Unit::Millisecond).unwrap_or(now),
        phase: Phase::Watching,
        reason: format!("cutover from {from} to {to} by cutover-watchdog cutover"),
    };
    let patch = json!({
        "metadata": {
            "resourceVersion": svc.metadata.resource_version,
            "annotations": service::annotations(&record),
        },
        "spec": { "selector": { &guard.version_label: to } },
    });
    let params = PatchParams {
        field_manager: Some(CLI_MANAGER.into()),
        ..PatchParams::default()
    };
    let api: Api<Service> = Api::namespaced(client.clone(), &guard.namespace);
    match api
        .patch(&guard.service, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(record),
        Err(kube::Error::Api(status)) if status.is_conflict() => Err(Error::Unusable(format!(
            "service {}/{} changed since preflight read it; nothing was switched: run cutover again",
            guard.namespace, guard.service
        ))),
        Err(source) => Err(Error::Kube {
            verb: "patch",
            what: "service",
            namespace: guard.namespace.clone(),
            name: guard.service.clone(),
            source: Box::new(source),
        }),
    }
}

/// How the window for `record` stands on `svc`: `None` while it is watched; the exit code once
/// it ended. A record for another window means someone switched again: superseded.
#[must_use]
pub fn ended(svc: &Service, record: &Persisted) -> Option<Exit> {
    let Some(now) = service::persisted(svc) else {
        return Some(Exit::SUPERSEDED);
    };
    if now.version != record.version || now.cutover_at != record.cutover_at {
        return Some(Exit::SUPERSEDED);
    }
    match now.phase {
        Phase::Watching => None,
        Phase::Stable => Some(Exit::OK),
        Phase::RolledBack | Phase::Overridden => Some(Exit::ROLLED_BACK),
        Phase::Expired | Phase::Missed => Some(Exit::EXPIRED),
        Phase::Superseded => Some(Exit::SUPERSEDED),
    }
}

/// Follows the window from the Service's annotations until it ends, or until Ctrl-C. A progress
/// line on a terminal, plain lines otherwise.
async fn follow(
    client: &kube::Client,
    guard: &GuardConfig,
    record: &Persisted,
    interrupt: CancellationToken,
) -> Result<Exit> {
    let api: Api<Service> = Api::namespaced(client.clone(), &guard.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", guard.service));
    let events = watcher(api, config).default_backoff();
    futures::pin_mut!(events);
    let terminal = std::io::stdout().is_terminal();
    let mut ticks = tokio::time::interval(Duration::from_secs(if terminal { 1 } else { 30 }));
    let mut last: Option<Service> = None;
    // A watchdog records the end within a poll of it; long after, none is guarding.
    let overdue = record
        .cutover_at
        .checked_add(
            jiff::SignedDuration::try_from(guard.window + Duration::from_mins(1))
                .unwrap_or_default(),
        )
        .unwrap_or(record.cutover_at);
    loop {
        if Timestamp::now() > overdue {
            println!(
                "{}the window's end passed a minute ago with no decision on the record: is a watchdog guarding this service?",
                if terminal { "\n" } else { "" }
            );
            return Ok(Exit::FAIL);
        }
        tokio::select! {
            () = interrupt.cancelled() => {
                println!("\nstopped following; the watchdog goes on guarding the window");
                return Ok(Exit::INTERRUPTED);
            }
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(svc) | watcher::Event::InitApply(svc))) => {
                    if let Some(exit) = ended(&svc, record) {
                        let state = service::persisted(&svc)
                            .map_or_else(|| "no record".to_owned(), |p| format!("{}: {}", p.phase.as_str(), p.reason));
                        println!("{}window ended {state}", if terminal { "\n" } else { "" });
                        return Ok(exit);
                    }
                    last = Some(svc);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %crate::error::chain(&e), "watch of the service failed; retrying");
                }
                None => return Err(Error::Unusable("the service watch ended".into())),
            },
            _ = ticks.tick() => {
                let line = progress(guard, record, last.as_ref(), Timestamp::now());
                if terminal {
                    print!("\r{line}\x1b[K");
                    let _ = std::io::stdout().flush();
                } else {
                    println!("{line}");
                }
            }
        }
    }
}

/// One progress line: how far into the window, and when it can be declared stable.
#[must_use]
pub fn progress(
    guard: &GuardConfig,
    record: &Persisted,
    svc: Option<&Service>,
    now: Timestamp,
) -> String {
    let elapsed = Duration::try_from(now.duration_since(record.cutover_at)).unwrap_or_default();
    let secs =
        |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    let selector = svc
        .and_then(|s| service::selector(s).get(&guard.version_label).cloned())
        .unwrap_or_else(|| record.version.clone());
    format!(
        "watching {}={selector}: {} of the {} window; stable from {}",
        guard.version_label,
        secs(elapsed),
        secs(guard.window),
        secs(guard.stabilization)
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn on_service(record: Option<&Persisted>) -> Service {
        Service {
            metadata: ObjectMeta {
                annotations: record.map(|r| {
                    service::annotations(r)
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                }),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn the_exit_code_is_how_this_window_ended() {
        let ours = Persisted {
            version: "v2".into(),
            previous: "v1".into(),
            cutover_at: "2026-11-30T12:00:00Z".parse().unwrap(),
            phase: Phase::Watching,
            reason: String::new(),
        };
        let with = |phase| Persisted {
            phase,
            ..ours.clone()
        };
        for (phase, exit) in [
            (Phase::Watching, None),
            (Phase::Stable, Some(Exit::OK)),
            (Phase::RolledBack, Some(Exit::ROLLED_BACK)),
            (Phase::Expired, Some(Exit::EXPIRED)),
            (Phase::Superseded, Some(Exit::SUPERSEDED)),
        ] {
            assert_eq!(
                ended(&on_service(Some(&with(phase))), &ours),
                exit,
                "{phase:?}"
            );
        }
        let later = Persisted {
            version: "v3".into(),
            ..ours.clone()
        };
        assert_eq!(
            ended(&on_service(Some(&later)), &ours),
            Some(Exit::SUPERSEDED),
            "another switch since"
        );
        assert_eq!(ended(&on_service(None), &ours), Some(Exit::SUPERSEDED));
    }
}
