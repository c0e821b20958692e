//! Starting processes for exec, streaming exec, background processes and services.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::{Bytes, BytesMut};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use vivarium_proto::{ErrorCode, ExecSpec};

use crate::error::{AgentError, Result};
use crate::reaper::{ExitReceiver, Reaper};
use crate::users;

/// `PATH` for children when neither the image ENV nor the request sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the child's stdin is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinMode {
    Null,
    Pipe,
}

/// Where the child's stdout/stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    Pipe,
    /// The agent's own stderr (services: ends up in the sandbox log).
    InheritStderr,
}

/// A started child. It leads its own process group (pgid == pid).
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    pub exit: ExitReceiver,
}

/// Settings shared by every spawn.
pub struct Spawner {
    pub reaper: std::sync::Arc<Reaper>,
    /// Directory holding `passwd` and `group` (`/etc` in production).
    pub etc_dir: PathBuf,
}

fn check_abs(path: &str, what: &str) -> Result<()> {
    if !path.starts_with('/') {
        return Err(AgentError::invalid(format!(
            "{what} must be an absolute path, got {path:?}"
        )));
    }
    Ok(())
}

impl Spawner {
    pub fn spawn(&self, spec: &ExecSpec, stdin: StdinMode, output: OutputMode) -> Result<Spawned> {
        let program =
            spec.argv.first().filter(|p| !p.is_empty()).ok_or_else(|| {
                AgentError::invalid("argv must name a program").with_field("argv")
            })?;
        let mut cmd = Command::new(program);
        cmd.args(&spec.argv[1..]);

        let user = spec
            .user
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|u| {
                users::resolve(u, &self.etc_dir).map_err(|e| match e.field {
                    Some(_) => e,
                    None => e.with_field("user"),
                })
            })
            .transpose()?;

        if std::env::var_os("PATH").is_none() && !spec.env.contains_key("PATH") {
            cmd.env("PATH", DEFAULT_PATH);
        }
        if let Some(u) = &user {
            cmd.env("HOME", &u.home);
            if let Some(name) = &u.name {
                cmd.env("USER", name).env("LOGNAME", name);
            }
        }
        cmd.envs(&spec.env);

        let cwd = match &spec.cwd {
            Some(cwd) => {
                check_abs(cwd, "cwd").map_err(|e| e.with_field("cwd"))?;
                if !Path::new(cwd).is_dir() {
                    return Err(AgentError::not_found(format!(
                        "working directory {cwd} does not exist or is not a directory"
                    ))
                    .with_field("cwd"));
                }
                cwd.clone()
            }
            None => user
                .as_ref()
                .map(|u| u.home.clone())
                .filter(|h| Path::new(h).is_dir())
                .unwrap_or_else(|| "/".into()),
        };
        cmd.current_dir(&cwd);
        cmd.process_group(0);
        // Before any setuid below: once the child is no longer root it may not write its own
        // /proc/self files (it is not dumpable until it execs).
        crate::oom::reset_in_child(&mut cmd);

        if let Some(u) = user {
            let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
            let (uid, gid) = (Uid::from_raw(u.uid), Gid::from_raw(u.gid));
            // SAFETY: the closure runs between fork and exec and only makes the async-signal-safe
            // setgroups/setgid/setuid syscalls on data prepared before the fork. std's own
            // `uid()`/`gid()` cannot be used: they would drop the supplementary groups.
            unsafe {
                cmd.pre_exec(move || {
                    nix::unistd::setgroups(&groups)?;
                    nix::unistd::setgid(gid)?;
                    nix::unistd::setuid(uid)?;
                    Ok(())
                });
            }
        }

        // Also a pipe for `Null` (closed right after the spawn, so the child reads EOF):
        // Stdio::null() opens /dev/null, which a minimal image may not have.
        cmd.stdin(Stdio::piped());
        match output {
            OutputMode::Pipe => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            OutputMode::InheritStderr => {
                let to_stderr = || -> Result<Stdio> {
                    let fd = std::io::stderr()
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| AgentError::io(e, "duplicating the agent's stderr"))?;
                    Ok(Stdio::from(fd))
                };
                cmd.stdout(to_stderr()?).stderr(to_stderr()?);
            }
        }

        let (mut child, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| spawn_error(program, &e))?;
        let pid = child.id();
        let wrap = |e| AgentError::io(e, "setting up child pipes");
        Ok(Spawned {
            pid,
            stdin: child
                .stdin
                .take()
                .filter(|_| stdin == StdinMode::Pipe)
                .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
                .transpose()
                .map_err(wrap)?,
            stdout: child
                .stdout
                .take()
                .map(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)))
                .transpose()
                .map_err(wrap)?,
            stderr: child
                .stderr
                .take()
                .map(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)))
                .transpose()
                .map_err(wrap)?,
            exit,
        })
    }
}

/// A failed spawn as a protocol error that names the cause. The errors of the child's own steps
/// before exec (setgroups/setgid/setuid) come back the same way as exec's.
fn spawn_error(program: &str, e: &std::io::Error) -> AgentError {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => AgentError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "cannot start {program}: the sandbox's process limit is reached (fork: {e});                  retry after some of its processes end"
            ),
        ),
        Some(libc::ENOMEM) => AgentError::new(
            ErrorCode::ResourceExhausted,
            format!("cannot start {program}: the sandbox is out of memory ({e})"),
        ),
        Some(libc::ENOENT) => {
            AgentError::not_found(format!("executable not found: {program} ({e})"))
                .with_field("argv")
        }
        Some(libc::EACCES) | Some(libc::EPERM) => AgentError::new(
            ErrorCode::PermissionDenied,
            format!("permission denied starting {program} ({e})"),
        )
        .with_field("argv"),
        Some(libc::ENOEXEC) | Some(libc::ENOTDIR) | Some(libc::EISDIR) | Some(libc::ELOOP)
        | Some(libc::ENAMETOOLONG) | Some(libc::E2BIG) => {
            AgentError::invalid(format!("cannot execute {program}: {e}")).with_field("argv")
        }
        _ => AgentError::new(
            ErrorCode::from_io(e),
            format!("cannot execute {program}: {e}"),
        ),
    }
}

/// Sends `sig` to the process group `pgid`; a group that is already gone is not an error.
pub fn signal_group(pgid: u32, sig: Signal) {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, signal = %sig, error = %e, "killpg failed"),
    }
}

/// Reads one chunk (up to `max` bytes) from a pipe; `None` at EOF.
pub async fn read_chunk(pipe: &mut pipe::Receiver, max: usize) -> std::io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(max);
    let n = pipe.read_buf(&mut buf).await?;
    Ok((n > 0).then(|| buf.freeze()))
}
