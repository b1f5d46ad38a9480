//! `POST /webhook/alertmanager`: Alertmanager's webhook (payload version 4) as a trigger.
//!
//! The handler rate-limits (one global bucket, before authentication, so a flood costs almost
//! nothing), authenticates in constant time, bounds the body, validates the payload, routes each
//! alert to the guards whose `alerts.match` it satisfies, and answers. It never waits on the
//! Kubernetes API: a payload's alerts are enqueued to the guards' tasks all at once or not at
//! all, and a full queue gets a 503 with nothing enqueued, so that Alertmanager retries it whole
//! (a follower, which runs no guards, answers 503 too). Whether an alert acts (window open, green
//! version, after the cutover, once per window) is decided by [`crate::decision`], not here. The
//! accepted credentials are swapped in place when their file is rotated; [`crate::reload`]
//! decides when.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

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
use tracing::debug;

use crate::config::WebhookConfig;
use crate::decision::Alert;
use crate::error::{Error, Result};
use crate::guard::{AlertSeen, GuardHandle, Input};
use crate::http::AppState;
use crate::reload::{Reload, SecretKind, Watched};

/// The webhook's settings, secrets loaded.
pub struct Webhook {
    /// The credentials required, if any; rotated in place by [`crate::reload`].
    credentials: Option<Arc<Credentials>>,
    max_body: usize,
    limiter: DefaultDirectRateLimiter,
    /// Built on the first request from the guards, which are fixed for the process.
    routes: OnceLock<Routes>,
}

/// Which guards an alert may match, found by label lookups instead of a scan of every guard:
/// each guard is filed under the first label of its `alerts.match`, which any alert it matches
/// must carry. With a thousand guards the scan was most of a request's cost.
#[derive(Default)]
struct Routes {
    /// label key -> label value -> guard indices, ascending.
    by: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl Routes {
    fn new(guards: &[GuardHandle]) -> Self {
        let mut routes = Self::default();
        for (i, g) in guards.iter().enumerate() {
            let first = g
                .config
                .alerts
                .as_ref()
                .and_then(|a| a.match_labels.iter().next());
            if let Some((key, value)) = first {
                routes
                    .by
                    .entry(key.clone())
                    .or_default()
                    .entry(value.clone())
                    .or_default()
                    .push(i);
            }
        }
        routes
    }

    /// Guards whose first match label `labels` carry, in config order; the caller checks the
    /// rest of each guard's `alerts.match`.
    fn candidates(&self, labels: &BTreeMap<String, String>) -> Vec<usize> {
        let mut found: Vec<usize> = self
            .by
            .iter()
            .filter_map(|(key, values)| values.get(labels.get(key)?))
            .flatten()
            .copied()
            .collect();
        found.sort_unstable();
        found
    }
}

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// A secret file's contents: trimmed of surrounding whitespace and the trailing newline, and
/// never empty. Errors name the key and path, never the contents.
fn parse_secret(key: &str, path: &Path, bytes: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::Unusable(format!("{key} {} is not UTF-8 text", path.display())))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(Error::Unusable(format!(
            "{key} {} is empty",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

/// SHA-256 of the `Authorization` header value `contents` (the secret file's) make.
fn header_digest(
    scheme: &Scheme,
    key: &str,
    path: &Path,
    contents: &[Vec<u8>],
) -> Result<[u8; 32]> {
    let bytes = contents.first().map_or(&[][..], Vec::as_slice);
    let secret = parse_secret(key, path, bytes)?;
    Ok(match scheme {
        Scheme::Bearer => digest(format!("Bearer {secret}").as_bytes()),
        Scheme::Basic { username } => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
            digest(format!("Basic {encoded}").as_bytes())
        }
    })
}

/// How the accepted `Authorization` header is built from the secret.
enum Scheme {
    Bearer,
    Basic { username: String },
}

impl Scheme {
    /// The `WWW-Authenticate` challenge of a 401: the scheme that would be accepted, so a client
    /// sent the wrong kind of credentials learns which kind to send.
    fn challenge(&self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Bearer => "Bearer realm=\"cutover-watchdog\"",
            Self::Basic { .. } => "Basic realm=\"cutover-watchdog\"",
        })
    }
}

/// The `Authorization` header the webhook accepts, from a file that may be rotated.
pub struct Credentials {
    kind: SecretKind,
    key: &'static str,
    path: PathBuf,
    scheme: Scheme,
    watched: Watched,
    /// SHA-256 of the exact `Authorization` header value that is accepted. Comparing digests
    /// keeps the comparison constant-time whatever the lengths, and keeps no secret in memory
    /// longer than a load.
    expected: RwLock<[u8; 32]>,
}

impl Credentials {
    /// The credentials `config` asks for, loaded; `None` when the endpoint is open.
    pub fn from_config(config: &WebhookConfig) -> Result<Option<Self>> {
        let (kind, key, path, scheme) = if let Some(path) = &config.bearer_token_file {
            (
                SecretKind::Token,
                "webhook.bearer_token_file",
                path,
                Scheme::Bearer,
            )
        } else if let Some(basic) = &config.basic_auth {
            let scheme = Scheme::Basic {
                username: basic.username.clone(),
            };
            (
                SecretKind::Password,
                "webhook.basic_auth.password_file",
                &basic.password_file,
                scheme,
            )
        } else {
            return Ok(None);
        };
        let watched = Watched::new(vec![(key, path.clone())]);
        let expected = header_digest(&scheme, key, path, &watched.read()?)?;
        Ok(Some(Self {
            kind,
            key,
            path: path.clone(),
            scheme,
            watched,
            expected: RwLock::new(expected),
        }))
    }

