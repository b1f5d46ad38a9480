//! Templates and live config on real parts: the watchdog binary against the API double, the
//! real Prometheus scraping the synthetic app where a breach is needed, and the real kubectl for
//! the cutover. Services are created, relabelled and annotated while the watchdog runs, and the
//! config file is edited, swapped as a `ConfigMap` volume swaps it, and reloaded on SIGHUP.
//! Time is scaled through config: 500 ms polls, a 200 ms `config_reload_interval`, a 5 s rate
//! window.

// Metric values here are small integers (or 0 and 1), which f64 holds exactly.
#![allow(clippy::float_cmp)]
// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{APP, Cluster, SecretVolume, Setup, Watchdog};
use cutover_watchdog::sandbox::apiserver::{self, ApiServer};
use cutover_watchdog::sandbox::free_port;
use cutover_watchdog::sandbox::traffic::Behaviour;
use serde_json::{Value, json};

const FAILING: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.05,
    latency_seconds: 0.05,
};

/// The namespaces the template covers; the Service of the first test lives in the middle one.
const TEAMS: [&str; 3] = ["team-a", "team-b", "team-c"];
/// The runbook's error ratio, with the app taken from the guarded Service's own selector: the
/// config names no app, so only a filled `{{selector.app}}` finds the synthetic app's series.
const ERROR_RATIO: &str = r#"sum(rate(http_requests_total{app="{{selector.app}}",version="{{version}}",code=~"5.."}[5s])) / sum(rate(http_requests_total{app="{{selector.app}}",version="{{version}}"}[5s]))"#;
const TEMPLATE_GUARDS: &str = r#"cutover_watchdog_guards{source="template"}"#;
const CONFIG_GUARDS: &str = r#"cutover_watchdog_guards{source="config"}"#;
const RELOAD_OK: &str = "cutover_watchdog_config_last_reload_successful";
const RELOAD_AT: &str = "cutover_watchdog_config_last_reload_success_timestamp_seconds";
const REFUSED: &str = "config reload refused";

/// A config with no `guards[]` and one template, `backend`, over `namespaces`, guarding every
/// Service labelled `tier=backend`, with time scaled as in `Setup`.
fn template_config(main: u16, admin: u16, prometheus: &str, namespaces: &[&str]) -> String {
    format!(
        r"listen: 127.0.0.1:{main}
admin_listen: 127.0.0.1:{admin}
poll_interval: 500ms
kube_timeout: 5s
config_reload_interval: 200ms
prometheus:
  url: {prometheus}
  timeout: 1s
templates:
- name: backend
  namespaces: [{namespaces}]
  service_selector: tier=backend
  window: 60s
  stabilization: 50s
  min_ready_previous: 1
  checks:
  - name: error_rate
    query: '{ERROR_RATIO}'
    above: 0.02
    for: 3s
  alerts:
    match: {{service: '{{{{service}}}}'}}
",
        namespaces = namespaces.join(", "),
    )
}

/// Writes `config` beside the cluster and starts the watchdog on it; waits until `/readyz`.
async fn start_on(cluster: &Cluster, config: impl FnOnce(u16, u16) -> String) -> Watchdog {
    let (main, admin) = (free_port().unwrap(), free_port().unwrap());
    let path = cluster.dir.path().join("templates.yaml");
    std::fs::write(&path, config(main, admin)).unwrap();
    Watchdog::start_with(cluster, &path, main, admin).await
}

