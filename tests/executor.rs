//! Fast tests for the executor, the one writer: a scripted Kubernetes API (kube's `tower-test`
//! pattern) checks each request in order and answers it, and time is paused, so timeouts and
//! backoff run in virtual time. No processes, no sockets; the end-to-end tests prove the same
//! on real parts.

// Test code: a failed setup step should panic right there; counters are small whole numbers.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use cutover_watchdog::config::Config;
use cutover_watchdog::decision::{Decision, Outcome, Persisted, Phase, Signal, Trigger};
use cutover_watchdog::executor::{Command, Executor, Target};
use cutover_watchdog::leader::{Elector, Fence};
use cutover_watchdog::metrics::Metrics;
use cutover_watchdog::service::ServiceHandle;
use http_body_util::BodyExt;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_test::mock::{self, Handle, SendResponse};

const KUBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The scripted API: every request the executor sends, in order.
struct Api(Handle<Request<Body>, Response<Body>>);

/// One request as the script sees it.
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
    /// Taken by whoever answers; dropped unanswered, the request never gets an answer.
    answer: Option<SendResponse<Response<Body>>>,
}

impl Api {
    /// The next request, whatever it is.
    async fn next(&mut self) -> Seen {
        let next = tokio::time::timeout(Duration::from_mins(1), self.0.next_request());
        let (request, answer) = next
            .await
            .expect("a request within a minute (of virtual time)")
            .expect("the client alive");
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Seen {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            answer: Some(answer),
        }
    }

    /// The next request, which must be `method` on `path`.
    async fn expect(&mut self, method: Method, path: &str) -> Seen {
        let seen = self.next().await;
        assert_eq!(
            (&seen.method, seen.path.as_str()),
            (&method, path),
            "requests out of order"
        );
        seen
    }

    /// Expects `method` on `path` and answers it with `status` and `body`.
    async fn answer(&mut self, method: Method, path: &str, status: u16, body: &Value) -> Seen {
        let mut seen = self.expect(method, path).await;
        let answer = seen.answer.take().unwrap();
        answer.send_response(json_response(status, body));
        seen
    }

    /// The Service read, showing `version` with `record` on it.
    async fn service_read(&mut self, version: &str, record: Option<&Persisted>) {
        self.answer(Method::GET, SVC_PATH, 200, &service(version, record))
            .await;
    }

    /// The Ready-pod count of blue: `ready` of 2 Pods.
    async fn blue_pods(&mut self, ready: usize) {
        let seen = self.answer(Method::GET, PODS_PATH, 200, &pods(ready)).await;
        assert!(
            seen.query
                .contains("labelSelector=app%3Dmy-microservice%2Cversion%3Dv1"),
            "blue's pods, by the whole selector: {}",
            seen.query
        );
    }

    /// An Event published with `reason`.
    async fn event(&mut self, reason: &str) {
        let mut seen = self.expect(Method::POST, EVENTS_PATH).await;
        assert_eq!(seen.body["reason"], reason, "{:#}", seen.body);
        let answer = seen.answer.take().unwrap();
        answer.send_response(json_response(201, &seen.body));
    }

    /// The rollback patch, answered as applied; then the confirming read and the `RolledBack`
    /// Event.
    async fn rollback_lands(&mut self) {
        let landed = service("v1", Some(&window()));
        let patch = self.answer(Method::PATCH, SVC_PATH, 200, &landed).await;
        assert_rollback_patch(&patch);
        self.service_read("v1", Some(&window())).await;
        self.event("RolledBack").await;
    }

    /// Nothing more is asked of the API.
    async fn done(&mut self) {
        tokio::task::yield_now().await;
        let more = tokio::time::timeout(Duration::from_mins(1), self.0.next_request()).await;
        if let Ok(Some((request, _))) = more {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
    }
}

const SVC_PATH: &str = "/api/v1/namespaces/default/services/svc-production";
const PODS_PATH: &str = "/api/v1/namespaces/default/pods";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// A Kubernetes `Status` failure.
fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("scripted {code}"), "reason": reason, "code": code})
}

/// The window the rollback is about: v2, rolling back to v1.
fn window() -> Persisted {
    Persisted {
        version: "v2".into(),
        previous: "v1".into(),
        cutover_at: "2026-11-30T10:00:00Z".parse().unwrap(),
        phase: Phase::RolledBack,
        reason: "check error_rate: observed 0.0500, threshold > 0.02, breached for 2m".into(),
    }
}

