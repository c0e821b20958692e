//! End-to-end tests: the real agent binary, started as a normal process on a temporary socket,
//! driven through `vivarium_proto::AgentClient`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use vivarium_proto::frame::encode_with_version;
use vivarium_proto::{
    AgentClient, ClientError, ErrorCode, ExecEvent, ExecRequest, FileType, Frame, FrameCodec,
    Request, Response, WriteOptions, PROTOCOL_VERSION,
};

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    client: AgentClient,
}

impl Agent {
    async fn start() -> Agent {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("run/agent.sock");
        // The agent's log goes to a file so tests can check it (no panics) and print it.
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_vivarium-agent"))
            .arg("--listen")
            .arg(&sock)
            .args(extra)
            .env("VIVARIUM_AGENT_LOG", "warn")
            .stderr(log)
            .spawn()
            .expect("start agent");
        let client = AgentClient::new(&sock);
        // Wait for the socket to accept (bounded, so a broken agent fails the test).
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            match client.info().await {
                Ok(_) => break,
                Err(ClientError::Connect(_)) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("agent did not come up: {e}"),
            }
        }
        Agent { child, dir, client }
    }

    /// What the agent logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_string_lossy().into_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest::new(argv.iter().copied())
}

fn sh(script: &str) -> ExecRequest {
    req(&["sh", "-c", script])
}

fn agent_code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Agent { code, .. } => code,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

/// Polls `cond` until it holds; panics after a generous bound (not a timing assertion).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < give_up, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: u32) -> bool {
    // A zombie counts as dead: it has exited, only its reaping is pending.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn info_reports_version_and_pid() {
    let a = Agent::start().await;
    let info = a.client.info().await.expect("info");
    assert_eq!(info.protocol_version, PROTOCOL_VERSION);
    assert_eq!(info.pid, a.child.id());
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn exec_output_exit_codes_env_cwd_stdin() {
    let a = Agent::start().await;
    let c = &a.client;

    let r = c
        .exec(req(&["echo", "hello", "world"]))
        .await
        .expect("echo");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(&r.stdout[..], b"hello world\n");
    assert!(r.stderr.is_empty());

    let r = c.exec(sh("echo oops >&2; exit 3")).await.expect("exit 3");
    assert_eq!((r.exit_code, r.signal), (Some(3), None));
    assert_eq!(&r.stderr[..], b"oops\n");

    let mut e = sh("echo \"$FOO|$PATH\"");
    e.spec.env.insert("FOO".into(), "bar baz".into());
    let r = c.exec(e).await.expect("env");
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.starts_with("bar baz|"), "{out}");
    assert!(out.contains("/bin"), "PATH inherited: {out}");

    let mut e = req(&["pwd"]);
    e.spec.cwd = Some(a.dir.path().to_string_lossy().into_owned());
    let r = c.exec(e).await.expect("cwd");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim_end(),
        a.dir
            .path()
            .canonicalize()
            .expect("canon")
            .to_string_lossy()
    );

    let mut e = req(&["sh", "-c", "wc -c; cat /dev/null"]);
    e.stdin = Bytes::from(vec![b'x'; 300_000]);
    let r = c.exec(e).await.expect("stdin");
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "300000");

    // No stdin given: the child reads EOF instead of hanging.
    let r = c.exec(req(&["cat"])).await.expect("cat");
    assert_eq!((r.exit_code, r.stdout.len()), (Some(0), 0));

    let r = c.exec(sh("kill -KILL $$")).await.expect("signal");
    assert_eq!((r.exit_code, r.signal), (None, Some(9)));
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_group() {
    let a = Agent::start().await;
    let mut e = sh("sleep 1000 & echo $!; wait");
    e.spec.timeout_ms = Some(300);
    let r = a.client.exec(e).await.expect("exec");
    assert!(r.timed_out);
    assert_eq!(r.signal, Some(9));
    let bg: u32 = String::from_utf8_lossy(&r.stdout)
        .trim()
        .parse()
        .expect("pid of sleep");
    eventually("background sleep killed with its group", || !alive(bg)).await;
}

