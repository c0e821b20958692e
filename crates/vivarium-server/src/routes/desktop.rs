//! Desktop actions: screenshot, mouse, keyboard, clipboard, windows, launch — each one typed request
//! to the sandbox's guest agent, which speaks X11 itself (no process per action).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use vivarium_api::desktop::{
    ActionBatch, ActionResult, BatchResult, DesktopAction, ImageFormat, Region,
};
use vivarium_api::ErrorBody;

use super::AppStateRef;
use crate::convert::agent_error;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_json, ApiJson, ApiQuery};
use crate::runner::Runner;

/// Longest `wait` action accepted.
const MAX_WAIT_MS: u64 = 60_000;

fn check(action: &DesktopAction) -> ApiResult<()> {
    match action {
        DesktopAction::Wait { ms } if *ms > MAX_WAIT_MS => Err(ApiError::invalid(
            "ms",
            format!("wait is limited to {MAX_WAIT_MS} ms, got {ms}"),
        )),
        DesktopAction::Screenshot {
            quality: Some(q), ..
        } if !(1..=100).contains(q) => Err(ApiError::invalid(
            "quality",
            format!("quality must be 1-100, got {q}"),
        )),
        DesktopAction::Click { count, .. } if !(1..=3).contains(count) => Err(ApiError::invalid(
            "count",
            format!("count must be 1, 2 or 3, got {count}"),
        )),
        DesktopAction::Scroll { amount, .. } if *amount == 0 || *amount > 100 => Err(
            ApiError::invalid("amount", format!("amount must be 1-100, got {amount}")),
        ),
        DesktopAction::Drag { path, .. } if path.len() < 2 => Err(ApiError::invalid(
            "path",
            "a drag needs at least two points",
        )),
        DesktopAction::Open { url } if url.trim().is_empty() => {
            Err(ApiError::invalid("url", "url is empty"))
        }
        DesktopAction::Launch { app, .. } if app.trim().is_empty() => {
            Err(ApiError::invalid("app", "app is empty"))
        }
        _ => Ok(()),
    }
}

/// Runs one action; screenshots come back with their bytes separately.
async fn run_one(
    runner: &Runner,
    id: &str,
    action: DesktopAction,
) -> ApiResult<(ActionResult, Bytes)> {
    check(&action)?;
    let agent = runner.agent(id)?;
    runner.require_desktop(id)?;
    agent
        .desktop(action)
        .await
        .map_err(|e| agent_error(runner, id, e))
}

fn inline(result: ActionResult, data: Bytes) -> ActionResult {
    match result {
        ActionResult::Screenshot {
            format,
            width,
            height,
            ..
        } => ActionResult::Screenshot {
            format,
            width,
            height,
            data: base64::engine::general_purpose::STANDARD.encode(&data),
        },
        other => other,
    }
}

#[utoipa::path(
    post,
    path = "/v1/runs/{id}/desktop/actions",
    operation_id = "desktop_actions",
    tag = "desktop",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ActionBatch,
    responses(
        (status = 200, description = "One result per action, in order", body = BatchResult),
        (status = 400, description = "An action is invalid; `error.field` is `actions[i]...`", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox has no desktop, or is not running", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `POST /v1/runs/{id}/desktop/actions` `{"actions": [...]}`: in order, stopping at the first error
/// (whose message names the action's index).
pub async fn batch(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ActionBatch>,
) -> ApiResult<Json<BatchResult>> {
    if req.actions.is_empty() || req.actions.len() > 1000 {
        return Err(ApiError::invalid("actions", "give 1 to 1000 actions"));
    }
    let mut results = Vec::with_capacity(req.actions.len());
    for (i, action) in req.actions.into_iter().enumerate() {
        let name = action.name();
        let (r, data) = run_one(&s.runner, &id, action).await.map_err(|mut e| {
            e.message = format!("actions[{i}] ({name}): {}", e.message);
            e.field = Some(match e.field.take() {
                Some(f) => format!("actions[{i}].{f}"),
                None => format!("actions[{i}]"),
            });
            e
        })?;
        results.push(inline(r, data));
    }
    Ok(Json(BatchResult { results }))
}

#[utoipa::path(
    post,
    path = "/v1/runs/{id}/desktop/{action}",
    operation_id = "desktop_action",
    tag = "desktop",
    params(("id" = String, Path, description = "Sandbox id"), ("action" = String, Path, description = "A `DesktopAction` tag: `click`, `type`, `key`, `scroll`, `windows`, …")),
    request_body(content = HashMap<String, serde_json::Value>, description = "The action's fields (as in `DesktopAction`, without `action`); may be empty"),
    responses(
        (status = 200, description = "What the action answers", body = ActionResult),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox has no desktop, or is not running", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `POST /v1/runs/{id}/desktop/{action}` with the action's fields as the body (`{"x":1,"y":2}`).
pub async fn single(
    State(s): AppStateRef,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<ActionResult>> {
    let mut value: serde_json::Value = parse_json(&body)?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| ApiError::invalid("body", "the body must be a JSON object"))?;
    obj.insert("action".into(), serde_json::Value::String(action.clone()));
    let action: DesktopAction = serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown variant") {
            ApiError::invalid("action", format!("unknown desktop action {action:?}"))
        } else {
            let field = msg.split('`').nth(1).unwrap_or("body").to_string();
            ApiError::invalid(field, msg)
        }
    })?;
    let (r, data) = run_one(&s.runner, &id, action).await?;
    Ok(Json(inline(r, data)))
}

