//! The Kubernetes adapter for one guarded Service: watch it, read it, count Ready pods, patch it.
//!
//! Deliberately thin: no decisions here. It knows the annotation codec (how a window is written
//! to and read from `cutover-watchdog.io/*`) because that is the Service's own shape. Every call
//! is bounded by the caller; nothing here retries.

use std::collections::BTreeMap;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

use crate::config::GuardConfig;
use crate::decision::{Persisted, Phase};
use crate::error::{Error, Result};

/// The annotation prefix; every key the watchdog writes lives under it.
pub const ANNOTATION_PREFIX: &str = "cutover-watchdog.io/";
const PREVIOUS: &str = "cutover-watchdog.io/previous-version";
const CUTOVER_AT: &str = "cutover-watchdog.io/cutover-at";
const STATE: &str = "cutover-watchdog.io/state";
const REASON: &str = "cutover-watchdog.io/reason";
const VERSION: &str = "cutover-watchdog.io/version";
const BASELINE: &str = "cutover-watchdog.io/baseline-version";

/// One guarded Service and the pods behind it.
#[derive(Clone)]
pub struct ServiceHandle {
    services: Api<Service>,
    pods: Api<Pod>,
    pub namespace: String,
    pub name: String,
    pub version_label: String,
}

/// A failed patch: a stale `resourceVersion` is told apart, as it is retried.
#[derive(Debug)]
pub enum PatchError {
    Conflict,
    Other(Error),
}

impl ServiceHandle {
    #[must_use]
    pub fn new(client: &Client, guard: &GuardConfig) -> Self {
        Self {
            services: Api::namespaced(client.clone(), &guard.namespace),
            pods: Api::namespaced(client.clone(), &guard.namespace),
            namespace: guard.namespace.clone(),
            name: guard.service.clone(),
            version_label: guard.version_label.clone(),
        }
    }

    /// A list+watch of just this Service, re-listing on 410 and reopening closed watches.
    pub fn watch(
        &self,
    ) -> impl Stream<Item = Result<watcher::Event<Service>, watcher::Error>> + use<> {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        watcher(self.services.clone(), config)
    }

    fn error(&self, verb: &'static str, what: &'static str, source: kube::Error) -> Error {
        Error::Kube {
            verb,
            what,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    pub async fn get(&self) -> Result<Service> {
        self.services
            .get(&self.name)
            .await
            .map_err(|e| self.error("get", "service", e))
    }

    /// Ready pods that match `selector` with the version key set to `version`.
    pub async fn ready_pods(
        &self,
        selector: &BTreeMap<String, String>,
        version: &str,
    ) -> Result<u32> {
        let pods = self.pods(selector, version).await?;
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        Ok(u32::try_from(ready).unwrap_or(u32::MAX))
    }

    /// The pods that match `selector` with the version key set to `version`.
    pub async fn pods(
        &self,
        selector: &BTreeMap<String, String>,
        version: &str,
    ) -> Result<Vec<Pod>> {
        let mut selector = selector.clone();
        selector.insert(self.version_label.clone(), version.to_owned());
        let labels = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods = self
            .pods
            .list(&ListParams::default().labels(&labels))
            .await
            .map_err(|e| self.error("list pods for", "service", e))?;
        Ok(pods.items)
    }

    /// A server-side dry run (`dryRun=All`) of the selector patch `cutover` sends: RBAC,
    /// admission and the precondition checked, nothing changed. `Err` holds the server's answer.
    pub async fn dry_run_selector(
        &self,
        resource_version: Option<&str>,
        target: &str,
    ) -> std::result::Result<(), String> {
        let patch = json!({
            "metadata": { "resourceVersion": resource_version },
            "spec": { "selector": { &self.version_label: target } },
        });
        let params = PatchParams {
            dry_run: true,
            field_manager: Some(crate::preflight::CLI_MANAGER.into()),
            ..PatchParams::default()
        };
        match self
            .services
            .patch(&self.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) => Err(format!("{} {}", status.code, status.message)),
            Err(e) => Err(crate::error::chain(&e)),
        }
    }

    /// Sets only `spec.selector[version_label] = target`, with the window's annotations, as a
    /// JSON merge patch preconditioned on `resource_version`.
    pub async fn patch_selector(
        &self,
        resource_version: &str,
        target: &str,
        state: &Persisted,
    ) -> std::result::Result<Service, PatchError> {
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": annotations(state),
            },
            "spec": { "selector": { &self.version_label: target } },
        });
        match self
            .services
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(svc) => Ok(svc),
            Err(kube::Error::Api(status)) if status.is_conflict() => Err(PatchError::Conflict),
            Err(e) => Err(PatchError::Other(self.error("patch", "service", e))),
        }
    }

    /// Writes the window's annotations; the selector is untouched.
    pub async fn annotate(&self, state: &Persisted) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": annotations(state) } });
        self.services
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| self.error("annotate", "service", e))
    }

    /// Records `version` as the Service's serving version, if the Service is still at
    /// `resource_version` (a 409 otherwise: something wrote since, and the next sight decides).
    pub async fn annotate_baseline(
        &self,
        resource_version: Option<&str>,
        version: &str,
    ) -> std::result::Result<(), PatchError> {
        let patch = json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": { BASELINE: version },
            },
        });
        match self
            .services
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_conflict() => Err(PatchError::Conflict),
            Err(e) => Err(PatchError::Other(self.error(
                "record the baseline of",
                "service",
                e,
            ))),
        }
    }

    /// The selector's version, if the selector has the version key.
    #[must_use]
    pub fn version_of(&self, svc: &Service) -> Option<String> {
        selector(svc).get(&self.version_label).cloned()
    }
}

