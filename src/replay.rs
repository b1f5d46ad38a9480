//! `cutover-watchdog replay`: what the watchdog would have decided over a past cutover's window,
//! from the history Prometheus keeps.
//!
//! [`fetch`] reads each check over `[T, T + window]` with `query_range`; [`replay`] feeds those
//! samples, in time order, to the very decision core `serve` runs ([`crate::decision::Guard`]),
//! with no IO in between, and keeps the timeline, up to the window's end or now. A step where a
//! range query has no point is no data, as a poll that finds none is. [`find`] reads the past
//! windows from the watchdog's own record, and the version changes a user's expression marks.
//! What it cannot replay, it says: alerts (Alertmanager's history is not Prometheus's), `http`
//! checks (a past endpoint cannot be asked), traffic checks (not part of a check's `for`), and
//! blue's Ready Pods (each rollback is taken to land).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::config::{GuardConfig, NoDataPolicy, Probe, Threshold};
use crate::decision::{Decision, Guard, Outcome, Policy, Sample, Signal};
use crate::error::{Error, Result};
use crate::promql::{Prometheus, Series};

/// The cutover to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Cutover {
    pub at: Timestamp,
    pub version: String,
    pub previous: String,
    pub found_by: FoundBy,
}

/// Where a cutover to replay comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// `--cutover-at`.
    Given,
    /// A window in the watchdog's own record, `cutover_watchdog_window_info`.
    Recorded,
    /// A change of version the `--version-changes` expression marks.
    Marked,
}

impl FoundBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Given => "given",
            Self::Recorded => "recorded",
            Self::Marked => "marked",
        }
    }
}

/// One check's history: its series' values at each step, by Unix milliseconds.
pub type History = BTreeMap<i64, Vec<f64>>;

/// One poll of the replay.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub at: Timestamp,
    pub offset_seconds: f64,
    /// Each replayed check's value (`None`: no data), in order; in JSON, an infinity is
    /// `"+Inf"` or `"-Inf"`, as Prometheus writes it, not a `null` that would read as no data.
    #[serde(serialize_with = "values_json")]
    pub values: Vec<Option<f64>>,
    pub breached: Vec<bool>,
}

fn values_json<S: serde::Serializer>(
    values: &[Option<f64>],
    out: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    let mut seq = out.serialize_seq(Some(values.len()))?;
    for v in values {
        match v {
            Some(v) if v.is_infinite() => {
                seq.serialize_element(if *v > 0.0 { "+Inf" } else { "-Inf" })?;
            }
            v => seq.serialize_element(v)?,
        }
    }
    seq.end()
}

/// A decision the core made, and when.
#[derive(Debug, Clone, Serialize)]
pub struct Moment {
    pub at: Timestamp,
    pub offset_seconds: f64,
    pub kind: &'static str,
    pub reason: String,
}

/// A run of breached polls of one check: when its `for` started, when it would trip, and how
/// the run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    pub check: String,
    pub since: Timestamp,
    pub since_offset_seconds: f64,
    /// `since` plus the check's `for`.
    pub trips_at: Timestamp,
    pub trips_offset_seconds: f64,
    /// It was still breached at `trips_at`: its `for` ran out.
    pub tripped: bool,
    /// The first poll it was no longer breached, if the window got that far.
    pub cleared_at: Option<Timestamp>,
}

/// The breaches of a replay so far, and which one each check is in.
struct Breaches {
    fors: Vec<(String, Duration)>,
    current: Vec<Option<usize>>,
    list: Vec<Breach>,
}

impl Breaches {
    fn new(guard: &GuardConfig) -> Self {
        let fors: Vec<_> = guard
            .checks
            .iter()
            .map(|c| (c.name.clone(), c.for_))
            .collect();
        Self {
            current: vec![None; fors.len()],
            fors,
            list: Vec::new(),
        }
    }

    /// The core's checks after the poll at `at`.
    fn observe(&mut self, core: &Guard, cutover: Timestamp, at: Timestamp) {
        let Some(window) = core.window() else { return };
        for (i, track) in window.checks.iter().enumerate() {
            let (Some(current), Some((name, for_))) = (self.current.get_mut(i), self.fors.get(i))
            else {
                continue;
            };
            match (track.breached, *current) {
                (true, None) => {
                    let since = track.breach_since.unwrap_or(at);
                    let trips_at = after(since, *for_);
                    *current = Some(self.list.len());
                    self.list.push(Breach {
                        check: name.clone(),
                        since,
                        since_offset_seconds: offset(cutover, since),
                        trips_at,
                        trips_offset_seconds: offset(cutover, trips_at),
                        tripped: false,
                        cleared_at: None,
                    });
                }
                (false, Some(open)) => {
                    if let Some(b) = self.list.get_mut(open) {
                        b.cleared_at = Some(at);
                    }
                    *current = None;
                }
                _ => {}
            }
            if let Some(b) = current.and_then(|open| self.list.get_mut(open)) {
                b.tripped |= at >= b.trips_at;
            }
        }
    }
}

/// How the window would have ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum End {
    RolledBack {
        at: Timestamp,
        offset_seconds: f64,
        trigger: String,
    },
    Stable {
        at: Timestamp,
        offset_seconds: f64,
    },
    Expired {
        at: Timestamp,
        offset_seconds: f64,
    },
    /// The window had not ended at the replay: its last step so far, and when it was declared
    /// stable, if it was (a check can still roll it back).
    InProgress {
        at: Timestamp,
        offset_seconds: f64,
        stable_at: Option<Timestamp>,
    },
}

