//! Which guard covers a Service: its `guards[]` entry, a template, or none, and why none.
//!
//! Pure: the config and a Service in, the answer out, so the fleet (which starts and stops the
//! guards) and `discover` (which shows them) cannot disagree. It does not watch anything, and
//! it does not decide what a guard does with its Service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use serde::Serialize;

use crate::config::{Config, GuardConfig, TemplateConfig};
use crate::promql::{Placeholder, ServiceVars};

/// Set to `"off"` by an app team, it opts a Service out of template guarding.
pub const GUARD_ANNOTATION: &str = "cutover-watchdog.io/guard";
/// Set to a template's name by an app team, it picks that template for the Service, whatever
/// the template's `service_selector` says (its `namespaces` still apply).
pub const TEMPLATE_ANNOTATION: &str = "cutover-watchdog.io/template";

/// Where a guard comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `guards[]` entry.
    Config,
    /// The template of that name.
    Template(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config => f.write_str("config"),
            Self::Template(name) => write!(f, "template:{name}"),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What covers one Service.
#[derive(Debug, Clone, PartialEq)]
pub enum Coverage {
    /// A guard, bound to the Service.
    Guarded {
        guard: Box<GuardConfig>,
        source: Source,
        /// Something the operator should know: an explicit guard on a Service that opted out,
        /// or one whose placeholder the Service lacks.
        warning: Option<String>,
    },
    /// No guard, and why not, in words for `discover` and the logs.
    Unguarded { reason: String },
}

/// The guard name a template gives a Service: never a valid `guards[]` name, which cannot hold
/// a `/`, so the two kinds never collide.
#[must_use]
pub fn template_guard_name(namespace: &str, service: &str) -> String {
    format!("{namespace}/{service}")
}

/// What the Service `svc` gives placeholders.
#[must_use]
pub fn vars(svc: &Service) -> ServiceVars<'_> {
    ServiceVars {
        namespace: svc.metadata.namespace.as_deref().unwrap_or_default(),
        service: svc.metadata.name.as_deref().unwrap_or_default(),
        selector: Some(selector_of(svc)),
        labels: Some(labels_of(svc)),
    }
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

fn selector_of(svc: &Service) -> &BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .unwrap_or(&EMPTY)
}

fn labels_of(svc: &Service) -> &BTreeMap<String, String> {
    svc.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

fn annotation<'a>(svc: &'a Service, key: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The explicit guard `g` bound to its Service, or to what its name gives before the Service is
/// seen (`None`): the placeholder it could not fill, if any.
#[must_use]
pub fn bind_explicit(g: &GuardConfig, svc: Option<&Service>) -> (GuardConfig, Option<Placeholder>) {
    let vars = svc.map_or(
        ServiceVars {
            namespace: &g.namespace,
            service: &g.service,
            selector: None,
            labels: None,
        },
        vars,
    );
    g.bind(&vars)
}

/// What covers `svc` under `config`.
#[must_use]
pub fn cover(config: &Config, svc: &Service) -> Coverage {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let opted_out = annotation(svc, GUARD_ANNOTATION) == Some("off");
    if let Some(g) = config
        .guards
        .iter()
        .find(|g| g.namespace == namespace && g.service == name)
    {
        let (guard, missing) = bind_explicit(g, Some(svc));
        let warning = match missing {
            Some(p) => Some(format!(
                "placeholder `{p}` missing: the service has no such key; those checks cannot run"
            )),
            None if opted_out => Some(format!(
                "the service is annotated {GUARD_ANNOTATION}: \"off\", but guards[] names it; guarding it as configured"
            )),
            None => None,
        };
        return Coverage::Guarded {
            guard: Box::new(guard),
            source: Source::Config,
            warning,
        };
    }
    if opted_out {
        return unguarded("opted out".into());
    }
    let template = match template_for(config, svc, namespace) {
        Ok(t) => t,
        Err(reason) => return unguarded(reason),
    };
    let spec = &template.guard;
    if !selector_of(svc).contains_key(&spec.version_label) {
        return unguarded(format!("no `{}` key in the selector", spec.version_label));
    }
    let (mut guard, missing) = spec.bind(&vars(svc));
    if let Some(p) = missing {
        return unguarded(format!("placeholder `{p}` missing"));
    }
    guard.name = template_guard_name(namespace, name);
    namespace.clone_into(&mut guard.namespace);
    name.clone_into(&mut guard.service);
    Coverage::Guarded {
        guard: Box::new(guard),
        source: Source::Template(template.name.clone()),
        warning: None,
    }
}

fn unguarded(reason: String) -> Coverage {
    Coverage::Unguarded { reason }
}

/// The template that applies to `svc`: the one its annotation names, else the first, in file
/// order, that covers its namespace and whose selector matches its labels.
fn template_for<'a>(
    config: &'a Config,
    svc: &Service,
    namespace: &str,
) -> Result<&'a TemplateConfig, String> {
    if let Some(wanted) = annotation(svc, TEMPLATE_ANNOTATION) {
        let Some(t) = config.templates.iter().find(|t| t.name == wanted) else {
            return Err(format!("unknown template {wanted}"));
        };
        if !t.covers(namespace) {
            return Err(format!(
                "template {wanted} does not cover namespace {namespace}"
            ));
        }
        return Ok(t);
    }
    let mut looked = false;
    for t in config.templates.iter().filter(|t| t.covers(namespace)) {
        looked = true;
        if t.service_selector.matches(labels_of(svc)) {
            return Ok(t);
        }
    }
    if looked {
        Err("no template matches".into())
    } else {
        Err(format!("no template covers namespace {namespace}"))
    }
}

