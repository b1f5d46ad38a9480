//! `cutover-watchdog preflight`: the runbook's pre-deployment checklist for one guarded Service,
//! item by item, PASS, WARN or FAIL with its evidence.
//!
//! Two halves, as everywhere here: [`gather`] reads the cluster and Prometheus into [`Facts`]
//! (the Service, both versions' Pods, each check's query for blue and green, a server-side dry
//! run of the exact selector patch, the leader Lease), and [`assess`] turns facts into
//! [`Item`]s with no IO, so its whole truth table is plain tests. It never changes anything:
//! the patch is sent with `dryRun=All`. A critical item not met is a FAIL; any other is a WARN.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use serde::Serialize;

use crate::config::{Config, GuardConfig, Probe, Threshold};
use crate::coverage::{self, Coverage};
use crate::decision::{Persisted, Sample};
use crate::error::{Error, Result};
use crate::promql::Prometheus;
use crate::service;

/// Restarts this recent make green's Pods unfit to take traffic (the runbook's "pod restarts or
/// crashes in v2").
pub const RESTART_WINDOW: Duration = Duration::from_mins(10);

/// One item's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// What is checked, e.g. `green_pods`, `check error_rate (blue)`.
    pub item: String,
    /// Not met, a critical item is a FAIL; any other, a WARN.
    pub critical: bool,
    pub result: Verdict,
    /// What was seen.
    pub evidence: String,
}

/// The checklist for one cutover.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub guard: String,
    pub namespace: String,
    pub service: String,
    /// The version serving now.
    pub from: Option<String>,
    pub to: String,
    pub items: Vec<Item>,
}

impl Report {
    /// Whether any item failed: the exit code is 1 then.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.items.iter().any(|i| i.result == Verdict::Fail)
    }

    /// One aligned line per item, then a summary line.
    #[must_use]
    pub fn text(&self) -> String {
        let width = self.items.iter().map(|i| i.item.len()).max().unwrap_or(0);
        let mut out = format!(
            "preflight {}/{} (guard {}): {} -> {}\n",
            self.namespace,
            self.service,
            self.guard,
            self.from.as_deref().unwrap_or("(none)"),
            self.to
        );
        for i in &self.items {
            let verdict = match i.result {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            let critical = if i.critical { " (critical)" } else { "" };
            let _ = writeln!(
                out,
                "{verdict}  {:width$}  {}{critical}",
                i.item, i.evidence
            );
        }
        let count = |v| self.items.iter().filter(|i| i.result == v).count();
        let _ = writeln!(
            out,
            "{} passed, {} warnings, {} failed",
            count(Verdict::Pass),
            count(Verdict::Warn),
            count(Verdict::Fail)
        );
        out
    }
}

/// A Pod as the checklist needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts {
    pub name: String,
    pub ready: bool,
    /// Its containers' restarts: (container, count, when the last one ended, if known).
    pub restarts: Vec<(String, i32, Option<Timestamp>)>,
}

/// A check's query for one version: its value, no data, or why it failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Value(f64),
    NoData,
    Failed(String),
    /// Not a PromQL check, or a placeholder the Service lacks: nothing was sent.
    NotSent(String),
}

/// A check, and its query's answers for blue and for green.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckFacts {
    pub name: String,
    pub threshold: Threshold,
    pub blue: Answer,
    pub green: Answer,
}

/// Who guards the Service now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Guarded {
    /// The leader Lease's holder, and how long ago it renewed, if the config elects one.
    pub lease: Option<(String, Duration)>,
    /// How long a holder may go without renewing.
    pub lease_duration: Duration,
    /// The Service's window record, if any.
    pub record: Option<Persisted>,
    /// The guard's window, to tell whether a record is recent.
    pub window: Duration,
}

/// Everything [`assess`] judges, as [`gather`] read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub version_label: String,
    pub to: String,
    pub selector_version: Option<String>,
    pub session_affinity: Option<String>,
    pub green: Vec<PodFacts>,
    pub blue: Vec<PodFacts>,
    pub min_ready_previous: u32,
    pub checks: Vec<CheckFacts>,
    /// The server-side dry run of the selector patch: `Err` with the server's answer.
    pub dry_run: std::result::Result<(), String>,
    pub guarded: Guarded,
    /// For `cutover`, which refuses to switch an unguarded Service: the watchdog item is
    /// critical then.
    pub cutover: bool,
    /// A GitOps tool that applies the Service, whose sync would undo a revert.
    pub applier: Option<crate::gitops::Applier>,
    /// The guard only records what it would do, and writes no window record.
    pub dry_run_guard: bool,
}