/// The replay of one cutover.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub guard: String,
    pub cutover_at: Timestamp,
    pub version: String,
    pub previous: String,
    pub found_by: FoundBy,
    pub step_seconds: f64,
    /// The replayed checks, in the order of each step's values.
    pub checks: Vec<String>,
    pub steps: Vec<Step>,
    /// Each check's runs of breached polls.
    pub breaches: Vec<Breach>,
    pub decisions: Vec<Moment>,
    pub outcome: End,
    /// What a replay cannot show, said plainly.
    pub not_replayed: Vec<String>,
}

/// A `--set checks.<name>.<field>=<value>` change to try.
pub fn apply_set(guard: &mut GuardConfig, set: &str) -> Result<()> {
    let usage = |why: &str| Error::Usage(format!("--set {set}: {why}"));
    let (path, value) = set
        .split_once('=')
        .ok_or_else(|| usage("expected checks.<name>.<field>=<value>"))?;
    let rest = path
        .strip_prefix("checks.")
        .ok_or_else(|| usage("only checks.<name>.<field> can be set"))?;
    // The last segment is the field: check names may hold dots.
    let (name, field) = rest
        .rsplit_once('.')
        .ok_or_else(|| usage("expected checks.<name>.<field>=<value>"))?;
    let check = guard
        .checks
        .iter_mut()
        .find(|c| c.name == name)
        .ok_or_else(|| usage(&format!("the guard has no check {name:?}")))?;
    let number = || {
        value
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| usage(&format!("{value:?} is not a finite number")))
    };
    match (field, check.threshold) {
        ("above", Threshold::Above(_)) => check.threshold = Threshold::Above(number()?),
        ("below", Threshold::Below(_)) => check.threshold = Threshold::Below(number()?),
        ("above" | "below", _) => {
            return Err(usage(&format!(
                "check {name} is `{}`: switching `above` and `below` is not a threshold change",
                check.threshold
            )));
        }
        ("for", _) => {
            check.for_ = humantime::parse_duration(value)
                .map_err(|e| usage(&format!("{value:?} is not a duration: {e}")))?;
        }
        ("on_no_data", _) => {
            check.on_no_data = match value {
                "ignore" => NoDataPolicy::Ignore,
                "breach" => NoDataPolicy::Breach,
                _ => return Err(usage("on_no_data is `ignore` or `breach`")),
            };
        }
        _ => {
            return Err(usage(&format!(
                "{field:?} is not one of above, below, for, on_no_data"
            )));
        }
    }
    Ok(())
}

/// The checks a replay can run: the PromQL ones.
fn replayable(guard: &GuardConfig) -> GuardConfig {
    let mut guard = guard.clone();
    guard.checks.retain(|c| matches!(c.probe, Probe::Query(_)));
    guard
}

/// What a replay of `guard` leaves out.
fn left_out(guard: &GuardConfig) -> Vec<String> {
    let mut out = Vec::new();
    if guard.alerts.is_some() {
        out.push("alerts: Alertmanager's history is not in Prometheus".to_owned());
    }
    if guard.min_ready_previous > 0 {
        out.push(format!(
            "min_ready_previous: blue's Ready Pods then are not in this history; each rollback is \
             taken to land (serve refuses one onto fewer than {})",
            guard.min_ready_previous
        ));
    }
    for c in &guard.checks {
        if matches!(c.probe, Probe::Http(_)) {
            out.push(format!(
                "http check {}: a past endpoint cannot be asked",
                c.name
            ));
        }
    }
    if guard.traffic.is_some() {
        out.push("traffic: not a check's `for`; replay shows the checks only".to_owned());
    }
    out
}

/// The cutovers of `guard` whose windows opened in `span`: the windows the watchdog recorded
/// ([`windows`]) and, with `changes` (a PromQL expression), the version changes it marks that
/// no recorded window explains ([`marked`], [`merge`]).
pub async fn find(
    prometheus: &Prometheus,
    guard: &GuardConfig,
    span: (Timestamp, Timestamp),
    step: Duration,
    changes: Option<&str>,
) -> Result<Vec<Cutover>> {
    let escaped = guard.name.replace('\\', "\\\\").replace('"', "\\\"");
    // Each window open in the record, valued at its cutover. One series per window whatever
    // replica exported it: a failover changes `instance`, not the cutover.
    let by = "max by (version, previous_version)";
    let query = format!(
        "{by} (cutover_watchdog_window_start_time_seconds{{guard=\"{escaped}\"}}) \
         and on (version, previous_version) \
         {by} (cutover_watchdog_window_info{{guard=\"{escaped}\"}} == 1)"
    );
    let (series, step) = history(prometheus, &query, span, step)
        .await
        .map_err(|e| Error::Unusable(format!("finding past windows failed: {e}")))?;
    let recorded = windows(&series, span)?;
    let Some(changes) = changes else {
        return Ok(recorded);
    };
    let (series, step) = history(prometheus, changes, span, step)
        .await
        .map_err(|e| Error::Unusable(format!("--version-changes query failed: {e}")))?;
    if series.is_empty() {
        tracing::warn!(
            "the --version-changes expression has no series over the span: it marks no cutover"
        );
    }
    Ok(merge(recorded, marked(&series)?, guard.window, step))
}

