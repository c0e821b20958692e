//! Serving the protocol on a listening socket.
//!
//! Each connection is handled as a multiplexed transport: frames carry a stream id, each new
//! request starts a task for its stream, and follow-up frames (stdin, upload chunks, cancel) are
//! routed to that task. The runner opens one connection per request today; the same loop will
//! serve a single virtio-serial port in a microVM. When a connection ends, every operation still
//! running on it is abandoned (an upload is dropped, a wait stops waiting) except execs: their
//! processes are detached and keep running (see [`crate::procs`]). A `Cancel` frame abandons one
//! operation and kills an exec's process group. No process is ever tied to a connection.
//!
//! Every request gets exactly one final answer: a handler's error becomes an error frame, and so
//! does a panic in a handler (caught; the agent goes on serving).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use vivarium_proto::{
    AgentInfo, ErrorCode, Frame, FrameCodec, Rejected, Request, Response, PROTOCOL_VERSION,
};

use crate::desktop::DesktopService;
use crate::error::{AgentError, Result};
use crate::exec;
use crate::files;
use crate::process::Spawner;
use crate::procs::ProcessTable;

/// Shared state of the agent.
pub struct Agent {
    pub spawner: Spawner,
    pub procs: Arc<ProcessTable>,
    pub started: Instant,
    /// The desktop session, when the agent runs with `--desktop`.
    pub desktop: Option<Arc<DesktopService>>,
}

/// Frames queued per connection towards the writer.
const OUT_QUEUE: usize = 32;
/// Follow-up frames queued per stream (stdin, upload chunks).
const FOLLOW_QUEUE: usize = 16;

struct StreamEntry {
    follow: Option<mpsc::Sender<(Request, Bytes)>>,
    /// Cancelled by an explicit `Cancel` frame only (a closed connection is not a cancel).
    cancel: CancellationToken,
}

type Streams = Arc<Mutex<HashMap<u64, StreamEntry>>>;

fn lock(streams: &Streams) -> MutexGuard<'_, HashMap<u64, StreamEntry>> {
    streams.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let agent = Arc::clone(&agent);
                    tokio::spawn(handle_connection(stream, agent));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // EMFILE and friends: don't spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one transport (a Unix socket connection, or any byte stream) until it closes.
pub async fn handle_connection<T>(io: T, agent: Arc<Agent>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut sink, mut source) = Framed::new(io, FrameCodec::<Request, Response>::new()).split();
    let (tx, mut rx) = mpsc::channel::<Frame<Response>>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = sink.feed(frame).await {
                tracing::debug!(error = %e, "writing to connection");
                return;
            }
            // Batch whatever is already queued into one flush.
            while let Ok(frame) = rx.try_recv() {
                if let Err(e) = sink.feed(frame).await {
                    tracing::debug!(error = %e, "writing to connection");
                    return;
                }
            }
            if let Err(e) = sink.flush().await {
                tracing::debug!(error = %e, "flushing connection");
                return;
            }
        }
    });

    // Cancelled when the connection ends: its operations are abandoned, its execs detached.
    let conn_closed = CancellationToken::new();
    let streams: Streams = Arc::default();
    while let Some(item) = source.next().await {
        let frame = match item {
            Ok(Ok(frame)) => frame,
            Ok(Err(rejected)) => {
                tracing::warn!(error = %rejected, "rejected frame");
                let code = match rejected {
                    Rejected::VersionMismatch { .. } => ErrorCode::VersionMismatch,
                    Rejected::Malformed { .. } => ErrorCode::InvalidArgument,
                };
                let reply = Frame::new(
                    rejected.stream().unwrap_or(0),
                    Response::error(code, rejected.to_string()),
                );
                if tx.send(reply).await.is_err() {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection read failed");
                break;
            }
        };
        dispatch(frame, &agent, &streams, &tx, &conn_closed).await;
    }
    // The peer is gone: abandon everything that was running for it (execs are detached).
    conn_closed.cancel();
    drop(tx);
    let _ = writer.await;
}

