//! The runbook's checks during the window, on the watchdog binary: an `http` check ("verify
//! business logic via synthetic transaction") against a real HTTP endpoint per version, which
//! rolls back once it answers 500 for longer than `for`; and blue kept ("never scale down blue
//! until green is proven stable"), which warns when blue's Ready Pods fall below
//! `min_ready_previous` mid-window; and traffic really moved ("request volume parity", the
//! sticky-session pitfall): a switch where blue keeps 40% of the requests, measured by the real
//! Prometheus, is a Warning `TrafficNotSwitched`.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use common::{APP, Cluster, NS, Setup, Stack, Watchdog};
use cutover_watchdog::sandbox::apiserver;
use cutover_watchdog::sandbox::traffic::Behaviour;

/// `GET /{version}/checkout`: v2 answers what `green` holds, every other version 200.
async fn checkout(State(green): State<Arc<AtomicU16>>, Path(version): Path<String>) -> StatusCode {
    let code = if version == "v2" {
        green.load(Ordering::SeqCst)
    } else {
        200
    };
    StatusCode::from_u16(code).unwrap()
}

#[tokio::test]
async fn an_http_check_that_turns_to_500_rolls_back_once_its_for_has_passed() {
    let green = Arc::new(AtomicU16::new(200));
    let app = axum::Router::new()
        .route("/{version}/checkout", axum::routing::get(checkout))
        .with_state(green.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cluster = Cluster::start().await;
    // Prometheus is not running: the error-rate check only errs, which is never a breach.
    let extra = format!(
        "  - name: checkout_txn\n    http: {{url: 'http://{addr}/{{{{version}}}}/checkout', timeout: 1s}}\n    for: 1s\n"
    );
    let setup = Setup {
        extra: &extra,
        ..Setup::default()
    };
    let w = Watchdog::start(&cluster, &setup).await;
    cluster.cut_over_recorded("v2").await;
    let passing = w
        .wait_status("a passing probe", Duration::from_secs(10), |g| {
            g["checks"][1]["last"]["value"] == 0.0
        })
        .await;
    assert_eq!(passing["checks"][1]["breached"], false, "{passing:#}");
    assert_eq!(cluster.selector_version(), "v2");

    green.store(500, Ordering::SeqCst);
    let failing = w
        .wait_status("a failing probe", Duration::from_secs(10), |g| {
            g["checks"][1]["error"]
                .as_str()
                .is_some_and(|e| e.contains("HTTP 500, expected 200"))
        })
        .await;
    assert_eq!(failing["checks"][1]["breached"], true, "{failing:#}");
    cluster.wait_selector("v1", Duration::from_secs(15)).await;
    assert_eq!(cluster.wait_selector_patches(1).await, 1);
    let rollbacks = r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="checkout_txn"}"#;
    assert_eq!(common::metric(&w.metrics().await, rollbacks), Some(1.0));
}

#[tokio::test]
async fn scaling_blue_down_mid_window_warns_once_and_rolls_nothing_back() {
    let cluster = Cluster::start().await;
    let w = Watchdog::start(&cluster, &Setup::default()).await;
    cluster.cut_over_recorded("v2").await;
    for i in 0..2 {
        let labels = [("app", APP), ("version", "v1")];
        let pod = apiserver::pod(NS, &format!("{APP}-v1-{i}"), &labels, false);
        cluster.api.apply(pod).unwrap();
    }
    cluster.wait_event("PreviousVersionScaledDown").await;
    let scaled = r#"cutover_watchdog_previous_scaled_down_total{guard="checkout"}"#;
    let polls = async || common::metric(&w.metrics().await, scaled);
    w.wait_until("the count", Duration::from_secs(5), polls, |n| {
        *n == Some(1.0)
    })
    .await;
    let g = w
        .wait_status("the decision", Duration::from_secs(5), |g| {
            g["last_decision"]["kind"] == "previous-scaled-down"
        })
        .await;
    assert!(
        g["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("v1 has 0 Ready pods, below min_ready_previous 1"),
        "{g:#}"
    );
    // Once per episode: later polls that still find blue short say nothing new.
    let rounds = async || w.metrics().await;
    w.wait_until(
        "two more poll rounds",
        Duration::from_secs(5),
        rounds,
        |m| {
            common::metric(m, "cutover_watchdog_poll_duration_seconds_count")
                .is_some_and(|n| n >= 6.0)
        },
    )
    .await;
    assert_eq!(cluster.events_with("PreviousVersionScaledDown"), 1);
    assert_eq!(cluster.selector_version(), "v2");
}

#[tokio::test]
async fn a_partial_switch_where_blue_keeps_40_percent_is_traffic_not_switched() {
    let extra = format!(
        "  traffic:\n    query: 'sum(rate(http_requests_total{{app=\"{APP}\",version=\"{{{{version}}}}\"}}[5s]))'\n    within: 8s\n"
    );
    let setup = Setup {
        extra: &extra,
        window: "30s",
        stabilization: "20s",
        ..Setup::default()
    };
    let s = Stack::start(Cluster::start().await, setup).await;
    common::warm_up(&s.prometheus.url()).await;
    // Blue's rate at its steady 100/s, as a production Service's would be before the switch.
    let blue = format!("sum(rate(http_requests_total{{app=\"{APP}\",version=\"v1\"}}[5s]))");
    let prometheus = s.prometheus.url();
    let rate = async || common::query_value(&prometheus, &blue).await;
    s.wait_until(
        "blue's rate to settle",
        Duration::from_secs(20),
        rate,
        |r| r.is_some_and(|r| r > 90.0),
    )
    .await;
    s.cut_over_to_v2().await;
    // Sticky sessions keep some clients on blue.
    let healthy = |rps| Behaviour {
        rps,
        error_ratio: 0.001,
        latency_seconds: 0.05,
    };
    s.app.set("v1", healthy(40.0));
    s.app.set("v2", healthy(60.0));
    s.cluster.wait_event("TrafficNotSwitched").await;
    let metrics = s.watchdog.metrics().await;
    let failed =
        r#"cutover_watchdog_traffic_check_failures_total{guard="checkout",kind="not_switched"}"#;
    assert_eq!(common::metric(&metrics, failed), Some(1.0));
    let share = common::metric(
        &metrics,
        r#"cutover_watchdog_traffic_share{guard="checkout",version="v2"}"#,
    )
    .unwrap();
    assert!((0.5..0.75).contains(&share), "green's share {share}");
    let g = s
        .wait_status(
            "the traffic check in /v1/guards",
            Duration::from_secs(5),
            |g| g["window"]["traffic"]["switched"] == false,
        )
        .await;
    let before = g["window"]["traffic"]["before"].as_f64().unwrap();
    assert!(
        (90.0..110.0).contains(&before),
        "blue's rate before the switch: {g:#}"
    );
    // `action: warn`: the selector stays.
    assert_eq!(s.cluster.selector_version(), "v2");
}
