//! The watchdog's own metrics, on an explicit registry built once.
//!
//! Label values come only from config names and closed sets, never from error strings or
//! request data, so cardinality is bounded by the config file.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::GuardConfig;
use crate::error::Result;
use crate::promql::QueryError;
use crate::reload::SecretKind;

pub mod family;

use family::Family;

const PREFIX: &str = "cutover_watchdog";

/// Every metric the watchdog exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub window_active: Family<family::IntGauge>,
    pub cutovers_total: Family<family::Counter>,
    pub rollbacks_total: Family<family::Counter>,
    pub rollback_blocked_total: Family<family::Counter>,
    pub rollback_failures_total: Family<family::Counter>,
    pub dry_run_rollbacks_total: Family<family::Counter>,
    pub check_value: Family<family::Gauge>,
    pub check_threshold: Family<family::Gauge>,
    pub check_breached: Family<family::IntGauge>,
    pub check_no_data_total: Family<family::Counter>,
    pub prometheus_query_duration_seconds: Histogram,
    pub prometheus_query_errors_total: IntCounterVec,
    pub rollback_duration_seconds: Histogram,
    pub poll_duration_seconds: Histogram,
    pub kube_write_errors_total: IntCounter,
    pub webhook_requests_total: IntCounterVec,
    /// A follower's webhook forwards to the leader, by [`crate::forward::Outcome`].
    pub webhook_forwarded_total: IntCounterVec,
    /// Notifications by receiver and [`crate::notify::Delivery`].
    pub notifications_total: IntCounterVec,
    pub alerts_received_total: IntCounterVec,
    pub leader: IntGauge,
    pub service_relists_total: Family<family::Counter>,
    /// Times blue's Ready Pods fell below `min_ready_previous` during a window.
    pub previous_scaled_down_total: Family<family::Counter>,
    /// 1 while a window is open, by its versions: the record `replay --since` finds past
    /// cutovers in.
    pub window_info: Family<family::IntGauge>,
    /// The open window's cutover (Unix seconds), by its versions: when `replay --since` starts
    /// each window it finds in `window_info`.
    pub window_start_time_seconds: Family<family::Gauge>,
    /// Times the selector was set back on a rolled-back version before its window's end.
    pub rollback_overridden_total: Family<family::Counter>,
    /// A version's share of green plus blue traffic, while a `traffic` check watches.
    pub traffic_share: Family<family::Gauge>,
    pub traffic_check_failures_total: Family<family::Counter>,
    pub secret_reload_errors_total: IntCounterVec,
    /// 1 if the last read of the config file was put in force, 0 if it was refused.
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_success_timestamp_seconds: prometheus::Gauge,
    /// Guards running, by where they come from (`config`, `template`).
    pub guards: IntGaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

