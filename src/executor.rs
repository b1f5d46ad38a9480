//! The one component that writes to Kubernetes.
//!
//! Every Service patch, annotation and Event goes through an [`Executor`]. It runs one lane per
//! guard: a guard's commands are carried out one at a time, in order, so two triggers (a check
//! and an alert) can never race two patches on one Service; lanes run side by side, so a slow
//! API answer for one Service holds up no other. A lane starts at its guard's first command
//! ([`Lanes`]): most guards never act, and an idle lane would cost more memory than its guard.
//! Baseline records, which every Service without a window record gets once, go instead to one
//! shared writer ([`Baselines`]), a few at a time.
//! It does not decide *whether* to act (that is [`crate::decision`]); it decides *how*,
//! safely: the selector must still name the green version, the target must have Ready pods, the
//! patch carries a `resourceVersion` precondition, and no write starts unless the [`Fence`]
//! allows it (this replica leads). On shutdown a lane finishes the command in hand and takes no
//! new one.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::{mpsc, watch};
// Tokio's clock, the same in production, lets fast tests run the budget in paused time.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::GuardConfig;
use crate::decision::{Decision, Outcome, Persisted, Signal, TrafficKind, Trigger};
use crate::error::{Error, Result, chain};
use crate::leader::Fence;
use crate::metrics::Metrics;
use crate::notify::{Notice, Notifier};
use crate::service::{self, PatchError, ServiceHandle};

/// A stale `resourceVersion` is re-read and retried this many times before giving up.
const CONFLICT_RETRIES: usize = 5;
/// Backoff between retries of a transient API error: doubling from the first to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Commands waiting in a guard's lane: a handful per window at most.
const LANE_QUEUE: usize = 16;

/// One decision to carry out for one guard.
pub struct Command {
    pub decision: Decision,
    /// The Service the decision was made on, for Events.
    pub reference: ObjectReference,
    pub decided_at: Instant,
    /// Where the rollback outcome goes: the guard's inbox.
    pub reply: mpsc::Sender<Signal>,
}

/// What the executor needs to know of each guard.
pub struct Target {
    guard: String,
    service: ServiceHandle,
    /// The guard's config in force: `dry_run` and `min_ready_previous` reload live.
    config: watch::Receiver<Arc<GuardConfig>>,
}

impl Target {
    /// A target whose config never changes.
    #[must_use]
    pub fn new(guard: &GuardConfig, service: ServiceHandle) -> Self {
        Self::live(watch::channel(Arc::new(guard.clone())).1, service)
    }

    /// A target that follows the guard's config in force.
    #[must_use]
    pub fn live(config: watch::Receiver<Arc<GuardConfig>>, service: ServiceHandle) -> Self {
        let guard = config.borrow().name.clone();
        Self {
            guard,
            service,
            config,
        }
    }

    fn min_ready_previous(&self) -> u32 {
        self.config.borrow().min_ready_previous
    }

    fn dry_run(&self) -> bool {
        self.config.borrow().dry_run
    }
}

/// What an Event is about: the Service it is published on, the window, and what triggered
/// and how long the revert took, where those apply; for the Event and its notification.
struct About<'a> {
    r: &'a ObjectReference,
    target: &'a Target,
    state: &'a Persisted,
    trigger: Option<&'a Trigger>,
    took: Option<Duration>,
}

impl<'a> About<'a> {
    fn window(r: &'a ObjectReference, target: &'a Target, state: &'a Persisted) -> Self {
        Self {
            r,
            target,
            state,
            trigger: None,
            took: None,
        }
    }

    fn triggered(self, trigger: &'a Trigger) -> Self {
        Self {
            trigger: Some(trigger),
            ..self
        }
    }
}

/// Owns every Kubernetes write; shared by the lanes.
pub struct Executor {
    recorder: Recorder,
    metrics: Metrics,
    /// Budget for one command's API calls, retries included.
    kube_timeout: Duration,
    /// Whether this replica may write at all.
    fence: Fence,
    /// Tells the receivers in `notifications[]` of each Event published.
    notifier: Notifier,
}

