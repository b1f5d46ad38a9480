//! SIGKILL at seeded random points of a window, including between the rollback decision and
//! the patch landing: after a restart and Alertmanager's re-delivery, the selector always ends
//! on blue, and it is never patched twice for the same window.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Setup, Watchdog, critical_alert};
use cutover_watchdog::sandbox::apiserver::Fault;

const ITERATIONS: u64 = 50;

/// splitmix64: a seeded sequence, so a failing iteration can be replayed by its seed.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn sigkill_at_random_points_of_a_window_never_rolls_back_twice_and_ends_on_blue() {
    let mut outcomes = [0_usize; 2]; // [rolled back before the kill, after the restart]
    for seed in 0..ITERATIONS {
        let mut rng = Seeded(seed);
        let cluster = Cluster::start().await;
        let setup = Setup {
            extra: "  alerts:\n    match: {app: my-microservice}\n",
            ..Setup::default()
        };
        let mut w = Watchdog::start(&cluster, &setup).await;
        cluster.cut_over_recorded("v2").await;
        // The patch lands 0-150 ms after it is sent, so kills fall before the decision, between
        // the decision and the patch, while it is in flight, and after it.
        let delay = Duration::from_millis(rng.below(150));
        cluster.fault_next_service_patch(Fault::Delay(delay));
        let kill_after = Duration::from_millis(rng.below(250));
        let alert = critical_alert("v2");
        let (_, ()) = tokio::join!(w.post_alert(&alert), tokio::time::sleep(kill_after));
        w.child.start_kill().unwrap();
        w.child.wait().await.unwrap();
        let rolled_back_before = cluster.selector_version() == "v1";
        outcomes[usize::from(!rolled_back_before)] += 1;

        let (main, admin) = w.ports;
        let config = w.config.clone();
        let w = Watchdog::start_with(&cluster, &config, main, admin).await;
        // Alertmanager re-delivers a firing alert until it resolves.
        assert_eq!(w.post_alert(&alert).await, 200, "seed {seed}");
        let ended = async || (cluster.annotation("state"), cluster.selector_version());
        w.wait_until(
            &format!("seed {seed}: the window to end rolled back"),
            Duration::from_secs(10),
            ended,
            |(state, version)| state.as_deref() == Some("rolled-back") && version == "v1",
        )
        .await;
        assert_eq!(
            cluster.wait_selector_patches(1).await,
            1,
            "seed {seed} (patch delay {delay:?}, kill after {kill_after:?}): one rollback per window\n{}",
            w.logs()
        );
    }
    // The seeds must exercise both sides of the kill, or the test proves little. The split
    // moves with machine speed (the seeds fix the delays, not the timing), so only ask for both.
    eprintln!("rolled back before the kill / after the restart: {outcomes:?}");
    assert!(outcomes.iter().all(|n| *n >= 1), "outcomes {outcomes:?}");
}
