//! Test helpers for this and other crates (feature `test-support`): a tiny real OCI image built
//! from Debian's `busybox-static`, and Debian's `docker-registry` on a loopback port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{io_ctx, ImageError};

/// Where the busybox binary is taken from (package `busybox-static`).
pub const BUSYBOX_BIN: &str = "/bin/busybox";
/// Present in layer 1, deleted by a `.wh.` whiteout in layer 2.
pub const WHITED_OUT_FILE: &str = "etc/doomed";
/// Present in layer 1 under a directory layer 2 makes opaque.
pub const OPAQUE_HIDDEN_FILE: &str = "var/lib/data/old";
/// Added by layer 2 in the opaque directory.
pub const OPAQUE_NEW_FILE: &str = "var/lib/data/fresh";
/// An env var the busybox image config sets.
pub const MARKER_ENV: &str = "VIVARIUM_TEST_IMAGE=1";

/// Applets linked to `/bin/busybox` in the test image.
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "ls",
    "cat",
    "echo",
    "sleep",
    "hostname",
    "ps",
    "ip",
    "wget",
    "nc",
    "dd",
    "head",
    "tail",
    "sha256sum",
    "md5sum",
    "id",
    "env",
    "mkdir",
    "rm",
    "rmdir",
    "cp",
    "mv",
    "touch",
    "true",
    "false",
    "grep",
    "sed",
    "awk",
    "wc",
    "kill",
    "mount",
    "umount",
    "uname",
    "whoami",
    "pwd",
    "chmod",
    "chown",
    "ln",
    "test",
    "[",
    "stat",
    "find",
    "sort",
    "uniq",
    "tr",
    "cut",
    "date",
    "du",
    "df",
    "free",
    "top",
    "nslookup",
    "ping",
    "printf",
    "yes",
    "seq",
    "tee",
    "xargs",
    "basename",
    "dirname",
    "readlink",
    "realpath",
    "vi",
    "base64",
    "timeout",
    "nproc",
    "cmp",
    "diff",
    "ifconfig",
    "route",
    "hexdump",
    "which",
    "gzip",
    "gunzip",
    "tar",
    "sync",
    "mkfifo",
    "pidof",
    "setsid",
    "su",
    "stty",
    "tty",
    "uptime",
    "xxd",
    "od",
    "truncate",
    "mktemp",
    "netstat",
    "httpd",
    "killall",
    "watch",
    "fallocate",
    "shuf",
];

struct Entry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    data: Vec<u8>,
    link: Option<String>,
    /// (major, minor) of a device node.
    dev: Option<(u32, u32)>,
}

fn dir_entry(path: &str, mode: u32, uid: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: tar::EntryType::Directory,
        mode,
        uid,
        data: vec![],
        link: None,
        dev: None,
    }
}
fn file(path: &str, mode: u32, data: &[u8]) -> Entry {
    Entry {
        path: path.into(),
        kind: tar::EntryType::Regular,
        mode,
        uid: 0,
        data: data.to_vec(),
        link: None,
        dev: None,
    }
}
fn symlink(path: &str, target: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: tar::EntryType::Symlink,
        mode: 0o777,
        uid: 0,
        data: vec![],
        link: Some(target.into()),
        dev: None,
    }
}
fn hardlink(path: &str, target: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: tar::EntryType::Link,
        mode: 0o644,
        uid: 0,
        data: vec![],
        link: Some(target.into()),
        dev: None,
    }
}

fn tar_of(entries: &[Entry]) -> Result<Vec<u8>, ImageError> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        if let Some((major, minor)) = e.dev {
            h.set_device_major(major)
                .and_then(|()| h.set_device_minor(minor))
                .map_err(io_ctx(|| format!("tar device {}", e.path)))?;
        }
        let r = match &e.link {
            Some(l) => b.append_link(&mut h, &e.path, l),
            None => b.append_data(&mut h, &e.path, &e.data[..]),
        };
        r.map_err(io_ctx(|| format!("tar entry {}", e.path)))?;
    }
    b.into_inner().map_err(io_ctx(|| "finish tar".into()))
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<(String, u64), ImageError> {
    let d = sha(bytes);
    let p = layout.join("blobs/sha256").join(&d["sha256:".len()..]);
    std::fs::write(&p, bytes).map_err(io_ctx(|| format!("write {}", p.display())))?;
    Ok((d, bytes.len() as u64))
}

