//! The admin API (writes) on the host's listener:
//!
//! | call | does |
//! |---|---|
//! | `POST /api/pipelines/{p}/transforms/{t}/modules[?activate=false]` (body: component bytes) | validate, store, and (by default) activate |
//! | `POST /api/pipelines/{p}/transforms/{t}/activate` (`{"digest": "sha256:…"}`) | activate a stored version |
//! | `POST /api/pipelines/{p}/transforms/{t}/rollback` | activate the version before the active one |
//! | `GET  /api/pipelines/{p}/transforms/{t}/versions` | the versions, oldest first, the last active |
//! | `POST /api/pipelines/{p}/pause`, `…/resume` | stop reading / read again |
//! | `GET  /api/pipelines/{p}/dead-letters[?limit=N]` | the newest dead-letter entries |
//! | `PUT  /api/pipelines/{p}` (body: the pipeline file) | create or replace a pipeline (admin) |
//! | `DELETE /api/pipelines/{p}` | stop and remove a pipeline (admin) |
//!
//! Every call needs a bearer token (see [`crate::host::auth`]): 401 without
//! a valid one, 403 when a tenant token names another tenant's pipeline —
//! and then nothing changes. Every change, done or refused, is written to
//! the audit log.

use super::{Caller, caller, error_response};
use crate::host::{DeployError, Host};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

/// The admin routes.
pub(super) fn routes() -> Router<Arc<Host>> {
    Router::new()
        .route(
            "/api/pipelines/{name}/transforms/{transform}/modules",
            // The handler reads the body itself, within the module limit,
            // once the caller is known.
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/api/pipelines/{name}/transforms/{transform}/activate",
            post(activate),
        )
        .route(
            "/api/pipelines/{name}/transforms/{transform}/rollback",
            post(rollback),
        )
        .route(
            "/api/pipelines/{name}/transforms/{transform}/versions",
            get(versions),
        )
        .route("/api/pipelines/{name}/pause", post(pause))
        .route("/api/pipelines/{name}/resume", post(resume))
        .route("/api/pipelines/{name}/dead-letters", get(dead_letters))
        .route(
            "/api/pipelines/{name}",
            put(put_pipeline).delete(delete_pipeline),
        )
}

/// The caller of a write, or the response refusing it.
#[allow(clippy::result_large_err)] // the refusal is the response itself
fn writer(host: &Host, headers: &HeaderMap) -> Result<crate::host::auth::Principal, Response> {
    match caller(host, headers)? {
        Caller::Known(p) => Ok(p),
        Caller::Open => Err(error_response(
            StatusCode::FORBIDDEN,
            "this host has no API tokens: changes need one (`token_file`, `token_env` or `tokens_file` in the host file)",
        )),
    }
}

fn deploy_error(e: &DeployError) -> Response {
    use crate::host::registry::RegistryError;
    use crate::pipeline::SwapError;
    let status = match e {
        DeployError::NoPipeline(_) | DeployError::NoTransform { .. } => StatusCode::NOT_FOUND,
        DeployError::Registry(RegistryError::Missing(_)) => StatusCode::NOT_FOUND,
        DeployError::Registry(RegistryError::BadDigest(_)) => StatusCode::BAD_REQUEST,
        DeployError::Forbidden { .. } | DeployError::AdminOnly { .. } => StatusCode::FORBIDDEN,
        DeployError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::Refused(_) | DeployError::Swap(SwapError::Refused(_)) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        DeployError::Swap(SwapError::NotRunning(_)) | DeployError::NoEarlierVersion { .. } => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, &e.to_string())
}

fn report(result: Result<crate::host::DeployReport, DeployError>, created: bool) -> Response {
    match result {
        Ok(r) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(r)).into_response()
        }
        Err(e) => deploy_error(&e),
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    activate: Option<bool>,
}

async fn upload(
    State(host): State<Arc<Host>>,
    Path((name, transform)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The caller first: nobody unauthenticated makes the host buffer a
    // module (its body is read on and dropped, up to a bound, so that the
    // client sees the refusal rather than a reset connection).
    let who = match writer(&host, &headers) {
        Ok(w) => w,
        Err(r) => {
            let _ = read_limited(body, 0, None).await;
            return r;
        }
    };
    let limit = (crate::engine::MAX_MODULE_MB as usize) << 20;
    let activate = q.activate.unwrap_or(true);
    let too_large = || {
        format!(
            "module refused, the running version keeps serving: larger than the {} MiB limit for a module",
            crate::engine::MAX_MODULE_MB
        )
    };
    // A declared length over the limit is refused before one byte of the
    // body is read (a client that sent `Expect: 100-continue` sends none).
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        host.audit_refused_upload(&who, &name, &transform, activate, &too_large());
        drop(body);
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, &too_large());
    }
    // At most UPLOAD_SLOTS modules are buffered at once: a few concurrent
    // uploads cost at most UPLOAD_SLOTS x the module limit.
    let Ok(_slot) = UPLOADS.acquire().await else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "the host is shutting down");
    };
    let body = match read_limited(body, limit, declared).await {
        Ok(b) => b,
        Err(status) => {
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                host.audit_refused_upload(&who, &name, &transform, activate, &too_large());
                return error_response(status, &too_large());
            }
            return error_response(status, "the module upload was cut short");
        }
    };
    report(
        host.deploy(&who, &name, &transform, body, activate).await,
        true,
    )
}

