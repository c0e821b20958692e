//! The desktop session: Xvfb → dbus-daemon → window manager → Chromium → x11vnc, each started only when
//! the previous one is ready (the order that never failed, see notes/field-notes.md), each supervised
//! by a thread that restarts it with exponential backoff when it exits.
//!
//! Readiness: Xvfb writes its display number on `-displayfd`; dbus-daemon its address on
//! `--print-address`; the window manager sets `_NET_SUPPORTING_WM_CHECK` on the root window; Chromium
//! answers `GET /json/version` on its debugging port; x11vnc accepts TCP connections.
//!
//! Children run in their own process groups; stopping the session signals whole groups.
//! Note for PID 1 callers: by default each supervisor `wait()`s for its own child, which races a
//! reaper that calls `waitpid(-1)`. Such callers set [`SessionConfig::launcher`] so every component
//! is started and waited for through their reaper instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::desktop::lock;
use crate::error::{DesktopError, Result};

/// Waits for one started component process.
pub trait ProcWait: Send {
    /// Blocks until the process has ended; its status in words (`exit status: 1`).
    fn wait(&mut self) -> std::io::Result<String>;
    /// The status if the process has ended, `None` while it runs.
    fn try_wait(&mut self) -> std::io::Result<Option<String>>;
}

impl ProcWait for Child {
    fn wait(&mut self) -> std::io::Result<String> {
        Child::wait(self).map(|s| s.to_string())
    }
    fn try_wait(&mut self) -> std::io::Result<Option<String>> {
        Child::try_wait(self).map(|s| s.map(|s| s.to_string()))
    }
}

/// A started component process: its pid and how to wait for it. The status is kept once seen, so
/// waiting again answers the same status.
pub struct Proc {
    pid: u32,
    status: Option<String>,
    waiter: Box<dyn ProcWait>,
}

impl Proc {
    pub fn new(pid: u32, waiter: Box<dyn ProcWait>) -> Proc {
        Proc {
            pid,
            status: None,
            waiter,
        }
    }

    pub fn id(&self) -> u32 {
        self.pid
    }

