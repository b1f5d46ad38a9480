//! What the container image promises, tested here without a container engine: the binary serves
//! as a non-root uid, with its config mounted read-only and a read-only working directory.
//!
//! `.ci/test` points `CUTOVER_WATCHDOG_BIN` at the release build, the binary the image ships;
//! otherwise the test uses the debug build.

// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::{Cluster, Setup};
use cutover_watchdog::sandbox::free_port;

/// The image's user.
const NONROOT: &str = "65532";

fn read_only(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn the_binary_serves_as_a_non_root_uid_from_a_read_only_config_and_working_directory() {
    let cluster = Cluster::start().await;
    let binary = std::env::var("CUTOVER_WATCHDOG_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cutover-watchdog").to_owned());

    // /etc/cutover-watchdog/config as the kubelet mounts a ConfigMap: read-only files, read-only dir.
    let root = tempfile::tempdir().unwrap();
    read_only(root.path(), 0o755);
    let config_dir = root.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    let (main, admin) = (free_port().unwrap(), free_port().unwrap());
    std::fs::write(
        config_dir.join("config.yaml"),
        Setup::default().yaml(main, admin),
    )
    .unwrap();
    let kubeconfig = config_dir.join("kubeconfig");
    cluster.api.write_kubeconfig(&kubeconfig).unwrap();
    for f in ["config.yaml", "kubeconfig"] {
        read_only(&config_dir.join(f), 0o444);
    }
    read_only(&config_dir, 0o555);

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("stderr.log");
    let as_root = nix_uid() == 0;
    let mut command = if as_root {
        let mut c = tokio::process::Command::new("setpriv");
        c.args([
            "--reuid",
            NONROOT,
            "--regid",
            NONROOT,
            "--clear-groups",
            "--",
        ])
        .arg(&binary);
        c
    } else {
        tokio::process::Command::new(&binary) // already a non-root uid
    };
    let mut child = command
        .arg("serve")
        .current_dir(&config_dir)
        .env_clear()
        .env("CUTOVER_WATCHDOG_CONFIG", config_dir.join("config.yaml"))
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let ready = format!("http://127.0.0.1:{admin}/readyz");
    // Ready, or exited: either ends the wait, and an exit fails the test with its log.
    let state = async || {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status.to_string());
        }
        let answer = common::http_get(&ready).await;
        Ok(answer.is_ok_and(|r| r.status().is_success()))
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let what = format!("{binary} to be ready");
    let state = common::wait_with(
        &what,
        Duration::from_secs(15),
        state,
        |s| s != &Ok(false),
        log_text,
    )
    .await;
    assert_eq!(state, Ok(true), "{binary} exited:\n{}", log_text());
    let uid = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
    let uid_line = uid
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_owned();
    assert!(
        !uid_line.split_whitespace().nth(1).unwrap().eq("0"),
        "runs as non-root: {uid_line}"
    );
    if as_root {
        assert!(uid_line.contains(NONROOT), "{uid_line}");
    }
    let guards: serde_json::Value = common::http_get(format!("http://127.0.0.1:{main}/v1/guards"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(guards[0]["selector_version"], "v1");

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

/// The current uid, from /proc, without a libc dependency.
fn nix_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The binary the image ships: the release build `.ci/test` names in `CUTOVER_WATCHDOG_BIN`.
/// The debug build the tests get from cargo carries the sandbox, so it cannot stand in for it.
fn shipped_binary() -> std::path::PathBuf {
    let binary = std::env::var("CUTOVER_WATCHDOG_BIN").unwrap_or_else(|_| {
        panic!(
            "CUTOVER_WATCHDOG_BIN must name the image's build (`cargo build --release`, no \
             features): run the suite through .ci/test, which sets it"
        )
    });
    binary.into()
}

/// Strings only sandbox code holds: the API double's fault answers and the demo's narration.
const SANDBOX_MARKERS: [&str; 2] = ["injected fault: ", "sandbox cluster: "];

#[test]
fn the_image_build_has_no_sandbox_in_its_dependency_tree_or_its_binary() {
    // The image's build: normal dependencies, default features, as the Dockerfile builds it.
    let tree = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8_lossy(&tree.stdout);
    for sandbox_only in ["indicatif ", "tempfile "] {
        assert!(
            !tree.contains(sandbox_only),
            "{sandbox_only}in the image's tree:\n{tree}"
        );
    }
    let shipped = std::fs::read(shipped_binary()).unwrap();
    let with_sandbox = std::fs::read(env!("CARGO_BIN_EXE_cutover-watchdog")).unwrap();
    let holds =
        |binary: &[u8], marker: &str| binary.windows(marker.len()).any(|w| w == marker.as_bytes());
    for marker in SANDBOX_MARKERS {
        assert!(
            holds(&with_sandbox, marker),
            "the marker {marker:?} is sandbox code"
        );
        assert!(
            !holds(&shipped, marker),
            "the shipped binary holds {marker:?}"
        );
    }
}

#[test]
fn the_shipped_binary_answers_demo_in_one_line_saying_how_to_run_it() {
    let out = std::process::Command::new(shipped_binary())
        .args(["demo", "--scenario", "error-rate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not built into this binary")
            && stderr.contains("cargo run --release --features sandbox -- demo"),
        "{stderr}"
    );
    let help = std::process::Command::new(shipped_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains("demo"),
        "unlisted"
    );
}
