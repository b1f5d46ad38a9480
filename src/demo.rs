//! `cutover-watchdog demo`: the runbook's story on this machine, in about a minute, no cluster.
//!
//! It starts the sandbox (the API double holding `svc-production`, the synthetic blue/green app,
//! the real Prometheus and Alertmanager as child processes) and the watchdog itself, then plays
//! one scenario: cutover v1 to v2, a fault in v2, detection, the revert. It narrates on stdout,
//! with a live progress line on a terminal, and ends with a summary of the evidence. It is a
//! showcase: it never touches a real cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::sandbox::apiserver::{self, ApiServer};
use crate::sandbox::free_port;
use crate::sandbox::processes::{self, ChildServer, PrometheusSetup};
use crate::sandbox::traffic::{Behaviour, TrafficApp};

const APP: &str = "my-microservice";
const SERVICE: &str = "svc-production";
const HEALTHY: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.001,
    latency_seconds: 0.05,
};
/// How long the story may take before the demo gives up.
const STORY_LIMIT: Duration = Duration::from_mins(2);

/// Which story to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Green's error ratio climbs to 8%: the error-rate check trips and reverts.
    ErrorRate,
    /// Green's latency climbs to 1.5 s: the P95 check trips and reverts.
    Latency,
    /// Green fails and Prometheus fires a critical alert: Alertmanager's webhook reverts.
    CriticalAlert,
    /// Green stays healthy: the cutover is declared stable.
    Clean,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::ErrorRate => "error-rate",
            Self::Latency => "latency",
            Self::CriticalAlert => "critical-alert",
            Self::Clean => "clean",
        }
    }
}

/// What the demo is told on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Which story to play.
    #[arg(long, value_enum, default_value = "error-rate")]
    pub scenario: Scenario,
    /// After the story, keep serving this long (e.g. `0s`, `30s`), then exit; without it, serve
    /// until Ctrl-C. The exit code says whether the story ended as the scenario expects.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub exit_after: Option<Duration>,
    /// The Prometheus binary (default: `prometheus` on PATH).
    #[arg(long)]
    pub prometheus: Option<PathBuf>,
    /// The Alertmanager binary (default: `prometheus-alertmanager` on PATH).
    #[arg(long)]
    pub alertmanager: Option<PathBuf>,
}

/// Writes story lines above a live progress line on a terminal, or plain lines elsewhere.
struct Narrator {
    bar: ProgressBar,
    last_plain: Instant,
}

impl Narrator {
    fn new() -> Self {
        let bar = if std::io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Self {
            bar,
            last_plain: Instant::now(),
        }
    }

