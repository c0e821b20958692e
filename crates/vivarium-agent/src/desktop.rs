//! The desktop of a desktop sandbox: the supervised session (Xvfb → dbus → openbox → Chromium →
//! x11vnc, plus websockify for noVNC) and the handler of [`DesktopAction`]s.
//!
//! The session's components are started and waited for through the agent's [`Reaper`] (a
//! [`Launcher`] hook of `vivarium_desktop`), so PID 1's `waitpid(-1)` loop never steals their exit
//! statuses. Actions run on tokio's blocking pool against one shared X connection
//! ([`Desktop`] is `Sync`: each call takes the locks it needs), reconnected when the X server restarts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::watch;
use vivarium_api::desktop::{ImageFormat, MouseButton, ScrollDirection, WindowInfo};
use vivarium_desktop::session::{Launcher, Proc, ProcWait, Session, SessionConfig};
use vivarium_desktop::{
    Desktop, DesktopError, ImageFormat as DImageFormat, Modifier, MouseButton as DButton, Point,
    Rect, ScreenshotOptions, ScrollDirection as DScroll,
};
use vivarium_proto::{ActionResult, DesktopAction, ErrorCode, ExecSpec, ExitStatus};

use crate::error::{AgentError, Result};
use crate::reaper::{ExitReceiver, Reaper};
use crate::services::{RestartPolicy, ServiceSpec};

/// The X display every desktop sandbox uses (fixed, so DISPLAY is known before Xvfb is up).
pub const DISPLAY_NUMBER: u32 = 99;
/// Bus socket and similar runtime files of the session.
pub const RUNTIME_DIR: &str = "/run/vivarium-desktop";
/// Xvfb's framebuffer size: the largest resolution RandR can switch to later.
pub const MAX_SIZE: (u32, u32) = (2560, 1600);
/// Chromium's DevTools port on 127.0.0.1.
pub const CDP_PORT: u16 = 9222;
/// How long a desktop request waits for the session to be ready.
pub const READY_WAIT: Duration = Duration::from_secs(30);
/// Longest `wait` action.
const MAX_WAIT: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMIUM_PROFILE: &str = "/tmp/vivarium-chromium";
const WEBSOCKIFY: &str = "/usr/bin/websockify";
const NOVNC_DIR: &str = "/usr/share/novnc";
/// noVNC's WebSocket bridge (websockify) listens here and forwards to x11vnc on 5900.
pub const NOVNC_PORT: u16 = 6080;
const VNC_PORT: u16 = 5900;

/// Parses `WIDTHxHEIGHT` (`--desktop 1280x800`), within 64..=[`MAX_SIZE`].
pub fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {s:?}"))?;
    let w: u32 = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in {s:?}"))?;
    let h: u32 = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in {s:?}"))?;
    if !(64..=MAX_SIZE.0).contains(&w) || !(64..=MAX_SIZE.1).contains(&h) {
        return Err(format!(
            "{w}x{h} is outside 64x64..{}x{}",
            MAX_SIZE.0, MAX_SIZE.1
        ));
    }
    Ok((w, h))
}

/// `DISPLAY` and `DBUS_SESSION_BUS_ADDRESS` of the session: every process of a desktop sandbox gets
/// them. Matches what `vivarium_desktop::Session` sets for display [`DISPLAY_NUMBER`].
pub fn session_env() -> Vec<(String, String)> {
    vec![
        ("DISPLAY".into(), format!(":{DISPLAY_NUMBER}")),
        (
            "DBUS_SESSION_BUS_ADDRESS".into(),
            format!("unix:path={RUNTIME_DIR}/bus-{DISPLAY_NUMBER}"),
        ),
    ]
}

/// The noVNC bridge as an agent service (restarted when it exits), if the image has websockify.
pub fn novnc_service() -> Option<ServiceSpec> {
    if !Path::new(WEBSOCKIFY).exists() {
        tracing::warn!("{WEBSOCKIFY} is missing: no noVNC live view in this sandbox");
        return None;
    }
    Some(ServiceSpec {
        name: "websockify".into(),
        exec: ExecSpec {
            argv: vec![
                WEBSOCKIFY.into(),
                "--web".into(),
                NOVNC_DIR.into(),
                NOVNC_PORT.to_string(),
                format!("localhost:{VNC_PORT}"),
            ],
            ..ExecSpec::default()
        },
        restart: RestartPolicy::Always,
    })
}

