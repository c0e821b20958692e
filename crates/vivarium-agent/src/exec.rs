//! Buffered and streaming exec.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vivarium_proto::{
    ExecDone, ExecSpec, ExitStatus, Frame, Request, Response, DEFAULT_OUTPUT_LIMIT, STREAM_CHUNK,
};

use crate::error::{AgentError, Result};
use crate::process::{
    read_chunk, signal_group, GroupGuard, OutputMode, Spawned, Spawner, StdinMode,
};

/// How long output is still collected after the process exited, when a descendant that left the
/// process group (daemonized) keeps the pipes open. Normally the pipes hit EOF at exit.
pub const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Output captured up to a limit; the rest is read and counted, so the child never blocks.
pub struct Capped {
    pub data: BytesMut,
    pub limit: usize,
    pub truncated: bool,
}

impl Capped {
    pub fn new(limit: u64) -> Self {
        Capped {
            data: BytesMut::new(),
            limit: usize::try_from(limit.min(DEFAULT_OUTPUT_LIMIT)).unwrap_or(usize::MAX),
            truncated: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        let room = self.limit.saturating_sub(self.data.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// Resolves when `exited` is cancelled and the drain grace has passed.
async fn drain_deadline(exited: &CancellationToken) {
    exited.cancelled().await;
    tokio::time::sleep(DRAIN_GRACE).await;
}

/// Feeds every chunk read from `pipe` to `sink` until EOF, a read error, or the drain deadline.
async fn pump<F, Fut>(pipe: Option<pipe::Receiver>, exited: &CancellationToken, mut sink: F)
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(mut pipe) = pipe else { return };
    loop {
        tokio::select! {
            r = read_chunk(&mut pipe, STREAM_CHUNK) => match r {
                Ok(Some(chunk)) => sink(chunk).await,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "reading child output");
                    return;
                }
            },
            _ = drain_deadline(exited) => return,
        }
    }
}

/// Waits for the exit status, killing the group at the deadline or on cancellation.
async fn wait_exit(
    spawned_exit: crate::reaper::ExitReceiver,
    pgid: u32,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    guard: &mut GroupGuard,
) -> ExitStatus {
    let mut exit = spawned_exit;
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let mut timed_out = false;
    tokio::select! {
        r = &mut exit => {
            guard.disarm();
            return r.unwrap_or_else(|_| lost_status());
        }
        _ = deadline => {
            timed_out = true;
            tracing::debug!(pgid, "exec timed out, killing its process group");
        }
        _ = cancel.cancelled() => {
            tracing::debug!(pgid, "exec cancelled, killing its process group");
        }
    }
    signal_group(pgid, Signal::SIGKILL);
    let mut status = exit.await.unwrap_or_else(|_| lost_status());
    guard.disarm();
    status.timed_out = timed_out;
    status
}

fn lost_status() -> ExitStatus {
    // Only possible if the reaper task died; report it rather than hang.
    tracing::error!("exit status lost: reaper gone");
    ExitStatus::default()
}

async fn feed_stdin(stdin: Option<pipe::Sender>, data: Bytes) {
    if let Some(mut stdin) = stdin {
        if let Err(e) = stdin.write_all(&data).await {
            // EPIPE: the process does not read its stdin; not an error of the exec.
            tracing::debug!(error = %e, "writing exec stdin");
        }
    }
}

/// Runs a process to completion with buffered output. Dropping the future kills the group.
pub async fn run_buffered(
    spawner: &Spawner,
    spec: ExecSpec,
    stdin: Bytes,
    cancel: CancellationToken,
) -> Result<(ExecDone, Bytes)> {
    let start = Instant::now();
    let stdin_mode = if stdin.is_empty() {
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
    } = spawner.spawn(&spec, stdin_mode, OutputMode::Pipe)?;
    let mut guard = GroupGuard::new(pid);
    let limit = spec.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT);
    let mut out = Capped::new(limit);
    let mut err = Capped::new(limit);
    let exited = CancellationToken::new();
    let timeout = spec.timeout_ms.map(Duration::from_millis);

    let (status, (), (), ()) = tokio::join!(
        async {
            let s = wait_exit(exit, pid, timeout, &cancel, &mut guard).await;
            exited.cancel();
            s
        },
        feed_stdin(child_stdin, stdin),
        pump(stdout, &exited, |c| {
            out.push(&c);
            std::future::ready(())
        }),
        pump(stderr, &exited, |c| {
            err.push(&c);
            std::future::ready(())
        }),
    );

    let done = ExecDone {
        status,
        duration_ms: start.elapsed().as_millis() as u64,
        stdout_len: out.data.len() as u64,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
    };
    let mut payload = out.data;
    payload.extend_from_slice(&err.data);
    Ok((done, payload.freeze()))
}

/// Runs a process and streams its events as frames on `stream`. Follow-up frames (stdin) arrive
/// on `follow`. Returns after `Exited` was queued, or with an error before the process started.
pub async fn run_streaming(
    spawner: &Spawner,
    stream: u64,
    spec: ExecSpec,
    first_stdin: Bytes,
    mut follow: mpsc::Receiver<(Request, Bytes)>,
    out: mpsc::Sender<Frame<Response>>,
    cancel: CancellationToken,
) -> Result<()> {
    let Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        exit,
    } = spawner.spawn(&spec, StdinMode::Pipe, OutputMode::Pipe)?;
    let mut guard = GroupGuard::new(pid);
    out.send(Frame::new(stream, Response::Started { pid }))
        .await
        .map_err(|_| AgentError::internal("connection closed"))?;
    let exited = CancellationToken::new();
    let timeout = spec.timeout_ms.map(Duration::from_millis);

    let stdin_task = async {
        let Some(mut stdin) = stdin else { return };
        if !first_stdin.is_empty() && stdin.write_all(&first_stdin).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                msg = follow.recv() => match msg {
                    Some((Request::StdinData, data)) => {
                        if let Err(e) = stdin.write_all(&data).await {
                            tracing::debug!(error = %e, "writing exec stdin");
                            return;
                        }
                    }
                    // StdinClose, or the connection is gone: close stdin.
                    Some((Request::StdinClose, _)) | None => return,
                    Some((other, _)) => {
                        tracing::debug!(msg = other.name(), "ignoring frame on an exec stream");
                    }
                },
                // Stop waiting for stdin once the process is gone.
                _ = exited.cancelled() => return,
            }
        }
    };
    // Sending waits when the connection's queue is full, which back-pressures the child
    // through its pipe.
    let send_out = |msg: fn() -> Response| {
        let out = out.clone();
        move |chunk: Bytes| {
            let out = out.clone();
            async move {
                let _ = out.send(Frame::with_payload(stream, msg(), chunk)).await;
            }
        }
    };
    let (status, (), (), ()) = tokio::join!(
        async {
            let s = wait_exit(exit, pid, timeout, &cancel, &mut guard).await;
            exited.cancel();
            s
        },
        stdin_task,
        pump(stdout, &exited, send_out(|| Response::Stdout)),
        pump(stderr, &exited, send_out(|| Response::Stderr)),
    );
    let _ = out.send(Frame::new(stream, Response::Exited(status))).await;
    Ok(())
}
