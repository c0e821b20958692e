//! The process table: every process the agent runs for a request (background processes, buffered
//! and streaming execs) is started here, listed by pid, signalled and waited for.
//!
//! Each process is driven by its own task (feeds stdin, collects output, enforces the timeout,
//! records the exit status), never by the connection that asked for it. A foreground exec is
//! *attached* to its request handler ([`Attached`]): output is captured for the answer (buffered)
//! or forwarded as frames (streaming). When the handler goes away before answering — the
//! connection dropped because the runner died — the process is *detached*: it keeps running and
//! its output goes into the same bounded ring buffers as a background process's, so its status
//! and output stay fetchable with `list`/`wait`. Only an explicit cancel (the `Cancel` frame), the
//! exec's timeout or a signal kill it. An exec whose answer was sent is forgotten.
//!
//! Memory: at most [`RING_CAPACITY`] bytes per stream per detached or background process,
//! at most [`MAX_EXITED`] exited processes and [`MAX_EXITED_OUTPUT`] bytes of their output; an
//! attached buffered exec holds at most its `output_limit` per stream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use vivarium_proto::{ErrorCode, ExecSpec, ExitStatus, ProcessInfo, DEFAULT_OUTPUT_LIMIT};

use crate::error::{AgentError, Result};
use crate::process::{read_chunk, signal_group, OutputMode, Spawned, Spawner, StdinMode};
use crate::reaper::ExitReceiver;

/// Bytes of output kept per stream of a background or detached process (the most recent ones).
pub const RING_CAPACITY: usize = vivarium_proto::PROCESS_OUTPUT_CAP;

/// Exited processes kept for `list`/`wait` before the oldest are forgotten.
pub const MAX_EXITED: usize = 256;

/// Output kept by exited processes altogether before the oldest are forgotten.
pub const MAX_EXITED_OUTPUT: usize = 64 * 1024 * 1024;

/// How long output is still collected after the process exited, when a descendant that left the
/// process group (daemonized) keeps the pipes open. Normally the pipes hit EOF at exit.
pub const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Largest chunk read from a child's pipe at once.
const READ_CHUNK: usize = vivarium_proto::STREAM_CHUNK;

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

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn snapshot(&self) -> Bytes {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        Bytes::from(v)
    }

    /// A ring holding the tail of what `c` captured; everything else counts as dropped.
    fn from_capped(c: &Capped) -> Ring {
        let mut r = Ring::new(RING_CAPACITY);
        r.push(&c.data);
        r.dropped += c.seen - c.data.len() as u64;
        r
    }
}

/// Output captured up to a limit (the first bytes); the rest is read and counted, so the child
/// never blocks.
pub struct Capped {
    pub data: BytesMut,
    pub limit: usize,
    pub truncated: bool,
    /// Bytes pushed, kept or not.
    pub seen: u64,
}