/// Waits for one component through the agent's reaper (`None` once the status was taken;
/// [`Proc`] keeps it and never asks again).
struct ReaperWait(Option<ExitReceiver>);

fn reaper_gone() -> std::io::Error {
    std::io::Error::other("the agent's reaper went away")
}

fn describe(status: ExitStatus) -> String {
    match (status.exit_code, status.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

impl ProcWait for ReaperWait {
    fn wait(&mut self) -> std::io::Result<String> {
        // Supervisor threads are plain threads, never inside the runtime: blocking is fine.
        let rx = self.0.take().ok_or_else(reaper_gone)?;
        rx.blocking_recv().map(describe).map_err(|_| reaper_gone())
    }
    fn try_wait(&mut self) -> std::io::Result<Option<String>> {
        let rx = self.0.as_mut().ok_or_else(reaper_gone)?;
        match rx.try_recv() {
            Ok(s) => {
                self.0 = None;
                Ok(Some(describe(s)))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Closed) => Err(reaper_gone()),
        }
    }
}

fn reaper_launcher(reaper: Arc<Reaper>) -> Launcher {
    Launcher::new(move |cmd| {
        let (child, exit) = reaper.spawn(cmd)?;
        Ok(Proc::new(child.id(), Box::new(ReaperWait(Some(exit)))))
    })
}

#[derive(Debug, Clone)]
enum State {
    Starting,
    Ready,
    Failed(String),
}

/// The desktop of this sandbox.
pub struct DesktopService {
    display: String,
    state: watch::Receiver<State>,
    conn: Mutex<Option<Arc<Desktop>>>,
    reaper: Arc<Reaper>,
    env: Vec<(String, String)>,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl DesktopService {
    /// Starts the session in the background (a dedicated thread: starting it blocks for ~0.6 s
    /// and its supervisors block on their children). Restarts the whole session with backoff if it
    /// fails to come up; once up, `vivarium_desktop::Session` restarts crashed components itself.
    pub fn start(width: u32, height: u32, reaper: Arc<Reaper>) -> std::io::Result<Arc<Self>> {
        let (state_tx, state_rx) = watch::channel(State::Starting);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let cfg = SessionConfig {
            display: Some(DISPLAY_NUMBER),
            width,
            height,
            max_size: Some(MAX_SIZE),
            runtime_dir: PathBuf::from(RUNTIME_DIR),
            launcher: reaper_launcher(Arc::clone(&reaper)),
            ..SessionConfig::default()
        };
        let thread = std::thread::Builder::new()
            .name("desktop-session".into())
            .spawn(move || run_session(cfg, state_tx, stop_rx))?;
        Ok(Arc::new(DesktopService {
            display: format!(":{DISPLAY_NUMBER}"),
            state: state_rx,
            conn: Mutex::new(None),
            reaper,
            env: session_env(),
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Stops the session (components get SIGTERM, then SIGKILL) and waits for it.
    pub fn shutdown(&self) {
        drop(lock(&self.stop).take());
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    async fn ready(&self) -> Result<()> {
        let mut rx = self.state.clone();
        let waited =
            tokio::time::timeout(READY_WAIT, rx.wait_for(|s| !matches!(s, State::Starting))).await;
        match waited {
            Err(_) => Err(AgentError::new(
                ErrorCode::Timeout,
                format!(
                    "the desktop session is not ready after {} s",
                    READY_WAIT.as_secs()
                ),
            )),
            Ok(Err(_)) => Err(AgentError::internal("the desktop session thread ended")),
            Ok(Ok(state)) => match &*state {
                State::Failed(e) => Err(AgentError::internal(format!(
                    "the desktop session failed to start (retrying): {e}"
                ))),
                _ => Ok(()),
            },
        }
    }

    fn connection(&self) -> Result<Arc<Desktop>> {
        let mut slot = lock(&self.conn);
        if let Some(d) = slot.as_ref() {
            return Ok(Arc::clone(d));
        }
        let d = Arc::new(Desktop::connect(Some(&self.display)).map_err(|e| map_err(e, None))?);
        *slot = Some(Arc::clone(&d));
        Ok(d)
    }

    /// Carries out one action; screenshots return their encoded bytes beside the result.
    pub async fn handle(self: &Arc<Self>, action: DesktopAction) -> Result<(ActionResult, Bytes)> {
        if let DesktopAction::Wait { ms } = action {
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_WAIT)).await;
            return Ok((ActionResult::Ok, Bytes::new()));
        }
        self.ready().await?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.handle_blocking(action))
            .await
            .map_err(|e| AgentError::internal(format!("desktop action task: {e}")))?
    }

    fn handle_blocking(&self, action: DesktopAction) -> Result<(ActionResult, Bytes)> {
        match action {
            DesktopAction::Launch { app, args } => {
                let pid = self.launch(&app, &args)?;
                return Ok((ActionResult::Launched { pid }, Bytes::new()));
            }
            DesktopAction::Open { url } => {
                self.open(&url)?;
                return Ok((ActionResult::Ok, Bytes::new()));
            }
            _ => {}
        }
        validate(&action)?;
        let d = self.connection()?;
        let field = action_field(&action);
        match run_action(&d, action) {
            Ok(r) => Ok(r),
            Err(ActionError::Arg(e)) => Err(e),
            Err(ActionError::X(e)) => {
                if let DesktopError::Connection { .. } | DesktopError::Connect { .. } = &e {
                    // The X server went away (restarted by its supervisor): reconnect next time.
                    lock(&self.conn).take();
                }
                Err(map_err(e, field))
            }
        }
    }

    /// Starts `app` detached (own session) with the desktop's environment; returns its pid.
    fn launch(&self, app: &str, args: &[String]) -> Result<u32> {
        let (program, mut argv) = if app.ends_with(".desktop") {
            desktop_entry_exec(app)?
        } else {
            (app.to_string(), Vec::new())
        };
        argv.extend(args.iter().cloned());
        self.spawn_detached(&program, &argv)
            .map_err(|e| AgentError::io(e, format!("launching {program}")).with_field("app"))
    }

    fn spawn_detached(&self, program: &str, args: &[String]) -> std::io::Result<u32> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/");
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        // Registered with the reaper (so its exit is collected), but nobody waits for it.
        let (child, _exit) = self.reaper.spawn(&mut cmd)?;
        Ok(child.id())
    }

    /// Opens `url` in a new tab through CDP's HTTP endpoint; starts Chromium with it when CDP does
    /// not answer.
    fn open(&self, url: &str) -> Result<()> {
        match cdp_new_tab(CDP_PORT, url) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "CDP did not open the tab; starting chromium with the URL");
                let args = vec![
                    "--no-sandbox".to_string(),
                    "--no-first-run".into(),
                    format!("--user-data-dir={CHROMIUM_PROFILE}"),
                    url.to_string(),
                ];
                self.spawn_detached(CHROMIUM, &args)
                    .map(|_| ())
                    .map_err(|e| AgentError::io(e, format!("starting {CHROMIUM}")))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain slots replaced whole: a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn run_session(cfg: SessionConfig, state: watch::Sender<State>, stop: mpsc::Receiver<()>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let _ = state.send(State::Starting);
        match Session::start(cfg.clone()) {
            Ok(session) => {
                paint_background(&session.display());
                wait_for_first_paint(&session.display(), FIRST_PAINT_WAIT);
                let _ = state.send(State::Ready);
                // Block until the agent stops us (the sender is dropped); Session supervises.
                let _ = stop.recv();
                session.stop();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "desktop session failed to start; retrying");
                let _ = state.send(State::Failed(e.to_string()));
                match stop.recv_timeout(backoff) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The desktop's colour behind all windows (a calm slate instead of X's black).
const BACKGROUND_RGB: u32 = 0x2e_34_40;

fn paint_background(display: &str) {
    let painted =
        Desktop::connect(Some(display)).and_then(|d| d.set_background_color(BACKGROUND_RGB));
    if let Err(e) = painted {
        tracing::warn!(error = %e, "could not paint the desktop background");
    }
}

/// Longest wait for Chromium's window to show its UI once the session is up.
const FIRST_PAINT_WAIT: Duration = Duration::from_secs(10);

/// Waits until Chromium's window is mapped and painted (its pixels are not one flat colour), so the
/// first screenshot an agent takes shows the browser, not an empty frame: CDP answers a few to a
/// few hundred ms before the first paint. Gives up quietly after `timeout` (the desktop works
/// anyway).
fn wait_for_first_paint(display: &str, timeout: Duration) {
    let t0 = std::time::Instant::now();
    let painted = |d: &Desktop| -> std::result::Result<bool, DesktopError> {
        let Some(w) = d
            .list_windows()?
            .into_iter()
            .find(|w| w.app.eq_ignore_ascii_case("chromium"))
        else {
            return Ok(false);
        };
        let size = d.screen_size()?;
        let (x, y) = (w.x.max(0), w.y.max(0));
        let width = w.width.min(size.width.saturating_sub(x as u32));
        let height = w.height.min(size.height.saturating_sub(y as u32));
        if width == 0 || height == 0 {
            return Ok(false);
        }
        let img = d.capture_rgb(
            Some(Rect {
                x,
                y,
                width,
                height,
            }),
            false,
        )?;
        let first = img.pixel(0, 0);
        let step = (width / 16).max(1);
        Ok((0..height)
            .step_by(((height / 16).max(1)) as usize)
            .flat_map(|py| (0..width).step_by(step as usize).map(move |px| (px, py)))
            .any(|(px, py)| img.pixel(px, py) != first))
    };
    let d = match Desktop::connect(Some(display)) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect to check the first paint");
            return;
        }
    };
    while t0.elapsed() < timeout {
        match painted(&d) {
            Ok(true) => {
                tracing::info!(ms = t0.elapsed().as_millis(), "chromium painted");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "first paint check"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(
        "chromium's window was not painted after {} s",
        timeout.as_secs()
    );
}

/// `Exec=` of a `.desktop` file (by id under the XDG application dirs, or a path), with the field
/// codes (`%u`, `%F`...) dropped. Split on whitespace: quoting in Exec lines is rare in practice.
fn desktop_entry_exec(id: &str) -> Result<(String, Vec<String>)> {
    let candidates: Vec<PathBuf> = if id.starts_with('/') {
        vec![PathBuf::from(id)]
    } else {
        ["/usr/share/applications", "/usr/local/share/applications"]
            .iter()
            .map(|d| Path::new(d).join(id))
            .collect()
    };
    let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
        AgentError::not_found(format!("no desktop entry {id:?}")).with_field("app")
    })?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| AgentError::io(e, format!("reading {}", path.display())))?;
    let exec = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("Exec="))
        .ok_or_else(|| {
            AgentError::invalid(format!("{} has no Exec= line", path.display())).with_field("app")
        })?;
    let mut words = exec
        .split_whitespace()
        .filter(|w| !(w.len() == 2 && w.starts_with('%')))
        .map(str::to_string);
    let program = words
        .next()
        .ok_or_else(|| AgentError::invalid(format!("{} has an empty Exec=", path.display())))?;
    Ok((program, words.collect()))
}

/// Percent-encodes the URL for `/json/new?<url>`. Chromium percent-decodes that query once, so
/// everything outside RFC 3986's unreserved set is escaped — `%`, `#`, `&` included — and the tab
/// opens exactly the URL given (`?q=%23tag` stays `?q=%23tag`; a `#` stays a fragment).
fn encode_target(url: &str) -> String {
    let mut out = String::with_capacity(url.len() * 3);
    for b in url.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `PUT /json/new?URL` on Chromium's DevTools HTTP endpoint (127.0.0.1 only).
///
/// A few lines over `TcpStream` instead of an HTTP client crate, like `vivarium_desktop::session::
/// cdp_version`: loopback only, and it keeps the static guest binary small.
fn cdp_new_tab(port: u16, url: &str) -> std::io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = format!(
        "PUT /json/new?{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        encode_target(url)
    );
    s.write_all(req.as_bytes())?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&head);
    let line = status.lines().next().unwrap_or("");
    if line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("CDP answered {line:?}")))
    }
}

