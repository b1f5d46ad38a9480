//! The command line contract: `serve` and `check-config`, `--config` or
//! `CUTOVER_WATCHDOG_CONFIG`, and errors that name the key.

// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn watchdog() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"));
    c.env_remove("CUTOVER_WATCHDOG_CONFIG");
    c
}

fn check_config_file(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    watchdog()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn every_shipped_example_config_is_valid() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = watchdog()
                .arg("check-config")
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn config_path_comes_from_the_environment_too() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/minimal.yaml");
    let out = watchdog()
        .arg("check-config")
        .env("CUTOVER_WATCHDOG_CONFIG", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 1 guard"));
}

#[test]
fn invalid_configs_exit_non_zero_naming_the_key() {
    let valid = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/minimal.yaml"
    ))
    .unwrap();
    let cases = [
        (
            valid.replace("    for: 2m", "    for: 2m\n    fore: 1m"),
            "guards[0].checks[0]",
        ),
        (
            valid.replace("for: 2m", "for: soon"),
            "guards[0].checks[0].for",
        ),
        (
            valid.replace("http://127.0.0.1:9090", "127.0.0.1:9090"),
            "prometheus.url",
        ),
        (
            valid.replace("    above: 0.02\n", ""),
            "exactly one of `above` or `below`",
        ),
        (
            valid.replace("    above: 0.02\n", "    above: 0.02\n    below: 0.01\n"),
            "exactly one of",
        ),
        (
            valid.clone() + "- name: checkout\n  service: other\n",
            "guards[1].name: duplicate guard name",
        ),
    ];
    for (text, expected) in cases {
        let out = check_config_file(&text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{text}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn serve_refuses_an_invalid_config_before_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "guards: []\nprometheus: {url: 'http://x'}\n").unwrap();
    let out = watchdog()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("guards: at least one guard"));
}

#[test]
fn a_missing_config_file_is_named() {
    let out = watchdog()
        .args(["check-config", "--config", "/nonexistent/c.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("failed to read config file /nonexistent/c.yaml")
    );
}

#[test]
fn help_documents_the_config_flag_and_its_environment_variable() {
    let out = watchdog().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("CUTOVER_WATCHDOG_CONFIG"),
        "{help}"
    );
}

/// `check-config --connect` against a Prometheus-compatible server whose buildinfo answers
/// `buildinfo` (404 where the server has no such endpoint): what it printed, after asserting it
/// exited 0.
async fn connect_where_buildinfo_answers(buildinfo: axum::http::StatusCode) -> String {
    let app = axum::Router::new()
        .route(
            "/api/v1/query",
            axum::routing::post(|| async {
                axum::Json(serde_json::json!({"status": "success", "data": {
                    "resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]}}))
            }),
        )
        .route(
            "/api/v1/status/buildinfo",
            axum::routing::get(move || async move { buildinfo }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "prometheus: {{url: '{url}'}}\n\
             templates: [{{name: t, namespaces: ['*'], service_selector: a=b}}]\n"
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover-watchdog"))
        .env_remove("CUTOVER_WATCHDOG_CONFIG")
        .args(["check-config", "--connect", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// Some Prometheus-compatible servers have no `/api/v1/status/buildinfo`.
#[tokio::test]
async fn check_config_connect_says_version_unknown_where_buildinfo_is_404() {
    let said = connect_where_buildinfo_answers(axum::http::StatusCode::NOT_FOUND).await;
    assert!(
        said.contains("ok, vector(1) answered; Prometheus version unknown\n"),
        "{said}"
    );
}

/// A managed Prometheus, or a proxy before it, can refuse buildinfo to a role that may only
/// query: queries work, so the check passes, and says why the version is missing.
#[tokio::test]
async fn check_config_connect_passes_and_says_why_where_buildinfo_is_refused() {
    let said = connect_where_buildinfo_answers(axum::http::StatusCode::FORBIDDEN).await;
    assert!(
        said.contains(
            "ok, vector(1) answered; Prometheus version unknown (buildinfo: HTTP 403 Forbidden)"
        ),
        "{said}"
    );
}