#[tokio::test]
async fn exec_errors_are_typed() {
    let a = Agent::start().await;
    let c = &a.client;
    let e = c
        .exec(req(&["/definitely/not/here"]))
        .await
        .expect_err("missing");
    assert_eq!(agent_code(e), ErrorCode::NotFound);
    let e = c.exec(req(&[])).await.expect_err("empty argv");
    assert_eq!(agent_code(e), ErrorCode::InvalidArgument);
    let mut bad_cwd = req(&["true"]);
    bad_cwd.spec.cwd = Some("/no/such/dir".into());
    assert_eq!(
        agent_code(c.exec(bad_cwd).await.expect_err("cwd")),
        ErrorCode::NotFound
    );
    let mut bad_user = req(&["true"]);
    bad_user.spec.user = Some("no-such-user-here".into());
    assert_eq!(
        agent_code(c.exec(bad_user).await.expect_err("user")),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn exec_output_is_capped_with_truncated_flag() {
    let a = Agent::start().await;
    let mut e = sh("head -c 100000 /dev/zero; head -c 10 /dev/zero >&2");
    e.spec.output_limit = Some(1000);
    let r = a.client.exec(e).await.expect("exec");
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout_truncated);
    assert_eq!(r.stderr.len(), 10);
    assert!(!r.stderr_truncated);
    assert_eq!(r.exit_code, Some(0));
}

#[tokio::test]
async fn exec_as_user_from_sandbox_passwd() {
    let etc = tempfile::tempdir().expect("etc");
    std::fs::write(
        etc.path().join("passwd"),
        "root:x:0:0::/root:/bin/sh\ntester:x:4321:4300::/nonexistent:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(etc.path().join("group"), "root:x:0:\nextra:x:4400:tester\n").expect("group");
    let etc_dir = etc.path().to_string_lossy().into_owned();
    let a = Agent::start_with(&["--etc-dir", &etc_dir]).await;
    let mut e = sh("id -u; id -g; id -G; echo $HOME $USER");
    e.spec.user = Some("tester".into());
    let r = a.client.exec(e).await.expect("exec as tester");
    let out = String::from_utf8_lossy(&r.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "4321", "{out}");
    assert_eq!(lines[1], "4300", "{out}");
    let mut groups: Vec<&str> = lines[2].split(' ').collect();
    groups.sort();
    assert_eq!(groups, vec!["4300", "4400"], "{out}");
    assert_eq!(lines[3], "/nonexistent tester");

    let mut e = req(&["id", "-u"]);
    e.spec.user = Some("5555:5556".into());
    let r = a.client.exec(e).await.expect("numeric");
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "5555");
}

#[tokio::test]
async fn streaming_exec_delivers_events_in_order() {
    let a = Agent::start().await;
    let mut s = a
        .client
        .exec_stream(sh(
            "echo one; sleep 0.05; echo two >&2; sleep 0.05; echo three; exit 7",
        ))
        .await
        .expect("stream");
    let mut events = Vec::new();
    while let Some(ev) = s.next().await {
        events.push(ev.expect("event"));
    }
    assert_eq!(events.first(), Some(&ExecEvent::Started { pid: s.pid() }));
    let rest: Vec<String> = events[1..]
        .iter()
        .map(|e| match e {
            ExecEvent::Stdout(b) => format!("out:{}", String::from_utf8_lossy(b)),
            ExecEvent::Stderr(b) => format!("err:{}", String::from_utf8_lossy(b)),
            ExecEvent::Exited(st) => format!("exit:{:?}", st.exit_code),
            ExecEvent::Started { .. } => "started again".into(),
        })
        .collect();
    assert_eq!(
        rest,
        vec!["out:one\n", "err:two\n", "out:three\n", "exit:Some(7)"]
    );
}

#[tokio::test]
async fn streaming_exec_stdin_round_trip() {
    let a = Agent::start().await;
    let mut s = a.client.exec_stream(req(&["cat"])).await.expect("stream");
    s.write_stdin(Bytes::from_static(b"ping\n"))
        .await
        .expect("write");
    let mut got = Vec::new();
    while got != b"ping\n" {
        match s.next().await.expect("event").expect("ok") {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout(b) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    s.close_stdin().await.expect("close");
    match s.next().await.expect("event").expect("ok") {
        ExecEvent::Exited(st) => assert_eq!(st.exit_code, Some(0)),
        other => panic!("expected exit, got {other:?}"),
    }
    assert!(s.next().await.is_none());
}

/// Starts `sleep 1000 & echo $!; wait` as a streaming exec; returns it with the sleep's pid.
async fn stream_with_child(a: &Agent) -> (vivarium_proto::ExecStream, u32) {
    let mut s = a
        .client
        .exec_stream(sh("sleep 1000 & echo $!; wait"))
        .await
        .expect("stream");
    let mut out = Vec::new();
    while !out.ends_with(b"\n") {
        match s.next().await.expect("event").expect("ok") {
            ExecEvent::Stdout(b) => out.extend_from_slice(&b),
            ExecEvent::Started { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let bg: u32 = String::from_utf8_lossy(&out).trim().parse().expect("pid");
    assert!(alive(bg) && alive(s.pid()));
    (s, bg)
}

#[tokio::test]
async fn cancelling_a_stream_kills_its_process_group() {
    let a = Agent::start().await;
    let (s, bg) = stream_with_child(&a).await;
    let leader = s.pid();
    s.cancel().await.expect("cancel");
    eventually("sleep killed after the cancel", || !alive(bg)).await;
    eventually("leader killed after the cancel", || !alive(leader)).await;

    // `cancel_on_drop`: hanging up is a cancel (what the runner does for an HTTP client).
    let (mut s, bg) = stream_with_child(&a).await;
    let leader = s.pid();
    s.cancel_on_drop();
    drop(s);
    eventually("sleep killed after the drop", || !alive(bg)).await;
    eventually("leader killed after the drop", || !alive(leader)).await;
}

/// Issue 8: a dropped connection (the runner died) detaches an exec instead of killing it: it
/// runs to its end, is listed, and its status and output are fetched with `wait`.
#[tokio::test]
async fn dropped_exec_connections_detach_their_processes() {
    let a = Agent::start().await;
    let c = &a.client;
    let marker = a.path("done");

    // Buffered: give up on the answer (drops the connection) while the command runs.
    let cmd = format!("echo before; sleep 1; echo done > {marker}; echo after; echo err >&2");
    let mut e = sh(&cmd);
    e.spec.timeout_ms = Some(60_000);
    // Boxed, so dropping it really drops the future and closes its connection.
    let mut call = Box::pin(c.exec(e));
    let running = async {
        loop {
            let listed = c.processes().await.expect("list");
            if let Some(p) = listed.into_iter().find(|p| p.argv.last() == Some(&cmd)) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let p = tokio::select! {
        r = &mut call => panic!("exec finished before it was listed: {r:?}"),
        p = running => p,
    };
    assert!(p.running);
    // Hang up: the exit code, the late output and the marker below prove it ran on.
    drop(call);
    let w = c
        .wait(p.pid, Some(Duration::from_secs(30)))
        .await
        .expect("wait");
    assert!(!w.running, "{w:?}");
    assert_eq!(w.exit.expect("exit").exit_code, Some(0));
    assert_eq!(&w.stdout[..], b"before\nafter\n");
    assert_eq!(&w.stderr[..], b"err\n");
    assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "done\n");

    // Streaming: dropped without cancel_on_drop, the process goes on with stdin closed.
    let (s, bg) = stream_with_child(&a).await;
    let leader = s.pid();
    drop(s);
    let listed = c.processes().await.expect("list");
    assert!(listed.iter().any(|p| p.pid == leader && p.running));
    // Still explicitly killable through the process table.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(alive(bg) && alive(leader), "detached stream was killed");
    c.signal(leader, libc::SIGKILL).await.expect("signal");
    let w = c
        .wait(leader, Some(Duration::from_secs(30)))
        .await
        .expect("wait");
    assert_eq!(w.exit.expect("exit").signal, Some(libc::SIGKILL));
    eventually("group killed by the signal", || !alive(bg)).await;

    // An answered exec is forgotten.
    let r = c.exec(req(&["echo", "answered"])).await.expect("exec");
    assert_eq!(r.exit_code, Some(0));
    let listed = c.processes().await.expect("list");
    assert!(
        !listed.iter().any(|p| p.argv == ["echo", "answered"]),
        "{listed:?}"
    );
}

#[tokio::test]
async fn background_spawn_list_signal_wait() {
    let a = Agent::start().await;
    let c = &a.client;
    let p = c
        .spawn(sh("echo started; echo warn >&2; exec sleep 1000"))
        .await
        .expect("spawn");
    assert!(p.running);
    let listed = c.processes().await.expect("list");
    let me = listed.iter().find(|x| x.pid == p.pid).expect("listed");
    assert!(me.running);
    assert_eq!(me.argv[0], "sh");

    let w = c
        .wait(p.pid, Some(Duration::from_millis(100)))
        .await
        .expect("wait with timeout");
    assert!(w.running, "still running after a short wait");

    c.signal(p.pid, libc::SIGTERM).await.expect("signal");
    let w = c.wait(p.pid, None).await.expect("wait");
    assert!(!w.running);
    assert_eq!(w.exit.expect("exit").signal, Some(libc::SIGTERM));
    assert_eq!(&w.stdout[..], b"started\n");
    assert_eq!(&w.stderr[..], b"warn\n");

    let q = c.spawn(sh("cat; exit 4")).await.expect("spawn 2");
    let w = c.wait(q.pid, None).await.expect("wait 2");
    assert_eq!(w.exit.expect("exit").exit_code, Some(4));

    let mut with_stdin = sh("cat");
    with_stdin.stdin = Bytes::from_static(b"fed");
    let r = c.spawn(with_stdin).await.expect("spawn 3");
    let w = c.wait(r.pid, None).await.expect("wait 3");
    assert_eq!(&w.stdout[..], b"fed");

    assert_eq!(
        agent_code(c.wait(999_999, None).await.expect_err("unknown")),
        ErrorCode::NotFound
    );
    assert_eq!(
        agent_code(c.signal(p.pid, 9999).await.expect_err("bad signal")),
        ErrorCode::InvalidArgument
    );
}

/// Deterministic pseudo-random bytes (xorshift), so the content is not trivially compressible.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[tokio::test]
async fn fifty_mib_streamed_round_trip_is_byte_exact() {
    let a = Agent::start().await;
    let data = Bytes::from(pseudo_random(50 * 1024 * 1024, 0x9E3779B97F4A7C15));
    let want = hex::encode(Sha256::digest(&data));
    let path = a.path("big/nested/blob.bin");

    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(1024 * 1024 + 7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let opts = WriteOptions {
        mode: Some(0o600),
        create_parents: true,
        atomic: true,
    };
    let st = a
        .client
        .write_file_stream(&path, opts, futures::stream::iter(chunks))
        .await
        .expect("upload");
    assert_eq!(
        (st.size, st.mode, st.file_type),
        (data.len() as u64, 0o600, FileType::File)
    );
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&path).expect("on disk"))),
        want
    );

    let (stat, mut body) = a.client.read_file_stream(&path).await.expect("download");
    assert_eq!(stat.size, data.len() as u64);
    let mut hasher = Sha256::new();
    let mut total = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        total += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(total, data.len());
    assert_eq!(hex::encode(hasher.finalize()), want);

    // The whole-file write of the same size falls back to streaming transparently.
    let path2 = a.path("big/copy.bin");
    a.client
        .write_file(&path2, data.clone(), WriteOptions::default())
        .await
        .expect("big whole write");
    assert_eq!(
        std::fs::metadata(&path2).expect("copy").len(),
        data.len() as u64
    );
    // Too large for a whole read: a typed error pointing at the streamed read.
    let e = a.client.read_file(&path2).await.expect_err("too big");
    assert_eq!(agent_code(e), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn failed_upload_leaves_no_file() {
    let a = Agent::start().await;
    let path = a.path("partial.bin");
    let body = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"some bytes")),
        Err(std::io::Error::other("client went away")),
    ]);
    let e = a
        .client
        .write_file_stream(&path, WriteOptions::default(), body)
        .await
        .expect_err("body error");
    assert!(matches!(e, ClientError::Io(_)), "{e:?}");
    eventually("no temp or target file", || {
        std::fs::read_dir(a.dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .all(|e| e.file_name() == "run" || e.file_name() == "agent.log")
    })
    .await;
}

#[tokio::test]
async fn file_operations_and_errors() {
    let a = Agent::start().await;
    let c = &a.client;
    let root = a.path("tree");

    c.mkdir(&format!("{root}/a/b"), Some(0o750), true)
        .await
        .expect("mkdir -p");
    let st = c.stat(&format!("{root}/a/b")).await.expect("stat dir");
    assert_eq!((st.file_type, st.mode), (FileType::Dir, 0o750));
    assert_eq!(
        agent_code(
            c.mkdir(&format!("{root}/a"), None, false)
                .await
                .expect_err("exists")
        ),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        agent_code(
            c.mkdir(&format!("{root}/x/y"), None, false)
                .await
                .expect_err("no parent")
        ),
        ErrorCode::NotFound
    );

    let f = format!("{root}/a/hello.txt");
    let st = c
        .write_file(&f, Bytes::from_static(b"hi there"), WriteOptions::default())
        .await
        .expect("write");
    assert_eq!(
        (st.size, st.mode, st.name.as_str()),
        (8, 0o644, "hello.txt")
    );
    assert_eq!(&c.read_file(&f).await.expect("read")[..], b"hi there");
    std::os::unix::fs::symlink("hello.txt", format!("{root}/a/link")).expect("symlink");

    let entries = c.list_dir(&root, 1).await.expect("ls depth 1");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["a"]);
    let entries = c.list_dir(&root, 3).await.expect("ls depth 3");
    let rel: Vec<String> = entries
        .iter()
        .map(|e| e.path.trim_start_matches(&root).to_string())
        .collect();
    assert_eq!(rel, vec!["/a", "/a/b", "/a/hello.txt", "/a/link"]);
    let link = entries.iter().find(|e| e.name == "link").expect("link");
    assert_eq!(link.file_type, FileType::Symlink);
    assert_eq!(link.link_target.as_deref(), Some("hello.txt"));
    assert!(entries[2].mtime_ms > 1_600_000_000_000);

    assert_eq!(
        agent_code(
            c.read_file(&format!("{root}/nope"))
                .await
                .expect_err("missing")
        ),
        ErrorCode::NotFound
    );
    assert_eq!(
        agent_code(c.stat(&format!("{root}/nope")).await.expect_err("missing")),
        ErrorCode::NotFound
    );
    assert_eq!(
        agent_code(c.read_file(&root).await.expect_err("dir")),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        agent_code(
            c.write_file(&root, Bytes::new(), WriteOptions::default())
                .await
                .expect_err("write onto dir")
        ),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        agent_code(c.list_dir(&f, 1).await.expect_err("ls file")),
        ErrorCode::NotADirectory
    );
    assert_eq!(
        agent_code(c.stat("relative/path").await.expect_err("relative")),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        agent_code(
            c.write_file(
                &format!("{root}/q/r/s"),
                Bytes::new(),
                WriteOptions::default()
            )
            .await
            .expect_err("no parents")
        ),
        ErrorCode::NotFound
    );

    assert_eq!(
        agent_code(c.remove(&root, false).await.expect_err("non-empty")),
        ErrorCode::InvalidArgument
    );
    c.remove(&f, false).await.expect("rm file");
    c.remove(&root, true).await.expect("rm -r");
    assert!(!Path::new(&root).exists());
    assert_eq!(
        agent_code(c.remove(&root, true).await.expect_err("gone")),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn version_mismatch_gets_a_typed_error() {
    let a = Agent::start().await;
    let sock: PathBuf = a.client.socket().to_path_buf();
    let mut conn = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    let mut buf = BytesMut::new();
    encode_with_version(
        PROTOCOL_VERSION + 1,
        &Frame::new(77, Request::Info),
        &mut buf,
    )
    .expect("encode");
    // A frame of the right version after it still gets served on the same connection.
    encode_with_version(PROTOCOL_VERSION, &Frame::new(78, Request::Info), &mut buf)
        .expect("encode");
    conn.write_all(&buf).await.expect("send");

    let mut codec: FrameCodec<Response, Request> = FrameCodec::new();
    let mut rbuf = BytesMut::new();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        if let Some(item) = codec.decode(&mut rbuf).expect("decode") {
            frames.push(item.expect("accepted"));
            continue;
        }
        let n = conn.read_buf(&mut rbuf).await.expect("read");
        assert!(n > 0, "agent closed the connection");
    }
    frames.sort_by_key(|f| f.stream);
    match &frames[0].msg {
        Response::Error(e) => {
            assert_eq!(frames[0].stream, 77);
            assert_eq!(e.code, ErrorCode::VersionMismatch);
        }
        other => panic!("expected version_mismatch, got {other:?}"),
    }
    assert!(matches!(frames[1].msg, Response::Info(_)));
}

#[tokio::test]
async fn services_are_restarted_when_they_exit() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("ticks");
    let svc = format!("ticker=echo tick >> {}", log.display());
    let _a = Agent::start_with(&["--service", &svc]).await;
    eventually("service ran three times", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= 3)
    })
    .await;
}