impl Metrics {
    /// Builds and registers every metric.
    #[allow(clippy::too_many_lines)] // one flat list of definitions reads best as one list
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        let m = Self {
            window_active: family(
                r,
                "window_active",
                "1 while a post-cutover window is open.",
                &["guard"],
            )?,
            cutovers_total: family(r, "cutovers_total", "Cutovers detected.", &["guard"])?,
            rollbacks_total: family(
                r,
                "rollbacks_total",
                "Selector reverts that landed (the API accepted the patch, or a patch whose \
                 answer was lost was seen landed), by guard and trigger (a check's name, or \
                 alert).",
                &["guard", "trigger"],
            )?,
            rollback_blocked_total: family(
                r,
                "rollback_blocked_total",
                "Rollback episodes refused because the target had too few Ready pods.",
                &["guard"],
            )?,
            rollback_failures_total: family(
                r,
                "rollback_failures_total",
                "Rollbacks the Kubernetes API failed or refused.",
                &["guard"],
            )?,
            dry_run_rollbacks_total: family(
                r,
                "dry_run_rollbacks_total",
                "Rollbacks a dry-run guard would have made.",
                &["guard", "trigger"],
            )?,
            check_value: family(
                r,
                "check_value",
                "A check's last value.",
                &["guard", "check"],
            )?,
            check_threshold: family(
                r,
                "check_threshold",
                "A check's configured threshold.",
                &["guard", "check"],
            )?,
            check_breached: family(
                r,
                "check_breached",
                "1 while a check's last poll was breached.",
                &["guard", "check"],
            )?,
            check_no_data_total: family(
                r,
                "check_no_data_total",
                "Polls where a check's query returned no data or NaN.",
                &["guard", "check"],
            )?,
            prometheus_query_duration_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "prometheus_query_duration_seconds",
                        "Time for one request to Prometheus: a batch of checks, or one.",
                    )
                    .namespace(PREFIX)
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                )?,
            )?,
            prometheus_query_errors_total: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "prometheus_query_errors_total",
                        "Requests to Prometheus that failed; never counted as a breach.",
                    ),
                    &["reason"],
                )?,
            )?,
            rollback_duration_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "rollback_duration_seconds",
                        "Time from the rollback decision to the confirmed selector patch.",
                    )
                    .namespace(PREFIX)
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                )?,
            )?,
            poll_duration_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "poll_duration_seconds",
                        "Time for one poll round: every open window's checks.",
                    )
                    .namespace(PREFIX)
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                )?,
            )?,
            kube_write_errors_total: reg(
                r,
                IntCounter::with_opts(opts(
                    "kube_write_errors_total",
                    "Annotation or event writes that failed (rollback failures are counted apart).",
                ))?,
            )?,
            webhook_requests_total: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "webhook_requests_total",
                        "Alertmanager webhook requests by HTTP status code.",
                    ),
                    &["code"],
                )?,
            )?,
            webhook_forwarded_total: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "webhook_forwarded_total",
                        "Webhook requests a follower forwarded to the leader, by result: ok (the \
                         leader answered 2xx), leader_error (it answered otherwise, or could not be \
                         reached), timeout (no answer within leader_election.forward_timeout), \
                         no_leader (none known, or it published no address).",
                    ),
                    &["result"],
                )?,
            )?,
            notifications_total: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "notifications_total",
                        "Notifications by receiver and result: sent, failed (after retries), \
                         dropped (the receiver's queue was full).",
                    ),
                    &["receiver", "result"],
                )?,
            )?,
            alerts_received_total: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "alerts_received_total",
                        "Alerts received on the webhook, by alert status.",
                    ),
                    &["status"],
                )?,
            )?,
            leader: reg(
                r,
                IntGauge::with_opts(opts(
                    "leader",
                    "1 while this replica may write: it holds the leader lease, or election is off.",
                ))?,
            )?,
            window_info: family(
                r,
                "window_info",
                "1 while a post-cutover window is open, by guard and versions (dry runs too): \
                 the record of past cutovers that `replay --since` reads.",
                &["guard", "version", "previous_version"],
            )?,
            window_start_time_seconds: family(
                r,
                "window_start_time_seconds",
                "The open post-cutover window's cutover time, in Unix seconds, by guard and \
                 versions (dry runs too): where `replay --since` starts each window.",
                &["guard", "version", "previous_version"],
            )?,
            rollback_overridden_total: family(
                r,
                "rollback_overridden_total",
                "Times the selector was set back on a version the watchdog had rolled back, \
                 before that window's end (a GitOps sync undoing the revert, most often); the \
                 Warning Event RollbackOverridden names who.",
                &["guard"],
            )?,
            traffic_share: family(
                r,
                "traffic_share",
                "A version's share of green plus blue requests, at the last poll of a guard's \
                 traffic check.",
                &["guard", "version"],
            )?,
            traffic_check_failures_total: family(
                r,
                "traffic_check_failures_total",
                "Traffic checks that failed, by kind: not_switched (green's share short of \
                 min_share within `within`), not_restored (blue's, after a rollback), \
                 volume_dropped (green's rate below blue's before the switch by more than \
                 volume_drop).",
                &["guard", "kind"],
            )?,
            previous_scaled_down_total: family(
                r,
                "previous_scaled_down_total",
                "Times the rollback target's Ready pods fell below min_ready_previous during a \
                 window (blue scaled down before green was proven).",
                &["guard"],
            )?,
            service_relists_total: family(
                r,
                "service_relists_total",
                "Times a guard's Service watch listed again from scratch (after 410 Gone).",
                &["guard"],
            )?,
            secret_reload_errors_total: reg(
                r,
                IntCounterVec::new(
                    opts(
                        "secret_reload_errors_total",
                        "Rotated secret files that could not be used; the previous secret stays.",
                    ),
                    &["file"],
                )?,
            )?,
            config_last_reload_successful: reg(
                r,
                IntGauge::with_opts(opts(
                    "config_last_reload_successful",
                    "Whether the last read of the config file was put in force (1) or refused (0).",
                ))?,
            )?,
            config_last_reload_success_timestamp_seconds: reg(
                r,
                prometheus::Gauge::with_opts(opts(
                    "config_last_reload_success_timestamp_seconds",
                    "When the config in force was read (Unix time).",
                ))?,
            )?,
            guards: reg(
                r,
                IntGaugeVec::new(
                    opts("guards", "Guards running, by source: config or template."),
                    &["source"],
                )?,
            )?,
            registry,
        };
        m.config_last_reload_successful.set(1);
        m.config_last_reload_success_timestamp_seconds
            .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
        for source in ["config", "template"] {
            m.guards.with_label_values(&[source]);
        }
        // Closed label sets start at zero, for the same reason as `init_guard`.
        for reason in QueryError::ALL {
            m.prometheus_query_errors_total
                .with_label_values(&[reason.as_label()]);
        }
        for status in ["firing", "resolved"] {
            m.alerts_received_total.with_label_values(&[status]);
        }
        for code in ["200", "400", "401", "413", "415", "429", "503"] {
            m.webhook_requests_total.with_label_values(&[code]);
        }
        for result in crate::forward::Outcome::ALL {
            m.webhook_forwarded_total
                .with_label_values(&[result.as_label()]);
        }
        for file in SecretKind::ALL {
            m.secret_reload_errors_total
                .with_label_values(&[file.as_label()]);
        }
        Ok(m)
    }

    /// The counters with only a `guard` label.
    fn guard_counters(&self) -> [&Family<family::Counter>; 6] {
        [
            &self.cutovers_total,
            &self.rollback_blocked_total,
            &self.rollback_failures_total,
            &self.service_relists_total,
            &self.previous_scaled_down_total,
            &self.rollback_overridden_total,
        ]
    }

    /// Creates every series a guard can have at zero, so dashboards show it from the start and
    /// `increase()` in alert rules sees the first event (an absent series has nothing to increase
    /// from). Also exports each check's threshold.
    pub fn init_guard(&self, guard: &GuardConfig) {
        let g = guard.name.as_str();
        self.window_active.with_label_values(&[g]).set(0);
        for counter in self.guard_counters() {
            counter.with_label_values(&[g]);
        }
        let triggers = guard
            .checks
            .iter()
            .map(|c| c.name.as_str())
            .chain(["alert"]);
        for trigger in triggers {
            self.rollbacks_total.with_label_values(&[g, trigger]);
            self.dry_run_rollbacks_total
                .with_label_values(&[g, trigger]);
        }
        if guard.traffic.is_some() {
            for kind in crate::decision::TrafficKind::ALL {
                self.traffic_check_failures_total
                    .with_label_values(&[g, kind.as_label()]);
            }
            self.rollbacks_total.with_label_values(&[g, "traffic"]);
        }
        for check in &guard.checks {
            let labels = [g, check.name.as_str()];
            self.check_threshold
                .with_label_values(&labels)
                .set(check.threshold.value());
            self.check_breached.with_label_values(&labels).set(0);
            self.check_no_data_total.with_label_values(&labels);
        }
    }

    /// Deletes every series of a guard that is gone, so that memory does not grow with churn.
    pub fn remove_guard(&self, guard: &GuardConfig) {
        let g = guard.name.as_str();
        for family in self.guard_counters() {
            let _ = family.remove_label_values(&[g]);
        }
        let _ = self.window_active.remove_label_values(&[g]);
        self.traffic_share.remove_first(g);
        self.window_info.remove_first(g);
        self.window_start_time_seconds.remove_first(g);
        self.traffic_check_failures_total.remove_first(g);
        let _ = self.rollbacks_total.remove_label_values(&[g, "traffic"]);
        for trigger in guard
            .checks
            .iter()
            .map(|c| c.name.as_str())
            .chain(["alert"])
        {
            let _ = self.rollbacks_total.remove_label_values(&[g, trigger]);
            let _ = self
                .dry_run_rollbacks_total
                .remove_label_values(&[g, trigger]);
        }
        for check in &guard.checks {
            self.remove_check(g, &check.name);
        }
    }

    /// Moves a guard's check series from `old` to `new`: the series of checks `new` lacks are
    /// deleted, and those of checks it adds start at zero.
    pub fn retire_checks(&self, old: &GuardConfig, new: &GuardConfig) {
        let g = new.name.as_str();
        for check in &old.checks {
            if !new.checks.iter().any(|c| c.name == check.name) {
                self.remove_check(g, &check.name);
                let _ = self.rollbacks_total.remove_label_values(&[g, &check.name]);
                let _ = self
                    .dry_run_rollbacks_total
                    .remove_label_values(&[g, &check.name]);
            }
        }
        self.init_guard(new);
    }

    fn remove_check(&self, guard: &str, check: &str) {
        let labels = [guard, check];
        let _ = self.check_threshold.remove_label_values(&labels);
        let _ = self.check_breached.remove_label_values(&labels);
        let _ = self.check_value.remove_label_values(&labels);
        let _ = self.check_no_data_total.remove_label_values(&labels);
    }

    /// The text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families, which `new` guarantees.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A per-guard family, registered.
