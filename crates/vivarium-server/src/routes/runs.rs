use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use vivarium_api::{CreateRunRequest, Run, RunList, SetTimeoutRequest};

use super::AppStateRef;
use crate::error::ApiResult;
use crate::extract::ApiJson;

pub async fn create(
    State(s): AppStateRef,
    ApiJson(req): ApiJson<CreateRunRequest>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let run = s.runner.create(req).await?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// `GET /v1/runs?metadata.team=a&metadata.user=b` lists sandboxes whose metadata has all those pairs.
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

pub async fn get(State(s): AppStateRef, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    Ok(Json(s.runner.get(&id)?))
}

pub async fn delete(State(s): AppStateRef, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.runner.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_timeout(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetTimeoutRequest>,
) -> ApiResult<Json<Run>> {
    Ok(Json(s.runner.set_timeout(&id, req.timeout_s)?))
}
