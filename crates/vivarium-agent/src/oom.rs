//! PID 1 outlives its children: the OOM killer must pick a sandbox's processes, never the agent
//! (killing PID 1 ends the whole sandbox).
//!
//! The agent asks for the lowest `oom_score_adj` (-1000: never chosen) in [`protect_self`]. That
//! needs CAP_SYS_RESOURCE, which a sandbox does not grant, and some kernels refuse it even to root
//! (this project's CI VMs answer EIO); the runtime config does not set `oomScoreAdj` because crun
//! fails the whole container when that write fails. So the agent's children carry the difference
//! instead: between fork and exec each child sets its own score ([`reset_in_child`]) to
//! [`CHILD_OOM_SCORE_ADJ`] (0) when the agent got -1000, or to [`CHILD_OOM_SCORE_ADJ_MAX`] (1000)
//! when it did not. Raising one's own score needs no privilege. At 1000 a child's badness is its
//! memory plus the whole memory limit, so the OOM killer chooses any child over the agent; among
//! children the order is unchanged (all have the same adjustment).
//!
//! Known limit: a sandbox process may lower its own score back down to the lowest value the
//! agent was *given* (the kernel's `oom_score_adj_min`, normally 0) without privilege, and so
//! compete with the agent again; that only harms its own sandbox.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// The agent's own score: the OOM killer never picks it.
pub const AGENT_OOM_SCORE_ADJ: i32 = -1000;
/// The score children start with when the agent has [`AGENT_OOM_SCORE_ADJ`] (the default).
pub const CHILD_OOM_SCORE_ADJ: i32 = 0;
/// The score children start with when the agent could not lower its own.
pub const CHILD_OOM_SCORE_ADJ_MAX: i32 = 1000;

/// Whether children start at [`CHILD_OOM_SCORE_ADJ_MAX`]; set by [`protect_self`] (read between
/// fork and exec, so an atomic).
static CHILDREN_AT_MAX: AtomicBool = AtomicBool::new(true);

const PATH: &str = "/proc/self/oom_score_adj";

/// The current `oom_score_adj` of this process.
pub fn current() -> io::Result<i32> {
    let s = std::fs::read_to_string(PATH)?;
    s.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{PATH}: {s:?}: {e}")))
}

/// Lowers the agent's own score to [`AGENT_OOM_SCORE_ADJ`] if it may, and picks the score its
/// children start with accordingly; returns the agent's score.
pub fn protect_self() -> io::Result<i32> {
    let score = match std::fs::write(PATH, AGENT_OOM_SCORE_ADJ.to_string()) {
        Ok(()) => current()?,
        Err(e) => {
            let now = current()?;
            tracing::info!(
                oom_score_adj = now,
                error = %e,
                children = CHILD_OOM_SCORE_ADJ_MAX,
                "cannot lower the agent's oom_score_adj; children start at the maximum instead"
            );
            now
        }
    };
    CHILDREN_AT_MAX.store(score > AGENT_OOM_SCORE_ADJ, Ordering::SeqCst);
    Ok(score)
}

/// The score children start with now.
pub fn child_score() -> i32 {
    if CHILDREN_AT_MAX.load(Ordering::SeqCst) {
        CHILD_OOM_SCORE_ADJ_MAX
    } else {
        CHILD_OOM_SCORE_ADJ
    }
}

/// Makes the child started by `cmd` set its `oom_score_adj` to [`child_score`] before it execs
/// (call it before any step that drops root: the child may then no longer write its /proc
/// files). A failure (no /proc) is ignored: the exec itself must not fail for it.
pub fn reset_in_child(cmd: &mut Command) {
    const PATH_C: &[u8] = b"/proc/self/oom_score_adj\0";
    const _: () = assert!(CHILD_OOM_SCORE_ADJ == 0 && CHILD_OOM_SCORE_ADJ_MAX == 1000);
    // SAFETY: runs between fork and exec; only an atomic load and the async-signal-safe
    // open/write/close syscalls on static data.
    unsafe {
        cmd.pre_exec(|| {
            let value: &[u8] = if CHILDREN_AT_MAX.load(Ordering::SeqCst) {
                b"1000"
            } else {
                b"0"
            };
            let fd = libc::open(PATH_C.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, value.as_ptr().cast(), value.len());
                libc::close(fd);
            }
            Ok(())
        });
    }
}
