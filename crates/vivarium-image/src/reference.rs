//! Image references: parsing, docker.io normalisation (via `oci-spec`) and the pinned-tag policy.

use std::fmt;
use std::str::FromStr;

use oci_client::Reference;

use crate::error::ImageError;

/// Tags that move over time and are therefore refused.
const MOVING_TAGS: &[&str] = &["latest", "lts", "stable"];

/// A parsed, normalised, pinned image reference (`docker.io/library/busybox:1.36.1`,
/// `127.0.0.1:5000/x@sha256:…`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parses and normalises `r`, refusing moving tags (`latest`, `lts`, `stable`) and untagged
    /// references with [`ImageError::UnpinnedTag`]. A digest pins a reference whatever its tag.
    pub fn parse(r: &str) -> Result<Self, ImageError> {
        let s = r.trim();
        if s.is_empty() {
            return Err(ImageError::InvalidReference {
                reference: r.to_string(),
                reason: "empty reference".into(),
            });
        }
        let inner = Reference::try_from(s).map_err(|e| ImageError::InvalidReference {
            reference: s.to_string(),
            reason: e.to_string(),
        })?;
        if inner.repository().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ImageError::InvalidReference {
                reference: s.to_string(),
                reason: "repository name must be lowercase".into(),
            });
        }
        if let Some(d) = inner.digest() {
            if !d.starts_with("sha256:") {
                return Err(ImageError::InvalidReference {
                    reference: s.to_string(),
                    reason: "only sha256 digests are supported".into(),
                });
            }
            return Ok(ImageRef { inner });
        }
        // oci-spec silently fills in `latest` for an untagged name: detect that ourselves. The
        // tag, if any, is after a ':' in the last path segment of the name.
        let name = s.split('@').next().unwrap_or(s);
        let last_segment = name.rsplit('/').next().unwrap_or(name);
        if !last_segment.contains(':') {
            return Err(ImageError::UnpinnedTag {
                reference: s.to_string(),
                reason: "no tag given (that means `latest`, which moves)".into(),
            });
        }
        if let Some(tag) = inner.tag() {
            if MOVING_TAGS.iter().any(|m| m.eq_ignore_ascii_case(tag)) {
                return Err(ImageError::UnpinnedTag {
                    reference: s.to_string(),
                    reason: format!("tag `{tag}` moves over time"),
                });
            }
        }
        Ok(ImageRef { inner })
    }

    /// Registry host[:port] (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// Repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// `sha256:…` if the reference is pinned by digest.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The same repository pinned to `digest` (keeps the tag, if any, out).
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef {
            inner: Reference::with_digest(
                self.registry().to_string(),
                self.repository().to_string(),
                digest.to_string(),
            ),
        }
    }

    /// The underlying `oci-client` reference.
    pub fn as_oci(&self) -> &Reference {
        &self.inner
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.whole())
    }
}

impl FromStr for ImageRef {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// True when `registry` (host[:port]) is a loopback address, which is always spoken to over
/// plain HTTP like Docker does.
pub(crate) fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pinned_tags_are_normalised() {
        let r = ImageRef::parse("busybox:1.36.1").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:1.36.1");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        let r = ImageRef::parse("index.docker.io/foo/bar:2").unwrap();
        assert_eq!(r.to_string(), "docker.io/foo/bar:2");
        let r = ImageRef::parse("127.0.0.1:5000/vivarium/busybox:1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "vivarium/busybox");
        assert_eq!(r.tag(), Some("1"));
    }

    #[test]
    fn moving_and_missing_tags_are_refused() {
        for bad in [
            "busybox",
            "busybox:latest",
            "busybox:LATEST",
            "debian:stable",
            "node:lts",
            "ghcr.io/a/b",
            "localhost:5000/x",
            "localhost:5000/x:latest",
        ] {
            match ImageRef::parse(bad) {
                Err(e @ ImageError::UnpinnedTag { .. }) => {
                    assert!(e.to_string().contains("not pinned"), "{e}");
                    assert_eq!(e.http_status(), 400);
                }
                other => panic!("{bad}: expected UnpinnedTag, got {other:?}"),
            }
        }
    }

    #[test]
    fn digests_are_welcome() {
        let r = ImageRef::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        // A digest pins even a moving tag.
        let r = ImageRef::parse(&format!("localhost:5000/x:latest@{D}")).unwrap();
        assert_eq!(r.digest(), Some(D));
        assert_eq!(
            r.with_digest(D).to_string(),
            format!("localhost:5000/x@{D}")
        );
    }

    #[test]
    fn malformed_references_are_invalid() {
        for bad in [
            "",
            "   ",
            "UPPER/case:1",
            ":1",
            "a@sha256:abc",
            &format!("a@sha512:{}", "f".repeat(128)),
        ] {
            match ImageRef::parse(bad) {
                Err(ImageError::InvalidReference { .. }) => {}
                other => panic!("{bad:?}: expected InvalidReference, got {other:?}"),
            }
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("127.3.4.5"));
        assert!(is_loopback_registry("localhost:80"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("ghcr.io"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
        assert!(!is_loopback_registry("docker.io"));
    }
}
