//! After a revert, a GitOps sync (another field manager) sets the selector back on the
//! rolled-back green: the watchdog names that manager in a Warning `RollbackOverridden`, counts
//! it, and does not revert again, so the two never fight.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, SVC, Setup, Watchdog, critical_alert};

#[tokio::test]
async fn a_sync_that_undoes_the_rollback_is_named_and_not_reverted_again() {
    let cluster = Cluster::start().await;
    let setup = Setup {
        extra: "  alerts:\n    match: {app: my-microservice}\n",
        ..Setup::default()
    };
    let w = Watchdog::start(&cluster, &setup).await;
    cluster.cut_over_recorded("v2").await;
    assert_eq!(w.post_alert(&critical_alert("v2")).await, 200);
    cluster.wait_state("rolled-back").await;
    assert_eq!(cluster.wait_selector_patches(1).await, 1);

    // Argo CD's sync, as its field manager, puts Git's selector back.
    let patch = r#"{"spec":{"selector":{"version":"v2"}}}"#;
    let out = cluster
        .kubectl(&[
            "patch",
            "svc",
            SVC,
            "--type",
            "merge",
            "-p",
            patch,
            "--field-manager=argocd-controller",
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.wait_event("RollbackOverridden").await;
    let notes: Vec<String> = cluster
        .api
        .list("events.k8s.io/events", common::NS)
        .into_iter()
        .filter(|e| e["reason"] == "RollbackOverridden")
        .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(notes[0].contains("by argocd-controller"), "{notes:?}");
    let overridden = r#"cutover_watchdog_rollback_overridden_total{guard="checkout"}"#;
    let count = async || common::metric(&w.metrics().await, overridden);
    w.wait_until("the count", std::time::Duration::from_secs(5), count, |n| {
        *n == Some(1.0)
    })
    .await;
    let g = w
        .wait_status("the decision", std::time::Duration::from_secs(5), |g| {
            g["last_decision"]["kind"] == "rollback-overridden"
        })
        .await;
    assert_eq!(g["window"]["open"], false, "no window: {g:#}");
    // No second revert: the sync's selector stands.
    assert_eq!(cluster.selector_version(), "v2");
    assert_eq!(cluster.selector_patches(), 1);
    // On the record, so that a restart neither warns again nor reverts green.
    cluster.wait_state("overridden").await;
    assert_eq!(
        cluster.annotation("baseline-version").as_deref(),
        Some("v2")
    );
    let reason = cluster.annotation("reason").unwrap();
    assert!(reason.contains("by argocd-controller"), "{reason}");
}

#[tokio::test]
async fn a_service_flux_applies_gets_one_warning_naming_the_setting_that_stops_the_fight() {
    let cluster = Cluster::start().await;
    let mut svc = cluster.service();
    svc["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] = "apps".into();
    cluster.api.apply(svc).unwrap();
    let w = Watchdog::start(&cluster, &Setup::default()).await;
    let warning =
        "Flux (kustomize-controller) applies this service (kustomize.toolkit.fluxcd.io/name=apps)";
    let logs = async || w.logs();
    w.wait_until(
        "the warning",
        std::time::Duration::from_secs(5),
        logs,
        |l| l.contains(warning),
    )
    .await;
    // More sights of the Service (the baseline write, a cutover) say nothing more.
    cluster.cut_over_recorded("v2").await;
    let logs = w.logs();
    assert_eq!(logs.matches(warning).count(), 1, "{logs}");
    assert!(logs.contains("kustomize.toolkit.fluxcd.io/ssa: IfNotPresent"));
}
