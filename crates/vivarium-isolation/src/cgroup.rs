//! cgroup handling for sandboxes.
//!
//! crun runs with `--cgroup-manager=disabled` (crun 1.8.1 refuses hybrid hosts otherwise), so the
//! driver creates the sandbox cgroup itself, writes the limits, and moves the crun process into it
//! before `exec` so that the container init inherits it. Works on cgroup v1 (legacy or hybrid) and on
//! a pure cgroup v2 host.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::{io_err, DriverError};

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// v1 controllers under `<root>/<controller>`; `hybrid` = a cgroup2 mount at `<root>/unified`
    /// (which must be hidden from crun).
    V1 { hybrid: bool },
    /// Unified hierarchy only.
    V2,
}

/// Limits written into a sandbox cgroup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub vcpus: f64,
    pub mem_mib: u64,
    pub pids_max: u64,
}

/// CFS period used for the CPU quota (the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// v1 controllers the driver uses. memory, cpu and pids are required; freezer (hibernate later) and
/// devices (device allow-list) are used when mounted.
const V1_REQUIRED: &[&str] = &["memory", "cpu", "pids"];
const V1_OPTIONAL: &[&str] = &["freezer", "devices"];

/// Devices a sandbox may create/open (the same set runc/Docker allow by default, minus fuse/tun).
const DEVICE_ALLOW: &[&str] = &[
    "c 1:3 rwm",   // null
    "c 1:5 rwm",   // zero
    "c 1:7 rwm",   // full
    "c 1:8 rwm",   // random
    "c 1:9 rwm",   // urandom
    "c 5:0 rwm",   // tty
    "c 5:1 rwm",   // console
    "c 5:2 rwm",   // ptmx
    "c 136:* rwm", // pts
];

/// cgroup layout of one driver instance: `<root>/<controller>/<parent>/<id>` (v1) or
/// `<root>/<parent>/<id>` (v2).
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub mode: CgroupMode,
    root: PathBuf,
    parent: String,
    /// v1 controllers present on this host (directory names under root).
    controllers: Vec<String>,
}

use nix::sys::statfs::CGROUP2_SUPER_MAGIC;

/// Detects the cgroup mode from the filesystem types at `root` and `root/unified`.
pub fn detect_mode(root: &Path) -> Result<CgroupMode, DriverError> {
    let fs = nix::sys::statfs::statfs(root)
        .map_err(|e| io_err(format!("statfs {}", root.display()), e.into()))?;
    if fs.filesystem_type() == CGROUP2_SUPER_MAGIC {
        return Ok(CgroupMode::V2);
    }
    let unified = root.join("unified");
    let hybrid = match nix::sys::statfs::statfs(&unified) {
        Ok(fs) => fs.filesystem_type() == CGROUP2_SUPER_MAGIC,
        Err(_) => false,
    };
    Ok(CgroupMode::V1 { hybrid })
}