/// `query` over `span` at `step`, or coarser where Prometheus's limit of 11,000 points per
/// series needs it; with the step taken.
async fn history(
    prometheus: &Prometheus,
    query: &str,
    (from, to): (Timestamp, Timestamp),
    step: Duration,
) -> crate::promql::QueryResult<(Vec<Series>, Duration)> {
    let span = to.duration_since(from).as_secs_f64().max(0.0);
    let step = step.max(Duration::from_secs_f64(span / 10_000.0));
    Ok((prometheus.range(query, (from, to), step).await?, step))
}

/// A point's time (Unix seconds) as a timestamp, to the millisecond.
fn at_seconds(t: f64) -> Result<Timestamp> {
    #[allow(clippy::cast_possible_truncation)] // Unix seconds, far from i64's range
    Timestamp::from_millisecond((t * 1000.0).round() as i64)
        .map_err(|e| Error::Unusable(format!("a point at {t}: {e}")))
}

/// The windows in the record whose cutover is in `span`: each distinct start time of a pair of
/// versions is one window, however many points it has, and however a restart cut its run.
fn windows(series: &[Series], (from, to): (Timestamp, Timestamp)) -> Result<Vec<Cutover>> {
    let mut found = Vec::new();
    for (labels, points) in series {
        let (Some(version), Some(previous)) =
            (labels.get("version"), labels.get("previous_version"))
        else {
            continue;
        };
        for &(_, start) in points {
            let at = at_seconds(start)?;
            let seen = found
                .iter()
                .any(|c: &Cutover| c.at == at && c.version == *version);
            if !seen && (from..=to).contains(&at) {
                found.push(Cutover {
                    at,
                    version: version.clone(),
                    previous: previous.clone(),
                    found_by: FoundBy::Recorded,
                });
            }
        }
    }
    found.sort_by_key(|c| c.at);
    Ok(found)
}

/// The version changes a `--version-changes` expression marks. At each step, the version
/// serving is the series (by its `version` label) with the highest value; a tie, or no series,
/// says nothing. A version that serves at two known steps in a row, after another, is a cutover
/// from that one, at the first of them: one step's gap or dip in a series is not two cutovers.
fn marked(series: &[Series]) -> Result<Vec<Cutover>> {
    if !series.is_empty()
        && series
            .iter()
            .all(|(labels, _)| !labels.contains_key("version"))
    {
        return Err(Error::Usage(
            "the --version-changes expression's series carry no `version` label; aggregate \
             `by (version)`, or label_replace the label your versions are in"
                .into(),
        ));
    }
    // Per step (Unix milliseconds): the highest value, and its version, if only one has it.
    let mut serving: BTreeMap<i64, (f64, Option<&str>)> = BTreeMap::new();
    for (labels, points) in series {
        let Some(version) = labels.get("version") else {
            continue;
        };
        for &(t, v) in points {
            if v.is_nan() {
                continue;
            }
            #[allow(clippy::cast_possible_truncation)] // Unix seconds, far from i64's range
            let at = (t * 1000.0).round() as i64;
            let best = serving.entry(at).or_insert((v, Some(version.as_str())));
            #[allow(clippy::float_cmp)] // a tie is exactly equal values, 0.0 and -0.0 too
            if v > best.0 {
                *best = (v, Some(version.as_str()));
            } else if v == best.0 && best.1 != Some(version.as_str()) {
                best.1 = None;
            }
        }
    }
    let known = serving
        .into_iter()
        .filter_map(|(at, (_, version))| Some((at, version?)));
    let mut found = Vec::new();
    // The version serving, and a change to another seen at one step, waiting for a second.
    let mut last: Option<&str> = None;
    let mut pending: Option<(i64, &str)> = None;
    for (at, version) in known {
        match (last, pending) {
            (None, _) => last = Some(version),
            (Some(l), _) if l == version => pending = None,
            (Some(l), Some((since, p))) if p == version => {
                found.push(Cutover {
                    at: Timestamp::from_millisecond(since)
                        .map_err(|e| Error::Unusable(format!("a point at {since} ms: {e}")))?,
                    version: version.to_owned(),
                    previous: l.to_owned(),
                    found_by: FoundBy::Marked,
                });
                last = Some(version);
                pending = None;
            }
            (Some(_), _) => pending = Some((at, version)),
        }
    }
    Ok(found)
}

/// `recorded` windows, and the `marked` changes none of them explains, in time order. A
/// recorded window explains a change between its two versions from its cutover (less two
/// steps: the expression is read at `step`) to its end (plus two): its own cutover, seen late
/// by the expression, or its rollback.
fn merge(
    recorded: Vec<Cutover>,
    marked: Vec<Cutover>,
    window: Duration,
    step: Duration,
) -> Vec<Cutover> {
    let slack = SignedDuration::try_from(step * 2).unwrap_or(SignedDuration::MAX);
    let explains = |r: &Cutover, m: &Cutover| {
        let same_pair = (r.version == m.version && r.previous == m.previous)
            || (r.version == m.previous && r.previous == m.version);
        same_pair
            && m.at >= r.at.saturating_sub(slack).unwrap_or(r.at)
            && m.at <= after(r.at, window).saturating_add(slack).unwrap_or(r.at)
    };
    let unexplained: Vec<Cutover> = marked
        .into_iter()
        .filter(|m| !recorded.iter().any(|r| explains(r, m)))
        .collect();
    let mut all = recorded;
    all.extend(unexplained);
    all.sort_by_key(|c| c.at);
    all
}