#[tokio::test]
async fn sigterm_stops_children_and_exits_cleanly() {
    let mut a = Agent::start().await;
    let p = a
        .client
        .spawn(req(&["sleep", "1000"]))
        .await
        .expect("spawn");
    let sock = a.client.socket().to_path_buf();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let status = a.child.wait().expect("wait agent");
    assert!(status.success(), "{status:?}");
    assert!(!alive(p.pid), "child left running");
    assert!(!sock.exists(), "socket left behind");
}

#[tokio::test]
async fn concurrent_requests_do_not_block_each_other() {
    let a = Agent::start().await;
    let slow = a
        .client
        .exec_stream(req(&["sleep", "1000"]))
        .await
        .expect("slow");
    let quick: Vec<_> = (0..8)
        .map(|i| {
            let c = a.client.clone();
            tokio::spawn(async move { c.exec(req(&["echo", &i.to_string()])).await })
        })
        .collect();
    for (i, q) in quick.into_iter().enumerate() {
        let r = q.await.expect("join").expect("exec");
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), i.to_string());
    }
    drop(slow);
}

/// Prints the median round trip of `exec true` through the client (`--nocapture` to see it).
#[tokio::test]
async fn measure_exec_round_trip() {
    let a = Agent::start().await;
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        let r = a.client.exec(req(&["true"])).await.expect("exec");
        samples.push(t.elapsed());
        assert_eq!(r.exit_code, Some(0));
    }
    let mut info = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        a.client.info().await.expect("info");
        info.push(t.elapsed());
    }
    samples.sort();
    info.sort();
    println!(
        "exec `true` round trip: median {:?}, p90 {:?} (n=200); info round trip: median {:?}",
        samples[100], samples[180], info[100]
    );
}