/// The request field a failing action is most likely about, for errors that do not say.
fn action_field(action: &DesktopAction) -> Option<&'static str> {
    Some(match action {
        DesktopAction::Type { .. } | DesktopAction::ClipboardSet { .. } => "text",
        DesktopAction::Key { .. } | DesktopAction::KeyDown { .. } | DesktopAction::KeyUp { .. } => {
            "keys"
        }
        DesktopAction::Drag { .. } => "path",
        DesktopAction::SetWallpaper { .. } => "path",
        DesktopAction::Screenshot { .. } => "region",
        DesktopAction::SetResolution { .. } => "width",
        DesktopAction::ResizeWindow { .. } => "width",
        _ => return None,
    })
}

/// Maps a desktop error onto a typed agent error naming the field when it is the caller's fault.
fn map_err(e: DesktopError, field: Option<&'static str>) -> AgentError {
    let msg = e.to_string();
    match e {
        DesktopError::OutOfBounds { x, width, .. } => {
            let f = match field {
                Some("path") => "path",
                _ if x < 0 || x as i64 >= width as i64 => "x",
                _ => "y",
            };
            AgentError::invalid(msg).with_field(f)
        }
        DesktopError::BadRegion { .. } => AgentError::invalid(msg).with_field("region"),
        DesktopError::BadSize { .. } => {
            AgentError::invalid(msg).with_field(field.unwrap_or("width"))
        }
        DesktopError::UnknownKey(_) | DesktopError::EmptyKey => {
            AgentError::invalid(msg).with_field("keys")
        }
        DesktopError::NoSpareKeycode(_) => AgentError::invalid(msg).with_field("text"),
        DesktopError::NoSuchWindow(_) => AgentError::not_found(msg).with_field("id"),
        DesktopError::ImageFile { .. } => AgentError::invalid(msg).with_field("path"),
        DesktopError::Timeout { .. } => AgentError::new(ErrorCode::Timeout, msg),
        _ => AgentError::internal(msg),
    }
}