fn item(name: impl Into<String>, critical: bool, met: bool, evidence: String) -> Item {
    let result = match (met, critical) {
        (true, _) => Verdict::Pass,
        (false, true) => Verdict::Fail,
        (false, false) => Verdict::Warn,
    };
    Item {
        item: name.into(),
        critical,
        result,
        evidence,
    }
}

/// The checklist for `facts` at `now`.
#[must_use]
pub fn assess(facts: &Facts, now: Timestamp) -> Vec<Item> {
    let label = &facts.version_label;
    let mut items = vec![selector(facts)];
    items.push(green_pods(facts, now));
    let ready_blue = facts.blue.iter().filter(|p| p.ready).count();
    let blue = facts.selector_version.as_deref().unwrap_or("(none)");
    items.push(item(
        "blue_pods",
        true,
        ready_blue >= facts.min_ready_previous as usize && facts.selector_version.is_some(),
        format!(
            "{ready_blue} of {} {label}={blue} pods Ready, min_ready_previous {}",
            facts.blue.len(),
            facts.min_ready_previous
        ),
    ));
    let affinity = facts.session_affinity.as_deref().unwrap_or("None");
    items.push(item(
        "session_affinity",
        false,
        affinity == "None",
        if affinity == "None" {
            "sessionAffinity None".into()
        } else {
            format!(
                "sessionAffinity {affinity}: sticky sessions keep clients on blue, the runbook's \
                 partial traffic switch; set it to None before the cutover"
            )
        },
    ));
    for check in &facts.checks {
        items.extend(check_items(check, blue, &facts.to));
    }
    items.push(match &facts.dry_run {
        Ok(()) => item(
            "selector_patch",
            true,
            true,
            format!(
                "server-side dry run of spec.selector.{label}={} accepted",
                facts.to
            ),
        ),
        Err(e) => item(
            "selector_patch",
            true,
            false,
            format!("server-side dry run refused: {e}"),
        ),
    });
    items.push(guarded(&facts.guarded, facts.cutover, now));
    if facts.dry_run_guard {
        items.push(item(
            "dry_run",
            facts.cutover,
            false,
            "the guard is a dry run: it would roll nothing back, and writes no window record \
             for `cutover` to follow"
                .into(),
        ));
    }
    items.push(match &facts.applier {
        None => item("gitops", false, true, "no Argo CD or Flux marks".into()),
        Some(a) => item("gitops", false, false, crate::gitops::warning(a)),
    });
    items
}

fn selector(facts: &Facts) -> Item {
    let label = &facts.version_label;
    match &facts.selector_version {
        None => item(
            "selector",
            true,
            false,
            format!("the selector has no {label} key: there is nothing to switch"),
        ),
        Some(v) if *v == facts.to => item(
            "selector",
            true,
            false,
            format!("the selector already names {label}={v}"),
        ),
        Some(v) => item("selector", true, true, format!("{label}={v} serving")),
    }
}

fn green_pods(facts: &Facts, now: Timestamp) -> Item {
    let label = &facts.version_label;
    let to = &facts.to;
    if facts.green.is_empty() {
        return item(
            "green_pods",
            true,
            false,
            format!("no pods match the selector with {label}={to}"),
        );
    }
    let unready: Vec<&str> = facts
        .green
        .iter()
        .filter(|p| !p.ready)
        .map(|p| p.name.as_str())
        .collect();
    let since = now
        .checked_sub(jiff::SignedDuration::try_from(RESTART_WINDOW).unwrap_or_default())
        .unwrap_or(now);
    let restarted: Vec<String> = facts
        .green
        .iter()
        .flat_map(|p| {
            p.restarts
                .iter()
                .filter(|(_, count, at)| *count > 0 && at.is_none_or(|at| at >= since))
                .map(move |(c, count, _)| format!("{}/{c} ({count})", p.name))
        })
        .collect();
    let mut evidence = format!(
        "{} of {} {label}={to} pods Ready",
        facts.green.len() - unready.len(),
        facts.green.len()
    );
    if !unready.is_empty() {
        let _ = write!(evidence, "; not Ready: {}", unready.join(", "));
    }
    if restarted.is_empty() {
        evidence.push_str("; no restarts in the last 10m");
    } else {
        let _ = write!(
            evidence,
            "; restarted in the last 10m: {}",
            restarted.join(", ")
        );
    }
    item(
        "green_pods",
        true,
        unready.is_empty() && restarted.is_empty(),
        evidence,
    )
}

