//! Memory at scale: the release watchdog's resident memory, idle, guarding N Services through one
//! shared watch.
//!
//! For each N, the API double (in this process, so not counted) holds N Services in namespace
//! `bench`, each labelled `tier=backend` with a `version` key in its selector, and the watchdog
//! binary runs against it as its own process with one template (`service_selector: tier=backend`,
//! the runbook's error-rate check) that guards them all. The bench waits, bounded and printing
//! progress, until `cutover_watchdog_guards{source="template"}` is N and `/readyz` answers 200,
//! lets the watchdog idle, then reads `VmRSS` and `VmHWM` from `/proc/PID/status` (and the CPU it
//! used while idle from `/proc/PID/stat`). Each N is measured `--runs` times, each with a fresh
//! watchdog; the table shows medians, and the per-guard cost is the slope between the smallest
//! and the largest N.
//!
//! `--explicit N` adds the same Services guarded by `guards[]` instead: N entries, one per
//! Service, with the same check, for comparison with the one-watch-per-guard figures of earlier
//! builds. Without the `guards` gauge (builds before templates) it waits for N guards'
//! `cutover_watchdog_window_active` series instead.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example bench_rss -- [--runs 3] [--idle 5] [--explicit 1000] [N ...]
//! ```
//!
//! N defaults to 10 1000 5000. `CUTOVER_WATCHDOG_BIN` names another binary (default
//! `target/release/cutover-watchdog`), e.g. an older build for a side-by-side.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use cutover_watchdog::sandbox::apiserver::{self, ApiServer};
use cutover_watchdog::sandbox::free_port;
use serde_json::json;

const NAMESPACE: &str = "bench";
/// Bound on the wait for every guard to run and `/readyz` to answer 200.
const READY_WITHIN: Duration = Duration::from_mins(3);
const QUERY: &str = "sum(rate(http_requests_total{service=\"{{service}}\",version=\"{{version}}\",code=~\"5..\"}[1m]))";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One `templates[]` entry guarding every Service.
    Template,
    /// One `guards[]` entry per Service.
    Explicit,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Template => "template",
            Self::Explicit => "config",
        }
    }
}

struct Args {
    runs: usize,
    idle: Duration,
    sizes: Vec<usize>,
    explicit: Vec<usize>,
    binary: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: 3,
        idle: Duration::from_secs(5),
        sizes: Vec::new(),
        explicit: Vec::new(),
        binary: std::env::var_os("CUTOVER_WATCHDOG_BIN").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/cutover-watchdog"),
            PathBuf::from,
        ),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => a.runs = value("--runs")?.parse()?,
            "--idle" => a.idle = Duration::from_secs(value("--idle")?.parse()?),
            "--explicit" => a.explicit.push(value("--explicit")?.parse()?),
            "-h" | "--help" => bail!(
                "usage: bench_rss [--runs R] [--idle SECONDS] [--explicit N]... [N ...] \
                 (default N: 10 1000 5000)"
            ),
            n => a
                .sizes
                .push(n.parse().with_context(|| format!("not a size: {n}"))?),
        }
    }
    if a.sizes.is_empty() && a.explicit.is_empty() {
        a.sizes = vec![10, 1000, 5000];
    }
    ensure!(a.runs > 0, "--runs must be at least 1");
    ensure!(
        a.binary.exists(),
        "{} not found: run `cargo build --release` first, or set CUTOVER_WATCHDOG_BIN",
        a.binary.display()
    );
    Ok(a)
}

/// The double with `n` Services a template with `tier=backend` matches.
async fn populate(n: usize) -> anyhow::Result<ApiServer> {
    let api = ApiServer::start().await?;
    for i in 0..n {
        let app = format!("app-{i}");
        let mut svc = apiserver::service(
            NAMESPACE,
            &format!("svc-{i}"),
            &[("app", &app), ("version", "v1")],
        );
        svc["metadata"]["labels"] = json!({"app": app, "tier": "backend"});
        api.apply(svc)?;
    }
    Ok(api)
}