impl Capped {
    pub fn new(limit: u64) -> Self {
        Capped {
            data: BytesMut::new(),
            limit: usize::try_from(limit.min(DEFAULT_OUTPUT_LIMIT)).unwrap_or(usize::MAX),
            truncated: false,
            seen: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        let room = self.limit.saturating_sub(self.data.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Stdout,
    Stderr,
}

/// Where a process's output goes.
enum Sink {
    /// Captured for the answer of an attached buffered exec.
    Capture { out: Capped, err: Capped },
    /// Forwarded to an attached streaming exec (the collectors send the chunks on a channel).
    Forward,
    /// Kept in ring buffers: background processes, and execs detached from their connection.
    Ring { stdout: Ring, stderr: Ring },
}

impl Sink {
    fn rings() -> Sink {
        Sink::Ring {
            stdout: Ring::new(RING_CAPACITY),
            stderr: Ring::new(RING_CAPACITY),
        }
    }

    /// Switches to ring buffers (idempotent), keeping the tail of anything captured.
    fn detach(&mut self) {
        match self {
            Sink::Ring { .. } => {}
            Sink::Forward => *self = Sink::rings(),
            Sink::Capture { out, err } => {
                *self = Sink::Ring {
                    stdout: Ring::from_capped(out),
                    stderr: Ring::from_capped(err),
                }
            }
        }
    }

    fn push(&mut self, which: Which, chunk: &[u8]) {
        if let Sink::Forward = self {
            // Only reached when a forwarding collector lost its receiver.
            self.detach();
        }
        match (self, which) {
            (Sink::Capture { out, .. }, Which::Stdout) => out.push(chunk),
            (Sink::Capture { err, .. }, Which::Stderr) => err.push(chunk),
            (Sink::Ring { stdout, .. }, Which::Stdout) => stdout.push(chunk),
            (Sink::Ring { stderr, .. }, Which::Stderr) => stderr.push(chunk),
            (Sink::Forward, _) => unreachable!("detached above"),
        }
    }

    fn kept(&self) -> usize {
        match self {
            Sink::Capture { out, err } => out.data.len() + err.data.len(),
            Sink::Forward => 0,
            Sink::Ring { stdout, stderr } => stdout.len() + stderr.len(),
        }
    }
}

/// One process of the table.
pub struct Proc {
    pub pid: u32,
    argv: Vec<String>,
    started_at_ms: u64,
    sink: Mutex<Sink>,
    /// `Some` once the process has exited and its output is drained.
    exit: watch::Receiver<Option<ExitStatus>>,
    /// The leader has been reaped: its pid (and so its process group id) may be reused, never
    /// signal it from here on.
    reaped: AtomicBool,
}

impl Proc {
    fn sink(&self) -> MutexGuard<'_, Sink> {
        // Whole-value updates only: a panic elsewhere cannot leave the sink half-written.
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self, with_output: bool) -> ProcessInfo {
        let exit = *self.exit.borrow();
        let sink = self.sink();
        let (stdout, stderr, stdout_dropped, stderr_dropped) = match &*sink {
            Sink::Ring { stdout, stderr } => (
                with_output.then(|| stdout.snapshot()),
                with_output.then(|| stderr.snapshot()),
                stdout.dropped,
                stderr.dropped,
            ),
            Sink::Capture { out, err } => (
                with_output.then(|| Bytes::copy_from_slice(&out.data)),
                with_output.then(|| Bytes::copy_from_slice(&err.data)),
                out.seen - out.data.len() as u64,
                err.seen - err.data.len() as u64,
            ),
            // Delivered to the attached stream as it came.
            Sink::Forward => (None, None, 0, 0),
        };
        ProcessInfo {
            pid: self.pid,
            argv: self.argv.clone(),
            started_at_ms: self.started_at_ms,
            running: exit.is_none(),
            exit,
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
            stdout_dropped,
            stderr_dropped,
        }
    }

    fn is_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Its output goes to the ring buffers from now on.
    pub fn detach(&self) {
        self.sink().detach();
    }

    /// Waits until the process has exited and its output is drained.
    pub async fn exited(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(s) => *s,
            // The driving task is gone without a status; only if it panicked.
            Err(_) => None,
        };
        status.unwrap_or_else(lost_status)
    }

    /// The output captured for an attached buffered exec. The ring buffers keep its tail, so the
    /// output is still there if the answer cannot be delivered.
    pub fn take_capture(&self) -> (Capped, Capped) {
        let mut sink = self.sink();
        match std::mem::replace(&mut *sink, Sink::rings()) {
            Sink::Capture { out, err } => {
                *sink = Sink::Ring {
                    stdout: Ring::from_capped(&out),
                    stderr: Ring::from_capped(&err),
                };
                (out, err)
            }
            other => {
                *sink = other;
                (Capped::new(0), Capped::new(0))
            }
        }
    }

    /// Signals the process group unless its leader has been reaped.
    pub fn signal_group(&self, sig: Signal) -> bool {
        if self.reaped.load(Ordering::SeqCst) {
            return false;
        }
        signal_group(self.pid, sig);
        true
    }
}

fn lost_status() -> ExitStatus {
    tracing::error!("exit status lost: the process's task or the reaper is gone");
    ExitStatus::default()
}

/// How a started process's output is consumed.
pub enum Attach {
    /// Nobody waits: ring buffers from the start.
    Background,
    /// An attached buffered exec: captured up to `limit` bytes per stream.
    Capture { limit: u64 },
    /// An attached streaming exec: chunks are sent on the channel while it is open.
    Forward(mpsc::Sender<(Which, Bytes)>),
}

/// Where a started process's stdin comes from.
pub enum Input {
    /// These bytes, then EOF (no bytes: EOF at once).
    Bytes(Bytes),
    /// A pipe handed back to the caller.
    Pipe,
}

/// The table of processes.
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

