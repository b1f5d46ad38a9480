//! The README's main-job command in its scripted form: `cutover-watchdog demo --exit-after 0s`
//! plays each scenario on the sandbox with the real Prometheus and Alertmanager, and exits 0
//! only if the story ended as the scenario expects.

// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::time::Duration;

async fn demo(args: &[&str], path: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"));
    command.arg("demo").args(args).kill_on_drop(true);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    tokio::time::timeout(Duration::from_mins(3), command.output())
        .await
        .expect("the demo ends within 3 minutes")
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs one scenario to its end; its stdout, once it exited 0.
async fn successful_story(scenario: &str) -> String {
    let out = demo(&["--scenario", scenario, "--exit-after", "0s"], None).await;
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

async fn scenario_reverts(scenario: &str, trigger: &str) {
    let text = successful_story(scenario).await;
    assert!(
        text.contains("outcome:           rolled back v2 → v1 (as expected)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("detected and reverted: {trigger}")),
        "{text}"
    );
    assert!(
        text.contains("time to rollback:  fault injected → selector reverted"),
        "{text}"
    );
    assert!(
        text.contains("events written:    CutoverDetected, RollbackTriggered, RolledBack"),
        "{text}"
    );
    assert!(
        text.contains("final selector:    app=my-microservice,version=v1"),
        "{text}"
    );
    assert!(
        text.contains("export KUBECONFIG=")
            && text.contains("/v1/guards")
            && text.contains("/metrics"),
        "{text}"
    );
    assert!(
        text.contains("stopped the watchdog, Prometheus, Alertmanager and the sandbox."),
        "{text}"
    );
}

#[tokio::test]
async fn the_error_rate_story_reverts_on_the_check() {
    scenario_reverts("error-rate", "check error_rate").await;
}

#[tokio::test]
async fn the_latency_story_reverts_on_the_p95_check() {
    scenario_reverts("latency", "check latency_p95").await;
}

#[tokio::test]
async fn the_critical_alert_story_reverts_through_alertmanager() {
    scenario_reverts("critical-alert", "critical alert GreenErrorRatioHigh").await;
}

#[tokio::test]
async fn the_clean_story_declares_the_cutover_stable() {
    let text = successful_story("clean").await;
    assert!(
        text.contains("Deployment v2 now serving production traffic"),
        "{text}"
    );
    assert!(
        text.contains("outcome:           v2 declared stable (as expected)"),
        "{text}"
    );
    assert!(
        text.contains("final selector:    app=my-microservice,version=v2"),
        "{text}"
    );
    assert!(text.contains("CutoverStable"), "{text}");
}

#[tokio::test]
async fn a_missing_prometheus_is_named_with_the_package_to_install() {
    let out = demo(&["--exit-after", "0s"], Some("/nonexistent")).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "prometheus not found on PATH; install it with `apt-get install -y prometheus`"
        ),
        "{err}"
    );
    let out = demo(&["--prometheus", "/nonexistent/prometheus"], None).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/prometheus does not exist")
    );
}
