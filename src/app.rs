//! Wiring: build the client, the registry and the tasks, serve, and shut down in order.
//!
//! This is the only place that knows every part. It holds no logic of its own.

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use kube::runtime::events::{Recorder, Reporter};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access;
use crate::config::{Config, WebhookConfig};
use crate::error::{Error, Result};
use crate::executor::{Executor, Lanes};
use crate::fleet::{Fleet, GuardSet, Parts, Registry};
use crate::forward::Forwarder;
use crate::guard::Clock;
use crate::http::{self, AppState};
use crate::leader::{Elector, Fence};
use crate::live::ConfigReloader;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::poller::{Poller, PrometheusHealth};
use crate::probe::Prober;
use crate::promql::Prometheus;
use crate::reload::{Reload, Reloader};
use crate::tls::{CertStore, TlsListener};
use crate::webhook::Webhook;

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Io {
        context: "failed to install the SIGTERM handler".into(),
        source,
    })?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        cancel.cancel();
    });
    Ok(token)
}

/// A Kubernetes client from `KUBECONFIG`, else in-cluster, that names itself in User-Agent.
pub async fn kube_client() -> Result<kube::Client> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::KubeConfig(Box::new(e)))?;
    client_for(config)
}

/// A client for `config` that names itself and this replica in User-Agent.
pub fn client_for(mut config: kube::Config) -> Result<kube::Client> {
    // Retries are the executor's: bounded by kube_timeout, logged, and reported with their cause.
    config.default_retry = false;
    // With the replica's name, so the audit log tells two replicas' writes apart.
    let agent = format!("{} ({})", crate::USER_AGENT, identity());
    let agent = axum::http::HeaderValue::from_str(&agent)
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static(crate::USER_AGENT));
    config.headers.push((axum::http::header::USER_AGENT, agent));
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| Error::KubeClient(Box::new(e)))?;
    let named = tower::util::MapRequestLayer::new(with_field_manager);
    Ok(builder.with_layer(&named).build())
}

/// The field manager every write names, so that `managedFields`, audit logs and Argo CD's
/// `managedFieldsManagers` can tell the watchdog's writes apart.
pub const FIELD_MANAGER: &str = "cutover-watchdog";

