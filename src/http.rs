//! The HTTP listeners: the main one (`/v1/guards`, and the webhook) and the admin one
//! (`/metrics`, `/healthz`, `/readyz`).
//!
//! Handlers read snapshots and enqueue inputs; they never wait on the Kubernetes API.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::guard::{GuardHandle, GuardStatus};
use crate::metrics::Metrics;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub guards: Arc<[GuardHandle]>,
    pub metrics: Metrics,
}

/// The main listener's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/guards", get(guards))
        .with_state(state)
}

/// The admin listener's routes.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn guards(State(state): State<AppState>) -> Json<Vec<GuardStatus>> {
    Json(
        state
            .guards
            .iter()
            .map(|g| g.status.borrow().clone())
            .collect(),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Ready once every guard's watch is established.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let waiting: Vec<&str> = state
        .guards
        .iter()
        .filter(|g| !g.ready.load(Ordering::Relaxed))
        .map(|g| g.config.name.as_str())
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for the service watch of: {}\n", waiting.join(", ")),
        )
    }
}
