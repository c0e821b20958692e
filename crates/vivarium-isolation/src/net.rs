//! Sandbox networking: a named network namespace per sandbox, a veth pair with a /30 carved out of
//! the driver's subnet (IPv4 only: no IPv6 address on either end), and one `inet` nftables table
//! per driver instance (see [`nft_script`]: NAT egress to the public internet only; no
//! sandbox→host, sandbox↔sandbox, sandbox→LAN; no forged sources; no IPv6).
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

/// Destinations no sandbox reaches, whatever its egress rules: "this network", loopback,
/// link-local (cloud metadata services at 169.254.169.254 among them), multicast, reserved.
pub const ALWAYS_DENIED_V4: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// Private destinations denied unless a sandbox's `allow` names them: RFC 1918, CGNAT, IETF
/// protocol assignments, 6to4 relays, benchmarking.
pub const PRIVATE_V4: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    // Azure's WireServer (VM agent and host plumbing; a known source of leaked credentials).
    "168.63.129.16/32",
];

/// One sandbox's egress rules (see the API's `NetworkPolicy` for their meaning).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Egress {
    /// When not empty: the only destinations allowed (besides DNS to the host's resolvers).
    #[serde(default)]
    pub allow: Vec<Ipv4Net>,
    /// Destinations dropped (before `allow`).
    #[serde(default)]
    pub deny: Vec<Ipv4Net>,
}

impl Egress {
    pub fn is_default(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// What the instance's nftables table is built from.
#[derive(Debug, Clone)]
pub struct Firewall {
    /// `inet` table name (the instance name with `-` as `_`).
    pub table: String,
    pub subnet: Ipv4Net,
    /// Resolvers sandboxes may reach on port 53 although they are in a denied range (the host's
    /// `/etc/resolv.conf` often names one on the LAN).
    pub nameservers: Vec<Ipv4Addr>,
    /// The sandboxes that exist now (the table is rebuilt at every start).
    pub veths: Vec<Guarded>,
}

/// One sandbox as the firewall knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    /// Host-side veth.
    pub veth: String,
    /// The sandbox's address: the only source accepted from that veth.
    pub ip: Ipv4Addr,
    pub egress: Egress,
}

fn cidrs(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name of a sandbox's egress chain.
fn egress_chain(veth: &str) -> String {
    format!("egress_{veth}")
}

/// nft statements (for an `nft -f` script) that create a sandbox's egress chain and map its veth
/// to it. Nothing for the default rules.
fn egress_statements(table: &str, veth: &str, egress: &Egress, nameservers: &[Ipv4Addr]) -> String {
    if egress.is_default() {
        return String::new();
    }
    let chain = egress_chain(veth);
    let mut rules = Vec::new();
    if !egress.deny.is_empty() {
        rules.push(format!("ip daddr {{ {} }} drop", cidrs(&egress.deny)));
    }
    if !egress.allow.is_empty() {
        rules.push(format!("ip daddr {{ {} }} accept", cidrs(&egress.allow)));
        if !nameservers.is_empty() {
            let ns: Vec<String> = nameservers.iter().map(|a| a.to_string()).collect();
            rules.push(format!(
                "ip daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 accept",
                ns.join(", ")
            ));
        }
        rules.push("drop".into());
    }
    let mut out = format!("add chain inet {table} {chain}\n");
    for r in rules {
        out.push_str(&format!("add rule inet {table} {chain} {r}\n"));
    }
    out.push_str(&format!(
        "add element inet {table} egress {{ \"{veth}\" : jump {chain} }}\n"
    ));
    out
}

/// The nftables script that (re)creates the instance's table atomically. Idempotent: the table is
/// created if missing, deleted and rebuilt in the same transaction (an `ip`-family table of an
/// older version goes too).
///
/// Every rule about sandbox traffic matches the *interface* it arrives on or leaves by (the set
/// `veths`, one element per sandbox, added at create), never a source address alone, which a
/// sandbox holding CAP_NET_RAW could forge. In the `inet` family one table covers IPv4 and IPv6:
/// - input: a sandbox reaches no address of the host, IPv4 or IPv6 (replies to connections the
///   host opened excepted);
/// - forward: no IPv6 at all; a packet whose source is not its sandbox's own address (the source
///   must route back through the veth it came in on) is dropped; DNS to the host's resolvers is
///   let through; then every private, link-local, loopback, multicast and reserved range and every
///   other sandbox is dropped: what is left is the public internet, NATed;
/// - nothing reaches a sandbox from outside but replies.
pub fn nft_script(fw: &Firewall) -> String {
    let Firewall {
        table,
        subnet,
        nameservers,
        veths,
    } = fw;
    let quoted: Vec<String> = veths.iter().map(|g| format!("\"{}\"", g.veth)).collect();
    let veth_elements = if quoted.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", quoted.join(", "))
    };
    let pairs: Vec<String> = veths
        .iter()
        .map(|g| format!("\"{}\" . {}", g.veth, g.ip))
        .collect();
    let source_elements = if pairs.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", pairs.join(", "))
    };
    let dns_rule = if nameservers.is_empty() {
        String::new()
    } else {
        let ns: Vec<String> = nameservers.iter().map(|a| a.to_string()).collect();
        format!(
            "\t\tiifname @veths ip daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 accept\n",
            ns.join(", ")
        )
    };
    let always = ALWAYS_DENIED_V4.join(", ");
    let private = PRIVATE_V4.join(", ");
    let egress: String = veths
        .iter()
        .map(|g| egress_statements(table, &g.veth, &g.egress, nameservers))
        .collect();
    format!(
        "table ip {table}\n\
         delete table ip {table}\n\
         table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tset veths {{ type ifname;{veth_elements} }}\n\
         \tset sources {{ type ifname . ipv4_addr;{source_elements} }}\n\
         \tmap egress {{ type ifname : verdict; }}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} ip daddr != {subnet} masquerade\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname @veths meta nfproto ipv6 drop\n\
         \t\tiifname @veths iifname . ip saddr != @sources drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname @veths meta nfproto ipv6 drop\n\
         \t\tiifname @veths ct state established,related accept\n\
         \t\tiifname @veths drop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname @veths meta nfproto ipv6 drop\n\
         \t\tiifname @veths ip saddr != {subnet} drop\n\
         \t\tiifname @veths fib saddr . iif oif missing drop\n\
         \t\tiifname @veths ip daddr {subnet} drop\n\
         {dns_rule}\
         \t\tiifname @veths ip daddr {{ {always} }} drop\n\
         \t\tiifname @veths iifname vmap @egress\n\
         \t\tiifname @veths ip daddr {{ {private} }} drop\n\
         \t\toifname @veths ct state established,related accept\n\
         \t\toifname @veths drop\n\
         \t}}\n\
         }}\n\
         {egress}"
    )
}