/// Adds `fieldManager=cutover-watchdog` to a write that names none: the client's own calls and
/// kube's event recorder alike (the `cutover` command names its own).
fn with_field_manager(
    mut request: axum::http::Request<kube::client::Body>,
) -> axum::http::Request<kube::client::Body> {
    use axum::http::Method;
    let write = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    let uri = request.uri();
    let query = uri.query().unwrap_or_default();
    let named = query.split('&').any(|p| p.starts_with("fieldManager="));
    if write && !named {
        let separator = if query.is_empty() { "" } else { "&" };
        let path_and_query = format!(
            "{}?{query}{separator}fieldManager={FIELD_MANAGER}",
            uri.path()
        );
        let mut parts = uri.clone().into_parts();
        if let Ok(pq) = path_and_query.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    request
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

/// Runs the watchdog on the config file at `path` until `shutdown` is cancelled, reading the
/// file again when it changes and on SIGHUP.
pub async fn run(path: PathBuf, shutdown: CancellationToken) -> Result<()> {
    let (config, text) = Config::load_text(&path)?;
    let client = kube_client().await?;
    serve_with(config, Some(ConfigFile { path, text }), client, shutdown).await
}

/// The config file a watchdog follows, and the text its config was read from.
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
}

/// Runs the watchdog with a given client and a config that never changes (tests and the demo
/// pass their own).
pub async fn serve(
    config: Config,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    serve_with(config, None, client, shutdown).await
}

/// Runs the watchdog with a given client; with `file`, the config file to follow.
///
/// With leader election on, the listeners serve at once (a follower forwards to the leader),
/// but the guards start only once this replica leads: a follower neither watches nor polls nor
/// writes, and a new leader resumes every open window from the Service's annotations.
pub async fn serve_with(
    config: Config,
    file: Option<ConfigFile>,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics = Metrics::new()?;
    let (webhook, certs) = load_secrets(&config.webhook)?;
    let acceptor = certs.as_ref().map(CertStore::acceptor).transpose()?;
    let prometheus = Prometheus::new(&config.prometheus)?;
    if config.prometheus.tls.insecure_skip_verify {
        warn!(
            "prometheus.tls.insecure_skip_verify is on: any certificate is accepted for prometheus.url"
        );
    }
    access::check(
        &client,
        access::needed(&config, &client),
        config.kube_timeout,
    )
    .await?;
    let main_listener = bind("main", config.listen).await?;
    let admin_listener = bind("admin", config.admin_listen).await?;

    let identity = identity();
    let (elector, fence, forward) = elector(&config, &client, &identity, &metrics)?;

    // Guard tasks stop on this token, lanes on `shutdown`: cancelled together, but only the
    // lanes' shutdown is awaited with a deadline.
    let guards_stop = shutdown.child_token();
    let Workers {
        fleet,
        poller,
        lanes,
        registry,
        health,
        configs,
        notify_secrets,
    } = workers(
        &config,
        prometheus,
        (&client, &metrics, &fence, &identity),
        &guards_stop,
        &shutdown,
    )?;

    let mut tasks = JoinSet::new();
    let mut reloader = reloader(&webhook, certs, &metrics, config.webhook.reload_interval);
    reloader.targets.extend(notify_secrets);
    tasks.spawn(reloader.run(shutdown.clone()));
    if let Some(ConfigFile { path, text }) = file {
        let live = ConfigReloader::new(
            path,
            &text,
            config.clone(),
            configs,
            metrics.clone(),
            client.clone(),
        );
        tasks.spawn(live.run(shutdown.clone()));
    }

    let state = AppState {
        guards: registry,
        metrics,
        webhook,
        leader: fence.clone(),
        forward,
        prometheus: health,
    };
    let tls = config.webhook.tls.files().is_some();
    info!(listen = %config.listen, tls, admin = %config.admin_listen, guards = config.guards.len(), templates = config.templates.len(), identity = %identity, "cutover-watchdog serving");
    let main = serve_main(
        main_listener,
        acceptor,
        http::router(state.clone()),
        &shutdown,
    );
    // Nothing below fails before shutdown, and dropping `serve` aborts every task it started.
    let mut servers = JoinSet::new();
    servers.spawn(listen(main, admin_listener, state, shutdown.clone()));
    // The Lease is released only after the executor is done writing.
    let release = CancellationToken::new();
    let mut elected = JoinSet::new();
    if let Some(elector) = elector {
        elected.spawn(elector.run(release.clone()));
    }

    // The guards start once this replica leads. Everything runs until the listeners stop
    // (shutdown, or one failed) or the elector does (the Lease lost), whichever is first.
    let mut fleets = JoinSet::new();
    let mut leading = fence.clone();
    let mut waiting = Some((fleet, poller));
    let (served, lost) = loop {
        tokio::select! {
            leads = leading.leading(), if waiting.is_some() => {
                if let (true, Some((fleet, poller))) = (leads, waiting.take()) {
                    fleets.spawn(fleet.run());
                    tasks.spawn(poller.run(guards_stop.clone()));
                }
            }
            Some(served) = servers.join_next() => break (Some(served), None),
            Some(lost) = elected.join_next() => break (None, Some(lost)),
        }
    };
    shutdown.cancel();
    let served = match served {
        Some(served) => served,
        None => servers.join_next().await.unwrap_or(Ok(Ok(()))),
    };
    // The fleet stops on `shutdown`, its guard tasks and watches with it; the lanes go on
    // finishing their writes.
    let _ = fleets.join_next().await;
    let grace = config.kube_timeout + Duration::from_secs(2);
    let lost = stop_in_order(&lanes, tasks, grace, &release, elected, lost).await;
    info!("cutover-watchdog stopped");
    lost.and(flatten("listeners", served))
}

/// A task's result, its panic or cancellation an error too.
fn flatten(what: &'static str, joined: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    joined.map_err(|source| Error::Task { what, source })?
}

/// The executor lanes finish a patch in flight (their calls are bounded by `kube_timeout`, so
/// `grace` is a backstop); then the other tasks stop, and only then is the Lease released. If a
/// lane is still writing at the deadline, the Lease is not released but left to expire, so no
/// new leader can act while that write may land. Returns the elector's error if the Lease was
/// lost (`lost`, when it already ended).
async fn stop_in_order(
    lanes: &Lanes,
    mut tasks: JoinSet<()>,
    grace: Duration,
    release: &CancellationToken,
    mut elected: JoinSet<Result<()>>,
    lost: Option<Result<Result<()>, tokio::task::JoinError>>,
) -> Result<()> {
    let drained = lanes.drain(grace).await;
    if !drained {
        warn!("executor did not finish within the shutdown deadline; leaving the lease to expire");
    }
    tasks.shutdown().await;
    if let Some(lost) = lost {
        return flatten("elector", lost);
    }
    if !drained {
        elected.shutdown().await;
        return Ok(());
    }
    release.cancel();
    match elected.join_next().await {
        Some(joined) => flatten("elector", joined),
        None => Ok(()),
    }
}

/// Serves both listeners until `shutdown`.
async fn listen(
    main: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
    admin: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<()> {
    let admin = axum::serve(admin, http::admin_router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned());
    tokio::try_join!(
        async {
            main.await.map_err(|source| Error::Serve {
                what: "main",
                source,
            })
        },
        async {
            admin.await.map_err(|source| Error::Serve {
                what: "admin",
                source,
            })
        },
    )
    .map(drop)
}

/// The elector, its fence and the way to the leader if leader election is configured; else an
/// open fence and no way (this replica always leads).
fn elector(
    config: &Config,
    client: &kube::Client,
    identity: &str,
    metrics: &Metrics,
) -> Result<(Option<Elector>, Fence, Option<Arc<Forwarder>>)> {
    let Some(le) = &config.leader_election else {
        metrics.leader.set(1);
        return Ok((None, Fence::open(), None));
    };
    let address = leader_address(config.listen, std::env::var("POD_IP").ok().as_deref());
    if address.is_none() {
        warn!(
            listen = %config.listen,
            "POD_IP is not set (or not an IP address) and listen is a wildcard: while this replica leads, followers cannot forward webhooks to it; set POD_IP from the downward API"
        );
    }
    let (elector, fence, lead) = Elector::new(
        client,
        le,
        (&lease_identity(identity), address),
        metrics.clone(),
    );
    let tls = config.webhook.tls.files().is_some();
    if !tls && webhook_has_credentials(&config.webhook) {
        warn!(
            "followers forward webhooks, with their credentials, to the leader over plain http: set webhook.tls (and leader_election.forward_server_name) to protect them"
        );
    }
    let forward = Forwarder::new(le, tls, lead)?;
    Ok((Some(elector), fence, Some(Arc::new(forward))))
}

fn webhook_has_credentials(webhook: &WebhookConfig) -> bool {
    webhook.bearer_token_file.is_some() || webhook.basic_auth.is_some()
}

/// Where followers reach this replica's main listener: `POD_IP` with the port of `listen`, or
/// `listen` itself if it names one address.
fn leader_address(listen: SocketAddr, pod_ip: Option<&str>) -> Option<String> {
    match pod_ip.and_then(|ip| ip.trim().parse::<IpAddr>().ok()) {
        Some(ip) => Some(SocketAddr::new(ip, listen.port()).to_string()),
        None if !listen.ip().is_unspecified() => Some(listen.to_string()),
        None => None,
    }
}

/// This process in the Lease: the Pod name and a per-process suffix, as client-go does, so two
/// processes that share a name (no `POD_NAME`, same `HOSTNAME`) never both count as holder.
fn lease_identity(pod: &str) -> String {
    let start = jiff::Timestamp::now().as_nanosecond();
    format!("{pod}_{:x}", start ^ i128::from(std::process::id()))
}

/// Who this replica is, in Events and the User-Agent: the Pod name in a cluster.
fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "cutover-watchdog".into())
}