enum RollbackResult {
    /// `confirmed`: a re-read after the patch shows the target; `None` if it could not be read.
    RolledBack {
        confirmed: Option<bool>,
    },
    /// A patch was sent against `resource_version` and no answer came, nor a read since that
    /// shows whether it landed; `cause` says why there was no answer.
    Unknown {
        resource_version: String,
        cause: String,
    },
    Blocked {
        ready: u32,
    },
    NotApplicable {
        selector: Option<String>,
    },
}

/// Opens a guard's lane for a target and returns its queue; called at the guard's first command.
pub type OpenLane = Box<dyn Fn(Target) -> mpsc::Sender<Command> + Send + Sync>;

/// A guard's ways to the executor: its own lane, opened at its first command, and the
/// baseline writer it shares with every guard.
pub struct Writers {
    pub lane: OpenLane,
    pub baselines: Baselines,
}

/// Where the lanes run, each started by its guard at its first command.
#[derive(Clone)]
pub struct Lanes {
    executor: Arc<Executor>,
    tracker: TaskTracker,
    /// Ends the lanes still writing at the shutdown deadline.
    abort: CancellationToken,
}

impl Lanes {
    #[must_use]
    pub fn new(executor: Arc<Executor>) -> Self {
        Self {
            executor,
            tracker: TaskTracker::new(),
            abort: CancellationToken::new(),
        }
    }

    /// The opener of one guard's lane, which carries out its commands until `stop`, finishing
    /// the one in hand.
    #[must_use]
    pub fn opener(&self, stop: CancellationToken) -> OpenLane {
        let lanes = self.clone();
        Box::new(move |target| {
            let (queue, commands) = mpsc::channel(LANE_QUEUE);
            let lane = lanes
                .executor
                .clone()
                .run_lane(target, commands, stop.clone());
            let abort = lanes.abort.clone();
            lanes.tracker.spawn(async move {
                tokio::select! {
                    () = lane => {}
                    () = abort.cancelled() => {}
                }
            });
            queue
        })
    }

    /// Waits up to `grace` for every lane to finish (their `stop` cancelled), then ends the
    /// rest, mid-write if need be. True if every lane finished in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        let drained = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !drained {
            self.abort.cancel();
            self.tracker.wait().await;
        }
        drained
    }
}

/// How many baseline records are written at once: enough to stamp a large fleet in seconds at
/// its first start, few enough not to burst against the API server (or the watchdog's heap).
const BASELINE_WRITES: usize = 2;

/// One Service's baseline record, as a guard asks for it.
pub struct BaselineWrite {
    guard: String,
    service: ServiceHandle,
    version: String,
    resource_version: Option<String>,
}

impl BaselineWrite {
    /// The version to record, and the `resourceVersion` the Service must still be at.
    #[must_use]
    pub fn version(&self) -> (&str, Option<&str>) {
        (&self.version, self.resource_version.as_deref())
    }
}

/// Where guards send baseline records ([`Decision::Baseline`]). One task writes them all, a few
/// at a time: a fleet's first start would otherwise open a lane per Service and send as many
/// writes at once. Unbounded, because a guard never waits on it and sends at most one per sight
/// of its Service; a record lost at shutdown is asked for again at the next start.
#[derive(Clone)]
pub struct Baselines(mpsc::UnboundedSender<BaselineWrite>);

impl Baselines {
    /// A queue and its receiving end: what [`Lanes::baselines`] writes from, or a test reads.
    #[must_use]
    pub fn queue() -> (Self, mpsc::UnboundedReceiver<BaselineWrite>) {
        let (queue, writes) = mpsc::unbounded_channel();
        (Self(queue), writes)
    }

    /// Asks for `version` to be recorded as the baseline of `service`, if it is still at
    /// `resource_version`.
    pub fn send(
        &self,
        guard: &str,
        service: &ServiceHandle,
        version: String,
        resource_version: Option<String>,
    ) {
        // The writer is gone only at shutdown; the next start asks again.
        let _ = self.0.send(BaselineWrite {
            guard: guard.to_owned(),
            service: service.clone(),
            version,
            resource_version,
        });
    }
}

