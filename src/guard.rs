//! The per-guard task: run the decision core on what comes in.
//!
//! Each guard has one task that owns its [`decision::Guard`]; the fleet (which watches the
//! Services), the poller, the webhook and the executor only send it inputs. It forwards decisions to the executor and
//! publishes a status snapshot for `/v1/guards` and the metrics. It never writes to Kubernetes
//! itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::time::Instant;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::Resource;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{CheckConfig, GuardConfig, Probe};
use crate::coverage::Source;
use crate::decision::{self, Decision, Sample, Signal};
use crate::executor::{Command, Target, Writers};
use crate::metrics::Metrics;
use crate::service::{self, ServiceHandle};

/// How many inputs may wait for a guard before senders wait.
pub const INBOX: usize = 1024;
/// Executor replies waiting for the guard: one per rollback, so very few.
const REPLIES: usize = 4;

/// Where a guard's task reads the time: the wall clock in production; in tests, tokio's clock
/// anchored once, so that paused time drives windows, `for` and stabilization.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    /// The system's wall clock.
    #[must_use]
    pub fn wall() -> Self {
        Self(Arc::new(Timestamp::now))
    }

    /// The wall time now, advanced by tokio's clock from here on (paused in tests).
    #[must_use]
    pub fn tokio() -> Self {
        let (instant, timestamp) = (Instant::now(), Timestamp::now());
        Self(Arc::new(move || timestamp + instant.elapsed()))
    }

    #[must_use]
    pub fn now(&self) -> Timestamp {
        (self.0)()
    }
}

/// An input to a guard's task. Its inbox carries them boxed: a channel allocates a block of 32
/// slots up front, and thousands of idle guards should not each hold 32 of these.
#[derive(Debug)]
pub enum Input {
    /// The Service as the watch saw it.
    Service(Arc<Service>),
    Signal(Signal),
    /// A poll of the guard's checks ([`Signal::Polled`]), with why each check's query failed,
    /// if it did, in check order. The core needs only the samples; the reasons are for status.
    /// `checks` are the ones polled: a poll of checks since replaced is dropped.
    Polled {
        signal: Signal,
        errors: Vec<Option<String>>,
        checks: Arc<[CheckConfig]>,
    },
    /// A firing Alertmanager alert that matched this guard and may act.
    Alert {
        alert: decision::Alert,
        seen: AlertSeen,
    },
}

/// A guard's config and where it comes from, as the fleet binds them. A new one (a reload,
/// its Service's labels, another template) applies from the next poll, and the open window
/// keeps its clock.
#[derive(Debug, Clone)]
pub struct Bound {
    pub config: Arc<GuardConfig>,
    pub source: Source,
}

/// The last alerts seen for a guard, for `/v1/guards`. The webhook records alerts that cannot
/// act here directly, so only the ones that may act travel through the guard's inbox.
#[derive(Debug, Default)]
pub struct AlertLog(std::sync::Mutex<VecDeque<AlertSeen>>);

impl AlertLog {
    /// How many alerts are kept.
    pub const KEPT: usize = 10;

    pub fn record(&self, seen: AlertSeen) {
        // A panic while holding this lock cannot leave the deque inconsistent.
        let mut log = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.len() == Self::KEPT {
            log.pop_front();
        }
        log.push_back(seen);
    }

    #[must_use]
    pub fn snapshot(&self) -> Vec<AlertSeen> {
        let log = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.iter().cloned().collect()
    }
}

/// The window the poller should query, and the checks to query, published by the guard task.
#[derive(Debug, Clone)]
pub struct Polling {
    pub version: String,
    pub previous: String,
    pub checks: Arc<[CheckConfig]>,
    /// The label selector of the rollback target's Pods, whose Ready ones the poller counts
    /// (blue kept); `None` before the Service's selector is known.
    pub previous_pods: Option<String>,
}

impl PartialEq for Polling {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.previous == other.previous
            && Arc::ptr_eq(&self.checks, &other.checks)
            && self.previous_pods == other.previous_pods
    }
}

