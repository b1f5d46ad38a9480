//! Prometheus faults on real parts: the watchdog binary reaches the real Prometheus through the
//! sandbox's fault proxy (or, for the restart, directly), with green failing in the synthetic
//! app, so every window here has a check that real data breaches and a check a misread fault
//! would breach (`green_traffic`: green's request rate `below: 10`, with `on_no_data: breach`,
//! which an error read as zero or as no data would trip). Each fault must be no breach and no
//! crash, show in metrics, in `/v1/guards` (the failed check's `error`) and in `/readyz`'s body
//! while `/readyz` stays 200; and once the fault clears, polling resumes and the real breach
//! rolls back, so the guard is not wedged.
//!
//! Time is scaled through config: 500 ms polls, a 1 s query timeout, `for` of 1 to 3 s.

// Test bodies panic on a failed setup step, which is what a failing test should do.
#![allow(clippy::unwrap_used)]
// Metric counters here are small integers, which f64 holds exactly.
#![allow(clippy::float_cmp)]

mod common;

use std::time::Duration;

use common::{Cluster, Setup, Stack};
use cutover_watchdog::sandbox::faulty::Mode;
use cutover_watchdog::sandbox::traffic::Behaviour;
use jiff::Timestamp;
use serde_json::Value;

const FAILING: Behaviour = Behaviour {
    rps: 100.0,
    error_ratio: 0.05,
    latency_seconds: 0.05,
};

/// A second check whose threshold a fault misread as data would cross: green serves 100 rps, so
/// only a zero, or no data under `on_no_data: breach`, breaches it.
fn green_traffic(on_no_data: &str) -> String {
    format!(
        r#"  - name: green_traffic
    query: 'sum(rate(http_requests_total{{app="{}",version="{{{{version}}}}"}}[5s]))'
    below: 10
    for: 1s
    on_no_data: {on_no_data}
"#,
        common::APP
    )
}

