//! Which guards an alert concerns, and its delivery to their inboxes, all or none.
//!
//! Alerts that may act go to the guard's inbox; the others are only recorded in its alert log
//! for `/v1/guards`. Room is reserved in every target inbox before anything is queued or
//! recorded, so a payload that cannot be taken whole leaves nothing behind for Alertmanager's
//! retry to deliver twice. It deliberately does not decide whether an alert acts on a guard's
//! window (that is [`crate::decision`]), never waits for room, and knows nothing of HTTP.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use tokio::sync::mpsc::error::TrySendError;
use tracing::debug;

use super::payload::Payload;
use crate::decision::Alert;
use crate::fleet::GuardSet;
use crate::guard::{AlertSeen, GuardHandle, Input};
use crate::metrics::Metrics;

/// Which guards an alert may match, found by label lookups instead of a scan of every guard:
/// each guard is filed under the first label of its `alerts.match`, which any alert it matches
/// must carry. With a thousand guards the scan was most of a request's cost.
#[derive(Default)]
pub(crate) struct Routes {
    /// label key -> label value -> guard indices, ascending.
    by: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl Routes {
    pub(crate) fn new(guards: &[GuardHandle]) -> Self {
        let mut routes = Self::default();
        for (i, g) in guards.iter().enumerate() {
            let first = g
                .config
                .alerts
                .as_ref()
                .and_then(|a| a.match_labels.iter().next())
                .and_then(|(key, value)| Some((key, value.literal()?)));
            if let Some((key, value)) = first {
                routes
                    .by
                    .entry(key.clone())
                    .or_default()
                    .entry(value.to_owned())
                    .or_default()
                    .push(i);
            }
        }
        routes
    }

    /// Guards whose first match label `labels` carry, in config order; the caller checks the
    /// rest of each guard's `alerts.match`.
    fn candidates(&self, labels: &BTreeMap<String, String>) -> Vec<usize> {
        let mut found: Vec<usize> = self
            .by
            .iter()
            .filter_map(|(key, values)| values.get(labels.get(key)?))
            .flatten()
            .copied()
            .collect();
        found.sort_unstable();
        found
    }
}

/// A guard's inbox had no room (or was closed at shutdown): nothing of the payload was queued.
#[derive(Debug, thiserror::Error)]
#[error("guard {guard} cannot take alerts right now; retry")]
pub struct QueueFull {
    guard: String,
}

/// Routes each alert of `payload` to the guards it matches, to all of them or to none, and
/// returns how many deliveries that may act were queued.
pub(super) fn dispatch(
    set: &GuardSet,
    metrics: &Metrics,
    payload: &Payload,
) -> Result<usize, QueueFull> {
    let (guards, index) = (&set.guards, &set.routes);
    let now = Timestamp::now();
    let mut deliveries: Vec<(&GuardHandle, Box<Input>)> = Vec::new();
    let mut records: Vec<(&GuardHandle, AlertSeen)> = Vec::new();
    for alert in &payload.alerts {
        let status = match alert.status.as_str() {
            "firing" => "firing",
            "resolved" => "resolved",
            _ => "unknown",
        };
        metrics
            .alerts_received_total
            .with_label_values(&[status])
            .inc();
        let alertname = alert.labels.get("alertname").cloned().unwrap_or_default();
        let severity = alert.labels.get("severity").map(String::as_str);
        let candidates = index.candidates(&alert.labels);
        for guard in candidates.into_iter().filter_map(|i| guards.get(i)) {
            let Some(rule) = guard
                .config
                .alerts
                .as_ref()
                .filter(|r| r.matches(&alert.labels))
            else {
                continue;
            };
            let acts = status == "firing" && rule.acts_on(severity);
            let outcome = match (status, acts) {
                (_, true) => "delivered",
                ("firing", false) => "ignored: severity not listed",
                ("resolved", _) => "ignored: resolved",
                _ => "ignored: unknown status",
            };
            if !acts {
                debug!(guard = %guard.config.name, alertname, status, severity, group_key = %payload.group_key, "alert recorded, no action");
            }
            let seen = AlertSeen {
                at: now,
                alertname: alertname.clone(),
                status: status.to_owned(),
                severity: severity.map(str::to_owned),
                fingerprint: alert.fingerprint.clone(),
                outcome,
            };
            if !acts {
                // Nothing for the decision core: recorded for /v1/guards once the payload is taken.
                records.push((guard, seen));
                continue;
            }
            let input = Box::new(Input::Alert {
                alert: Alert {
                    alertname: alertname.clone(),
                    // Present: only a listed severity acts.
                    severity: severity.unwrap_or_default().to_owned(),
                    version: alert.labels.get(&guard.config.version_label).cloned(),
                    starts_at: alert.starts_at,
                },
                seen,
            });
            deliveries.push((guard, input));
        }
    }
    let mut permits = Vec::with_capacity(deliveries.len());
    let mut taken = Vec::with_capacity(deliveries.len());
    for (guard, input) in deliveries {
        // Dropping the permits taken so far, on return, gives their room back.
        match guard.inbox.try_reserve() {
            Ok(permit) => {
                permits.push(permit);
                taken.push(input);
            }
            // Stopped since the set was read (its Service went away): nothing left to act on.
            Err(TrySendError::Closed(())) => {}
            Err(TrySendError::Full(())) => {
                return Err(QueueFull {
                    guard: guard.config.name.clone(),
                });
            }
        }
    }
    let routed = taken.len();
    for (permit, input) in permits.into_iter().zip(taken) {
        permit.send(input);
    }
    for (guard, seen) in records {
        guard.alerts.record(seen);
    }
    Ok(routed)
}