/// Replaces the file at `path` in one step, as an editor saving through a rename does, so a
/// reload never reads it half written.
fn write_atomically(path: &Path, text: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// The Service `name` in `ns`, with `labels` on itself and a selector on the app's v1.
fn service_with_labels(ns: &str, name: &str, labels: &[(&str, &str)]) -> Value {
    let mut svc = apiserver::service(ns, name, &[("app", APP), ("version", "v1")]);
    for (k, v) in labels {
        svc["metadata"]["labels"][*k] = json!(v);
    }
    svc
}

/// Changes the stored Service `name` in `ns` with `edit`, as another controller would.
fn edit_service(api: &ApiServer, ns: &str, name: &str, edit: impl FnOnce(&mut Value)) {
    let mut svc = api.get("services", ns, name).unwrap();
    edit(&mut svc);
    api.apply(svc).unwrap();
}

/// Two Ready pods each of v1 and v2 of the app in `ns`.
fn ready_pods(api: &ApiServer, ns: &str) {
    for version in ["v1", "v2"] {
        for i in 0..2 {
            let labels = [("app", APP), ("version", version)];
            let name = format!("{APP}-{version}-{i}");
            api.apply(apiserver::pod(ns, &name, &labels, true)).unwrap();
        }
    }
}

/// Every guard `/v1/guards` lists; `None` while nothing answers.
async fn guards(w: &Watchdog) -> Option<Vec<Value>> {
    let answer = common::http_get(format!("{}/v1/guards", w.main))
        .await
        .ok()?;
    answer.json::<Value>().await.ok()?.as_array().cloned()
}

/// `(name, source)` of every listed guard.
async fn names_and_sources(w: &Watchdog) -> Option<Vec<(String, String)>> {
    let listed = guards(w).await?;
    let field = |g: &Value, k: &str| g[k].as_str().unwrap_or_default().to_owned();
    Some(
        listed
            .iter()
            .map(|g| (field(g, "name"), field(g, "source")))
            .collect(),
    )
}

/// Waits until the guard `name` is listed and its status satisfies `condition`; that status.
async fn wait_guard(
    w: &Watchdog,
    name: &str,
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut(&Value) -> bool,
) -> Value {
    let what = format!("guard {name}: {what}");
    let status = async || guards(w).await?.into_iter().find(|g| g["name"] == name);
    let seen = w.wait_until(&what, timeout, status, |g| {
        g.as_ref().is_some_and(&mut condition)
    });
    seen.await.unwrap()
}

/// Waits until a series is exactly `value`.
async fn wait_metric_is(w: &Watchdog, series: &str, value: f64, timeout: Duration) {
    let what = format!("{series} == {value}");
    let seen = async || w.metric(series).await;
    w.wait_until(&what, timeout, seen, |v| *v == Some(value))
        .await;
}

/// Waits for `n` more poll rounds (the poller counts a round whether or not a window is open):
/// time passing, measured in the watchdog's own intervals rather than slept.
async fn wait_polls(w: &Watchdog, n: u32) {
    let rounds = "cutover_watchdog_poll_duration_seconds_count";
    let now = w.metric(rounds).await.unwrap_or_default();
    w.wait_metric(rounds, now + f64::from(n), Duration::from_secs(10))
        .await;
}

/// Log lines holding every one of `needles` (lines carry ANSI colour between fields).
fn log_lines(w: &Watchdog, needles: &[&str]) -> Vec<String> {
    w.logs()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Every series in `/metrics` labelled with one of `guards`.
async fn series_of(w: &Watchdog, guards: &[&str]) -> Vec<String> {
    let metrics = w.metrics().await;
    metrics
        .lines()
        .filter(|l| {
            guards
                .iter()
                .any(|g| l.contains(&format!(r#"guard="{g}""#)))
        })
        .map(str::to_owned)
        .collect()
}

/// `PATCH`es by the watchdog that changed the selector of the Service `name` in `ns`.
fn selector_patches(api: &ApiServer, ns: &str, name: &str) -> usize {
    let path = format!("/api/v1/namespaces/{ns}/services/{name}");
    api.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == path && r.status == 200)
        .filter(|r| r.user_agent.starts_with("cutover-watchdog/"))
        .filter(|r| r.json().is_some_and(|j| !j["spec"]["selector"].is_null()))
        .count()
}

/// `kubectl patch svc NAME -n NS -p {"spec":{"selector":{"version":V}}}`: the runbook's
/// cutover, with the real kubectl, in the Service's namespace.
async fn cut_over(cluster: &Cluster, ns: &str, name: &str, version: &str) {
    let patch = format!(r#"{{"spec":{{"selector":{{"version":"{version}"}}}}}}"#);
    let out = cluster
        .kubectl(&["patch", "svc", name, "-n", ns, "-p", &patch])
        .await;
    assert!(
        out.status.success(),
        "kubectl patch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (10 s at most) until an Event with `reason` is written in `ns`.
async fn wait_event(w: &Watchdog, api: &ApiServer, ns: &str, reason: &str) {
    let what = format!("a {reason} Event in {ns}");
    let reasons = async || event_reasons(api, ns);
    w.wait_until(&what, Duration::from_secs(10), reasons, |r| {
        r.iter().any(|r| r == reason)
    })
    .await;
}

/// Reasons of the `events.k8s.io/v1` Events in `ns`.
fn event_reasons(api: &ApiServer, ns: &str) -> Vec<String> {
    api.list("events.k8s.io/events", ns)
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_template_over_three_namespaces_guards_a_service_created_after_start_and_rolls_it_back() {
    let cluster = Cluster::start().await;
    let (app, prometheus) = common::app_and_prometheus().await;
    let url = prometheus.url();
    let w = start_on(&cluster, |main, admin| {
        template_config(main, admin, &url, &TEAMS)
    })
    .await;
    // One watch per namespace the template names, each listed (empty) before the Service exists,
    // so the Service arrives as a watch event, not in a first list.
    for ns in TEAMS {
        let scope = format!("namespace {ns}");
        let what = format!("the service watch of {ns} established");
        let lines = async || log_lines(&w, &["service watch established", &scope]);
        w.wait_until(&what, Duration::from_secs(10), lines, |l| l.len() == 1)
            .await;
    }
    assert_eq!(guards(&w).await.unwrap(), Vec::<Value>::new());

    let (ns, svc) = ("team-b", "checkout");
    ready_pods(&cluster.api, ns);
    cluster
        .api
        .apply(service_with_labels(ns, svc, &[("tier", "backend")]))
        .unwrap();
    let g = wait_guard(
        &w,
        "team-b/checkout",
        "listed, from the template, watching v1",
        Duration::from_secs(10),
        |g| g["source"] == "template:backend" && g["selector_version"] == "v1",
    )
    .await;
    assert_eq!(
        (g["namespace"].as_str(), g["service"].as_str()),
        (Some(ns), Some(svc))
    );
    assert_eq!(w.metric(TEMPLATE_GUARDS).await, Some(1.0));
    assert_eq!(w.metric(CONFIG_GUARDS).await, Some(0.0));

    cut_over(&cluster, ns, svc, "v2").await;
    wait_guard(
        &w,
        "team-b/checkout",
        "window open on v2",
        Duration::from_secs(10),
        |g| g["window"]["open"] == true && g["window"]["version"] == "v2",
    )
    .await;
    // The window's own writes are done, so the only selector change left to count is ours.
    wait_event(&w, &cluster.api, ns, "CutoverDetected").await;
    // Healthy v2 polls as values: the filled query finds the app's series.
    wait_guard(
        &w,
        "team-b/checkout",
        "a first value for error_rate",
        Duration::from_secs(10),
        |g| g["checks"][0]["last"]["kind"] == "value",
    )
    .await;

    app.set("v2", FAILING);
    let selector = async || {
        cluster.api.get("services", ns, svc).unwrap()["spec"]["selector"]["version"].clone()
    };
    // for (3 s) + rate window (5 s) + polls and a scrape, with room for a loaded machine.
    w.wait_until(
        "the selector back at v1",
        Duration::from_secs(30),
        selector,
        |v| v == "v1",
    )
    .await;
    let g = wait_guard(
        &w,
        "team-b/checkout",
        "the window rolled back",
        Duration::from_secs(10),
        |g| g["state"] == "rolled-back",
    )
    .await;
    assert_eq!(g["last_decision"]["kind"], "rollback");
    wait_event(&w, &cluster.api, ns, "RolledBack").await;
    let rollbacks =
        r#"cutover_watchdog_rollbacks_total{guard="team-b/checkout",trigger="error_rate"}"#;
    w.wait_metric(rollbacks, 1.0, Duration::from_secs(10)).await;
    // v2 still fails, and the checks go on until the window ends: still exactly one revert.
    wait_polls(&w, 4).await;
    assert_eq!(selector_patches(&cluster.api, ns, svc), 1);
    assert_eq!(w.metric(rollbacks).await, Some(1.0));
    let svc = cluster.api.get("services", ns, svc).unwrap();
    assert_eq!(
        svc["spec"]["selector"]["app"], APP,
        "other selector keys untouched"
    );
    assert_eq!(
        svc["metadata"]["annotations"]["cutover-watchdog.io/state"],
        "rolled-back"
    );
}

#[tokio::test]
async fn the_opt_out_annotation_and_a_label_change_each_remove_a_guard() {
    let cluster = Cluster::start().await;
    let ns = TEAMS[0];
    for name in ["cart", "ledger"] {
        cluster
            .api
            .apply(service_with_labels(ns, name, &[("tier", "backend")]))
            .unwrap();
    }
    // Nothing polls Prometheus here: no window opens.
    let w = start_on(&cluster, |main, admin| {
        template_config(main, admin, "http://127.0.0.1:9", &[ns])
    })
    .await;
    let both = vec![
        ("team-a/cart".to_owned(), "template:backend".to_owned()),
        ("team-a/ledger".to_owned(), "template:backend".to_owned()),
    ];
    let listed = async || names_and_sources(&w).await;
    w.wait_until(
        "both Services guarded by the template",
        Duration::from_secs(10),
        listed,
        |l| l.as_ref() == Some(&both),
    )
    .await;
    wait_metric_is(&w, TEMPLATE_GUARDS, 2.0, Duration::from_secs(10)).await;
    let metrics = w.metrics().await;
    for guard in ["team-a/cart", "team-a/ledger"] {
        for series in [
            format!(r#"cutover_watchdog_window_active{{guard="{guard}"}}"#),
            format!(r#"cutover_watchdog_check_breached{{check="error_rate",guard="{guard}"}}"#),
        ] {
            assert_eq!(common::metric(&metrics, &series), Some(0.0), "{series}");
        }
    }

    edit_service(&cluster.api, ns, "cart", |svc| {
        svc["metadata"]["annotations"]["cutover-watchdog.io/guard"] = json!("off");
    });
    edit_service(&cluster.api, ns, "ledger", |svc| {
        svc["metadata"]["labels"]["tier"] = json!("frontend");
    });
    let listed = async || names_and_sources(&w).await;
    w.wait_until("no guard listed", Duration::from_secs(10), listed, |l| {
        l.as_ref().is_some_and(Vec::is_empty)
    })
    .await;
    wait_metric_is(&w, TEMPLATE_GUARDS, 0.0, Duration::from_secs(10)).await;
    let both = ["team-a/cart", "team-a/ledger"];
    let gone = async || series_of(&w, &both).await;
    w.wait_until(
        "every series of both guards deleted",
        Duration::from_secs(10),
        gone,
        Vec::is_empty,
    )
    .await;
    // And they stay deleted: nothing of a stopped guard writes its series again.
    wait_polls(&w, 2).await;
    assert_eq!(series_of(&w, &both).await, Vec::<String>::new());
    assert_eq!(w.metric(CONFIG_GUARDS).await, Some(0.0));
    assert_eq!(w.readyz().await.0, 200);
    assert!(w.logs().contains("guard stopped"), "{}", w.log_tail());
}

#[tokio::test]
async fn adding_a_guard_by_swapping_the_config_symlink_guards_it_within_the_interval() {
    let cluster = Cluster::start().await;
    cluster
        .api
        .apply(apiserver::service(
            "default",
            "svc-orders",
            &[("app", "orders"), ("version", "v1")],
        ))
        .unwrap();
    let (main, admin) = (free_port().unwrap(), free_port().unwrap());
    let setup = Setup {
        top: "config_reload_interval: 200ms\n",
        ..Setup::default()
    };
    let before = setup.yaml(main, admin);
    let after = before.clone() + "- name: orders\n  namespace: default\n  service: svc-orders\n";
    // Mounted as the kubelet mounts a ConfigMap: config.yaml -> ..data/config.yaml, and
    // ..data -> ..<version>/, swapped by renaming a new ..data symlink over the old one.
    let mut volume = SecretVolume::new(
        &cluster.dir.path().join("config"),
        &[("config.yaml", before.as_bytes())],
    );
    let path = volume.path("config.yaml");
    assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
    let w = Watchdog::start_with(&cluster, &path, main, admin).await;
    let listed = async || names_and_sources(&w).await;
    let checkout = vec![("checkout".to_owned(), "config".to_owned())];
    w.wait_until("checkout listed", Duration::from_secs(10), listed, |l| {
        l.as_ref() == Some(&checkout)
    })
    .await;
    let started_at = w.metric(RELOAD_AT).await.unwrap();

    let swapped = Instant::now();
    volume.update(&[("config.yaml", after.as_bytes())]);
    // Ten intervals of 200 ms, for a loaded machine: still well under the 5 s default, so a
    // reload on any other schedule fails here.
    let bound = Duration::from_secs(2);
    let g = wait_guard(&w, "orders", "listed and ready", bound, |g| {
        g["source"] == "config" && g["ready"] == true && g["selector_version"] == "v1"
    })
    .await;
    let took = swapped.elapsed();
    assert!(took <= bound, "took {took:?}");
    assert_eq!(g["service"], "svc-orders");
    assert_eq!(
        names_and_sources(&w).await.unwrap(),
        vec![
            ("checkout".to_owned(), "config".to_owned()),
            ("orders".to_owned(), "config".to_owned()),
        ],
        "guards[] in file order, the old one kept"
    );
    wait_metric_is(&w, CONFIG_GUARDS, 2.0, Duration::from_secs(10)).await;
    assert_eq!(w.metric(RELOAD_OK).await, Some(1.0));
    assert!(w.metric(RELOAD_AT).await.unwrap() > started_at);
    assert_eq!(log_lines(&w, &[REFUSED]), Vec::<String>::new());
    assert_eq!(w.readyz().await.0, 200);
}

/// The suite's default watchdog, reading its config file again every 200 ms, and that file's
/// text as written.
async fn reloading_every_200ms() -> (Cluster, Watchdog, String) {
    let cluster = Cluster::start().await;
    let setup = Setup {
        top: "config_reload_interval: 200ms\n",
        ..Setup::default()
    };
    let w = Watchdog::start(&cluster, &setup).await;
    let valid = std::fs::read_to_string(&w.config).unwrap();
    (cluster, w, valid)
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_old_config_and_sets_the_metric() {
    let (_cluster, w, valid) = reloading_every_200ms().await;
    assert!(valid.contains("    for: 3s\n"));
    wait_guard(&w, "checkout", "for 3 s", Duration::from_secs(10), |g| {
        g["checks"][0]["for_seconds"] == 3.0
    })
    .await;
    assert_eq!(w.metric(RELOAD_OK).await, Some(1.0));

    write_atomically(&w.config, &valid.replace("for: 3s", "for: 2 fortnights"));
    wait_metric_is(&w, RELOAD_OK, 0.0, Duration::from_secs(10)).await;
    // Ten reload intervals and more go by with the bad file in place: it warned once, at the
    // change, not at every check.
    wait_polls(&w, 4).await;
    let refused = log_lines(&w, &[REFUSED]);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].contains("WARN"), "{}", refused[0]);
    assert!(
        refused[0].contains("guards[0].checks[0].for"),
        "the warning names the key: {}",
        refused[0]
    );
    let listed = guards(&w).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "checkout");
    assert_eq!(
        listed[0]["checks"][0]["for_seconds"], 3.0,
        "the old config stays"
    );
    assert_eq!(w.metric(CONFIG_GUARDS).await, Some(1.0));

    let refused_at = w.metric(RELOAD_AT).await.unwrap();
    write_atomically(&w.config, &valid.replace("for: 3s", "for: 4s"));
    wait_metric_is(&w, RELOAD_OK, 1.0, Duration::from_secs(10)).await;
    wait_guard(&w, "checkout", "for 4 s", Duration::from_secs(10), |g| {
        g["checks"][0]["for_seconds"] == 4.0
    })
    .await;
    assert!(w.metric(RELOAD_AT).await.unwrap() > refused_at);
    assert_eq!(log_lines(&w, &[REFUSED]).len(), 1);
}

#[tokio::test]
async fn a_reload_adding_a_namespace_without_its_permissions_is_refused_naming_them() {
    let (cluster, w, valid) = reloading_every_200ms().await;
    // Granted at start-up for `default`; the Role for `pay` lacks it.
    cluster.api.deny("list", "pods");
    let with_pay =
        format!("{valid}templates:\n- {{name: backend, namespaces: [pay], checks: []}}\n");
    write_atomically(&w.config, &with_pay);
    wait_metric_is(&w, RELOAD_OK, 0.0, Duration::from_secs(10)).await;
    let refused = log_lines(&w, &[REFUSED]);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0].contains("list pods in pay"),
        "the warning names the permission: {}",
        refused[0]
    );
    assert_eq!(
        names_and_sources(&w).await.unwrap(),
        [("checkout".to_owned(), "config".to_owned())],
        "the old config stays"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let cluster = Cluster::start().await;
    // Only a SIGHUP can make this watchdog read its config again within the test.
    let setup = Setup {
        top: "config_reload_interval: 1h\n",
        ..Setup::default()
    };
    let mut w = Watchdog::start(&cluster, &setup).await;
    let valid = std::fs::read_to_string(&w.config).unwrap();
    write_atomically(&w.config, &valid.replace("for: 3s", "for: 4s"));
    wait_polls(&w, 2).await;
    let g = wait_guard(&w, "checkout", "listed", Duration::from_secs(10), |_| true).await;
    assert_eq!(
        g["checks"][0]["for_seconds"], 3.0,
        "not read again before the signal"
    );

    let pid = w.child.id().unwrap().to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    wait_guard(&w, "checkout", "for 4 s", Duration::from_secs(10), |g| {
        g["checks"][0]["for_seconds"] == 4.0
    })
    .await;
    w.wait_log("SIGHUP: reading the config file").await;
    assert_eq!(w.metric(RELOAD_OK).await, Some(1.0));
    assert!(
        w.alive(),
        "SIGHUP must not end the process:\n{}",
        w.log_tail()
    );
    assert_eq!(w.readyz().await.0, 200);
}

#[test]
fn a_template_refuses_the_keys_each_service_supplies_naming_them() {
    let base = "prometheus: {url: 'http://127.0.0.1:9'}\ntemplates:\n- name: backend\n  namespaces: [shop]\n";
    let cases: [(String, &[&str]); 4] = [
        (
            format!("{base}  service: cart\n"),
            &["templates[0]", "`service`"],
        ),
        (
            format!("{base}  namespace: shop\n"),
            &["templates[0]", "`namespace`"],
        ),
        (
            format!(
                "{base}  checks:\n  - {{name: e, query: 'x{{a=\"{{{{selector}}}}\"}}', above: 1}}\n"
            ),
            &["templates[0].checks[0].query", "{{selector}}"],
        ),
        (
            base.replace("[shop]", "['*', shop]"),
            &["templates[0].namespaces", "list it alone"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    for (text, needles) in cases {
        std::fs::write(&path, &text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .env_remove("CUTOVER_WATCHDOG_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{text}");
        for needle in needles {
            assert!(
                err.contains(needle),
                "expected {needle:?} in:\n{err}\nfor:\n{text}"
            );
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}
