//! The OCI runtime config handed to crun, built with `oci-spec`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
    Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::DriverError;

/// Where the agent binary appears inside the sandbox.
pub const AGENT_PATH: &str = "/.vivarium/agent";
/// Where the host's `runs/<id>/sock` directory appears inside the sandbox.
pub const AGENT_RUN_DIR: &str = "/.vivarium/run";
/// RLIMIT_NOFILE for sandbox processes (above 20000 is refused on these hosts).
pub const NOFILE: u64 = 16384;

/// Docker's default capability set, minus CAP_MKNOD: crun runs without a cgroup manager, so on a
/// cgroup-v2 host there is no device controller behind the /dev allow-list and mknod of a host
/// block device would be an escape (on v1 the driver also writes a devices.allow list).
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Syscalls that fail with EPERM. Default-allow plus this deny list follows Docker's profile in
/// spirit: kernel/module/boot control, (re)mounting, tracing/BPF, keyrings, clock changes. ptrace/kcmp/process_vm_* stay allowed (Docker allows
/// them on kernels >= 4.8; debuggers need them). `unshare`,
/// `clone` and `setns` stay allowed because Chromium's own sandbox creates user namespaces; without
/// CAP_SYS_ADMIN they cannot create any other namespace type.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "uselib",
    "userfaultfd",
    "vhangup",
];

/// /proc and /sys paths hidden like Docker does.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only like Docker does.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything the config needs, resolved to host paths.
#[derive(Debug, Clone)]
pub struct ConfigInput<'a> {
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    pub env: &'a [String],
    pub cwd: &'a str,
    pub shm_mib: u64,
    pub agent_binary: &'a Path,
    pub agent_args: &'a [String],
    pub sock_dir: &'a Path,
    /// Directory holding generated `hostname`, `hosts`, `resolv.conf`.
    pub etc_dir: &'a Path,
    pub netns: &'a Path,
}

fn mount(
    dest: &str,
    typ: &str,
    source: impl Into<PathBuf>,
    opts: &[&str],
) -> Result<Mount, DriverError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source.into())
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The seccomp filter: allow by default, EPERM for [`DENIED_SYSCALLS`].
pub fn seccomp() -> Result<LinuxSeccomp, DriverError> {
    let deny = LinuxSyscallBuilder::default()
        .names(
            DENIED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()?;
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(vec![deny])
        .build()?)
}

/// Builds the runtime config for one sandbox.
pub fn build(inp: &ConfigInput<'_>) -> Result<Spec, DriverError> {
    let caps: oci_spec::runtime::Capabilities = CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    let mut args = vec![AGENT_PATH.to_string()];
    args.extend(inp.agent_args.iter().cloned());
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(args)
        .env(inp.env.to_vec())
        .cwd(inp.cwd)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(NOFILE)
            .soft(NOFILE)
            .build()?])
        .build()?;

    let shm = format!("size={}m", inp.shm_mib);
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=755", "size=65536k"],
        )?,
        mount(
            AGENT_PATH,
            "bind",
            inp.agent_binary,
            &["bind", "ro", "nosuid", "nodev"],
        )?,
        mount(
            AGENT_RUN_DIR,
            "bind",
            inp.sock_dir,
            &["bind", "rw", "nosuid", "nodev", "noexec"],
        )?,
        mount(
            "/etc/hostname",
            "bind",
            inp.etc_dir.join("hostname"),
            &["bind", "rw", "nosuid", "nodev"],
        )?,
        mount(
            "/etc/hosts",
            "bind",
            inp.etc_dir.join("hosts"),
            &["bind", "rw", "nosuid", "nodev"],
        )?,
        mount(
            "/etc/resolv.conf",
            "bind",
            inp.etc_dir.join("resolv.conf"),
            &["bind", "rw", "nosuid", "nodev"],
        )?,
    ];

    let ns = |t: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(t).build();
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
        ns(LinuxNamespaceType::Cgroup)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(inp.netns)
            .build()?,
    ];
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .seccomp(seccomp()?)
        .rootfs_propagation("rprivate")
        .build()?;

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(inp.rootfs)
                .readonly(false)
                .build()?,
        )
        .hostname(inp.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_hardening_and_layout() {
        let env = vec!["PATH=/bin".to_string()];
        let args = vec!["serve".to_string()];
        let inp = ConfigInput {
            rootfs: Path::new("/x/rootfs"),
            hostname: "box",
            env: &env,
            cwd: "/",
            shm_mib: 1024,
            agent_binary: Path::new("/usr/bin/agent"),
            agent_args: &args,
            sock_dir: Path::new("/x/sock"),
            etc_dir: Path::new("/x/etc"),
            netns: Path::new("/run/netns/v-a"),
        };
        let spec = build(&inp).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v["process"]["args"],
            serde_json::json!(["/.vivarium/agent", "serve"])
        );
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["rlimits"][0]["hard"], 16384);
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_NET_BIND_SERVICE"));
        assert!(!caps
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN" || c == "CAP_MKNOD"));
        assert_eq!(v["hostname"], "box");
        let mounts = v["mounts"].as_array().unwrap();
        let shm = mounts
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap();
        assert!(shm["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "size=1024m"));
        let agent = mounts
            .iter()
            .find(|m| m["destination"] == AGENT_PATH)
            .unwrap();
        assert_eq!(agent["source"], "/usr/bin/agent");
        assert!(agent["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "ro"));
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns.len(), 6);
        let net = ns.iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net["path"], "/run/netns/v-a");
        let sc = &v["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ALLOW");
        let names = sc["syscalls"][0]["names"].as_array().unwrap();
        assert!(names.iter().any(|n| n == "kexec_load"));
        assert!(!names.iter().any(|n| n == "unshare" || n == "clone"));
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
        assert!(v["linux"].get("cgroupsPath").is_none());
    }
}