    /// Starts a process, registers it and starts the task that drives it to its end. Returns the
    /// process and, for [`Input::Pipe`], its stdin.
    pub fn start(
        self: &Arc<Self>,
        spawner: &Spawner,
        spec: &ExecSpec,
        input: Input,
        attach: Attach,
    ) -> Result<(Arc<Proc>, Option<pipe::Sender>)> {
        let (stdin_mode, stdin_bytes) = match input {
            Input::Bytes(b) if b.is_empty() => (StdinMode::Null, None),
            Input::Bytes(b) => (StdinMode::Pipe, Some(b)),
            Input::Pipe => (StdinMode::Pipe, None),
        };
        let Spawned {
            pid,
            stdin,
            stdout,
            stderr,
            exit,
        } = spawner.spawn(spec, stdin_mode, OutputMode::Pipe)?;
        let (sink, forward) = match attach {
            Attach::Background => (Sink::rings(), None),
            Attach::Capture { limit } => (
                Sink::Capture {
                    out: Capped::new(limit),
                    err: Capped::new(limit),
                },
                None,
            ),
            Attach::Forward(tx) => (Sink::Forward, Some(tx)),
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        let proc = Arc::new(Proc {
            pid,
            argv: spec.argv.clone(),
            started_at_ms: now_ms(),
            sink: Mutex::new(sink),
            exit: exit_rx,
            reaped: AtomicBool::new(false),
        });
        // A stale entry under a reused pid (long exited) is replaced.
        self.lock().insert(pid, Arc::clone(&proc));
        self.prune();

        let (stdin, returned_stdin) = match stdin_bytes {
            Some(b) => (stdin.map(|s| (s, b)), None),
            None => (None, stdin),
        };
        let timeout = spec.timeout_ms.map(Duration::from_millis);
        let p = Arc::clone(&proc);
        let table = Arc::clone(self);
        tokio::spawn(async move {
            let exited = CancellationToken::new();
            let reaped = {
                let p = Arc::clone(&p);
                move || p.reaped.store(true, Ordering::SeqCst)
            };
            let wait = async {
                let status = wait_exit(exit, pid, timeout, reaped).await;
                exited.cancel();
                status
            };
            let feed = async move {
                if let Some((mut pipe, data)) = stdin {
                    if let Err(e) = pipe.write_all(&data).await {
                        // EPIPE: the process does not read its stdin; not an error of the exec.
                        tracing::debug!(pid, error = %e, "writing stdin");
                    }
                }
            };
            let (status, (), (), ()) = tokio::join!(
                wait,
                feed,
                collect(&p, stdout, Which::Stdout, forward.clone(), &exited),
                collect(&p, stderr, Which::Stderr, forward, &exited),
            );
            tracing::debug!(pid, ?status, "process ended");
            let _ = exit_tx.send(Some(status));
            table.prune();
        });
        Ok((proc, returned_stdin))
    }

    /// Starts a background process; its output goes to ring buffers.
    pub fn spawn(
        self: &Arc<Self>,
        spawner: &Spawner,
        spec: ExecSpec,
        stdin: Bytes,
    ) -> Result<ProcessInfo> {
        let (proc, _) = self.start(spawner, &spec, Input::Bytes(stdin), Attach::Background)?;
        Ok(proc.info(false))
    }

    /// Forgets `proc` (an answered exec), unless its pid now names another process.
    pub fn forget(&self, proc: &Arc<Proc>) {
        let mut procs = self.lock();
        if procs.get(&proc.pid).is_some_and(|p| Arc::ptr_eq(p, proc)) {
            procs.remove(&proc.pid);
        }
    }

    /// Forgets the oldest exited processes beyond [`MAX_EXITED`] or [`MAX_EXITED_OUTPUT`].
    fn prune(&self) {
        let mut procs = self.lock();
        let mut exited: Vec<(u64, u32, usize)> = procs
            .values()
            .filter(|p| p.is_exited())
            .map(|p| (p.started_at_ms, p.pid, p.sink().kept()))
            .collect();
        // Newest first: keep those while both budgets allow.
        exited.sort_unstable_by(|a, b| b.cmp(a));
        let mut bytes = 0usize;
        for (n, (_, pid, kept)) in exited.into_iter().enumerate() {
            bytes = bytes.saturating_add(kept);
            if n >= MAX_EXITED || bytes > MAX_EXITED_OUTPUT {
                procs.remove(&pid);
            }
        }
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        self.lock().values().map(|p| p.info(false)).collect()
    }

    /// Pids of processes still running.
    pub fn running(&self) -> Vec<u32> {
        self.lock()
            .values()
            .filter(|p| !p.is_exited())
            .map(|p| p.pid)
            .collect()
    }

    /// Signals a running process's group, or any other pid directly.
    pub fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        let sig = Signal::try_from(signal)
            .map_err(|_| AgentError::invalid(format!("unknown signal number {signal}")))?;
        let pid_i32 = i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| AgentError::invalid(format!("invalid pid {pid}")))?;
        let tracked = self.lock().get(&pid).cloned();
        match tracked {
            Some(p) if p.signal_group(sig) => Ok(()),
            Some(_) => Err(AgentError::new(
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
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, proc.exited()).await;
            }
            None => {
                proc.exited().await;
            }
        }
        Ok(proc.info(true))
    }
}