fn button(b: MouseButton) -> DButton {
    match b {
        MouseButton::Left => DButton::Left,
        MouseButton::Right => DButton::Right,
        MouseButton::Middle => DButton::Middle,
        MouseButton::Back => DButton::Back,
        MouseButton::Forward => DButton::Forward,
    }
}

fn modifiers(names: &[String]) -> Result<Vec<Modifier>> {
    names
        .iter()
        .map(|n| {
            Modifier::parse(n).ok_or_else(|| {
                AgentError::invalid(format!(
                    "unknown modifier {n:?} (use ctrl, shift, alt, super or meta)"
                ))
                .with_field("modifiers")
            })
        })
        .collect()
}

fn point(x: Option<i32>, y: Option<i32>) -> Result<Option<Point>> {
    match (x, y) {
        (Some(x), Some(y)) => Ok(Some(Point { x, y })),
        (None, None) => Ok(None),
        (Some(_), None) => {
            Err(AgentError::invalid("give both x and y, or neither").with_field("y"))
        }
        (None, Some(_)) => {
            Err(AgentError::invalid("give both x and y, or neither").with_field("x"))
        }
    }
}

/// Why an action failed: its arguments, or the X side.
enum ActionError {
    Arg(AgentError),
    X(DesktopError),
}

impl From<AgentError> for ActionError {
    fn from(e: AgentError) -> Self {
        ActionError::Arg(e)
    }
}

