//! The poller: every `poll_interval`, every open window's checks, in few requests.
//!
//! One task polls for all guards. Each round it renders every open window's checks and sends
//! them to Prometheus in batches (see [`crate::promql::batch_query`]), so the number of requests
//! grows with guards × checks / batch size rather than guards × checks. A batch Prometheus
//! rejects (a scalar query, a typo) is retried query by query, so one guard's bad query never
//! blinds another; a batch that fails for any other reason (a timeout, a 5xx, a broken
//! connection, a body no Prometheus sends) fails all its queries at once, since asking once per
//! query would only multiply the load on a Prometheus already in trouble. It decides nothing: it
//! hands samples (and, for status, why a query failed) to the tasks of the guards with an open
//! window, and keeps a one-line account of how Prometheus is answering for `/readyz`. Those polls
//! are also what ends a window: the decision core closes one that a poll finds past its end.
//! `http` checks are not Prometheus's: their synthetic transactions ([`crate::probe`]) run
//! beside the round's queries, and their samples go with the rest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{CheckConfig, Config, Probe};
use crate::decision::{Rates, Sample, Signal};
use crate::fleet::Registry;
use crate::guard::{GuardHandle, Input, Polling};
use crate::metrics::Metrics;
use crate::probe::{self, Prober};
use crate::promql::{BatchFailure, Prometheus, QueryError, QueryFailure, QueryResult};
use crate::reload::Reloader;

/// Queries per request. Prometheus evaluates a batch's queries one after another, so this
/// bounds one request's latency as well as its size.
pub const BATCH: usize = 50;

/// Polls every guard's open window each `interval`.
pub struct Poller {
    /// The guards running now; each round polls the set as it is then.
    pub guards: Registry,
    pub prometheus: Prometheus,
    /// Runs the `http` checks' synthetic transactions.
    pub prober: Prober,
    /// Counts the rollback target's Ready Pods each round; `None`: they are not counted.
    pub pods: Option<kube::Client>,
    pub metrics: Metrics,
    pub interval: Duration,
    /// Notified when a window opens, to poll at once rather than up to an interval later.
    pub wake: Arc<Notify>,
    /// Shared with `/readyz`.
    pub health: Arc<PrometheusHealth>,
    /// The config in force: a reload's `poll_interval` and `prometheus.*` apply from the next
    /// round. `None`: they never change.
    pub configs: Option<watch::Receiver<Arc<Config>>>,
}

/// How Prometheus answered the latest poll rounds, for `/readyz`. Only rounds with queries
/// count: with no open window nothing is asked, and nothing is known.
#[derive(Debug, Default)]
pub struct PrometheusHealth(Mutex<Health>);

#[derive(Debug, Default)]
struct Health {
    /// The end of the last round in which every query was answered.
    last_ok: Option<Timestamp>,
    /// The first of the current run of rounds with a failed query.
    failing_since: Option<Timestamp>,
    failed_rounds: u64,
    last_error: String,
    /// `prometheus.tls.insecure_skip_verify` is on.
    insecure: bool,
}

impl PrometheusHealth {
    /// Records one round: `error` is one of its failed queries' reasons, if any failed.
    pub fn record(&self, at: Timestamp, error: Option<String>) {
        let mut h = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match error {
            None => {
                h.last_ok = Some(at);
                h.failing_since = None;
                h.failed_rounds = 0;
            }
            Some(error) => {
                h.failing_since.get_or_insert(at);
                h.failed_rounds += 1;
                h.last_error = error;
            }
        }
    }

    /// One line: answering, failing since when and why, or not asked yet.
    /// Says in [`PrometheusHealth::describe`] that any certificate is accepted, or no longer.
    pub fn set_insecure(&self, insecure: bool) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insecure = insecure;
    }

    #[must_use]
    pub fn describe(&self) -> String {
        let h = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = match (h.failing_since, h.last_ok) {
            (Some(since), _) => format!(
                "prometheus queries failing since {since} ({} poll rounds in a row; never a breach): {}",
                h.failed_rounds, h.last_error
            ),
            (None, Some(ok)) => format!("prometheus answering: last poll round answered at {ok}"),
            (None, None) => "prometheus not queried yet: no window open".into(),
        };
        if h.insecure {
            format!(
                "{state}\nwarning: prometheus.tls.insecure_skip_verify is on: any certificate is accepted"
            )
        } else {
            state
        }
    }
}

