//! `vivarium-bench sandbox`: create → first exec, and exec round trip, through the runner's HTTP API,
//! each beside the same work done by the bare OCI runtime (`crun run` / `crun exec` of an equivalent
//! bundle) in the same run. Prints medians and ratios; run it with `bench/run.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vivarium_api::{CreateRunRequest, ExecRequest};
use vivarium_client::Client;

#[derive(Parser)]
struct Args {
    /// The `vivarium` binary to start (release build).
    #[arg(long, default_value = "target/release/vivarium")]
    vivarium: PathBuf,
    /// The static guest agent.
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/vivarium-agent"
    )]
    agent: PathBuf,
    #[command(subcommand)]
    cmd: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Sandbox lifecycle and exec (issue: runner and sandboxes).
    Sandbox {
        #[arg(long, default_value_t = 20)]
        creates: usize,
        #[arg(long, default_value_t = 200)]
        execs: usize,
    },
    /// Desktop actions and startup (issue: the desktop).
    Desktop {
        /// The desktop OCI layout (default: build it with images/desktop/build.sh).
        #[arg(long)]
        layout: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        creates: usize,
        #[arg(long, default_value_t = 40)]
        samples: usize,
    },
}

mod desktop;

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn row(name: &str, ours: Duration, base_name: &str, base: Duration, target: &str) {
    println!(
        "{name:<34} {:>10}   {base_name:<28} {:>10}   ratio {:>5.2}x   target {target}",
        ms(ours),
        ms(base),
        ours.as_secs_f64() / base.as_secs_f64()
    );
}

pub(crate) struct Runner {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub(crate) client: Client,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The benchmark's instance is gone for good: remove its nftables table and cgroup parents
        // (a stopped runner keeps them on purpose, for the sandboxes that outlive it).
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", BENCH_INSTANCE])
            .output();
        for ctrl in [
            "memory", "cpu", "cpuacct", "pids", "freezer", "devices", "unified", "",
        ] {
            let _ =
                std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctrl).join(BENCH_INSTANCE));
        }
    }
}

/// The benchmark runner's instance name (cgroup parent, nftables table, netns prefix).
const BENCH_INSTANCE: &str = "vvbench";

pub(crate) async fn start_runner(args: &Args) -> Result<Runner> {
    let dir = tempfile::Builder::new()
        .prefix("vivarium-bench-")
        .tempdir_in("/var/tmp")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(dir.path().join("runner.log"))?;
    let child = Command::new(&args.vivarium)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--instance",
            BENCH_INSTANCE,
            "--subnet",
            "10.90.0.0/24",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--agent")
        .arg(&args.agent)
        .env("VIVARIUM_API_KEY", "bench")
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", args.vivarium.display()))?;
    let client = Client::new(format!("http://127.0.0.1:{port}"), Some("bench".into()));
    let r = Runner {
        child,
        _dir: dir,
        client,
    };
    for _ in 0..500 {
        if r.client.health().await.is_ok() {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("runner did not start")
}

/// Runs crun the way the driver does on this host: in a private mount namespace with the cgroup2
/// mount hidden (crun 1.8 refuses hybrid cgroups otherwise) and no cgroup manager.
fn crun(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("crun");
    c.arg("--root")
        .arg(root)
        .arg("--cgroup-manager=disabled")
        .args(args);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(std::io::Error::from)?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            let _ = nix::mount::umount2("/sys/fs/cgroup/unified", nix::mount::MntFlags::MNT_DETACH);
            Ok(())
        });
    }
    c
}

