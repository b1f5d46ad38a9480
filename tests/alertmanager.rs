//! Alertmanager as a first-class trigger, end to end: the real Prometheus evaluates an alert
//! rule on the synthetic app's green error ratio, two real Alertmanagers (an HA pair) deliver it
//! with bearer auth, and the watchdog reverts the selector once.

// Metric counters here are small integers, which f64 holds exactly.
#![allow(clippy::float_cmp)]
// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::secrets::AM_TOKEN as TOKEN;
use common::{Cluster, Setup, Watchdog};
use cutover_watchdog::sandbox::free_port;
use cutover_watchdog::sandbox::processes::{self, PrometheusSetup};
use cutover_watchdog::sandbox::traffic::{Behaviour, TrafficApp};
use serde_json::Value;

const HEALTHY: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.001,
    latency_seconds: 0.05,
};
const FAILING: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.05,
    latency_seconds: 0.05,
};
const RULE_FOR_SECS: u64 = 2;
const GROUP_WAIT_SECS: u64 = 1;

fn rules() -> String {
    format!(
        r#"groups:
- name: green
  rules:
  - alert: GreenErrorRateHigh
    expr: sum by (app, version) (rate(http_requests_total{{code=~"5.."}}[5s])) / sum by (app, version) (rate(http_requests_total[5s])) > 0.02
    for: {RULE_FOR_SECS}s
    labels: {{severity: critical}}
    annotations: {{summary: "error rate above 2% on {{{{ $labels.version }}}}"}}
"#
    )
}

/// The README's receiver (`examples/alertmanager.yml`), pointed at this test's watchdog.
fn alertmanager_config(watchdog_port: u16, token_file: &std::path::Path) -> String {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/alertmanager.yml"
    ))
    .unwrap();
    example
        .replace(
            "http://cutover-watchdog.cutover-watchdog.svc:8080",
            &format!("http://127.0.0.1:{watchdog_port}"),
        )
        .replace(
            "/etc/alertmanager/secrets/cutover-watchdog-token/token",
            &token_file.display().to_string(),
        )
        .replace("group_wait: 1s", &format!("group_wait: {GROUP_WAIT_SECS}s"))
}

fn webhook_setup(token_file: &std::path::Path) -> String {
    format!("webhook:\n  bearer_token_file: {}\n", token_file.display())
}

const ALERTS: &str = "  alerts:\n    match: {app: my-microservice}\n    severities: [critical]\n";