/// Builds a two-layer OCI image layout in `dir` (created if missing) and returns `dir`.
///
/// Layer 1 (gzip): `/bin/busybox` with applet symlinks ([`APPLETS`]), `/usr/bin/env`,
/// `/etc/passwd` (root, `user` uid 1000, nobody), `/etc/group`, `/tmp` (1777), `/root`,
/// `/home/user` (uid 1000), [`WHITED_OUT_FILE`], [`OPAQUE_HIDDEN_FILE`], a hard link
/// `/etc/passwd-`. Layer 2 (zstd): a whiteout of [`WHITED_OUT_FILE`], an opaque `var/lib/data`
/// holding [`OPAQUE_NEW_FILE`], `/etc/vivarium-release`. Config: Env PATH and [`MARKER_ENV`],
/// Cmd `/bin/sh`.
pub fn build_busybox_layout(dir: &Path) -> Result<PathBuf, ImageError> {
    build_layout(dir, vec![])
}

/// What [`build_hostile_layout`] puts in its third layer, under `/hostile`.
pub const HOSTILE_DIR: &str = "hostile";

/// The busybox image of [`build_busybox_layout`] plus a third, hostile layer (gzip) as an attacker
/// would ship it: device nodes for the host's memory (`/hostile/mem`, char 1:1), first disk
/// (`/hostile/sda`, block 8:0) and kernel messages (`/hostile/kmsg`, char 1:11); a setuid-root
/// shell (`/hostile/suid-sh`, mode 4755); a symlink to a host directory (`/hostile/escape` →
/// `host_dir`) and, after it in the same layer, a file *through* that symlink
/// (`hostile/escape/pwned`), which an unpacker that follows symlinks would write on the host.
pub fn build_hostile_layout(dir: &Path, host_dir: &Path) -> Result<PathBuf, ImageError> {
    let busybox = std::fs::read(BUSYBOX_BIN).map_err(io_ctx(|| {
        format!("read {BUSYBOX_BIN} (install Debian package busybox-static)")
    }))?;
    let node = |path: &str, kind: tar::EntryType, major: u32, minor: u32| Entry {
        path: path.into(),
        kind,
        mode: 0o666,
        uid: 0,
        data: vec![],
        link: None,
        dev: Some((major, minor)),
    };
    let l3 = vec![
        dir_entry(HOSTILE_DIR, 0o755, 0),
        node("hostile/mem", tar::EntryType::Char, 1, 1),
        node("hostile/kmsg", tar::EntryType::Char, 1, 11),
        node("hostile/sda", tar::EntryType::Block, 8, 0),
        dir_entry("hostile/suid", 0o755, 0),
        // busybox picks its applet from argv[0]: `sh`.
        file("hostile/suid/sh", 0o4755, &busybox),
        symlink("hostile/escape", &host_dir.to_string_lossy()),
        file(
            "hostile/escape/pwned",
            0o644,
            b"written through a symlink\n",
        ),
    ];
    build_layout(dir, vec![l3])
}

fn build_layout(dir: &Path, extra_layers: Vec<Vec<Entry>>) -> Result<PathBuf, ImageError> {
    let busybox = std::fs::read(BUSYBOX_BIN).map_err(io_ctx(|| {
        format!("read {BUSYBOX_BIN} (install Debian package busybox-static)")
    }))?;
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    let group = b"root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n";
    let mut l1 = vec![
        dir_entry("bin", 0o755, 0),
        file("bin/busybox", 0o755, &busybox),
        dir_entry("dev", 0o755, 0),
        dir_entry("etc", 0o755, 0),
        file("etc/passwd", 0o644, passwd),
        hardlink("etc/passwd-", "etc/passwd"),
        file("etc/group", 0o644, group),
        file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n"),
        file(WHITED_OUT_FILE, 0o644, b"deleted by layer 2\n"),
        dir_entry("home", 0o755, 0),
        dir_entry("home/user", 0o755, 1000),
        dir_entry("proc", 0o555, 0),
        dir_entry("root", 0o700, 0),
        dir_entry("run", 0o755, 0),
        dir_entry("sys", 0o555, 0),
        dir_entry("tmp", 0o1777, 0),
        dir_entry("usr", 0o755, 0),
        dir_entry("usr/bin", 0o755, 0),
        symlink("usr/bin/env", "/bin/busybox"),
        dir_entry("var", 0o755, 0),
        dir_entry("var/lib", 0o755, 0),
        dir_entry("var/lib/data", 0o755, 0),
        file(
            OPAQUE_HIDDEN_FILE,
            0o644,
            b"hidden by the opaque dir of layer 2\n",
        ),
    ];
    l1.extend(
        APPLETS
            .iter()
            .map(|a| symlink(&format!("bin/{a}"), "busybox")),
    );
    let l2 = vec![
        file("etc/.wh.doomed", 0o644, b""),
        dir_entry("var/lib/data", 0o755, 0),
        file("var/lib/data/.wh..wh..opq", 0o644, b""),
        file(OPAQUE_NEW_FILE, 0o644, b"from layer 2\n"),
        file(
            "etc/vivarium-release",
            0o644,
            b"vivarium busybox test image\n",
        ),
    ];
    let gzip = |t: &[u8]| -> Result<Vec<u8>, ImageError> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(t).map_err(io_ctx(|| "gzip layer".into()))?;
        e.finish().map_err(io_ctx(|| "gzip layer".into()))
    };
    let t1 = tar_of(&l1)?;
    let t2 = tar_of(&l2)?;
    let gz1 = gzip(&t1)?;
    let zs2 = zstd::encode_all(&t2[..], 3).map_err(io_ctx(|| "zstd layer".into()))?;

    std::fs::create_dir_all(dir.join("blobs/sha256"))
        .map_err(io_ctx(|| format!("create {}", dir.display())))?;
    let (d1, s1) = write_blob(dir, &gz1)?;
    let (d2, s2) = write_blob(dir, &zs2)?;
    let mut diff_ids = vec![sha(&t1), sha(&t2)];
    let mut layers = vec![
        serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d1, "size": s1}),
        serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d2, "size": s2}),
    ];
    for extra in &extra_layers {
        let t = tar_of(extra)?;
        let (d, size) = write_blob(dir, &gzip(&t)?)?;
        diff_ids.push(sha(&t));
        layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", MARKER_ENV],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": "vivarium-busybox-test"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "vivarium test-support layer 1"}, {"created_by": "vivarium test-support layer 2"}]
    });
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| ImageError::Internal(e.to_string()))?;
    let (dc, sc) = write_blob(dir, &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": sc},
        "layers": layers
    });
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| ImageError::Internal(e.to_string()))?;
    let (dm, sm) = write_blob(dir, &manifest_bytes)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": dm, "size": sm,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "1.35"}
        }]
    });
    let w = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).map_err(io_ctx(|| format!("write {name}")))
    };
    w("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    w(
        "index.json",
        &serde_json::to_vec(&index).map_err(|e| ImageError::Internal(e.to_string()))?,
    )?;
    Ok(dir.to_path_buf())
}

