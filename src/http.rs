//! The HTTP listeners: the main one (`/v1/guards`, `/webhook/alertmanager`) and the admin one
//! (`/metrics`, `/healthz`, `/readyz`).
//!
//! Handlers read snapshots and enqueue inputs; they never wait on the Kubernetes API.
//!
//! Every route has a deadline, [`REQUEST_TIMEOUT`]: a request not answered by then (a body that
//! trickles in) gets 503, which Alertmanager retries. Every request is logged at debug level
//! by method, path, status and latency, and deliberately by nothing else: the headers carry
//! the webhook's credentials, the query string could, and bodies are the webhook's business.
//!
//! `/readyz` means "can take work". The leader can once every guard's Service watch is
//! established; a follower can once it has read the Lease, because its work is to forward
//! webhooks and `/v1/guards` to the leader ([`crate::forward`]). So every replica is Ready, and
//! rollouts, `helm --wait` and Pod disruption budgets see a healthy Deployment. It deliberately
//! does not fail while Prometheus does: the webhook still acts on Alertmanager's alerts then,
//! and taking the pod out of its Service's endpoints would drop exactly those. Its body says
//! which replica leads and how Prometheus is answering, so the probe output stays honest.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::{Level, Span, warn};

use crate::fleet::Registry;
use crate::forward::{FORWARDED, Forwarder};
use crate::guard::{GuardHandle, GuardStatus};
use crate::leader::{Fence, Lead};
use crate::metrics::Metrics;
use crate::poller::PrometheusHealth;
use crate::webhook::{self, Rejection, Webhook, WebhookState};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The guards running now.
    pub guards: Registry,
    pub metrics: Metrics,
    pub webhook: Arc<Webhook>,
    /// Whether this replica leads; only the leader runs guards and takes alerts.
    pub leader: Fence,
    /// A follower's way to the leader; `None` without leader election.
    pub forward: Option<Arc<Forwarder>>,
    /// How Prometheus is answering the poller, for `/readyz`.
    pub prometheus: Arc<PrometheusHealth>,
}

impl FromRef<AppState> for WebhookState {
    fn from_ref(state: &AppState) -> Self {
        Self {
            guards: state.guards.clone(),
            webhook: state.webhook.clone(),
            metrics: state.metrics.clone(),
            leader: state.leader.clone(),
            forward: state.forward.clone(),
        }
    }
}

/// How long any request may take, from its headers read to its answer. Far above what any
/// handler needs (none waits on the Kubernetes API, and Alertmanager sends its body at once),
/// so it only cuts off a client that stalls, and answers it 503: Alertmanager retries a 5xx.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The main listener's routes.
pub fn router(state: AppState) -> Router {
    // The webhook's answers are counted outside its deadline, so that a request cut off by it is
    // counted (503) like any other answer. Both are the route's own layers, which a wrong method
    // (405, not the webhook's answer) does not pass through.
    let alertmanager = post(webhook::alertmanager)
        .route_layer(middleware::from_fn(deadline))
        .route_layer(middleware::map_response_with_state(
            state.metrics.clone(),
            webhook::count,
        ));
    let routes = Router::new()
        .route("/v1/guards", get(guards))
        // Before the webhook's route is added: it has its deadline already.
        .layer(middleware::from_fn(deadline))
        .route("/webhook/alertmanager", alertmanager);
    traced(routes).with_state(state)
}

/// The admin listener's routes.
pub fn admin_router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn(deadline));
    traced(routes).with_state(state)
}

/// Answers 503 ([`Rejection::TimedOut`]) if `next` has not answered within
/// [`REQUEST_TIMEOUT`]; the handler is dropped, and with it whatever it had not done yet.
async fn deadline(request: Request, next: Next) -> Response {
    // Cheap clones (shared bytes), for the warning: the request span is off at the default level.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let Ok(response) = tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await else {
        warn!(
            %method,
            path = %uri.path(),
            timeout_s = REQUEST_TIMEOUT.as_secs(),
            "request not answered in time; answered 503"
        );
        return Rejection::TimedOut {
            after: REQUEST_TIMEOUT,
        }
        .into_response();
    };
    response
}

