//! `preflight` and `cutover` as an operator runs them: the binary with the user's kubeconfig,
//! against the API double and the real Prometheus scraping the synthetic app, with a watchdog
//! guarding the Service (or not). Every item's PASS, WARN and FAIL, the exit codes, and the
//! switch: one write with the window's record, adopted by the watchdog, followed to its end.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::{APP, Cluster, NS, SVC, Setup, Stack};
use cutover_watchdog::sandbox::apiserver::{self, Fault, FaultRule};
use cutover_watchdog::sandbox::traffic::Behaviour;
use serde_json::Value;

/// A time-scaled window, and an election so that a Lease says a watchdog guards the Service.
const TOP: &str =
    "leader_election: {lease_duration: 3s, renew_interval: 300ms, fence_margin: 1s}\n";

fn setup() -> Setup<'static> {
    Setup {
        top: TOP,
        window: "8s",
        stabilization: "3s",
        ..Setup::default()
    }
}

/// `cutover-watchdog ARGS --config <the watchdog's config>` as the operator runs it.
async fn cli(s: &Stack, args: &[&str]) -> Output {
    let home = s.cluster.dir.path().join("cli-home");
    std::fs::create_dir_all(&home).unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
        .args(args)
        .arg("--config")
        .arg(&s.watchdog.config)
        .env_remove("CUTOVER_WATCHDOG_CONFIG")
        .env("KUBECONFIG", &s.cluster.kubeconfig)
        .env("HOME", &home)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_mins(1), run)
        .await
        .expect("the command ended within a minute")
        .unwrap()
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `preflight --output json`: its exit code and report.
async fn preflight(s: &Stack) -> (i32, Value) {
    let out = cli(
        s,
        &[
            "preflight",
            "--guard",
            "checkout",
            "--to",
            "v2",
            "--output",
            "json",
        ],
    )
    .await;
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", said(&out)));
    (out.status.code().unwrap(), report)
}

/// Each item's verdict, by item.
fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["item"].as_str().unwrap().to_owned(),
                i["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn verdict<'a>(items: &'a [(String, String)], item: &str) -> &'a str {
    items.iter().find(|(i, _)| i == item).map_or_else(
        || panic!("no item {item} in {items:?}"),
        |(_, v)| v.as_str(),
    )
}

#[tokio::test]
async fn preflight_passes_every_item_for_a_ready_green_with_metrics_and_a_watchdog() {
    let s = Stack::start(Cluster::start().await, setup()).await;
    common::warm_up(&s.prometheus.url()).await;
    let (code, report) = preflight(&s).await;
    let items = verdicts(&report);
    assert!(items.iter().all(|(_, v)| v == "PASS"), "{report:#}");
    assert_eq!(code, 0);
    assert_eq!(report["from"], "v1");
    let text = cli(&s, &["preflight", "--guard", "checkout", "--to", "v2"]).await;
    let text = said(&text);
    assert!(
        text.contains("PASS  green_pods") && text.contains("0 failed"),
        "{text}"
    );
}

