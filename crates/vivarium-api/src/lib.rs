//! The runner's HTTP API, version 1: every JSON body that crosses `/v1`, defined once.
//!
//! The server (`vivarium-server`) deserialises requests and serialises responses with these types and
//! the Rust client (`vivarium-client`) does the reverse, so the two cannot drift apart. Field names
//! follow what agent developers already use (`image`, `vcpus`, `mem_mib`, `timeout_s`, `exit_code`…).

pub mod desktop;
pub mod limits;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Default vCPUs of a sandbox when `vcpus` is omitted.
pub const DEFAULT_VCPUS: f64 = 2.0;
/// Default memory limit of a sandbox in MiB when `mem_mib` is omitted.
pub const DEFAULT_MEM_MIB: u64 = 2048;
/// Default lifetime of a sandbox in seconds when `timeout_s` is omitted.
pub const DEFAULT_TIMEOUT_S: u64 = 300;
pub use limits::{MAX_MEM_MIB, MAX_TIMEOUT_S, MAX_VCPUS, MIN_MEM_MIB};

/// `POST /v1/runs`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    /// OCI image reference with a pinned tag or a digest (`python:3.12-slim`, `repo@sha256:…`).
    /// Omitted: the runner's default image (the desktop, once one is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub image: Option<String>,
    /// CPU share, 0.01–256 (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.01, maximum = 256.0))]
    pub vcpus: Option<f64>,
    /// Memory limit in MiB, 32–1048576 and at most the host's memory (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 32, maximum = 1048576))]
    pub mem_mib: Option<u64>,
    /// Cap on the sandbox's writable scratch layer in MiB, 16–1048576 and at most the free space
    /// of the runner's data directory at create time (the image is sparse; nothing is reserved).
    /// Omitted: no cap of its own (the data directory's filesystem is the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 16, maximum = 1048576))]
    pub disk_mib: Option<u64>,
    /// Seconds until the runner deletes the sandbox, 1–604800 (default 300); extend with
    /// `POST /v1/runs/{id}/timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604800))]
    pub timeout_s: Option<u64>,
    /// Extra environment for every process in the sandbox (on top of the image's ENV): at most 256
    /// variables, names 1–256 bytes without `=` or NUL, values at most 32 KiB without NUL, 256 KiB
    /// in all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Free-form labels (at most 64; keys 1–256 bytes, values at most 4096 bytes);
    /// `GET /v1/runs?metadata[KEY]=VALUE` filters on them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// `"nat"` (default): own network namespace, NAT egress to the public internet only. `"none"`:
    /// loopback only. Or an object `{"mode", "allow_out", "deny_out"}` with egress rules (see
    /// [`NetworkPolicy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRequest>,
    /// Desktop screen size `[width, height]` (default 1280×800). Desktop images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<[u32; 2]>,
    /// Start the desktop session (Xvfb, window manager, Chromium, VNC). Default: on when the image
    /// is a desktop image (label `org.vivarium.image=desktop`), off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<bool>,
    /// What happens when the sandbox dies on its own (its init exits or is killed, e.g. by the
    /// OOM killer): `keep` (default) keeps the run as `failed`, with its `failure` and console
    /// log (`GET /v1/runs/{id}/logs`), until it is deleted or its timeout passes; `delete` removes
    /// it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
}

/// What the runner does with a sandbox that died on its own.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Keep the run (`state: "failed"`) for inspection until deleted or expired.
    #[default]
    Keep,
    /// Remove the run at once.
    Delete,
}

/// Why a sandbox died.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The kernel OOM killer killed its init (the sandbox went past `mem_mib`).
    OomKilled,
    /// Its init was killed by a signal (`signal`), e.g. from the host.
    Killed,
    /// Its init exited (`exit_code`).
    Exited,
    /// It stopped, and the runner cannot tell how (e.g. while the runner was not running).
    Lost,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::OomKilled => "oom_killed",
            FailureReason::Killed => "killed",
            FailureReason::Exited => "exited",
            FailureReason::Lost => "lost",
        }
    }
}

