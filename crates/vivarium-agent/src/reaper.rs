//! The one place that waits for child processes.
//!
//! As PID 1 the agent inherits every orphan of the sandbox and must reap it. A `waitpid(-1)` loop
//! would race any other waiter (tokio::process, std's `Child::wait`), so the agent never uses
//! those: every child is started through [`Reaper::spawn`], and a single SIGCHLD-driven loop reaps
//! all children and hands each status to the waiter registered for that pid. Statuses of pids
//! nobody registered (orphans) are logged and dropped.
//!
//! One waiter remains that we do not control: std's `Command::spawn` itself. When the child's
//! `exec` (or a `pre_exec` step such as `setuid`) fails, std reads the error from its CLOEXEC pipe
//! and then `waitpid`s *that* child, and panics if the child is already gone. So the reaper and
//! `spawn` take the same lock: a spawn holds it from before the fork until the child has exec'd
//! (or failed and been waited for by std) and its waiter is registered; the reaper holds it around
//! every `waitpid(-1)`. No `waitpid(-1)` can run while a spawn is in flight.
//!
//! Every child also gets its OOM score set (see [`crate::oom`]) so the OOM killer picks children
//! over the agent.

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

    /// Spawns `cmd` and registers a waiter for it. The lock is held across the fork, std's wait
    /// for a child whose exec failed, and the registration, so the reaper can neither steal that
    /// wait nor dispatch the child's status before the waiter exists.
    ///
    /// The returned [`Child`] must never be waited on; use the receiver.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, ExitReceiver)> {
        crate::oom::reset_in_child(cmd);
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

    /// Reaps every child that has ended. Holds the spawn lock around each `waitpid(-1)` (see the
    /// module docs); the lock is released between children so a spawn never waits for a long
    /// reaping burst.
    fn reap_all(&self) {
        loop {
            let mut waiters = self.lock();
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => dispatch(
                    &mut waiters,
                    pid,
                    ExitStatus {
                        exit_code: Some(code),
                        signal: None,
                        timed_out: false,
                    },
                ),
                Ok(WaitStatus::Signaled(pid, sig, _core)) => dispatch(
                    &mut waiters,
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
}

fn dispatch(waiters: &mut HashMap<i32, oneshot::Sender<ExitStatus>>, pid: Pid, status: ExitStatus) {
    match waiters.remove(&pid.as_raw()) {
        // The waiter may have given up; nothing to do then.
        Some(tx) => {
            let _ = tx.send(status);
        }
        None => tracing::debug!(pid = pid.as_raw(), ?status, "reaped orphan"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test: two reapers in one process (tests run concurrently) would steal each other's
    /// children.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dispatches_by_pid_and_failed_spawns_never_race_the_reaper() {
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

        // A spawn whose exec fails, while other children exit and get reaped all the time, is an
        // error, never std's "wait() should either return Ok or panic".
        let mut tasks = Vec::new();
        for i in 0..400 {
            let r = Arc::clone(&reaper);
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    let (_c, rx) = r.spawn(&mut Command::new("true")).expect("spawn true");
                    assert_eq!(rx.await.expect("status").exit_code, Some(0));
                } else {
                    // The OOM reset (pre_exec) makes std fork and wait for the failed child itself.
                    let mut cmd = Command::new("/no/such/program");
                    let err = r.spawn(&mut cmd).expect_err("missing program");
                    assert_eq!(err.kind(), io::ErrorKind::NotFound);
                }
            }));
        }
        for t in tasks {
            t.await.expect("no panic");
        }
        assert!(reaper.live_children().is_empty());
    }
}
