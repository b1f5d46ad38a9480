//! Micro-benchmarks of the pure decision core and the PromQL template: the work done per poll
//! and per alert, without IO. Run: `cargo bench --bench decision`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use cutover_watchdog::config::{NoDataPolicy, Threshold};
use cutover_watchdog::decision::{Alert, Check, Guard, Policy, Sample, Signal};
use cutover_watchdog::promql::Template;
use jiff::Timestamp;

fn guard_in_window() -> Guard {
    let check = |name: &str, t| Check {
        name: name.into(),
        threshold: t,
        for_: Duration::from_mins(2),
        on_no_data: NoDataPolicy::Ignore,
    };
    let mut g = Guard::new(Policy {
        window: Duration::from_mins(10),
        stabilization: Duration::from_mins(5),
        dry_run: false,
        min_ready_previous: 1,
        traffic: None,
        checks: vec![
            check("error_rate", Threshold::Above(0.02)),
            check("latency_p95", Threshold::Above(0.8)),
        ],
    });
    let t0 = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    for v in ["v1", "v2"] {
        g.handle(
            Signal::Observed {
                version: Some(v.into()),
                persisted: None,
                resource_version: None,
                baseline: Some("v1".into()),
                changed_at: None,
                relisted: false,
                changed_by: None,
            },
            t0,
        );
    }
    g
}

fn bench(c: &mut Criterion) {
    let now = Timestamp::from_second(1_800_000_030).unwrap_or(Timestamp::UNIX_EPOCH);
    let poll = |c: &mut Criterion, name: &str, samples: Vec<Sample>| {
        c.bench_function(name, |b| {
            let mut g = guard_in_window();
            b.iter(|| {
                black_box(g.handle(
                    Signal::Polled {
                        version: "v2".into(),
                        samples: samples.clone(),
                        at: now,
                        previous_ready: None,
                        traffic: None,
                    },
                    now,
                ))
            });
        });
    };
    poll(
        c,
        "poll: two clean checks in an open window",
        vec![Sample::Value(0.001), Sample::Value(0.05)],
    );
    poll(
        c,
        "poll: a breached check that has not tripped",
        vec![Sample::Value(0.05), Sample::Value(0.05)],
    );
    c.bench_function("alert: re-delivery after the rollback was decided", |b| {
        let mut g = guard_in_window();
        let alert = Alert {
            alertname: "GreenErrorRatioHigh".into(),
            severity: "critical".into(),
            version: Some("v2".into()),
            starts_at: None,
        };
        g.handle(Signal::Alert(alert.clone()), now);
        b.iter(|| black_box(g.handle(Signal::Alert(alert.clone()), now)));
    });
    c.bench_function("sample: worst of 10 series", |b| {
        let values: Vec<f64> = (0..10).map(|i| f64::from(i) * 0.01).collect();
        b.iter(|| {
            black_box(Sample::from_values(
                black_box(&values),
                Threshold::Above(0.02),
            ))
        });
    });
    c.bench_function("template: render the runbook's error-rate query", |b| {
        let t = Template::parse(
            r#"sum(rate(http_requests_total{app="my-microservice",version="{{version}}",code=~"5.."}[1m])) / sum(rate(http_requests_total{app="my-microservice",version="{{version}}"}[1m]))"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        b.iter(|| black_box(t.render(black_box("v2"), black_box("v1"))).is_ok());
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