/// Tars an OCI layout directory into `out` (an `oci-archive`).
pub fn archive_layout(layout: &Path, out: &Path) -> Result<PathBuf, ImageError> {
    let f = std::fs::File::create(out).map_err(io_ctx(|| format!("create {}", out.display())))?;
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", layout)
        .map_err(io_ctx(|| format!("tar {}", layout.display())))?;
    b.into_inner().map_err(io_ctx(|| "finish archive".into()))?;
    Ok(out.to_path_buf())
}

/// `127.0.0.1:<port>` with nothing listening (bound then released).
pub fn closed_loopback_address() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "127.0.0.1:9".into())
}

/// Debian's `docker-registry` on `127.0.0.1:<free port>` with its own storage; killed on drop.
pub struct TestRegistry {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts the registry and waits until `/v2/` answers. The binary is `docker-registry` from
    /// `PATH`, or `$VIVARIUM_DOCKER_REGISTRY`.
    pub fn start() -> Result<TestRegistry, ImageError> {
        let bin =
            std::env::var("VIVARIUM_DOCKER_REGISTRY").unwrap_or_else(|_| "docker-registry".into());
        let mut last_err = String::new();
        // The free port is found by binding and releasing it; retry if someone grabs it first.
        for _ in 0..3 {
            let dir = tempfile::tempdir().map_err(io_ctx(|| "registry temp dir".into()))?;
            let addr: SocketAddr = closed_loopback_address()
                .parse()
                .map_err(|e| ImageError::Internal(format!("loopback address: {e}")))?;
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            );
            let cfg = dir.path().join("config.yml");
            std::fs::write(&cfg, config).map_err(io_ctx(|| format!("write {}", cfg.display())))?;
            let log = std::fs::File::create(dir.path().join("registry.log"))
                .map_err(io_ctx(|| "registry log".into()))?;
            let log2 = log.try_clone().map_err(io_ctx(|| "registry log".into()))?;
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(io_ctx(|| {
                    format!("start {bin} (install Debian package docker-registry)")
                }))?;
            let mut reg = TestRegistry {
                child,
                addr,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = reg.child.try_wait() {
                    last_err = format!(
                        "{bin} exited with {status}: {}",
                        std::fs::read_to_string(reg._dir.path().join("registry.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if probe(addr) {
                    tracing::debug!(%addr, "test registry ready");
                    return Ok(reg);
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            if last_err.is_empty() {
                last_err = format!("{bin} did not answer on {addr} within 60 s");
            }
        }
        Err(ImageError::Internal(last_err))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, the registry part of references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

fn probe(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    // Go answers an HTTP/1.0 request with an HTTP/1.0 status line.
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf[..n].starts_with(b"HTTP/1.") && &buf[8..12] == b" 200")
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