impl Cgroups {
    /// Inspects the host (`root` is normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path, parent: &str) -> Result<Self, DriverError> {
        let mode = detect_mode(root)?;
        let mut controllers = Vec::new();
        if let CgroupMode::V1 { .. } = mode {
            for c in V1_REQUIRED {
                if !root.join(c).join("cgroup.procs").exists() {
                    return Err(DriverError::Unsupported(format!(
                        "cgroup v1 controller {c} is not mounted at {}",
                        root.join(c).display()
                    )));
                }
                controllers.push((*c).to_string());
            }
            for c in V1_OPTIONAL {
                if root.join(c).join("cgroup.procs").exists() {
                    controllers.push((*c).to_string());
                }
            }
        }
        Ok(Self::with_layout(mode, root, parent, controllers))
    }

    /// Builds a layout without touching the host (unit tests, or callers that know the mode).
    pub fn with_layout(
        mode: CgroupMode,
        root: &Path,
        parent: &str,
        controllers: Vec<String>,
    ) -> Self {
        Self {
            mode,
            root: root.to_path_buf(),
            parent: parent.to_string(),
            controllers,
        }
    }

    /// Parent directories (one per v1 controller, one on v2).
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        match self.mode {
            CgroupMode::V1 { .. } => self
                .controllers
                .iter()
                .map(|c| self.root.join(c).join(&self.parent))
                .collect(),
            CgroupMode::V2 => vec![self.root.join(&self.parent)],
        }
    }

    /// The sandbox's cgroup directories.
    pub fn dirs(&self, id: &str) -> Vec<PathBuf> {
        self.parent_dirs().into_iter().map(|p| p.join(id)).collect()
    }

    fn v1_dir(&self, controller: &str, id: &str) -> PathBuf {
        self.root.join(controller).join(&self.parent).join(id)
    }

    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The files (in write order) and values that apply `limits` to sandbox `id`. Files that are
    /// optional on some kernels (memsw, swap.max) are marked `optional`.
    pub fn limit_writes(&self, id: &str, limits: &Limits) -> Vec<LimitWrite> {
        let mem = limits.mem_mib.saturating_mul(1024 * 1024).to_string();
        let quota = cpu_quota_us(limits.vcpus);
        let mut w = Vec::new();
        match self.mode {
            CgroupMode::V1 { .. } => {
                let m = self.v1_dir("memory", id);
                w.push(LimitWrite::new(
                    m.join("memory.limit_in_bytes"),
                    &mem,
                    false,
                ));
                // memsw >= limit is enforced by the kernel, so it goes second. No swap for sandboxes.
                w.push(LimitWrite::new(
                    m.join("memory.memsw.limit_in_bytes"),
                    &mem,
                    true,
                ));
                let c = self.v1_dir("cpu", id);
                w.push(LimitWrite::new(
                    c.join("cpu.cfs_period_us"),
                    &CPU_PERIOD_US.to_string(),
                    false,
                ));
                w.push(LimitWrite::new(
                    c.join("cpu.cfs_quota_us"),
                    &quota.to_string(),
                    false,
                ));
                let p = self.v1_dir("pids", id);
                w.push(LimitWrite::new(
                    p.join("pids.max"),
                    &limits.pids_max.to_string(),
                    false,
                ));
                if self.has("devices") {
                    let d = self.v1_dir("devices", id);
                    w.push(LimitWrite::new(d.join("devices.deny"), "a", false));
                    for rule in DEVICE_ALLOW {
                        w.push(LimitWrite::new(d.join("devices.allow"), rule, false));
                    }
                }
            }
            CgroupMode::V2 => {
                let d = self.root.join(&self.parent).join(id);
                w.push(LimitWrite::new(d.join("memory.max"), &mem, false));
                w.push(LimitWrite::new(d.join("memory.swap.max"), "0", true));
                w.push(LimitWrite::new(
                    d.join("cpu.max"),
                    &format!("{quota} {CPU_PERIOD_US}"),
                    false,
                ));
                w.push(LimitWrite::new(
                    d.join("pids.max"),
                    &limits.pids_max.to_string(),
                    false,
                ));
            }
        }
        w
    }

    /// `cgroup.procs` files a process must write "0" into to join the sandbox cgroup.
    pub fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Same as [`procs_files`](Self::procs_files), as C strings for use after `fork`.
    pub fn procs_files_c(&self, id: &str) -> Result<Vec<CString>, DriverError> {
        self.procs_files(id)
            .into_iter()
            .map(|p| {
                CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| DriverError::InvalidSpec(format!("NUL in path {}", p.display())))
            })
            .collect()
    }

    /// Makes sure the parent cgroups exist (and, on v2, delegate the controllers we need).
    pub fn ensure_parent(&self) -> Result<(), DriverError> {
        for dir in self.parent_dirs() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| io_err(format!("create cgroup {}", dir.display()), e))?;
        }
        if self.mode == CgroupMode::V2 {
            let want = "+memory +cpu +pids";
            for dir in [self.root.clone(), self.root.join(&self.parent)] {
                let f = dir.join("cgroup.subtree_control");
                std::fs::write(&f, want)
                    .map_err(|e| io_err(format!("write {want} to {}", f.display()), e))?;
            }
        }
        Ok(())
    }

    /// Creates the sandbox cgroup(s) and writes the limits.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<(), DriverError> {
        for dir in self.dirs(id) {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(format!("create cgroup {}", dir.display()), e)),
            }
        }
        for w in self.limit_writes(id, limits) {
            if w.optional && !w.file.exists() {
                continue;
            }
            std::fs::write(&w.file, &w.value)
                .map_err(|e| io_err(format!("write {:?} to {}", w.value, w.file.display()), e))?;
        }
        Ok(())
    }

    /// Cumulative OOM kills in the sandbox cgroup.
    pub fn oom_kills(&self, id: &str) -> Result<u64, DriverError> {
        let file = match self.mode {
            CgroupMode::V1 { .. } => self.v1_dir("memory", id).join("memory.oom_control"),
            CgroupMode::V2 => self.root.join(&self.parent).join(id).join("memory.events"),
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| io_err(format!("read {}", file.display()), e))?;
        Ok(parse_keyed(&text, "oom_kill").unwrap_or(0))
    }

    /// PIDs still in any of the sandbox cgroups.
    pub fn pids(&self, id: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for f in self.procs_files(id) {
            if let Ok(text) = std::fs::read_to_string(&f) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Thaws a frozen sandbox so that its processes can die (no-op when not frozen / no freezer).
    pub fn thaw(&self, id: &str) {
        let f = match self.mode {
            CgroupMode::V1 { .. } if self.has("freezer") => {
                self.v1_dir("freezer", id).join("freezer.state")
            }
            CgroupMode::V2 => self.root.join(&self.parent).join(id).join("cgroup.freeze"),
            _ => return,
        };
        if f.exists() {
            let v = if self.mode == CgroupMode::V2 {
                "0"
            } else {
                "THAWED"
            };
            if let Err(e) = std::fs::write(&f, v) {
                warn!(file = %f.display(), error = %e, "thaw failed");
            }
        }
    }

    /// Waits until the sandbox cgroups are empty (SIGKILLing stragglers after `grace`), then
    /// removes them. Missing cgroups are fine.
    pub fn remove(&self, id: &str, grace: Duration, timeout: Duration) -> Result<(), DriverError> {
        self.thaw(id);
        let start = Instant::now();
        loop {
            let pids = self.pids(id);
            if pids.is_empty() {
                break;
            }
            if start.elapsed() > timeout {
                return Err(DriverError::Timeout(format!(
                    "cgroup of {id} still holds processes {pids:?} after {timeout:?}"
                )));
            }
            if start.elapsed() > grace {
                for pid in &pids {
                    debug!(pid, id, "killing leftover process of sandbox cgroup");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for dir in self.dirs(id) {
            // rmdir can briefly fail with EBUSY while the last task is being released.
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if tries < 200 && e.raw_os_error() == Some(libc::EBUSY) => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(io_err(format!("remove cgroup {}", dir.display()), e)),
                }
            }
        }
        Ok(())
    }

    /// Sandbox ids that have a cgroup under the parent.
    pub fn ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.parent_dirs() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        out.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        out
    }
}

/// One cgroup file write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWrite {
    pub file: PathBuf,
    pub value: String,
    pub optional: bool,
}

