//! The real Prometheus behind what users put in front of it: `--web.config.file` with TLS from
//! a private CA and basic auth, client certificates, `--web.route-prefix`, and a gateway that
//! checks a bearer token and a tenant header (the sandbox's proxy). The watchdog (release
//! binary) queries it and rolls back a sustained breach; each misconfiguration is its
//! documented reason in `prometheus_query_errors_total` and never a breach.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::pki::Pki;
use common::secrets::{PROM_PASSWORD as PASSWORD, PROM_ROTATED_TOKEN, PROM_TOKEN};
use common::{Cluster, Setup, Watchdog};
use cutover_watchdog::sandbox::faulty::{FaultyProxy, Mode};
use cutover_watchdog::sandbox::processes::{ChildServer, PrometheusSetup};
use cutover_watchdog::sandbox::traffic::{Behaviour, TrafficApp};

/// The names Prometheus's certificate is for.
const LOCAL: &[&str] = &["localhost", "127.0.0.1"];

/// The basic-auth password's bcrypt hash (cost 4), for Prometheus's `basic_auth_users`.
const PASSWORD_BCRYPT: &str = "$2b$04$eE7G31hAsO5PpVoiVHAnVuOAyrO9/wbZEa/S6OHsf/9.39cAVNpri";

/// Healthy v1 and v2, and the real Prometheus scraping them with `web_config` (and
/// `route_prefix`).
async fn app_and_prometheus(
    web_config: Option<String>,
    route_prefix: Option<&str>,
) -> (TrafficApp, ChildServer) {
    common::app_and_prometheus_with(PrometheusSetup {
        web_config,
        route_prefix: route_prefix.map(str::to_owned),
        ..PrometheusSetup::default()
    })
    .await
}

/// The watchdog on `prometheus` (its URL), with `keys` under `prometheus:` and `for`.
async fn watchdog(cluster: &Cluster, prometheus: &str, keys: &str, for_: &str) -> Watchdog {
    let setup = Setup {
        prometheus,
        prometheus_keys: keys,
        for_,
        ..Setup::default()
    };
    Watchdog::start(cluster, &setup).await
}

/// The `prometheus:` lines for basic auth with `password` and `tls` (a flow mapping's body).
fn keys(cluster: &Cluster, password: &str, tls: &str) -> String {
    format!(
        "  basic_auth: {{username: watchdog, password_file: {}}}\n  tls: {{{tls}}}\n",
        password_file(cluster, password)
    )
}

/// Prometheus's web config: TLS with the server certificate, basic auth, and with `mtls`
/// client certificates from the CA required.
fn web_config(pki: &Pki, ca: &str, mtls: bool) -> String {
    let client = if mtls {
        format!(
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            pki.path(&format!("{ca}-ca.crt"))
        )
    } else {
        String::new()
    };
    format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{client}\
         basic_auth_users:\n  watchdog: {PASSWORD_BCRYPT}\n",
        pki.path("server.crt"),
        pki.path("server.key")
    )
}

/// Cuts over to a v2 that errors 10% of requests and waits for the watchdog to revert.
async fn breach_rolls_back(cluster: &Cluster, app: &TrafficApp) {
    cluster.cut_over("v2").await;
    v2_breaches(cluster, app).await;
}

/// v2, already serving, starts erroring 10% of requests; waits for the watchdog to revert.
async fn v2_breaches(cluster: &Cluster, app: &TrafficApp) {
    app.set("v2", failing());
    cluster.wait_selector("v1", Duration::from_secs(30)).await;
}

/// v2 erroring 10% of requests.
fn failing() -> Behaviour {
    Behaviour {
        rps: 100.0,
        error_ratio: 0.10,
        ..Behaviour::HEALTHY
    }
}

fn password_file(cluster: &Cluster, password: &str) -> String {
    let path = cluster.dir.path().join("prom-password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn tls_from_a_private_ca_with_basic_auth_rolls_back_a_sustained_breach() {
    let cluster = Cluster::start().await;
    let pki = Pki::new(cluster.dir.path(), "test", LOCAL);
    let (app, prometheus) = app_and_prometheus(Some(web_config(&pki, "test", false)), None).await;
    let ca = format!("ca_file: {}", pki.path("test-ca.crt"));
    let watchdog = watchdog(
        &cluster,
        &prometheus.url(),
        &keys(&cluster, PASSWORD, &ca),
        "2s",
    )
    .await;
    assert!(prometheus.url().starts_with("https://"));
    breach_rolls_back(&cluster, &app).await;
    let rollbacks = r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="error_rate"}"#;
    assert_eq!(watchdog.metric(rollbacks).await, Some(1.0));
}

