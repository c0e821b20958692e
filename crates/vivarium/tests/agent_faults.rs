//! End-to-end tests of issue 8 on the agent's side, through the real runner and real sandboxes:
//! failed spawns under load are answered with a 4xx naming the cause, PID 1 survives a fork bomb
//! and a memory bomb and keeps answering, and an exec outlives a SIGKILLed runner.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Runner, KEY};
use futures::StreamExt;
use vivarium_api::{CreateRunRequest, ExecEvent, ExecRequest, Process, RunState};
use vivarium_client::{Client, ClientError};

fn create(image: &str, mem_mib: u64) -> CreateRunRequest {
    CreateRunRequest {
        image: Some(image.into()),
        vcpus: Some(1.0),
        mem_mib: Some(mem_mib),
        ..Default::default()
    }
}

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        ..Default::default()
    }
}

fn argv(a: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: Some(a.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// The sandbox's console log (the agent's stderr): on its scratch disk when it has one.
fn console_log(r: &Runner, id: &str) -> String {
    let dir = r.data_dir.path().join("sandboxes/runs").join(id);
    let path = [dir.join("scratch/console.log"), dir.join("console.log")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no console.log in {}", dir.display()));
    std::fs::read_to_string(path).expect("console.log")
}

/// A cgroup file of the sandbox in the given v1 controller (or the v2 unified tree).
fn cgroup_file(r: &Runner, id: &str, controller: &str, file: &str) -> Option<String> {
    let v1 = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(&r.instance)
        .join(id)
        .join(file);
    let v2 = Path::new("/sys/fs/cgroup")
        .join(&r.instance)
        .join(id)
        .join(file);
    std::fs::read_to_string(v1)
        .or_else(|_| std::fs::read_to_string(v2))
        .ok()
}

fn pids_current(r: &Runner, id: &str) -> u64 {
    cgroup_file(r, id, "pids", "pids.current")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The agent is still the sandbox's PID 1, started when the sandbox was.
async fn assert_agent_is_pid1(c: &Client, id: &str, uptime_before: Option<u64>) -> u64 {
    let r = c
        .exec(
            id,
            &sh("cat /proc/1/cmdline | tr '\\0' ' '; echo; cut -d' ' -f22 /proc/1/stat"),
        )
        .await
        .expect("exec after the bomb");
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let mut lines = r.stdout.lines();
    let cmdline = lines.next().unwrap_or_default();
    assert!(cmdline.contains("agent"), "PID 1 is {cmdline:?}");
    let start: u64 = lines
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .expect("start");
    if let Some(before) = uptime_before {
        assert_eq!(start, before, "PID 1 was restarted");
    }
    start
}

/// Issue 8: 1,000 execs, at most 100 in flight, a tenth failing to spawn (a missing program,
/// a missing program as another uid — std's fork path that raced the reaper — and an unknown
/// user): every one is answered, failures with a 400 naming the field and the cause, and the
/// agent logs no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_execs_with_failing_spawns_are_all_answered() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r.client.create_run(&create(&img, 256)).await.unwrap();
    const TOTAL: usize = 1000;
    let results: Vec<(usize, Result<vivarium_api::ExecResponse, ClientError>)> =
        futures::stream::iter(0..TOTAL)
            .map(|i| {
                let c = r.client.clone();
                let id = run.id.clone();
                async move {
                    let req = match i % 30 {
                        0 => argv(&["/no/such/program", "x"]),
                        10 => ExecRequest {
                            user: Some("12345".into()),
                            ..argv(&["/no/such/program-either"])
                        },
                        20 => ExecRequest {
                            user: Some("no-such-user-here".into()),
                            ..argv(&["true"])
                        },
                        _ => argv(&["echo", &i.to_string()]),
                    };
                    (i, c.exec(&id, &req).await)
                }
            })
            .buffer_unordered(100)
            .collect()
            .await;
    assert_eq!(results.len(), TOTAL);
    let mut failed = 0;
    for (i, res) in results {
        let expect = match i % 30 {
            0 => Some(("argv", "/no/such/program")),
            10 => Some(("argv", "/no/such/program-either")),
            20 => Some(("user", "no-such-user-here")),
            _ => None,
        };
        match expect {
            Some((field, cause)) => {
                let e = res.expect_err("the spawn must fail");
                assert_eq!(e.status(), Some(400), "exec {i}: {e}");
                let detail = e.detail().unwrap_or_else(|| panic!("exec {i}: {e}"));
                assert_eq!(detail.field.as_deref(), Some(field), "exec {i}: {e}");
                assert!(detail.message.contains(cause), "exec {i}: {e}");
                failed += 1;
            }
            None => {
                let out = res.unwrap_or_else(|e| panic!("exec {i}: {e}"));
                assert_eq!(out.exit_code, Some(0), "exec {i}: {out:?}");
                assert_eq!(out.stdout.trim(), i.to_string(), "exec {i}");
            }
        }
    }
    assert_eq!(failed, TOTAL / 10);
    let ok = r.client.sh(&run.id, "echo still").await.unwrap();
    assert_eq!(ok.stdout, "still\n");
    let log = console_log(&r, &run.id);
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    r.client.delete_run(&run.id).await.unwrap();
}

/// Issue 8: a fork bomb in a small sandbox runs into its pids limit (derived from its memory, so
/// before the memory runs out); PID 1 stays, answers every request during the bomb (an exec runs,
/// times out, or is refused with 503 `resource_exhausted`; never a hang or a 500), and runs execs
/// again once the bomb is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_survives_a_fork_bomb_and_answers_during_and_after() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r.client.create_run(&create(&img, 256)).await.unwrap();
    let c = &r.client;
    let started = assert_agent_is_pid1(c, &run.id, None).await;
    let limit = vivarium_api::limits::pids_max(256);
    let set: u64 = cgroup_file(&r, &run.id, "pids", "pids.max")
        .and_then(|s| s.trim().parse().ok())
        .expect("pids.max");
    assert_eq!(set, limit);
    // Restarts itself until /tmp/stop exists (`[` is a shell builtin: no fork needed to check);
    // a bomb shell whose fork fails just ends.
    let bomb = "b() { [ -e /tmp/stop ] && exit 0; b | b & }; while [ ! -e /tmp/stop ]; do b; done";
    c.spawn(&run.id, &sh(bomb)).await.expect("start the bomb");
    // Bounded wait until the bomb holds (nearly) every pid of the sandbox.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    while peak < limit * 9 / 10 {
        assert!(
            Instant::now() < deadline,
            "the bomb never neared the pids limit ({peak} of {limit})"
        );
        peak = peak.max(pids_current(&r, &run.id));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // During the bomb: every request is answered.
    let (mut ran, mut timed_out, mut refused) = (0, 0, 0);
    for _ in 0..20 {
        let exec = ExecRequest {
            timeout_s: Some(10.0),
            ..sh("echo alive")
        };
        match c.exec(&run.id, &exec).await {
            Ok(out) if out.timed_out => timed_out += 1,
            Ok(out) => {
                assert_eq!(out.stdout, "alive\n", "{out:?}");
                ran += 1;
            }
            Err(e) => {
                assert_eq!(e.status(), Some(503), "exec during the bomb: {e}");
                let d = e.detail().expect("error detail");
                assert_eq!(d.code, "resource_exhausted", "{e}");
                assert!(d.message.contains("process limit"), "{e}");
                refused += 1;
            }
        }
        // The agent's own work needs no fork: files are read by a kept thread.
        let passwd = c
            .read_file(&run.id, "/etc/passwd")
            .await
            .expect("read a file");
        assert!(!passwd.is_empty());
        peak = peak.max(pids_current(&r, &run.id));
    }
    let during = c.get_run(&run.id).await.unwrap();
    eprintln!(
        "fork bomb in {} MiB: peak {peak} of {limit} pids, {} OOM kills; execs during it: \
         {ran} ran, {timed_out} timed out, {refused} refused",
        during.mem_mib, during.oom_kills
    );
    assert_eq!(during.state, RunState::Running);
    assert_eq!(
        during.oom_kills, 0,
        "the bomb must run out of pids, not memory"
    );
    // Stop it: the agent writes the file itself.
    c.write_file(&run.id, "/tmp/stop", b"stop".to_vec(), None)
        .await
        .expect("write /tmp/stop");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match c.sh(&run.id, "echo after").await {
            Ok(out) if out.stdout == "after\n" => break,
            Ok(out) => panic!("{out:?}"),
            Err(e) => assert_eq!(e.status(), Some(503), "{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "execs never ran again after the bomb"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_agent_is_pid1(c, &run.id, Some(started)).await;
    let log = console_log(&r, &run.id);
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    r.client.delete_run(&run.id).await.unwrap();
}

/// Issue 8: a memory bomb in a 128 MiB sandbox is OOM-killed, not PID 1; the agent answers execs
/// while it grows and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_survives_a_memory_bomb_and_answers_during_and_after() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r.client.create_run(&create(&img, 128)).await.unwrap();
    let c = &r.client;
    let started = assert_agent_is_pid1(c, &run.id, None).await;
    let bomb = {
        let c = c.clone();
        let id = run.id.clone();
        tokio::spawn(async move { c.sh(&id, "x=a; while :; do x=$x$x; done").await })
    };
    // While it grows: execs keep being answered, and run.
    let mut during = 0;
    while !bomb.is_finished() {
        let out = c
            .sh(&run.id, "echo alive")
            .await
            .expect("exec during the bomb");
        assert_eq!(out.stdout, "alive\n", "{out:?}");
        during += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = bomb.await.unwrap().expect("the bomb's exec is answered");
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    assert!(killed.oom_killed, "{killed:?}");
    eprintln!("memory bomb: {during} execs answered while it grew");
    let after = c.get_run(&run.id).await.unwrap();
    assert_eq!(after.state, RunState::Running, "{after:?}");
    assert!(after.oom_kills >= 1);
    assert_agent_is_pid1(c, &run.id, Some(started)).await;
    r.client.delete_run(&run.id).await.unwrap();
}

/// Issue 8: an exec running when the runner is SIGKILLed keeps running inside the sandbox (the
/// dropped connection detaches it); after the restart its status and output are fetched through
/// the processes API, and its side effect happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_survives_a_sigkilled_runner() {
    let mut r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r.client.create_run(&create(&img, 256)).await.unwrap();
    let cmd = "sleep 3; echo done > /tmp/f; echo finished; echo warn >&2";
    let exec = {
        let c = r.client.clone();
        let id = run.id.clone();
        tokio::spawn(async move { c.sh(&id, cmd).await })
    };
    let is_it = |p: &Process| p.argv.last().map(String::as_str) == Some(cmd);
    // A running exec is listed: wait until it is (so the kill lands while it runs).
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        let listed = r.client.processes(&run.id).await.unwrap();
        if let Some(p) = listed.iter().find(|p| is_it(p)) {
            assert!(p.running, "{p:?}");
            break p.pid;
        }
        assert!(
            Instant::now() < deadline,
            "the exec is never listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    r.kill9();
    let lost = exec.await.unwrap();
    assert!(
        lost.is_err(),
        "the exec answered through a dead runner: {lost:?}"
    );
    r.spawn().await;
    let listed = r.client.processes(&run.id).await.unwrap();
    let p = listed
        .iter()
        .find(|p| is_it(p))
        .unwrap_or_else(|| panic!("the detached exec is not listed after the restart: {listed:?}"));
    assert_eq!(p.pid, pid);
    let done = r.client.wait(&run.id, pid, Some(60.0)).await.unwrap();
    assert!(!done.running, "{done:?}");
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    assert_eq!(done.stdout, "finished\n");
    assert_eq!(done.stderr, "warn\n");
    let f = r.client.read_file(&run.id, "/tmp/f").await.unwrap();
    assert_eq!(&f[..], b"done\n");
    let (status, body) = r
        .client
        .raw(
            reqwest::Method::GET,
            &format!("/v1/runs/{}/processes/{pid}", run.id),
            None,
            Some(KEY),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{body}");
    let one: Process = serde_json::from_str(&body).unwrap();
    assert_eq!((one.running, one.exit_code), (false, Some(0)), "{one:?}");
    r.client.delete_run(&run.id).await.unwrap();
}

/// An HTTP client that hangs up on a streaming exec still stops it (the runner cancels it; only a
/// dead runner leaves it detached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_up_on_a_streaming_exec_kills_it() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r.client.create_run(&create(&img, 128)).await.unwrap();
    let mut events = Box::pin(
        r.client
            .exec_stream(&run.id, &sh("echo up; exec sleep 300"))
            .await
            .unwrap(),
    );
    let pid = match events.next().await {
        Some(Ok(ExecEvent::Started { pid })) => pid,
        other => panic!("expected started, got {other:?}"),
    };
    match events.next().await {
        Some(Ok(ExecEvent::Stdout { data })) => assert_eq!(data, "up\n"),
        other => panic!("expected output, got {other:?}"),
    }
    drop(events);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = r.client.processes(&run.id).await.unwrap();
        match listed.iter().find(|p| p.pid == pid) {
            Some(p) if p.running => {}
            Some(p) => {
                assert_eq!(p.signal, Some(9), "{p:?}");
                break;
            }
            None => break,
        }
        assert!(Instant::now() < deadline, "still running: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.client.delete_run(&run.id).await.unwrap();
}
