//! Test harness: a real `vivarium serve` process with its own data dir, port, instance name and
//! address pool (so tests may run side by side on one host), plus a real registry on loopback.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vivarium_client::Client;

pub mod cdp;

pub const KEY: &str = "test-key-0123456789";

/// The static guest agent. `scripts/test.sh` builds it and exports `VIVARIUM_AGENT`.
pub fn agent_binary() -> PathBuf {
    if let Ok(p) = std::env::var("VIVARIUM_AGENT") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("target/x86_64-unknown-linux-gnu/release/vivarium-agent");
    assert!(
        p.is_file(),
        "static guest agent not found at {}: run scripts/build-agent.sh (scripts/test.sh does) or set VIVARIUM_AGENT",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Runner {
    pub child: Option<Child>,
    pub data_dir: tempfile::TempDir,
    pub port: u16,
    pub instance: String,
    pub subnet: String,
    pub client: Client,
    log: PathBuf,
    /// Extra environment of the runner process (`start_with_env`).
    env: Vec<(String, String)>,
}

impl Runner {
    pub async fn start() -> Runner {
        Self::start_with_env(&[]).await
    }

    /// Starts a runner with extra environment variables (e.g. `VIVARIUM_DEFAULT_IMAGE`).
    pub async fn start_with_env(env: &[(&str, &str)]) -> Runner {
        let data_dir = tempfile::Builder::new()
            .prefix("vivarium-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let n: u32 = std::process::id() ^ (Instant::now().elapsed().subsec_nanos()) ^ rand_u32();
        let instance = format!("vvt{:05x}", n & 0xfffff);
        // A /24 of 10.89.0.0/16 per runner: 64 sandboxes each, enough for the tests.
        let subnet = format!("10.89.{}.0/24", n % 250 + 1);
        let port = free_port();
        let log = data_dir.path().join("runner.log");
        let mut r = Runner {
            child: None,
            data_dir,
            port,
            instance,
            subnet,
            client: Client::new(format!("http://127.0.0.1:{port}"), Some(KEY.to_string())),
            log,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        r.spawn().await;
        r
    }

    /// Starts (or restarts) the runner process on the same data dir and port.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vivarium"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--agent")
            .arg(agent_binary())
            .args(["--instance", &self.instance, "--subnet", &self.subnet])
            .env("VIVARIUM_API_KEY", KEY)
            .env("RUST_LOG", "info,tower_http=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting vivarium serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.client.health().await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("runner exited early ({status}); log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "runner did not answer /healthz; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Imports the busybox test image under `tag` and returns the tag.
    pub async fn import_busybox(&self, tag: &str) -> String {
        let layout = busybox_layout();
        self.client
            .import_image(&layout.to_string_lossy(), tag)
            .await
            .expect("import busybox layout");
        tag.to_string()
    }

    /// Everything of this runner's that is left on the host: mounts under its data dir, cgroups,
    /// network namespaces, veths of the given sandbox ids.
    pub fn host_traces(&self, ids: &[String]) -> Vec<String> {
        let mut left = Vec::new();
        let dd = self.data_dir.path().to_string_lossy().to_string();
        for line in std::fs::read_to_string("/proc/mounts").unwrap().lines() {
            if line.contains(&dd) && line.contains("sandboxes") {
                left.push(format!("mount: {line}"));
            }
        }
        for ctrl in ["memory", "cpu", "pids", "freezer", "unified"] {
            let dir = Path::new("/sys/fs/cgroup").join(ctrl).join(&self.instance);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        left.push(format!("cgroup: {}", e.path().display()));
                    }
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(&format!("{}-", self.instance)) {
                    left.push(format!("netns: {name}"));
                }
            }
        }
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        for id in ids {
            let short = &id[..8.min(id.len())];
            for l in links.lines().filter(|l| l.contains(short)) {
                left.push(format!("link: {l}"));
            }
        }
        left
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        // Delete what is left through the API (blocking client: Drop cannot await).
        let url = self.url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = Client::new(url, Some(KEY.to_string()));
                if let Ok(runs) = c.list_runs(&Default::default()).await {
                    for r in runs {
                        let _ = c.delete_run(&r.id).await;
                    }
                }
            });
        })
        .join();
        self.kill9();
        // A stopped runner keeps its instance's nftables table and cgroup parents on purpose (its
        // sandboxes outlive it); a test runner's instance is gone for good, so remove them too.
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.instance.replace('-', "_")])
            .output();
        for ctrl in [
            "memory", "cpu", "cpuacct", "pids", "freezer", "devices", "unified", "",
        ] {
            let _ =
                std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctrl).join(&self.instance));
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u32::from_le_bytes(b)
}

/// The busybox OCI layout, built once per test process.
pub fn busybox_layout() -> PathBuf {
    static LAYOUT: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let p = vivarium_image::test_support::build_busybox_layout(dir.path())
                .expect("building busybox layout");
            (dir, p)
        })
        .1
        .clone()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The desktop OCI layout from `images/desktop/build.sh` (needs root; ~60 s the first time, cached
/// under /var/cache/vivarium by the hash of its inputs), built once per test process.
pub fn desktop_layout() -> PathBuf {
    static LAYOUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/desktop/build.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .expect("running images/desktop/build.sh");
            assert!(
                out.status.success(),
                "images/desktop/build.sh failed: {}",
                out.status
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let last = stdout
                .lines()
                .last()
                .expect("build.sh printed no path")
                .trim();
            PathBuf::from(last)
        })
        .clone()
}

impl Runner {
    /// Imports the desktop image as `vivarium/desktop:<inputs hash>` and returns that tag.
    pub async fn import_desktop(&self) -> String {
        let layout = desktop_layout();
        let name = layout.file_name().unwrap().to_string_lossy().to_string();
        let hash = name.strip_prefix("desktop-").unwrap_or(&name);
        let tag = format!("vivarium/desktop:{hash}");
        self.client
            .import_image(&layout.to_string_lossy(), &tag)
            .await
            .expect("import desktop layout");
        tag
    }
}

/// Writes `files` (absolute paths under /srv → contents) into the sandbox, serves /srv there with
/// `python3 -m http.server` on 127.0.0.1:8000 (a background process) and waits until it answers.
pub async fn serve_srv(c: &Client, id: &str, files: &[(&str, &str)]) {
    for (path, body) in files {
        c.write_file(id, path, body.as_bytes().to_vec(), None)
            .await
            .expect("write page");
    }
    let argv = [
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "8000",
        "-d",
        "/srv",
    ];
    c.spawn(
        id,
        &vivarium_api::ExecRequest {
            argv: Some(argv.map(String::from).to_vec()),
            ..Default::default()
        },
    )
    .await
    .expect("start http.server");
    let probe =
        "python3 -c \"import urllib.request;urllib.request.urlopen('http://127.0.0.1:8000/')\"";
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.sh(id, probe).await.expect("probe").exit_code != Some(0) {
        assert!(Instant::now() < deadline, "http.server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
