//! The whole loop on real parts: the real kubectl makes the cutover against the API double, the
//! real Prometheus scrapes the synthetic app, and the watchdog binary runs as a child process.
//! Time is scaled through config: 500 ms polls, a 5 s rate window, `for` of a few seconds.

// Metric counters here are small integers, which f64 holds exactly.
#![allow(clippy::float_cmp)]

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Setup, Stack, Watchdog};
use cutover_watchdog::sandbox::apiserver::Fault;
use cutover_watchdog::sandbox::traffic::Behaviour;

const FAILING: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.05,
    latency_seconds: 0.05,
};
const HEALTHY: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.001,
    latency_seconds: 0.05,
};
const FAILURES: &str = r#"cutover_watchdog_rollback_failures_total{guard="checkout"}"#;
const ROLLBACKS: &str =
    r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="error_rate"}"#;

#[tokio::test]
async fn green_error_ratio_reverts_the_selector_within_for_plus_rate_window_plus_two_polls() {
    let s = Stack::start(Cluster::start().await, Setup::default()).await;
    s.cut_over_to_v2_recorded().await;
    assert_eq!(
        s.cluster.annotation("previous-version").as_deref(),
        Some("v1")
    );

    let failing_since = Instant::now();
    s.app.set("v2", FAILING);
    // for (3 s) + rate window (5 s) + 2 polls (1 s), plus one 1 s scrape for Prometheus to see
    // it; with half again as slack for a loaded machine. It still catches a rollback that
    // waits for more than the breach: another rate window and `for` on top (18 s).
    let nominal = Duration::from_secs(3 + 5 + 1 + 1);
    let bound = nominal + nominal / 2;
    s.wait_selector("v1", bound.saturating_sub(failing_since.elapsed()))
        .await;
    let took = failing_since.elapsed();
    assert!(took <= bound, "took {took:?}");

    let svc = s.cluster.service();
    assert_eq!(
        svc["spec"]["selector"]["app"],
        common::APP,
        "other selector keys untouched"
    );
    assert_eq!(
        s.cluster.annotation("state").as_deref(),
        Some("rolled-back")
    );
    assert!(
        s.cluster
            .annotation("reason")
            .unwrap()
            .contains("error_rate")
    );
    let status = s.wait_rolled_back().await;
    assert_eq!(status["last_decision"]["kind"], "rollback");
    let events = s.cluster.wait_event("RolledBack").await;
    for reason in ["CutoverDetected", "RollbackTriggered", "RolledBack"] {
        assert!(
            events.contains(&reason.to_owned()),
            "{reason} missing from {events:?}"
        );
    }
    // The rollback is over (the executor has answered the guard): one selector change.
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
    assert_eq!(s.metric(ROLLBACKS).await, 1.0);
    let m = s.watchdog.metrics().await;
    assert!(common::metric(&m, "cutover_watchdog_rollback_duration_seconds_count").unwrap() >= 1.0);
    assert_eq!(
        common::metric(&m, r#"cutover_watchdog_window_active{guard="checkout"}"#),
        Some(0.0)
    );
    // Every write names the watchdog as its field manager, and the selector's version key is
    // now the watchdog's in managedFields, which is what Argo CD's managedFieldsManagers reads.
    let writes: Vec<_> = s
        .cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("cutover-watchdog/"))
        .filter(|r| matches!(r.method.as_str(), "POST" | "PUT" | "PATCH"))
        .collect();
    assert!(!writes.is_empty());
    for w in &writes {
        assert!(
            w.query.contains("fieldManager=cutover-watchdog"),
            "{} {}?{}",
            w.method,
            w.path,
            w.query
        );
    }
    let svc = s.cluster.service();
    let holder = svc["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| !e["fieldsV1"]["f:spec"]["f:selector"]["f:version"].is_null())
        .unwrap()
        .clone();
    assert_eq!(holder["manager"], "cutover-watchdog");
}

#[tokio::test]
async fn a_blip_shorter_than_for_does_not_roll_back() {
    // `for` (10 s) outlasts the blip (1.5 s) smeared by the 5 s rate window.
    let s = Stack::start(
        Cluster::start().await,
        Setup {
            for_: "10s",
            ..Setup::default()
        },
    )
    .await;
    s.cut_over_to_v2().await;
    s.app.set(
        "v2",
        Behaviour {
            error_ratio: 0.5,
            ..FAILING
        },
    );
    s.wait_status("the check to breach", Duration::from_secs(10), |g| {
        g["checks"][0]["breached"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the blip's length is the test's input
    s.app.set("v2", HEALTHY);
    s.wait_status("the breach to clear", Duration::from_secs(15), |g| {
        g["checks"][0]["breached"] == false && g["checks"][0]["last"]["kind"] == "value"
    })
    .await;
    assert_eq!(s.cluster.selector_version(), "v2");
    assert_eq!(s.cluster.selector_patches(), 0);
    assert_eq!(s.metric(ROLLBACKS).await, 0.0);
}

#[tokio::test]
async fn green_with_no_traffic_is_no_data_and_does_not_roll_back() {
    let s = Stack::quick().await;
    s.app.set("v2", Behaviour::IDLE);
    s.cut_over_to_v2().await;
    let series = r#"cutover_watchdog_check_no_data_total{check="error_rate",guard="checkout"}"#;
    s.wait_metric(series, 6.0, Duration::from_secs(15)).await;
    assert_eq!(s.cluster.selector_version(), "v2");
    assert_eq!(s.cluster.selector_patches(), 0);
    let g = &s.watchdog.guards().await[0];
    assert_eq!(g["checks"][0]["last"]["kind"], "no_data");
}

#[tokio::test]
async fn prometheus_killed_mid_window_is_never_a_breach_and_the_watchdog_stays_up() {
    let mut s = Stack::quick().await;
    s.cut_over_to_v2().await;
    s.wait_status("a first value", Duration::from_secs(10), |g| {
        g["checks"][0]["last"]["kind"] == "value"
    })
    .await;
    s.prometheus.kill().await;
    s.app.set("v2", FAILING);
    s.wait_metric(
        r#"cutover_watchdog_prometheus_query_errors_total{reason="connect"}"#,
        6.0,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        s.watchdog.alive(),
        "the watchdog must survive:\n{}",
        s.watchdog.logs()
    );
    assert_eq!(s.cluster.selector_version(), "v2");
    assert_eq!(s.cluster.selector_patches(), 0);
    let g = &s.watchdog.guards().await[0];
    assert_eq!(g["checks"][0]["last"]["kind"], "error");
    assert_eq!(g["checks"][0]["breached"], false);
    let health = common::http_get(format!("{}/healthz", s.watchdog.admin))
        .await
        .unwrap();
    assert!(health.status().is_success());
}

#[tokio::test]
async fn blue_without_ready_pods_blocks_the_rollback_until_it_is_ready() {
    let s = Stack::start(
        Cluster::with_ready_pods(0, 2).await,
        Setup {
            for_: "1s",
            ..Setup::default()
        },
    )
    .await;
    s.cut_over_to_v2().await;
    s.app.set("v2", FAILING);
    let blocked = r#"cutover_watchdog_rollback_blocked_total{guard="checkout"}"#;
    s.wait_metric(blocked, 1.0, Duration::from_secs(15)).await;
    assert_eq!(
        s.cluster.selector_version(),
        "v2",
        "never revert onto nothing"
    );
    s.watchdog.wait_log("rollback blocked").await;
    s.cluster.wait_event("RollbackBlocked").await;
    // Several more polls while blocked: one event per episode, not one per poll.
    s.wait_polls(4).await;
    assert_eq!(s.cluster.events_with("RollbackBlocked"), 1);

    s.cluster.set_pod_ready("v1", 0, true);
    s.wait_selector("v1", Duration::from_secs(10)).await;
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
    assert_eq!(s.metric(blocked).await, 1.0);
}

#[tokio::test]
async fn a_409_on_the_first_patch_yields_exactly_one_selector_change() {
    let s = Stack::quick().await;
    s.cut_over_to_v2_recorded().await;
    s.cluster.fault_next_service_patch(Fault::ConcurrentWrite);
    s.app.set("v2", FAILING);
    s.wait_selector("v1", Duration::from_secs(15)).await;
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
    let requests = s.cluster.api.requests();
    let conflicts = requests
        .iter()
        .filter(|r| r.is_patch_of("services", common::SVC) && r.status == 409)
        .count();
    assert_eq!(conflicts, 1, "the first patch met a concurrent write");
    s.watchdog.wait_log("409").await;
}

#[tokio::test]
async fn a_kill_9_and_restart_mid_window_resumes_the_window() {
    let mut s = Stack::quick().await;
    s.cut_over_to_v2_recorded().await;
    let cutover_at = s.cluster.annotation("cutover-at").unwrap();
    let before = s.watchdog.guards().await[0]["window"].clone();
    s.watchdog.child.start_kill().unwrap();
    s.watchdog.child.wait().await.unwrap();

    let config = s.watchdog.config.clone();
    let (main, admin) = s.watchdog.ports;
    s.watchdog = Watchdog::start_with(&s.cluster, &config, main, admin).await;
    let g = s
        .wait_status("the resumed window", Duration::from_secs(10), |g| {
            g["window"]["open"] == true
        })
        .await;
    assert_eq!(
        g["window"]["start"], before["start"],
        "the window keeps its original clock"
    );
    assert_eq!(g["window"]["rollback_target"], "v1");
    assert_eq!(s.cluster.annotation("cutover-at").unwrap(), cutover_at);
    assert_eq!(
        s.metric(r#"cutover_watchdog_cutovers_total{guard="checkout"}"#)
            .await,
        0.0,
        "resumed, not new"
    );

    s.app.set("v2", FAILING);
    s.wait_selector("v1", Duration::from_secs(15)).await;
    s.wait_rolled_back().await;
    let events = s.cluster.event_reasons();
    assert_eq!(
        events.iter().filter(|e| *e == "CutoverDetected").count(),
        1,
        "{events:?}"
    );
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
}

#[tokio::test]
async fn dry_run_records_would_roll_back_once_and_patches_nothing() {
    let s = Stack::start(
        Cluster::start().await,
        Setup {
            for_: "1s",
            dry_run: true,
            ..Setup::default()
        },
    )
    .await;
    s.cut_over_to_v2().await;
    s.app.set("v2", FAILING);
    let series =
        r#"cutover_watchdog_dry_run_rollbacks_total{guard="checkout",trigger="error_rate"}"#;
    s.wait_metric(series, 1.0, Duration::from_secs(15)).await;
    s.cluster.wait_event("WouldRollBack").await;
    // Further breached polls do not record it again.
    s.wait_polls(4).await;
    assert_eq!(s.metric(series).await, 1.0);
    assert_eq!(s.metric(ROLLBACKS).await, 0.0);
    assert_eq!(s.cluster.selector_version(), "v2");
    let watchdog_patches = s
        .cluster
        .api
        .requests()
        .iter()
        .filter(|r| {
            r.method == "PATCH"
                && r.path.contains("/services/")
                && r.user_agent.starts_with("cutover-watchdog/")
        })
        .count();
    assert_eq!(watchdog_patches, 0, "a dry run patches nothing");
    let events = s.cluster.event_reasons();
    assert_eq!(
        events.iter().filter(|e| *e == "WouldRollBack").count(),
        1,
        "{events:?}"
    );
}

#[tokio::test]
async fn a_clean_cutover_is_declared_stable_and_its_window_closes() {
    let setup = Setup {
        window: "6s",
        stabilization: "3s",
        ..Setup::default()
    };
    let s = Stack::start(Cluster::start().await, setup).await;
    s.cut_over_to_v2().await;
    s.cluster.wait_state("stable").await;
    s.watchdog
        .wait_log("Deployment v2 now serving production traffic")
        .await;
    s.cluster.wait_event("CutoverStable").await;
    s.wait_status("the window to close", Duration::from_secs(10), |g| {
        g["window"]["open"] == false
    })
    .await;
    assert_eq!(
        s.metric(r#"cutover_watchdog_window_active{guard="checkout"}"#)
            .await,
        0.0
    );
    assert_eq!(s.cluster.annotation("state").as_deref(), Some("stable"));
    assert_eq!(s.cluster.selector_version(), "v2");
}

#[tokio::test]
async fn a_window_that_ends_unstable_expires_with_a_warning() {
    // Breached throughout, but `for` is longer than the window: never trips, never stable.
    let setup = Setup {
        window: "5s",
        stabilization: "2s",
        for_: "60s",
        ..Setup::default()
    };
    let s = Stack::start(Cluster::start().await, setup).await;
    s.app.set("v2", FAILING);
    s.cut_over_to_v2().await;
    s.wait_status("the window to expire", Duration::from_secs(15), |g| {
        g["state"] == "expired"
    })
    .await;
    s.cluster.wait_state("expired").await;
    s.cluster.wait_event("WindowExpired").await;
    assert_eq!(s.cluster.selector_version(), "v2");
}

#[tokio::test]
async fn a_human_reverting_during_the_window_supersedes_it_and_nothing_is_patched() {
    let s = Stack::quick().await;
    s.cut_over_to_v2().await;
    s.cluster.cut_over("v1").await;
    s.cluster.wait_state("superseded").await;
    s.app.set("v2", FAILING);
    let polls = s
        .metric("cutover_watchdog_prometheus_query_duration_seconds_count")
        .await;
    // Green's breach is in Prometheus's data...
    let ratio = common::error_ratio("v2");
    s.wait_until(
        "green's breach visible in Prometheus",
        Duration::from_secs(15),
        async || common::query_value(&s.prometheus.url(), &ratio).await,
        |v| v.is_some_and(|v| v > 0.02),
    )
    .await;
    // ...for `for` (1 s) and two polls more: a guard still watching would have acted by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.metric("cutover_watchdog_prometheus_query_duration_seconds_count")
            .await,
        polls,
        "no polls once closed"
    );
    assert_eq!(s.cluster.selector_version(), "v1");
    assert_eq!(s.cluster.selector_patches(), 0);
}

#[tokio::test]
async fn sigterm_lets_a_patch_in_flight_finish_and_exits_cleanly() {
    let mut s = Stack::quick().await;
    s.cut_over_to_v2_recorded().await;
    // The rollback's PATCH takes 2 s to answer; SIGTERM arrives while it is in flight.
    s.cluster
        .fault_next_service_patch(Fault::Delay(Duration::from_secs(2)));
    s.app.set("v2", FAILING);
    let patches_in_flight = || {
        let arrived = s
            .cluster
            .api
            .arrivals()
            .iter()
            .filter(|(m, p)| m == "PATCH" && p.ends_with(common::SVC))
            .count();
        let answered = s
            .cluster
            .api
            .requests()
            .iter()
            .filter(|r| r.is_patch_of("services", common::SVC))
            .count();
        arrived - answered
    };
    s.wait_until(
        "the rollback PATCH to be in flight",
        Duration::from_secs(15),
        async || patches_in_flight(),
        |n| *n == 1,
    )
    .await;
    let pid = s.watchdog.child.id().unwrap();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), s.watchdog.child.wait())
        .await
        .expect("exits within the shutdown deadline")
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{}", s.watchdog.logs());
    assert_eq!(
        s.cluster.selector_version(),
        "v1",
        "the patch in flight finished"
    );
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
    assert!(s.watchdog.logs().contains("cutover-watchdog stopped"));
}

#[tokio::test]
async fn a_refused_patch_is_reported_as_rollback_failed_and_retried_while_the_trigger_holds() {
    let s = Stack::quick().await;
    s.cut_over_to_v2_recorded().await;
    s.cluster.fault_next_service_patch(Fault::Status(403));
    s.app.set("v2", FAILING);
    s.wait_metric(FAILURES, 1.0, Duration::from_secs(15)).await;
    s.cluster.wait_event("RollbackFailed").await;
    s.watchdog
        .wait_log("failed to patch service default/svc-production")
        .await;
    // The next poll, with the trigger still holding, tries again and succeeds.
    s.wait_selector("v1", Duration::from_secs(10)).await;
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
}

#[tokio::test]
async fn transient_500s_on_the_patch_are_retried_with_backoff_and_the_rollback_lands() {
    let s = Stack::quick().await;
    s.cut_over_to_v2_recorded().await;
    s.cluster.fault_service_patches(Fault::Status(500), 2);
    s.app.set("v2", FAILING);
    s.wait_selector("v1", Duration::from_secs(15)).await;
    s.wait_rolled_back().await;
    let failed = s
        .cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.is_patch_of("services", common::SVC) && r.status == 500)
        .count();
    assert_eq!(failed, 2);
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
    assert_eq!(
        s.metric(FAILURES).await,
        0.0,
        "retried inside the budget, not reported"
    );
    assert!(s.watchdog.logs().contains("transient API error; retrying"));
}

#[tokio::test]
async fn a_patch_that_keeps_failing_exhausts_the_budget_and_reports_rollback_failed_with_its_cause()
{
    let s = Stack::quick().await;
    s.cut_over_to_v2_recorded().await;
    s.cluster.fault_service_patches(Fault::Status(503), 10_000);
    s.app.set("v2", FAILING);
    // kube_timeout is 5 s in the test config.
    s.wait_metric(FAILURES, 1.0, Duration::from_secs(20)).await;
    assert_eq!(s.cluster.selector_version(), "v2");
    s.cluster.wait_event("RollbackFailed").await;
    s.watchdog
        .wait_log("failed to patch service default/svc-production")
        .await;
}

#[tokio::test]
async fn a_service_that_keeps_changing_under_the_patch_is_reported_not_overwritten() {
    let s = Stack::quick().await;
    s.cut_over_to_v2_recorded().await;
    s.cluster
        .fault_service_patches(Fault::ConcurrentWrite, 10_000);
    s.app.set("v2", FAILING);
    s.wait_metric(FAILURES, 1.0, Duration::from_secs(15)).await;
    assert_eq!(
        s.cluster.selector_version(),
        "v2",
        "never patched over a newer write"
    );
    s.watchdog
        .wait_log("it changed under 6 attempts in a row (409)")
        .await;
}
