//! The runner's HTTP API, version 1: every JSON body that crosses `/v1`, defined once.
//!
//! The server (`vivarium-server`) deserialises requests and serialises responses with these types and
//! the Rust client (`vivarium-client`) does the reverse, so the two cannot drift apart. Field names
//! follow what agent developers already use (`image`, `vcpus`, `mem_mib`, `timeout_s`, `exit_code`…).

pub mod desktop;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Default vCPUs of a sandbox when `vcpus` is omitted.
pub const DEFAULT_VCPUS: f64 = 2.0;
/// Default memory limit of a sandbox in MiB when `mem_mib` is omitted.
pub const DEFAULT_MEM_MIB: u64 = 2048;
/// Default lifetime of a sandbox in seconds when `timeout_s` is omitted.
pub const DEFAULT_TIMEOUT_S: u64 = 300;
/// Longest lifetime a sandbox may be given at once (7 days).
pub const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
/// Smallest and largest memory limits accepted.
pub const MIN_MEM_MIB: u64 = 32;
pub const MAX_MEM_MIB: u64 = 1024 * 1024;
/// Largest vCPU count accepted.
pub const MAX_VCPUS: f64 = 256.0;

/// `POST /v1/runs`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    /// OCI image reference with a pinned tag or a digest (`python:3.12-slim`, `repo@sha256:…`).
    /// Omitted: the runner's default image (the desktop, once one is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mib: Option<u64>,
    /// Cap on the sandbox's writable scratch layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Seconds until the runner deletes the sandbox; extend with `POST /v1/runs/{id}/timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Extra environment for every process in the sandbox (on top of the image's ENV).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Free-form labels; `GET /v1/runs?metadata.KEY=VALUE` filters on them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// `nat` (default): own network namespace with NAT egress. `none`: loopback only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    /// Desktop screen size `[width, height]` (default 1280×800). Desktop images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<[u32; 2]>,
    /// Start the desktop session (Xvfb, window manager, Chromium, VNC). Default: on when the image
    /// is a desktop image (label `org.vivarium.image=desktop`), off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<bool>,
}

/// Default desktop resolution.
pub const DEFAULT_RESOLUTION: [u32; 2] = [1280, 800];
/// Image label that marks a desktop image.
pub const DESKTOP_LABEL: &str = "org.vivarium.image";
/// Value of [`DESKTOP_LABEL`] on desktop images.
pub const DESKTOP_LABEL_VALUE: &str = "desktop";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    #[default]
    Nat,
    None,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Creating,
    Running,
    Deleting,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Run {
    pub id: String,
    pub state: RunState,
    pub image: String,
    pub image_digest: String,
    pub vcpus: f64,
    pub mem_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    pub network: NetworkMode,
    /// The sandbox's address on its veth (reachable from the host only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub env: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// How many processes the kernel OOM-killed in this sandbox so far.
    #[serde(default)]
    pub oom_kills: u64,
    /// Opens this sandbox's port proxy (`/sb/{id}/p/{port}/…?token=`) without the API key, so
    /// the URLs below can be handed to a browser or to Playwright.
    #[serde(default)]
    pub access_token: String,
    /// Desktop sandboxes: the screen and the URLs to drive and watch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<DesktopInfo>,
    /// Chrome DevTools Protocol endpoint through the port proxy (for `connect_over_cdp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdp_url: Option<String>,
    /// The noVNC live view through the port proxy, connected and scaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DesktopInfo {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunList {
    pub runs: Vec<Run>,
}

/// `POST /v1/runs/{id}/timeout`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetTimeoutRequest {
    /// New lifetime in seconds, counted from now.
    pub timeout_s: u64,
}

/// `POST /v1/runs/{id}/exec`, `/exec/stream` and `/processes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// A shell command line, run with `/bin/sh -c`. Exactly one of `command` and `argv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A program and its arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// User name or `uid[:gid]` inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Text written to the process's standard input, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Kill the process group after this many seconds (default 60 for `exec`, none for background).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Start in the background and return its pid at once (same as `POST /processes`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
}

