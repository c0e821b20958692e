//! Sandbox networking: a named network namespace per sandbox, a veth pair with a /30 carved out of
//! the driver's subnet, and one nftables table per driver instance (NAT egress, no sandbox↔sandbox,
//! no sandbox→host).
//!
//! The `ip` and `nft` tools (iproute2, nftables) do the netlink work: they are the reference
//! implementations, one `ip -batch` process per side costs ~2 ms, and it keeps this crate free of a
//! hand-rolled netlink layer.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use crate::{io_err, DriverError};

/// Where `ip netns add` puts its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// Addresses of one sandbox's /30.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    pub index: u32,
    pub host_ip: Ipv4Addr,
    pub ip: Ipv4Addr,
    /// Host-side veth name: `vv` + the host ip in hex (10 chars, unique per address on the host).
    pub veth: String,
}

/// Number of /30 blocks in `subnet`.
pub fn capacity(subnet: &Ipv4Net) -> u32 {
    if subnet.prefix_len() > 30 {
        0
    } else {
        1u32 << (30 - subnet.prefix_len())
    }
}

/// The /30 number `index` of `subnet`.
pub fn plan(subnet: &Ipv4Net, index: u32) -> Option<NetPlan> {
    if index >= capacity(subnet) {
        return None;
    }
    let base = u32::from(subnet.network()) + index * 4;
    let host_ip = Ipv4Addr::from(base + 1);
    Some(NetPlan {
        index,
        host_ip,
        ip: Ipv4Addr::from(base + 2),
        veth: format!("vv{:08x}", base + 1),
    })
}

