//! Two watchdog replicas against the API double, electing a leader on a Lease: one alert to
//! both patches once; a killed leader hands over and the new one resumes the window; a paused
//! leader does not write once its Lease has passed on; a leader that cannot renew stops
//! `fence_margin` before its Lease could expire.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Setup, Watchdog, critical_alert};
use cutover_watchdog::sandbox::apiserver::{Fault, FaultRule};
use cutover_watchdog::sandbox::free_port;

/// Time-scaled election: a 3 s Lease, renewed every 300 ms; the leader stops writing 1 s
/// before the Lease could expire.
const ELECTION: &str =
    "leader_election:\n  lease_duration: 3s\n  renew_interval: 300ms\n  fence_margin: 1s\n";
const ALERTS: &str = "  alerts:\n    match: {app: my-microservice}\n";

struct Pair {
    cluster: Cluster,
    a: Watchdog,
    b: Watchdog,
}

/// Replica `a` starts first and leads; `b` follows.
async fn pair() -> Pair {
    let cluster = Cluster::start().await;
    let a = replica(&cluster, "a");
    a.wait_ready().await;
    let b = replica(&cluster, "b");
    b.wait_healthy().await;
    Pair { cluster, a, b }
}

fn replica(cluster: &Cluster, identity: &str) -> Watchdog {
    replica_electing(cluster, identity, ELECTION)
}

/// A replica with its own `leader_election` config.
fn replica_electing(cluster: &Cluster, identity: &str, election: &str) -> Watchdog {
    let ports = (free_port().unwrap(), free_port().unwrap());
    let config = cluster.dir.path().join(format!("watchdog-{identity}.yaml"));
    let setup = Setup {
        top: election,
        extra: ALERTS,
        ..Setup::default()
    };
    std::fs::write(&config, setup.yaml(ports.0, ports.1)).unwrap();
    Watchdog::spawn(cluster, &config, ports, identity)
}

/// The Pod name of the Lease's holder (its identity is `<pod>_<per-process suffix>`).
fn holder(cluster: &Cluster) -> Option<String> {
    let lease = cluster.api.get("leases", "default", "cutover-watchdog")?;
    let identity = lease["spec"]["holderIdentity"].as_str()?;
    identity.rsplit_once('_').map(|(pod, _)| pod.to_owned())
}

/// Requests by replica `identity` that wrote something other than the Lease (access reviews
/// are questions, not writes).
fn writes_by(cluster: &Cluster, identity: &str) -> Vec<String> {
    let agent = format!("({identity})");
    cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.user_agent.ends_with(&agent))
        .filter(|r| matches!(r.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
        .filter(|r| !r.path.contains("/leases") && !r.path.contains("accessreviews"))
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect()
}

/// Whether a TCP connection to loopback `port` is established (the kernel accepts it into the
/// backlog even while the listening process is stopped).
fn established_to(port: u16) -> bool {
    let local = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && format!("{} ", f[1]).ends_with(&local) && f[3] == "01"
        })
    })
}

async fn exited(w: &mut Watchdog, within: Duration) -> std::process::ExitStatus {
    tokio::time::timeout(within, w.child.wait())
        .await
        .unwrap_or_else(|_| panic!("replica still running after {within:?}:\n{}", w.logs()))
        .unwrap()
}

#[tokio::test]
async fn only_the_leader_is_ready_and_holds_the_lease() {
    let p = pair().await;
    assert_eq!(holder(&p.cluster).as_deref(), Some("a"));
    let (code, body) = p.b.readyz().await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not the leader"), "{body}");
    assert_eq!(p.a.readyz().await.0, 200);
    let leader = "cutover_watchdog_leader";
    assert_eq!(common::metric(&p.a.metrics().await, leader), Some(1.0));
    assert_eq!(common::metric(&p.b.metrics().await, leader), Some(0.0));
}

#[tokio::test]
async fn one_critical_alert_delivered_to_both_replicas_patches_once() {
    let p = pair().await;
    p.cluster.cut_over_recorded("v2").await;
    let alert = critical_alert("v2");
    // Alertmanager delivers to every replica it knows of, and re-delivers.
    for _ in 0..3 {
        let (to_a, to_b) = tokio::join!(p.a.post_alert(&alert), p.b.post_alert(&alert));
        assert_eq!((to_a, to_b), (200, 503), "the follower declines");
    }
    p.cluster.wait_state("rolled-back").await;
    assert_eq!(p.cluster.selector_version(), "v1");
    assert_eq!(p.cluster.wait_selector_patches(1).await, 1);
    assert!(
        writes_by(&p.cluster, "b").is_empty(),
        "{:?}",
        writes_by(&p.cluster, "b")
    );
}

