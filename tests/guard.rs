//! Fast tests for a guard's task and the poller, in paused time: `for`, windows and
//! stabilization run on tokio's virtual clock, inputs go straight into the guard's inbox, and
//! its decisions come out of its executor lane's queue. No processes, no Kubernetes, no
//! Prometheus; `tests/end_to_end.rs` proves the same on real parts.

// Test code: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{Request, Response};
use cutover_watchdog::config::Config;
use cutover_watchdog::coverage::Source;
use cutover_watchdog::decision::{Decision, Outcome, Persisted, Phase, Sample, Signal};
use cutover_watchdog::executor::{BaselineWrite, Baselines, Command, Writers};
use cutover_watchdog::guard::{Clock, Ends, GuardHandle, GuardTask, Input, Polling};
use cutover_watchdog::metrics::Metrics;
use cutover_watchdog::poller::{Poller, PrometheusHealth};
use cutover_watchdog::promql::Prometheus;
use cutover_watchdog::service::{ServiceHandle, annotations};
use k8s_openapi::api::core::v1::Service;
use kube::client::Body;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// The runbook's guard, time-scaled: a 10-minute window, 5 minutes to stable, an error-rate
/// check that trips after 2 minutes above 2%.
const CONFIG: &str = "prometheus: {url: 'http://127.0.0.1:9'}
guards:
- name: checkout
  service: svc-production
  window: 10m
  stabilization: 5m
  checks:
  - {name: error_rate, query: 'rate(errors{version=\"{{version}}\"}[1m])', above: 0.02, for: 2m}
";
const BAD: Sample = Sample::Value(0.05);
const OK: Sample = Sample::Value(0.001);

/// A running guard task on a virtual clock, and the ends the rest of the watchdog would hold.
struct Running {
    ends: Ends,
    /// What the guard hands its executor lane.
    commands: mpsc::Receiver<Command>,
    /// What it hands the shared baseline writer.
    baseline_writes: mpsc::UnboundedReceiver<BaselineWrite>,
    /// How many times the guard opened its lane.
    lanes_opened: Arc<AtomicUsize>,
    clock: Clock,
    wake: Arc<Notify>,
    _stop: CancellationToken,
}

fn start() -> Running {
    let config = Arc::new(Config::from_yaml(CONFIG).unwrap().guards[0].clone());
    // The task reads no Service itself (the watch feeds it); the client only has to exist.
    let (api, _) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let service = ServiceHandle::new(&kube::Client::new(api, "default"), &config);
    let wake = Arc::new(Notify::new());
    let clock = Clock::tokio();
    let metrics = Metrics::new().unwrap();
    // The lane is this test: it takes the commands, and replies itself.
    let (lane, commands) = mpsc::channel(16);
    let lanes_opened = Arc::new(AtomicUsize::new(0));
    let opened = lanes_opened.clone();
    let (baselines, baseline_writes) = Baselines::queue();
    let (task, ends) = GuardTask::new(
        config,
        Source::Config,
        service,
        Writers {
            lane: Box::new(move |_| {
                opened.fetch_add(1, Ordering::SeqCst);
                lane.clone()
            }),
            baselines,
        },
        metrics,
        wake.clone(),
        clock.clone(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(task.run(stop.clone()));
    Running {
        ends,
        commands,
        baseline_writes,
        lanes_opened,
        clock,
        wake,
        _stop: stop,
    }
}

impl Running {
    async fn send(&self, input: Input) {
        self.ends.handle.inbox.send(Box::new(input)).await.unwrap();
    }

    /// The watch showing the Service's selector on `version`, with `record` on it.
    async fn watch_sees(&self, version: &str, record: Option<&Persisted>) {
        let annotations = record.map(annotations).unwrap_or_default();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "svc-production", "namespace": "default",
                         "resourceVersion": "8", "annotations": annotations},
            "spec": {"selector": {"app": "shop", "version": version}},
        }))
        .unwrap();
        self.send(Input::Service(Arc::new(svc))).await;
    }

    /// One poll of the error-rate check, scheduled now.
    async fn poll(&self, sample: Sample) {
        let signal = Signal::Polled {
            version: "v2".into(),
            samples: vec![sample],
            at: self.clock.now(),
            previous_ready: None,
            traffic: None,
        };
        let errors = vec![None];
        // The checks the open window polls: a poll of any others is dropped as stale.
        let polling = self.ends.handle.polling.borrow().clone();
        let checks = polling.expect("an open window to poll").checks;
        self.send(Input::Polled {
            signal,
            errors,
            checks,
        })
        .await;
    }

    /// The next decision handed to the executor lane.
    async fn decision(&mut self) -> Command {
        let next = tokio::time::timeout(Duration::from_secs(1), self.commands.recv());
        next.await.expect("a decision").expect("the task alive")
    }

    /// No decision comes from what was sent so far.
    async fn no_decision(&mut self) {
        let next = tokio::time::timeout(Duration::from_secs(1), self.commands.recv());
        if let Ok(Some(command)) = next.await {
            panic!("unexpected decision: {:?}", command.decision);
        }
    }

    /// Cuts over from v1 to v2 as the watch sees it; the window opens.
    async fn cut_over(&mut self) -> Persisted {
        self.watch_sees("v1", None).await;
        self.watch_sees("v2", None).await;
        match self.decision().await.decision {
            Decision::Opened(state) => state,
            other => panic!("not opened: {other:?}"),
        }
    }

    /// Waits (in virtual time, bounded) for the published status to satisfy `condition`.
    async fn status(&mut self, condition: impl Fn(&cutover_watchdog::guard::GuardStatus) -> bool) {
        let status = &mut self.ends.handle.status;
        let changed = tokio::time::timeout(Duration::from_secs(1), status.wait_for(condition));
        changed.await.expect("the status within a second").unwrap();
    }
}

