//! `replay` against the real Prometheus, with history the test makes: the synthetic app
//! through a breach and the watchdog guarding it (Prometheus scrapes both). For a breach, a
//! blip shorter than `for`, and no data taken as a breach, a replay of that cutover reaches the
//! decision `serve` made at the same poll. A replay with a higher threshold does not roll back;
//! a replay of a version without metrics is no data; guards whose queries use the Service's
//! selector, bound from the cluster, replay alike; `--since` finds each window the watchdog
//! recorded, and `--version-changes` a cutover it never saw.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::{APP, Cluster, Setup, Watchdog};
use cutover_watchdog::sandbox::free_port;
use cutover_watchdog::sandbox::processes::{self, ChildServer, PrometheusSetup};
use cutover_watchdog::sandbox::traffic::{Behaviour, TrafficApp};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(500);

const HEALTHY: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.001,
    latency_seconds: 0.05,
};

/// `cutover-watchdog replay ARGS --config CONFIG`, with no cluster.
async fn replay(config: &std::path::Path, args: &[impl AsRef<std::ffi::OsStr>]) -> Output {
    run(replay_command(config, args)).await
}

fn replay_command(
    config: &std::path::Path,
    args: &[impl AsRef<std::ffi::OsStr>],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"));
    command
        .arg("replay")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("CUTOVER_WATCHDOG_CONFIG")
        .env_remove("KUBECONFIG")
        .kill_on_drop(true);
    command
}

async fn run(mut command: tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_mins(1), command.output())
        .await
        .unwrap()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `serve`'s last decision (its `/v1/guards` status) and replay's `outcome` came at the same
/// poll: within one step, plus what a poll's own Prometheus round trip adds.
fn assert_same_poll(what: &str, served: &Value, outcome: &Value) {
    let at = |v: &Value| -> jiff::Timestamp { v["at"].as_str().unwrap().parse().unwrap() };
    let (served_at, replayed_at) = (at(&served["last_decision"]), at(outcome));
    let apart = replayed_at.duration_since(served_at).abs();
    assert!(
        apart
            <= jiff::SignedDuration::try_from(POLL).unwrap()
                + jiff::SignedDuration::from_millis(250),
        "serve {what} at {served_at}, replay at {replayed_at}"
    );
}

/// `replay --guard checkout --cutover-at AT --version V --previous v1 --output json`.
fn window(at: &str, version: &str) -> Vec<String> {
    [
        "--guard",
        "checkout",
        "--cutover-at",
        at,
        "--version",
        version,
        "--previous",
        "v1",
        "--output",
        "json",
    ]
    .map(str::to_owned)
    .to_vec()
}

struct Recorded {
    cluster: Cluster,
    app: TrafficApp,
    prometheus: ChildServer,
    watchdog: Watchdog,
}

/// The app, a Prometheus scraping it and the watchdog's admin listener, and the watchdog, set
/// up as `tuned` (with that Prometheus).
async fn recorded(tuned: Setup<'static>) -> Recorded {
    recorded_with(tuned, &[("v1", HEALTHY), ("v2", HEALTHY)]).await
}

