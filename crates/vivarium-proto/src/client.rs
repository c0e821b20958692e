//! Host-side client of the guest agent.
//!
//! One Unix-socket connection per request: connecting to a local socket costs a few microseconds,
//! requests never wait behind each other (no head-of-line blocking). Dropping a connection aborts
//! the operation on it, except an exec: its process is *detached* (keeps running, output kept in
//! the agent's bounded ring buffers, listed by [`AgentClient::processes`]) so work survives a
//! runner that dies. Killing an exec is explicit: its timeout, [`AgentClient::signal`], or
//! [`ExecStream::cancel`]. Every request uses stream id 1 on its own connection.
//!
//! Nothing here waits forever on a dead or wedged agent (see [`Deadlines`]): connecting has a
//! deadline; calls with no run time of their own have a fixed one; an exec or a wait with a
//! timeout gets that timeout plus a grace; and a call that legitimately has no bound (an exec or
//! wait without timeout, a long stream) probes the agent with `info` on a second connection
//! every [`Deadlines::probe_interval`] and fails as soon as a probe goes unanswered.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::UnixStream;
use tokio::time::Instant;
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
    /// The agent did not answer within the call's deadline (a wedged agent, or a call that
    /// overran its own timeout by more than the grace).
    #[error("the agent did not answer {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The agent stopped answering liveness probes while a long call was pending.
    #[error("the agent stopped answering while {what} was pending: {reason}")]
    Unresponsive { what: &'static str, reason: String },
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
            // The agent died (or dropped the connection): an I/O condition, not bad protocol.
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "agent closed the connection before answering",
            )));
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

/// How long host→agent calls may take. Every call is bounded by one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Connecting to the agent's socket (a full accept backlog blocks it).
    pub connect: Duration,
    /// A whole call with no run time of its own (info, files, spawn, signal, list, desktop
    /// actions, which wait up to 30 s for the desktop plus up to 60 s for a `wait` action), and
    /// each chunk or send of a streamed read or write.
    pub request: Duration,
    /// Added to an exec's or a wait's own timeout: the agent kills at the timeout, then reaps and
    /// drains the output.
    pub grace: Duration,
    /// While a call waits longer than this, the agent is probed with `info` on another
    /// connection (each probe bounded by `connect` + `probe_timeout`); an unanswered probe fails
    /// the call with [`ClientError::Unresponsive`].
    pub probe_interval: Duration,
    /// How long one liveness probe may take.
    pub probe_timeout: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(120),
            grace: Duration::from_secs(15),
            probe_interval: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(10),
        }
    }
}

/// Client of one sandbox's agent socket. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
    deadlines: Deadlines,
}

/// The deadline of a call that runs for `timeout` (an exec's or wait's own), or none (then only
/// liveness probes bound it).
fn own_deadline(timeout_ms: Option<u64>, grace: Duration) -> Option<Duration> {
    timeout_ms.map(|t| Duration::from_millis(t).saturating_add(grace))
}

