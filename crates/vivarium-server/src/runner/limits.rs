//! Checks of request fields against `vivarium_api::limits` (the numbers the driver also uses):
//! every violation is a 400 naming the field.

use std::collections::BTreeMap;
use vivarium_api as api;

use vivarium_api::limits as lim;

use super::Runner;
use crate::error::{ApiError, ApiResult};

impl Runner {
    /// Most bytes one upload into a running sandbox may have: its `disk_mib`, or without one what
    /// the runner's data directory (where its scratch layer lives) has free.
    pub fn upload_limit(&self, id: &str) -> ApiResult<u64> {
        let rec = self.running(id)?;
        Ok(match rec.run.disk_mib {
            Some(mib) => mib << 20,
            None => self
                .driver
                .available_disk_mib()
                .map(|mib| mib << 20)
                .unwrap_or(u64::MAX),
        })
    }
}

pub fn check_vcpus(vcpus: f64) -> ApiResult<()> {
    if !(vcpus.is_finite() && (lim::MIN_VCPUS..=lim::MAX_VCPUS).contains(&vcpus)) {
        return Err(ApiError::invalid(
            "vcpus",
            format!(
                "vcpus must be between {} and {}, got {vcpus}",
                lim::MIN_VCPUS,
                lim::MAX_VCPUS
            ),
        ));
    }
    Ok(())
}

/// `available_mib`: what the data directory's filesystem has free (`None`: unknown).
pub fn check_disk(disk_mib: u64, available_mib: Option<u64>) -> ApiResult<()> {
    if !(lim::MIN_DISK_MIB..=lim::MAX_DISK_MIB).contains(&disk_mib) {
        return Err(ApiError::invalid(
            "disk_mib",
            format!(
                "disk_mib must be between {} and {}, got {disk_mib}",
                lim::MIN_DISK_MIB,
                lim::MAX_DISK_MIB
            ),
        ));
    }
    if let Some(free) = available_mib {
        if disk_mib > free {
            return Err(ApiError::invalid(
                "disk_mib",
                format!(
                    "disk_mib {disk_mib} is more than this host can give: its data directory has \
                     {free} MiB free"
                ),
            ));
        }
    }
    Ok(())
}