fn config(mode: Mode, n: usize, main: u16, admin: u16) -> String {
    let mut yaml = format!(
        "listen: 127.0.0.1:{main}\nadmin_listen: 127.0.0.1:{admin}\npoll_interval: 15s\n\
         prometheus: {{url: \"http://127.0.0.1:9\"}}\n"
    );
    match mode {
        Mode::Template => {
            let _ = write!(
                yaml,
                "templates:\n- name: backend\n  namespaces: [{NAMESPACE}]\n  \
                 service_selector: tier=backend\n  checks:\n  - name: error_rate\n    \
                 query: '{QUERY}'\n    above: 0.02\n    for: 2m\n"
            );
        }
        Mode::Explicit => {
            // The service written out rather than `{{service}}`, so builds without templates
            // read the same file.
            yaml.push_str("guards:\n");
            for i in 0..n {
                let query = QUERY.replace("{{service}}", &format!("svc-{i}"));
                let _ = write!(
                    yaml,
                    "- name: g{i}\n  namespace: {NAMESPACE}\n  service: svc-{i}\n  checks:\n  \
                     - {{name: error_rate, query: '{query}', above: 0.02, for: 2m}}\n"
                );
            }
        }
    }
    yaml
}

/// `key` (`VmRSS`, `VmHWM`, `RssAnon`) of `pid`, in KiB.
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(") ")
        .context("unexpected /proc/PID/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 12 and 13 after the name and state.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// The value of `series` (name and labels, exactly as exposed) in a `/metrics` text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// How many guards the watchdog runs: its `guards` gauge, else (builds before templates) how
/// many guards have a `window_active` series.
fn guards_running(text: &str, mode: Mode) -> usize {
    let gauge = format!("cutover_watchdog_guards{{source=\"{}\"}}", mode.label());
    if let Some(v) = metric(text, &gauge) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return v as usize;
    }
    text.lines()
        .filter(|l| l.starts_with("cutover_watchdog_window_active{"))
        .count()
}

struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    ready_after: Duration,
    idle_cpu_percent: f64,
    metrics_bytes: usize,
}