impl AgentClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        AgentClient {
            socket: socket.into(),
            deadlines: Deadlines::default(),
        }
    }

    /// The same client with other deadlines.
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let wrap = |e: io::Error| {
            ClientError::Connect(io::Error::new(
                e.kind(),
                format!("{}: {e}", self.socket.display()),
            ))
        };
        let stream = tokio::time::timeout(self.deadlines.connect, connect_nofollow(&self.socket))
            .await
            .map_err(|_| {
                wrap(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not accepted within {:?}", self.deadlines.connect),
                ))
            })?
            .map_err(wrap)?;
        Ok(Framed::new(stream, FrameCodec::new()))
    }

    /// Sends `info` on its own connection within the probe deadline.
    async fn probe(&self) -> Result<(), String> {
        let once = async {
            let mut conn = self.connect().await?;
            conn.send(Frame::new(STREAM, Request::Info)).await?;
            recv(&mut conn).await
        };
        match tokio::time::timeout(self.deadlines.probe_timeout, once).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "info unanswered within {:?}",
                self.deadlines.probe_timeout
            )),
        }
    }

    /// Resolves only when the agent stops answering liveness probes.
    async fn unresponsive(&self, what: &'static str) -> ClientError {
        loop {
            tokio::time::sleep(self.deadlines.probe_interval).await;
            if let Err(reason) = self.probe().await {
                tracing::warn!(socket = %self.socket.display(), what, %reason, "agent unresponsive");
                return ClientError::Unresponsive { what, reason };
            }
        }
    }

    /// Runs `fut` until it ends, `deadline` passes, or the agent stops answering probes (only
    /// probed when the deadline is longer than the probe interval, or absent).
    async fn bounded<T>(
        &self,
        what: &'static str,
        deadline: Option<Duration>,
        fut: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let probe = deadline.is_none_or(|d| d > self.deadlines.probe_interval);
        let guarded = async {
            if !probe {
                return fut.await;
            }
            tokio::select! {
                r = fut => r,
                e = self.unresponsive(what) => Err(e),
            }
        };
        match deadline {
            Some(after) => tokio::time::timeout(after, guarded)
                .await
                .unwrap_or(Err(ClientError::Timeout { what, after })),
            None => guarded.await,
        }
    }

    /// One request frame, one answer frame, within the request deadline.
    async fn call(&self, msg: Request, payload: Bytes) -> Result<Frame<Response>, ClientError> {
        let deadline = self.deadlines.request;
        self.call_within(msg, payload, Some(deadline)).await
    }

    /// One request frame, one answer frame, within `deadline` (none: probed for liveness).
    async fn call_within(
        &self,
        msg: Request,
        payload: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Frame<Response>, ClientError> {
        let what = msg.name();
        self.bounded(what, deadline, async {
            let mut conn = self.connect().await?;
            conn.send(Frame::with_payload(STREAM, msg, payload)).await?;
            recv(&mut conn).await
        })
        .await
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

    /// Runs a process to completion and returns its buffered output. Bounded by the exec's own
    /// timeout plus [`Deadlines::grace`] (without a timeout, by liveness probes). Dropping the
    /// future (or a failed call) detaches the process rather than killing it.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecResult, ClientError> {
        let deadline = own_deadline(req.spec.timeout_ms, self.deadlines.grace);
        let frame = self
            .call_within(Request::Exec(req.spec), req.stdin, deadline)
            .await?;
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
    /// missing program is an `Err` here). Dropping the stream detaches the process (it keeps
    /// running); [`ExecStream::cancel`] or [`ExecStream::cancel_on_drop`] kill it.
    ///
    /// Starting is bounded by [`Deadlines::request`]; the events by the exec's timeout plus
    /// [`Deadlines::grace`] from now, and while waiting for one, by liveness probes.
    pub async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream, ClientError> {
        let ends_by =
            own_deadline(req.spec.timeout_ms, self.deadlines.grace).map(|d| Instant::now() + d);
        let started = self.bounded("exec_stream", Some(self.deadlines.request), async {
            let conn = self.connect().await?;
            let (mut sink, mut events) = conn.split();
            sink.send(Frame::with_payload(
                STREAM,
                Request::ExecStream(req.spec),
                req.stdin,
            ))
            .await?;
            let first = recv(&mut events).await?;
            match first.msg {
                Response::Started { pid } => Ok((pid, sink, events)),
                other => Err(unexpected("started", &other)),
            }
        });
        let (pid, sink, events) = started.await?;
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        Ok(ExecStream {
            pid,
            stdin: ExecStdin {
                sink: Arc::clone(&sink),
                closed: false,
                deadline: self.deadlines.request,
            },
            events: ExecEvents {
                client: self.clone(),
                events,
                sink,
                ends_by,
                cancel_on_drop: false,
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
    /// and returns its status and captured output. Bounded by `timeout` plus
    /// [`Deadlines::grace`] (without a timeout, by liveness probes).
    pub async fn wait(
        &self,
        pid: u32,
        timeout: Option<Duration>,
    ) -> Result<ProcessInfo, ClientError> {
        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let deadline = own_deadline(timeout_ms, self.deadlines.grace);
        let frame = self
            .call_within(Request::Wait { pid, timeout_ms }, Bytes::new(), deadline)
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

    /// Reads a file of any size in chunks. Each chunk must arrive within
    /// [`Deadlines::request`].
    pub async fn read_file_stream(
        &self,
        path: &str,
    ) -> Result<(FileStat, BoxStream<'static, Result<Bytes, ClientError>>), ClientError> {
        let per_chunk = self.deadlines.request;
        let (stat, conn) = self
            .bounded("read_file_stream", Some(per_chunk), async {
                let mut conn = self.connect().await?;
                conn.send(Frame::new(
                    STREAM,
                    Request::ReadFileStream {
                        path: path.into(),
                        chunk_size: None,
                    },
                ))
                .await?;
                match recv(&mut conn).await?.msg {
                    Response::FileStart { stat } => Ok((stat, conn)),
                    other => Err(unexpected("file_start", &other)),
                }
            })
            .await?;
        let chunks = futures::stream::unfold(Some(conn), move |conn| async move {
            let mut conn = conn?;
            let next = tokio::time::timeout(per_chunk, recv(&mut conn))
                .await
                .unwrap_or(Err(ClientError::Timeout {
                    what: "file_chunk",
                    after: per_chunk,
                }));
            match next {
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
    /// `opts.atomic` is set. Each send to the agent and its final answer are bounded by
    /// [`Deadlines::request`] (time spent waiting for `body` is not).
    pub async fn write_file_stream(
        &self,
        path: &str,
        opts: WriteOptions,
        body: impl Stream<Item = io::Result<Bytes>> + Send,
    ) -> Result<FileStat, ClientError> {
        let per_send = self.deadlines.request;
        let bound = |what: &'static str| ClientError::Timeout {
            what,
            after: per_send,
        };
        let conn = self.connect().await?;
        let (mut sink, mut answers) = conn.split();
        tokio::time::timeout(
            per_send,
            sink.send(Frame::new(
                STREAM,
                Request::WriteFileStream {
                    path: path.into(),
                    options: opts,
                },
            )),
        )
        .await
        .map_err(|_| bound("write_file_stream"))??;
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
                    Some(Ok(data)) => {
                        tokio::time::timeout(per_send, send_chunked(&mut sink, Request::WriteChunk, data))
                            .await
                            .map_err(|_| bound("write_chunk"))??
                    }
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
        tokio::time::timeout(per_send, sink.send(Frame::new(STREAM, Request::WriteEnd)))
            .await
            .map_err(|_| bound("write_end"))??;
        let answer = tokio::time::timeout(per_send, recv(&mut answers))
            .await
            .map_err(|_| bound("write_file_stream"))??;
        match answer.msg {
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
/// agent then *detaches* the process: it keeps running and is listed by
/// [`AgentClient::processes`]. [`ExecStream::cancel`] kills it; after
/// [`ExecStream::cancel_on_drop`], dropping it before `Exited` does too.
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

    /// Kills the process group (sends `Cancel` on the stream).
    pub async fn cancel(self) -> Result<(), ClientError> {
        self.events.cancel().await
    }

    /// From now on, dropping this stream (or its events half) before `Exited` kills the process
    /// (for interactive callers: a client that hangs up means stop), instead of detaching it.
    pub fn cancel_on_drop(&mut self) {
        self.events.cancel_on_drop = true;
    }

    /// Splits into a stdin half and an events half that can be used from different tasks.
    pub fn into_split(self) -> (ExecStdin, ExecEvents) {
        (self.stdin, self.events)
    }
}

type SharedSink = Arc<tokio::sync::Mutex<SplitSink<Conn, Frame<Request>>>>;

/// Stdin half of an [`ExecStream`].
pub struct ExecStdin {
    sink: SharedSink,
    closed: bool,
    /// Bound of one write (the agent back-pressures a child that does not read its stdin).
    deadline: Duration,
}

impl ExecStdin {
    /// Writes to the process's stdin; each write must be taken within [`Deadlines::request`].
    pub async fn write(&mut self, data: Bytes) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Protocol("stdin is already closed".into()));
        }
        let mut sink = self.sink.lock().await;
        tokio::time::timeout(
            self.deadline,
            send_chunked(&mut *sink, Request::StdinData, data),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            what: "stdin_data",
            after: self.deadline,
        })?
    }

    /// Closes the process's stdin (it reads EOF). Further writes fail.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        if !self.closed {
            self.closed = true;
            let mut sink = self.sink.lock().await;
            tokio::time::timeout(
                self.deadline,
                sink.send(Frame::new(STREAM, Request::StdinClose)),
            )
            .await
            .map_err(|_| ClientError::Timeout {
                what: "stdin_close",
                after: self.deadline,
            })??;
        }
        Ok(())
    }
}

/// Events half of an [`ExecStream`].
pub struct ExecEvents {
    client: AgentClient,
    events: SplitStream<Conn>,
    /// The connection's sending half (shared with [`ExecStdin`]), kept for `Cancel`.
    sink: SharedSink,
    /// The exec's timeout plus grace, when it has a timeout.
    ends_by: Option<Instant>,
    cancel_on_drop: bool,
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
        let left = self
            .ends_by
            .map(|t| t.saturating_duration_since(Instant::now()));
        let client = self.client.clone();
        let events = &mut self.events;
        let result = match client.bounded("exec_stream", left, recv(events)).await {
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

    /// Kills the process group (sends `Cancel` on the stream).
    pub async fn cancel(mut self) -> Result<(), ClientError> {
        self.cancel_on_drop = false;
        if self.done {
            return Ok(());
        }
        self.done = true;
        let deadline = self.client.deadlines.request;
        let mut sink = self.sink.lock().await;
        tokio::time::timeout(deadline, sink.send(Frame::new(STREAM, Request::Cancel)))
            .await
            .map_err(|_| ClientError::Timeout {
                what: "cancel",
                after: deadline,
            })??;
        Ok(())
    }

    /// See [`ExecStream::cancel_on_drop`].
    pub fn cancel_on_drop(&mut self) {
        self.cancel_on_drop = true;
    }
}

impl Drop for ExecEvents {
    fn drop(&mut self) {
        if !self.cancel_on_drop || self.done {
            return;
        }
        // Drop cannot await: send `Cancel` from a task (bounded), then close the connection.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("exec stream dropped outside a runtime: process left detached");
            return;
        };
        let sink = Arc::clone(&self.sink);
        let deadline = self.client.deadlines.request;
        rt.spawn(async move {
            let send = async {
                let mut sink = sink.lock().await;
                sink.send(Frame::new(STREAM, Request::Cancel)).await
            };
            if !matches!(tokio::time::timeout(deadline, send).await, Ok(Ok(()))) {
                tracing::warn!("could not cancel a dropped exec stream; it stays detached");
            }
        });
    }
}

/// Connects to the Unix socket at `path` without following a symlink in its last component.
///
/// The socket lives in a directory the sandbox can write (it is bind-mounted into the sandbox):
/// root there could replace the socket with a symlink to another sandbox's socket, whose host path
/// it can read in /proc/mounts. `connect(2)` follows symlinks and has no flag against it, so the
/// path is opened first with `O_PATH | O_NOFOLLOW` (which yields the symlink itself, not its
/// target), checked to be a socket, and connected to through `/proc/self/fd/N`, which names that
/// very inode. The directories above it are the runner's own and not reachable from inside.
pub async fn connect_nofollow(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symlink"
        } else {
            "something that is not a socket"
        };
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the agent socket was replaced by {what} (refused)"),
        ));
    }
    let stream = UnixStream::connect(format!("/proc/self/fd/{}", file.as_raw_fd())).await;
    drop(file);
    stream
}
