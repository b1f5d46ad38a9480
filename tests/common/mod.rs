//! Shared builders for the integration tests: a sandbox cluster on the API double, the real
//! kubectl with its own HOME, the watchdog binary as a child process, and bounded waits.

#![allow(dead_code)]
// each test binary uses a different part
// Test support: a setup step that fails should fail the test, loudly, where it happened.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cutover_watchdog::sandbox::apiserver::{self, ApiServer};
use cutover_watchdog::sandbox::free_port;
use serde_json::Value;
use tempfile::TempDir;

pub const NS: &str = "default";
pub const SVC: &str = "svc-production";
pub const APP: &str = "my-microservice";

/// The API double holding `svc-production` selecting v1, with Ready v1 and v2 pods.
pub struct Cluster {
    pub api: ApiServer,
    pub dir: TempDir,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    pub async fn start() -> Self {
        Self::with_ready_pods(2, 2).await
    }

    pub async fn with_ready_pods(v1_ready: usize, v2_ready: usize) -> Self {
        let api = ApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        api.apply(apiserver::service(
            NS,
            SVC,
            &[("app", APP), ("version", "v1")],
        ))
        .unwrap();
        for (version, ready) in [("v1", v1_ready), ("v2", v2_ready)] {
            for i in 0..2 {
                let labels = [("app", APP), ("version", version)];
                api.apply(apiserver::pod(
                    NS,
                    &format!("{APP}-{version}-{i}"),
                    &labels,
                    i < ready,
                ))
                .unwrap();
            }
        }
        Self {
            api,
            dir,
            kubeconfig,
        }
    }

    /// Runs the real kubectl against the double, with its own HOME for the discovery cache.
    pub async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let run = tokio::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &home)
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_mins(1), run)
            .await
            .expect("kubectl finished within 60s")
            .expect("kubectl must be installed (it ships on these machines as /usr/bin/kubectl)")
    }

    /// `kubectl patch svc svc-production -p {"spec":{"selector":{"version":V}}}`, as an operator.
    pub async fn cut_over(&self, version: &str) {
        let patch = format!(r#"{{"spec":{{"selector":{{"version":"{version}"}}}}}}"#);
        let out = self.kubectl(&["patch", "svc", SVC, "-p", &patch]).await;
        assert!(
            out.status.success(),
            "kubectl patch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Cuts over and waits until the watchdog has recorded the window on the Service.
    pub async fn cut_over_recorded(&self, version: &str) {
        self.cut_over(version).await;
        wait_for("the window recorded", Duration::from_secs(10), || {
            self.annotation("state").as_deref() == Some("watching")
        })
        .await;
    }

    pub fn service(&self) -> Value {
        self.api.get("services", NS, SVC).unwrap()
    }

    pub fn selector_version(&self) -> String {
        self.service()["spec"]["selector"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn annotation(&self, key: &str) -> Option<String> {
        self.service()["metadata"]["annotations"][format!("cutover-watchdog.io/{key}")]
            .as_str()
            .map(str::to_owned)
    }

    /// Reasons of the `events.k8s.io/v1` Events written so far, oldest first.
    pub fn event_reasons(&self) -> Vec<String> {
        let mut events = self.api.list("events.k8s.io/events", NS);
        events.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("0")
                .parse::<u64>()
                .unwrap_or(0)
        });
        events
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `PATCHes` by the watchdog that changed the selector.
    pub fn selector_patches(&self) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.is_patch_of("services", SVC) && r.status == 200)
            .filter(|r| r.user_agent.starts_with("cutover-watchdog/"))
            .filter(|r| r.json().is_some_and(|j| !j["spec"]["selector"].is_null()))
            .count()
    }

    /// `PATCHes` by the watchdog that touch the selector, whatever the answer: attempts, not
    /// just changes.
    pub fn selector_patch_attempts(&self) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.is_patch_of("services", SVC))
            .filter(|r| r.user_agent.starts_with("cutover-watchdog/"))
            .filter(|r| r.json().is_some_and(|j| !j["spec"]["selector"].is_null()))
            .count()
    }

    /// Injects `fault` into the next PATCH of `svc-production`.
    pub fn fault_next_service_patch(&self, fault: apiserver::Fault) {
        self.fault_service_patches(fault, 1);
    }

    /// Injects `fault` into the next `times` `PATCH` requests of `svc-production`.
    pub fn fault_service_patches(&self, fault: apiserver::Fault, times: usize) {
        self.api.inject(apiserver::FaultRule {
            method: axum::http::Method::PATCH,
            plural: "services".into(),
            name: Some(SVC.into()),
            times,
            fault,
        });
    }

    pub fn set_pod_ready(&self, version: &str, index: usize, ready: bool) {
        let labels = [("app", APP), ("version", version)];
        self.api
            .apply(apiserver::pod(
                NS,
                &format!("{APP}-{version}-{index}"),
                &labels,
                ready,
            ))
            .unwrap();
    }
}

