//! The network walls, probed from inside real sandboxes of a real runner. Each probe prints
//! `HELD` or `BROKEN`; any `BROKEN` fails the test. Beside them, the positive check that NAT egress
//! still reaches a host "outside".
//!
//! The test places two hosts of its own, each in a network namespace it creates and routes from
//! the host, so no packet ever leaves the machine: a "LAN host" on an RFC 1918 address
//! (192.168.213.2) and an "internet host" on a documentation address (203.0.113.10). Both run a
//! TCP server that answers `HELLO`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Runner;
use vivarium_api::CreateRunRequest;

/// A network namespace with a veth to the host, an address, a host route to it and a TCP server
/// answering "HELLO" on port 8080. Removed on drop.
struct TestHost {
    ns: String,
    host_veth: String,
    net: String,
    addr: String,
    server: Child,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestHost {
    /// `net` is a /30: .1 on the host side, .2 in the namespace.
    fn start(tag: &str, base: [u8; 3], last: u8) -> TestHost {
        let suffix = format!("{:05x}", std::process::id() & 0xfffff);
        let ns = format!("vvw{tag}{suffix}");
        let host_veth = format!("vw{tag}{suffix}");
        let hip = format!("{}.{}.{}.{}", base[0], base[1], base[2], last + 1);
        let addr = format!("{}.{}.{}.{}", base[0], base[1], base[2], last + 2);
        let net = format!("{}.{}.{}.{}/30", base[0], base[1], base[2], last);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{hip}/30"), "dev", &host_veth]);
        ip(&["link", "set", &host_veth, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &hip]);
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c"])
            .arg(
                "import socket\n\
                 s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('0.0.0.0', 8080)); s.listen(16)\n\
                 while True:\n\
                 \x20   c, _ = s.accept(); c.sendall(b'HELLO\\n'); c.close()\n",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 for the test host's server");
        let h = TestHost {
            ns,
            host_veth,
            net,
            addr,
            server,
        };
        // The server answers the host itself: the probes below test the walls, not the fixture.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = std::net::TcpStream::connect_timeout(
                &format!("{}:8080", h.addr).parse().unwrap(),
                Duration::from_millis(500),
            )
            .is_ok();
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "test host {} did not listen",
                h.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        h
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .output();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_veth])
            .output();
        let _ = Command::new("ip")
            .args(["route", "delete", &self.net])
            .output();
    }
}

struct Probes {
    broken: Vec<String>,
}

impl Probes {
    fn held(&mut self, name: &str, held: bool, detail: &str) {
        println!(
            "{} {name} ({detail})",
            if held { "HELD  " } else { "BROKEN" }
        );
        if !held {
            self.broken.push(format!("{name}: {detail}"));
        }
    }
}

async fn sh(r: &Runner, id: &str, cmd: &str) -> (i32, String) {
    let res = r
        .client
        .sh(id, cmd)
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"));
    (
        res.exit_code.unwrap_or(-1),
        format!("{}{}", res.stdout, res.stderr),
    )
}

/// A TCP connection from inside sandbox `id` to `addr port` that gets the server's "HELLO".
async fn reaches(r: &Runner, id: &str, addr: &str, port: u16) -> (bool, String) {
    let (_, out) = sh(
        r,
        id,
        &format!("echo | nc -w 3 {addr} {port} 2>&1; echo rc=$?"),
    )
    .await;
    (out.contains("HELLO"), out.trim().replace('\n', " "))
}

