//! Computer-tool executors: a model's tool call in, the tool result to send back out.
//!
//! - `POST /v1/runs/{id}/computer/anthropic` takes the `input` of an Anthropic `computer` tool_use
//!   block (`computer_20250124` and `computer_20251124`, which adds `zoom`) and answers the
//!   `tool_result` content blocks: `{"content": [...], "is_error": bool}`.
//! - `POST /v1/runs/{id}/computer/openai` takes the `action` of an OpenAI `computer_call`
//!   (`computer_use_preview` tool) and answers the `computer_call_output` item.
//! - `GET .../computer/anthropic/tool` and `GET .../computer/openai/tool` answer the tool
//!   definition to send to the model.
//!
//! The model sees a display of its own size (default: the real screen). Coordinates are scaled
//! model → screen on input and screen → model on output, and screenshots are scaled to the model's
//! display size. A malformed tool call (unknown action, missing or off-screen coordinate, wrong
//! type) is the model's mistake, not the caller's: it answers HTTP 200 with an error result the
//! model can read and correct, and the sandbox stays usable. An unknown run id, a sandbox without a
//! desktop, a bad key or a bad request envelope stay ordinary API errors.
//!
//! Results: `screenshot` and `zoom` answer an image; `cursor_position` answers the text
//! `X=…,Y=…` in model coordinates; every other Anthropic action answers a screenshot taken after
//! acting (as Anthropic's reference implementation does), so the model sees what it did. OpenAI
//! actions always answer a screenshot (that is the only output `computer_call_output` has).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vivarium_api::desktop::{ActionResult, DesktopAction, ImageFormat, MouseButton, Region};
use vivarium_proto::{AgentClient, ClientError, ErrorCode};

use crate::convert::agent_error;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::AppStateRef;
use crate::runner::Runner;

/// Longest `wait` / `hold_key` duration (Anthropic's reference implementation allows 100 s).
pub const MAX_DURATION_S: f64 = 100.0;
/// Largest model display edge accepted.
pub const MAX_DISPLAY_EDGE: u32 = 8192;
/// Pause between acting and the screenshot that shows the result, so the screen has repainted.
pub const DEFAULT_SETTLE_MS: u64 = 250;
/// Longest settle pause a caller may ask for.
pub const MAX_SETTLE_MS: u64 = 10_000;
/// OpenAI `wait` has no duration; OpenAI's sample apps wait this long.
pub const OPENAI_WAIT: Duration = Duration::from_secs(2);
/// Pixels of an OpenAI `scroll_x`/`scroll_y` per wheel click (Chromium scrolls ~100 px a click).
pub const OPENAI_SCROLL_PX_PER_CLICK: f64 = 100.0;
/// Most wheel clicks one scroll sends.
pub const MAX_SCROLL_CLICKS: u32 = 100;

pub const ANTHROPIC_VERSIONS: [&str; 2] = ["computer_20250124", "computer_20251124"];

/// A mistake in the model's tool call: answered as an error result the model can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

fn bad(msg: impl Into<String>) -> InputError {
    InputError(msg.into())
}

/// Why an action did not complete.
#[derive(Debug)]
enum Failure {
    /// The model's mistake (its input, or an action the desktop refused): an error result.
    Tool(String),
    /// The sandbox's or the runner's problem: an HTTP error.
    Api(ApiError),
}

impl From<InputError> for Failure {
    fn from(e: InputError) -> Self {
        Failure::Tool(e.0)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Scaling
// ---------------------------------------------------------------------------------------------

/// The model's display and the real screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub model: (u32, u32),
    pub screen: (u32, u32),
}

impl Scale {
    pub fn new(model: (u32, u32), screen: (u32, u32)) -> Scale {
        Scale { model, screen }
    }

    pub fn is_identity(&self) -> bool {
        self.model == self.screen
    }

    /// A model point (must be on the model's display) as a screen point.
    pub fn to_screen(&self, x: i64, y: i64) -> Result<(i32, i32), InputError> {
        let (mw, mh) = self.model;
        if x < 0 || y < 0 || x >= i64::from(mw) || y >= i64::from(mh) {
            return Err(bad(format!(
                "coordinate [{x}, {y}] is off-screen: the display is {mw}x{mh}, so x must be 0-{} and y 0-{}",
                mw - 1,
                mh - 1
            )));
        }
        Ok((
            scale_axis(x, mw, self.screen.0),
            scale_axis(y, mh, self.screen.1),
        ))
    }

    /// A screen point as a model point.
    pub fn to_model(&self, x: i32, y: i32) -> (i64, i64) {
        (
            i64::from(scale_axis(i64::from(x), self.screen.0, self.model.0)),
            i64::from(scale_axis(i64::from(y), self.screen.1, self.model.1)),
        )
    }

    /// A model rectangle `[x1, y1, x2, y2]` (x2, y2 exclusive) as the screen region it covers.
    pub fn region_to_screen(&self, r: [i64; 4]) -> Result<Region, InputError> {
        let [x1, y1, x2, y2] = r;
        let (mw, mh) = self.model;
        if x1 < 0 || y1 < 0 || x2 > i64::from(mw) || y2 > i64::from(mh) {
            return Err(bad(format!(
                "region [{x1}, {y1}, {x2}, {y2}] is off-screen: the display is {mw}x{mh}"
            )));
        }
        if x2 <= x1 || y2 <= y1 {
            return Err(bad(format!(
                "region [{x1}, {y1}, {x2}, {y2}] is empty: give [x1, y1, x2, y2] with x1 < x2 and y1 < y2"
            )));
        }
        let (sw, sh) = self.screen;
        // Round outwards so the region never loses a pixel the model asked for.
        let sx1 = floor_div(x1 * i64::from(sw), i64::from(mw));
        let sy1 = floor_div(y1 * i64::from(sh), i64::from(mh));
        let sx2 = ceil_div(x2 * i64::from(sw), i64::from(mw)).min(i64::from(sw));
        let sy2 = ceil_div(y2 * i64::from(sh), i64::from(mh)).min(i64::from(sh));
        Ok(Region {
            x: sx1 as u32,
            y: sy1 as u32,
            width: (sx2 - sx1).max(1) as u32,
            height: (sy2 - sy1).max(1) as u32,
        })
    }
}

/// `v` on an axis of `from` pixels as a position on an axis of `to` pixels (rounded, clamped).
fn scale_axis(v: i64, from: u32, to: u32) -> i32 {
    if from == to || from == 0 {
        return v as i32;
    }
    let scaled = (v as f64 * f64::from(to) / f64::from(from)).round() as i64;
    scaled.clamp(0, i64::from(to.saturating_sub(1))) as i32
}

fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// The largest size with the aspect ratio of `w`x`h` that fits in `max_w`x`max_h`.
pub fn fit(w: u32, h: u32, max_w: u32, max_h: u32) -> (u32, u32) {
    let f = (f64::from(max_w) / f64::from(w)).min(f64::from(max_h) / f64::from(h));
    (
        ((f64::from(w) * f).round() as u32).clamp(1, max_w),
        ((f64::from(h) * f).round() as u32).clamp(1, max_h),
    )
}

// ---------------------------------------------------------------------------------------------
// Plans: what a tool call does, decided before anything touches the desktop
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Act(DesktopAction),
    Sleep(Duration),
    /// Press `keys`, wait, release.
    Hold {
        keys: String,
        duration: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// A screenshot of the whole screen, scaled to the model's display.
    Screenshot,
    /// A screen region scaled to `size`.
    Zoom { region: Region, size: (u32, u32) },
    /// `X=…,Y=…` in model coordinates.
    Cursor,
}

#[derive(Debug, Clone, PartialEq)]
struct Plan {
    steps: Vec<Step>,
    reply: Reply,
}

impl Plan {
    fn shot(steps: Vec<Step>) -> Plan {
        Plan {
            steps,
            reply: Reply::Screenshot,
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An integer, accepting integral floats (`100.0`) and rounding others, as models sometimes send.
fn as_int(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    v.as_f64()
        .filter(|f| f.is_finite() && f.abs() < 1e9)
        .map(|f| f.round() as i64)
}

fn opt_field<'a>(input: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    input.get(key).filter(|v| !v.is_null())
}

fn opt_str<'a>(input: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, InputError> {
    match opt_field(input, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(format!(
            "`{key}` must be a string, got {}",
            type_name(other)
        ))),
    }
}

fn req_str<'a>(
    input: &'a Map<String, Value>,
    key: &str,
    action: &str,
) -> Result<&'a str, InputError> {
    opt_str(input, key)?.ok_or_else(|| bad(format!("`{key}` is required for {action}")))
}

