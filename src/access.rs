//! The start-up self-check: does this identity hold every permission the guards will use?
//!
//! One `SelfSubjectAccessReview` per (verb, resource, name) the watchdog needs, sixteen at a
//! time, all within one `kube_timeout`. A denial fails start-up with a message naming each missing permission and where to grant
//! it, rather than a 403 at the first rollback, hours later. It does not check anything else
//! (that the Services exist, that Prometheus answers), and a review that cannot be made at all
//! (an old or restricted API server, or no answer in time) only warns, naming what went
//! unreviewed: the check must never be why the watchdog does not start.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::error::{Error, Result, chain};

/// Access reviews sent at once.
const REVIEWS_IN_FLIGHT: usize = 16;

/// One permission the watchdog needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    /// Empty: every namespace (a template's `["*"]`).
    pub namespace: String,
    /// Only for rules the Role can limit by name.
    pub name: Option<String>,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let scope = if self.namespace.is_empty() {
            "all namespaces".to_owned()
        } else {
            self.namespace.clone()
        };
        match &self.name {
            Some(name) => write!(f, "{} {resource}/{name} in {scope}", self.verb),
            None => write!(f, "{} {resource} in {scope}", self.verb),
        }
    }
}

/// Every permission `config` needs; the Lease, if any, lives in its configured namespace or
/// the client's.
#[must_use]
pub fn needed(config: &Config, client: &Client) -> BTreeSet<Permission> {
    needed_in(config, lease_namespace(config, client).as_deref())
}

/// The Lease's namespace, with leader election on.
#[must_use]
pub fn lease_namespace(config: &Config, client: &Client) -> Option<String> {
    config.leader_election.as_ref().map(|le| {
        le.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned())
    })
}

/// Every permission `config` needs, with the Lease in `lease_namespace`.
#[must_use]
pub fn needed_in(config: &Config, lease_namespace: Option<&str>) -> BTreeSet<Permission> {
    let p = |verb, group, resource, namespace: &str, name: Option<&str>| Permission {
        verb,
        group,
        resource,
        namespace: namespace.to_owned(),
        name: name.map(str::to_owned),
    };
    let mut needed = BTreeSet::new();
    // Every namespace's Services are listed and watched whole (one shared watch), and a guard's
    // pods and events are its namespace's; a template's Services are not known by name.
    let namespace_wide = |needed: &mut BTreeSet<Permission>, ns: &str, name: Option<&str>| {
        for verb in ["list", "watch"] {
            needed.insert(p(verb, "", "services", ns, None));
        }
        for verb in ["get", "patch"] {
            needed.insert(p(verb, "", "services", ns, name));
        }
        needed.insert(p("list", "", "pods", ns, None));
        for verb in ["create", "patch"] {
            needed.insert(p(verb, "events.k8s.io", "events", ns, None));
        }
    };
    for g in &config.guards {
        namespace_wide(&mut needed, &g.namespace, Some(&g.service));
    }
    for t in &config.templates {
        if t.all_namespaces() {
            namespace_wide(&mut needed, "", None);
        } else {
            for ns in &t.namespaces {
                namespace_wide(&mut needed, ns, None);
            }
        }
    }
    if let (Some(le), Some(ns)) = (&config.leader_election, lease_namespace) {
        for verb in ["get", "update"] {
            needed.insert(p(
                verb,
                "coordination.k8s.io",
                "leases",
                ns,
                Some(&le.lease_name),
            ));
        }
        needed.insert(p("create", "coordination.k8s.io", "leases", ns, None));
    }
    needed
}

/// Asks the API server about each permission, all within `timeout`; fails naming every one
/// that is denied. One that gets no answer in time is logged and does not stop start-up.
pub async fn check(client: &Client, needed: BTreeSet<Permission>, timeout: Duration) -> Result<()> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut unanswered = needed.clone();
    let asks = needed.into_iter().map(|permission| {
        let reviews = reviews.clone();
        async move {
            let answer = reviews
                .create(&PostParams::default(), &review_of(&permission))
                .await;
            (permission, answer)
        }
    });
    // A few at a time: a thousand guards must not open a thousand connections at start-up.
    let mut answers = futures::stream::iter(asks).buffer_unordered(REVIEWS_IN_FLIGHT);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut missing = Vec::new();
    while let Ok(Some((permission, answer))) =
        tokio::time::timeout_at(deadline, answers.next()).await
    {
        match answer {
            Ok(review) if review.status.as_ref().is_some_and(|s| s.allowed) => {
                debug!(%permission, "permission granted");
                unanswered.remove(&permission);
            }
            Ok(_) => {
                missing.push(permission.to_string());
                unanswered.remove(&permission);
            }
            Err(e) => debug!(%permission, error = %chain(&e), "access review failed"),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Forbidden { missing });
    }
    if unanswered.is_empty() {
        info!("every needed Kubernetes permission is granted");
    } else {
        let unreviewed: Vec<String> = unanswered.iter().map(ToString::to_string).collect();
        warn!(
            unreviewed = %unreviewed.join(", "),
            "could not review these permissions (SelfSubjectAccessReview failed or timed out); starting anyway"
        );
    }
    Ok(())
}

fn review_of(permission: &Permission) -> SelfSubjectAccessReview {
    SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(permission.verb.to_owned()),
                group: Some(permission.group.to_owned()),
                resource: Some(permission.resource.to_owned()),
                namespace: Some(permission.namespace.clone()).filter(|ns| !ns.is_empty()),
                name: permission.name.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_needed_permissions_name_each_guarded_service_and_the_lease() {
        let config = Config::from_yaml(
            "prometheus: {url: 'http://127.0.0.1:9090'}\nleader_election: {}\nguards:\n- {name: a, service: svc-a}\n- {name: b, namespace: shop, service: svc-b}\n",
        )
        .unwrap();
        let needed: Vec<String> = needed_in(&config, Some("ops"))
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "patch services/svc-a in default",
            "watch services in shop",
            "patch services/svc-b in shop",
            "list pods in shop",
            "create events.events.k8s.io in default",
            "update leases.coordination.k8s.io/cutover-watchdog in ops",
            "create leases.coordination.k8s.io in ops",
        ] {
            assert!(
                needed.iter().any(|n| n == want),
                "{want} missing from {needed:#?}"
            );
        }
        let without = needed_without_election();
        assert!(without.iter().all(|p| p.resource != "leases"));
    }

    #[test]
    fn a_template_needs_its_namespaces_whole_and_star_means_every_namespace() {
        let config = Config::from_yaml(
            "prometheus: {url: 'http://127.0.0.1:9090'}\ntemplates:\n- {name: a, namespaces: [shop, web]}\n- {name: b, namespaces: ['*']}\n",
        )
        .unwrap();
        let needed: Vec<String> = needed_in(&config, None)
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "patch services in shop",
            "watch services in web",
            "list pods in shop",
            "get services in all namespaces",
            "create events.events.k8s.io in all namespaces",
        ] {
            assert!(
                needed.iter().any(|n| n == want),
                "{want} missing from {needed:#?}"
            );
        }
    }

    fn needed_without_election() -> BTreeSet<Permission> {
        let config = Config::from_yaml(
            "prometheus: {url: 'http://127.0.0.1:9090'}\nguards:\n- {name: a, service: svc-a}\n",
        )
        .unwrap();
        needed_in(&config, None)
    }
}
