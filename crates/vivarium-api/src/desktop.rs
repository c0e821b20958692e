//! Desktop actions: one typed vocabulary for the HTTP API (`POST /v1/runs/{id}/desktop/actions`)
//! and the host↔agent protocol, which carries these same types.
//!
//! Coordinates are screen pixels, origin top-left. Where `x`/`y` are optional the action happens at
//! the current pointer position.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MouseButton {
    #[default]
    Left,
    Right,
    Middle,
    /// Browser back / forward buttons (X buttons 8 and 9).
    Back,
    Forward,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScrollDirection {
    Up,
    Down,
    Left,
    Right,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

fn one() -> u32 {
    1
}

fn three() -> u32 {
    3
}

/// One thing to do on the desktop. JSON: `{"action": "click", "x": 10, "y": 20}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum DesktopAction {
    Screenshot {
        #[serde(default)]
        format: ImageFormat,
        /// JPEG quality 1–100 (default 80).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<u8>,
        /// Capture only this part of the screen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<Region>,
        /// Scale the capture to `[width, height]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scale_to: Option<[u32; 2]>,
        /// Draw the mouse cursor.
        #[serde(default)]
        cursor: bool,
    },
    #[serde(alias = "mouse_move", alias = "move_mouse")]
    Move {
        x: i32,
        y: i32,
    },
    Click {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        y: Option<i32>,
        #[serde(default)]
        button: MouseButton,
        /// 2 = double click, 3 = triple click.
        #[serde(default = "one")]
        count: u32,
        /// Keys held during the click: `ctrl`, `shift`, `alt`, `super`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        modifiers: Vec<String>,
    },
    MouseDown {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        y: Option<i32>,
        #[serde(default)]
        button: MouseButton,
    },
    MouseUp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        y: Option<i32>,
        #[serde(default)]
        button: MouseButton,
    },
    /// Press at the first point, move through the others, release at the last.
    Drag {
        path: Vec<[i32; 2]>,
        #[serde(default)]
        button: MouseButton,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        modifiers: Vec<String>,
    },
    Scroll {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        y: Option<i32>,
        direction: ScrollDirection,
        /// Wheel clicks (default 3).
        #[serde(default = "three")]
        amount: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        modifiers: Vec<String>,
    },
    /// Types Unicode text, including characters that have no key on the keymap.
    #[serde(alias = "write")]
    Type {
        text: String,
    },
    /// Presses and releases a key or a combination: `Return`, `ctrl+a`, `ctrl+shift+t`.
    #[serde(alias = "press", alias = "hotkey")]
    Key {
        keys: String,
    },
    KeyDown {
        keys: String,
    },
    KeyUp {
        keys: String,
    },
    CursorPosition,
    ScreenSize,
    /// Sleeps this long (at most 60 s).
    Wait {
        ms: u64,
    },
    ClipboardGet,
    ClipboardSet {
        text: String,
    },
    Windows,
    FocusWindow {
        id: u32,
    },
    MoveWindow {
        id: u32,
        x: i32,
        y: i32,
    },
    ResizeWindow {
        id: u32,
        width: u32,
        height: u32,
    },
    MaximizeWindow {
        id: u32,
    },
    MinimizeWindow {
        id: u32,
    },
    CloseWindow {
        id: u32,
    },
    /// Starts an application (a program name on PATH, or a `.desktop` id) on the desktop.
    Launch {
        app: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
    },
    /// Opens a URL in the desktop's Chromium (a new tab).
    Open {
        url: String,
    },
    SetWallpaper {
        path: String,
    },
    SetResolution {
        width: u32,
        height: u32,
    },
}

impl DesktopAction {
    /// The `action` tag, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            DesktopAction::Screenshot { .. } => "screenshot",
            DesktopAction::Move { .. } => "move",
            DesktopAction::Click { .. } => "click",
            DesktopAction::MouseDown { .. } => "mouse_down",
            DesktopAction::MouseUp { .. } => "mouse_up",
            DesktopAction::Drag { .. } => "drag",
            DesktopAction::Scroll { .. } => "scroll",
            DesktopAction::Type { .. } => "type",
            DesktopAction::Key { .. } => "key",
            DesktopAction::KeyDown { .. } => "key_down",
            DesktopAction::KeyUp { .. } => "key_up",
            DesktopAction::CursorPosition => "cursor_position",
            DesktopAction::ScreenSize => "screen_size",
            DesktopAction::Wait { .. } => "wait",
            DesktopAction::ClipboardGet => "clipboard_get",
            DesktopAction::ClipboardSet { .. } => "clipboard_set",
            DesktopAction::Windows => "windows",
            DesktopAction::FocusWindow { .. } => "focus_window",
            DesktopAction::MoveWindow { .. } => "move_window",
            DesktopAction::ResizeWindow { .. } => "resize_window",
            DesktopAction::MaximizeWindow { .. } => "maximize_window",
            DesktopAction::MinimizeWindow { .. } => "minimize_window",
            DesktopAction::CloseWindow { .. } => "close_window",
            DesktopAction::Launch { .. } => "launch",
            DesktopAction::Open { .. } => "open",
            DesktopAction::SetWallpaper { .. } => "set_wallpaper",
            DesktopAction::SetResolution { .. } => "set_resolution",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WindowInfo {
    pub id: u32,
    pub title: String,
    /// WM_CLASS class, e.g. `Chromium`.
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
    pub focused: bool,
}

/// What an action answers. JSON: `{"type": "position", "x": 1, "y": 2}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionResult {
    Ok,
    /// `data` is the base64 image in HTTP JSON answers; over the agent protocol it travels as the
    /// frame's binary payload and `data` is empty.
    Screenshot {
        format: ImageFormat,
        width: u32,
        height: u32,
        #[serde(default)]
        data: String,
    },
    Position {
        x: i32,
        y: i32,
    },
    Size {
        width: u32,
        height: u32,
    },
    Clipboard {
        text: Option<String>,
    },
    Windows {
        windows: Vec<WindowInfo>,
    },
    Launched {
        pid: u32,
    },
}

/// `POST /v1/runs/{id}/desktop/actions`: run these in order; stops at the first error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ActionBatch {
    pub actions: Vec<DesktopAction>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchResult {
    pub results: Vec<ActionResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let a: DesktopAction =
            serde_json::from_str(r#"{"action":"click","x":5,"y":6,"count":2}"#).unwrap();
        assert_eq!(
            a,
            DesktopAction::Click {
                x: Some(5),
                y: Some(6),
                button: MouseButton::Left,
                count: 2,
                modifiers: vec![]
            }
        );
        let a: DesktopAction =
            serde_json::from_str(r#"{"action":"press","keys":"ctrl+a"}"#).unwrap();
        assert_eq!(
            a,
            DesktopAction::Key {
                keys: "ctrl+a".into()
            }
        );
        assert!(serde_json::from_str::<DesktopAction>(r#"{"action":"fly"}"#).is_err());
        assert!(serde_json::from_str::<DesktopAction>(r#"{"action":"move","x":1}"#).is_err());
        let r = serde_json::to_value(ActionResult::Position { x: 1, y: 2 }).unwrap();
        assert_eq!(r, serde_json::json!({"type":"position","x":1,"y":2}));
    }
}
