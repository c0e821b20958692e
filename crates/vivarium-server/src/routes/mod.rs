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
            "/images/{*reference}",
            get(images::get).delete(images::remove),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
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
        .layer(axum::extract::DefaultBodyLimit::disable())
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
