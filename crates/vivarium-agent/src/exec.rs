//! Buffered and streaming exec: request handlers attached to a process of the
//! [`ProcessTable`](crate::procs::ProcessTable), which drives the process itself. Dropping a
//! handler detaches its process (see [`Attached`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vivarium_proto::{ExecDone, ExecSpec, Frame, Request, Response, DEFAULT_OUTPUT_LIMIT};

use crate::error::{AgentError, Result};
use crate::process::Spawner;
use crate::procs::{Attach, Attached, Input, ProcessTable, Which};

pub use crate::procs::{Capped, DRAIN_GRACE};

/// Output chunks queued between a streaming exec's collectors and its handler.
const FORWARD_QUEUE: usize = 8;

/// Runs a process to completion with buffered output. Returns the answer and the process's
/// [`Attached`] link: call [`Attached::answered`] once the answer is queued. Dropping the future
/// (or the link) detaches the process; cancelling `cancel` first makes that a kill.
pub async fn run_buffered(
    table: &Arc<ProcessTable>,
    spawner: &Spawner,
    spec: ExecSpec,
    stdin: Bytes,
    cancel: CancellationToken,
) -> Result<(ExecDone, Bytes, Attached)> {
    let start = Instant::now();
    let limit = spec.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT);
    let (proc, _) = table.start(
        spawner,
        &spec,
        Input::Bytes(stdin),
        Attach::Capture { limit },
    )?;
    let attached = Attached::new(Arc::clone(table), proc, cancel);
    let status = attached.proc().exited().await;
    let (out, err) = attached.proc().take_capture();
    let done = ExecDone {
        status,
        duration_ms: start.elapsed().as_millis() as u64,
        stdout_len: out.data.len() as u64,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
    };
    let mut payload: BytesMut = out.data;
    payload.extend_from_slice(&err.data);
    Ok((done, payload.freeze(), attached))
}

/// Runs a process and streams its events as frames on `stream`. Follow-up frames (stdin) arrive
/// on `follow`. Returns after `Exited` was queued, or with an error before the process started.
/// Dropping the future detaches the process (its stdin is closed); cancelling `cancel` first
/// makes that a kill.
#[allow(clippy::too_many_arguments)]
pub async fn run_streaming(
    table: &Arc<ProcessTable>,
    spawner: &Spawner,
    stream: u64,
    spec: ExecSpec,
    first_stdin: Bytes,
    mut follow: mpsc::Receiver<(Request, Bytes)>,
    out: mpsc::Sender<Frame<Response>>,
    cancel: CancellationToken,
) -> Result<()> {
    let (fwd_tx, mut fwd_rx) = mpsc::channel::<(Which, Bytes)>(FORWARD_QUEUE);
    let (proc, stdin) = table.start(spawner, &spec, Input::Pipe, Attach::Forward(fwd_tx))?;
    let attached = Attached::new(Arc::clone(table), proc, cancel);
    let proc = Arc::clone(attached.proc());
    let closed = || AgentError::internal("connection closed");
    out.send(Frame::new(stream, Response::Started { pid: proc.pid }))
        .await
        .map_err(|_| closed())?;

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
                _ = proc.exited() => return,
            }
        }
    };
    // Owns the receiver: if the connection's writer is gone, returning drops it and the
    // collectors switch to the ring buffers (detached) instead of waiting on a full channel.
    let out_ref = &out;
    let forward = async move {
        while let Some((which, chunk)) = fwd_rx.recv().await {
            let msg = match which {
                Which::Stdout => Response::Stdout,
                Which::Stderr => Response::Stderr,
            };
            if out_ref
                .send(Frame::with_payload(stream, msg, chunk))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::join!(stdin_task, forward);
    let status = proc.exited().await;
    out.send(Frame::new(stream, Response::Exited(status)))
        .await
        .map_err(|_| closed())?;
    attached.answered();
    Ok(())
}