/// Re-reads the webhook's secret files and the certificate when they change.
fn reloader(
    webhook: &Webhook,
    certs: Option<Arc<CertStore>>,
    metrics: &Metrics,
    interval: Duration,
) -> Reloader {
    let mut secrets: Vec<Arc<dyn Reload>> = Vec::new();
    secrets.extend(webhook.credentials().map(|c| c as Arc<dyn Reload>));
    secrets.extend(certs.map(|c| c as Arc<dyn Reload>));
    Reloader {
        targets: secrets,
        metrics: metrics.clone(),
        interval,
    }
}

/// The webhook's credentials and the main listener's certificate, loaded: a secret that cannot
/// be used at startup is an error, unlike a bad rotation later.
fn load_secrets(config: &WebhookConfig) -> Result<(Arc<Webhook>, Option<Arc<CertStore>>)> {
    let webhook = Arc::new(Webhook::from_config(config)?);
    if !webhook.authenticates() {
        warn!(
            "webhook.bearer_token_file and webhook.basic_auth are unset: /webhook/alertmanager accepts unauthenticated requests"
        );
    }
    let certs = match config.tls.files() {
        Some((cert, key)) => Some(Arc::new(CertStore::load(cert, key)?)),
        None => None,
    };
    Ok((webhook, certs))
}