/// IPv4 resolvers named by a resolv.conf (loopback ones are useless inside a sandbox).
pub fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next()) {
                (Some("nameserver"), Some(a)) => a.parse::<Ipv4Addr>().ok(),
                _ => None,
            }
        })
        .filter(|a| !a.is_loopback())
        .collect()
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
pub fn install_firewall(fw: &Firewall) -> Result<(), DriverError> {
    run_tool("nft", &["-f", "-"], Some(&nft_script(fw)))?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| io_err("enable /proc/sys/net/ipv4/ip_forward".into(), e))
}

/// Puts a sandbox's host-side veth under the table's rules, with its one permitted source address
/// and its egress rules, in one transaction. Done before the veth is up.
pub fn guard_veth(table: &str, g: &Guarded, nameservers: &[Ipv4Addr]) -> Result<(), DriverError> {
    let veth = &g.veth;
    let script = format!(
        "add element inet {table} veths {{ \"{veth}\" }}\n\
         add element inet {table} sources {{ \"{veth}\" . {} }}\n{}",
        g.ip,
        egress_statements(table, veth, &g.egress, nameservers)
    );
    run_tool("nft", &["-f", "-"], Some(&script))
}

/// Whether the instance's table is still in the kernel (a `nft flush ruleset` elsewhere on the
/// host, e.g. a reload of the host's own firewall, removes it).
pub fn firewall_present(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Removes a deleted sandbox's veth from the table's sets and its egress chain (missing pieces:
/// fine).
pub fn unguard_veth(table: &str, veth: &str, ip: Ipv4Addr) -> Result<(), DriverError> {
    let chain = egress_chain(veth);
    for script in [
        format!("delete element inet {table} sources {{ \"{veth}\" . {ip} }}\n"),
        format!("delete element inet {table} veths {{ \"{veth}\" }}\n"),
        format!("delete element inet {table} egress {{ \"{veth}\" }}\n"),
        format!("delete chain inet {table} {chain}\n"),
    ] {
        match run_tool("nft", &["-f", "-"], Some(&script)) {
            Err(DriverError::Command { stderr, .. })
                if stderr.contains("No such file") || stderr.contains("does not exist") => {}
            other => other?,
        }
    }
    Ok(())
}

/// Removes the instance's table (both the current `inet` one and an `ip` one of older versions).
pub fn remove_firewall(table: &str) -> Result<(), DriverError> {
    let script = format!(
        "table ip {table}\ndelete table ip {table}\ntable inet {table}\ndelete table inet {table}\n"
    );
    run_tool("nft", &["-f", "-"], Some(&script))
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
    // No IPv6 on either end (`addrgenmode none`: no link-local address is ever made), so nothing
    // inside can reach the host's `[::]` listeners over the veth even before nftables looks.
    let host = format!(
        "netns add {name}\n\
         link add {veth} type veth peer name eth0 netns {name}\n\
         link set {veth} addrgenmode none\n\
         addr add {hip}/30 dev {veth}\n",
        veth = plan.veth,
        hip = plan.host_ip,
    );
    run_tool("ip", &["-batch", "-"], Some(&host))?;
    // ARP on the host side answers only for the veth's own address (arp_ignore=1) and announces
    // only that (arp_announce=2): a sandbox learns nothing of the host's other addresses.
    for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
        let path = format!("/proc/sys/net/ipv4/conf/{}/{key}", plan.veth);
        std::fs::write(&path, value).map_err(|e| io_err(format!("write {path}"), e))?;
    }
    let inner = format!(
        "link set lo up\n\
         link set eth0 addrgenmode none\n\
         addr add {ip}/30 dev eth0\n\
         link set eth0 up\n\
         route add default via {hip}\n",
        ip = plan.ip,
        hip = plan.host_ip,
    );
    run_tool("ip", &["-n", name, "-batch", "-"], Some(&inner))
}

/// Brings the host side of a sandbox's veth up (after [`guard_veth`]).
pub fn veth_up(veth: &str) -> Result<(), DriverError> {
    run_tool("ip", &["link", "set", veth, "up"], None)
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

    fn firewall(veths: &[&str], ns: &[Ipv4Addr]) -> Firewall {
        Firewall {
            table: "vvunit".into(),
            subnet: "10.88.0.0/16".parse().unwrap(),
            nameservers: ns.to_vec(),
            veths: veths
                .iter()
                .enumerate()
                .map(|(i, v)| Guarded {
                    veth: v.to_string(),
                    ip: Ipv4Addr::new(10, 88, 0, 2 + 4 * i as u8),
                    egress: Egress::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn nft_script_guards_interfaces_both_families() {
        let t = nft_script(&firewall(&["vv0a580001"], &[Ipv4Addr::new(192, 168, 1, 1)]));
        assert!(t.starts_with("table ip vvunit\ndelete table ip vvunit\n"));
        assert!(t.contains("table inet vvunit {"));
        assert!(t.contains(r#"set veths { type ifname; elements = { "vv0a580001" }; }"#));
        assert!(t.contains("ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade"));
        // Prerouting, input and forward: no IPv6, nothing to the host, no forged source, no
        // private range.
        assert_eq!(
            t.matches("iifname @veths meta nfproto ipv6 drop").count(),
            3
        );
        assert!(t.contains("iifname @veths fib saddr . iif oif missing drop"));
        assert!(t.contains("iifname @veths ip saddr != 10.88.0.0/16 drop"));
        assert!(t.contains(
            "iifname @veths ip daddr { 192.168.1.1 } meta l4proto { tcp, udp } th dport 53 accept"
        ));
        for range in ALWAYS_DENIED_V4.iter().chain(PRIVATE_V4) {
            assert!(t.contains(range), "{range}");
        }
        // Order: DNS to the host's resolvers (which may be link-local, as on AWS), then the
        // always-denied ranges, then a sandbox's own rules, then private ranges.
        let at = |needle: &str| t.find(needle).unwrap();
        assert!(at("dport 53 accept") < at("169.254.0.0/16"));
        assert!(at("169.254.0.0/16") < at("vmap @egress"));
        assert!(at("vmap @egress") < at("10.0.0.0/8"));
        // Before conntrack: only the sandbox's own address is accepted from its veth.
        assert!(t.contains("type filter hook prerouting priority raw"));
        assert!(t.contains(
            r#"set sources { type ifname . ipv4_addr; elements = { "vv0a580001" . 10.88.0.2 }; }"#
        ));
        assert!(t.contains("iifname @veths iifname . ip saddr != @sources drop"));
    }

    #[test]
    fn nameservers_skip_loopback_and_ipv6() {
        let r = "# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nnameserver fd00::1\nsearch a\n";
        assert_eq!(nameservers(r), vec![Ipv4Addr::new(10, 0, 0, 2)]);
    }

    /// The kernel's own parser checks the script (`nft --check`: nothing is installed).
    #[test]
    fn nft_accepts_the_script() {
        if !nix::unistd::geteuid().is_root() || Command::new("nft").arg("-V").output().is_err() {
            assert!(
                std::env::var("CI").is_err(),
                "needs root and nft (scripts/setup.sh)"
            );
            return;
        }
        let strict = Egress {
            allow: vec!["192.168.1.0/24".parse().unwrap()],
            deny: vec!["192.168.1.7/32".parse().unwrap()],
        };
        let deny_only = Egress {
            allow: vec![],
            deny: vec!["198.51.100.0/24".parse().unwrap()],
        };
        for (veths, ns) in [
            (vec![], vec![]),
            (
                vec!["vv0a580001", "vv0a580005"],
                vec![Ipv4Addr::new(10, 255, 255, 53)],
            ),
        ] {
            let mut fw = firewall(&veths, &ns);
            if let Some(g) = fw.veths.get_mut(0) {
                g.egress = strict.clone();
            }
            if let Some(g) = fw.veths.get_mut(1) {
                g.egress = deny_only.clone();
            }
            let script = nft_script(&fw);
            let mut child = Command::new("nft")
                .args(["--check", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
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
