//! Reaction time against the API double on loopback, over many runs:
//! - alert received to selector patched (target p99 under 50 ms);
//! - the `for` elapsing to the patch (target within one `poll_interval` plus 50 ms).
//!
//! The watchdog runs in-process against the double and a stub Prometheus whose answer the bench
//! flips, so the numbers are the watchdog's own reaction, not Prometheus' scrape cadence.
//! `cargo run --release --example bench_reaction -- [RUNS]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use cutover_watchdog::config::Config;
use cutover_watchdog::sandbox::apiserver::{self, ApiServer};
use cutover_watchdog::sandbox::free_port;
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const POLL: Duration = Duration::from_millis(250);
const FOR: Duration = Duration::from_millis(500);

/// A Prometheus that answers every query with the current value.
async fn stub_prometheus(value: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    async fn query(State(v): State<Arc<AtomicU64>>) -> axum::Json<Value> {
        let v = f64::from_bits(v.load(Ordering::Relaxed));
        axum::Json(json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [0, v.to_string()]}]}}))
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/api/v1/query", post(query))
        .with_state(value);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut ms: Vec<f64>, target: &str) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: runs {}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({target})",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    );
}

struct Bench {
    api: ApiServer,
    main: String,
    http: reqwest::Client,
}

impl Bench {
    fn selector(&self) -> String {
        let svc = self
            .api
            .get("services", "default", "svc-production")
            .unwrap_or_default();
        svc["spec"]["selector"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Cuts over to `version` and waits until the watchdog's window for it is open.
    async fn cut_over(&self, version: &str) -> anyhow::Result<()> {
        let mut svc = self
            .api
            .get("services", "default", "svc-production")
            .unwrap_or_default();
        svc["spec"]["selector"]["version"] = version.into();
        self.api.apply(svc)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let g: Value = self
                .http
                .get(format!("{}/v1/guards", self.main))
                .send()
                .await?
                .json()
                .await?;
            if g[0]["window"]["open"] == true && g[0]["window"]["version"] == version {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "window for {version} did not open"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits for the selector to be back at v1; returns when the PATCH arrived at the double.
    async fn patched_at(&self, after: Timestamp) -> anyhow::Result<Timestamp> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.selector() != "v1" {
            anyhow::ensure!(Instant::now() < deadline, "no rollback within 10s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The double stores the write before it logs the request; wait for the log too.
        loop {
            let patch = self
                .api
                .requests()
                .iter()
                .find(|r| r.method == "PATCH" && r.at > after && r.body.contains("\"selector\""))
                .map(|r| r.at);
            if let Some(at) = patch {
                return Ok(at);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no selector PATCH logged after {after}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(100), |a| a.parse())?;
    let api = ApiServer::start().await?;
    api.apply(apiserver::service(
        "default",
        "svc-production",
        &[("app", "shop"), ("version", "v1")],
    ))?;
    api.apply(apiserver::pod(
        "default",
        "shop-v1",
        &[("app", "shop"), ("version", "v1")],
        true,
    ))?;
    let value = Arc::new(AtomicU64::new(0f64.to_bits()));
    let prometheus = stub_prometheus(value.clone()).await?;
    let (main, admin) = (free_port()?, free_port()?);
    let config = Config::from_yaml(&format!(
        "listen: 127.0.0.1:{main}\nadmin_listen: 127.0.0.1:{admin}\npoll_interval: {}ms\n\
         prometheus: {{url: 'http://{prometheus}'}}\n\
         webhook: {{rate_limit: {{per_second: 100000, burst: 100000}}}}\nguards:\n- name: shop\n  service: svc-production\n  \
         window: 1h\n  stabilization: 1h\n  alerts: {{match: {{app: shop}}}}\n  checks:\n  \
         - {{name: error_rate, query: 'x{{version=\"{{{{version}}}}\"}}', above: 0.5, for: {}ms}}\n",
        POLL.as_millis(),
        FOR.as_millis()
    ))?;
    let stop = CancellationToken::new();
    let client = cutover_watchdog::app::client_for(api.config()?)?;
    let watchdog = tokio::spawn(cutover_watchdog::app::serve(config, client, stop.clone()));
    let b = Bench {
        api,
        main: format!("http://127.0.0.1:{main}"),
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b
        .http
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "watchdog not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut alert_ms = Vec::new();
    for i in 0..runs {
        let version = format!("a{i}");
        b.cut_over(&version).await?;
        let payload = json!({"version": "4", "status": "firing", "groupKey": "{}", "receiver": "w", "alerts": [{
            "status": "firing", "startsAt": Timestamp::now().to_string(), "endsAt": "0001-01-01T00:00:00Z",
            "labels": {"alertname": "GreenErrorRatioHigh", "app": "shop", "severity": "critical", "version": version}}]});
        let sent = Timestamp::now();
        let r = b
            .http
            .post(format!("{}/webhook/alertmanager", b.main))
            .json(&payload)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "webhook answered {}", r.status());
        let patched = b.patched_at(sent).await?;
        alert_ms.push(patched.duration_since(sent).as_secs_f64() * 1000.0);
    }
    report(
        "alert received → selector patched",
        alert_ms,
        "target p99 < 50 ms",
    );

    let mut for_ms = Vec::new();
    for i in 0..runs {
        let version = format!("f{i}");
        value.store(0f64.to_bits(), Ordering::Relaxed);
        b.cut_over(&version).await?;
        let flipped = Timestamp::now();
        value.store(1f64.to_bits(), Ordering::Relaxed);
        let patched = b.patched_at(flipped).await?;
        // When `for` elapsed: the breach began at the first poll that saw it.
        let g: Value = b
            .http
            .get(format!("{}/v1/guards", b.main))
            .send()
            .await?
            .json()
            .await?;
        let since: Timestamp = g[0]["checks"][0]["breach_since"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no breach_since after the rollback: {g}"))?
            .parse()?;
        let elapsed_at = since + FOR;
        for_ms.push(patched.duration_since(elapsed_at).as_secs_f64() * 1000.0);
    }
    report(
        "`for` elapsed → selector patched",
        for_ms,
        &format!(
            "target within poll_interval + 50 ms = {} ms",
            POLL.as_millis() + 50
        ),
    );
    stop.cancel();
    let _ = watchdog.await;
    Ok(())
}