/// Issue 8: under concurrent execs, spawns that fail (missing program, unknown user, bad cwd) are
/// answered with a typed error, every other exec is answered too, and the agent keeps serving.
/// The failing spawn used to race the `waitpid(-1)` reaper (std's spawn waits for a child whose
/// exec failed) and panic the handler, leaving its request unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_execs_with_failing_spawns_are_all_answered() {
    let a = Agent::start().await;
    const TOTAL: usize = 1000;
    const IN_FLIGHT: usize = 100;
    let results: Vec<(usize, Result<vivarium_proto::ExecResult, ClientError>)> =
        futures::stream::iter(0..TOTAL)
            .map(|i| {
                let c = a.client.clone();
                async move {
                    let r = match i % 30 {
                        0 => req(&["/no/such/program", "x"]),
                        // A user makes std fork (pre_exec) and wait for the failed child itself.
                        10 => {
                            let mut r = req(&["/no/such/program-either"]);
                            r.spec.user = Some("12345".into());
                            r
                        }
                        20 => {
                            let mut r = req(&["true"]);
                            r.spec.user = Some("no-such-user-here".into());
                            r
                        }
                        _ => req(&["echo", &i.to_string()]),
                    };
                    (i, c.exec(r).await)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
    assert_eq!(results.len(), TOTAL);
    let mut failed = 0;
    for (i, r) in results {
        match i % 30 {
            0 | 10 | 20 => {
                let e = r.expect_err("spawn should fail");
                match &e {
                    ClientError::Agent { code, message, .. } => {
                        assert_eq!(*code, ErrorCode::NotFound, "exec {i}: {e}");
                        let cause = [
                            "/no/such/program",
                            "no-such-program-either",
                            "no-such-user-here",
                        ];
                        assert!(cause.iter().any(|c| message.contains(c)), "exec {i}: {e}");
                    }
                    other => panic!("exec {i}: expected a typed error, got {other:?}"),
                }
                failed += 1;
            }
            _ => {
                let r = r.unwrap_or_else(|e| panic!("exec {i}: {e}"));
                assert_eq!(r.exit_code, Some(0), "exec {i}");
                assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), i.to_string());
            }
        }
    }
    assert_eq!(failed, TOTAL / 10);
    a.client.info().await.expect("agent still serving");
    let log = a.log();
    assert!(!log.contains("panicked"), "agent panicked:\n{log}");
}