fn check_items(check: &CheckFacts, blue: &str, to: &str) -> Vec<Item> {
    let name = &check.name;
    let blue_item = match &check.blue {
        Answer::Value(v) => item(
            format!("check {name} (blue)"),
            true,
            true,
            format!("{v} for {blue}"),
        ),
        Answer::NoData => item(
            format!("check {name} (blue)"),
            true,
            false,
            format!("no data for {blue}: without metrics by version, rollback decisions are blind"),
        ),
        Answer::Failed(e) => item(
            format!("check {name} (blue)"),
            true,
            false,
            format!("query failed: {e}"),
        ),
        Answer::NotSent(why) => item(format!("check {name}"), false, false, why.clone()),
    };
    let mut items = vec![blue_item];
    match &check.green {
        Answer::Value(v) => {
            items.push(item(
                format!("check {name} (green)"),
                false,
                true,
                format!("{v} for {to}"),
            ));
            let within = !check.threshold.breached_by(*v);
            items.push(item(
                format!("check {name} (green threshold)"),
                false,
                within,
                format!(
                    "{v} for {to}, threshold {}",
                    threshold_text(check.threshold)
                ),
            ));
        }
        Answer::NoData => items.push(item(
            format!("check {name} (green)"),
            false,
            false,
            format!("no data for {to} yet: it gets none until it takes traffic"),
        )),
        Answer::Failed(e) => items.push(item(
            format!("check {name} (green)"),
            false,
            false,
            format!("query failed: {e}"),
        )),
        Answer::NotSent(_) => {}
    }
    items
}

fn threshold_text(t: Threshold) -> String {
    match t {
        Threshold::Above(v) => format!("above {v}"),
        Threshold::Below(v) => format!("below {v}"),
    }
}

fn guarded(g: &Guarded, cutover: bool, now: Timestamp) -> Item {
    if let Some((holder, ago)) = &g.lease
        && *ago <= g.lease_duration
    {
        return item(
            "watchdog",
            cutover,
            true,
            format!(
                "leader lease held by {holder}, renewed {}s ago",
                ago.as_secs()
            ),
        );
    }
    let recent = g.record.as_ref().filter(|r| {
        let end = r
            .cutover_at
            .checked_add(jiff::SignedDuration::try_from(g.window).unwrap_or_default())
            .unwrap_or(r.cutover_at);
        now < end
    });
    match (recent, &g.lease) {
        (Some(r), _) => item(
            "watchdog",
            cutover,
            true,
            format!(
                "a window record from {} ({}), within its window",
                r.cutover_at,
                r.phase.as_str()
            ),
        ),
        (None, Some((holder, ago))) => item(
            "watchdog",
            cutover,
            false,
            format!(
                "leader lease last renewed by {holder} {}s ago: no watchdog is guarding this service now",
                ago.as_secs()
            ),
        ),
        (None, None) => item(
            "watchdog",
            cutover,
            false,
            "no leader lease held and no recent window record: no watchdog is known to guard this service"
                .into(),
        ),
    }
}

/// The checklist for switching guard `name`'s Service to `to`, with the guard and the Service
/// as read (`cutover` switches from exactly that `resourceVersion`).
pub struct Checked {
    pub report: Report,
    pub guard: GuardConfig,
    pub service: Service,
}

/// Resolves, gathers and assesses: the whole of `preflight`. For `cutover`, the watchdog item
/// is critical.
pub async fn check(
    config: &Config,
    client: &kube::Client,
    prometheus: &Prometheus,
    (name, to): (&str, &str),
    cutover: bool,
) -> Result<Checked> {
    let (guard, service) = resolve(config, client, name).await?;
    let mut facts = gather(config, client, prometheus, (&guard, &service), to).await?;
    facts.cutover = cutover;
    let report = Report {
        guard: guard.name.clone(),
        namespace: guard.namespace.clone(),
        service: guard.service.clone(),
        from: facts.selector_version.clone(),
        to: to.to_owned(),
        items: assess(&facts, Timestamp::now()),
    };
    Ok(Checked {
        report,
        guard,
        service,
    })
}