    pub fn wait(&mut self) -> std::io::Result<String> {
        if let Some(s) = &self.status {
            return Ok(s.clone());
        }
        let s = self.waiter.wait()?;
        self.status = Some(s.clone());
        Ok(s)
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<String>> {
        if self.status.is_none() {
            self.status = self.waiter.try_wait()?;
        }
        Ok(self.status.clone())
    }

    /// SIGKILL to the process (not its group).
    pub fn kill(&self) {
        if self.status.is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

type LaunchFn = dyn Fn(&mut Command) -> std::io::Result<Proc> + Send + Sync;

/// How the session starts its components: `Command::spawn` and `Child::wait` by default, or a
/// caller's function (a PID-1 agent routes them through its reaper so no exit status is stolen).
#[derive(Clone)]
pub struct Launcher(Arc<LaunchFn>);

impl Launcher {
    pub fn new(f: impl Fn(&mut Command) -> std::io::Result<Proc> + Send + Sync + 'static) -> Self {
        Launcher(Arc::new(f))
    }

    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Proc> {
        (self.0)(cmd)
    }
}

impl Default for Launcher {
    fn default() -> Self {
        Launcher::new(|cmd| {
            let child = cmd.spawn()?;
            Ok(Proc::new(child.id(), Box::new(child)))
        })
    }
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Launcher")
    }
}

/// Chromium settings.
#[derive(Debug, Clone)]
pub struct ChromiumConfig {
    pub binary: PathBuf,
    /// CDP port on 127.0.0.1 (default 9222).
    pub debugging_port: u16,
    pub user_data_dir: PathBuf,
    pub start_url: String,
    /// Appended after the standard flags.
    pub extra_args: Vec<String>,
}

impl Default for ChromiumConfig {
    fn default() -> Self {
        ChromiumConfig {
            binary: PathBuf::from("/usr/bin/chromium"),
            debugging_port: 9222,
            user_data_dir: PathBuf::from("/tmp/vivarium-chromium"),
            start_url: "about:blank".into(),
            extra_args: Vec::new(),
        }
    }
}

/// x11vnc settings (always bound to localhost, no password: reach it through the runner's proxy).
#[derive(Debug, Clone)]
pub struct VncConfig {
    pub binary: PathBuf,
    pub port: u16,
}

impl Default for VncConfig {
    fn default() -> Self {
        VncConfig {
            binary: PathBuf::from("/usr/bin/x11vnc"),
            port: 5900,
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// X display number; `None` lets Xvfb pick a free one.
    pub display: Option<u32>,
    pub width: u32,
    pub height: u32,
    /// Largest resolution RandR may switch to later (Xvfb's framebuffer size); default 2560x1600.
    pub max_size: Option<(u32, u32)>,
    pub xvfb: PathBuf,
    /// `dbus-daemon` binary; `None` skips the session bus.
    pub dbus: Option<PathBuf>,
    /// Window manager binary (openbox); `None` skips it.
    pub window_manager: Option<PathBuf>,
    pub chromium: Option<ChromiumConfig>,
    pub vnc: Option<VncConfig>,
    /// Directory for the bus socket and similar runtime files.
    pub runtime_dir: PathBuf,
    /// How long one component may take to become ready.
    pub ready_timeout: Duration,
    /// Extra environment for every component.
    pub env: Vec<(String, String)>,
    /// Starts and waits for the component processes.
    pub launcher: Launcher,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            display: Some(99),
            width: 1280,
            height: 800,
            max_size: Some((2560, 1600)),
            xvfb: PathBuf::from("/usr/bin/Xvfb"),
            dbus: Some(PathBuf::from("/usr/bin/dbus-daemon")),
            window_manager: Some(PathBuf::from("/usr/bin/openbox")),
            chromium: Some(ChromiumConfig::default()),
            vnc: Some(VncConfig::default()),
            runtime_dir: PathBuf::from("/run/vivarium-desktop"),
            ready_timeout: Duration::from_secs(20),
            env: Vec::new(),
            launcher: Launcher::default(),
        }
    }
}

/// State of one supervised component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    pub name: String,
    /// Current pid, `None` while it is being restarted.
    pub pid: Option<u32>,
    pub restarts: u32,
}

/// A spawned child and its readiness check.
trait Component: Send {
    fn name(&self) -> &str;
    /// Spawn the process and wait until it is ready; the child is killed when it does not get ready.
    fn start(&mut self, env: &[(String, String)], launcher: &Launcher) -> Result<Proc>;
}

/// Standard Chromium flags (field notes: these are the ones that matter in a sandbox).
pub fn chromium_args(cfg: &ChromiumConfig) -> Vec<String> {
    let mut args: Vec<String> = [
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--password-store=basic",
        "--disable-gpu",
        "--force-renderer-accessibility",
        "--no-sandbox",
        // The browser fills the screen, as a person's would; agents then see one consistent layout.
        "--start-maximized",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--remote-debugging-port={}", cfg.debugging_port));
    args.push(format!("--user-data-dir={}", cfg.user_data_dir.display()));
    args.extend(cfg.extra_args.iter().cloned());
    args.push(cfg.start_url.clone());
    args
}

fn spawn(
    mut cmd: Command,
    env: &[(String, String)],
    pass_fd: Option<&OwnedFd>,
    launcher: &Launcher,
) -> Result<Proc> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0);
    if let Some(fd) = pass_fd {
        let raw = fd.as_raw_fd();
        // std creates pipes close-on-exec and has no API to hand one fd to a child; clearing the flag in
        // the child between fork and exec is the standard way (fcntl is async-signal-safe).
        // SAFETY: the closure only calls fcntl on an fd that stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    launcher
        .spawn(&mut cmd)
        .map_err(|source| DesktopError::Spawn { program, source })
}

/// Read one line from `reader` (a pipe the child writes to) while watching the child.
fn read_ready_line(
    name: &str,
    child: &mut Proc,
    reader: impl Read + Send + 'static,
    timeout: Duration,
) -> Result<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(reader).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Ok(line)) if !line.trim().is_empty() => return Ok(line.trim().to_string()),
            Ok(Ok(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap_or_else(|e| e.to_string());
                return Err(DesktopError::EarlyExit {
                    component: name.into(),
                    status,
                });
            }
            Ok(Err(e)) => {
                return Err(DesktopError::Io {
                    context: format!("reading {name} readiness"),
                    source: e,
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                check_alive(name, child)?;
                if Instant::now() > deadline {
                    return Err(DesktopError::Timeout {
                        what: format!("{name} to get ready"),
                        ms: timeout.as_millis(),
                    });
                }
            }
        }
    }
}

