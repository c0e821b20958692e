//! Sandboxes that die on their own. A watcher notices within a fraction of a second (the init's
//! pidfd turns readable, or the sandbox's cgroup is empty), works out why (the kernel's exit event
//! for the init, the cgroup's OOM kill counter) and makes the run `failed` with that `failure`.
//! Then the host objects go; with `on_failure: keep` the record and the console log stay for
//! inspection until the run is deleted or its timeout passes, with `delete` the run goes too.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::Utc;
use vivarium_api::{Failure, FailureReason, OnFailure, Run, RunState};

use super::Runner;
use crate::error::{ApiError, ApiResult};
use crate::exits::{ExitStatus, Pidfd};

/// How often the watcher looks at every running sandbox.
const WATCH_PERIOD: Duration = Duration::from_millis(250);
/// How long the watcher waits for the kernel's exit event of a dead init.
const EXIT_EVENT_WAIT: Duration = Duration::from_millis(200);
/// The most of a console log kept (its end) and served.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// Runs until the runner is dropped.
pub(super) async fn watch(runner: Weak<Runner>) {
    let mut tick = tokio::time::interval(WATCH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(runner) = runner.upgrade() else {
            return;
        };
        runner.check_deaths().await;
    }
}

impl Runner {
    /// Starts watching a running sandbox's init.
    pub(super) fn watch_init(&self, id: &str, pid: Option<u32>) {
        let Some(pid) = pid else { return };
        self.exits.watch(pid);
        match Pidfd::open(pid) {
            Ok(fd) => {
                self.pidfds().insert(id.to_string(), fd);
            }
            // Already gone (the watcher's cgroup check notices), or no pidfd on this kernel.
            Err(e) => {
                tracing::debug!(sandbox = %id, pid, error = %e, "no pidfd for the sandbox init")
            }
        }
    }

    pub(super) fn unwatch_init(&self, id: &str, pid: Option<u32>) {
        self.pidfds().remove(id);
        if let Some(pid) = pid {
            self.exits.forget(pid);
        }
    }

