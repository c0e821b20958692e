//! The vivarium MCP server: sandbox lifecycle, commands, files and desktop actions as Model Context
//! Protocol tools, over the runner's HTTP API (through [`vivarium_client::Client`]).
//!
//! Two transports, both from the official Rust SDK (`rmcp`):
//! - stdio: [`serve_stdio`], behind `vivarium mcp` (talks to the runner at `VIVARIUM_URL`);
//! - streamable HTTP: [`http_service`] / [`in_process_http_service`], mounted by the runner at `/mcp`.
//!
//! Every tool answers with MCP content: text (JSON for structured answers) or, for `screenshot`,
//! an image block. Failures — the runner's errors as well as arguments that do not fit a tool's
//! schema — come back as tool results with `isError: true` carrying the message, so a model can
//! read and correct them; only unknown tool names are JSON-RPC errors.

mod http;
pub mod params;

use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    Implementation, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::Serialize;
use vivarium_api::desktop::{ActionResult, DesktopAction, MouseButton, ScrollDirection};
use vivarium_api::{CreateRunRequest, ExecRequest};
use vivarium_client::Client;

pub use http::{http_service, in_process_http_service, McpHttpService};
use params::*;

/// Errors of running the MCP server itself (not of tool calls, which become tool results).
#[derive(Debug, thiserror::Error)]
pub enum McpServerError {
    #[error("MCP handshake on stdio failed: {0}")]
    Initialize(Box<rmcp::service::ServerInitializeError>),
    #[error("MCP stdio service ended abnormally: {0}")]
    Join(#[from] tokio::task::JoinError),
}

type ToolResult = Result<CallToolResult, ErrorData>;

const INSTRUCTIONS: &str = "Vivarium sandboxes: isolated Linux machines, optionally with a desktop \
(screen, mouse, keyboard, Chromium). Create one with create_sandbox (it returns an `id`), pass that \
id as `sandbox_id` to every other tool, and delete it with delete_sandbox when done. Desktop tools \
use screen pixels, origin top-left; take a screenshot to see the screen.";

/// The MCP tool set, bound to one runner.
#[derive(Clone)]
pub struct VivariumMcp {
    client: Client,
    tool_router: ToolRouter<Self>,
}

impl VivariumMcp {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            tool_router: Self::tool_router(),
        }
    }

    /// Names of every tool this server offers.
    pub fn tool_names(&self) -> Vec<String> {
        self.tool_router
            .list_all()
            .into_iter()
            .map(|t| t.name.into_owned())
            .collect()
    }

    async fn desktop(&self, id: &str, action: DesktopAction) -> ToolResult {
        match self.client.desktop_action(id, &action).await {
            Ok(r) => Ok(action_result(r)),
            Err(e) => Ok(failure(e)),
        }
    }

    async fn click(&self, p: Click, button: MouseButton, count: u32) -> ToolResult {
        self.desktop(
            &p.sandbox_id,
            DesktopAction::Click {
                x: p.x,
                y: p.y,
                button,
                count,
                modifiers: p.modifiers,
            },
        )
        .await
    }
}

/// Runs the MCP server on this process's stdin/stdout until the client closes it.
pub async fn serve_stdio(client: Client) -> Result<(), McpServerError> {
    let service = VivariumMcp::new(client)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpServerError::Initialize(Box::new(e)))?;
    let reason = service.waiting().await?;
    tracing::debug!(?reason, "MCP stdio session ended");
    Ok(())
}

fn failure(e: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(e.to_string())])
}

fn json_result<T: Serialize>(value: &T) -> CallToolResult {
    match serde_json::to_string_pretty(value) {
        Ok(s) => CallToolResult::success(vec![ContentBlock::text(s)]),
        Err(e) => failure(format!("encoding the answer as JSON: {e}")),
    }
}

/// What a desktop action answered, as MCP content.
fn action_result(r: ActionResult) -> CallToolResult {
    match r {
        ActionResult::Ok => CallToolResult::success(vec![ContentBlock::text("ok")]),
        ActionResult::Screenshot {
            format,
            width,
            height,
            data,
        } => CallToolResult::success(vec![
            ContentBlock::image(data, format.mime()),
            ContentBlock::text(format!("screenshot {width}x{height}")),
        ]),
        other => json_result(&other),
    }
}

