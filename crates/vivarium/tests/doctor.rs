//! `vivarium doctor` on this host: every check passes (scripts/setup.sh installed what the runner
//! needs); with crun hidden from PATH it names the missing piece, says how to fix it and exits
//! non-zero.

use std::path::Path;
use std::process::Command;

fn doctor(path_env: &str, data_dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vivarium"))
        .arg("doctor")
        .arg("--data-dir")
        .arg(data_dir)
        .env("PATH", path_env)
        .output()
        .expect("running vivarium doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn all_checks_pass_on_this_host() {
    let data = tempfile::tempdir().unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let path = format!("{path}:/usr/sbin:/sbin");
    let (code, text) = doctor(&path, data.path());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("all checks passed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    for check in [
        "OCI runtime",
        "cgroups",
        "nftables",
        "guest agent",
        "desktop image",
    ] {
        assert!(text.contains(check), "no {check} check:\n{text}");
    }
}

#[test]
fn crun_hidden_from_path_is_named_with_its_fix() {
    let data = tempfile::tempdir().unwrap();
    // A PATH holding every tool the doctor looks for except crun.
    let bin = tempfile::tempdir().unwrap();
    let full = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    for tool in ["nft", "ip", "mkfs.ext4", "mmdebstrap", "zstd", "sh", "bash"] {
        let found = std::env::split_paths(&full)
            .map(|d| d.join(tool))
            .find(|p| p.is_file());
        if let Some(p) = found {
            std::os::unix::fs::symlink(&p, bin.path().join(tool)).unwrap();
        }
    }
    let (code, text) = doctor(bin.path().to_str().unwrap(), data.path());
    assert_ne!(code, 0, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("OCI runtime"))
        .unwrap_or_else(|| panic!("no OCI runtime line:\n{text}"));
    assert!(
        line.starts_with("FAIL") && line.contains("crun"),
        "{line}\n{text}"
    );
    assert!(text.contains("apt-get install crun"), "{text}");
    // The other tools were reachable: only the runtime fails.
    assert_eq!(text.matches("FAIL").count(), 1, "{text}");
}
