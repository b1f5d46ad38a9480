//! The Prometheus adapter against the real Prometheus: a batch answers each query exactly as it
//! would alone, and a query that cannot be batched makes Prometheus refuse the batch, not lie.

// Helpers here panic on a failed setup step, as the #[test] bodies they serve may.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cutover_watchdog::promql::{BatchFailure, Prometheus};
use cutover_watchdog::sandbox::processes::{self, PrometheusSetup};

async fn prometheus() -> (processes::ChildServer, Prometheus) {
    let server = processes::prometheus(&PrometheusSetup::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = Prometheus::plain(&server.url().parse().unwrap(), Duration::from_secs(5)).unwrap();
    (server, client)
}

#[tokio::test]
async fn a_batch_answers_each_query_as_it_would_alone() {
    let (_server, p) = prometheus().await;
    let queries = [
        "vector(0.5)",
        "vector(3) > 5", // empty: no data
        r#"label_replace(vector(1), "x", "a", "", "") or label_replace(vector(2), "x", "b", "", "")"#,
        "vector(0) / 0", // NaN
    ];
    let (batch, _) = p.batch(&queries).await;
    let batch = batch.unwrap();
    for (query, batched) in queries.iter().zip(&batch) {
        let (alone, _) = p.instant(query).await;
        let alone = alone.unwrap();
        let mut a: Vec<String> = alone.iter().map(ToString::to_string).collect();
        let mut b: Vec<String> = batched.iter().map(ToString::to_string).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{query}");
    }
    assert_eq!(batch[1].len(), 0);
    assert_eq!(batch[2].len(), 2);
    assert!(batch[3][0].is_nan());
}

#[tokio::test]
async fn a_query_that_cannot_be_batched_makes_prometheus_refuse_the_batch() {
    let (_server, p) = prometheus().await;
    for bad in ["scalar(vector(1))", "sum(rate(x[1m]"] {
        let (batch, _) = p.batch(&["vector(1)", bad]).await;
        assert!(
            matches!(batch, Err(BatchFailure::Refused(_))),
            "{bad}: {batch:?}"
        );
    }
    let (alone, _) = p.instant("scalar(vector(1))").await;
    assert_eq!(alone.unwrap(), vec![1.0], "alone, a scalar query answers");
}
