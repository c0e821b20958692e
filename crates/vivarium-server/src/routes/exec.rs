use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use vivarium_api::{
    ErrorBody, ExecEvent, ExecRequest, ExecResponse, Process, ProcessList, SignalRequest,
};
use vivarium_proto::ExecEvent as AgentEvent;

use super::AppStateRef;
use crate::convert::{self, agent_error};
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_json, ApiJson};

/// Runs a command to completion and answers its output (or, with `background`, starts it).
///
/// While it runs, the command is listed under `GET /v1/runs/{id}/processes` (so it can be
/// signalled). If the answer cannot be delivered — the client disconnected or the runner was
/// restarted — the command is not killed: it runs on until it ends or its `timeout_s`, and its
/// status and output (the last 1 MiB of each stream) stay available through
/// `GET /processes/{pid}` and `POST /processes/{pid}/wait`; find it by its `argv`.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/exec",
    operation_id = "exec",
    tag = "exec",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The finished command", body = ExecResponse),
        (status = 201, description = "`background: true`: the started process", body = Process),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn exec(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Response> {
    if req.background {
        let p = spawn_inner(&s, &id, req).await?;
        return Ok((StatusCode::CREATED, Json(p)).into_response());
    }
    let agent = s.runner.agent(&id)?;
    let proto = convert::exec_request(&req, true)?;
    let oom_before = s.runner.oom_kills(&id);
    let started = Instant::now();
    let r = agent
        .exec(proto)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    // Anything the OOM killer killed in the sandbox meanwhile counts (a child of the shell, too).
    let oom_killed = s.runner.oom_kills(&id) > oom_before;
    Ok(Json(ExecResponse {
        exit_code: r.exit_code,
        signal: r.signal,
        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        timed_out: r.timed_out,
        oom_killed,
        truncated: r.stdout_truncated || r.stderr_truncated,
        duration_ms: started.elapsed().as_millis() as u64,
    })
    .into_response())
}

#[utoipa::path(
    post,
    path = "/v1/runs/{id}/exec/stream",
    operation_id = "exec_stream",
    tag = "exec",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "One `ExecEvent` JSON object per line: `started`, then `stdout`/`stderr`, then `exit` or `error`",
         content_type = "application/x-ndjson", body = ExecEvent),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
/// Output as it is produced: one JSON object per line (`application/x-ndjson`). Closing the
/// connection kills the process; if the runner itself restarts, the process runs on (detached)
/// and is found under `GET /v1/runs/{id}/processes`.
pub async fn exec_stream(
    State(s): AppStateRef,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: ExecRequest = parse_json(&body)?;
    let agent = s.runner.agent(&id)?;
    let mut proto = convert::exec_request(&req, true)?;
    let stdin = std::mem::take(&mut proto.stdin);
    let oom_before = s.runner.oom_kills(&id);
    let mut stream = agent
        .exec_stream(proto)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    // A client that hangs up means stop (the agent only detaches on a dropped connection).
    stream.cancel_on_drop();
    if !stdin.is_empty() {
        stream
            .write_stdin(stdin)
            .await
            .map_err(|e| agent_error(&s.runner, &id, e))?;
    }
    stream
        .close_stdin()
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    let runner = s.runner.clone();
    let events = futures::stream::unfold(Some(stream), move |state| {
        let runner = runner.clone();
        let id = id.clone();
        async move {
            let mut stream = state?;
            let event = match stream.next().await {
                None => return None,
                Some(Ok(AgentEvent::Started { pid })) => ExecEvent::Started { pid },
                Some(Ok(AgentEvent::Stdout(b))) => ExecEvent::Stdout {
                    data: String::from_utf8_lossy(&b).into_owned(),
                },
                Some(Ok(AgentEvent::Stderr(b))) => ExecEvent::Stderr {
                    data: String::from_utf8_lossy(&b).into_owned(),
                },
                Some(Ok(AgentEvent::Exited(vivarium_proto::ExitStatus {
                    exit_code,
                    signal,
                    timed_out,
                }))) => {
                    let oom_killed = runner.oom_kills(&id) > oom_before;
                    let line = ndjson(&ExecEvent::Exit {
                        exit_code,
                        signal,
                        timed_out,
                        oom_killed,
                    });
                    return Some((Ok::<_, std::io::Error>(line), None));
                }
                Some(Err(e)) => {
                    let line = ndjson(&ExecEvent::Error {
                        error: agent_error(&runner, &id, e).detail(),
                    });
                    return Some((Ok(line), None));
                }
            };
            Some((Ok(ndjson(&event)), Some(stream)))
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(events),
    )
        .into_response())
}

fn ndjson<T: serde::Serialize>(v: &T) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    Bytes::from(line)
}

async fn spawn_inner(s: &super::AppState, id: &str, req: ExecRequest) -> ApiResult<Process> {
    let agent = s.runner.agent(id)?;
    let proto = convert::exec_request(&req, false)?;
    let p = agent
        .spawn(proto)
        .await
        .map_err(|e| agent_error(&s.runner, id, e))?;
    Ok(convert::process(p))
}

