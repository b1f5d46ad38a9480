//! `POST /webhook/alertmanager`: Alertmanager's webhook (payload version 4) as a trigger.
//!
//! The handler rate-limits (one global bucket, before authentication, so a flood costs almost
//! nothing), authenticates in constant time, bounds the body, validates the payload, routes each
//! alert to the guards whose `alerts.match` it satisfies, and answers. It never waits on the
//! Kubernetes API: alerts are enqueued to the guards' tasks, and only a full queue gets a 503, so
//! that Alertmanager retries. Whether an alert acts (window open, green version, after the
//! cutover, once per window) is decided by [`crate::decision`], not here.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::error::TrySendError;
use tracing::debug;

use crate::config::WebhookConfig;
use crate::decision::Alert;
use crate::error::{Error, Result};
use crate::guard::{AlertSeen, Input};
use crate::http::AppState;

/// The webhook's settings, secrets loaded.
pub struct Webhook {
    /// SHA-256 of the exact `Authorization` header value that is accepted, if any is required.
    /// Comparing digests keeps the comparison constant-time whatever the lengths.
    expected: Option<[u8; 32]>,
    max_body: usize,
    limiter: DefaultDirectRateLimiter,
}

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// Reads a secret file, trimming surrounding whitespace and the trailing newline.
pub fn read_secret(key: &str, path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("failed to read {key} {}", path.display()),
        source,
    })?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(Error::Unusable(format!(
            "{key} {} is empty",
            path.display()
        )));
    }
    Ok(secret)
}

impl Webhook {
    /// Loads the secrets the config points at.
    pub fn from_config(config: &WebhookConfig) -> Result<Self> {
        let expected = if let Some(path) = &config.bearer_token_file {
            let token = read_secret("webhook.bearer_token_file", path)?;
            Some(digest(format!("Bearer {token}").as_bytes()))
        } else if let Some(basic) = &config.basic_auth {
            let password = read_secret("webhook.basic_auth.password_file", &basic.password_file)?;
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", basic.username));
            Some(digest(format!("Basic {encoded}").as_bytes()))
        } else {
            None
        };
        let per_second = NonZeroU32::new(config.rate_limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit.burst).unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            expected,
            max_body: config.max_body_bytes,
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
        })
    }

    /// Whether requests need credentials.
    #[must_use]
    pub fn authenticates(&self) -> bool {
        self.expected.is_some()
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map_or(&[][..], HeaderValue::as_bytes);
        digest(given).ct_eq(expected).into()
    }
}

/// Alertmanager's webhook body, version 4. Unknown fields are ignored, as Alertmanager adds some.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    pub status: String,
    pub alerts: Vec<PayloadAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadAlert {
    pub status: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: Option<Timestamp>,
    /// `0001-01-01T00:00:00Z` means unset, for a firing alert.
    #[serde(default)]
    pub ends_at: Option<Timestamp>,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    answer(code, json!({ "error": message }))
}

/// The handler: every outcome is counted by its numeric status code.
pub async fn alertmanager(
    State(state): State<AppState>,
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

async fn intake(state: &AppState, headers: &HeaderMap, body: Body) -> Response {
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
        let scheme = HeaderValue::from_static("Bearer realm=\"cutover-watchdog\"");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, scheme);
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
    let payload: Payload = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            let kind = if e.is_data() {
                "not an Alertmanager webhook payload"
            } else {
                "malformed JSON"
            };
            return error(StatusCode::BAD_REQUEST, &format!("{kind}: {e}"));
        }
    };
    if payload.version != "4" {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unsupported payload version {:?}; expected \"4\"",
                payload.version
            ),
        );
    }
    dispatch(state, &payload)
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

/// Routes each alert to the guards it matches. Answers 503 only when a guard's queue is full.
fn dispatch(state: &AppState, payload: &Payload) -> Response {
    let now = Timestamp::now();
    let mut routed = 0usize;
    for alert in &payload.alerts {
        let status = match alert.status.as_str() {
            "firing" => "firing",
            "resolved" => "resolved",
            _ => "unknown",
        };
        state
            .metrics
            .alerts_received_total
            .with_label_values(&[status])
            .inc();
        let alertname = alert.labels.get("alertname").cloned().unwrap_or_default();
        let severity = alert.labels.get("severity").map(String::as_str);
        for guard in state.guards.iter() {
            let Some(rule) = guard
                .config
                .alerts
                .as_ref()
                .filter(|r| r.matches(&alert.labels))
            else {
                continue;
            };
            let acts = status == "firing" && rule.acts_on(severity);
            let outcome = match (status, acts) {
                (_, true) => "delivered",
                ("firing", false) => "ignored: severity not listed",
                ("resolved", _) => "ignored: resolved",
                _ => "ignored: unknown status",
            };
            if !acts {
                debug!(guard = %guard.config.name, alertname, status, severity, group_key = %payload.group_key, "alert recorded, no action");
            }
            let seen = AlertSeen {
                at: now,
                alertname: alertname.clone(),
                status: status.to_owned(),
                severity: severity.map(str::to_owned),
                fingerprint: alert.fingerprint.clone(),
                outcome,
            };
            if !acts {
                // Nothing for the decision core: record it for /v1/guards and move on.
                guard.alerts.record(seen);
                continue;
            }
            let input = Input::Alert {
                alert: Alert {
                    alertname: alertname.clone(),
                    version: alert.labels.get(&guard.config.version_label).cloned(),
                    starts_at: alert.starts_at,
                },
                seen,
            };
            match guard.inbox.try_send(input) {
                Ok(()) => routed += 1,
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "guard {} cannot take alerts right now; retry",
                            guard.config.name
                        ),
                    );
                }
            }
        }
    }
    answer(
        StatusCode::OK,
        json!({ "alerts": payload.alerts.len(), "routed": routed }),
    )
}
