//! The host's HTTP listener: the status page (`/`, assets embedded, works
//! offline), Prometheus metrics (`/metrics`), the read-only JSON API
//! (`GET /api/pipelines`, `GET /api/pipelines/{name}`) and the admin API
//! ([`admin`]).
//!
//! With tokens configured, `/metrics` and `/api/*` require
//! `Authorization: Bearer <token>` (see [`crate::host::auth`]); a tenant
//! token sees only its tenant's pipelines, and `/metrics` needs an admin
//! token. The page itself holds no data and asks for the token. The host
//! file refuses a non-loopback address without a token.

mod admin;

use crate::host::Host;
use crate::host::auth::{Principal, identify};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::future::Future;
use std::sync::Arc;

const STATUS_PAGE: &str = include_str!("status.html");

/// The listener's routes over `host`.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/api/pipelines", get(pipelines))
        .route("/api/pipelines/{name}", get(pipeline))
        .merge(admin::routes())
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

/// Who is calling.
pub(crate) enum Caller {
    /// No tokens are configured (loopback only): reads are open.
    Open,
    /// The holder of a valid token.
    Known(Principal),
}

impl Caller {
    /// Whether the caller may see pipelines of `tenant`.
    fn may_see(&self, tenant: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Known(p) => p.may_act_on(tenant),
        }
    }
}

/// Identifies the caller, or answers 401.
#[allow(clippy::result_large_err)] // the refusal is the response itself
pub(crate) fn caller(host: &Host, headers: &HeaderMap) -> Result<Caller, Response> {
    let tokens = &host.config().tokens;
    if tokens.is_empty() {
        return Ok(Caller::Open);
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match identify(tokens, given) {
        Some(p) => Ok(Caller::Known(p)),
        None => Err(unauthorized()),
    }
}

/// A JSON error body with `status`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({"error": "a valid bearer token is required (Authorization: Bearer <token>)"})),
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
    match caller(&host, &headers) {
        Ok(Caller::Open) => {}
        Ok(Caller::Known(p)) if p.is_admin() => {}
        Ok(Caller::Known(_)) => {
            return error_response(
                StatusCode::FORBIDDEN,
                "the metrics cover every tenant: they need an admin token",
            );
        }
        Err(r) => return r,
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
    let who = match caller(&host, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Refused files name no tenant that can be trusted: admins only.
    let refused: Vec<serde_json::Value> = match &who {
        Caller::Known(p) if !p.is_admin() => Vec::new(),
        _ => host
            .refused()
            .into_iter()
            .map(|(file, error)| serde_json::json!({"file": file.display().to_string(), "error": error}))
            .collect(),
    };
    let pipelines: Vec<_> = host
        .snapshots()
        .into_iter()
        .filter(|s| who.may_see(&s.tenant))
        .collect();
    // Pipelines still compiling their transforms (seconds for a Python or
    // JavaScript guest): listed so that a starting host is not a blank page.
    let preparing: Vec<serde_json::Value> = host
        .preparing()
        .into_iter()
        .filter(|p| who.may_see(&p.tenant))
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "tenant": p.tenant,
                "file": p.file.display().to_string(),
                "transforms": p.transforms,
                "elapsed_ms": p.elapsed.as_millis() as u64,
            })
        })
        .collect();
    Json(serde_json::json!({
        "pipelines": pipelines,
        "preparing": preparing,
        "refused": refused,
    }))
    .into_response()
}

async fn pipeline(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match caller(&host, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match host.pipeline(&name) {
        Some(h) if !who.may_see(h.live().tenant()) => error_response(
            StatusCode::FORBIDDEN,
            "this pipeline belongs to another tenant",
        ),
        Some(h) => Json(h.snapshot()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such pipeline"})),
        )
            .into_response(),
    }
}
