//! PID 1 outlives its children: the OOM killer must pick a sandbox's processes, never the agent
//! (killing PID 1 ends the whole sandbox).
//!
//! The agent asks for the lowest `oom_score_adj` (-1000: never chosen). Inside a sandbox it has no
//! CAP_SYS_RESOURCE, so the runtime config sets `oomScoreAdj: -1000` for it (crun writes it before
//! the agent starts) and [`protect_self`] only confirms it; started by hand as root it sets it
//! itself. Every child resets its own score to [`CHILD_OOM_SCORE_ADJ`] between fork and exec
//! ([`reset_in_child`]): raising one's score needs no privilege, and a child that inherited -1000
//! would make the OOM killer's choice fall on nobody.
//!
//! Known limit: a sandbox process without CAP_SYS_RESOURCE can lower its score back down to the
//! value the agent was *given* (the kernel's `oom_score_adj_min`), so a hostile process can make
//! itself as unkillable as the agent; that only harms its own sandbox.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The agent's own score: the OOM killer never picks it.
pub const AGENT_OOM_SCORE_ADJ: i32 = -1000;
/// The score every child starts with (the kernel's default).
pub const CHILD_OOM_SCORE_ADJ: i32 = 0;

const PATH: &str = "/proc/self/oom_score_adj";

/// The current `oom_score_adj` of this process.
pub fn current() -> io::Result<i32> {
    let s = std::fs::read_to_string(PATH)?;
    s.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{PATH}: {s:?}: {e}")))
}

/// Lowers the agent's own score to [`AGENT_OOM_SCORE_ADJ`], or as low as it may; returns the
/// score it ends with.
pub fn protect_self() -> io::Result<i32> {
    if current()? <= AGENT_OOM_SCORE_ADJ {
        return Ok(AGENT_OOM_SCORE_ADJ);
    }
    match std::fs::write(PATH, AGENT_OOM_SCORE_ADJ.to_string()) {
        Ok(()) => current(),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let now = current()?;
            tracing::warn!(
                oom_score_adj = now,
                "cannot lower the agent's oom_score_adj (no CAP_SYS_RESOURCE and the runtime did \
                 not set oomScoreAdj): the OOM killer may pick PID 1"
            );
            Ok(now)
        }
        Err(e) => Err(e),
    }
}

/// Makes the child started by `cmd` reset its `oom_score_adj` to [`CHILD_OOM_SCORE_ADJ`] before
/// it execs. A failure (no /proc) is ignored: the exec itself must not fail for it.
pub fn reset_in_child(cmd: &mut Command) {
    const PATH_C: &[u8] = b"/proc/self/oom_score_adj\0";
    const VALUE: &[u8] = b"0";
    const _: () = assert!(CHILD_OOM_SCORE_ADJ == 0, "VALUE spells CHILD_OOM_SCORE_ADJ");
    // SAFETY: runs between fork and exec; only the async-signal-safe open/write/close syscalls on
    // static data.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(PATH_C.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, VALUE.as_ptr().cast(), VALUE.len());
                libc::close(fd);
            }
            Ok(())
        });
    }
}