/// Host addresses other than loopback, as `ip -o addr` shows them.
fn host_addresses(family: &str) -> Vec<(String, String)> {
    let out = Command::new("ip")
        .args([family, "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f.get(1)?.to_string();
            let addr = f.get(3)?.split('/').next()?.to_string();
            (dev != "lo").then_some((dev, addr))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_walls_hold_and_nat_egress_works() {
    let mut r = Runner::start().await;
    let img = r.import_busybox("local/busybox:walls").await;
    let lan = TestHost::start("l", [192, 168, 213], 0);
    let internet = TestHost::start("i", [203, 0, 113], 8);
    let new = || CreateRunRequest {
        image: Some(img.clone()),
        mem_mib: Some(128),
        ..Default::default()
    };
    let a = r.client.create_run(&new()).await.unwrap();
    let b = r.client.create_run(&new()).await.unwrap();
    let host_ip = {
        let ip: std::net::Ipv4Addr = a.ip.as_deref().unwrap().parse().unwrap();
        std::net::Ipv4Addr::from(u32::from(ip) - 1).to_string()
    };

    // Servers the sandboxes must not reach: one on the host (all IPv4 and IPv6 addresses), one in
    // sandbox b.
    let v4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let v6 = std::net::TcpListener::bind("[::]:0").unwrap();
    let (p4, p6) = (
        v4.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    );
    for l in [v4, v6] {
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                use std::io::Write;
                let _ = (&c).write_all(b"HELLO\n");
            }
        });
    }
    let (rc, out) = sh(
        &r,
        &b.id,
        "(while true; do echo HELLO | nc -l -p 8080; done) >/dev/null 2>&1 & echo started",
    )
    .await;
    assert_eq!(rc, 0, "{out}");

    let mut p = Probes { broken: vec![] };

    // Positive: NAT egress to a public address works (else every wall below would hold trivially).
    let (ok, out) = reaches(&r, &a.id, &internet.addr, 8080).await;
    assert!(ok, "NAT egress to the test internet host failed: {out}");
    println!("OK     egress to {} (NAT)", internet.addr);

    let (ok, out) = reaches(&r, &a.id, &host_ip, p4).await;
    p.held("host service on the veth address (IPv4)", !ok, &out);
    for (dev, addr) in host_addresses("-4") {
        if dev.starts_with("vv") {
            continue; // other sandboxes' veths: probed below through b
        }
        let (ok, out) = reaches(&r, &a.id, &addr, p4).await;
        p.held(&format!("host address {addr} on {dev} (IPv4)"), !ok, &out);
    }
    for (dev, addr) in host_addresses("-6") {
        let target = if addr.starts_with("fe80") {
            format!("{addr}%eth0")
        } else {
            addr.clone()
        };
        let (ok, out) = reaches(&r, &a.id, &target, p6).await;
        p.held(&format!("host address {addr} on {dev} (IPv6)"), !ok, &out);
    }
    let (_, inet6) = sh(&r, &a.id, "cat /proc/net/if_inet6").await;
    p.held(
        "no IPv6 address on the sandbox's eth0",
        !inet6.contains("eth0"),
        inet6.trim(),
    );
    let b_ip = b.ip.as_deref().unwrap();
    let (ok, out) = reaches(&r, &a.id, b_ip, 8080).await;
    p.held("another sandbox (IPv4)", !ok, &out);
    let (ok, out) = reaches(&r, &a.id, &lan.addr, 8080).await;
    p.held("a LAN host (RFC 1918)", !ok, &out);

    // Per-sandbox egress rules. c: the default plus a deny rule for the internet host. d: an
    // allowlist that opens the LAN host's network and all of 10/8 (which holds the sandboxes'
    // own subnet: other sandboxes stay unreachable whatever the rules say).
    let with_policy = |allow: &[&str], deny: &[&str]| CreateRunRequest {
        network: Some(vivarium_api::NetworkRequest::Policy(
            vivarium_api::NetworkPolicy {
                mode: vivarium_api::NetworkMode::Nat,
                allow_out: allow.iter().map(|s| s.to_string()).collect(),
                deny_out: deny.iter().map(|s| s.to_string()).collect(),
            },
        )),
        ..new()
    };
    let c = r
        .client
        .create_run(&with_policy(&[], &[&internet.net]))
        .await
        .unwrap();
    assert_eq!(c.network_policy.deny_out, vec![internet.net.clone()]);
    let (ok, out) = reaches(&r, &c.id, &internet.addr, 8080).await;
    p.held("deny_out: a denied public address", !ok, &out);
    let (ok, out) = reaches(&r, &c.id, &lan.addr, 8080).await;
    p.held("deny_out: a LAN host stays unreachable", !ok, &out);
    let d = r
        .client
        .create_run(&with_policy(&[&lan.net, "10.0.0.0/8"], &[]))
        .await
        .unwrap();
    let (ok, out) = reaches(&r, &d.id, &lan.addr, 8080).await;
    assert!(ok, "allow_out did not open the LAN host: {out}");
    println!("OK     allow_out opens {} (the LAN test host)", lan.addr);
    let (ok, out) = reaches(&r, &d.id, &internet.addr, 8080).await;
    p.held("allow_out: an address outside the allowlist", !ok, &out);
    let (ok, out) = reaches(&r, &d.id, b_ip, 8080).await;
    p.held("allow_out 10/8: another sandbox", !ok, &out);
    let (ok, out) = reaches(&r, &d.id, &host_ip, p4).await;
    p.held("allow_out: the host", !ok, &out);

    // A restarted runner rebuilds the table with every sandbox's rules.
    r.kill9();
    r.spawn().await;
    let (ok, out) = reaches(&r, &c.id, &internet.addr, 8080).await;
    p.held(
        "after a restart, deny_out: a denied public address",
        !ok,
        &out,
    );
    let (ok, out) = reaches(&r, &d.id, &lan.addr, 8080).await;
    assert!(
        ok,
        "after a restart allow_out no longer opens the LAN host: {out}"
    );
    let (ok, out) = reaches(&r, &d.id, &internet.addr, 8080).await;
    p.held(
        "after a restart, allow_out: outside the allowlist",
        !ok,
        &out,
    );
    let (ok, out) = reaches(&r, &a.id, &lan.addr, 8080).await;
    p.held("after a restart, a LAN host", !ok, &out);

    drop(lan);
    drop(internet);
    assert!(p.broken.is_empty(), "walls broken: {:#?}", p.broken);
}

