//! `cutover-watchdog discover` against the API double: every Service in the config's
//! namespaces, with the guard that covers it or the reason none does.

// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use cutover_watchdog::sandbox::apiserver::{self, ApiServer};
use serde_json::{Value, json};

const CONFIG: &str = r#"
prometheus: {url: "http://127.0.0.1:9"}
guards:
- name: checkout
  service: svc-production
- name: gone
  namespace: shop
  service: svc-gone
templates:
- name: backend
  namespaces: [shop, payments]
  service_selector: tier=backend
  checks:
  - name: errors
    query: 'sum(rate(http_requests_total{app="{{selector.app}}",version="{{version}}",code=~"5.."}[1m]))'
    above: 0.02
"#;

/// A Service with these labels, annotations and selector.
fn service(
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    selector: &[(&str, &str)],
) -> Value {
    let map = |kv: &[(&str, &str)]| -> Value {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut svc = apiserver::service(ns, name, selector);
    svc["metadata"]["labels"] = map(labels);
    svc["metadata"]["annotations"] = map(annotations);
    svc
}

async fn cluster() -> (ApiServer, tempfile::TempDir) {
    let api = ApiServer::start().await.unwrap();
    let backend = [("tier", "backend")];
    let app = [("app", "cart"), ("version", "v1")];
    for svc in [
        service(
            "default",
            "svc-production",
            &[],
            &[],
            &[("app", "shop"), ("version", "v2")],
        ),
        service("shop", "cart", &backend, &[], &app),
        service("shop", "web", &[("tier", "frontend")], &[], &app),
        service("shop", "legacy", &backend, &[], &[("app", "legacy")]),
        service(
            "shop",
            "quiet",
            &backend,
            &[("cutover-watchdog.io/guard", "off")],
            &app,
        ),
        service("payments", "ledger", &backend, &[], &[("version", "v3")]),
        service(
            "payments",
            "picked",
            &[],
            &[("cutover-watchdog.io/template", "nope")],
            &app,
        ),
        // Not in a namespace the config names: never listed.
        service("web", "elsewhere", &backend, &[], &app),
    ] {
        api.apply(svc).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    api.write_kubeconfig(&dir.path().join("kubeconfig"))
        .unwrap();
    (api, dir)
}

fn discover(dir: &Path, config: &str, output: &str) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
        .args(["discover", "--config"])
        .arg(&path)
        .args(["--output", output])
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "discover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn discover_names_the_guard_or_the_reason_for_every_service_in_the_config_namespaces() {
    let (_api, dir) = cluster().await;
    let rows: Value = serde_json::from_str(&discover(dir.path(), CONFIG, "json")).unwrap();
    let got: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!([
                format!(
                    "{}/{}",
                    r["namespace"].as_str().unwrap(),
                    r["service"].as_str().unwrap()
                ),
                r["version"],
                r["source"],
                r["reason"].as_str().or(r["warning"].as_str()),
            ])
        })
        .collect();
    let want = vec![
        json!(["default/svc-production", "v2", "config", null]),
        json!([
            "payments/ledger",
            "v3",
            null,
            "placeholder `{{selector.app}}` missing"
        ]),
        json!(["payments/picked", "v1", null, "unknown template nope"]),
        json!(["shop/cart", "v1", "template:backend", null]),
        json!([
            "shop/legacy",
            null,
            null,
            "no `version` key in the selector"
        ]),
        json!(["shop/quiet", "v1", null, "opted out"]),
        json!(["shop/svc-gone", null, "config", "service not found"]),
        json!(["shop/web", "v1", null, "no template matches"]),
    ];
    assert_eq!(got, want, "{rows:#}");
    let guard = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "cart")
        .unwrap();
    assert_eq!(guard["guard"], "shop/cart");

    let text = discover(dir.path(), CONFIG, "text");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("SERVICE"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("shop/cart") && l.contains("template:backend")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("shop/quiet") && l.ends_with("opted out")),
        "{text}"
    );
    assert_eq!(lines.last(), Some(&"3 of 8 services guarded"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_over_every_namespace_makes_discover_list_them_all() {
    let (_api, dir) = cluster().await;
    let everywhere = CONFIG.replace("namespaces: [shop, payments]", "namespaces: [\"*\"]");
    let rows: Value = serde_json::from_str(&discover(dir.path(), &everywhere, "json")).unwrap();
    let elsewhere = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == "web")
        .unwrap_or_else(|| panic!("web/elsewhere not listed: {rows:#}"));
    assert_eq!(elsewhere["source"], "template:backend", "{rows:#}");
}
