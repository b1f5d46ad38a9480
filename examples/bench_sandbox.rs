//! Load-test helper: serves the API double with N guarded Services (or a bare webhook handler)
//! until killed, so `bench/*.sh` can run the real watchdog binary against it as its own process.
//!
//! `cargo run --release --example bench_sandbox -- sandbox DIR GUARDS PROMETHEUS_URL MAIN ADMIN`
//! writes `DIR/kubeconfig` and `DIR/config.yaml` (N guards, 2 checks each, webhook without auth
//! and with the rate limit out of the way) and serves the double.
//! `cargo run --release --example bench_sandbox -- bare PORT` serves a bare axum handler that
//! only parses the webhook JSON: the ceiling for this stack.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use cutover_watchdog::sandbox::apiserver::{self, ApiServer};
use cutover_watchdog::webhook::Payload;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bare", port] => bare(port.parse()?).await,
        ["sandbox", dir, guards, prometheus, main, admin] => {
            sandbox(
                dir.into(),
                guards.parse()?,
                prometheus,
                main.parse()?,
                admin.parse()?,
            )
            .await
        }
        _ => anyhow::bail!(
            "usage: bench_sandbox bare PORT | sandbox DIR GUARDS PROMETHEUS_URL MAIN_PORT ADMIN_PORT"
        ),
    }
}

/// Parses the body exactly as the watchdog does, and answers 200.
async fn bare(port: u16) -> anyhow::Result<()> {
    async fn handle(body: Bytes) -> axum::http::StatusCode {
        match serde_json::from_slice::<Payload>(&body) {
            Ok(_) => axum::http::StatusCode::OK,
            Err(_) => axum::http::StatusCode::BAD_REQUEST,
        }
    }
    let app = Router::new().route("/webhook/alertmanager", post(handle));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn sandbox(
    dir: PathBuf,
    guards: usize,
    prometheus: &str,
    main: u16,
    admin: u16,
) -> anyhow::Result<()> {
    let api = ApiServer::start().await?;
    let mut config = format!(
        "listen: 127.0.0.1:{main}\nadmin_listen: 127.0.0.1:{admin}\npoll_interval: 1s\n\
         prometheus: {{url: \"{prometheus}\", timeout: 900ms}}\n\
         webhook: {{rate_limit: {{per_second: 1000000, burst: 1000000}}}}\nguards:\n"
    );
    for i in 0..guards {
        // Guard 0 is the one the captured Alertmanager payload's alerts are about.
        let app = if i == 0 {
            "my-microservice".to_owned()
        } else {
            format!("app-{i}")
        };
        let svc = format!("svc-{i}");
        api.apply(apiserver::service(
            "default",
            &svc,
            &[("app", &app), ("version", "v1")],
        ))?;
        for version in ["v1", "v2"] {
            let labels = [("app", app.as_str()), ("version", version)];
            api.apply(apiserver::pod(
                "default",
                &format!("{app}-{version}"),
                &labels,
                true,
            ))?;
        }
        let _ = write!(
            config,
            "- name: guard-{i}\n  service: {svc}\n  window: 1h\n  stabilization: 1h\n  \
             alerts: {{match: {{app: {app}}}}}\n  checks:\n  \
             - {{name: error_rate, above: 0.02, for: 2m, query: 'sum(rate(http_requests_total{{app=\"{app}\",version=\"{{{{version}}}}\",code=~\"5..\"}}[1m])) / sum(rate(http_requests_total{{app=\"{app}\",version=\"{{{{version}}}}\"}}[1m]))'}}\n  \
             - {{name: latency_p95, above: 0.8, for: 3m, query: 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{app=\"{app}\",version=\"{{{{version}}}}\"}}[1m])))'}}\n"
        );
    }
    std::fs::write(dir.join("config.yaml"), config)?;
    api.write_kubeconfig(&dir.join("kubeconfig"))?;
    std::fs::write(dir.join("api-url"), api.url())?;
    println!("ready {}", api.url());
    // Cut every guard over to v2 on request: touching DIR/cutover opens all windows.
    let flag = dir.join("cutover");
    loop {
        if flag.exists() {
            std::fs::remove_file(&flag)?;
            for i in 0..guards {
                let mut svc = api
                    .get("services", "default", &format!("svc-{i}"))
                    .unwrap_or_default();
                svc["spec"]["selector"]["version"] = "v2".into();
                api.apply(svc)?;
            }
            println!("cut over {guards} guards");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