impl From<DesktopError> for ActionError {
    fn from(e: DesktopError) -> Self {
        ActionError::X(e)
    }
}

type ActionOutput = std::result::Result<(ActionResult, Bytes), ActionError>;

/// Runs one X action. `Launch`, `Open` and `Wait` are handled before.
fn run_action(d: &Desktop, action: DesktopAction) -> ActionOutput {
    let ok = || -> ActionOutput { Ok((ActionResult::Ok, Bytes::new())) };
    match action {
        DesktopAction::Screenshot {
            format,
            quality,
            region,
            scale_to,
            cursor,
        } => {
            let opts = ScreenshotOptions {
                format: match format {
                    ImageFormat::Png => DImageFormat::Png,
                    ImageFormat::Jpeg => DImageFormat::Jpeg,
                    ImageFormat::Webp => DImageFormat::Webp,
                },
                quality: quality.unwrap_or(80).clamp(1, 100),
                region: region.map(|r| Rect {
                    x: r.x.min(i32::MAX as u32) as i32,
                    y: r.y.min(i32::MAX as u32) as i32,
                    width: r.width,
                    height: r.height,
                }),
                scale_to: scale_to.map(|[w, h]| (w, h)),
                cursor,
            };
            let shot = d.screenshot(&opts)?;
            Ok((
                ActionResult::Screenshot {
                    format,
                    width: shot.width,
                    height: shot.height,
                    data: String::new(),
                },
                Bytes::from(shot.data),
            ))
        }
        DesktopAction::Move { x, y } => {
            d.mouse_move(x, y)?;
            ok()
        }
        DesktopAction::Click { .. }
        | DesktopAction::MouseDown { .. }
        | DesktopAction::MouseUp { .. }
        | DesktopAction::Drag { .. }
        | DesktopAction::Scroll { .. } => pointer_action(d, action),
        DesktopAction::Type { text } => {
            d.type_text(&text)?;
            ok()
        }
        DesktopAction::Key { keys } => {
            d.key(&keys)?;
            ok()
        }
        DesktopAction::KeyDown { keys } => {
            d.key_down(&keys)?;
            ok()
        }
        DesktopAction::KeyUp { keys } => {
            d.key_up(&keys)?;
            ok()
        }
        DesktopAction::CursorPosition => {
            let p = d.cursor_position()?;
            Ok((ActionResult::Position { x: p.x, y: p.y }, Bytes::new()))
        }
        DesktopAction::ScreenSize => {
            let s = d.screen_size()?;
            Ok((
                ActionResult::Size {
                    width: s.width,
                    height: s.height,
                },
                Bytes::new(),
            ))
        }
        DesktopAction::ClipboardGet => Ok((
            ActionResult::Clipboard {
                text: d.get_clipboard()?,
            },
            Bytes::new(),
        )),
        DesktopAction::ClipboardSet { text } => {
            d.set_clipboard(&text)?;
            ok()
        }
        DesktopAction::Windows => {
            let windows = d
                .list_windows()?
                .into_iter()
                .map(|w| WindowInfo {
                    id: w.id,
                    title: w.title,
                    app: w.app,
                    pid: w.pid,
                    x: w.x,
                    y: w.y,
                    width: w.width,
                    height: w.height,
                    focused: w.focused,
                })
                .collect();
            Ok((ActionResult::Windows { windows }, Bytes::new()))
        }
        DesktopAction::FocusWindow { id } => {
            d.focus_window(id)?;
            ok()
        }
        DesktopAction::MoveWindow { id, x, y } => {
            d.move_window(id, x, y)?;
            ok()
        }
        DesktopAction::ResizeWindow { id, width, height } => {
            d.resize_window(id, width, height)?;
            ok()
        }
        DesktopAction::MaximizeWindow { id } => {
            d.maximize_window(id)?;
            ok()
        }
        DesktopAction::MinimizeWindow { id } => {
            d.minimize_window(id)?;
            ok()
        }
        DesktopAction::CloseWindow { id } => {
            d.close_window(id)?;
            ok()
        }
        DesktopAction::SetWallpaper { path } => {
            d.set_wallpaper(Path::new(&path))?;
            ok()
        }
        DesktopAction::SetResolution { width, height } => {
            d.set_resolution(width, height)?;
            ok()
        }
        DesktopAction::Wait { .. } | DesktopAction::Launch { .. } | DesktopAction::Open { .. } => {
            Err(AgentError::internal("wait, launch and open do not use the X connection").into())
        }
    }
}