async fn dispatch(
    frame: Frame<Request>,
    agent: &Arc<Agent>,
    streams: &Streams,
    tx: &mpsc::Sender<Frame<Response>>,
    conn_closed: &CancellationToken,
) {
    let Frame {
        stream,
        msg,
        payload,
    } = frame;
    match msg {
        Request::StdinData | Request::StdinClose | Request::WriteChunk | Request::WriteEnd => {
            let follow = lock(streams).get(&stream).and_then(|e| e.follow.clone());
            match follow {
                // Waiting here back-pressures the transport when the operation is slow (a child
                // not reading its stdin); on a multiplexed transport that also delays other
                // streams, which is the price of not buffering unboundedly.
                Some(f) => {
                    let _ = f.send((msg, payload)).await;
                }
                None => tracing::debug!(stream, msg = msg.name(), "follow-up for no open stream"),
            }
        }
        Request::Cancel => {
            if let Some(e) = lock(streams).remove(&stream) {
                e.cancel.cancel();
            }
        }
        request => {
            let cancel = CancellationToken::new();
            let (follow_tx, follow_rx) = match request {
                Request::ExecStream(_) | Request::WriteFileStream { .. } => {
                    let (t, r) = mpsc::channel(FOLLOW_QUEUE);
                    (Some(t), Some(r))
                }
                _ => (None, None),
            };
            let in_use = {
                let mut map = lock(streams);
                let in_use = map.contains_key(&stream);
                if !in_use {
                    map.insert(
                        stream,
                        StreamEntry {
                            follow: follow_tx,
                            cancel: cancel.clone(),
                        },
                    );
                }
                in_use
            };
            if in_use {
                let _ = tx
                    .send(Frame::new(
                        stream,
                        Response::error(
                            ErrorCode::InvalidArgument,
                            format!("stream {stream} is already in use"),
                        ),
                    ))
                    .await;
                return;
            }
            let agent = Arc::clone(agent);
            let tx = tx.clone();
            let streams = Arc::clone(streams);
            let conn_closed = conn_closed.clone();
            tokio::spawn(async move {
                let name = request.name();
                let run = catch_panic(
                    name,
                    handle_request(&agent, stream, request, payload, follow_rx, &tx, &cancel),
                );
                // Dropping `run` drops what it holds: a PendingWrite removes the partial upload;
                // an exec's Attached detaches its process, or kills it if `cancel` fired.
                let outcome = tokio::select! {
                    r = run => Some(r),
                    _ = cancel.cancelled() => None,
                    _ = conn_closed.cancelled() => None,
                };
                lock(&streams).remove(&stream);
                match outcome {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        tracing::debug!(stream, request = name, error = %e, "request failed");
                        let _ = tx.send(Frame::new(stream, e.into_response())).await;
                    }
                    None => tracing::debug!(stream, request = name, "request abandoned"),
                }
            });
        }
    }
}

/// Runs a request handler, turning a panic inside it into an internal error (logged), so the
/// request is still answered and the agent keeps serving.
async fn catch_panic(
    name: &'static str,
    run: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(request = name, panic = %what, "request handler panicked");
            Err(AgentError::internal(format!(
                "the agent failed while handling {name}: {what}"
            )))
        }
    }
}