/// One line per replayed cutover: when, which versions, how it would have ended, and why.
#[must_use]
pub fn summary(timelines: &[Timeline]) -> String {
    let mut out = format!(
        "{:<25}  {:<10}  {:<10}  {:<8}  {:<18}  {}\n",
        "cutover", "from", "to", "found", "outcome", "first trigger"
    );
    for t in timelines {
        let (outcome, trigger) = match &t.outcome {
            End::RolledBack {
                offset_seconds,
                trigger,
                ..
            } => (
                format!("rolled back +{offset_seconds:.0}s"),
                trigger.clone(),
            ),
            End::Stable { .. } => ("stable".to_owned(), "-".to_owned()),
            End::Expired { .. } => ("expired".to_owned(), "-".to_owned()),
            End::InProgress { .. } => ("in progress".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "{:<25}  {:<10}  {:<10}  {:<8}  {:<18}  {trigger}",
            t.cutover_at.to_string(),
            t.previous,
            t.version,
            t.found_by.as_str(),
            outcome
        );
    }
    out
}

/// Reads each PromQL check of `guard` over the window of `cutover`, at `step`.
pub async fn fetch(
    prometheus: &Prometheus,
    guard: &GuardConfig,
    cutover: &Cutover,
    step: Duration,
) -> Result<Vec<History>> {
    let end = after(cutover.at, guard.window);
    let mut histories = Vec::new();
    for check in &replayable(guard).checks {
        let Probe::Query(query) = &check.probe else {
            continue;
        };
        let query = query
            .render(&cutover.version, &cutover.previous)
            .map_err(|e| Error::Usage(format!("check {}: {e}", check.name)))?;
        let series = prometheus
            .range(&query, (cutover.at, end), step)
            .await
            .map_err(|e| {
                Error::Unusable(format!("check {}: query_range failed: {e}", check.name))
            })?;
        let mut history = History::new();
        for (t, v) in series.into_iter().flat_map(|(_, points)| points) {
            #[allow(clippy::cast_possible_truncation)] // Unix seconds, far from i64's range
            let ms = (t * 1000.0).round() as i64;
            history.entry(ms).or_default().push(v);
        }
        histories.push(history);
    }
    Ok(histories)
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

fn offset(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64()
}

/// The replay: `histories` (one per PromQL check of `guard`, in order) fed step by step to the
/// decision core, as `serve` would have polled them, up to the window's end or `now`, whichever
/// comes first: Prometheus would answer a later step from its lookback, as if the last sample
/// held, and that is not history.
#[must_use]
pub fn replay(
    guard: &GuardConfig,
    cutover: &Cutover,
    step: Duration,
    histories: &[History],
    now: Timestamp,
) -> Timeline {
    let replayed = replayable(guard);
    let mut policy = Policy::from(&replayed);
    // What it would have done, whether or not the guard is a dry run.
    policy.dry_run = false;
    policy.traffic = None;
    let mut core = Guard::new(policy);
    let observed = |version: &str| Signal::Observed {
        version: Some(version.to_owned()),
        persisted: None,
        resource_version: None,
        baseline: Some(cutover.previous.clone()),
        changed_at: None,
        relisted: false,
        changed_by: None,
    };
    let before = cutover.at - SignedDuration::from_millis(1);
    core.handle(observed(&cutover.previous), before);
    let mut decisions = Vec::new();
    let moment = |at: Timestamp, d: &Decision| {
        let (kind, reason) = describe(d);
        Moment {
            at,
            offset_seconds: offset(cutover.at, at),
            kind,
            reason,
        }
    };
    for d in core.handle(observed(&cutover.version), cutover.at) {
        decisions.push(moment(cutover.at, &d));
    }
    let mut steps = Vec::new();
    let mut breaches = Breaches::new(&replayed);
    let mut stable = None;
    let end = after(cutover.at, guard.window);
    let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX).max(1);
    let mut at = cutover.at;
    let outcome = loop {
        let key = at.as_millisecond();
        let samples: Vec<Sample> = replayed
            .checks
            .iter()
            .zip(histories)
            .map(|(c, h)| {
                Sample::from_values(h.get(&key).map_or(&[][..], Vec::as_slice), c.threshold)
            })
            .collect();
        let (step, made) = poll(&mut core, cutover, samples, at);
        // A poll at or after the window's end closes it unevaluated, in `serve` too.
        let evaluated = core.open_window().is_some()
            || made.iter().any(|d| matches!(d, Decision::RollBack { .. }));
        if evaluated {
            steps.push(step);
            breaches.observe(&core, cutover.at, at);
        }
        let mut ended = None;
        for d in &made {
            decisions.push(moment(at, d));
            ended = ended.or_else(|| settle(&mut core, cutover, d, at, &mut stable));
        }
        if let Some(ended) = ended {
            break ended;
        }
        if at >= end || core.open_window().is_none() {
            let (at, stable) = stable.map_or((at, false), |s| (s, true));
            let offset_seconds = offset(cutover.at, at);
            break if stable {
                End::Stable { at, offset_seconds }
            } else {
                End::Expired { at, offset_seconds }
            };
        }
        let next = Timestamp::from_millisecond(key.saturating_add(step_ms)).unwrap_or(end);
        if next > now {
            break End::InProgress {
                at,
                offset_seconds: offset(cutover.at, at),
                stable_at: stable,
            };
        }
        at = next;
    };
    Timeline {
        guard: guard.name.clone(),
        cutover_at: cutover.at,
        version: cutover.version.clone(),
        previous: cutover.previous.clone(),
        found_by: cutover.found_by,
        step_seconds: step.as_secs_f64(),
        checks: replayed.checks.iter().map(|c| c.name.clone()).collect(),
        steps,
        breaches: breaches.list,
        decisions,
        outcome,
        not_replayed: left_out(guard),
    }
}

/// One poll of the core at `at` with `samples`: the step as status shows it, and what the core
/// decided.
fn poll(
    core: &mut Guard,
    cutover: &Cutover,
    samples: Vec<Sample>,
    at: Timestamp,
) -> (Step, Vec<Decision>) {
    let values = samples
        .iter()
        .map(|s| match s {
            Sample::Value(v) => Some(*v),
            Sample::NoData | Sample::Error => None,
        })
        .collect();
    let polled = Signal::Polled {
        version: cutover.version.clone(),
        samples,
        at,
        previous_ready: None,
        traffic: None,
    };
    let made = core.handle(polled, at);
    let breached = core
        .window()
        .map(|w| w.checks.iter().map(|t| t.breached).collect())
        .unwrap_or_default();
    let step = Step {
        at,
        offset_seconds: offset(cutover.at, at),
        values,
        breached,
    };
    (step, made)
}

/// What decision `d` at `at` means for the window's end. A rollback is answered as the executor
/// would have (landed), so the core closes the window; a stable window goes on to its end.
fn settle(
    core: &mut Guard,
    cutover: &Cutover,
    d: &Decision,
    at: Timestamp,
    stable: &mut Option<Timestamp>,
) -> Option<End> {
    let offset_seconds = offset(cutover.at, at);
    match d {
        Decision::RollBack { trigger, .. } => {
            let landed = Signal::Executed {
                version: cutover.version.clone(),
                outcome: Outcome::RolledBack,
            };
            core.handle(landed, at);
            Some(End::RolledBack {
                at,
                offset_seconds,
                trigger: trigger.describe(),
            })
        }
        Decision::Stable(_) => {
            *stable = Some(at);
            None
        }
        Decision::Expired(_) => Some(End::Expired { at, offset_seconds }),
        _ => None,
    }
}

fn describe(d: &Decision) -> (&'static str, String) {
    match d {
        Decision::Opened(s) => ("opened", s.reason.clone()),
        Decision::Stable(s) => ("stable", s.reason.clone()),
        Decision::Expired(s) => ("expired", s.reason.clone()),
        Decision::RollBack { trigger, .. } => ("rollback", trigger.describe()),
        other => ("other", format!("{other:?}")),
    }
}

impl Timeline {
    /// The timeline as text: one line per step, then the decisions and the outcome.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = format!(
            "replay {} cutover {} -> {} at {} (step {}s)\n",
            self.guard, self.previous, self.version, self.cutover_at, self.step_seconds
        );
        for s in &self.steps {
            let cells: Vec<String> = self
                .checks
                .iter()
                .zip(s.values.iter().zip(&s.breached))
                .map(|(name, (v, breached))| {
                    let v = v.map_or_else(|| "no data".to_owned(), |v| format!("{v:.4}"));
                    format!("{name}={v}{}", if *breached { " BREACH" } else { "" })
                })
                .collect();
            let _ = writeln!(out, "T+{:>6.0}s  {}", s.offset_seconds, cells.join("  "));
        }
        // Each `for` and each decision, in time order.
        let mut moments: Vec<(f64, String)> = self
            .breaches
            .iter()
            .map(|b| {
                let end = match (b.tripped, b.cleared_at) {
                    (true, _) => "tripped".to_owned(),
                    (false, Some(at)) => format!(
                        "cleared at T+{:.0}s, short of its `for`",
                        offset(self.cutover_at, at)
                    ),
                    (false, None) => "still breached at the last step replayed".to_owned(),
                };
                let line = format!(
                    "{}: `for` started; would trip at T+{:.0}s; {end}",
                    b.check, b.trips_offset_seconds
                );
                (b.since_offset_seconds, line)
            })
            .collect();
        moments.extend(
            self.decisions
                .iter()
                .map(|m| (m.offset_seconds, format!("{}: {}", m.kind, m.reason))),
        );
        moments.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (offset_seconds, line) in moments {
            let _ = writeln!(out, "T+{offset_seconds:>6.0}s  {line}");
        }
        let outcome = match &self.outcome {
            End::RolledBack {
                offset_seconds,
                trigger,
                ..
            } => format!("rolled back at T+{offset_seconds:.0}s by {trigger}"),
            End::Stable { offset_seconds, .. } => format!("stable at T+{offset_seconds:.0}s"),
            End::Expired { offset_seconds, .. } => {
                format!("expired at T+{offset_seconds:.0}s: never declared stable")
            }
            End::InProgress {
                offset_seconds,
                stable_at,
                ..
            } => {
                let so_far = stable_at.map_or_else(
                    || "no decision yet".to_owned(),
                    |at| format!("stable since T+{:.0}s", offset(self.cutover_at, at)),
                );
                format!(
                    "in progress: the window had not ended at T+{offset_seconds:.0}s, the last \
                     step so far; {so_far}"
                )
            }
        };
        let _ = writeln!(out, "outcome: {outcome}");
        for n in &self.not_replayed {
            let _ = writeln!(out, "not replayed: {n}");
        }
        out
    }
}