/// Bad egress rules are a 400 naming the field, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_bad_input() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:policy").await;
    for (network, field) in [
        (r#"{"allow_out": ["10.0.0.0/33"]}"#, "network.allow_out[0]"),
        (
            r#"{"deny_out": ["1.2.3.4", "not-a-cidr"]}"#,
            "network.deny_out[1]",
        ),
        (r#"{"allow_out": ["fd00::/8"]}"#, "network.allow_out[0]"),
        (
            r#"{"allow_out": ["192.168.1.0/24"], "deny_out": ["192.168.1.0/24"]}"#,
            "network.deny_out[0]",
        ),
        (
            r#"{"mode": "none", "deny_out": ["1.2.3.4/32"]}"#,
            "network.mode",
        ),
    ] {
        let body = format!(r#"{{"image": "{img}", "network": {network}}}"#);
        let (status, text) = r
            .client
            .raw(
                reqwest::Method::POST,
                "/v1/runs",
                Some(body),
                Some(common::KEY),
            )
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 400, "{network}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["field"], field, "{network}: {text}");
    }
    let too_many: Vec<String> = (0..65).map(|i| format!("\"203.0.113.{i}\"")).collect();
    let body = format!(
        r#"{{"image": "{img}", "network": {{"deny_out": [{}]}}}}"#,
        too_many.join(",")
    );
    let (status, text) = r
        .client
        .raw(
            reqwest::Method::POST,
            "/v1/runs",
            Some(body),
            Some(common::KEY),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 400, "{text}");
    assert!(text.contains("network.deny_out"), "{text}");
    assert!(r
        .client
        .list_runs(&Default::default())
        .await
        .unwrap()
        .is_empty());
}

/// The kernel walls: what root inside a sandbox tries first to get out. Every probe must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_walls_hold() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:kernel-walls").await;
    let run = r
        .client
        .create_run(&CreateRunRequest {
            image: Some(img),
            mem_mib: Some(128),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = run.id.as_str();
    // Positive: the sandbox is usable and its root is root inside.
    let (rc, out) = sh(
        &r,
        id,
        "id -u && mkdir -p /tmp/m && echo ok > /tmp/m/f && cat /tmp/m/f",
    )
    .await;
    assert!(rc == 0 && out.contains("ok"), "{out}");

    let mut p = Probes { broken: vec![] };
    // `sh -c CMD; echo rc=$?`: a probe holds when CMD failed.
    let probes: &[(&str, &str)] = &[
        ("new user namespace (unshare -U)", "busybox unshare -U -r true"),
        ("new network namespace (unshare -n)", "busybox unshare -n true"),
        ("new mount namespace (unshare -m)", "busybox unshare -m true"),
        ("join PID 1's namespaces (setns)", "busybox nsenter -t 1 -m -n true"),
        ("mount a filesystem", "busybox mount -t tmpfs none /tmp/m"),
        ("remount / read-write", "busybox mount -o remount,rw /"),
        ("write /proc/sys", "echo 1 > /proc/sys/kernel/sysrq"),
        ("write /proc/sysrq-trigger", "echo h > /proc/sysrq-trigger"),
        (
            "write a cgroup limit",
            "for f in $(find /sys/fs/cgroup -name memory.max -o -name memory.limit_in_bytes -o -name pids.max 2>/dev/null); do echo max > $f && exit 0; done; exit 1",
        ),
        ("make a block device node", "busybox mknod /tmp/sda b 8 0"),
        ("read the kernel log", "busybox dmesg"),
        ("load a kernel module", "busybox insmod /bin/busybox"),
        (
            "set the clock",
            "busybox date -s 2001-01-01 >/dev/null 2>&1; test \"$(date +%Y)\" = 2001",
        ),
        ("change the hostname", "busybox hostname evil"),
        ("reboot the host", "busybox reboot -f -n"),
    ];
    for (name, cmd) in probes {
        let (_, out) = sh(&r, id, &format!("({cmd}) 2>&1; echo rc=$?")).await;
        let failed = !out.trim_end().ends_with("rc=0");
        p.held(name, failed, out.trim().replace('\n', " ").as_str());
    }
    // What the sandbox sees of the host's processes: its own PID namespace only.
    let (_, out) = sh(
        &r,
        id,
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'",
    )
    .await;
    let mut lines = out.lines();
    let init = lines.next().unwrap_or_default().to_string();
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(usize::MAX);
    p.held(
        "see or ptrace host processes (own PID namespace)",
        init.contains("/.vivarium/agent") && count < 20,
        &format!("pid 1: {init}, {count} processes visible"),
    );
    // The sandbox still answers after all that.
    let (rc, _) = sh(&r, id, "true").await;
    assert_eq!(rc, 0);
    assert!(p.broken.is_empty(), "walls broken: {:#?}", p.broken);
}

/// A hostile image: device nodes for the host's memory and disk, a setuid-root shell, and a file
/// written through a symlink to a host directory. Nothing of it reaches the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_image_reaches_nothing() {
    let r = Runner::start().await;
    let work = tempfile::tempdir().unwrap();
    let host_dir = work.path().join("host-side");
    std::fs::create_dir(&host_dir).unwrap();
    let layout =
        vivarium_image::test_support::build_hostile_layout(&work.path().join("layout"), &host_dir)
            .unwrap();
    let img = "local/hostile:1";
    r.client
        .import_image(&layout.to_string_lossy(), img)
        .await
        .expect("importing the hostile image");
    let mut p = Probes { broken: vec![] };
    p.held(
        "unpacking writes through a symlink onto the host",
        !host_dir.join("pwned").exists(),
        &format!("{}", host_dir.join("pwned").display()),
    );
    let run = r
        .client
        .create_run(&CreateRunRequest {
            image: Some(img.into()),
            mem_mib: Some(128),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = run.id.as_str();
    for (name, cmd) in [
        (
            "read the host's memory through a shipped node",
            "head -c 16 /hostile/mem | od | head -1",
        ),
        (
            "read the host's disk through a shipped node",
            "head -c 512 /hostile/sda | od | head -1",
        ),
        (
            "read kernel messages through a shipped node",
            "head -c 16 /hostile/kmsg | od | head -1",
        ),
    ] {
        let (_, out) = sh(&r, id, &format!("({cmd}) 2>&1; echo rc=$?")).await;
        // Held when no bytes came out (od prints an offset line only for data).
        let read_something = out.lines().any(|l| l.starts_with("0000000 "));
        p.held(
            name,
            !read_something,
            out.trim().replace('\n', " ").as_str(),
        );
    }
    let (_, out) = sh(&r, id, "ls -la /hostile/ 2>&1").await;
    p.held(
        "device nodes of the image exist in the sandbox",
        !out.lines()
            .any(|l| l.starts_with('c') || l.starts_with('b')),
        out.trim().replace('\n', " | ").as_str(),
    );
    // A setuid-root binary gives an unprivileged user nothing (no_new_privs).
    let res = r
        .client
        .exec(
            id,
            &vivarium_api::ExecRequest {
                argv: Some(vec!["/hostile/suid/sh".into(), "-c".into(), "id -u".into()]),
                user: Some("user".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    p.held(
        "setuid-root binary run by an unprivileged user",
        res.exit_code == Some(0) && res.stdout.trim() == "1000",
        &format!(
            "uid {:?}, stderr {:?}",
            res.stdout.trim(),
            res.stderr.trim()
        ),
    );
    let (_, out) = sh(
        &r,
        id,
        "ls /hostile/escape/ 2>&1; cat /hostile/escape/pwned 2>&1",
    )
    .await;
    println!("inside: {}", out.trim().replace('\n', " | "));
    assert!(p.broken.is_empty(), "walls broken: {:#?}", p.broken);
}

/// Root in sandbox A replaces its agent socket with a symlink to sandbox B's (whose host path
/// follows a guessable layout). The runner must not follow it: A's exec never runs in B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_channel_cannot_be_redirected() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:channel").await;
    let new = || CreateRunRequest {
        image: Some(img.clone()),
        mem_mib: Some(128),
        ..Default::default()
    };
    let a = r.client.create_run(&new()).await.unwrap();
    let b = r.client.create_run(&new()).await.unwrap();
    // B's socket on the host (an attacker can guess the layout under the default data dir).
    let b_sock = r
        .data_dir
        .path()
        .join(format!("sandboxes/runs/{}/scratch/sock/agent.sock", b.id));
    assert!(b_sock.exists(), "{}", b_sock.display());
    let b_sock = b_sock.display().to_string();
    let (rc, out) = sh(
        &r,
        &a.id,
        &format!("rm -f /.vivarium/run/agent.sock && ln -s {b_sock} /.vivarium/run/agent.sock && echo swapped"),
    )
    .await;
    assert!(rc == 0 && out.contains("swapped"), "{out}");
    let mut p = Probes { broken: vec![] };
    let res = r.client.sh(&a.id, "hostname").await;
    let ran_in_b = matches!(&res, Ok(x) if x.stdout.trim() == format!("vv-{}", b.id));
    p.held(
        "a symlinked agent socket redirects the runner to another sandbox",
        !ran_in_b,
        &format!("{res:?}"),
    );
    // B itself is untouched.
    let (rc, out) = sh(&r, &b.id, "hostname").await;
    assert_eq!((rc, out.trim().to_string()), (0, format!("vv-{}", b.id)));
    assert!(p.broken.is_empty(), "walls broken: {:#?}", p.broken);
}

/// A busybox sandbox whose writable layer is capped at 64 MiB.
async fn with_64_mib_disk(r: &Runner, img: String) -> vivarium_api::Run {
    r.client
        .create_run(&CreateRunRequest {
            image: Some(img),
            mem_mib: Some(128),
            disk_mib: Some(64),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// MiB of the host's disk that sandbox `id` holds: blocks allocated to the files of its run dir
/// on the host filesystem (its sparse scratch image, its console log before one exists, …), not
/// descending into mounts. Host-wide free space would also move with the other tests running
/// beside this one.
fn host_usage_mib(r: &Runner, id: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let root = r.data_dir.path().join("sandboxes/runs").join(id);
    let dev = std::fs::metadata(&root).unwrap().dev();
    let mut total = 0u64;
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.dev() != dev {
                continue; // a mount point's contents (the scratch disk, the overlay root)
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total >> 20
}

/// Every sandbox's writable layer is capped, by default too: filling it is ENOSPC inside that
/// sandbox, and the host and the sandbox itself carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_fill_stays_inside() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:disk").await;
    let default = r
        .client
        .create_run(&CreateRunRequest {
            image: Some(img.clone()),
            mem_mib: Some(128),
            ..Default::default()
        })
        .await
        .unwrap();
    let cap = default.disk_mib.expect("a default disk cap");
    assert!(
        (vivarium_api::limits::MIN_DISK_MIB..=vivarium_api::limits::DEFAULT_DISK_MIB)
            .contains(&cap),
        "{cap}"
    );
    let (_, df) = sh(&r, &default.id, "df -m / | tail -1").await;
    println!("default writable layer: {cap} MiB; df: {}", df.trim());

    let small = with_64_mib_disk(&r, img).await;
    let (_, out) = sh(
        &r,
        &small.id,
        "dd if=/dev/zero of=/fill bs=1M count=256 2>&1; echo rc=$?",
    )
    .await;
    let mut p = Probes { broken: vec![] };
    p.held(
        "filling the writable layer beyond its cap",
        out.contains("No space left on device") && !out.trim_end().ends_with("rc=0"),
        out.trim().replace('\n', " ").as_str(),
    );
    let grown = host_usage_mib(&r, &small.id);
    p.held(
        "a full sandbox takes more than its cap from the host",
        grown <= 64 + 16,
        &format!("the sandbox holds {grown} MiB of the host's disk"),
    );
    let (rc, _) = sh(&r, &small.id, "rm /fill && echo ok > /after").await;
    p.held(
        "the sandbox works again once it frees space",
        rc == 0,
        "rm + write",
    );
    assert!(p.broken.is_empty(), "walls broken: {:#?}", p.broken);
}

/// Root inside floods the console (its init's stdout, a file on the host side): the log stays on
/// the sandbox's own scratch disk and is cut to its tail, so the host's disk does not pay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_flood_stays_bounded() {
    let r = Runner::start().await;
    let img = r.import_busybox("local/busybox:flood").await;
    let run = with_64_mib_disk(&r, img).await;
    let (rc, out) = sh(
        &r,
        &run.id,
        "yes 'flood flood flood flood flood flood flood' >> /proc/1/fd/1 2>/dev/null & p=$!; sleep 4; kill $p; echo done",
    )
    .await;
    assert!(rc == 0 && out.contains("done"), "{out}");
    // The runner cuts it within a second or two.
    let log = r
        .data_dir
        .path()
        .join(format!("sandboxes/runs/{}/scratch/console.log", run.id));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut size = u64::MAX;
    while Instant::now() < deadline {
        size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        if size <= vivarium_server::runner::MAX_CONSOLE_BYTES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut p = Probes { broken: vec![] };
    p.held(
        "the console log grows without bound",
        size <= vivarium_server::runner::MAX_CONSOLE_BYTES,
        &format!("{} is {size} bytes", log.display()),
    );
    let fell = host_usage_mib(&r, &run.id);
    p.held(
        "a console flood takes more than the sandbox's disk cap from the host",
        fell <= 64 + 16,
        &format!("the sandbox holds {fell} MiB of the host's disk"),
    );
    let (rc, _) = sh(&r, &run.id, "true").await;
    p.held("the sandbox answers after the flood", rc == 0, "exec true");
    assert!(p.broken.is_empty(), "walls broken: {:#?}", p.broken);
}

/// With CAP_NET_RAW a sandbox can write any IP header. Packets whose source is not the sandbox's
/// own address (another address, its /30's broadcast address, another sandbox's) never leave its
/// veth; and the syscall filter's argument checks cannot be dodged with high bits set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_sources_and_filter_arguments_hold() {
    let r = Runner::start().await;
    let img = r.import_desktop().await;
    let internet = TestHost::start("u", [203, 0, 113], 16);
    // A UDP sink in the internet host's namespace: one line per datagram to a file.
    let sink = tempfile::NamedTempFile::new().unwrap();
    let mut sink_proc = Command::new("ip")
        .args(["netns", "exec", &internet.ns, "python3", "-c"])
        .arg(format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))\n\
             f = open({:?}, 'a')\n\
             while True:\n\
             \x20   d, a = s.recvfrom(2048); f.write(a[0] + ' ' + d.decode(errors='replace') + '\\n'); f.flush()\n",
            sink.path().display().to_string()
        ))
        .spawn()
        .unwrap();
    let run = r
        .client
        .create_run(&CreateRunRequest {
            image: Some(img),
            desktop: Some(false),
            mem_mib: Some(256),
            ..Default::default()
        })
        .await
        .unwrap();
    let ip: std::net::Ipv4Addr = run.ip.as_deref().unwrap().parse().unwrap();
    let broadcast = std::net::Ipv4Addr::from(u32::from(ip) + 1);
    let other = std::net::Ipv4Addr::from(u32::from(ip) + 4);
    let script = format!(
        r#"
import socket, struct, time
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def send(src, dst, payload):
    udp = struct.pack('!HHHH', 7777, 9999, 8 + len(payload), 0) + payload
    hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack('!H', csum(hdr)) + hdr[12:]
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    r.sendto(hdr + udp, (dst, 0))
dst = '{dst}'
for src, tag in [('{ip}', 'CONTROL'), ('{bcast}', 'SPOOF-BROADCAST'), ('{other}', 'SPOOF-SANDBOX'), ('198.51.100.7', 'SPOOF-PUBLIC')]:
    for _ in range(3):
        send(src, dst, tag.encode()); time.sleep(0.05)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for fam, name in [(0x100000028, 'VSOCK-HIGHBITS'), (40, 'VSOCK'), (17, 'PACKET'), (38, 'ALG'), (2, 'INET')]:
    fd = libc.syscall(41, ctypes.c_long(fam), 1 if name != 'PACKET' else 3, 0)
    print(name, 'OPENED' if fd >= 0 else 'REFUSED', ctypes.get_errno())
"#,
        dst = internet.addr,
        ip = ip,
        bcast = broadcast,
        other = other,
    );
    let (_, out) = sh(&r, &run.id, &format!("python3 - <<'EOF'\n{script}\nEOF")).await;
    println!("{}", out.trim());
    // Give the sink a moment, then read what arrived.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = String::new();
    while Instant::now() < deadline {
        got = std::fs::read_to_string(sink.path()).unwrap_or_default();
        if got.contains("CONTROL") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = sink_proc.kill();
    let _ = sink_proc.wait();
    assert!(
        got.contains("CONTROL"),
        "the unforged datagram did not arrive: {got:?} / {out}"
    );
    let mut p = Probes { broken: vec![] };
    for tag in ["SPOOF-BROADCAST", "SPOOF-SANDBOX", "SPOOF-PUBLIC"] {
        p.held(
            &format!("a forged source leaves the sandbox ({tag})"),
            !got.contains(tag),
            got.trim().replace('\n', " | ").as_str(),
        );
    }
    for name in ["VSOCK-HIGHBITS", "VSOCK", "PACKET", "ALG"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default();
        p.held(&format!("socket({name})"), line.contains("REFUSED"), line);
    }
    assert!(
        out.lines().any(|l| l.starts_with("INET OPENED")),
        "plain sockets must work: {out}"
    );
    assert!(p.broken.is_empty(), "walls broken: {:#?}", p.broken);
}