/// Carries out one request, sending its answer frames on `tx`. An `Err` is sent by the caller.
async fn handle_request(
    agent: &Agent,
    stream: u64,
    request: Request,
    payload: Bytes,
    follow: Option<mpsc::Receiver<(Request, Bytes)>>,
    tx: &mpsc::Sender<Frame<Response>>,
    cancel: &CancellationToken,
) -> Result<()> {
    let reply = |msg: Response| Frame::new(stream, msg);
    let frame = match request {
        Request::Info => reply(Response::Info(AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_ms: agent.started.elapsed().as_millis() as u64,
        })),
        Request::Exec(spec) => {
            let (done, output, attached) =
                exec::run_buffered(&agent.procs, &agent.spawner, spec, payload, cancel.clone())
                    .await?;
            tx.send(Frame::with_payload(
                stream,
                Response::ExecDone(done),
                output,
            ))
            .await
            .map_err(|_| AgentError::internal("connection closed"))?;
            attached.answered();
            return Ok(());
        }
        Request::ExecStream(spec) => {
            let follow = follow.ok_or_else(|| AgentError::internal("no follow channel"))?;
            return exec::run_streaming(
                &agent.procs,
                &agent.spawner,
                stream,
                spec,
                payload,
                follow,
                tx.clone(),
                cancel.clone(),
            )
            .await;
        }
        Request::Spawn(spec) => {
            let process = agent.procs.spawn(&agent.spawner, spec, payload)?;
            reply(Response::Process {
                process,
                stdout_len: 0,
            })
        }
        Request::ListProcesses => reply(Response::Processes {
            processes: agent.procs.list(),
        }),
        Request::Signal { pid, signal } => {
            agent.procs.signal(pid, signal)?;
            reply(Response::Ok)
        }
        Request::Wait { pid, timeout_ms } => {
            let mut process = agent
                .procs
                .wait(pid, timeout_ms.map(Duration::from_millis))
                .await?;
            let stdout = std::mem::take(&mut process.stdout);
            let stderr = std::mem::take(&mut process.stderr);
            let stdout_len = stdout.len() as u64;
            let mut out = Vec::with_capacity(stdout.len() + stderr.len());
            out.extend_from_slice(&stdout);
            out.extend_from_slice(&stderr);
            Frame::with_payload(
                stream,
                Response::Process {
                    process,
                    stdout_len,
                },
                Bytes::from(out),
            )
        }
        Request::ReadFile { path } => {
            let (stat, data) = files::read_whole(path).await?;
            Frame::with_payload(stream, Response::FileData { stat }, data)
        }
        Request::ReadFileStream { path, chunk_size } => {
            return files::read_stream(path, chunk_size, stream, tx).await;
        }
        Request::WriteFile { path, options } => {
            let stat = files::write_whole(path, options, payload).await?;
            reply(Response::Stat { stat })
        }
        Request::WriteFileStream { path, options } => {
            let mut follow = follow.ok_or_else(|| AgentError::internal("no follow channel"))?;
            let stat = files::write_stream(path, options, &mut follow).await?;
            reply(Response::Stat { stat })
        }
        Request::ListDir { path, depth } => reply(Response::Entries {
            entries: files::list_dir(path, depth).await?,
        }),
        Request::Stat { path } => reply(Response::Stat {
            stat: files::stat(path).await?,
        }),
        Request::Remove { path, recursive } => {
            files::remove(path, recursive).await?;
            reply(Response::Ok)
        }
        Request::Mkdir {
            path,
            mode,
            parents,
        } => {
            files::mkdir(path, mode, parents).await?;
            reply(Response::Ok)
        }
        Request::Desktop(action) => {
            let desktop = agent.desktop.as_ref().ok_or_else(|| {
                AgentError::invalid(format!(
                    "{}: this sandbox has no desktop session (the agent runs without --desktop)",
                    action.name()
                ))
                .with_field("action")
            })?;
            let (result, data) = desktop.handle(action).await?;
            Frame::with_payload(stream, Response::Desktop { result }, data)
        }
        Request::StdinData
        | Request::StdinClose
        | Request::WriteChunk
        | Request::WriteEnd
        | Request::Cancel => {
            return Err(AgentError::invalid("follow-up frame without an operation"));
        }
    };
    tx.send(frame)
        .await
        .map_err(|_| AgentError::internal("connection closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_an_internal_error() {
        let r = catch_panic("exec", async {
            if std::hint::black_box(true) {
                panic!("boom {}", 42);
            }
            Ok(())
        })
        .await;
        let e = r.expect_err("panic must become an error");
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(
            e.message.contains("exec") && e.message.contains("boom 42"),
            "{e}"
        );
        assert!(catch_panic("info", async { Ok(()) }).await.is_ok());
    }
}