impl Poller {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        let mut configs = self.configs.take();
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Poll times come from the schedule, so breaches are timed in whole intervals whatever
        // the query latency.
        let origin = (Instant::now(), Timestamp::now());
        let mut rotation = self.rotate(&shutdown);
        loop {
            let scheduled = tokio::select! {
                () = shutdown.cancelled() => return,
                tick = ticker.tick() => tick,
                () = self.wake.notified() => {
                    ticker.reset();
                    Instant::now()
                }
                changed = next_config(&mut configs) => {
                    if let Some(config) = changed
                        && self.reconfigure(&config, &mut ticker)
                    {
                        rotation.cancel();
                        rotation = self.rotate(&shutdown);
                    }
                    continue;
                }
            };
            let at = origin.1 + scheduled.saturating_duration_since(origin.0);
            self.round(at).await;
        }
    }

    /// Re-reads the Prometheus client's secret files every `prometheus.reload_interval`,
    /// until the returned token (a child of `shutdown`) is cancelled.
    fn rotate(&self, shutdown: &CancellationToken) -> CancellationToken {
        self.health
            .set_insecure(self.prometheus.settings().tls.insecure_skip_verify);
        let stop = shutdown.child_token();
        let reloader = Reloader {
            targets: self.prometheus.rotation(),
            metrics: self.metrics.clone(),
            interval: self.prometheus.settings().reload_interval,
        };
        tokio::spawn(reloader.run(stop.clone()));
        stop
    }

    /// Puts a reloaded `poll_interval` and `prometheus.*` in force; the client (and its open
    /// connections) is replaced only when `prometheus.*` changed. True if it was.
    fn reconfigure(&mut self, config: &Config, ticker: &mut tokio::time::Interval) -> bool {
        let mut replaced = false;
        if *self.prometheus.settings() != config.prometheus {
            match Prometheus::new(&config.prometheus) {
                Ok(p) => {
                    self.prometheus = p;
                    replaced = true;
                }
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), "cannot use the reloaded prometheus settings; keeping the previous ones");
                }
            }
        }
        if config.poll_interval != self.interval {
            self.interval = config.poll_interval;
            *ticker = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        replaced
    }

    /// One round: every open window's checks, then their samples to those windows' guards.
    async fn round(&self, at: Timestamp) {
        let started = std::time::Instant::now();
        let set = self.guards.borrow().clone();
        let windows: Vec<(&GuardHandle, Polling)> = set
            .guards
            .iter()
            .filter_map(|g| Some((g, g.polling.borrow().clone()?)))
            .collect();
        let counts = futures::future::join_all(windows.iter().map(|(g, w)| self.ready(g, w)));
        let ((results, notes, asked_prometheus), ready) = tokio::join!(self.ask(&windows), counts);
        let mut ready = ready.into_iter();
        // A query never sent is the Service's doing, not Prometheus's: it does not count here.
        let error = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .find(|f| f.kind != QueryError::Unbound)
            .map(ToString::to_string);
        if asked_prometheus {
            self.health.record(Timestamp::now(), error);
        }
        let mut results = results.into_iter().zip(notes);
        // Only guards with an open window were polled; the others have nothing to end.
        for (guard, w) in windows {
            let traffic = guard.config.traffic.is_some().then(|| {
                let mut rate = || results.next().and_then(|(r, _)| r.ok()).and_then(total);
                Rates {
                    green: rate(),
                    blue: rate(),
                }
            });
            let polled: Vec<_> = results.by_ref().take(w.checks.len()).collect();
            let previous_ready = ready.next().flatten();
            // Stopped, or given other checks, while its queries were out: its series for these
            // checks are gone, and must stay gone.
            let current = guard.polling.borrow().as_ref().map(|p| p.checks.clone());
            if guard.is_retired() || !current.is_some_and(|c| Arc::ptr_eq(&c, &w.checks)) {
                continue;
            }
            let name = guard.config.name.as_str();
            let (samples, errors) = w
                .checks
                .iter()
                .zip(polled)
                .map(|(check, (result, note))| {
                    let error = result.as_ref().err().map(ToString::to_string).or(note);
                    (self.sample(name, check, result), error)
                })
                .unzip();
            let signal = Signal::Polled {
                samples,
                version: w.version,
                at,
                previous_ready,
                traffic,
            };
            let input = Box::new(Input::Polled {
                signal,
                errors,
                checks: w.checks,
            });
            // Never wait on one guard: a poll it misses only delays its next sample.
            match guard.inbox.try_send(input) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    warn!(guard = name, "guard is busy; skipped one poll");
                }
                Err(TrySendError::Closed(_)) => debug!(guard = name, "guard stopped; poll dropped"),
            }
        }
        self.metrics
            .poll_duration_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Every open window's checks, in order: each one's result, and for an `http` check that
    /// failed, why. True if Prometheus was asked anything.
    async fn ask(
        &self,
        windows: &[(&GuardHandle, Polling)],
    ) -> (Vec<QueryResult<Vec<f64>>>, Vec<Option<String>>, bool) {
        // A query that cannot be rendered (a placeholder its Service lacks) is never sent: its
        // failure stands in for its answer. HTTP probes run beside the queries.
        let mut asked = Vec::new();
        let mut queries = Vec::new();
        let mut transactions = Vec::new();
        for (guard, w) in windows {
            // With a traffic check, green's and blue's request rates follow the checks.
            let rates = guard.config.traffic.as_ref().map(|t| {
                [(&w.version, &w.previous), (&w.previous, &w.previous)]
                    .map(|(version, previous)| t.query.render(version, previous))
            });
            for rate in rates.into_iter().flatten() {
                match rate {
                    Ok(q) => {
                        asked.push(Asked::Query);
                        queries.push(q);
                    }
                    Err(unbound) => asked.push(Asked::Unsent(QueryFailure {
                        kind: QueryError::Unbound,
                        message: unbound.to_string(),
                    })),
                }
            }
            for check in w.checks.iter() {
                match &check.probe {
                    Probe::Query(query) => match query.render(&w.version, &w.previous) {
                        Ok(q) => {
                            asked.push(Asked::Query);
                            queries.push(q);
                        }
                        Err(unbound) => asked.push(Asked::Unsent(QueryFailure {
                            kind: QueryError::Unbound,
                            message: unbound.to_string(),
                        })),
                    },
                    Probe::Http(http) => {
                        asked.push(Asked::Http);
                        transactions.push(self.prober.run(http, &w.version, &w.previous));
                    }
                }
            }
        }
        let (answers, outcomes) = tokio::join!(
            self.evaluate(&queries),
            futures::future::join_all(transactions)
        );
        let mut answers = answers.into_iter();
        let mut outcomes = outcomes.into_iter();
        let mut notes = Vec::new();
        let results: Vec<QueryResult<Vec<f64>>> = asked
            .into_iter()
            .map(|a| match a {
                Asked::Unsent(failure) => {
                    notes.push(None);
                    Err(failure)
                }
                Asked::Query => {
                    notes.push(None);
                    answers.next().unwrap_or_else(|| Err(missing()))
                }
                Asked::Http => {
                    let outcome = outcomes.next().unwrap_or(probe::Outcome {
                        value: 1.0,
                        seen: "not run".into(),
                    });
                    notes.push((outcome.value > 0.0).then(|| format!("probe: {}", outcome.seen)));
                    Ok(vec![outcome.value])
                }
            })
            .collect();
        (results, notes, !queries.is_empty())
    }

    /// The rollback target's Ready Pods for window `w` (blue kept); `None` when they cannot be
    /// counted, which says nothing about them.
    async fn ready(&self, guard: &GuardHandle, w: &Polling) -> Option<u32> {
        let (client, labels) = (self.pods.as_ref()?, w.previous_pods.as_ref()?);
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &guard.config.namespace);
        let params = kube::api::ListParams::default().labels(labels);
        match tokio::time::timeout(self.interval, pods.list(&params)).await {
            Ok(Ok(list)) => {
                let ready = list
                    .items
                    .iter()
                    .filter(|p| crate::service::is_ready(p))
                    .count();
                Some(u32::try_from(ready).unwrap_or(u32::MAX))
            }
            Ok(Err(e)) => {
                debug!(guard = %guard.config.name, error = %crate::error::chain(&e), "could not count the rollback target's pods");
                None
            }
            Err(_) => None,
        }
    }

    /// Every query's result, in order, batched.
    async fn evaluate(&self, queries: &[String]) -> Vec<QueryResult<Vec<f64>>> {
        let batches = queries.chunks(BATCH).map(|chunk| self.batch(chunk));
        futures::future::join_all(batches)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn batch(&self, chunk: &[String]) -> Vec<QueryResult<Vec<f64>>> {
        if let [only] = chunk {
            return vec![self.single(only).await];
        }
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let (result, took) = self.prometheus.batch(&refs).await;
        self.metrics
            .prometheus_query_duration_seconds
            .observe(took.as_secs_f64());
        match result {
            Ok(values) => values.into_iter().map(Ok).collect(),
            // Prometheus refused the batch: some query in it cannot be batched or is wrong.
            // Alone, each gets its own answer and its own error.
            Err(BatchFailure::Refused(_)) => {
                futures::future::join_all(chunk.iter().map(|q| self.single(q))).await
            }
            // Prometheus is failing, not this batch: one failed request, counted once.
            Err(BatchFailure::Failed(failure)) => {
                self.count_error(&failure);
                vec![Err(failure); chunk.len()]
            }
        }
    }

    async fn single(&self, query: &str) -> QueryResult<Vec<f64>> {
        let (result, took) = self.prometheus.instant(query).await;
        self.metrics
            .prometheus_query_duration_seconds
            .observe(took.as_secs_f64());
        if let Err(failure) = &result {
            self.count_error(failure);
        }
        result
    }

    fn count_error(&self, failure: &QueryFailure) {
        let reason = failure.kind.as_label();
        self.metrics
            .prometheus_query_errors_total
            .with_label_values(&[reason])
            .inc();
        warn!(reason, error = %failure.message, "prometheus query failed; not a breach");
    }

    fn sample(&self, guard: &str, check: &CheckConfig, result: QueryResult<Vec<f64>>) -> Sample {
        let labels = [guard, check.name.as_str()];
        let Ok(values) = result else {
            return Sample::Error;
        };
        if values.len() > 1 {
            warn!(guard, check = %check.name, series = values.len(), "query returned several series; the worst counts");
        }
        let sample = Sample::from_values(&values, check.threshold);
        match sample {
            Sample::Value(v) => self.metrics.check_value.with_label_values(&labels).set(v),
            Sample::NoData => self
                .metrics
                .check_no_data_total
                .with_label_values(&labels)
                .inc(),
            Sample::Error => {}
        }
        sample
    }
}