/// Modules buffered at once (see `upload`).
const UPLOAD_SLOTS: usize = 2;
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(UPLOAD_SLOTS);

/// Reads a body of at most `limit` bytes into a buffer sized once: by the
/// declared length when there is one (no doubling while it grows, no copy),
/// else by the frames gathered and copied once at the end. A longer body is read on
/// (and dropped, nothing kept) for up to 16 MiB more, so that the client
/// sees the answer rather than a reset connection; then it is 413.
async fn read_limited(
    body: axum::body::Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<Vec<u8>, StatusCode> {
    use http_body_util::BodyExt;
    const DRAIN: usize = 16 << 20;
    let mut body = body;
    // With a declared length (at most `limit`: checked by the caller) the
    // bytes go straight into their final buffer.
    let direct = declared.filter(|&n| n <= limit as u64);
    let mut out: Vec<u8> = Vec::with_capacity(direct.unwrap_or(0) as usize);
    let mut frames: Vec<bytes::Bytes> = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(StatusCode::BAD_REQUEST);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            if direct.is_some() {
                out.extend_from_slice(&data);
            } else {
                frames.push(data);
            }
        } else {
            out = Vec::new();
            frames = Vec::new();
            if seen > limit.saturating_add(DRAIN) {
                break;
            }
        }
    }
    if seen > limit {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    if declared.is_some_and(|n| n != seen as u64) {
        return Err(StatusCode::BAD_REQUEST);
    }
    if direct.is_none() {
        out = Vec::with_capacity(seen);
        for f in frames {
            out.extend_from_slice(&f);
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ActivateBody {
    digest: String,
}

async fn activate(
    State(host): State<Arc<Host>>,
    Path((name, transform)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match writer(&host, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Ok(ActivateBody { digest }) = serde_json::from_slice::<ActivateBody>(&body) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"digest\": \"sha256:…\"}",
        );
    };
    report(host.activate(&who, &name, &transform, &digest).await, false)
}

async fn rollback(
    State(host): State<Arc<Host>>,
    Path((name, transform)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let who = match writer(&host, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    report(host.rollback(&who, &name, &transform).await, false)
}

async fn versions(
    State(host): State<Arc<Host>>,
    Path((name, transform)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // A read: open on a host without tokens, like the status page.
    let who = match caller(&host, &headers) {
        Ok(Caller::Known(p)) => p,
        Ok(Caller::Open) => crate::host::auth::Principal {
            name: "anonymous".into(),
            role: crate::host::auth::Role::Admin,
        },
        Err(r) => return r,
    };
    match host.versions(&who, &name, &transform) {
        Ok(v) => Json(serde_json::json!({
            "versions": v,
            "active": v.last(),
            "stored": host.stored_versions(&name, &transform),
        }))
        .into_response(),
        Err(e) => deploy_error(&e),
    }
}

async fn set_paused(host: Arc<Host>, name: String, headers: HeaderMap, paused: bool) -> Response {
    let who = match writer(&host, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match host.set_paused(&who, &name, paused) {
        Ok(()) => match host.pipeline(&name) {
            Some(h) => Json(h.snapshot()).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        Err(e) => deploy_error(&e),
    }
}

async fn pause(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(host, name, headers, true).await
}

async fn resume(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_paused(host, name, headers, false).await
}

#[derive(Deserialize)]
struct DeadLetterQuery {
    limit: Option<usize>,
}

async fn dead_letters(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    Query(q): Query<DeadLetterQuery>,
    headers: HeaderMap,
) -> Response {
    let who = match writer(&host, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(100).min(10_000);
    match host.dead_letters(&who, &name, limit).await {
        Ok(entries) => Json(serde_json::json!({ "entries": entries })).into_response(),
        Err(e) => deploy_error(&e),
    }
}

async fn put_pipeline(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match writer(&host, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the pipeline file must be UTF-8 TOML",
        );
    };
    match host.put_pipeline(&who, &name, text).await {
        Ok(r) => {
            let status = if r.replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(r)).into_response()
        }
        Err(e) => deploy_error(&e),
    }
}

async fn delete_pipeline(
    State(host): State<Arc<Host>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match writer(&host, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    match host.delete_pipeline(&who, &name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => deploy_error(&e),
    }
}
