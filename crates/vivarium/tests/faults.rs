//! End-to-end tests of issue 8, "faults tell the truth and nothing hangs": a sandbox that dies is
//! `failed` with its reason within a second or two (and stays so across a runner restart), OOM kills
//! anywhere in a sandbox are reported, every request limit is a 4xx naming its field, and a huge
//! body is refused without the runner buffering it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Runner, KEY};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vivarium_api::{limits, CreateRunRequest, ExecRequest, FailureReason, OnFailure, RunState};

fn create(image: &str) -> CreateRunRequest {
    CreateRunRequest {
        image: Some(image.into()),
        vcpus: Some(1.0),
        mem_mib: Some(128),
        ..Default::default()
    }
}

/// The sandbox's memory cgroup (v1) or its cgroup (v2).
fn cgroup_dir(r: &Runner, id: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/memory")
        .join(&r.instance)
        .join(id);
    if v1.exists() {
        v1
    } else {
        Path::new("/sys/fs/cgroup").join(&r.instance).join(id)
    }
}

fn cgroup_pids(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// SIGKILLs every process of the sandbox from the host, as an operator or a host OOM would.
fn kill_from_host(r: &Runner, id: &str) {
    let dir = cgroup_dir(r, id);
    let pids = cgroup_pids(&dir);
    assert!(!pids.is_empty(), "no processes in {}", dir.display());
    let status = std::process::Command::new("kill")
        .arg("-9")
        .args(&pids)
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pids:?}");
}