/// The Service's selector (empty when it has none).
#[must_use]
pub fn selector(svc: &Service) -> BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// Whether the Pod's `Ready` condition is true.
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The annotations that record `state`; a window that has ended also sets the baseline to
/// the version serving after it.
#[must_use]
pub fn annotations(state: &Persisted) -> BTreeMap<&'static str, String> {
    let mut annotations = BTreeMap::from([
        (VERSION, state.version.clone()),
        (PREVIOUS, state.previous.clone()),
        (CUTOVER_AT, state.cutover_at.to_string()),
        (STATE, state.phase.as_str().to_owned()),
        (REASON, state.reason.clone()),
    ]);
    if let Some(serving) = state.phase.serving(&state.version, &state.previous) {
        annotations.insert(BASELINE, serving.to_owned());
    }
    annotations
}

/// The version recorded as serving while no window was (`baseline-version`).
#[must_use]
pub fn baseline(svc: &Service) -> Option<String> {
    svc.metadata.annotations.as_ref()?.get(BASELINE).cloned()
}

/// When the API server recorded `spec.selector[label]` as it now is: the latest `managedFields`
/// entry whose fields hold it. Its time is when that manager last wrote, in whole seconds, so it
/// is the change's time or later, never earlier. It reads the Service as the fleet keeps it
/// ([`selector_fields`]).
#[must_use]
pub fn selector_changed_at(svc: &Service, label: &str) -> Option<Timestamp> {
    selector_writer(svc, label)?.time.as_ref().map(|t| t.0)
}

/// Who last set `spec.selector[label]`: the field manager of that entry.
#[must_use]
pub fn selector_changed_by(svc: &Service, label: &str) -> Option<String> {
    selector_writer(svc, label)?.manager.clone()
}

fn selector_writer<'a>(svc: &'a Service, label: &str) -> Option<&'a ManagedFieldsEntry> {
    svc.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.as_str())
                .is_some_and(|keys| keys.split(',').any(|k| k == label))
        })
        .max_by_key(|entry| entry.time.as_ref().map(|t| t.0))
}

