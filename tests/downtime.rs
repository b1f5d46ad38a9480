//! Cutovers made while no watchdog runs: the only watchdog is stopped, the real kubectl cuts
//! over, and the next start finds the selector away from the Service's baseline. Its window's
//! clock starts when the API server recorded the change (the double keeps `managedFields` as the
//! real server does); a sustained breach then rolls back, and a cutover older than the window is
//! recorded missed and left alone.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Setup, Stack, Watchdog};
use cutover_watchdog::sandbox::traffic::Behaviour;

const FAILING: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.05,
    latency_seconds: 0.05,
};

/// The time of the managedFields entry that holds the selector's version key: when the API
/// server recorded the cutover.
fn selector_written_at(cluster: &Cluster) -> (String, jiff::Timestamp) {
    let svc = cluster.service();
    let entry = svc["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| !e["fieldsV1"]["f:spec"]["f:selector"]["f:version"].is_null())
        .cloned()
        .unwrap_or_else(|| panic!("no managedFields entry holds the version: {svc:#}"));
    (
        entry["manager"].as_str().unwrap().to_owned(),
        entry["time"].as_str().unwrap().parse().unwrap(),
    )
}

/// Stops `w` (SIGKILL: nothing to finish) and waits until it is gone.
async fn stop(w: &mut Watchdog) {
    w.child.start_kill().unwrap();
    w.child.wait().await.unwrap();
}

#[tokio::test]
async fn a_cutover_made_while_the_only_watchdog_was_stopped_is_watched_from_when_it_was_made() {
    let mut s = Stack::start(Cluster::start().await, Setup::default()).await;
    // Its first sight of a Service with no record: the serving version, for later starts.
    let baseline = async || s.cluster.annotation("baseline-version");
    s.wait_until(
        "the baseline record",
        Duration::from_secs(10),
        baseline,
        |b| b.as_deref() == Some("v1"),
    )
    .await;
    stop(&mut s.watchdog).await;

    s.cluster.cut_over("v2").await;
    let (manager, made_at) = selector_written_at(&s.cluster);
    assert_eq!(manager, "kubectl-patch");
    s.app.set("v2", FAILING);

    let (main, admin) = s.watchdog.ports;
    let config = s.watchdog.config.clone();
    s.watchdog = Watchdog::start_with(&s.cluster, &config, main, admin).await;
    s.cluster.wait_event("CutoverDetected").await;
    let cutover_at: jiff::Timestamp = s.cluster.annotation("cutover-at").unwrap().parse().unwrap();
    assert_eq!(
        cutover_at, made_at,
        "the window's clock is the server's record"
    );
    assert_eq!(
        s.cluster.annotation("previous-version").as_deref(),
        Some("v1")
    );
    assert!(
        s.cluster
            .annotation("reason")
            .unwrap()
            .contains("while no watchdog was watching")
    );

    s.wait_selector("v1", Duration::from_secs(30)).await;
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
    s.cluster.wait_state("rolled-back").await;
    assert_eq!(
        s.cluster.annotation("baseline-version").as_deref(),
        Some("v1"),
        "kept current: blue serves again"
    );
}

#[tokio::test]
async fn a_cutover_made_longer_than_the_window_ago_while_no_watchdog_ran_is_recorded_missed() {
    const WINDOW: Duration = Duration::from_secs(2);
    let cluster = Cluster::start().await;
    let setup = Setup {
        window: "2s",
        stabilization: "1s",
        ..Setup::default()
    };
    let mut w = Watchdog::start(&cluster, &setup).await;
    let baseline = async || cluster.annotation("baseline-version");
    w.wait_until(
        "the baseline record",
        Duration::from_secs(10),
        baseline,
        |b| b.as_deref() == Some("v1"),
    )
    .await;
    stop(&mut w).await;

    cluster.cut_over("v2").await;
    let (_, made_at) = selector_written_at(&cluster);
    // The window passes while nobody watches.
    let window_over = made_at + WINDOW + Duration::from_millis(100);
    common::wait_until(
        "the window to pass",
        WINDOW * 3,
        async || jiff::Timestamp::now(),
        |now| *now > window_over,
    )
    .await;

    let (main, admin) = w.ports;
    let w = Watchdog::start_with(&cluster, &w.config.clone(), main, admin).await;
    cluster.wait_state("missed").await;
    cluster.wait_event("CutoverMissed").await;
    let cutover_at: jiff::Timestamp = cluster.annotation("cutover-at").unwrap().parse().unwrap();
    assert_eq!(cutover_at, made_at);
    assert_eq!(cluster.annotation("version").as_deref(), Some("v2"));
    assert_eq!(
        cluster.annotation("baseline-version").as_deref(),
        Some("v2")
    );
    let g = w
        .wait_status("the missed decision", Duration::from_secs(5), |g| {
            g["last_decision"]["kind"] == "missed"
        })
        .await;
    assert_eq!(g["window"]["open"], false, "not watched: {g:#}");
    assert_eq!(cluster.selector_version(), "v2");
    assert_eq!(cluster.selector_patches(), 0);
}
