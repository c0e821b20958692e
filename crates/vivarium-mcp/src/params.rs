//! Input schemas of the MCP tools. Each struct becomes a tool's `inputSchema` (JSON Schema generated
//! by schemars), so the doc comments here are what a model reads about each argument.

use std::collections::BTreeMap;

use rmcp::schemars;
use serde::Deserialize;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// OCI image reference with a pinned tag or a digest (e.g. `python:3.12-slim`). Omitted: the
    /// runner's default image (the desktop image when one is configured).
    #[serde(default)]
    pub image: Option<String>,
    /// Desktop screen size as `[width, height]` in pixels (default 1280×800). Desktop images only.
    #[serde(default)]
    pub resolution: Option<[u32; 2]>,
    /// CPU limit in vCPUs (default 2).
    #[serde(default)]
    pub vcpus: Option<f64>,
    /// Memory limit in MiB (default 2048; desktops need 2048).
    #[serde(default)]
    pub mem_mib: Option<u64>,
    /// Seconds until the sandbox is deleted automatically (default 300); extend with `set_timeout`.
    #[serde(default, alias = "timeout_s")]
    pub timeout: Option<u64>,
    /// Extra environment variables for every process in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Free-form labels; `list_sandboxes` can filter on them.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSandboxes {
    /// Only sandboxes whose metadata has all these key/value pairs.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxRef {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// New lifetime in seconds, counted from now.
    #[serde(alias = "timeout_s")]
    pub timeout: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// A shell command line, run with `/bin/sh -c`.
    pub command: String,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// User name or `uid[:gid]` to run as.
    #[serde(default)]
    pub user: Option<String>,
    /// Text written to the command's standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Kill the command after this many seconds (default 60).
    #[serde(default, alias = "timeout_s")]
    pub timeout: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFile {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Absolute path of the file inside the sandbox.
    pub path: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Absolute path of the file inside the sandbox; missing parent directories are created.
    pub path: String,
    /// The file's content, as text or base64 (see `encoding`).
    pub content: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
    /// Permission bits in octal, e.g. `"755"`.
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFiles {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Directory to list.
    pub path: String,
    /// How many levels deep to list (default 1).
    #[serde(default)]
    pub depth: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScreenshotFormat {
    #[default]
    Png,
    Jpeg,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Screenshot {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// `png` (default, lossless) or `jpeg` (smaller).
    #[serde(default)]
    pub format: ScreenshotFormat,
    /// JPEG quality 1–100 (default 80).
    #[serde(default)]
    pub quality: Option<u8>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Click {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Screen x in pixels from the left; omitted: the current pointer position.
    #[serde(default)]
    pub x: Option<i32>,
    /// Screen y in pixels from the top; omitted: the current pointer position.
    #[serde(default)]
    pub y: Option<i32>,
    /// Keys held during the click: `ctrl`, `shift`, `alt`, `super`.
    #[serde(default)]
    pub modifiers: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveMouse {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Screen x in pixels from the left.
    pub x: i32,
    /// Screen y in pixels from the top.
    pub y: i32,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drag {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Points `[x, y]` to drag through: pressed at the first, released at the last (at least two).
    pub path: Vec<[i32; 2]>,
}

#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
    Left,
    Right,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scroll {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// `up`, `down`, `left` or `right`.
    pub direction: Direction,
    /// Wheel clicks (default 3).
    #[serde(default)]
    pub amount: Option<u32>,
    /// Where to scroll; omitted: the current pointer position.
    #[serde(default)]
    pub x: Option<i32>,
    #[serde(default)]
    pub y: Option<i32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TypeText {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Text to type (any Unicode).
    pub text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PressKey {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// A key or a combination: `Return`, `Tab`, `ctrl+a`, `ctrl+shift+t`.
    pub keys: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClipboardSet {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Text to put on the clipboard.
    pub text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenUrl {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// URL to open in a new tab of the desktop's browser.
    pub url: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// The sandbox id returned by `create_sandbox`.
    pub sandbox_id: String,
    /// Program name on PATH or a `.desktop` id.
    pub app: String,
    /// Arguments for the program.
    #[serde(default)]
    pub args: Vec<String>,
}