#[tokio::test]
async fn a_required_client_certificate_and_a_route_prefix_roll_back_a_sustained_breach() {
    let cluster = Cluster::start().await;
    let pki = Pki::new(cluster.dir.path(), "test", LOCAL);
    let (app, prometheus) =
        app_and_prometheus(Some(web_config(&pki, "test", true)), Some("/prometheus")).await;
    let tls = format!(
        "ca_file: {}, cert_file: {}, key_file: {}, server_name: localhost",
        pki.path("test-ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let _watchdog = watchdog(
        &cluster,
        &prometheus.url(),
        &keys(&cluster, PASSWORD, &tls),
        "2s",
    )
    .await;
    assert!(prometheus.url().ends_with("/prometheus"));
    breach_rolls_back(&cluster, &app).await;
}

/// Each mistake, against a Prometheus with mTLS and basic auth: its reason counted, and the
/// window's breach never acted on.
#[tokio::test]
async fn a_wrong_ca_name_client_certificate_or_password_is_its_reason_and_never_a_breach() {
    let cluster = Cluster::start().await;
    let pki = Pki::new(cluster.dir.path(), "test", LOCAL);
    let other = cluster.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let stranger = Pki::new(&other, "stranger", LOCAL);
    let (app, prometheus) = app_and_prometheus(Some(web_config(&pki, "test", true)), None).await;
    let client = format!(
        "cert_file: {}, key_file: {}",
        pki.path("client.crt"),
        pki.path("client.key")
    );
    let (ours, theirs) = (pki.path("test-ca.crt"), stranger.path("stranger-ca.crt"));
    let cases = [
        ("tls", format!("ca_file: {theirs}, {client}"), PASSWORD),
        (
            "tls",
            format!("ca_file: {ours}, {client}, server_name: wrong.example"),
            PASSWORD,
        ),
        ("tls", format!("ca_file: {ours}"), PASSWORD),
        (
            "auth",
            format!("ca_file: {ours}, {client}"),
            "not-the-password",
        ),
    ];
    app.set("v2", failing());
    for (reason, tls, password) in cases {
        let watchdog = watchdog(
            &cluster,
            &prometheus.url(),
            &keys(&cluster, password, &tls),
            "1s",
        )
        .await;
        // A window for each watchdog: back to v1 as it watches, then the cutover.
        cluster.set_selector_version("v1");
        let on_v1 = |g: &serde_json::Value| g["selector_version"] == "v1";
        watchdog
            .wait_status("the guard seeing v1", Duration::from_secs(10), on_v1)
            .await;
        cluster.cut_over("v2").await;
        let series =
            format!(r#"cutover_watchdog_prometheus_query_errors_total{{reason="{reason}"}}"#);
        watchdog
            .wait_metric(&series, 3.0, Duration::from_secs(20))
            .await;
        assert_eq!(
            cluster.selector_version(),
            "v2",
            "{tls}: acted on a failed query"
        );
        let rollbacks =
            r#"cutover_watchdog_rollbacks_total{guard="checkout",trigger="error_rate"}"#;
        assert_eq!(watchdog.metric(rollbacks).await, Some(0.0), "{tls}");
        let guard = watchdog
            .wait_status("the check's error", Duration::from_secs(10), |g| {
                g["checks"][0]["error"].is_string()
            })
            .await;
        let error = guard["checks"][0]["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(&format!("{reason}: ")), "{tls}: {error}");
        drop(watchdog);
    }
}

/// `check-config --connect` against the TLS Prometheus: its version with the right
/// connection, the reason and exit 1 with a wrong password.
#[tokio::test]
async fn check_config_connect_says_the_version_or_the_reason() {
    let cluster = Cluster::start().await;
    let pki = Pki::new(cluster.dir.path(), "test", LOCAL);
    let (_app, prometheus) = app_and_prometheus(Some(web_config(&pki, "test", false)), None).await;
    for (password, ok, expected) in [
        (PASSWORD, true, "ok, vector(1) answered; Prometheus 2."),
        ("wrong", false, "auth: HTTP 401"),
    ] {
        let keys = keys(
            &cluster,
            password,
            &format!("ca_file: {}", pki.path("test-ca.crt")),
        );
        let config = cluster.dir.path().join("connect.yaml");
        let setup = Setup {
            prometheus: &prometheus.url(),
            prometheus_keys: &keys,
            ..Setup::default()
        };
        std::fs::write(&config, setup.yaml(1, 2)).unwrap();
        let check = async || {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
                .args(["check-config", "--connect", "--config"])
                .arg(&config)
                .output()
                .await
                .unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), said)
        };
        // The sandbox waits only for the TLS port to accept connections: until its storage is
        // ready, Prometheus answers queries 503. Credentials are checked before that.
        let what = format!("check-config --connect to say {expected:?}");
        let (success, said) =
            common::wait_until(&what, Duration::from_secs(15), check, |(_, said)| {
                !said.contains("HTTP 503")
            })
            .await;
        assert_eq!(success, ok, "{said}");
        assert!(said.contains(expected), "{said}");
    }
}

#[tokio::test]
async fn a_bearer_token_rotated_mid_window_and_a_tenant_header_pass_a_checking_gateway() {
    let cluster = Cluster::start().await;
    let (app, prometheus) = common::app_and_prometheus().await;
    let gateway = FaultyProxy::start(prometheus.addr).await.unwrap();
    let require = |token: &str| {
        Mode::Require(vec![
            ("Authorization".into(), format!("Bearer {token}")),
            ("X-Scope-OrgID".into(), "tenant-a".into()),
        ])
    };
    gateway.set(require(PROM_TOKEN));
    let token = cluster.dir.path().join("token");
    std::fs::write(&token, format!("{PROM_TOKEN}\n")).unwrap();
    let keys = format!(
        "  bearer_token_file: {}\n  headers: {{X-Scope-OrgID: tenant-a}}\n  reload_interval: 200ms\n",
        token.display()
    );
    let _watchdog = watchdog(&cluster, &gateway.url(), &keys, "2s").await;
    cluster.cut_over("v2").await;
    let passed = async || gateway.passed();
    common::wait_until(
        "polls through the gateway",
        Duration::from_secs(10),
        passed,
        |n| *n >= 2,
    )
    .await;
    // Mid-window, the gateway wants a new token and the file has it: only the reloaded token
    // can see the breach that follows.
    gateway.set(require(PROM_ROTATED_TOKEN));
    std::fs::write(&token, format!("{PROM_ROTATED_TOKEN}\n")).unwrap();
    let before = gateway.passed();
    v2_breaches(&cluster, &app).await;
    assert!(
        gateway.passed() > before,
        "nothing passed with the second token"
    );
}
