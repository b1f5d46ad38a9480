//! `POST /webhook/alertmanager`: Alertmanager's webhook (payload version 4) as a trigger.
//!
//! This holds the handler and its intake steps, in order: rate limit (one global bucket, before
//! authentication, so a flood costs almost nothing), authentication in constant time, the leader
//! fence, content type, a bounded body read, parsing ([`payload`]) and dispatch to the guards
//! ([`routing`]), all at once or not at all: a full queue gets a 503 with nothing enqueued, so
//! that Alertmanager retries it whole (a follower, which runs no guards, answers 503 too). It
//! never waits on the Kubernetes API. Whether an alert acts (window open, green version, after
//! the cutover, once per window) is decided by [`crate::decision`], not here; when rotated
//! credentials take effect is decided by [`crate::reload`] ([`credentials`] only applies them).

mod credentials;
mod payload;
mod routing;

use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

pub use self::credentials::Credentials;
pub use self::payload::{Payload, PayloadAlert, PayloadError};
use self::routing::Routes;
use crate::config::WebhookConfig;
use crate::error::Result;
use crate::guard::GuardHandle;
use crate::leader::Fence;
use crate::metrics::Metrics;

/// The webhook's settings, secrets loaded.
pub struct Webhook {
    /// The credentials required, if any; rotated in place by [`crate::reload`].
    credentials: Option<Arc<Credentials>>,
    max_body: usize,
    limiter: DefaultDirectRateLimiter,
    /// Built on the first request from the guards, which are fixed for the process.
    routes: OnceLock<Routes>,
}

impl Webhook {
    /// Loads the secrets the config points at.
    pub fn from_config(config: &WebhookConfig) -> Result<Self> {
        let credentials = Credentials::from_config(config)?.map(Arc::new);
        let per_second = NonZeroU32::new(config.rate_limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit.burst).unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            credentials,
            max_body: config.max_body_bytes,
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            routes: OnceLock::new(),
        })
    }

    /// Whether requests need credentials.
    #[must_use]
    pub fn authenticates(&self) -> bool {
        self.credentials.is_some()
    }

    /// The credentials, for the reload task to rotate.
    #[must_use]
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.credentials.clone()
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(credentials) = &self.credentials else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map_or(&[][..], HeaderValue::as_bytes);
        credentials.accepts(given)
    }

    /// The `WWW-Authenticate` value of a 401; `None` when the endpoint is open (no 401 then).
    fn challenge(&self) -> Option<HeaderValue> {
        self.credentials.as_ref().map(|c| c.challenge())
    }
}

/// What the handler needs, and nothing more: the router's state derives it (axum's `FromRef`),
/// so the webhook does not depend on the rest of the HTTP side.
#[derive(Clone)]
pub struct WebhookState {
    /// Every guard, in config order: [`Routes`] indexes into this.
    pub guards: Arc<[GuardHandle]>,
    pub webhook: Arc<Webhook>,
    pub metrics: Metrics,
    /// Only the leader's guards run, so only the leader takes alerts.
    pub leader: Fence,
}

fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    answer(code, json!({ "error": message }))
}

/// The handler: every outcome is counted by its numeric status code.
pub async fn alertmanager(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = intake(&state, &headers, body).await;
    state
        .metrics
        .webhook_requests_total
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

async fn intake(state: &WebhookState, headers: &HeaderMap, body: Body) -> Response {
    let webhook = &state.webhook;
    if let Err(not_until) = webhook.limiter.check() {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return r;
    }
    if !webhook.authorized(headers) {
        // Say nothing of why: missing, malformed and wrong credentials look the same.
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized");
        if let Some(challenge) = webhook.challenge() {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        return r;
    }
    if !state.leader.allows() {
        // A follower's guards are not running; the leader's take the alert. Alertmanager
        // retries a 503, and the Service routes only to the ready leader.
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not the leader: send alerts to the Service, which routes to the leader",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json",
        );
    }
    let bytes = match read_body(body, webhook.max_body, headers).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let payload = match Payload::parse(&bytes) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let index = webhook.routes.get_or_init(|| Routes::new(&state.guards));
    match routing::dispatch(&state.guards, index, &state.metrics, &payload) {
        Ok(routed) => answer(
            StatusCode::OK,
            json!({ "alerts": payload.alerts.len(), "routed": routed }),
        ),
        Err(full) => error(StatusCode::SERVICE_UNAVAILABLE, &full.to_string()),
    }
}

async fn read_body(
    body: Body,
    max: usize,
    headers: &HeaderMap,
) -> std::result::Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body exceeds {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "failed to read the request body",
        )),
    }
}
