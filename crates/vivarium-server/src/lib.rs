//! The runner: the HTTP API over the image store, the isolation driver and each sandbox's guest
//! agent. `vivarium serve` is a thin wrapper around [`serve`].
//!
//! Start reading at [`runner::Runner`] (the lifecycle) and [`routes::router`] (the surface).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub mod agent_binary;
pub mod computer;
pub mod convert;
pub mod db;
pub mod desktop_image;
pub mod error;
pub mod exits;
pub mod extract;
pub mod proxy;
pub mod routes;
pub mod runner;
pub mod uninstall;

pub use runner::{Runner, RunnerConfig, StartError};

/// Default address of the API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default data directory (images, sandboxes, state.db, api-key).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/vivarium";

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub runner: RunnerConfig,
    /// The API key; `None`: read `<data_dir>/api-key`, or generate one there and print it once.
    pub api_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("API key file {path}: {source}")]
    ApiKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Lock(#[from] LockError),
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("locking {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another runner already serves the data dir {data_dir} (it holds {path}); stop it first \
         or use another --data-dir"
    )]
    Held { data_dir: PathBuf, path: PathBuf },
    #[error(
        "another runner on this host already uses the instance name {instance:?} (it holds \
         {path}); give this one another --instance (and --subnet)"
    )]
    InstanceHeld { instance: String, path: PathBuf },
}

/// The data dir's lock: one runner (or `vivarium uninstall`) per data dir at a time. Held until
/// dropped; the kernel releases it when the process dies, so a SIGKILLed runner leaves no stale
/// lock.
pub struct DataDirLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl DataDirLock {
    /// Locks the data dir.
    pub fn acquire(data_dir: &std::path::Path) -> Result<Self, LockError> {
        Self::lock_file(data_dir, data_dir.join("runner.lock"))
    }

    /// Locks an instance name host-wide (`/run/vivarium/<instance>.lock`): two runners with one
    /// `--instance` share the cgroup parent, the nftables table and the netns prefix, and each
    /// would remove the other's sandboxes as leftovers.
    pub fn acquire_instance(instance: &str) -> Result<Self, LockError> {
        let dir = std::path::Path::new("/run/vivarium");
        Self::lock_file(dir, dir.join(format!("{instance}.lock"))).map_err(|e| match e {
            LockError::Held { path, .. } => LockError::InstanceHeld {
                instance: instance.to_string(),
                path,
            },
            other => other,
        })
    }

    fn lock_file(data_dir: &std::path::Path, path: PathBuf) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held {
                data_dir: data_dir.to_path_buf(),
                path,
            }),
            Err((_, e)) => Err(io(e.into())),
        }
    }
}

/// Reads the API key from `<data_dir>/api-key`, creating it (mode 0600) with a fresh random key the
/// first time. Returns the key and whether it was just generated.
pub fn load_or_create_api_key(data_dir: &std::path::Path) -> Result<(String, bool), ServeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("api-key");
    let err = |source| ServeError::ApiKey {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => return Ok((k.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(err)?;
    let key = format!(
        "vv_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    f.write_all(key.as_bytes()).map_err(err)?;
    Ok((key, true))
}

/// Secrets at rest: the data dir (state.db holds every sandbox's access token and environment, the
/// API key file) is the runner's alone. Sandboxes are unaffected: their files are reached through
/// mounts the runner made.
fn restrict_permissions(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut paths = vec![(data_dir.to_path_buf(), 0o700)];
    for f in [
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "state.db-journal",
        "api-key",
    ] {
        paths.push((data_dir.join(f), 0o600));
    }
    for (path, mode) in paths {
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot restrict permissions")
            }
        }
    }
}

/// Runs the runner until SIGINT/SIGTERM.
pub async fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    let _lock = DataDirLock::acquire(&cfg.runner.data_dir)?;
    let _instance_lock = DataDirLock::acquire_instance(&cfg.runner.instance)?;
    let api_key = match cfg.api_key.clone() {
        Some(k) => k,
        None => {
            let (key, fresh) = load_or_create_api_key(&cfg.runner.data_dir)?;
            if fresh {
                // The key itself goes only to an interactive terminal, never into a log file
                // (a runner started with its output redirected says where the key is).
                use std::io::IsTerminal;
                let path = cfg.runner.data_dir.join("api-key");
                if std::io::stdout().is_terminal() {
                    println!("Generated API key (stored in {}): {key}", path.display());
                } else {
                    println!(
                        "Generated an API key; it is in {} (mode 0600)",
                        path.display()
                    );
                }
            }
            key
        }
    };
    let runner = Runner::start(cfg.runner.clone()).await?;
    restrict_permissions(&cfg.runner.data_dir);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: cfg.listen,
        source,
    })?;

    let reaper = {
        let runner = runner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                runner.reap().await;
                runner.cap_console_logs();
                runner.ensure_walls().await;
            }
        })
    };

    let app = routes::router(Arc::new(routes::AppState { runner, api_key }))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    tracing::info!(%addr, data_dir = %cfg.runner.data_dir.display(), "vivarium runner listening");
    println!("vivarium runner listening on http://{addr}");
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    reaper.abort();
    // Sandboxes outlive the runner on purpose: a restarted runner adopts them.
    result.map_err(ServeError::Serve)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down (sandboxes keep running and are adopted on the next start)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, fresh1) = load_or_create_api_key(dir.path()).unwrap();
        let (k2, fresh2) = load_or_create_api_key(dir.path()).unwrap();
        assert!(fresh1 && !fresh2);
        assert_eq!(k1, k2);
        assert!(k1.len() > 40);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("api-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
