//! Invoking crun.
//!
//! Every invocation runs in a private mount namespace (unshared in `pre_exec`) where the hybrid
//! host's cgroup2 mount at `/sys/fs/cgroup/unified` is detached: crun 1.8.1 refuses "cgroups in
//! hybrid mode" otherwise. crun always gets `--cgroup-manager=disabled`; the driver owns cgroups.
//! `run` additionally moves the crun process into the sandbox cgroups before exec (the container
//! init inherits them) and starts a new session so no terminal/process-group signal of the runner
//! reaches the sandbox.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

use crate::{io_err, DriverError};

/// crun binary + its state directory (`--root`).
#[derive(Debug, Clone)]
pub struct Crun {
    pub binary: PathBuf,
    pub root: PathBuf,
    /// Detach `/sys/fs/cgroup/unified` in crun's private mount namespace.
    pub hide_unified: bool,
}

/// Subset of `crun state` output.
#[derive(Debug, Clone, Deserialize)]
pub struct CrunState {
    pub status: String,
    #[serde(default)]
    pub pid: u32,
}

/// Setup run in the forked child before exec. Only async-signal-safe libc calls on data prepared
/// before the fork.
fn child_setup(hide_unified: bool, procs: &[CString]) -> std::io::Result<()> {
    // SAFETY (whole function): called between fork and exec in a single-threaded child; all
    // pointers are to NUL-terminated strings that outlive the calls.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if hide_unified && libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0
        {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT)
            {
                return Err(err);
            }
        }
        for p in procs {
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, c"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
    }
    Ok(())
}

impl Crun {
    fn command(&self, procs: Vec<CString>) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!("--root={}", self.root.display()))
            .arg("--cgroup-manager=disabled");
        let hide = self.hide_unified;
        // SAFETY: child_setup only makes async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || child_setup(hide, &procs));
        }
        cmd
    }

    fn output(&self, args: &[&str]) -> Result<Output, DriverError> {
        self.command(Vec::new())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                io_err(
                    format!("spawn {} {}", self.binary.display(), args.join(" ")),
                    e,
                )
            })
    }

    /// `crun run --detach`: container stdio (and crun's own errors) go to `console`; crun exits once
    /// the init process runs. Returns the host pid of the container init.
    pub fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        console: &Path,
        procs: Vec<CString>,
    ) -> Result<u32, DriverError> {
        let pid_file = bundle.join("init.pid");
        let out = File::options()
            .create(true)
            .append(true)
            .open(console)
            .map_err(|e| io_err(format!("open {}", console.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| io_err("dup console fd".into(), e))?;
        let status = self
            .command(procs)
            .arg("run")
            .arg("--detach")
            .arg(format!("--bundle={}", bundle.display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| io_err(format!("spawn {} run", self.binary.display()), e))?;
        if !status.success() {
            let log = std::fs::read_to_string(console).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(DriverError::Runtime {
                id: id.to_string(),
                op: "run",
                message: format!("{status}: {tail}"),
            });
        }
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| io_err(format!("read {}", pid_file.display()), e))?;
        pid.trim().parse::<u32>().map_err(|_| DriverError::Runtime {
            id: id.to_string(),
            op: "run",
            message: format!("bad pid file content {pid:?}"),
        })
    }

    /// `crun state`; `None` when crun does not know the container.
    pub fn state(&self, id: &str) -> Result<Option<CrunState>, DriverError> {
        if !self.root.join(id).exists() {
            return Ok(None);
        }
        let out = self.output(&["state", id])?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !self.root.join(id).exists() || stderr.contains("does not exist") {
                return Ok(None);
            }
            return Err(DriverError::Runtime {
                id: id.into(),
                op: "state",
                message: stderr.trim().to_string(),
            });
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| DriverError::Runtime {
                id: id.into(),
                op: "state",
                message: format!("unparsable state: {e}"),
            })
    }

    /// `crun delete --force` (SIGKILLs the init, whose death ends the PID namespace). Unknown ids
    /// are fine.
    pub fn delete_force(&self, id: &str) -> Result<(), DriverError> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        let out = self.output(&["delete", "--force", id])?;
        if !out.status.success() && self.root.join(id).exists() {
            return Err(DriverError::Runtime {
                id: id.into(),
                op: "delete",
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Ids crun has state for.
    pub fn ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    /// `crun --version` first line, to check the binary works.
    pub fn version(&self) -> Result<String, DriverError> {
        let out = Command::new(&self.binary)
            .arg("--version")
            .output()
            .map_err(|e| io_err(format!("run {} --version", self.binary.display()), e))?;
        if !out.status.success() {
            return Err(DriverError::Unsupported(format!(
                "{} --version failed",
                self.binary.display()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }
}
