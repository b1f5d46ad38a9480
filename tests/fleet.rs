//! The fleet in-process, against the API double: which guards run as the config and the
//! Services change, in well under a second per test. No watchdog process, no Prometheus;
//! `tests/templates.rs` proves the same on the real binary.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::wait_until;
use cutover_watchdog::config::Config;
use cutover_watchdog::executor::{Executor, Lanes};
use cutover_watchdog::fleet::{Fleet, GuardSet, Parts, Registry};
use cutover_watchdog::guard::Clock;
use cutover_watchdog::leader::Fence;
use cutover_watchdog::metrics::Metrics;
use cutover_watchdog::sandbox::apiserver::{self, ApiServer};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::DeleteParams;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn config(templates: &str, guards: &str) -> Arc<Config> {
    Arc::new(
        Config::from_yaml(&format!(
            "prometheus: {{url: 'http://127.0.0.1:9'}}\nguards: {guards}\ntemplates: {templates}\n"
        ))
        .unwrap(),
    )
}

const BACKEND: &str = "[{name: backend, namespaces: [shop, pay], service_selector: tier=backend, checks: [{name: errors, query: 'x{app=\"{{selector.app}}\"}', above: 1}]}]";

/// A running fleet on the double, its registry, its metrics and the config it follows.
struct Running {
    api: ApiServer,
    guards: Registry,
    metrics: Metrics,
    configs: watch::Sender<Arc<Config>>,
    _stop: tokio_util::sync::DropGuard,
}

async fn start(initial: Arc<Config>) -> Running {
    let api = ApiServer::start().await.unwrap();
    let client = api.client().unwrap();
    let metrics = Metrics::new().unwrap();
    let reporter = Reporter {
        controller: "cutover-watchdog".into(),
        instance: Some("fleet-test".into()),
    };
    let lanes = Lanes::new(Arc::new(Executor::new(
        Recorder::new(client.clone(), reporter),
        metrics.clone(),
        Duration::from_secs(5),
        Fence::open(),
    )));
    let (configs, in_force) = watch::channel(initial);
    let (publish, guards) = watch::channel(Arc::new(GuardSet::starting()));
    let stop = CancellationToken::new();
    let fleet = Fleet::new(
        Parts {
            client,
            metrics: metrics.clone(),
            baselines: lanes.baselines(stop.child_token()),
            lanes,
            wake: Arc::new(Notify::new()),
            clock: Clock::wall(),
        },
        in_force,
        publish,
        stop.child_token(),
        stop.child_token(),
    );
    tokio::spawn(fleet.run());
    Running {
        api,
        guards,
        metrics,
        configs,
        _stop: stop.drop_guard(),
    }
}

fn backend(ns: &str, name: &str, tier: &str) -> Value {
    let mut svc = apiserver::service(ns, name, &[("app", name), ("version", "v1")]);
    svc["metadata"]["labels"] = serde_json::json!({"tier": tier});
    svc
}

impl Running {
    /// The inbox of the running guard `name`: the same channel means the same guard, not
    /// restarted.
    fn inbox_of(
        &self,
        name: &str,
    ) -> tokio::sync::mpsc::Sender<Box<cutover_watchdog::guard::Input>> {
        self.guards.borrow().get(name).unwrap().inbox.clone()
    }

    /// The running guards' names and sources, once every watch has listed.
    fn names(&self) -> Vec<(String, String)> {
        let set = self.guards.borrow().clone();
        if !set.waiting.is_empty() {
            return vec![("waiting".into(), set.waiting.join(", "))];
        }
        set.guards
            .iter()
            .map(|g| {
                let source = g.status.borrow().source.to_string();
                (g.config.name.clone(), source)
            })
            .collect()
    }

