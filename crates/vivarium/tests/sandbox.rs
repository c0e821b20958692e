//! End-to-end tests of issue "runner, image store and isolated sandboxes": the real runner binary,
//! real crun sandboxes, a real registry on loopback.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{sha256, Runner, KEY};
use futures::StreamExt;
use reqwest::Method;
use vivarium_api::{CreateRunRequest, ExecEvent, ExecRequest, NetworkMode};
use vivarium_image::test_support::TestRegistry;

fn create(image: &str) -> CreateRunRequest {
    CreateRunRequest {
        image: Some(image.into()),
        vcpus: Some(1.0),
        mem_mib: Some(256),
        ..Default::default()
    }
}

async fn sh(r: &Runner, id: &str, cmd: &str) -> vivarium_api::ExecResponse {
    r.client
        .sh(id, cmd)
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_create_exec_files_delete() {
    let r = Runner::start().await;
    let registry = TestRegistry::start().expect("starting docker-registry on loopback");
    let local = r.import_busybox("local/busybox:1.0").await;
    let remote = format!("{}/test/busybox:1.0", registry.addr());
    r.client
        .push_image(&local, &remote)
        .await
        .expect("push to the loopback registry");
    r.client.remove_image(&local).await.unwrap();

    // Pull with progress, then create from the registry reference.
    let mut progress = Box::pin(r.client.build_image_progress(&remote).await.unwrap());
    let mut last = None;
    while let Some(p) = progress.next().await {
        last = Some(p.unwrap());
    }
    let image = match last {
        Some(vivarium_api::ImageProgress::Done { image }) => image,
        other => panic!("pull did not end in done: {other:?}"),
    };
    assert!(image.digest.starts_with("sha256:"));
    assert!(r
        .client
        .list_images()
        .await
        .unwrap()
        .iter()
        .any(|i| i.reference == remote));

    let mut req = create(&remote);
    req.env = BTreeMap::from([("GREETING".to_string(), "hi there".to_string())]);
    req.metadata = BTreeMap::from([("team".to_string(), "qa".to_string())]);
    let run = r.client.create_run(&req).await.unwrap();
    assert_eq!(run.image_digest, image.digest);
    assert!(run.expires_at > run.created_at);

    // Image ENV and request env are applied; the image's CMD was not run (PID 1 is the agent).
    let out = sh(
        &r,
        &run.id,
        "echo $GREETING; echo $VIVARIUM_TEST_IMAGE; cat /proc/1/cmdline | tr '\\0' ' '",
    )
    .await;
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "hi there");
    assert_eq!(lines[1], "1");
    assert!(
        lines[2].contains("/.vivarium/agent"),
        "PID 1 is {:?}",
        lines[2]
    );

    // Exit codes, stderr, stdin, cwd, argv.
    let out = sh(&r, &run.id, "echo oops >&2; exit 7").await;
    assert_eq!((out.exit_code, out.stderr.as_str()), (Some(7), "oops\n"));
    let out = r
        .client
        .exec(
            &run.id,
            &ExecRequest {
                argv: Some(vec!["cat".into()]),
                stdin: Some("fed".into()),
                cwd: Some("/tmp".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "fed");

    // Metadata filter.
    let mine = r
        .client
        .list_runs(&BTreeMap::from([("team".into(), "qa".into())]))
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert!(r
        .client
        .list_runs(&BTreeMap::from([("team".into(), "x".into())]))
        .await
        .unwrap()
        .is_empty());

    // Files: 50 MiB byte-exact both ways through the streamed endpoints.
    let big: Vec<u8> = (0..50 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let src = r.data_dir.path().join("big.bin");
    std::fs::write(&src, &big).unwrap();
    let info = r
        .client
        .upload(&run.id, &src, "/data/deep/big.bin", Some(0o600))
        .await
        .unwrap();
    assert_eq!(info.size, big.len() as u64);
    assert_eq!(info.mode & 0o777, 0o600);
    let out = sh(&r, &run.id, "sha256sum /data/deep/big.bin").await;
    assert!(out.stdout.starts_with(&sha256(&big)), "{out:?}");
    let dst = r.data_dir.path().join("back.bin");
    assert_eq!(
        r.client
            .download(&run.id, "/data/deep/big.bin", &dst)
            .await
            .unwrap(),
        big.len() as u64
    );
    assert_eq!(sha256(&std::fs::read(&dst).unwrap()), sha256(&big));

    // Small files, list, stat, mkdir, remove.
    r.client
        .write_file(&run.id, "/data/a.txt", "alpha", None)
        .await
        .unwrap();
    assert_eq!(
        &r.client.read_file(&run.id, "/data/a.txt").await.unwrap()[..],
        b"alpha"
    );
    r.client.mkdir(&run.id, "/data/x/y").await.unwrap();
    let names: Vec<String> = r
        .client
        .list_files(&run.id, "/data", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for n in ["a.txt", "deep", "x"] {
        assert!(names.contains(&n.to_string()), "{names:?}");
    }
    assert_eq!(r.client.stat(&run.id, "/data/a.txt").await.unwrap().size, 5);
    r.client
        .remove_file(&run.id, "/data/x", true)
        .await
        .unwrap();
    let e = r.client.stat(&run.id, "/data/x").await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let e = r.client.read_file(&run.id, "/nope").await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");

    // The image cannot be removed while a sandbox runs on it.
    let e = r.client.remove_image(&remote).await.unwrap_err();
    assert_eq!(
        (e.status(), e.detail().unwrap().code.as_str()),
        (Some(409), "image_in_use"),
        "{e}"
    );

    // Extend the timeout.
    let later = r.client.set_timeout(&run.id, 3600).await.unwrap();
    assert!(later.expires_at > run.expires_at);

    r.client.delete_run(&run.id).await.unwrap();
    assert_eq!(
        r.client.get_run(&run.id).await.unwrap_err().status(),
        Some(404)
    );
    let e = r.client.sh(&run.id, "true").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(e.detail().unwrap().code, "not_found");
    assert!(
        r.host_traces(std::slice::from_ref(&run.id)).is_empty(),
        "{:?}",
        r.host_traces(&[run.id])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_background_processes() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r.client.create_run(&create(&img)).await.unwrap();

    let req = ExecRequest {
        command: Some("echo one; sleep 0.2; echo two >&2; exit 3".into()),
        ..Default::default()
    };
    let events: Vec<ExecEvent> = r
        .client
        .exec_stream(&run.id, &req)
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert!(
        matches!(events.first(), Some(ExecEvent::Started { .. })),
        "{events:?}"
    );
    let out: Vec<&ExecEvent> = events
        .iter()
        .filter(|e| !matches!(e, ExecEvent::Started { .. }))
        .collect();
    assert_eq!(
        out[0],
        &ExecEvent::Stdout {
            data: "one\n".into()
        }
    );
    assert_eq!(
        out[1],
        &ExecEvent::Stderr {
            data: "two\n".into()
        }
    );
    assert!(
        matches!(
            out[2],
            ExecEvent::Exit {
                exit_code: Some(3),
                ..
            }
        ),
        "{out:?}"
    );

    // Background: spawn, list, signal, wait.
    let p = r
        .client
        .spawn(
            &run.id,
            &ExecRequest {
                command: Some("echo started; exec sleep 300".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(p.running);
    let listed = r.client.processes(&run.id).await.unwrap();
    assert!(
        listed.iter().any(|q| q.pid == p.pid && q.running),
        "{listed:?}"
    );
    r.client.signal(&run.id, p.pid, "TERM").await.unwrap();
    let done = r.client.wait(&run.id, p.pid, Some(10.0)).await.unwrap();
    assert!(!done.running);
    assert_eq!(done.signal, Some(15));
    assert_eq!(done.stdout, "started\n");

    // A foreground timeout kills the process group.
    let t = r
        .client
        .exec(
            &run.id,
            &ExecRequest {
                command: Some("sleep 30".into()),
                timeout_s: Some(0.5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(t.timed_out, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let a = r.client.create_run(&create(&img)).await.unwrap();
    let b = r.client.create_run(&create(&img)).await.unwrap();

    // Own PID namespace: only its own few processes, PID 1 is the agent.
    let ps = sh(&r, &a.id, "ls -d /proc/[0-9]* | wc -l").await;
    let n: u32 = ps.stdout.trim().parse().unwrap();
    assert!(n < 10, "sandbox sees {n} processes");
    // Own hostname.
    let host = sh(&r, &a.id, "hostname").await.stdout;
    assert!(host.contains(&a.id), "hostname {host:?}");
    assert_ne!(
        host.trim(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
    );
    // Host files are not visible.
    let marker = format!("/var/tmp/vivarium-host-marker-{}", a.id);
    std::fs::write(&marker, "secret").unwrap();
    let out = sh(&r, &a.id, &format!("cat {marker}")).await;
    assert_ne!(out.exit_code, Some(0));
    std::fs::remove_file(&marker).unwrap();
    // Not root of the host: capabilities dropped (no CAP_SYS_ADMIN → mount fails).
    let out = sh(&r, &a.id, "mount -t tmpfs x /mnt").await;
    assert_ne!(
        out.exit_code,
        Some(0),
        "mount worked inside the sandbox: {out:?}"
    );

    // Network: B listens; the host reaches it, A does not.
    let (ip_a, ip_b) = (
        a.ip.clone().expect("nat sandbox has an ip"),
        b.ip.clone().unwrap(),
    );
    assert_ne!(ip_a, ip_b);
    r.client
        .spawn(
            &b.id,
            &ExecRequest {
                command: Some("while true; do echo pong | nc -l -p 8080; done".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from_host = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(format!("{ip_b}:8080")),
    )
    .await;
    assert!(
        matches!(from_host, Ok(Ok(_))),
        "host cannot reach the sandbox: {from_host:?}"
    );
    let out = sh(&r, &a.id, &format!("echo ping | nc -w 2 {ip_b} 8080")).await;
    assert!(
        !out.stdout.contains("pong"),
        "sandbox A reached sandbox B: {out:?}"
    );

    // Writes persist for the sandbox's life but never reach the cached image.
    sh(&r, &a.id, "echo persisted > /etc/written-by-a").await;
    assert_eq!(
        sh(&r, &a.id, "cat /etc/written-by-a").await.stdout,
        "persisted\n"
    );
    assert_ne!(
        sh(&r, &b.id, "cat /etc/written-by-a").await.exit_code,
        Some(0)
    );
    let images = r.data_dir.path().join("images");
    let found = std::process::Command::new("find")
        .arg(&images)
        .args(["-name", "written-by-a"])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "write reached the image cache: {}",
        String::from_utf8_lossy(&found.stdout)
    );

    // A process allocating past mem_mib is OOM-killed, and the API says so; the sandbox lives on.
    let small = r
        .client
        .create_run(&CreateRunRequest {
            mem_mib: Some(64),
            network: Some(NetworkMode::None.into()),
            ..create(&img)
        })
        .await
        .unwrap();
    assert!(small.ip.is_none());
    let out = sh(
        &r,
        &small.id,
        "dd if=/dev/zero of=/dev/null bs=256M count=1",
    )
    .await;
    assert!(out.oom_killed, "{out:?}");
    assert_eq!(out.signal, Some(9));
    assert!(r.client.get_run(&small.id).await.unwrap().oom_kills >= 1);
    assert_eq!(sh(&r, &small.id, "echo alive").await.stdout, "alive\n");
    // Network none: only loopback.
    let links = sh(&r, &small.id, "ls /sys/class/net").await.stdout;
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), vec!["lo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_after_many_cycles() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let mut ids = Vec::new();
    // 8 sequential cycles, then 3 rounds of 4 in parallel: 20 in all.
    for _ in 0..8 {
        let run = r.client.create_run(&create(&img)).await.unwrap();
        assert_eq!(sh(&r, &run.id, "echo ok").await.stdout, "ok\n");
        r.client.delete_run(&run.id).await.unwrap();
        ids.push(run.id);
    }
    for _ in 0..3 {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let c = r.client.clone();
                let img = img.clone();
                tokio::spawn(async move {
                    let run = c.create_run(&create(&img)).await.unwrap();
                    let out = c.sh(&run.id, "echo ok").await.unwrap();
                    assert_eq!(out.stdout, "ok\n");
                    c.delete_run(&run.id).await.unwrap();
                    run.id
                })
            })
            .collect();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
    }
    assert_eq!(ids.len(), 20);
    assert!(r
        .client
        .list_runs(&Default::default())
        .await
        .unwrap()
        .is_empty());
    let left = r.host_traces(&ids);
    assert!(left.is_empty(), "left on the host: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_survive_runner_sigkill() {
    let mut r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let a = r.client.create_run(&create(&img)).await.unwrap();
    let b = r.client.create_run(&create(&img)).await.unwrap();
    sh(&r, &a.id, "echo before > /tmp/state").await;

    r.kill9();
    r.spawn().await;

    for id in [&a.id, &b.id] {
        assert_eq!(sh(&r, id, "echo alive").await.stdout, "alive\n");
    }
    assert_eq!(sh(&r, &a.id, "cat /tmp/state").await.stdout, "before\n");
    let runs = r.client.list_runs(&Default::default()).await.unwrap();
    assert_eq!(runs.len(), 2);
    r.client.delete_run(&a.id).await.unwrap();
    r.client.delete_run(&b.id).await.unwrap();
    assert!(r.host_traces(&[a.id, b.id]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sandboxes_are_deleted() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let run = r
        .client
        .create_run(&CreateRunRequest {
            timeout_s: Some(1),
            ..create(&img)
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.client.get_run(&run.id).await.is_ok() {
        assert!(Instant::now() < deadline, "sandbox outlived its timeout");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The run leaves the API when its teardown starts; its host objects go moments later.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = r.host_traces(std::slice::from_ref(&run.id));
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left on the host: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx_and_leaves_nothing() {
    let r = Runner::start().await;
    let registry = TestRegistry::start().unwrap();
    let img = r.import_busybox("local/busybox:1.0").await;
    let c = &r.client;

    async fn expect(
        r: &Runner,
        method: Method,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
        status: u16,
        field: Option<&str>,
    ) -> serde_json::Value {
        let (s, text) = r
            .client
            .raw(method, path, body.map(str::to_string), key)
            .await
            .unwrap();
        assert_eq!(s.as_u16(), status, "{path} {body:?} answered {s}: {text}");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{v}"
        );
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{v}");
        }
        v
    }
    let k = Some(KEY);
    expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some("{\"image\": "),
        k,
        400,
        Some("body"),
    )
    .await;
    expect(&r, Method::POST, "/v1/runs", Some("[1,2]"), k, 400, None).await;
    let unknown = format!("{{\"image\":\"{}/nothing/here:1.0\"}}", registry.addr());
    let v = expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some(&unknown),
        k,
        404,
        Some("image"),
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing/here"),
        "{v}"
    );
    expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some(r#"{"image":"127.0.0.1:1/x/y:1.0"}"#),
        k,
        400,
        Some("image"),
    )
    .await;
    let v = expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some(r#"{"image":"busybox:latest"}"#),
        k,
        400,
        Some("image"),
    )
    .await;
    assert_eq!(v["error"]["code"], "unpinned_tag");
    expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some(r#"{"image":"busybox"}"#),
        k,
        400,
        Some("image"),
    )
    .await;
    let neg = format!("{{\"image\":\"{img}\",\"mem_mib\":-1}}");
    expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some(&neg),
        k,
        400,
        Some("mem_mib"),
    )
    .await;
    let huge = format!("{{\"image\":\"{img}\",\"mem_mib\":99999999999}}");
    expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some(&huge),
        k,
        400,
        Some("mem_mib"),
    )
    .await;
    let zero_cpu = format!("{{\"image\":\"{img}\",\"vcpus\":0}}");
    expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some(&zero_cpu),
        k,
        400,
        Some("vcpus"),
    )
    .await;
    let typo = format!("{{\"image\":\"{img}\",\"memory\":5}}");
    expect(
        &r,
        Method::POST,
        "/v1/runs",
        Some(&typo),
        k,
        400,
        Some("memory"),
    )
    .await;
    // Auth.
    expect(&r, Method::GET, "/v1/runs", None, None, 401, None).await;
    expect(&r, Method::GET, "/v1/runs", None, Some("wrong"), 401, None).await;
    let (s, _) = c.raw(Method::GET, "/healthz", None, None).await.unwrap();
    assert_eq!(s.as_u16(), 200);

    // Exec on a deleted id; bad exec bodies on a live one.
    let run = c.create_run(&create(&img)).await.unwrap();
    expect(
        &r,
        Method::POST,
        &format!("/v1/runs/{}/exec", run.id),
        Some("{}"),
        k,
        400,
        Some("command"),
    )
    .await;
    expect(
        &r,
        Method::POST,
        &format!("/v1/runs/{}/exec", run.id),
        Some(r#"{"command":"true","timeout_s":-3}"#),
        k,
        400,
        Some("timeout_s"),
    )
    .await;
    expect(
        &r,
        Method::GET,
        &format!("/v1/runs/{}/files?path=relative", run.id),
        None,
        k,
        400,
        Some("path"),
    )
    .await;
    expect(
        &r,
        Method::GET,
        &format!("/v1/runs/{}/files", run.id),
        None,
        k,
        400,
        Some("path"),
    )
    .await;
    c.delete_run(&run.id).await.unwrap();
    expect(
        &r,
        Method::POST,
        &format!("/v1/runs/{}/exec", run.id),
        Some(r#"{"command":"true"}"#),
        k,
        404,
        None,
    )
    .await;
    expect(
        &r,
        Method::DELETE,
        &format!("/v1/runs/{}", run.id),
        None,
        k,
        404,
        None,
    )
    .await;

    // Nothing was left behind by the refused requests.
    assert!(c.list_runs(&Default::default()).await.unwrap().is_empty());
    assert!(r.host_traces(&[run.id]).is_empty());
    let log = r.log_text();
    assert!(!log.contains("panicked"), "runner panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_exec_cp_ls_rm() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:1.0").await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vivarium"))
            .args(args)
            .env("VIVARIUM_URL", r.url())
            .env("VIVARIUM_API_KEY", KEY)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, id, err) = cli(&["run", &img, "--mem-mib", "128", "-m", "who=cli"]);
    assert_eq!(code, Some(0), "{err}");
    let id = id.trim().to_string();
    let (code, out, _) = cli(&["exec", &id, "--", "sh", "-c", "echo from-cli; exit 4"]);
    assert_eq!((code, out.as_str()), (Some(4), "from-cli\n"));
    let local = r.data_dir.path().join("cli.txt");
    std::fs::write(&local, "copied").unwrap();
    let (code, _, err) = cli(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{id}:/root/cli.txt"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let back = r.data_dir.path().join("cli-back.txt");
    let (code, _, err) = cli(&["cp", &format!("{id}:/root/cli.txt"), back.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied");
    let (_, ls, _) = cli(&["ls", "-m", "who=cli"]);
    assert!(ls.contains(&id), "{ls}");
    let (code, _, _) = cli(&["rm", &id]);
    assert_eq!(code, Some(0));
    let (code, _, err) = cli(&["exec", &id, "--", "true"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not_found"), "{err}");
    let (code, out, err) = cli(&["run", &img, "--rm", "--", "cat", "/etc/hostname"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("vv-"), "{out}");
}