    /// Whether `given` (the raw header value) is the accepted one, in constant time.
    fn accepts(&self, given: &[u8]) -> bool {
        let expected = *self.expected.read().unwrap_or_else(PoisonError::into_inner);
        digest(given).ct_eq(&expected).into()
    }
}

impl Reload for Credentials {
    fn kind(&self) -> SecretKind {
        self.kind
    }

    fn watched(&self) -> &Watched {
        &self.watched
    }

    fn apply(&self, contents: &[Vec<u8>]) -> Result<()> {
        let expected = header_digest(&self.scheme, self.key, &self.path, contents)?;
        *self
            .expected
            .write()
            .unwrap_or_else(PoisonError::into_inner) = expected;
        Ok(())
    }
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
        self.credentials.as_ref().map(|c| c.scheme.challenge())
    }
}

/// Alertmanager's webhook body, version 4: only the fields the watchdog reads. The others
/// (`status`, `receiver`, `groupLabels`, an alert's `endsAt`, `annotations`, ...) are ignored
/// unparsed, so no value in them can get a payload refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    /// For the debug log of alerts that do not act.
    #[serde(default)]
    pub group_key: String,
    pub alerts: Vec<PayloadAlert>,
}

/// One alert of a [`Payload`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadAlert {
    /// `firing` or `resolved`; only a firing alert acts.
    pub status: String,
    pub labels: BTreeMap<String, String>,
    /// An alert without the guard's version label that started before the cutover does not act.
    #[serde(default)]
    pub starts_at: Option<Timestamp>,
    /// Kept for `/v1/guards`.
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

/// The webhook's alert routes, built from the guards on first use.
fn webhook_routes(state: &AppState) -> &Routes {
    state
        .webhook
        .routes
        .get_or_init(|| Routes::new(&state.guards))
}

/// Routes each alert to the guards it matches, to all of them or to none: room is reserved in
/// every target guard's queue before anything is queued or recorded, so a 503 (a queue full, or
/// closed at shutdown) leaves nothing behind for Alertmanager's retry to deliver twice.
fn dispatch(state: &AppState, payload: &Payload) -> Response {
    let now = Timestamp::now();
    let mut deliveries: Vec<(&GuardHandle, Input)> = Vec::new();
    let mut records: Vec<(&GuardHandle, AlertSeen)> = Vec::new();
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
        let candidates = webhook_routes(state).candidates(&alert.labels);
        for guard in candidates.into_iter().filter_map(|i| state.guards.get(i)) {
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
                // Nothing for the decision core: recorded for /v1/guards once the payload is taken.
                records.push((guard, seen));
                continue;
            }
            let input = Input::Alert {
                alert: Alert {
                    alertname: alertname.clone(),
                    // Present: only a listed severity acts.
                    severity: severity.unwrap_or_default().to_owned(),
                    version: alert.labels.get(&guard.config.version_label).cloned(),
                    starts_at: alert.starts_at,
                },
                seen,
            };
            deliveries.push((guard, input));
        }
    }
    let mut permits = Vec::with_capacity(deliveries.len());
    for (guard, _) in &deliveries {
        // Dropping the permits taken so far, on return, gives their room back.
        let Ok(permit) = guard.inbox.try_reserve() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "guard {} cannot take alerts right now; retry",
                    guard.config.name
                ),
            );
        };
        permits.push(permit);
    }
    let routed = deliveries.len();
    for (permit, (_, input)) in permits.into_iter().zip(deliveries) {
        permit.send(input);
    }
    for (guard, seen) in records {
        guard.alerts.record(seen);
    }
    answer(
        StatusCode::OK,
        json!({ "alerts": payload.alerts.len(), "routed": routed }),
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::reload::Reloader;

    /// Every line logged while a test runs, at every level.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn token_rotation_and_its_failures_are_logged_without_the_token() {
        const FIRST: &str = "first-unit-token-5b1e";
        const SECOND: &str = "second-unit-token-90d2";
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{FIRST}\n")).unwrap();
        let config = Config::from_yaml(&format!(
            "prometheus: {{url: 'http://127.0.0.1:9090'}}\nwebhook: {{bearer_token_file: {}}}\nguards:\n- {{name: g, service: s}}\n",
            token.display()
        ))
        .unwrap();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let metrics = Metrics::new().unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let webhook = Webhook::from_config(&config.webhook).unwrap();
            let reloader = Reloader {
                targets: vec![webhook.credentials().unwrap()],
                metrics: metrics.clone(),
                interval: std::time::Duration::from_secs(1),
            };
            let accepts = |t: &str| webhook.authorized(&headers(&format!("Bearer {t}")));
            assert!(accepts(FIRST) && !accepts(SECOND));

            std::fs::write(&token, SECOND).unwrap();
            reloader.check();
            assert!(accepts(SECOND) && !accepts(FIRST), "rotated");

            std::fs::write(&token, " \n").unwrap();
            reloader.check();
            reloader.check(); // the same bad contents warn once
            std::fs::remove_file(&token).unwrap();
            reloader.check();
            assert!(
                accepts(SECOND),
                "an empty or missing file keeps the previous token"
            );

            std::fs::write(&token, FIRST).unwrap();
            reloader.check();
            assert!(
                accepts(FIRST) && !accepts(SECOND),
                "back after the failures"
            );
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("secret reloaded").count(), 2, "{text}");
        assert_eq!(text.matches("secret reload failed").count(), 2, "{text}");
        assert!(
            text.contains("is empty") && text.contains("failed to read"),
            "{text}"
        );
        for secret in [FIRST, SECOND] {
            assert!(!text.contains(secret), "{secret} logged:\n{text}");
        }
        let series = "cutover_watchdog_secret_reload_errors_total{file=\"token\"} 2";
        assert!(metrics.render().contains(series), "{}", metrics.render());
    }
}
