//! Background processes: started by `spawn`, listed, signalled and waited for by pid.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vivarium_proto::{ErrorCode, ExecSpec, ExitStatus, ProcessInfo};

use crate::error::{AgentError, Result};
use crate::process::{read_chunk, signal_group, OutputMode, Spawned, Spawner, StdinMode};

/// Bytes of output kept per stream of a background process (the most recent ones).
pub const RING_CAPACITY: usize = 1024 * 1024;

/// Exited processes kept for `list`/`wait` before the oldest are forgotten.
const MAX_EXITED: usize = 256;

/// Keeps the last `cap` bytes written to it.
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: VecDeque::new(),
            cap,
            dropped: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            self.dropped += (data.len() - self.cap) as u64;
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.dropped += overflow as u64;
        self.buf.extend(data);
    }

    pub fn snapshot(&self) -> Bytes {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        Bytes::from(v)
    }
}

struct Output {
    stdout: Ring,
    stderr: Ring,
}

struct Proc {
    pid: u32,
    argv: Vec<String>,
    started_at_ms: u64,
    output: Mutex<Output>,
    /// `Some` once the process has exited and its output is drained.
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl Proc {
    fn output(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self, with_output: bool) -> ProcessInfo {
        let exit = *self.exit.borrow();
        let out = self.output();
        ProcessInfo {
            pid: self.pid,
            argv: self.argv.clone(),
            started_at_ms: self.started_at_ms,
            running: exit.is_none(),
            exit,
            stdout: if with_output {
                out.stdout.snapshot()
            } else {
                Bytes::new()
            },
            stderr: if with_output {
                out.stderr.snapshot()
            } else {
                Bytes::new()
            },
            stdout_dropped: out.stdout.dropped,
            stderr_dropped: out.stderr.dropped,
        }
    }
}

/// The table of background processes.
#[derive(Default)]
pub struct ProcessTable {
    procs: Mutex<BTreeMap<u32, Arc<Proc>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, pid: u32) -> Result<Arc<Proc>> {
        self.lock()
            .get(&pid)
            .cloned()
            .ok_or_else(|| AgentError::not_found(format!("no background process with pid {pid}")))
    }

    /// Starts a background process; its output goes to ring buffers.
    pub fn spawn(
        self: &Arc<Self>,
        spawner: &Spawner,
        spec: ExecSpec,
        stdin: Bytes,
    ) -> Result<ProcessInfo> {
        let mode = if stdin.is_empty() {
            StdinMode::Null
        } else {
            StdinMode::Pipe
        };
        let Spawned {
            pid,
            stdin: child_stdin,
            stdout,
            stderr,
            exit,
        } = spawner.spawn(&spec, mode, OutputMode::Pipe)?;
        let (exit_tx, exit_rx) = watch::channel(None);
        let proc = Arc::new(Proc {
            pid,
            argv: spec.argv.clone(),
            started_at_ms: now_ms(),
            output: Mutex::new(Output {
                stdout: Ring::new(RING_CAPACITY),
                stderr: Ring::new(RING_CAPACITY),
            }),
            exit: exit_rx,
        });
        self.lock().insert(pid, Arc::clone(&proc));
        self.prune();
        let info = proc.info(false);

        let p = Arc::clone(&proc);
        tokio::spawn(async move {
            let exited = CancellationToken::new();
            let collect = |pipe: Option<tokio::net::unix::pipe::Receiver>, is_err: bool| {
                let p = Arc::clone(&p);
                let exited = exited.clone();
                async move {
                    let Some(mut pipe) = pipe else { return };
                    loop {
                        tokio::select! {
                            r = read_chunk(&mut pipe, 64 * 1024) => match r {
                                Ok(Some(c)) => {
                                    let mut out = p.output();
                                    if is_err { out.stderr.push(&c) } else { out.stdout.push(&c) }
                                }
                                _ => return,
                            },
                            _ = async {
                                exited.cancelled().await;
                                tokio::time::sleep(crate::exec::DRAIN_GRACE).await;
                            } => return,
                        }
                    }
                }
            };
            let feed = async move {
                if let Some(mut s) = child_stdin {
                    let _ = s.write_all(&stdin).await;
                }
            };
            let wait = async {
                let status = exit.await.unwrap_or_default();
                exited.cancel();
                status
            };
            let (status, (), (), ()) =
                tokio::join!(wait, feed, collect(stdout, false), collect(stderr, true));
            tracing::debug!(pid, ?status, "background process ended");
            let _ = exit_tx.send(Some(status));
        });
        Ok(info)
    }

    /// Forgets the oldest exited processes beyond [`MAX_EXITED`].
    fn prune(&self) {
        let mut procs = self.lock();
        let exited: Vec<u32> = procs
            .values()
            .filter(|p| p.exit.borrow().is_some())
            .map(|p| p.pid)
            .collect();
        if exited.len() > MAX_EXITED {
            let mut by_age: Vec<(u64, u32)> = exited
                .iter()
                .filter_map(|pid| procs.get(pid).map(|p| (p.started_at_ms, *pid)))
                .collect();
            by_age.sort_unstable();
            for (_, pid) in by_age.into_iter().take(exited.len() - MAX_EXITED) {
                procs.remove(&pid);
            }
        }
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        self.lock().values().map(|p| p.info(false)).collect()
    }

    /// Pids of background processes still running.
    pub fn running(&self) -> Vec<u32> {
        self.lock()
            .values()
            .filter(|p| p.exit.borrow().is_none())
            .map(|p| p.pid)
            .collect()
    }

    /// Signals a running background process's group, or any other pid directly.
    pub fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        let sig = Signal::try_from(signal)
            .map_err(|_| AgentError::invalid(format!("unknown signal number {signal}")))?;
        let pid_i32 = i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| AgentError::invalid(format!("invalid pid {pid}")))?;
        let tracked_running = self.lock().get(&pid).map(|p| p.exit.borrow().is_none());
        match tracked_running {
            Some(true) => {
                signal_group(pid, sig);
                Ok(())
            }
            Some(false) => Err(AgentError::new(
                ErrorCode::NotFound,
                format!("process {pid} has already exited"),
            )),
            None => kill(Pid::from_raw(pid_i32), sig).map_err(|e| match e {
                nix::errno::Errno::ESRCH => AgentError::not_found(format!("no process {pid}")),
                nix::errno::Errno::EPERM => AgentError::new(
                    ErrorCode::PermissionDenied,
                    format!("not allowed to signal {pid}"),
                ),
                e => AgentError::internal(format!("kill({pid}, {sig}): {e}")),
            }),
        }
    }

    /// Waits for exit (or the timeout) and returns the info with captured output.
    pub async fn wait(&self, pid: u32, timeout: Option<Duration>) -> Result<ProcessInfo> {
        let proc = self.get(pid)?;
        let mut rx = proc.exit.clone();
        let ended = async {
            // Err only if the collecting task is gone, which ends the wait too.
            let _ = rx.wait_for(Option::is_some).await;
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, ended).await;
            }
            None => ended.await,
        }
        Ok(proc.info(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_bytes() {
        let mut r = Ring::new(4);
        r.push(b"ab");
        r.push(b"cde");
        assert_eq!(&r.snapshot()[..], b"bcde");
        assert_eq!(r.dropped, 1);
        r.push(b"0123456789");
        assert_eq!(&r.snapshot()[..], b"6789");
        assert_eq!(r.dropped, 11);
    }
}
