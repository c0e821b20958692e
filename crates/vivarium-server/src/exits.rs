//! How sandbox inits ended. crun detaches a sandbox's init, so it is a child of the host's init, not
//! of the runner, and `waitpid` cannot tell the runner its exit status. The kernel's process events
//! connector (netlink `NETLINK_CONNECTOR`, `PROC_EVENT_EXIT`) reports every exit on the host with its
//! wait status; a dedicated thread reads them and keeps those of the pids the runner watches.
//!
//! Best effort: without the connector (no `CONFIG_PROC_EVENTS`, no `CAP_NET_ADMIN`) or when the
//! kernel drops events under load, a death is still noticed (the runner's watcher polls the init's
//! pidfd and cgroup), only its exit status is unknown.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::libc;

/// How a process ended, from its wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Decodes a `waitpid`-style status word.
    pub fn from_wait_status(status: u32) -> Self {
        let sig = (status & 0x7f) as i32;
        if sig == 0 {
            ExitStatus::Exited(((status >> 8) & 0xff) as i32)
        } else {
            ExitStatus::Signaled(sig)
        }
    }
}

#[derive(Default)]
struct State {
    watched: HashSet<u32>,
    exited: HashMap<u32, ExitStatus>,
}

/// Exit statuses of watched pids. Cheap to clone.
#[derive(Clone)]
pub struct Exits {
    state: Arc<Mutex<State>>,
    available: bool,
}

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;
const NLMSG_DONE: u16 = 3;

impl Exits {
    /// Subscribes to process exit events; logs and carries on without them if that fails.
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let available = match subscribe() {
            Ok(fd) => {
                let st = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("vivarium-exits".into())
                    .spawn(move || read_events(fd, st));
                if let Err(e) = &spawned {
                    tracing::warn!(error = %e, "cannot start the process exit reader");
                }
                spawned.is_ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "process exit events unavailable: a dead sandbox's exit status will be unknown");
                false
            }
        };
        Self { state, available }
    }

    /// Whether exit statuses are reported at all.
    pub fn available(&self) -> bool {
        self.available
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts keeping the exit status of `pid`.
    pub fn watch(&self, pid: u32) {
        self.state().watched.insert(pid);
    }

    /// Stops watching `pid` and forgets its status.
    pub fn forget(&self, pid: u32) {
        let mut st = self.state();
        st.watched.remove(&pid);
        st.exited.remove(&pid);
    }

    /// How `pid` ended, once its exit event arrived.
    pub fn status(&self, pid: u32) -> Option<ExitStatus> {
        self.state().exited.get(&pid).copied()
    }
}

/// A process file descriptor (`pidfd_open`): names one process for good, even after its pid is
/// reused, and becomes readable when the process exits.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    pub fn open(pid: u32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) }))
    }

    /// Whether the process has exited (never blocks).
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }
}

fn subscribe() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the returned descriptor is owned by the OwnedFd at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_CONNECTOR,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain old data; zeroed is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_pid = 0; // the kernel picks a unique port id
    addr.nl_groups = CN_IDX_PROC;
    // SAFETY: `addr` is a valid sockaddr_nl and the length is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // nlmsghdr + cn_msg + the op (PROC_CN_MCAST_LISTEN).
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + CN_MSG_LEN + 4);
    msg.extend_from_slice(&((NLMSG_HDRLEN + CN_MSG_LEN + 4) as u32).to_ne_bytes());
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
    msg.extend_from_slice(&4u16.to_ne_bytes()); // len
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    // SAFETY: `msg` is a valid buffer of the given length.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn read_events(fd: OwnedFd, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // The kernel dropped events (we were slow); later ones still come.
                Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                _ => {
                    tracing::warn!(error = %e, "process exit events stopped");
                    return;
                }
            }
        }
        let events = parse_exits(&buf[..n as usize]);
        if events.is_empty() {
            continue;
        }
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        for (pid, status) in events {
            if st.watched.contains(&pid) {
                st.exited.insert(pid, ExitStatus::from_wait_status(status));
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// `(pid, wait status)` of every thread-group leader exit in a datagram of netlink messages.
fn parse_exits(mut b: &[u8]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let Some(len) = u32_at(b, 0).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        let msg = &b[NLMSG_HDRLEN..len];
        // proc_event: what, cpu, timestamp_ns (u64), then for exits: pid, tgid, exit_code, signal.
        let ev = msg.get(CN_MSG_LEN..).unwrap_or_default();
        if u32_at(ev, 0) == Some(PROC_EVENT_EXIT) {
            if let (Some(pid), Some(tgid), Some(code)) =
                (u32_at(ev, 16), u32_at(ev, 20), u32_at(ev, 24))
            {
                if pid == tgid {
                    out.push((pid, code));
                }
            }
        }
        // NLMSG_ALIGN
        b = b.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses() {
        assert_eq!(ExitStatus::from_wait_status(7 << 8), ExitStatus::Exited(7));
        assert_eq!(ExitStatus::from_wait_status(9), ExitStatus::Signaled(9));
        assert_eq!(
            ExitStatus::from_wait_status(0x80 | 11),
            ExitStatus::Signaled(11)
        );
        assert_eq!(ExitStatus::from_wait_status(0), ExitStatus::Exited(0));
    }

    fn exit_message(pid: u32, tgid: u32, code: u32) -> Vec<u8> {
        let mut ev = Vec::new();
        for v in [PROC_EVENT_EXIT, 0] {
            ev.extend_from_slice(&v.to_ne_bytes());
        }
        ev.extend_from_slice(&0u64.to_ne_bytes());
        for v in [pid, tgid, code, 17, 1, 1] {
            ev.extend_from_slice(&v.to_ne_bytes());
        }
        let mut m = Vec::new();
        let len = NLMSG_HDRLEN + CN_MSG_LEN + ev.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&[0u8; NLMSG_HDRLEN - 4]);
        m.extend_from_slice(&[0u8; CN_MSG_LEN]);
        m.extend_from_slice(&ev);
        m
    }

    #[test]
    fn parses_exit_events() {
        let mut d = exit_message(42, 42, 9);
        d.extend(exit_message(43, 42, 9)); // a thread: ignored
        assert_eq!(parse_exits(&d), vec![(42, 9)]);
        assert!(parse_exits(&d[..10]).is_empty());
    }

    #[test]
    fn pidfd_sees_an_exit() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let fd = Pidfd::open(child.id()).unwrap();
        assert!(!fd.exited());
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(fd.exited());
    }

    /// The real connector on this host reports a child's exit status (skipped where the kernel
    /// has no process events or we lack the privilege).
    #[test]
    fn reports_a_real_exit() {
        let exits = Exits::start();
        if !exits.available() {
            eprintln!("process events unavailable here; skipping");
            return;
        }
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _; exit 7"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        exits.watch(pid);
        drop(child.stdin.take());
        child.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while exits.status(pid).is_none() {
            assert!(std::time::Instant::now() < deadline, "no exit event");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(exits.status(pid), Some(ExitStatus::Exited(7)));
    }
}