#[tokio::test]
async fn preflight_fails_each_critical_item_warns_on_the_others_and_changes_nothing() {
    let s = Stack::start(Cluster::start().await, setup()).await;
    common::warm_up(&s.prometheus.url()).await;
    let cluster = &s.cluster;
    // The watchdog's own first write, before anything is compared.
    s.wait_until(
        "the baseline record",
        Duration::from_secs(10),
        async || cluster.annotation("baseline-version"),
        Option::is_some,
    )
    .await;
    // Green: one pod not Ready, the other crash-looped a minute ago.
    let labels = [("app", APP), ("version", "v2")];
    cluster
        .api
        .apply(apiserver::pod(NS, &format!("{APP}-v2-0"), &labels, false))
        .unwrap();
    let pod = apiserver::pod(NS, &format!("{APP}-v2-1"), &labels, true);
    let a_minute_ago = jiff::Timestamp::now() - Duration::from_mins(1);
    cluster
        .api
        .apply(apiserver::restarted(pod, 3, a_minute_ago))
        .unwrap();
    // Blue: below min_ready_previous (1).
    for i in 0..2 {
        let labels = [("app", APP), ("version", "v1")];
        cluster
            .api
            .apply(apiserver::pod(NS, &format!("{APP}-v1-{i}"), &labels, false))
            .unwrap();
    }
    // Sticky sessions.
    let mut svc = cluster.service();
    svc["spec"]["sessionAffinity"] = "ClientIP".into();
    cluster.api.apply(svc).unwrap();
    // Green takes traffic and errors above the threshold.
    s.app.set(
        "v2",
        Behaviour {
            rps: 100.0,
            error_ratio: 0.2,
            latency_seconds: 0.05,
        },
    );
    common::warm_up(&s.prometheus.url()).await;
    // RBAC or admission refuses the patch.
    cluster.api.inject(FaultRule {
        method: axum::http::Method::PATCH,
        plural: "services".into(),
        name: Some(SVC.into()),
        times: usize::MAX,
        fault: Fault::Status(403),
    });
    let version_before = cluster.service()["metadata"]["resourceVersion"].clone();

    let s_ref = &s;
    let (code, report) = s_ref
        .wait_until(
            "green's error ratio to be over its threshold in Prometheus",
            Duration::from_secs(20),
            async || preflight(s_ref).await,
            |(_, r)| verdict(&verdicts(r), "check error_rate (green threshold)") == "WARN",
        )
        .await;
    let items = verdicts(&report);
    assert_eq!(code, 1, "{report:#}");
    for (item, want) in [
        ("selector", "PASS"),
        ("green_pods", "FAIL"),
        ("blue_pods", "FAIL"),
        ("session_affinity", "WARN"),
        ("check error_rate (blue)", "PASS"),
        ("check error_rate (green)", "PASS"),
        ("check error_rate (green threshold)", "WARN"),
        ("selector_patch", "FAIL"),
        ("watchdog", "PASS"),
    ] {
        assert_eq!(verdict(&items, item), want, "{item}: {report:#}");
    }
    let evidence = |item: &str| {
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["item"] == item)
            .unwrap()["evidence"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(evidence("green_pods").contains("not Ready: my-microservice-v2-0"));
    assert!(evidence("green_pods").contains("my-microservice-v2-1/app (3)"));
    assert!(evidence("session_affinity").contains("partial traffic switch"));
    assert!(evidence("selector_patch").contains("403"));
    assert_eq!(
        cluster.service()["metadata"]["resourceVersion"],
        version_before,
        "preflight changes nothing"
    );
}

#[tokio::test]
async fn a_check_without_data_for_blue_fails_and_no_watchdog_warns_in_preflight_and_fails_cutover()
{
    let s = Stack::start(
        Cluster::start().await,
        Setup {
            extra: "  - {name: pool, query: 'db_pool_saturation{version=\"{{version}}\"}', above: 0.9}\n",
            ..setup()
        },
    )
    .await;
    common::warm_up(&s.prometheus.url()).await;
    let mut s = s;
    s.watchdog.child.start_kill().unwrap();
    s.watchdog.child.wait().await.unwrap();
    // The Lease goes stale: nobody renews it.
    s.wait_until(
        "the lease to go stale",
        Duration::from_secs(10),
        async || preflight(&s).await.1,
        |r| verdict(&verdicts(r), "watchdog") == "WARN",
    )
    .await;
    let (code, report) = preflight(&s).await;
    let items = verdicts(&report);
    assert_eq!(verdict(&items, "check pool (blue)"), "FAIL", "{report:#}");
    assert_eq!(verdict(&items, "check pool (green)"), "WARN");
    assert_eq!(code, 1);

    let out = cli(&s, &["cutover", "--guard", "checkout", "--to", "v2"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("FAIL  watchdog"), "{}", said(&out));
    assert!(said(&out).contains("not switching"), "{}", said(&out));
    assert_eq!(s.cluster.selector_version(), "v1");

    let forced = [
        "cutover",
        "--guard",
        "checkout",
        "--to",
        "v2",
        "--force",
        "--no-follow",
    ];
    let out = cli(&s, &forced).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        said(&out).contains("switching anyway, as --force asks"),
        "{}",
        said(&out)
    );
    assert_eq!(s.cluster.selector_version(), "v2");
}

#[tokio::test]
async fn an_unknown_guard_is_a_usage_error_naming_the_guards() {
    let s = Stack::start(Cluster::start().await, setup()).await;
    let out = cli(&s, &["preflight", "--guard", "nope", "--to", "v2"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("no guard named \"nope\"") && said(&out).contains("checkout"));
}

/// The switch's request in the double's log: one merge patch by the CLI's field manager.
fn switch_request(cluster: &Cluster) -> cutover_watchdog::sandbox::apiserver::RequestRecord {
    let patches: Vec<_> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.is_patch_of("services", SVC) && r.query.contains("cutover-watchdog-cli"))
        .filter(|r| !r.query.contains("dryRun"))
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    patches.into_iter().next().unwrap()
}

#[tokio::test]
async fn cutover_switches_with_the_windows_record_in_one_write_and_follows_it_to_stable() {
    let s = Stack::start(Cluster::start().await, setup()).await;
    common::warm_up(&s.prometheus.url()).await;
    let out = cli(&s, &["cutover", "--guard", "checkout", "--to", "v2"]).await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("switched default/svc-production: version=v1 -> v2"),
        "{text}"
    );
    assert!(text.contains("window ended stable"), "{text}");
    let patch = switch_request(&s.cluster).json().unwrap();
    assert_eq!(patch["spec"]["selector"]["version"], "v2");
    assert_eq!(
        patch["metadata"]["annotations"]["cutover-watchdog.io/state"],
        "watching"
    );
    let written = patch["metadata"]["annotations"]["cutover-watchdog.io/cutover-at"]
        .as_str()
        .unwrap()
        .to_owned();
    // The watchdog adopted that window: its clock is the command's.
    assert_eq!(s.cluster.annotation("cutover-at").unwrap(), written);
    assert_eq!(s.cluster.annotation("state").as_deref(), Some("stable"));
    assert_eq!(s.cluster.events_with("CutoverDetected"), 1);
}