fn family<V: family::Value>(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<Family<V>> {
    reg(
        registry,
        Family::new(&format!("{PREFIX}_{name}"), help, labels)?,
    )
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> Result<C> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exported_with_the_prefix() {
        let m = Metrics::new().unwrap();
        m.window_active.with_label_values(&["g"]).set(1);
        m.cutovers_total.with_label_values(&["g"]).inc();
        m.rollbacks_total
            .with_label_values(&["g", "error_rate"])
            .inc();
        m.rollback_blocked_total.with_label_values(&["g"]).inc();
        m.dry_run_rollbacks_total
            .with_label_values(&["g", "alert"])
            .inc();
        m.check_value.with_label_values(&["g", "c"]).set(0.5);
        m.check_breached.with_label_values(&["g", "c"]).set(1);
        m.check_no_data_total.with_label_values(&["g", "c"]).inc();
        m.prometheus_query_errors_total
            .with_label_values(&["timeout"])
            .inc();
        m.prometheus_query_duration_seconds.observe(0.1);
        m.rollback_duration_seconds.observe(0.1);
        let text = m.render();
        for name in [
            "window_active{guard=\"g\"} 1",
            "cutovers_total{guard=\"g\"} 1",
            "rollbacks_total{guard=\"g\",trigger=\"error_rate\"} 1",
            "rollback_blocked_total{guard=\"g\"} 1",
            "dry_run_rollbacks_total{guard=\"g\",trigger=\"alert\"} 1",
            "check_value{check=\"c\",guard=\"g\"} 0.5",
            "check_breached{check=\"c\",guard=\"g\"} 1",
            "check_no_data_total{check=\"c\",guard=\"g\"} 1",
            "prometheus_query_duration_seconds_count 1",
            "prometheus_query_errors_total{reason=\"timeout\"} 1",
            "rollback_duration_seconds_count 1",
            "secret_reload_errors_total{file=\"token\"} 0",
            "secret_reload_errors_total{file=\"password\"} 0",
            "secret_reload_errors_total{file=\"tls\"} 0",
        ] {
            assert!(
                text.contains(&format!("cutover_watchdog_{name}")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn the_rollbacks_counter_says_it_counts_selector_reverts_that_landed() {
        let m = Metrics::new().unwrap();
        m.rollbacks_total.with_label_values(&["g", "alert"]).inc();
        let text = m.render();
        let help = text
            .lines()
            .find_map(|l| l.strip_prefix("# HELP cutover_watchdog_rollbacks_total "))
            .unwrap_or_else(|| panic!("no HELP line:\n{text}"));
        assert_eq!(
            help,
            "Selector reverts that landed (the API accepted the patch, or a patch whose answer \
             was lost was seen landed), by guard and trigger (a check's name, or alert)."
        );
    }
}