/// The request log: a debug span per request with its method and path (not the query, which a
/// client could put a token in), a line when it starts and one with status and latency when
/// it is answered. Headers and bodies never: they carry the credentials.
fn traced(routes: Router<AppState>) -> Router<AppState> {
    routes.layer(
        TraceLayer::new_for_http()
            .make_span_with(span)
            .on_request(DefaultOnRequest::new().level(Level::DEBUG))
            .on_response(
                DefaultOnResponse::new()
                    .level(Level::DEBUG)
                    .include_headers(false),
            )
            // A 5xx is already in the response line; a second, louder line per 503 would flood
            // the log exactly when a storm is met with 503s by design.
            .on_failure(())
            .on_body_chunk(())
            .on_eos(()),
    )
}

fn span(request: &Request<Body>) -> Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
    )
}

/// The guards' status: this replica's if it leads, else the leader's, proxied, with a header
/// naming it (503 naming it if it cannot be reached).
async fn guards(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    match (&state.forward, state.leader.allows()) {
        (Some(forward), false) if !headers.contains_key(FORWARDED) => forward
            .send(
                axum::http::Method::GET,
                "/v1/guards",
                axum::http::HeaderMap::new(),
                axum::body::Bytes::new(),
            )
            .await
            .unwrap_or_else(IntoResponse::into_response),
        _ => local_guards(&state).into_response(),
    }
}

fn local_guards(state: &AppState) -> Json<Vec<GuardStatus>> {
    let status = |g: &GuardHandle| {
        let mut s = g.status.borrow().clone();
        s.last_alerts = g.alerts.snapshot();
        s
    };
    let guards = state.guards.borrow().clone();
    Json(guards.guards.iter().map(status).collect())
}

/// The text exposition format's content type, which Prometheus expects of a scrape.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(EXPOSITION));
    response
}

/// Guards `/readyz` names at most: with thousands of guards behind one watch, its line stays a
/// line.
const NAMED: usize = 10;

/// `/readyz`'s answer: 200 or 503, and plain text saying why, for the probe's output.
struct Readiness {
    ready: bool,
    text: String,
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        let mut response = self.text.into_response();
        if !self.ready {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    }
}