/// The guard `name` (a `guards[]` name, or `NAMESPACE/SERVICE` for a template's) bound to its
/// Service, and the Service as read now.
pub async fn resolve(
    config: &Config,
    client: &kube::Client,
    name: &str,
) -> Result<(GuardConfig, Service)> {
    let (namespace, service) = match config.guards.iter().find(|g| g.name == name) {
        Some(g) => (g.namespace.clone(), g.service.clone()),
        None => match name.split_once('/') {
            Some((ns, svc)) if !config.templates.is_empty() => (ns.to_owned(), svc.to_owned()),
            _ => {
                let known: Vec<&str> = config.guards.iter().map(|g| g.name.as_str()).collect();
                return Err(Error::Usage(format!(
                    "no guard named {name:?} in the config (guards: {}{})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                    if config.templates.is_empty() {
                        ""
                    } else {
                        "; a template's guard is named NAMESPACE/SERVICE"
                    }
                )));
            }
        },
    };
    let api: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let svc = api.get(&service).await.map_err(|source| Error::Kube {
        verb: "get",
        what: "service",
        namespace: namespace.clone(),
        name: service.clone(),
        source: Box::new(source),
    })?;
    match coverage::cover(config, &svc) {
        Coverage::Guarded { guard, .. } => Ok((*guard, svc)),
        Coverage::Unguarded { reason } => Err(Error::Usage(format!(
            "service {namespace}/{service} is not guarded by this config: {reason}"
        ))),
    }
}

/// Reads everything [`assess`] judges for switching `guard`'s Service `svc` to `to`.
pub async fn gather(
    config: &Config,
    client: &kube::Client,
    prometheus: &Prometheus,
    (guard, svc): (&GuardConfig, &Service),
    to: &str,
) -> Result<Facts> {
    let handle = service::ServiceHandle::new(client, guard);
    let selector = service::selector(svc);
    let from = selector.get(&guard.version_label).cloned();
    let pods = async |version: Option<&str>| -> Result<Vec<PodFacts>> {
        let Some(version) = version else {
            return Ok(Vec::new());
        };
        Ok(handle
            .pods(&selector, version)
            .await?
            .iter()
            .map(pod_facts)
            .collect())
    };
    let green = pods(Some(to)).await?;
    let blue = pods(from.as_deref()).await?;
    let mut checks = Vec::new();
    for check in &guard.checks {
        let blue_version = from.as_deref().unwrap_or_default();
        // A synthetic transaction tests green's own endpoint: it has nothing to say before.
        let Probe::Query(query) = &check.probe else {
            continue;
        };
        let ask = async |version: &str, previous: &str| match query.render(version, previous) {
            Err(unbound) => Answer::NotSent(unbound.to_string()),
            Ok(query) => match prometheus.instant(&query).await.0 {
                Ok(values) => match Sample::from_values(&values, check.threshold) {
                    Sample::Value(v) => Answer::Value(v),
                    Sample::NoData | Sample::Error => Answer::NoData,
                },
                Err(e) => Answer::Failed(e.to_string()),
            },
        };
        checks.push(CheckFacts {
            name: check.name.clone(),
            threshold: check.threshold,
            blue: ask(blue_version, blue_version).await,
            green: ask(to, blue_version).await,
        });
    }
    let dry_run = handle
        .dry_run_selector(svc.metadata.resource_version.as_deref(), to)
        .await;
    let guarded = Guarded {
        lease: lease(config, client).await,
        lease_duration: config
            .leader_election
            .as_ref()
            .map_or(Duration::ZERO, |le| le.lease_duration),
        record: service::persisted(svc),
        window: guard.window,
    };
    Ok(Facts {
        version_label: guard.version_label.clone(),
        to: to.to_owned(),
        selector_version: from,
        session_affinity: svc.spec.as_ref().and_then(|s| s.session_affinity.clone()),
        green,
        blue,
        min_ready_previous: guard.min_ready_previous,
        checks,
        dry_run,
        guarded,
        cutover: false,
        applier: crate::gitops::applier(svc),
        dry_run_guard: guard.dry_run,
    })
}