fn service(version: &str, record: Option<&Persisted>) -> Value {
    service_at(version, record, "7")
}

/// [`service`] at `resource_version`.
fn service_at(version: &str, record: Option<&Persisted>, resource_version: &str) -> Value {
    let annotations = record.map_or_else(
        || json!({}),
        |p| {
            let a = cutover_watchdog::service::annotations(p);
            serde_json::to_value(a).unwrap()
        },
    );
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svc-production", "namespace": "default", "uid": "u-1",
                     "resourceVersion": resource_version, "annotations": annotations},
        "spec": {"selector": {"app": "my-microservice", "version": version}},
    })
}

fn pods(ready: usize) -> Value {
    let items: Vec<Value> = (0..2)
        .map(|i| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("blue-{i}"), "namespace": "default"},
                "status": {"conditions": [{"type": "Ready", "status": if i < ready { "True" } else { "False" }}]},
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "3"}, "items": items})
}

/// An executor lane for the runbook's guard on a scripted API, and the script.
struct Lane {
    api: Api,
    metrics: Metrics,
    commands: mpsc::Sender<Command>,
    replies: mpsc::Receiver<Signal>,
    reply: mpsc::Sender<Signal>,
    _shutdown: CancellationToken,
}

fn lane_with(fence: impl FnOnce(&kube::Client, &Metrics) -> Fence) -> Lane {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let config = Config::from_yaml(
        "prometheus: {url: 'http://127.0.0.1:9'}\n\
         guards:\n- name: checkout\n  service: svc-production\n  min_ready_previous: 1\n",
    )
    .unwrap();
    let metrics = Metrics::new().unwrap();
    let reporter = Reporter {
        controller: "cutover-watchdog".into(),
        instance: Some("test".into()),
    };
    let executor = Arc::new(Executor::new(
        Recorder::new(client.clone(), reporter),
        metrics.clone(),
        KUBE_TIMEOUT,
        fence(&client, &metrics),
    ));
    let guard = &config.guards[0];
    let target = Target::new(guard, ServiceHandle::new(&client, guard));
    let (commands, inbox) = mpsc::channel(8);
    let (reply, replies) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    tokio::spawn(executor.run_lane(target, inbox, shutdown.clone()));
    Lane {
        api: Api(handle),
        metrics,
        commands,
        replies,
        reply,
        _shutdown: shutdown,
    }
}

fn lane() -> Lane {
    lane_with(|_, _| Fence::open())
}

impl Lane {
    /// Hands the lane a rollback of [`window`] triggered by the error-rate check.
    async fn roll_back(&self, announce: bool) {
        let trigger = Trigger::Check {
            name: "error_rate".into(),
            observed: Some(0.05),
            threshold: "> 0.02".into(),
            for_: Duration::from_mins(2),
        };
        self.send(Decision::RollBack {
            state: window(),
            trigger,
            announce,
        })
        .await;
    }

