//! Secrets and transport on the watchdog binary: the webhook's token, password and TLS pair are
//! rotated the way the kubelet rotates a mounted Secret (a `..data` symlink swap), and take
//! effect without a restart; a rotation that leaves an unusable secret keeps the previous one.
//! Also HTTPS on the main listener. Logs are checked for the secrets by
//! `tests/secrets_in_logs.rs`, after the whole suite.

// Metric counters here are small integers, which f64 holds exactly.
#![allow(clippy::float_cmp)]
// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::secrets::{
    BASIC_HEADER, BASIC_USER, PASSWORD, ROTATED_BASIC_HEADER, ROTATED_PASSWORD, ROTATED_TLS_KEY,
    ROTATED_TOKEN, STRAY_TLS_KEY, TLS_KEY, TOKEN,
};
use common::{Cluster, SecretVolume, Setup, TestCert, Watchdog, https};
use cutover_watchdog::tls::CertStore;

/// How often the watchdogs here look for rotated files; waits allow many rounds.
const RELOAD: &str = "100ms";
const ROTATION_WAIT: Duration = Duration::from_secs(5);

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/alertmanager/firing-info-only.json"
    ))
    .unwrap()
}

/// A watchdog whose `webhook:` section is `webhook` (indented keys), on a fresh cluster.
async fn watchdog(cluster: &Cluster, webhook: &str) -> Watchdog {
    let top = format!(
        "webhook:\n  reload_interval: {RELOAD}\n  rate_limit: {{per_second: 1000, burst: 1000}}\n{webhook}"
    );
    Watchdog::start(
        cluster,
        &Setup {
            top: &top,
            ..Setup::default()
        },
    )
    .await
}

