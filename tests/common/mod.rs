//! Shared builders for the integration tests: a sandbox cluster on the API double, the real
//! kubectl with its own HOME, the watchdog binary as a child process, and bounded waits; the
//! secrets the suite uses, Secret volumes that rotate as the kubelet rotates them, test
//! certificates and an HTTPS client.
//!
//! Every watchdog child writes its log under [`log_dir`], kept after the test, so that
//! `tests/secrets_in_logs.rs` can check the whole suite's logs for [`secrets::ALL`].

// Each test binary uses a different part.
#![allow(dead_code)]
// Shared by every test crate as a private module: its `pub` is for its users, not exported.
#![allow(unreachable_pub)]
// Test support: a setup step that fails should fail the test, loudly, where it happened.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub mod pki;

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

    /// Sets the selector's version directly in the double, as a deploy tool would; faster than
    /// kubectl for tests that cut over many times.
    pub fn set_selector_version(&self, version: &str) {
        let mut svc = self.service();
        svc["spec"]["selector"]["version"] = Value::from(version);
        self.api.apply(svc).unwrap();
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

    /// Cuts over and waits until the watchdog has recorded the window on the Service and
    /// published its `CutoverDetected` Event (the last write of an opened window), so a fault
    /// injected next meets the rollback, not the cutover's own writes.
    pub async fn cut_over_recorded(&self, version: &str) {
        self.cut_over(version).await;
        self.wait_state("watching").await;
        self.wait_event("CutoverDetected").await;
    }

    /// Waits until the selector names `version`.
    pub async fn wait_selector(&self, version: &str, timeout: Duration) {
        let what = format!("the selector at {version}");
        wait_until(
            &what,
            timeout,
            async || self.selector_version(),
            |v| v == version,
        )
        .await;
    }

    /// Waits (10 s at most) until the window's `state` annotation is `state`.
    pub async fn wait_state(&self, state: &str) {
        let what = format!("the state annotation {state:?}");
        let seen = async || self.annotation("state");
        wait_until(&what, Duration::from_secs(10), seen, |s| {
            s.as_deref() == Some(state)
        })
        .await;
    }

    /// Waits (10 s at most) until an Event with `reason` has been written; all reasons so far.
    pub async fn wait_event(&self, reason: &str) -> Vec<String> {
        let what = format!("a {reason} Event");
        let seen = async || self.event_reasons();
        wait_until(&what, Duration::from_secs(10), seen, |r| {
            r.iter().any(|r| r == reason)
        })
        .await
    }

    /// How many Events with `reason` have been written.
    pub fn events_with(&self, reason: &str) -> usize {
        self.event_reasons().iter().filter(|r| *r == reason).count()
    }

    /// Waits (10 s at most) until the double's request log holds at least `n` selector
    /// changes by the watchdog; how many it holds. The log entry lands a moment after the
    /// change it records, so a test that sees the new selector waits here before counting.
    pub async fn wait_selector_patches(&self, n: usize) -> usize {
        let what = format!("{n} selector PATCH(es) in the request log");
        let seen = async || self.selector_patches();
        wait_until(&what, Duration::from_secs(10), seen, |c| *c >= n).await
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

/// How often [`wait_until`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// The suite's one bounded wait, for every state that arrives asynchronously: Events,
/// annotations, metrics, `/v1/guards`, log lines, the double's request log. Observes every
/// 50 ms until `done` accepts what it saw, for at most `timeout`, and returns that
/// observation. On timeout it panics naming `what`, with the last observation.
pub async fn wait_until<T: Debug>(
    what: &str,
    timeout: Duration,
    observe: impl AsyncFnMut() -> T,
    done: impl FnMut(&T) -> bool,
) -> T {
    wait_with(what, timeout, observe, done, String::new).await
}

/// [`wait_until`], adding `context()` (a watchdog's log, say) to the panic message.
pub async fn wait_with<T: Debug>(
    what: &str,
    timeout: Duration,
    mut observe: impl AsyncFnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
    context: impl FnOnce() -> String,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = observe().await;
        if done(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {seen:#?}\n{}",
            context()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `RUST_LOG` for every watchdog child: every crate at trace, so the secrets check sees every
/// line anything could log. Measured: no slower than `debug` on these tests, about 3 times the
/// lines.
pub const LOG_LEVEL: &str = "trace";

/// The suite-wide directory of watchdog logs, kept after each test (`.ci/test` empties it
/// before the suite and checks it after).
#[must_use]
pub fn log_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("logs")
}

/// A new log file in [`log_dir`]: `<test process id>-<n>.log`.
fn next_log_file() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = log_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}-{n}.log", std::process::id()))
}

/// The watchdog binary, running `serve` as a child process. Killed on drop.
pub struct Watchdog {
    pub child: tokio::process::Child,
    pub main: String,
    pub admin: String,
    /// Its stderr, in [`log_dir`].
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
    /// More keys under `prometheus:` (e.g. `  tls: {...}` lines, indented two spaces).
    pub prometheus_keys: &'a str,
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
            prometheus_keys: "",
        }
    }
}