/// `cutover-watchdog replay`.
pub async fn command(args: crate::cli::ReplayArgs) -> Result<crate::cutover::Exit> {
    let config = crate::config::Config::load(&args.config.config)?;
    let prometheus = Prometheus::new(&config.prometheus)?;
    let mut guard = guard_for(&config, &args.guard).await?;
    for set in &args.set {
        apply_set(&mut guard, set)?;
    }
    let step = args.step.unwrap_or(config.poll_interval);
    if step.is_zero() {
        return Err(Error::Usage("--step must be longer than zero".into()));
    }
    let cutovers = match (&args.cutover_at, args.since) {
        (Some(at), _) => vec![given(at, &args)?],
        (None, Some(since)) => {
            let now = Timestamp::now();
            let from = now
                .checked_sub(SignedDuration::try_from(since).unwrap_or(SignedDuration::MAX))
                .unwrap_or(Timestamp::UNIX_EPOCH);
            let changes = args.version_changes.as_deref();
            find(
                &prometheus,
                &guard,
                (from, now),
                config.poll_interval,
                changes,
            )
            .await?
        }
        (None, None) => {
            return Err(Error::Usage(
                "give --cutover-at with --version and --previous, or --since".into(),
            ));
        }
    };
    let mut timelines = Vec::new();
    for (i, cutover) in cutovers.iter().enumerate() {
        if cutovers.len() > 1 {
            // Each is a query per check: say where a long span's replay is.
            eprintln!(
                "replaying {}/{}: {} -> {} at {}",
                i + 1,
                cutovers.len(),
                cutover.previous,
                cutover.version,
                cutover.at
            );
        }
        let histories = fetch(&prometheus, &guard, cutover, step).await?;
        timelines.push(replay(&guard, cutover, step, &histories, Timestamp::now()));
    }
    match (
        args.output,
        args.since.is_some() && args.cutover_at.is_none(),
    ) {
        (crate::cli::Output::Json, _) => println!("{}", crate::cli::json(&timelines)?),
        (crate::cli::Output::Text, true) => {
            println!("{} cutovers of {} found", timelines.len(), guard.name);
            print!("{}", summary(&timelines));
        }
        (crate::cli::Output::Text, false) => {
            for t in &timelines {
                print!("{}", t.text());
            }
        }
    }
    Ok(crate::cutover::Exit::OK)
}

