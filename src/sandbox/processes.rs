//! The real Prometheus and Alertmanager as child processes, each in its own temp dir on a free
//! loopback port.
//!
//! A missing binary is an error that names the Debian package to install; nothing here skips.
//! Children are killed when their handle drops, which does not wait for them to exit;
//! [`ChildServer::stop`] does, for whoever must say they stopped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::error::{Error, Result};

/// Finds `name` at `explicit`, else on `PATH`, else fails naming the Debian package that ships it.
pub fn find_binary(name: &str, package: &str, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(Error::Sandbox(format!("{} does not exist", p.display())))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Sandbox(format!(
                "{name} not found on PATH; install it with `apt-get install -y {package}`"
            ))
        })
}

/// A child server process. Killed on drop.
pub struct ChildServer {
    child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
    name: &'static str,
    /// Served over https (Prometheus with a `web.config.file` that sets TLS).
    tls: bool,
    /// The path its routes are under (Prometheus's `--web.route-prefix`), or empty.
    prefix: String,
}

impl ChildServer {
    /// Where it serves: scheme, address and route prefix.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, self.prefix)
    }

    /// Kills the process at once (SIGKILL) and waits for it to go.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Kills the process (SIGKILL) and returns once it has exited and been reaped.
    pub async fn stop(mut self) -> Result<()> {
        // An error here means the process already exited; the wait reaps it either way.
        let _ = self.child.start_kill();
        self.child.wait().await.map_err(|source| Error::Io {
            context: format!("failed to wait for {} to exit", self.name),
            source,
        })?;
        Ok(())
    }

    /// A server around `child`, already running, for tests of how children are stopped.
    #[cfg(test)]
    pub(crate) fn adopt(name: &'static str, child: Child, dir: TempDir, addr: SocketAddr) -> Self {
        Self {
            child,
            addr,
            dir,
            name,
            tls: false,
            prefix: String::new(),
        }
    }

    /// The process's combined output so far, for test failure messages.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default()
    }

    async fn spawn(
        name: &'static str,
        binary: &Path,
        args: Vec<String>,
        dir: TempDir,
        addr: SocketAddr,
        (tls, prefix): (bool, String),
    ) -> Result<Self> {
        let log =
            std::fs::File::create(dir.path().join("output.log")).map_err(|source| Error::Io {
                context: format!("failed to create {name} log"),
                source,
            })?;
        let err = log.try_clone().map_err(|source| Error::Io {
            context: format!("failed to open {name} log"),
            source,
        })?;
        let child = Command::new(binary)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Io {
                context: format!("failed to start {}", binary.display()),
                source,
            })?;
        let mut server = Self {
            child,
            addr,
            dir,
            name,
            tls,
            prefix,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Waits (at most 30 s) for `/-/ready` to answer 200; over https, for the port to accept
    /// connections (it may want a client certificate and credentials the wait does not have).
    async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("{}/-/ready", self.url());
        crate::tls::ring_as_default();
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Sandbox(format!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.log()
                )));
            }
            let ready = if self.tls {
                tokio::net::TcpStream::connect(self.addr).await.is_ok()
            } else {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            };
            if ready {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Sandbox(format!(
            "{} was not ready within 30s:\n{}",
            self.name,
            self.log()
        )))
    }
}

fn temp_dir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|source| Error::Io {
            context: "failed to create a temp dir".into(),
            source,
        })
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| Error::Io {
        context: format!("failed to write {}", path.display()),
        source,
    })?;
    Ok(path)
}

/// What a Prometheus child scrapes and evaluates.
#[derive(Debug, Clone, Default)]
pub struct PrometheusSetup {
    /// `host:port` targets scraped every second as job `app`.
    pub targets: Vec<SocketAddr>,
    /// Rule file contents, evaluated every second.
    pub rules: Option<String>,
    /// Alertmanagers to send alerts to.
    pub alertmanagers: Vec<SocketAddr>,
    /// A binary to use instead of the one on PATH.
    pub binary: Option<PathBuf>,
    /// The loopback port to listen on, instead of a free one: to restart on the port of one
    /// that was killed, as a restarted Prometheus behind a fixed address would.
    pub port: Option<u16>,
    /// `--web.config.file` contents (TLS, client certificates, basic auth), paths absolute.
    /// With `tls_server_config` in it, the server is https.
    pub web_config: Option<String>,
    /// `--web.route-prefix`, e.g. `/prometheus`.
    pub route_prefix: Option<String>,
}

/// Starts the real Prometheus with a 1 s scrape and evaluation interval, with an empty data dir
/// of its own.
pub async fn prometheus(setup: &PrometheusSetup) -> Result<ChildServer> {
    let binary = find_binary("prometheus", "prometheus", setup.binary.as_deref())?;
    let dir = temp_dir("prometheus-")?;
    let port = match setup.port {
        Some(port) => port,
        None => super::free_port()?,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let quoted = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n- job_name: app\n  static_configs: [{{targets: [{}]}}]\n",
        quoted(&setup.targets)
    );
    if let Some(rules) = &setup.rules {
        write(dir.path(), "rules.yml", rules)?;
        config.push_str("rule_files: [rules.yml]\n");
    }
    if !setup.alertmanagers.is_empty() {
        let _ = write!(
            config,
            "alerting:\n  alertmanagers:\n  - static_configs: [{{targets: [{}]}}]\n",
            quoted(&setup.alertmanagers)
        );
    }
    let config_path = write(dir.path(), "prometheus.yml", &config)?;
    let mut args = vec![
        format!("--config.file={}", config_path.display()),
        format!("--storage.tsdb.path={}", dir.path().join("data").display()),
        format!("--web.listen-address={addr}"),
        "--log.level=warn".into(),
    ];
    let tls = setup
        .web_config
        .as_deref()
        .is_some_and(|w| w.contains("tls_server_config"));
    if let Some(web) = &setup.web_config {
        let path = write(dir.path(), "web.yml", web)?;
        args.push(format!("--web.config.file={}", path.display()));
    }
    let prefix = setup.route_prefix.clone().unwrap_or_default();
    if !prefix.is_empty() {
        args.push(format!("--web.route-prefix={prefix}"));
        args.push(format!("--web.external-url=http://{addr}{prefix}"));
    }
    ChildServer::spawn("prometheus", &binary, args, dir, addr, (tls, prefix)).await
}

/// Starts the real Alertmanager with the given config, clustering off.
pub async fn alertmanager(config: &str, binary: Option<&Path>) -> Result<ChildServer> {
    let binary = find_binary("prometheus-alertmanager", "prometheus-alertmanager", binary)?;
    let dir = temp_dir("alertmanager-")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()?));
    let config_path = write(dir.path(), "alertmanager.yml", config)?;
    let args = vec![
        format!("--config.file={}", config_path.display()),
        format!("--storage.path={}", dir.path().join("data").display()),
        format!("--web.listen-address={addr}"),
        "--cluster.listen-address=".into(),
        "--log.level=warn".into(),
    ];
    ChildServer::spawn(
        "alertmanager",
        &binary,
        args,
        dir,
        addr,
        (false, String::new()),
    )
    .await
}
