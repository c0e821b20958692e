//! Translations between the HTTP API's types and those of the crates below it (protocol, image store,
//! isolation driver), including which HTTP status each of their errors becomes.

use axum::http::StatusCode;
use chrono::{DateTime, TimeZone, Utc};
use vivarium_api as api;
use vivarium_image::{ErrorKind, ImageError, ImageInfo, PullProgress};
use vivarium_isolation::DriverError;
use vivarium_proto::client::ClientError;
use vivarium_proto::{ErrorCode, ExecRequest, ExecSpec, FileStat, ProcessInfo};

use crate::error::{ApiError, ApiResult};
use crate::runner::Runner;

/// Largest output captured per stream by a buffered exec.
const EXEC_OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;

pub fn exec_request(req: &api::ExecRequest, foreground: bool) -> ApiResult<ExecRequest> {
    let argv = match (&req.command, &req.argv) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "command",
                "give either command or argv, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "command",
                "command (a shell string) or argv is required",
            ))
        }
        (Some(cmd), None) if cmd.trim().is_empty() => {
            return Err(ApiError::invalid("command", "command is empty"))
        }
        (Some(cmd), None) => vec!["/bin/sh".to_string(), "-c".to_string(), cmd.clone()],
        (None, Some(argv)) if argv.is_empty() || argv[0].is_empty() => {
            return Err(ApiError::invalid(
                "argv",
                "argv needs at least a program name",
            ));
        }
        (None, Some(argv)) => argv.clone(),
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid(
            if req.command.is_some() {
                "command"
            } else {
                "argv"
            },
            "arguments cannot contain NUL",
        ));
    }
    if let Some(cwd) = &req.cwd {
        if !cwd.starts_with('/') {
            return Err(ApiError::invalid(
                "cwd",
                format!("cwd must be an absolute path, got {cwd:?}"),
            ));
        }
    }
    crate::runner::check_env(&req.env)?;
    let timeout_s = match req.timeout_s {
        // At least a millisecond: the agent counts in whole milliseconds.
        Some(t) if !(t.is_finite() && (0.001..=api::MAX_TIMEOUT_S as f64).contains(&t)) => {
            return Err(ApiError::invalid(
                "timeout_s",
                format!("timeout_s must be between 0.001 and {}", api::MAX_TIMEOUT_S),
            ));
        }
        Some(t) => Some(t),
        None if foreground => Some(api::DEFAULT_EXEC_TIMEOUT_S),
        None => None,
    };
    Ok(ExecRequest {
        spec: ExecSpec {
            argv,
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            user: req.user.clone(),
            timeout_ms: timeout_s.map(|t| (t * 1000.0) as u64),
            output_limit: Some(EXEC_OUTPUT_LIMIT),
        },
        stdin: req
            .stdin
            .clone()
            .map(|s| bytes::Bytes::from(s.into_bytes()))
            .unwrap_or_default(),
    })
}

pub fn process(p: ProcessInfo) -> api::Process {
    api::Process {
        pid: p.pid,
        argv: p.argv,
        running: p.running,
        exit_code: p.exit.and_then(|e| e.exit_code),
        signal: p.exit.and_then(|e| e.signal),
        stdout: String::from_utf8_lossy(&p.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&p.stderr).into_owned(),
    }
}

fn ms_to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

pub fn file_info(st: FileStat) -> api::FileInfo {
    api::FileInfo {
        name: st.name,
        path: st.path,
        file_type: match st.file_type {
            vivarium_proto::FileType::File => api::FileType::File,
            vivarium_proto::FileType::Dir => api::FileType::Dir,
            vivarium_proto::FileType::Symlink => api::FileType::Symlink,
            vivarium_proto::FileType::Other => api::FileType::Other,
        },
        size: st.size,
        mode: st.mode,
        modified_at: ms_to_time(st.mtime_ms),
    }
}

pub fn file_entry(st: FileStat) -> api::FileInfo {
    file_info(st)
}

pub fn image(i: &ImageInfo) -> api::Image {
    api::Image {
        reference: i.reference.clone(),
        digest: i.digest.clone(),
        size_bytes: i.size_bytes,
        env: i.config.env.clone(),
        created_at: Some(i.created_at),
    }
}

pub fn progress(p: PullProgress) -> api::ImageProgress {
    match p {
        PullProgress::Resolving => api::ImageProgress::Resolving,
        PullProgress::Layer {
            digest,
            downloaded,
            total,
        } => api::ImageProgress::Layer {
            digest,
            downloaded,
            total,
        },
        PullProgress::Unpacking { digest } => api::ImageProgress::Unpacking { digest },
        PullProgress::Done { digest } => api::ImageProgress::Layer {
            digest,
            downloaded: 0,
            total: 0,
        },
    }
}

