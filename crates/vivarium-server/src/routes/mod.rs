//! The HTTP surface: `/v1/...` routes, authentication, and the health check.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::error::ApiError;
use crate::runner::Runner;

mod desktop;
mod exec;
mod files;
mod images;
pub mod openapi;
mod runs;

pub struct AppState {
    pub runner: Arc<Runner>,
    pub api_key: String,
}

pub type AppStateRef = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/runs", post(runs::create).get(runs::list))
        .route("/runs/{id}", get(runs::get).delete(runs::delete))
        .route("/runs/{id}/timeout", post(runs::set_timeout))
        .route("/runs/{id}/logs", get(runs::logs))
        .route("/runs/{id}/exec", post(exec::exec))
        .route("/runs/{id}/exec/stream", post(exec::exec_stream))
        .route(
            "/runs/{id}/processes",
            post(exec::spawn).get(exec::processes),
        )
        .route("/runs/{id}/processes/{pid}", get(exec::process))
        .route("/runs/{id}/processes/{pid}/signal", post(exec::signal))
        .route("/runs/{id}/processes/{pid}/wait", post(exec::wait))
        .route(
            "/runs/{id}/files",
            get(files::download)
                .put(files::upload)
                .post(files::write_json)
                .delete(files::remove),
        )
        .route("/runs/{id}/files/list", get(files::list))
        .route("/runs/{id}/files/stat", get(files::stat))
        .route("/runs/{id}/files/mkdir", post(files::mkdir))
        .route("/runs/{id}/desktop/actions", post(desktop::batch))
        .route(
            "/runs/{id}/desktop/screenshot",
            get(desktop::screenshot).post(desktop::screenshot_json),
        )
        .route("/runs/{id}/desktop/{action}", post(desktop::single))
        .route(
            "/runs/{id}/computer/anthropic",
            post(crate::computer::anthropic),
        )
        .route(
            "/runs/{id}/computer/anthropic/tool",
            get(crate::computer::anthropic_tool_def),
        )
        .route("/runs/{id}/computer/openai", post(crate::computer::openai))
        .route(
            "/runs/{id}/computer/openai/tool",
            get(crate::computer::openai_tool_def),
        )
        .route("/images", get(images::list))
        .route("/images/build", post(images::build))
        .route("/images/pull", post(images::build))
        .route("/images/import", post(images::import))
        .route("/images/push", post(images::push))
        .route(
            "/images/default",
            get(images::default_status).post(images::prepare_default),
        )
        .route(
            "/images/{*reference}",
            get(images::get).delete(images::remove),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(middleware::from_fn(json_errors));
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi::serve))
        // MCP over streamable HTTP, behind the key; its tools call this same API (vivarium-mcp).
        .merge(
            Router::new()
                .route_service(
                    "/mcp",
                    vivarium_mcp::in_process_http_service(
                        Router::new()
                            .nest("/v1", v1.clone())
                            .with_state(state.clone()),
                        state.api_key.clone(),
                    ),
                )
                .route_layer(middleware::from_fn_with_state(state.clone(), require_key)),
        )
        .nest("/v1", v1)
        .merge(crate::proxy::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        // JSON bodies are small; the raw body of `PUT /files` is streamed (it ignores this limit)
        // and bounded by the sandbox's disk, the proxy streams too, rmcp caps `/mcp` at 4 MiB.
        .layer(axum::extract::DefaultBodyLimit::max(
            vivarium_api::limits::MAX_JSON_BODY_BYTES,
        ))
        .with_state(state)
}

/// Liveness: answers while the runner serves (no key needed).
#[utoipa::path(
    get,
    path = "/v1/health",
    operation_id = "health",
    tag = "meta",
    responses((status = 200, description = "The runner is up", body = vivarium_api::Health))
)]
async fn health() -> Json<vivarium_api::Health> {
    Json(vivarium_api::Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// axum's own answers (a path or query that does not decode, a body past the limit, a method the
/// route does not have) are plain text; every `/v1` error is the API's JSON error instead.
async fn json_errors(req: Request, next: Next) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let code = match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        s if s >= 500 => "internal",
        _ => "invalid_argument",
    };
    let mut err = ApiError::new(status, code, message);
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        err = err.with_field("body");
    }
    let mut out = err.into_response();
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

async fn require_key(State(state): AppStateRef, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match presented {
        None => ApiError::unauthorized("missing API key: send `Authorization: Bearer <key>`")
            .into_response(),
        // Constant-time comparison so the key cannot be guessed byte by byte from response times.
        Some(key)
            if constant_time_eq::constant_time_eq(
                key.trim().as_bytes(),
                state.api_key.as_bytes(),
            ) =>
        {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("wrong API key").into_response(),
    }
}