/// A snapshot of one guard for `GET /v1/guards`.
#[derive(Debug, Clone, Serialize)]
pub struct GuardStatus {
    pub name: String,
    pub namespace: String,
    pub service: String,
    /// Where the guard comes from: `config`, or `template:<name>`.
    pub source: Source,
    pub dry_run: bool,
    /// The watch is established.
    pub ready: bool,
    /// The selector's version as last seen.
    pub selector_version: Option<String>,
    /// The current or last window's state: watching, stable, rolled-back, superseded, expired.
    pub state: Option<decision::Phase>,
    pub window: Option<WindowStatus>,
    pub checks: Vec<CheckStatus>,
    pub last_decision: Option<DecisionStatus>,
    /// Filled in from the guard's [`AlertLog`] when served.
    pub last_alerts: Vec<AlertSeen>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowStatus {
    pub version: String,
    pub rollback_target: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub open: bool,
    /// The window's rollback: `idle`, `in_flight`, `unknown` (sent, unanswered, not yet seen
    /// landed or not), `blocked` or `done`.
    pub rollback: &'static str,
    /// With a `traffic` check: green's share, blue's rate before the switch, green's rate, and
    /// what was decided of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<decision::TrafficTrack>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckStatus {
    pub name: String,
    pub threshold: String,
    pub for_seconds: f64,
    pub last: Option<Sample>,
    /// Why the last poll's query failed (`<reason>: <message>`), while `last` is an error; for
    /// an `http` check, why its last probe failed (`probe: HTTP 500, expected 200`).
    pub error: Option<String>,
    pub breached: bool,
    pub breach_since: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecisionStatus {
    pub at: Timestamp,
    pub kind: &'static str,
    pub reason: String,
}

/// An alert the webhook delivered to this guard, kept for status.
#[derive(Debug, Clone, Serialize)]
pub struct AlertSeen {
    pub at: Timestamp,
    pub alertname: String,
    pub status: String,
    pub severity: Option<String>,
    pub fingerprint: Option<String>,
    /// What the watchdog did with it.
    pub outcome: &'static str,
}

/// What the HTTP side and the poller hold of a guard.
#[derive(Clone)]
pub struct GuardHandle {
    pub config: Arc<GuardConfig>,
    pub inbox: mpsc::Sender<Box<Input>>,
    pub status: watch::Receiver<GuardStatus>,
    /// The open window, for the poller, which sends its samples to `inbox`.
    pub polling: watch::Receiver<Option<Polling>>,
    pub ready: Arc<AtomicBool>,
    pub alerts: Arc<AlertLog>,
    /// Set when the guard is stopped for good, before its metric series are deleted: from
    /// then on nothing writes them again.
    pub retired: Arc<AtomicBool>,
}

impl GuardHandle {
    /// A handle with no task behind it: for tools and tests that drive a guard's inbox
    /// themselves. Not ready, no window to poll.
    #[must_use]
    pub fn detached(config: Arc<GuardConfig>, inbox: mpsc::Sender<Box<Input>>) -> Self {
        Self {
            status: watch::channel(initial_status(&config, Source::Config)).1,
            config,
            inbox,
            polling: watch::channel(None).1,
            ready: Arc::default(),
            alerts: Arc::default(),
            retired: Arc::default(),
        }
    }

    /// Whether the guard has been stopped for good.
    #[must_use]
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }
}

/// What a guard's task remembers besides the core's state, for Events and status.
#[derive(Default)]
struct Memory {
    /// The Service as last seen, for Events.
    reference: Option<ObjectReference>,
    selector_version: Option<String>,
    /// The versions `traffic_share` has series for.
    traffic_versions: Option<(String, String)>,
    /// The Service's selector as last seen, for counting the rollback target's Pods.
    /// Shared with the fleet's cache, not copied: a guard is kept for every Service in scope.
    service: Option<Arc<Service>>,
    last_decision: Option<DecisionStatus>,
    /// Why each check's query failed at the last poll of the open window, in check order.
    poll_errors: Vec<Option<String>>,
}

/// The task that owns one guard's decision state.
pub struct GuardTask {
    config: Arc<GuardConfig>,
    /// `config.checks`, shared with the poller through [`Polling`].
    checks: Arc<[CheckConfig]>,
    /// The config in force, for the guard's executor lane.
    lane_config: watch::Sender<Arc<GuardConfig>>,
    /// The fleet's binding of the guard: a change reconfigures it.
    bound: watch::Receiver<Bound>,
    /// The Service as the fleet's watch last saw it: only the newest counts, and the fleet
    /// never waits on a busy guard to hand it over.
    observed: watch::Receiver<Option<Arc<Service>>>,
    /// Set by the fleet when a re-list hands over the Service: a change in it may be late.
    relisted: Arc<AtomicBool>,
    core: decision::Guard,
    service: ServiceHandle,
    inbox: mpsc::Receiver<Box<Input>>,
    writers: Writers,
    /// The executor lane, once the first command opened it.
    lane: Option<Lane>,
    /// Executor replies, once the lane is open.
    replies: Option<mpsc::Receiver<Signal>>,
    status: watch::Sender<GuardStatus>,
    polling: watch::Sender<Option<Polling>>,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    alerts: Arc<AlertLog>,
    retired: Arc<AtomicBool>,
    /// Wakes the poller when a window opens.
    wake: Arc<tokio::sync::Notify>,
    clock: Clock,
}

/// What the rest of the watchdog holds of a guard built by [`GuardTask::new`].
pub struct Ends {
    /// For the fleet, the webhook, the poller and `/v1/guards`.
    pub handle: GuardHandle,
    /// Where the fleet rebinds the guard.
    pub bind: watch::Sender<Bound>,
    /// Where the fleet hands over its Service as watched.
    pub observe: watch::Sender<Option<Arc<Service>>>,
    /// Set before a Service handed over by a re-list.
    pub relisted: Arc<AtomicBool>,
}

impl GuardTask {
    /// A guard's task and its channels: the task to run, and the ends the webhook, the poller
    /// and the executor hold. `writers.lane` starts the guard's executor lane at its first
    /// command. `wake` is notified when a window opens, for the poller.
    #[must_use]
    pub fn new(
        config: Arc<GuardConfig>,
        source: Source,
        service: ServiceHandle,
        writers: Writers,
        metrics: Metrics,
        wake: Arc<tokio::sync::Notify>,
        clock: Clock,
    ) -> (Self, Ends) {
        metrics.init_guard(&config);
        let (inbox_tx, inbox) = mpsc::channel(INBOX);
        let (status, status_rx) = watch::channel(initial_status(&config, source.clone()));
        let (polling, polling_rx) = watch::channel(None);
        let lane_config = watch::Sender::new(config.clone());
        let (bind, bound) = watch::channel(Bound {
            config: config.clone(),
            source,
        });
        let (observe, observed) = watch::channel(None);
        let relisted = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let alerts = Arc::new(AlertLog::default());
        let retired = Arc::new(AtomicBool::new(false));
        let ends = Ends {
            handle: GuardHandle {
                config: config.clone(),
                inbox: inbox_tx,
                status: status_rx,
                polling: polling_rx,
                ready: ready.clone(),
                alerts: alerts.clone(),
                retired: retired.clone(),
            },
            bind,
            observe,
            relisted: relisted.clone(),
        };
        let task = Self {
            core: decision::Guard::new(decision::Policy::from(config.as_ref())),
            checks: config.checks.clone().into(),
            lane_config,
            bound,
            observed,
            relisted,
            config,
            service,
            inbox,
            writers,
            lane: None,
            replies: None,
            status,
            polling,
            metrics,
            ready,
            alerts,
            retired,
            wake,
            clock,
        };
        (task, ends)
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut memory = Memory::default();
        loop {
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(reply) = reply(self.replies.as_mut()) => Input::Signal(reply),
                Ok(()) = self.bound.changed() => {
                    let bound = self.bound.borrow_and_update().clone();
                    self.reconfigure(bound, &mut memory);
                    self.publish(&mut memory);
                    continue;
                }
                Ok(()) = self.observed.changed() => {
                    let Some(svc) = self.observed.borrow_and_update().clone() else {
                        continue;
                    };
                    Input::Service(svc)
                }
                input = self.inbox.recv() => match input {
                    Some(input) => *input,
                    None => break,
                },
            };
            let now = self.clock.now();
            let decisions = match input {
                Input::Signal(signal) => self.core.handle(signal, now),
                Input::Polled { checks, .. } if !Arc::ptr_eq(&checks, &self.checks) => {
                    debug!(guard = %self.config.name, "dropped a poll of checks since reconfigured");
                    continue;
                }
                Input::Polled { signal, errors, .. } => {
                    // A poll for a window that is gone changes nothing, its errors included.
                    if let Signal::Polled { version, .. } = &signal
                        && self
                            .core
                            .open_window()
                            .is_some_and(|w| w.version == *version)
                    {
                        memory.poll_errors = errors;
                    }
                    self.core.handle(signal, now)
                }
                Input::Service(svc) => self.observe(svc, &mut memory, now),
                Input::Alert { alert, seen } => self.alert(alert, seen, now),
            };
            if !Box::pin(self.execute(decisions, &mut memory, now)).await {
                return;
            }
            self.publish(&mut memory);
        }
    }

