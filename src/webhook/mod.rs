//! `POST /webhook/alertmanager`: Alertmanager's webhook (payload version 4) as a trigger.
//!
//! This holds the handler and its intake steps, in order: rate limit (one global bucket, before
//! authentication, so a flood costs almost nothing), authentication in constant time, content
//! type, a bounded body read, then on a follower the forward to the leader ([`crate::forward`],
//! whose answer is the answer), and on the leader parsing ([`payload`]) and dispatch to the guards
//! ([`routing`]), all at once or not at all: a full queue gets a 503 with nothing enqueued, so
//! that Alertmanager retries it whole. Each
//! step that refuses returns a [`Rejection`], which alone turns into the answer (status, headers,
//! the one-line `{"error": ...}` body). It never waits on the Kubernetes API. Whether an alert
//! acts (window open, green version, after the cutover, once per window) is decided by
//! [`crate::decision`], not here; when rotated credentials take effect is decided by
//! [`crate::reload`] ([`credentials`] only applies them).

mod credentials;
mod payload;
mod routing;

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::json;
use tracing::warn;

pub use self::credentials::Credentials;
pub use self::payload::{Payload, PayloadAlert, PayloadError};
pub use self::routing::QueueFull;
pub(crate) use self::routing::Routes;
use crate::config::WebhookConfig;
use crate::error::Result;
use crate::fleet::Registry;
use crate::forward::{FORWARDED, Forwarder, Outcome};
use crate::leader::Fence;
use crate::metrics::Metrics;

/// The webhook's settings, secrets loaded.
pub struct Webhook {
    /// The credentials required, if any; rotated in place by [`crate::reload`].
    credentials: Option<Arc<Credentials>>,
    max_body: usize,
    limiter: DefaultDirectRateLimiter,
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

    /// One token from the global bucket, or how long until there is one.
    fn admit(&self) -> std::result::Result<(), Rejection> {
        self.limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Rejection::RateLimited {
                retry_after: seconds.max(1),
            }
        })
    }

    /// Whether the `Authorization` header is the accepted one; any request when the endpoint is
    /// open.
    fn authorize(&self, headers: &HeaderMap) -> std::result::Result<(), Rejection> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map_or(&[][..], HeaderValue::as_bytes);
        if credentials.accepts(given) {
            Ok(())
        } else {
            Err(Rejection::Unauthorized {
                challenge: credentials.challenge(),
            })
        }
    }
}

/// What the handler needs, and nothing more: the router's state derives it (axum's `FromRef`),
/// so the webhook does not depend on the rest of the HTTP side.
#[derive(Clone)]
pub struct WebhookState {
    /// The guards running now, with their alert routes.
    pub guards: Registry,
    pub webhook: Arc<Webhook>,
    pub metrics: Metrics,
    /// Only the leader's guards run, so only the leader takes alerts.
    pub leader: Fence,
    /// How a follower sends alerts on to the leader; `None` without leader election.
    pub forward: Option<Arc<Forwarder>>,
}

/// Why a request was not taken. Every refusal of every intake step is one of these, and so is
/// the routers' deadline; [`IntoResponse`] is the one place that turns it into the answer: its
/// status, the headers that go with it, and `{"error": "<this text>"}` on one line.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// 400: the body ended early or failed in transit.
    #[error("failed to read the request body")]
    UnreadableBody,
    /// 400: not JSON, not a payload, or not version 4.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// 401, with the scheme that would be accepted. The text says nothing of why: missing,
    /// malformed and wrong credentials look the same.
    #[error("unauthorized")]
    Unauthorized { challenge: HeaderValue },
    /// 413, whether declared by `Content-Length` or found while reading.
    #[error("body exceeds {max} bytes")]
    TooLarge { max: usize },
    /// 415.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// 429, with `Retry-After` in whole seconds, at least 1.
    #[error("rate limit exceeded")]
    RateLimited { retry_after: u64 },
    /// 503 with `Retry-After: 1`: this replica does not lead and may not forward, because the
    /// request was forwarded once already (the leader changed meanwhile). Alertmanager retries.
    #[error("not the leader, and the request was already forwarded once; retry")]
    NotLeader,
    /// 503: nothing of the payload was queued, so Alertmanager's retry delivers it once.
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
    /// 503: not answered within the routers' deadline (a body that trickles in); whatever the
    /// request would have done was dropped with it, so a retry is safe. 503, not 408, because
    /// Alertmanager retries a 5xx and gives up on a 4xx.
    #[error("request not answered within {}s; retry", .after.as_secs())]
    TimedOut { after: std::time::Duration },
}

