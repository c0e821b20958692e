//! Host-side client of the guest agent.
//!
//! One Unix-socket connection per request: connecting to a local socket costs a few microseconds,
//! requests never wait behind each other (no head-of-line blocking), and cancelling an operation is
//! dropping its connection — the agent then kills a streaming exec's process group and aborts a
//! streamed write. Every request uses stream id 1 on its own connection.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::frame::{CodecError, Frame, FrameCodec, Rejected, STREAM_CHUNK};
use crate::messages::*;

/// Stream id used on per-request connections.
const STREAM: u64 = 1;

type Conn = Framed<UnixStream, FrameCodec<Response, Request>>;

/// Errors of [`AgentClient`] calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent socket could not be reached (sandbox gone, agent not started yet...).
    #[error("connecting to the agent: {0}")]
    Connect(#[source] io::Error),
    /// The connection failed mid-request.
    #[error("agent connection: {0}")]
    Io(#[source] io::Error),
    /// The agent sent something this client does not understand.
    #[error("agent protocol error: {0}")]
    Protocol(String),
    #[error("agent speaks protocol version {remote}, the runner speaks {local}")]
    VersionMismatch { local: u32, remote: u32 },
    /// The agent carried out the request and reports a typed failure.
    #[error("{code}: {message}")]
    Agent {
        code: ErrorCode,
        message: String,
        /// The request field the error is about, when the agent named one.
        field: Option<String>,
    },
}

impl ClientError {
    /// The agent's error code, if this is an agent-reported error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent { code, .. } => Some(*code),
            ClientError::VersionMismatch { .. } => Some(ErrorCode::VersionMismatch),
            _ => None,
        }
    }
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => ClientError::Io(e),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

fn unexpected(what: &str, got: &Response) -> ClientError {
    ClientError::Protocol(format!("expected {what}, agent sent {}", got.name()))
}

/// Turns one decoded item into a frame, mapping rejections and agent errors.
fn accept(
    item: Option<Result<Result<Frame<Response>, Rejected>, CodecError>>,
) -> Result<Frame<Response>, ClientError> {
    let frame = match item {
        None => {
            return Err(ClientError::Protocol(
                "agent closed the connection before answering".into(),
            ))
        }
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(Err(Rejected::VersionMismatch { remote, local, .. }))) => {
            return Err(ClientError::VersionMismatch { local, remote })
        }
        Some(Ok(Err(rejected))) => return Err(ClientError::Protocol(rejected.to_string())),
        Some(Ok(Ok(frame))) => frame,
    };
    if frame.stream != STREAM {
        return Err(ClientError::Protocol(format!(
            "answer on stream {} for a request on stream {STREAM}",
            frame.stream
        )));
    }
    match frame.msg {
        Response::Error(ErrorBody {
            code,
            message,
            field,
        }) => Err(ClientError::Agent {
            code,
            message,
            field,
        }),
        _ => Ok(frame),
    }
}

async fn recv<S>(conn: &mut S) -> Result<Frame<Response>, ClientError>
where
    S: Stream<Item = Result<Result<Frame<Response>, Rejected>, CodecError>> + Unpin,
{
    accept(conn.next().await)
}

/// Sends `data` as frames of at most [`STREAM_CHUNK`] payload bytes each.
async fn send_chunked<S>(sink: &mut S, msg: Request, mut data: Bytes) -> Result<(), ClientError>
where
    S: Sink<Frame<Request>, Error = CodecError> + Unpin,
{
    while !data.is_empty() {
        let n = data.len().min(STREAM_CHUNK);
        sink.feed(Frame::with_payload(STREAM, msg.clone(), data.split_to(n)))
            .await?;
    }
    sink.flush().await?;
    Ok(())
}

fn split_output(payload: Bytes, stdout_len: u64) -> Result<(Bytes, Bytes), ClientError> {
    let n = usize::try_from(stdout_len)
        .ok()
        .filter(|n| *n <= payload.len())
        .ok_or_else(|| {
            ClientError::Protocol(format!(
                "stdout length {stdout_len} exceeds payload of {} bytes",
                payload.len()
            ))
        })?;
    let mut stdout = payload;
    let stderr = stdout.split_off(n);
    Ok((stdout, stderr))
}

