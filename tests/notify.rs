//! Notifications after a real rollback: a JSON receiver and a Slack-format receiver (its URL a
//! secret file, as a Slack webhook's is) get the evidence; a receiver that is down and one that
//! is slow never delay the revert, and are retried and counted.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use common::secrets::{NOTIFY_PATH, NOTIFY_TOKEN};
use common::{Cluster, Setup, Watchdog, critical_alert};
use serde_json::Value;

/// What a receiver got: each request's headers and JSON body.
type Got = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// A receiver on loopback answering `status` after `delay`, at `path`.
async fn receiver(path: &str, status: u16, delay: Duration) -> (String, Got) {
    let got: Got = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new()
        .route(
            path,
            axum::routing::post(
                move |State(got): State<Got>, headers: HeaderMap, body: axum::Json<Value>| async move {
                    got.lock().unwrap().push((headers, body.0));
                    tokio::time::sleep(delay).await;
                    axum::http::StatusCode::from_u16(status).unwrap()
                },
            ),
        )
        .with_state(keep);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}{path}"), got)
}

fn received(got: &Got) -> Vec<(HeaderMap, Value)> {
    got.lock().unwrap().clone()
}

fn sent(metrics: &str, receiver: &str, result: &str) -> Option<f64> {
    common::metric(
        metrics,
        &format!(
            "cutover_watchdog_notifications_total{{receiver=\"{receiver}\",result=\"{result}\"}}"
        ),
    )
}

/// The JSON payload of a `RolledBack` notification after the alert rollback of
/// `a_rollback_reaches_a_json_and_a_slack_receiver_with_the_evidence`.
fn has_the_evidence(cluster: &Cluster, headers: &HeaderMap, body: &Value) {
    assert_eq!(headers["authorization"], format!("Bearer {NOTIFY_TOKEN}"));
    assert_eq!(headers["x-team"], "sre");
    assert_eq!(body["guard"], "checkout");
    assert_eq!(body["namespace"], "default");
    assert_eq!(body["service"], "svc-production");
    assert_eq!(body["green_version"], "v2");
    assert_eq!(body["blue_version"], "v1");
    assert_eq!(body["trigger"]["kind"], "alert");
    assert_eq!(body["trigger"]["severity"], "critical");
    assert!(
        body["time_to_revert_seconds"].as_f64().is_some(),
        "{body:#}"
    );
    assert_eq!(
        body["cutover_at"].as_str().unwrap(),
        cluster.annotation("cutover-at").unwrap()
    );
    let pods: Vec<&str> = body["green_pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        pods,
        ["my-microservice-v2-0", "my-microservice-v2-1"],
        "{body:#}"
    );
    assert!(
        body["commands"][2]
            .as_str()
            .unwrap()
            .contains("logs -l version=v2")
    );
    assert!(
        body["dashboard_url"]
            .as_str()
            .unwrap()
            .contains("var-guard=checkout&from=")
    );
}

const ALERTS: &str = "  alerts:\n    match: {app: my-microservice}\n";