/// How long a process killed at its timeout may take to be reaped before its status is reported
/// anyway (`signal: 9`): a fork bomb can starve a killed process of the CPU it needs to exit.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Waits for the exit status, killing the group when the timeout passes. `reaped` is set once
/// the leader has been reaped (possibly after this returns, see [`KILL_GRACE`]).
async fn wait_exit(
    mut exit: ExitReceiver,
    pgid: u32,
    timeout: Option<Duration>,
    reaped: impl FnOnce() + Send + 'static,
) -> ExitStatus {
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = &mut exit => {
            reaped();
            return r.unwrap_or_else(|_| lost_status());
        }
        _ = deadline => tracing::debug!(pgid, "timed out, killing the process group"),
    }
    signal_group(pgid, Signal::SIGKILL);
    let mut status = match tokio::time::timeout(KILL_GRACE, &mut exit).await {
        Ok(r) => {
            reaped();
            r.unwrap_or_else(|_| lost_status())
        }
        Err(_) => {
            tracing::warn!(pgid, "killed process not reaped yet; reporting it killed");
            tokio::spawn(async move {
                let _ = exit.await;
                reaped();
            });
            ExitStatus {
                exit_code: None,
                signal: Some(libc::SIGKILL),
                timed_out: true,
            }
        }
    };
    status.timed_out = true;
    status
}

/// Reads `pipe` until EOF, a read error, or [`DRAIN_GRACE`] after the exit, delivering each chunk
/// to `forward` while it is open and to the process's sink otherwise.
async fn collect(
    proc: &Proc,
    pipe: Option<pipe::Receiver>,
    which: Which,
    mut forward: Option<mpsc::Sender<(Which, Bytes)>>,
    exited: &CancellationToken,
) {
    let Some(mut pipe) = pipe else { return };
    let drain = async {
        exited.cancelled().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::pin!(drain);
    loop {
        // `biased`: output already in the pipe is always read before the drain deadline counts.
        // Unbiased, a reader polled late (a starved CPU, e.g. under a fork bomb) found both ready
        // and could drop the output of a process that had written and exited.
        let chunk = tokio::select! {
            biased;
            r = read_chunk(&mut pipe, READ_CHUNK) => match r {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(pid = proc.pid, error = %e, "reading child output");
                    return;
                }
            },
            _ = &mut drain => return,
        };
        if let Some(tx) = &forward {
            // Waiting here back-pressures the child through its pipe when the connection is slow.
            match tx.send((which, chunk)).await {
                Ok(()) => continue,
                Err(mpsc::error::SendError((_, chunk))) => {
                    // The streaming handler is gone: detached.
                    forward = None;
                    proc.detach();
                    proc.sink().push(which, &chunk);
                }
            }
        } else {
            proc.sink().push(which, &chunk);
        }
    }
}

/// A foreground exec's link to its request handler. Dropped before [`Attached::answered`] (the
/// connection went away, the handler failed, or the request was cancelled), it detaches the
/// process; if the request was explicitly cancelled, it kills the process group first.
pub struct Attached {
    table: Arc<ProcessTable>,
    proc: Arc<Proc>,
    cancel: CancellationToken,
    answered: bool,
}

impl Attached {
    /// `cancel` is cancelled only by an explicit cancel of the request.
    pub fn new(table: Arc<ProcessTable>, proc: Arc<Proc>, cancel: CancellationToken) -> Self {
        Attached {
            table,
            proc,
            cancel,
            answered: false,
        }
    }

    pub fn proc(&self) -> &Arc<Proc> {
        &self.proc
    }

    /// The final answer was handed to the connection: forget the process.
    pub fn answered(mut self) {
        self.answered = true;
        self.table.forget(&self.proc);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let pid = self.proc.pid;
        if self.cancel.is_cancelled() {
            tracing::debug!(pid, "exec cancelled, killing its process group");
            self.proc.signal_group(Signal::SIGKILL);
        } else if !self.proc.is_exited() {
            tracing::info!(
                pid,
                "exec connection dropped: process detached, see list_processes"
            );
        }
        self.proc.detach();
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

    #[test]
    fn detaching_a_capture_keeps_its_tail_and_counts_the_rest() {
        let mut out = Capped::new(8);
        out.push(b"0123456789");
        assert!(out.truncated);
        let mut sink = Sink::Capture {
            out,
            err: Capped::new(8),
        };
        sink.detach();
        sink.push(Which::Stdout, b"ab");
        match &sink {
            Sink::Ring { stdout, stderr } => {
                assert_eq!(&stdout.snapshot()[..], b"01234567ab");
                assert_eq!(stdout.dropped, 2);
                assert!(stderr.is_empty());
            }
            _ => panic!("not detached"),
        }
        // Idempotent.
        sink.detach();
        assert_eq!(sink.kept(), 10);
    }
}
