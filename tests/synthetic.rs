//! An `http` check, the runbook's "verify business logic via synthetic transaction", against a
//! real HTTP endpoint per version: the watchdog binary probes it each poll; while it answers
//! `expect_status` nothing happens, and once it answers 500 for longer than `for`, the selector
//! goes back to blue with the check as the trigger.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use common::{Cluster, Setup, Watchdog};

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
