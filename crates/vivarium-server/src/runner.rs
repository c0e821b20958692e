//! The sandbox lifecycle: validate a request, make the image ready, ask the isolation driver for a
//! sandbox, wait for its guest agent, remember it durably; and the reverse. Also the two background
//! duties: recovery after a restart and deletion of expired sandboxes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::Utc;
use vivarium_api::{self as api, CreateRunRequest, NetworkMode, Run, RunState};
use vivarium_image::{ImageInfo, ImageStore, StoreConfig};
use vivarium_isolation::{Driver, DriverConfig, SandboxSpec, SandboxStatus};
use vivarium_proto::client::AgentClient;

use crate::convert;
use crate::db::{Db, RunRecord};
use crate::desktop_image::{self, DesktopImage};
use crate::error::{ApiError, ApiResult};
use crate::exits::{Exits, Pidfd};

mod failures;
mod limits;
pub use failures::{failed_error, MAX_LOG_BYTES};
pub use limits::check_env;

/// Largest a running sandbox's console log may grow before it is cut to its tail.
pub const MAX_CONSOLE_BYTES: u64 = 8 * 1024 * 1024;

/// The isolation driver's configuration for a runner's data dir and instance (the runner and
/// `vivarium uninstall` must agree on it).
pub fn driver_config(
    data_dir: &std::path::Path,
    runtime: &std::path::Path,
    instance: &str,
    subnet: Option<vivarium_isolation::Ipv4Net>,
) -> DriverConfig {
    DriverConfig {
        state_dir: data_dir.join("sandboxes"),
        runtime: runtime.to_path_buf(),
        subnet: subnet.unwrap_or(DriverConfig::default().subnet),
        cgroup_parent: instance.to_string(),
    }
}

/// Keeps the last `keep` bytes of the file at `path`, in place.
fn cut_to_tail(path: &std::path::Path, keep: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(len.saturating_sub(keep)))?;
    (&mut f).take(keep).read_to_end(&mut tail)?;
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    writeln!(
        f,
        "[vivarium: console log cut; {} earlier bytes dropped]",
        len - tail.len() as u64
    )?;
    f.write_all(&tail)
}

