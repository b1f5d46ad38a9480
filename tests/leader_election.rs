//! Two watchdog replicas against the API double, electing a leader on a Lease: both are Ready;
//! an alert to the follower is forwarded and acts once on the leader; one alert to both patches
//! once; a killed leader hands over and the new one resumes the window; a paused leader times
//! the follower's forward out to 503, and the re-delivered alert acts once after the takeover; a
//! paused leader does not write once its Lease has passed on; a leader that cannot renew stops
//! `fence_margin` before its Lease could expire.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Setup, Watchdog, critical_alert};
use cutover_watchdog::sandbox::apiserver::{Fault, FaultRule};
use cutover_watchdog::sandbox::free_port;

/// Time-scaled election: a 3 s Lease, renewed every 300 ms; the leader stops writing 1 s
/// before the Lease could expire. A follower's forward gives up after 1 s, well before a
/// takeover could begin.
const ELECTION: &str = "leader_election:\n  lease_duration: 3s\n  renew_interval: 300ms\n  fence_margin: 1s\n  forward_timeout: 1s\n";
const ALERTS: &str = "  alerts:\n    match: {app: my-microservice}\n";

struct Pair {
    cluster: Cluster,
    a: Watchdog,
    b: Watchdog,
}

/// Replica `a` starts first and leads; `b` follows, and is ready.
async fn pair() -> Pair {
    let cluster = Cluster::start().await;
    let a = replica(&cluster, "a");
    a.wait_leading().await;
    let b = replica(&cluster, "b");
    b.wait_ready().await;
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

/// `webhook_forwarded_total{result}` in a replica's exposition.
fn forwarded(exposition: &str, result: &str) -> Option<f64> {
    common::metric(
        exposition,
        &format!("cutover_watchdog_webhook_forwarded_total{{result=\"{result}\"}}"),
    )
}

#[tokio::test]
async fn both_replicas_are_ready_and_readyz_the_gauge_and_the_lease_say_which_leads() {
    let cluster = Cluster::start().await;
    let a = replica(&cluster, "a");
    a.wait_leading().await;
    // Ready as soon as it has read the Lease once: well within one lease duration of starting
    // to serve, as a readiness probe (and `kubectl rollout status`) needs.
    let b = replica(&cluster, "b");
    b.wait_healthy().await;
    let ready = async || b.readyz().await;
    b.wait_until(
        "the follower to be ready",
        Duration::from_secs(3),
        ready,
        |(c, _)| *c == 200,
    )
    .await;
    let p = Pair { cluster, a, b };
    assert_eq!(holder(&p.cluster).as_deref(), Some("a"));
    let (code, body) = p.b.readyz().await;
    assert_eq!(code, 200, "{body}");
    let a_address = format!("127.0.0.1:{}", p.a.ports.0);
    assert!(
        body.starts_with(&format!(
            "ready, following a: webhooks and /v1/guards are forwarded to {a_address}"
        )),
        "{body}"
    );
    let (code, body) = p.a.readyz().await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ready, leading"), "{body}");
    let leader = "cutover_watchdog_leader";
    assert_eq!(common::metric(&p.a.metrics().await, leader), Some(1.0));
    assert_eq!(common::metric(&p.b.metrics().await, leader), Some(0.0));
    let lease = p
        .cluster
        .api
        .get("leases", "default", "cutover-watchdog")
        .unwrap();
    assert_eq!(
        lease["metadata"]["annotations"]["cutover-watchdog.io/leader-address"],
        a_address.as_str()
    );
}

#[tokio::test]
async fn an_alert_posted_only_to_the_follower_is_forwarded_and_rolls_back_once() {
    let p = pair().await;
    p.cluster.cut_over_recorded("v2").await;
    let alert = critical_alert("v2");
    // Alertmanager re-delivers: every delivery is forwarded, and the window acts once.
    for _ in 0..3 {
        assert_eq!(
            p.b.post_alert(&alert).await,
            200,
            "the leader's answer, passed back"
        );
    }
    p.cluster.wait_state("rolled-back").await;
    assert_eq!(p.cluster.selector_version(), "v1");
    assert_eq!(p.cluster.wait_selector_patches(1).await, 1);
    assert!(
        writes_by(&p.cluster, "b").is_empty(),
        "{:?}",
        writes_by(&p.cluster, "b")
    );
    let b_metrics = p.b.metrics().await;
    assert_eq!(forwarded(&b_metrics, "ok"), Some(3.0), "{b_metrics}");
    assert_eq!(
        forwarded(&p.a.metrics().await, "ok"),
        Some(0.0),
        "the leader forwards nothing"
    );

    // /v1/guards on the follower is the leader's view, and says whose.
    let answer = common::http()
        .get(format!("{}/v1/guards", p.b.main))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-cutover-watchdog-leader"], "a");
    let guards: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(guards[0]["state"], "rolled-back", "{guards:#}");
}

#[tokio::test]
async fn one_critical_alert_delivered_to_both_replicas_patches_once() {
    let p = pair().await;
    p.cluster.cut_over_recorded("v2").await;
    let alert = critical_alert("v2");
    // Alertmanager delivers to every replica it knows of, and re-delivers.
    for _ in 0..3 {
        let (to_a, to_b) = tokio::join!(p.a.post_alert(&alert), p.b.post_alert(&alert));
        assert_eq!((to_a, to_b), (200, 200), "the follower forwards");
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
    p.b.wait_leading().await;
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

/// The name in the webhook certificate: the Service's, never the Pod IP a forward goes to.
const SERVICE_NAME: &str = "cutover-watchdog.default.svc";

#[tokio::test]
async fn with_tls_the_follower_forwards_over_https_verifying_the_leader_for_the_service_name() {
    let cluster = Cluster::start().await;
    let pki = common::pki::Pki::new(cluster.dir.path(), "webhook", &[SERVICE_NAME]);
    let election = format!(
        "{ELECTION}  forward_server_name: {SERVICE_NAME}\n  forward_ca_file: {ca}\n\
         webhook:\n  tls: {{cert_file: {crt}, key_file: {key}}}\n",
        ca = pki.path("webhook-ca.crt"),
        crt = pki.path("server.crt"),
        key = pki.path("server.key"),
    );
    let a = replica_electing(&cluster, "a", &election);
    a.wait_leading().await;
    let b = replica_electing(&cluster, "b", &election);
    b.wait_ready().await;
    cluster.cut_over_recorded("v2").await;

    // Alertmanager reaches b by the Service's name, as in a cluster.
    let ca = std::fs::read(pki.path("webhook-ca.crt")).unwrap();
    let b_addr: std::net::SocketAddr = format!("127.0.0.1:{}", b.ports.0).parse().unwrap();
    let alertmanager = reqwest::Client::builder()
        .tls_backend_preconfigured(common::pki::client_config(&ca))
        .resolve(SERVICE_NAME, b_addr)
        .build()
        .unwrap();
    let answer = alertmanager
        .post(format!(
            "https://{SERVICE_NAME}:{}/webhook/alertmanager",
            b.ports.0
        ))
        .header("content-type", "application/json")
        .body(critical_alert("v2"))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    assert_eq!(
        status,
        200,
        "{}\n{}",
        answer.text().await.unwrap(),
        b.logs()
    );
    assert_eq!(forwarded(&b.metrics().await, "ok"), Some(1.0));
    cluster.wait_selector("v1", Duration::from_secs(10)).await;
    assert_eq!(cluster.wait_selector_patches(1).await, 1);
}

/// `kill -STOP` or `-CONT` to a replica.
fn signal(w: &Watchdog, sig: &str) {
    let pid = w.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test]
async fn a_forward_to_a_paused_leader_times_out_to_503_and_the_redelivery_acts_once_after_the_takeover()
 {
    let p = pair().await;
    p.cluster.cut_over_recorded("v2").await;
    signal(&p.a, "-STOP");
    let alert = critical_alert("v2");
    // Within the Lease's 3 s, b still forwards to a, whose kernel accepts but never answers.
    let answer = common::http()
        .post(format!("{}/webhook/alertmanager", p.b.main))
        .header("content-type", "application/json")
        .body(alert.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["retry-after"], "1", "Alertmanager retries");
    let body = answer.text().await.unwrap();
    assert!(
        body.contains("leader a at 127.0.0.1:") && body.contains("did not answer within 1000ms"),
        "{body}"
    );
    assert_eq!(forwarded(&p.b.metrics().await, "timeout"), Some(1.0));
    assert_eq!(p.cluster.selector_patches(), 0);

    // Alertmanager's retry after the takeover: b acts on it itself, once.
    p.b.wait_leading().await;
    assert_eq!(p.b.post_alert(&alert).await, 200);
    p.cluster.wait_selector("v1", Duration::from_secs(10)).await;
    assert_eq!(p.cluster.wait_selector_patches(1).await, 1);
    signal(&p.a, "-CONT");
}

#[tokio::test]
async fn a_paused_leader_does_not_write_after_it_wakes_once_its_lease_has_passed_on() {
    let mut p = pair().await;
    p.cluster.cut_over_recorded("v2").await;
    signal(&p.a, "-STOP");
    p.b.wait_leading().await;
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
    signal(&p.a, "-CONT");

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
    a.wait_leading().await;
    // Every renewal from now on fails.
    cluster.api.inject(FaultRule {
        method: axum::http::Method::PUT,
        plural: "leases".into(),
        name: None,
        times: usize::MAX,
        fault: Fault::Status(500),
    });
    // The fence closes when the term ends: /readyz stops saying "leading" that very moment (it
    // reads the same deadline as every write), so its first other answer is when `a` stopped
    // acting.
    let readyz = async || (a.readyz().await, jiff::Timestamp::now());
    let (_, stopped) = a
        .wait_until(
            "/readyz to stop saying leading",
            Duration::from_secs(15),
            readyz,
            |((_, body), _)| !body.starts_with("ready, leading"),
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
