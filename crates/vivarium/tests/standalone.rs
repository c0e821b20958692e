//! The runner on its own: it refuses a dynamically linked guest agent with a message naming the
//! fix, one data dir serves one runner (and only root reads it: state.db holds tokens), and `vivarium uninstall` removes a stopped runner's
//! sandboxes and every host object of its instance.

mod common;

use std::process::Command;

use common::{Runner, KEY};
use vivarium_api::CreateRunRequest;

fn serve_cmd(data_dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vivarium"));
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("VIVARIUM_API_KEY", KEY)
        .env_remove("VIVARIUM_AGENT");
    c
}

#[test]
fn a_dynamically_linked_agent_is_refused_with_the_fix() {
    let data = tempfile::tempdir().unwrap();
    // This very binary is linked against glibc, like `target/release/vivarium-agent`.
    let dynamic = env!("CARGO_BIN_EXE_vivarium");
    let out = serve_cmd(data.path(), &["--agent", dynamic])
        .output()
        .expect("running vivarium serve");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a dynamic agent: {text}"
    );
    assert!(text.contains("dynamically linked"), "{text}");
    assert!(text.contains("scripts/build-agent.sh"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_per_data_dir_and_its_secrets_are_private() {
    let mut r = Runner::start().await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    // A data dir made by hand with the usual 0755 becomes private when the runner starts.
    r.kill9();
    std::fs::set_permissions(r.data_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    r.spawn().await;
    assert_eq!(mode(r.data_dir.path().to_path_buf()), 0o700);
    assert_eq!(mode(r.data_dir.path().join("state.db")), 0o600);
    let out = serve_cmd(
        r.data_dir.path(),
        &[
            "--agent",
            common::agent_binary().to_str().unwrap(),
            "--instance",
            "vvtlock",
        ],
    )
    .output()
    .expect("running a second vivarium serve");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second runner started: {text}");
    assert!(text.contains("another runner already serves"), "{text}");
    // Nor one with another data dir but the same instance name (shared nftables table, cgroup
    // parent and netns prefix).
    let other = tempfile::tempdir().unwrap();
    let out = serve_cmd(
        other.path(),
        &[
            "--agent",
            common::agent_binary().to_str().unwrap(),
            "--instance",
            &r.instance,
            "--subnet",
            "10.86.250.0/24",
        ],
    )
    .output()
    .expect("running a third vivarium serve");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a runner with a taken instance name started: {text}"
    );
    assert!(text.contains("instance name"), "{text}");
    // The first one is unharmed.
    r.client.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_a_stopped_runners_sandboxes_and_host_objects() {
    let mut r = Runner::start().await;
    let img = r.import_busybox("local/busybox:uninstall").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let run = r
            .client
            .create_run(&CreateRunRequest {
                image: Some(img.clone()),
                mem_mib: Some(128),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(run.id);
    }
    // Sandboxes outlive their runner: stop it the hard way, then uninstall.
    r.kill9();
    assert!(!r.host_traces(&ids).is_empty());
    let refused = Command::new(env!("CARGO_BIN_EXE_vivarium"))
        .args([
            "uninstall",
            "--instance",
            &r.instance,
            "--subnet",
            &r.subnet,
        ])
        .arg("--data-dir")
        .arg(r.data_dir.path().join("no-such-dir"))
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "uninstall of a data dir that does not exist"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no such data dir"));

    let out = Command::new(env!("CARGO_BIN_EXE_vivarium"))
        .args([
            "uninstall",
            "--instance",
            &r.instance,
            "--subnet",
            &r.subnet,
        ])
        .arg("--data-dir")
        .arg(r.data_dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("removed 2 sandbox(es)"), "{text}");
    assert_eq!(r.host_traces(&ids), Vec::<String>::new(), "{text}");
    let table = r.instance.replace('-', "_");
    let nft = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap();
    assert!(
        !nft.status.success(),
        "nftables table {table} is still there"
    );
    for ctrl in ["memory", "cpu", "pids", "freezer", "unified"] {
        let parent = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(&r.instance);
        assert!(!parent.exists(), "{} is still there", parent.display());
    }
    // The data dir stays unless --purge.
    assert!(r.data_dir.path().join("state.db").exists());
}