impl Lanes {
    /// Starts the baseline writer, which stops at `stop` after the writes in hand.
    #[must_use]
    pub fn baselines(&self, stop: CancellationToken) -> Baselines {
        let (queue, writes) = Baselines::queue();
        let executor = self.executor.clone();
        let abort = self.abort.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = executor.write_baselines(writes, stop) => {}
                () = abort.cancelled() => {}
            }
        });
        queue
    }
}

impl Executor {
    /// Writes baseline records as they come, [`BASELINE_WRITES`] at a time, until `stop`.
    async fn write_baselines(
        self: Arc<Self>,
        writes: mpsc::UnboundedReceiver<BaselineWrite>,
        stop: CancellationToken,
    ) {
        use futures::StreamExt as _;
        let writes = futures::stream::unfold(writes, |mut writes| async move {
            writes.recv().await.map(|w| (w, writes))
        })
        .take_until(stop.cancelled_owned());
        writes
            .for_each_concurrent(BASELINE_WRITES, |w| {
                let executor = self.clone();
                async move { executor.write_baseline(w).await }
            })
            .await;
    }

    async fn write_baseline(&self, w: BaselineWrite) {
        let Some(left) = self.fence.remaining() else {
            return;
        };
        let write = w
            .service
            .annotate_baseline(w.resource_version.as_deref(), &w.version);
        match tokio::time::timeout(self.kube_timeout.min(left), write).await {
            Ok(Ok(())) => {
                debug!(guard = %w.guard, version = %w.version, "recorded the baseline version");
            }
            // The Service changed since the guard saw it; its next sight decides again.
            Ok(Err(PatchError::Conflict)) => {
                debug!(guard = %w.guard, "service changed before its baseline was recorded");
            }
            Ok(Err(PatchError::Other(e))) => {
                self.metrics.kube_write_errors_total.inc();
                warn!(guard = %w.guard, error = %chain(&e), "failed to record the baseline version on the service");
            }
            Err(_) => {
                self.metrics.kube_write_errors_total.inc();
                warn!(guard = %w.guard, "timed out recording the baseline version on the service");
            }
        }
    }

    /// The writer for every lane: Events through `recorder`, each command's calls within
    /// `kube_timeout`, and no write unless `fence` allows it.
    #[must_use]
    pub fn new(recorder: Recorder, metrics: Metrics, kube_timeout: Duration, fence: Fence) -> Self {
        Self {
            recorder,
            metrics,
            kube_timeout,
            fence,
            notifier: Notifier::default(),
        }
    }

    /// The executor, telling `notifier` of each Event it publishes.
    #[must_use]
    pub fn with_notifier(self, notifier: Notifier) -> Self {
        Self { notifier, ..self }
    }