fn opt_number(input: &Map<String, Value>, key: &str) -> Result<Option<f64>, InputError> {
    match opt_field(input, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| bad(format!("`{key}` must be a number, got {}", type_name(v)))),
    }
}

fn pair(v: &Value, key: &str) -> Result<(i64, i64), InputError> {
    let err = || {
        bad(format!(
            "`{key}` must be [x, y], two integers, got {}",
            compact(v)
        ))
    };
    match v.as_array().map(Vec::as_slice) {
        Some([x, y]) => Ok((as_int(x).ok_or_else(err)?, as_int(y).ok_or_else(err)?)),
        _ => Err(err()),
    }
}

/// A JSON value for an error message, cut short.
fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        let mut end = 77;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

fn opt_coordinate(
    input: &Map<String, Value>,
    key: &str,
    scale: &Scale,
) -> Result<Option<(i32, i32)>, InputError> {
    opt_field(input, key)
        .map(|v| {
            let (x, y) = pair(v, key)?;
            scale.to_screen(x, y)
        })
        .transpose()
}

fn req_coordinate(
    input: &Map<String, Value>,
    key: &str,
    action: &str,
    scale: &Scale,
) -> Result<(i32, i32), InputError> {
    opt_coordinate(input, key, scale)?
        .ok_or_else(|| bad(format!("`{key}` ([x, y]) is required for {action}")))
}