    fn observe(
        &mut self,
        shared: Arc<Service>,
        memory: &mut Memory,
        now: Timestamp,
    ) -> Vec<Decision> {
        let svc = shared.as_ref();
        memory.reference = Some(svc.object_ref(&()));
        let version = self.service.version_of(svc);
        if version.is_none() {
            warn!(guard = %self.config.name, label = %self.config.version_label, "service selector has no version key; nothing to guard");
        }
        memory.selector_version.clone_from(&version);
        if memory.service.is_none()
            && let Some(applier) = crate::gitops::applier(svc)
        {
            warn!(guard = %self.config.name, tool = applier.tool, "{}", crate::gitops::warning(&applier));
        }
        let signal = Signal::Observed {
            version,
            persisted: service::persisted(svc),
            resource_version: svc.metadata.resource_version.clone(),
            baseline: service::baseline(svc),
            changed_at: service::selector_changed_at(svc, &self.config.version_label),
            relisted: self.relisted.swap(false, Ordering::SeqCst),
            changed_by: service::selector_changed_by(svc, &self.config.version_label),
        };
        memory.service = Some(shared);
        self.core.handle(signal, now)
    }

    /// Puts `config` in force. A check that is unchanged (same name, query, threshold, `for`
    /// and no-data policy) keeps its progress in the open window; any other starts afresh.
    fn reconfigure(&mut self, Bound { config, source }: Bound, memory: &mut Memory) {
        let keep: Vec<Option<usize>> = config
            .checks
            .iter()
            .map(|c| self.config.checks.iter().position(|old| old == c))
            .collect();
        memory.poll_errors = keep
            .iter()
            .map(|k| k.and_then(|i| memory.poll_errors.get(i).cloned().flatten()))
            .collect();
        if !self.retired.load(Ordering::SeqCst) {
            self.metrics.retire_checks(&self.config, &config);
        }
        self.core
            .reconfigure(decision::Policy::from(config.as_ref()), &keep);
        self.checks = config.checks.clone().into();
        self.lane_config.send_replace(config.clone());
        self.status.send_modify(|s| s.source = source);
        info!(guard = %config.name, checks = config.checks.len(), "guard reconfigured");
        self.config = config;
    }