#[tokio::test]
async fn killing_the_leader_mid_window_hands_over_and_the_new_leader_resumes_the_window() {
    let mut p = pair().await;
    p.cluster.cut_over_recorded("v2").await;
    let cutover_at = p.cluster.annotation("cutover-at").unwrap();
    p.a.child.start_kill().unwrap();
    p.a.child.wait().await.unwrap();

    // The Lease was never released: b takes over once it has seen it unchanged for 3 s.
    p.b.wait_ready().await;
    assert_eq!(holder(&p.cluster).as_deref(), Some("b"));
    // Ready means the Service is listed; the guard takes it from its inbox a moment later.
    let g =
        p.b.wait_status("the window resumed", Duration::from_secs(5), |g| {
            g["last_decision"]["kind"] == "resumed"
        })
        .await;
    assert_eq!(g["window"]["open"], true, "{g:#}");
    assert_eq!(g["window"]["version"], "v2");
    let start: jiff::Timestamp = g["window"]["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        start,
        cutover_at.parse::<jiff::Timestamp>().unwrap(),
        "same window"
    );

    assert_eq!(p.b.post_alert(&critical_alert("v2")).await, 200);
    p.cluster.wait_selector("v1", Duration::from_secs(10)).await;
    assert_eq!(p.cluster.wait_selector_patches(1).await, 1);
}

#[tokio::test]
async fn a_paused_leader_does_not_write_after_it_wakes_once_its_lease_has_passed_on() {
    let mut p = pair().await;
    p.cluster.cut_over_recorded("v2").await;
    let pid = p.a.child.id().unwrap().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    p.b.wait_ready().await;
    assert_eq!(holder(&p.cluster).as_deref(), Some("b"));
    let before = writes_by(&p.cluster, "a").len();

    // An alert reaches the paused leader: it is served only after it wakes, with a stale term.
    let a_main = p.a.main.clone();
    let alert = critical_alert("v2");
    let delivery = tokio::spawn(async move {
        common::http()
            .post(format!("{a_main}/webhook/alertmanager"))
            .header("content-type", "application/json")
            .body(alert)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    });
    let port = p.a.ports.0;
    common::wait_until(
        "the alert to reach the paused replica's socket",
        Duration::from_secs(5),
        async || established_to(port),
        |established| *established,
    )
    .await;
    signal("-CONT");

    let status = exited(&mut p.a, Duration::from_secs(10)).await;
    assert!(
        !status.success(),
        "a replica that lost the Lease exits non-zero"
    );
    assert!(
        p.a.logs().contains("lost the leader lease"),
        "{}",
        p.a.logs()
    );
    let answered = delivery.await.unwrap();
    assert_ne!(answered, 200, "the woken replica must not take the alert");
    assert_eq!(
        writes_by(&p.cluster, "a").len(),
        before,
        "{:?}",
        writes_by(&p.cluster, "a")
    );
    assert_eq!(p.cluster.selector_version(), "v2", "nobody rolled back");
    assert_eq!(p.cluster.selector_patches(), 0);
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_fence_margin_before_its_lease_could_expire() {
    // A longer Lease than the other tests use, so that the margins measured below are wide
    // against the scheduling delays of a loaded machine: a 6 s Lease, a 2 s fence margin.
    const LEASE: Duration = Duration::from_secs(6);
    const MARGIN: Duration = Duration::from_secs(2);
    let election = format!(
        "leader_election:\n  lease_duration: {}s\n  renew_interval: 300ms\n  fence_margin: {}s\n",
        LEASE.as_secs(),
        MARGIN.as_secs()
    );
    let cluster = Cluster::start().await;
    let mut a = replica_electing(&cluster, "a", &election);
    a.wait_ready().await;
    // Every renewal from now on fails.
    cluster.api.inject(FaultRule {
        method: axum::http::Method::PUT,
        plural: "leases".into(),
        name: None,
        times: usize::MAX,
        fault: Fault::Status(500),
    });
    // The fence closes when the term ends: /readyz turns 503 that very moment (it reads the
    // same deadline as every write), so its first 503 is when `a` stopped acting.
    let readyz = async || (a.readyz().await.0, jiff::Timestamp::now());
    let (_, stopped) = a
        .wait_until(
            "/readyz to turn 503",
            Duration::from_secs(15),
            readyz,
            |(code, _)| *code != 200,
        )
        .await;
    let status = exited(&mut a, Duration::from_secs(10)).await;
    assert!(!status.success());
    assert!(a.logs().contains("not renewed in time"), "{}", a.logs());
    let last_renewal = cluster
        .api
        .requests()
        .into_iter()
        // The create (POST) that first acquired it counts as a renewal, as do the PUTs.
        .filter(|r| matches!(r.method.as_str(), "PUT" | "POST") && r.path.contains("/leases"))
        .filter(|r| matches!(r.status, 200 | 201))
        .map(|r| r.at)
        .max()
        .expect("a renewed at least once");
    // Another replica could take the Lease LEASE after the last renewal; `a` stopped acting
    // MARGIN before that. Seen from here, a little later than it did (the 50 ms between looks,
    // and /readyz's answer time), or a little earlier (the renewal was sent before the double
    // logged it): a fifth of the margin either side.
    let earliest_takeover = last_renewal + LEASE;
    let fence = earliest_takeover - MARGIN;
    assert!(
        stopped < earliest_takeover,
        "stopped at {stopped}, a takeover was possible from {earliest_takeover}"
    );
    assert!(
        stopped >= fence - MARGIN / 5,
        "stopped at {stopped}, long before the fence at {fence}: the margin is not what was configured"
    );
}