#[tokio::test]
async fn a_rollback_reaches_a_json_and_a_slack_receiver_with_the_evidence() {
    let cluster = Cluster::start().await;
    let (json_url, json_got) = receiver("/hook", 200, Duration::ZERO).await;
    let path = format!("/services/{NOTIFY_PATH}");
    let (slack_url, slack_got) = receiver(&path, 200, Duration::ZERO).await;
    let dir = cluster.dir.path();
    std::fs::write(dir.join("slack-url"), format!("{slack_url}\n")).unwrap();
    std::fs::write(dir.join("notify-token"), NOTIFY_TOKEN).unwrap();
    let top = format!(
        "notifications:\n\
         - {{name: ops, url: '{json_url}', bearer_token_file: {token}, headers: {{X-Team: sre}}, \
            dashboard_url: 'https://grafana.example/d/cw?var-guard={{{{guard}}}}&from={{{{from_ms}}}}&to={{{{to_ms}}}}'}}\n\
         - {{name: sre-slack, url_file: {slack}, format: slack, events: [RolledBack]}}\n",
        token = dir.join("notify-token").display(),
        slack = dir.join("slack-url").display(),
    );
    let setup = Setup {
        top: &top,
        extra: ALERTS,
        ..Setup::default()
    };
    let w = Watchdog::start(&cluster, &setup).await;
    cluster.cut_over_recorded("v2").await;
    assert_eq!(w.post_alert(&critical_alert("v2")).await, 200);
    cluster.wait_state("rolled-back").await;

    let rolled_back = |got: &Got| {
        received(got).into_iter().find(|(_, body)| {
            body["event"] == "RolledBack"
                || body["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("RolledBack"))
        })
    };
    let json = w
        .wait_until(
            "the JSON notification",
            Duration::from_secs(10),
            async || rolled_back(&json_got),
            Option::is_some,
        )
        .await
        .unwrap();
    let (headers, body) = json;
    has_the_evidence(&cluster, &headers, &body);
    // The JSON receiver takes every Warning; RollbackTriggered came first.
    assert!(
        received(&json_got)
            .iter()
            .any(|(_, b)| b["event"] == "RollbackTriggered")
    );
    assert!(
        !received(&json_got)
            .iter()
            .any(|(_, b)| b["event"] == "CutoverDetected"),
        "Normal Events only when listed"
    );

    let (_, slack) = w
        .wait_until(
            "the Slack notification",
            Duration::from_secs(10),
            async || rolled_back(&slack_got),
            Option::is_some,
        )
        .await
        .unwrap();
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .contains("default/svc-production")
    );
    assert!(
        slack["blocks"].to_string().contains("critical alert"),
        "{slack:#}"
    );
    assert_eq!(received(&slack_got).len(), 1, "only the listed Event");
    let m = w.metrics().await;
    assert_eq!(sent(&m, "sre-slack", "sent"), Some(1.0));
    assert!(
        !w.logs().contains(NOTIFY_PATH),
        "the URL's secret path is never logged"
    );
}

#[tokio::test]
async fn a_receiver_that_is_down_or_slow_never_delays_the_revert_and_is_retried_and_counted() {
    let cluster = Cluster::start().await;
    let (slow_url, slow_got) = receiver("/slow", 200, Duration::from_secs(5)).await;
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_url = format!("http://{}/down", down.local_addr().unwrap());
    drop(down);
    let top = format!(
        "notifications:\n\
         - {{name: slow, url: '{slow_url}', timeout: 300ms, events: [RolledBack]}}\n\
         - {{name: down, url: '{down_url}', timeout: 300ms, events: [RolledBack]}}\n"
    );
    let setup = Setup {
        top: &top,
        extra: ALERTS,
        ..Setup::default()
    };
    let w = Watchdog::start(&cluster, &setup).await;
    cluster.cut_over_recorded("v2").await;
    assert_eq!(w.post_alert(&critical_alert("v2")).await, 200);
    // The revert does not wait for either receiver: it lands while the first attempts are out.
    cluster.wait_selector("v1", Duration::from_secs(5)).await;
    let m = w.metrics().await;
    assert_eq!(
        sent(&m, "slow", "failed"),
        Some(0.0),
        "still retrying when the selector was back"
    );
    let failed = async || {
        let m = w.metrics().await;
        (sent(&m, "slow", "failed"), sent(&m, "down", "failed"))
    };
    w.wait_until(
        "both deliveries to fail after their retries",
        Duration::from_secs(15),
        failed,
        |f| *f == (Some(1.0), Some(1.0)),
    )
    .await;
    assert_eq!(received(&slow_got).len(), 3, "three attempts");
    let logs = w.logs();
    assert!(logs.contains("notification not delivered"), "{logs}");
    assert!(
        !logs.contains("/down") && !logs.contains("/slow"),
        "URLs are logged by scheme and host only"
    );
}