/// Mouse button and wheel actions.
fn pointer_action(d: &Desktop, action: DesktopAction) -> ActionOutput {
    let (mods, at) = match &action {
        DesktopAction::Click {
            x, y, modifiers: m, ..
        }
        | DesktopAction::Scroll {
            x, y, modifiers: m, ..
        } => (modifiers(m)?, point(*x, *y)?),
        DesktopAction::MouseDown { x, y, .. } | DesktopAction::MouseUp { x, y, .. } => {
            (Vec::new(), point(*x, *y)?)
        }
        DesktopAction::Drag { modifiers: m, .. } => (modifiers(m)?, None),
        _ => (Vec::new(), None),
    };
    match action {
        DesktopAction::Click {
            button: b, count, ..
        } => d.click(at, button(b), count, &mods)?,
        DesktopAction::MouseDown { button: b, .. } => d.mouse_down(at, button(b))?,
        DesktopAction::MouseUp { button: b, .. } => d.mouse_up(at, button(b))?,
        DesktopAction::Drag {
            path, button: b, ..
        } => {
            let pts: Vec<Point> = path.iter().map(|[x, y]| Point { x: *x, y: *y }).collect();
            d.drag(&pts, button(b), &mods)?
        }
        DesktopAction::Scroll {
            direction, amount, ..
        } => {
            let dir = match direction {
                ScrollDirection::Up => DScroll::Up,
                ScrollDirection::Down => DScroll::Down,
                ScrollDirection::Left => DScroll::Left,
                ScrollDirection::Right => DScroll::Right,
            };
            d.scroll(at, dir, amount, &mods)?
        }
        _ => {}
    }
    Ok((ActionResult::Ok, Bytes::new()))
}