/// Where the guest agent listens inside every sandbox (the driver bind-mounts its host side).
pub const AGENT_SOCKET_IN_SANDBOX: &str = "/.vivarium/run/agent.sock";
/// How long a new sandbox's agent may take to answer before creation is given up.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Size of /dev/shm in every sandbox (Chromium wants at least 1 GiB).
const SHM_MIB: u64 = 1024;
/// Largest desktop resolution (the agent starts Xvfb at this size and switches with RandR).
pub const MAX_SCREEN: [u32; 2] = [2560, 1600];

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub data_dir: PathBuf,
    /// The static guest agent binary placed read-only into every sandbox.
    pub agent_binary: PathBuf,
    /// The OCI runtime binary (crun).
    pub runtime: PathBuf,
    /// Image used when a create request names none.
    pub default_image: Option<String>,
    /// Registries spoken to over plain HTTP (loopback always is).
    pub insecure_registries: Vec<String>,
    /// Names this runner's host-global objects (cgroup parent, nftables table, netns prefix), so
    /// several runners can share a host.
    pub instance: String,
    /// Pool of sandbox addresses (one /30 each); `None`: the driver's default, 10.88.0.0/16.
    pub subnet: Option<vivarium_isolation::Ipv4Net>,
    /// A Docker-style `config.json` whose `auths` hold registry credentials.
    pub registry_auth: Option<PathBuf>,
    /// Base URL clients reach the runner at (for `cdp_url`/`vnc_url`), e.g. `http://127.0.0.1:7070`.
    pub public_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Agent(#[from] crate::agent_binary::AgentBinaryError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("image store: {0}")]
    Images(#[from] vivarium_image::ImageError),
    #[error("isolation driver: {0}")]
    Driver(#[from] vivarium_isolation::DriverError),
}

pub struct Runner {
    pub cfg: RunnerConfig,
    db: Db,
    pub images: ImageStore,
    driver: Driver,
    /// Sandboxes that are running (the cache of `db` that requests read).
    live: Mutex<HashMap<String, RunRecord>>,
    /// Ids being created or deleted right now; the reaper leaves them alone.
    busy: Mutex<std::collections::HashSet<String>>,
    host_mem_mib: u64,
    /// Exit statuses of sandbox inits (see `exits`).
    exits: Exits,
    /// pidfds of running sandboxes' inits, by sandbox id: the death watcher polls them.
    pidfds: Mutex<HashMap<String, Pidfd>>,
    /// The image of creates that name none (`--default-image`, or the built-in desktop image).
    desktop_image: DesktopImage,
}

impl Runner {
    pub async fn start(cfg: RunnerConfig) -> Result<Arc<Self>, StartError> {
        for dir in [
            cfg.data_dir.clone(),
            cfg.data_dir.join("images"),
            cfg.data_dir.join("sandboxes"),
            cfg.data_dir.join("logs"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        // Never a dynamically linked agent: it cannot start in images without glibc.
        crate::agent_binary::check_static(&cfg.agent_binary)?;
        let cfg_default_image = cfg.default_image.clone();
        let db = Db::open(&cfg.data_dir.join("state.db"))?;
        let images = ImageStore::open(StoreConfig {
            root: cfg.data_dir.join("images"),
            insecure_registries: cfg.insecure_registries.clone(),
            docker_config: cfg.registry_auth.clone(),
            ..Default::default()
        })?;
        let driver = Driver::new(driver_config(
            &cfg.data_dir,
            &cfg.runtime,
            &cfg.instance,
            cfg.subnet,
        ))
        .await?;
        let runner = Arc::new(Self {
            cfg,
            db,
            images,
            driver,
            live: Mutex::new(HashMap::new()),
            busy: Mutex::new(Default::default()),
            host_mem_mib: host_mem_mib(),
            exits: Exits::start(),
            pidfds: Mutex::new(HashMap::new()),
            desktop_image: DesktopImage::new(DesktopImage::default_cache_root(), cfg_default_image),
        });
        runner.recover().await;
        tokio::spawn(failures::watch(Arc::downgrade(&runner)));
        Ok(runner)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunRecord>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `id` as having a create or delete in flight until the guard drops.
    fn busy(&self, id: &str) -> BusyGuard<'_> {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        BusyGuard {
            runner: self,
            id: id.to_string(),
        }
    }

    fn is_busy(&self, id: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Reconciles the database with the host after a (possibly unclean) restart: sandboxes that
    /// still run and answer are adopted; running ones that died meanwhile become `failed` (or are
    /// removed, with `on_failure: delete`); failed ones stay failed; everything else is removed,
    /// and the log says so.
    async fn recover(&self) {
        let records = match self.db.all() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read sandbox records; not recovering");
                return;
            }
        };
        for mut rec in records {
            let id = rec.run.id.clone();
            if rec.run.state == RunState::Failed {
                // Kept for inspection; the watcher finishes a cleanup that was cut short.
                self.live().insert(id, rec);
                continue;
            }
            let status = match rec.run.state {
                RunState::Running => self.driver.status(&id).await.ok(),
                _ => None,
            };
            let init_pid = match status {
                Some(SandboxStatus::Running { pid }) => Some(pid),
                _ => None,
            };
            let alive = init_pid.is_some()
                && tokio::time::timeout(
                    Duration::from_secs(3),
                    AgentClient::new(&rec.agent_socket).info(),
                )
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false);
            if alive {
                tracing::info!(sandbox = %id, "recovered running sandbox");
                rec.init_pid = init_pid;
                self.watch_init(&id, init_pid);
                self.live().insert(id, rec);
            } else if rec.run.state == RunState::Running
                && rec.run.on_failure == api::OnFailure::Keep
            {
                let why = if init_pid.is_some() {
                    "the sandbox's guest agent stopped answering while the runner was not running"
                } else {
                    "the sandbox stopped while the runner was not running"
                };
                let failure = failures::lost_while_down(why, self.driver.oom_kills(&id).ok());
                tracing::warn!(sandbox = %id, message = %failure.message, "sandbox failed while the runner was down; keeping its record");
                rec.run.state = RunState::Failed;
                rec.run.failure = Some(failure);
                if let Err(e) = self.db.upsert(&rec) {
                    tracing::error!(sandbox = %id, error = %e, "cannot record the failure");
                }
                self.live().insert(id, rec);
            } else {
                tracing::warn!(sandbox = %id, state = ?rec.run.state, "sandbox did not survive the restart; cleaning it up");
                self.destroy_quietly(&id).await;
            }
        }
        match self.driver.list_traces() {
            Ok(ids) => {
                for id in ids {
                    if !self.live().contains_key(&id) {
                        tracing::warn!(sandbox = %id, "removing traces of a sandbox the runner has no record of");
                        self.destroy_quietly(&id).await;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list sandbox traces"),
        }
        // Kept logs of runs that are gone.
        if let Ok(rd) = std::fs::read_dir(self.cfg.data_dir.join("logs")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".log").unwrap_or(&name);
                if !self.live().contains_key(id) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    async fn destroy_quietly(&self, id: &str) {
        match self.driver.destroy(id).await {
            Ok(()) => {
                if let Err(e) = self.db.delete(id) {
                    tracing::error!(sandbox = %id, error = %e, "cannot forget sandbox");
                }
            }
            Err(e) => tracing::error!(sandbox = %id, error = %e, "cannot remove sandbox"),
        }
    }

    pub fn list(&self, metadata: &BTreeMap<String, String>) -> Vec<Run> {
        let mut runs: Vec<Run> = self
            .live()
            .values()
            .filter(|r| {
                metadata
                    .iter()
                    .all(|(k, v)| r.run.metadata.get(k) == Some(v))
            })
            .map(|r| r.run.clone())
            .collect();
        runs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        for run in &mut runs {
            if run.state == RunState::Running {
                run.oom_kills = self.driver.oom_kills(&run.id).unwrap_or(run.oom_kills);
            }
        }
        runs
    }

    pub fn get(&self, id: &str) -> ApiResult<Run> {
        let mut run = self.record(id)?.run;
        if run.state == RunState::Running {
            run.oom_kills = self.driver.oom_kills(id).unwrap_or(run.oom_kills);
        }
        Ok(run)
    }

    /// The record of a running sandbox; 409 naming the state (and failure) otherwise.
    fn running(&self, id: &str) -> ApiResult<RunRecord> {
        let rec = self.record(id)?;
        if rec.run.state != RunState::Running {
            return Err(failed_error(&rec.run));
        }
        Ok(rec)
    }

    fn record(&self, id: &str) -> ApiResult<RunRecord> {
        self.live()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no sandbox with id {id:?}")))
    }

    /// The default image and how far its preparation is.
    pub fn default_image_status(&self) -> api::DefaultImageStatus {
        self.desktop_image.status(&self.images)
    }

    /// The stored reference of the built-in desktop image, built and imported first if needed
    /// (all waiting creates share one preparation).
    pub async fn default_image_reference(&self) -> ApiResult<String> {
        self.desktop_image
            .prepare(&self.images)
            .await
            .map_err(|message| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "default_image_unavailable",
                    format!("the built-in desktop image could not be prepared: {message}"),
                )
                .with_field("image")
            })
    }

    /// The guest agent of a running sandbox.
    pub fn agent(&self, id: &str) -> ApiResult<AgentClient> {
        Ok(AgentClient::new(self.running(id)?.agent_socket))
    }

    /// Host path of a running sandbox's network namespace (the port proxy joins it to connect).
    pub fn netns_path(&self, id: &str) -> ApiResult<PathBuf> {
        self.running(id)?;
        Ok(self.driver.netns_path(id))
    }

    /// The secret that opens a running sandbox's port proxy (`Run::access_token`).
    pub fn access_token(&self, id: &str) -> ApiResult<String> {
        Ok(self.running(id)?.run.access_token)
    }

    /// Sandboxes whose lower layer is the image with this manifest digest.
    pub fn sandboxes_using(&self, digest: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .live()
            .values()
            .filter(|r| r.run.image_digest == digest && !r.cleaned)
            .map(|r| r.run.id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub fn oom_kills(&self, id: &str) -> u64 {
        self.driver.oom_kills(id).unwrap_or(0)
    }

    /// 409 unless the sandbox runs a desktop session.
    pub fn require_desktop(&self, id: &str) -> ApiResult<()> {
        match self.running(id)?.run.desktop {
            Some(_) => Ok(()),
            None => Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_desktop",
                format!("sandbox {id} has no desktop session (create it from a desktop image, or with \"desktop\": true)"),
            )),
        }
    }

    pub fn validate(&self, req: &CreateRunRequest) -> ApiResult<(String, f64, u64, u64)> {
        let image = req
            .image
            .clone()
            .unwrap_or_else(|| self.desktop_image.default_reference());
        limits::check_image(&image)?;
        let vcpus = req.vcpus.unwrap_or(api::DEFAULT_VCPUS);
        limits::check_vcpus(vcpus)?;
        let mem_mib = req.mem_mib.unwrap_or(api::DEFAULT_MEM_MIB);
        let max_mem = self.host_mem_mib.min(api::MAX_MEM_MIB);
        if mem_mib < api::MIN_MEM_MIB || mem_mib > max_mem {
            return Err(ApiError::invalid(
                "mem_mib",
                format!(
                    "mem_mib must be between {} and {max_mem} (this host's memory), got {mem_mib}",
                    api::MIN_MEM_MIB
                ),
            ));
        }
        if let Some(n) = &req.network {
            limits::check_network(&n.policy())?;
        }
        let available = self.driver.available_disk_mib().ok();
        if let Some(d) = req.disk_mib {
            limits::check_disk(d, available)?;
        }
        let timeout_s = req.timeout_s.unwrap_or(api::DEFAULT_TIMEOUT_S);
        if timeout_s == 0 || timeout_s > api::MAX_TIMEOUT_S {
            return Err(ApiError::invalid(
                "timeout_s",
                format!(
                    "timeout_s must be between 1 and {}, got {timeout_s}",
                    api::MAX_TIMEOUT_S
                ),
            ));
        }
        limits::check_env(&req.env)?;
        if let Some([w, h]) = req.resolution {
            if !(320..=MAX_SCREEN[0]).contains(&w) || !(200..=MAX_SCREEN[1]).contains(&h) {
                return Err(ApiError::invalid(
                    "resolution",
                    format!(
                        "resolution must be within 320x200 and {}x{}, got {w}x{h}",
                        MAX_SCREEN[0], MAX_SCREEN[1]
                    ),
                ));
            }
        }
        limits::check_metadata(&req.metadata)?;
        Ok((image, vcpus, mem_mib, timeout_s))
    }

    pub async fn create(&self, req: CreateRunRequest) -> ApiResult<Run> {
        let started = Instant::now();
        let (image_ref, vcpus, mem_mib, timeout_s) = self.validate(&req)?;
        let image_ref = if desktop_image::is_builtin(&image_ref) {
            self.default_image_reference().await?
        } else {
            image_ref
        };
        let parsed = ImageStore::parse_reference(&image_ref)
            .map_err(|e| convert::image_error(e).with_field("image"))?;
        let image: ImageInfo = self
            .images
            .ensure(&parsed)
            .await
            .map_err(|e| convert::image_error(e).with_field("image"))?;
        let image_ready = started.elapsed();

        let is_desktop_image = image
            .config
            .labels
            .get(api::DESKTOP_LABEL)
            .map(String::as_str)
            == Some(api::DESKTOP_LABEL_VALUE);
        let desktop = req
            .desktop
            .unwrap_or(is_desktop_image || req.resolution.is_some())
            .then(|| {
                let [width, height] = req.resolution.unwrap_or(api::DEFAULT_RESOLUTION);
                api::DesktopInfo { width, height }
            });
        let id = new_id();
        let _busy = self.busy(&id);
        let now = Utc::now();
        let network_policy = req.network.as_ref().map(|n| n.policy()).unwrap_or_default();
        let egress = limits::check_network(&network_policy)?;
        let network = network_policy.mode;
        // Every sandbox's writable layer is capped: the default, or less when the host has less.
        let disk_mib = req.disk_mib.unwrap_or_else(|| {
            self.driver
                .available_disk_mib()
                .map(|free| api::limits::DEFAULT_DISK_MIB.min(free.max(api::limits::MIN_DISK_MIB)))
                .unwrap_or(api::limits::DEFAULT_DISK_MIB)
        });
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for kv in &image.config.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.insert(k.to_string(), v.to_string());
            }
        }
        env.extend(req.env.clone());
        let mut rec = RunRecord {
            run: Run {
                id: id.clone(),
                state: RunState::Creating,
                image: image_ref,
                image_digest: image.digest.clone(),
                vcpus,
                mem_mib,
                disk_mib: Some(disk_mib),
                network,
                network_policy,
                ip: None,
                env: req.env.clone(),
                metadata: req.metadata.clone(),
                created_at: now,
                expires_at: now + chrono::Duration::seconds(timeout_s as i64),
                oom_kills: 0,
                access_token: new_token(),
                desktop: desktop.clone(),
                cdp_url: None,
                vnc_url: None,
                failure: None,
                on_failure: req.on_failure.unwrap_or_default(),
            },
            agent_socket: PathBuf::new(),
            init_pid: None,
            cleaned: false,
        };
        if desktop.is_some() {
            let urls = crate::proxy::sandbox_urls(&self.cfg.public_url, &id, &rec.run.access_token);
            rec.run.cdp_url = Some(urls.0);
            rec.run.vnc_url = Some(urls.1);
        }
        let mut agent_args = vec!["--listen".to_string(), AGENT_SOCKET_IN_SANDBOX.to_string()];
        if let Some(d) = &desktop {
            agent_args.extend(["--desktop".to_string(), format!("{}x{}", d.width, d.height)]);
        }
        // Written before anything exists on the host, so a crash from here on is cleaned up at restart.
        self.db.upsert(&rec)?;

        let spec = SandboxSpec {
            id: id.clone(),
            rootfs: image.rootfs.clone(),
            hostname: format!("vv-{id}"),
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: image
                .config
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into()),
            vcpus,
            mem_mib,
            pids_max: api::limits::pids_max(mem_mib),
            shm_mib: SHM_MIB.min(mem_mib),
            disk_mib: Some(disk_mib),
            network: match network {
                NetworkMode::Nat => vivarium_isolation::NetworkMode::Nat,
                NetworkMode::None => vivarium_isolation::NetworkMode::None,
            },
            egress,
            agent_binary: self.cfg.agent_binary.clone(),
            agent_args,
        };
        let result = async {
            let sandbox = self
                .driver
                .create(&spec)
                .await
                .map_err(convert::driver_error)?;
            let sandbox_up = started.elapsed();
            let agent = AgentClient::new(&sandbox.agent_socket);
            wait_ready(&agent).await?;
            if desktop.is_some() {
                // A desktop sandbox is handed out usable: the agent answers desktop actions only
                // once Xvfb, the window manager and Chromium are up and Chromium has painted, so
                // screenshots and `cdp_url` work the moment create returns.
                agent
                    .desktop(vivarium_api::desktop::DesktopAction::ScreenSize)
                    .await
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "desktop_failed",
                            format!("the desktop session did not start in this image: {e}"),
                        )
                        .with_field("image")
                    })?;
            }
            tracing::info!(
                sandbox = %id,
                image_ms = image_ready.as_millis() as u64,
                sandbox_ms = sandbox_up.as_millis() as u64,
                ready_ms = started.elapsed().as_millis() as u64,
                "sandbox created"
            );
            Ok::<_, ApiError>(sandbox)
        }
        .await;
        match result {
            Ok(sandbox) => {
                rec.agent_socket = sandbox.agent_socket;
                rec.run.ip = sandbox.ip.map(|ip| ip.to_string());
                rec.run.state = RunState::Running;
                rec.init_pid = Some(sandbox.pid);
                self.db.upsert(&rec)?;
                self.watch_init(&id, rec.init_pid);
                self.live().insert(id, rec.clone());
                Ok(rec.run)
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "sandbox creation failed; undoing");
                self.destroy_quietly(&id).await;
                Err(e)
            }
        }
    }

    pub async fn delete(&self, id: &str) -> ApiResult<()> {
        let mut rec = self
            .live()
            .remove(id)
            .ok_or_else(|| ApiError::not_found(format!("no sandbox with id {id:?}")))?;
        let _busy = self.busy(id);
        self.unwatch_init(id, rec.init_pid);
        rec.run.state = RunState::Deleting;
        self.db.upsert(&rec)?;
        self.driver.destroy(id).await.map_err(|e| {
            ApiError::internal(format!(
                "sandbox {id} could not be fully removed (will retry): {e}"
            ))
        })?;
        self.db.delete(id)?;
        match std::fs::remove_file(self.log_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "cannot remove the kept console log")
            }
        }
        tracing::info!(sandbox = %id, "sandbox deleted");
        Ok(())
    }

    pub fn set_timeout(&self, id: &str, timeout_s: u64) -> ApiResult<Run> {
        if timeout_s == 0 || timeout_s > api::MAX_TIMEOUT_S {
            return Err(ApiError::invalid(
                "timeout_s",
                format!(
                    "timeout_s must be between 1 and {}, got {timeout_s}",
                    api::MAX_TIMEOUT_S
                ),
            ));
        }
        let rec = {
            let mut live = self.live();
            let rec = live
                .get_mut(id)
                .ok_or_else(|| ApiError::not_found(format!("no sandbox with id {id:?}")))?;
            rec.run.expires_at = Utc::now() + chrono::Duration::seconds(timeout_s as i64);
            rec.clone()
        };
        self.db.upsert(&rec)?;
        Ok(rec.run)
    }

    /// Deletes sandboxes whose time is up, and retries removals that failed earlier.
    /// Keeps every running sandbox's console log (on the host, outside its disk cap) bounded: past
    /// [`MAX_CONSOLE_BYTES`] it is cut to its last [`failures::MAX_LOG_BYTES`] (writers append,
    /// so they carry on at the new end). Called every second.
    pub fn cap_console_logs(&self) {
        let ids: Vec<String> = self.live().keys().cloned().collect();
        for id in ids {
            let path = self.driver.console_log(&id);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() > MAX_CONSOLE_BYTES => {
                    if let Err(e) = cut_to_tail(&path, failures::MAX_LOG_BYTES) {
                        tracing::warn!(sandbox = %id, error = %e, "cannot cut the console log");
                    } else {
                        tracing::info!(sandbox = %id, bytes = m.len(), "console log cut to its tail");
                    }
                }
                _ => {}
            }
        }
    }

    /// Puts the firewall back if something on the host removed it (the walls must not fail open
    /// silently). Called every second.
    pub async fn ensure_walls(&self) {
        let driver = self.driver.clone();
        match tokio::task::spawn_blocking(move || driver.ensure_firewall()).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => tracing::error!(
                "this runner's nftables table was removed by something else on the host (a \
                 `nft flush ruleset`?); it has been rebuilt"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot check or rebuild the firewall"),
            Err(e) => tracing::error!(error = %e, "firewall check task failed"),
        }
    }

    pub async fn reap(&self) {
        let now = Utc::now();
        let expired: Vec<String> = self
            .live()
            .values()
            .filter(|r| r.run.expires_at <= now)
            .map(|r| r.run.id.clone())
            .collect();
        for id in expired {
            tracing::info!(sandbox = %id, "sandbox expired");
            if let Err(e) = self.delete(&id).await {
                if e.status != StatusCode::NOT_FOUND {
                    tracing::error!(sandbox = %id, error = %e, "deleting expired sandbox failed");
                }
            }
        }
        if let Ok(records) = self.db.all() {
            for rec in records
                .into_iter()
                .filter(|r| r.run.state == RunState::Deleting)
            {
                if !self.live().contains_key(&rec.run.id) && !self.is_busy(&rec.run.id) {
                    self.destroy_quietly(&rec.run.id).await;
                }
            }
        }
    }
}

struct BusyGuard<'a> {
    runner: &'a Runner,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.runner
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

async fn wait_ready(agent: &AgentClient) -> ApiResult<()> {
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    let mut delay = Duration::from_micros(500);
    loop {
        match agent.info().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(ApiError::internal(format!(
                    "the sandbox's guest agent did not start: {e}"
                )));
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(5));
            }
        }
    }
}

fn validate_env_name(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("environment variable names cannot be empty");
    }
    if key.contains('=') || key.contains('\0') {
        return Err("environment variable names cannot contain '=' or NUL");
    }
    Ok(())
}

/// A secret that opens one sandbox's port proxy: 128 random bits, hex.
fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A sandbox id: 12 lowercase hex characters (short enough for interface names derived from it).
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

fn host_mem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(api::MAX_MEM_MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn env_names() {
        assert!(validate_env_name("PATH").is_ok());
        assert!(validate_env_name("").is_err());
        assert!(validate_env_name("A=B").is_err());
    }

    #[test]
    fn host_memory_is_read() {
        assert!(host_mem_mib() > 0);
    }
}