fn check_alive(name: &str, child: &mut Proc) -> Result<()> {
    match child.try_wait() {
        Ok(Some(status)) => Err(DesktopError::EarlyExit {
            component: name.into(),
            status,
        }),
        Ok(None) => Ok(()),
        Err(e) => Err(DesktopError::Io {
            context: format!("waiting for {name}"),
            source: e,
        }),
    }
}

/// Poll `probe` every 10 ms until it returns true, the child exits, or the timeout passes.
fn poll_ready(
    name: &str,
    child: &mut Proc,
    timeout: Duration,
    mut probe: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return Ok(());
        }
        check_alive(name, child)?;
        if Instant::now() > deadline {
            return Err(DesktopError::Timeout {
                what: format!("{name} to get ready"),
                ms: timeout.as_millis(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_group(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Start Xvfb and wait until it accepts clients (display number read from `-displayfd`).
/// Returns the child and the display number. `-noreset` keeps short-lived clients from resetting it.
/// The framebuffer is allocated at `max` (the largest size RandR can switch to later; `None` = the
/// working size) and the screen is then set to `width`x`height` with RandR.
pub fn start_xvfb(
    xvfb: &std::path::Path,
    display: Option<u32>,
    (width, height): (u32, u32),
    max: Option<(u32, u32)>,
    timeout: Duration,
    launcher: &Launcher,
) -> Result<(Proc, u32)> {
    let (fb_w, fb_h) = max
        .map(|(w, h)| (w.max(width), h.max(height)))
        .unwrap_or((width, height));
    let (reader, writer) = std::io::pipe().map_err(|e| DesktopError::Io {
        context: "pipe".into(),
        source: e,
    })?;
    let writer = OwnedFd::from(writer);
    let mut cmd = Command::new(xvfb);
    if let Some(d) = display {
        cmd.arg(format!(":{d}"));
    }
    cmd.args([
        "-screen",
        "0",
        &format!("{fb_w}x{fb_h}x24"),
        "-nolisten",
        "tcp",
        "-noreset",
        "-displayfd",
    ])
    .arg(writer.as_raw_fd().to_string());
    let mut child = spawn(cmd, &[], Some(&writer), launcher)?;
    drop(writer);
    let line = match read_ready_line("Xvfb", &mut child, reader, timeout) {
        Ok(l) => l,
        Err(e) => {
            child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let number = line.parse::<u32>().map_err(|_| DesktopError::EarlyExit {
        component: "Xvfb".into(),
        status: format!("wrote {line:?} on -displayfd"),
    })?;
    if (fb_w, fb_h) != (width, height) {
        let resized = crate::Desktop::connect(Some(&format!(":{number}")))
            .and_then(|d| d.set_resolution(width, height));
        if let Err(e) = resized {
            child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    Ok((child, number))
}

struct Xvfb {
    binary: PathBuf,
    display: Option<u32>,
    size: (u32, u32),
    max: Option<(u32, u32)>,
    timeout: Duration,
}

impl Component for Xvfb {
    fn name(&self) -> &str {
        "Xvfb"
    }
    fn start(&mut self, _env: &[(String, String)], launcher: &Launcher) -> Result<Proc> {
        let (child, number) = start_xvfb(
            &self.binary,
            self.display,
            self.size,
            self.max,
            self.timeout,
            launcher,
        )?;
        // A restart must come back on the same display.
        self.display = Some(number);
        Ok(child)
    }
}

struct Dbus {
    binary: PathBuf,
    socket: PathBuf,
    timeout: Duration,
}

impl Component for Dbus {
    fn name(&self) -> &str {
        "dbus-daemon"
    }
    fn start(&mut self, env: &[(String, String)], launcher: &Launcher) -> Result<Proc> {
        let _ = std::fs::remove_file(&self.socket);
        let (reader, writer) = std::io::pipe().map_err(|e| DesktopError::Io {
            context: "pipe".into(),
            source: e,
        })?;
        let writer = OwnedFd::from(writer);
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address=unix:path={}", self.socket.display()))
            .arg(format!("--print-address={}", writer.as_raw_fd()));
        let mut child = spawn(cmd, env, Some(&writer), launcher)?;
        drop(writer);
        match read_ready_line("dbus-daemon", &mut child, reader, self.timeout) {
            Ok(address) => {
                debug!(%address, "session bus ready");
                Ok(child)
            }
            Err(e) => {
                child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

struct GenericProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    ready: Readiness,
}

enum Readiness {
    /// `_NET_SUPPORTING_WM_CHECK` on the root of this display.
    WindowManager(String),
    /// `GET /json/version` answers 200 on 127.0.0.1:port.
    Cdp(u16),
    /// TCP connect to 127.0.0.1:port works.
    Tcp(u16),
}

impl Component for GenericProcess {
    fn name(&self) -> &str {
        &self.name
    }
    fn start(&mut self, env: &[(String, String)], launcher: &Launcher) -> Result<Proc> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        let mut child = spawn(cmd, env, None, launcher)?;
        let result = match &self.ready {
            Readiness::WindowManager(display) => match crate::Desktop::connect(Some(display)) {
                Ok(desktop) => {
                    let mut probe = None;
                    poll_ready(&self.name, &mut child, self.timeout, || {
                        desktop.wm_ready_step(&mut probe).unwrap_or(false)
                    })
                }
                Err(e) => Err(e),
            },
            Readiness::Cdp(port) => {
                let port = *port;
                poll_ready(&self.name, &mut child, self.timeout, || {
                    cdp_version(port).is_ok()
                })
            }
            Readiness::Tcp(port) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                poll_ready(&self.name, &mut child, self.timeout, || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
            }
        };
        match result {
            Ok(()) => Ok(child),
            Err(e) => {
                kill_group(child.id(), nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

/// `GET /json/version` on 127.0.0.1:`port`; the body on HTTP 200.
///
/// A readiness probe to loopback only: a dozen lines over `TcpStream` instead of an HTTP client crate
/// keeps the static guest binary small.
pub fn cdp_version(port: u16) -> Result<String> {
    let io = |e: std::io::Error| DesktopError::Io {
        context: format!("GET 127.0.0.1:{port}/json/version"),
        source: e,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    s.write_all(b"GET /json/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    // Chromium keeps the connection open: read until the headers and Content-Length bytes arrived.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let resp = String::from_utf8_lossy(&buf);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        Ok(body.to_string())
    } else {
        Err(io(std::io::Error::other(format!(
            "unexpected answer: {}",
            head.lines().next().unwrap_or("")
        ))))
    }
}

struct Shared {
    name: String,
    pid: AtomicI32,
    restarts: AtomicU32,
}

struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Stop flag plus a condvar so backoff sleeps end at once on stop.
struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
    flag: AtomicBool,
}

impl StopSignal {
    fn sleep(&self, d: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, d, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
    fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        *lock(&self.stopped) = true;
        self.cv.notify_all();
    }
    fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A component that ran this long is considered healthy again: backoff resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

fn supervise(
    mut comp: Box<dyn Component>,
    mut child: Proc,
    env: Arc<Vec<(String, String)>>,
    launcher: Launcher,
    shared: Arc<Shared>,
    stop: Arc<StopSignal>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut started = Instant::now();
    loop {
        let status = child.wait();
        shared.pid.store(0, Ordering::SeqCst);
        if stop.is_stopped() {
            return;
        }
        warn!(component = comp.name(), status = ?status, "component exited; restarting");
        if started.elapsed() > HEALTHY_AFTER {
            backoff = BACKOFF_MIN;
        }
        loop {
            if stop.sleep(backoff) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match comp.start(&env, &launcher) {
                Ok(c) => {
                    child = c;
                    shared.pid.store(child.id() as i32, Ordering::SeqCst);
                    shared.restarts.fetch_add(1, Ordering::SeqCst);
                    started = Instant::now();
                    info!(
                        component = comp.name(),
                        pid = child.id(),
                        "component restarted"
                    );
                    // Stopped while we were starting: the stop path may have missed this pid.
                    if stop.is_stopped() {
                        kill_group(child.id(), nix::sys::signal::Signal::SIGKILL);
                        let _ = child.wait();
                        return;
                    }
                    break;
                }
                Err(e) => warn!(component = comp.name(), error = %e, "restart failed"),
            }
        }
    }
}

/// A running, supervised desktop session. Dropping it stops every component.
pub struct Session {
    display: u32,
    env: Arc<Vec<(String, String)>>,
    supervisors: Vec<Supervisor>,
    stop: Arc<StopSignal>,
    cdp_port: Option<u16>,
    vnc_port: Option<u16>,
    launcher: Launcher,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("display", &self.display)
            .field("status", &self.status())
            .finish()
    }
}

impl Session {
    /// Start every configured component in order, each after the previous one is ready.
    pub fn start(cfg: SessionConfig) -> Result<Session> {
        let t0 = Instant::now();
        std::fs::create_dir_all(&cfg.runtime_dir).map_err(|e| DesktopError::Io {
            context: format!("create {}", cfg.runtime_dir.display()),
            source: e,
        })?;
        let stop = Arc::new(StopSignal {
            stopped: Mutex::new(false),
            cv: Condvar::new(),
            flag: AtomicBool::new(false),
        });
        let mut session = Session {
            display: 0,
            env: Arc::new(Vec::new()),
            supervisors: Vec::new(),
            stop,
            cdp_port: cfg.chromium.as_ref().map(|c| c.debugging_port),
            vnc_port: cfg.vnc.as_ref().map(|v| v.port),
            launcher: cfg.launcher.clone(),
        };

        let mut xvfb = Xvfb {
            binary: cfg.xvfb.clone(),
            display: cfg.display,
            size: (cfg.width, cfg.height),
            max: cfg.max_size,
            timeout: cfg.ready_timeout,
        };
        let child = xvfb.start(&[], &cfg.launcher)?;
        let display = xvfb.display.unwrap_or(0);
        session.display = display;
        session.adopt(Box::new(xvfb), child);
        debug!(
            display = session.display,
            ms = t0.elapsed().as_millis(),
            "Xvfb ready"
        );

        let mut env = cfg.env.clone();
        env.push(("DISPLAY".into(), format!(":{display}")));
        if let Some(dbus) = &cfg.dbus {
            let socket = cfg.runtime_dir.join(format!("bus-{display}"));
            env.push((
                "DBUS_SESSION_BUS_ADDRESS".into(),
                format!("unix:path={}", socket.display()),
            ));
            session.env = Arc::new(env.clone());
            let mut comp = Dbus {
                binary: dbus.clone(),
                socket,
                timeout: cfg.ready_timeout,
            };
            let child = comp.start(&env, &cfg.launcher)?;
            session.adopt(Box::new(comp), child);
            debug!(ms = t0.elapsed().as_millis(), "dbus ready");
        }
        session.env = Arc::new(env.clone());

        let mut later: Vec<GenericProcess> = Vec::new();
        if let Some(wm) = &cfg.window_manager {
            later.push(GenericProcess {
                name: wm
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "wm".into()),
                program: wm.clone(),
                args: Vec::new(),
                timeout: cfg.ready_timeout,
                ready: Readiness::WindowManager(format!(":{display}")),
            });
        }
        if let Some(ch) = &cfg.chromium {
            later.push(GenericProcess {
                name: "chromium".into(),
                program: ch.binary.clone(),
                args: chromium_args(ch),
                timeout: cfg.ready_timeout,
                ready: Readiness::Cdp(ch.debugging_port),
            });
        }
        if let Some(vnc) = &cfg.vnc {
            later.push(GenericProcess {
                name: "x11vnc".into(),
                program: vnc.binary.clone(),
                args: [
                    "-display",
                    &format!(":{display}"),
                    "-localhost",
                    "-forever",
                    "-shared",
                    "-nopw",
                    "-quiet",
                    "-rfbport",
                    &vnc.port.to_string(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                timeout: cfg.ready_timeout,
                ready: Readiness::Tcp(vnc.port),
            });
        }
        for mut comp in later {
            let child = comp.start(&env, &cfg.launcher)?;
            debug!(
                component = comp.name(),
                ms = t0.elapsed().as_millis(),
                "ready"
            );
            session.adopt(Box::new(comp), child);
        }
        info!(
            display = session.display,
            ms = t0.elapsed().as_millis(),
            "desktop session ready"
        );
        Ok(session)
    }

    fn adopt(&mut self, comp: Box<dyn Component>, child: Proc) {
        let shared = Arc::new(Shared {
            name: comp.name().to_string(),
            pid: AtomicI32::new(child.id() as i32),
            restarts: AtomicU32::new(0),
        });
        let (s, st, env) = (shared.clone(), self.stop.clone(), self.env.clone());
        let launcher = self.launcher.clone();
        let thread = std::thread::Builder::new()
            .name(format!("supervise-{}", comp.name()))
            .spawn(move || supervise(comp, child, env, launcher, s, st));
        match thread {
            Ok(t) => self.supervisors.push(Supervisor {
                shared,
                thread: Some(t),
            }),
            Err(e) => warn!(error = %e, "could not spawn supervisor thread"),
        }
    }

    /// X display number.
    pub fn display_number(&self) -> u32 {
        self.display
    }

    /// `":N"`.
    pub fn display(&self) -> String {
        format!(":{}", self.display)
    }

    /// Environment the components run with (DISPLAY, DBUS_SESSION_BUS_ADDRESS, …) — for launching apps.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn cdp_port(&self) -> Option<u16> {
        self.cdp_port
    }

    pub fn vnc_port(&self) -> Option<u16> {
        self.vnc_port
    }

    /// Pids and restart counts of the components, in start order.
    pub fn status(&self) -> Vec<ComponentStatus> {
        self.supervisors
            .iter()
            .map(|s| {
                let pid = s.shared.pid.load(Ordering::SeqCst);
                ComponentStatus {
                    name: s.shared.name.clone(),
                    pid: (pid > 0).then_some(pid as u32),
                    restarts: s.shared.restarts.load(Ordering::SeqCst),
                }
            })
            .collect()
    }

    /// Stop all components, last started first: SIGTERM to each process group, SIGKILL after 2 s.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.stop();
        for sup in self.supervisors.iter_mut().rev() {
            let pid = sup.shared.pid.load(Ordering::SeqCst);
            if pid > 0 {
                kill_group(pid as u32, nix::sys::signal::Signal::SIGTERM);
            }
            if let Some(t) = sup.thread.take() {
                let deadline = Instant::now() + Duration::from_secs(2);
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if !t.is_finished() {
                    let pid = sup.shared.pid.load(Ordering::SeqCst);
                    if pid > 0 {
                        kill_group(pid as u32, nix::sys::signal::Signal::SIGKILL);
                    }
                }
                let _ = t.join();
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shutdown();
    }
}