/// The `text` modifier of clicks and scrolls (`shift`, `ctrl+shift`) as modifier names.
fn modifiers(input: &Map<String, Value>) -> Result<Vec<String>, InputError> {
    Ok(opt_str(input, "text")?
        .map(|t| {
            t.split('+')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

fn duration(input: &Map<String, Value>, action: &str) -> Result<Duration, InputError> {
    let d = opt_number(input, "duration")?
        .ok_or_else(|| bad(format!("`duration` (seconds) is required for {action}")))?;
    if !(0.0..=MAX_DURATION_S).contains(&d) {
        return Err(bad(format!(
            "`duration` must be 0-{MAX_DURATION_S} seconds, got {d}"
        )));
    }
    Ok(Duration::from_secs_f64(d))
}

/// Refuses fields that make no sense for the action, as Anthropic's reference implementation does,
/// so a model that confuses actions learns it instead of seeing something else happen.
fn forbid(input: &Map<String, Value>, action: &str, keys: &[&str]) -> Result<(), InputError> {
    for k in keys {
        if opt_field(input, k).is_some() {
            return Err(bad(format!("`{k}` is not accepted for {action}")));
        }
    }
    Ok(())
}

/// Splits xdotool `key` syntax into combinations: `ctrl+a Delete` presses `ctrl+a`, then `Delete`.
fn key_combos(text: &str) -> Result<Vec<String>, InputError> {
    let combos: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    if combos.is_empty() {
        return Err(bad(
            "`text` names no key: give e.g. \"Return\" or \"ctrl+s\"",
        ));
    }
    Ok(combos)
}

fn click(
    input: &Map<String, Value>,
    action: &str,
    button: MouseButton,
    count: u32,
    scale: &Scale,
) -> Result<Plan, InputError> {
    let at = opt_coordinate(input, "coordinate", scale)?;
    Ok(Plan::shot(vec![Step::Act(DesktopAction::Click {
        x: at.map(|p| p.0),
        y: at.map(|p| p.1),
        button,
        count,
        modifiers: modifiers(input).map_err(|e| bad(format!("{action}: {e}")))?,
    })]))
}

/// The plan for one Anthropic `computer` tool_use `input`.
fn anthropic_plan(input: &Value, scale: &Scale) -> Result<Plan, InputError> {
    let input = input.as_object().ok_or_else(|| {
        bad(format!(
            "the tool input must be an object with an `action`, got {}",
            type_name(input)
        ))
    })?;
    let action = req_str(input, "action", "the computer tool")
        .map_err(|_| bad("`action` (a string) is required"))?;
    let plan = match action {
        "screenshot" => {
            forbid(input, action, &["coordinate", "text"])?;
            Plan::shot(vec![])
        }
        "cursor_position" => {
            forbid(input, action, &["coordinate", "text"])?;
            Plan {
                steps: vec![],
                reply: Reply::Cursor,
            }
        }
        "mouse_move" => {
            let (x, y) = req_coordinate(input, "coordinate", action, scale)?;
            Plan::shot(vec![Step::Act(DesktopAction::Move { x, y })])
        }
        "left_click" => click(input, action, MouseButton::Left, 1, scale)?,
        "right_click" => click(input, action, MouseButton::Right, 1, scale)?,
        "middle_click" => click(input, action, MouseButton::Middle, 1, scale)?,
        "double_click" => click(input, action, MouseButton::Left, 2, scale)?,
        "triple_click" => click(input, action, MouseButton::Left, 3, scale)?,
        "left_click_drag" => {
            let start = req_coordinate(input, "start_coordinate", action, scale)?;
            let end = req_coordinate(input, "coordinate", action, scale)?;
            Plan::shot(vec![Step::Act(DesktopAction::Drag {
                path: vec![[start.0, start.1], [end.0, end.1]],
                button: MouseButton::Left,
                modifiers: modifiers(input)?,
            })])
        }
        "left_mouse_down" | "left_mouse_up" => {
            forbid(input, action, &["text"])?;
            let at = opt_coordinate(input, "coordinate", scale)?;
            let (x, y) = (at.map(|p| p.0), at.map(|p| p.1));
            let button = MouseButton::Left;
            Plan::shot(vec![Step::Act(if action == "left_mouse_down" {
                DesktopAction::MouseDown { x, y, button }
            } else {
                DesktopAction::MouseUp { x, y, button }
            })])
        }
        "scroll" => {
            let direction = match req_str(input, "scroll_direction", action)? {
                "up" => vivarium_api::desktop::ScrollDirection::Up,
                "down" => vivarium_api::desktop::ScrollDirection::Down,
                "left" => vivarium_api::desktop::ScrollDirection::Left,
                "right" => vivarium_api::desktop::ScrollDirection::Right,
                other => {
                    return Err(bad(format!(
                        "`scroll_direction` must be up, down, left or right, got {other:?}"
                    )))
                }
            };
            let amount_v = opt_field(input, "scroll_amount")
                .ok_or_else(|| bad("`scroll_amount` is required for scroll"))?;
            let amount = as_int(amount_v)
                .filter(|a| (0..=i64::from(MAX_SCROLL_CLICKS)).contains(a))
                .ok_or_else(|| {
                    bad(format!(
                        "`scroll_amount` must be an integer 0-{MAX_SCROLL_CLICKS}, got {}",
                        compact(amount_v)
                    ))
                })? as u32;
            let at = opt_coordinate(input, "coordinate", scale)?;
            let mods = modifiers(input)?;
            let mut steps = vec![];
            if amount == 0 {
                if let Some((x, y)) = at {
                    steps.push(Step::Act(DesktopAction::Move { x, y }));
                }
            } else {
                steps.push(Step::Act(DesktopAction::Scroll {
                    x: at.map(|p| p.0),
                    y: at.map(|p| p.1),
                    direction,
                    amount,
                    modifiers: mods,
                }));
            }
            Plan::shot(steps)
        }
        "type" => {
            forbid(input, action, &["coordinate"])?;
            let text = req_str(input, "text", action)?;
            if text.is_empty() {
                return Err(bad("`text` is empty: nothing to type"));
            }
            Plan::shot(vec![Step::Act(DesktopAction::Type {
                text: text.to_string(),
            })])
        }
        "key" => {
            forbid(input, action, &["coordinate"])?;
            let combos = key_combos(req_str(input, "text", action)?)?;
            Plan::shot(
                combos
                    .into_iter()
                    .map(|keys| Step::Act(DesktopAction::Key { keys }))
                    .collect(),
            )
        }
        "hold_key" => {
            forbid(input, action, &["coordinate"])?;
            let text = req_str(input, "text", action)?;
            let keys = key_combos(text)?.join("+");
            Plan::shot(vec![Step::Hold {
                keys,
                duration: duration(input, action)?,
            }])
        }
        "wait" => Plan::shot(vec![Step::Sleep(duration(input, action)?)]),
        "zoom" => {
            let v = opt_field(input, "region")
                .ok_or_else(|| bad("`region` ([x1, y1, x2, y2]) is required for zoom"))?;
            let err = || {
                bad(format!(
                    "`region` must be [x1, y1, x2, y2], four integers, got {}",
                    compact(v)
                ))
            };
            let r: Vec<i64> = v
                .as_array()
                .ok_or_else(err)?
                .iter()
                .map(|n| as_int(n).ok_or_else(err))
                .collect::<Result<_, _>>()?;
            let r: [i64; 4] = r.try_into().map_err(|_| err())?;
            let region = scale.region_to_screen(r)?;
            let (mw, mh) = scale.model;
            let size = fit((r[2] - r[0]) as u32, (r[3] - r[1]) as u32, mw, mh);
            Plan {
                steps: vec![],
                reply: Reply::Zoom { region, size },
            }
        }
        other => {
            return Err(bad(format!(
                "unknown action {other:?}: use one of key, hold_key, type, cursor_position, mouse_move, \
                 left_mouse_down, left_mouse_up, left_click, left_click_drag, right_click, middle_click, \
                 double_click, triple_click, scroll, wait, screenshot, zoom"
            )))
        }
    };
    Ok(plan)
}

/// An OpenAI key name (`CTRL`, `ENTER`, `ARROWLEFT`, `a`) as the desktop's key name. In a
/// combination a single letter is the key, not the capital: `["CTRL", "A"]` is ctrl+a.
pub fn openai_key(name: &str, in_combo: bool) -> Result<String, InputError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        // A lone space is the space bar.
        return if name == " " {
            Ok("space".into())
        } else {
            Err(bad("`keys` holds an empty key name"))
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    let mapped = match upper.as_str() {
        "CTRL" | "CONTROL" => "ctrl",
        "ALT" | "OPTION" => "alt",
        "SHIFT" => "shift",
        "CMD" | "COMMAND" | "META" | "SUPER" | "WIN" | "WINDOWS" | "OS" => "super",
        "ENTER" | "RETURN" => "Return",
        "ESC" | "ESCAPE" => "Escape",
        "TAB" => "Tab",
        "SPACE" => "space",
        "BACKSPACE" => "BackSpace",
        "DELETE" | "DEL" => "Delete",
        "INSERT" | "INS" => "Insert",
        "HOME" => "Home",
        "END" => "End",
        "PAGEUP" | "PAGE_UP" | "PGUP" => "Page_Up",
        "PAGEDOWN" | "PAGE_DOWN" | "PGDN" => "Page_Down",
        "ARROWUP" | "UP" => "Up",
        "ARROWDOWN" | "DOWN" => "Down",
        "ARROWLEFT" | "LEFT" => "Left",
        "ARROWRIGHT" | "RIGHT" => "Right",
        "CAPSLOCK" => "Caps_Lock",
        "PRINTSCREEN" => "Print",
        "PLUS" => "plus",
        "MINUS" => "minus",
        _ => {
            let mut chars = trimmed.chars();
            return Ok(match (chars.next(), chars.next()) {
                (Some(c), None) if in_combo && c.is_ascii_alphabetic() => {
                    c.to_ascii_lowercase().to_string()
                }
                (Some('+'), None) => "plus".into(),
                _ => match upper.strip_prefix('F').and_then(|n| n.parse::<u8>().ok()) {
                    Some(n) if (1..=35).contains(&n) => format!("F{n}"),
                    // Anything else is passed on: the desktop knows every X keysym name.
                    _ => trimmed.to_string(),
                },
            });
        }
    };
    Ok(mapped.to_string())
}

fn openai_point(
    action: &Map<String, Value>,
    kind: &str,
    scale: &Scale,
) -> Result<(i32, i32), InputError> {
    let get = |k: &str| -> Result<i64, InputError> {
        let v = opt_field(action, k).ok_or_else(|| bad(format!("`{k}` is required for {kind}")))?;
        as_int(v).ok_or_else(|| bad(format!("`{k}` must be an integer, got {}", type_name(v))))
    };
    scale.to_screen(get("x")?, get("y")?)
}

/// Modifier keys OpenAI may send with a click or scroll (`keys: ["SHIFT"]`).
fn openai_modifiers(action: &Map<String, Value>) -> Result<Vec<String>, InputError> {
    match opt_field(action, "keys") {
        None => Ok(vec![]),
        Some(Value::Array(keys)) => keys
            .iter()
            .map(|k| {
                k.as_str()
                    .ok_or_else(|| bad("`keys` must be an array of strings"))
                    .and_then(|k| openai_key(k, true))
            })
            .collect(),
        Some(other) => Err(bad(format!(
            "`keys` must be an array of strings, got {}",
            type_name(other)
        ))),
    }
}

/// Wheel clicks for `px` pixels of scroll: at least one when `px` is not zero.
fn scroll_clicks(px: f64) -> u32 {
    if px == 0.0 {
        return 0;
    }
    ((px.abs() / OPENAI_SCROLL_PX_PER_CLICK).round() as u32).clamp(1, MAX_SCROLL_CLICKS)
}

/// The plan for one OpenAI `computer_call` `action`.
fn openai_plan(action: &Value, scale: &Scale) -> Result<Plan, InputError> {
    use vivarium_api::desktop::ScrollDirection as Dir;
    let action = action.as_object().ok_or_else(|| {
        bad(format!(
            "the action must be an object with a `type`, got {}",
            type_name(action)
        ))
    })?;
    let kind = req_str(action, "type", "a computer action")
        .map_err(|_| bad("`type` (a string) is required"))?;
    let steps = match kind {
        "screenshot" => vec![],
        "click" | "double_click" => {
            let (x, y) = openai_point(action, kind, scale)?;
            let button = match opt_str(action, "button")?.unwrap_or("left") {
                "left" => MouseButton::Left,
                "right" => MouseButton::Right,
                "wheel" | "middle" => MouseButton::Middle,
                "back" => MouseButton::Back,
                "forward" => MouseButton::Forward,
                other => {
                    return Err(bad(format!(
                        "`button` must be left, right, wheel, back or forward, got {other:?}"
                    )))
                }
            };
            vec![Step::Act(DesktopAction::Click {
                x: Some(x),
                y: Some(y),
                button,
                count: if kind == "double_click" { 2 } else { 1 },
                modifiers: openai_modifiers(action)?,
            })]
        }
        "scroll" => {
            let (x, y) = openai_point(action, kind, scale)?;
            let sx = opt_number(action, "scroll_x")?.unwrap_or(0.0);
            let sy = opt_number(action, "scroll_y")?.unwrap_or(0.0);
            let mods = openai_modifiers(action)?;
            let mut steps = vec![Step::Act(DesktopAction::Move { x, y })];
            for (px, neg, pos) in [(sy, Dir::Up, Dir::Down), (sx, Dir::Left, Dir::Right)] {
                let amount = scroll_clicks(px);
                if amount > 0 {
                    steps.push(Step::Act(DesktopAction::Scroll {
                        x: Some(x),
                        y: Some(y),
                        direction: if px < 0.0 { neg } else { pos },
                        amount,
                        modifiers: mods.clone(),
                    }));
                }
            }
            steps
        }
        "type" => {
            let text = req_str(action, "text", kind)?;
            if text.is_empty() {
                return Err(bad("`text` is empty: nothing to type"));
            }
            vec![Step::Act(DesktopAction::Type {
                text: text.to_string(),
            })]
        }
        "wait" => vec![Step::Sleep(OPENAI_WAIT)],
        "move" => {
            let (x, y) = openai_point(action, kind, scale)?;
            vec![Step::Act(DesktopAction::Move { x, y })]
        }
        "keypress" => {
            let keys = match opt_field(action, "keys") {
                Some(Value::Array(k)) if !k.is_empty() => k,
                Some(Value::Array(_)) => return Err(bad("`keys` is empty: name at least one key")),
                Some(other) => {
                    return Err(bad(format!(
                        "`keys` must be an array of key names, got {}",
                        type_name(other)
                    )))
                }
                None => return Err(bad("`keys` is required for keypress")),
            };
            let combo = keys.len() > 1;
            let names: Vec<String> = keys
                .iter()
                .map(|k| {
                    k.as_str()
                        .ok_or_else(|| bad("`keys` must be an array of strings"))
                        .and_then(|k| openai_key(k, combo))
                })
                .collect::<Result<_, _>>()?;
            vec![Step::Act(DesktopAction::Key {
                keys: names.join("+"),
            })]
        }
        "drag" => {
            let path = match opt_field(action, "path") {
                Some(Value::Array(p)) => p,
                Some(other) => {
                    return Err(bad(format!(
                        "`path` must be an array of {{x, y}} points, got {}",
                        type_name(other)
                    )))
                }
                None => return Err(bad("`path` is required for drag")),
            };
            if path.len() < 2 {
                return Err(bad("`path` needs at least two points"));
            }
            let points = path
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let p = p
                        .as_object()
                        .ok_or_else(|| bad(format!("`path[{i}]` must be an object {{x, y}}")))?;
                    let (x, y) = openai_point(p, "drag", scale)
                        .map_err(|e| bad(format!("`path[{i}]`: {e}")))?;
                    Ok([x, y])
                })
                .collect::<Result<Vec<_>, InputError>>()?;
            vec![Step::Act(DesktopAction::Drag {
                path: points,
                button: MouseButton::Left,
                modifiers: openai_modifiers(action)?,
            })]
        }
        other => {
            return Err(bad(format!(
            "unknown action type {other:?}: use one of click, double_click, scroll, type, wait, \
                 move, keypress, drag, screenshot"
        )))
        }
    };
    Ok(Plan::shot(steps))
}

// ---------------------------------------------------------------------------------------------
// Execution
// ---------------------------------------------------------------------------------------------

/// What a plan produced.
#[derive(Debug)]
enum Outcome {
    Image { png: Bytes },
    Cursor { x: i64, y: i64 },
}

struct Session<'a> {
    runner: &'a Runner,
    id: &'a str,
    agent: AgentClient,
}

impl Session<'_> {
    async fn open<'a>(runner: &'a Runner, id: &'a str) -> ApiResult<Session<'a>> {
        let agent = runner.agent(id)?;
        runner.require_desktop(id)?;
        Ok(Session { runner, id, agent })
    }

    /// Runs one action; a refusal by the desktop (bad key name, bad region...) is the model's.
    async fn act(&self, action: DesktopAction) -> Result<(ActionResult, Bytes), Failure> {
        let name = action.name();
        self.agent.desktop(action).await.map_err(|e| match e {
            ClientError::Agent {
                code:
                    ErrorCode::InvalidArgument
                    | ErrorCode::NotFound
                    | ErrorCode::Timeout
                    | ErrorCode::PermissionDenied,
                message,
                ..
            } => Failure::Tool(format!("{name} failed: {message}")),
            other => Failure::Api(agent_error(self.runner, self.id, other)),
        })
    }

    async fn screen_size(&self) -> Result<(u32, u32), Failure> {
        match self.act(DesktopAction::ScreenSize).await? {
            (ActionResult::Size { width, height }, _) if width > 0 && height > 0 => {
                Ok((width, height))
            }
            (other, _) => Err(Failure::Api(ApiError::internal(format!(
                "the agent answered screen_size with {other:?}"
            )))),
        }
    }

    /// The screen size as the API needs it: any failure here is the runner's or the sandbox's,
    /// never the model's.
    async fn screen(&self) -> ApiResult<(u32, u32)> {
        match self.screen_size().await {
            Ok(s) => Ok(s),
            Err(Failure::Api(e)) => Err(e),
            Err(Failure::Tool(m)) => Err(ApiError::internal(m)),
        }
    }

    async fn screenshot(
        &self,
        region: Option<Region>,
        scale_to: Option<(u32, u32)>,
    ) -> Result<Bytes, Failure> {
        let action = DesktopAction::Screenshot {
            format: ImageFormat::Png,
            quality: None,
            region,
            scale_to: scale_to.map(|(w, h)| [w, h]),
            // Models see where the pointer is, as in Anthropic's reference implementation.
            cursor: true,
        };
        match self.act(action).await? {
            (ActionResult::Screenshot { .. }, png) if !png.is_empty() => Ok(png),
            (other, _) => Err(Failure::Api(ApiError::internal(format!(
                "the agent answered a screenshot with {other:?}"
            )))),
        }
    }

    async fn run(&self, plan: Plan, scale: &Scale, settle: Duration) -> Result<Outcome, Failure> {
        let acted = !plan.steps.is_empty();
        for step in plan.steps {
            match step {
                Step::Act(a) => {
                    self.act(a).await?;
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Hold { keys, duration } => {
                    self.act(DesktopAction::KeyDown { keys: keys.clone() })
                        .await?;
                    tokio::time::sleep(duration).await;
                    self.act(DesktopAction::KeyUp { keys }).await?;
                }
            }
        }
        match plan.reply {
            Reply::Cursor => match self.act(DesktopAction::CursorPosition).await? {
                (ActionResult::Position { x, y }, _) => {
                    let (x, y) = scale.to_model(x, y);
                    Ok(Outcome::Cursor { x, y })
                }
                (other, _) => Err(Failure::Api(ApiError::internal(format!(
                    "the agent answered cursor_position with {other:?}"
                )))),
            },
            Reply::Screenshot => {
                if acted && !settle.is_zero() {
                    tokio::time::sleep(settle).await;
                }
                let to = (!scale.is_identity()).then_some(scale.model);
                Ok(Outcome::Image {
                    png: self.screenshot(None, to).await?,
                })
            }
            Reply::Zoom { region, size } => Ok(Outcome::Image {
                png: self.screenshot(Some(region), Some(size)).await?,
            }),
        }
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The model's display: both sides or neither; default the real screen.
fn model_display(
    w: Option<u32>,
    h: Option<u32>,
    names: (&str, &str),
    screen: (u32, u32),
) -> ApiResult<(u32, u32)> {
    let check = |name: &str, v: u32| {
        if v == 0 || v > MAX_DISPLAY_EDGE {
            Err(ApiError::invalid(
                name,
                format!("{name} must be 1-{MAX_DISPLAY_EDGE}, got {v}"),
            ))
        } else {
            Ok(v)
        }
    };
    match (w, h) {
        (None, None) => Ok(screen),
        (Some(w), Some(h)) => Ok((check(names.0, w)?, check(names.1, h)?)),
        (None, Some(_)) => Err(ApiError::invalid(
            names.0,
            format!("give {} with {}", names.0, names.1),
        )),
        (Some(_), None) => Err(ApiError::invalid(
            names.1,
            format!("give {} with {}", names.1, names.0),
        )),
    }
}

fn settle(ms: Option<u64>) -> ApiResult<Duration> {
    match ms {
        None => Ok(Duration::from_millis(DEFAULT_SETTLE_MS)),
        Some(ms) if ms <= MAX_SETTLE_MS => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(ApiError::invalid(
            "screenshot_delay_ms",
            format!("screenshot_delay_ms must be 0-{MAX_SETTLE_MS}, got {ms}"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------------------------

/// `POST /v1/runs/{id}/computer/anthropic`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnthropicRequest {
    /// The `input` of the model's `computer` tool_use block, as the model sent it.
    pub input: Value,
    /// The display size declared in the tool definition (default: the real screen).
    #[serde(default)]
    pub display_width_px: Option<u32>,
    #[serde(default)]
    pub display_height_px: Option<u32>,
    /// Pause between acting and the screenshot that shows the result (default 250 ms).
    #[serde(default)]
    pub screenshot_delay_ms: Option<u64>,
}

/// One block of a `tool_result`'s `content`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text { text: String },
    Image { source: ImageSource },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ImageSource {
    /// Always `base64`.
    #[serde(rename = "type")]
    pub kind: String,
    pub media_type: String,
    pub data: String,
}

/// The `content` and `is_error` of the `tool_result` block to send back to the model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AnthropicResult {
    pub content: Vec<ContentBlock>,
    pub is_error: bool,
}

impl AnthropicResult {
    fn error(message: String) -> AnthropicResult {
        AnthropicResult {
            content: vec![ContentBlock::Text { text: message }],
            is_error: true,
        }
    }
}

/// Executes one Anthropic `computer` tool_use (`computer_20250124` / `computer_20251124`) and
/// answers the `tool_result` content. Malformed input answers `is_error: true`, not an HTTP error.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/computer/anthropic",
    operation_id = "computer_anthropic",
    tag = "computer",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = AnthropicRequest,
    responses(
        (status = 200, description = "The tool_result `content` blocks and `is_error`", body = AnthropicResult),
        (status = 400, description = "A request field is invalid (not the model's input: that gives an error result)", body = vivarium_api::ErrorBody),
        (status = 404, description = "No such sandbox", body = vivarium_api::ErrorBody),
        (status = 409, description = "The sandbox has no desktop, or is not running", body = vivarium_api::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn anthropic(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AnthropicRequest>,
) -> ApiResult<Json<AnthropicResult>> {
    let settle = settle(req.screenshot_delay_ms)?;
    let session = Session::open(&s.runner, &id).await?;
    let screen = session.screen().await?;
    let model = model_display(
        req.display_width_px,
        req.display_height_px,
        ("display_width_px", "display_height_px"),
        screen,
    )?;
    let scale = Scale::new(model, screen);
    let outcome = match anthropic_plan(&req.input, &scale) {
        Ok(plan) => session.run(plan, &scale, settle).await,
        Err(e) => Err(e.into()),
    };
    let result = match outcome {
        Ok(Outcome::Image { png }) => AnthropicResult {
            content: vec![ContentBlock::Image {
                source: ImageSource {
                    kind: "base64".into(),
                    media_type: ImageFormat::Png.mime().into(),
                    data: b64(&png),
                },
            }],
            is_error: false,
        },
        Ok(Outcome::Cursor { x, y }) => AnthropicResult {
            content: vec![ContentBlock::Text {
                text: format!("X={x},Y={y}"),
            }],
            is_error: false,
        },
        Err(Failure::Tool(message)) => {
            tracing::debug!(sandbox = %id, %message, "computer tool call refused");
            AnthropicResult::error(message)
        }
        Err(Failure::Api(e)) => return Err(e),
    };
    Ok(Json(result))
}

#[derive(Debug, Deserialize)]
pub struct AnthropicToolQuery {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    display_width_px: Option<String>,
    #[serde(default)]
    display_height_px: Option<String>,
}

fn num(field: &str, v: &Option<String>) -> ApiResult<Option<u32>> {
    v.as_deref()
        .map(|s| {
            s.trim().parse::<u32>().map_err(|_| {
                ApiError::invalid(field, format!("{field} must be a whole number, got {s:?}"))
            })
        })
        .transpose()
}

async fn screen_of(runner: &Runner, id: &str) -> ApiResult<(u32, u32)> {
    Session::open(runner, id).await?.screen().await
}

/// The Anthropic tool definition for a display of `width`x`height`.
pub fn anthropic_tool(version: &str, width: u32, height: u32) -> Value {
    let mut tool = serde_json::json!({
        "type": version,
        "name": "computer",
        "display_width_px": width,
        "display_height_px": height,
    });
    if version == "computer_20251124" {
        tool["enable_zoom"] = Value::Bool(true);
    }
    tool
}

#[utoipa::path(
    get,
    path = "/v1/runs/{id}/computer/anthropic/tool",
    operation_id = "computer_anthropic_tool",
    tag = "computer",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("version" = Option<String>, Query, description = "`computer_20250124` (default) or `computer_20251124`"),
        ("display_width_px" = Option<u32>, Query, description = "The model's display width (default: the screen's)"),
        ("display_height_px" = Option<u32>, Query, description = "The model's display height (default: the screen's)"),
    ),
    responses(
        (status = 200, description = "The `computer` tool definition to send to the model", body = Object),
        (status = 400, description = "A request field is invalid (not the model's input: that gives an error result)", body = vivarium_api::ErrorBody),
        (status = 404, description = "No such sandbox", body = vivarium_api::ErrorBody),
        (status = 409, description = "The sandbox has no desktop, or is not running", body = vivarium_api::ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /v1/runs/{id}/computer/anthropic/tool?version=&display_width_px=&display_height_px=`.
pub async fn anthropic_tool_def(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AnthropicToolQuery>,
) -> ApiResult<Json<Value>> {
    let version = q.version.as_deref().unwrap_or(ANTHROPIC_VERSIONS[0]);
    if !ANTHROPIC_VERSIONS.contains(&version) {
        return Err(ApiError::invalid(
            "version",
            format!(
                "version must be one of {}, got {version:?}",
                ANTHROPIC_VERSIONS.join(", ")
            ),
        ));
    }
    let w = num("display_width_px", &q.display_width_px)?;
    let h = num("display_height_px", &q.display_height_px)?;
    let screen = screen_of(&s.runner, &id).await?;
    let (w, h) = model_display(w, h, ("display_width_px", "display_height_px"), screen)?;
    Ok(Json(anthropic_tool(version, w, h)))
}

// ---------------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------------

/// `POST /v1/runs/{id}/computer/openai`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiRequest {
    /// The `action` of the model's `computer_call` item.
    pub action: Value,
    /// The `call_id` of that item, echoed into the output.
    #[serde(default)]
    pub call_id: Option<String>,
    /// The display size declared in the tool definition (default: the real screen).
    #[serde(default)]
    pub display_width: Option<u32>,
    #[serde(default)]
    pub display_height: Option<u32>,
    /// The `pending_safety_checks` the caller acknowledges, echoed into the output.
    #[serde(default)]
    pub acknowledged_safety_checks: Option<Value>,
    /// Pause between acting and the screenshot (default 250 ms).
    #[serde(default)]
    pub screenshot_delay_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ComputerScreenshot {
    /// Always `computer_screenshot`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `data:image/png;base64,…`
    pub image_url: String,
}

/// The `computer_call_output` item to send back to the model, exactly as OpenAI accepts it. When the
/// action was refused, the screenshot shows the unchanged screen and the reason is in the
/// [`OPENAI_ERROR_HEADER`] response header (the item has no field for it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OpenAiResult {
    /// Always `computer_call_output`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    pub output: ComputerScreenshot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_safety_checks: Option<Value>,
}

/// Response header that carries why an OpenAI computer call was refused (ASCII; other characters
/// become `?`).
pub const OPENAI_ERROR_HEADER: &str = "x-vivarium-error";

/// Executes one OpenAI `computer_call` action and answers the `computer_call_output` item.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/computer/openai",
    operation_id = "computer_openai",
    tag = "computer",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = OpenAiRequest,
    responses(
        (status = 200, description = "The `computer_call_output` with a screenshot", body = OpenAiResult),
        (status = 400, description = "A request field is invalid (not the model's input: that gives an error result)", body = vivarium_api::ErrorBody),
        (status = 404, description = "No such sandbox", body = vivarium_api::ErrorBody),
        (status = 409, description = "The sandbox has no desktop, or is not running", body = vivarium_api::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn openai(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<OpenAiRequest>,
) -> ApiResult<axum::response::Response> {
    let settle = settle(req.screenshot_delay_ms)?;
    let session = Session::open(&s.runner, &id).await?;
    let screen = session.screen().await?;
    let model = model_display(
        req.display_width,
        req.display_height,
        ("display_width", "display_height"),
        screen,
    )?;
    let scale = Scale::new(model, screen);
    let outcome = match openai_plan(&req.action, &scale) {
        Ok(plan) => session.run(plan, &scale, settle).await,
        Err(e) => Err(e.into()),
    };
    let (png, error) = match outcome {
        Ok(Outcome::Image { png }) => (png, None),
        Ok(Outcome::Cursor { .. }) => {
            return Err(ApiError::internal("an OpenAI action answered a cursor"))
        }
        Err(Failure::Tool(message)) => {
            tracing::debug!(sandbox = %id, %message, "computer call refused");
            // The model still gets the screen as it is, with the error beside it.
            let to = (!scale.is_identity()).then_some(scale.model);
            match session.screenshot(None, to).await {
                Ok(png) => (png, Some(message)),
                Err(Failure::Api(e)) => return Err(e),
                Err(Failure::Tool(m)) => return Err(ApiError::internal(m)),
            }
        }
        Err(Failure::Api(e)) => return Err(e),
    };
    let mut resp = axum::response::IntoResponse::into_response(Json(OpenAiResult {
        kind: "computer_call_output".into(),
        call_id: req.call_id,
        output: ComputerScreenshot {
            kind: "computer_screenshot".into(),
            image_url: format!("data:{};base64,{}", ImageFormat::Png.mime(), b64(&png)),
        },
        acknowledged_safety_checks: req.acknowledged_safety_checks,
    }));
    if let Some(message) = error {
        let ascii: String = message
            .chars()
            .map(|c| {
                if c == ' ' || c.is_ascii_graphic() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = axum::http::HeaderValue::from_str(&ascii) {
            resp.headers_mut().insert(OPENAI_ERROR_HEADER, v);
        }
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
pub struct OpenAiToolQuery {
    #[serde(default)]
    display_width: Option<String>,
    #[serde(default)]
    display_height: Option<String>,
    #[serde(default)]
    environment: Option<String>,
}

/// The OpenAI `computer_use_preview` tool definition.
pub fn openai_tool(width: u32, height: u32, environment: &str) -> Value {
    serde_json::json!({
        "type": "computer_use_preview",
        "display_width": width,
        "display_height": height,
        "environment": environment,
    })
}

#[utoipa::path(
    get,
    path = "/v1/runs/{id}/computer/openai/tool",
    operation_id = "computer_openai_tool",
    tag = "computer",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("display_width" = Option<u32>, Query, description = "The model's display width (default: the screen's)"),
        ("display_height" = Option<u32>, Query, description = "The model's display height (default: the screen's)"),
        ("environment" = Option<String>, Query, description = "The tool's `environment` (default `linux`)"),
    ),
    responses(
        (status = 200, description = "The `computer_use_preview` tool definition", body = Object),
        (status = 400, description = "A request field is invalid (not the model's input: that gives an error result)", body = vivarium_api::ErrorBody),
        (status = 404, description = "No such sandbox", body = vivarium_api::ErrorBody),
        (status = 409, description = "The sandbox has no desktop, or is not running", body = vivarium_api::ErrorBody),
    ),
    security(("bearer" = []))
)]
/// `GET /v1/runs/{id}/computer/openai/tool?display_width=&display_height=&environment=`.
pub async fn openai_tool_def(
    State(s): AppStateRef,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<OpenAiToolQuery>,
) -> ApiResult<Json<Value>> {
    let environment = q.environment.as_deref().unwrap_or("linux");
    const ENVIRONMENTS: [&str; 5] = ["linux", "ubuntu", "browser", "mac", "windows"];
    if !ENVIRONMENTS.contains(&environment) {
        return Err(ApiError::invalid(
            "environment",
            format!(
                "environment must be one of {}, got {environment:?}",
                ENVIRONMENTS.join(", ")
            ),
        ));
    }
    let w = num("display_width", &q.display_width)?;
    let h = num("display_height", &q.display_height)?;
    let screen = screen_of(&s.runner, &id).await?;
    let (w, h) = model_display(w, h, ("display_width", "display_height"), screen)?;
    Ok(Json(openai_tool(w, h, environment)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use vivarium_api::desktop::ScrollDirection;

    /// The model sees 1024x640, the screen is 1280x800 (factor 1.25).
    const SCALED: Scale = Scale {
        model: (1024, 640),
        screen: (1280, 800),
    };

    fn steps(input: Value) -> Vec<Step> {
        anthropic_plan(&input, &SCALED).expect("valid input").steps
    }

    fn err(input: Value) -> String {
        anthropic_plan(&input, &SCALED).unwrap_err().0
    }

    #[test]
    fn scales_both_ways() {
        assert_eq!(SCALED.to_screen(400, 300).unwrap(), (500, 375));
        assert_eq!(SCALED.to_model(500, 375), (400, 300));
        assert_eq!(SCALED.to_screen(1023, 639).unwrap(), (1279, 799));
        assert_eq!(SCALED.to_model(1279, 799), (1023, 639));
        assert_eq!(SCALED.to_screen(0, 0).unwrap(), (0, 0));
        // Round trips of every model x land on the same x.
        for x in 0..1024 {
            let (sx, _) = SCALED.to_screen(x, 0).unwrap();
            assert_eq!(SCALED.to_model(sx, 0).0, x);
        }
        let id = Scale::new((1280, 800), (1280, 800));
        assert!(id.is_identity());
        assert_eq!(id.to_screen(17, 33).unwrap(), (17, 33));
        assert_eq!(id.to_model(17, 33), (17, 33));
    }

    #[test]
    fn off_screen_is_refused() {
        for (x, y) in [(1024, 0), (0, 640), (-1, 5), (5000, 5000)] {
            let e = SCALED.to_screen(x, y).unwrap_err().0;
            assert!(e.contains("off-screen") && e.contains("1024x640"), "{e}");
        }
    }

    #[test]
    fn regions_round_outwards() {
        let r = SCALED.region_to_screen([0, 0, 512, 320]).unwrap();
        assert_eq!(
            r,
            Region {
                x: 0,
                y: 0,
                width: 640,
                height: 400
            }
        );
        let r = SCALED.region_to_screen([1, 1, 3, 3]).unwrap();
        assert_eq!((r.x, r.y, r.width, r.height), (1, 1, 3, 3));
        assert!(SCALED.region_to_screen([10, 10, 10, 20]).is_err());
        assert!(SCALED.region_to_screen([0, 0, 1025, 10]).is_err());
        assert_eq!(fit(512, 320, 1024, 640), (1024, 640));
        assert_eq!(fit(100, 400, 1024, 640), (160, 640));
    }

    #[test]
    fn anthropic_actions_become_desktop_actions() {
        assert_eq!(
            steps(json!({"action":"mouse_move","coordinate":[400,300]})),
            vec![Step::Act(DesktopAction::Move { x: 500, y: 375 })]
        );
        assert_eq!(
            steps(json!({"action":"triple_click","coordinate":[8,8],"text":"shift+ctrl"})),
            vec![Step::Act(DesktopAction::Click {
                x: Some(10),
                y: Some(10),
                button: MouseButton::Left,
                count: 3,
                modifiers: vec!["shift".into(), "ctrl".into()],
            })]
        );
        assert_eq!(
            steps(json!({"action":"middle_click"})),
            vec![Step::Act(DesktopAction::Click {
                x: None,
                y: None,
                button: MouseButton::Middle,
                count: 1,
                modifiers: vec![],
            })]
        );
        assert_eq!(
            steps(
                json!({"action":"left_click_drag","start_coordinate":[0,0],"coordinate":[800,400]})
            ),
            vec![Step::Act(DesktopAction::Drag {
                path: vec![[0, 0], [1000, 500]],
                button: MouseButton::Left,
                modifiers: vec![],
            })]
        );
        assert_eq!(
            steps(
                json!({"action":"scroll","coordinate":[80,80],"scroll_direction":"down","scroll_amount":3,"text":"ctrl"})
            ),
            vec![Step::Act(DesktopAction::Scroll {
                x: Some(100),
                y: Some(100),
                direction: ScrollDirection::Down,
                amount: 3,
                modifiers: vec!["ctrl".into()],
            })]
        );
        assert_eq!(
            steps(json!({"action":"key","text":"ctrl+a Delete"})),
            vec![
                Step::Act(DesktopAction::Key {
                    keys: "ctrl+a".into()
                }),
                Step::Act(DesktopAction::Key {
                    keys: "Delete".into()
                }),
            ]
        );
        assert_eq!(
            steps(json!({"action":"hold_key","text":"shift","duration":0.5})),
            vec![Step::Hold {
                keys: "shift".into(),
                duration: Duration::from_millis(500)
            }]
        );
        assert_eq!(
            steps(json!({"action":"wait","duration":1})),
            vec![Step::Sleep(Duration::from_secs(1))]
        );
        let p = anthropic_plan(&json!({"action":"cursor_position"}), &SCALED).unwrap();
        assert_eq!(p.reply, Reply::Cursor);
        let p = anthropic_plan(&json!({"action":"zoom","region":[0,0,256,160]}), &SCALED).unwrap();
        assert_eq!(
            p.reply,
            Reply::Zoom {
                region: Region {
                    x: 0,
                    y: 0,
                    width: 320,
                    height: 200
                },
                size: (1024, 640)
            }
        );
        // Integral floats are accepted as integers.
        assert_eq!(
            steps(json!({"action":"mouse_move","coordinate":[400.0,300.0]})),
            vec![Step::Act(DesktopAction::Move { x: 500, y: 375 })]
        );
    }

    #[test]
    fn malformed_anthropic_inputs_say_what_is_wrong() {
        assert!(err(json!({"action":"left_click_drag","coordinate":[1,1]}))
            .contains("start_coordinate"));
        assert!(err(json!({"action":"mouse_move"})).contains("`coordinate`"));
        assert!(err(json!({"action":"fly"})).contains("unknown action \"fly\""));
        assert!(err(json!({"coordinate":[1,1]})).contains("`action`"));
        assert!(err(json!("screenshot")).contains("object"));
        assert!(err(json!({"action":"left_click","coordinate":[2000,10]})).contains("off-screen"));
        assert!(err(json!({"action":"left_click","coordinate":"10,10"})).contains("[x, y]"));
        assert!(err(json!({"action":"left_click","coordinate":[1]})).contains("[x, y]"));
        assert!(err(json!({"action":"type","text":5})).contains("must be a string"));
        assert!(err(json!({"action":"type"})).contains("`text` is required"));
        assert!(err(json!({"action":"key","text":"   "})).contains("names no key"));
        assert!(
            err(json!({"action":"scroll","scroll_direction":"sideways","scroll_amount":1}))
                .contains("scroll_direction")
        );
        assert!(err(json!({"action":"scroll","scroll_direction":"up"})).contains("scroll_amount"));
        assert!(
            err(json!({"action":"scroll","scroll_direction":"up","scroll_amount":-2}))
                .contains("0-100")
        );
        assert!(err(json!({"action":"wait","duration":1000})).contains("duration"));
        assert!(err(json!({"action":"hold_key","text":"a"})).contains("duration"));
        assert!(err(json!({"action":"zoom","region":[0,0,10]})).contains("four integers"));
        assert!(err(json!({"action":"zoom","region":[20,0,10,10]})).contains("empty"));
        assert!(err(json!({"action":"screenshot","coordinate":[1,1]})).contains("not accepted"));
    }

    #[test]
    fn openai_key_names() {
        let combo = |keys: &[&str]| {
            keys.iter()
                .map(|k| openai_key(k, keys.len() > 1).unwrap())
                .collect::<Vec<_>>()
                .join("+")
        };
        assert_eq!(combo(&["CTRL", "A"]), "ctrl+a");
        assert_eq!(combo(&["CTRL", "SHIFT", "T"]), "ctrl+shift+t");
        assert_eq!(combo(&["ENTER"]), "Return");
        assert_eq!(combo(&["ARROWLEFT"]), "Left");
        assert_eq!(combo(&["ArrowDown"]), "Down");
        assert_eq!(combo(&["ESC"]), "Escape");
        assert_eq!(combo(&["CMD", "C"]), "super+c");
        assert_eq!(combo(&["ALT", "F4"]), "alt+F4");
        assert_eq!(combo(&["PAGEDOWN"]), "Page_Down");
        assert_eq!(combo(&["BACKSPACE"]), "BackSpace");
        assert_eq!(combo(&["SPACE"]), "space");
        assert_eq!(combo(&[" "]), "space");
        assert_eq!(combo(&["CTRL", "+"]), "ctrl+plus");
        // Alone, a capital stays a capital; unknown names pass through to the desktop's keysyms.
        assert_eq!(combo(&["A"]), "A");
        assert_eq!(combo(&["KP_Enter"]), "KP_Enter");
        assert!(openai_key("", false).is_err());
    }

    #[test]
    fn openai_actions_become_desktop_actions() {
        let plan = |a: Value| openai_plan(&a, &SCALED).map(|p| p.steps);
        assert_eq!(
            plan(json!({"type":"click","x":400,"y":300,"button":"wheel"})).unwrap(),
            vec![Step::Act(DesktopAction::Click {
                x: Some(500),
                y: Some(375),
                button: MouseButton::Middle,
                count: 1,
                modifiers: vec![],
            })]
        );
        assert_eq!(
            plan(json!({"type":"scroll","x":0,"y":0,"scroll_x":-250,"scroll_y":40})).unwrap(),
            vec![
                Step::Act(DesktopAction::Move { x: 0, y: 0 }),
                Step::Act(DesktopAction::Scroll {
                    x: Some(0),
                    y: Some(0),
                    direction: ScrollDirection::Down,
                    amount: 1,
                    modifiers: vec![],
                }),
                Step::Act(DesktopAction::Scroll {
                    x: Some(0),
                    y: Some(0),
                    direction: ScrollDirection::Left,
                    amount: 3,
                    modifiers: vec![],
                }),
            ]
        );
        assert_eq!(
            plan(json!({"type":"keypress","keys":["CTRL","L"]})).unwrap(),
            vec![Step::Act(DesktopAction::Key {
                keys: "ctrl+l".into()
            })]
        );
        assert_eq!(
            plan(json!({"type":"drag","path":[{"x":0,"y":0},{"x":8,"y":8},{"x":16,"y":8}]}))
                .unwrap(),
            vec![Step::Act(DesktopAction::Drag {
                path: vec![[0, 0], [10, 10], [20, 10]],
                button: MouseButton::Left,
                modifiers: vec![],
            })]
        );
        assert_eq!(
            plan(json!({"type":"wait"})).unwrap(),
            vec![Step::Sleep(OPENAI_WAIT)]
        );
        assert_eq!(plan(json!({"type":"screenshot"})).unwrap(), vec![]);
        let e = |a: Value| plan(a).unwrap_err().0;
        assert!(e(json!({"type":"click","x":5})).contains("`y`"));
        assert!(e(json!({"type":"click","x":5,"y":5,"button":"thumb"})).contains("button"));
        assert!(e(json!({"type":"move","x":5000,"y":1})).contains("off-screen"));
        assert!(e(json!({"type":"drag","path":[{"x":1,"y":1}]})).contains("two points"));
        assert!(e(json!({"type":"keypress","keys":[]})).contains("empty"));
        assert!(e(json!({"type":"keypress","keys":"ctrl"})).contains("array"));
        assert!(e(json!({"type":"teleport"})).contains("unknown action type"));
        assert!(e(json!({"x":1})).contains("`type`"));
    }

    #[test]
    fn scroll_pixels_to_clicks() {
        assert_eq!(scroll_clicks(0.0), 0);
        assert_eq!(scroll_clicks(10.0), 1);
        assert_eq!(scroll_clicks(-300.0), 3);
        assert_eq!(scroll_clicks(1e9), MAX_SCROLL_CLICKS);
    }

    #[test]
    fn display_sizes() {
        let names = ("w", "h");
        assert_eq!(
            model_display(None, None, names, (1280, 800)).unwrap(),
            (1280, 800)
        );
        assert_eq!(
            model_display(Some(1024), Some(640), names, (1280, 800)).unwrap(),
            (1024, 640)
        );
        assert_eq!(
            model_display(Some(1024), None, names, (1280, 800))
                .unwrap_err()
                .field
                .as_deref(),
            Some("h")
        );
        assert!(model_display(Some(0), Some(5), names, (1, 1)).is_err());
    }

    #[test]
    fn tool_definitions() {
        assert_eq!(
            anthropic_tool("computer_20250124", 1024, 640),
            json!({"type":"computer_20250124","name":"computer","display_width_px":1024,"display_height_px":640})
        );
        assert_eq!(
            anthropic_tool("computer_20251124", 1280, 800)["enable_zoom"],
            json!(true)
        );
        assert_eq!(
            openai_tool(1024, 768, "linux"),
            json!({"type":"computer_use_preview","display_width":1024,"display_height":768,"environment":"linux"})
        );
    }

    #[test]
    fn result_wire_shapes() {
        let r = AnthropicResult {
            content: vec![ContentBlock::Image {
                source: ImageSource {
                    kind: "base64".into(),
                    media_type: "image/png".into(),
                    data: "AAAA".into(),
                },
            }],
            is_error: false,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}}],"is_error":false})
        );
        assert_eq!(
            serde_json::to_value(AnthropicResult::error("nope".into())).unwrap(),
            json!({"content":[{"type":"text","text":"nope"}],"is_error":true})
        );
    }
}