    async fn wait_names(&self, want: &[(&str, &str)]) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        wait_until(
            "the running guards",
            WAIT,
            async || self.names(),
            |got| *got == want,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_from_listed_namespaces_to_every_namespace_and_back_keeps_and_ends_the_right_guards()
 {
    let fleet = start(config(BACKEND, "[]")).await;
    fleet.api.apply(backend("shop", "cart", "backend")).unwrap();
    fleet.api.apply(backend("web", "site", "backend")).unwrap();
    fleet.wait_names(&[("shop/cart", "template:backend")]).await;
    let before = fleet.inbox_of("shop/cart");

    let everywhere = BACKEND.replace("[shop, pay]", "['*']");
    fleet.configs.send_replace(config(&everywhere, "[]"));
    fleet
        .wait_names(&[
            ("shop/cart", "template:backend"),
            ("web/site", "template:backend"),
        ])
        .await;
    let after = fleet.inbox_of("shop/cart");
    assert!(
        before.same_channel(&after),
        "the guard of a Service both configs cover kept running"
    );

    fleet.configs.send_replace(config(BACKEND, "[]"));
    fleet.wait_names(&[("shop/cart", "template:backend")]).await;
    // A Service deleted after the switch back still ends its guard.
    let services: Api<Service> = Api::namespaced(fleet.api.client().unwrap(), "shop");
    services
        .delete("cart", &DeleteParams::default())
        .await
        .unwrap();
    fleet.wait_names(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_template_picked_by_annotation_rebinds_the_guard_without_restarting_it() {
    let two = BACKEND.replace("]}]", "]}, {name: other, namespaces: [shop], checks: []}]");
    let fleet = start(config(&two, "[]")).await;
    fleet.api.apply(backend("shop", "cart", "backend")).unwrap();
    fleet.wait_names(&[("shop/cart", "template:backend")]).await;
    let before = fleet.inbox_of("shop/cart");
    let mut svc = backend("shop", "cart", "backend");
    svc["metadata"]["annotations"] = serde_json::json!({"cutover-watchdog.io/template": "other"});
    fleet.api.apply(svc).unwrap();
    fleet.wait_names(&[("shop/cart", "template:other")]).await;
    let set = fleet.guards.borrow().clone();
    let guard = set.get("shop/cart").unwrap();
    assert!(guard.inbox.same_channel(&before), "rebound, not restarted");
    assert!(
        guard.config.checks.is_empty(),
        "the other template's checks"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_a_guard_to_another_service_keeps_its_metric_series() {
    let guard = |svc: &str| {
        format!(
            "[{{name: checkout, namespace: shop, service: {svc}, checks: [{{name: errors, query: up, above: 1}}]}}]"
        )
    };
    let fleet = start(config("[]", &guard("svc-b"))).await;
    fleet.wait_names(&[("checkout", "config")]).await;
    fleet.configs.send_replace(config("[]", &guard("svc-a")));
    wait_until(
        "checkout on svc-a",
        WAIT,
        async || {
            fleet
                .guards
                .borrow()
                .get("checkout")
                .map(|g| g.config.service.clone())
        },
        |s| s.as_deref() == Some("svc-a"),
    )
    .await;
    let text = fleet.metrics.render();
    assert!(
        text.contains(r#"cutover_watchdog_check_threshold{check="errors",guard="checkout"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guard_whose_service_goes_away_has_its_series_deleted() {
    let fleet = start(config(BACKEND, "[]")).await;
    fleet
        .api
        .apply(backend("pay", "ledger", "backend"))
        .unwrap();
    fleet
        .wait_names(&[("pay/ledger", "template:backend")])
        .await;
    let series = r#"cutover_watchdog_window_active{guard="pay/ledger"}"#;
    assert!(fleet.metrics.render().contains(series));
    fleet
        .api
        .apply(backend("pay", "ledger", "frontend"))
        .unwrap();
    fleet.wait_names(&[]).await;
    let text = fleet.metrics.render();
    assert!(!text.contains("pay/ledger"), "{text}");
    assert!(
        text.contains(r#"cutover_watchdog_guards{source="template"} 0"#),
        "{text}"
    );
}