/// The cutover `--cutover-at`, `--version` and `--previous` name.
fn given(at: &str, args: &crate::cli::ReplayArgs) -> Result<Cutover> {
    let cutover = Cutover {
        at: at
            .parse()
            .map_err(|e| Error::Usage(format!("--cutover-at {at:?} is not RFC 3339: {e}")))?,
        version: args.version.clone().unwrap_or_default(),
        previous: args.previous.clone().unwrap_or_default(),
        found_by: FoundBy::Given,
    };
    if cutover.version.is_empty() || cutover.version == cutover.previous {
        return Err(Error::Usage(
            "--version and --previous must name two different versions".into(),
        ));
    }
    if cutover.at > Timestamp::now() {
        return Err(Error::Usage(format!(
            "--cutover-at {at} is in the future: there is no history to replay"
        )));
    }
    Ok(cutover)
}

/// The guard to replay: an explicit one bound to its own names (no cluster needed unless its
/// queries use the Service's selector or labels), or a template's, bound to its Service as read
/// from the cluster.
async fn guard_for(config: &crate::config::Config, name: &str) -> Result<GuardConfig> {
    if let Some(g) = config.guards.iter().find(|g| g.name == name) {
        let (bound, missing) = crate::coverage::bind_explicit(g, None);
        if missing.is_none() {
            return Ok(bound);
        }
    }
    let client = crate::app::kube_client().await?;
    Ok(crate::preflight::resolve(config, &client, name).await?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn guard() -> GuardConfig {
        Config::from_yaml(
            "prometheus: {url: 'http://p'}\nguards:\n- name: checkout\n  service: s\n  window: 2m\n  stabilization: 1m\n  checks:\n  - {name: error.rate, query: 'e{v=\"{{version}}\"}', above: 0.02, for: 30s}\n",
        )
        .unwrap()
        .guards[0]
            .clone()
    }

    fn cutover() -> Cutover {
        Cutover {
            at: "2026-11-30T12:00:00Z".parse().unwrap(),
            version: "v2".into(),
            previous: "v1".into(),
            found_by: FoundBy::Given,
        }
    }

    /// A history of (seconds after the cutover, value) points.
    fn history(points: &[(i64, f64)]) -> History {
        let t0 = cutover().at.as_millisecond();
        points
            .iter()
            .map(|(s, v)| (t0 + s * 1000, vec![*v]))
            .collect()
    }

    /// The error ratio every 15 s over the 2m window: 5% at the steps `bad` picks, else 0.1%.
    fn every_15s(bad: impl Fn(i64) -> bool) -> History {
        let points: Vec<(i64, f64)> = (0..=8)
            .map(|k| (k * 15, if bad(k) { 0.05 } else { 0.001 }))
            .collect();
        history(&points)
    }

    /// A day after the cutover: every window of these tests is over.
    fn later() -> Timestamp {
        after(cutover().at, Duration::from_hours(24))
    }

    #[test]
    fn a_sustained_breach_rolls_back_when_for_has_passed_and_a_blip_does_not() {
        let step = Duration::from_secs(15);
        let bad = every_15s(|k| k >= 2);
        let t = replay(&guard(), &cutover(), step, &[bad], later());
        match &t.outcome {
            End::RolledBack {
                offset_seconds,
                trigger,
                ..
            } => {
                assert!((offset_seconds - 60.0).abs() < 0.1, "{offset_seconds}");
                assert!(trigger.contains("check error.rate"), "{trigger}");
            }
            other => panic!("{other:?}"),
        }
        let run = |b: &Breach| {
            (
                b.since_offset_seconds,
                b.trips_offset_seconds,
                b.tripped,
                b.cleared_at.map(|at| offset(cutover().at, at)),
            )
        };
        assert_eq!(
            t.breaches.iter().map(run).collect::<Vec<_>>(),
            [(30.0, 60.0, true, None)]
        );
        let blip = every_15s(|k| k == 2);
        let t = replay(&guard(), &cutover(), step, &[blip], later());
        assert!(
            matches!(t.outcome, End::Stable { offset_seconds, .. } if (offset_seconds - 60.0).abs() < 0.1),
            "{:?}",
            t.outcome
        );
        assert_eq!(
            t.breaches.iter().map(run).collect::<Vec<_>>(),
            [(30.0, 60.0, false, Some(45.0))]
        );
        let text = t.text();
        assert!(text.contains("error.rate=0.0500 BREACH"), "{text}");
        assert!(
            text.contains("error.rate: `for` started; would trip at T+60s; cleared at T+45s"),
            "{text}"
        );
        // No data at all: never a breach with on_no_data ignore; stable needs a clean poll.
        let t = replay(&guard(), &cutover(), step, &[History::new()], later());
        assert!(matches!(t.outcome, End::Stable { .. }), "{:?}", t.outcome);
    }

    #[test]
    fn set_changes_a_threshold_or_for_and_refuses_a_switch_of_direction() {
        let mut g = guard();
        apply_set(&mut g, "checks.error.rate.above=0.1").unwrap();
        assert_eq!(g.checks[0].threshold, Threshold::Above(0.1));
        apply_set(&mut g, "checks.error.rate.for=2m").unwrap();
        assert_eq!(g.checks[0].for_, Duration::from_mins(2));
        apply_set(&mut g, "checks.error.rate.on_no_data=breach").unwrap();
        assert_eq!(g.checks[0].on_no_data, NoDataPolicy::Breach);
        for (set, said) in [
            (
                "checks.error.rate.below=0.1",
                "switching `above` and `below`",
            ),
            ("checks.nope.above=1", "no check \"nope\""),
            (
                "checks.error.rate.window=1",
                "not one of above, below, for, on_no_data",
            ),
            ("window=1m", "only checks."),
            ("checks.error.rate.above=x", "not a finite number"),
        ] {
            let e = apply_set(&mut g, set).unwrap_err().to_string();
            assert!(e.contains(said), "{set}: {e}");
        }
    }

    /// A series of `--version-changes` for `version`: its values at Unix seconds 0, 15, 30, ...
    fn serving(version: &str, values: &[f64]) -> Series {
        let labels = BTreeMap::from([("version".to_owned(), version.to_owned())]);
        let points = (0..).step_by(15).map(f64::from).zip(values.iter().copied());
        (labels, points.collect())
    }

    /// (Unix seconds, from, to) of a cutover.
    type Change<'a> = (i64, &'a str, &'a str);

    fn changes(found: &[Cutover]) -> Vec<Change<'_>> {
        found
            .iter()
            .map(|c| (c.at.as_second(), c.previous.as_str(), c.version.as_str()))
            .collect()
    }

    #[test]
    fn version_changes_are_where_the_highest_series_changes_and_a_tie_says_nothing() {
        let nan = f64::NAN;
        #[rustfmt::skip]
        let cases: [(&str, Vec<Series>, Vec<Change>); 6] = [
            ("a cutover and a revert",
             vec![serving("v1", &[9.0, 9.0, 1.0, 1.0, 9.0, 9.0]), serving("v2", &[1.0, 1.0, 9.0, 9.0, 1.0, 1.0])],
             vec![(30, "v1", "v2"), (60, "v2", "v1")]),
            ("one version all along",
             vec![serving("v1", &[9.0, 9.0, 9.0])],
             vec![]),
            ("a tie, then a gap, say nothing: the change is at the first clear step",
             vec![serving("v1", &[9.0, 5.0, nan, 1.0, 1.0]), serving("v2", &[1.0, 5.0, nan, 9.0, 9.0])],
             vec![(45, "v1", "v2")]),
            ("one step's dip is not two cutovers",
             vec![serving("v1", &[9.0, 9.0, 1.0, 9.0, 9.0]), serving("v2", &[1.0, 1.0, 9.0, 1.0, 1.0])],
             vec![]),
            ("a new version after one that stopped reporting",
             vec![serving("v1", &[9.0]), serving("v3", &[nan, nan, 4.0, 4.0])],
             vec![(30, "v1", "v3")]),
            ("nothing at all", vec![], vec![]),
        ];
        for (case, series, expected) in cases {
            let found = marked(&series).unwrap();
            assert_eq!(changes(&found), expected, "{case}");
            assert!(
                found.iter().all(|c| c.found_by == FoundBy::Marked),
                "{case}"
            );
        }
        let unlabelled = vec![(BTreeMap::new(), vec![(0.0, 1.0)])];
        let e = marked(&unlabelled).unwrap_err();
        assert!(matches!(e, Error::Usage(_)) && e.to_string().contains("`version` label"));
    }

    #[test]
    fn a_recorded_window_explains_its_own_cutover_and_its_rollback_but_no_other_change() {
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let cutover = |s, from: &str, to: &str, found_by| Cutover {
            at: at(s),
            version: to.into(),
            previous: from.into(),
            found_by,
        };
        let recorded = vec![cutover(1000, "v1", "v2", FoundBy::Recorded)];
        let marked = vec![
            cutover(990, "v1", "v2", FoundBy::Marked), // the same cutover, one step early
            cutover(1015, "v1", "v2", FoundBy::Marked), // the same cutover, seen late
            cutover(1100, "v2", "v1", FoundBy::Marked), // its rollback
            cutover(1110, "v2", "v3", FoundBy::Marked), // another version: not explained
            cutover(1300, "v1", "v2", FoundBy::Marked), // after the window and its slack
            cutover(500, "v0", "v1", FoundBy::Marked), // before any record
        ];
        let all = merge(
            recorded,
            marked,
            Duration::from_mins(2),
            Duration::from_secs(15),
        );
        let found: Vec<(i64, FoundBy)> =
            all.iter().map(|c| (c.at.as_second(), c.found_by)).collect();
        assert_eq!(
            found,
            [
                (500, FoundBy::Marked),
                (1000, FoundBy::Recorded),
                (1110, FoundBy::Marked),
                (1300, FoundBy::Marked),
            ]
        );
    }

    #[test]
    fn each_start_time_in_the_record_is_one_window_if_it_is_in_the_span() {
        let labels = BTreeMap::from([
            ("version".to_owned(), "v2".to_owned()),
            ("previous_version".to_owned(), "v1".to_owned()),
        ]);
        // A window from 100.5 s, its run cut by a restart; one from 200 s; one opened before
        // the span (50 s), still open at its start.
        let points = [
            (101.0, 100.5),
            (102.0, 100.5),
            (150.0, 100.5),
            (201.0, 200.0),
        ]
        .into_iter()
        .chain([(90.0, 50.0)])
        .collect();
        let span = (
            Timestamp::from_second(60).unwrap(),
            Timestamp::from_second(300).unwrap(),
        );
        let found = windows(&[(labels, points)], span).unwrap();
        let starts: Vec<i64> = found.iter().map(|c| c.at.as_millisecond()).collect();
        assert_eq!(starts, [100_500, 200_000]);
        assert!(
            found
                .iter()
                .all(|c| c.found_by == FoundBy::Recorded && c.previous == "v1")
        );
        let unlabelled = [(BTreeMap::new(), vec![(101.0, 100.0)])];
        assert!(windows(&unlabelled, span).unwrap().is_empty());
    }

    #[test]
    fn a_poll_at_the_windows_end_is_not_evaluated_and_an_unfinished_window_is_in_progress() {
        let step = Duration::from_secs(15);
        // Breached from T+90 with `for: 30s`: it would trip at T+120, the window's end, where
        // `serve` closes the window instead.
        let late = every_15s(|k| k >= 6);
        let t = replay(
            &guard(),
            &cutover(),
            step,
            std::slice::from_ref(&late),
            later(),
        );
        assert!(matches!(t.outcome, End::Stable { .. }), "{:?}", t.outcome);
        assert_eq!(t.steps.last().map(|s| s.offset_seconds), Some(105.0));
        assert!(t.breaches.iter().all(|b| !b.tripped), "{:?}", t.breaches);

        // Replayed 50 s into the window: the steps so far, and no outcome yet.
        let now = after(cutover().at, Duration::from_secs(50));
        let t = replay(&guard(), &cutover(), step, std::slice::from_ref(&late), now);
        assert_eq!(
            t.outcome,
            End::InProgress {
                at: after(cutover().at, Duration::from_secs(45)),
                offset_seconds: 45.0,
                stable_at: None,
            }
        );
        assert!(
            t.text()
                .contains("in progress: the window had not ended at T+45s")
        );
    }

    #[test]
    fn an_infinite_value_is_written_as_prometheus_writes_it_not_as_no_data() {
        let step = Step {
            at: cutover().at,
            offset_seconds: 0.0,
            values: vec![Some(f64::INFINITY), None, Some(0.5)],
            breached: vec![true, false, false],
        };
        let json = serde_json::to_value(&step).unwrap();
        assert_eq!(json["values"], serde_json::json!(["+Inf", null, 0.5]));
    }
}