    async fn send(&self, decision: Decision) {
        let command = Command {
            decision,
            reference: k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                name: Some("svc-production".into()),
                namespace: Some("default".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            decided_at: Instant::now(),
            reply: self.reply.clone(),
        };
        self.commands.send(command).await.unwrap();
    }

    /// The outcome the lane reports to the guard.
    async fn outcome(&mut self) -> Outcome {
        match self.replies.recv().await.unwrap() {
            Signal::Executed { version, outcome } => {
                assert_eq!(version, "v2");
                outcome
            }
            other => panic!("not an outcome: {other:?}"),
        }
    }

    fn counted(&self) -> (u64, u64) {
        let m = &self.metrics;
        let rollbacks = m
            .rollbacks_total
            .with_label_values(&["checkout", "error_rate"])
            .get();
        let failures = m
            .rollback_failures_total
            .with_label_values(&["checkout"])
            .get();
        (rollbacks, failures)
    }
}

/// The patch the executor sent: only the version key of the selector, with the window's
/// record and the read's `resourceVersion` as precondition.
fn assert_rollback_patch(seen: &Seen) {
    let body = &seen.body;
    assert_eq!(
        body["spec"]["selector"],
        json!({"version": "v1"}),
        "{body:#}"
    );
    assert_eq!(body["metadata"]["resourceVersion"], "7", "{body:#}");
    let state = &body["metadata"]["annotations"]["cutover-watchdog.io/state"];
    assert_eq!(state, "rolled-back", "{body:#}");
}

#[tokio::test(start_paused = true)]
async fn a_rollback_reads_checks_blue_and_patches_with_a_resource_version_precondition() {
    let mut l = lane();
    l.roll_back(true).await;
    l.api.event("RollbackTriggered").await;
    l.api.service_read("v2", None).await;
    l.api.blue_pods(2).await;
    l.api.rollback_lands().await;
    assert_eq!(l.outcome().await, Outcome::RolledBack);
    assert_eq!(l.counted(), (1, 0));
    l.api.done().await;
}

#[tokio::test(start_paused = true)]
async fn a_409_is_read_again_and_patched_with_the_new_resource_version() {
    let mut l = lane();
    l.roll_back(false).await;
    l.api.service_read("v2", None).await;
    l.api.blue_pods(2).await;
    l.api
        .answer(Method::PATCH, SVC_PATH, 409, &status(409, "Conflict"))
        .await;
    l.api.service_read("v2", None).await;
    l.api.blue_pods(2).await;
    l.api.rollback_lands().await;
    assert_eq!(l.outcome().await, Outcome::RolledBack);
    l.api.done().await;
}

#[tokio::test(start_paused = true)]
async fn a_5xx_is_retried_after_a_backoff_inside_the_budget() {
    let mut l = lane();
    l.roll_back(false).await;
    let started = Instant::now();
    l.api.service_read("v2", None).await;
    l.api.blue_pods(2).await;
    l.api
        .answer(
            Method::PATCH,
            SVC_PATH,
            503,
            &status(503, "ServiceUnavailable"),
        )
        .await;
    l.api.service_read("v2", None).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < KUBE_TIMEOUT,
        "retried after {waited:?}: the first backoff is 100 ms"
    );
    l.api.blue_pods(2).await;
    l.api.rollback_lands().await;
    assert_eq!(l.outcome().await, Outcome::RolledBack);
    assert_eq!(l.counted(), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_5xx_that_lasts_past_the_budget_is_a_failure_with_its_cause() {
    let mut l = lane();
    l.roll_back(false).await;
    let started = Instant::now();
    let mut patches = 0;
    // Read, count, patch, 503, back off, again: until the next backoff would outlast the budget.
    let event = loop {
        let mut seen = l.api.next().await;
        let answer = seen.answer.take().unwrap();
        let (code, body) = match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", SVC_PATH) => (200, service("v2", None)),
            ("GET", PODS_PATH) => (200, pods(2)),
            ("PATCH", SVC_PATH) => {
                patches += 1;
                (503, status(503, "ServiceUnavailable"))
            }
            ("POST", EVENTS_PATH) => {
                answer.send_response(json_response(201, &seen.body));
                break seen.body;
            }
            other => panic!("unexpected request {other:?}"),
        };
        answer.send_response(json_response(code, &body));
    };
    // Backoff doubles from 100 ms to 2 s: patches at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s.
    assert_eq!(patches, 6);
    assert!(
        started.elapsed() <= KUBE_TIMEOUT,
        "gave up within the budget"
    );
    assert_eq!(event["reason"], "RollbackFailed");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("failed to patch service default/svc-production"),
        "{note}"
    );
    assert_eq!(l.outcome().await, Outcome::Failed);
    assert_eq!(l.counted(), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_patch_never_answered_is_outcome_unknown_not_failed() {
    let mut l = lane();
    l.roll_back(false).await;
    l.api.service_read("v2", None).await;
    l.api.blue_pods(2).await;
    let patch = l.api.expect(Method::PATCH, SVC_PATH).await;
    assert_rollback_patch(&patch);
    // Held, never answered: kube_timeout passes in virtual time.
    l.api.event("RollbackOutcomeUnknown").await;
    let unknown = Outcome::Unknown {
        resource_version: "7".into(),
    };
    assert_eq!(l.outcome().await, unknown);
    assert_eq!(l.counted(), (0, 0), "neither rolled back nor failed");
    drop(patch);
    l.api.done().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_patch_seen_landed_by_the_next_read_is_rolled_back_without_patching_again() {
    let mut l = lane();
    l.roll_back(false).await;
    l.api.service_read("v1", Some(&window())).await;
    l.api.event("RolledBack").await;
    assert_eq!(l.outcome().await, Outcome::RolledBack);
    assert_eq!(l.counted(), (1, 0));
    l.api.done().await;
}

#[tokio::test(start_paused = true)]
async fn blue_without_ready_pods_blocks_the_rollback_and_patches_nothing() {
    let mut l = lane();
    l.roll_back(true).await;
    l.api.event("RollbackTriggered").await;
    l.api.service_read("v2", None).await;
    l.api.blue_pods(0).await;
    l.api.event("RollbackBlocked").await;
    assert_eq!(l.outcome().await, Outcome::Blocked);
    l.api.done().await;
}

#[tokio::test(start_paused = true)]
async fn a_selector_someone_else_moved_is_left_alone() {
    let mut l = lane();
    l.roll_back(false).await;
    l.api.service_read("v3", None).await;
    assert_eq!(l.outcome().await, Outcome::NotApplicable);
    l.api.done().await;
}

#[tokio::test(start_paused = true)]
async fn a_replica_whose_lease_has_lapsed_writes_nothing() {
    // The fence of an elector that never held the Lease: no term, no writes.
    let mut l = lane_with(|client, metrics| {
        let elected = "prometheus: {url: 'http://127.0.0.1:9'}\nleader_election: {}\n\
                       guards: [{name: checkout, service: svc-production}]\n";
        let config = Config::from_yaml(elected).unwrap().leader_election.unwrap();
        Elector::new(client, &config, ("test", None), metrics.clone()).1
    });
    l.roll_back(true).await;
    // Reads are allowed, writes are not: not even the Event.
    l.api.service_read("v2", None).await;
    l.api.blue_pods(2).await;
    assert_eq!(l.outcome().await, Outcome::Failed);
    assert_eq!(
        l.counted(),
        (0, 0),
        "the new leader's to carry out, not a failure"
    );
    l.api.done().await;
}

/// The PATCH gets no answer: the connection breaks after it was sent.
async fn patch_unanswered(l: &mut Lane) {
    let mut patch = l.api.expect(Method::PATCH, SVC_PATH).await;
    assert_rollback_patch(&patch);
    let broken = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    patch.answer.take().unwrap().send_error(broken);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_patch_and_a_refused_one_at_the_same_version_is_unknown_not_failed() {
    let mut l = lane();
    l.roll_back(false).await;
    l.api.service_read("v2", None).await;
    l.api.blue_pods(2).await;
    patch_unanswered(&mut l).await;
    // Read again at the same version: the first patch may still land, so this read settles
    // nothing; the next patch is refused outright, which says nothing of the first one.
    let event = loop {
        let mut seen = l.api.next().await;
        let answer = seen.answer.take().unwrap();
        let (code, body) = match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", SVC_PATH) => (200, service("v2", None)),
            ("GET", PODS_PATH) => (200, pods(2)),
            ("PATCH", SVC_PATH) => (403, status(403, "Forbidden")),
            ("POST", EVENTS_PATH) => {
                answer.send_response(json_response(201, &seen.body));
                break seen.body;
            }
            other => panic!("unexpected request {other:?}"),
        };
        answer.send_response(json_response(code, &body));
    };
    assert_eq!(event["reason"], "RollbackOutcomeUnknown", "{event:#}");
    let unknown = Outcome::Unknown {
        resource_version: "7".into(),
    };
    assert_eq!(l.outcome().await, unknown);
    assert_eq!(l.counted(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_patch_is_settled_by_a_read_at_a_new_version_and_patched_again() {
    let mut l = lane();
    l.roll_back(false).await;
    l.api.service_read("v2", None).await;
    l.api.blue_pods(2).await;
    patch_unanswered(&mut l).await;
    // Someone else wrote meanwhile (resourceVersion 8), without our record: the first patch's
    // precondition is stale, so it never lands, and a new one goes out against 8.
    l.api
        .answer(Method::GET, SVC_PATH, 200, &service_at("v2", None, "8"))
        .await;
    l.api.blue_pods(2).await;
    let patch = l
        .api
        .answer(
            Method::PATCH,
            SVC_PATH,
            200,
            &service("v1", Some(&window())),
        )
        .await;
    assert_eq!(patch.body["metadata"]["resourceVersion"], "8");
    l.api.service_read("v1", Some(&window())).await;
    l.api.event("RolledBack").await;
    assert_eq!(l.outcome().await, Outcome::RolledBack);
    assert_eq!(l.counted(), (1, 0));
}