/// Argument checks that need no X connection (modifier names, x/y given in pairs).
pub fn validate(action: &DesktopAction) -> Result<()> {
    match action {
        DesktopAction::Click {
            x, y, modifiers: m, ..
        }
        | DesktopAction::Scroll {
            x, y, modifiers: m, ..
        } => {
            modifiers(m)?;
            point(*x, *y)?;
        }
        DesktopAction::MouseDown { x, y, .. } | DesktopAction::MouseUp { x, y, .. } => {
            point(*x, *y)?;
        }
        DesktopAction::Drag {
            modifiers: m, path, ..
        } => {
            modifiers(m)?;
            if path.is_empty() {
                return Err(
                    AgentError::invalid("a drag path needs at least one point").with_field("path")
                );
            }
        }
        DesktopAction::Open { url } if url.trim().is_empty() => {
            return Err(AgentError::invalid("url is empty").with_field("url"));
        }
        DesktopAction::Launch { app, .. } if app.trim().is_empty() => {
            return Err(AgentError::invalid("app is empty").with_field("app"));
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_within_bounds() {
        assert_eq!(parse_size("1024x768"), Ok((1024, 768)));
        assert_eq!(parse_size("2560X1600"), Ok((2560, 1600)));
        assert!(parse_size("1024").is_err());
        assert!(parse_size("10x10").is_err());
        assert!(parse_size("4000x768").is_err());
        assert!(parse_size("axb").is_err());
    }

    #[test]
    fn request_targets_are_encoded() {
        assert_eq!(
            encode_target("http://a/b?q=x y&z=ü"),
            "http://a/b%3Fq%3Dx%20y%26z%3D%C3%BC"
        );
        // Chromium decodes the query once: escaped escapes and fragments survive it.
        assert_eq!(
            encode_target("http://a/?q=%23tag#frag"),
            "http://a/%3Fq%3D%2523tag%23frag"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let off = |x, y| DesktopError::OutOfBounds {
            x,
            y,
            width: 100,
            height: 100,
        };
        let e = map_err(off(-1, 5), None);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidArgument, Some("x"))
        );
        assert_eq!(map_err(off(5, 100), None).field.as_deref(), Some("y"));
        assert_eq!(
            map_err(off(500, 5), Some("path")).field.as_deref(),
            Some("path")
        );
        let e = map_err(DesktopError::UnknownKey("Nope".into()), Some("keys"));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidArgument, Some("keys"))
        );
        let e = map_err(DesktopError::NoSuchWindow(7), None);
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::NotFound, Some("id"))
        );
    }

    #[test]
    fn validation_catches_bad_arguments_without_x() {
        let click = |x, y, m: &[&str]| DesktopAction::Click {
            x,
            y,
            button: MouseButton::Left,
            count: 1,
            modifiers: m.iter().map(|s| s.to_string()).collect(),
        };
        assert!(validate(&click(Some(1), Some(2), &["ctrl", "shift"])).is_ok());
        assert_eq!(
            validate(&click(Some(1), None, &[]))
                .unwrap_err()
                .field
                .as_deref(),
            Some("y")
        );
        assert_eq!(
            validate(&click(None, None, &["hyper"]))
                .unwrap_err()
                .field
                .as_deref(),
            Some("modifiers")
        );
        assert!(validate(&DesktopAction::Open { url: " ".into() }).is_err());
    }

    #[test]
    fn desktop_entries_resolve_to_argv() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.desktop");
        std::fs::write(
            &p,
            "[Desktop Entry]\nName=T\nExec=/usr/bin/xterm -e top %U\n",
        )
        .expect("write");
        let (prog, args) = desktop_entry_exec(&p.to_string_lossy()).expect("parse");
        assert_eq!(prog, "/usr/bin/xterm");
        assert_eq!(args, vec!["-e".to_string(), "top".into()]);
        assert_eq!(
            desktop_entry_exec("no-such-app.desktop").unwrap_err().code,
            ErrorCode::NotFound
        );
    }
}
