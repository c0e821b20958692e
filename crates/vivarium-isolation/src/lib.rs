//! vivarium-isolation: the container driver.
//!
//! Turns a [`SandboxSpec`] into a running, isolated Linux container (crun, fed an OCI config built
//! with `oci-spec`) whose PID 1 is the guest agent, and tears it down without a trace.
//!
//! On-disk layout under [`DriverConfig::state_dir`]:
//! - `crun/` — crun's `--root` (container state)
//! - `net/<index>` — /30 claims (file content = sandbox id), persisted across runner restarts
//! - `runs/<id>/` — `config.json`, `console.log` (agent stdio + crun errors), `init.pid`,
//!   `upper/` `work/` (overlay scratch), `rootfs/` (merged overlay = container root), `sock/`
//!   (= `/.vivarium/run` inside), `etc/` (generated hostname, hosts, resolv.conf), and with
//!   `disk_mib` `scratch.img` loop-mounted at `scratch/` holding upper/work.
//!
//! Host-wide names derived from [`DriverConfig::cgroup_parent`] (call it the instance name):
//! cgroups `<ctrl>/<parent>/<id>` (v1) or `<parent>/<id>` (v2), netns `/run/netns/<parent>-<id>`,
//! nftables table `inet <parent>`. Two driver instances with different parents, state dirs and subnets
//! do not see each other's sandboxes.
//!
//! Nothing here is tied to the runner process: containers run detached in their own session, and a
//! fresh [`Driver`] over the same config can `status`/`destroy` what another instance created.

pub mod cgroup;
pub mod net;
pub mod runtime;
pub mod spec;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use ipnet::Ipv4Net;
use tracing::{debug, info, warn};

use crate::cgroup::{CgroupMode, Cgroups, Limits};
use crate::net::Allocator;
use crate::runtime::Crun;

/// Errors of the driver. Messages carry the failing operation and path/command.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("sandbox {0} already exists")]
    AlreadyExists(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
        input: String,
    },
    #[error("crun {op} of {id} failed: {message}")]
    Runtime {
        id: String,
        op: &'static str,
        message: String,
    },
    #[error("building the OCI config: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("no free /30 left in {0}")]
    AddressesExhausted(String),
    #[error("host not supported: {0}")]
    Unsupported(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("driver task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub(crate) fn io_err(context: String, source: std::io::Error) -> DriverError {
    DriverError::Io { context, source }
}

/// Driver configuration.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Holds `runs/<id>/…`, `net/` and crun's `--root` (`crun/`).
    pub state_dir: PathBuf,
    /// The OCI runtime binary (crun).
    pub runtime: PathBuf,
    /// Sandbox addresses; each sandbox gets one /30 (host side .1, sandbox .2).
    pub subnet: Ipv4Net,
    /// Instance name: cgroup parent, nftables table name and netns name prefix.
    pub cgroup_parent: String,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/vivarium/isolation"),
            runtime: PathBuf::from("/usr/bin/crun"),
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap_or_default(),
            cgroup_parent: "vivarium".to_string(),
        }
    }
}

/// Network of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// veth pair with a /30, default route via the host, masqueraded egress.
    Nat,
    /// Own network namespace with only `lo`.
    None,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// `[a-z0-9][a-z0-9-]*`, at most 48 characters.
    pub id: String,
    /// Unpacked image, used read-only as the overlay's lower layer.
    pub rootfs: PathBuf,
    pub hostname: String,
    pub env: Vec<String>,
    /// Absolute working directory of the agent.
    pub cwd: String,
    pub vcpus: f64,
    pub mem_mib: u64,
    pub pids_max: u64,
    pub shm_mib: u64,
    /// Caps the scratch layer (sparse ext4 image, loop-mounted) when set.
    pub disk_mib: Option<u64>,
    pub network: NetworkMode,
    /// Egress rules beyond the firewall's defaults (`Nat` only).
    pub egress: net::Egress,
    /// Host path of the agent; appears read-only at `/.vivarium/agent` and runs as PID 1.
    pub agent_binary: PathBuf,
    /// argv[1..] of the agent (argv[0] is `/.vivarium/agent`).
    pub agent_args: Vec<String>,
}