/// Polls `condition` every 50 ms until it holds, for at most `timeout`; panics naming `what`.
pub async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The watchdog binary, running `serve` as a child process. Killed on drop.
pub struct Watchdog {
    pub child: tokio::process::Child,
    pub main: String,
    pub admin: String,
    pub log: PathBuf,
    pub config: PathBuf,
    /// (main, admin) listener ports, to restart on the same ones.
    pub ports: (u16, u16),
}

/// A config for a guard on `svc-production`, with time scaled down for tests.
pub struct Setup<'a> {
    pub prometheus: &'a str,
    pub poll_interval: &'a str,
    pub window: &'a str,
    pub stabilization: &'a str,
    pub dry_run: bool,
    pub for_: &'a str,
    pub error_above: f64,
    pub on_no_data: &'a str,
    /// Appended to the guard (e.g. `alerts:`).
    pub extra: &'a str,
    /// Top-level keys (e.g. `webhook:`).
    pub top: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            prometheus: "http://127.0.0.1:9",
            poll_interval: "500ms",
            window: "60s",
            stabilization: "50s",
            dry_run: false,
            for_: "3s",
            error_above: 0.02,
            on_no_data: "ignore",
            extra: "",
            top: "",
        }
    }
}

impl Setup<'_> {
    /// Error ratio over a 5 s rate window: the runbook's check, time-scaled.
    pub fn yaml(&self, main: u16, admin: u16) -> String {
        format!(
            r#"listen: 127.0.0.1:{main}
admin_listen: 127.0.0.1:{admin}
poll_interval: {poll}
kube_timeout: 5s
prometheus:
  url: {prom}
  timeout: 1s
{top}guards:
- name: checkout
  namespace: default
  service: svc-production
  version_label: version
  window: {window}
  stabilization: {stab}
  dry_run: {dry}
  min_ready_previous: 1
  checks:
  - name: error_rate
    query: 'sum(rate(http_requests_total{{app="{APP}",version="{{{{version}}}}",code=~"5.."}}[5s])) / sum(rate(http_requests_total{{app="{APP}",version="{{{{version}}}}"}}[5s]))'
    above: {above}
    for: {for_}
    on_no_data: {nodata}
{extra}"#,
            poll = self.poll_interval,
            prom = self.prometheus,
            window = self.window,
            stab = self.stabilization,
            dry = self.dry_run,
            above = self.error_above,
            for_ = self.for_,
            nodata = self.on_no_data,
            extra = self.extra,
            top = self.top,
        )
    }
}

impl Watchdog {
    /// Writes the config into the cluster's dir and starts the binary; waits until `/readyz`.
    pub async fn start(cluster: &Cluster, setup: &Setup<'_>) -> Self {
        let (main, admin) = (free_port().unwrap(), free_port().unwrap());
        let config = cluster.dir.path().join("watchdog.yaml");
        std::fs::write(&config, setup.yaml(main, admin)).unwrap();
        Self::start_with(cluster, &config, main, admin).await
    }

    pub async fn start_with(cluster: &Cluster, config: &Path, main: u16, admin: u16) -> Self {
        let log = cluster
            .dir
            .path()
            .join(format!("watchdog-{}.log", free_port().unwrap()));
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
            .args(["serve", "--config"])
            .arg(config)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "info,cutover_watchdog=debug")
            .env("POD_NAME", "watchdog-test")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let w = Self {
            child,
            main: format!("http://127.0.0.1:{main}"),
            admin: format!("http://127.0.0.1:{admin}"),
            log,
            config: config.to_owned(),
            ports: (main, admin),
        };
        w.wait_ready().await;
        w
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "watchdog not ready in 20s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn guards(&self) -> Value {
        reqwest::get(format!("{}/v1/guards", self.main))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The value of one sample line in a metrics text, e.g.
/// `cutover_watchdog_rollbacks_total{guard="checkout",trigger="error_rate"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

use cutover_watchdog::sandbox::faulty::FaultyProxy;
use cutover_watchdog::sandbox::processes::{self, ChildServer, PrometheusSetup};
use cutover_watchdog::sandbox::traffic::{Behaviour, TrafficApp};

/// A whole sandbox: cluster, synthetic app, real Prometheus scraping it, and the watchdog.
pub struct Stack {
    pub cluster: Cluster,
    pub app: TrafficApp,
    pub prometheus: ChildServer,
    pub watchdog: Watchdog,
    /// The fault proxy between the watchdog and Prometheus, for stacks started with
    /// [`Stack::behind_proxy`].
    pub proxy: Option<FaultyProxy>,
}

impl Stack {
    /// Healthy v1 and v2 at 100 rps; `setup` gets the Prometheus URL filled in.
    pub async fn start(cluster: Cluster, setup: Setup<'_>) -> Self {
        Self::build(cluster, setup, false).await
    }