/// [`recorded`], with the app's versions behaving as `versions`.
async fn recorded_with(tuned: Setup<'static>, versions: &[(&str, Behaviour)]) -> Recorded {
    let cluster = Cluster::start().await;
    let app = TrafficApp::start(APP, versions).await.unwrap();
    let (main, admin) = (free_port().unwrap(), free_port().unwrap());
    let prometheus = processes::prometheus(&PrometheusSetup {
        targets: vec![app.addr(), format!("127.0.0.1:{admin}").parse().unwrap()],
        ..PrometheusSetup::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    common::warm_up(&prometheus.url()).await;
    let url = prometheus.url();
    let setup = Setup {
        prometheus: &url,
        ..tuned
    };
    let config = cluster.dir.path().join("watchdog.yaml");
    std::fs::write(&config, setup.yaml(main, admin)).unwrap();
    let watchdog = Watchdog::start_with(&cluster, &config, main, admin).await;
    Recorded {
        cluster,
        app,
        prometheus,
        watchdog,
    }
}

/// Window A replayed with a threshold its breach never reaches, and for a version Prometheus
/// has no metrics for.
async fn other_replays_of(config: &std::path::Path, cutover_a: &str) {
    // The same window with a threshold the breach never reaches: no rollback.
    let mut tuned = window(cutover_a, "v2");
    tuned.extend(["--set", "checks.error_rate.above=0.5"].map(str::to_owned));
    let timeline = json(&replay(config, &tuned).await);
    assert_ne!(
        timeline[0]["outcome"]["kind"], "rolled_back",
        "{timeline:#}"
    );

    // A version Prometheus has no metrics for: every step no data, never a breach.
    let none = window(cutover_a, "v9");
    let timeline = json(&replay(config, &none).await);
    assert!(
        timeline[0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["values"][0].is_null()),
        "{timeline:#}"
    );
    assert_ne!(timeline[0]["outcome"]["kind"], "rolled_back");
}

/// Window A replayed for a template's guard, `default/svc-production`, and for an explicit
/// guard, both with `{{selector.app}}` in the query, filled from the Service in the cluster: the
/// explicit guard's `outcome`.
async fn bound_replays_of(r: &Recorded, cutover_a: &str, outcome: &Value) {
    let query = common::error_ratio("{{version}}").replace(APP, "{{selector.app}}");
    let keys = format!(
        "window: 8s\n  stabilization: 3s\n  checks:\n  - {{name: error_rate, query: '{query}', \
         above: 0.02, for: 3s}}"
    );
    let head = format!(
        "poll_interval: 500ms\nprometheus: {{url: '{}'}}\n",
        r.prometheus.url()
    );
    let home = r.cluster.dir.path().join("replay-home");
    std::fs::create_dir_all(&home).unwrap();
    for (file, guards, name) in [
        (
            "templates.yaml",
            "templates:\n- name: shop\n  namespaces: [default]",
            "default/svc-production",
        ),
        (
            "explicit.yaml",
            "guards:\n- name: checkout\n  namespace: default\n  service: svc-production",
            "checkout",
        ),
    ] {
        let config = r.cluster.dir.path().join(file);
        std::fs::write(&config, format!("{head}{guards}\n  {keys}\n")).unwrap();
        let mut args = window(cutover_a, "v2");
        name.clone_into(&mut args[1]);
        let mut command = replay_command(&config, &args);
        command
            .env("KUBECONFIG", &r.cluster.kubeconfig)
            .env("HOME", &home);
        let timeline = json(&run(command).await);
        assert_eq!(&timeline[0]["outcome"], outcome, "{file}: {timeline:#}");
        assert_eq!(timeline[0]["guard"], name);
    }
}

#[tokio::test]
async fn replay_reaches_serves_rollback_and_since_finds_every_recorded_window() {
    let r = recorded(Setup {
        window: "8s",
        stabilization: "3s",
        ..Setup::default()
    })
    .await;
    let config = r.watchdog.config.clone();
    // Window A: v2 fails; serve rolls back.
    r.cluster.cut_over_recorded("v2").await;
    let cutover_a = r.cluster.annotation("cutover-at").unwrap();
    r.app.set(
        "v2",
        Behaviour {
            error_ratio: 0.1,
            ..HEALTHY
        },
    );
    let served = r.watchdog.wait_rolled_back(&r.cluster).await;

    let timeline = json(&replay(&config, &window(&cutover_a, "v2")).await);
    let outcome = &timeline[0]["outcome"];
    assert_eq!(outcome["kind"], "rolled_back", "{timeline:#}");
    assert!(
        outcome["trigger"]
            .as_str()
            .unwrap()
            .contains("check error_rate")
    );
    assert_same_poll("rolled back", &served, outcome);
    assert_eq!(timeline[0]["breaches"][0]["tripped"], true, "{timeline:#}");
    // No `alerts` in this guard: nothing to say of them; blue's Ready Pods, though.
    let not_replayed = timeline[0]["not_replayed"].to_string();
    assert!(
        not_replayed.contains("min_ready_previous") && !not_replayed.contains("alerts"),
        "{not_replayed}"
    );

    other_replays_of(&config, &cutover_a).await;
    bound_replays_of(&r, &cutover_a, outcome).await;

    // Window B, after A's has ended: v2 healthy, stable.
    r.app.set("v2", HEALTHY);
    let a_end = cutover_a.parse::<jiff::Timestamp>().unwrap() + Duration::from_secs(9);
    r.watchdog
        .wait_until(
            "window A's end",
            Duration::from_secs(15),
            async || jiff::Timestamp::now(),
            |now| *now > a_end,
        )
        .await;
    r.cluster.cut_over_recorded("v2").await;
    let b_end = r
        .cluster
        .annotation("cutover-at")
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        + Duration::from_secs(8);
    r.cluster.wait_state("stable").await;
    let args = ["--guard", "checkout", "--since", "5m", "--output", "json"];
    // With when it answered: a replay answered before the window's end ran before it, too.
    let since = async || {
        let timelines = json(&replay(&config, &args).await);
        (jiff::Timestamp::now(), timelines)
    };
    // Window B, in the record once Prometheus has scraped it (1 s scrapes), is in progress.
    let (answered, found) = r
        .watchdog
        .wait_until(
            "both windows in the record",
            Duration::from_secs(10),
            since,
            |(_, t)| t.as_array().is_some_and(|a| a.len() >= 2),
        )
        .await;
    if answered < b_end {
        assert_eq!(found[1]["outcome"]["kind"], "in_progress", "{found:#}");
    }
    // Once it has ended, it is stable.
    r.watchdog
        .wait_until(
            "window B's end",
            Duration::from_secs(15),
            async || jiff::Timestamp::now(),
            |now| *now > b_end + Duration::from_secs(1),
        )
        .await;
    let found = json(&replay(&config, &args).await);
    let outcomes: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["outcome"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["rolled_back", "stable"], "{found:#}");
    let text = replay(&config, &["--guard", "checkout", "--since", "5m"]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("2 cutovers of checkout found") && text.contains("rolled back +"),
        "{text}"
    );
}

#[tokio::test]
async fn a_blip_shorter_than_for_turns_stable_in_replay_at_the_poll_serve_did() {
    // `for` outlasts the blip's breach (the blip, plus the query's 5 s rate window), so the
    // window turns stable at the first clean poll after it, in `serve` and in `replay` alike.
    let r = recorded(Setup {
        window: "24s",
        stabilization: "3s",
        for_: "16s",
        ..Setup::default()
    })
    .await;
    r.cluster.cut_over_recorded("v2").await;
    let cutover = r.cluster.annotation("cutover-at").unwrap();
    let failing = Behaviour {
        error_ratio: 0.5,
        ..HEALTHY
    };
    r.app.set("v2", failing);
    // The blip lasts until Prometheus has recorded it.
    let prometheus = r.prometheus.url();
    let ratio = async || common::query_value(&prometheus, &common::error_ratio("v2")).await;
    r.watchdog
        .wait_until(
            "the blip in Prometheus",
            Duration::from_secs(10),
            ratio,
            |v| v.is_some_and(|v| v > 0.02),
        )
        .await;
    r.app.set("v2", HEALTHY);
    let served = r
        .watchdog
        .wait_status("the window stable", Duration::from_secs(20), |g| {
            g["last_decision"]["kind"] == "stable"
        })
        .await;
    assert_eq!(r.cluster.selector_version(), "v2");

    // Replayed before the window's end: in progress, stable at the poll `serve` said so.
    let timeline = json(&replay(&r.watchdog.config, &window(&cutover, "v2")).await);
    let t = &timeline[0];
    assert_eq!(t["outcome"]["kind"], "in_progress", "{timeline:#}");
    let stable = t["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "stable")
        .unwrap_or_else(|| panic!("no stable decision: {timeline:#}"));
    assert_same_poll("turned stable", &served, stable);
    assert_eq!(t["outcome"]["stable_at"], stable["at"]);
    // The replay saw the blip breach, and its `for` never ran out.
    let breached = |s: &Value| s["breached"][0] == true;
    assert!(
        t["steps"].as_array().unwrap().iter().any(breached),
        "{timeline:#}"
    );
    let blip = &t["breaches"][0];
    assert!(
        blip["tripped"] == false && blip["cleared_at"].is_string(),
        "{timeline:#}"
    );
    assert!(
        t["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["kind"] != "rollback"),
        "{timeline:#}"
    );
}

#[tokio::test]
async fn no_data_as_a_breach_rolls_back_in_replay_at_the_poll_serve_did() {
    // A green the app has no metrics for, and `on_no_data: breach`.
    let r = recorded(Setup {
        window: "8s",
        stabilization: "3s",
        on_no_data: "breach",
        ..Setup::default()
    })
    .await;
    r.cluster.cut_over_recorded("v3").await;
    let cutover = r.cluster.annotation("cutover-at").unwrap();
    let served = r.watchdog.wait_rolled_back(&r.cluster).await;

    let timeline = json(&replay(&r.watchdog.config, &window(&cutover, "v3")).await);
    let t = &timeline[0];
    assert_eq!(t["outcome"]["kind"], "rolled_back", "{timeline:#}");
    assert!(
        t["outcome"]["trigger"]
            .as_str()
            .unwrap()
            .contains("no data"),
        "{timeline:#}"
    );
    assert_same_poll("rolled back", &served, &t["outcome"]);
    assert!(t["steps"][0]["values"][0].is_null(), "{timeline:#}");
}

/// Which version has the most traffic: the README's `--version-changes` example.
const SERVING: &str = r#"sum by (version) (rate(http_requests_total{app="my-microservice"}[3s]))"#;

/// The app's traffic moves to `to` (100 rps; `from` keeps 5), and Prometheus has seen it.
async fn move_traffic(r: &Recorded, from: &str, to: &str) {
    r.app.set(to, HEALTHY);
    r.app.set(
        from,
        Behaviour {
            rps: 5.0,
            ..HEALTHY
        },
    );
    let prometheus = r.prometheus.url();
    let rate =
        |v: &str| format!(r#"sum(rate(http_requests_total{{app="{APP}",version="{v}"}}[3s]))"#);
    let (to_rate, from_rate) = (rate(to), rate(from));
    let rates = async || {
        let to = common::query_value(&prometheus, &to_rate).await;
        let from = common::query_value(&prometheus, &from_rate).await;
        to.zip(from)
    };
    let what = format!("{to} serving in Prometheus");
    r.watchdog
        .wait_until(&what, Duration::from_secs(10), rates, |r| {
            r.is_some_and(|(to, from)| to > from * 5.0)
        })
        .await;
}

#[tokio::test]
async fn version_changes_marked_by_a_query_are_replayed_beside_the_recorded_windows() {
    let quiet = Behaviour {
        rps: 5.0,
        ..HEALTHY
    };
    let mut r = recorded_with(
        Setup {
            window: "8s",
            stabilization: "3s",
            ..Setup::default()
        },
        &[("v1", HEALTHY), ("v2", quiet)],
    )
    .await;
    let config = r.watchdog.config.clone();
    move_traffic(&r, "v2", "v1").await;
    // A cutover the watchdog records, with the traffic: the query marks it too.
    r.cluster.cut_over_recorded("v2").await;
    let recorded_at = r.cluster.annotation("cutover-at").unwrap();
    move_traffic(&r, "v1", "v2").await;
    r.cluster.wait_state("stable").await;
    // Past the end the recorded window explains changes up to: 8 s, and two 500 ms steps.
    let window_end = recorded_at.parse::<jiff::Timestamp>().unwrap() + Duration::from_secs(10);
    r.watchdog
        .wait_until(
            "the window's end",
            Duration::from_secs(15),
            async || jiff::Timestamp::now(),
            |now| *now > window_end,
        )
        .await;
    // With the watchdog gone, a cutover it never saw: traffic moves back to v1.
    r.watchdog.child.kill().await.unwrap();
    move_traffic(&r, "v2", "v1").await;

    let args = [
        "--guard",
        "checkout",
        "--since",
        "5m",
        "--version-changes",
        SERVING,
        "--output",
        "json",
    ];
    let since = async || json(&replay(&config, &args).await);
    // The change back is in the query's history once it has held for two steps; its window
    // is replayed to the end once that is past.
    let found = r
        .watchdog
        .wait_until(
            "the change back to v1 marked, its window over",
            Duration::from_secs(20),
            since,
            |t| {
                t.as_array()
                    .is_some_and(|a| a.len() >= 2 && a[1]["outcome"]["kind"] != "in_progress")
            },
        )
        .await;
    let seen: Vec<(&str, &str, &str, &str)> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap();
            (
                s("found_by"),
                s("previous"),
                s("version"),
                t["outcome"]["kind"].as_str().unwrap(),
            )
        })
        .collect();
    // The recorded window explains the change the query marked for it (its own cutover, seen
    // through a 3 s rate); the change back is replayed from the query alone.
    assert_eq!(
        seen,
        [
            ("recorded", "v1", "v2", "stable"),
            ("marked", "v2", "v1", "stable"),
        ],
        "{found:#}"
    );
    // The recorded window starts at its cutover, to the millisecond, not at its first scrape.
    assert_eq!(found[0]["cutover_at"], recorded_at.as_str(), "{found:#}");

    let out = replay(&config, &args[..args.len() - 2]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 cutovers of checkout found") && text.contains(" marked "),
        "{text}"
    );
    // Progress on stderr, stdout kept for the table (or the JSON).
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("replaying 2/2: v2 -> v1 at "),
        "{progress}"
    );

    refused_expressions(&config).await;
}

/// An expression Prometheus refuses is an error; one without a `version` label, a usage error.
async fn refused_expressions(config: &std::path::Path) {
    for (expression, code, said) in [
        ("sum by (version) (", 1, "--version-changes query failed"),
        (
            "sum(rate(http_requests_total[3s]))",
            2,
            "no `version` label",
        ),
    ] {
        let out = replay(
            config,
            &[
                "--guard",
                "checkout",
                "--since",
                "5m",
                "--version-changes",
                expression,
            ],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{expression}: {stderr}");
        assert!(stderr.contains(said), "{expression}: {stderr}");
    }
}

#[tokio::test]
async fn switching_above_for_below_and_a_missing_cutover_are_usage_errors() {
    let cluster = Cluster::start().await;
    let config = cluster.dir.path().join("c.yaml");
    std::fs::write(
        &config,
        Setup::default().yaml(free_port().unwrap(), free_port().unwrap()),
    )
    .unwrap();
    let out = replay(
        &config,
        &[
            "--guard",
            "checkout",
            "--cutover-at",
            "2026-11-30T12:00:00Z",
            "--version",
            "v2",
            "--previous",
            "v1",
            "--set",
            "checks.error_rate.below=0.1",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("switching `above` and `below`"));
    let out = replay(&config, &["--guard", "checkout"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cutover-at"));
    for (at, version, said) in [
        ("2026-11-30T12:00:00Z", "v1", "two different versions"),
        ("2999-01-01T00:00:00Z", "v2", "is in the future"),
    ] {
        let mut args = window(at, version);
        args.truncate(args.len() - 2);
        let out = replay(&config, &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(said), "{stderr}");
    }
}