/// Image errors: the caller's reference is at fault (4xx) unless the store itself failed.
pub fn image_error(e: ImageError) -> ApiError {
    let status = match (&e, e.kind()) {
        (_, ErrorKind::InvalidInput) => StatusCode::BAD_REQUEST,
        (_, ErrorKind::NotFound) => StatusCode::NOT_FOUND,
        // An unreachable or refusing registry is a property of the reference the caller gave.
        (ImageError::Unreachable { .. } | ImageError::Unauthorized { .. }, _) => {
            StatusCode::BAD_REQUEST
        }
        (_, ErrorKind::Upstream) => StatusCode::BAD_GATEWAY,
        (_, ErrorKind::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.code(), e.to_string())
}

/// Driver errors of a create. Requests are validated against the driver's own limits first, so
/// what is left is the host running out of something (503/507) or the runner failing (500).
pub fn driver_error(e: DriverError) -> ApiError {
    let storage = |source: &std::io::Error| {
        matches!(
            source.raw_os_error(),
            Some(nix::libc::ENOSPC) | Some(nix::libc::EFBIG) | Some(nix::libc::EDQUOT)
        )
    };
    match &e {
        DriverError::AddressesExhausted(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "capacity_exhausted",
            format!("this runner cannot start another sandbox now: {e}"),
        ),
        DriverError::Io { source, .. } if storage(source) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!("the host has no room for this sandbox's disk: {e}"),
        )
        .with_field("disk_mib"),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sandbox_create_failed",
            e.to_string(),
        ),
    }
}

/// Errors from a sandbox's guest agent. The agent's typed codes map to 4xx; a sandbox whose agent
/// no longer answers is reported as unavailable (its neighbours and the runner are unaffected).
pub fn agent_error(runner: &Runner, id: &str, e: ClientError) -> ApiError {
    match e {
        ClientError::Agent {
            code,
            message,
            field,
        } => {
            let (status, c) = match code {
                ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
                ErrorCode::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
                ErrorCode::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
                ErrorCode::IsADirectory => (StatusCode::BAD_REQUEST, "is_a_directory"),
                ErrorCode::NotADirectory => (StatusCode::BAD_REQUEST, "not_a_directory"),
                ErrorCode::Timeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
                ErrorCode::VersionMismatch => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "version_mismatch")
                }
                ErrorCode::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
                // The sandbox is at its pids or memory limit; retrying later can succeed.
                ErrorCode::ResourceExhausted => {
                    (StatusCode::SERVICE_UNAVAILABLE, "resource_exhausted")
                }
                ErrorCode::Internal | ErrorCode::Unknown => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            };
            // "Not found" of something a request field names (the program of `argv`, `cwd`, a
            // `user`, a window `id`) is a bad request: the addressed resource itself exists.
            let status = match (code, field.as_deref()) {
                (ErrorCode::NotFound, Some("argv" | "cwd" | "user" | "app" | "id")) => {
                    StatusCode::BAD_REQUEST
                }
                _ => status,
            };
            let e = ApiError::new(status, c, message);
            match field {
                Some(f) => e.with_field(f),
                None => e,
            }
        }
        // A wedged agent: the sandbox did not answer in time.
        ClientError::Timeout { .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "sandbox_timeout",
            format!("sandbox {id}: {e}"),
        ),
        ClientError::Connect(_) | ClientError::Io(_) | ClientError::Unresponsive { .. } => {
            tracing::warn!(sandbox = %id, error = %e, "guest agent not answering");
            // 409 `sandbox_failed` with the reason when the sandbox died, `sandbox_unavailable`
            // while it still runs, 404 once it is gone.
            runner.unavailable_error(id, &e)
        }
        other => ApiError::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_becomes_shell_argv() {
        let r = exec_request(
            &api::ExecRequest {
                command: Some("echo hi".into()),
                ..Default::default()
            },
            true,
        )
        .unwrap();
        assert_eq!(r.spec.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(r.spec.timeout_ms, Some(60_000));
        let bg = exec_request(
            &api::ExecRequest {
                argv: Some(vec!["sleep".into(), "1".into()]),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert_eq!(bg.spec.timeout_ms, None);
    }

    #[test]
    fn exec_request_errors_name_fields() {
        let f = |r: api::ExecRequest| exec_request(&r, true).unwrap_err().field.unwrap();
        assert_eq!(f(Default::default()), "command");
        assert_eq!(
            f(api::ExecRequest {
                argv: Some(vec![]),
                ..Default::default()
            }),
            "argv"
        );
        assert_eq!(
            f(api::ExecRequest {
                command: Some("x".into()),
                cwd: Some("rel".into()),
                ..Default::default()
            }),
            "cwd"
        );
        assert_eq!(
            f(api::ExecRequest {
                command: Some("x".into()),
                timeout_s: Some(-1.0),
                ..Default::default()
            }),
            "timeout_s"
        );
    }
}