    fn alert(
        &mut self,
        alert: decision::Alert,
        mut seen: AlertSeen,
        now: Timestamp,
    ) -> Vec<Decision> {
        let decisions = self.core.handle(Signal::Alert(alert), now);
        seen.outcome = match decisions.first() {
            Some(Decision::RollBack { .. }) => "rollback",
            Some(Decision::WouldRollBack { .. }) => "would-roll-back",
            _ if self.core.open_window().is_none() => "ignored: no open window",
            _ => "ignored: not about the green version, predates the cutover, or already acted",
        };
        debug!(guard = %self.config.name, alertname = %seen.alertname, outcome = seen.outcome, "alert received");
        self.alerts.record(seen);
        decisions
    }

    /// Hands decisions to the executor; false once the executor is gone (shutdown).
    async fn execute(
        &mut self,
        decisions: Vec<Decision>,
        memory: &mut Memory,
        now: Timestamp,
    ) -> bool {
        let config = self.config.clone();
        let guard = config.name.as_str();
        for d in decisions {
            // Bookkeeping, not a decision on a window: the shared writer records it.
            if let Decision::Baseline {
                version,
                resource_version,
            } = d
            {
                self.writers
                    .baselines
                    .send(guard, &self.service, version, resource_version);
                continue;
            }
            memory.last_decision = Some(describe(&d, now));
            if let Decision::Resumed(state) = &d {
                info!(guard, version = %state.version, target = %state.previous, state = state.phase.as_str(), "resumed window from annotations");
                continue;
            }
            let Some(reference) = memory.reference.clone() else {
                continue;
            };
            let lane = self.lane();
            let command = Command {
                decision: d,
                reference,
                decided_at: Instant::now(),
                reply: lane.reply.clone(),
            };
            if lane.commands.send(command).await.is_err() {
                debug!(guard, "executor gone; shutting down");
                return false;
            }
        }
        true
    }

