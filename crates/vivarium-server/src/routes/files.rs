use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use vivarium_api::{ErrorBody, FileInfo, FileList, MkdirRequest, WriteFileRequest};
use vivarium_proto::WriteOptions;

use super::AppStateRef;
use crate::convert::{self, agent_error};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};

#[derive(Deserialize)]
pub struct PathQuery {
    path: String,
}

#[derive(Deserialize)]
pub struct UploadQuery {
    path: String,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
pub struct ListQuery {
    path: String,
    #[serde(default)]
    depth: Option<String>,
}

#[derive(Deserialize)]
pub struct RemoveQuery {
    path: String,
    #[serde(default)]
    recursive: Option<String>,
}

fn check_path(path: &str) -> ApiResult<()> {
    if !path.starts_with('/') {
        return Err(ApiError::invalid(
            "path",
            format!("path must be absolute, got {path:?}"),
        ));
    }
    if path.contains('\0') {
        return Err(ApiError::invalid("path", "path cannot contain NUL"));
    }
    Ok(())
}

/// Paths a request may change: not `/` and nothing under `/.vivarium` (the agent's binary and its
/// socket live there; removing the socket would cut the sandbox off).
fn check_mutable(path: &str) -> ApiResult<()> {
    check_path(path)?;
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    match parts.first() {
        None => Err(ApiError::invalid("path", "refusing to change /")),
        Some(&".vivarium") => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("{path} is the sandbox agent's own directory (/.vivarium)"),
        )
        .with_field("path")),
        Some(_) => Ok(()),
    }
}

/// Octal mode from `"0644"`, `"644"` or the number 420.
fn parse_mode(v: Option<&serde_json::Value>) -> ApiResult<Option<u32>> {
    let bad = |m: String| ApiError::invalid("mode", m);
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .filter(|m| *m <= 0o7777)
            .map(|m| Some(m as u32))
            .ok_or_else(|| bad(format!("mode must be 0..=0o7777, got {n}"))),
        Some(serde_json::Value::String(s)) => parse_mode_str(s).map(Some),
        Some(other) => Err(bad(format!(
            "mode must be an octal string like \"0644\", got {other}"
        ))),
    }
}

fn parse_mode_str(s: &str) -> ApiResult<u32> {
    let t = s.trim().trim_start_matches("0o");
    u32::from_str_radix(t, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            ApiError::invalid(
                "mode",
                format!("mode must be an octal string like \"0644\", got {s:?}"),
            )
        })
}

