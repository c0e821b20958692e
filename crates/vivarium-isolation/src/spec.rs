//! The OCI runtime config handed to crun, built with `oci-spec`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
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

/// The syscalls a sandbox may make unconditionally: Docker's default seccomp profile for
/// x86-64 with the capabilities sandboxes hold (chroot for CAP_SYS_CHROOT; ptrace and
/// process_vm_* as Docker allows them on kernels >= 4.8 — a sandbox's PID namespace holds only
/// its own processes), minus io_uring (`io_uring_*`: a large, often-exploited kernel surface that
/// Docker too has since dropped). Everything else fails with EPERM: new namespaces (`unshare`,
/// `setns`, namespace flags of `clone`), the mount family, BPF, perf, keyrings, userfaultfd,
/// module loading, kexec, reboot, clock setting, quotas, swap. Newer harmless calls glibc uses
/// (`fchmodat2`, `map_shadow_stack`, `mseal`, `cachestat`) are allowed, since glibc falls back only
/// on ENOSYS, not EPERM. Three more are allowed with
/// argument checks in [`seccomp`]: `clone` (no namespace flags), `socket` (no AF_VSOCK) and
/// `personality` (the harmless values); `clone3` answers ENOSYS so C libraries fall back to
/// `clone`, whose flags the filter can see.
pub const ALLOWED_SYSCALLS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "mseal",
    "cachestat",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "arch_prctl",
    "modify_ldt",
    "chroot",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
];

/// Namespace flags of `clone` (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID |
/// NEWNET): a call with any of them set is refused.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `personality` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and
/// the query 0xffffffff.
pub const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
/// The address families `socket` may open: Unix, IPv4, IPv6 and netlink (Chromium watches
/// network changes through it). Everything else — AF_VSOCK (the hypervisor's host side), AF_PACKET,
/// AF_ALG, the exotic protocol families behind many kernel bugs — fails with EPERM.
pub const SOCKET_FAMILIES: &[u64] = &[
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
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

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    args: Vec<LinuxSeccompArg>,
) -> Result<oci_spec::runtime::LinuxSyscall, DriverError> {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action);
    if action == LinuxSeccompAction::ScmpActErrno {
        b = b.errno_ret(libc::ENOSYS as u32);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    Ok(b.build()?)
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64) -> Result<LinuxSeccompArg, DriverError> {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if op == LinuxSeccompOperator::ScmpCmpMaskedEq {
        b = b.value_two(0u64);
    }
    Ok(b.build()?)
}

/// `(arg & 0xffffffff) == value`: for `int` arguments, whose upper 32 bits the kernel ignores
/// (a plain 64-bit comparison would let `0x1_0000_0028` through as AF_VSOCK).
fn arg_u32_eq(index: usize, value: u64) -> Result<LinuxSeccompArg, DriverError> {
    Ok(LinuxSeccompArgBuilder::default()
        .index(index)
        .value(0xffff_ffffu64)
        .value_two(value)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()?)
}

/// The seccomp filter: an allowlist ([`ALLOWED_SYSCALLS`] and the argument-checked rules); any
/// other syscall fails with EPERM.
pub fn seccomp() -> Result<LinuxSeccomp, DriverError> {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    use LinuxSeccompOperator::ScmpCmpMaskedEq;
    let mut syscalls = vec![
        rule(ALLOWED_SYSCALLS, Allow, vec![])?,
        rule(
            &["clone"],
            Allow,
            vec![arg(0, ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS)?],
        )?,
        // ENOSYS, not EPERM: glibc and musl then fall back to clone(2).
        rule(&["clone3"], Errno, vec![])?,
    ];
    for family in SOCKET_FAMILIES {
        syscalls.push(rule(&["socket"], Allow, vec![arg_u32_eq(0, *family)?])?);
    }
    for v in PERSONALITY_ALLOWED {
        syscalls.push(rule(&["personality"], Allow, vec![arg_u32_eq(0, *v)?])?);
    }
    Ok(LinuxSeccompBuilder::default()
        .default_action(Errno)
        .default_errno_ret(libc::EPERM as u32)
        // x86-64 only: 32-bit (int 0x80) and x32 calls are another architecture to the filter and
        // kill the caller, which closes the whole compat syscall surface (socketcall and friends).
        .architectures(vec![Arch::ScmpArchX86_64])
        .syscalls(syscalls)
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
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(sc["defaultErrnoRet"], 1);
        let names = sc["syscalls"][0]["names"].as_array().unwrap();
        assert!(names.iter().any(|n| n == "read") && names.iter().any(|n| n == "execve"));
        for denied in [
            "unshare",
            "setns",
            "clone",
            "clone3",
            "mount",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "userfaultfd",
            "kexec_load",
            "init_module",
            "io_uring_setup",
            "reboot",
        ] {
            assert!(!names.iter().any(|n| n == denied), "{denied} allowed");
        }
        let clone = &sc["syscalls"][1];
        assert_eq!(clone["names"][0], "clone");
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NAMESPACE_FLAGS);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
        assert!(v["linux"].get("cgroupsPath").is_none());
    }
}