async fn measure(
    args: &Args,
    api: &ApiServer,
    mode: Mode,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Sample> {
    let (main, admin) = (free_port()?, free_port()?);
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config(mode, n, main, admin))?;
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let log_path = dir.join("watchdog.log");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&args.binary)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.binary.display()))?;
    let pid = child.id().context("the watchdog has no pid")?;
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    cutover_watchdog::tls::ring_as_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let admin_url = format!("http://127.0.0.1:{admin}");

    // Bounded wait for every guard to run and /readyz to answer 200, with progress.
    let mut last_report = Instant::now();
    let (mut running, mut ready) = (0, false);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the watchdog exited ({status}):\n{}", logs());
        }
        if let Ok(r) = http.get(format!("{admin_url}/metrics")).send().await
            && let Ok(text) = r.text().await
        {
            running = guards_running(&text, mode);
        }
        if running == n {
            ready = http
                .get(format!("{admin_url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
        }
        if running == n && ready {
            break;
        }
        ensure!(
            started.elapsed() < READY_WITHIN,
            "not ready within {READY_WITHIN:?}: {running} of {n} {} guards running, /readyz {}\n{}",
            mode.label(),
            if ready { "200" } else { "not 200" },
            logs()
        );
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  ... {:>4.1}s: {running} of {n} guards running",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready_after = started.elapsed();

    // Idle: nothing asks the watchdog anything, no window is open.
    let t0 = cpu_ticks(pid)?;
    tokio::time::sleep(args.idle).await;
    let t1 = cpu_ticks(pid)?;
    let (rss_kib, hwm_kib, anon_kib) = (
        status_kib(pid, "VmRSS")?,
        status_kib(pid, "VmHWM")?,
        status_kib(pid, "RssAnon")?,
    );
    #[allow(clippy::cast_precision_loss)]
    let idle_cpu_percent =
        (t1 - t0) as f64 / clock_ticks_per_second() as f64 / args.idle.as_secs_f64() * 100.0;
    // After the reading: the size of one scrape, for the record.
    let metrics_bytes = http
        .get(format!("{admin_url}/metrics"))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    ensure!(
        child.try_wait()?.is_none(),
        "the watchdog exited while idle:\n{}",
        logs()
    );
    child.kill().await?;
    Ok(Sample {
        rss_kib,
        hwm_kib,
        anon_kib,
        ready_after,
        idle_cpu_percent,
        metrics_bytes,
    })
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn mib(kib: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = kib as f64 / 1024.0;
    format!("{m:.1}")
}

struct Row {
    mode: Mode,
    n: usize,
    rss: Vec<u64>,
    hwm: u64,
    anon: u64,
    ready_after: Duration,
    cpu: f64,
    metrics_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    eprintln!(
        "binary {}; {} run(s) per size, {} s idle",
        args.binary.display(),
        args.runs,
        args.idle.as_secs()
    );
    let plan = args
        .sizes
        .iter()
        .map(|&n| (Mode::Template, n))
        .chain(args.explicit.iter().map(|&n| (Mode::Explicit, n)));
    let mut rows = Vec::new();
    for (mode, n) in plan {
        let api = populate(n).await?;
        let mut samples = Vec::new();
        for run in 1..=args.runs {
            eprintln!("{n} {} guards, run {run} of {}", mode.label(), args.runs);
            let s = measure(&args, &api, mode, n, dir.path()).await?;
            eprintln!(
                "  ready after {:.1}s; idle {:.1}% CPU, VmRSS {} MiB, VmHWM {} MiB, RssAnon {} MiB",
                s.ready_after.as_secs_f64(),
                s.idle_cpu_percent,
                mib(s.rss_kib),
                mib(s.hwm_kib),
                mib(s.anon_kib)
            );
            samples.push(s);
        }
        rows.push(Row {
            mode,
            n,
            rss: samples.iter().map(|s| s.rss_kib).collect(),
            hwm: median(samples.iter().map(|s| s.hwm_kib).collect()),
            anon: median(samples.iter().map(|s| s.anon_kib).collect()),
            ready_after: median(samples.iter().map(|s| s.ready_after).collect()),
            cpu: median(samples.iter().map(|s| s.idle_cpu_percent).collect()),
            metrics_bytes: median(samples.iter().map(|s| s.metrics_bytes).collect()),
        });
    }

    println!(
        "\n| guards | source | VmRSS (median) | runs | VmHWM | RssAnon | ready after | idle CPU | /metrics |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let runs: Vec<String> = r.rss.iter().map(|&k| mib(k)).collect();
        println!(
            "| {} | {} | {} MiB | {} | {} MiB | {} MiB | {:.1} s | {:.1}% | {} KiB |",
            r.n,
            r.mode.label(),
            mib(median(r.rss.clone())),
            runs.join(" / "),
            mib(r.hwm),
            mib(r.anon),
            r.ready_after.as_secs_f64(),
            r.cpu,
            r.metrics_bytes / 1024
        );
    }
    let templates: Vec<&Row> = rows.iter().filter(|r| r.mode == Mode::Template).collect();
    if let (Some(small), Some(large)) = (
        templates.iter().min_by_key(|r| r.n),
        templates.iter().max_by_key(|r| r.n),
    ) && large.n > small.n
    {
        let (a, b) = (median(small.rss.clone()), median(large.rss.clone()));
        #[allow(clippy::cast_precision_loss)]
        let per_guard = (b as f64 - a as f64) / (large.n - small.n) as f64;
        #[allow(clippy::cast_precision_loss)]
        let base = a as f64 - per_guard * small.n as f64;
        println!(
            "\nper template guard: ({} KiB - {} KiB) / {} = {per_guard:.1} KiB; \
             base (0 guards, extrapolated) {:.1} MiB",
            b,
            a,
            large.n - small.n,
            base / 1024.0
        );
    }
    Ok(())
}