/// Client of one sandbox's agent socket. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        AgentClient {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            ClientError::Connect(io::Error::new(
                e.kind(),
                format!("{}: {e}", self.socket.display()),
            ))
        })?;
        Ok(Framed::new(stream, FrameCodec::new()))
    }

    /// One request frame, one answer frame.
    async fn call(&self, msg: Request, payload: Bytes) -> Result<Frame<Response>, ClientError> {
        let mut conn = self.connect().await?;
        conn.send(Frame::with_payload(STREAM, msg, payload)).await?;
        recv(&mut conn).await
    }

    /// Runs one desktop action. Screenshots return their encoded image as the second value (the
    /// result's `data` stays empty: no base64 on this hop); other actions return empty bytes.
    pub async fn desktop(
        &self,
        action: DesktopAction,
    ) -> Result<(ActionResult, Bytes), ClientError> {
        let frame = self.call(Request::Desktop(action), Bytes::new()).await?;
        match frame.msg {
            Response::Desktop { result } => Ok((result, frame.payload)),
            other => Err(unexpected("desktop", &other)),
        }
    }

    pub async fn info(&self) -> Result<AgentInfo, ClientError> {
        match self.call(Request::Info, Bytes::new()).await?.msg {
            Response::Info(info) => Ok(info),
            other => Err(unexpected("info", &other)),
        }
    }

    /// Runs a process to completion and returns its buffered output.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecResult, ClientError> {
        let frame = self.call(Request::Exec(req.spec), req.stdin).await?;
        match frame.msg {
            Response::ExecDone(done) => {
                let (stdout, stderr) = split_output(frame.payload, done.stdout_len)?;
                Ok(ExecResult {
                    exit_code: done.status.exit_code,
                    signal: done.status.signal,
                    timed_out: done.status.timed_out,
                    duration_ms: done.duration_ms,
                    stdout,
                    stderr,
                    stdout_truncated: done.stdout_truncated,
                    stderr_truncated: done.stderr_truncated,
                })
            }
            other => Err(unexpected("exec_done", &other)),
        }
    }

    /// Starts a process and streams its events. Returns once the process has started (so a
    /// missing program is an `Err` here). Dropping the stream kills the process group.
    pub async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream, ClientError> {
        let conn = self.connect().await?;
        let (mut sink, mut events) = conn.split();
        sink.send(Frame::with_payload(
            STREAM,
            Request::ExecStream(req.spec),
            req.stdin,
        ))
        .await?;
        let first = recv(&mut events).await?;
        let pid = match first.msg {
            Response::Started { pid } => pid,
            other => return Err(unexpected("started", &other)),
        };
        Ok(ExecStream {
            pid,
            stdin: ExecStdin { sink: Some(sink) },
            events: ExecEvents {
                events,
                pending_started: Some(pid),
                done: false,
            },
        })
    }

    /// Starts a background process; its output is kept in bounded ring buffers for `wait`.
    pub async fn spawn(&self, req: ExecRequest) -> Result<ProcessInfo, ClientError> {
        match self.call(Request::Spawn(req.spec), req.stdin).await?.msg {
            Response::Process { process, .. } => Ok(process),
            other => Err(unexpected("process", &other)),
        }
    }

    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, ClientError> {
        match self.call(Request::ListProcesses, Bytes::new()).await?.msg {
            Response::Processes { processes } => Ok(processes),
            other => Err(unexpected("processes", &other)),
        }
    }

    /// Sends `signal` to a background process's process group (or to any other pid).
    pub async fn signal(&self, pid: u32, signal: i32) -> Result<(), ClientError> {
        match self
            .call(Request::Signal { pid, signal }, Bytes::new())
            .await?
            .msg
        {
            Response::Ok => Ok(()),
            other => Err(unexpected("ok", &other)),
        }
    }

    /// Waits for a background process to end (or `timeout` to pass: then `running` is still true)
    /// and returns its status and captured output.
    pub async fn wait(
        &self,
        pid: u32,
        timeout: Option<Duration>,
    ) -> Result<ProcessInfo, ClientError> {
        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let frame = self
            .call(Request::Wait { pid, timeout_ms }, Bytes::new())
            .await?;
        match frame.msg {
            Response::Process {
                mut process,
                stdout_len,
            } => {
                let (stdout, stderr) = split_output(frame.payload, stdout_len)?;
                process.stdout = stdout;
                process.stderr = stderr;
                Ok(process)
            }
            other => Err(unexpected("process", &other)),
        }
    }

    /// Reads a whole file of at most [`MAX_WHOLE_FILE`] bytes; use
    /// [`AgentClient::read_file_stream`] for larger ones.
    pub async fn read_file(&self, path: &str) -> Result<Bytes, ClientError> {
        let frame = self
            .call(Request::ReadFile { path: path.into() }, Bytes::new())
            .await?;
        match frame.msg {
            Response::FileData { .. } => Ok(frame.payload),
            other => Err(unexpected("file_data", &other)),
        }
    }

    /// Reads a file of any size in chunks.
    pub async fn read_file_stream(
        &self,
        path: &str,
    ) -> Result<(FileStat, BoxStream<'static, Result<Bytes, ClientError>>), ClientError> {
        let mut conn = self.connect().await?;
        conn.send(Frame::new(
            STREAM,
            Request::ReadFileStream {
                path: path.into(),
                chunk_size: None,
            },
        ))
        .await?;
        let stat = match recv(&mut conn).await?.msg {
            Response::FileStart { stat } => stat,
            other => return Err(unexpected("file_start", &other)),
        };
        let chunks = futures::stream::unfold(Some(conn), |conn| async move {
            let mut conn = conn?;
            match recv(&mut conn).await {
                Ok(Frame {
                    msg: Response::FileChunk,
                    payload,
                    ..
                }) => Some((Ok(payload), Some(conn))),
                Ok(Frame {
                    msg: Response::FileEnd,
                    ..
                }) => None,
                Ok(other) => Some((Err(unexpected("file_chunk", &other.msg)), None)),
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok((stat, chunks.boxed()))
    }

    /// Writes a whole file (falls back to the streamed write above [`MAX_WHOLE_FILE`] bytes).
    pub async fn write_file(
        &self,
        path: &str,
        data: Bytes,
        opts: WriteOptions,
    ) -> Result<FileStat, ClientError> {
        if data.len() as u64 > MAX_WHOLE_FILE {
            let body = futures::stream::once(async move { Ok::<_, io::Error>(data) });
            return self.write_file_stream(path, opts, body).await;
        }
        let frame = self
            .call(
                Request::WriteFile {
                    path: path.into(),
                    options: opts,
                },
                data,
            )
            .await?;
        match frame.msg {
            Response::Stat { stat } => Ok(stat),
            other => Err(unexpected("stat", &other)),
        }
    }

    /// Writes a file from a stream of chunks. An error from the agent (e.g. permission denied) ends
    /// the upload early; an error from `body` aborts the write and leaves no partial file when
    /// `opts.atomic` is set.
    pub async fn write_file_stream(
        &self,
        path: &str,
        opts: WriteOptions,
        body: impl Stream<Item = io::Result<Bytes>> + Send,
    ) -> Result<FileStat, ClientError> {
        let conn = self.connect().await?;
        let (mut sink, mut answers) = conn.split();
        sink.send(Frame::new(
            STREAM,
            Request::WriteFileStream {
                path: path.into(),
                options: opts,
            },
        ))
        .await?;
        let mut body = std::pin::pin!(body);
        loop {
            tokio::select! {
                biased;
                // Any answer before WriteEnd is an early failure (or a confused agent).
                answer = answers.next() => {
                    let frame = accept(answer)?;
                    return Err(unexpected("nothing before the end of the upload", &frame.msg));
                }
                chunk = body.next() => match chunk {
                    Some(Ok(data)) => send_chunked(&mut sink, Request::WriteChunk, data).await?,
                    Some(Err(e)) => {
                        // Tell the agent to drop the partial file, then report the body's error.
                        let _ = sink.send(Frame::new(STREAM, Request::Cancel)).await;
                        return Err(ClientError::Io(io::Error::new(
                            e.kind(),
                            format!("reading upload body: {e}"),
                        )));
                    }
                    None => break,
                },
            }
        }
        sink.send(Frame::new(STREAM, Request::WriteEnd)).await?;
        match recv(&mut answers).await?.msg {
            Response::Stat { stat } => Ok(stat),
            other => Err(unexpected("stat", &other)),
        }
    }

    /// Lists `path` down to `depth` levels (1 = direct children only).
    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<FileEntry>, ClientError> {
        let req = Request::ListDir {
            path: path.into(),
            depth,
        };
        match self.call(req, Bytes::new()).await?.msg {
            Response::Entries { entries } => Ok(entries),
            other => Err(unexpected("entries", &other)),
        }
    }

    pub async fn stat(&self, path: &str) -> Result<FileStat, ClientError> {
        match self
            .call(Request::Stat { path: path.into() }, Bytes::new())
            .await?
            .msg
        {
            Response::Stat { stat } => Ok(stat),
            other => Err(unexpected("stat", &other)),
        }
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), ClientError> {
        let req = Request::Remove {
            path: path.into(),
            recursive,
        };
        match self.call(req, Bytes::new()).await?.msg {
            Response::Ok => Ok(()),
            other => Err(unexpected("ok", &other)),
        }
    }

    pub async fn mkdir(
        &self,
        path: &str,
        mode: Option<u32>,
        parents: bool,
    ) -> Result<(), ClientError> {
        let req = Request::Mkdir {
            path: path.into(),
            mode,
            parents,
        };
        match self.call(req, Bytes::new()).await?.msg {
            Response::Ok => Ok(()),
            other => Err(unexpected("ok", &other)),
        }
    }
}

/// A running streaming exec. Dropping it (both halves, if split) closes the connection, and the
/// agent then kills the process group.
pub struct ExecStream {
    pid: u32,
    stdin: ExecStdin,
    events: ExecEvents,
}

impl ExecStream {
    /// Pid of the process (in the sandbox's pid namespace).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Next event: `Started` first, then output, then `Exited`; `None` after `Exited`.
    pub async fn next(&mut self) -> Option<Result<ExecEvent, ClientError>> {
        self.events.next().await
    }

    pub async fn write_stdin(&mut self, data: Bytes) -> Result<(), ClientError> {
        self.stdin.write(data).await
    }

    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        self.stdin.close().await
    }

    /// Splits into a stdin half and an events half that can be used from different tasks.
    pub fn into_split(self) -> (ExecStdin, ExecEvents) {
        (self.stdin, self.events)
    }
}

/// Stdin half of an [`ExecStream`].
pub struct ExecStdin {
    sink: Option<SplitSink<Conn, Frame<Request>>>,
}

impl ExecStdin {
    pub async fn write(&mut self, data: Bytes) -> Result<(), ClientError> {
        let sink = self
            .sink
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("stdin is already closed".into()))?;
        send_chunked(sink, Request::StdinData, data).await
    }

    /// Closes the process's stdin (it reads EOF). Further writes fail.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        if let Some(mut sink) = self.sink.take() {
            sink.send(Frame::new(STREAM, Request::StdinClose)).await?;
        }
        Ok(())
    }
}

/// Events half of an [`ExecStream`].
pub struct ExecEvents {
    events: SplitStream<Conn>,
    pending_started: Option<u32>,
    done: bool,
}

impl ExecEvents {
    pub async fn next(&mut self) -> Option<Result<ExecEvent, ClientError>> {
        if let Some(pid) = self.pending_started.take() {
            return Some(Ok(ExecEvent::Started { pid }));
        }
        if self.done {
            return None;
        }
        let result = match recv(&mut self.events).await {
            Ok(frame) => match frame.msg {
                Response::Stdout => Ok(ExecEvent::Stdout(frame.payload)),
                Response::Stderr => Ok(ExecEvent::Stderr(frame.payload)),
                Response::Exited(status) => {
                    self.done = true;
                    Ok(ExecEvent::Exited(status))
                }
                other => Err(unexpected("exec output", &other)),
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}