fn parse_bool(field: &str, v: Option<&str>) -> ApiResult<bool> {
    match v.map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if ["1", "true", "yes"].contains(&s.as_str()) => Ok(true),
        Some(s) if ["0", "false", "no", ""].contains(&s.as_str()) => Ok(false),
        Some(s) => Err(ApiError::invalid(
            field,
            format!("{field} must be true or false, got {s:?}"),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/runs/{id}/files",
    operation_id = "read_file",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Absolute path in the sandbox")),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /v1/runs/{id}/files?path=/abs/file`: the file's bytes, streamed.
pub async fn download(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Response> {
    check_path(&q.path)?;
    let agent = s.runner.agent(&id)?;
    let (stat, stream) = agent
        .read_file_stream(&q.path)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    let body = Body::from_stream(stream.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, stat.size.to_string()),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(
    put,
    path = "/v1/runs/{id}/files",
    operation_id = "upload_file",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Absolute path in the sandbox"), ("mode" = Option<String>, Query, description = "Octal permission bits, e.g. `0644`")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's new content"),
    responses(
        (status = 201, description = "The written file", body = FileInfo),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `PUT /v1/runs/{id}/files?path=/abs/file&mode=0644`: the body becomes the file (parents created,
/// written to a temporary name and renamed into place, so readers never see half a file). The body
/// is streamed to the agent, never buffered whole, and may be at most the sandbox's `disk_mib` (or,
/// without one, what the runner's data directory has free): a larger `Content-Length` is refused
/// before any byte is read, a longer chunked body when it passes the limit.
pub async fn upload(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<FileInfo>)> {
    check_mutable(&q.path)?;
    let mode = q.mode.as_deref().map(parse_mode_str).transpose()?;
    let agent = s.runner.agent(&id)?;
    let limit = s.runner.upload_limit(&id)?;
    let too_large = || {
        ApiError::too_large(format!(
            "the file is larger than this sandbox can hold ({limit} bytes: its disk_mib, or the \
             free space of the runner's data directory)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let exceeded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut seen = 0u64;
    let flag = exceeded.clone();
    let stream = body.into_data_stream().map(move |r| {
        let chunk = r.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(std::io::Error::other(
                "upload larger than the sandbox's disk",
            ));
        }
        Ok(chunk)
    });
    let stat = agent
        .write_file_stream(
            &q.path,
            WriteOptions {
                mode,
                create_parents: true,
                ..Default::default()
            },
            stream,
        )
        .await
        .map_err(|e| {
            let disk_full = matches!(
                &e,
                vivarium_proto::client::ClientError::Agent {
                    code: vivarium_proto::ErrorCode::NoSpace,
                    ..
                }
            );
            if exceeded.load(std::sync::atomic::Ordering::Relaxed) || disk_full {
                too_large()
            } else {
                agent_error(&s.runner, &id, e)
            }
        })?;
    Ok((StatusCode::CREATED, Json(convert::file_info(stat))))
}

#[utoipa::path(
    post,
    path = "/v1/runs/{id}/files",
    operation_id = "write_file",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = WriteFileRequest,
    responses(
        (status = 201, description = "The written file", body = FileInfo),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `POST /v1/runs/{id}/files` with `{path, content, encoding?, mode?}`.
pub async fn write_json(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<WriteFileRequest>,
) -> ApiResult<(StatusCode, Json<FileInfo>)> {
    check_mutable(&req.path)?;
    let mode = parse_mode(req.mode.as_ref())?;
    let data = match req.encoding.as_deref().unwrap_or("utf8") {
        "utf8" | "utf-8" | "text" => Bytes::from(req.content.into_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(req.content.trim())
                .map_err(|e| {
                    ApiError::invalid("content", format!("content is not valid base64: {e}"))
                })?,
        ),
        other => {
            return Err(ApiError::invalid(
                "encoding",
                format!("encoding must be utf8 or base64, got {other:?}"),
            ))
        }
    };
    let agent = s.runner.agent(&id)?;
    let stat = agent
        .write_file(
            &req.path,
            data,
            WriteOptions {
                mode,
                create_parents: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    Ok((StatusCode::CREATED, Json(convert::file_info(stat))))
}

/// Removes a file or (with `recursive`) a directory tree.
#[utoipa::path(
    delete,
    path = "/v1/runs/{id}/files",
    operation_id = "remove_file",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Absolute path in the sandbox"), ("recursive" = Option<bool>, Query, description = "Remove a directory and its contents")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn remove(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> ApiResult<StatusCode> {
    check_mutable(&q.path)?;
    let recursive = parse_bool("recursive", q.recursive.as_deref())?;
    let agent = s.runner.agent(&id)?;
    agent
        .remove(&q.path, recursive)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a directory.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/files/list",
    operation_id = "list_files",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Absolute path in the sandbox"), ("depth" = Option<u32>, Query, description = "Levels to descend, 1–32 (default 1)")),
    responses(
        (status = 200, description = "The entries", body = FileList),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<FileList>> {
    check_path(&q.path)?;
    let depth = match q.depth.as_deref() {
        None => 1,
        Some(d) => d
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=32).contains(d))
            .ok_or_else(|| {
                ApiError::invalid("depth", format!("depth must be 1..=32, got {d:?}"))
            })?,
    };
    let agent = s.runner.agent(&id)?;
    let entries = agent
        .list_dir(&q.path, depth)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    Ok(Json(FileList {
        entries: entries.into_iter().map(convert::file_entry).collect(),
    }))
}

/// Metadata of one path.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/files/stat",
    operation_id = "stat_file",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Query, description = "Absolute path in the sandbox")),
    responses(
        (status = 200, description = "The path's metadata", body = FileInfo),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stat(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<FileInfo>> {
    check_path(&q.path)?;
    let agent = s.runner.agent(&id)?;
    let st = agent
        .stat(&q.path)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    Ok(Json(convert::file_info(st)))
}

/// Creates a directory (and, by default, its parents).
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/files/mkdir",
    operation_id = "make_dir",
    tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MkdirRequest,
    responses(
        (status = 201, description = "Created"),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn mkdir(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MkdirRequest>,
) -> ApiResult<StatusCode> {
    check_mutable(&req.path)?;
    let mode = parse_mode(req.mode.as_ref())?;
    let agent = s.runner.agent(&id)?;
    agent
        .mkdir(&req.path, mode, req.parents)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    Ok(StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn modes() {
        assert_eq!(parse_mode(Some(&json!("0644"))).unwrap(), Some(0o644));
        assert_eq!(parse_mode(Some(&json!("755"))).unwrap(), Some(0o755));
        assert_eq!(parse_mode(Some(&json!(420))).unwrap(), Some(0o644));
        assert_eq!(parse_mode(None).unwrap(), None);
        assert_eq!(
            parse_mode(Some(&json!("9"))).unwrap_err().field.as_deref(),
            Some("mode")
        );
        assert!(parse_mode(Some(&json!(0o17777))).is_err());
    }

    #[test]
    fn mutable_paths() {
        assert!(check_mutable("/tmp/x").is_ok());
        assert!(check_mutable("/.vivariumx").is_ok());
        for bad in [
            "/",
            "//",
            "/.",
            "/a/..",
            "/.vivarium",
            "/.vivarium/run/agent.sock",
            "/x/../.vivarium/run",
        ] {
            assert_eq!(
                check_mutable(bad).unwrap_err().field.as_deref(),
                Some("path"),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths() {
        assert!(check_path("/etc/hosts").is_ok());
        assert_eq!(
            check_path("etc").unwrap_err().field.as_deref(),
            Some("path")
        );
    }
}