    fn lane(&mut self) -> &Lane {
        self.lane.get_or_insert_with(|| {
            let (reply, replies) = mpsc::channel(REPLIES);
            self.replies = Some(replies);
            let target = Target::live(self.lane_config.subscribe(), self.service.clone());
            Lane {
                commands: (self.writers.lane)(target),
                reply,
            }
        })
    }

    /// The window's series: whether one is open, its versions, and its traffic shares.
    fn publish_window_metrics(&self, memory: &mut Memory) {
        let guard = self.config.name.as_str();
        let window = self.core.window();
        let open = self.core.open_window();
        self.metrics
            .window_active
            .with_label_values(&[guard])
            .set(i64::from(open.is_some()));
        let (info, start) = (
            &self.metrics.window_info,
            &self.metrics.window_start_time_seconds,
        );
        if let Some(w) = open {
            let labels = [guard, w.version.as_str(), w.previous.as_str()];
            if info.with_label_values(&labels).get() == 0 {
                // One series per guard: the previous window's goes.
                info.remove_first(guard);
                start.remove_first(guard);
                info.with_label_values(&labels).set(1);
            }
            #[allow(clippy::cast_precision_loss)] // Unix milliseconds, exact in an f64
            let opened = w.opened_at.as_millisecond() as f64 / 1000.0;
            start.with_label_values(&labels).set(opened);
        } else {
            info.remove_first(guard);
            start.remove_first(guard);
        }
        if let Some(w) = window
            && let Some(share) = w.traffic.share
        {
            let shares = &self.metrics.traffic_share;
            if memory.traffic_versions.as_ref() != Some(&(w.version.clone(), w.previous.clone())) {
                shares.remove_first(guard);
                memory.traffic_versions = Some((w.version.clone(), w.previous.clone()));
            }
            shares.with_label_values(&[guard, &w.version]).set(share);
            shares
                .with_label_values(&[guard, &w.previous])
                .set(1.0 - share);
        }
    }

