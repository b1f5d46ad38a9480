//! The Kubernetes adapter for one guarded Service: watch it, read it, count Ready pods, patch it.
//!
//! Deliberately thin: no decisions here. It knows the annotation codec (how a window is written
//! to and read from `cutover-watchdog.io/*`) because that is the Service's own shape. Every call
//! is bounded by the caller; nothing here retries.

use std::collections::BTreeMap;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
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
        let ready = pods.items.iter().filter(|p| is_ready(p)).count();
        Ok(u32::try_from(ready).unwrap_or(u32::MAX))
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

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The annotations that record `state`.
#[must_use]
pub fn annotations(state: &Persisted) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (VERSION, state.version.clone()),
        (PREVIOUS, state.previous.clone()),
        (CUTOVER_AT, state.cutover_at.to_string()),
        (STATE, state.phase.as_str().to_owned()),
        (REASON, state.reason.clone()),
    ])
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