/// Starts a background process.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/processes",
    operation_id = "spawn_process",
    tag = "exec",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 201, description = "The started process", body = Process),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn spawn(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<(StatusCode, Json<Process>)> {
    Ok((StatusCode::CREATED, Json(spawn_inner(&s, &id, req).await?)))
}

/// The sandbox's background processes, its running execs, and execs whose caller went away
/// (detached: they run on; their output is kept, the last 1 MiB per stream).
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/processes",
    operation_id = "list_processes",
    tag = "exec",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Background processes, running execs and detached execs", body = ProcessList),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn processes(
    State(s): AppStateRef,
    Path(id): Path<String>,
) -> ApiResult<Json<ProcessList>> {
    let agent = s.runner.agent(&id)?;
    let list = agent
        .processes()
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    Ok(Json(ProcessList {
        processes: list.into_iter().map(convert::process).collect(),
    }))
}

/// One background process.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/processes/{pid}",
    operation_id = "get_process",
    tag = "exec",
    params(("id" = String, Path, description = "Sandbox id"), ("pid" = u32, Path, description = "The process id inside the sandbox")),
    responses(
        (status = 200, description = "The process", body = Process),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn process(
    State(s): AppStateRef,
    Path((id, pid)): Path<(String, String)>,
) -> ApiResult<Json<Process>> {
    let pid = parse_pid(&pid)?;
    let agent = s.runner.agent(&id)?;
    let list = agent
        .processes()
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    list.into_iter()
        .find(|p| p.pid == pid)
        .map(|p| Json(convert::process(p)))
        .ok_or_else(|| ApiError::not_found(format!("no background process {pid} in sandbox {id}")))
}

/// Sends a signal to a background process's group.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/processes/{pid}/signal",
    operation_id = "signal_process",
    tag = "exec",
    params(("id" = String, Path, description = "Sandbox id"), ("pid" = u32, Path, description = "The process id inside the sandbox")),
    request_body = SignalRequest,
    responses(
        (status = 204, description = "Sent"),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn signal(
    State(s): AppStateRef,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> ApiResult<StatusCode> {
    let pid = parse_pid(&pid)?;
    let signal = parse_signal(&req.signal)?;
    let agent = s.runner.agent(&id)?;
    agent
        .signal(pid, signal)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/runs/{id}/processes/{pid}/wait`
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    /// Give up after this many seconds (0–86400) and answer the still running process.
    #[serde(default)]
    timeout_s: Option<f64>,
}

/// Waits for a background process to exit (or `timeout_s` to pass) and answers it.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/processes/{pid}/wait",
    operation_id = "wait_process",
    tag = "exec",
    params(("id" = String, Path, description = "Sandbox id"), ("pid" = u32, Path, description = "The process id inside the sandbox")),
    request_body = WaitRequest,
    responses(
        (status = 200, description = "The process; `running` is still true if the wait timed out", body = Process),
        (status = 400, description = "A field is invalid (`error.field` names it)", body = ErrorBody),
        (status = 404, description = "No such sandbox (or process)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its agent went away", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn wait(
    State(s): AppStateRef,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(req): ApiJson<WaitRequest>,
) -> ApiResult<Json<Process>> {
    let pid = parse_pid(&pid)?;
    let timeout = match req.timeout_s {
        Some(t) if !(t.is_finite() && (0.0..=86_400.0).contains(&t)) => {
            return Err(ApiError::invalid(
                "timeout_s",
                "timeout_s must be between 0 and 86400",
            ));
        }
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    let agent = s.runner.agent(&id)?;
    let p = agent
        .wait(pid, timeout)
        .await
        .map_err(|e| agent_error(&s.runner, &id, e))?;
    Ok(Json(convert::process(p)))
}

fn parse_pid(s: &str) -> ApiResult<u32> {
    s.parse::<u32>().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::invalid("pid", format!("pid must be a positive integer, got {s:?}"))
    })
}

/// A signal given as a number or a name (`TERM`, `SIGTERM`, `kill`).
pub fn parse_signal(v: &serde_json::Value) -> ApiResult<i32> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ABRT", 6),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("WINCH", 28),
    ];
    let bad = || {
        ApiError::invalid(
            "signal",
            format!("unknown signal {v}: use a number 1-64 or a name like TERM"),
        )
    };
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .filter(|n| (1..=64).contains(n))
            .map(|n| n as i32)
            .ok_or_else(bad),
        serde_json::Value::String(s) => {
            let up = s.trim().to_ascii_uppercase();
            let name = up.strip_prefix("SIG").unwrap_or(&up);
            NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, n)| *n)
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signals() {
        assert_eq!(parse_signal(&json!(15)).unwrap(), 15);
        assert_eq!(parse_signal(&json!("sigkill")).unwrap(), 9);
        assert_eq!(parse_signal(&json!("TERM")).unwrap(), 15);
        assert!(parse_signal(&json!("NOPE")).is_err());
        assert!(parse_signal(&json!(0)).is_err());
        assert!(parse_signal(&json!(true)).is_err());
    }
}