/// The version `svc` serves, under the version key of whatever covers it (`version` else).
#[must_use]
pub fn serving_version<'a>(
    svc: &'a Service,
    coverage: &Coverage,
    config: &Config,
) -> Option<&'a str> {
    let label = match coverage {
        Coverage::Guarded { guard, .. } => guard.version_label.as_str(),
        Coverage::Unguarded { .. } => {
            let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
            config
                .templates
                .iter()
                .find(|t| t.covers(namespace))
                .map_or("version", |t| t.guard.version_label.as_str())
        }
    };
    selector_of(svc).get(label).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    const CONFIG: &str = r#"
prometheus: {url: "http://127.0.0.1:9090"}
guards:
- name: checkout
  namespace: shop
  service: svc-production
templates:
- name: backend
  namespaces: [shop, payments]
  service_selector: tier=backend
  checks:
  - name: errors
    query: 'sum(rate(x{service="{{service}}",app="{{selector.app}}",version="{{version}}"}[1m]))'
    above: 0.02
  alerts:
    match: {service: "{{service}}"}
- name: everything
  namespaces: [payments]
  version_label: track
"#;

    fn config() -> Config {
        Config::from_yaml(CONFIG).unwrap()
    }

    fn service(
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        selector: &[(&str, &str)],
    ) -> Service {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        Service {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                labels: Some(map(labels)),
                annotations: Some(map(annotations)),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                selector: Some(map(selector)),
                ..Default::default()
            }),
            ..Service::default()
        }
    }

    fn reason(c: &Coverage) -> &str {
        match c {
            Coverage::Unguarded { reason } => reason,
            Coverage::Guarded { source, .. } => panic!("guarded by {source}"),
        }
    }

    const BACKEND: &[(&str, &str)] = &[("tier", "backend")];
    const SELECTOR: &[(&str, &str)] = &[("app", "cart"), ("version", "v1")];

    #[test]
    fn a_matching_service_is_guarded_by_the_template_with_its_placeholders_filled() {
        let svc = service("shop", "cart", BACKEND, &[], SELECTOR);
        let Coverage::Guarded { guard, source, .. } = cover(&config(), &svc) else {
            panic!("unguarded")
        };
        assert_eq!(source.to_string(), "template:backend");
        assert_eq!(guard.name, "shop/cart");
        assert_eq!(
            (guard.namespace.as_str(), guard.service.as_str()),
            ("shop", "cart")
        );
        let crate::config::Probe::Query(query) = &guard.checks[0].probe else {
            panic!("a query check");
        };
        let query = query.render("v2", "v1").unwrap();
        assert_eq!(
            query,
            r#"sum(rate(x{service="cart",app="cart",version="v2"}[1m]))"#
        );
        let alerts = guard.alerts.unwrap();
        let labels = BTreeMap::from([("service".to_owned(), "cart".to_owned())]);
        assert!(alerts.matches(&labels));
    }

    #[test]
    fn each_reason_a_service_goes_unguarded_is_named() {
        let c = config();
        let table: &[(Service, &str)] = &[
            (
                service("shop", "cart", &[("tier", "frontend")], &[], SELECTOR),
                "no template matches",
            ),
            (
                service("web", "cart", BACKEND, &[], SELECTOR),
                "no template covers namespace web",
            ),
            (
                service(
                    "shop",
                    "cart",
                    BACKEND,
                    &[(GUARD_ANNOTATION, "off")],
                    SELECTOR,
                ),
                "opted out",
            ),
            (
                service("shop", "cart", BACKEND, &[], &[("app", "cart")]),
                "no `version` key in the selector",
            ),
            (
                service("shop", "cart", BACKEND, &[], &[("version", "v1")]),
                "placeholder `{{selector.app}}` missing",
            ),
            (
                service(
                    "shop",
                    "cart",
                    BACKEND,
                    &[(TEMPLATE_ANNOTATION, "nope")],
                    SELECTOR,
                ),
                "unknown template nope",
            ),
            (
                service(
                    "shop",
                    "cart",
                    &[],
                    &[(TEMPLATE_ANNOTATION, "everything")],
                    SELECTOR,
                ),
                "template everything does not cover namespace shop",
            ),
        ];
        for (svc, want) in table {
            assert_eq!(reason(&cover(&c, svc)), *want, "{:?}", svc.metadata);
        }
    }

    #[test]
    fn the_template_annotation_bypasses_the_selector_but_not_the_namespaces() {
        let svc = service(
            "payments",
            "ledger",
            &[],
            &[(TEMPLATE_ANNOTATION, "everything")],
            &[("track", "blue")],
        );
        let Coverage::Guarded { source, guard, .. } = cover(&config(), &svc) else {
            panic!("unguarded")
        };
        assert_eq!(source, Source::Template("everything".into()));
        assert_eq!(guard.version_label, "track");
    }

    #[test]
    fn the_first_matching_template_in_file_order_wins() {
        // Both templates cover payments; `backend` comes first and matches.
        let svc = service(
            "payments",
            "cart",
            BACKEND,
            &[],
            &[("app", "a"), ("version", "v1"), ("track", "x")],
        );
        let Coverage::Guarded { source, .. } = cover(&config(), &svc) else {
            panic!("unguarded")
        };
        assert_eq!(source, Source::Template("backend".into()));
    }

    #[test]
    fn an_explicit_guard_wins_and_stays_when_its_service_opts_out_with_a_warning() {
        let svc = service(
            "shop",
            "svc-production",
            BACKEND,
            &[(GUARD_ANNOTATION, "off")],
            SELECTOR,
        );
        let Coverage::Guarded {
            source,
            guard,
            warning,
        } = cover(&config(), &svc)
        else {
            panic!("unguarded")
        };
        assert_eq!((source, guard.name.as_str()), (Source::Config, "checkout"));
        assert!(warning.unwrap().contains("\"off\""));
    }
}
