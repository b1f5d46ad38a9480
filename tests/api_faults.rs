//! Kubernetes API faults injected by the double, beyond the patch faults in `end_to_end`: a
//! missing permission at start-up, watches dropped or expired (410 Gone) around a cutover, and
//! a slow API for one Service while another guard must act.

// Test code: a failed setup step should panic right there; counters are small whole numbers.
#![allow(clippy::unwrap_used, clippy::float_cmp)]

mod common;

use std::time::Duration;

use common::{Cluster, Setup, Watchdog, critical_alert, critical_alert_for, metric};
use cutover_watchdog::sandbox::apiserver::{self, Fault, FaultRule};
use cutover_watchdog::sandbox::free_port;

const ALERTS: &str = "  alerts:\n    match: {app: my-microservice}\n";

async fn watchdog(cluster: &Cluster) -> Watchdog {
    Watchdog::start(
        cluster,
        &Setup {
            extra: ALERTS,
            ..Setup::default()
        },
    )
    .await
}

async fn cutovers(w: &Watchdog) -> f64 {
    metric(
        &w.metrics().await,
        r#"cutover_watchdog_cutovers_total{guard="checkout"}"#,
    )
    .unwrap()
}

async fn wait_relisted(w: &Watchdog, times: f64) {
    let series = r#"cutover_watchdog_service_relists_total{guard="checkout"}"#;
    w.wait_metric(series, times, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_missing_permission_fails_start_up_naming_it_and_the_role() {
    let cluster = Cluster::start().await;
    cluster.api.deny("patch", "services");
    cluster.api.deny("create", "leases");
    let ports = (free_port().unwrap(), free_port().unwrap());
    let config = cluster.dir.path().join("watchdog.yaml");
    let setup = Setup {
        top: "leader_election: {}\n",
        ..Setup::default()
    };
    std::fs::write(&config, setup.yaml(ports.0, ports.1)).unwrap();
    let mut w = Watchdog::spawn(&cluster, &config, ports, "watchdog-test");
    let status = tokio::time::timeout(Duration::from_secs(10), w.child.wait())
        .await
        .expect("start-up must fail fast")
        .unwrap();
    assert!(!status.success());
    let logs = w.logs();
    for named in [
        "missing Kubernetes permissions: ",
        "patch services/svc-production in default",
        "create leases.coordination.k8s.io in default",
        "grant them in the watchdog's Role (manifests/role.yaml)",
    ] {
        assert!(logs.contains(named), "{named:?} not in {logs}");
    }
    let error = logs.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(
        !error.contains("get services"),
        "only the missing ones are named: {error}"
    );
    assert!(cluster.api.requests().iter().all(|r| r.method != "PATCH"));
}

#[tokio::test]
async fn a_watch_expired_across_a_cutover_re_lists_and_opens_the_window() {
    let cluster = Cluster::start().await;
    let w = watchdog(&cluster).await;
    // The watch is cut off; the cutover happens while the watchdog cannot see it.
    cluster.api.pause_watches();
    cluster.cut_over("v2").await;
    assert_eq!(w.guards().await[0]["selector_version"], "v1");
    cluster.api.expire_watches();
    wait_relisted(&w, 1.0).await;
    cluster.wait_state("watching").await;
    let g = w
        .wait_status(
            "the window opened from the re-list",
            Duration::from_secs(10),
            |g| g["window"]["open"] == true,
        )
        .await;
    assert_eq!(g["window"]["version"], "v2");
    assert_eq!(g["window"]["rollback_target"], "v1");
    assert_eq!(cutovers(&w).await, 1.0);
    let relist_reason = async || {
        let logs = w.logs();
        logs.contains("410") || logs.contains("too old resource version")
    };
    let what = "a log line saying why it re-listed (410)";
    w.wait_until(what, Duration::from_secs(10), relist_reason, |f| *f)
        .await;
}

#[tokio::test]
async fn a_watch_expired_with_nothing_changed_re_lists_without_a_phantom_cutover() {
    let cluster = Cluster::start().await;
    let w = watchdog(&cluster).await;
    cluster.api.expire_watches();
    wait_relisted(&w, 1.0).await;
    // Then once more with a window open: the re-list shows the same v2, not a new cutover.
    cluster.cut_over_recorded("v2").await;
    let open = w
        .wait_status("the window open", Duration::from_secs(10), |g| {
            g["window"]["open"] == true
        })
        .await;
    let start = open["window"]["start"].clone();
    cluster.api.expire_watches();
    wait_relisted(&w, 2.0).await;
    assert_eq!(
        w.post_alert("{}").await,
        400,
        "the watchdog is up and serving"
    );
    let g = &w.guards().await[0];
    assert_eq!(g["window"]["start"], start, "the same window");
    assert_eq!(cutovers(&w).await, 1.0, "one cutover, no phantom");
    let detected = cluster
        .event_reasons()
        .iter()
        .filter(|r| *r == "CutoverDetected")
        .count();
    assert_eq!(detected, 1);
    assert_eq!(cluster.selector_patches(), 0);
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_resource_version_and_misses_no_cutover() {
    let cluster = Cluster::start().await;
    let w = watchdog(&cluster).await;
    cluster.api.pause_watches();
    cluster.cut_over("v2").await;
    cluster.api.drop_watches();
    cluster.wait_state("watching").await;
    assert_eq!(cutovers(&w).await, 1.0);
}

#[tokio::test]
async fn a_slow_api_for_one_service_does_not_hold_up_another_guards_rollback() {
    let cluster = Cluster::start().await;
    cluster
        .api
        .apply(apiserver::service(
            "default",
            "svc-other",
            &[("app", "other"), ("version", "v1")],
        ))
        .unwrap();
    for i in 0..2 {
        let labels = [("app", "other"), ("version", "v1")];
        cluster
            .api
            .apply(apiserver::pod(
                "default",
                &format!("other-v1-{i}"),
                &labels,
                true,
            ))
            .unwrap();
    }
    let extra = format!(
        "{ALERTS}- name: other\n  service: svc-other\n  alerts:\n    match: {{app: other}}\n"
    );
    let w = Watchdog::start(
        &cluster,
        &Setup {
            extra: &extra,
            ..Setup::default()
        },
    )
    .await;
    cluster.cut_over_recorded("v2").await;
    let patch = r#"{"spec":{"selector":{"version":"v2"}}}"#;
    let out = cluster
        .kubectl(&["patch", "svc", "svc-other", "-p", patch])
        .await;
    assert!(out.status.success());
    let other_state = async || {
        let svc = cluster.api.get("services", "default", "svc-other").unwrap();
        svc["metadata"]["annotations"]["cutover-watchdog.io/state"].clone()
    };
    let what = "the other window recorded";
    common::wait_until(what, Duration::from_secs(10), other_state, |s| {
        s == "watching"
    })
    .await;
    // Every read of svc-production by name now takes 4 s.
    cluster.api.inject(FaultRule {
        method: axum::http::Method::GET,
        plural: "services".into(),
        name: Some(common::SVC.into()),
        times: usize::MAX,
        fault: Fault::Delay(Duration::from_secs(4)),
    });
    assert_eq!(w.post_alert(&critical_alert("v2")).await, 200);
    assert_eq!(w.post_alert(&critical_alert_for("other", "v2")).await, 200);
    // Both roll back in the end...
    cluster.wait_selector("v1", Duration::from_secs(20)).await;
    let other = async || {
        let svc = cluster.api.get("services", "default", "svc-other").unwrap();
        svc["spec"]["selector"]["version"].clone()
    };
    let what = "the other guard's rollback";
    common::wait_until(what, Duration::from_secs(10), other, |v| v == "v1").await;
    cluster.wait_selector_patches(1).await;
    let other_logged = async || {
        let requests = cluster.api.requests();
        requests.iter().any(|r| {
            r.is_patch_of("services", "svc-other") && r.user_agent.starts_with("cutover-watchdog/")
        })
    };
    let what = "the other guard's patch in the request log";
    common::wait_until(what, Duration::from_secs(10), other_logged, |l| *l).await;
    // ...and the other guard's patch arrived while the slow Service was still being read: the
    // slow one's patch can only arrive after its 4 s read, whatever the machine's speed.
    let patch_arrived = |name: &str| {
        let requests = cluster.api.requests();
        let selector_patch = requests.iter().find(|r| {
            r.is_patch_of("services", name)
                && r.status == 200
                && r.user_agent.starts_with("cutover-watchdog/")
                && r.json().is_some_and(|j| !j["spec"]["selector"].is_null())
        });
        selector_patch.map(|r| r.at).unwrap()
    };
    let (other_at, slow_at) = (patch_arrived("svc-other"), patch_arrived(common::SVC));
    assert!(
        other_at < slow_at,
        "the other guard waited for the slow one: its patch arrived at {other_at}, the slow one's at {slow_at}"
    );
}

const FAILURES: &str = r#"cutover_watchdog_rollback_failures_total{guard="checkout"}"#;
const ROLLBACKS: &str = r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="alert"}"#;

/// Posts a critical alert on green whose rollback PATCH meets `fault`, and waits for the
/// rollback to be reported with its outcome unknown: a Warning Event, a log line that says so,
/// and no failure counted (the patch may have landed).
async fn rollback_outcome_unknown(cluster: &Cluster, w: &Watchdog, fault: Fault) {
    cluster.cut_over_recorded("v2").await;
    cluster.fault_next_service_patch(fault);
    assert_eq!(w.post_alert(&critical_alert("v2")).await, 200);
    let what = "a RollbackOutcomeUnknown Event";
    let reasons = async || cluster.event_reasons();
    let unknown = |r: &Vec<String>| r.iter().any(|r| r == "RollbackOutcomeUnknown");
    w.wait_until(what, Duration::from_secs(15), reasons, unknown)
        .await;
    w.wait_log("rollback outcome unknown").await;
    let logs = w.logs();
    assert!(!logs.contains("selector unchanged"), "{logs}");
    assert_eq!(w.metric(FAILURES).await, Some(0.0), "not counted as failed");
}

#[tokio::test]
async fn a_patch_applied_but_answered_after_kube_timeout_is_recorded_rolled_back_once() {
    let cluster = Cluster::start().await;
    let w = watchdog(&cluster).await;
    // The API server applies the PATCH, then answers only after kube_timeout (5 s).
    let late = Fault::DelayAnswer(Duration::from_secs(20));
    rollback_outcome_unknown(&cluster, &w, late).await;
    // The watch shows the selector on v1 with this window's rolled-back record: it landed.
    let g = w.wait_rolled_back(&cluster).await;
    assert_eq!(g["last_decision"]["kind"], "rollback-landed", "{g:#}");
    assert_eq!(cluster.selector_version(), "v1");
    assert_eq!(cluster.annotation("state").as_deref(), Some("rolled-back"));
    assert_eq!(
        cluster.wait_selector_patches(1).await,
        1,
        "one selector change"
    );
    assert_eq!(w.metric(ROLLBACKS).await, Some(1.0));
    assert_eq!(w.metric(FAILURES).await, Some(0.0));
    let events = cluster.wait_event("RolledBack").await;
    for never in ["RollbackFailed", "WindowSuperseded"] {
        assert!(!events.iter().any(|e| e == never), "{never} in {events:?}");
    }
}

#[tokio::test]
async fn a_patch_that_hangs_past_kube_timeout_is_outcome_unknown_then_lands_once_on_redelivery() {
    let cluster = Cluster::start().await;
    let w = watchdog(&cluster).await;
    // The API server takes the PATCH and never serves it within kube_timeout (5 s); the
    // watchdog gives up on it, and so the server never applies it.
    rollback_outcome_unknown(&cluster, &w, Fault::Delay(Duration::from_mins(1))).await;
    w.wait_status("/v1/guards to say so", Duration::from_secs(10), |g| {
        g["window"]["rollback"] == "unknown" && g["window"]["open"] == true
    })
    .await;
    assert_eq!(
        cluster.selector_version(),
        "v2",
        "the hung patch never landed"
    );
    // Alertmanager re-delivers the firing alert: the re-read shows green, so the lost patch did
    // not land, and the rollback is patched again, once.
    assert_eq!(w.post_alert(&critical_alert("v2")).await, 200);
    cluster.wait_selector("v1", Duration::from_secs(10)).await;
    w.wait_rolled_back(&cluster).await;
    assert_eq!(cluster.wait_selector_patches(1).await, 1);
    assert_eq!(w.metric(ROLLBACKS).await, Some(1.0));
    assert_eq!(w.metric(FAILURES).await, Some(0.0));
    assert_eq!(cluster.events_with("RolledBack"), 1);
}
