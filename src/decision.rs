//! The pure decision core: signals in, decisions out, the time passed in.
//!
//! A [`Guard`] holds one guarded Service's window and check state. It does no IO and reads no
//! clock, so its whole truth table is plain `#[test]` tables below. It decides *what* should happen
//! (open a window, roll back, declare stable); the executor decides *how*, and reports back with
//! [`Signal::Executed`]. Matching an alert's labels to a guard is the webhook's job, not this one's.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::config::{GuardConfig, NoDataPolicy, Threshold, TrafficAction};

/// A check as the core needs it.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub threshold: Threshold,
    pub for_: Duration,
    pub on_no_data: NoDataPolicy,
}

/// The part of a guard's config that drives decisions.
#[derive(Debug, Clone)]
pub struct Policy {
    pub window: Duration,
    pub stabilization: Duration,
    pub dry_run: bool,
    pub checks: Vec<Check>,
    /// Ready Pods the rollback target must keep during the window.
    pub min_ready_previous: u32,
    /// Whether traffic really moved; `None`: not checked.
    pub traffic: Option<TrafficPolicy>,
}

/// A guard's `traffic` check, as the core needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficPolicy {
    pub min_share: f64,
    pub within: Duration,
    pub volume_drop: f64,
    /// A failed check also rolls back.
    pub rollback: bool,
}

impl From<&GuardConfig> for Policy {
    fn from(g: &GuardConfig) -> Self {
        Self {
            window: g.window,
            stabilization: g.stabilization,
            dry_run: g.dry_run,
            min_ready_previous: g.min_ready_previous,
            traffic: g.traffic.as_ref().map(|t| TrafficPolicy {
                min_share: t.min_share,
                within: t.within,
                volume_drop: t.volume_drop,
                rollback: t.action == TrafficAction::Rollback,
            }),
            checks: g
                .checks
                .iter()
                .map(|c| Check {
                    name: c.name.clone(),
                    threshold: c.threshold,
                    for_: c.for_,
                    on_no_data: c.on_no_data,
                })
                .collect(),
        }
    }
}

/// A window's state, as written to the `cutover-watchdog.io/state` annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Watching,
    Stable,
    RolledBack,
    Superseded,
    Expired,
    /// A cutover made while no watchdog was watching, found longer than `window` after it
    /// happened: recorded, never watched.
    Missed,
    /// Rolled back, then set back on the green by someone else (a sync) within the window:
    /// green serves, unproven, and is not reverted again.
    Overridden,
}

impl Phase {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Watching => "watching",
            Self::Stable => "stable",
            Self::RolledBack => "rolled-back",
            Self::Superseded => "superseded",
            Self::Expired => "expired",
            Self::Missed => "missed",
            Self::Overridden => "overridden",
        }
    }

    /// The version serving once a window in this phase has ended, given its green `version`
    /// and its `previous`: the baseline a later start-up compares the selector with. `None`
    /// while the window is open.
    #[must_use]
    pub fn serving<'a>(self, version: &'a str, previous: &'a str) -> Option<&'a str> {
        match self {
            Self::Watching => None,
            Self::Stable | Self::Expired | Self::Missed | Self::Overridden => Some(version),
            Self::RolledBack | Self::Superseded => Some(previous),
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Watching,
            Self::Stable,
            Self::RolledBack,
            Self::Superseded,
            Self::Expired,
            Self::Missed,
            Self::Overridden,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// A window's state as persisted in the Service's annotations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Persisted {
    /// The green version the window is about.
    pub version: String,
    /// The rollback target: the last version that served before the unproven one.
    pub previous: String,
    pub cutover_at: Timestamp,
    pub phase: Phase,
    pub reason: String,
}

impl Persisted {
    /// Whether this record is the one the rollback of the window for `version`, opened at
    /// `cutover_at`, writes together with the selector: its proof that the patch landed.
    #[must_use]
    pub fn records_rollback_of(&self, version: &str, cutover_at: Timestamp) -> bool {
        self.phase == Phase::RolledBack && self.version == version && self.cutover_at == cutover_at
    }
}

/// One poll's result for one check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Sample {
    Value(f64),
    /// An empty result, or only NaN.
    NoData,
    /// Prometheus could not answer. Never a breach.
    Error,
}

impl Sample {
    /// The sample that counts among a query's series: NaN is dropped, and of several the worst
    /// for the threshold's direction wins.
    #[must_use]
    pub fn from_values(values: &[f64], threshold: Threshold) -> Self {
        values
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .reduce(|a, b| threshold.worst(a, b))
            .map_or(Self::NoData, Self::Value)
    }
}

/// Green's and blue's request rates at one poll; `None` where the query gave no number.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates {
    pub green: Option<f64>,
    pub blue: Option<f64>,
}

impl Rates {
    /// Green's share of green plus blue, when both are known and not both zero.
    #[must_use]
    pub fn green_share(self) -> Option<f64> {
        let (g, b) = (self.green?, self.blue?);
        (g + b > 0.0).then(|| g / (g + b))
    }
}

/// How a traffic check failed: the closed set of `traffic_check_failures_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficKind {
    NotSwitched,
    NotRestored,
    VolumeDropped,
}

impl TrafficKind {
    pub const ALL: [Self; 3] = [Self::NotSwitched, Self::NotRestored, Self::VolumeDropped];

    #[must_use]
    pub fn as_label(self) -> &'static str {
        match self {
            Self::NotSwitched => "not_switched",
            Self::NotRestored => "not_restored",
            Self::VolumeDropped => "volume_dropped",
        }
    }

    /// The Warning Event's reason.
    #[must_use]
    pub fn event_reason(self) -> &'static str {
        match self {
            Self::NotSwitched => "TrafficNotSwitched",
            Self::NotRestored => "RollbackTrafficNotRestored",
            Self::VolumeDropped => "TrafficVolumeDropped",
        }
    }
}

/// What caused a rollback.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    Check {
        name: String,
        observed: Option<f64>,
        threshold: String,
        #[serde(with = "humantime_serde_secs")]
        for_: Duration,
    },
    Alert {
        alertname: String,
        /// The alert's `severity` label, one of the guard's `alerts.severities`.
        severity: String,
    },
    /// A failed traffic check, with `traffic.action: rollback`.
    Traffic { detail: String },
}

impl Trigger {
    /// The `trigger` metric label: the check's name, or `alert`.
    #[must_use]
    pub fn label(&self) -> &str {
        match self {
            Self::Check { name, .. } => name,
            Self::Alert { .. } => "alert",
            Self::Traffic { .. } => "traffic",
        }
    }

    /// One line for events, logs and the `reason` annotation.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Check {
                name,
                observed,
                threshold,
                for_,
            } => {
                let observed = observed.map_or_else(|| "no data".to_owned(), |v| format!("{v:.4}"));
                format!(
                    "check {name}: observed {observed}, threshold {threshold}, breached for {}",
                    humantime::format_duration(*for_)
                )
            }
            Self::Alert {
                alertname,
                severity,
            } => format!("{severity} alert {alertname}"),
            Self::Traffic { detail } => format!("traffic: {detail}"),
        }
    }
}

mod humantime_serde_secs {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// A firing alert that already matched this guard's labels and severities.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub alertname: String,
    /// Its `severity` label: the one of the guard's `alerts.severities` that let it act.
    pub severity: String,
    /// The alert's value of the guard's `version_label`, if it carries one.
    pub version: Option<String>,
    pub starts_at: Option<Timestamp>,
}

/// What the executor reports back about a rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    RolledBack,
    /// The target had too few Ready pods; the selector is unchanged.
    Blocked,
    /// The API refused or failed; the selector is unchanged.
    Failed,
    /// The patch was sent and no answer came (a timeout, a connection broken after sending):
    /// it may have landed or not. The next sight of the Service decides: the patch carried
    /// `resource_version` as its precondition, so while the Service is still at that version
    /// it may yet land, and once it is at another, it did (with our record) or never will.
    Unknown {
        resource_version: String,
    },
    /// The selector no longer names the window's version; someone else changed it.
    NotApplicable,
}

/// An input to the core.
#[derive(Debug, Clone)]
pub enum Signal {
    /// The Service as the watch sees it: its version, the persisted window, if any, and its
    /// `resourceVersion`.
    Observed {
        version: Option<String>,
        persisted: Option<Persisted>,
        resource_version: Option<String>,
        /// The version recorded as serving while no window was (`baseline-version`).
        baseline: Option<String>,
        /// When the API server recorded the selector's version as it now is (its
        /// `managedFields`), if it says.
        changed_at: Option<Timestamp>,
        /// From a re-list: a change seen here may have been made while the watch was down.
        relisted: bool,
        /// The field manager that last set the selector's version, if the server says.
        changed_by: Option<String>,
    },
    /// One poll of every check, in config order, for the window of `version`, scheduled at
    /// `at`. Breaches are timed by the schedule, not by when answers arrived, so `for` spans
    /// whole poll intervals regardless of query latency. A poll that finds the window past its
    /// end closes it instead; the poller polls every open window, so the first poll after the
    /// end is what ends it.
    Polled {
        version: String,
        samples: Vec<Sample>,
        at: Timestamp,
        /// The rollback target's Ready Pods at that poll, if they were counted.
        previous_ready: Option<u32>,
        /// Green's and blue's request rates, with a `traffic` check.
        traffic: Option<Rates>,
    },
    Alert(Alert),
    /// The executor's answer to a rollback for the window of `version`.
    Executed {
        version: String,
        outcome: Outcome,
    },
}