fn run_ok(mut c: Command) -> Result<()> {
    let out = c.output()?;
    if !out.status.success() {
        bail!("{:?} failed: {}", c, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A bundle over the same unpacked image with crun's default config (namespaces, read-only root).
fn make_bundle(dir: &Path, rootfs: &Path, args: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut spec = Command::new("crun");
    spec.arg("spec").current_dir(dir);
    run_ok(spec)?;
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    cfg["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(args);
    if let Some(ns) = cfg["linux"]["namespaces"].as_array_mut() {
        ns.push(serde_json::json!({"type": "cgroup"}));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(())
}

async fn bench_sandbox(args: &Args, creates: usize, execs: usize) -> Result<()> {
    let runner = start_runner(args).await?;
    let c = &runner.client;
    let layout_dir = tempfile::tempdir()?;
    let layout = vivarium_image::test_support::build_busybox_layout(layout_dir.path())?;
    let image = c
        .import_image(&layout.to_string_lossy(), "bench/busybox:1.0")
        .await?;
    let req = CreateRunRequest {
        image: Some("bench/busybox:1.0".into()),
        vcpus: Some(1.0),
        mem_mib: Some(256),
        ..Default::default()
    };
    let true_req = ExecRequest {
        argv: Some(vec!["true".into()]),
        ..Default::default()
    };

    // Warm-up (page cache, first nft/cgroup setup).
    let w = c.create_run(&req).await?;
    c.exec(&w.id, &true_req).await?;
    c.delete_run(&w.id).await?;

    let mut create_to_exec = Vec::new();
    for _ in 0..creates {
        let t = Instant::now();
        let run = c.create_run(&req).await?;
        let r = c.exec(&run.id, &true_req).await?;
        create_to_exec.push(t.elapsed());
        anyhow::ensure!(r.exit_code == Some(0), "exec failed: {r:?}");
        c.delete_run(&run.id).await?;
    }
    let run = c.create_run(&req).await?;
    let mut exec_rtt = Vec::new();
    for _ in 0..execs {
        let t = Instant::now();
        c.exec(&run.id, &true_req).await?;
        exec_rtt.push(t.elapsed());
    }
    c.delete_run(&run.id).await?;

    // Baseline: bare crun on the same unpacked rootfs.
    let rootfs = runner
        ._dir
        .path()
        .join("images/rootfs")
        .join(image.digest.trim_start_matches("sha256:"));
    let rootfs = if rootfs.is_dir() {
        rootfs
    } else {
        find_rootfs(&runner._dir.path().join("images"))?
    };
    let work = tempfile::tempdir()?;
    let state = work.path().join("crun-state");
    make_bundle(&work.path().join("true"), &rootfs, &["/bin/true"])?;
    make_bundle(&work.path().join("sleep"), &rootfs, &["/bin/sleep", "3600"])?;
    let mut crun_run = Vec::new();
    for i in 0..creates {
        let id = format!("vvbench-true-{i}");
        let t = Instant::now();
        run_ok(crun(
            &state,
            &[
                "run",
                "--bundle",
                &work.path().join("true").to_string_lossy(),
                &id,
            ],
        ))?;
        crun_run.push(t.elapsed());
        let _ = crun(&state, &["delete", "-f", &id]).output();
    }
    // The detached container would inherit a stderr pipe and hold it open forever: give it none.
    let sleep_bundle = work.path().join("sleep");
    let mut detached = crun(
        &state,
        &[
            "run",
            "--detach",
            "--bundle",
            &sleep_bundle.to_string_lossy(),
            "vvbench-sleep",
        ],
    );
    detached.stderr(Stdio::null());
    anyhow::ensure!(detached.status()?.success(), "crun run --detach failed");
    let mut crun_exec = Vec::new();
    for _ in 0..execs.min(100) {
        let t = Instant::now();
        run_ok(crun(&state, &["exec", "vvbench-sleep", "/bin/true"]))?;
        crun_exec.push(t.elapsed());
    }
    let _ = crun(&state, &["delete", "-f", "vvbench-sleep"]).output();

    println!("vivarium sandbox benchmark (medians; {creates} creates, {execs} execs; busybox image, cached)");
    row(
        "create → first exec (HTTP API)",
        median(create_to_exec),
        "crun run /bin/true",
        median(crun_run),
        "≤ 150 ms",
    );
    row(
        "exec round trip `true` (HTTP API)",
        median(exec_rtt),
        "crun exec /bin/true",
        median(crun_exec),
        "≤ 5 ms",
    );
    Ok(())
}

fn find_rootfs(images: &Path) -> Result<PathBuf> {
    let base = images.join("rootfs");
    for e in std::fs::read_dir(&base).with_context(|| base.display().to_string())? {
        let p = e?.path();
        if p.join("bin/busybox").exists() {
            return Ok(p);
        }
    }
    bail!("no busybox rootfs under {}", base.display())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.cmd {
        Which::Sandbox { creates, execs } => bench_sandbox(&args, creates, execs).await,
        Which::Desktop {
            ref layout,
            creates,
            samples,
        } => desktop::bench(&args, layout.clone(), creates, samples).await,
    }
}
