//! The one place that waits for child processes.
//!
//! As PID 1 the agent inherits every orphan of the sandbox and must reap it. A `waitpid(-1)` loop
//! would race any other waiter (tokio::process, std's `Child::wait`), so the agent never uses
//! those: every child is started through [`Reaper::spawn`], and a single SIGCHLD-driven loop reaps
//! all children and hands each status to the waiter registered for that pid. Statuses of pids
//! nobody registered (orphans) are logged and dropped.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use vivarium_proto::ExitStatus;

/// Receives the exit status of one child.
pub type ExitReceiver = oneshot::Receiver<ExitStatus>;

#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping task. Must run inside a tokio runtime,
    /// before any child is spawned.
    pub fn start() -> io::Result<Arc<Reaper>> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let r = Arc::clone(&reaper);
        tokio::spawn(async move {
            // Children that ended before the handler existed (possible when we are PID 1 and
            // were handed orphans at start).
            r.reap_all();
            while sigchld.recv().await.is_some() {
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitStatus>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and registers a waiter for it. The lock is held across the fork so the
    /// reaper cannot dispatch the child's status before the waiter exists.
    ///
    /// The returned [`Child`] must never be waited on; use the receiver.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, ExitReceiver)> {
        let mut waiters = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Pids of children that were spawned through this reaper and have not been reaped yet.
    pub fn live_children(&self) -> Vec<i32> {
        self.lock().keys().copied().collect()
    }

    /// Reaps every child that has ended.
    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.dispatch(
                    pid,
                    ExitStatus {
                        exit_code: Some(code),
                        signal: None,
                        timed_out: false,
                    },
                ),
                Ok(WaitStatus::Signaled(pid, sig, _core)) => self.dispatch(
                    pid,
                    ExitStatus {
                        exit_code: None,
                        signal: Some(sig as i32),
                        timed_out: false,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                // Stop/continue reports are not requested; ignore anything else that shows up.
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn dispatch(&self, pid: Pid, status: ExitStatus) {
        let waiter = self.lock().remove(&pid.as_raw());
        match waiter {
            // The waiter may have given up (connection dropped); nothing to do then.
            Some(tx) => {
                let _ = tx.send(status);
            }
            None => tracing::debug!(pid = pid.as_raw(), ?status, "reaped orphan"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dispatches_statuses_by_pid_and_reaps_orphans() {
        let reaper = Reaper::start().expect("reaper");
        let (_c1, rx1) = reaper
            .spawn(Command::new("sh").args(["-c", "exit 3"]))
            .expect("spawn");
        let (_c2, rx2) = reaper
            .spawn(Command::new("sh").args(["-c", "kill -TERM $$"]))
            .expect("spawn");
        assert_eq!(rx1.await.expect("status").exit_code, Some(3));
        assert_eq!(rx2.await.expect("status").signal, Some(libc::SIGTERM));
        assert!(reaper.live_children().is_empty());
    }
}
