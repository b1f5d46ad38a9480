//! Who else applies a guarded Service: Argo CD and Flux leave their marks on what they apply,
//! and a sync of a Service whose selector Git holds puts it back on green after a revert.
//!
//! This only recognises the marks and says, once, the exact setting that stops the fight; the
//! decision core decides what an undone revert means ([`crate::decision`]'s
//! `RollbackOverridden`). It reads labels and annotations only, no cluster.

use k8s_openapi::api::core::v1::Service;

/// A GitOps tool that applies this Service, and how to keep its syncs off the selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applier {
    /// `Argo CD`, `Flux (kustomize-controller)` or `Flux (helm-controller)`.
    pub tool: &'static str,
    /// The mark it was recognised by.
    pub mark: String,
    /// The setting that stops a sync from undoing a revert.
    pub fix: &'static str,
}

const ARGO_FIX: &str = "in the Application, ignoreDifferences on jsonPointers [/spec/selector] \
     with syncOptions [RespectIgnoreDifferences=true], or managedFieldsManagers \
     [cutover-watchdog] (README, GitOps)";
const FLUX_KUSTOMIZE_FIX: &str = "annotate the Service in Git with \
     kustomize.toolkit.fluxcd.io/ssa: IfNotPresent, or exclude its selector from the \
     Kustomization (README, GitOps)";
const FLUX_HELM_FIX: &str = "render the selector from a value the release does not reset, or \
     annotate the Service kustomize.toolkit.fluxcd.io/reconcile: disabled (README, GitOps)";

/// The GitOps tool whose marks `svc` carries, if any.
#[must_use]
pub fn applier(svc: &Service) -> Option<Applier> {
    let labels = svc.metadata.labels.as_ref();
    let annotations = svc.metadata.annotations.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key));
    let annotation = |key: &str| annotations.and_then(|a| a.get(key));
    let found = |tool, key: &str, value: &String, fix| Applier {
        tool,
        mark: format!("{key}={value}"),
        fix,
    };
    if let Some(v) = annotation("argocd.argoproj.io/tracking-id") {
        return Some(found(
            "Argo CD",
            "argocd.argoproj.io/tracking-id",
            v,
            ARGO_FIX,
        ));
    }
    if let Some(v) = label("kustomize.toolkit.fluxcd.io/name") {
        return Some(found(
            "Flux (kustomize-controller)",
            "kustomize.toolkit.fluxcd.io/name",
            v,
            FLUX_KUSTOMIZE_FIX,
        ));
    }
    if let Some(v) = label("helm.toolkit.fluxcd.io/name") {
        return Some(found(
            "Flux (helm-controller)",
            "helm.toolkit.fluxcd.io/name",
            v,
            FLUX_HELM_FIX,
        ));
    }
    // Argo CD's default tracking label; Helm sets it too, so it is named for what it may be.
    label("app.kubernetes.io/instance").map(|v| {
        found(
            "Argo CD (or Helm)",
            "app.kubernetes.io/instance",
            v,
            ARGO_FIX,
        )
    })
}

/// The one-line warning for a Service `applier` syncs.
#[must_use]
pub fn warning(applier: &Applier) -> String {
    format!(
        "{} applies this service ({}): a sync will put the selector back on a version the \
         watchdog rolled back; to stop that, {}",
        applier.tool, applier.mark, applier.fix
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn marked(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Service {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        Service {
            metadata: ObjectMeta {
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn each_tools_mark_names_its_own_fix() {
        let cases = [
            (
                marked(
                    &[],
                    &[(
                        "argocd.argoproj.io/tracking-id",
                        "shop:/Service:default/svc",
                    )],
                ),
                Some(("Argo CD", "RespectIgnoreDifferences=true")),
            ),
            (
                marked(&[("kustomize.toolkit.fluxcd.io/name", "apps")], &[]),
                Some((
                    "Flux (kustomize-controller)",
                    "kustomize.toolkit.fluxcd.io/ssa: IfNotPresent",
                )),
            ),
            (
                marked(&[("helm.toolkit.fluxcd.io/name", "shop")], &[]),
                Some(("Flux (helm-controller)", "reconcile: disabled")),
            ),
            (
                marked(&[("app.kubernetes.io/instance", "shop")], &[]),
                Some(("Argo CD (or Helm)", "managedFieldsManagers")),
            ),
            (marked(&[("app", "shop")], &[]), None),
        ];
        for (svc, want) in cases {
            let got = applier(&svc);
            match (got, want) {
                (Some(a), Some((tool, fix))) => {
                    assert_eq!(a.tool, tool);
                    assert!(warning(&a).contains(fix), "{}", warning(&a));
                }
                (None, None) => {}
                (got, want) => panic!("{got:?} for {want:?}"),
            }
        }
    }
}
