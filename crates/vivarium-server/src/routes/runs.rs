use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use vivarium_api::{CreateRunRequest, ErrorBody, Run, RunList, SetTimeoutRequest};

use super::AppStateRef;
use crate::error::ApiResult;
use crate::extract::ApiJson;

/// Creates a sandbox from an image and starts it.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    request_body = CreateRunRequest,
    responses(
        (status = 201, description = "The sandbox, running; a desktop sandbox's desktop is ready (screenshots and `cdp_url` work)", body = Run),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "The image is not stored here (`image_not_found`)", body = ErrorBody),
        (status = 422, description = "The image cannot run a desktop session (`desktop_failed`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(s): AppStateRef,
    ApiJson(req): ApiJson<CreateRunRequest>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let run = s.runner.create(req).await?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// Lists sandboxes.
///
/// `GET /v1/runs?metadata.team=a&metadata.user=b` lists sandboxes whose metadata has all those pairs.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(
        ("metadata" = Option<BTreeMap<String, String>>, Query, style = DeepObject, explode,
         description = "Filter: `metadata.KEY=VALUE` pairs that must all match"),
    ),
    responses((status = 200, description = "The sandboxes", body = RunList)),
    security(("bearer" = []))
)]
pub async fn list(State(s): AppStateRef, RawQuery(q): RawQuery) -> Json<RunList> {
    let filter: BTreeMap<String, String> = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata.")
                .map(|k| (k.to_string(), v.into_owned()))
        })
        .collect();
    Json(RunList {
        runs: s.runner.list(&filter),
    })
}

/// One sandbox.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox", body = Run),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(State(s): AppStateRef, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    Ok(Json(s.runner.get(&id)?))
}

/// Stops and deletes a sandbox and everything it left on the host.
#[utoipa::path(
    delete,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete(State(s): AppStateRef, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.runner.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the sandbox's remaining lifetime, counted from now.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/timeout",
    tag = "runs",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SetTimeoutRequest,
    responses(
        (status = 200, description = "The sandbox with its new `expires_at`", body = Run),
        (status = 400, description = "`timeout_s` out of range", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn set_timeout(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetTimeoutRequest>,
) -> ApiResult<Json<Run>> {
    Ok(Json(s.runner.set_timeout(&id, req.timeout_s)?))
}