async fn advance(by: Duration) {
    tokio::time::advance(by).await;
}

#[tokio::test(start_paused = true)]
async fn a_cutover_the_watch_sees_opens_a_window_and_wakes_the_poller_at_once() {
    let mut g = start();
    let woken = g.wake.clone();
    let woken = tokio::spawn(async move { woken.notified().await });
    let state = g.cut_over().await;
    assert_eq!(
        (state.version.as_str(), state.previous.as_str()),
        ("v2", "v1")
    );
    tokio::time::timeout(Duration::from_secs(1), woken)
        .await
        .expect("the poller woken")
        .unwrap();
    let polling = g
        .ends
        .handle
        .polling
        .borrow()
        .clone()
        .expect("a window to poll");
    assert_eq!(
        (polling.version.as_str(), polling.previous.as_str()),
        ("v2", "v1")
    );
    assert_eq!(polling.checks.len(), 1, "the guard's one check");
}

#[tokio::test(start_paused = true)]
async fn the_executor_lane_opens_at_the_first_decision_and_only_once() {
    let mut g = start();
    g.watch_sees("v1", None).await;
    g.status(|s| s.selector_version.as_deref() == Some("v1"))
        .await;
    assert_eq!(
        g.lanes_opened.load(Ordering::SeqCst),
        0,
        "an idle guard has no lane"
    );
    g.cut_over().await;
    g.poll(BAD).await;
    advance(Duration::from_mins(2)).await;
    g.poll(BAD).await;
    assert!(matches!(
        g.decision().await.decision,
        Decision::RollBack { .. }
    ));
    assert_eq!(
        g.lanes_opened.load(Ordering::SeqCst),
        1,
        "one lane for every decision"
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_with_no_record_gets_its_baseline_from_the_shared_writer_without_a_lane() {
    let mut g = start();
    g.watch_sees("v1", None).await;
    let write = tokio::time::timeout(Duration::from_secs(1), g.baseline_writes.recv());
    let write = write.await.expect("a baseline write").unwrap();
    assert_eq!(
        write.version(),
        ("v1", Some("8")),
        "preconditioned on what was seen"
    );
    assert_eq!(
        g.lanes_opened.load(Ordering::SeqCst),
        0,
        "no lane for bookkeeping"
    );
    g.no_decision().await;
}

#[tokio::test(start_paused = true)]
async fn a_breach_held_for_for_rolls_back_once_and_the_window_closes_when_it_lands() {
    let mut g = start();
    g.cut_over().await;
    g.poll(BAD).await;
    advance(Duration::from_mins(1)).await;
    g.poll(BAD).await;
    g.no_decision().await;
    advance(Duration::from_mins(1)).await;
    g.poll(BAD).await;
    let command = g.decision().await;
    let Decision::RollBack { state, trigger, .. } = &command.decision else {
        panic!("not a rollback: {:?}", command.decision);
    };
    assert_eq!(
        (state.previous.as_str(), trigger.label()),
        ("v1", "error_rate")
    );
    // In flight: more breached polls decide nothing more.
    g.poll(BAD).await;
    g.no_decision().await;
    let done = Signal::Executed {
        version: "v2".into(),
        outcome: Outcome::RolledBack,
    };
    command.reply.send(done).await.unwrap();
    g.status(|s| s.state == Some(Phase::RolledBack)).await;
    assert!(
        g.ends.handle.polling.borrow().is_none(),
        "nothing left to poll"
    );
}

#[tokio::test(start_paused = true)]
async fn a_clean_window_is_stable_after_stabilization_and_closes_at_its_end() {
    let mut g = start();
    g.cut_over().await;
    advance(Duration::from_mins(4)).await;
    g.poll(OK).await;
    g.no_decision().await; // clean, but before stabilization
    advance(Duration::from_mins(1)).await;
    g.poll(OK).await;
    assert!(matches!(g.decision().await.decision, Decision::Stable(_)));
    assert!(
        g.ends.handle.polling.borrow().is_some(),
        "checks go on to the end"
    );
    advance(Duration::from_mins(5)).await;
    g.poll(OK).await; // a poll past the end closes the window
    g.status(|s| s.window.as_ref().is_some_and(|w| !w.open))
        .await;
    assert!(g.ends.handle.polling.borrow().is_none());
    g.no_decision().await;
}

#[tokio::test(start_paused = true)]
async fn a_rollback_with_an_unknown_outcome_is_recorded_when_the_watch_shows_it_landed() {
    let mut g = start();
    g.cut_over().await;
    g.poll(BAD).await;
    advance(Duration::from_mins(2)).await;
    g.poll(BAD).await;
    let command = g.decision().await;
    let Decision::RollBack { state, .. } = command.decision.clone() else {
        panic!("not a rollback: {:?}", command.decision);
    };
    let unknown = Signal::Executed {
        version: "v2".into(),
        outcome: Outcome::Unknown {
            resource_version: "7".into(),
        },
    };
    command.reply.send(unknown).await.unwrap();
    g.no_decision().await;
    advance(Duration::from_secs(30)).await;
    g.watch_sees("v1", Some(&state)).await;
    let Decision::Landed {
        decided_at,
        seen_at,
        ..
    } = g.decision().await.decision
    else {
        panic!("not recorded as landed");
    };
    // Timed to the moment it was seen: the 1 s the last waits took, plus the 30 s.
    let took = seen_at.duration_since(decided_at);
    assert!(took >= jiff::SignedDuration::from_secs(30), "{took:?}");
    g.status(|s| s.state == Some(Phase::RolledBack)).await;
}

#[tokio::test(start_paused = true)]
async fn the_poller_polls_every_interval_by_its_schedule_and_at_once_when_woken() {
    let config = Config::from_yaml(
        "prometheus: {url: 'http://127.0.0.1:9'}\n\
         guards: [{name: checkout, service: svc-production, alerts: {match: {app: shop}}}]\n",
    )
    .unwrap();
    let (inbox, mut rounds) = mpsc::channel(8);
    let window = Polling {
        version: "v2".into(),
        previous: "v1".into(),
        checks: Arc::new([]),
        previous_pods: None,
    };
    let (_window, polling) = tokio::sync::watch::channel(Some(window));
    let g = Arc::new(config.guards[0].clone());
    let handle = GuardHandle {
        polling,
        ..GuardHandle::detached(g, inbox)
    };
    let wake = Arc::new(Notify::new());
    let poller = Poller {
        // A guard with no checks: each round asks Prometheus nothing, and still signals.
        guards: cutover_watchdog::fleet::fixed(vec![handle]),
        prometheus: Prometheus::plain(&config.prometheus.url, Duration::from_secs(1)).unwrap(),
        prober: cutover_watchdog::probe::Prober::new().unwrap(),
        pods: None,
        metrics: Metrics::new().unwrap(),
        interval: Duration::from_secs(10),
        wake: wake.clone(),
        health: Arc::new(PrometheusHealth::default()),
        configs: None,
    };
    let stop = CancellationToken::new();
    let started = tokio::time::Instant::now();
    tokio::spawn(poller.run(stop.clone()));
    let mut next_at = async || {
        let input = tokio::time::timeout(Duration::from_mins(1), rounds.recv());
        match *input.await.unwrap().unwrap() {
            Input::Polled {
                signal: Signal::Polled { at, .. },
                ..
            } => (tokio::time::Instant::now() - started, at),
            other => panic!("not a poll: {other:?}"),
        }
    };
    let (first, first_at) = next_at().await;
    let (second, second_at) = next_at().await;
    assert_eq!((first, second), (Duration::ZERO, Duration::from_secs(10)));
    assert_eq!(
        second_at.duration_since(first_at),
        jiff::SignedDuration::from_secs(10)
    );
    advance(Duration::from_secs(3)).await;
    wake.notify_one();
    let (woken, _) = next_at().await;
    assert_eq!(
        woken,
        Duration::from_secs(13),
        "at once, not at the next tick"
    );
    let (after, _) = next_at().await;
    assert_eq!(
        after,
        Duration::from_secs(23),
        "the schedule restarts from the wake"
    );
    stop.cancel();
}