/// The nftables script that (re)creates table `table` atomically. Idempotent: the table is created
/// if missing, deleted and rebuilt in the same transaction.
pub fn nft_script(table: &str, subnet: &Ipv4Net) -> String {
    format!(
        "table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} ip daddr != {subnet} masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {subnet} ip daddr {subnet} drop\n\
         \t\tip saddr {subnet} ip daddr 169.254.0.0/16 drop\n\
         \t\tip daddr {subnet} ct state established,related accept\n\
         \t\tip daddr {subnet} drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tip saddr {subnet} ct state established,related accept\n\
         \t\tip saddr {subnet} drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `prog args`, feeding `stdin`, and fails with its stderr on a non-zero exit.
pub fn run_tool(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<(), DriverError> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| io_err(format!("spawn {prog}"), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| io_err(format!("write stdin of {prog}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| io_err(format!("wait {prog}"), e))?;
    if !out.status.success() {
        return Err(DriverError::Command {
            cmd: format!("{prog} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            input: stdin.unwrap_or_default().to_string(),
        });
    }
    Ok(())
}

/// Installs the nftables table and turns on IPv4 forwarding.
pub fn install_firewall(table: &str, subnet: &Ipv4Net) -> Result<(), DriverError> {
    run_tool("nft", &["-f", "-"], Some(&nft_script(table, subnet)))?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| io_err("enable /proc/sys/net/ipv4/ip_forward".into(), e))
}

/// Path of a named network namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates netns `name` with only `lo` up.
pub fn create_isolated(name: &str) -> Result<(), DriverError> {
    run_tool("ip", &["netns", "add", name], None)?;
    run_tool("ip", &["-n", name, "link", "set", "lo", "up"], None)
}

/// Creates netns `name`, a veth pair into it and the addresses/routes of `plan`.
pub fn create_nat(name: &str, plan: &NetPlan) -> Result<(), DriverError> {
    let host = format!(
        "netns add {name}\n\
         link add {veth} type veth peer name eth0 netns {name}\n\
         addr add {hip}/30 dev {veth}\n\
         link set {veth} up\n",
        veth = plan.veth,
        hip = plan.host_ip,
    );
    run_tool("ip", &["-batch", "-"], Some(&host))?;
    let inner = format!(
        "link set lo up\n\
         addr add {ip}/30 dev eth0\n\
         link set eth0 up\n\
         route add default via {hip}\n",
        ip = plan.ip,
        hip = plan.host_ip,
    );
    run_tool("ip", &["-n", name, "-batch", "-"], Some(&inner))
}

/// Deletes netns `name` (the veth peer inside goes with it) and the host veth if it is still
/// there. Missing pieces are fine.
pub fn delete(name: &str, veth: Option<&str>) -> Result<(), DriverError> {
    if netns_path(name).exists() {
        // Idempotent: a concurrent teardown may remove the namespace between the check and here.
        match run_tool("ip", &["netns", "delete", name], None) {
            Err(DriverError::Command { stderr, .. }) if stderr.contains("No such file") => {}
            other => other?,
        }
    }
    if let Some(v) = veth {
        if Path::new("/sys/class/net").join(v).exists() {
            // Deleting the netns removes the pair asynchronously: the link may vanish under us.
            match run_tool("ip", &["link", "delete", v], None) {
                Err(DriverError::Command { stderr, .. })
                    if stderr.contains("Cannot find device") => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Names of network namespaces that start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(NETNS_DIR) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = n.strip_prefix(prefix) {
                out.push(rest.to_string());
            }
        }
    }
    out
}

/// Persistent /30 allocation: `dir/<index>` holds the owning sandbox id. `create_new` makes a claim
/// atomic across threads and processes, and the files survive a runner restart.
#[derive(Debug, Clone)]
pub struct Allocator {
    dir: PathBuf,
    subnet: Ipv4Net,
}

impl Allocator {
    pub fn new(dir: PathBuf, subnet: Ipv4Net) -> Self {
        Self { dir, subnet }
    }

    /// Claims the first free /30 (trying `preferred` first).
    pub fn allocate(&self, id: &str, preferred: Option<u32>) -> Result<NetPlan, DriverError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| io_err(format!("create {}", self.dir.display()), e))?;
        let cap = capacity(&self.subnet);
        let order = preferred.filter(|p| *p < cap).into_iter().chain(0..cap);
        for index in order {
            let path = self.dir.join(index.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(id.as_bytes())
                        .map_err(|e| io_err(format!("write {}", path.display()), e))?;
                    // plan() cannot fail: index < capacity.
                    return plan(&self.subnet, index)
                        .ok_or_else(|| DriverError::AddressesExhausted(self.subnet.to_string()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("claim {}", path.display()), e)),
            }
        }
        Err(DriverError::AddressesExhausted(self.subnet.to_string()))
    }

    /// The /30s held by `id` (normally zero or one).
    pub fn held_by(&self, id: &str) -> Vec<NetPlan> {
        self.entries()
            .into_iter()
            .filter(|(_, owner)| owner == id)
            .filter_map(|(i, _)| plan(&self.subnet, i))
            .collect()
    }

    /// Releases every /30 held by `id`.
    pub fn release(&self, id: &str) -> Result<(), DriverError> {
        for p in self.held_by(id) {
            let path = self.dir.join(p.index.to_string());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("remove {}", path.display()), e)),
            }
        }
        Ok(())
    }

    /// All (index, owner) claims.
    pub fn entries(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let Some(index) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Ok(owner) = std::fs::read_to_string(e.path()) {
                    out.push((index, owner.trim().to_string()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_slash30s() {
        let s: Ipv4Net = "10.88.0.0/16".parse().unwrap();
        assert_eq!(capacity(&s), 16384);
        let p = plan(&s, 0).unwrap();
        assert_eq!(p.host_ip, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(p.ip, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(p.veth, "vv0a580001");
        let p = plan(&s, 16383).unwrap();
        assert_eq!(p.ip, Ipv4Addr::new(10, 88, 255, 254));
        assert!(p.veth.len() <= 15);
        assert!(plan(&s, 16384).is_none());
        let tiny: Ipv4Net = "10.0.0.0/31".parse().unwrap();
        assert_eq!(capacity(&tiny), 0);
    }

    #[test]
    fn nft_script_mentions_rules() {
        let s: Ipv4Net = "10.88.0.0/16".parse().unwrap();
        let t = nft_script("vivarium", &s);
        assert!(t.starts_with("table ip vivarium\ndelete table ip vivarium\n"));
        assert!(t.contains("ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade"));
        assert!(t.contains("ip saddr 10.88.0.0/16 ip daddr 10.88.0.0/16 drop"));
        assert!(t.contains("ip saddr 10.88.0.0/16 ct state established,related accept"));
    }

    #[test]
    fn allocator_is_exclusive_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let s: Ipv4Net = "10.77.0.0/29".parse().unwrap(); // two /30s
        let a = Allocator::new(dir.path().join("net"), s);
        let p1 = a.allocate("one", None).unwrap();
        let p2 = a.allocate("two", Some(0)).unwrap(); // preferred taken -> next free
        assert_ne!(p1.index, p2.index);
        assert!(matches!(
            a.allocate("three", None),
            Err(DriverError::AddressesExhausted(_))
        ));
        // a second allocator over the same dir (fresh runner) sees the claims
        let b = Allocator::new(dir.path().join("net"), s);
        assert_eq!(b.held_by("two"), vec![p2.clone()]);
        b.release("one").unwrap();
        assert_eq!(a.allocate("three", None).unwrap().index, p1.index);
    }
}