/// Keeps of `entries` only what [`selector_changed_at`] and [`selector_changed_by`] read: who
/// wrote the selector, when it last wrote, and which of its keys it holds, as `"app,version"` in place of its `fieldsV1`
/// tree. A Service is kept for as long as it exists, and the tree costs a few KiB of maps.
#[must_use]
pub fn selector_fields(entries: Vec<ManagedFieldsEntry>) -> Option<Vec<ManagedFieldsEntry>> {
    let kept: Vec<ManagedFieldsEntry> = entries
        .into_iter()
        .filter_map(|entry| {
            let selector = entry
                .fields_v1
                .as_ref()?
                .0
                .get("f:spec")?
                .get("f:selector")?
                .as_object()?;
            let keys: Vec<&str> = selector
                .keys()
                .filter_map(|k| k.strip_prefix("f:"))
                .collect();
            Some(ManagedFieldsEntry {
                fields_v1: Some(FieldsV1(serde_json::Value::String(keys.join(",")))),
                manager: entry.manager,
                time: entry.time,
                ..ManagedFieldsEntry::default()
            })
        })
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// The window recorded on `svc`, if its annotations hold a complete, readable one. A partial or
/// hand-edited record is treated as none, so it can never cause a rollback on its own.
#[must_use]
pub fn persisted(svc: &Service) -> Option<Persisted> {
    let a = svc.metadata.annotations.as_ref()?;
    Some(Persisted {
        version: a.get(VERSION)?.clone(),
        previous: a.get(PREVIOUS)?.clone(),
        cutover_at: a.get(CUTOVER_AT)?.parse::<Timestamp>().ok()?,
        phase: Phase::parse(a.get(STATE)?)?,
        reason: a.get(REASON).cloned().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    #[test]
    fn annotations_round_trip_and_cutover_at_is_rfc3339_utc() {
        let state = Persisted {
            version: "v2".into(),
            previous: "v1".into(),
            cutover_at: "2026-11-26T20:00:00Z".parse().unwrap(),
            phase: Phase::RolledBack,
            reason: "check error_rate".into(),
        };
        let a = annotations(&state);
        assert_eq!(a[CUTOVER_AT], "2026-11-26T20:00:00Z");
        assert_eq!(a[STATE], "rolled-back");
        let svc = Service {
            metadata: ObjectMeta {
                annotations: Some(a.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        assert_eq!(persisted(&svc), Some(state));
    }

    #[test]
    fn an_ended_window_records_the_serving_version_as_the_baseline_and_an_open_one_does_not() {
        let state = |phase| Persisted {
            version: "v2".into(),
            previous: "v1".into(),
            cutover_at: "2026-11-26T20:00:00Z".parse().unwrap(),
            phase,
            reason: String::new(),
        };
        for (phase, baseline) in [
            (Phase::Watching, None),
            (Phase::Stable, Some("v2")),
            (Phase::Expired, Some("v2")),
            (Phase::Missed, Some("v2")),
            (Phase::RolledBack, Some("v1")),
            (Phase::Superseded, Some("v1")),
        ] {
            let a = annotations(&state(phase));
            assert_eq!(a.get(BASELINE).map(String::as_str), baseline, "{phase:?}");
        }
    }

    #[test]
    fn the_selector_changed_when_the_latest_manager_holding_its_version_key_wrote() {
        let entry = |manager: &str, time: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                time.parse().unwrap(),
            )),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        };
        let entries = vec![
            entry(
                "kubectl-client-side-apply",
                "2026-11-30T08:00:00Z",
                json!({"f:spec": {"f:selector": {"f:app": {}}, "f:ports": {}}}),
            ),
            entry(
                "kubectl-patch",
                "2026-11-30T09:00:00Z",
                json!({"f:spec": {"f:selector": {"f:version": {}}}}),
            ),
            // Writes annotations later, never the selector.
            entry(
                "cutover-watchdog",
                "2026-11-30T10:00:00Z",
                json!({"f:metadata": {"f:annotations": {"f:x": {}}}}),
            ),
        ];
        let svc = Service {
            metadata: ObjectMeta {
                managed_fields: selector_fields(entries),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        let kept = svc.metadata.managed_fields.as_ref().unwrap();
        assert_eq!(
            kept.len(),
            2,
            "only the entries that touch the selector are kept"
        );
        assert_eq!(
            selector_changed_at(&svc, "version"),
            Some("2026-11-30T09:00:00Z".parse().unwrap())
        );
        assert_eq!(
            selector_changed_at(&svc, "app"),
            Some("2026-11-30T08:00:00Z".parse().unwrap())
        );
        assert_eq!(selector_changed_at(&svc, "track"), None);
        assert_eq!(
            selector_changed_by(&svc, "version").as_deref(),
            Some("kubectl-patch")
        );
    }

    #[test]
    fn a_partial_record_is_no_record() {
        let svc = Service {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(STATE.to_owned(), "watching".to_owned())])),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        assert_eq!(persisted(&svc), None);
    }
}