#[tokio::test]
async fn cutover_follows_a_rollback_to_exit_code_3_and_no_follow_returns_at_once() {
    let s = Stack::start(Cluster::start().await, setup()).await;
    common::warm_up(&s.prometheus.url()).await;
    let out = cli(
        &s,
        &[
            "cutover",
            "--guard",
            "checkout",
            "--to",
            "v2",
            "--no-follow",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(s.cluster.annotation("state").as_deref(), Some("watching"));
    // Back to blue by hand is superseded; the next cutover goes wrong.
    s.cluster.cut_over("v1").await;
    s.cluster.wait_state("superseded").await;
    s.app.set(
        "v2",
        Behaviour {
            rps: 100.0,
            error_ratio: 0.2,
            latency_seconds: 0.05,
        },
    );
    let out = cli(&s, &["cutover", "--guard", "checkout", "--to", "v2"]).await;
    let text = said(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("window ended rolled-back"), "{text}");
    assert_eq!(s.cluster.selector_version(), "v1");
}

#[tokio::test]
async fn preflight_takes_a_template_guard_by_namespace_and_service() {
    let s = Stack::start(Cluster::start().await, setup()).await;
    common::warm_up(&s.prometheus.url()).await;
    // The same check, from a template over the namespace instead of a guards[] entry.
    let config = s.cluster.dir.path().join("templated.yaml");
    let query = common::error_ratio("{{version}}").replace('\'', "''");
    std::fs::write(
        &config,
        format!(
            "prometheus: {{url: '{}'}}\n{TOP}templates:\n- name: shop\n  namespaces: [default]\n  \
             checks: [{{name: error_rate, query: '{query}', above: 0.02}}]\n",
            s.prometheus.url()
        ),
    )
    .unwrap();
    let home = s.cluster.dir.path().join("cli-home");
    std::fs::create_dir_all(&home).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
        .args([
            "preflight",
            "--guard",
            "default/svc-production",
            "--to",
            "v2",
            "--config",
        ])
        .arg(&config)
        .env_remove("CUTOVER_WATCHDOG_CONFIG")
        .env("KUBECONFIG", &s.cluster.kubeconfig)
        .env("HOME", &home)
        .output()
        .await
        .unwrap();
    let text = said(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with(
            "preflight default/svc-production (guard default/svc-production): v1 -> v2"
        ),
        "{text}"
    );
    assert!(text.contains("PASS  check error_rate (blue)"), "{text}");
}

#[tokio::test]
async fn ctrl_c_stops_following_with_130_and_the_watchdog_goes_on_guarding() {
    let s = Stack::start(
        Cluster::start().await,
        Setup {
            window: "60s",
            stabilization: "50s",
            ..setup()
        },
    )
    .await;
    common::warm_up(&s.prometheus.url()).await;
    let home = s.cluster.dir.path().join("cli-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
        .args(["cutover", "--guard", "checkout", "--to", "v2", "--config"])
        .arg(&s.watchdog.config)
        .env_remove("CUTOVER_WATCHDOG_CONFIG")
        .env("KUBECONFIG", &s.cluster.kubeconfig)
        .env("HOME", &home)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Following: the switch is done and the watchdog has adopted the window.
    s.cluster.wait_event("CutoverDetected").await;
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("cutover exits on Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(s.cluster.annotation("state").as_deref(), Some("watching"));
    let g = s
        .wait_status("the window still guarded", Duration::from_secs(5), |g| {
            g["window"]["open"] == true
        })
        .await;
    assert_eq!(g["window"]["version"], "v2");
}