impl Setup<'_> {
    /// Error ratio over a 5 s rate window: the runbook's check, time-scaled.
    pub fn yaml(&self, main: u16, admin: u16) -> String {
        format!(
            r"listen: 127.0.0.1:{main}
admin_listen: 127.0.0.1:{admin}
poll_interval: {poll}
kube_timeout: 5s
prometheus:
  url: {prom}
  timeout: 1s
{prom_keys}{top}guards:
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
    query: '{query}'
    above: {above}
    for: {for_}
    on_no_data: {nodata}
{extra}",
            query = error_ratio("{{version}}"),
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
            prom_keys = self.prometheus_keys,
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
        let w = Self::spawn(cluster, config, (main, admin), "watchdog-test");
        w.wait_ready().await;
        w
    }

    /// Starts the binary as replica `identity` (its Pod name, and `POD_IP` loopback, as the
    /// downward API would give it) without waiting for `/readyz`.
    pub fn spawn(cluster: &Cluster, config: &Path, ports: (u16, u16), identity: &str) -> Self {
        let (main, admin) = ports;
        let log = next_log_file();
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
            .args(["serve", "--config"])
            .arg(config)
            .env("KUBECONFIG", &cluster.kubeconfig)
            // The more lines, the more tests/secrets_in_logs.rs covers.
            .env("RUST_LOG", LOG_LEVEL)
            .env("POD_NAME", identity)
            .env("POD_IP", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            child,
            main: format!("http://127.0.0.1:{main}"),
            admin: format!("http://127.0.0.1:{admin}"),
            log,
            config: config.to_owned(),
            ports: (main, admin),
        }
    }

    /// Waits until `/healthz` answers: the process is up, leader or not.
    pub async fn wait_healthy(&self) {
        let url = format!("{}/healthz", self.admin);
        let status = async || http_get(&url).await.map(|r| r.status().as_u16()).ok();
        self.wait_until("/healthz", Duration::from_secs(20), status, |s| {
            *s == Some(200)
        })
        .await;
    }

    /// Waits until `/readyz` is 200.
    pub async fn wait_ready(&self) {
        let ready = async || self.readyz().await;
        self.wait_until("/readyz", Duration::from_secs(20), ready, |(c, _)| {
            *c == 200
        })
        .await;
    }

    /// Waits until `/readyz` says this replica leads (every replica is ready, a follower too).
    pub async fn wait_leading(&self) {
        let ready = async || self.readyz().await;
        self.wait_until(
            "/readyz to say leading",
            Duration::from_secs(20),
            ready,
            |(c, body)| *c == 200 && body.starts_with("ready, leading"),
        )
        .await;
    }

    /// `/readyz`'s status code and body; `(0, "")` when nothing answers.
    pub async fn readyz(&self) -> (u16, String) {
        match http().get(format!("{}/readyz", self.admin)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// Posts an Alertmanager webhook body; the answer's status code.
    pub async fn post_alert(&self, body: &str) -> u16 {
        http()
            .post(format!("{}/webhook/alertmanager", self.main))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 200 lines of [`Watchdog::logs`], for failure messages (children log at trace).
    pub fn log_tail(&self) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        let from = lines.len().saturating_sub(200);
        format!(
            "watchdog log ({}), last lines:\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    pub async fn guards(&self) -> Value {
        http_get(format!("{}/v1/guards", self.main))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        http_get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One series' value from `/metrics`; `None` while it is absent or nothing answers.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = http_get(format!("{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric(&text, series)
    }

    /// [`wait_until`], with this watchdog's log in the panic message.
    pub async fn wait_until<T: Debug>(
        &self,
        what: &str,
        timeout: Duration,
        observe: impl AsyncFnMut() -> T,
        done: impl FnMut(&T) -> bool,
    ) -> T {
        wait_with(what, timeout, observe, done, || self.log_tail()).await
    }

    /// Waits for a metric series to reach `at_least`; its value then.
    pub async fn wait_metric(&self, series: &str, at_least: f64, timeout: Duration) -> f64 {
        let what = format!("{series} >= {at_least}");
        let value = async || self.metric(series).await;
        let seen = self.wait_until(&what, timeout, value, |v| v.is_some_and(|v| v >= at_least));
        seen.await.unwrap_or_default()
    }

    /// Waits for the first guard's status (from `/v1/guards`) to satisfy `condition`.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&Value) -> bool,
    ) -> Value {
        let status = async || {
            let answer = http_get(format!("{}/v1/guards", self.main)).await.ok()?;
            answer.json::<Value>().await.ok().map(|g| g[0].clone())
        };
        let seen = self.wait_until(what, timeout, status, |g| {
            g.as_ref().is_some_and(&mut condition)
        });
        seen.await.unwrap_or_default()
    }

    /// Waits until the rollback is recorded in full: `/v1/guards` says the window ended
    /// `rolled-back`, and the `RolledBack` Event is written, which the executor publishes after
    /// counting the rollback (so its metrics are in too). The guard's status, on a rollback
    /// seen landing by the watch, can come first. Returns the guard's status.
    pub async fn wait_rolled_back(&self, cluster: &Cluster) -> Value {
        let status = self
            .wait_status("the rollback recorded", Duration::from_secs(10), |g| {
                g["state"] == "rolled-back"
            })
            .await;
        cluster.wait_event("RolledBack").await;
        status
    }

    /// Waits (10 s at most) for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let what = format!("a log line containing {needle:?}");
        let found = async || self.logs().contains(needle);
        self.wait_until(&what, Duration::from_secs(10), found, |f| *f)
            .await;
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

/// Healthy v1 and v2 of the synthetic app at 100 rps, and the real Prometheus scraping it,
/// warmed up.
pub async fn app_and_prometheus() -> (TrafficApp, ChildServer) {
    let (app, prometheus) = app_and_prometheus_with(PrometheusSetup::default()).await;
    warm_up(&prometheus.url()).await;
    (app, prometheus)
}

/// As [`app_and_prometheus`], Prometheus started from `setup` (its targets filled in), and not
/// warmed up: `warm_up` speaks plain http with no credentials.
pub async fn app_and_prometheus_with(setup: PrometheusSetup) -> (TrafficApp, ChildServer) {
    let healthy = Behaviour {
        rps: 100.0,
        ..Behaviour::HEALTHY
    };
    let app = TrafficApp::start(APP, &[("v1", healthy), ("v2", healthy)])
        .await
        .unwrap();
    let prometheus = processes::prometheus(&PrometheusSetup {
        targets: vec![app.addr()],
        ..setup
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    (app, prometheus)
}

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
        let (app, prometheus) = app_and_prometheus().await;
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
        self.watchdog.readyz().await
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

    /// One series' value, 0 while it is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.watchdog.metric(series).await.unwrap_or(0.0)
    }

    /// [`Watchdog::wait_metric`].
    pub async fn wait_metric(&self, series: &str, at_least: f64, timeout: Duration) -> f64 {
        self.watchdog.wait_metric(series, at_least, timeout).await
    }

    /// Waits for `n` more poll rounds.
    pub async fn wait_polls(&self, n: u32) {
        let rounds = "cutover_watchdog_poll_duration_seconds_count";
        let now = self.metric(rounds).await;
        self.wait_metric(rounds, now + f64::from(n), Duration::from_secs(10))
            .await;
    }

    /// [`Watchdog::wait_status`].
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl FnMut(&Value) -> bool,
    ) -> Value {
        self.watchdog.wait_status(what, timeout, condition).await
    }

    /// [`Watchdog::wait_until`].
    pub async fn wait_until<T: Debug>(
        &self,
        what: &str,
        timeout: Duration,
        observe: impl AsyncFnMut() -> T,
        done: impl FnMut(&T) -> bool,
    ) -> T {
        self.watchdog.wait_until(what, timeout, observe, done).await
    }

    /// Waits until the selector names `version`; the panic carries the watchdog's log.
    pub async fn wait_selector(&self, version: &str, timeout: Duration) {
        let what = format!("the selector at {version}");
        let seen = async || self.cluster.selector_version();
        self.wait_until(&what, timeout, seen, |v| v == version)
            .await;
    }

    /// [`Watchdog::wait_rolled_back`].
    pub async fn wait_rolled_back(&self) -> Value {
        self.watchdog.wait_rolled_back(&self.cluster).await
    }

    /// Cuts over to v2 and waits until the window is also recorded on the Service (so a fault
    /// injected next meets the rollback, not the cutover's own annotation write).
    pub async fn cut_over_to_v2_recorded(&self) {
        self.cut_over_to_v2().await;
        self.cluster.wait_state("watching").await;
        self.cluster.wait_event("CutoverDetected").await;
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

/// The runbook's error-ratio check over a 5 s rate window, for `version` (or a placeholder).
pub fn error_ratio(version: &str) -> String {
    format!(
        r#"sum(rate(http_requests_total{{app="{APP}",version="{version}",code=~"5.."}}[5s])) / sum(rate(http_requests_total{{app="{APP}",version="{version}"}}[5s]))"#
    )
}

/// The value of an instant query's first series; `None` for no data or no answer.
pub async fn query_value(prometheus: &str, expr: &str) -> Option<f64> {
    let answer = http()
        .post(format!("{prometheus}/api/v1/query"))
        .form(&[("query", expr)])
        .send()
        .await
        .ok()?;
    let body: Value = answer.json().await.ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Waits (at most 20 s) until Prometheus has enough scrapes for a 5 s rate of both versions, so
/// a test's first polls see real values rather than a cold start's empty results.
pub async fn warm_up(prometheus: &str) {
    let query = format!("count(rate(http_requests_total{{app=\"{APP}\",code=\"200\"}}[5s]) > 0)");
    let what = "Prometheus to have scraped both versions of the synthetic app";
    let versions = async || query_value(prometheus, &query).await;
    wait_until(what, Duration::from_secs(20), versions, |v| *v == Some(2.0)).await;
}

/// An Alertmanager (payload version 4) webhook body with one critical alert about `version` of
/// the app, firing since now, as the runbook's `GreenErrorRateHigh` rule sends it.
pub fn critical_alert(version: &str) -> String {
    critical_alert_for(APP, version)
}

/// [`critical_alert`] for another app.
pub fn critical_alert_for(app: &str, version: &str) -> String {
    let now = jiff::Timestamp::now();
    serde_json::json!({
        "receiver": "watchdog", "status": "firing", "version": "4",
        "groupKey": "{}:{alertname=\"GreenErrorRateHigh\"}", "truncatedAlerts": 0,
        "groupLabels": {"alertname": "GreenErrorRateHigh"},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "GreenErrorRateHigh", "app": app, "severity": "critical", "version": version},
            "annotations": {"summary": "error rate above 2%"},
            "startsAt": now.to_string(), "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": format!("{:016x}", now.as_nanosecond()),
        }],
    })
    .to_string()
}

/// Every secret the suite hands a watchdog, in one place, so that `tests/secrets_in_logs.rs`
/// can look for each of them in every log line. Tests use these, never ad-hoc literals.
pub mod secrets {
    /// The webhook's bearer token in most tests.
    pub const TOKEN: &str = "s3cret-token";
    /// [`TOKEN`] in base64, as a client confusing the schemes would send it.
    pub const TOKEN_BASE64: &str = "czNjcmV0LXRva2Vu";
    /// The token a rotation replaces [`TOKEN`] with.
    pub const ROTATED_TOKEN: &str = "r0tated-token-2c9a";
    /// The token the real Alertmanagers send.
    pub const AM_TOKEN: &str = "am-token-7f3c";
    /// The token the README's `kubectl create secret` command is tested with.
    pub const MANIFEST_TOKEN: &str = "a-long-random-token";
    pub const BASIC_USER: &str = "am";
    pub const PASSWORD: &str = "hunter2";
    /// `Basic base64("am:hunter2")`.
    pub const BASIC_HEADER: &str = "Basic YW06aHVudGVyMg==";
    pub const ROTATED_PASSWORD: &str = "hunter3-rotated";
    /// `Basic base64("am:hunter3-rotated")`.
    pub const ROTATED_BASIC_HEADER: &str = "Basic YW06aHVudGVyMy1yb3RhdGVk";
    /// What the watchdog sends Prometheus (`tests/prometheus_tls.rs`): a bearer token, the one
    /// it rotates to, and a basic-auth password.
    pub const PROM_TOKEN: &str = "prom-token-1a7e";
    pub const PROM_ROTATED_TOKEN: &str = "prom-token-2b8f";
    pub const PROM_PASSWORD: &str = "prom-test-password";
    /// A notification receiver's secret path (as a Slack webhook's is) and bearer token
    /// (`tests/notify.rs`).
    pub const NOTIFY_PATH: &str = "T0NOTIFY/B0NOTIFY/s3cr3tHookPath";
    pub const NOTIFY_TOKEN: &str = "notify-token-5c3d";

    /// Test TLS keys (P-256, PKCS#8). Fixed, so the logs can be checked for them; the
    /// certificates are made from them at test time ([`super::TestCert`]).
    pub const TLS_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqvIZ2DampR8/XbCt
V2Py/iDGpRCwn8WATNXscPHeNyKhRANCAAToiEe/Jy41J09KtMkQRaxiBWwiidKC
frkTPY4hk83fFT6u9yUgBAnVVSqCs5y/6FhiFfP/CezpZmRyAoRLSJ3d
-----END PRIVATE KEY-----
";
    /// The key a certificate rotation moves to.
    pub const ROTATED_TLS_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBtUZKI2xiW5n9i7F
t+n730Ac3DOOb7VYbaAbpENPav+hRANCAAQ1hXc2R2LqN9RTACMp5jl6bl7xL+Ty
bR/CXV8ZHaqVBS2xafvppJZNgyxp07E8OP7v4tDhdRNuM03IlVwEiOKQ
-----END PRIVATE KEY-----
";
    /// A key that fits no test certificate.
    pub const STRAY_TLS_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0e35Qw28FKhkQjrW
vME4k5Pyab3ZDFk3nDh41CkuaQahRANCAATd8HZj+1+RZQjhY8+SF3LLtLzdcqAk
1ZVjnUeh4+1CsHko6acaOJN8249o5C9iI1lr7ulytJa1gO6uk0koUeI+
-----END PRIVATE KEY-----
";

    /// Each secret as it could leak: the values, and each PEM key's body whole and line by line
    /// (a log line quoting one line of a key is a leak too).
    #[must_use]
    pub fn all() -> Vec<String> {
        let mut all: Vec<String> = [
            TOKEN,
            TOKEN_BASE64,
            ROTATED_TOKEN,
            AM_TOKEN,
            MANIFEST_TOKEN,
            PASSWORD,
            BASIC_HEADER,
            ROTATED_PASSWORD,
            ROTATED_BASIC_HEADER,
            PROM_TOKEN,
            PROM_ROTATED_TOKEN,
            PROM_PASSWORD,
            NOTIFY_PATH,
            NOTIFY_TOKEN,
        ]
        .map(str::to_owned)
        .into();
        for key in [TLS_KEY, ROTATED_TLS_KEY, STRAY_TLS_KEY] {
            let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
            all.push(body.concat());
            all.extend(body.iter().map(|l| (*l).to_owned()));
        }
        all
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, made by rcgen from a fixed key.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: &'static str,
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn new(key_pem: &'static str, name: &str) -> Self {
        let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert_pem: cert.pem(),
            key_pem,
            der: cert.der().to_vec(),
        }
    }
}

/// A directory laid out as the kubelet mounts a Secret: `<key> -> ..data/<key>` and
/// `..data -> ..<version>/`. [`SecretVolume::update`] swaps `..data` atomically by renaming a
/// new symlink over it, as the kubelet does, so a reader sees the old files or the new ones.
pub struct SecretVolume {
    pub dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    pub fn new(dir: &Path, files: &[(&str, &[u8])]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut v = Self {
            dir: dir.to_owned(),
            version: 0,
        };
        v.update(files);
        v
    }

    /// The path a config points at: the stable symlink, never a version directory.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Publishes `files` as the Secret's new contents; a key left out no longer exists (its
    /// symlink dangles, as when a key is removed from the Secret).
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        use std::os::unix::fs::symlink;
        self.version += 1;
        let version = format!("..{}", self.version);
        let new = self.dir.join(&version);
        std::fs::create_dir(&new).unwrap();
        for (key, contents) in files {
            std::fs::write(new.join(key), contents).unwrap();
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(key), &link).unwrap();
            }
        }
        let staged = self.dir.join("..data_tmp");
        symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
        if self.version > 1 {
            std::fs::remove_dir_all(self.dir.join(format!("..{}", self.version - 1))).unwrap();
        }
    }
}