/// The main listener, over TLS when an acceptor is given. Two listener types, one future type:
/// the rest of the wiring does not care which.
fn serve_main(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    shutdown: &CancellationToken,
) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> {
    let stopped = shutdown.clone().cancelled_owned();
    match acceptor {
        Some(acceptor) => Box::pin(
            axum::serve(TlsListener::new(listener, acceptor), router)
                .with_graceful_shutdown(stopped)
                .into_future(),
        ),
        None => Box::pin(
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .into_future(),
        ),
    }
}

/// The fleet and the poller, built, not started: they start once this replica leads.
struct Workers {
    fleet: Fleet,
    poller: Poller,
    lanes: Lanes,
    /// The running guards, as the fleet publishes them.
    registry: Registry,
    health: Arc<PrometheusHealth>,
    /// Where a reload puts a new config in force.
    configs: watch::Sender<Arc<Config>>,
    /// The notification receivers' secret files, to rotate.
    notify_secrets: Vec<Arc<dyn Reload>>,
}

fn workers(
    config: &Config,
    prometheus: Prometheus,
    (client, metrics, fence, identity): (&kube::Client, &Metrics, &Fence, &str),
    guards_stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<Workers> {
    let (notifier, notify_secrets) =
        Notifier::start(&config.notifications, client, metrics, shutdown)?;
    let reporter = Reporter {
        controller: "cutover-watchdog".into(),
        instance: Some(identity.chars().take(128).collect()),
    };
    let lanes = Lanes::new(Arc::new(
        Executor::new(
            Recorder::new(client.clone(), reporter),
            metrics.clone(),
            config.kube_timeout,
            fence.clone(),
        )
        .with_notifier(notifier),
    ));
    let baselines = lanes.baselines(shutdown.clone());
    let wake = Arc::new(Notify::new());
    let (configs, in_force) = watch::channel(Arc::new(config.clone()));
    let (publish, registry) = watch::channel(Arc::new(GuardSet::starting()));
    let fleet = Fleet::new(
        Parts {
            client: client.clone(),
            metrics: metrics.clone(),
            lanes: lanes.clone(),
            baselines,
            wake: wake.clone(),
            clock: Clock::wall(),
        },
        in_force.clone(),
        publish,
        guards_stop.clone(),
        shutdown.clone(),
    );
    let health = Arc::new(PrometheusHealth::default());
    let poller = Poller {
        guards: registry.clone(),
        prometheus,
        prober: Prober::new()?,
        pods: Some(client.clone()),
        metrics: metrics.clone(),
        interval: config.poll_interval,
        wake,
        health: health.clone(),
        configs: Some(in_force),
    };
    Ok(Workers {
        fleet,
        poller,
        lanes,
        registry,
        health,
        configs,
        notify_secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_names_the_field_manager_and_a_named_one_keeps_its_own() {
        let request = |method: &str, uri: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(kube::client::Body::empty())
                .unwrap()
        };
        let cases = [
            (
                "PATCH",
                "/api/v1/namespaces/d/services/s",
                "/api/v1/namespaces/d/services/s?fieldManager=cutover-watchdog",
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/d/events?",
                "/apis/events.k8s.io/v1/namespaces/d/events?fieldManager=cutover-watchdog",
            ),
            (
                "PUT",
                "/x?dryRun=All",
                "/x?dryRun=All&fieldManager=cutover-watchdog",
            ),
            (
                "PATCH",
                "/x?fieldManager=cutover-watchdog-cli",
                "/x?fieldManager=cutover-watchdog-cli",
            ),
            (
                "GET",
                "/api/v1/services?watch=true",
                "/api/v1/services?watch=true",
            ),
        ];
        for (method, uri, want) in cases {
            let got = with_field_manager(request(method, uri));
            assert_eq!(got.uri().to_string(), want, "{method} {uri}");
        }
    }

    #[test]
    fn the_leader_address_is_pod_ip_with_the_listen_port_or_a_listen_that_names_one_address() {
        let wildcard: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:18080".parse().unwrap();
        let cases = [
            (wildcard, Some("10.1.2.3"), Some("10.1.2.3:8080")),
            (wildcard, Some("fd00::7"), Some("[fd00::7]:8080")),
            (wildcard, Some(" 10.1.2.3\n"), Some("10.1.2.3:8080")),
            (wildcard, None, None),
            (wildcard, Some("not-an-ip"), None),
            (local, None, Some("127.0.0.1:18080")),
            (local, Some("10.1.2.3"), Some("10.1.2.3:18080")),
        ];
        for (listen, pod_ip, want) in cases {
            assert_eq!(
                leader_address(listen, pod_ip).as_deref(),
                want,
                "{listen} {pod_ip:?}"
            );
        }
    }
}
