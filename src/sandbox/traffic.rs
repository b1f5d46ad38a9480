//! A synthetic blue/green app: version-labelled request counters and latency histograms whose
//! request rate, error ratio and latency each test (or the demo) sets per version.
//!
//! It simulates traffic with a 100 ms ticker rather than serving real requests, so the numbers
//! Prometheus scrapes are exact and cheap. Metric names follow the runbook's examples:
//! `http_requests_total{app,version,code}` and `http_request_duration_seconds_bucket{app,version,le}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How one version behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// Requests per second.
    pub rps: f64,
    /// Fraction of requests answered 5xx.
    pub error_ratio: f64,
    /// Every request takes this long.
    pub latency_seconds: f64,
}

impl Behaviour {
    /// 50 rps, 0.1% errors, 50 ms.
    pub const HEALTHY: Self = Self {
        rps: 50.0,
        error_ratio: 0.001,
        latency_seconds: 0.05,
    };
    /// No traffic at all.
    pub const IDLE: Self = Self {
        rps: 0.0,
        error_ratio: 0.0,
        latency_seconds: 0.05,
    };
}

struct Inner {
    app: String,
    behaviour: Mutex<BTreeMap<String, Behaviour>>,
    /// Fractional requests carried between ticks, per version.
    carry: Mutex<BTreeMap<String, (f64, f64)>>,
    requests: IntCounterVec,
    latency: HistogramVec,
    registry: Registry,
}

/// A running synthetic app. Dropping it stops it.
pub struct TrafficApp {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for TrafficApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TrafficApp {
    /// Starts the app `app` on a free loopback port with `versions` behaving as given.
    pub async fn start(app: &str, versions: &[(&str, Behaviour)]) -> Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "Requests served."),
            &["app", "version", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Request latency.")
                .buckets(vec![0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.6, 3.2]),
            &["app", "version"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        let inner = Arc::new(Inner {
            app: app.to_owned(),
            behaviour: Mutex::new(
                versions
                    .iter()
                    .map(|(v, b)| ((*v).to_owned(), *b))
                    .collect(),
            ),
            carry: Mutex::default(),
            requests,
            latency,
            registry,
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                what: "synthetic app",
                addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            context: "failed to read the synthetic app's address".into(),
            source,
        })?;
        let stop = CancellationToken::new();
        let router = Router::new()
            .route("/metrics", get(metrics))
            .with_state(inner.clone());
        let until = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(until)
                .await;
        });
        tokio::spawn(simulate(inner.clone(), stop.clone()));
        Ok(Self { inner, addr, stop })
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes how `version` behaves from now on.
    pub fn set(&self, version: &str, behaviour: Behaviour) {
        lock(&self.inner.behaviour).insert(version.to_owned(), behaviour);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn metrics(State(inner): State<Arc<Inner>>) -> String {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&inner.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

async fn simulate(inner: Arc<Inner>, stop: CancellationToken) {
    const TICK: Duration = Duration::from_millis(100);
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let behaviours = lock(&inner.behaviour).clone();
        let mut carry = lock(&inner.carry);
        for (version, b) in behaviours {
            let (total, errors) = carry.entry(version.clone()).or_default();
            *total += b.rps * TICK.as_secs_f64();
            *errors += b.rps * b.error_ratio * TICK.as_secs_f64();
            // Whole requests only; the fraction carries to the next tick, so ratios stay exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (n, e) = (
                total.floor() as u64,
                errors.floor().min(total.floor()) as u64,
            );
            *total -= n as f64;
            *errors -= e as f64;
            let app = inner.app.as_str();
            inner
                .requests
                .with_label_values(&[app, &version, "500"])
                .inc_by(e);
            inner
                .requests
                .with_label_values(&[app, &version, "200"])
                .inc_by(n - e);
            let histogram = inner.latency.with_label_values(&[app, &version]);
            for _ in 0..n {
                histogram.observe(b.latency_seconds);
            }
        }
    }
}
