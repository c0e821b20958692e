//! The typed messages of the host <-> agent protocol.
//!
//! Every frame carries one [`Request`] (host -> agent) or one [`Response`] (agent -> host) as its JSON
//! header, plus an optional raw binary payload (file bytes, stdin, stdout...). Which messages carry a
//! payload is documented on each variant. Both enums are internally tagged (`"type": "exec"`), so new
//! variants (desktop actions such as screenshot, click, type) can be added without touching the others;
//! a peer that does not know a variant answers it with [`ErrorCode::InvalidArgument`].

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
pub use vivarium_api::desktop::{ActionResult, DesktopAction};

/// Largest output an exec captures per stream (stdout, stderr) before it sets the `truncated` flag.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;

/// Chunk size of streamed file reads when the request does not name one.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;

/// Bytes of output the agent keeps per stream (stdout, stderr) of a background or detached process.
pub const PROCESS_OUTPUT_CAP: usize = 1024 * 1024;

/// Largest file the whole-file read (`read_file`) returns in one frame; larger files must be streamed.
pub const MAX_WHOLE_FILE: u64 = 32 * 1024 * 1024;

/// Host -> agent messages.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Agent version, pid and uptime. Answered by [`Response::Info`].
    Info,
    /// Run a process to completion and return its buffered output. Payload: stdin bytes.
    /// Answered by [`Response::ExecDone`].
    ///
    /// While it runs the process is listed by [`Request::ListProcesses`]. If the connection drops
    /// before the answer (the runner died or gave up), the process is *detached*, not killed: it
    /// keeps running (until it ends or its `timeout_ms`), its output goes on into the bounded ring
    /// buffers of background processes ([`ProcessInfo`]), and its status and output stay
    /// fetchable with [`Request::Wait`]. To kill it: its timeout, [`Request::Signal`], or
    /// [`Request::Cancel`] on its stream. An answered exec is forgotten.
    Exec(ExecSpec),
    /// Run a process and stream its events. Payload: first stdin bytes (stdin stays open until
    /// [`Request::StdinClose`]). Answered by `Started`, `Stdout`/`Stderr`..., `Exited`.
    /// A dropped connection detaches the process exactly like [`Request::Exec`] (its stdin is
    /// closed); [`Request::Cancel`] kills its process group.
    ExecStream(ExecSpec),
    /// Stdin bytes for a streaming exec on the same stream id. Payload: the bytes.
    StdinData,
    /// Close the stdin of a streaming exec on the same stream id.
    StdinClose,
    /// Start a background process. Payload: stdin bytes. Answered by [`Response::Process`].
    Spawn(ExecSpec),
    /// List background processes, running execs and execs detached by a dropped connection.
    /// Answered by [`Response::Processes`].
    ListProcesses,
    /// Send a signal to a background process (its whole process group) or any pid.
    /// Answered by [`Response::Ok`].
    Signal { pid: u32, signal: i32 },
    /// Wait until a background process exits or the timeout passes. Answered by
    /// [`Response::Process`] with the captured output as payload.
    Wait {
        pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Read a whole file (at most [`MAX_WHOLE_FILE`] bytes). Answered by [`Response::FileData`].
    ReadFile { path: String },
    /// Read a file in chunks. Answered by `FileStart`, `FileChunk`..., `FileEnd`.
    ReadFileStream {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chunk_size: Option<u32>,
    },
    /// Write a whole file. Payload: the content. Answered by [`Response::Stat`].
    WriteFile {
        path: String,
        #[serde(default)]
        options: WriteOptions,
    },
    /// Start a streamed write; the content follows as `WriteChunk` frames and a `WriteEnd`.
    /// Answered by [`Response::Stat`] after `WriteEnd`, or by an error at any point.
    WriteFileStream {
        path: String,
        #[serde(default)]
        options: WriteOptions,
    },
    /// Content of a streamed write. Payload: the bytes.
    WriteChunk,
    /// End of a streamed write: the file is synced and renamed into place.
    WriteEnd,
    /// List a directory down to `depth` levels (1 = direct children). Answered by
    /// [`Response::Entries`].
    ListDir { path: String, depth: u32 },
    /// Metadata of one path (symlinks are not followed). Answered by [`Response::Stat`].
    Stat { path: String },
    /// Remove a file, symlink or directory. Answered by [`Response::Ok`].
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Create a directory. Answered by [`Response::Ok`].
    Mkdir {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        #[serde(default)]
        parents: bool,
    },
    /// One desktop action (screenshot, click, type...). Needs an agent started with `--desktop`;
    /// waits up to 30 s for the desktop session to be ready. Answered by [`Response::Desktop`].
    /// The action's own tag is `action`, so the JSON is `{"type":"desktop","action":"click",...}`.
    Desktop(DesktopAction),
    /// Abandon the operation on this stream id: kills an exec's process group (explicit
    /// cancellation; a dropped connection only detaches it) and aborts a streamed write. Also
    /// the way to abandon one operation on a multiplexed transport.
    Cancel,
}