    fn pidfds(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pidfd>> {
        self.pidfds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a running sandbox's init is gone: its pidfd says it exited, or (without a pidfd)
    /// its cgroup holds no process.
    fn init_dead(&self, id: &str) -> bool {
        if let Some(fd) = self.pidfds().get(id) {
            return fd.exited();
        }
        self.driver.pids(id).is_empty()
    }

    async fn check_deaths(&self) {
        let running: Vec<(String, Option<u32>)> = self
            .live()
            .values()
            .filter(|r| r.run.state == RunState::Running)
            .map(|r| (r.run.id.clone(), r.init_pid))
            .collect();
        for (id, pid) in running {
            if self.is_busy(&id) {
                continue;
            }
            if self.init_dead(&id) {
                // The exit event is sent before the pidfd turns readable, but our reader thread
                // may not have taken it yet.
                if let Some(pid) = pid.filter(|_| self.exits.available()) {
                    let deadline = Instant::now() + EXIT_EVENT_WAIT;
                    while self.exits.status(pid).is_none() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                self.mark_failed(&id);
            } else if let Ok(n) = self.driver.oom_kills(&id) {
                // The OOM baseline a death is compared with.
                if let Some(r) = self.live().get_mut(&id) {
                    r.run.oom_kills = n;
                }
            }
        }
        let unclean: Vec<String> = self
            .live()
            .values()
            .filter(|r| r.run.state == RunState::Failed && !r.cleaned)
            .map(|r| r.run.id.clone())
            .collect();
        for id in unclean {
            if !self.is_busy(&id) {
                self.clean_failed(&id).await;
            }
        }
    }

    /// Makes a running sandbox whose init is gone `failed` (the one place that does) and answers
    /// its failure; `None` when it is not a running sandbox of ours.
    pub(super) fn mark_failed(&self, id: &str) -> Option<Failure> {
        let mut live = self.live();
        let rec = live.get_mut(id)?;
        if rec.run.state != RunState::Running {
            return rec.run.failure.clone();
        }
        let oom_now = self.driver.oom_kills(id).ok();
        let oom_recent = oom_now.is_some_and(|n| n > rec.run.oom_kills);
        let status = rec.init_pid.and_then(|p| self.exits.status(p));
        let failure = failure_of(status, oom_recent, rec.run.mem_mib, oom_now);
        tracing::warn!(sandbox = %id, reason = failure.reason.as_str(), message = %failure.message, "sandbox failed");
        rec.run.state = RunState::Failed;
        rec.run.failure = Some(failure.clone());
        if let Some(n) = oom_now {
            rec.run.oom_kills = n;
        }
        if let Err(e) = self.db.upsert(rec) {
            tracing::error!(sandbox = %id, error = %e, "cannot record the failure");
        }
        Some(failure)
    }

    /// Removes a failed sandbox's host objects, keeping its console log (`on_failure: keep`), or
    /// the whole run (`delete`).
    async fn clean_failed(&self, id: &str) {
        let Some(rec) = self.live().get(id).cloned() else {
            return;
        };
        self.unwatch_init(id, rec.init_pid);
        if rec.run.on_failure == OnFailure::Delete {
            if let Err(e) = self.delete(id).await {
                tracing::error!(sandbox = %id, error = %e, "cannot delete the failed sandbox");
            }
            return;
        }
        let _busy = self.busy(id);
        if let Err(e) = keep_log_tail(&self.driver.console_log(id), &self.log_path(id)) {
            tracing::warn!(sandbox = %id, error = %e, "cannot keep the failed sandbox's console log");
        }
        match self.driver.destroy(id).await {
            Ok(()) => {
                let mut live = self.live();
                if let Some(r) = live.get_mut(id) {
                    r.cleaned = true;
                    if let Err(e) = self.db.upsert(r) {
                        tracing::error!(sandbox = %id, error = %e, "cannot record the cleanup");
                    }
                }
                tracing::info!(sandbox = %id, "failed sandbox's host objects removed; its record and log are kept");
            }
            Err(e) => {
                tracing::error!(sandbox = %id, error = %e, "cannot remove the failed sandbox (will retry)")
            }
        }
    }

    /// Where a failed sandbox's console log is kept.
    pub(super) fn log_path(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("logs").join(format!("{id}.log"))
    }

    /// The end (at most [`MAX_LOG_BYTES`]) of a sandbox's console log: what its init printed.
    pub fn logs(&self, id: &str) -> ApiResult<Vec<u8>> {
        let rec = self.record(id)?;
        let kept = self.log_path(id);
        let path = if rec.cleaned || kept.exists() {
            kept
        } else {
            self.driver.console_log(id)
        };
        match read_tail(&path, MAX_LOG_BYTES) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ApiError::internal(format!(
                "reading the console log of {id}: {e}"
            ))),
        }
    }

    /// The answer to a request that needs the agent of a sandbox that no longer answers: 409
    /// `sandbox_failed` with the reason when it is dead (recording its failure if the watcher has
    /// not yet), `sandbox_unavailable` when it still runs, 404 when it is not ours.
    pub fn unavailable_error(&self, id: &str, cause: &dyn std::fmt::Display) -> ApiError {
        let Ok(rec) = self.record(id) else {
            return ApiError::not_found(format!("no sandbox with id {id:?}"));
        };
        if rec.run.state == RunState::Running && self.init_dead(id) {
            self.mark_failed(id);
        }
        match self.record(id) {
            Ok(rec) if rec.run.state == RunState::Failed => failed_error(&rec.run),
            Ok(_) => ApiError::new(
                StatusCode::CONFLICT,
                "sandbox_unavailable",
                format!("sandbox {id} is not answering: {cause}"),
            ),
            Err(e) => e,
        }
    }
}

/// 409 for a request that needs a running sandbox, naming the state and the failure's reason.
pub fn failed_error(run: &Run) -> ApiError {
    let state = serde_json::to_value(run.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match &run.failure {
        Some(f) => ApiError::new(
            StatusCode::CONFLICT,
            "sandbox_failed",
            format!(
                "sandbox {} is {state} ({}) since {}: {}",
                run.id,
                f.reason.as_str(),
                f.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                f.message
            ),
        )
        .with_reason(f.reason.as_str()),
        None => ApiError::new(
            StatusCode::CONFLICT,
            "sandbox_not_running",
            format!("sandbox {} is {state}, not running", run.id),
        ),
    }
}

fn failure_of(
    status: Option<ExitStatus>,
    oom_recent: bool,
    mem_mib: u64,
    oom_kills: Option<u64>,
) -> Failure {
    let (reason, message, signal, exit_code) = match status {
        Some(ExitStatus::Signaled(9)) | None if oom_recent => (
            FailureReason::OomKilled,
            format!(
                "the kernel OOM killer killed the sandbox's init: the sandbox went past its memory \
                 limit of {mem_mib} MiB ({} OOM kill(s) in it)",
                oom_kills.unwrap_or(0)
            ),
            status.map(|_| 9),
            None,
        ),
        Some(ExitStatus::Signaled(s)) => (
            FailureReason::Killed,
            format!(
                "the sandbox's init was killed by signal {s} ({})",
                signal_name(s)
            ),
            Some(s),
            None,
        ),
        Some(ExitStatus::Exited(c)) => (
            FailureReason::Exited,
            format!("the sandbox's init exited with status {c}"),
            None,
            Some(c),
        ),
        None => (
            FailureReason::Lost,
            "the sandbox's init died; how is unknown (no exit event from the kernel)".to_string(),
            None,
            None,
        ),
    };
    Failure {
        reason,
        message,
        at: Utc::now(),
        signal,
        exit_code,
    }
}

/// A failure found at startup: the sandbox stopped (or stopped answering) while no runner watched.
pub(super) fn lost_while_down(why: &str, oom_kills: Option<u64>) -> Failure {
    let oom = match oom_kills {
        Some(n) if n > 0 => format!(" ({n} OOM kill(s) were counted in it)"),
        _ => String::new(),
    };
    Failure {
        reason: FailureReason::Lost,
        message: format!("{why}{oom}"),
        at: Utc::now(),
        signal: None,
        exit_code: None,
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

fn read_tail(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len > max {
        f.seek(SeekFrom::Start(len - max))?;
    }
    let mut out = Vec::with_capacity(len.min(max) as usize);
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Copies the end of a console log next to the state database (the run dir is about to go).
fn keep_log_tail(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    let data = match read_tail(from, MAX_LOG_BYTES) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(to, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let f = failure_of(Some(ExitStatus::Signaled(9)), true, 64, Some(3));
        assert_eq!(f.reason, FailureReason::OomKilled);
        assert!(f.message.contains("64 MiB"), "{}", f.message);
        assert_eq!(
            failure_of(None, true, 64, Some(1)).reason,
            FailureReason::OomKilled
        );
        let f = failure_of(Some(ExitStatus::Signaled(9)), false, 64, Some(0));
        assert_eq!((f.reason, f.signal), (FailureReason::Killed, Some(9)));
        assert!(f.message.contains("SIGKILL"));
        let f = failure_of(Some(ExitStatus::Exited(3)), true, 64, Some(1));
        assert_eq!((f.reason, f.exit_code), (FailureReason::Exited, Some(3)));
        assert_eq!(
            failure_of(None, false, 64, None).reason,
            FailureReason::Lost
        );
    }

    #[test]
    fn log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("console.log");
        std::fs::write(&from, b"0123456789").unwrap();
        assert_eq!(read_tail(&from, 4).unwrap(), b"6789");
        assert_eq!(read_tail(&from, 100).unwrap(), b"0123456789");
        let to = dir.path().join("logs/x.log");
        keep_log_tail(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"0123456789");
        keep_log_tail(&dir.path().join("missing"), &to).unwrap();
        assert!(std::fs::read(&to).unwrap().is_empty());
    }
}