/// An output of the core, carried out by the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A cutover: record the window, emit `CutoverDetected`.
    Opened(Persisted),
    /// A restarted watchdog picked up a window from the annotations; nothing to write.
    Resumed(Persisted),
    Stable(Persisted),
    Expired(Persisted),
    /// Someone else changed the selector during the window.
    Superseded {
        state: Persisted,
        by: String,
    },
    /// Revert the selector to `state.previous`, writing `state` with it. `announce` is true for
    /// the first attempt of an episode, so events are not repeated at every poll.
    RollBack {
        state: Persisted,
        trigger: Trigger,
        announce: bool,
    },
    /// A cutover made while no watchdog was watching, longer than `window` ago: record it as
    /// missed (a Warning `CutoverMissed`); nothing is watched.
    Missed(Persisted),
    /// Record `version` as the serving version of a Service that has no window record yet
    /// (`baseline-version`), if the Service is still at `resource_version`.
    Baseline {
        version: String,
        resource_version: Option<String>,
    },
    /// After our rollback, someone set the selector back on the rolled-back green before the
    /// window's end (a GitOps sync, most often): warn, naming who, and do not revert again.
    RollbackOverridden {
        state: Persisted,
        by: Option<String>,
    },
    /// A traffic check failed: warn (a rollback, if the policy says so, is its own decision).
    TrafficFailed {
        state: Persisted,
        kind: TrafficKind,
        detail: String,
    },
    /// The rollback target fell below `min_ready_previous` Ready Pods during the window: warn
    /// (once, until it is back).
    PreviousScaledDown {
        state: Persisted,
        ready: u32,
        min: u32,
    },
    /// Dry run: what would have been a rollback.
    WouldRollBack {
        state: Persisted,
        trigger: Trigger,
    },
    /// A rollback whose outcome was unknown is seen to have landed (the selector names the
    /// target, with this window's rolled-back record): record it as rolled back, timed from
    /// `decided_at` to `seen_at`.
    Landed {
        state: Persisted,
        trigger: Trigger,
        decided_at: Timestamp,
        seen_at: Timestamp,
    },
    /// A rollback whose outcome was unknown is seen not to have landed (the selector still names
    /// green): record the failure. The next trigger tries again.
    Lost {
        state: Persisted,
        trigger: Trigger,
    },
}

/// A check's running state within a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckTrack {
    pub last: Option<Sample>,
    pub breached: bool,
    pub breach_since: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Rollback {
    Idle,
    InFlight,
    /// Sent, never answered: neither done nor failed until the Service is seen again.
    Unknown,
    Blocked,
    Done,
}

/// The rollback decided in a window, kept until its outcome is known.
#[derive(Debug, Clone)]
struct Attempt {
    trigger: Trigger,
    decided_at: Timestamp,
    /// When the watch showed it landed, if it did before the executor answered.
    landed_seen_at: Option<Timestamp>,
    /// While the outcome is unknown: the `resourceVersion` the unanswered patch was sent
    /// against.
    unanswered: Option<String>,
}

/// A window's traffic check: what moved, and what was decided of it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficTrack {
    /// Green's share of green plus blue at the last poll.
    pub share: Option<f64>,
    /// Blue's rate at the first poll of the window (its rate window reaches back before the
    /// switch): the volume green should carry.
    pub before: Option<f64>,
    /// Green's rate at the last poll.
    pub green_rate: Option<f64>,
    /// Green's share reached `min_share` (true), or did not within `within` (false).
    pub switched: Option<bool>,
    /// Green's rate at `within` was within `volume_drop` of `before`.
    pub volume_kept: Option<bool>,
    /// After our rollback: by when blue's share must be back, and whether it came back.
    pub restore_by: Option<Timestamp>,
    pub restored: Option<bool>,
    /// The window was opened by this watchdog at the cutover, not resumed: its first poll's
    /// blue rate is the traffic before the switch.
    #[serde(skip)]
    opened_live: bool,
}

/// A post-cutover window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub version: String,
    pub previous: String,
    pub opened_at: Timestamp,
    pub ends_at: Timestamp,
    pub phase: Phase,
    pub open: bool,
    rollback: Rollback,
    #[serde(skip)]
    attempt: Option<Attempt>,
    would_have_rolled_back: bool,
    /// The rollback target is below `min_ready_previous`, and that was announced.
    previous_short: bool,
    /// Where the traffic check stands.
    pub traffic: TrafficTrack,
    pub checks: Vec<CheckTrack>,
    reason: String,
}

impl Window {
    /// Where the window's rollback stands, for status pages: `idle`, `in_flight`, `unknown`,
    /// `blocked` or `done`.
    #[must_use]
    pub fn rollback_state(&self) -> &'static str {
        match self.rollback {
            Rollback::Idle => "idle",
            Rollback::InFlight => "in_flight",
            Rollback::Unknown => "unknown",
            Rollback::Blocked => "blocked",
            Rollback::Done => "done",
        }
    }

    /// Whether `p` is the record this window's own rollback writes with the selector.
    fn rolled_back_by_us(&self, p: Option<&Persisted>) -> bool {
        p.is_some_and(|p| p.records_rollback_of(&self.version, self.opened_at))
    }

    /// Someone else moved the selector to `by`: the window closes, nothing more is patched.
    fn supersede(&mut self, by: String) -> Decision {
        self.open = false;
        self.phase = Phase::Superseded;
        self.rollback = Rollback::Idle;
        self.attempt = None;
        self.reason = format!("selector changed to {by} by someone else");
        Decision::Superseded {
            state: self.persisted(),
            by,
        }
    }

    /// The rollback whose outcome was unknown has landed, seen at `seen_at`.
    fn landed(&mut self, seen_at: Timestamp) -> Option<Decision> {
        let attempt = self.attempt.take()?;
        self.rollback = Rollback::Done;
        self.open = false;
        self.phase = Phase::RolledBack;
        self.reason = attempt.trigger.describe();
        Some(Decision::Landed {
            state: self.persisted(),
            trigger: attempt.trigger,
            decided_at: attempt.decided_at,
            seen_at,
        })
    }

    fn persisted(&self) -> Persisted {
        Persisted {
            version: self.version.clone(),
            previous: self.previous.clone(),
            cutover_at: self.opened_at,
            phase: self.phase,
            reason: self.reason.clone(),
        }
    }
}

/// One guarded Service's decision state.
#[derive(Debug, Clone)]
pub struct Guard {
    policy: Policy,
    /// The selector's version as last observed; `None` before the first observation.
    current: Option<String>,
    window: Option<Window>,
}

/// What one observation of the Service says beyond its version.
struct Sight<'a> {
    persisted: Option<&'a Persisted>,
    resource_version: Option<&'a str>,
    baseline: Option<&'a str>,
    /// When a cutover seen now was made: `now`, unless it was seen late and the API server
    /// recorded the change.
    since: Timestamp,
    changed_by: Option<&'a str>,
}

/// The record `cutover-watchdog cutover` writes with a switch from `current` to `version`.
fn adopted<'a>(
    persisted: Option<&'a Persisted>,
    version: &str,
    current: &str,
) -> Option<&'a Persisted> {
    persisted
        .filter(|p| p.phase == Phase::Watching && p.version == version && p.previous == current)
}