impl Request {
    /// Short name of the variant, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Info => "info",
            Request::Exec(_) => "exec",
            Request::ExecStream(_) => "exec_stream",
            Request::StdinData => "stdin_data",
            Request::StdinClose => "stdin_close",
            Request::Spawn(_) => "spawn",
            Request::ListProcesses => "list_processes",
            Request::Signal { .. } => "signal",
            Request::Wait { .. } => "wait",
            Request::ReadFile { .. } => "read_file",
            Request::ReadFileStream { .. } => "read_file_stream",
            Request::WriteFile { .. } => "write_file",
            Request::WriteFileStream { .. } => "write_file_stream",
            Request::WriteChunk => "write_chunk",
            Request::WriteEnd => "write_end",
            Request::ListDir { .. } => "list_dir",
            Request::Stat { .. } => "stat",
            Request::Remove { .. } => "remove",
            Request::Mkdir { .. } => "mkdir",
            Request::Desktop(_) => "desktop",
            Request::Cancel => "cancel",
        }
    }
}

/// Agent -> host messages.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Info(AgentInfo),
    /// Result of a buffered exec. Payload: stdout bytes followed by stderr bytes.
    ExecDone(ExecDone),
    /// A streaming exec's process started.
    Started {
        pid: u32,
    },
    /// Payload: stdout bytes of a streaming exec.
    Stdout,
    /// Payload: stderr bytes of a streaming exec.
    Stderr,
    /// A streaming exec's process ended; last message of its stream.
    Exited(ExitStatus),
    /// One background process. Payload (after `wait` only): stdout bytes followed by stderr bytes.
    Process {
        process: ProcessInfo,
        #[serde(default)]
        stdout_len: u64,
    },
    Processes {
        processes: Vec<ProcessInfo>,
    },
    /// Success without data.
    Ok,
    /// Whole file content. Payload: the bytes.
    FileData {
        stat: FileStat,
    },
    /// Start of a streamed read.
    FileStart {
        stat: FileStat,
    },
    /// Payload: the next bytes of a streamed read.
    FileChunk,
    /// End of a streamed read.
    FileEnd,
    Stat {
        stat: FileStat,
    },
    Entries {
        entries: Vec<FileEntry>,
    },
    /// Result of a desktop action. Payload: the encoded image of a screenshot (its `data` is
    /// empty), nothing otherwise. A struct variant because `ActionResult` is itself tagged `type`.
    Desktop {
        result: ActionResult,
    },
    /// The request failed; last message of its stream.
    Error(ErrorBody),
}

