//! The API double against the real kubectl and kube-rs: it must behave as a cluster does for
//! everything the watchdog and its tests rely on.

mod common;

use common::{Cluster, NS, SVC};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

#[tokio::test]
async fn kubectl_get_json_shows_the_service_as_stored() {
    let c = Cluster::start().await;
    let out = c.kubectl(&["get", "svc", SVC, "-o", "json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(svc["kind"], "Service");
    assert_eq!(svc["spec"]["selector"]["version"], "v1");
    assert_eq!(
        svc["metadata"]["resourceVersion"],
        c.service()["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn kubectl_strategic_patch_changes_only_the_version_key() {
    let c = Cluster::start().await;
    let before = c.service()["metadata"]["resourceVersion"].clone();
    c.cut_over("v2").await;
    let svc = c.service();
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app": common::APP, "version": "v2"})
    );
    assert_ne!(
        svc["metadata"]["resourceVersion"], before,
        "a write bumps resourceVersion"
    );
    let patch = c
        .api
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
}

/// `kubectl patch svc svc-production --type merge -p PATCH`.
async fn merge_patch(c: &Cluster, patch: &str) -> std::process::Output {
    c.kubectl(&["patch", "svc", SVC, "--type", "merge", "-p", patch])
        .await
}

#[tokio::test]
async fn kubectl_merge_patch_deletes_keys_with_null_and_reports_no_change() {
    let c = Cluster::start().await;
    let out = merge_patch(&c, r#"{"metadata":{"labels":{"team":"pay"}}}"#).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.service()["metadata"]["labels"]["team"], "pay");
    let out = merge_patch(&c, r#"{"metadata":{"labels":{"team":null}}}"#).await;
    assert!(out.status.success());
    assert!(c.service()["metadata"]["labels"].get("team").is_none());
    let rv = c.service()["metadata"]["resourceVersion"].clone();
    let out = merge_patch(&c, r#"{"spec":{"selector":{"version":"v1"}}}"#).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no change"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        c.service()["metadata"]["resourceVersion"],
        rv,
        "a no-op patch bumps nothing"
    );
}

#[tokio::test]
async fn kubectl_get_missing_service_reports_not_found() {
    let c = Cluster::start().await;
    let out = c.kubectl(&["get", "svc", "nope"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

#[tokio::test]
async fn kubectl_sees_pods_by_label_and_their_readiness() {
    let c = Cluster::with_ready_pods(1, 2).await;
    let out = c
        .kubectl(&["get", "pods", "-l", "version=v1", "-o", "json"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let ready = items
        .iter()
        .filter(|p| p["status"]["conditions"][0]["status"] == "True")
        .count();
    assert_eq!(ready, 1);
}

#[tokio::test]
async fn stale_resource_version_precondition_gets_409_with_a_status_body() {
    let c = Cluster::start().await;
    let api: Api<Service> = Api::namespaced(c.api.client().unwrap(), NS);
    let stale = c.service()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    c.cut_over("v2").await;
    let patch =
        json!({"metadata": {"resourceVersion": stale}, "spec": {"selector": {"version": "v1"}}});
    let err = api
        .patch(SVC, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
        }
        other => panic!("expected a 409 Status, got {other:?}"),
    }
    assert_eq!(
        c.selector_version(),
        "v2",
        "a refused patch changes nothing"
    );
    let raw = c
        .api
        .requests()
        .into_iter()
        .rfind(|r| r.status == 409)
        .unwrap();
    assert!(raw.method == "PATCH");
}

#[tokio::test]
async fn kube_watcher_lists_then_sees_a_kubectl_cutover() {
    let c = Cluster::start().await;
    let api: Api<Service> = Api::namespaced(c.api.client().unwrap(), NS);
    for config in [
        watcher::Config::default().fields(&format!("metadata.name={SVC}")),
        watcher::Config::default()
            .fields(&format!("metadata.name={SVC}"))
            .streaming_lists(),
    ] {
        let stream = watcher(api.clone(), config);
        futures::pin_mut!(stream);
        let mut initial = None;
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                watcher::Event::InitApply(s) => initial = Some(s),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        let initial = initial.expect("the initial list holds the service");
        let version =
            |s: &Service| s.spec.as_ref().unwrap().selector.as_ref().unwrap()["version"].clone();
        let expected_next = if version(&initial) == "v1" {
            "v2"
        } else {
            "v1"
        };
        c.cut_over(expected_next).await;
        let changed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                if let watcher::Event::Apply(s) = stream.next().await.unwrap().unwrap() {
                    return s;
                }
            }
        })
        .await
        .expect("the watch delivers the change within 10s");
        assert_eq!(version(&changed), expected_next);
    }
}

#[tokio::test]
async fn events_without_required_fields_are_refused_with_422() {
    let c = Cluster::start().await;
    let client = common::http();
    let r = client
        .post(format!(
            "{}/apis/events.k8s.io/v1/namespaces/default/events",
            c.api.url()
        ))
        .json(
            &json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "x"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Invalid");
}

#[tokio::test]
async fn kube_watcher_re_lists_after_410_gone_and_sees_what_changed_meanwhile() {
    let c = Cluster::start().await;
    let services: Api<Service> = Api::namespaced(c.api.client().unwrap(), NS);
    let stream = watcher(services, watcher::Config::default()).boxed();
    let mut stream = stream;
    // Initial list: Init, one InitApply, InitDone.
    let mut inits = 0;
    while let Some(e) = stream.next().await {
        if matches!(e.unwrap(), watcher::Event::InitDone) {
            inits += 1;
            break;
        }
    }
    c.api.pause_watches();
    c.cut_over("v2").await;
    c.api.expire_watches();
    let mut saw_410 = false;
    let version = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("the watcher recovers")
        {
            Some(Err(e)) => saw_410 |= format!("{e:?}").contains("410"),
            Some(Ok(watcher::Event::InitApply(svc))) => {
                break svc.spec.unwrap().selector.unwrap()["version"].clone();
            }
            Some(Ok(watcher::Event::Init)) => inits += 1,
            Some(Ok(_)) => {}
            None => panic!("watch stream ended"),
        }
    };
    assert!(saw_410, "the expired watch surfaced as 410");
    assert_eq!(inits, 2, "a second list from scratch");
    assert_eq!(
        version, "v2",
        "the re-list shows the cutover made while the watch was down"
    );
}

/// managedFields as the real server keeps them: kubectl names itself (`kubectl-patch`, its
/// `fieldManager`), the entry holds the selector's version key and a whole-second time, and a
/// later write by another manager (kube-rs, named by its User-Agent) takes only the fields it
/// changed and leaves the first entry's time alone. `kubectl get --show-managed-fields` reads
/// them as it would from a cluster.
#[tokio::test]
async fn managed_fields_name_each_writer_its_fields_and_its_last_write_in_whole_seconds() {
    let c = Cluster::start().await;
    c.cut_over("v2").await;
    let out = c
        .kubectl(&["get", "svc", SVC, "-o", "json", "--show-managed-fields"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = svc["metadata"]["managedFields"].as_array().unwrap().clone();
    let patch = entries
        .iter()
        .find(|e| e["manager"] == "kubectl-patch")
        .unwrap_or_else(|| panic!("{entries:#?}"));
    assert_eq!(patch["operation"], "Update");
    assert_eq!(patch["apiVersion"], "v1");
    assert_eq!(patch["fieldsType"], "FieldsV1");
    assert_eq!(
        patch["fieldsV1"],
        json!({"f:spec": {"f:selector": {"f:version": {}}}})
    );
    let time = patch["time"].as_str().unwrap();
    assert!(
        time.parse::<jiff::Timestamp>().unwrap().subsec_nanosecond() == 0 && time.ends_with('Z'),
        "{time}"
    );
    // Nobody else holds the version key now.
    let holders = entries
        .iter()
        .filter(|e| !e["fieldsV1"]["f:spec"]["f:selector"]["f:version"].is_null())
        .count();
    assert_eq!(holders, 1, "{entries:#?}");

    let api: Api<Service> = Api::namespaced(c.api.client().unwrap(), NS);
    let note = json!({"metadata": {"annotations": {"note": "x"}}});
    api.patch(SVC, &PatchParams::default(), &Patch::Merge(&note))
        .await
        .unwrap();
    let svc = c.service();
    let entries = svc["metadata"]["managedFields"].as_array().unwrap();
    let by_kube = entries
        .iter()
        .find(|e| e["fieldsV1"]["f:metadata"]["f:annotations"]["f:note"].is_object())
        .unwrap_or_else(|| panic!("{entries:#?}"));
    assert_ne!(by_kube["manager"], "kubectl-patch");
    let patch = entries
        .iter()
        .find(|e| e["manager"] == "kubectl-patch")
        .unwrap();
    assert_eq!(patch["time"], time, "another writer leaves its time alone");
}

/// `kubectl patch --dry-run=server` sends `dryRun=All`: the answer shows the change, the stored
/// object keeps its selector and its resourceVersion.
#[tokio::test]
async fn a_server_side_dry_run_answers_the_change_and_stores_nothing() {
    let c = Cluster::start().await;
    let before = c.service();
    let out = c
        .kubectl(&[
            "patch",
            "svc",
            SVC,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"selector":{"version":"v2"}}}"#,
            "--dry-run=server",
            "-o",
            "json",
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answered["spec"]["selector"]["version"], "v2");
    let request = c
        .api
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap();
    assert!(request.query.contains("dryRun=All"), "{}", request.query);
    assert_eq!(c.service(), before, "nothing stored");
}
