//! `replay` against the real Prometheus, with history the test makes: the synthetic app
//! through a breach and the watchdog guarding it (Prometheus scrapes both). A replay of that
//! cutover reaches the rollback `serve` made within one poll; a replay with a higher threshold
//! does not; a replay of a version without metrics is no data; and `--since` finds each window
//! the watchdog recorded.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::{APP, Cluster, Setup, Watchdog};
use cutover_watchdog::sandbox::free_port;
use cutover_watchdog::sandbox::processes::{self, ChildServer, PrometheusSetup};
use cutover_watchdog::sandbox::traffic::{Behaviour, TrafficApp};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(500);

const HEALTHY: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.001,
    latency_seconds: 0.05,
};

/// `cutover-watchdog replay ARGS --config CONFIG`.
async fn replay(config: &std::path::Path, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
        .arg("replay")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("CUTOVER_WATCHDOG_CONFIG")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_mins(1), run)
        .await
        .unwrap()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Recorded {
    cluster: Cluster,
    app: TrafficApp,
    _prometheus: ChildServer,
    watchdog: Watchdog,
}

/// The app, a Prometheus scraping it and the watchdog's admin listener, and the watchdog.
async fn recorded() -> Recorded {
    let cluster = Cluster::start().await;
    let app = TrafficApp::start(APP, &[("v1", HEALTHY), ("v2", HEALTHY)])
        .await
        .unwrap();
    let (main, admin) = (free_port().unwrap(), free_port().unwrap());
    let prometheus = processes::prometheus(&PrometheusSetup {
        targets: vec![app.addr(), format!("127.0.0.1:{admin}").parse().unwrap()],
        ..PrometheusSetup::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    common::warm_up(&prometheus.url()).await;
    let url = prometheus.url();
    let setup = Setup {
        prometheus: &url,
        window: "8s",
        stabilization: "3s",
        ..Setup::default()
    };
    let config = cluster.dir.path().join("watchdog.yaml");
    std::fs::write(&config, setup.yaml(main, admin)).unwrap();
    let watchdog = Watchdog::start_with(&cluster, &config, main, admin).await;
    Recorded {
        cluster,
        app,
        _prometheus: prometheus,
        watchdog,
    }
}

/// Window A replayed with a threshold its breach never reaches, and for a version Prometheus
/// has no metrics for.
async fn other_replays_of(config: &std::path::Path, cutover_a: &str, a: &[&str]) {
    // The same window with a threshold the breach never reaches: no rollback.
    let mut tuned: Vec<&str> = a.to_vec();
    tuned.extend(["--set", "checks.error_rate.above=0.5"]);
    let timeline = json(&replay(config, &tuned).await);
    assert_ne!(
        timeline[0]["outcome"]["kind"], "rolled_back",
        "{timeline:#}"
    );

    // A version Prometheus has no metrics for: every step no data, never a breach.
    let none = [
        "--guard",
        "checkout",
        "--cutover-at",
        cutover_a,
        "--version",
        "v9",
        "--previous",
        "v1",
        "--output",
        "json",
    ];
    let timeline = json(&replay(config, &none).await);
    assert!(
        timeline[0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["values"][0].is_null()),
        "{timeline:#}"
    );
    assert_ne!(timeline[0]["outcome"]["kind"], "rolled_back");
}

#[tokio::test]
async fn replay_reaches_serves_rollback_and_since_finds_every_recorded_window() {
    let r = recorded().await;
    let config = r.watchdog.config.clone();
    // Window A: v2 fails; serve rolls back.
    r.cluster.cut_over_recorded("v2").await;
    let cutover_a = r.cluster.annotation("cutover-at").unwrap();
    r.app.set(
        "v2",
        Behaviour {
            error_ratio: 0.1,
            ..HEALTHY
        },
    );
    let served = r.watchdog.wait_rolled_back(&r.cluster).await;
    let served_at: jiff::Timestamp = served["last_decision"]["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let a = [
        "--guard",
        "checkout",
        "--cutover-at",
        &cutover_a,
        "--version",
        "v2",
        "--previous",
        "v1",
        "--output",
        "json",
    ];
    let timeline = json(&replay(&config, &a).await);
    let outcome = &timeline[0]["outcome"];
    assert_eq!(outcome["kind"], "rolled_back", "{timeline:#}");
    assert!(
        outcome["trigger"]
            .as_str()
            .unwrap()
            .contains("check error_rate")
    );
    let replayed_at: jiff::Timestamp = outcome["at"].as_str().unwrap().parse().unwrap();
    let apart = replayed_at.duration_since(served_at).abs();
    assert!(
        apart
            <= jiff::SignedDuration::try_from(POLL).unwrap()
                + jiff::SignedDuration::from_millis(250),
        "serve rolled back at {served_at}, replay at {replayed_at}"
    );
    assert!(
        timeline[0]["not_replayed"][0]
            .as_str()
            .unwrap()
            .starts_with("alerts")
    );

    other_replays_of(&config, &cutover_a, &a).await;

    // Window B, after A's has ended: v2 healthy, stable.
    r.app.set("v2", HEALTHY);
    let a_end = cutover_a.parse::<jiff::Timestamp>().unwrap() + Duration::from_secs(9);
    r.watchdog
        .wait_until(
            "window A's end",
            Duration::from_secs(15),
            async || jiff::Timestamp::now(),
            |now| *now > a_end,
        )
        .await;
    r.cluster.cut_over_recorded("v2").await;
    r.cluster.wait_state("stable").await;
    // Prometheus has scraped window B's record (1 s scrapes) once the watchdog has said stable.
    let since = async || {
        json(
            &replay(
                &config,
                &["--guard", "checkout", "--since", "5m", "--output", "json"],
            )
            .await,
        )
    };
    let found = r
        .watchdog
        .wait_until(
            "both windows in the record",
            Duration::from_secs(10),
            since,
            |t| t.as_array().is_some_and(|a| a.len() >= 2),
        )
        .await;
    let outcomes: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["outcome"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["rolled_back", "stable"], "{found:#}");
    let text = replay(&config, &["--guard", "checkout", "--since", "5m"]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("2 windows of checkout found") && text.contains("rolled back +"),
        "{text}"
    );
}

#[tokio::test]
async fn switching_above_for_below_and_a_missing_cutover_are_usage_errors() {
    let cluster = Cluster::start().await;
    let config = cluster.dir.path().join("c.yaml");
    std::fs::write(
        &config,
        Setup::default().yaml(free_port().unwrap(), free_port().unwrap()),
    )
    .unwrap();
    let out = replay(
        &config,
        &[
            "--guard",
            "checkout",
            "--cutover-at",
            "2026-11-30T12:00:00Z",
            "--version",
            "v2",
            "--previous",
            "v1",
            "--set",
            "checks.error_rate.below=0.1",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("switching `above` and `below`"));
    let out = replay(&config, &["--guard", "checkout"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cutover-at"));
}