impl Response {
    /// Short name of the variant, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Info(_) => "info",
            Response::ExecDone(_) => "exec_done",
            Response::Started { .. } => "started",
            Response::Stdout => "stdout",
            Response::Stderr => "stderr",
            Response::Exited(_) => "exited",
            Response::Process { .. } => "process",
            Response::Processes { .. } => "processes",
            Response::Ok => "ok",
            Response::FileData { .. } => "file_data",
            Response::FileStart { .. } => "file_start",
            Response::FileChunk => "file_chunk",
            Response::FileEnd => "file_end",
            Response::Stat { .. } => "stat",
            Response::Entries { .. } => "entries",
            Response::Desktop { .. } => "desktop",
            Response::Error(_) => "error",
        }
    }

    /// Shorthand for an error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(ErrorBody {
            code,
            message: message.into(),
            field: None,
        })
    }
}

/// Typed error codes. Unknown codes from a newer peer decode as [`ErrorCode::Unknown`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    PermissionDenied,
    InvalidArgument,
    AlreadyExists,
    IsADirectory,
    NotADirectory,
    Timeout,
    VersionMismatch,
    Internal,
    /// The sandbox's disk (or a quota) is full.
    NoSpace,
    /// The sandbox ran out of processes (fork answered EAGAIN: its pids limit) or memory
    /// (ENOMEM). Retrying after some of its processes end can succeed.
    ResourceExhausted,
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::Timeout => "timeout",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::Internal => "internal",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Maps an OS error to the closest code.
    pub fn from_io(err: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match err.kind() {
            K::NotFound => ErrorCode::NotFound,
            K::PermissionDenied => ErrorCode::PermissionDenied,
            K::AlreadyExists => ErrorCode::AlreadyExists,
            K::IsADirectory => ErrorCode::IsADirectory,
            K::NotADirectory => ErrorCode::NotADirectory,
            K::InvalidInput | K::DirectoryNotEmpty => ErrorCode::InvalidArgument,
            K::TimedOut => ErrorCode::Timeout,
            K::ReadOnlyFilesystem => ErrorCode::PermissionDenied,
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => ErrorCode::NoSpace,
            K::WouldBlock | K::OutOfMemory => ErrorCode::ResourceExhausted,
            _ => ErrorCode::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The request field the error is about (`x`, `keys`, `id`...), when there is one. Absent in
    /// frames of older peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's crate version.
    pub version: String,
    pub protocol_version: u32,
    pub pid: u32,
    pub uptime_ms: u64,
}

/// What to run. Used by exec, streaming exec and spawn.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Added to (and overriding) the agent's environment, which is the image's ENV.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute); default: the user's home directory or `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `name`, `uid`, `name:group` or `uid:gid`, resolved against the sandbox's /etc/passwd and
    /// /etc/group; default: the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Kill the process group after this long; the result then has `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Cap of captured bytes per output stream; default [`DEFAULT_OUTPUT_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_limit: Option<u64>,
}

/// A request to run a process, as the client API takes it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    #[serde(flatten)]
    pub spec: ExecSpec,
    /// Bytes fed to stdin (then stdin is closed, except for streaming execs).
    #[serde(default)]
    pub stdin: Bytes,
}

impl ExecRequest {
    /// A request for `argv` with everything else defaulted.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            spec: ExecSpec {
                argv: argv.into_iter().map(Into::into).collect(),
                ..ExecSpec::default()
            },
            stdin: Bytes::new(),
        }
    }
}

/// How a process ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code when the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when the process was killed by a signal.
    pub signal: Option<i32>,
    /// The agent killed the process group because the timeout passed.
    #[serde(default)]
    pub timed_out: bool,
}

/// Header of a buffered exec result; stdout and stderr travel as the frame payload.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecDone {
    #[serde(flatten)]
    pub status: ExitStatus,
    pub duration_ms: u64,
    pub stdout_len: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Result of a buffered exec.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Event of a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Started { pid: u32 },
    Stdout(Bytes),
    Stderr(Bytes),
    Exited(ExitStatus),
}