/// The webhook's answer to an info-only payload (nothing acts) with this `Authorization`.
async fn post(watchdog: &Watchdog, authorization: &str) -> u16 {
    common::http()
        .post(format!("{}/webhook/alertmanager", watchdog.main))
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .body(fixture())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn reload_errors(watchdog: &Watchdog, file: &str) -> f64 {
    let series = format!("cutover_watchdog_secret_reload_errors_total{{file=\"{file}\"}}");
    common::metric(&watchdog.metrics().await, &series).unwrap_or(0.0)
}

/// Waits until `authorization` is accepted (a rotated secret taken up).
async fn accepted(w: &Watchdog, what: &str, authorization: &str) {
    let what = format!("{what} accepted");
    w.wait_until(
        &what,
        ROTATION_WAIT,
        async || post(w, authorization).await,
        |code| *code == 200,
    )
    .await;
}

async fn wait_reload_errors(watchdog: &Watchdog, file: &str, n: f64) {
    let series = format!("cutover_watchdog_secret_reload_errors_total{{file=\"{file}\"}}");
    watchdog.wait_metric(&series, n, ROTATION_WAIT).await;
}

#[tokio::test]
async fn a_token_rotated_by_a_secret_volume_symlink_swap_is_accepted_without_a_restart() {
    let cluster = Cluster::start().await;
    let mut volume = SecretVolume::new(
        &cluster.dir.path().join("secret"),
        &[("token", format!("{TOKEN}\n").as_bytes())],
    );
    let webhook = format!("  bearer_token_file: {}\n", volume.path("token").display());
    let w = watchdog(&cluster, &webhook).await;
    assert_eq!(post(&w, &format!("Bearer {TOKEN}")).await, 200);
    assert_eq!(post(&w, &format!("Bearer {ROTATED_TOKEN}")).await, 401);

    volume.update(&[("token", ROTATED_TOKEN.as_bytes())]);
    accepted(&w, "the rotated token", &format!("Bearer {ROTATED_TOKEN}")).await;
    assert_eq!(post(&w, &format!("Bearer {TOKEN}")).await, 401, "old token");
    assert_eq!(reload_errors(&w, "token").await, 0.0);
    w.wait_log("secret reloaded").await;
}

#[tokio::test]
async fn a_token_file_that_becomes_empty_or_unreadable_keeps_the_previous_token_and_warns() {
    let cluster = Cluster::start().await;
    let mut volume = SecretVolume::new(
        &cluster.dir.path().join("secret"),
        &[("token", TOKEN.as_bytes())],
    );
    let webhook = format!("  bearer_token_file: {}\n", volume.path("token").display());
    let w = watchdog(&cluster, &webhook).await;

    volume.update(&[("token", b"\n")]);
    wait_reload_errors(&w, "token", 1.0).await;
    assert_eq!(post(&w, &format!("Bearer {TOKEN}")).await, 200, "empty");

    // The key removed from the Secret: the symlink dangles.
    volume.update(&[("other", b"x")]);
    wait_reload_errors(&w, "token", 2.0).await;
    assert_eq!(post(&w, &format!("Bearer {TOKEN}")).await, 200, "missing");
    let logs = w.logs();
    assert!(
        logs.contains("is empty") && logs.contains("failed to read webhook.bearer_token_file"),
        "{logs}"
    );

    volume.update(&[("token", ROTATED_TOKEN.as_bytes())]);
    accepted(
        &w,
        "the next good token",
        &format!("Bearer {ROTATED_TOKEN}"),
    )
    .await;
    assert_eq!(
        reload_errors(&w, "token").await,
        2.0,
        "one warning per bad change"
    );
}

#[tokio::test]
async fn a_rotated_basic_auth_password_is_accepted_without_a_restart() {
    let cluster = Cluster::start().await;
    let mut volume = SecretVolume::new(
        &cluster.dir.path().join("secret"),
        &[("password", PASSWORD.as_bytes())],
    );
    let webhook = format!(
        "  basic_auth: {{username: {BASIC_USER}, password_file: {}}}\n",
        volume.path("password").display()
    );
    let w = watchdog(&cluster, &webhook).await;
    assert_eq!(post(&w, BASIC_HEADER).await, 200);

    volume.update(&[("password", ROTATED_PASSWORD.as_bytes())]);
    accepted(&w, "the rotated password", ROTATED_BASIC_HEADER).await;
    assert_eq!(post(&w, BASIC_HEADER).await, 401, "old password");
}

/// A watchdog serving HTTPS from a Secret volume holding `tls.crt` and `tls.key`.
/// A watchdog serving the `old` certificate, and the `new` one to rotate to.
struct Rotation {
    /// Kept for the test's length: dropping it stops the API double.
    cluster: Cluster,
    old: TestCert,
    new: TestCert,
    w: Watchdog,
    volume: SecretVolume,
    port: u16,
}

async fn rotation() -> Rotation {
    let cluster = Cluster::start().await;
    let old = TestCert::new(TLS_KEY, "cutover-watchdog test");
    let new = TestCert::new(ROTATED_TLS_KEY, "cutover-watchdog test rotated");
    let (w, volume) = tls_watchdog(&cluster, &old).await;
    let port = main_port(&w);
    Rotation {
        cluster,
        old,
        new,
        w,
        volume,
        port,
    }
}

async fn tls_watchdog(cluster: &Cluster, cert: &TestCert) -> (Watchdog, SecretVolume) {
    let volume = SecretVolume::new(
        &cluster.dir.path().join("tls"),
        &[
            ("tls.crt", cert.cert_pem.as_bytes()),
            ("tls.key", cert.key_pem.as_bytes()),
        ],
    );
    let token = cluster.dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let webhook = format!(
        "  bearer_token_file: {}\n  tls: {{cert_file: {}, key_file: {}}}\n",
        token.display(),
        volume.path("tls.crt").display(),
        volume.path("tls.key").display()
    );
    (watchdog(cluster, &webhook).await, volume)
}

fn main_port(w: &Watchdog) -> u16 {
    w.ports.0
}

#[tokio::test]
async fn the_main_listener_serves_https_with_the_configured_certificate_and_refuses_plain_http() {
    let cluster = Cluster::start().await;
    let cert = TestCert::new(TLS_KEY, "cutover-watchdog test");
    let (w, _volume) = tls_watchdog(&cluster, &cert).await;
    let port = main_port(&w);

    let guards = https(port, &[&cert.der], "GET /v1/guards", &[], b"")
        .await
        .unwrap();
    assert_eq!(guards.status, 200, "{}", guards.body);
    assert_eq!(guards.leaf, cert.der);
    let v: serde_json::Value = serde_json::from_str(&guards.body).unwrap();
    assert_eq!(v[0]["name"], "checkout");

    let bearer = format!("Bearer {TOKEN}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let alert = https(
        port,
        &[&cert.der],
        "POST /webhook/alertmanager",
        &headers,
        &fixture(),
    )
    .await
    .unwrap();
    assert_eq!(alert.status, 200, "{}", alert.body);

    let plain = common::http()
        .get(format!("http://127.0.0.1:{port}/v1/guards"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP to the TLS port must fail: {plain:?}"
    );
    // The admin listener stays plain HTTP.
    assert!(w.metrics().await.contains("cutover_watchdog_"));
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections() {
    let Rotation {
        cluster: _cluster,
        old,
        new,
        w,
        mut volume,
        port,
    } = rotation().await;
    let roots: [&[u8]; 2] = [&old.der, &new.der];

    volume.update(&[
        ("tls.crt", new.cert_pem.as_bytes()),
        ("tls.key", new.key_pem.as_bytes()),
    ]);
    let served = async || {
        let answer = https(port, &roots, "GET /v1/guards", &[], b"").await;
        answer
            .map(|a| (a.status, a.leaf == new.der))
            .map_err(|e| e.to_string())
    };
    let what = "the new certificate served";
    let answer = w.wait_until(what, ROTATION_WAIT, served, |a| {
        matches!(a, Ok((200, true)))
    });
    assert_eq!(answer.await, Ok((200, true)));
    assert!(
        https(port, &[&old.der], "GET /v1/guards", &[], b"")
            .await
            .is_err(),
        "a client trusting only the old certificate no longer connects"
    );
    assert_eq!(reload_errors(&w, "tls").await, 0.0);
}

#[tokio::test]
async fn a_bad_new_certificate_keeps_the_old_one_and_warns() {
    let Rotation {
        cluster: _cluster,
        old,
        new,
        w,
        mut volume,
        port,
    } = rotation().await;
    let roots: [&[u8]; 2] = [&old.der, &new.der];

    // A new certificate with a key that does not fit it.
    volume.update(&[
        ("tls.crt", new.cert_pem.as_bytes()),
        ("tls.key", STRAY_TLS_KEY.as_bytes()),
    ]);
    wait_reload_errors(&w, "tls", 1.0).await;
    // Not PEM at all.
    volume.update(&[
        ("tls.crt", b"not a certificate"),
        ("tls.key", new.key_pem.as_bytes()),
    ]);
    wait_reload_errors(&w, "tls", 2.0).await;

    let answer = https(port, &roots, "GET /v1/guards", &[], b"")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        answer.leaf == old.der,
        "the old certificate is still served"
    );
    let logs = w.logs();
    assert!(
        logs.contains("does not fit") && logs.contains("holds no PEM certificate"),
        "{logs}"
    );
}

#[test]
fn a_certificate_and_key_that_do_not_fit_refuse_to_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new(TLS_KEY, "cutover-watchdog test");
    let (cert_file, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key, STRAY_TLS_KEY).unwrap();
    let e = cutover_watchdog::error::chain(&CertStore::load(&cert_file, &key).unwrap_err());
    assert!(e.contains("webhook.tls.key_file"), "{e}");
    std::fs::write(&key, "").unwrap();
    let e = cutover_watchdog::error::chain(&CertStore::load(&cert_file, &key).unwrap_err());
    assert!(
        e.contains("webhook.tls.key_file") && e.contains("no usable PEM"),
        "{e}"
    );
    std::fs::write(&key, cert.key_pem).unwrap();
    let store = CertStore::load(&cert_file, &key).unwrap();
    assert_eq!(store.leaf().unwrap().as_ref(), cert.der.as_slice());
}
