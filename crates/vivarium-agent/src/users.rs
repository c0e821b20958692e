//! Resolving `user` specs against the sandbox's own /etc/passwd and /etc/group.
//!
//! Hand-written on purpose: the agent is a static binary and must not call getpwnam & co., whose
//! glibc implementation loads NSS modules at run time (not available, and not the sandbox's files
//! anyway). The file formats are trivial colon-separated lines.

use std::path::Path;

use vivarium_proto::ErrorCode;

use crate::error::{AgentError, Result};

/// A user to run a process as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (including `gid`).
    pub groups: Vec<u32>,
    pub name: Option<String>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_optional(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(AgentError::io(e, format!("reading {}", path.display()))),
    }
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `name`, `uid`, `name:group`, `uid:gid` (any mix) using `<etc>/passwd` and `<etc>/group`.
///
/// Like Docker, a numeric uid missing from /etc/passwd is allowed (gid 0, home `/`); a missing
/// user or group *name* is an error.
pub fn resolve(spec: &str, etc: &Path) -> Result<ResolvedUser> {
    let spec = spec.trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(AgentError::invalid(format!(
            "user {spec:?}: expected name, uid, name:group or uid:gid"
        )));
    }
    let passwd = parse_passwd(&read_optional(&etc.join("passwd"))?);
    let groups = parse_group(&read_optional(&etc.join("group"))?);

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid),
        Err(_) => Some(passwd.iter().find(|p| p.name == user_part).ok_or_else(|| {
            AgentError::new(
                ErrorCode::NotFound,
                format!("user {user_part:?} not found in the sandbox's /etc/passwd"),
            )
        })?),
    };
    let (uid, mut gid, name, home) = match entry {
        Some(p) => (p.uid, p.gid, Some(p.name.clone()), p.home.clone()),
        // A numeric uid without an entry: checked above that it parses.
        None => (user_part.parse().unwrap_or(0), 0, None, "/".to_string()),
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    AgentError::not_found(format!(
                        "group {g:?} not found in the sandbox's /etc/group"
                    ))
                })?,
        };
    }
    let mut supplementary = vec![gid];
    if let Some(n) = &name {
        for g in &groups {
            if g.members.iter().any(|m| m == n) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        groups: supplementary,
        name,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nbob:x:1001:100::/home/bob:/bin/false\n",
        )
        .expect("write passwd");
        std::fs::write(
            dir.path().join("group"),
            "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nwheel:x:10:alice, bob\n",
        )
        .expect("write group");
        dir
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let d = etc();
        let u = resolve("alice", d.path()).expect("alice");
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 100, 10]);
        assert_eq!(u.home, "/home/alice");
        assert_eq!(u.name.as_deref(), Some("alice"));
    }

    #[test]
    fn numeric_forms() {
        let d = etc();
        let u = resolve("1001", d.path()).expect("uid");
        assert_eq!((u.uid, u.gid, u.name.as_deref()), (1001, 100, Some("bob")));
        let u = resolve("4242:77", d.path()).expect("uid:gid");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 77, "/"));
        let u = resolve("4242", d.path()).expect("unknown uid");
        assert_eq!(u.gid, 0);
        let u = resolve("bob:wheel", d.path()).expect("name:group");
        assert_eq!((u.uid, u.gid), (1001, 10));
    }

    #[test]
    fn errors() {
        let d = etc();
        assert_eq!(
            resolve("mallory", d.path()).expect_err("unknown").code,
            ErrorCode::NotFound
        );
        assert_eq!(
            resolve("alice:nogroup", d.path())
                .expect_err("unknown group")
                .code,
            ErrorCode::NotFound
        );
        assert_eq!(
            resolve(":5", d.path()).expect_err("empty").code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            resolve("5:", d.path()).expect_err("empty group").code,
            ErrorCode::InvalidArgument
        );
    }
}
