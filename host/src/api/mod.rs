//! The host's HTTP listener: the status page (`/`, assets embedded, works
//! offline), Prometheus metrics (`/metrics`) and the read-only JSON API
//! (`GET /api/pipelines`, `GET /api/pipelines/{name}`).
//!
//! With a token configured, `/metrics` and `/api/*` require
//! `Authorization: Bearer <token>` (compared in constant time, over digests
//! so that not even the length leaks); the page itself holds no data and
//! asks for the token. The host file refuses a non-loopback address without
//! a token.

use crate::host::Host;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use subtle::ConstantTimeEq;

const STATUS_PAGE: &str = include_str!("status.html");

/// The listener's routes over `host`.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/api/pipelines", get(pipelines))
        .route("/api/pipelines/{name}", get(pipeline))
        .with_state(host)
}

/// Serves the routes on `listener` until `shutdown` resolves.
pub async fn serve(
    host: Arc<Host>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(host))
        .with_graceful_shutdown(shutdown)
        .await
}

fn authorized(host: &Host, headers: &HeaderMap) -> bool {
    let Some(expected) = host.config().token.as_deref() else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(given.trim().as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({"error": "a bearer token is required (Authorization: Bearer <token>)"})),
    )
        .into_response()
}

async fn status_page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        Html(STATUS_PAGE),
    )
}

async fn metrics(State(host): State<Arc<Host>>, headers: HeaderMap) -> Response {
    if !authorized(&host, &headers) {
        return unauthorized();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        host.metrics_text(),
    )
        .into_response()
}

async fn pipelines(State(host): State<Arc<Host>>, headers: HeaderMap) -> Response {
    if !authorized(&host, &headers) {
        return unauthorized();
    }
    let refused: Vec<serde_json::Value> = host
        .refused()
        .into_iter()
        .map(
            |(file, error)| serde_json::json!({"file": file.display().to_string(), "error": error}),
        )
        .collect();
    Json(serde_json::json!({
        "pipelines": host.snapshots(),
        "refused": refused,
    }))
    .into_response()
}

async fn pipeline(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&host, &headers) {
        return unauthorized();
    }
    match host.pipeline(&name) {
        Some(h) => Json(h.snapshot()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such pipeline"})),
        )
            .into_response(),
    }
}
