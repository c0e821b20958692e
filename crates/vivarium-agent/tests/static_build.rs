//! The agent must run in images without any libc (busybox, scratch). This test builds it the
//! documented way, checks the ELF has no dynamic loader, and serves requests from a chroot that
//! holds nothing but the binary.
//!
//! Ignored by default (a release build of the crate graph takes minutes). Run it with
//!
//! ```text
//! cargo test -p vivarium-agent --test static_build -- --ignored --nocapture
//! ```
//!
//! Set `VIVARIUM_AGENT_STATIC_BIN` to test an already built binary instead. Needs root (chroot).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vivarium_proto::{AgentClient, ClientError, ExecRequest, WriteOptions};

const PT_INTERP: u32 = 3;

/// Stops the agent if an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Program header types of an ELF64 little-endian file (hand-parsed: three fields, no need for
/// an ELF crate).
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(elf[o..o + 4].try_into().expect("4 bytes"))
        })
        .collect()
}

fn build_static() -> PathBuf {
    if let Some(bin) = std::env::var_os("VIVARIUM_AGENT_STATIC_BIN") {
        return PathBuf::from(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // A separate target dir: the outer `cargo test` may hold the lock of the shared one.
    let target = workspace.join("target/static-agent-test");
    let status = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--release",
            "-p",
            "vivarium-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .status()
        .expect("run cargo");
    assert!(status.success(), "static build failed");
    target.join("x86_64-unknown-linux-gnu/release/vivarium-agent")
}

#[tokio::test]
#[ignore = "slow: builds the release binary; run with --ignored"]
async fn static_binary_serves_from_an_empty_chroot() {
    let bin = build_static();
    let elf = std::fs::read(&bin).expect("read binary");
    assert!(
        !program_header_types(&elf).contains(&PT_INTERP),
        "{} needs a dynamic loader",
        bin.display()
    );

    let root = tempfile::tempdir().expect("root");
    std::fs::copy(&bin, root.path().join("agent")).expect("copy");
    let root_path = root.path().to_path_buf();
    let mut cmd = Command::new("/agent");
    cmd.args(["--listen", "/run/agent.sock"]);
    // SAFETY: chroot/chdir are async-signal-safe syscalls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::chroot(&root_path)?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    let mut child = KillOnDrop(cmd.spawn().expect("start agent in chroot"));

    let client = AgentClient::new(root.path().join("run/agent.sock"));
    let give_up = Instant::now() + Duration::from_secs(20);
    let info = loop {
        match client.info().await {
            Ok(info) => break info,
            Err(ClientError::Connect(_)) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("static agent did not come up: {e}"),
        }
    };
    assert_eq!(info.pid, child.0.id());

    // Spawning works without libc in the root (the only program there is the agent itself), also
    // as a numeric user with no /etc/passwd.
    let mut req = ExecRequest::new(["/agent", "--version"]);
    req.spec.user = Some("1000:1000".into());
    let r = client.exec(req).await.expect("exec in chroot");
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert!(String::from_utf8_lossy(&r.stdout).starts_with("vivarium-agent "));

    client
        .write_file(
            "/data/x",
            "hi".into(),
            WriteOptions {
                create_parents: true,
                ..Default::default()
            },
        )
        .await
        .expect("write");
    assert_eq!(
        std::fs::read(root.path().join("data/x")).expect("read"),
        b"hi"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(child.0.wait().expect("wait").success());
}