/// Default timeout of a foreground `exec`.
pub const DEFAULT_EXEC_TIMEOUT_S: f64 = 60.0;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecResponse {
    /// Exit status; `null` when the process was killed by a signal.
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub timed_out: bool,
    /// The kernel OOM killer ended the process (the sandbox went past `mem_mib`).
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub truncated: bool,
    pub duration_ms: u64,
}

/// One line of the NDJSON stream answered by `POST /v1/runs/{id}/exec/stream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        timed_out: bool,
        oom_killed: bool,
    },
    Error {
        error: ErrorDetail,
    },
}

/// A background process (`POST /v1/runs/{id}/processes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Process {
    pub pid: u32,
    pub argv: Vec<String>,
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Output captured so far (bounded; the oldest bytes go first).
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessList {
    pub processes: Vec<Process>,
}

/// `POST /v1/runs/{id}/processes/{pid}/signal`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// A number (`15`) or a name (`TERM`, `SIGKILL`).
    pub signal: serde_json::Value,
}

/// `POST /v1/runs/{id}/files` (small writes as JSON; large ones use `PUT /files?path=` with a raw body).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WriteFileRequest {
    pub path: String,
    pub content: String,
    /// `utf8` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Octal permission bits as a string (`"0644"`) or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<serde_json::Value>,
}

/// `POST /v1/runs/{id}/files/mkdir`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    pub path: String,
    #[serde(default = "yes")]
    pub parents: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileInfo {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits, e.g. 420 (= 0644).
    pub mode: u32,
    pub modified_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileList {
    pub entries: Vec<FileInfo>,
}

/// `POST /v1/images/build`, `POST /v1/images/pull`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BuildImageRequest {
    pub image: String,
}

/// `POST /v1/images/import`: an OCI layout (directory or tar) on the runner's host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImportImageRequest {
    pub path: String,
    /// The reference to store it under, e.g. `vivarium/desktop:1`.
    pub tag: String,
}

/// `POST /v1/images/push`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PushImageRequest {
    /// A stored image (reference or digest).
    pub image: String,
    /// Where to push it, e.g. `registry.example.com/team/desktop:1`.
    pub target: String,
}

/// What `POST /v1/images/push` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushImageResponse {
    /// Where the image went.
    pub target: String,
    /// The manifest digest the registry stored.
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Image {
    pub reference: String,
    pub digest: String,
    pub size_bytes: u64,
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// One line of the NDJSON progress stream of `POST /v1/images/build` when the client sends
/// `Accept: application/x-ndjson`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageProgress {
    Resolving,
    Layer {
        digest: String,
        downloaded: u64,
        total: u64,
    },
    Unpacking {
        digest: String,
    },
    Done {
        image: Image,
    },
    Error {
        error: ErrorDetail,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// Every error the API answers: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code: `invalid_argument`, `not_found`, `unauthorized`, `conflict`,
    /// `unpinned_tag`, `image_not_found`, `registry_unreachable`, `timeout`, `internal`…
    pub code: String,
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl std::fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({}): {}", self.code, field, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_request_defaults_and_unknown_fields() {
        let r: CreateRunRequest = serde_json::from_str(r#"{"image":"busybox:1.36"}"#).unwrap();
        assert_eq!(r.image.as_deref(), Some("busybox:1.36"));
        assert!(r.vcpus.is_none() && r.env.is_empty());
        let err =
            serde_json::from_str::<CreateRunRequest>(r#"{"image":"a:1","memory":5}"#).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn exec_event_wire_shape() {
        let e = ExecEvent::Exit {
            exit_code: Some(3),
            signal: None,
            timed_out: false,
            oom_killed: false,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "exit");
        assert_eq!(v["exit_code"], 3);
    }
}