/// A running sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    /// Host pid of the container init (the agent).
    pub pid: u32,
    /// Host path of the agent's socket (`runs/<id>/sock/agent.sock`, `/.vivarium/run/agent.sock`
    /// inside). The agent creates it; the driver does not wait for it.
    pub agent_socket: PathBuf,
    /// Sandbox address (NAT mode).
    pub ip: Option<Ipv4Addr>,
    /// Host end of the veth (NAT mode).
    pub host_ip: Option<Ipv4Addr>,
}

/// Sandbox state as seen on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    Running {
        pid: u32,
    },
    /// Known (crun state or run dir) but its init is not running.
    Stopped,
    Missing,
}

/// Name of the agent socket inside the socket directory.
pub const AGENT_SOCKET_NAME: &str = "agent.sock";

/// The container driver. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Driver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: DriverConfig,
    cgroups: Cgroups,
    crun: Crun,
    alloc: Allocator,
    /// The host's IPv4 resolvers (read at start), which sandboxes may always reach on port 53.
    nameservers: Vec<Ipv4Addr>,
}

/// The firewall for the sandboxes that exist now: each claimed /30 whose veth is still there, with
/// the egress rules kept beside its run. Rules that cannot be read fail closed (no egress at all);
/// a run without the file predates egress rules and gets the default.
fn firewall_of(cfg: &DriverConfig, alloc: &Allocator, nameservers: &[Ipv4Addr]) -> net::Firewall {
    let veths = alloc
        .entries()
        .into_iter()
        .filter(|(_, id)| validate_id(id).is_ok())
        .filter_map(|(index, id)| Some((net::plan(&cfg.subnet, index)?, id)))
        .filter(|(p, _)| Path::new("/sys/class/net").join(&p.veth).exists())
        .map(|(p, id)| {
            let file = cfg.state_dir.join("runs").join(&id).join("egress.json");
            let egress = match std::fs::read(&file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => net::Egress::default(),
                read => read
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_else(|| {
                        warn!(sandbox = %id, file = %file.display(), "unreadable egress rules: the sandbox gets no egress");
                        net::Egress {
                            allow: vec![],
                            deny: vec!["0.0.0.0/0".parse().expect("valid CIDR")],
                        }
                    }),
            };
            net::Guarded {
                veth: p.veth,
                ip: p.ip,
                egress,
            }
        })
        .collect();
    net::Firewall {
        table: cfg.cgroup_parent.replace('-', "_"),
        subnet: cfg.subnet,
        nameservers: nameservers.to_vec(),
        veths,
    }
}

/// Remembers the subnet an instance's address claims were made from, and refuses another while
/// claims exist: veth names and firewall elements are derived from it, so a runner restarted with
/// a different `--subnet` would leave running sandboxes outside the walls.
fn pin_subnet(net_dir: &Path, subnet: &Ipv4Net) -> Result<(), DriverError> {
    std::fs::create_dir_all(net_dir)
        .map_err(|e| io_err(format!("create {}", net_dir.display()), e))?;
    let file = net_dir.join("subnet");
    let claims = std::fs::read_dir(net_dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
        })
        .unwrap_or(false);
    match std::fs::read_to_string(&file) {
        Ok(old) if old.trim() != subnet.to_string() && claims => {
            return Err(DriverError::InvalidSpec(format!(
                "this state dir's sandboxes have addresses from subnet {}, not {subnet}: restart \
                 with --subnet {} (or delete its sandboxes first)",
                old.trim(),
                old.trim()
            )))
        }
        _ => {}
    }
    std::fs::write(&file, subnet.to_string())
        .map_err(|e| io_err(format!("write {}", file.display()), e))
}

fn validate_id(id: &str) -> Result<(), DriverError> {
    let ok = !id.is_empty()
        && id.len() <= 48
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(DriverError::InvalidSpec(format!(
            "id {id:?} must match [a-z0-9][a-z0-9-]{{0,47}}"
        )))
    }
}