/// A background process, a running exec, or an exec detached by a dropped connection.
///
/// Output of background and detached processes is kept in ring buffers of at most
/// [`PROCESS_OUTPUT_CAP`] bytes per stream (the newest bytes; `*_dropped` counts the rest), so
/// the agent's memory stays bounded however much a process writes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub argv: Vec<String>,
    /// Start time, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub running: bool,
    /// Set once the process has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// Captured output: the last bytes kept by the agent's ring buffer. Filled by `wait` only.
    #[serde(default, skip_serializing_if = "Bytes::is_empty")]
    pub stdout: Bytes,
    #[serde(default, skip_serializing_if = "Bytes::is_empty")]
    pub stderr: Bytes,
    /// Bytes of output that fell out of the ring buffers.
    #[serde(default)]
    pub stdout_dropped: u64,
    #[serde(default)]
    pub stderr_dropped: u64,
}

/// Options of a file write.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits of the file (default 0644 for a new file, unchanged for an existing one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Create missing parent directories (mode 0755).
    #[serde(default)]
    pub create_parents: bool,
    /// Write to a temporary file in the same directory and rename it into place, so readers never
    /// see a partial file (default true).
    #[serde(default = "default_true")]
    pub atomic: bool,
}

fn default_true() -> bool {
    true
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            mode: None,
            create_parents: false,
            atomic: true,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

/// Metadata of one path (not following symlinks).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// Last path component.
    pub name: String,
    /// Absolute path.
    pub path: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    pub uid: u32,
    pub gid: u32,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// One entry of a directory listing; the same fields as [`FileStat`].
pub type FileEntry = FileStat;

#[cfg(test)]
mod tests {
    use super::*;
    use vivarium_api::desktop::{ImageFormat, MouseButton};

    #[test]
    fn desktop_request_round_trips_with_both_tags() {
        let req = Request::Desktop(DesktopAction::Click {
            x: Some(3),
            y: Some(4),
            button: MouseButton::Right,
            count: 2,
            modifiers: vec!["ctrl".into()],
        });
        let json = serde_json::to_value(&req).expect("serialize");
        assert_eq!(json["type"], "desktop");
        assert_eq!(json["action"], "click");
        let back: Request = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, req);
        // Unit actions carry only their tag.
        let back: Request =
            serde_json::from_str(r#"{"type":"desktop","action":"cursor_position"}"#).expect("unit");
        assert_eq!(back, Request::Desktop(DesktopAction::CursorPosition));
        // Unknown actions and unknown fields are refused, not ignored.
        assert!(serde_json::from_str::<Request>(r#"{"type":"desktop","action":"fly"}"#).is_err());
        assert!(serde_json::from_str::<Request>(
            r#"{"type":"desktop","action":"move","x":1,"y":2,"z":3}"#
        )
        .is_err());
    }

    #[test]
    fn desktop_response_keeps_result_tag_apart() {
        let resp = Response::Desktop {
            result: ActionResult::Screenshot {
                format: ImageFormat::Jpeg,
                width: 10,
                height: 20,
                data: String::new(),
            },
        };
        let json = serde_json::to_value(&resp).expect("serialize");
        assert_eq!(json["type"], "desktop");
        assert_eq!(json["result"]["type"], "screenshot");
        assert_eq!(
            serde_json::from_value::<Response>(json).expect("back"),
            resp
        );
    }

    #[test]
    fn error_field_is_optional_and_backward_compatible() {
        let old: Response =
            serde_json::from_str(r#"{"type":"error","code":"not_found","message":"m"}"#)
                .expect("old form");
        assert_eq!(old, Response::error(ErrorCode::NotFound, "m"));
        let with = Response::Error(ErrorBody {
            code: ErrorCode::InvalidArgument,
            message: "off screen".into(),
            field: Some("x".into()),
        });
        let json = serde_json::to_string(&with).expect("serialize");
        assert!(json.contains(r#""field":"x""#), "{json}");
        assert_eq!(serde_json::from_str::<Response>(&json).expect("back"), with);
        // No field: the key is left out entirely, as older peers wrote it.
        let plain = serde_json::to_string(&Response::error(ErrorCode::Internal, "m")).expect("ser");
        assert!(!plain.contains("field"), "{plain}");
    }
}
