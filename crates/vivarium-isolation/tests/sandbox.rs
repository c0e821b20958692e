//! Integration tests against the real host: crun, cgroups, netns, nftables. Run as root:
//! `cargo test -p vivarium-isolation -- --test-threads=2 --nocapture`.
//!
//! Each test uses its own driver instance (own cgroup parent, state dir, subnet, nft table) so the
//! tests can run in parallel and check for leftovers independently.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vivarium_isolation::{Driver, DriverConfig, NetworkMode, Sandbox, SandboxSpec, SandboxStatus};

struct Env {
    base: PathBuf,
    rootfs: PathBuf,
    agent: PathBuf,
    cfg: DriverConfig,
}

/// A fixed per-test directory with a busybox rootfs and an "agent": a shell script run by the
/// rootfs's busybox that evaluates its first argument (busybox picks the applet from argv[0], so it
/// cannot be the agent itself). The directory is fixed (not a temp dir) so that a failed earlier run
/// is garbage-collected by [`start`] the way the runner does at startup.
fn env(name: &str, subnet: &str) -> Env {
    let base = Path::new("/var/tmp/vivarium-isolation-tests").join(name);
    let rootfs = base.join("rootfs");
    if !rootfs.join("bin/sh").exists() {
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        for d in ["etc", "tmp", "proc", "sys", "dev", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let st = Command::new("/bin/busybox")
            .args(["--install", "-s"])
            .arg(rootfs.join("bin"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let agent = base.join("agent.sh");
    std::fs::write(&agent, "#!/bin/busybox sh\neval \"$1\"\n").unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = DriverConfig {
        state_dir: base.join("state"),
        runtime: PathBuf::from("/usr/bin/crun"),
        subnet: subnet.parse().unwrap(),
        cgroup_parent: format!("vvt-{name}"),
    };
    Env {
        base,
        rootfs,
        agent,
        cfg,
    }
}

/// A driver for the test, after destroying whatever an earlier failed run left behind.
async fn start(e: &Env) -> Driver {
    // RUST_LOG=vivarium_isolation=info shows per-sandbox setup/total timings.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let d = Driver::new(e.cfg.clone()).await.unwrap();
    for id in d.list_traces().unwrap() {
        d.destroy(&id).await.unwrap();
    }
    d
}

fn spec(e: &Env, id: &str, script: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.to_string(),
        rootfs: e.rootfs.clone(),
        hostname: format!("host-{id}"),
        env: vec!["PATH=/bin".into(), "HOME=/root".into()],
        cwd: "/".into(),
        vcpus: 1.0,
        mem_mib: 64,
        pids_max: 256,
        shm_mib: 64,
        disk_mib: None,
        network: NetworkMode::Nat,
        egress: Default::default(),
        agent_binary: e.agent.clone(),
        agent_args: vec![script.to_string()],
    }
}

/// Runs a busybox applet inside all namespaces of the sandbox (and in its root).
fn inside(sb: &Sandbox, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &sb.pid.to_string(),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-C",
            "-r",
            "-w",
            "/bin/busybox",
        ])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs a host-side busybox applet in the sandbox's network namespace only.
fn in_netns(d: &Driver, id: &str, args: &[&str]) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", d.netns_path(id).display()))
        .arg("/bin/busybox")
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Everything the host could still hold for this instance.
fn host_leftovers(e: &Env, d: &Driver) -> Vec<String> {
    let mut left = Vec::new();
    let state = e.cfg.state_dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&state))
            .map(|l| format!("mount: {l}")),
    );
    for ctrl in ["memory", "cpu", "pids", "freezer", "devices", ""] {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(&e.cfg.cgroup_parent);
        if let Ok(rd) = std::fs::read_dir(&p) {
            for ent in rd.flatten() {
                if ent.file_type().unwrap().is_dir() {
                    left.push(format!("cgroup: {}", ent.path().display()));
                }
            }
        }
    }
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    // veth names are vv + host ip in hex; the subnet's first two octets identify this instance.
    let net: vivarium_isolation::Ipv4Net = e.cfg.subnet;
    let o = net.network().octets();
    let prefix = format!("vv{:02x}{:02x}", o[0], o[1]);
    left.extend(
        links
            .lines()
            .filter(|l| l.contains(&prefix))
            .map(|l| format!("link: {l}")),
    );
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    let nsp = format!("{}-", e.cfg.cgroup_parent);
    left.extend(
        ns.lines()
            .filter(|l| l.starts_with(&nsp))
            .map(|l| format!("netns: {l}")),
    );
    let crun = Command::new("crun")
        .arg(format!("--root={}", e.cfg.state_dir.join("crun").display()))
        .arg("list")
        .arg("-q")
        .output()
        .unwrap();
    left.extend(
        String::from_utf8_lossy(&crun.stdout)
            .lines()
            .map(|l| format!("crun: {l}")),
    );
    left.extend(
        d.list_traces()
            .unwrap()
            .into_iter()
            .map(|t| format!("trace: {t}")),
    );
    left
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn proc_status(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_network_and_filesystem() {
    let e = env("iso", "10.201.0.0/24");
    let d = start(&e).await;
    let host_secret = e.base.join("host-secret");
    std::fs::write(&host_secret, "x").unwrap();
    let script =
        "mkdir -p /data && echo hi > /data/hello && touch /.vivarium/run/ready && exec sleep 1000";
    let a = d.create(&spec(&e, "a", script)).await.unwrap();
    let b = d.create(&spec(&e, "b", script)).await.unwrap();
    assert!(wait_for(
        &d.socket_dir("a").join("ready"),
        Duration::from_secs(10)
    ));
    assert!(wait_for(
        &d.socket_dir("b").join("ready"),
        Duration::from_secs(10)
    ));
    assert_eq!(
        d.status("a").await.unwrap(),
        SandboxStatus::Running { pid: a.pid }
    );
    assert_eq!(a.agent_socket, d.socket_dir("a").join("agent.sock"));

    // own PID namespace: only PID 1 (sleep) and ps itself
    let (ok, ps) = inside(&a, &["ps", "-o", "pid,comm"]);
    assert!(ok, "{ps}");
    let procs: Vec<&str> = ps.lines().skip(1).collect();
    assert!(procs.len() <= 3, "sandbox sees {procs:?}");
    assert!(procs.iter().any(|l| l.trim().starts_with("1 ")), "{ps}");
    // own hostname
    let (_, hn) = inside(&a, &["hostname"]);
    assert_eq!(hn.trim(), "host-a");
    // host files are not visible
    let (_, ls) = inside(&a, &["ls", "/"]);
    assert!(!ls.contains("host-secret") && !ls.contains("usr"), "{ls}");
    let (ok, _) = inside(&a, &["cat", &host_secret.to_string_lossy()]);
    assert!(!ok);
    // hardening of the init process
    assert_eq!(proc_status(a.pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(a.pid, "Seccomp"), "2");
    let capeff = u64::from_str_radix(&proc_status(a.pid, "CapEff"), 16).unwrap();
    assert_eq!(capeff & (1 << 21), 0, "CAP_SYS_ADMIN must be dropped");
    assert_eq!(capeff & (1 << 27), 0, "CAP_MKNOD must be dropped");
    assert_ne!(capeff & (1 << 10), 0, "CAP_NET_BIND_SERVICE kept");
    // detached from the runner: own session, stdio only (no runner fds), not our child
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", a.pid))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        fds.iter().all(|f| ["0", "1", "2"].contains(&f.as_str())),
        "init holds fds {fds:?}"
    );
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", a.pid)).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (ppid, sid): (u32, i32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(ppid, std::process::id());
    assert_ne!(sid, nix::unistd::getsid(None).unwrap().as_raw());
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", a.pid)).unwrap();
    assert!(cg.contains(&format!("/{}/a", e.cfg.cgroup_parent)), "{cg}");
    // /dev/shm sized, /proc/kcore masked, agent read-only
    let (_, mounts) = inside(&a, &["cat", "/proc/mounts"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("shm /dev/shm tmpfs") && l.contains("size=65536k")),
        "{mounts}"
    );
    let (ok, _) = inside(&a, &["sh", "-c", "echo x > /.vivarium/agent"]);
    assert!(!ok, "agent must be read-only");
    let nofile = std::fs::read_to_string(format!("/proc/{}/limits", a.pid)).unwrap();
    assert!(
        nofile
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains("16384")),
        "{nofile}"
    );

    // writes land in the upper layer, never in the image
    assert_eq!(
        std::fs::read_to_string(d.upper_dir("a").join("data/hello")).unwrap(),
        "hi\n"
    );
    assert!(!e.rootfs.join("data").exists());

    // network: host reaches the sandbox; sandboxes cannot reach each other or the host
    let (aip, bip) = (a.ip.unwrap().to_string(), b.ip.unwrap().to_string());
    assert!(Command::new("/bin/busybox")
        .args(["ping", "-c1", "-W2", &aip])
        .output()
        .unwrap()
        .status
        .success());
    assert!(!in_netns(
        &d,
        "a",
        &["ping", "-c1", "-W1", &a.host_ip.unwrap().to_string()]
    ));
    assert!(!in_netns(&d, "a", &["ping", "-c1", "-W1", &bip]));
    assert!(!in_netns(&d, "b", &["ping", "-c1", "-W1", &aip]));
    // TCP too: a listener in b, a connect attempt from a
    let (ok, _) = inside(&b, &["sh", "-c", "nc -l -p 8080 >/dev/null 2>&1 &"]);
    assert!(ok);
    assert!(!in_netns(&d, "a", &["nc", "-w", "1", &bip, "8080"]));

    d.destroy("a").await.unwrap();
    d.destroy("b").await.unwrap();
    d.destroy("b").await.unwrap(); // idempotent
    assert_eq!(d.status("a").await.unwrap(), SandboxStatus::Missing);
    let left = host_leftovers(&e, &d);
    assert!(left.is_empty(), "{left:#?}");
    d.uninstall().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_oom_killed() {
    let e = env("oom", "10.202.0.0/24");
    let d = start(&e).await;
    let mut s = spec(
        &e,
        "hog",
        "(x=$(head -c 300000000 /dev/zero | tr '\\0' x); echo survived) ; exec sleep 1000",
    );
    s.mem_mib = 32;
    s.network = NetworkMode::None;
    let sb = d.create(&s).await.unwrap();
    let start = Instant::now();
    while d.oom_kills("hog").unwrap() == 0 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.oom_kills("hog").unwrap() >= 1);
    assert!(sb.ip.is_none());
    // no network: only lo
    assert!(!in_netns(&d, "hog", &["ip", "link", "show", "eth0"]));
    d.destroy("hog").await.unwrap();
    assert!(host_leftovers(&e, &d).is_empty());
    d.uninstall().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_cycles_leave_nothing_and_latency() {
    let e = env("cyc", "10.203.0.0/24");
    let d = start(&e).await;
    let script = "touch /.vivarium/run/ready; exec sleep 1000";
    let mut create = Vec::new();
    let mut ready = Vec::new();
    let mut destroy = Vec::new();
    // 20 sequential
    for i in 0..20 {
        let id = format!("s{i}");
        let t = Instant::now();
        let sb = d.create(&spec(&e, &id, script)).await.unwrap();
        create.push(t.elapsed());
        assert!(wait_for(
            &d.socket_dir(&id).join("ready"),
            Duration::from_secs(10)
        ));
        ready.push(t.elapsed());
        assert!(Path::new(&format!("/proc/{}", sb.pid)).exists());
        let t = Instant::now();
        d.destroy(&id).await.unwrap();
        destroy.push(t.elapsed());
    }
    // 10 concurrent, in two waves of 5
    for wave in 0..2 {
        let ids: Vec<String> = (0..5).map(|i| format!("c{wave}-{i}")).collect();
        let specs: Vec<SandboxSpec> = ids.iter().map(|id| spec(&e, id, script)).collect();
        let made = futures::future::join_all(specs.iter().map(|s| d.create(s))).await;
        let mut ips = std::collections::HashSet::new();
        for (id, r) in ids.iter().zip(made) {
            let sb = r.unwrap();
            ips.insert(sb.ip.unwrap());
            assert!(wait_for(
                &d.socket_dir(id).join("ready"),
                Duration::from_secs(10)
            ));
            assert!(
                matches!(d.status(id).await.unwrap(), SandboxStatus::Running { pid } if pid == sb.pid)
            );
        }
        assert_eq!(ips.len(), 5, "each sandbox gets its own /30");
        for r in futures::future::join_all(ids.iter().map(|id| d.destroy(id))).await {
            r.unwrap();
        }
    }
    let left = host_leftovers(&e, &d);
    assert!(left.is_empty(), "{left:#?}");
    println!(
        "MEASURE create() returned (init running): median {:?} min {:?}; agent ready: median {:?}; destroy median {:?} (n=20 sequential)",
        median(create.clone()),
        create.iter().min().unwrap(),
        median(ready),
        median(destroy)
    );
    d.uninstall().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_driver_manages_existing_and_failed_create_is_undone() {
    let e = env("fresh", "10.204.0.0/24");
    let d1 = start(&e).await;
    let sb = d1
        .create(&spec(&e, "keep", "exec sleep 1000"))
        .await
        .unwrap();
    drop(d1);
    let d2 = Driver::new(e.cfg.clone()).await.unwrap();
    assert_eq!(
        d2.status("keep").await.unwrap(),
        SandboxStatus::Running { pid: sb.pid }
    );
    assert!(matches!(
        d2.create(&spec(&e, "keep", "exec sleep 1")).await,
        Err(vivarium_isolation::DriverError::AlreadyExists(_))
    ));
    d2.destroy("keep").await.unwrap();
    assert_eq!(d2.status("keep").await.unwrap(), SandboxStatus::Missing);

    // crun fails to exec a non-executable agent: everything done so far is undone
    let bad_agent = e.base.join("not-exec");
    std::fs::write(&bad_agent, "x").unwrap();
    let mut s = spec(&e, "bad", "x");
    s.agent_binary = bad_agent;
    let err = d2.create(&s).await.unwrap_err();
    assert!(
        matches!(err, vivarium_isolation::DriverError::Runtime { .. }),
        "{err}"
    );
    let left = host_leftovers(&e, &d2);
    assert!(left.is_empty(), "{left:#?}");
    d2.uninstall().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_cap_limits_scratch_layer() {
    let e = env("disk", "10.205.0.0/24");
    let d = start(&e).await;
    let mut s = spec(&e, "dk", "dd if=/dev/zero of=/big bs=1M count=64 2>/.vivarium/run/dd.err; echo $? > /.vivarium/run/rc; exec sleep 1000");
    s.disk_mib = Some(32);
    s.network = NetworkMode::None;
    d.create(&s).await.unwrap();
    assert!(wait_for(
        &d.socket_dir("dk").join("rc"),
        Duration::from_secs(20)
    ));
    let rc = std::fs::read_to_string(d.socket_dir("dk").join("rc")).unwrap();
    assert_ne!(
        rc.trim(),
        "0",
        "writing 64 MiB into a 32 MiB scratch layer must fail"
    );
    let big = std::fs::metadata(d.upper_dir("dk").join("big"))
        .unwrap()
        .len();
    assert!(big < 33 * 1024 * 1024, "{big}");
    d.destroy("dk").await.unwrap();
    let left = host_leftovers(&e, &d);
    assert!(left.is_empty(), "{left:#?}");
    d.uninstall().await.unwrap();
}