fn errors(reason: &str) -> String {
    format!(r#"cutover_watchdog_prometheus_query_errors_total{{reason="{reason}"}}"#)
}

fn rollbacks(trigger: &str) -> String {
    format!(r#"cutover_watchdog_rollbacks_total{{guard="checkout",trigger="{trigger}"}}"#)
}

const NO_DATA: &str =
    r#"cutover_watchdog_check_no_data_total{check="error_rate",guard="checkout"}"#;

/// A stack behind the fault proxy with green already failing and the window open.
async fn failing_green_behind_proxy(for_: &str, first: Mode) -> Stack {
    let traffic = green_traffic("breach");
    let s = Stack::behind_proxy(
        Cluster::start().await,
        Setup {
            for_,
            extra: &traffic,
            ..Setup::default()
        },
    )
    .await;
    s.app.set("v2", FAILING);
    s.proxy().set(first);
    s.cut_over_to_v2().await;
    s
}

/// While the fault lasts: nothing patched, nothing breached, the process up, and the fault
/// visible in metrics, in each check's `error` on `/v1/guards`, and in `/readyz`'s body with
/// `/readyz` still 200.
async fn assert_unharmed(s: &mut Stack, reason: &str, says: &str) {
    assert!(
        s.watchdog.alive(),
        "the watchdog must survive:\n{}",
        s.watchdog.logs()
    );
    assert_eq!(s.cluster.selector_version(), "v2");
    assert_eq!(
        s.cluster.selector_patch_attempts(),
        0,
        "no PATCH of the selector"
    );
    assert!(
        !s.cluster
            .event_reasons()
            .contains(&"RollbackTriggered".to_owned())
    );
    let m = s.watchdog.metrics().await;
    for check in ["error_rate", "green_traffic"] {
        assert_eq!(common::metric(&m, &rollbacks(check)), Some(0.0));
        let breached =
            format!(r#"cutover_watchdog_check_breached{{check="{check}",guard="checkout"}}"#);
        assert_eq!(common::metric(&m, &breached), Some(0.0), "{check}");
    }
    assert!(common::metric(&m, &errors(reason)).unwrap() >= 1.0);
    // The poller counts the error before the guard records it in its status.
    let names_the_fault = |c: &Value| {
        let error = c["error"].as_str().unwrap_or_default();
        c["last"]["kind"] == "error"
            && error.starts_with(&format!("{reason}: "))
            && error.contains(says)
    };
    let what = format!("every check's last poll a {reason} error saying {says:?}");
    let g = &s
        .wait_status(&what, Duration::from_secs(5), |g| {
            g["checks"]
                .as_array()
                .is_some_and(|c| c.iter().all(names_the_fault))
        })
        .await;
    for c in g["checks"].as_array().unwrap() {
        assert_eq!(c["breached"], false, "{g:#}");
        assert!(c["breach_since"].is_null(), "an error resets `for`: {g:#}");
    }
    let readyz = async || s.readyz().await;
    let (code, body) = s
        .wait_until(
            "/readyz to say how Prometheus fails",
            Duration::from_secs(5),
            readyz,
            |(_, b)| b.contains("prometheus queries failing since") && b.contains(says),
        )
        .await;
    assert_eq!(code, 200, "the webhook path still works: {body}");
}

/// Clears the fault and waits for the real breach (green failing) to roll back.
async fn assert_recovers_and_rolls_back(s: &Stack) -> Value {
    s.proxy().set(Mode::Pass);
    s.wait_selector("v1", Duration::from_secs(20)).await;
    let g = s.wait_rolled_back().await;
    assert_eq!(s.metric(&rollbacks("error_rate")).await, 1.0);
    assert_eq!(s.metric(&rollbacks("green_traffic")).await, 0.0);
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
    let (code, body) = s.readyz().await;
    assert!(
        code == 200 && body.contains("prometheus answering"),
        "{body}"
    );
    g
}

fn breach_since(g: &Value) -> Timestamp {
    g["checks"][0]["breach_since"]
        .as_str()
        .unwrap_or_else(|| panic!("no breach_since: {g:#}"))
        .parse()
        .unwrap()
}

/// Waits for the first check's breach to start; when it started.
async fn breach_started(s: &Stack) -> Timestamp {
    let g = s
        .wait_status("the breach to start", Duration::from_secs(15), |g| {
            g["checks"][0]["breached"] == true
        })
        .await;
    breach_since(&g)
}

#[tokio::test]
async fn a_prometheus_that_hangs_mid_breach_times_out_and_the_breach_starts_over_once_it_answers() {
    let mut s = failing_green_behind_proxy("2s", Mode::Pass).await;
    let first_since = breach_started(&s).await;

    // Three 1 s timeouts outlast `for` (2 s): were stale data or a skipped poll to count as
    // breached, the check would trip during the fault.
    let fault_started = Timestamp::now();
    s.proxy().set(Mode::Hang);
    s.wait_metric(&errors("timeout"), 3.0, Duration::from_secs(15))
        .await;
    assert_unharmed(&mut s, "timeout", "timed out").await;

    let g = assert_recovers_and_rolls_back(&s).await;
    let since = breach_since(&g);
    assert!(
        since > fault_started && since > first_since,
        "the breach that tripped began after the fault ({since} vs fault at {fault_started}), not at {first_since}"
    );
}

#[tokio::test]
async fn prometheus_answering_5xx_is_an_error_not_a_breach_and_polling_recovers() {
    let faults = [
        (
            // a load balancer with no healthy Prometheus behind it
            503,
            "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>",
            "HTTP 503 Service Unavailable: body \"<html><body><h1>503 Service Unavailable</h1> No server",
        ),
        (
            // Prometheus' own error
            500,
            r#"{"status":"error","errorType":"internal","error":"unexpected error: out of memory"}"#,
            "HTTP 500 Internal Server Error: internal: unexpected error: out of memory",
        ),
    ];
    // The fault is in place before the window opens, so no real breach can complete first.
    let (code, body, _) = faults[0];
    let first = Mode::Status {
        code,
        body: body.into(),
    };
    let mut s = failing_green_behind_proxy("1s", first).await;
    for (code, body, says) in faults {
        let seen = s.metric(&errors("status")).await;
        s.proxy().set(Mode::Status {
            code,
            body: body.into(),
        });
        // Three failed polls: longer than `for` (1 s).
        s.wait_metric(&errors("status"), seen + 3.0, Duration::from_secs(15))
            .await;
        assert_unharmed(&mut s, "status", says).await;
    }
    // One request per round for both checks: a 5xx is Prometheus failing, so the batch is not
    // retried query by query, which would multiply the load on it.
    let rounds = "cutover_watchdog_poll_duration_seconds_count";
    let (sent, polled) = (s.proxy().requests(), s.metric(rounds).await);
    s.wait_polls(4).await;
    let polled = s.metric(rounds).await - polled;
    #[allow(clippy::cast_precision_loss)] // a handful of requests
    let sent = (s.proxy().requests() - sent) as f64;
    assert!(
        sent <= polled + 1.0,
        "{sent} requests in {polled} poll rounds"
    );
    assert_recovers_and_rolls_back(&s).await;
}

#[tokio::test]
async fn an_unparseable_200_body_is_an_error_never_a_zero_or_no_data() {
    let bodies = [
        ("", "empty body"),
        ("\u{1}\u{2}garbage\u{0}", "unparseable batch response"),
        (
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"cutover_watchdog_query":"0"},"value":[1700000000,"0.0"#,
            "unparseable batch response: EOF",
        ),
        (
            // a login page from an auth proxy, with 200
            "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>",
            "Sign in",
        ),
        (
            // a zero that belongs to no query: read as green's traffic, it would breach
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0"]}]}}"#,
            "batch series without a valid cutover_watchdog_query label",
        ),
        (
            r#"{"status":"error","errorType":"internal","error":"boom"}"#,
            "batch query failed: boom",
        ),
    ];
    // The fault is in place before the window opens, so no real breach can complete first.
    let mut s = failing_green_behind_proxy("1s", Mode::Body(bodies[0].0.into())).await;
    for (body, says) in bodies {
        let seen = s.metric(&errors("body")).await;
        s.proxy().set(Mode::Body(body.into()));
        s.wait_metric(&errors("body"), seen + 3.0, Duration::from_secs(15))
            .await;
        assert_unharmed(&mut s, "body", says).await;
    }
    assert_eq!(
        s.metric(r#"cutover_watchdog_check_no_data_total{check="green_traffic",guard="checkout"}"#)
            .await,
        0.0,
        "an unreadable answer is not an empty one"
    );
    assert_recovers_and_rolls_back(&s).await;
}

#[tokio::test]
async fn a_flapping_connection_never_lets_for_run_across_its_errors_and_a_steady_breach_then_acts()
{
    let mut s = failing_green_behind_proxy("1s", Mode::Flapping).await;
    // The requests that get through carry the real, breached, data...
    s.wait_status(
        "a breached answer between resets",
        Duration::from_secs(15),
        |g| g["checks"][0]["breached"] == true,
    )
    .await;
    // ...but every other one fails, so no breach lasts `for` (1 s) without a gap. Eight more
    // requests are four seconds of a breach a skipped error would have let trip.
    let target = s.proxy().requests() + 8;
    s.wait_until(
        "eight more requests, the selector at v2 throughout",
        Duration::from_secs(20),
        async || {
            assert_eq!(
                s.cluster.selector_version(),
                "v2",
                "rolled back on a breach its errors interrupted"
            );
            s.proxy().requests()
        },
        |sent| *sent >= target,
    )
    .await;
    assert!(s.watchdog.alive(), "{}", s.watchdog.logs());
    assert_eq!(s.cluster.selector_version(), "v2");
    assert_eq!(s.cluster.selector_patch_attempts(), 0);
    assert!(s.metric(&errors("connect")).await >= 4.0);
    assert!(s.proxy().passed() >= 4);
    let (code, body) = s.readyz().await;
    assert_eq!(code, 200, "{body}");
    let g = s
        .wait_status("a failed poll", Duration::from_secs(5), |g| {
            g["checks"][0]["last"]["kind"] == "error"
        })
        .await;
    assert!(
        g["checks"][0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("connect: ")),
        "{g:#}"
    );
    assert_recovers_and_rolls_back(&s).await;
}

#[tokio::test]
async fn a_prometheus_restart_with_data_loss_is_no_data_not_a_breach_and_the_real_breach_then_acts()
{
    let traffic = green_traffic("ignore");
    let mut s = Stack::start(
        Cluster::start().await,
        Setup {
            for_: "3s",
            extra: &traffic,
            ..Setup::default()
        },
    )
    .await;
    s.cut_over_to_v2().await;
    s.app.set("v2", FAILING);
    let first_since = breach_started(&s).await;

    let fault_started = Timestamp::now();
    let no_data = s.metric(NO_DATA).await;
    // The gap while it restarts is a connect error, never a breach.
    s.restart_prometheus_losing_its_data().await;
    // The fresh Prometheus has no samples from before: a 5 s rate is empty until two scrapes.
    s.wait_metric(NO_DATA, no_data + 1.0, Duration::from_secs(15))
        .await;
    assert!(s.watchdog.alive(), "{}", s.watchdog.logs());
    assert_eq!(s.cluster.selector_version(), "v2");
    assert_eq!(s.cluster.selector_patch_attempts(), 0);

    s.wait_selector("v1", Duration::from_secs(20)).await;
    let g = &s.wait_rolled_back().await;
    assert_eq!(s.metric(&rollbacks("error_rate")).await, 1.0);
    assert_eq!(s.cluster.wait_selector_patches(1).await, 1);
    let since = breach_since(g);
    assert!(
        since > fault_started && since > first_since,
        "the breach that tripped began after the restart ({since} vs {fault_started}), not at {first_since}"
    );
}