fn share_text(share: Option<f64>) -> String {
    share.map_or_else(|| "unknown (no rates)".to_owned(), |s| format!("{s:.2}"))
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

impl Guard {
    #[must_use]
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            current: None,
            window: None,
        }
    }

    /// The current (or last) window, for status pages.
    #[must_use]
    pub fn window(&self) -> Option<&Window> {
        self.window.as_ref()
    }

    /// The open window, if any.
    #[must_use]
    pub fn open_window(&self) -> Option<&Window> {
        self.window.as_ref().filter(|w| w.open)
    }

    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Puts a new policy in force. `keep[i]` is the old index of new check `i` when that check
    /// is unchanged: it keeps its progress (`for` and last sample) in the window; any other
    /// starts afresh. The window keeps its clock: its start, its end and its rollback.
    pub fn reconfigure(&mut self, policy: Policy, keep: &[Option<usize>]) {
        if let Some(w) = &mut self.window {
            w.checks = (0..policy.checks.len())
                .map(|i| {
                    keep.get(i)
                        .copied()
                        .flatten()
                        .and_then(|old| w.checks.get(old).cloned())
                        .unwrap_or_default()
                })
                .collect();
        }
        self.policy = policy;
    }

    /// Feeds one signal at time `now` and returns what should be done.
    pub fn handle(&mut self, signal: Signal, now: Timestamp) -> Vec<Decision> {
        match signal {
            Signal::Observed {
                version,
                persisted,
                resource_version,
                baseline,
                changed_at,
                relisted,
                changed_by,
            } => {
                // A rollback in hand, overtaken by a new cutover: its window ends superseded,
                // on the record, before the new one opens.
                let mut undecided = self.window.clone().filter(|w| {
                    w.open && matches!(w.rollback, Rollback::InFlight | Rollback::Unknown)
                });
                // A change seen late (at start-up, or after a re-list) may have been made while
                // nobody watched: its clock starts when the API server recorded it.
                let late = self.current.is_none() || relisted;
                let sight = Sight {
                    persisted: persisted.as_ref(),
                    resource_version: resource_version.as_deref(),
                    baseline: baseline.as_deref(),
                    since: changed_at.filter(|_| late).map_or(now, |t| t.min(now)),
                    changed_by: changed_by.as_deref(),
                };
                let decision = self.observed(version, &sight, now);
                return match (undecided.as_mut(), decision) {
                    (Some(old), Some(Decision::Opened(new))) => {
                        // Unless the watch saw it land first: then it is recorded as landed.
                        let seen = old.attempt.as_ref().and_then(|a| a.landed_seen_at);
                        let ended = match seen {
                            Some(seen_at) => old.landed(seen_at),
                            None => Some(old.supersede(new.version.clone())),
                        };
                        ended.into_iter().chain([Decision::Opened(new)]).collect()
                    }
                    (_, decision) => decision.into_iter().collect(),
                };
            }
            Signal::Polled {
                version,
                samples,
                at,
                previous_ready,
                traffic,
            } => {
                // A window whose time is up ends first: nothing is decided for it after.
                let ended = self.end_if_over(now);
                let short = previous_ready.and_then(|r| self.previous_ready(&version, r));
                let moved = traffic.map_or_else(Vec::new, |t| self.traffic(&version, t, at));
                let decided = ended.or_else(|| self.polled(&version, &samples, at));
                return short.into_iter().chain(moved).chain(decided).collect();
            }
            Signal::Alert(alert) => self.alert(&alert, now),
            Signal::Executed { version, outcome } => self.executed(&version, outcome),
        }
        .into_iter()
        .collect()
    }

    /// Opens the window for a cutover made at `since` (`now`, unless it was seen late). One
    /// made while nobody watched and longer than `window` ago is recorded missed instead.
    fn open(
        &mut self,
        version: String,
        previous: String,
        since: Timestamp,
        now: Timestamp,
    ) -> Decision {
        // The annotation keeps milliseconds; so does the window, so a resumed one is identical.
        let since = since.round(jiff::Unit::Millisecond).unwrap_or(since);
        if since == now.round(jiff::Unit::Millisecond).unwrap_or(now) {
            let reason = format!("cutover from {previous} to {version}");
            let w = self.new_window(version, previous, since, Phase::Watching, reason);
            w.traffic.opened_live = true;
            return Decision::Opened(w.persisted());
        }
        let reason = format!(
            "cutover from {previous} to {version} at {since}, made while no watchdog was watching"
        );
        if after(since, self.policy.window) <= now {
            let w = self.new_window(version, previous, since, Phase::Missed, reason);
            w.open = false;
            return Decision::Missed(w.persisted());
        }
        let w = self.new_window(version, previous, since, Phase::Watching, reason);
        Decision::Opened(w.persisted())
    }

    fn new_window(
        &mut self,
        version: String,
        previous: String,
        opened_at: Timestamp,
        phase: Phase,
        reason: String,
    ) -> &mut Window {
        self.window.insert(Window {
            version,
            previous,
            opened_at,
            ends_at: after(opened_at, self.policy.window),
            phase,
            open: true,
            rollback: Rollback::Idle,
            attempt: None,
            would_have_rolled_back: false,
            previous_short: false,
            traffic: TrafficTrack::default(),
            checks: vec![CheckTrack::default(); self.policy.checks.len()],
            reason,
        })
    }

    fn observed(
        &mut self,
        version: Option<String>,
        sight: &Sight,
        now: Timestamp,
    ) -> Option<Decision> {
        // A selector without the version key guards nothing; keep what we knew.
        let version = version?;
        let (persisted, resource_version) = (sight.persisted, sight.resource_version);
        let Some(current) = self.current.replace(version.clone()) else {
            return self.first_sight(version, sight, now);
        };
        if let Some(w) = self.window.as_mut().filter(|w| w.open) {
            let ours = version == w.previous && w.rolled_back_by_us(persisted);
            let still_green = version == w.version;
            match (w.rollback, w.attempt.as_mut()) {
                (Rollback::InFlight, Some(attempt)) if ours => {
                    // Our own rollback landing before its answer: kept in case the answer
                    // never comes.
                    attempt.landed_seen_at.get_or_insert(now);
                    return None;
                }
                (Rollback::Unknown, _) if ours => return w.landed(now),
                (Rollback::Unknown, Some(attempt)) if still_green => {
                    // Still at the version the unanswered patch was sent against, the patch
                    // may yet land; at another, without our record, it never will.
                    if resource_version.is_some()
                        && resource_version == attempt.unanswered.as_deref()
                    {
                        return None;
                    }
                    w.rollback = Rollback::Idle;
                    let trigger = w.attempt.take()?.trigger;
                    let mut state = w.persisted();
                    state.reason = trigger.describe();
                    return Some(Decision::Lost { state, trigger });
                }
                _ => {}
            }
        }
        if current == version {
            // Annotations or other fields changed, not the version; a Service still without
            // a record or a baseline (its write failed) gets another try.
            return self.baseline(&version, sight);
        }
        if let Some(w) = self.window.as_mut().filter(|w| w.open) {
            if version == w.previous {
                if matches!(w.rollback, Rollback::InFlight | Rollback::Done) {
                    return None; // our own rollback landing; the executor's answer records it
                }
                return Some(w.supersede(version));
            }
            // B then C: an unproven B never becomes a rollback target.
            let target = if w.phase == Phase::Watching {
                w.previous.clone()
            } else {
                w.version.clone()
            };
            if let Some(p) = adopted(persisted, &version, &current) {
                return Some(self.adopt(version, target, p, now));
            }
            return Some(self.open(version, target, sight.since, now));
        }
        // `cutover-watchdog cutover` writes the window's record with the selector, in one
        // write: the window is that one, its clock the command's. That is also how to re-cut
        // deliberately to a green this watchdog rolled back.
        if let Some(p) = adopted(persisted, &version, &current) {
            return Some(self.adopt(version, current, p, now));
        }
        if let Some(d) = self.overridden(&version, sight, now) {
            return Some(d);
        }
        // After a revert that was overridden, green is still unproven: the target stays blue.
        let target = match self.window.as_ref() {
            Some(w) if !w.open && w.phase == Phase::Overridden && w.version == current => {
                w.previous.clone()
            }
            _ => current,
        };
        Some(self.open(version, target, sight.since, now))
    }

    /// The window `cutover-watchdog cutover` recorded with its switch: its clock and reason,
    /// and the rollback target the watchdog's own rules give.
    fn adopt(
        &mut self,
        version: String,
        target: String,
        p: &Persisted,
        now: Timestamp,
    ) -> Decision {
        let start = p.cutover_at.min(now);
        let w = self.new_window(version, target, start, Phase::Watching, p.reason.clone());
        w.traffic.opened_live = true;
        Decision::Opened(w.persisted())
    }

    /// GitOps awareness: the selector set back on the green this watchdog rolled back, before
    /// that window's end, opens no window (it would only revert again, and fight the sync for
    /// as long as it runs): a Warning naming who did it.
    fn overridden(&mut self, version: &str, sight: &Sight, now: Timestamp) -> Option<Decision> {
        let window = self.policy.window;
        let remembered = self
            .window
            .as_ref()
            .is_some_and(|w| !w.open && w.phase == Phase::RolledBack && w.version == version);
        if !remembered {
            // Seen at start-up: the record is all there is.
            let p = sight
                .persisted
                .filter(|p| p.phase == Phase::RolledBack && p.version == version)?;
            let w = self.new_window(
                p.version.clone(),
                p.previous.clone(),
                p.cutover_at,
                Phase::RolledBack,
                p.reason.clone(),
            );
            w.open = false;
            w.rollback = Rollback::Done;
        }
        let w = self.window.as_mut()?;
        if now >= after(w.opened_at, window) {
            return None;
        }
        let by = sight.changed_by.map(str::to_owned);
        w.phase = Phase::Overridden;
        w.reason = format!(
            "selector set back to {} by {} after the rollback; not reverted again",
            w.version,
            by.as_deref().unwrap_or("an unknown field manager")
        );
        Some(Decision::RollbackOverridden {
            state: w.persisted(),
            by,
        })
    }

    /// Records the serving version of a Service with no window record and no baseline, so a
    /// cutover made while no watchdog runs can be told later. A dry run writes nothing.
    fn baseline(&self, version: &str, sight: &Sight) -> Option<Decision> {
        let unrecorded = sight.persisted.is_none() && sight.baseline.is_none();
        (unrecorded && self.window.is_none() && !self.policy.dry_run).then(|| Decision::Baseline {
            version: version.to_owned(),
            resource_version: sight.resource_version.map(str::to_owned),
        })
    }

    /// The first observation after start: pick up what the annotations say. A Service with no
    /// window record is compared with its baseline; one with neither gets a baseline.
    fn first_sight(&mut self, version: String, sight: &Sight, now: Timestamp) -> Option<Decision> {
        let Some(p) = sight.persisted else {
            return match sight.baseline {
                Some(baseline) if baseline != version => {
                    Some(self.open(version, baseline.to_owned(), sight.since, now))
                }
                Some(_) => None,
                None => self.baseline(&version, sight),
            };
        };
        let in_window = now < after(p.cutover_at, self.policy.window);
        let live = matches!(p.phase, Phase::Watching | Phase::Stable);
        if version == p.version {
            return match p.phase {
                Phase::Watching | Phase::Stable if in_window => {
                    let w = self.new_window(
                        version,
                        p.previous.clone(),
                        p.cutover_at,
                        p.phase,
                        p.reason.clone(),
                    );
                    Some(Decision::Resumed(w.persisted()))
                }
                Phase::Watching => {
                    let w = self.new_window(
                        version,
                        p.previous.clone(),
                        p.cutover_at,
                        Phase::Expired,
                        "window ended before the cutover was declared stable".into(),
                    );
                    w.open = false;
                    let state = w.persisted();
                    Some(Decision::Expired(state))
                }
                // Rolled back, and set back on green within the window while we were away: a
                // sync undoing the revert, not a cutover.
                // Remembered, closed, so that the next cutover still targets blue.
                Phase::RolledBack if in_window => self.overridden(&version, sight, now),
                // Rolled back or superseded, yet the selector names the version again: a human
                // cut over to it anew while we were away.
                Phase::RolledBack | Phase::Superseded => {
                    Some(self.open(version, p.previous.clone(), sight.since, now))
                }
                Phase::Stable | Phase::Expired | Phase::Missed | Phase::Overridden => None,
            };
        }
        if version == p.previous {
            if !(live && in_window) {
                // Back on the version before, made while nobody watched: a cutover unless the
                // record already says that version serves (a rollback).
                return match p.phase.serving(&p.version, &p.previous) {
                    Some(serving) if serving != version => {
                        Some(self.open(version, serving.to_owned(), sight.since, now))
                    }
                    _ => None,
                };
            }
            let reason = format!("selector changed back to {version} by someone else");
            let w = self.new_window(
                p.version.clone(),
                p.previous.clone(),
                p.cutover_at,
                Phase::Superseded,
                reason,
            );
            w.open = false;
            let state = w.persisted();
            return Some(Decision::Superseded { state, by: version });
        }
        // A cutover to a third version happened while we were away.
        let target = match p.phase {
            Phase::Watching if in_window => p.previous.clone(),
            // An overridden green is still unproven.
            Phase::RolledBack | Phase::Superseded | Phase::Overridden => p.previous.clone(),
            Phase::Watching | Phase::Stable | Phase::Expired | Phase::Missed => p.version.clone(),
        };
        Some(self.open(version, target, sight.since, now))
    }

    fn polled(&mut self, version: &str, samples: &[Sample], now: Timestamp) -> Option<Decision> {
        let policy = &self.policy;
        let w = self
            .window
            .as_mut()
            .filter(|w| w.open && w.version == version)?;
        for ((check, track), sample) in policy.checks.iter().zip(&mut w.checks).zip(samples) {
            track.last = Some(*sample);
            track.breached = match sample {
                Sample::Value(v) => check.threshold.breached_by(*v),
                Sample::NoData => check.on_no_data == NoDataPolicy::Breach,
                Sample::Error => false,
            };
            if track.breached {
                track.breach_since.get_or_insert(now);
            } else {
                track.breach_since = None;
            }
        }
        let tripped = policy.checks.iter().zip(&w.checks).find(|(check, track)| {
            track
                .breach_since
                .is_some_and(|since| elapsed(since, now) >= check.for_)
        });
        if let Some((check, track)) = tripped {
            let trigger = Trigger::Check {
                name: check.name.clone(),
                observed: match track.last {
                    Some(Sample::Value(v)) => Some(v),
                    _ => None,
                },
                threshold: check.threshold.to_string(),
                for_: check.for_,
            };
            return self.roll_back(trigger, now);
        }
        if w.rollback == Rollback::Blocked {
            w.rollback = Rollback::Idle; // the blocked episode is over
        }
        let clean = w
            .checks
            .iter()
            .all(|t| !t.breached && t.last != Some(Sample::Error));
        if w.phase == Phase::Watching
            && clean
            && !matches!(w.rollback, Rollback::InFlight | Rollback::Unknown)
            && elapsed(w.opened_at, now) >= policy.stabilization
        {
            w.phase = Phase::Stable;
            w.reason = format!(
                "no check breached for {} after the cutover",
                humantime::format_duration(policy.stabilization)
            );
            return Some(Decision::Stable(w.persisted()));
        }
        None
    }

    /// Did traffic move? After the cutover, green's share must reach `min_share` within
    /// `within`, and green's rate then must be within `volume_drop` of blue's before; after our
    /// rollback, blue's share must come back the same way. Each failure is announced once; with
    /// `action: rollback`, a failure in an open window also rolls back.
    fn traffic(&mut self, version: &str, rates: Rates, now: Timestamp) -> Vec<Decision> {
        let Some(policy) = self.policy.traffic.clone() else {
            return Vec::new();
        };
        let Some(w) = self.window.as_mut().filter(|w| w.version == version) else {
            return Vec::new();
        };
        let t = &mut w.traffic;
        t.share = rates.green_share();
        if !w.open {
            // Only our own rollback is followed: blue's share must come back.
            if w.phase != Phase::RolledBack || w.rollback != Rollback::Done || t.restored.is_some()
            {
                return Vec::new();
            }
            let by = *t
                .restore_by
                .get_or_insert_with(|| after(now, policy.within));
            let blue_share = t.share.map(|g| 1.0 - g);
            if blue_share.is_some_and(|b| b >= policy.min_share) {
                t.restored = Some(true);
                return Vec::new();
            }
            if now < by {
                return Vec::new();
            }
            t.restored = Some(false);
            let detail = format!(
                "{}'s share of traffic {} after the rollback, below min_share {}, {} after it",
                w.previous,
                share_text(blue_share),
                policy.min_share,
                humantime::format_duration(policy.within)
            );
            let state = w.persisted();
            return vec![Decision::TrafficFailed {
                state,
                kind: TrafficKind::NotRestored,
                detail,
            }];
        }
        // Blue's rate before the switch is only known at a live window's first poll (its rate
        // window reaches back before the switch); a resumed window cannot tell volume parity.
        if t.opened_live && t.before.is_none() && t.green_rate.is_none() {
            t.before = rates.blue;
        }
        t.green_rate = rates.green;
        if t.switched.is_none() && t.share.is_some_and(|s| s >= policy.min_share) {
            t.switched = Some(true);
        }
        let due = now >= after(w.opened_at, policy.within);
        let mut failed = Vec::new();
        // Unknown rates (Prometheus failing, no data) are never a failure: it waits for a share.
        if due && t.switched.is_none() && t.share.is_some() {
            t.switched = Some(false);
            failed.push((
                TrafficKind::NotSwitched,
                format!(
                    "{}'s share of traffic {} after {}, below min_share {}",
                    w.version,
                    share_text(t.share),
                    humantime::format_duration(policy.within),
                    policy.min_share
                ),
            ));
        }
        if due
            && t.volume_kept.is_none()
            && let (Some(before), Some(green)) = (t.before, t.green_rate)
        {
            let kept = green >= before * (1.0 - policy.volume_drop);
            t.volume_kept = Some(kept);
            if !kept {
                failed.push((
                    TrafficKind::VolumeDropped,
                    format!(
                        "{}'s rate {green:.2}/s is {:.0}% below {}'s {before:.2}/s before the switch (volume_drop {})",
                        w.version,
                        (1.0 - green / before) * 100.0,
                        w.previous,
                        policy.volume_drop
                    ),
                ));
            }
        }
        let state = w.persisted();
        let rollback = policy
            .rollback
            .then(|| failed.first().map(|(_, d)| d.clone()))
            .flatten();
        let mut decisions: Vec<Decision> = failed
            .into_iter()
            .map(|(kind, detail)| Decision::TrafficFailed {
                state: state.clone(),
                kind,
                detail,
            })
            .collect();
        if let Some(detail) = rollback {
            decisions.extend(self.roll_back(Trigger::Traffic { detail }, now));
        }
        decisions
    }

    /// The window the poller should poll: the open one, or one we rolled back whose traffic
    /// must still be seen coming back to blue.
    #[must_use]
    pub fn polled_window(&self) -> Option<&Window> {
        let traffic = self.policy.traffic.is_some();
        self.window.as_ref().filter(|w| {
            w.open
                || (traffic
                    && w.phase == Phase::RolledBack
                    && w.rollback == Rollback::Done
                    && w.traffic.restored.is_none())
        })
    }

    /// Blue kept: the rollback target's Ready Pods while the window is open. Falling below
    /// `min_ready_previous` is announced once, and again only after it was back.
    fn previous_ready(&mut self, version: &str, ready: u32) -> Option<Decision> {
        let min = self.policy.min_ready_previous;
        let w = self
            .window
            .as_mut()
            .filter(|w| w.open && w.version == version)?;
        let short = ready < min;
        let announce = short && !w.previous_short;
        w.previous_short = short;
        announce.then(|| Decision::PreviousScaledDown {
            state: w.persisted(),
            ready,
            min,
        })
    }

    fn alert(&mut self, alert: &Alert, now: Timestamp) -> Option<Decision> {
        let w = self.window.as_ref().filter(|w| w.open)?;
        match &alert.version {
            // An alert about another version (blue!) must never revert to blue.
            Some(v) if *v != w.version => return None,
            // A problem that predates the cutover is no reason to revert it.
            None if alert.starts_at.is_some_and(|s| s < w.opened_at) => return None,
            Some(_) | None => {}
        }
        self.roll_back(
            Trigger::Alert {
                alertname: alert.alertname.clone(),
                severity: alert.severity.clone(),
            },
            now,
        )
    }

    /// The once-per-window rollback rule, shared by checks and alerts.
    fn roll_back(&mut self, trigger: Trigger, now: Timestamp) -> Option<Decision> {
        let dry_run = self.policy.dry_run;
        let w = self.window.as_mut().filter(|w| w.open)?;
        if dry_run {
            if w.would_have_rolled_back {
                return None;
            }
            w.would_have_rolled_back = true;
            let mut state = w.persisted();
            state.reason = trigger.describe();
            return Some(Decision::WouldRollBack { state, trigger });
        }
        let announce = match w.rollback {
            Rollback::Idle => true,
            Rollback::Blocked | Rollback::Unknown => false,
            Rollback::InFlight | Rollback::Done => return None,
        };
        // From Unknown, the same rollback is carried on: the executor's re-read tells whether
        // the unanswered patch landed, and the record names what decided it, when.
        let attempt = w.attempt.take().filter(|_| w.rollback == Rollback::Unknown);
        let attempt = attempt.unwrap_or(Attempt {
            trigger,
            decided_at: now,
            landed_seen_at: None,
            unanswered: None,
        });
        let trigger = attempt.trigger.clone();
        w.attempt = Some(attempt);
        w.rollback = Rollback::InFlight;
        let mut state = w.persisted();
        state.phase = Phase::RolledBack;
        state.reason = trigger.describe();
        Some(Decision::RollBack {
            state,
            trigger,
            announce,
        })
    }

    fn executed(&mut self, version: &str, outcome: Outcome) -> Option<Decision> {
        let w = self.window.as_mut().filter(|w| w.version == version)?;
        if w.rollback != Rollback::InFlight {
            return None;
        }
        let seen = w.attempt.as_ref().and_then(|a| a.landed_seen_at);
        if let Some(seen_at) = seen
            && outcome != Outcome::RolledBack
        {
            // The watch already showed it landed, whatever the executor could not tell.
            return w.landed(seen_at);
        }
        match outcome {
            Outcome::RolledBack => {
                w.rollback = Rollback::Done;
                w.attempt = None;
                w.open = false;
                w.phase = Phase::RolledBack;
                self.current = Some(w.previous.clone());
            }
            Outcome::Unknown { resource_version } => {
                if self.current.as_deref() != Some(w.version.as_str()) {
                    // The selector moved, but not with our record: someone else moved it.
                    let by = self.current.clone().unwrap_or_default();
                    return Some(w.supersede(by));
                }
                w.rollback = Rollback::Unknown;
                if let Some(attempt) = &mut w.attempt {
                    attempt.unanswered = Some(resource_version);
                }
            }
            Outcome::Blocked => w.rollback = Rollback::Blocked,
            Outcome::Failed | Outcome::NotApplicable => w.rollback = Rollback::Idle,
        }
        None
    }

    /// Closes the open window if its time is up at `now`.
    fn end_if_over(&mut self, now: Timestamp) -> Option<Decision> {
        if let Some(w) = self.window.as_ref()
            && w.open
            && now >= w.ends_at
            && w.rollback == Rollback::Unknown
        {
            // Time is up and nothing has shown whether the unanswered patch landed: ask again
            // (the executor reads first) rather than leave the window open forever.
            let trigger = w.attempt.as_ref()?.trigger.clone();
            return self.roll_back(trigger, now);
        }
        // A rollback decided in the window is carried through: its window ends with its outcome.
        let w = self.window.as_mut().filter(|w| {
            w.open
                && now >= w.ends_at
                && !matches!(w.rollback, Rollback::InFlight | Rollback::Unknown)
        })?;
        w.open = false;
        if w.phase != Phase::Watching {
            return None; // a stable window simply ends
        }
        w.phase = Phase::Expired;
        w.reason = "window ended before the cutover was declared stable".into();
        Some(Decision::Expired(w.persisted()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    fn check(name: &str, threshold: Threshold, for_secs: u64, on_no_data: NoDataPolicy) -> Check {
        Check {
            name: name.into(),
            threshold,
            for_: Duration::from_secs(for_secs),
            on_no_data,
        }
    }

    /// The runbook's error-rate check (above 2% for 2m) and a P95 check with no-data breach.
    fn guard(dry_run: bool) -> Guard {
        Guard::new(Policy {
            window: Duration::from_mins(10),
            stabilization: Duration::from_mins(5),
            dry_run,
            min_ready_previous: 1,
            traffic: None,
            checks: vec![
                check(
                    "error_rate",
                    Threshold::Above(0.02),
                    120,
                    NoDataPolicy::Ignore,
                ),
                check(
                    "latency_p95",
                    Threshold::Above(0.8),
                    180,
                    NoDataPolicy::Breach,
                ),
            ],
        })
    }

    /// An observation of the Service: its version, its window record, its baseline, when the
    /// API server recorded the version, and whether it came from a re-list.
    fn sight(
        version: &str,
        persisted: Option<Persisted>,
        baseline: Option<&str>,
        changed_at: Option<i64>,
        relisted: bool,
    ) -> Signal {
        Signal::Observed {
            version: Some(version.into()),
            persisted,
            resource_version: None,
            baseline: baseline.map(str::to_owned),
            changed_at: changed_at.map(at),
            relisted,
            changed_by: None,
        }
    }

    /// `signal`, an observation, with the selector's version last set by `manager`.
    fn written_by(signal: Signal, manager: &str) -> Signal {
        match signal {
            Signal::Observed {
                version,
                persisted,
                resource_version,
                baseline,
                changed_at,
                relisted,
                ..
            } => Signal::Observed {
                version,
                persisted,
                resource_version,
                baseline,
                changed_at,
                relisted,
                changed_by: Some(manager.into()),
            },
            other => other,
        }
    }

    /// The Service, seen before (its baseline is its first version), at `version`, live.
    fn observe(g: &mut Guard, version: &str, t: i64) -> Vec<Decision> {
        let baseline = g.current.clone().unwrap_or_else(|| version.to_owned());
        g.handle(sight(version, None, Some(&baseline), None, false), at(t))
    }

    fn poll(g: &mut Guard, version: &str, t: i64, err: Sample, p95: Sample) -> Vec<Decision> {
        g.handle(
            Signal::Polled {
                version: version.into(),
                samples: vec![err, p95],
                at: at(t),
                previous_ready: None,
                traffic: None,
            },
            at(t),
        )
    }

    fn cut_over(g: &mut Guard) {
        assert!(observe(g, "v1", 0).is_empty());
        let d = observe(g, "v2", 10);
        assert!(matches!(&d[..], [Decision::Opened(p)] if p.version == "v2" && p.previous == "v1"));
    }

    use Sample::{Error as Err_, NoData, Value};
    const OK: Sample = Value(0.001);
    const BAD: Sample = Value(0.05);
    const FAST: Sample = Value(0.1);

    fn rollback_target(d: &[Decision]) -> Option<(String, String, bool)> {
        d.iter().find_map(|d| match d {
            Decision::RollBack {
                state,
                trigger,
                announce,
            } => Some((
                state.previous.clone(),
                trigger.label().to_owned(),
                *announce,
            )),
            _ => None,
        })
    }

    #[test]
    fn a_reconfigured_window_keeps_its_clock_and_the_progress_of_unchanged_checks_only() {
        let mut g = guard(false);
        cut_over(&mut g);
        assert!(poll(&mut g, "v2", 20, BAD, FAST).is_empty());
        let ends_at = g.window().unwrap().ends_at;
        // The error-rate check stays (kept at new index 1); latency is replaced by a new check.
        let mut policy = g.policy().clone();
        policy.checks = vec![
            check(
                "saturation",
                Threshold::Above(0.9),
                60,
                NoDataPolicy::Ignore,
            ),
            policy.checks[0].clone(),
        ];
        g.reconfigure(policy, &[None, Some(0)]);
        let w = g.window().unwrap();
        assert_eq!(w.ends_at, ends_at, "the window keeps its clock");
        assert_eq!(
            w.checks[1].breach_since,
            Some(at(20)),
            "error_rate keeps its `for`"
        );
        assert_eq!(w.checks[0].breach_since, None, "a new check starts afresh");
        // error_rate trips 120s after its first breach, as if nothing had changed.
        let d = g.handle(
            Signal::Polled {
                version: "v2".into(),
                samples: vec![OK, BAD],
                at: at(140),
                previous_ready: None,
                traffic: None,
            },
            at(140),
        );
        assert_eq!(
            rollback_target(&d),
            Some(("v1".into(), "error_rate".into(), true))
        );
    }

    #[test]
    fn for_trips_only_after_continuous_breach_and_resets_on_any_gap() {
        // (error-rate sample at t, expect rollback?)
        type Row<'a> = (&'a [(i64, Sample)], Option<i64>);
        let table: &[Row] = &[
            // breached at every poll for 120s: trips at the poll reaching 120s
            (&[(20, BAD), (80, BAD), (140, BAD)], Some(140)),
            // a clean poll resets `for`
            (&[(20, BAD), (80, OK), (140, BAD), (200, BAD)], None),
            // an errored poll resets `for` too: continuity trips a check
            (&[(20, BAD), (80, Err_), (140, BAD), (200, BAD)], None),
            // ignored no data resets `for`
            (
                &[(20, BAD), (80, NoData), (140, BAD), (200, BAD), (260, BAD)],
                Some(260),
            ),
            // a blip shorter than `for`
            (&[(20, BAD), (80, BAD), (100, OK)], None),
        ];
        for (i, (polls, trips_at)) in table.iter().enumerate() {
            let mut g = guard(false);
            cut_over(&mut g);
            let mut tripped = None;
            for (t, s) in *polls {
                if rollback_target(&poll(&mut g, "v2", *t, *s, FAST)).is_some() {
                    tripped = Some(*t);
                    break;
                }
            }
            assert_eq!(tripped, *trips_at, "row {i}");
        }
    }

    #[test]
    fn prometheus_faults_never_trip_and_a_breach_after_one_starts_over() {
        // (error-rate samples, `for` 120 s, expect rollback at?)
        type Row<'a> = (&'a str, &'a [(i64, Sample)], Option<i64>);
        let table: &[Row] = &[
            (
                "flapping: every breach is cut short by an error",
                &[
                    (20, BAD),
                    (50, Err_),
                    (80, BAD),
                    (110, Err_),
                    (140, BAD),
                    (170, Err_),
                    (200, BAD),
                ],
                None,
            ),
            (
                "an outage longer than `for` mid-breach: the breach starts over after it",
                &[
                    (20, BAD),
                    (80, Err_),
                    (140, Err_),
                    (200, Err_),
                    (260, BAD),
                    (320, BAD),
                    (380, BAD),
                ],
                Some(380),
            ),
            (
                "a restart that lost the data: errors, then no data (ignored), then the breach anew",
                &[
                    (20, BAD),
                    (80, Err_),
                    (100, NoData),
                    (120, NoData),
                    (140, BAD),
                    (200, BAD),
                    (260, BAD),
                ],
                Some(260),
            ),
        ];
        for (what, polls, trips_at) in table {
            let mut g = guard(false);
            cut_over(&mut g);
            let tripped = polls
                .iter()
                .find(|(t, s)| rollback_target(&poll(&mut g, "v2", *t, *s, FAST)).is_some())
                .map(|(t, _)| *t);
            assert_eq!(tripped, *trips_at, "{what}");
        }
    }

    #[test]
    fn no_data_follows_each_checks_policy() {
        // latency_p95 breaches on no data (for 180s); error_rate ignores it.
        let mut g = guard(false);
        cut_over(&mut g);
        for t in [20, 100, 180] {
            assert!(poll(&mut g, "v2", t, NoData, NoData).is_empty());
        }
        let d = poll(&mut g, "v2", 200, NoData, NoData);
        assert_eq!(
            rollback_target(&d),
            Some(("v1".into(), "latency_p95".into(), true))
        );
    }

    #[test]
    fn nan_and_several_series_reduce_to_the_worst_value() {
        let nan = f64::NAN;
        let table = [
            (vec![], Threshold::Above(1.0), NoData),
            (vec![nan], Threshold::Above(1.0), NoData),
            (vec![0.5, nan, 3.0, 1.0], Threshold::Above(1.0), Value(3.0)),
            (vec![0.5, 3.0], Threshold::Below(1.0), Value(0.5)),
        ];
        for (values, threshold, want) in table {
            assert_eq!(Sample::from_values(&values, threshold), want, "{values:?}");
        }
    }

    #[test]
    fn at_most_one_rollback_per_window() {
        let mut g = guard(false);
        cut_over(&mut g);
        poll(&mut g, "v2", 20, BAD, FAST);
        assert!(rollback_target(&poll(&mut g, "v2", 140, BAD, FAST)).is_some());
        // still in flight: no second decision, from a poll or an alert
        assert!(poll(&mut g, "v2", 160, BAD, FAST).is_empty());
        let alert = Alert {
            alertname: "X".into(),
            severity: "critical".into(),
            version: None,
            starts_at: None,
        };
        assert!(g.handle(Signal::Alert(alert.clone()), at(161)).is_empty());
        let done = Signal::Executed {
            version: "v2".into(),
            outcome: Outcome::RolledBack,
        };
        assert!(g.handle(done, at(162)).is_empty());
        // our own patch landing is not a cutover
        assert!(observe(&mut g, "v1", 163).is_empty());
        assert!(g.handle(Signal::Alert(alert), at(164)).is_empty());
        assert_eq!(g.window().unwrap().phase, Phase::RolledBack);
        assert!(g.open_window().is_none());
    }

    #[test]
    fn blocked_rollback_retries_and_announces_once_per_episode() {
        let mut g = guard(false);
        cut_over(&mut g);
        poll(&mut g, "v2", 20, BAD, FAST);
        let blocked = |g: &mut Guard, t| {
            let s = Signal::Executed {
                version: "v2".into(),
                outcome: Outcome::Blocked,
            };
            g.handle(s, at(t));
        };
        assert!(
            rollback_target(&poll(&mut g, "v2", 140, BAD, FAST))
                .unwrap()
                .2
        );
        blocked(&mut g, 141);
        assert!(
            !rollback_target(&poll(&mut g, "v2", 160, BAD, FAST))
                .unwrap()
                .2
        );
        blocked(&mut g, 161);
        // the trigger stops holding: the episode ends
        assert!(poll(&mut g, "v2", 180, OK, FAST).is_empty());
        poll(&mut g, "v2", 200, BAD, FAST);
        assert!(
            rollback_target(&poll(&mut g, "v2", 320, BAD, FAST))
                .unwrap()
                .2
        );
    }

    /// A guard whose error-rate check has just decided a rollback at 140 s, still in flight.
    fn rolling_back() -> Guard {
        let mut g = guard(false);
        cut_over(&mut g);
        poll(&mut g, "v2", 20, BAD, FAST);
        assert!(rollback_target(&poll(&mut g, "v2", 140, BAD, FAST)).is_some());
        g
    }

    /// Cut over to v2 at 10 s, rolled back by a critical alert at 20 s, landed at 21 s.
    fn rolled_back_by_alert(g: &mut Guard) {
        cut_over(g);
        let alert = Alert {
            alertname: "HighErrorRate".into(),
            severity: "critical".into(),
            version: None,
            starts_at: Some(at(15)),
        };
        g.handle(Signal::Alert(alert), at(20));
        executed(g, Outcome::RolledBack, 21);
    }

    fn executed(g: &mut Guard, outcome: Outcome, t: i64) -> Vec<Decision> {
        let s = Signal::Executed {
            version: "v2".into(),
            outcome,
        };
        g.handle(s, at(t))
    }

    /// The rollback's patch was sent against resourceVersion 7 and got no answer.
    fn unknown() -> Outcome {
        Outcome::Unknown {
            resource_version: "7".into(),
        }
    }

    /// The Service seen at resourceVersion 8 (it moved on from the unanswered patch's 7) on
    /// `version`, carrying the record of the window opened at 10 s in `phase` (`None`: no
    /// record).
    fn seen(g: &mut Guard, version: &str, phase: Option<Phase>, t: i64) -> Vec<Decision> {
        seen_at_version(g, version, phase, "8", t)
    }

    fn seen_at_version(
        g: &mut Guard,
        version: &str,
        phase: Option<Phase>,
        resource_version: &str,
        t: i64,
    ) -> Vec<Decision> {
        let persisted = phase.map(|phase| Persisted {
            version: "v2".into(),
            previous: "v1".into(),
            cutover_at: at(10),
            phase,
            reason: String::new(),
        });
        let observed = Signal::Observed {
            version: Some(version.into()),
            persisted,
            resource_version: Some(resource_version.into()),
            baseline: None,
            changed_at: None,
            relisted: false,
            changed_by: None,
        };
        g.handle(observed, at(t))
    }

    /// What settled the rollback decided at 140 s, in a word or two, for table rows.
    fn settled_by(what: &str, decisions: &[Decision]) -> String {
        match decisions {
            [
                Decision::Landed {
                    state,
                    trigger,
                    decided_at,
                    seen_at,
                },
            ] => {
                assert_eq!(state.phase, Phase::RolledBack, "{what}");
                assert_eq!(trigger.label(), "error_rate", "{what}");
                let secs = |t: &Timestamp| t.as_second() - T0;
                format!("landed {}->{}", secs(decided_at), secs(seen_at))
            }
            [Decision::Lost { .. }] => "lost".into(),
            [Decision::Superseded { .. }] => "superseded".into(),
            [
                Decision::RollBack {
                    announce: false,
                    trigger,
                    ..
                },
            ] => {
                assert_eq!(trigger.label(), "error_rate", "{what}: the same rollback");
                "retry, not announced".into()
            }
            [] => "nothing yet".into(),
            [landed @ Decision::Landed { .. }, Decision::Opened(new)] => {
                let landed = settled_by(what, std::slice::from_ref(landed));
                format!("{landed}, then opened {}", new.version)
            }
            [Decision::Superseded { by, .. }, Decision::Opened(new)] => {
                assert_eq!(by, &new.version, "{what}");
                format!("superseded, then opened {}", new.version)
            }
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_outcome_is_decided_by_the_next_sight_of_the_service() {
        // (what, what happens after the rollback decided at 140 s, the decision that settles it)
        type Step = fn(&mut Guard) -> Vec<Decision>;
        let table: &[(&str, &[Step], &str)] = &[
            (
                "the patch landed before its answer was lost: landed, seen at 141",
                &[
                    |g| seen(g, "v1", Some(Phase::RolledBack), 141),
                    |g| executed(g, unknown(), 145),
                ],
                "landed 140->141",
            ),
            (
                "the landing seen after the timeout: landed, seen then",
                &[
                    |g| executed(g, unknown(), 145),
                    |g| seen(g, "v1", Some(Phase::RolledBack), 150),
                ],
                "landed 140->150",
            ),
            (
                "the Service seen on green, moved on from the patch's version: lost",
                &[
                    |g| executed(g, unknown(), 145),
                    |g| seen(g, "v2", Some(Phase::Watching), 150),
                ],
                "lost",
            ),
            (
                "a re-list on green at the patch's own version: it may yet land",
                &[
                    |g| executed(g, unknown(), 145),
                    |g| seen_at_version(g, "v2", Some(Phase::Watching), "7", 150),
                ],
                "nothing yet",
            ),
            (
                "the watch saw it land, then the executor failed to tell: landed",
                &[
                    |g| seen(g, "v1", Some(Phase::RolledBack), 141),
                    |g| executed(g, Outcome::Failed, 145),
                ],
                "landed 140->141",
            ),
            (
                "the window's time is up with the outcome unknown: asked again",
                &[
                    |g| executed(g, unknown(), 145),
                    |g| poll(g, "v2", 700, OK, FAST),
                ],
                "retry, not announced",
            ),
            (
                "someone else reverted it, without our record: superseded",
                &[
                    |g| executed(g, unknown(), 145),
                    |g| seen(g, "v1", None, 150),
                ],
                "superseded",
            ),
            (
                "someone else cut over to a third version meanwhile: superseded, then a new window",
                &[
                    |g| executed(g, unknown(), 145),
                    |g| seen(g, "v3", None, 150),
                ],
                "superseded, then opened v3",
            ),
            (
                "it landed, then someone cut over to a third version: landed, then a new window",
                &[
                    |g| seen(g, "v1", Some(Phase::RolledBack), 141),
                    |g| seen(g, "v3", None, 150),
                ],
                "landed 140->141, then opened v3",
            ),
            (
                "someone else reverted it before the timeout: superseded",
                &[
                    |g| seen(g, "v1", None, 141),
                    |g| executed(g, unknown(), 145),
                ],
                "superseded",
            ),
            (
                "the trigger holds again before any sight: the executor's re-read decides",
                &[
                    |g| executed(g, unknown(), 145),
                    |g| poll(g, "v2", 160, BAD, FAST),
                ],
                "retry, not announced",
            ),
        ];
        for (what, steps, want) in table {
            let mut g = rolling_back();
            let mut last = Vec::new();
            for step in *steps {
                last = step(&mut g);
            }
            let got = settled_by(what, &last);
            assert_eq!(got, *want, "{what}");
        }
    }

    #[test]
    fn a_landed_rollback_closes_the_window_and_a_lost_one_starts_a_new_episode() {
        let mut g = rolling_back();
        executed(&mut g, unknown(), 145);
        assert!(
            poll(&mut g, "v2", 150, OK, FAST).is_empty(),
            "unknown is not stable"
        );
        seen(&mut g, "v1", Some(Phase::RolledBack), 151);
        assert_eq!(g.window().unwrap().phase, Phase::RolledBack);
        assert!(g.open_window().is_none());
        assert!(seen(&mut g, "v1", Some(Phase::RolledBack), 152).is_empty());

        let mut g = rolling_back();
        executed(&mut g, unknown(), 145);
        seen(&mut g, "v2", None, 150);
        assert!(g.open_window().is_some(), "still watching green");
        assert_eq!(
            rollback_target(&poll(&mut g, "v2", 160, BAD, FAST)),
            Some(("v1".into(), "error_rate".into(), true)),
            "retried as after any failure, announced anew"
        );
    }

    #[test]
    fn a_failed_rollback_may_be_retried() {
        let mut g = guard(false);
        cut_over(&mut g);
        poll(&mut g, "v2", 20, BAD, FAST);
        assert!(rollback_target(&poll(&mut g, "v2", 140, BAD, FAST)).is_some());
        let failed = Signal::Executed {
            version: "v2".into(),
            outcome: Outcome::Failed,
        };
        g.handle(failed, at(141));
        assert!(rollback_target(&poll(&mut g, "v2", 160, BAD, FAST)).is_some());
    }

    #[test]
    fn human_change_back_supersedes_and_patches_nothing() {
        let mut g = guard(false);
        cut_over(&mut g);
        let d = observe(&mut g, "v1", 30);
        assert!(matches!(&d[..], [Decision::Superseded { by, .. }] if by == "v1"));
        assert!(poll(&mut g, "v2", 200, BAD, FAST).is_empty());
        assert_eq!(g.window().unwrap().phase, Phase::Superseded);
    }

    #[test]
    fn b_then_c_keeps_the_last_proven_version_as_target() {
        let mut g = guard(false);
        cut_over(&mut g);
        let d = observe(&mut g, "v3", 40);
        assert!(matches!(&d[..], [Decision::Opened(p)] if p.version == "v3" && p.previous == "v1"));
        // but once v2 was declared stable, it is the target for v4... after its window: v3's here
        poll(&mut g, "v3", 350, OK, FAST);
        assert_eq!(g.window().unwrap().phase, Phase::Stable);
        let d = observe(&mut g, "v4", 360);
        assert!(matches!(&d[..], [Decision::Opened(p)] if p.previous == "v3"));
    }

    #[test]
    fn stabilization_needs_time_and_a_clean_poll_and_checks_go_on() {
        let mut g = guard(false);
        cut_over(&mut g);
        assert!(poll(&mut g, "v2", 200, OK, FAST).is_empty(), "too early");
        assert!(poll(&mut g, "v2", 310, BAD, FAST).is_empty(), "breached");
        assert!(
            poll(&mut g, "v2", 320, Err_, FAST).is_empty(),
            "no answer is not clean"
        );
        let d = poll(&mut g, "v2", 330, OK, FAST);
        assert!(matches!(&d[..], [Decision::Stable(p)] if p.phase == Phase::Stable));
        // the runbook rolls back for anything within the window, stable or not
        poll(&mut g, "v2", 400, BAD, FAST);
        assert!(rollback_target(&poll(&mut g, "v2", 520, BAD, FAST)).is_some());
    }

    #[test]
    fn a_poll_past_the_end_expires_an_unstable_window_and_just_closes_a_stable_one() {
        let mut g = guard(false);
        cut_over(&mut g);
        assert!(poll(&mut g, "v2", 480, BAD, FAST).is_empty());
        // Breached for 130 s, past `for`: but the window ended at 610, so it expires instead.
        let d = poll(&mut g, "v2", 610, BAD, FAST);
        assert!(matches!(&d[..], [Decision::Expired(p)] if p.phase == Phase::Expired));
        assert!(g.open_window().is_none());
        assert!(
            poll(&mut g, "v2", 620, BAD, FAST).is_empty(),
            "closed for good"
        );

        let mut g = guard(false);
        cut_over(&mut g);
        poll(&mut g, "v2", 320, OK, FAST);
        assert!(
            poll(&mut g, "v2", 610, OK, FAST).is_empty(),
            "a poll past the end closes it"
        );
        assert_eq!(g.window().unwrap().phase, Phase::Stable);
        assert!(g.open_window().is_none());
    }

    #[test]
    fn dry_run_records_would_roll_back_once_per_window() {
        let mut g = guard(true);
        cut_over(&mut g);
        poll(&mut g, "v2", 20, BAD, FAST);
        let d = poll(&mut g, "v2", 140, BAD, FAST);
        assert!(matches!(&d[..], [Decision::WouldRollBack { .. }]));
        assert!(poll(&mut g, "v2", 160, BAD, FAST).is_empty());
        assert!(rollback_target(&d).is_none());
        assert!(g.open_window().is_some(), "the window goes on");
    }

    #[test]
    fn alerts_act_only_on_the_green_version_and_only_after_the_cutover() {
        let cases = [
            (Some("v2"), None, true),
            (Some("v1"), None, false), // about blue
            (None, Some(5), false),    // predates the cutover at 10
            (None, Some(15), true),
            (Some("v2"), Some(5), true), // names green: acts
        ];
        for (version, starts, acts) in cases {
            let mut g = guard(false);
            let alert = Alert {
                alertname: "HighErrorRate".into(),
                severity: "critical".into(),
                version: version.map(Into::into),
                starts_at: starts.map(at),
            };
            assert!(
                g.handle(Signal::Alert(alert.clone()), at(1)).is_empty(),
                "no window"
            );
            cut_over(&mut g);
            let d = g.handle(Signal::Alert(alert), at(20));
            assert_eq!(
                rollback_target(&d).is_some(),
                acts,
                "{version:?} {starts:?}"
            );
        }
    }

    #[test]
    fn an_alert_rollback_names_the_severity_that_acted() {
        for severity in ["warning", "critical"] {
            let mut g = guard(false);
            cut_over(&mut g);
            let alert = Alert {
                alertname: "HighLatency".into(),
                severity: severity.into(),
                version: Some("v2".into()),
                starts_at: None,
            };
            let d = g.handle(Signal::Alert(alert), at(20));
            let Some(Decision::RollBack { state, trigger, .. }) = d.first() else {
                panic!("{severity}: no rollback: {d:?}");
            };
            let said = format!("{severity} alert HighLatency");
            assert_eq!(trigger.describe(), said);
            assert_eq!(state.reason, said, "the reason annotation");
            assert_eq!(
                trigger.label(),
                "alert",
                "the metric label names no severity"
            );
        }
    }

    fn persisted(version: &str, previous: &str, cutover: i64, phase: Phase) -> Persisted {
        Persisted {
            version: version.into(),
            previous: previous.into(),
            cutover_at: at(cutover),
            phase,
            reason: String::new(),
        }
    }

    #[test]
    fn a_restart_resumes_from_the_annotations() {
        use Phase::*;
        // (selector, persisted, now, expected decision kind, open window's target)
        let table: &[(&str, Persisted, i64, &str, Option<&str>)] = &[
            (
                "v2",
                persisted("v2", "v1", 0, Watching),
                100,
                "resumed",
                Some("v1"),
            ),
            (
                "v2",
                persisted("v2", "v1", 0, Stable),
                100,
                "resumed",
                Some("v1"),
            ),
            (
                "v2",
                persisted("v2", "v1", 0, Watching),
                700,
                "expired",
                None,
            ),
            ("v2", persisted("v2", "v1", 0, Stable), 700, "none", None),
            (
                "v1",
                persisted("v2", "v1", 0, Watching),
                100,
                "superseded",
                None,
            ),
            (
                "v1",
                persisted("v2", "v1", 0, RolledBack),
                100,
                "none",
                None,
            ),
            (
                "v3",
                persisted("v2", "v1", 0, Watching),
                100,
                "opened",
                Some("v1"),
            ),
            (
                "v3",
                persisted("v2", "v1", 0, Stable),
                700,
                "opened",
                Some("v2"),
            ),
            (
                "v3",
                persisted("v2", "v1", 0, RolledBack),
                100,
                "opened",
                Some("v1"),
            ),
            // The rolled-back green again within its window: a sync undoing the revert.
            (
                "v2",
                persisted("v2", "v1", 0, RolledBack),
                100,
                "overridden",
                None,
            ),
            // After the window: a human's new cutover to it.
            (
                "v2",
                persisted("v2", "v1", 0, RolledBack),
                700,
                "opened",
                Some("v1"),
            ),
        ];
        for (i, (selector, p, now, kind, target)) in table.iter().enumerate() {
            let mut g = guard(false);
            let d = g.handle(
                sight(selector, Some(p.clone()), None, None, false),
                at(*now),
            );
            let got = match d.first() {
                None => "none",
                Some(Decision::Resumed(_)) => "resumed",
                Some(Decision::Expired(_)) => "expired",
                Some(Decision::Superseded { .. }) => "superseded",
                Some(Decision::Opened(_)) => "opened",
                Some(Decision::RollbackOverridden { .. }) => "overridden",
                Some(other) => panic!("row {i}: {other:?}"),
            };
            assert_eq!(got, *kind, "row {i}");
            assert_eq!(
                g.open_window().map(|w| w.previous.as_str()),
                *target,
                "row {i}"
            );
        }
    }

    #[test]
    fn a_cutover_made_while_nobody_watched_opens_from_when_the_api_server_recorded_it() {
        use Phase::*;
        // (selector, record, baseline, changed_at, now, decision, window start and target)
        type Row<'a> = (
            &'a str,
            Option<Persisted>,
            Option<&'a str>,
            Option<i64>,
            i64,
            &'a str,
            Option<(i64, &'a str)>,
        );
        let table: &[Row] = &[
            ("v1", None, None, None, 300, "baseline v1", None),
            ("v1", None, Some("v1"), Some(100), 300, "none", None),
            (
                "v2",
                None,
                Some("v1"),
                Some(100),
                300,
                "opened",
                Some((100, "v1")),
            ),
            // Longer than the window ago: on the record, not watched.
            ("v2", None, Some("v1"), Some(100), 700, "missed", None),
            // The server gave no time: the clock starts now.
            (
                "v2",
                None,
                Some("v1"),
                None,
                300,
                "opened",
                Some((300, "v1")),
            ),
            // A server clock ahead of ours is no later than now.
            (
                "v2",
                None,
                Some("v1"),
                Some(400),
                300,
                "opened",
                Some((300, "v1")),
            ),
            (
                "v3",
                Some(persisted("v2", "v1", 0, Stable)),
                Some("v2"),
                Some(650),
                700,
                "opened",
                Some((650, "v2")),
            ),
            (
                "v2",
                Some(persisted("v2", "v1", 0, RolledBack)),
                Some("v1"),
                Some(50),
                700,
                "missed",
                None,
            ),
            (
                "v2",
                Some(persisted("v2", "v1", 0, Missed)),
                Some("v2"),
                Some(0),
                900,
                "none",
                None,
            ),
        ];
        for (i, (selector, p, baseline, changed_at, now, kind, window)) in table.iter().enumerate()
        {
            let mut g = guard(false);
            let d = g.handle(
                sight(selector, p.clone(), *baseline, *changed_at, false),
                at(*now),
            );
            let got = match d.as_slice() {
                [] => "none".to_owned(),
                [Decision::Baseline { version, .. }] => format!("baseline {version}"),
                [Decision::Opened(_)] => "opened".to_owned(),
                [Decision::Missed(m)] => {
                    assert_eq!(m.phase, Missed, "row {i}");
                    assert_eq!(m.cutover_at, at(changed_at.unwrap_or_default()), "row {i}");
                    assert!(
                        m.reason.contains("while no watchdog was watching"),
                        "row {i}"
                    );
                    "missed".to_owned()
                }
                other => panic!("row {i}: {other:?}"),
            };
            assert_eq!(got, *kind, "row {i}");
            let open = g.open_window().map(|w| (w.opened_at, w.previous.as_str()));
            assert_eq!(open, window.map(|(t, target)| (at(t), target)), "row {i}");
        }
    }

    #[test]
    fn a_dry_run_guard_writes_no_baseline_and_a_failed_baseline_is_tried_again() {
        let mut dry = guard(true);
        assert!(
            dry.handle(sight("v1", None, None, None, false), at(0))
                .is_empty()
        );
        let mut g = guard(false);
        let first = g.handle(sight("v1", None, None, None, false), at(0));
        assert!(matches!(&first[..], [Decision::Baseline { .. }]));
        // The write did not land (the Service moved on); the next sight asks again.
        let again = g.handle(sight("v1", None, None, None, false), at(5));
        assert!(matches!(&again[..], [Decision::Baseline { .. }]));
        assert!(
            g.handle(sight("v1", None, Some("v1"), None, false), at(6))
                .is_empty()
        );
    }

    #[test]
    fn only_a_late_sight_takes_the_api_servers_time_for_the_cutover() {
        // Live: the watch saw it happen; the clock starts when it was seen.
        let mut live = guard(false);
        observe(&mut live, "v1", 0);
        live.handle(sight("v2", None, Some("v1"), Some(20), false), at(30));
        assert_eq!(live.open_window().unwrap().opened_at, at(30));
        // After a re-list the change may be older than the watch's gap.
        let mut relisted = guard(false);
        observe(&mut relisted, "v1", 0);
        let d = relisted.handle(sight("v2", None, Some("v1"), Some(20), true), at(30));
        assert!(
            matches!(&d[..], [Decision::Opened(p)] if p.cutover_at == at(20)),
            "{d:?}"
        );
    }

    #[test]
    fn a_cutover_written_with_its_record_is_adopted_with_its_clock() {
        let mut g = guard(false);
        observe(&mut g, "v1", 0);
        let mut record = persisted("v2", "v1", 95, Phase::Watching);
        record.reason = "cutover from v1 to v2 by cutover-watchdog cutover".into();
        let d = g.handle(
            sight("v2", Some(record.clone()), Some("v1"), None, false),
            at(100),
        );
        assert!(
            matches!(&d[..], [Decision::Opened(p)] if *p == record),
            "{d:?}"
        );
        assert_eq!(g.open_window().unwrap().ends_at, at(695));
        // A record for another switch (from another version) is not this window's.
        let mut g = guard(false);
        observe(&mut g, "v1", 0);
        let other = persisted("v2", "v0", 95, Phase::Watching);
        let d = g.handle(sight("v2", Some(other), Some("v1"), None, false), at(100));
        assert!(
            matches!(&d[..], [Decision::Opened(p)] if p.cutover_at == at(100) && p.previous == "v1"),
            "{d:?}"
        );
    }

    #[test]
    fn blue_below_min_ready_is_announced_once_until_it_is_back() {
        let mut g = guard(false);
        cut_over(&mut g);
        let poll_with = |g: &mut Guard, t: i64, ready: Option<u32>| {
            g.handle(
                Signal::Polled {
                    version: "v2".into(),
                    samples: vec![OK, FAST],
                    at: at(t),
                    previous_ready: ready,
                    traffic: None,
                },
                at(t),
            )
        };
        let short = |d: &[Decision]| {
            d.iter()
                .filter(|d| {
                    matches!(
                        d,
                        Decision::PreviousScaledDown {
                            ready: 0,
                            min: 1,
                            ..
                        }
                    )
                })
                .count()
        };
        assert_eq!(short(&poll_with(&mut g, 20, Some(2))), 0);
        assert_eq!(short(&poll_with(&mut g, 30, Some(0))), 1);
        assert_eq!(
            short(&poll_with(&mut g, 40, Some(0))),
            0,
            "once per episode"
        );
        assert_eq!(
            short(&poll_with(&mut g, 50, None)),
            0,
            "not counted says nothing"
        );
        assert_eq!(short(&poll_with(&mut g, 60, Some(1))), 0);
        assert_eq!(short(&poll_with(&mut g, 70, Some(0))), 1, "a new episode");
        // With no open window, there is no rollback target to keep.
        let mut idle = guard(false);
        observe(&mut idle, "v1", 0);
        assert_eq!(short(&poll_with(&mut idle, 10, Some(0))), 0);
    }

    fn traffic_guard(rollback: bool) -> Guard {
        let mut policy = guard(false).policy().clone();
        policy.traffic = Some(TrafficPolicy {
            min_share: 0.95,
            within: Duration::from_mins(2),
            volume_drop: 0.5,
            rollback,
        });
        Guard::new(policy)
    }

    /// A clean poll at `t` with these request rates.
    fn rates(g: &mut Guard, t: i64, green: f64, blue: f64) -> Vec<Decision> {
        g.handle(
            Signal::Polled {
                version: "v2".into(),
                samples: vec![OK, FAST],
                at: at(t),
                previous_ready: None,
                traffic: Some(Rates {
                    green: Some(green),
                    blue: Some(blue),
                }),
            },
            at(t),
        )
    }

    fn traffic_failures(d: &[Decision]) -> Vec<TrafficKind> {
        d.iter()
            .filter_map(|d| match d {
                Decision::TrafficFailed { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn traffic_that_moves_to_green_passes_and_a_partial_switch_warns_once_at_within() {
        let mut g = traffic_guard(false);
        cut_over(&mut g); // at 10 s
        assert!(traffic_failures(&rates(&mut g, 20, 60.0, 100.0)).is_empty());
        assert!(traffic_failures(&rates(&mut g, 60, 97.0, 3.0)).is_empty());
        assert_eq!(g.window().unwrap().traffic.switched, Some(true));
        assert!(traffic_failures(&rates(&mut g, 200, 97.0, 3.0)).is_empty());

        // Blue keeps 40%: at cutover + 2m, TrafficNotSwitched, once; no rollback under `warn`.
        let mut g = traffic_guard(false);
        cut_over(&mut g);
        assert!(traffic_failures(&rates(&mut g, 20, 60.0, 40.0)).is_empty());
        let d = rates(&mut g, 130, 60.0, 40.0);
        assert_eq!(traffic_failures(&d), [TrafficKind::NotSwitched]);
        assert!(!d.iter().any(|d| matches!(d, Decision::RollBack { .. })));
        let Some(Decision::TrafficFailed { detail, .. }) = d.first() else {
            panic!("{d:?}");
        };
        assert!(
            detail.contains("v2's share of traffic 0.60 after 2m, below min_share 0.95"),
            "{detail}"
        );
        assert!(
            traffic_failures(&rates(&mut g, 140, 60.0, 40.0)).is_empty(),
            "once"
        );
    }

    #[test]
    fn a_drop_in_volume_warns_and_action_rollback_rolls_back_with_trigger_traffic() {
        let mut g = traffic_guard(true);
        cut_over(&mut g);
        // Blue carried 100/s before the switch; green carries 30/s, all of the traffic.
        assert!(traffic_failures(&rates(&mut g, 20, 0.0, 100.0)).is_empty());
        let d = rates(&mut g, 130, 30.0, 0.0);
        assert_eq!(traffic_failures(&d), [TrafficKind::VolumeDropped]);
        let rollback = d.iter().find_map(|d| match d {
            Decision::RollBack { trigger, .. } => Some(trigger.clone()),
            _ => None,
        });
        let trigger = rollback.expect("action: rollback");
        assert_eq!(trigger.label(), "traffic");
        assert!(
            trigger.describe().contains("70% below v1's 100.00/s"),
            "{}",
            trigger.describe()
        );
    }

    #[test]
    fn after_our_rollback_blue_must_get_its_traffic_back_within_within() {
        let mut g = traffic_guard(false);
        rolled_back_by_alert(&mut g);
        assert!(g.polled_window().is_some(), "still polled for traffic");
        assert!(traffic_failures(&rates(&mut g, 30, 60.0, 40.0)).is_empty());
        let d = rates(&mut g, 160, 60.0, 40.0);
        assert_eq!(traffic_failures(&d), [TrafficKind::NotRestored]);
        assert!(g.polled_window().is_none(), "decided: no more polls");

        let mut g = traffic_guard(false);
        rolled_back_by_alert(&mut g);
        assert!(traffic_failures(&rates(&mut g, 30, 2.0, 98.0)).is_empty());
        assert_eq!(g.window().unwrap().traffic.restored, Some(true));
        assert!(g.polled_window().is_none());
    }

    #[test]
    fn a_sync_that_undoes_a_rollback_is_named_and_not_reverted_again() {
        let by = |manager: &str, version: &str| {
            written_by(sight(version, None, Some("v1"), None, false), manager)
        };
        let mut g = guard(false);
        rolled_back_by_alert(&mut g); // v2 at 10 s, window to 610 s
        // Argo CD syncs the selector back to v2.
        let d = g.handle(by("argocd-controller", "v2"), at(60));
        assert!(
            matches!(&d[..], [Decision::RollbackOverridden { by: Some(m), state }] if m == "argocd-controller" && state.version == "v2"),
            "{d:?}"
        );
        assert!(g.open_window().is_none(), "no new window: no second revert");
        // A change to another version is a new cutover, whose target is still blue.
        let d = g.handle(by("kubectl-patch", "v3"), at(70));
        assert!(
            matches!(&d[..], [Decision::Opened(p)] if p.previous == "v1"),
            "{d:?}"
        );

        // After the window's end, the same green again is a cutover.
        let mut g = guard(false);
        rolled_back_by_alert(&mut g);
        let d = g.handle(by("kubectl-patch", "v2"), at(700));
        assert!(matches!(&d[..], [Decision::Opened(_)]), "{d:?}");

        // Seen at start-up: a rolled-back record, the selector on green within the window.
        let mut g = guard(false);
        let record = persisted("v2", "v1", 0, Phase::RolledBack);
        let seen = sight("v2", Some(record), Some("v1"), Some(100), false);
        let d = g.handle(written_by(seen, "kustomize-controller"), at(300));
        assert!(
            matches!(&d[..], [Decision::RollbackOverridden { by: Some(m), .. }] if m == "kustomize-controller"),
            "{d:?}"
        );
        let d = g.handle(by("kubectl-patch", "v3"), at(310));
        assert!(
            matches!(&d[..], [Decision::Opened(p)] if p.previous == "v1"),
            "{d:?}"
        );
    }

    #[test]
    fn review_fixes_adoption_in_a_window_restart_after_override_and_a_revert_while_away() {
        // `cutover` from a stable window's green to the next: its clock is kept.
        let mut g = guard(false);
        cut_over(&mut g);
        let mut record = persisted("v3", "v2", 395, Phase::Watching);
        record.reason = "cutover from v2 to v3 by cutover-watchdog cutover".into();
        let d = g.handle(sight("v3", Some(record), Some("v1"), None, false), at(400));
        assert!(
            matches!(&d[..], [Decision::Opened(p)] if p.cutover_at == at(395)),
            "{d:?}"
        );

        // A restart after an override: nothing new, not a cutover.
        let mut g = guard(false);
        let d = g.handle(
            sight(
                "v2",
                Some(persisted("v2", "v1", 0, Phase::Overridden)),
                Some("v2"),
                Some(100),
                false,
            ),
            at(300),
        );
        assert!(d.is_empty(), "{d:?}");

        // Stable on v2, then back on v1 while nobody watched: a cutover to v1.
        let mut g = guard(false);
        let d = g.handle(
            sight(
                "v1",
                Some(persisted("v2", "v1", 0, Phase::Stable)),
                Some("v2"),
                Some(800),
                false,
            ),
            at(900),
        );
        assert!(
            matches!(&d[..], [Decision::Opened(p)] if p.version == "v1" && p.previous == "v2"),
            "{d:?}"
        );
        // Rolled back to v1, still on v1: nothing.
        let mut g = guard(false);
        let d = g.handle(
            sight(
                "v1",
                Some(persisted("v2", "v1", 0, Phase::RolledBack)),
                Some("v1"),
                None,
                false,
            ),
            at(900),
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn a_resumed_window_keeps_its_original_clock() {
        let mut g = guard(false);
        let p = persisted("v2", "v1", 0, Phase::Watching);
        g.handle(sight("v2", Some(p), None, None, false), at(100));
        assert_eq!(g.open_window().unwrap().ends_at, at(600));
        assert!(
            poll(&mut g, "v2", 310, OK, FAST).len() == 1,
            "stable at cutover + 5m"
        );
    }

    #[test]
    fn stale_polls_and_outcomes_for_another_window_are_ignored() {
        let mut g = guard(false);
        cut_over(&mut g);
        observe(&mut g, "v3", 20);
        poll(&mut g, "v2", 30, BAD, FAST);
        assert!(rollback_target(&poll(&mut g, "v2", 200, BAD, FAST)).is_none());
        let late = Signal::Executed {
            version: "v2".into(),
            outcome: Outcome::RolledBack,
        };
        g.handle(late, at(201));
        assert_eq!(g.open_window().unwrap().version, "v3");
    }
}