impl LimitWrite {
    fn new(file: PathBuf, value: &str, optional: bool) -> Self {
        Self {
            file,
            value: value.to_string(),
            optional,
        }
    }
}

/// CFS quota for a fractional vCPU count (at least 1 ms per period, the kernel minimum).
pub fn cpu_quota_us(vcpus: f64) -> u64 {
    let q = (vcpus * CPU_PERIOD_US as f64).round();
    if q.is_finite() && q >= 1000.0 {
        q as u64
    } else {
        1000
    }
}

/// Finds `key N` in a `key value` per line file (memory.oom_control, memory.events).
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> Cgroups {
        Cgroups::with_layout(
            CgroupMode::V1 { hybrid: true },
            Path::new("/sys/fs/cgroup"),
            "vivarium",
            ["memory", "cpu", "pids", "freezer", "devices"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    }

    fn v2() -> Cgroups {
        Cgroups::with_layout(
            CgroupMode::V2,
            Path::new("/sys/fs/cgroup"),
            "vivarium",
            vec![],
        )
    }

    const L: Limits = Limits {
        vcpus: 1.5,
        mem_mib: 512,
        pids_max: 1024,
    };

    #[test]
    fn v1_paths_and_values() {
        let c = v1();
        assert_eq!(
            c.dirs("ab")[0],
            Path::new("/sys/fs/cgroup/memory/vivarium/ab")
        );
        assert_eq!(c.dirs("ab").len(), 5);
        let w = c.limit_writes("ab", &L);
        let get = |f: &str| {
            w.iter()
                .find(|x| x.file.ends_with(f))
                .map(|x| x.value.clone())
        };
        assert_eq!(get("memory.limit_in_bytes").as_deref(), Some("536870912"));
        assert_eq!(
            get("memory.memsw.limit_in_bytes").as_deref(),
            Some("536870912")
        );
        assert_eq!(get("cpu.cfs_quota_us").as_deref(), Some("150000"));
        assert_eq!(get("cpu.cfs_period_us").as_deref(), Some("100000"));
        assert_eq!(get("pids.max").as_deref(), Some("1024"));
        // memsw after limit, deny-all before allows
        let pos = |f: &str| w.iter().position(|x| x.file.ends_with(f)).unwrap();
        assert!(pos("memory.limit_in_bytes") < pos("memory.memsw.limit_in_bytes"));
        assert!(pos("devices.deny") < pos("devices.allow"));
        assert_eq!(
            c.procs_files("ab")[2],
            Path::new("/sys/fs/cgroup/pids/vivarium/ab/cgroup.procs")
        );
    }

    #[test]
    fn v2_paths_and_values() {
        let c = v2();
        assert_eq!(
            c.dirs("ab"),
            vec![PathBuf::from("/sys/fs/cgroup/vivarium/ab")]
        );
        let w = c.limit_writes("ab", &L);
        let get = |f: &str| {
            w.iter()
                .find(|x| x.file.ends_with(f))
                .map(|x| x.value.clone())
        };
        assert_eq!(get("memory.max").as_deref(), Some("536870912"));
        assert_eq!(get("cpu.max").as_deref(), Some("150000 100000"));
        assert_eq!(get("pids.max").as_deref(), Some("1024"));
        assert_eq!(get("memory.swap.max").as_deref(), Some("0"));
    }

    #[test]
    fn quota_bounds() {
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.0), 1000);
        assert_eq!(cpu_quota_us(f64::NAN), 1000);
    }

    #[test]
    fn parses_oom_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_keyed(v1, "oom_kill"), Some(3));
        let v2 = "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_keyed(v2, "oom_kill"), Some(2));
        assert_eq!(parse_keyed("oom_kill_disable 0", "oom_kill"), None);
    }

    #[test]
    fn detects_this_host() {
        // Whatever the host is, detection must not fail on a Linux machine with cgroups mounted.
        if Path::new("/sys/fs/cgroup").exists() {
            detect_mode(Path::new("/sys/fs/cgroup")).unwrap();
        }
    }
}