    /// Carries out one guard's commands in order until `shutdown`, finishing the one in hand.
    pub async fn run_lane(
        self: std::sync::Arc<Self>,
        target: Target,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        loop {
            let command = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(c) => c,
                    None => break,
                },
            };
            // Deliberately not raced against `shutdown`: a patch in flight finishes.
            self.execute(&target, command).await;
        }
        debug!(guard = %target.guard, "executor lane stopped");
    }

    async fn execute(&self, target: &Target, command: Command) {
        let guard = target.guard.as_str();
        let r = &command.reference;
        match &command.decision {
            Decision::Opened(state) => {
                self.metrics
                    .cutovers_total
                    .with_label_values(&[guard])
                    .inc();
                info!(guard, from = %state.previous, to = %state.version, "cutover detected; window opened");
                let note = format!(
                    "selector {}: {}; watching, rollback target {}",
                    target.service.version_label, state.reason, state.previous
                );
                let event = (EventType::Normal, "CutoverDetected", note);
                self.recorded(target, r, state, event).await;
            }
            // A baseline goes to the guards' shared writer, never down a lane.
            Decision::Resumed(_) | Decision::Baseline { .. } => {}
            Decision::Missed(state) => self.missed(target, r, state).await,
            Decision::TrafficFailed {
                state,
                kind,
                detail,
            } => self.traffic_failed(target, r, state, (*kind, detail)).await,
            Decision::RollbackOverridden { state, by } => {
                self.overridden(target, r, state, by.as_deref()).await;
            }
            Decision::PreviousScaledDown { state, ready, min } => {
                self.previous_scaled_down(target, r, state, (*ready, *min))
                    .await;
            }
            Decision::Stable(state) => {
                info!(guard, version = %state.version, "Deployment {} now serving production traffic", state.version);
                let note = format!(
                    "Deployment {} now serving production traffic",
                    state.version
                );
                let event = (EventType::Normal, "CutoverStable", note);
                self.recorded(target, r, state, event).await;
            }
            Decision::Expired(state) => {
                warn!(guard, version = %state.version, "window ended before the cutover was declared stable");
                let note = format!(
                    "window for {} ended before it was declared stable; checks kept breaching",
                    state.version
                );
                let event = (EventType::Warning, "WindowExpired", note);
                self.recorded(target, r, state, event).await;
            }
            Decision::Superseded { state, by } => {
                info!(guard, version = %state.version, by = %by, "selector changed by someone else; window closed, nothing patched");
                let note = format!(
                    "selector changed from {} to {by} by someone else; window closed",
                    state.version
                );
                let event = (EventType::Normal, "WindowSuperseded", note);
                self.recorded(target, r, state, event).await;
            }
            Decision::WouldRollBack { state, trigger } => {
                self.would_roll_back(target, r, state, trigger).await;
            }
            Decision::Landed {
                state,
                trigger,
                decided_at,
                seen_at,
            } => {
                let took =
                    Duration::try_from(seen_at.duration_since(*decided_at)).unwrap_or_default();
                info!(guard, "the rollback whose answer was lost has landed");
                self.rolled_back(target, r, state, trigger, took).await;
            }
            Decision::Lost { state, trigger } => {
                let cause = format!(
                    "the patch got no answer, and the service has since changed with the selector \
                     still on {}: it did not land, and its precondition keeps it from landing now",
                    state.version
                );
                self.rollback_failed(target, r, state, trigger, &cause)
                    .await;
            }
            Decision::RollBack {
                state,
                trigger,
                announce,
            } => {
                let outcome = self
                    .roll_back(target, &command, state, trigger, *announce)
                    .await;
                let reply = Signal::Executed {
                    version: state.version.clone(),
                    outcome,
                };
                // The guard may be shutting down; then nobody needs the answer.
                let _ = command.reply.send(reply).await;
            }
        }
    }

    async fn overridden(
        &self,
        target: &Target,
        r: &ObjectReference,
        state: &Persisted,
        by: Option<&str>,
    ) {
        let guard = target.guard.as_str();
        self.metrics
            .rollback_overridden_total
            .with_label_values(&[guard])
            .inc();
        let by = by.unwrap_or("an unknown field manager");
        warn!(guard, version = %state.version, by, "the rollback was overridden: the selector is back on the rolled-back version; not reverting again");
        let note = format!(
            "selector set back to {} by {by} after the rollback to {}, before the window's end: \
             not reverting again. A GitOps sync? Exclude spec.selector from it (README, GitOps), \
             or re-cut deliberately with `cutover-watchdog cutover`",
            state.version, state.previous
        );
        // On the record, so that a restart neither warns again nor takes green for a new cutover.
        let event = (EventType::Warning, "RollbackOverridden", note);
        self.recorded(target, r, state, event).await;
    }

    async fn would_roll_back(
        &self,
        target: &Target,
        r: &ObjectReference,
        state: &Persisted,
        trigger: &Trigger,
    ) {
        let guard = target.guard.as_str();
        self.metrics
            .dry_run_rollbacks_total
            .with_label_values(&[guard, trigger.label()])
            .inc();
        warn!(guard, from = %state.version, to = %state.previous, trigger = trigger.label(), reason = %trigger.describe(), "dry run: would roll back");
        let note = format!(
            "dry run: would revert selector to {}: {}",
            state.previous,
            trigger.describe()
        );
        let about = About::window(r, target, state).triggered(trigger);
        self.event(&about, EventType::Normal, "WouldRollBack", "Rollback", note)
            .await;
    }

    async fn traffic_failed(
        &self,
        target: &Target,
        r: &ObjectReference,
        state: &Persisted,
        (kind, detail): (TrafficKind, &str),
    ) {
        let guard = target.guard.as_str();
        self.metrics
            .traffic_check_failures_total
            .with_label_values(&[guard, kind.as_label()])
            .inc();
        warn!(guard, version = %state.version, kind = kind.as_label(), detail, "traffic check failed");
        self.event(
            &About::window(r, target, state),
            EventType::Warning,
            kind.event_reason(),
            "Watch",
            detail.to_owned(),
        )
        .await;
    }

    async fn previous_scaled_down(
        &self,
        target: &Target,
        r: &ObjectReference,
        state: &Persisted,
        (ready, min): (u32, u32),
    ) {
        let guard = target.guard.as_str();
        self.metrics
            .previous_scaled_down_total
            .with_label_values(&[guard])
            .inc();
        warn!(guard, previous = %state.previous, ready, min, "the rollback target is being scaled down during the window");
        let note = format!(
            "{} has {ready} Ready pods, below min_ready_previous {min}, while {} is not yet \
             proven: the rollback target is disappearing (never scale down blue until green is \
             stable)",
            state.previous, state.version
        );
        self.event(
            &About::window(r, target, state),
            EventType::Warning,
            "PreviousVersionScaledDown",
            "Watch",
            note,
        )
        .await;
    }

    async fn missed(&self, target: &Target, r: &ObjectReference, state: &Persisted) {
        warn!(guard = %target.guard, from = %state.previous, to = %state.version, at = %state.cutover_at, "cutover made while no watchdog was watching, longer than the window ago; not watched");
        let note = format!(
            "selector {} changed from {} to {} at {}, while no watchdog was watching, longer \
             than the window ago; recorded missed, not watched",
            target.service.version_label, state.previous, state.version, state.cutover_at
        );
        let event = (EventType::Warning, "CutoverMissed", note);
        self.recorded(target, r, state, event).await;
    }

    async fn roll_back(
        &self,
        target: &Target,
        command: &Command,
        state: &Persisted,
        trigger: &Trigger,
        announce: bool,
    ) -> Outcome {
        let guard = target.guard.as_str();
        let r = &command.reference;
        if announce {
            warn!(guard, from = %state.version, to = %state.previous, trigger = trigger.label(), reason = %trigger.describe(), "rollback triggered");
            let note = format!(
                "reverting selector to {}: {}",
                state.previous,
                trigger.describe()
            );
            let about = About::window(r, target, state).triggered(trigger);
            self.event(
                &about,
                EventType::Warning,
                "RollbackTriggered",
                "Rollback",
                note,
            )
            .await;
        }
        match self.patch_until_done(target, state).await {
            Ok(RollbackResult::RolledBack { confirmed }) => {
                match confirmed {
                    Some(true) => {}
                    Some(false) => warn!(guard, "selector changed again right after the rollback"),
                    None => warn!(
                        guard,
                        "could not re-read the service to confirm the rollback"
                    ),
                }
                let took = command.decided_at.elapsed();
                self.rolled_back(target, r, state, trigger, took).await;
                Outcome::RolledBack
            }
            Ok(RollbackResult::Unknown {
                resource_version,
                cause,
            }) => {
                // Not a failure: the patch may well have landed. Counting it failed would fire
                // CutoverWatchdogRollbackFailed for a revert that happened.
                warn!(guard, from = %state.version, to = %state.previous, trigger = trigger.label(), cause = %cause, "rollback outcome unknown: the patch was sent and no answer came; the next sight of the service decides");
                let note = format!(
                    "patch reverting selector {} to {} sent, no answer ({cause}): it may or may not have landed; the next sight of the service decides",
                    target.service.version_label, state.previous,
                );
                let about = About::window(r, target, state).triggered(trigger);
                self.event(
                    &about,
                    EventType::Warning,
                    "RollbackOutcomeUnknown",
                    "Rollback",
                    note,
                )
                .await;
                Outcome::Unknown { resource_version }
            }
            Ok(RollbackResult::Blocked { ready }) => {
                if announce {
                    self.metrics
                        .rollback_blocked_total
                        .with_label_values(&[guard])
                        .inc();
                    error!(guard, target = %state.previous, ready, required = target.min_ready_previous(), "rollback blocked: target has too few Ready pods; selector unchanged");
                    let note = format!(
                        "not reverting to {}: {ready} Ready pods, {} required; selector unchanged",
                        state.previous,
                        target.min_ready_previous()
                    );
                    let about = About::window(r, target, state).triggered(trigger);
                    self.event(
                        &about,
                        EventType::Warning,
                        "RollbackBlocked",
                        "Rollback",
                        note,
                    )
                    .await;
                } else {
                    debug!(guard, ready, "rollback still blocked");
                }
                Outcome::Blocked
            }
            Ok(RollbackResult::NotApplicable { selector }) => {
                info!(guard, expected = %state.version, found = selector.as_deref().unwrap_or(""), "selector no longer names the window's version; not patching");
                Outcome::NotApplicable
            }
            Err(e @ Error::NotLeader { .. }) => {
                // Not a failure of the rollback: the replica that leads now carries it out. A
                // patch already sent may still land; this replica can record nothing more.
                warn!(guard, error = %chain(&e), "leadership lapsed; leaving the rollback to the new leader (a patch already sent may still land)");
                Outcome::Failed
            }
            Err(e) => {
                self.rollback_failed(target, r, state, trigger, &chain(&e))
                    .await;
                Outcome::Failed
            }
        }
    }

    /// Records a rollback that landed: counted, timed, logged and published.
    async fn rolled_back(
        &self,
        target: &Target,
        r: &ObjectReference,
        state: &Persisted,
        trigger: &Trigger,
        took: Duration,
    ) {
        let guard = target.guard.as_str();
        self.metrics
            .rollbacks_total
            .with_label_values(&[guard, trigger.label()])
            .inc();
        self.metrics
            .rollback_duration_seconds
            .observe(took.as_secs_f64());
        warn!(guard, from = %state.version, to = %state.previous, trigger = trigger.label(), took_ms = took.as_millis(), "reverted selector");
        let note = format!(
            "selector {} reverted from {} to {}: {}",
            target.service.version_label,
            state.version,
            state.previous,
            trigger.describe()
        );
        let about = About {
            took: Some(took),
            ..About::window(r, target, state).triggered(trigger)
        };
        self.event(&about, EventType::Warning, "RolledBack", "Rollback", note)
            .await;
    }

    /// Records a rollback known not to have landed: counted, logged and published.
    async fn rollback_failed(
        &self,
        target: &Target,
        r: &ObjectReference,
        state: &Persisted,
        trigger: &Trigger,
        cause: &str,
    ) {
        let guard = target.guard.as_str();
        self.metrics
            .rollback_failures_total
            .with_label_values(&[guard])
            .inc();
        error!(guard, trigger = trigger.label(), error = %cause, "rollback failed; selector unchanged");
        let note = format!("rollback to {} failed: {cause}", state.previous);
        let about = About::window(r, target, state).triggered(trigger);
        self.event(
            &about,
            EventType::Warning,
            "RollbackFailed",
            "Rollback",
            note,
        )
        .await;
    }

    /// Re-read, check, patch. A stale `resourceVersion` (409) is re-read at once, a few times;
    /// a transient API error (5xx, 429, a broken connection) is retried with backoff while the
    /// `kube_timeout` budget lasts, and reported with its cause once it does not. A patch sent
    /// and not answered leaves the outcome in doubt: later reads and patches go on while the
    /// budget lasts, and if none settles it, the result is [`RollbackResult::Unknown`], never a
    /// failure.
    async fn patch_until_done(&self, target: &Target, state: &Persisted) -> Result<RollbackResult> {
        let deadline = Instant::now() + self.kube_timeout;
        let mut conflicts = 0;
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = None;
        // The resourceVersion an unanswered patch was sent against: while the Service is still
        // at it, that patch may yet land.
        let mut unanswered: Option<String> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = self.attempt(target, state, &mut unanswered);
            let Ok(attempt) = tokio::time::timeout(remaining, attempt).await else {
                let seconds = self.kube_timeout.as_secs();
                if let Some(resource_version) = unanswered {
                    let cause = format!("no answer within kube_timeout ({seconds}s)");
                    return Ok(RollbackResult::Unknown {
                        resource_version,
                        cause,
                    });
                }
                // A call hung past the budget: report the last real error if there was one.
                return Err(last_error.unwrap_or_else(|| Error::KubeTimeout {
                    verb: "roll back service",
                    namespace: target.service.namespace.clone(),
                    name: target.service.name.clone(),
                    seconds,
                }));
            };
            match attempt {
                // A patch answered here is confirmed by a read; one seen landed by a read is.
                Ok(Some(RollbackResult::RolledBack { confirmed: None })) => {
                    return Ok(RollbackResult::RolledBack {
                        confirmed: self.confirm(target, state).await,
                    });
                }
                // Still at the version an unanswered patch was sent against: in doubt.
                Ok(Some(RollbackResult::Blocked { .. })) if unanswered.is_some() => {
                    let resource_version = unanswered.unwrap_or_default();
                    let cause = "a patch sent earlier got no answer, and blue now has too few Ready pods to patch again".into();
                    return Ok(RollbackResult::Unknown {
                        resource_version,
                        cause,
                    });
                }
                Ok(Some(result)) => return Ok(result),
                Ok(None) if conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    info!(guard = %target.guard, conflicts, "service changed since read (409); re-reading");
                }
                // Out of re-reads with an earlier patch unanswered: it may be what kept
                // changing the Service.
                Ok(None) if unanswered.is_some() => {
                    return Ok(RollbackResult::Unknown {
                        resource_version: unanswered.unwrap_or_default(),
                        cause: "a patch got no answer, then the service kept changing (409)".into(),
                    });
                }
                Ok(None) => {
                    return Err(Error::Conflicts {
                        namespace: target.service.namespace.clone(),
                        name: target.service.name.clone(),
                        attempts: conflicts + 1,
                    });
                }
                // The new leader carries the rollback on; nothing here can settle it.
                Err(e @ Error::NotLeader { .. }) => return Err(e),
                Err(e)
                    if (e.is_transient() || unanswered.is_some())
                        && Instant::now() + backoff < deadline =>
                {
                    warn!(guard = %target.guard, error = %chain(&e), retry_in_ms = backoff.as_millis(), "transient API error; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    last_error = Some(e);
                }
                Err(e) => {
                    return match unanswered {
                        Some(resource_version) => Ok(RollbackResult::Unknown {
                            resource_version,
                            cause: chain(&e),
                        }),
                        None => Err(e),
                    };
                }
            }
        }
    }

    /// One read, check and patch; `None` when the patch met a newer `resourceVersion`.
    /// `unanswered` is the `resourceVersion` a patch of this rollback was sent against and
    /// got no answer for: set when a patch goes out, cleared by an answer, or by a read that
    /// settles it (our record: it landed; another `resourceVersion`: it never will).
    async fn attempt(
        &self,
        target: &Target,
        state: &Persisted,
        unanswered: &mut Option<String>,
    ) -> Result<Option<RollbackResult>> {
        let svc = &target.service;
        let current = svc.get().await?;
        let rv = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let version = svc.version_of(&current);
        if version.as_deref() == Some(state.previous.as_str())
            && service::persisted(&current)
                .is_some_and(|p| p.records_rollback_of(&state.version, state.cutover_at))
        {
            // A patch of this very rollback landed, though its answer was lost.
            *unanswered = None;
            return Ok(Some(RollbackResult::RolledBack {
                confirmed: Some(true),
            }));
        }
        if unanswered.as_deref() != Some(rv.as_str()) {
            *unanswered = None;
        }
        if version.as_deref() != Some(state.version.as_str()) {
            return Ok(Some(RollbackResult::NotApplicable { selector: version }));
        }
        let selector = service::selector(&current);
        let ready = svc.ready_pods(&selector, &state.previous).await?;
        if ready < target.min_ready_previous() {
            return Ok(Some(RollbackResult::Blocked { ready }));
        }
        // The fence is checked last, right before the write, and bounds the wait for its answer.
        // A request already sent may still land after that; `fence_margin` is the time allowed
        // for it, before any other replica could act.
        let Some(left) = self.fence.remaining() else {
            return Err(Error::NotLeader {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
            });
        };
        // Until an answer comes, this patch may land. An earlier unanswered one was sent against
        // this same version, so at most one of them can.
        let before = unanswered.replace(rv.clone());
        let patch = tokio::time::timeout(left, svc.patch_selector(&rv, &state.previous, state));
        let Ok(patched) = patch.await else {
            return Err(Error::NotLeader {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
            });
        };
        match patched {
            // Confirmed by the caller, outside the budget: the patch landed whatever comes next.
            Ok(_) => {
                *unanswered = None;
                Ok(Some(RollbackResult::RolledBack { confirmed: None }))
            }
            // Refused, so this one will not land; someone wrote first, maybe an earlier
            // unanswered patch of ours: the next read tells.
            Err(PatchError::Conflict) => {
                *unanswered = before;
                Ok(None)
            }
            Err(PatchError::Other(e)) => {
                if !e.leaves_write_in_doubt() {
                    *unanswered = before; // refused: this one will not land
                }
                Err(e)
            }
        }
    }

    /// Whether the selector names the rollback target after the patch; `None` if the Service
    /// cannot be read within `kube_timeout`.
    async fn confirm(&self, target: &Target, state: &Persisted) -> Option<bool> {
        let svc = &target.service;
        let read = tokio::time::timeout(self.kube_timeout, svc.get()).await;
        let now = read.ok()?.ok()?;
        Some(svc.version_of(&now).as_deref() == Some(state.previous.as_str()))
    }

    /// Records the window's state on the Service, unless the guard is a dry run.
    /// Records the window's state on the Service, then publishes its Event (a Watch action).
    async fn recorded(
        &self,
        target: &Target,
        r: &ObjectReference,
        state: &Persisted,
        (type_, reason, note): (EventType, &str, String),
    ) {
        self.record(target, state).await;
        let about = About::window(r, target, state);
        self.event(&about, type_, reason, "Watch", note).await;
    }

    async fn record(&self, target: &Target, state: &Persisted) {
        if target.dry_run() {
            return;
        }
        let Some(left) = self.fence.remaining() else {
            debug!(guard = %target.guard, "not the leader; not recording window state");
            return;
        };
        let budget = self.kube_timeout.min(left);
        let write = tokio::time::timeout(budget, target.service.annotate(state)).await;
        if let Some(e) = match write {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(chain(&e)),
            Err(_) => Some("timed out".to_owned()),
        } {
            self.metrics.kube_write_errors_total.inc();
            warn!(guard = %target.guard, error = %e, "failed to record window state on the service");
        }
    }

    /// Publishes an Event on the Service, and hands it with its facts to the notifier. Only
    /// the leader does either.
    async fn event(
        &self,
        about: &About<'_>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let Some(left) = self.fence.remaining() else {
            debug!(reason, "not the leader; not publishing event");
            return;
        };
        let (target, state) = (about.target, about.state);
        self.notifier.notify(Notice {
            event: reason.to_owned(),
            warning: type_ == EventType::Warning,
            guard: target.guard.clone(),
            namespace: target.service.namespace.clone(),
            service: target.service.name.clone(),
            version_label: target.service.version_label.clone(),
            green: state.version.clone(),
            blue: state.previous.clone(),
            trigger: about.trigger.cloned(),
            cutover_at: state.cutover_at,
            at: jiff::Timestamp::now(),
            took: about.took,
            note: note.clone(),
        });
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1024)),
            action: action.to_owned(),
            secondary: None,
        };
        let publish = tokio::time::timeout(
            self.kube_timeout.min(left),
            self.recorder.publish(&event, about.r),
        );
        let failed = match publish.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => chain(&e),
            Err(_) => "timed out".to_owned(),
        };
        self.metrics.kube_write_errors_total.inc();
        warn!(reason, error = %failed, "failed to publish event");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