    fn say(&self, line: &str) {
        if self.bar.is_hidden() {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// The live line; without a terminal, printed every 2 s so logs still show progress.
    fn progress(&mut self, line: String) {
        if self.bar.is_hidden() {
            if self.last_plain.elapsed() >= Duration::from_secs(2) {
                println!("  … {line}");
                self.last_plain = Instant::now();
            }
        } else {
            self.bar.set_message(line);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The running sandbox. [`Sandbox::stop`] stops it and waits for every child process to exit;
/// dropping it (on an error) only kills them.
struct Sandbox {
    dir: tempfile::TempDir,
    api: ApiServer,
    app: TrafficApp,
    prometheus: ChildServer,
    alertmanager: ChildServer,
    main: u16,
    admin: u16,
}

impl Sandbox {
    /// Stops every child process and returns once each has exited, then the in-process servers.
    async fn stop(self) -> Result<()> {
        let Self {
            dir,
            api,
            app,
            prometheus,
            alertmanager,
            ..
        } = self;
        // Prometheus first: it scrapes the app and sends alerts to Alertmanager.
        let prometheus = prometheus.stop().await;
        let alertmanager = alertmanager.stop().await;
        drop((app, api, dir));
        prometheus.and(alertmanager)
    }
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_owned(),
        source,
    }
}

fn rules() -> &'static str {
    r#"groups:
- name: demo
  rules:
  - alert: GreenErrorRatioHigh
    expr: sum by (app, version) (rate(http_requests_total{code=~"5.."}[10s])) / sum by (app, version) (rate(http_requests_total[10s])) > 0.02
    for: 2s
    labels: {severity: critical}
    annotations: {summary: error ratio above 2%}
"#
}

fn alertmanager_config(main: u16, token: &std::path::Path) -> String {
    format!(
        "route:\n  receiver: cutover-watchdog\n  group_by: [alertname, app]\n  group_wait: 1s\n  \
         group_interval: 10s\n  repeat_interval: 1h\nreceivers:\n- name: cutover-watchdog\n  webhook_configs:\n  \
         - url: http://127.0.0.1:{main}/webhook/alertmanager\n    send_resolved: true\n    http_config:\n      \
         authorization:\n        credentials_file: {}\n",
        token.display()
    )
}

/// The embedded default config, time-scaled so the story takes about a minute.
fn watchdog_config(s: &Sandbox, scenario: Scenario) -> Result<Config> {
    // In the alert story the checks are slow on purpose, so the webhook is what acts.
    let for_ = if scenario == Scenario::CriticalAlert {
        "10m"
    } else {
        "5s"
    };
    let yaml = format!(
        r#"listen: 127.0.0.1:{main}
admin_listen: 127.0.0.1:{admin}
poll_interval: 1s
kube_timeout: 5s
prometheus: {{url: "{prometheus}", timeout: 2s}}
webhook:
  bearer_token_file: {token}
guards:
- name: checkout
  namespace: default
  service: {SERVICE}
  window: 90s
  stabilization: 20s
  alerts: {{match: {{app: {APP}}}, severities: [critical]}}
  checks:
  - name: error_rate
    query: 'sum(rate(http_requests_total{{app="{APP}",version="{{{{version}}}}",code=~"5.."}}[10s])) / sum(rate(http_requests_total{{app="{APP}",version="{{{{version}}}}"}}[10s]))'
    above: 0.02
    for: {for_}
  - name: latency_p95
    query: 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{app="{APP}",version="{{{{version}}}}"}}[10s])))'
    above: 0.8
    for: {for_}
"#,
        main = s.main,
        admin = s.admin,
        prometheus = s.prometheus.url(),
        token = s.dir.path().join("token").display(),
    );
    Config::from_yaml(&yaml)
}

async fn start_sandbox(options: &DemoOptions, narrator: &Narrator) -> Result<Sandbox> {
    // Find both binaries first, so a missing one is reported before anything starts.
    let prometheus_bin =
        processes::find_binary("prometheus", "prometheus", options.prometheus.as_deref())?;
    let alertmanager_bin = processes::find_binary(
        "prometheus-alertmanager",
        "prometheus-alertmanager",
        options.alertmanager.as_deref(),
    )?;
    let dir = tempfile::Builder::new()
        .prefix("cutover-watchdog-demo-")
        .tempdir()
        .map_err(io("failed to create the demo's temp dir"))?;
    let api = ApiServer::start().await?;
    api.apply(apiserver::service(
        "default",
        SERVICE,
        &[("app", APP), ("version", "v1")],
    ))?;
    for version in ["v1", "v2"] {
        for i in 0..2 {
            let labels = [("app", APP), ("version", version)];
            api.apply(apiserver::pod(
                "default",
                &format!("{APP}-{version}-{i}"),
                &labels,
                true,
            ))?;
        }
    }
    api.write_kubeconfig(&dir.path().join("kubeconfig"))?;
    narrator.say(&format!(
        "sandbox cluster: {} ({SERVICE} selects version=v1; 2 Ready pods each of v1 and v2)",
        api.url()
    ));
    let app = TrafficApp::start(APP, &[("v1", HEALTHY), ("v2", HEALTHY)]).await?;
    narrator.say(&format!(
        "synthetic app:   http://{}/metrics (v1 and v2 at 100 rps, 0.1% errors, 50 ms)",
        app.addr()
    ));
    let (main, admin) = (free_port()?, free_port()?);
    let token = format!("demo-{:x}", jiff::Timestamp::now().as_nanosecond());
    std::fs::write(dir.path().join("token"), &token)
        .map_err(io("failed to write the demo token"))?;
    let alertmanager = processes::alertmanager(
        &alertmanager_config(main, &dir.path().join("token")),
        Some(&alertmanager_bin),
    )
    .await?;
    narrator.say(&format!(
        "alertmanager:    {} (critical alerts to the watchdog's webhook, bearer auth)",
        alertmanager.url()
    ));
    let prometheus = processes::prometheus(&PrometheusSetup {
        targets: vec![
            app.addr(),
            std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
        ],
        // Only the alert story has the alert rule, so the check stories show the checks acting.
        rules: (options.scenario == Scenario::CriticalAlert).then(|| rules().to_owned()),
        alertmanagers: vec![alertmanager.addr],
        binary: Some(prometheus_bin),
        ..PrometheusSetup::default()
    })
    .await?;
    narrator.say(&format!(
        "prometheus:      {} (1 s scrapes of the app and the watchdog)",
        prometheus.url()
    ));
    narrator.say("waiting for Prometheus to hold 10 s of traffic for both versions …");
    warm_up(&prometheus.url()).await?;
    Ok(Sandbox {
        dir,
        api,
        app,
        prometheus,
        alertmanager,
        main,
        admin,
    })
}