/// Ready, if it leads (always, without election), once every guard's watch is established,
/// whatever Prometheus does (see the module docs); if it follows, once it has read the Lease
/// and seen who holds it.
/// The first line says which replica leads; a leader's second says how Prometheus is answering.
async fn readyz(State(state): State<AppState>) -> Readiness {
    if !state.leader.allows() {
        let lead = state.forward.as_ref().map_or(Lead::Unknown, |f| f.lead());
        return match lead {
            Lead::Unknown => Readiness {
                ready: false,
                text: "waiting for the first read of the leader lease\n".to_owned(),
            },
            // Not for long: this replica or another takes it at its next look.
            Lead::Vacant => Readiness {
                ready: false,
                text: "waiting for a replica to take the free leader lease\n".to_owned(),
            },
            Lead::Held { holder, address } => Readiness {
                ready: true,
                text: format!(
                    "ready, following {holder}: webhooks and /v1/guards are forwarded to {}\n",
                    address
                        .as_deref()
                        .unwrap_or("(no address published; they get 503)")
                ),
            },
        };
    }
    // The watches first: a guard waits only on its watch.
    let guards = state.guards.borrow().clone();
    let mut waiting: Vec<String> = guards.waiting.clone();
    if waiting.is_empty() {
        let unready: Vec<&str> = guards
            .guards
            .iter()
            .filter(|g| !g.ready.load(Ordering::Relaxed))
            .map(|g| g.config.name.as_str())
            .collect();
        waiting.extend(
            unready
                .iter()
                .take(NAMED)
                .map(|g| format!("the service watch of guard {g}")),
        );
        if unready.len() > NAMED {
            waiting.push(format!("{} more guards", unready.len() - NAMED));
        }
    }
    let prometheus = state.prometheus.describe();
    if waiting.is_empty() {
        Readiness {
            ready: true,
            text: format!("ready, leading\n{prometheus}\n"),
        }
    } else {
        Readiness {
            ready: false,
            text: format!("waiting for {}\n{prometheus}\n", waiting.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;

    fn state(ready: bool) -> AppState {
        let config = Config::from_yaml(
            "prometheus: {url: 'http://127.0.0.1:9090'}\nguards:\n- {name: checkout, service: svc-production}\n",
        )
        .unwrap();
        let g = Arc::new(config.guards[0].clone());
        let (inbox, _) = mpsc::channel(1);
        AppState {
            guards: crate::fleet::fixed(vec![GuardHandle {
                ready: Arc::new(AtomicBool::new(ready)),
                ..GuardHandle::detached(g, inbox)
            }]),
            metrics: Metrics::new().unwrap(),
            webhook: Arc::new(Webhook::from_config(&config.webhook).unwrap()),
            leader: Fence::open(),
            forward: None,
            prometheus: Arc::default(),
        }
    }

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn guards_lists_each_guard_as_json() {
        let (status, body) = get(router(state(true)), "/v1/guards").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[0]["name"], "checkout");
        assert_eq!(v[0]["service"], "svc-production");
        assert!(v[0]["window"].is_null());
    }

    #[tokio::test]
    async fn readyz_waits_for_every_watch_and_names_the_missing_one() {
        let (status, body) = get(admin_router(state(false)), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("checkout"), "{body}");
        let (status, _) = get(admin_router(state(true)), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_follower_is_ready_once_it_has_seen_who_holds_the_lease() {
        let config = Config::from_yaml(
            "prometheus: {url: 'http://127.0.0.1:9090'}\nleader_election: {}\nguards: [{name: c, service: s}]\n",
        )
        .unwrap();
        let (lead, leads) = tokio::sync::watch::channel(Lead::Unknown);
        let forward = Forwarder::new(config.leader_election.as_ref().unwrap(), false, leads);
        let s = AppState {
            leader: Fence::closed(),
            forward: Some(Arc::new(forward.unwrap())),
            // Its guards are not running: a follower's readiness must not wait on them.
            ..state(false)
        };
        let cases = [
            (
                Lead::Unknown,
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for the first read",
            ),
            (
                Lead::Vacant,
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for a replica to take",
            ),
            (
                Lead::Held {
                    holder: "a".into(),
                    address: Some("10.0.0.7:8080".into()),
                },
                StatusCode::OK,
                "ready, following a: webhooks and /v1/guards are forwarded to 10.0.0.7:8080\n",
            ),
            (
                Lead::Held {
                    holder: "a".into(),
                    address: None,
                },
                StatusCode::OK,
                "ready, following a: webhooks and /v1/guards are forwarded to (no address published",
            ),
        ];
        for (seen, code, text) in cases {
            lead.send_replace(seen.clone());
            let (status, body) = get(admin_router(s.clone()), "/readyz").await;
            assert_eq!(status, code, "{seen:?}: {body}");
            assert!(body.starts_with(text), "{seen:?}: {body}");
        }
    }

    #[tokio::test]
    async fn readyz_stays_ready_while_prometheus_fails_and_says_so() {
        let s = state(true);
        let (_, body) = get(admin_router(s.clone()), "/readyz").await;
        assert!(body.contains("prometheus not queried yet"), "{body}");
        let at: jiff::Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        s.prometheus
            .record(at, Some("timeout: operation timed out".into()));
        s.prometheus.record(at, Some("connect: refused".into()));
        let (status, body) = get(admin_router(s.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::OK, "the webhook still works");
        assert!(
            body.contains("prometheus queries failing since 2026-01-02T03:04:05Z (2 poll rounds")
                && body.contains("connect: refused"),
            "{body}"
        );
        s.prometheus.record(at, None);
        let (_, body) = get(admin_router(s), "/readyz").await;
        assert!(body.contains("prometheus answering"), "{body}");
    }

    #[tokio::test]
    async fn a_wrong_method_on_the_webhook_gets_405_and_is_not_counted_as_a_webhook_answer() {
        let s = state(true);
        let (status, _) = get(router(s.clone()), "/webhook/alertmanager").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let text = s.metrics.render();
        assert!(
            !text.contains("webhook_requests_total{code=\"405\"}"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn healthz_and_metrics_answer_on_the_admin_listener_only() {
        let s = state(true);
        s.metrics
            .cutovers_total
            .with_label_values(&["checkout"])
            .inc();
        let (status, body) = get(admin_router(s.clone()), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("cutover_watchdog_cutovers_total{guard=\"checkout\"} 1"));
        assert_eq!(
            get(admin_router(s.clone()), "/healthz").await.0,
            StatusCode::OK
        );
        assert_eq!(get(router(s), "/metrics").await.0, StatusCode::NOT_FOUND);
    }
}