/// Issue 8: PID 1 outlives its children: the agent takes the lowest OOM score it may, and every
/// child starts with a score that makes the OOM killer pick it over the agent (the default 0 when
/// the agent got -1000; 1000 where lowering is refused, as on kernels that answer EIO to root).
#[tokio::test]
async fn children_are_the_oom_killers_choice_not_the_agent() {
    let a = Agent::start().await;
    let score = |s: &str| -> i32 { s.trim().parse().expect("oom_score_adj") };
    let own = score(
        &std::fs::read_to_string(format!("/proc/{}/oom_score_adj", a.child.id()))
            .expect("agent's oom_score_adj"),
    );
    let expected_child = if own == -1000 { 0 } else { 1000 };
    let r = a
        .client
        .exec(req(&["cat", "/proc/self/oom_score_adj"]))
        .await
        .expect("exec");
    assert_eq!(score(&String::from_utf8_lossy(&r.stdout)), expected_child);
    // Also when the child drops to another user before exec, and for background processes.
    let mut as_user = req(&["cat", "/proc/self/oom_score_adj"]);
    as_user.spec.user = Some("65534".into());
    let r = a.client.exec(as_user).await.expect("exec as 65534");
    assert_eq!(
        score(&String::from_utf8_lossy(&r.stdout)),
        expected_child,
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let p = a
        .client
        .spawn(req(&["cat", "/proc/self/oom_score_adj"]))
        .await
        .expect("spawn");
    let w = a.client.wait(p.pid, None).await.expect("wait");
    assert_eq!(score(&String::from_utf8_lossy(&w.stdout)), expected_child);
    assert!(own < expected_child || own == -1000, "agent {own}");
}

/// Issue 8: nothing waits forever on a wedged agent. A stopped (SIGSTOP) agent still accepts
/// connections (the kernel does), but answers nothing: every call fails with a timeout.
#[tokio::test]
async fn a_wedged_agent_gives_timeouts_not_hangs() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use vivarium_proto::client::Deadlines;

    let a = Agent::start().await;
    let deadlines = Deadlines {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(2),
        grace: Duration::from_secs(1),
        probe_interval: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(1),
    };
    let c = a.client.clone().with_deadlines(deadlines);
    let pid = Pid::from_raw(a.child.id() as i32);
    /// Resumes the agent however the test ends (a stopped agent would hang its Drop).
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let resume = Resume(pid);
    // SIGSTOP takes effect asynchronously, thread by thread: wait until every thread of the agent
    // is stopped, or a request sent now could still be answered by one that was mid-flight.
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|rd| {
                rd.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .map(|st| {
                            st.rsplit_once(')')
                                .map(|(_, rest)| rest.trim_start().starts_with('T'))
                                .unwrap_or(false)
                        })
                        .unwrap_or(true)
                })
            })
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !all_stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not stop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bounded = |e: &ClientError| {
        matches!(
            e,
            ClientError::Timeout { .. } | ClientError::Unresponsive { .. }
        )
    };
    let outcome = async {
        let info = c.info().await.expect_err("info of a stopped agent");
        assert!(bounded(&info), "info: {info:?}");
        let mut e = req(&["true"]);
        e.spec.timeout_ms = Some(500);
        let exec = c.exec(e).await.expect_err("exec");
        assert!(bounded(&exec), "exec: {exec:?}");
        // No timeout of its own: liveness probes end it.
        let wait = c.wait(1, None).await.expect_err("wait");
        assert!(
            matches!(wait, ClientError::Unresponsive { .. }),
            "wait: {wait:?}"
        );
    };
    // A bound on the test itself, far above the deadlines (never a timing assertion).
    let r = tokio::time::timeout(Duration::from_secs(120), outcome).await;
    drop(resume);
    r.expect("calls to a wedged agent must end");
    a.client.info().await.expect("answers again after SIGCONT");
}
