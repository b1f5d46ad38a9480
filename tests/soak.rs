//! A time-scaled soak: 100 cutovers in a row on one Service, every other one failing. Exactly
//! the failing ones roll back, each once, and memory is flat at the end.

// Test code: a failed setup step should panic right there; counters are small whole numbers.
#![allow(clippy::unwrap_used, clippy::float_cmp)]

mod common;

use std::time::Duration;

use common::{Cluster, Setup, Stack, critical_alert, metric, rss_kib};

const CUTOVERS: usize = 100;
/// The time-scaled window, as in the config below.
const WINDOW: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_soak_of_100_cutovers_rolls_back_exactly_the_failing_ones_with_flat_memory() {
    // Real Prometheus and healthy traffic, so the clean cutovers have clean polls.
    let stack = Stack::start(
        Cluster::start().await,
        Setup {
            poll_interval: "100ms",
            // Room for the 300 ms of clean polls a stable cutover needs even when a loaded
            // machine slows the polls down: the window is over three times as long.
            window: "1s",
            stabilization: "300ms",
            extra: "  alerts:\n    match: {app: my-microservice}\n",
            ..Setup::default()
        },
    )
    .await;
    let (cluster, w) = (&stack.cluster, &stack.watchdog);
    let mut warm = 0;
    for i in 0..CUTOVERS {
        let blue = cluster.selector_version();
        let green = if blue == "v1" { "v2" } else { "v1" };
        cluster.set_selector_version(green);
        let window = async || (cluster.annotation("state"), cluster.annotation("version"));
        stack
            .wait_until(
                &format!("cutover {i}: window recorded"),
                Duration::from_secs(10),
                window,
                |(state, version)| {
                    state.as_deref() == Some("watching") && version.as_deref() == Some(green)
                },
            )
            .await;
        if i % 2 == 0 {
            assert_eq!(w.post_alert(&critical_alert(green)).await, 200);
            let ended = async || (cluster.annotation("state"), cluster.selector_version());
            stack
                .wait_until(
                    &format!("cutover {i}: rolled back"),
                    Duration::from_secs(10),
                    ended,
                    |(state, selector)| {
                        state.as_deref() == Some("rolled-back") && *selector == blue
                    },
                )
                .await;
            // The same green again inside the rolled-back window would be a sync undoing the
            // revert (RollbackOverridden), not a cutover: the next one comes after the window.
            let cutover_at: jiff::Timestamp =
                cluster.annotation("cutover-at").unwrap().parse().unwrap();
            let over = cutover_at + WINDOW;
            stack
                .wait_until(
                    &format!("cutover {i}: window over"),
                    Duration::from_secs(10),
                    async || jiff::Timestamp::now(),
                    |now| *now > over,
                )
                .await;
        } else {
            stack
                .wait_until(
                    &format!("cutover {i}: stable"),
                    Duration::from_secs(10),
                    async || cluster.annotation("state"),
                    |state| state.as_deref() == Some("stable"),
                )
                .await;
            // A selector change inside the window would be someone overriding it, not a new
            // cutover: the next one comes after the window.
            let closed = format!("cutover {i}: window closed");
            stack
                .wait_status(&closed, Duration::from_secs(10), |g| {
                    g["window"]["open"] == false
                })
                .await;
        }
        if i == 19 {
            warm = rss_kib(w.child.id().unwrap());
        }
    }
    // The last rollback's metrics and request log entry land after its annotations.
    let rollbacks = r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="alert"}"#;
    w.wait_metric(rollbacks, 50.0, Duration::from_secs(10))
        .await;
    cluster.wait_selector_patches(50).await;
    let text = w.metrics().await;
    let count = |series: &str| metric(&text, series).unwrap();
    assert_eq!(
        count(r#"cutover_watchdog_cutovers_total{guard="checkout"}"#),
        100.0
    );
    assert_eq!(
        count(r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="alert"}"#),
        50.0
    );
    assert_eq!(
        cluster.selector_patches(),
        50,
        "one patch per failing cutover"
    );
    let end = rss_kib(w.child.id().unwrap());
    eprintln!("RSS {warm} KiB after 20 cutovers, {end} KiB after {CUTOVERS}");
    assert!(
        end <= warm + warm / 10 + 1024,
        "RSS grew from {warm} KiB after 20 cutovers to {end} KiB after {CUTOVERS}"
    );
}