/// A create's `network` policy: CIDRs that parse, IPv4 only, at most
/// [`lim::MAX_EGRESS_RULES`] per list, none in both lists, no rules without a network.
pub fn check_network(p: &api::NetworkPolicy) -> ApiResult<vivarium_isolation::net::Egress> {
    let parse = |list: &[String], name: &str| -> ApiResult<Vec<vivarium_isolation::Ipv4Net>> {
        if list.len() > lim::MAX_EGRESS_RULES {
            return Err(ApiError::invalid(
                format!("network.{name}"),
                format!(
                    "at most {} CIDRs, got {}",
                    lim::MAX_EGRESS_RULES,
                    list.len()
                ),
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                let field = format!("network.{name}[{i}]");
                if c.contains(':') {
                    return Err(ApiError::invalid(
                        field,
                        format!("{c:?}: IPv6 is off in sandboxes; give IPv4 CIDRs"),
                    ));
                }
                let net = c
                    .parse::<vivarium_isolation::Ipv4Net>()
                    .or_else(|_| {
                        c.parse::<std::net::Ipv4Addr>()
                            .map(vivarium_isolation::Ipv4Net::from)
                    })
                    .map_err(|_| {
                        ApiError::invalid(
                            field.clone(),
                            format!("{c:?} is not an IPv4 CIDR (like 10.1.0.0/16) or address"),
                        )
                    })?;
                Ok(net.trunc())
            })
            .collect()
    };
    let allow = parse(&p.allow_out, "allow_out")?;
    let deny = parse(&p.deny_out, "deny_out")?;
    if p.mode == api::NetworkMode::None && !(allow.is_empty() && deny.is_empty()) {
        return Err(ApiError::invalid(
            "network.mode",
            "egress rules need a network: mode \"none\" has none",
        ));
    }
    if let Some((i, d)) = deny.iter().enumerate().find(|(_, d)| allow.contains(d)) {
        return Err(ApiError::invalid(
            format!("network.deny_out[{i}]"),
            format!("{d} is in both allow_out and deny_out"),
        ));
    }
    Ok(vivarium_isolation::net::Egress { allow, deny })
}

/// An `env` map of a create or an exec.
pub fn check_env(env: &BTreeMap<String, String>) -> ApiResult<()> {
    if env.len() > lim::MAX_ENV_VARS {
        return Err(ApiError::invalid(
            "env",
            format!(
                "at most {} environment variables, got {}",
                lim::MAX_ENV_VARS,
                env.len()
            ),
        ));
    }
    let mut total = 0usize;
    for (k, v) in env {
        let field = || format!("env.{k}");
        super::validate_env_name(k).map_err(|m| ApiError::invalid(field(), m))?;
        if k.len() > lim::MAX_ENV_NAME_BYTES {
            return Err(ApiError::invalid(
                field(),
                format!(
                    "environment variable names are at most {} bytes",
                    lim::MAX_ENV_NAME_BYTES
                ),
            ));
        }
        if v.contains('\0') {
            return Err(ApiError::invalid(
                field(),
                "environment values cannot contain NUL",
            ));
        }
        if v.len() > lim::MAX_ENV_VALUE_BYTES {
            return Err(ApiError::invalid(
                field(),
                format!(
                    "environment values are at most {} bytes, got {}",
                    lim::MAX_ENV_VALUE_BYTES,
                    v.len()
                ),
            ));
        }
        total += k.len() + v.len() + 2;
    }
    if total > lim::MAX_ENV_TOTAL_BYTES {
        return Err(ApiError::invalid(
            "env",
            format!(
                "the environment is at most {} bytes in all, got {total}",
                lim::MAX_ENV_TOTAL_BYTES
            ),
        ));
    }
    Ok(())
}

pub fn check_metadata(metadata: &BTreeMap<String, String>) -> ApiResult<()> {
    if metadata.len() > lim::MAX_METADATA_ENTRIES {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "at most {} metadata entries, got {}",
                lim::MAX_METADATA_ENTRIES,
                metadata.len()
            ),
        ));
    }
    for (k, v) in metadata {
        if k.is_empty()
            || k.len() > lim::MAX_METADATA_KEY_BYTES
            || v.len() > lim::MAX_METADATA_VALUE_BYTES
        {
            return Err(ApiError::invalid(
                format!("metadata.{k}"),
                format!(
                    "metadata keys must be 1-{} bytes and values at most {} bytes",
                    lim::MAX_METADATA_KEY_BYTES,
                    lim::MAX_METADATA_VALUE_BYTES
                ),
            ));
        }
    }
    Ok(())
}

pub fn check_image(image: &str) -> ApiResult<()> {
    if image.len() > lim::MAX_IMAGE_REF_BYTES {
        return Err(ApiError::invalid(
            "image",
            format!(
                "image references are at most {} bytes",
                lim::MAX_IMAGE_REF_BYTES
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: ApiResult<()>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        e.field.unwrap()
    }

    #[test]
    fn bounds_name_their_field() {
        assert!(check_vcpus(0.01).is_ok() && check_vcpus(256.0).is_ok());
        for bad in [0.0, 0.0001, -1.0, 256.5, f64::NAN, f64::INFINITY] {
            assert_eq!(field(check_vcpus(bad)), "vcpus", "{bad}");
        }
        assert!(check_disk(lim::MAX_DISK_MIB, None).is_ok());
        assert_eq!(field(check_disk(lim::MAX_DISK_MIB + 1, None)), "disk_mib");
        assert_eq!(field(check_disk(15, None)), "disk_mib");
        assert_eq!(field(check_disk(1024, Some(1000))), "disk_mib");
        let many: BTreeMap<String, String> = (0..=lim::MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert_eq!(field(check_env(&many)), "env");
        let big = BTreeMap::from([("A".to_string(), "x".repeat(lim::MAX_ENV_VALUE_BYTES + 1))]);
        assert_eq!(field(check_env(&big)), "env.A");
        let total: BTreeMap<String, String> = (0..10)
            .map(|i| (format!("V{i}"), "x".repeat(lim::MAX_ENV_VALUE_BYTES)))
            .collect();
        assert_eq!(field(check_env(&total)), "env");
        let meta: BTreeMap<String, String> = (0..=lim::MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(field(check_metadata(&meta)), "metadata");
        assert_eq!(field(check_image(&"a".repeat(2000))), "image");
    }
}