/// File bytes as MCP content: images as image blocks, UTF-8 as text, anything else as base64 text.
fn file_content(path: &str, bytes: &[u8]) -> CallToolResult {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    const JPEG: &[u8] = b"\xff\xd8\xff";
    let b64 = || base64::engine::general_purpose::STANDARD.encode(bytes);
    if bytes.starts_with(PNG) {
        return CallToolResult::success(vec![ContentBlock::image(b64(), "image/png")]);
    }
    if bytes.starts_with(JPEG) {
        return CallToolResult::success(vec![ContentBlock::image(b64(), "image/jpeg")]);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
        Err(_) => CallToolResult::success(vec![ContentBlock::text(format!(
            "{path} is binary ({} bytes); base64:\n{}",
            bytes.len(),
            b64()
        ))]),
    }
}

fn parse_mode(mode: &str) -> Result<u32, String> {
    let digits = mode.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode {mode:?} is not octal permission bits such as \"644\""))
}

#[tool_router]
impl VivariumMcp {
    #[tool(
        description = "Create a sandbox (an isolated Linux machine) from an OCI image and return it as JSON; its `id` is the sandbox_id for the other tools. Desktop images also get a screen (see `desktop`)."
    )]
    async fn create_sandbox(&self, Parameters(p): Parameters<CreateSandbox>) -> ToolResult {
        let req = CreateRunRequest {
            image: p.image,
            vcpus: p.vcpus,
            mem_mib: p.mem_mib,
            timeout_s: p.timeout,
            env: p.env,
            metadata: p.metadata,
            resolution: p.resolution,
            ..Default::default()
        };
        Ok(match self.client.create_run(&req).await {
            Ok(run) => json_result(&run),
            Err(e) => failure(e),
        })
    }

    #[tool(description = "List the runner's sandboxes as JSON, optionally filtered by metadata.")]
    async fn list_sandboxes(&self, Parameters(p): Parameters<ListSandboxes>) -> ToolResult {
        Ok(match self.client.list_runs(&p.metadata).await {
            Ok(runs) => json_result(&runs),
            Err(e) => failure(e),
        })
    }

    #[tool(description = "Show one sandbox as JSON (state, limits, expiry, desktop size).")]
    async fn get_sandbox(&self, Parameters(p): Parameters<SandboxRef>) -> ToolResult {
        Ok(match self.client.get_run(&p.sandbox_id).await {
            Ok(run) => json_result(&run),
            Err(e) => failure(e),
        })
    }

    #[tool(description = "Delete a sandbox and everything in it.")]
    async fn delete_sandbox(&self, Parameters(p): Parameters<SandboxRef>) -> ToolResult {
        Ok(match self.client.delete_run(&p.sandbox_id).await {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text(format!(
                "deleted {}",
                p.sandbox_id
            ))]),
            Err(e) => failure(e),
        })
    }

    #[tool(
        description = "Set a sandbox's remaining lifetime in seconds from now; returns the sandbox as JSON."
    )]
    async fn set_timeout(&self, Parameters(p): Parameters<SetTimeout>) -> ToolResult {
        Ok(
            match self.client.set_timeout(&p.sandbox_id, p.timeout).await {
                Ok(run) => json_result(&run),
                Err(e) => failure(e),
            },
        )
    }

    #[tool(
        description = "Run a shell command in a sandbox and wait for it; returns JSON with exit_code, stdout and stderr. A non-zero exit code is a normal result, not an error."
    )]
    async fn run_command(&self, Parameters(p): Parameters<RunCommand>) -> ToolResult {
        let req = ExecRequest {
            command: Some(p.command),
            env: p.env,
            cwd: p.cwd,
            user: p.user,
            stdin: p.stdin,
            timeout_s: p.timeout,
            ..Default::default()
        };
        Ok(match self.client.exec(&p.sandbox_id, &req).await {
            Ok(r) => json_result(&r),
            Err(e) => failure(e),
        })
    }

    #[tool(
        description = "Read a file from a sandbox: text as text, PNG/JPEG as an image, other binary data as base64."
    )]
    async fn read_file(&self, Parameters(p): Parameters<ReadFile>) -> ToolResult {
        Ok(match self.client.read_file(&p.sandbox_id, &p.path).await {
            Ok(bytes) => file_content(&p.path, &bytes),
            Err(e) => failure(e),
        })
    }

    #[tool(
        description = "Write a file in a sandbox (parent directories are created); content is text or base64."
    )]
    async fn write_file(&self, Parameters(p): Parameters<WriteFile>) -> ToolResult {
        let data = match p.encoding {
            Encoding::Utf8 => p.content.into_bytes(),
            Encoding::Base64 => {
                match base64::engine::general_purpose::STANDARD.decode(p.content.trim()) {
                    Ok(d) => d,
                    Err(e) => return Ok(failure(format!("content is not valid base64: {e}"))),
                }
            }
        };
        let mode = match p.mode.as_deref().map(parse_mode).transpose() {
            Ok(m) => m,
            Err(e) => return Ok(failure(e)),
        };
        Ok(
            match self
                .client
                .write_file(&p.sandbox_id, &p.path, data, mode)
                .await
            {
                Ok(info) => json_result(&info),
                Err(e) => failure(e),
            },
        )
    }

    #[tool(description = "List a directory in a sandbox as JSON entries (name, path, type, size).")]
    async fn list_files(&self, Parameters(p): Parameters<ListFiles>) -> ToolResult {
        Ok(
            match self
                .client
                .list_files(&p.sandbox_id, &p.path, p.depth.unwrap_or(1))
                .await
            {
                Ok(entries) => json_result(&entries),
                Err(e) => failure(e),
            },
        )
    }

    #[tool(description = "Take a screenshot of a desktop sandbox's screen; returns the image.")]
    async fn screenshot(&self, Parameters(p): Parameters<Screenshot>) -> ToolResult {
        let format = match p.format {
            ScreenshotFormat::Png => vivarium_api::desktop::ImageFormat::Png,
            ScreenshotFormat::Jpeg => vivarium_api::desktop::ImageFormat::Jpeg,
        };
        self.desktop(
            &p.sandbox_id,
            DesktopAction::Screenshot {
                format,
                quality: p.quality,
                region: None,
                scale_to: None,
                cursor: false,
            },
        )
        .await
    }

    #[tool(description = "Left-click at (x, y), or where the pointer is when x/y are omitted.")]
    async fn left_click(&self, Parameters(p): Parameters<Click>) -> ToolResult {
        self.click(p, MouseButton::Left, 1).await
    }

    #[tool(description = "Right-click at (x, y), or where the pointer is when x/y are omitted.")]
    async fn right_click(&self, Parameters(p): Parameters<Click>) -> ToolResult {
        self.click(p, MouseButton::Right, 1).await
    }

    #[tool(description = "Middle-click at (x, y), or where the pointer is when x/y are omitted.")]
    async fn middle_click(&self, Parameters(p): Parameters<Click>) -> ToolResult {
        self.click(p, MouseButton::Middle, 1).await
    }

    #[tool(description = "Double-click at (x, y), or where the pointer is when x/y are omitted.")]
    async fn double_click(&self, Parameters(p): Parameters<Click>) -> ToolResult {
        self.click(p, MouseButton::Left, 2).await
    }

    #[tool(description = "Move the mouse pointer to (x, y).")]
    async fn move_mouse(&self, Parameters(p): Parameters<MoveMouse>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::Move { x: p.x, y: p.y })
            .await
    }

    #[tool(
        description = "Drag with the left button: press at the first point of `path`, move through the others, release at the last."
    )]
    async fn drag(&self, Parameters(p): Parameters<Drag>) -> ToolResult {
        if p.path.len() < 2 {
            return Ok(failure("drag needs at least two points in `path`"));
        }
        self.desktop(
            &p.sandbox_id,
            DesktopAction::Drag {
                path: p.path,
                button: MouseButton::Left,
                modifiers: Vec::new(),
            },
        )
        .await
    }

    #[tool(description = "Scroll the mouse wheel up, down, left or right (at x, y if given).")]
    async fn scroll(&self, Parameters(p): Parameters<Scroll>) -> ToolResult {
        let direction = match p.direction {
            Direction::Up => ScrollDirection::Up,
            Direction::Down => ScrollDirection::Down,
            Direction::Left => ScrollDirection::Left,
            Direction::Right => ScrollDirection::Right,
        };
        self.desktop(
            &p.sandbox_id,
            DesktopAction::Scroll {
                x: p.x,
                y: p.y,
                direction,
                amount: p.amount.unwrap_or(3),
                modifiers: Vec::new(),
            },
        )
        .await
    }

    #[tool(description = "Type text with the keyboard into the focused window.")]
    async fn type_text(&self, Parameters(p): Parameters<TypeText>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::Type { text: p.text })
            .await
    }

    #[tool(
        description = "Press and release a key or key combination, e.g. `Return`, `Tab`, `ctrl+a`, `ctrl+shift+t`."
    )]
    async fn press_key(&self, Parameters(p): Parameters<PressKey>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::Key { keys: p.keys })
            .await
    }

    #[tool(description = "Where the mouse pointer is, as JSON {x, y}.")]
    async fn cursor_position(&self, Parameters(p): Parameters<SandboxRef>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::CursorPosition)
            .await
    }

    #[tool(description = "The screen size in pixels, as JSON {width, height}.")]
    async fn screen_size(&self, Parameters(p): Parameters<SandboxRef>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::ScreenSize).await
    }

    #[tool(description = "Read the desktop's clipboard text, as JSON {text}.")]
    async fn clipboard_get(&self, Parameters(p): Parameters<SandboxRef>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::ClipboardGet)
            .await
    }

    #[tool(description = "Put text on the desktop's clipboard.")]
    async fn clipboard_set(&self, Parameters(p): Parameters<ClipboardSet>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::ClipboardSet { text: p.text })
            .await
    }

    #[tool(description = "List the desktop's windows as JSON (id, title, app, geometry, focused).")]
    async fn list_windows(&self, Parameters(p): Parameters<SandboxRef>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::Windows).await
    }

    #[tool(description = "Open a URL in a new tab of the desktop's browser (Chromium).")]
    async fn open_url(&self, Parameters(p): Parameters<OpenUrl>) -> ToolResult {
        self.desktop(&p.sandbox_id, DesktopAction::Open { url: p.url })
            .await
    }

    #[tool(description = "Start an application on the desktop; returns JSON with its pid.")]
    async fn launch(&self, Parameters(p): Parameters<Launch>) -> ToolResult {
        self.desktop(
            &p.sandbox_id,
            DesktopAction::Launch {
                app: p.app,
                args: p.args,
            },
        )
        .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for VivariumMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("vivarium", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    /// Dispatches through the tool router; arguments that do not fit a known tool's schema become a
    /// tool error result (MCP: input validation errors are tool execution errors, which the model
    /// sees) instead of the router's JSON-RPC `invalid_params`, which clients hide from the model.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let known = self.tool_router.has_route(&request.name);
        let name = request.name.clone();
        let ctx = ToolCallContext::new(self, request, context);
        match self.tool_router.call(ctx).await {
            Err(e) if known && e.code == ErrorCode::INVALID_PARAMS => {
                tracing::debug!(tool = %name, error = %e.message, "MCP tool arguments rejected");
                Ok(failure(format!("invalid arguments for {name}: {}", e.message)).into())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_set_is_complete() {
        let s = VivariumMcp::new(Client::new("http://127.0.0.1:9", None));
        let names = s.tool_names();
        for expected in [
            "create_sandbox",
            "list_sandboxes",
            "delete_sandbox",
            "set_timeout",
            "run_command",
            "read_file",
            "write_file",
            "list_files",
            "screenshot",
            "left_click",
            "right_click",
            "double_click",
            "move_mouse",
            "drag",
            "scroll",
            "type_text",
            "press_key",
            "cursor_position",
            "screen_size",
            "clipboard_get",
            "clipboard_set",
            "list_windows",
            "open_url",
            "launch",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "missing tool {expected}"
            );
        }
    }

    #[test]
    fn schemas_name_required_fields() {
        let s = VivariumMcp::new(Client::new("http://127.0.0.1:9", None));
        let tool = s.tool_router.get("left_click").expect("left_click");
        let schema = serde_json::Value::Object((*tool.input_schema).clone());
        assert_eq!(schema["required"], serde_json::json!(["sandbox_id"]));
        assert!(schema["properties"]["x"].is_object(), "{schema}");
        let tool = s.tool_router.get("scroll").expect("scroll");
        let schema = serde_json::Value::Object((*tool.input_schema).clone());
        let text = schema.to_string();
        assert!(
            text.contains("\"down\"") && text.contains("\"up\""),
            "{text}"
        );
    }

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("9").is_err());
        assert!(parse_mode("77777").is_err());
    }

    #[test]
    fn file_content_kinds() {
        let r = file_content("/a", b"hello");
        assert_eq!(r.is_error, Some(false));
        assert!(matches!(&r.content[0], ContentBlock::Text(t) if t.text == "hello"));
        let r = file_content("/b.png", b"\x89PNG\r\n\x1a\nrest");
        assert!(matches!(&r.content[0], ContentBlock::Image(i) if i.mime_type == "image/png"));
        let r = file_content("/c", &[0xff, 0x00, 0xfe]);
        assert!(matches!(&r.content[0], ContentBlock::Text(t) if t.text.contains("base64")));
    }

    #[test]
    fn action_results_map_to_content() {
        let r = action_result(ActionResult::Position { x: 3, y: 4 });
        assert!(matches!(&r.content[0], ContentBlock::Text(t) if t.text.contains("\"x\": 3")));
        let r = action_result(ActionResult::Screenshot {
            format: vivarium_api::desktop::ImageFormat::Png,
            width: 10,
            height: 20,
            data: "AAAA".into(),
        });
        assert!(
            matches!(&r.content[0], ContentBlock::Image(i) if i.data == "AAAA" && i.mime_type == "image/png")
        );
    }
}
