//! `POST /webhook/alertmanager` through the router, on the real Alertmanager 0.25 payloads in
//! `tests/fixtures/alertmanager/` and on every kind of bad input.

// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::secrets::{
    BASIC_HEADER, BASIC_USER, PASSWORD, ROTATED_BASIC_HEADER, ROTATED_TOKEN, TOKEN, TOKEN_BASE64,
};
use cutover_watchdog::config::Config;
use cutover_watchdog::decision::{self, Decision, Signal};
use cutover_watchdog::forward::Forwarder;
use cutover_watchdog::guard::{AlertLog, GuardHandle, Input};
use cutover_watchdog::http::{AppState, REQUEST_TIMEOUT, router};
use cutover_watchdog::leader::{Fence, Lead};
use cutover_watchdog::metrics::Metrics;
use cutover_watchdog::webhook::Webhook;
use futures::StreamExt;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// What a guard's task reads its inputs from.
type Inbox = mpsc::Receiver<Box<Input>>;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/alertmanager/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

struct Harness {
    state: AppState,
    log: Arc<AlertLog>,
    inbox: Inbox,
    _dir: tempfile::TempDir,
}

/// The router's state for `config`'s guards, the i-th with room for `queues[i]` inputs; the
/// receiving end of each guard's queue and its alert log, in config order.
fn state(config: &Config, queues: &[usize]) -> (AppState, Vec<Inbox>, Vec<Arc<AlertLog>>) {
    let mut handles = Vec::new();
    let mut inboxes = Vec::new();
    let mut logs = Vec::new();
    for (g, queue) in config.guards.iter().zip(queues) {
        let g = Arc::new(g.clone());
        let (inbox_tx, inbox) = mpsc::channel(*queue);
        let log = Arc::new(AlertLog::default());
        handles.push(GuardHandle {
            ready: Arc::new(AtomicBool::new(true)),
            alerts: log.clone(),
            ..GuardHandle::detached(g, inbox_tx)
        });
        inboxes.push(inbox);
        logs.push(log);
    }
    let state = AppState {
        guards: cutover_watchdog::fleet::fixed(handles),
        metrics: Metrics::new().unwrap(),
        webhook: Arc::new(Webhook::from_config(&config.webhook).unwrap()),
        leader: Fence::open(),
        forward: None,
        prometheus: Arc::default(),
    };
    (state, inboxes, logs)
}

/// A bearer-token webhook (`webhook` adds keys under `webhook:`) with `guards` (the YAML list
/// under `guards:`).
fn bearer_config(dir: &Path, extra_webhook: &str, guards: &str) -> Config {
    let token = dir.join("token");
    std::fs::write(&token, format!("  {TOKEN}\n")).unwrap(); // whitespace and newline are trimmed
    let yaml = format!(
        "prometheus: {{url: 'http://127.0.0.1:9090'}}\n\
         webhook:\n  bearer_token_file: {}\n{extra_webhook}\
         guards:\n{guards}",
        token.display()
    );
    Config::from_yaml(&yaml).unwrap()
}

const CHECKOUT: &str =
    "- name: checkout\n  service: svc-production\n  alerts:\n    match: {app: my-microservice}\n";

fn harness(extra_webhook: &str, queue: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = bearer_config(dir.path(), extra_webhook, CHECKOUT);
    let (state, mut inboxes, mut logs) = self::state(&config, &[queue]);
    Harness {
        state,
        log: logs.remove(0),
        inbox: inboxes.remove(0),
        _dir: dir,
    }
}

/// A webhook taking basic auth as [`BASIC_USER`] with [`PASSWORD`], and one guard; the guard's
/// queue, and the temp dir holding the password file.
fn basic_auth_state() -> (AppState, Inbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let yaml = format!(
        "prometheus: {{url: 'http://127.0.0.1:9090'}}\nwebhook:\n  basic_auth: {{username: {BASIC_USER}, password_file: {}}}\n\
         guards:\n- name: checkout\n  service: svc-production\n",
        password.display()
    );
    let config = Config::from_yaml(&yaml).unwrap();
    let (state, mut inboxes, _) = self::state(&config, &[4]);
    (state, inboxes.remove(0), dir)
}