fn validate(spec: &SandboxSpec) -> Result<(), DriverError> {
    validate_id(&spec.id)?;
    let bad = |m: String| Err(DriverError::InvalidSpec(m));
    if !spec.rootfs.is_dir() {
        return bad(format!(
            "rootfs {} is not a directory",
            spec.rootfs.display()
        ));
    }
    if !spec.agent_binary.is_file() {
        return bad(format!(
            "agent_binary {} is not a file",
            spec.agent_binary.display()
        ));
    }
    let h = &spec.hostname;
    if h.is_empty()
        || h.len() > 63
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return bad(format!(
            "hostname {h:?} must be 1-63 chars of [A-Za-z0-9.-]"
        ));
    }
    if !spec.cwd.starts_with('/') {
        return bad(format!("cwd {:?} must be absolute", spec.cwd));
    }
    use vivarium_api::limits as lim;
    if !(spec.vcpus.is_finite() && spec.vcpus >= lim::MIN_VCPUS && spec.vcpus <= lim::MAX_VCPUS) {
        return bad(format!(
            "vcpus {} must be within {}..={}",
            spec.vcpus,
            lim::MIN_VCPUS,
            lim::MAX_VCPUS
        ));
    }
    if !(lim::MIN_MEM_MIB..=lim::MAX_MEM_MIB).contains(&spec.mem_mib) {
        return bad(format!(
            "mem_mib {} must be within {}..={}",
            spec.mem_mib,
            lim::MIN_MEM_MIB,
            lim::MAX_MEM_MIB
        ));
    }
    if spec.pids_max < 1 {
        return bad("pids_max must be >= 1".into());
    }
    if spec.shm_mib < 1 || spec.shm_mib > lim::MAX_MEM_MIB {
        return bad(format!(
            "shm_mib {} must be within 1..={}",
            spec.shm_mib,
            lim::MAX_MEM_MIB
        ));
    }
    if let Some(d) = spec.disk_mib {
        if !(lim::MIN_DISK_MIB..=lim::MAX_DISK_MIB).contains(&d) {
            return bad(format!(
                "disk_mib {d} must be within {}..={}",
                lim::MIN_DISK_MIB,
                lim::MAX_DISK_MIB
            ));
        }
    }
    if spec
        .env
        .iter()
        .any(|e| !e.contains('=') || e.contains('\0'))
    {
        return bad("env entries must be KEY=VALUE without NUL".into());
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn umount(path: &Path) -> Result<(), DriverError> {
    use nix::mount::{umount2, MntFlags};
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| io_err(format!("lazy umount {}", path.display()), e.into())),
        Err(e) => Err(io_err(format!("umount {}", path.display()), e.into())),
    }
}

fn mkdirs(dirs: &[&Path]) -> Result<(), DriverError> {
    for d in dirs {
        std::fs::create_dir_all(d).map_err(|e| io_err(format!("create {}", d.display()), e))?;
    }
    Ok(())
}

