//! `vivarium uninstall`: removes everything a runner instance put on the host.
//!
//! Deletes every sandbox it knows of (its records in `state.db`) and every leftover of one it does
//! not (processes, cgroups, mounts, network namespaces, veths, address claims), then the
//! instance's host-wide objects (nftables table, cgroup parents) and, on request, the data dir.
//! It takes the data dir's lock first, so it never runs beside a live runner.

use std::path::{Path, PathBuf};

use vivarium_isolation::Driver;

use crate::db::Db;
use crate::DataDirLock;

#[derive(Debug, Clone)]
pub struct UninstallConfig {
    pub data_dir: PathBuf,
    pub runtime: PathBuf,
    /// The runner's `--instance`.
    pub instance: String,
    /// The runner's `--subnet` (needed to rebuild the driver's view of address claims).
    pub subnet: Option<vivarium_isolation::Ipv4Net>,
    /// Also delete the data dir (images, state.db, the API key).
    pub purge: bool,
}

#[derive(Debug, Default)]
pub struct UninstallReport {
    /// Sandboxes deleted.
    pub sandboxes: Vec<String>,
    /// Sandboxes whose removal failed, with the reason.
    pub failed: Vec<(String, String)>,
    pub data_dir_removed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error(transparent)]
    Lock(#[from] crate::LockError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("isolation driver: {0}")]
    Driver(#[from] vivarium_isolation::DriverError),
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no such data dir {0} (pass the runner's --data-dir)")]
    NoDataDir(PathBuf),
    #[error("{0} sandbox(es) could not be removed; the instance's host objects were kept")]
    Incomplete(usize),
}

pub async fn uninstall(cfg: &UninstallConfig) -> Result<UninstallReport, UninstallError> {
    let mut report = UninstallReport::default();
    if !cfg.data_dir.is_dir() {
        return Err(UninstallError::NoDataDir(cfg.data_dir.clone()));
    }
    let lock = DataDirLock::acquire(&cfg.data_dir)?;
    let _instance_lock = DataDirLock::acquire_instance(&cfg.instance)?;
    let driver = Driver::new(crate::runner::driver_config(
        &cfg.data_dir,
        &cfg.runtime,
        &cfg.instance,
        cfg.subnet,
    ))
    .await?;
    let db_path = cfg.data_dir.join("state.db");
    let db = if db_path.exists() {
        Some(Db::open(&db_path)?)
    } else {
        None
    };
    let mut ids: Vec<String> = match &db {
        Some(db) => db.all()?.into_iter().map(|r| r.run.id).collect(),
        None => Vec::new(),
    };
    ids.extend(driver.list_traces()?);
    ids.sort();
    ids.dedup();
    for id in ids {
        match driver.destroy(&id).await {
            Ok(()) => {
                if let Some(db) = &db {
                    db.delete(&id)?;
                }
                tracing::info!(sandbox = %id, "deleted");
                report.sandboxes.push(id);
            }
            Err(e) => {
                tracing::error!(sandbox = %id, error = %e, "could not remove sandbox");
                report.failed.push((id, e.to_string()));
            }
        }
    }
    if !report.failed.is_empty() {
        return Err(UninstallError::Incomplete(report.failed.len()));
    }
    driver.uninstall().await?;
    drop(db);
    if cfg.purge {
        drop(lock);
        remove_dir(&cfg.data_dir)?;
        report.data_dir_removed = true;
    }
    Ok(report)
}

fn remove_dir(dir: &Path) -> Result<(), UninstallError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(UninstallError::Remove {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