    fn publish(&self, memory: &mut Memory) {
        // A stopped guard's series are deleted; writing one now would bring it back for good.
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        let guard = self.config.name.as_str();
        let window = self.core.window();
        let open = self.core.open_window();
        self.publish_window_metrics(memory);
        let polling = self.core.polled_window().map(|w| Polling {
            version: w.version.clone(),
            previous: w.previous.clone(),
            checks: self.checks.clone(),
            previous_pods: memory.service.as_deref().map(|svc| {
                let mut selector = service::selector(svc);
                selector.insert(self.config.version_label.clone(), w.previous.clone());
                selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        });
        let opened = polling.is_some();
        let changed = self.polling.send_if_modified(|p| {
            let changed = *p != polling;
            p.clone_from(&polling);
            changed
        });
        if changed && opened {
            self.wake.notify_one();
        }
        let checks = self
            .core
            .policy()
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // Status shows the last window's checks, open or not; the metric only an open one.
                let track = window
                    .and_then(|w| w.checks.get(i))
                    .cloned()
                    .unwrap_or_default();
                let breached_now = open.is_some() && track.breached;
                self.metrics
                    .check_breached
                    .with_label_values(&[guard, &c.name])
                    .set(i64::from(breached_now));
                let http = matches!(self.checks.get(i).map(|c| &c.probe), Some(Probe::Http(_)));
                let error = match (track.last, http) {
                    (Some(Sample::Error), _) | (Some(_), true) => {
                        memory.poll_errors.get(i).cloned().flatten()
                    }
                    _ => None,
                };
                CheckStatus {
                    name: c.name.clone(),
                    threshold: c.threshold.to_string(),
                    for_seconds: c.for_.as_secs_f64(),
                    last: track.last,
                    error,
                    breached: track.breached,
                    breach_since: track.breach_since,
                }
            })
            .collect();
        let ready = self.ready.load(Ordering::Relaxed);
        self.status.send_modify(|s| {
            s.ready = ready;
            s.dry_run = self.config.dry_run;
            s.selector_version.clone_from(&memory.selector_version);
            s.state = window.map(|w| w.phase);
            s.window = window.map(|w| WindowStatus {
                version: w.version.clone(),
                rollback_target: w.previous.clone(),
                start: w.opened_at,
                end: w.ends_at,
                open: w.open,
                rollback: w.rollback_state(),
                traffic: self.config.traffic.is_some().then(|| w.traffic.clone()),
            });
            s.checks = checks;
            s.last_decision.clone_from(&memory.last_decision);
        });
    }
}

/// A guard's open executor lane.
struct Lane {
    commands: mpsc::Sender<Command>,
    /// Where the lane replies: the guard's `replies`.
    reply: mpsc::Sender<Signal>,
}

/// The next executor reply; none ever before the lane opens.
async fn reply(replies: Option<&mut mpsc::Receiver<Signal>>) -> Option<Signal> {
    match replies {
        Some(replies) => replies.recv().await,
        None => std::future::pending().await,
    }
}

fn describe(d: &Decision, at: Timestamp) -> DecisionStatus {
    let (kind, reason) = match d {
        Decision::Opened(s) => ("cutover-detected", s.reason.clone()),
        Decision::Resumed(s) => ("resumed", s.reason.clone()),
        Decision::Stable(s) => ("stable", s.reason.clone()),
        Decision::Expired(s) => ("expired", s.reason.clone()),
        Decision::Missed(s) => ("missed", s.reason.clone()),
        Decision::RollbackOverridden { state, by } => (
            "rollback-overridden",
            format!(
                "selector set back to {} by {} after the rollback; not reverting again",
                state.version,
                by.as_deref().unwrap_or("an unknown field manager")
            ),
        ),
        Decision::TrafficFailed { kind, detail, .. } => (kind.event_reason(), detail.clone()),
        Decision::PreviousScaledDown { state, ready, min } => (
            "previous-scaled-down",
            format!(
                "{} has {ready} Ready pods, below min_ready_previous {min}",
                state.previous
            ),
        ),
        Decision::Baseline { version, .. } => {
            ("baseline", format!("{version} recorded as serving"))
        }
        Decision::Superseded { state, .. } => ("superseded", state.reason.clone()),
        Decision::RollBack { trigger, .. } => ("rollback", trigger.describe()),
        Decision::WouldRollBack { trigger, .. } => ("would-roll-back", trigger.describe()),
        Decision::Landed { trigger, .. } => ("rollback-landed", trigger.describe()),
        Decision::Lost { trigger, .. } => ("rollback-lost", trigger.describe()),
    };
    DecisionStatus { at, kind, reason }
}

/// The initial status of a guard, before anything is known.
#[must_use]
pub fn initial_status(g: &GuardConfig, source: Source) -> GuardStatus {
    GuardStatus {
        name: g.name.clone(),
        namespace: g.namespace.clone(),
        service: g.service.clone(),
        source,
        dry_run: g.dry_run,
        ready: false,
        selector_version: None,
        state: None,
        window: None,
        checks: Vec::new(),
        last_decision: None,
        last_alerts: Vec::new(),
    }
}