async fn get_json(url: &str) -> Option<Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

/// One progress line from `/v1/guards`.
fn progress_line(guard: &Value) -> String {
    let mut line = String::new();
    if let (Some(end), true) = (
        guard["window"]["end"].as_str(),
        guard["window"]["open"] == true,
    ) {
        if let Ok(end) = end.parse::<jiff::Timestamp>() {
            let left = end.duration_since(jiff::Timestamp::now()).as_secs().max(0);
            let _ = write!(line, "window {left:>2}s left");
        }
    } else {
        line.push_str("no window");
    }
    let _ = write!(line, " │ state {}", guard["state"].as_str().unwrap_or("-"));
    for check in guard["checks"].as_array().into_iter().flatten() {
        let value = match check["last"]["kind"].as_str() {
            Some("value") => format!("{:.3}", check["last"]["value"].as_f64().unwrap_or(f64::NAN)),
            Some("no_data") => "no data".into(),
            Some("error") => "error".into(),
            _ => "…".into(),
        };
        let mark = if check["breached"] == true {
            "✗ breached"
        } else {
            "✓"
        };
        let _ = write!(
            line,
            " │ {} {value} (threshold {}) {mark}",
            check["name"].as_str().unwrap_or("?"),
            check["threshold"].as_str().unwrap_or("?")
        );
    }
    line
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// How the story ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    RolledBack,
    Stable,
}

/// Runs the demo until its story ends and `exit_after` passes, or `shutdown`. Returns whether
/// the story ended as the scenario says it should.
pub async fn run(options: &DemoOptions, shutdown: CancellationToken) -> Result<bool> {
    crate::tls::ring_as_default();
    let mut narrator = Narrator::new();
    narrator.say(&format!(
        "cutover-watchdog demo, scenario {}",
        options.scenario.name()
    ));
    let sandbox = start_sandbox(options, &narrator).await?;
    let config = watchdog_config(&sandbox, options.scenario)?;
    let client = crate::app::client_for(sandbox.api.config()?)?;
    let stop = shutdown.child_token();
    let mut watchdog = tokio::spawn(crate::app::serve(config, client, stop.clone()));
    let main_url = format!("http://127.0.0.1:{}", sandbox.main);
    let admin_url = format!("http://127.0.0.1:{}", sandbox.admin);
    // If the watchdog fails to start (a port taken, say), say why rather than "not ready".
    tokio::select! {
        ready = wait_ready(&admin_url) => ready?,
        ended = &mut watchdog => {
            return Err(match ended {
                Ok(Err(e)) => e,
                _ => Error::Sandbox("the watchdog stopped during start-up".into()),
            });
        }
    }
    narrator.say(&format!(
        "watchdog:        {main_url}/v1/guards, {admin_url}/metrics (ready)"
    ));

    let outcome = tokio::select! {
        () = shutdown.cancelled() => None,
        story = story(&sandbox, options.scenario, &main_url, &mut narrator) => Some(story?),
    };
    narrator.finish();
    let mut as_expected = false;
    if let Some((ending, fault_to_revert)) = outcome {
        as_expected = (ending == Ending::Stable) == (options.scenario == Scenario::Clean);
        summary(
            &sandbox,
            options.scenario,
            ending,
            fault_to_revert,
            &main_url,
            &admin_url,
            as_expected,
        )
        .await;
        if let Some(d) = options.exit_after {
            tokio::select! { () = shutdown.cancelled() => {}, () = tokio::time::sleep(d) => {} }
        } else {
            println!("\nserving until Ctrl-C …");
            shutdown.cancelled().await;
        }
    }
    stop.cancel();
    let served = watchdog.await;
    // Said only once every child process is gone, not while one is still exiting.
    let stopped = sandbox.stop().await;
    if let Ok(Err(e)) = served {
        return Err(e);
    }
    stopped?;
    println!("stopped the watchdog, Prometheus, Alertmanager and the sandbox.");
    Ok(as_expected)
}