/// One HTTPS answer, with the leaf certificate the server presented.
pub struct HttpsAnswer {
    pub status: u16,
    pub leaf: Vec<u8>,
    pub body: String,
}

/// One HTTP/1.1 request (`request` is e.g. `GET /v1/guards`) over a new TLS connection to
/// `127.0.0.1:port` as `localhost`, trusting only `roots`. An error means the connection or the
/// handshake failed.
pub async fn https(
    port: u16,
    roots: &[&[u8]],
    request: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpsAnswer> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(CertificateDer::from(root.to_vec())).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let mut head = format!(
        "{request} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.extend([name, ": ", value, "\r\n"]);
    }
    head.push_str("\r\n");
    write_all(&mut tls, head.as_bytes()).await?;
    write_all(&mut tls, body).await?;
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut tls, &mut answer)).await;
    match read {
        Ok(Ok(())) => {}
        // A peer that closes without close_notify: what arrived is the whole answer.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::other("HTTPS answer timed out")),
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok(HttpsAnswer { status, leaf, body })
}

// By hand rather than through tokio's `io-util` feature, which would rebuild the whole tree.
async fn write_all(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut buf: &[u8],
) -> std::io::Result<()> {
    use std::pin::Pin;
    while !buf.is_empty() {
        let n = std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    std::future::poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

async fn read_to_end(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    use std::pin::Pin;
    let mut chunk = [0u8; 8192];
    loop {
        let mut buf = tokio::io::ReadBuf::new(&mut chunk);
        std::future::poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, &mut buf)).await?;
        if buf.filled().is_empty() {
            return Ok(());
        }
        out.extend_from_slice(buf.filled());
    }
}

/// A process's resident set size in KiB, from /proc (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A client whose every request is bounded, so a stuck server fails a wait instead of hanging it.
pub fn http() -> reqwest::Client {
    cutover_watchdog::tls::ring_as_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `GET url` with [`http`].
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}