fn post() -> axum::http::request::Builder {
    Request::post("/webhook/alertmanager")
}

async fn send(app: Router, request: Request<Body>) -> (StatusCode, String, axum::http::HeaderMap) {
    let response = app.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        String::from_utf8_lossy(&body).into_owned(),
        parts.headers,
    )
}

fn authorized(body: Vec<u8>) -> Request<Body> {
    post()
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// (alertname, status, may act) of everything the webhook handed over: the ones that may act
/// through the guard's inbox, the others straight into its alert log.
fn drain(h: &mut Harness) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    while let Ok(input) = h.inbox.try_recv() {
        if let Input::Alert { seen, .. } = *input {
            out.push((seen.alertname, seen.status, true));
        }
    }
    for seen in h.log.snapshot() {
        out.push((seen.alertname, seen.status, false));
    }
    out
}

fn requests_with_code(h: &Harness, code: &str) -> u64 {
    let text = h.state.metrics.render();
    let series = format!("cutover_watchdog_webhook_requests_total{{code=\"{code}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_firing_critical_alert_is_delivered_to_its_guard_and_info_is_not() {
    let mut h = harness("", 16);
    let (code, body, _) = send(
        router(h.state.clone()),
        authorized(fixture("firing-critical-and-info.json")),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let delivered = drain(&mut h);
    assert_eq!(
        delivered.len(),
        3,
        "every matching alert is recorded for /v1/guards"
    );
    let acting: Vec<_> = delivered.iter().filter(|d| d.2).collect();
    assert_eq!(acting.len(), 1);
    assert_eq!(acting[0].0, "GreenErrorRateHigh");
    assert_eq!(requests_with_code(&h, "200"), 1);
}

#[tokio::test]
async fn resolved_and_info_only_payloads_change_nothing() {
    for name in [
        "critical-resolved-info-firing.json",
        "firing-info-only.json",
    ] {
        let mut h = harness("", 16);
        let (code, _, _) = send(router(h.state.clone()), authorized(fixture(name))).await;
        assert_eq!(code, StatusCode::OK);
        assert!(drain(&mut h).iter().all(|d| !d.2), "{name}: nothing acts");
        let text = h.state.metrics.render();
        assert!(
            text.contains("cutover_watchdog_alerts_received_total{status="),
            "{text}"
        );
    }
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_that_says_nothing_of_why() {
    let body = fixture("firing-critical-and-info.json");
    let mut bodies = Vec::new();
    let truncated = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let as_basic = format!("Basic {TOKEN_BASE64}");
    let lowercase = format!("bearer {TOKEN}");
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(truncated.as_str()),
        Some(as_basic.as_str()),
        Some(lowercase.as_str()),
    ] {
        let mut h = harness("", 16);
        let mut r = post().header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        let (code, text, headers) = send(
            router(h.state.clone()),
            r.body(Body::from(body.clone())).unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"cutover-watchdog\""
        );
        assert!(drain(&mut h).is_empty());
        assert_eq!(requests_with_code(&h, "401"), 1);
        bodies.push(text);
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "every 401 body is identical: {bodies:?}");
}

#[tokio::test]
async fn a_body_over_max_body_bytes_gets_413() {
    let mut h = harness("  max_body_bytes: 100\n", 16);
    let (code, body, _) = send(
        router(h.state.clone()),
        authorized(fixture("firing-critical-and-info.json")),
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // Without a Content-Length, the limit is enforced while reading.
    let stream = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(vec![b' '; 80]),
        Ok(vec![b' '; 80]),
    ]);
    let r = post()
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let (code, _, _) = send(router(h.state.clone()), r).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(drain(&mut h).is_empty());
    assert_eq!(requests_with_code(&h, "413"), 2);
}

#[tokio::test]
async fn a_content_type_other_than_json_gets_415() {
    let h = harness("", 16);
    let body = fixture("firing-critical-and-info.json");
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut r = post().header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(ct) = ct {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        let (code, _, _) = send(
            router(h.state.clone()),
            r.body(Body::from(body.clone())).unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
    }
    let r = post()
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(router(h.state.clone()), r).await.0, StatusCode::OK);
}

#[tokio::test]
async fn malformed_json_and_non_v4_payloads_get_400_with_a_one_line_json_error() {
    let mut v3: serde_json::Value =
        serde_json::from_slice(&fixture("firing-info-only.json")).unwrap();
    v3["version"] = "3".into();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed JSON"),
        (b"[]".to_vec(), "not an Alertmanager webhook payload"),
        (br#"{"version":"4","status":"firing"}"#.to_vec(), "alerts"),
        (br#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"a":1}}]}"#.to_vec(), "not an Alertmanager"),
        (br#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{},"startsAt":"yesterday"}]}"#.to_vec(), "not an Alertmanager"),
        (serde_json::to_vec(&v3).unwrap(), "unsupported payload version \"3\""),
    ];
    for (body, expected) in cases {
        let mut h = harness("", 16);
        let (code, text, _) = send(router(h.state.clone()), authorized(body.clone())).await;
        assert_eq!(
            code,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(!text.contains('\n'), "one line: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(expected),
            "{text}"
        );
        assert!(drain(&mut h).is_empty());
    }
}

#[tokio::test]
async fn above_the_rate_limit_requests_get_429_with_retry_after_before_authentication() {
    let h = harness("  rate_limit: {per_second: 1, burst: 3}\n", 16);
    let mut codes = Vec::new();
    for _ in 0..5 {
        // Unauthenticated on purpose: the limit applies first, so a flood costs almost nothing.
        let r = post().body(Body::empty()).unwrap();
        let (code, _, headers) = send(router(h.state.clone()), r).await;
        if code == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = headers[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
        }
        codes.push(code.as_u16());
    }
    assert_eq!(codes, vec![401, 401, 401, 429, 429]);
    assert_eq!(requests_with_code(&h, "429"), 2);
}

#[tokio::test]
async fn a_full_guard_queue_gets_503_so_alertmanager_retries() {
    // Room for one alert that may act; nobody drains the queue.
    let h = harness("", 1);
    let post = || {
        send(
            router(h.state.clone()),
            authorized(fixture("firing-critical-and-info.json")),
        )
    };
    assert_eq!(post().await.0, StatusCode::OK);
    assert_eq!(post().await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(requests_with_code(&h, "503"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_body_stalls_gets_503_at_the_request_timeout_and_is_counted() {
    let mut h = harness("", 16);
    // The start of a payload, then nothing more, ever: the connection stays open.
    let stalled = futures::stream::once(async {
        Ok::<_, std::io::Error>(b"{\"version\": \"4\", \"alerts\": [".to_vec())
    })
    .chain(futures::stream::pending());
    let request = post()
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stalled))
        .unwrap();
    let started = tokio::time::Instant::now();
    let (code, body, _) = send(router(h.state.clone()), request).await;
    let waited = started.elapsed();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        (REQUEST_TIMEOUT..REQUEST_TIMEOUT + Duration::from_secs(1)).contains(&waited),
        "answered after {waited:?}"
    );
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        error,
        serde_json::json!({ "error": "request not answered within 10s; retry" })
    );
    assert!(drain(&mut h).is_empty(), "nothing of it is delivered");
    assert_eq!(requests_with_code(&h, "503"), 1);
}

/// Every line logged while a test runs, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_request_log_has_method_path_and_status_but_no_header_or_query() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let h = harness("", 16);
    let requests = || async {
        for authorization in [format!("Bearer {TOKEN}"), BASIC_HEADER.to_owned()] {
            let request = Request::post(format!("/webhook/alertmanager?token={ROTATED_TOKEN}"))
                .header(header::AUTHORIZATION, authorization)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(fixture("firing-info-only.json")))
                .unwrap();
            send(router(h.state.clone()), request).await;
        }
    };
    // The other tests run meanwhile, on other threads without this subscriber: a log call site
    // one of them was registering just as it arrived may have missed it. Once every call site
    // on this path is registered, recompute which are wanted, then log for real.
    requests().await;
    tracing::callsite::rebuild_interest_cache();
    captured.0.lock().unwrap().clear();
    requests().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("finished processing request")
            && text.contains("path=/webhook/alertmanager")
            && text.contains("method=POST")
            && text.contains("status=200")
            && text.contains("status=401"),
        "{text}"
    );
    for secret in [TOKEN, BASIC_HEADER, ROTATED_TOKEN, "authorization"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}

#[tokio::test]
async fn basic_auth_is_an_alternative_to_a_bearer_token() {
    let (state, _inbox, _dir) = basic_auth_state();
    let body = fixture("firing-info-only.json");
    let request = |auth: &str| {
        post()
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .unwrap()
    };
    assert_eq!(
        send(router(state.clone()), request(BASIC_HEADER)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(router(state), request(ROTATED_BASIC_HEADER)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_401_under_basic_auth_asks_for_basic_credentials() {
    let (state, _inbox, _dir) = basic_auth_state();
    let body = fixture("firing-info-only.json");
    for auth in [
        None,
        Some(format!("Bearer {TOKEN}")),
        Some(ROTATED_BASIC_HEADER.to_owned()),
    ] {
        let mut r = post().header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = &auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        let (code, _, headers) = send(
            router(state.clone()),
            r.body(Body::from(body.clone())).unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            "Basic realm=\"cutover-watchdog\"",
            "{auth:?}"
        );
    }
}

#[tokio::test]
async fn a_full_queue_for_one_guard_queues_the_alert_to_no_guard() {
    // Two guards take the same critical alert; `canary` has room for one input, `checkout` for
    // four, and nobody drains either.
    let dir = tempfile::tempdir().unwrap();
    let canary =
        "- name: canary\n  service: svc-canary\n  alerts:\n    match: {app: my-microservice}\n";
    let config = bearer_config(dir.path(), "", &format!("{CHECKOUT}{canary}"));
    let (state, mut inboxes, logs) = self::state(&config, &[4, 1]);
    let post = || {
        send(
            router(state.clone()),
            authorized(fixture("firing-critical-and-info.json")),
        )
    };
    assert_eq!(post().await.0, StatusCode::OK);
    let logged =
        |logs: &[Arc<AlertLog>]| logs.iter().map(|l| l.snapshot().len()).collect::<Vec<_>>();
    let before = logged(&logs);

    // `canary`'s queue is full: the retry Alertmanager makes must be the only delivery.
    let (code, body, _) = post().await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("guard canary"), "{body}");
    assert_eq!(
        inboxes[0].len(),
        1,
        "checkout got the refused payload's alert"
    );
    assert_eq!(inboxes[1].len(), 1);
    assert_eq!(logged(&logs), before, "the refused payload was recorded");

    // Once there is room, the retry reaches both.
    inboxes[1].try_recv().unwrap();
    assert_eq!(post().await.0, StatusCode::OK);
    assert_eq!(inboxes[0].len(), 2);
    assert_eq!(inboxes[1].len(), 1);
}

#[tokio::test]
async fn a_warning_alert_that_acts_is_named_as_a_warning_in_the_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let guard = "- name: checkout\n  service: svc-production\n  alerts:\n    match: {app: my-microservice}\n    severities: [warning]\n";
    let config = bearer_config(dir.path(), "", guard);
    let (state, mut inboxes, _) = self::state(&config, &[4]);
    let mut payload: serde_json::Value =
        serde_json::from_slice(&fixture("firing-critical-and-info.json")).unwrap();
    let alert = &mut payload["alerts"][2];
    alert["labels"]["alertname"] = "HighLatency".into();
    alert["labels"]["severity"] = "warning".into();
    let body = serde_json::to_vec(&payload).unwrap();
    assert_eq!(
        send(router(state), authorized(body)).await.0,
        StatusCode::OK
    );
    let Ok(Input::Alert { alert, .. }) = inboxes[0].try_recv().map(|input| *input) else {
        panic!("the warning alert was not delivered");
    };

    // The guard's core, in a window for v2, acts on it.
    let mut core = decision::Guard::new(decision::Policy::from(&config.guards[0]));
    let now = jiff::Timestamp::now();
    for version in ["v1", "v2"] {
        let observed = Signal::Observed {
            version: Some(version.into()),
            persisted: None,
            resource_version: None,
            baseline: Some("v1".into()),
            changed_at: None,
            relisted: false,
            changed_by: None,
        };
        core.handle(observed, now);
    }
    let decisions = core.handle(Signal::Alert(alert), now);
    let Some(Decision::RollBack { trigger, state, .. }) = decisions.first() else {
        panic!("no rollback: {decisions:?}");
    };
    assert_eq!(trigger.describe(), "warning alert HighLatency");
    assert_eq!(state.reason, "warning alert HighLatency");
    assert_eq!(trigger.label(), "alert", "the metric label stays `alert`");
}

#[tokio::test]
async fn fields_the_watchdog_does_not_read_cannot_get_a_payload_refused() {
    // Alertmanager 0.25's top-level `status` and each alert's `endsAt` decide nothing here.
    let mut payload: serde_json::Value =
        serde_json::from_slice(&fixture("firing-critical-and-info.json")).unwrap();
    payload.as_object_mut().unwrap().remove("status");
    for alert in payload["alerts"].as_array_mut().unwrap() {
        alert["endsAt"] = "not a time".into();
    }
    let mut h = harness("", 16);
    let body = serde_json::to_vec(&payload).unwrap();
    let (code, text, _) = send(router(h.state.clone()), authorized(body)).await;
    assert_eq!(code, StatusCode::OK, "{text}");
    let acting: Vec<_> = drain(&mut h).into_iter().filter(|d| d.2).collect();
    assert_eq!(acting.len(), 1, "{acting:?}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(Into::into),
        any::<i64>().prop_map(Into::into),
        ".{0,12}".prop_map(Into::into),
        Just("4".into()),
        Just("firing".into()),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("version".to_owned()),
            Just("alerts".to_owned()),
            Just("status".to_owned()),
            Just("labels".to_owned()),
            Just("startsAt".to_owned()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Into::into),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_always_get_a_4xx(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let h = harness("  rate_limit: {per_second: 100000, burst: 100000}\n", 64);
        let (code, _, _) = runtime().block_on(send(router(h.state.clone()), authorized(bytes)));
        prop_assert!(code.is_client_error(), "{code}");
    }

    #[test]
    fn arbitrary_json_never_panics_and_is_a_4xx_unless_it_is_a_valid_payload(value in arbitrary_json()) {
        let h = harness("  rate_limit: {per_second: 100000, burst: 100000}\n", 64);
        let body = serde_json::to_vec(&value).unwrap();
        let (code, _, _) = runtime().block_on(send(router(h.state.clone()), authorized(body)));
        let valid = serde_json::from_value::<cutover_watchdog::webhook::Payload>(value.clone())
            .is_ok_and(|p| p.version == "4");
        if valid {
            prop_assert_eq!(code, StatusCode::OK);
        } else {
            prop_assert!(code.is_client_error(), "{} for {}", code, value);
        }
    }
}

/// A stub leader on loopback: answers the webhook with `status` and a body, and keeps each
/// request's headers.
async fn stub_leader(status: StatusCode) -> (String, Arc<Mutex<Vec<axum::http::HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let answer = move |headers: axum::http::HeaderMap| {
        let kept = kept.clone();
        async move {
            kept.lock().unwrap().push(headers);
            (
                status,
                [(header::RETRY_AFTER, "7")],
                "{\"from\":\"leader\"}",
            )
        }
    };
    let app = Router::new()
        .route("/webhook/alertmanager", axum::routing::post(answer.clone()))
        .route("/v1/guards", axum::routing::get(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

/// The harness's state as a follower's: its fence closed, forwarding to whoever `lead` names.
fn follower(h: &mut Harness, lead: Lead) -> tokio::sync::watch::Sender<Lead> {
    let (tx, rx) = tokio::sync::watch::channel(lead);
    let config = Config::from_yaml(
        "prometheus: {url: 'http://127.0.0.1:9090'}\nleader_election: {forward_timeout: 300ms}\n\
         guards: [{name: c, service: s}]\n",
    )
    .unwrap();
    let forward = Forwarder::new(config.leader_election.as_ref().unwrap(), false, rx).unwrap();
    h.state.leader = Fence::closed();
    h.state.forward = Some(Arc::new(forward));
    tx
}

fn forwards(h: &Harness, result: &str) -> Option<f64> {
    common::metric(
        &h.state.metrics.render(),
        &format!("cutover_watchdog_webhook_forwarded_total{{result=\"{result}\"}}"),
    )
}

fn held(holder: &str, address: &str) -> Lead {
    Lead::Held {
        holder: holder.into(),
        address: Some(address.into()),
    }
}

#[tokio::test]
async fn a_follower_passes_on_the_leaders_answer_with_the_credentials_and_the_forwarded_mark() {
    let mut h = harness("", 4);
    let (address, seen) = stub_leader(StatusCode::SERVICE_UNAVAILABLE).await;
    let _lead = follower(&mut h, held("a", &address));
    let body = fixture("firing-critical-and-info.json");
    let (status, text, headers) = send(router(h.state.clone()), authorized(body)).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the leader's status"
    );
    assert_eq!(text, "{\"from\":\"leader\"}");
    assert_eq!(headers[header::RETRY_AFTER], "7");
    assert_eq!(headers["x-cutover-watchdog-leader"], "a");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0][header::AUTHORIZATION], format!("Bearer {TOKEN}"));
    assert_eq!(seen[0]["x-cutover-watchdog-forwarded"], "1");
    assert_eq!(forwards(&h, "leader_error"), Some(1.0), "not 2xx");
    assert!(
        h.inbox.try_recv().is_err(),
        "a follower's guards take nothing"
    );
}

#[tokio::test]
async fn a_follower_authenticates_before_it_forwards() {
    let mut h = harness("", 4);
    let (address, seen) = stub_leader(StatusCode::OK).await;
    let _lead = follower(&mut h, held("a", &address));
    let request = post()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(fixture("firing-critical-and-info.json")))
        .unwrap();
    let (status, _, _) = send(router(h.state.clone()), request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(forwards(&h, "ok"), Some(0.0));
}

#[tokio::test]
async fn a_follower_never_forwards_a_request_that_was_forwarded_already() {
    let mut h = harness("", 4);
    let (address, seen) = stub_leader(StatusCode::OK).await;
    let _lead = follower(&mut h, held("a", &address));
    let mut request = authorized(fixture("firing-critical-and-info.json"));
    request
        .headers_mut()
        .insert("x-cutover-watchdog-forwarded", "1".parse().unwrap());
    let (status, text, headers) = send(router(h.state.clone()), request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(text.contains("already forwarded once"), "{text}");
    assert!(seen.lock().unwrap().is_empty(), "no second hop");
}

#[tokio::test]
async fn a_follower_that_knows_no_leader_or_no_address_answers_503_to_retry() {
    let mut h = harness("", 4);
    let lead = follower(&mut h, Lead::Vacant);
    let (status, text, headers) = send(
        router(h.state.clone()),
        authorized(fixture("firing-critical-and-info.json")),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(text.contains("no leader known"), "{text}");
    lead.send_replace(Lead::Held {
        holder: "a".into(),
        address: None,
    });
    let (status, text, _) = send(
        router(h.state.clone()),
        authorized(fixture("firing-critical-and-info.json")),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("leader a published no address"), "{text}");
    assert_eq!(forwards(&h, "no_leader"), Some(2.0));
}

#[tokio::test]
async fn a_forward_the_leader_does_not_answer_in_time_is_503_and_counted_timeout() {
    let mut h = harness("", 4);
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let _lead = follower(&mut h, held("a", &address));
    let (status, text, _) = send(
        router(h.state.clone()),
        authorized(fixture("firing-critical-and-info.json")),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("did not answer within 300ms"), "{text}");
    assert_eq!(forwards(&h, "timeout"), Some(1.0));
}

#[tokio::test]
async fn guards_on_a_follower_is_the_leaders_view_naming_it_or_503_naming_it() {
    let mut h = harness("", 4);
    let (address, _) = stub_leader(StatusCode::OK).await;
    let lead = follower(&mut h, held("a", &address));
    let get = || Request::get("/v1/guards").body(Body::empty()).unwrap();
    let (status, text, headers) = send(router(h.state.clone()), get()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "{\"from\":\"leader\"}");
    assert_eq!(headers["x-cutover-watchdog-leader"], "a");

    // Nothing listens there any more.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = gone.local_addr().unwrap().to_string();
    drop(gone);
    lead.send_replace(held("a", &address));
    let (status, text, _) = send(router(h.state.clone()), get()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        text.contains(&format!("leader a at {address} could not be reached")),
        "{text}"
    );
}