    /// As [`Stack::start`], with the watchdog reaching Prometheus through a fault proxy that
    /// starts out passing everything through.
    pub async fn behind_proxy(cluster: Cluster, setup: Setup<'_>) -> Self {
        Self::build(cluster, setup, true).await
    }

    async fn build(cluster: Cluster, setup: Setup<'_>, proxied: bool) -> Self {
        let healthy = Behaviour {
            rps: 100.0,
            ..Behaviour::HEALTHY
        };
        let app = TrafficApp::start(APP, &[("v1", healthy), ("v2", healthy)])
            .await
            .unwrap();
        let prometheus = processes::prometheus(&PrometheusSetup {
            targets: vec![app.addr()],
            ..PrometheusSetup::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        warm_up(&prometheus.url()).await;
        let proxy = if proxied {
            Some(FaultyProxy::start(prometheus.addr).await.unwrap())
        } else {
            None
        };
        let url = proxy
            .as_ref()
            .map_or_else(|| prometheus.url(), FaultyProxy::url);
        let watchdog = Watchdog::start(
            &cluster,
            &Setup {
                prometheus: &url,
                ..setup
            },
        )
        .await;
        Self {
            cluster,
            app,
            prometheus,
            watchdog,
            proxy,
        }
    }

    /// The fault proxy; panics on a stack started without one.
    pub fn proxy(&self) -> &FaultyProxy {
        self.proxy
            .as_ref()
            .expect("a stack started with Stack::behind_proxy")
    }

    /// Kills Prometheus (SIGKILL), waits until the watchdog has failed to reach it (a real
    /// restart takes long enough for that; on this machine it may not), and starts a fresh one
    /// on the same port with an empty data dir: a restart that lost every sample. Returns once
    /// the new one is ready.
    pub async fn restart_prometheus_losing_its_data(&mut self) {
        let port = self.prometheus.addr.port();
        let refused = r#"cutover_watchdog_prometheus_query_errors_total{reason="connect"}"#;
        let seen = self.metric(refused).await;
        self.prometheus.kill().await;
        self.wait_metric(refused, seen + 1.0, Duration::from_secs(10))
            .await;
        self.prometheus = processes::prometheus(&PrometheusSetup {
            targets: vec![self.app.addr()],
            port: Some(port),
            ..PrometheusSetup::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `GET /readyz` on the admin listener: status and body.
    pub async fn readyz(&self) -> (u16, String) {
        let r = reqwest::get(format!("{}/readyz", self.watchdog.admin))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The default stack with `for: 1s`: the check trips one second into a breach.
    pub async fn quick() -> Self {
        Self::start(
            Cluster::start().await,
            Setup {
                for_: "1s",
                ..Setup::default()
            },
        )
        .await
    }

    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.watchdog.metrics().await, series).unwrap_or(0.0)
    }

    /// Waits for a metric series to reach `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: f64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.metric(series).await >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {series} >= {at_least}\n{}",
                self.watchdog.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `n` more poll rounds.
    pub async fn wait_polls(&self, n: u32) {
        let rounds = "cutover_watchdog_poll_duration_seconds_count";
        let now = self.metric(rounds).await;
        self.wait_metric(rounds, now + f64::from(n), Duration::from_secs(10))
            .await;
    }

    /// Waits for the guard's status (from `/v1/guards`) to satisfy `condition`.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let guards = self.watchdog.guards().await;
            if condition(&guards[0]) {
                return guards[0].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last status {guards:#}\n{}",
                self.watchdog.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `condition`; on timeout the panic carries the watchdog's log.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.watchdog.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cuts over to v2 and waits until the window is also recorded on the Service (so a fault
    /// injected next meets the rollback, not the cutover's own annotation write).
    pub async fn cut_over_to_v2_recorded(&self) {
        self.cut_over_to_v2().await;
        self.wait_until("the window recorded", Duration::from_secs(5), || {
            self.cluster.annotation("state").as_deref() == Some("watching")
        })
        .await;
    }

    /// Cuts over to v2 with kubectl and waits until the watchdog has opened the window.
    pub async fn cut_over_to_v2(&self) {
        self.cluster.cut_over("v2").await;
        self.wait_status("the window to open", Duration::from_secs(10), |g| {
            g["window"]["open"] == true && g["window"]["version"] == "v2"
        })
        .await;
    }
}

/// Waits (at most 20 s) until Prometheus has enough scrapes for a 5 s rate of both versions, so
/// a test's first polls see real values rather than a cold start's empty results.
pub async fn warm_up(prometheus: &str) {
    let query = format!("count(rate(http_requests_total{{app=\"{APP}\",code=\"200\"}}[5s]) > 0)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = reqwest::Client::new()
            .post(format!("{prometheus}/api/v1/query"))
            .form(&[("query", query.as_str())])
            .send()
            .await;
        if let Ok(r) = r {
            let body: Value = r.json().await.unwrap_or_default();
            if body["data"]["result"][0]["value"][1] == "2" {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus did not scrape the synthetic app within 20s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