/// Host resolv.conf minus loopback resolvers (they are unreachable from a sandbox).
fn resolv_conf(host: &str) -> String {
    host.lines()
        .filter(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next()) {
                (Some("nameserver"), Some(addr)) => !(addr.starts_with("127.") || addr == "::1"),
                (Some(k), _) => k == "search" || k == "options" || k == "domain",
                _ => false,
            }
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

impl Inner {
    fn run_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("runs").join(id)
    }

    /// The instance's nftables table.
    fn table(&self) -> String {
        self.cfg.cgroup_parent.replace('-', "_")
    }

    /// The console log lives on the sandbox's scratch disk when it has one, so what the sandbox
    /// writes to it (root inside can open `/proc/1/fd/1`) counts against its own disk cap rather
    /// than the host's disk.
    fn console_log(&self, id: &str) -> PathBuf {
        let dir = self.run_dir(id);
        if dir.join("scratch").is_dir() {
            dir.join("scratch").join("console.log")
        } else {
            dir.join("console.log")
        }
    }

    fn netns_name(&self, id: &str) -> String {
        format!("{}-{id}", self.cfg.cgroup_parent)
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Sandbox, DriverError> {
        validate(spec)?;
        let dir = self.run_dir(&spec.id);
        mkdirs(&[&self.cfg.state_dir.join("runs")])?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(DriverError::AlreadyExists(spec.id.clone()))
            }
            Err(e) => return Err(io_err(format!("create {}", dir.display()), e)),
        }
        if self.crun.root.join(&spec.id).exists()
            || self.cgroups.dirs(&spec.id).iter().any(|d| d.exists())
        {
            // Leftovers of an earlier sandbox with this id that the caller never destroyed.
            let _ = std::fs::remove_dir(&dir);
            return Err(DriverError::AlreadyExists(spec.id.clone()));
        }
        match self.create_inner(spec, &dir) {
            Ok(sb) => Ok(sb),
            Err(e) => {
                warn!(id = %spec.id, error = %e, "create failed, undoing");
                if let Err(e2) = self.destroy(&spec.id) {
                    warn!(id = %spec.id, error = %e2, "undo after failed create also failed");
                }
                Err(e)
            }
        }
    }

    fn create_inner(&self, spec: &SandboxSpec, dir: &Path) -> Result<Sandbox, DriverError> {
        let t0 = Instant::now();
        let id = &spec.id;
        let rootfs = dir.join("rootfs");
        mkdirs(&[&rootfs])?;

        // Scratch layer (optionally capped by a loop-mounted ext4 image).
        let scratch = if let Some(mib) = spec.disk_mib {
            let img = dir.join("scratch.img");
            let mnt = dir.join("scratch");
            mkdirs(&[&mnt])?;
            let f = std::fs::File::create(&img)
                .map_err(|e| io_err(format!("create {}", img.display()), e))?;
            f.set_len(mib * 1024 * 1024)
                .map_err(|e| io_err(format!("size {}", img.display()), e))?;
            drop(f);
            let img_s = img.to_string_lossy();
            net::run_tool(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-O",
                    "^has_journal",
                    "-E",
                    "nodiscard",
                    &img_s,
                ],
                None,
            )?;
            net::run_tool(
                "mount",
                &["-o", "loop,nodev,nosuid", &img_s, &mnt.to_string_lossy()],
                None,
            )?;
            mnt
        } else {
            dir.to_path_buf()
        };
        let (upper, work) = (scratch.join("upper"), scratch.join("work"));
        // The agent's socket dir and the generated /etc files are bind-mounted writable into the
        // sandbox: on the scratch disk, what it writes there counts against its cap too.
        let (sock, etc) = (scratch.join("sock"), scratch.join("etc"));
        mkdirs(&[&upper, &work, &sock, &etc])?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            spec.rootfs.display(),
            upper.display(),
            work.display()
        );
        if opts.contains(',')
            && [&spec.rootfs, &upper, &work]
                .iter()
                .any(|p| p.to_string_lossy().contains([',', ':']))
        {
            return Err(DriverError::InvalidSpec(
                "paths must not contain ',' or ':'".into(),
            ));
        }
        use nix::mount::{mount, MsFlags};
        // `volatile` skips syncs of a scratch layer that never outlives the host boot anyway.
        let volatile = format!("{opts},volatile");
        // nodev: a device node in the image or made inside would open nothing.
        if mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(volatile.as_str()),
        )
        .is_err()
        {
            mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(|e| {
                io_err(
                    format!("mount overlay at {} ({opts})", rootfs.display()),
                    e.into(),
                )
            })?;
        }

        // Network namespace.
        let ns_name = self.netns_name(id);
        let (ip, host_ip) = match spec.network {
            NetworkMode::Nat => {
                let plan = self.alloc.allocate(id, None)?;
                net::create_nat(&ns_name, &plan)?;
                // Under the firewall's rules before the first packet can pass. The egress rules are
                // kept beside the run, so a restarted driver rebuilds them.
                let egress_file = dir.join("egress.json");
                std::fs::write(
                    &egress_file,
                    serde_json::to_vec(&spec.egress).map_err(|e| {
                        io_err("serialize egress rules".into(), std::io::Error::other(e))
                    })?,
                )
                .map_err(|e| io_err(format!("write {}", egress_file.display()), e))?;
                net::guard_veth(
                    &self.table(),
                    &net::Guarded {
                        veth: plan.veth.clone(),
                        ip: plan.ip,
                        egress: spec.egress.clone(),
                    },
                    &self.nameservers,
                )?;
                net::veth_up(&plan.veth)?;
                (Some(plan.ip), Some(plan.host_ip))
            }
            NetworkMode::None => {
                net::create_isolated(&ns_name)?;
                (None, None)
            }
        };

        // Generated /etc files.
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
            ip.map(|a| a.to_string())
                .unwrap_or_else(|| "127.0.1.1".into()),
            spec.hostname
        );
        let resolv = match spec.network {
            NetworkMode::Nat => {
                resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
            }
            NetworkMode::None => String::new(),
        };
        for (name, content) in [
            ("hostname", format!("{}\n", spec.hostname)),
            ("hosts", hosts),
            ("resolv.conf", resolv),
        ] {
            let p = etc.join(name);
            std::fs::write(&p, content).map_err(|e| io_err(format!("write {}", p.display()), e))?;
        }

        // cgroups.
        let limits = Limits {
            vcpus: spec.vcpus,
            mem_mib: spec.mem_mib,
            pids_max: spec.pids_max,
        };
        self.cgroups.create(id, &limits)?;

        // OCI config.
        let netns = net::netns_path(&ns_name);
        let config = spec::build(&spec::ConfigInput {
            rootfs: &rootfs,
            hostname: &spec.hostname,
            env: &spec.env,
            cwd: &spec.cwd,
            shm_mib: spec.shm_mib,
            agent_binary: &spec.agent_binary,
            agent_args: &spec.agent_args,
            sock_dir: &sock,
            etc_dir: &etc,
            netns: &netns,
        })?;
        let cfg_path = dir.join("config.json");
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| io_err("serialize config.json".into(), std::io::Error::other(e)))?;
        std::fs::write(&cfg_path, json)
            .map_err(|e| io_err(format!("write {}", cfg_path.display()), e))?;
        let t_setup = t0.elapsed();

        let procs = self.cgroups.procs_files_c(id)?;
        let pid = self
            .crun
            .run_detached(id, dir, &self.console_log(id), procs)?;
        info!(id = %id, pid, setup_ms = t_setup.as_millis() as u64, total_ms = t0.elapsed().as_millis() as u64, "sandbox running");
        Ok(Sandbox {
            id: id.clone(),
            pid,
            agent_socket: sock.join(AGENT_SOCKET_NAME),
            ip,
            host_ip,
        })
    }

    fn destroy(&self, id: &str) -> Result<(), DriverError> {
        validate_id(id)?;
        let mut first: Option<DriverError> = None;
        let mut note = |r: Result<(), DriverError>| {
            if let Err(e) = r {
                warn!(id, error = %e, "destroy step failed");
                first.get_or_insert(e);
            }
        };
        self.cgroups.thaw(id);
        note(self.crun.delete_force(id));
        note(
            self.cgroups
                .remove(id, Duration::from_secs(2), Duration::from_secs(20)),
        );
        let dir = self.run_dir(id);
        for m in mounts_under(&dir) {
            note(umount(&m));
        }
        let plans = self.alloc.held_by(id);
        note(net::delete(&self.netns_name(id), None));
        for p in &plans {
            note(net::delete(&self.netns_name(id), Some(&p.veth)));
            note(net::unguard_veth(&self.table(), &p.veth, p.ip));
        }
        note(self.alloc.release(id));
        if dir.exists() {
            if mounts_under(&dir).is_empty() {
                note(
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| io_err(format!("remove {}", dir.display()), e)),
                );
            } else {
                note(Err(DriverError::Unsupported(format!(
                    "{} still has mounts",
                    dir.display()
                ))));
            }
        }
        match first {
            None => {
                debug!(id, "sandbox destroyed");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }

    fn status(&self, id: &str) -> Result<SandboxStatus, DriverError> {
        validate_id(id)?;
        match self.crun.state(id)? {
            Some(st) if st.status == "running" && st.pid > 0 => {
                Ok(SandboxStatus::Running { pid: st.pid })
            }
            Some(_) => Ok(SandboxStatus::Stopped),
            None if self.run_dir(id).exists() => Ok(SandboxStatus::Stopped),
            None => Ok(SandboxStatus::Missing),
        }
    }

    fn list_traces(&self) -> Result<Vec<String>, DriverError> {
        let mut ids = BTreeSet::new();
        let runs = self.cfg.state_dir.join("runs");
        if let Ok(rd) = std::fs::read_dir(&runs) {
            for e in rd.flatten() {
                ids.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
        ids.extend(self.crun.ids());
        ids.extend(self.cgroups.ids());
        ids.extend(net::netns_with_prefix(&format!(
            "{}-",
            self.cfg.cgroup_parent
        )));
        ids.extend(self.alloc.entries().into_iter().map(|(_, owner)| owner));
        for m in mounts_under(&runs) {
            if let Ok(rest) = m.strip_prefix(&runs) {
                if let Some(first) = rest.components().next() {
                    ids.insert(first.as_os_str().to_string_lossy().into_owned());
                }
            }
        }
        Ok(ids.into_iter().filter(|i| validate_id(i).is_ok()).collect())
    }
}

impl Driver {
    /// Detects the cgroup mode, checks crun, creates the state dirs and the cgroup parent, and
    /// installs the nftables table (idempotent).
    pub async fn new(cfg: DriverConfig) -> Result<Self, DriverError> {
        tokio::task::spawn_blocking(move || Self::new_blocking(cfg)).await?
    }

    fn new_blocking(cfg: DriverConfig) -> Result<Self, DriverError> {
        validate_id(&cfg.cgroup_parent).map_err(|_| {
            DriverError::InvalidSpec(format!(
                "cgroup_parent {:?} must match [a-z0-9-]+",
                cfg.cgroup_parent
            ))
        })?;
        if net::capacity(&cfg.subnet) == 0 {
            return Err(DriverError::InvalidSpec(format!(
                "subnet {} is smaller than a /30",
                cfg.subnet
            )));
        }
        let cgroups = Cgroups::detect(Path::new("/sys/fs/cgroup"), &cfg.cgroup_parent)?;
        cgroups.ensure_parent()?;
        let crun = Crun {
            binary: cfg.runtime.clone(),
            root: cfg.state_dir.join("crun"),
            hide_unified: matches!(cgroups.mode, CgroupMode::V1 { hybrid: true }),
        };
        let version = crun.version()?;
        mkdirs(&[&cfg.state_dir.join("runs"), &crun.root])?;
        for tool in ["ip", "nft"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Err(DriverError::Unsupported(format!("{tool} not found")));
            }
        }
        pin_subnet(&cfg.state_dir.join("net"), &cfg.subnet)?;
        let alloc = Allocator::new(cfg.state_dir.join("net"), cfg.subnet);
        let nameservers =
            net::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        net::install_firewall(&firewall_of(&cfg, &alloc, &nameservers))?;
        info!(mode = ?cgroups.mode, runtime = %version, state_dir = %cfg.state_dir.display(), "isolation driver ready");
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                cgroups,
                crun,
                alloc,
                nameservers,
            }),
        })
    }

    /// Puts the instance's firewall back if something on the host removed it (`nft flush
    /// ruleset` by a reload of the host's own firewall): the walls must not fail open. Returns
    /// whether it had to. Cheap when the table is there (one `nft list table`).
    pub fn ensure_firewall(&self) -> Result<bool, DriverError> {
        let inner = &self.inner;
        if net::firewall_present(&inner.table()) {
            return Ok(false);
        }
        net::install_firewall(&firewall_of(&inner.cfg, &inner.alloc, &inner.nameservers))?;
        Ok(true)
    }

    /// Creates and starts a sandbox. On any failure everything already done is undone.
    pub async fn create(&self, spec: &SandboxSpec) -> Result<Sandbox, DriverError> {
        let inner = self.inner.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || inner.create(&spec)).await?
    }

    /// Kills the sandbox and removes its processes, cgroups, mounts, netns, veth, /30 and dirs.
    /// Idempotent; works on half-created sandboxes.
    pub async fn destroy(&self, id: &str) -> Result<(), DriverError> {
        let inner = self.inner.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || inner.destroy(&id)).await?
    }

    pub async fn status(&self, id: &str) -> Result<SandboxStatus, DriverError> {
        let inner = self.inner.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || inner.status(&id)).await?
    }

    /// Ids with any leftover on the host (run dir, crun state, cgroup, netns, /30 claim, mount).
    pub fn list_traces(&self) -> Result<Vec<String>, DriverError> {
        self.inner.list_traces()
    }

    /// Cumulative OOM kills in the sandbox's memory cgroup.
    pub fn oom_kills(&self, id: &str) -> Result<u64, DriverError> {
        validate_id(id)?;
        self.inner.cgroups.oom_kills(id)
    }

    /// Host pids of the processes in the sandbox's cgroups (empty once it is dead or gone).
    pub fn pids(&self, id: &str) -> Vec<i32> {
        if validate_id(id).is_err() {
            return Vec::new();
        }
        self.inner.cgroups.pids(id)
    }

    /// The sandbox's console log: the agent's stdout/stderr and crun's errors.
    pub fn console_log(&self, id: &str) -> PathBuf {
        self.inner.console_log(id)
    }

    /// MiB a new scratch image may take: the space available to unprivileged users on the
    /// filesystem of the state directory.
    pub fn available_disk_mib(&self) -> Result<u64, DriverError> {
        let dir = &self.inner.cfg.state_dir;
        let st = nix::sys::statvfs::statvfs(dir)
            .map_err(|e| io_err(format!("statvfs {}", dir.display()), e.into()))?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64) >> 20)
    }

    /// The sandbox's network namespace (`/run/netns/<parent>-<id>`), for `setns`.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        net::netns_path(&self.inner.netns_name(id))
    }

    /// Host directory bind-mounted at `/.vivarium/run` inside the sandbox (on its scratch disk
    /// when it has one).
    pub fn socket_dir(&self, id: &str) -> PathBuf {
        let dir = self.inner.run_dir(id);
        if dir.join("scratch").is_dir() {
            dir.join("scratch").join("sock")
        } else {
            dir.join("sock")
        }
    }

    /// Host path of the sandbox's writable overlay layer (what the sandbox wrote).
    pub fn upper_dir(&self, id: &str) -> PathBuf {
        let dir = self.inner.run_dir(id);
        if dir.join("scratch").exists() {
            dir.join("scratch").join("upper")
        } else {
            dir.join("upper")
        }
    }

    /// Removes the host-wide setup of this instance (nftables table, empty cgroup parents). Refuses
    /// while any sandbox trace exists. For uninstalling and for tests; `new` puts it back.
    pub async fn uninstall(&self) -> Result<(), DriverError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let traces = inner.list_traces()?;
            if !traces.is_empty() {
                return Err(DriverError::Unsupported(format!(
                    "sandboxes still present: {traces:?}"
                )));
            }
            net::remove_firewall(&inner.table())?;
            for dir in inner.cgroups.parent_dirs() {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("remove cgroup {}", dir.display()), e)),
                }
            }
            Ok(())
        })
        .await?
    }

    /// The cgroup mode detected at start.
    pub fn cgroup_mode(&self) -> CgroupMode {
        self.inner.cgroups.mode
    }

    /// The configuration this driver runs with.
    pub fn config(&self) -> &DriverConfig {
        &self.inner.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-123").is_ok());
        for bad in ["", "-a", "A", "a_b", "a/b", "..", &"a".repeat(49)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/a\\b"), r"/a\\b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn resolv_drops_loopback() {
        let r = resolv_conf("# c\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch x\n");
        assert_eq!(r, "nameserver 10.0.0.2\nsearch x\n");
    }
}
