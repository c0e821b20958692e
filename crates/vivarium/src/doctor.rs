//! `vivarium doctor`: checks that this host can run sandboxes and says what is missing and how to
//! fix it. Every check is what `vivarium serve` (or the first desktop create) would otherwise
//! fail on later, with a less helpful message.

use std::path::{Path, PathBuf};
use std::process::Command;

use vivarium_isolation::cgroup::CgroupMode;
use vivarium_server::{agent_binary, desktop_image};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Works, with a caveat; does not fail the doctor.
    Warn,
    /// `vivarium serve` or sandboxes will not work until it is fixed.
    Fail,
}

#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    /// How to fix it, when it is not ok.
    pub fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(
    name: &'static str,
    level: Level,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub struct DoctorConfig {
    pub runtime: PathBuf,
    pub data_dir: PathBuf,
    pub agent: Option<PathBuf>,
}

/// Looks `prog` up like a shell would: a path with a slash as is, otherwise through `PATH`.
pub fn which(prog: &Path) -> Option<PathBuf> {
    if prog.components().count() > 1 {
        return prog.is_file().then(|| prog.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(prog))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// First line of `prog args` (stdout, else stderr), if it ran and succeeded.
fn version_line(prog: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn tool(name: &'static str, prog: &str, args: &[&str], package: &str) -> Check {
    match which(Path::new(prog)) {
        Some(p) => match version_line(&p, args) {
            Some(v) => ok(name, format!("{v} ({})", p.display())),
            None => bad(
                name,
                Level::Fail,
                format!(
                    "{} is present but `{prog} {}` failed",
                    p.display(),
                    args.join(" ")
                ),
                format!("reinstall it: apt-get install --reinstall {package}"),
            ),
        },
        None => bad(
            name,
            Level::Fail,
            format!("{prog} not found in PATH"),
            format!("apt-get install {package} (or scripts/setup.sh)"),
        ),
    }
}

pub fn run_checks(cfg: &DoctorConfig) -> Vec<Check> {
    let mut checks = Vec::new();

    let uid = nix::unistd::geteuid();
    checks.push(if uid.is_root() {
        ok("privileges", "running as root")
    } else {
        bad(
            "privileges",
            Level::Fail,
            format!(
                "running as uid {uid}; the runner makes namespaces, cgroups and nftables rules"
            ),
            "run the runner as root (sudo vivarium serve)",
        )
    });

    checks.push(kernel());
    checks.push(namespaces());
    checks.push(cgroups());

    // The OCI runtime, as `serve --runtime` would find it.
    checks.push(match which(&cfg.runtime) {
        Some(p) => match version_line(&p, &["--version"]) {
            Some(v) => ok("OCI runtime", format!("{v} ({})", p.display())),
            None => bad(
                "OCI runtime",
                Level::Fail,
                format!("{} does not answer --version", p.display()),
                "apt-get install --reinstall crun",
            ),
        },
        None => bad(
            "OCI runtime",
            Level::Fail,
            format!("{} not found in PATH", cfg.runtime.display()),
            "apt-get install crun (or scripts/setup.sh), or pass --runtime PATH",
        ),
    });
    checks.push(tool("nftables", "nft", &["--version"], "nftables"));
    checks.push(nft_usable());
    checks.push(tool("iproute2", "ip", &["-V"], "iproute2"));
    checks.push(tool("mkfs.ext4", "mkfs.ext4", &["-V"], "e2fsprogs"));
    checks.push(ip_forward());
    checks.push(agent(cfg));
    checks.push(desktop_image_check(&cfg.data_dir));
    checks.push(criu());
    checks.push(data_dir(&cfg.data_dir));
    checks
}

fn kernel() -> Check {
    match nix::sys::utsname::uname() {
        Ok(u) => ok(
            "kernel",
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            ),
        ),
        Err(e) => bad("kernel", Level::Warn, format!("uname: {e}"), "-"),
    }
}

fn namespaces() -> Check {
    let needed = ["mnt", "pid", "net", "uts", "ipc", "cgroup"];
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    if missing.is_empty() {
        ok("namespaces", needed.join(", "))
    } else {
        bad(
            "namespaces",
            Level::Fail,
            format!("this kernel lacks {} namespaces", missing.join(", ")),
            "use a kernel built with CONFIG_NAMESPACES and the missing namespace options",
        )
    }
}

fn cgroups() -> Check {
    let root = Path::new("/sys/fs/cgroup");
    match vivarium_isolation::cgroup::detect_mode(root) {
        Ok(CgroupMode::V2) => {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let missing: Vec<&str> = ["cpu", "memory", "pids"]
                .into_iter()
                .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
                .collect();
            if missing.is_empty() {
                ok(
                    "cgroups",
                    format!("v2 (controllers: {})", controllers.trim()),
                )
            } else {
                bad(
                    "cgroups",
                    Level::Fail,
                    format!("cgroup v2 without the {} controller(s)", missing.join(", ")),
                    "enable them (systemd: they are on by default; otherwise write +cpu +memory +pids to /sys/fs/cgroup/cgroup.subtree_control)",
                )
            }
        }
        Ok(CgroupMode::V1 { hybrid }) => {
            let missing: Vec<&str> = ["memory", "cpu", "pids", "freezer"]
                .into_iter()
                .filter(|c| !root.join(c).join("cgroup.procs").exists())
                .collect();
            let mode = if hybrid {
                "v1 (hybrid, with a cgroup2 mount)"
            } else {
                "v1"
            };
            if missing.is_empty() {
                ok("cgroups", format!("{mode}: memory, cpu, pids, freezer"))
            } else {
                bad(
                    "cgroups",
                    Level::Fail,
                    format!("{mode} without the {} controller(s)", missing.join(", ")),
                    "mount the missing cgroup v1 controllers, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)",
                )
            }
        }
        Err(e) => bad(
            "cgroups",
            Level::Fail,
            format!("{e}"),
            "mount cgroups at /sys/fs/cgroup",
        ),
    }
}

/// `nft` present is not enough: the kernel must accept a table (nf_tables loaded, CAP_NET_ADMIN).
fn nft_usable() -> Check {
    if which(Path::new("nft")).is_none() {
        return bad(
            "nf_tables",
            Level::Fail,
            "cannot test without nft",
            "apt-get install nftables",
        );
    }
    let table = format!("vivarium_doctor_{}", std::process::id());
    let script = format!("add table inet {table}\ndelete table inet {table}\n");
    let out = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("piped")
                .write_all(script.as_bytes())?;
            c.wait_with_output()
        });
    match out {
        Ok(o) if o.status.success() => ok("nf_tables", "the kernel accepts nftables tables"),
        Ok(o) => bad(
            "nf_tables",
            Level::Fail,
            format!(
                "creating a test table failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "load nf_tables (modprobe nf_tables) and run as root",
        ),
        Err(e) => bad(
            "nf_tables",
            Level::Fail,
            format!("running nft: {e}"),
            "apt-get install nftables",
        ),
    }
}

fn ip_forward() -> Check {
    match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward") {
        Ok(v) if v.trim() == "1" => ok("IPv4 forwarding", "on"),
        Ok(_) => ok(
            "IPv4 forwarding",
            "off now; `vivarium serve` turns it on for sandboxes' NAT",
        ),
        Err(e) => bad(
            "IPv4 forwarding",
            Level::Warn,
            format!("cannot read /proc/sys/net/ipv4/ip_forward: {e}"),
            "sandboxes with network \"nat\" need it",
        ),
    }
}

fn agent(cfg: &DoctorConfig) -> Check {
    let exe = std::env::current_exe().unwrap_or_default();
    if let Some(p) = &cfg.agent {
        return match agent_binary::check_static(p) {
            Ok(()) => ok("guest agent", format!("{} (static)", p.display())),
            Err(e) => bad(
                "guest agent",
                Level::Fail,
                e.to_string(),
                "scripts/build-agent.sh builds a static one",
            ),
        };
    }
    match agent_binary::find_static(&agent_binary::candidates(&exe)) {
        Ok(p) => ok("guest agent", format!("{} (static)", p.display())),
        Err(e) => match agent_binary::source_workspace(&exe) {
            Some(ws) => bad(
                "guest agent",
                Level::Warn,
                "no static agent built yet",
                format!(
                    "`vivarium serve` builds it with {}/scripts/build-agent.sh on start (or run that now)",
                    ws.display()
                ),
            ),
            None => bad(
                "guest agent",
                Level::Fail,
                e.to_string(),
                "scripts/setup.sh installs it, or pass --agent PATH",
            ),
        },
    }
}

fn desktop_image_check(data_dir: &Path) -> Check {
    let hash = desktop_image::inputs_hash();
    let reference = desktop_image::builtin_reference();
    let stored = data_dir
        .join("images")
        .exists()
        .then(|| {
            vivarium_image::ImageStore::open(vivarium_image::StoreConfig {
                root: data_dir.join("images"),
                ..Default::default()
            })
            .ok()
        })
        .flatten()
        .and_then(|s| {
            let r = vivarium_image::ImageStore::parse_reference(&reference).ok()?;
            s.get(&r).ok().flatten()
        })
        .is_some();
    if stored {
        return ok("desktop image", format!("{reference} is stored"));
    }
    let cache = desktop_image::DesktopImage::default_cache_root().join(format!("desktop-{hash}"));
    if cache.join("index.json").is_file() {
        return ok(
            "desktop image",
            format!(
                "built at {}; imported on the first desktop create",
                cache.display()
            ),
        );
    }
    let missing: Vec<&str> = ["mmdebstrap", "zstd"]
        .into_iter()
        .filter(|t| which(Path::new(t)).is_none())
        .collect();
    if missing.is_empty() {
        ok(
            "desktop image",
            "not built yet; the first desktop create builds it (mmdebstrap, about a minute plus downloads)",
        )
    } else {
        bad(
            "desktop image",
            Level::Fail,
            format!(
                "not built, and {} needed to build it is missing",
                missing.join(", ")
            ),
            format!("apt-get install {}", missing.join(" ")),
        )
    }
}

/// Checkpoint/restore is not used by this version of the runner; say so instead of pretending.
fn criu() -> Check {
    match which(Path::new("criu")) {
        Some(p) => ok(
            "CRIU",
            format!(
                "{} present; not used by this version (no hibernation yet)",
                p.display()
            ),
        ),
        None => ok("CRIU", "not needed by this version (no hibernation yet)"),
    }
}

fn data_dir(dir: &Path) -> Check {
    let probe = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(probe) {
        Ok(st) => {
            let free_mib = (st.blocks_available() * st.fragment_size()) >> 20;
            let detail = format!("{} ({} MiB free)", dir.display(), free_mib);
            if free_mib < 2048 {
                bad(
                    "data dir",
                    Level::Warn,
                    detail,
                    "the desktop image needs about 1.2 GiB; sandboxes need room for their writable layers",
                )
            } else {
                ok("data dir", detail)
            }
        }
        Err(e) => bad(
            "data dir",
            Level::Fail,
            format!("{}: {e}", probe.display()),
            "pick a --data-dir on a writable filesystem",
        ),
    }
}

/// Prints the checks; returns the exit code (1 when any failed).
pub fn report(checks: &[Check]) -> i32 {
    let mut failed = 0;
    for c in checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                failed += 1;
                "FAIL"
            }
        };
        println!("{tag}  {:<16} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            if c.level != Level::Ok {
                println!("      {:<16} fix: {fix}", "");
            }
        }
    }
    if failed == 0 {
        println!("all checks passed");
        0
    } else {
        println!("{failed} check(s) failed");
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which(Path::new("sh")).is_some());
        assert!(which(Path::new("definitely-not-a-program-xyz")).is_none());
        assert_eq!(which(Path::new("/bin/sh")), Some(PathBuf::from("/bin/sh")));
    }

    #[test]
    fn report_exit_code() {
        assert_eq!(report(&[ok("a", "fine")]), 0);
        assert_eq!(
            report(&[ok("a", "fine"), bad("b", Level::Warn, "meh", "x")]),
            0
        );
        assert_eq!(report(&[bad("c", Level::Fail, "broken", "fix it")]), 1);
    }
}