/// Waits until a 10 s rate of both versions' traffic exists, so the checks see values at once.
async fn warm_up(prometheus: &str) -> Result<()> {
    let query = format!("count(rate(http_requests_total{{app=\"{APP}\",code=\"200\"}}[10s]) > 0)");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let response = http
            .post(format!("{prometheus}/api/v1/query"))
            .form(&[("query", query.as_str())])
            .send()
            .await;
        if let Ok(r) = response {
            let body: Value = r.json().await.unwrap_or_default();
            if body["data"]["result"][0]["value"][1] == "2" {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(Error::Sandbox(
        "prometheus did not scrape the synthetic app within 30s".into(),
    ))
}

async fn wait_ready(admin: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::get(format!("{admin}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Sandbox(
        "the watchdog was not ready within 20s".into(),
    ))
}

fn selector_version(api: &ApiServer) -> Option<String> {
    api.get("services", "default", SERVICE)
        .and_then(|s| s["spec"]["selector"]["version"].as_str().map(str::to_owned))
}

/// Plays the story; returns how it ended and, for a revert, the time from fault to revert.
async fn story(
    s: &Sandbox,
    scenario: Scenario,
    main_url: &str,
    narrator: &mut Narrator,
) -> Result<(Ending, Option<Duration>)> {
    // The operator's cutover, as `kubectl patch svc svc-production -p ...` would send it.
    let services: Api<Service> = Api::namespaced(s.api.client()?, "default");
    let cutover = json!({"spec": {"selector": {"version": "v2"}}});
    services
        .patch(
            SERVICE,
            &PatchParams::default(),
            &Patch::Strategic(&cutover),
        )
        .await
        .map_err(|e| Error::Sandbox(format!("the cutover patch failed: {e}")))?;
    narrator.say("\n▶ cutover: kubectl patch svc svc-production -p '{\"spec\":{\"selector\":{\"version\":\"v2\"}}}'");
    let started = Instant::now();
    let mut fault_at = None;
    loop {
        if started.elapsed() > STORY_LIMIT {
            return Err(Error::Sandbox(format!(
                "the story did not end within {}s",
                STORY_LIMIT.as_secs()
            )));
        }
        if fault_at.is_none() && started.elapsed() >= Duration::from_secs(4) {
            fault_at = Some(Instant::now());
            let fault = match scenario {
                Scenario::ErrorRate | Scenario::CriticalAlert => {
                    s.app.set(
                        "v2",
                        Behaviour {
                            error_ratio: 0.08,
                            ..HEALTHY
                        },
                    );
                    "v2 now answers 8% of requests with 5xx"
                }
                Scenario::Latency => {
                    s.app.set(
                        "v2",
                        Behaviour {
                            latency_seconds: 1.5,
                            ..HEALTHY
                        },
                    );
                    "v2 now takes 1.5 s per request"
                }
                Scenario::Clean => "no fault: v2 stays healthy",
            };
            narrator.say(&format!("▶ fault injected: {fault}"));
        }
        if let Some(guards) = get_json(&format!("{main_url}/v1/guards")).await {
            let guard = &guards[0];
            narrator.progress(progress_line(guard));
            if selector_version(&s.api).as_deref() == Some("v1") && guard["state"] == "rolled-back"
            {
                let took = fault_at.map(|t| t.elapsed());
                narrator.say(&format!(
                    "▶ detected and reverted: {}",
                    guard["last_decision"]["reason"].as_str().unwrap_or("")
                ));
                return Ok((Ending::RolledBack, took));
            }
            if guard["state"] == "stable" && scenario == Scenario::Clean {
                narrator.say("▶ Deployment v2 now serving production traffic (declared stable)");
                return Ok((Ending::Stable, None));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn summary(
    s: &Sandbox,
    scenario: Scenario,
    ending: Ending,
    fault_to_revert: Option<Duration>,
    main_url: &str,
    admin_url: &str,
    as_expected: bool,
) {
    let metrics = reqwest::get(format!("{admin_url}/metrics")).await.ok();
    let metrics = match metrics {
        Some(r) => r.text().await.unwrap_or_default(),
        None => String::new(),
    };
    let mut events: Vec<Value> = s.api.list("events.k8s.io/events", "default");
    events.sort_by_key(|e| {
        e["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
    });
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    let selector: BTreeMap<String, String> = s
        .api
        .get("services", "default", SERVICE)
        .and_then(|svc| serde_json::from_value(svc["spec"]["selector"].clone()).ok())
        .unwrap_or_default();
    let selector = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let outcome = match ending {
        Ending::RolledBack => "rolled back v2 → v1",
        Ending::Stable => "v2 declared stable",
    };
    let verdict = if as_expected {
        "as expected"
    } else {
        "NOT what this scenario expects"
    };
    println!("\n── summary ──────────────────────────────────────────────");
    println!("scenario:          {}", scenario.name());
    println!("outcome:           {outcome} ({verdict})");
    if let Some(took) = fault_to_revert {
        let decision = metric_value(&metrics, "cutover_watchdog_rollback_duration_seconds_sum");
        let decision = decision.map_or_else(String::new, |d| {
            format!("; decision → confirmed patch {:.0} ms", d * 1000.0)
        });
        println!(
            "time to rollback:  fault injected → selector reverted {:.1} s{decision}",
            took.as_secs_f64()
        );
    }
    println!("events written:    {}", reasons.join(", "));
    println!("final selector:    {selector}");
    println!("metrics:           {admin_url}/metrics");
    println!("guards:            {main_url}/v1/guards");
    println!("prometheus:        {}", s.prometheus.url());
    println!("alertmanager:      {}", s.alertmanager.url());
    println!("look for yourself:");
    println!(
        "  export KUBECONFIG={}",
        s.dir.path().join("kubeconfig").display()
    );
    println!("  kubectl get svc svc-production -o yaml");
    println!(
        "  kubectl get events.v1.events.k8s.io -o custom-columns=TYPE:.type,REASON:.reason,NOTE:.note"
    );
    println!(
        "  kubectl get pods -o custom-columns=NAME:.metadata.name,VERSION:.metadata.labels.version,READY:.status.conditions[0].status"
    );
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use super::*;

    /// A child that would run for a minute, standing in for Prometheus or Alertmanager; its pid.
    fn sleeper(name: &'static str) -> (ChildServer, u32) {
        let child = tokio::process::Command::new("sleep")
            .arg("60")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        (ChildServer::adopt(name, child, dir, addr), pid)
    }

    #[tokio::test]
    async fn stopping_the_sandbox_returns_only_once_every_child_is_reaped() {
        let (prometheus, prometheus_pid) = sleeper("prometheus");
        let (alertmanager, alertmanager_pid) = sleeper("alertmanager");
        let sandbox = Sandbox {
            dir: tempfile::tempdir().unwrap(),
            api: ApiServer::start().await.unwrap(),
            app: TrafficApp::start(APP, &[("v1", HEALTHY)]).await.unwrap(),
            prometheus,
            alertmanager,
            main: 0,
            admin: 0,
        };
        sandbox.stop().await.unwrap();
        for pid in [prometheus_pid, alertmanager_pid] {
            // A process that exited but was not reaped keeps its /proc entry, as a zombie.
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "child {pid} still there after stop:\n{status}"
            );
        }
    }
}
