//! `vivarium-agent --listen /.vivarium/run/agent.sock [--service NAME=CMD]...`

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use vivarium_agent::desktop::{self, DesktopService};
use vivarium_agent::oom;
use vivarium_agent::process::{signal_group, Spawner};
use vivarium_agent::procs::ProcessTable;
use vivarium_agent::reaper::Reaper;
use vivarium_agent::server::{self, Agent};
use vivarium_agent::services::{self, ServiceSpec};

/// Threads of tokio's blocking pool (each costs one of the sandbox's pids once made).
const MAX_BLOCKING_THREADS: usize = 64;

/// Time children get between SIGTERM and SIGKILL when the agent shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "vivarium-agent",
    version,
    about = "vivarium guest agent (sandbox PID 1)"
)]
struct Args {
    /// Unix socket to serve the protocol on (replaced if it exists, mode 0600).
    #[arg(long)]
    listen: PathBuf,
    /// Directory holding the passwd and group files used to resolve exec users.
    #[arg(long, default_value = "/etc")]
    etc_dir: PathBuf,
    /// A service to start and keep running: NAME=SHELL COMMAND (repeatable).
    #[arg(long = "service", value_parser = ServiceSpec::parse_cli)]
    services: Vec<ServiceSpec>,
    /// Start a desktop session (Xvfb, openbox, Chromium, x11vnc, noVNC) at WIDTHxHEIGHT.
    #[arg(long, value_name = "WIDTHxHEIGHT", value_parser = desktop::parse_size)]
    desktop: Option<(u32, u32)>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIVARIUM_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.desktop.is_some() {
        // Every process of a desktop sandbox (execs, services, the session) sees the desktop.
        // Set while the process is still single-threaded (before the runtime starts), which is
        // what makes set_var sound.
        for (k, v) in desktop::session_env() {
            std::env::set_var(k, v);
        }
    }
    let pid1 = std::process::id() == 1;
    if pid1 {
        // A session of our own, detached from whatever started the container (CRIU needs it).
        if let Err(e) = nix::unistd::setsid() {
            tracing::debug!(error = %e, "setsid (already a session leader?)");
        }
    } else {
        // Not PID 1 (tests, debugging): still inherit our descendants' orphans so they get reaped.
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "PR_SET_CHILD_SUBREAPER");
        }
    }
    // PID 1 outlives its children: the OOM killer must pick them, never the agent.
    match oom::protect_self() {
        Ok(score) => tracing::debug!(oom_score_adj = score, "OOM protection"),
        Err(e) => tracing::warn!(error = %e, "reading/writing /proc/self/oom_score_adj"),
    }
    // Blocking-pool threads (file operations, desktop actions) are kept once made: when the
    // sandbox has used up its pids (a fork bomb), tokio can still queue work on them instead of
    // failing to make a thread (which panics the caller).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(Duration::from_secs(365 * 24 * 3600))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, pid1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()))
        }
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

async fn run(args: Args, pid1: bool) -> anyhow::Result<()> {
    // The reaper must exist before the first child is spawned.
    let reaper = Reaper::start().context("installing the SIGCHLD handler")?;
    // One blocking-pool thread now, while threads can still be made (see the runtime setup).
    let _ = tokio::task::spawn_blocking(|| ()).await;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let listener = bind(&args.listen)?;
    let spawner = Spawner {
        reaper: Arc::clone(&reaper),
        etc_dir: args.etc_dir.clone(),
    };
    let service_spawner = Arc::new(Spawner {
        reaper: Arc::clone(&reaper),
        etc_dir: args.etc_dir,
    });
    let desktop = match args.desktop {
        Some((width, height)) => Some(
            DesktopService::start(width, height, Arc::clone(&reaper))
                .context("starting the desktop session thread")?,
        ),
        None => None,
    };
    let agent = Arc::new(Agent {
        spawner,
        procs: Arc::new(ProcessTable::default()),
        started: Instant::now(),
        desktop: desktop.clone(),
    });
    let shutdown = CancellationToken::new();
    let mut services = args.services;
    if desktop.is_some() {
        services.extend(desktop::novnc_service());
    }
    let service_tasks: Vec<_> = services
        .into_iter()
        .map(|spec| services::supervise(Arc::clone(&service_spawner), spec, shutdown.clone()))
        .collect();
    tracing::info!(
        socket = %args.listen.display(),
        pid = std::process::id(),
        pid1,
        version = env!("CARGO_PKG_VERSION"),
        "agent listening"
    );
    let server = tokio::spawn(server::serve(
        listener,
        Arc::clone(&agent),
        shutdown.clone(),
    ));

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
    let _ = server.await;
    for task in service_tasks {
        let _ = task.await;
    }
    if let Some(d) = desktop {
        // Stops the components in reverse order (SIGTERM, then SIGKILL after 2 s each).
        let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
    }
    terminate_children(&reaper, pid1).await;
    if let Err(e) = std::fs::remove_file(&args.listen) {
        tracing::debug!(error = %e, "removing socket");
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Forwards SIGTERM to all children, waits up to [`SHUTDOWN_GRACE`], then SIGKILLs the rest.
async fn terminate_children(reaper: &Reaper, pid1: bool) {
    let send = |sig: Signal| {
        if pid1 {
            // As PID 1 of a pid namespace, -1 means every other process of the sandbox.
            // Never done otherwise: outside a namespace it would hit the host's processes.
            let _ = kill(Pid::from_raw(-1), sig);
        } else {
            for pid in reaper.live_children() {
                signal_group(pid as u32, sig);
            }
        }
    };
    if reaper.live_children().is_empty() && !pid1 {
        return;
    }
    send(Signal::SIGTERM);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while !reaper.live_children().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !reaper.live_children().is_empty() {
        tracing::warn!(
            left = reaper.live_children().len(),
            "children ignored SIGTERM; killing"
        );
        send(Signal::SIGKILL);
    }
}