#[utoipa::path(
    post,
    path = "/v1/runs/{id}/desktop/screenshot",
    operation_id = "screenshot_json",
    tag = "desktop",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = HashMap<String, serde_json::Value>, description = "The `screenshot` action's fields (`format`, `quality`, `region`, `scale_to`, `cursor`); may be empty"),
    responses(
        (status = 200, description = "`{\"type\": \"screenshot\", ..., \"data\": <base64>}`", body = ActionResult),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox has no desktop, or is not running", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `POST /v1/runs/{id}/desktop/screenshot` answers JSON with base64 like every other action.
pub async fn screenshot_json(
    state: AppStateRef,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ActionResult>> {
    single(state, Path((id, "screenshot".to_string())), body).await
}

#[derive(Deserialize)]
pub struct ShotQuery {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    quality: Option<String>,
    /// Scale to this size.
    #[serde(default)]
    width: Option<String>,
    #[serde(default)]
    height: Option<String>,
    /// `x,y,width,height`
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

fn num<T: std::str::FromStr>(field: &str, v: &Option<String>) -> ApiResult<Option<T>> {
    v.as_deref()
        .map(|s| {
            s.parse::<T>().map_err(|_| {
                ApiError::invalid(field, format!("{field} must be a number, got {s:?}"))
            })
        })
        .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/runs/{id}/desktop/screenshot",
    operation_id = "screenshot",
    tag = "desktop",
    params(("id" = String, Path, description = "Sandbox id"), ("format" = Option<String>, Query, description = "`png` (default), `jpeg` or `webp`"), ("quality" = Option<u8>, Query, description = "JPEG/WebP quality 1–100"), ("width" = Option<u32>, Query, description = "Scale to this width (with `height`)"), ("height" = Option<u32>, Query, description = "Scale to this height (with `width`)"), ("region" = Option<String>, Query, description = "Capture only `x,y,width,height`"), ("cursor" = Option<bool>, Query, description = "Draw the mouse cursor")),
    responses(
        (status = 200, description = "The image", headers(("x-screenshot-width" = u32, description = "Image width"), ("x-screenshot-height" = u32, description = "Image height")),
         content(("image/png"), ("image/jpeg"), ("image/webp"))),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox", body = ErrorBody),
        (status = 409, description = "The sandbox has no desktop, or is not running", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /v1/runs/{id}/desktop/screenshot?format=png|jpeg|webp&quality=&width=&height=&region=x,y,w,h&cursor=1`:
/// the image itself (the fast path for agents: no base64, no JSON).
pub async fn screenshot(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ShotQuery>,
) -> ApiResult<Response> {
    let format = match q.format.as_deref().unwrap_or("png") {
        "png" => ImageFormat::Png,
        "jpeg" | "jpg" => ImageFormat::Jpeg,
        "webp" => ImageFormat::Webp,
        other => {
            return Err(ApiError::invalid(
                "format",
                format!("format must be png, jpeg or webp, got {other:?}"),
            ))
        }
    };
    let scale_to = match (
        num::<u32>("width", &q.width)?,
        num::<u32>("height", &q.height)?,
    ) {
        (Some(w), Some(h)) => Some([w, h]),
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "width",
                "give both width and height to scale",
            ))
        }
    };
    let region = match q.region.as_deref() {
        None => None,
        Some(r) => {
            let p: Vec<u32> = r
                .split(',')
                .map(|v| v.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    ApiError::invalid(
                        "region",
                        format!("region must be x,y,width,height, got {r:?}"),
                    )
                })?;
            match p[..] {
                [x, y, width, height] => Some(Region {
                    x,
                    y,
                    width,
                    height,
                }),
                _ => {
                    return Err(ApiError::invalid(
                        "region",
                        format!("region must be x,y,width,height, got {r:?}"),
                    ))
                }
            }
        }
    };
    let cursor = matches!(q.cursor.as_deref(), Some("1" | "true" | "yes"));
    let action = DesktopAction::Screenshot {
        format,
        quality: num("quality", &q.quality)?,
        region,
        scale_to,
        cursor,
    };
    let (r, data) = run_one(&s.runner, &id, action).await?;
    let (w, h) = match r {
        ActionResult::Screenshot { width, height, .. } => (width, height),
        other => {
            return Err(ApiError::internal(format!(
                "agent answered a screenshot with {other:?}"
            )))
        }
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, format.mime().to_string()),
            (
                header::HeaderName::from_static("x-screenshot-width"),
                w.to_string(),
            ),
            (
                header::HeaderName::from_static("x-screenshot-height"),
                h.to_string(),
            ),
        ],
        data,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_fields() {
        assert_eq!(
            check(&DesktopAction::Wait { ms: 61_000 })
                .unwrap_err()
                .field
                .as_deref(),
            Some("ms")
        );
        let drag = DesktopAction::Drag {
            path: vec![[1, 1]],
            button: Default::default(),
            modifiers: vec![],
        };
        assert_eq!(check(&drag).unwrap_err().field.as_deref(), Some("path"));
        assert!(check(&DesktopAction::ScreenSize).is_ok());
    }
}