/// A request rate: the sum of a query's series, NaN left out; `None` with none.
fn total(values: Vec<f64>) -> Option<f64> {
    values
        .into_iter()
        .filter(|v| !v.is_nan())
        .reduce(|a, b| a + b)
}

/// How one check of a round is asked.
enum Asked {
    Query,
    Http,
    /// Never sent: why stands in for its answer.
    Unsent(QueryFailure),
}

/// A batch answer with fewer results than queries: never from a Prometheus that answered.
fn missing() -> QueryFailure {
    QueryFailure {
        kind: QueryError::Body,
        message: "missing batch result".to_owned(),
    }
}

/// The next config put in force, or never when there is none to follow.
async fn next_config(configs: &mut Option<watch::Receiver<Arc<Config>>>) -> Option<Arc<Config>> {
    let Some(rx) = configs else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *configs = None;
        return None;
    }
    Some(rx.borrow_and_update().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use url::Url;

    use crate::config::GuardConfig;
    use crate::guard::Polling;

    #[test]
    fn readiness_text_warns_while_any_certificate_is_accepted() {
        let health = PrometheusHealth::default();
        assert!(!health.describe().contains("insecure_skip_verify"));
        health.set_insecure(true);
        assert!(
            health.describe().ends_with(
                "warning: prometheus.tls.insecure_skip_verify is on: any certificate is accepted"
            ),
            "{}",
            health.describe()
        );
    }

    fn guard(name: &str, window: Option<Polling>) -> (GuardHandle, mpsc::Receiver<Box<Input>>) {
        let (inbox, received) = mpsc::channel(4);
        let config = crate::config::Config::from_yaml(&format!(
            "prometheus: {{url: 'http://127.0.0.1:9090'}}\nguards:\n- {{name: {name}, service: svc}}\n"
        ))
        .unwrap();
        let g: Arc<GuardConfig> = Arc::new(config.guards[0].clone());
        let handle = GuardHandle {
            polling: watch::channel(window).1,
            ..GuardHandle::detached(g, inbox)
        };
        (handle, received)
    }

    #[tokio::test]
    async fn a_round_signals_only_the_guards_with_an_open_window() {
        let (closed, mut closed_inbox) = guard("closed", None);
        let window = Polling {
            version: "v2".into(),
            previous: "v1".into(),
            checks: Arc::new([]),
            previous_pods: None,
        };
        let (open, mut open_inbox) = guard("open", Some(window));
        // Nothing listens here; with no checks, the round asks Prometheus nothing.
        let url = Url::parse("http://127.0.0.1:9").unwrap();
        let poller = Poller {
            guards: crate::fleet::fixed(vec![closed, open]),
            prometheus: Prometheus::plain(&url, Duration::from_secs(1)).unwrap(),
            prober: Prober::new().unwrap(),
            pods: None,
            metrics: Metrics::new().unwrap(),
            interval: Duration::from_secs(1),
            wake: Arc::default(),
            health: Arc::default(),
            configs: None,
        };
        poller.round(Timestamp::now()).await;
        let got = closed_inbox.try_recv();
        assert!(got.is_err(), "a guard with no open window was sent {got:?}");
        // The open window's poll is what closes it once its time is up.
        let got = open_inbox.try_recv().map(|input| *input);
        assert!(
            matches!(&got, Ok(Input::Polled { signal: Signal::Polled { version, .. }, .. }) if version == "v2"),
            "{got:?}"
        );
    }
}