impl Rejection {
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnreadableBody | Self::Payload(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotLeader | Self::QueueFull(_) | Self::TimedOut { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = Json(json!({ "error": self.to_string() })).into_response();
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized { challenge } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge);
            }
            Self::RateLimited { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Self::NotLeader => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// The 200's body: the payload's alerts, and how many deliveries that may act were queued.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub alerts: usize,
    pub routed: usize,
}

/// The handler: the intake steps in order, each refusing with a [`Rejection`]. Its answers are
/// counted by [`count`], which the router puts outside its deadline so that a request cut off
/// by it is counted too.
pub async fn alertmanager(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Body,
) -> std::result::Result<Response, Rejection> {
    let webhook = &state.webhook;
    webhook.admit()?;
    webhook.authorize(&headers)?;
    require_json(&headers)?;
    let bytes = read_body(body, webhook.max_body, &headers).await?;
    if !state.leader.allows() {
        return match &state.forward {
            Some(forward) if !headers.contains_key(FORWARDED) => {
                Ok(to_leader(forward, &state.metrics, &headers, bytes).await)
            }
            _ => Err(Rejection::NotLeader),
        };
    }
    let payload = Payload::parse(&bytes)?;
    let guards = state.guards.borrow().clone();
    let routed = routing::dispatch(&guards, &state.metrics, &payload)?;
    Ok(Json(Accepted {
        alerts: payload.alerts.len(),
        routed,
    })
    .into_response())
}

/// A follower's answer: the leader's, to the same body with the same credentials, or 503.
async fn to_leader(
    forward: &Forwarder,
    metrics: &Metrics,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut passed = HeaderMap::new();
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = headers.get(&name) {
            passed.insert(name, value.clone());
        }
    }
    let path = "/webhook/alertmanager";
    let (outcome, response) = match forward.send(Method::POST, path, passed, body).await {
        Ok(answer) if answer.status().is_success() => (Outcome::Ok, answer),
        Ok(answer) => (Outcome::LeaderError, answer),
        Err(unreachable) => {
            warn!(error = %unreachable, "failed to forward a webhook to the leader; answered 503");
            (unreachable.outcome(), unreachable.into_response())
        }
    };
    metrics
        .webhook_forwarded_total
        .with_label_values(&[outcome.as_label()])
        .inc();
    response
}

/// Counts a webhook answer in `webhook_requests_total` by its numeric status code: a layer
/// (`axum::middleware::map_response_with_state`) around the webhook's route.
pub async fn count(State(metrics): State<Metrics>, response: Response) -> Response {
    metrics
        .webhook_requests_total
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

/// `application/json`, with any parameters (`; charset=utf-8`), in any case.
fn require_json(headers: &HeaderMap) -> std::result::Result<(), Rejection> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(Rejection::UnsupportedMediaType)
    }
}

/// The body, at most `max` bytes: a `Content-Length` over it is refused before reading.
async fn read_body(
    body: Body,
    max: usize,
    headers: &HeaderMap,
) -> std::result::Result<Bytes, Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Rejection::TooLarge { max });
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Rejection::TooLarge { max })
        }
        Err(_) => Err(Rejection::UnreadableBody),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn answer(rejection: Rejection) -> (StatusCode, HeaderMap, String) {
        let (parts, body) = rejection.into_response().into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn every_rejection_answers_its_status_its_headers_and_a_one_line_json_error() {
        let Err(malformed) = Payload::parse(b"{") else {
            panic!("parsed");
        };
        let cases = [
            (Rejection::UnreadableBody, 400, None),
            (Rejection::Payload(malformed), 400, None),
            (
                Rejection::Unauthorized {
                    challenge: HeaderValue::from_static("Bearer realm=\"cutover-watchdog\""),
                },
                401,
                Some((
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"cutover-watchdog\"",
                )),
            ),
            (Rejection::TooLarge { max: 10 }, 413, None),
            (Rejection::UnsupportedMediaType, 415, None),
            (
                Rejection::RateLimited { retry_after: 3 },
                429,
                Some((header::RETRY_AFTER, "3")),
            ),
            (Rejection::NotLeader, 503, Some((header::RETRY_AFTER, "1"))),
            (
                Rejection::TimedOut {
                    after: std::time::Duration::from_secs(10),
                },
                503,
                None,
            ),
        ];
        for (rejection, status, header) in cases {
            let text = rejection.to_string();
            let (code, headers, body) = answer(rejection).await;
            assert_eq!(code.as_u16(), status, "{text}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert!(!body.contains('\n'), "{body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json, json!({ "error": text }));
            if let Some((name, value)) = header {
                assert_eq!(headers[name], value, "{text}");
            }
        }
    }
}