/// Polls the run until it is `failed` (or gone), for at most `within`.
/// Waits until the run is `failed` (or gone). `within` bounds the wait so a broken watcher fails
/// the test instead of hanging it; it is not a timing claim (the watcher looks every 250 ms, and
/// the time it took is printed; timing belongs in benchmarks).
async fn wait_failed(r: &Runner, id: &str, within: Duration) -> Option<vivarium_api::Run> {
    let started = Instant::now();
    let deadline = started + within;
    loop {
        match r.client.get_run(id).await {
            Ok(run) if run.state == RunState::Failed => {
                println!("failed after {} ms", started.elapsed().as_millis());
                return Some(run);
            }
            Ok(run) => assert!(
                Instant::now() < deadline,
                "sandbox still {:?} {within:?} after it died",
                run.state
            ),
            Err(e) if e.status() == Some(404) => return None,
            Err(e) => panic!("GET run: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Host objects left of these sandboxes (`host_traces` lists every sandbox of the runner).
fn traces_of(r: &Runner, ids: &[String]) -> Vec<String> {
    r.host_traces(ids)
        .into_iter()
        .filter(|t| {
            ids.iter()
                .any(|id| t.contains(id.as_str()) || t.contains(&id[..8]))
        })
        .collect()
}

async fn raw_json(r: &Runner, method: Method, path: &str, body: Option<String>) -> (u16, Value) {
    let (s, text) = r.client.raw(method, path, body, Some(KEY)).await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (s.as_u16(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sandbox_is_failed_with_its_reason() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r.client.create_run(&create(&img)).await.unwrap();
    assert_eq!(run.on_failure, OnFailure::Keep, "keep is the default");
    r.client
        .sh(&run.id, "echo hello from the sandbox")
        .await
        .unwrap();

    kill_from_host(&r, &run.id);
    let failed = wait_failed(&r, &run.id, Duration::from_secs(15))
        .await
        .expect("kept by default");
    let f = failed.failure.clone().expect("a failure");
    assert_eq!(f.reason, FailureReason::Killed, "{f:?}");
    assert_eq!(f.signal, Some(9), "{f:?}");
    assert!(f.message.contains("SIGKILL"), "{f:?}");

    // The list shows it too.
    let listed = r.client.list_runs(&Default::default()).await.unwrap();
    let l = listed.iter().find(|x| x.id == run.id).expect("listed");
    assert_eq!(l.state, RunState::Failed);
    assert_eq!(
        l.failure.as_ref().map(|f| f.reason),
        Some(FailureReason::Killed)
    );

    // Exec and friends: 409 naming the state and the reason.
    for (method, path, body) in [
        (
            Method::POST,
            format!("/v1/runs/{}/exec", run.id),
            Some(r#"{"command":"true"}"#),
        ),
        (Method::GET, format!("/v1/runs/{}/processes", run.id), None),
        (
            Method::GET,
            format!("/v1/runs/{}/files/stat?path=/", run.id),
            None,
        ),
    ] {
        let (s, v) = raw_json(&r, method, &path, body.map(str::to_string)).await;
        assert_eq!(s, 409, "{path}: {v}");
        assert_eq!(v["error"]["code"], "sandbox_failed", "{v}");
        assert_eq!(v["error"]["reason"], "killed", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("failed") && msg.contains("SIGKILL"), "{msg}");
    }

    // Its console log is kept and readable; its host objects are gone.
    let (s, _) = r
        .client
        .raw(
            Method::GET,
            &format!("/v1/runs/{}/logs", run.id),
            None,
            Some(KEY),
        )
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r.host_traces(std::slice::from_ref(&run.id)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "host objects of the failed sandbox: {:#?}",
            r.host_traces(std::slice::from_ref(&run.id))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A failed run can be deleted.
    r.client.delete_run(&run.id).await.unwrap();
    assert_eq!(
        r.client.get_run(&run.id).await.unwrap_err().status(),
        Some(404)
    );
    assert!(!r
        .data_dir
        .path()
        .join("logs")
        .join(format!("{}.log", run.id))
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_delete_removes_the_dead_sandbox() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r
        .client
        .create_run(&CreateRunRequest {
            on_failure: Some(OnFailure::Delete),
            ..create(&img)
        })
        .await
        .unwrap();
    assert_eq!(run.on_failure, OnFailure::Delete);
    kill_from_host(&r, &run.id);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match r.client.get_run(&run.id).await {
            Err(e) if e.status() == Some(404) => break,
            other => {
                assert!(Instant::now() < deadline, "still there: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r.host_traces(std::slice::from_ref(&run.id)).is_empty() {
        assert!(Instant::now() < deadline, "host objects left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_survive_a_runner_restart() {
    let mut r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    // Failed before the restart: stays failed with the same reason.
    let early = r.client.create_run(&create(&img)).await.unwrap();
    kill_from_host(&r, &early.id);
    wait_failed(&r, &early.id, Duration::from_secs(15))
        .await
        .unwrap();
    // Dies while no runner watches: failed (kept) or removed (delete).
    let keep = r.client.create_run(&create(&img)).await.unwrap();
    let delete = r
        .client
        .create_run(&CreateRunRequest {
            on_failure: Some(OnFailure::Delete),
            ..create(&img)
        })
        .await
        .unwrap();
    let alive = r.client.create_run(&create(&img)).await.unwrap();

    r.kill9();
    kill_from_host(&r, &keep.id);
    kill_from_host(&r, &delete.id);
    // Gone for good before the runner is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cgroup_pids(&cgroup_dir(&r, &keep.id)).is_empty()
        || !cgroup_pids(&cgroup_dir(&r, &delete.id)).is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "killed sandboxes still have processes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.spawn().await;

    let e = r.client.get_run(&early.id).await.unwrap();
    assert_eq!(e.state, RunState::Failed);
    assert_eq!(e.failure.unwrap().reason, FailureReason::Killed);
    let k = r.client.get_run(&keep.id).await.unwrap();
    assert_eq!(k.state, RunState::Failed, "{k:?}");
    let f = k.failure.unwrap();
    assert_eq!(f.reason, FailureReason::Lost, "{f:?}");
    assert!(f.message.contains("not running"), "{f:?}");
    assert_eq!(
        r.client.get_run(&delete.id).await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        r.client.sh(&alive.id, "echo ok").await.unwrap().stdout,
        "ok\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = [early.id.clone(), keep.id.clone(), delete.id.clone()];
    loop {
        let left = traces_of(&r, &dead);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{left:#?}\n{}", r.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in [&early.id, &keep.id, &alive.id] {
        r.client.delete_run(id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_grandchild_is_reported() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r
        .client
        .create_run(&CreateRunRequest {
            mem_mib: Some(64),
            ..create(&img)
        })
        .await
        .unwrap();
    // The inner shell grows a 500 MB string and is OOM-killed; the outer one survives and exits 0.
    let out = r
        .client
        .exec(
            &run.id,
            &ExecRequest {
                argv: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    r#"sh -c 'x=$(head -c 500m /dev/zero | tr "\000" a); echo ${#x}'; echo "inner: $?""#
                        .into(),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(out.stdout.contains("inner: 137"), "{out:?}");
    assert!(out.oom_killed, "a grandchild was OOM-killed: {out:?}");
    let after = r.client.get_run(&run.id).await.unwrap();
    assert_eq!(after.state, RunState::Running);
    assert!(after.oom_kills >= 1, "{after:?}");

    // A command that does nothing of the sort is not blamed for the earlier kill.
    let calm = r.client.sh(&run.id, "echo calm").await.unwrap();
    assert!(!calm.oom_killed, "{calm:?}");
    r.client.delete_run(&run.id).await.unwrap();
}

/// The host pid of the sandbox's init: the process whose innermost pid is 1.
fn init_pid(dir: &Path) -> String {
    cgroup_pids(dir)
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("NSpid:"))
                .is_some_and(|l| l.split_whitespace().last() == Some("1"))
        })
        .expect("the sandbox's init")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_init_fails_the_sandbox_as_oom() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r
        .client
        .create_run(&CreateRunRequest {
            mem_mib: Some(64),
            ..create(&img)
        })
        .await
        .unwrap();
    // A memory hog in the background (it starts after a second)...
    let dir = cgroup_dir(&r, &run.id);
    let init = init_pid(&dir);
    r.client
        .spawn(
            &run.id,
            &ExecRequest {
                // Back to the default score first: the agent starts its children at the
                // maximum (1000) where it cannot lower its own, which would tie with the init's.
                command: Some(
                    "echo 0 > /proc/self/oom_score_adj; sleep 1; \
                     x=$(head -c 500m /dev/zero | tr '\\000' a)"
                        .into(),
                ),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // ...that the OOM killer must spare, so it kills the init, as it can in a fork bomb.
    for pid in cgroup_pids(&dir).into_iter().filter(|p| *p != init) {
        let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000");
    }
    std::fs::write(format!("/proc/{init}/oom_score_adj"), "1000").unwrap();
    // The hog needs a moment to reach the limit; the death is then noticed within a second.
    let failed = wait_failed(&r, &run.id, Duration::from_secs(10))
        .await
        .unwrap();
    let f = failed.failure.unwrap();
    assert_eq!(f.reason, FailureReason::OomKilled, "{f:?}");
    assert!(f.message.contains("64 MiB"), "{f:?}");
    assert!(failed.oom_kills >= 1, "{:?}", failed.oom_kills);
    let (s, v) = raw_json(
        &r,
        Method::POST,
        &format!("/v1/runs/{}/exec", run.id),
        Some(r#"{"command":"true"}"#.into()),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "sandbox_failed", "{v}");
    assert_eq!(v["error"]["reason"], "oom_killed", "{v}");
    r.client.delete_run(&run.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_a_4xx_naming_its_field() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let base = serde_json::to_value(create(&img)).unwrap();
    let with = |field: &str, value: Value| {
        let mut v = base.clone();
        v[field] = value;
        v.to_string()
    };
    let many_env: serde_json::Map<String, Value> = (0..=limits::MAX_ENV_VARS)
        .map(|i| (format!("V{i}"), Value::from("x")))
        .collect();
    let many_meta: serde_json::Map<String, Value> = (0..=limits::MAX_METADATA_ENTRIES)
        .map(|i| (format!("k{i}"), Value::from("x")))
        .collect();
    let long_value = "x".repeat(limits::MAX_ENV_VALUE_BYTES + 1);
    let cases: Vec<(String, &str)> = vec![
        (with("vcpus", 0.0001.into()), "vcpus"),
        (with("vcpus", 0.into()), "vcpus"),
        (with("vcpus", 257.into()), "vcpus"),
        (with("mem_mib", 8.into()), "mem_mib"),
        (with("mem_mib", (limits::MAX_MEM_MIB + 1).into()), "mem_mib"),
        (with("disk_mib", 15.into()), "disk_mib"),
        (
            with("disk_mib", (limits::MAX_DISK_MIB + 1).into()),
            "disk_mib",
        ),
        (with("disk_mib", (16u64 << 20).into()), "disk_mib"),
        (with("timeout_s", 0.into()), "timeout_s"),
        (with("env", Value::Object(many_env)), "env"),
        (with("env", serde_json::json!({ "A": long_value })), "env.A"),
        (with("env", serde_json::json!({ "A=B": "x" })), "env.A=B"),
        (with("metadata", Value::Object(many_meta)), "metadata"),
        (with("image", "a".repeat(5000).into()), "image"),
        (with("on_failure", "explode".into()), "on_failure"),
    ];
    for (body, field) in cases {
        let (s, v) = raw_json(&r, Method::POST, "/v1/runs", Some(body.clone())).await;
        assert_eq!(s, 400, "{field}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }

    // disk_mib at the documented maximum: made when the host has the room, else a 400 saying so.
    let free_mib = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-m"])
            .arg(r.data_dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let (s, v) = raw_json(
        &r,
        Method::POST,
        "/v1/runs",
        Some(with("disk_mib", limits::MAX_DISK_MIB.into())),
    )
    .await;
    if free_mib >= limits::MAX_DISK_MIB + 1024 {
        assert_eq!(s, 201, "{v}");
        r.client
            .delete_run(v["id"].as_str().unwrap())
            .await
            .unwrap();
    } else {
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["field"], "disk_mib", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("free"),
            "{v}"
        );
    }
    // The largest disk this host can give is made, and the sandbox sees it.
    let largest = limits::MAX_DISK_MIB.min(free_mib.saturating_sub(1024));
    assert!(
        largest >= limits::MIN_DISK_MIB,
        "the host has no disk to test with"
    );
    let run = r
        .client
        .create_run(&CreateRunRequest {
            disk_mib: Some(largest),
            ..create(&img)
        })
        .await
        .unwrap();
    let df = r.client.sh(&run.id, "df -m / | tail -n 1").await.unwrap();
    let size: u64 = df
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        size * 100 >= largest * 95 && size <= largest,
        "asked {largest} MiB, df says {}",
        df.stdout
    );

    // Exec's env has the same limits.
    let (s, v) = raw_json(
        &r,
        Method::POST,
        &format!("/v1/runs/{}/exec", run.id),
        Some(serde_json::json!({"command": "true", "env": {"A": "x".repeat(limits::MAX_ENV_VALUE_BYTES + 1)}}).to_string()),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("env.A")),
        "{v}"
    );
    // The agent's own directory cannot be changed through the files API.
    let (s, v) = raw_json(
        &r,
        Method::DELETE,
        &format!(
            "/v1/runs/{}/files?path=/.vivarium/run&recursive=true",
            run.id
        ),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (403, Some("path")),
        "{v}"
    );
    assert_eq!(
        r.client.sh(&run.id, "echo ok").await.unwrap().stdout,
        "ok\n"
    );

    // The list filter: deepObject and dotted forms, malformed ones refused.
    let tagged = r
        .client
        .create_run(&CreateRunRequest {
            metadata: [("team".to_string(), "b c".to_string())].into(),
            ..create(&img)
        })
        .await
        .unwrap();
    for q in [
        "metadata%5Bteam%5D=b%20c",
        "metadata[team]=b+c",
        "metadata.team=b%20c",
    ] {
        let (s, v) = raw_json(&r, Method::GET, &format!("/v1/runs?{q}"), None).await;
        assert_eq!(s, 200, "{q}: {v}");
        let ids: Vec<&str> = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [tagged.id.as_str()], "{q}");
    }
    let (s, v) = raw_json(&r, Method::GET, "/v1/runs?metadata=x", None).await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("metadata")),
        "{v}"
    );
    r.client.delete_run(&run.id).await.unwrap();
    r.client.delete_run(&tagged.id).await.unwrap();
}

/// Peak and current resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Sends a request whose body is `total` bytes of `fill` (chunked when `content_length` is false),
/// writing as long as the server reads, and answers the status line and the response's body.
async fn send_big(addr: &str, head: &str, total: u64, content_length: bool) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let framing = if content_length {
        format!("Content-Length: {total}\r\n")
    } else {
        "Transfer-Encoding: chunked\r\n".to_string()
    };
    let head = format!("{head}Authorization: Bearer {KEY}\r\n{framing}Connection: close\r\n\r\n");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 1 << 20];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(chunk.len() as u64) as usize;
            if content_length {
                wr.write_all(&chunk[..n]).await?;
            } else {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                wr.write_all(&chunk[..n]).await?;
                wr.write_all(b"\r\n").await?;
            }
            sent += n as u64;
        }
        if !content_length {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        Ok::<_, std::io::Error>(sent)
    });
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut resp)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_are_refused_without_being_buffered() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r
        .client
        .create_run(&CreateRunRequest {
            disk_mib: Some(32),
            ..create(&img)
        })
        .await
        .unwrap();
    let pid = r.child.as_ref().unwrap().id();
    let addr = format!("127.0.0.1:{}", r.port);
    let (hwm_before, rss_before) = rss_kib(pid);
    const BIG: u64 = 200 << 20;

    for content_length in [true, false] {
        let (s, body) = send_big(
            &addr,
            "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
            BIG,
            content_length,
        )
        .await;
        assert_eq!(s, 413, "content_length={content_length}: {body}");
        assert!(body.contains("payload_too_large"), "{body}");
        // Other JSON routes, e.g. exec, too.
        let (s, body) = send_big(
            &addr,
            &format!(
                "POST /v1/runs/{}/exec/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
                run.id
            ),
            BIG,
            content_length,
        )
        .await;
        assert_eq!(s, 413, "{body}");
        assert!(body.contains("payload_too_large"), "{body}");
        // An upload past the sandbox's disk (32 MiB).
        let (s, body) = send_big(
            &addr,
            &format!(
                "PUT /v1/runs/{}/files?path=/tmp/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n",
                run.id
            ),
            BIG,
            content_length,
        )
        .await;
        assert_eq!(s, 413, "upload, content_length={content_length}: {body}");
    }
    let (hwm_after, rss_after) = rss_kib(pid);
    let grew = hwm_after.saturating_sub(hwm_before.max(rss_before));
    assert!(
        grew < 8 * 1024 && rss_after < rss_before + 8 * 1024,
        "runner memory grew: VmHWM {hwm_before} -> {hwm_after} KiB, VmRSS {rss_before} -> {rss_after} KiB"
    );

    // A refused streamed upload may leave what it had written (up to the disk's end) at its path:
    // clear it, so the upload below has room.
    r.client.sh(&run.id, "rm -f /tmp/big").await.unwrap();
    // An upload within the limit is streamed through and lands whole.
    let data = vec![7u8; 8 << 20];
    r.client
        .write_file(&run.id, "/tmp/ok", data.clone(), None)
        .await
        .unwrap();
    let back = r.client.read_file(&run.id, "/tmp/ok").await.unwrap();
    assert_eq!(back.len(), data.len());
    r.client.delete_run(&run.id).await.unwrap();
}
