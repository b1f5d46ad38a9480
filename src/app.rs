//! Wiring: build the client, the registry and the tasks, serve, and shut down in order.
//!
//! This is the only place that knows every part. It holds no logic of its own.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, GuardConfig};
use crate::decision::{self, Policy};
use crate::error::{Error, Result};
use crate::executor::{Executor, Target};
use crate::guard::{self, GuardHandle, GuardTask};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::poller::{PollTarget, Poller, PrometheusHealth};
use crate::promql::{Prometheus, Template};
use crate::service::ServiceHandle;
use crate::webhook::Webhook;

/// Queued Kubernetes writes across all guards.
const EXECUTOR_QUEUE: usize = 256;

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

/// A client for `config` that names itself in User-Agent, so audit logs tell its writes apart.
pub fn client_for(mut config: kube::Config) -> Result<kube::Client> {
    // Retries are the executor's: bounded by kube_timeout, logged, and reported with their cause.
    config.default_retry = false;
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(crate::USER_AGENT),
    ));
    kube::Client::try_from(config).map_err(|e| Error::KubeClient(Box::new(e)))
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

/// Runs the watchdog until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let client = kube_client().await?;
    serve(config, client, shutdown).await
}

/// Runs the watchdog with a given client (tests and the demo pass their own).
pub async fn serve(
    config: Config,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics = Metrics::new()?;
    let webhook = Webhook::from_config(&config.webhook)?;
    if !webhook.authenticates() {
        warn!(
            "webhook.bearer_token_file and webhook.basic_auth are unset: /webhook/alertmanager accepts unauthenticated requests"
        );
    }
    let prometheus = Prometheus::new(&config.prometheus.url, config.prometheus.timeout)?;
    let main_listener = bind("main", config.listen).await?;
    let admin_listener = bind("admin", config.admin_listen).await?;

    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "cutover-watchdog".into());
    let reporter = Reporter {
        controller: "cutover-watchdog".into(),
        instance: Some(instance.chars().take(128).collect()),
    };
    let (commands, command_rx) = mpsc::channel(EXECUTOR_QUEUE);
    let mut tasks = JoinSet::new();
    let mut handles = Vec::new();
    let mut targets = Vec::new();
    // Guard tasks stop on this token; the executor on `shutdown` directly, after them.
    let guards_stop = shutdown.child_token();

    let wake = Arc::new(Notify::new());
    let mut poll_targets = Vec::new();
    for (index, g) in config.guards.iter().enumerate() {
        let parts = Parts {
            client: &client,
            metrics: &metrics,
            commands: &commands,
            wake: &wake,
            stop: &guards_stop,
        };
        let (handle, target, poll) = spawn_guard(index, Arc::new(g.clone()), &parts, &mut tasks)?;
        handles.push(handle);
        targets.push(target);
        poll_targets.push(poll);
    }
    drop(commands);
    let health = Arc::new(PrometheusHealth::default());
    let poller = Poller {
        targets: poll_targets,
        prometheus,
        metrics: metrics.clone(),
        interval: config.poll_interval,
        wake,
        health: health.clone(),
    };
    tasks.spawn(poller.run(guards_stop.clone()));

    let executor = Executor {
        targets,
        recorder: Recorder::new(client, reporter),
        metrics: metrics.clone(),
        kube_timeout: config.kube_timeout,
    };
    let executor = tokio::spawn(executor.run(command_rx, shutdown.clone()));

    let state = AppState {
        guards: handles.into(),
        metrics,
        webhook: Arc::new(webhook),
        prometheus: health,
    };
    let main = axum::serve(main_listener, http::router(state.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let admin = axum::serve(admin_listener, http::admin_router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    info!(listen = %config.listen, admin = %config.admin_listen, guards = config.guards.len(), "cutover-watchdog serving");
    let served = tokio::try_join!(
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
    );
    // Either shutdown was requested or a listener died: stop everything in order.
    shutdown.cancel();
    // The executor finishes a patch in flight; its own calls are bounded by kube_timeout.
    let grace = config.kube_timeout + Duration::from_secs(2);
    if tokio::time::timeout(grace, executor).await.is_err() {
        warn!("executor did not finish within the shutdown deadline");
    }
    tasks.shutdown().await;
    info!("cutover-watchdog stopped");
    served.map(drop)
}

/// What every guard's tasks share.
struct Parts<'a> {
    client: &'a kube::Client,
    metrics: &'a Metrics,
    commands: &'a mpsc::Sender<crate::executor::Command>,
    wake: &'a Arc<Notify>,
    stop: &'a CancellationToken,
}

/// Starts one guard's watcher and decision task; returns what the HTTP side, the executor and
/// the poller need of it.
fn spawn_guard(
    index: usize,
    g: Arc<GuardConfig>,
    parts: &Parts<'_>,
    tasks: &mut JoinSet<()>,
) -> Result<(GuardHandle, Target, PollTarget)> {
    parts.metrics.init_guard(&g);
    let service = ServiceHandle::new(parts.client, &g);
    let (inbox_tx, inbox_rx) = mpsc::channel(guard::INBOX);
    let (reply_tx, reply_rx) = mpsc::channel(4);
    let (status_tx, status_rx) = watch::channel(guard::initial_status(&g));
    let (polling_tx, polling_rx) = watch::channel(None);
    let ready = Arc::new(AtomicBool::new(false));
    let alerts = Arc::new(guard::AlertLog::default());
    let target = Target {
        guard: g.name.clone(),
        service: service.clone(),
        min_ready_previous: g.min_ready_previous,
        dry_run: g.dry_run,
    };
    let checks = g
        .checks
        .iter()
        .map(|c| {
            // Validated by Config::parse already; this only re-splits the text.
            let template = Template::parse(&c.query)
                .map_err(|m| Error::Unusable(format!("check {}: {m}", c.name)))?;
            Ok((c.clone(), template))
        })
        .collect::<Result<Vec<_>>>()?;
    let poll = PollTarget {
        guard: g.name.clone(),
        checks,
        polling: polling_rx,
        inbox: inbox_tx.clone(),
    };
    tasks.spawn(guard::watch_service(
        service.clone(),
        g.name.clone(),
        inbox_tx.clone(),
        ready.clone(),
        parts.stop.clone(),
    ));
    let task = GuardTask {
        index,
        config: g.clone(),
        core: decision::Guard::new(Policy::from(g.as_ref())),
        service,
        inbox: inbox_rx,
        reply: reply_tx,
        replies: reply_rx,
        executor: parts.commands.clone(),
        status: status_tx,
        polling: polling_tx,
        metrics: parts.metrics.clone(),
        ready: ready.clone(),
        alerts: alerts.clone(),
        wake: parts.wake.clone(),
    };
    tasks.spawn(task.run(parts.stop.clone()));
    let handle = GuardHandle {
        config: g,
        inbox: inbox_tx,
        status: status_rx,
        ready,
        alerts,
    };
    Ok((handle, target, poll))
}
