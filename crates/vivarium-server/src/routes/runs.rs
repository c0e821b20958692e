use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vivarium_api::{CreateRunRequest, ErrorBody, Run, RunList, SetTimeoutRequest};

use super::AppStateRef;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;

/// Creates a sandbox from an image and starts it.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    request_body = CreateRunRequest,
    responses(
        (status = 201, description = "The sandbox, running; a desktop sandbox's desktop is ready (screenshots and `cdp_url` work)", body = Run),
        (status = 400, description = "A field is invalid or beyond its limit (`error.field` names it), or the image's registry refused or cannot be reached", body = ErrorBody),
        (status = 404, description = "The image is not stored here (`image_not_found`)", body = ErrorBody),
        (status = 422, description = "The image cannot run a desktop session (`desktop_failed`)", body = ErrorBody),
        (status = 502, description = "The image's registry answered wrongly", body = ErrorBody),
        (status = 503, description = "No room for another sandbox now (`capacity_exhausted`), or the default image cannot be prepared", body = ErrorBody),
        (status = 507, description = "The host has no room for the sandbox's disk (`insufficient_storage`)", body = ErrorBody),
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

/// Lists sandboxes (running and failed ones).
///
/// `GET /v1/runs?metadata[team]=a&metadata[user]=b` lists sandboxes whose metadata has all those
/// pairs. `metadata.team=a` is the same filter in the older dotted form.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(
        ("metadata" = Option<BTreeMap<String, String>>, Query, style = DeepObject, explode,
         description = "Filter: `metadata[KEY]=VALUE` pairs (OpenAPI `deepObject`) that must all \
                        match; `metadata.KEY=VALUE` is accepted too. A bare `metadata`, a nested \
                        key or a key given twice is a 400. Other query parameters are ignored."),
    ),
    responses(
        (status = 200, description = "The sandboxes", body = RunList),
        (status = 400, description = "A malformed `metadata` filter", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(State(s): AppStateRef, RawQuery(q): RawQuery) -> ApiResult<Json<RunList>> {
    let filter = metadata_filter(&q.unwrap_or_default())?;
    Ok(Json(RunList {
        runs: s.runner.list(&filter),
    }))
}

/// The metadata filter of a list query: `metadata[KEY]=VALUE` (deepObject) or `metadata.KEY=VALUE`.
fn metadata_filter(query: &str) -> ApiResult<BTreeMap<String, String>> {
    let bad = |m: String| ApiError::invalid("metadata", m);
    let mut filter = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let key = if let Some(rest) = k.strip_prefix("metadata[") {
            match rest.strip_suffix(']') {
                Some(key) if !key.is_empty() && !key.contains(['[', ']']) => key.to_string(),
                _ => {
                    return Err(bad(format!(
                        "malformed filter parameter {k:?}: use metadata[KEY]=VALUE"
                    )))
                }
            }
        } else if let Some(key) = k.strip_prefix("metadata.") {
            if key.is_empty() {
                return Err(bad(format!(
                    "malformed filter parameter {k:?}: use metadata[KEY]=VALUE"
                )));
            }
            key.to_string()
        } else if k == "metadata" {
            return Err(bad(
                "metadata filters are metadata[KEY]=VALUE pairs (or metadata.KEY=VALUE)".into(),
            ));
        } else {
            continue;
        };
        if filter.insert(key.clone(), v.into_owned()).is_some() {
            return Err(bad(format!("metadata filter {key:?} given twice")));
        }
    }
    Ok(filter)
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

/// The end (at most 1 MiB) of the sandbox's console log: what its init (the guest agent) printed.
/// Kept after the sandbox failed (`on_failure: keep`), until the run is deleted.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/logs",
    operation_id = "run_logs",
    tag = "runs",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The log's last bytes", content_type = "text/plain", body = String),
        (status = 404, description = "No such sandbox", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn logs(State(s): AppStateRef, Path(id): Path<String>) -> ApiResult<Response> {
    let bytes = s.runner.logs(&id)?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], bytes).into_response())
}

/// Stops and deletes a sandbox and everything it left on the host (a failed sandbox: its record
/// and log).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filter_forms() {
        let f = metadata_filter("metadata%5Bteam%5D=b&metadata.user=u&other=1").unwrap();
        assert_eq!(
            f,
            BTreeMap::from([
                ("team".to_string(), "b".to_string()),
                ("user".to_string(), "u".to_string())
            ])
        );
        assert!(metadata_filter("").unwrap().is_empty());
        for bad in [
            "metadata=x",
            "metadata[]=x",
            "metadata[a][b]=x",
            "metadata[a=x",
            "metadata.=x",
            "metadata[a]=1&metadata.a=2",
        ] {
            assert_eq!(
                metadata_filter(bad).unwrap_err().field.as_deref(),
                Some("metadata"),
                "{bad}"
            );
        }
    }
}