/// How and when a `failed` sandbox died.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
    /// When the runner noticed.
    pub at: DateTime<Utc>,
    /// The signal that killed the sandbox's init, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The exit status of the sandbox's init, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
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

/// `network` of a create request: a mode, or a mode with egress rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum NetworkRequest {
    Mode(NetworkMode),
    Policy(NetworkPolicy),
}

impl From<NetworkMode> for NetworkRequest {
    fn from(m: NetworkMode) -> Self {
        NetworkRequest::Mode(m)
    }
}

impl NetworkRequest {
    pub fn policy(&self) -> NetworkPolicy {
        match self {
            NetworkRequest::Mode(mode) => NetworkPolicy {
                mode: *mode,
                ..Default::default()
            },
            NetworkRequest::Policy(p) => p.clone(),
        }
    }
}

/// A sandbox's egress rules. Destinations are IPv4 CIDRs (`10.1.2.0/24`) or addresses.
///
/// Precedence, first match wins:
/// 1. never reachable, whatever the rules say: the host itself, other sandboxes, loopback,
///    link-local (cloud metadata services), multicast and reserved addresses;
/// 2. `deny_out`: dropped;
/// 3. `allow_out`: allowed (this is how a sandbox is let into a private network, e.g.
///    `10.20.0.0/16`); when `allow_out` is given, every destination not in it is dropped (DNS to
///    the host's resolvers excepted);
/// 4. without `allow_out`: the public internet is allowed, private ranges (RFC 1918, CGNAT) are
///    not.
///
/// IPv6 is off in sandboxes, so IPv6 rules are refused; so is a CIDR in both lists, and rules with
/// `mode: "none"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    #[serde(default)]
    pub mode: NetworkMode,
    /// At most 64 CIDRs.
    #[serde(default)]
    pub allow_out: Vec<String>,
    /// At most 64 CIDRs.
    #[serde(default)]
    pub deny_out: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Creating,
    Running,
    Deleting,
    /// The sandbox died on its own; `failure` says why. Only its record and console log are left.
    Failed,
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
    /// The egress rules the sandbox was created with (empty lists: the default, public internet
    /// only).
    #[serde(default)]
    pub network_policy: NetworkPolicy,
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
    /// `state: "failed"`: why and when the sandbox died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// What happens when the sandbox dies on its own.
    #[serde(default)]
    pub on_failure: OnFailure,
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
    /// New lifetime in seconds, counted from now, 1–604800.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604800))]
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
    /// Kill the process group after this many seconds, 0.001–604800 (default 60 for `exec`, none
    /// for background).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.001, maximum = 604800.0))]
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
    /// The kernel OOM killer killed a process in the sandbox while this command ran (the
    /// command itself or any of its children; the sandbox went past `mem_mib`).
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

/// `GET /v1/images/default`: the image a create that names none gets, and how far its
/// preparation is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefaultImageStatus {
    /// The reference creates without an image use (`vivarium/desktop:<hash of its recipe>` for
    /// the built-in desktop image).
    pub reference: String,
    pub source: DefaultImageSource,
    pub state: DefaultImageState,
    /// The latest progress line of the build, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DefaultImageSource {
    /// `vivarium serve --default-image`.
    Configured,
    /// The runner's built-in desktop image, built from the recipe compiled into it on first need.
    Builtin,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DefaultImageState {
    /// Not built or imported yet: the first create without an image (or
    /// `POST /v1/images/default`) prepares it.
    NotPrepared,
    Building,
    Importing,
    Ready,
    Failed,
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
    /// `unpinned_tag`, `image_not_found`, `registry_unreachable`, `timeout`, `payload_too_large`,
    /// `sandbox_failed` (with `reason`), `sandbox_unavailable`, `internal`…
    pub code: String,
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `sandbox_failed`: the sandbox's `failure.reason` (`oom_killed`, `killed`, `exited`, `lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