#[tokio::test]
async fn a_real_alertmanager_critical_alert_reverts_the_selector_once_even_from_an_ha_pair() {
    let cluster = Cluster::start().await;
    let token_file = cluster.dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (main, admin) = (free_port().unwrap(), free_port().unwrap());

    let app = TrafficApp::start(common::APP, &[("v1", HEALTHY), ("v2", HEALTHY)])
        .await
        .unwrap();
    let am_config = alertmanager_config(main, &token_file);
    let am1 = processes::alertmanager(&am_config, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let am2 = processes::alertmanager(&am_config, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let prometheus = processes::prometheus(&PrometheusSetup {
        targets: vec![app.addr()],
        rules: Some(rules()),
        alertmanagers: vec![am1.addr, am2.addr],
        ..PrometheusSetup::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    common::warm_up(&prometheus.url()).await;

    // The check cannot trip here (`for` is 10 minutes): only the alert can act.
    let top = webhook_setup(&token_file);
    let url = prometheus.url();
    let setup = Setup {
        prometheus: &url,
        for_: "10m",
        extra: ALERTS,
        top: &top,
        ..Setup::default()
    };
    let config = cluster.dir.path().join("watchdog.yaml");
    std::fs::write(&config, setup.yaml(main, admin)).unwrap();
    let watchdog = Watchdog::start_with(&cluster, &config, main, admin).await;

    cluster.cut_over_recorded("v2").await;
    app.set("v2", FAILING);

    // From the moment Prometheus has the alert pending: its `for`, then group_wait, plus 2 s
    // for delivery and the patch; with half again as slack, so a loaded machine still passes
    // and a missed alert (one more group_interval) still fails.
    let pending_since = wait_for_alert(&prometheus.url()).await;
    let nominal = Duration::from_secs(RULE_FOR_SECS + GROUP_WAIT_SECS + 2);
    let bound = nominal + nominal / 2;
    let remaining = bound.saturating_sub(pending_since.elapsed());
    watchdog
        .wait_until(
            &format!("the selector back at v1 within {bound:?} of the alert going pending"),
            remaining,
            async || cluster.selector_version(),
            |v| v == "v1",
        )
        .await;

    // Both Alertmanagers deliver (now, and on each group_interval): still one selector change.
    let delivered = r#"cutover_watchdog_webhook_requests_total{code="200"}"#;
    watchdog
        .wait_metric(delivered, 2.0, Duration::from_secs(10))
        .await;
    let status = watchdog.wait_rolled_back(&cluster).await;
    assert_eq!(cluster.wait_selector_patches(1).await, 1);
    assert_eq!(
        watchdog
            .metric(r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="alert"}"#)
            .await,
        Some(1.0)
    );
    assert!(
        cluster
            .annotation("reason")
            .unwrap()
            .contains("GreenErrorRateHigh")
    );
    cluster.wait_event("RolledBack").await;
    let alerts = status["last_alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["alertname"] == "GreenErrorRateHigh" && a["outcome"] == "rollback"),
        "{alerts:?}"
    );
    assert!(
        !watchdog.logs().contains(TOKEN),
        "the token never reaches the logs"
    );
}

/// Waits for the rule's alert on v2 to be pending or firing in Prometheus; returns when first seen.
async fn wait_for_alert(prometheus: &str) -> Instant {
    let alert_names = async || {
        let answer = common::http_get(format!("{prometheus}/api/v1/alerts"))
            .await
            .ok()?;
        let body: Value = answer.json().await.ok()?;
        let alerts = body["data"]["alerts"].as_array()?.iter();
        Some(alerts.map(|a| a["labels"].clone()).collect::<Vec<_>>())
    };
    let active = |labels: &Option<Vec<Value>>| {
        labels
            .iter()
            .flatten()
            .any(|l| l["alertname"] == "GreenErrorRateHigh" && l["version"] == "v2")
    };
    common::wait_until(
        "the alert rule to go pending",
        Duration::from_secs(20),
        alert_names,
        active,
    )
    .await;
    Instant::now()
}

/// A watchdog with only the webhook as trigger, and no Prometheus behind it.
async fn webhook_only(cluster: &Cluster) -> Watchdog {
    let token_file = cluster.dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let top = webhook_setup(&token_file);
    Watchdog::start(
        cluster,
        &Setup {
            for_: "10m",
            extra: ALERTS,
            top: &top,
            ..Setup::default()
        },
    )
    .await
}

async fn post_fixture(watchdog: &Watchdog, name: &str) -> reqwest::StatusCode {
    let body = std::fs::read(format!(
        "{}/tests/fixtures/alertmanager/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    common::http()
        .post(format!("{}/webhook/alertmanager", watchdog.main))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

async fn wait_for_alerts_seen(watchdog: &Watchdog, n: usize) -> Value {
    let what = format!("{n} alerts recorded in /v1/guards");
    watchdog
        .wait_status(&what, Duration::from_secs(10), |g| {
            g["last_alerts"].as_array().is_some_and(|a| a.len() >= n)
        })
        .await
}

#[tokio::test]
async fn the_same_critical_alert_posted_five_times_concurrently_yields_one_patch() {
    let cluster = Cluster::start().await;
    let watchdog = webhook_only(&cluster).await;
    cluster.cut_over_recorded("v2").await;
    let posts = (0..5).map(|_| post_fixture(&watchdog, "firing-critical-and-info.json"));
    for status in futures::future::join_all(posts).await {
        assert_eq!(status, 200);
    }
    cluster.wait_selector("v1", Duration::from_secs(10)).await;
    // 5 deliveries x 3 alerts each; /v1/guards keeps the last 10, and only one ever acted.
    let status = wait_for_alerts_seen(&watchdog, 10).await;
    watchdog.wait_rolled_back(&cluster).await;
    let critical: Vec<&Value> = status["last_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["alertname"] == "GreenErrorRateHigh")
        .collect();
    assert!(critical.len() >= 3, "{status:#}");
    assert!(
        critical
            .iter()
            .filter(|a| a["outcome"] == "rollback")
            .count()
            <= 1,
        "{status:#}"
    );
    let metrics = watchdog.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="alert"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        common::metric(
            &metrics,
            r#"cutover_watchdog_alerts_received_total{status="firing"}"#
        ),
        Some(15.0)
    );
    assert_eq!(cluster.wait_selector_patches(1).await, 1);
}

/// What `/v1/guards` recorded of the fixtures' critical alert, once all three alerts are in.
async fn critical_alert_seen(watchdog: &Watchdog) -> Value {
    let status = wait_for_alerts_seen(watchdog, 3).await;
    status["last_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alertname"] == "GreenErrorRateHigh")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_resolved_only_critical_alert_changes_nothing() {
    let cluster = Cluster::start().await;
    let watchdog = webhook_only(&cluster).await;
    cluster.cut_over_recorded("v2").await;
    assert_eq!(
        post_fixture(&watchdog, "critical-resolved-info-firing.json").await,
        200
    );
    let critical = critical_alert_seen(&watchdog).await;
    assert_eq!(critical["status"], "resolved");
    assert_eq!(critical["outcome"], "ignored: resolved");
    assert_eq!(cluster.selector_version(), "v2");
    assert_eq!(cluster.selector_patches(), 0);
    let metrics = watchdog.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            r#"cutover_watchdog_alerts_received_total{status="resolved"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_critical_alert_before_any_cutover_changes_nothing() {
    let cluster = Cluster::start().await;
    let watchdog = webhook_only(&cluster).await;
    assert_eq!(
        post_fixture(&watchdog, "firing-critical-and-info.json").await,
        200
    );
    let critical = critical_alert_seen(&watchdog).await;
    assert_eq!(critical["outcome"], "ignored: no open window");
    assert_eq!(cluster.selector_version(), "v1");
    assert_eq!(cluster.selector_patches(), 0);
}

#[tokio::test]
async fn the_readme_alertmanager_receiver_passes_amtool_check_config() {
    let amtool = processes::find_binary("amtool", "prometheus-alertmanager", None)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(amtool)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/alertmanager.yml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/alertmanager.yml"
    ))
    .unwrap();
    let receiver = &example[example.find("- name: cutover-watchdog").unwrap()..];
    assert!(
        readme.contains(receiver.trim_end()),
        "the README shows the checked receiver verbatim"
    );
}