/// The leader Lease's holder (its Pod name) and how long ago it renewed; `None` without leader
/// election, or if it cannot be read or is free.
async fn lease(config: &Config, client: &kube::Client) -> Option<(String, Duration)> {
    let le = config.leader_election.as_ref()?;
    let namespace = le
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let lease = Api::<Lease>::namespaced(client.clone(), &namespace)
        .get_opt(&le.lease_name)
        .await
        .ok()??;
    let spec = lease.spec?;
    let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time?.0;
    let ago = Duration::try_from(Timestamp::now().duration_since(renewed)).unwrap_or_default();
    Some((crate::leader::pod_of(&holder).to_owned(), ago))
}

fn pod_facts(pod: &Pod) -> PodFacts {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let restarts = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let ended = c
                        .last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .and_then(|t| t.finished_at.as_ref())
                        .map(|t| t.0);
                    (c.name.clone(), c.restart_count, ended)
                })
                .collect()
        })
        .unwrap_or_default();
    PodFacts {
        name: pod.metadata.name.clone().unwrap_or_default(),
        ready,
        restarts,
    }
}

/// The field manager of the command line's writes, dry runs included.
pub const CLI_MANAGER: &str = "cutover-watchdog-cli";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Phase;

    fn now() -> Timestamp {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    fn pod(name: &str, ready: bool) -> PodFacts {
        PodFacts {
            name: name.into(),
            ready,
            restarts: vec![("app".into(), 0, None)],
        }
    }

    /// A cutover every item passes.
    fn facts() -> Facts {
        Facts {
            version_label: "version".into(),
            to: "v2".into(),
            selector_version: Some("v1".into()),
            session_affinity: Some("None".into()),
            green: vec![pod("g0", true), pod("g1", true)],
            blue: vec![pod("b0", true)],
            min_ready_previous: 1,
            checks: vec![CheckFacts {
                name: "error_rate".into(),
                threshold: Threshold::Above(0.02),
                blue: Answer::Value(0.001),
                green: Answer::Value(0.001),
            }],
            dry_run: Ok(()),
            guarded: Guarded {
                lease: Some(("watchdog-0".into(), Duration::from_secs(1))),
                lease_duration: Duration::from_secs(15),
                record: None,
                window: Duration::from_mins(10),
            },
            cutover: false,
            applier: None,
            dry_run_guard: false,
        }
    }

    fn verdict_of(facts: &Facts, item: &str) -> (Verdict, String) {
        let items = assess(facts, now());
        let found = items.iter().find(|i| i.item == item);
        let found = found.unwrap_or_else(|| panic!("no {item} in {items:?}"));
        (found.result, found.evidence.clone())
    }

    #[test]
    fn every_item_passes_for_a_ready_cutover() {
        let items = assess(&facts(), now());
        assert!(
            items.iter().all(|i| i.result == Verdict::Pass),
            "{items:#?}"
        );
    }

    /// A change to the passing facts.
    type Change = fn(&mut Facts);

    /// (what, change, item, its verdict, in its evidence)
    #[allow(clippy::too_many_lines)] // a table, one row per case, as rustfmt lays it out
    fn rows() -> Vec<(&'static str, Change, &'static str, Verdict, &'static str)> {
        use Verdict::{Fail, Pass, Warn};
        vec![
            (
                "no version key",
                |f| f.selector_version = None,
                "selector",
                Fail,
                "no version key",
            ),
            (
                "already green",
                |f| f.selector_version = Some("v2".into()),
                "selector",
                Fail,
                "already names",
            ),
            (
                "no green pods",
                |f| f.green.clear(),
                "green_pods",
                Fail,
                "no pods match",
            ),
            (
                "green unready",
                |f| f.green[1].ready = false,
                "green_pods",
                Fail,
                "not Ready: g1",
            ),
            (
                "green restarted 5m ago",
                |f| {
                    f.green[0].restarts = vec![(
                        "app".into(),
                        2,
                        Some(now() - jiff::SignedDuration::from_mins(5)),
                    )];
                },
                "green_pods",
                Fail,
                "g0/app (2)",
            ),
            (
                "green restarted 20m ago",
                |f| {
                    f.green[0].restarts = vec![(
                        "app".into(),
                        2,
                        Some(now() - jiff::SignedDuration::from_mins(20)),
                    )];
                },
                "green_pods",
                Pass,
                "no restarts in the last 10m",
            ),
            (
                "blue too few",
                |f| f.min_ready_previous = 2,
                "blue_pods",
                Fail,
                "1 of 1",
            ),
            (
                "sticky sessions",
                |f| f.session_affinity = Some("ClientIP".into()),
                "session_affinity",
                Warn,
                "partial traffic switch",
            ),
            (
                "blue no data",
                |f| f.checks[0].blue = Answer::NoData,
                "check error_rate (blue)",
                Fail,
                "rollback decisions are blind",
            ),
            (
                "blue query fails",
                |f| f.checks[0].blue = Answer::Failed("status: HTTP 400".into()),
                "check error_rate (blue)",
                Fail,
                "HTTP 400",
            ),
            (
                "green no data",
                |f| f.checks[0].green = Answer::NoData,
                "check error_rate (green)",
                Warn,
                "no data for v2",
            ),
            (
                "green over threshold",
                |f| f.checks[0].green = Answer::Value(0.3),
                "check error_rate (green threshold)",
                Warn,
                "above 0.02",
            ),
            (
                "dry run refused",
                |f| f.dry_run = Err("403 forbidden".into()),
                "selector_patch",
                Fail,
                "403",
            ),
            (
                "stale lease",
                |f| f.guarded.lease = Some(("w".into(), Duration::from_mins(1))),
                "watchdog",
                Warn,
                "60s ago",
            ),
            (
                "no lease, no record",
                |f| f.guarded.lease = None,
                "watchdog",
                Warn,
                "no watchdog is known",
            ),
            (
                "no lease, cutover",
                |f| {
                    f.guarded.lease = None;
                    f.cutover = true;
                },
                "watchdog",
                Fail,
                "no watchdog is known",
            ),
            (
                "applied by Argo CD",
                |f| {
                    f.applier = Some(crate::gitops::Applier {
                        tool: "Argo CD",
                        mark: "argocd.argoproj.io/tracking-id=shop".into(),
                        fix: "managedFieldsManagers [cutover-watchdog]",
                    });
                },
                "gitops",
                Warn,
                "Argo CD applies this service",
            ),
        ]
    }

    #[test]
    fn each_item_as_a_table_critical_ones_fail_and_the_rest_warn() {
        use Verdict::{Pass, Warn};
        let ago = |mins: i64| now() - jiff::SignedDuration::from_mins(mins);
        for (name, change, item, want, evidence) in rows() {
            let mut f = facts();
            change(&mut f);
            let (got, said) = verdict_of(&f, item);
            assert_eq!(got, want, "{name}: {said}");
            assert!(said.contains(evidence), "{name}: {said}");
        }
        // A window record within its window says a watchdog has this Service.
        let mut f = facts();
        f.guarded.lease = None;
        f.guarded.record = Some(Persisted {
            version: "v2".into(),
            previous: "v1".into(),
            cutover_at: ago(3),
            phase: Phase::Stable,
            reason: String::new(),
        });
        assert_eq!(verdict_of(&f, "watchdog").0, Pass);
        f.guarded.record.as_mut().unwrap().cutover_at = ago(30);
        assert_eq!(verdict_of(&f, "watchdog").0, Warn);
    }

    #[test]
    fn the_report_fails_on_any_fail_and_prints_one_aligned_line_per_item() {
        let mut f = facts();
        f.dry_run = Err("403".into());
        let report = Report {
            guard: "checkout".into(),
            namespace: "default".into(),
            service: "svc-production".into(),
            from: Some("v1".into()),
            to: "v2".into(),
            items: assess(&f, now()),
        };
        assert!(report.failed());
        let text = report.text();
        assert!(text.starts_with("preflight default/svc-production (guard checkout): v1 -> v2\n"));
        assert!(text.contains("FAIL  selector_patch"), "{text}");
        assert!(text.contains("(critical)"), "{text}");
        assert!(text.ends_with("1 failed\n"), "{text}");
    }
}
