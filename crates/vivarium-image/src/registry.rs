//! Registry access through `oci-client`: one client per registry (plain HTTP for loopback and
//! configured insecure registries), credentials, and mapping its errors onto [`ImageError`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use crate::error::ImageError;
use crate::reference::{is_loopback_registry, ImageRef};

pub(crate) struct Registries {
    insecure: Vec<String>,
    credentials: HashMap<String, (String, String)>,
    clients: Mutex<HashMap<String, Client>>,
}

impl Registries {
    pub(crate) fn new(
        insecure: Vec<String>,
        credentials: HashMap<String, (String, String)>,
    ) -> Self {
        // reqwest is built without a default crypto provider (no aws-lc / cmake needed): install
        // ring as the process default. An Err means some other crate already installed one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let credentials = credentials
            .into_iter()
            .map(|(k, v)| (normalize_registry_key(&k), v))
            .collect();
        Registries {
            insecure,
            credentials,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// True when `registry` is spoken to over plain HTTP.
    pub(crate) fn is_plain_http(&self, registry: &str) -> bool {
        is_loopback_registry(registry) || self.insecure.iter().any(|i| i == registry)
    }

    pub(crate) fn client(&self, r: &ImageRef) -> Client {
        let key = r.as_oci().resolve_registry().to_string();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(key.clone())
            .or_insert_with(|| {
                let protocol = if self.is_plain_http(r.registry()) {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                Client::new(ClientConfig {
                    protocol,
                    platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
                    connect_timeout: Some(Duration::from_secs(15)),
                    read_timeout: Some(Duration::from_secs(120)),
                    user_agent: concat!("vivarium/", env!("CARGO_PKG_VERSION")),
                    ..ClientConfig::default()
                })
            })
            .clone()
    }

    pub(crate) fn auth(&self, r: &ImageRef) -> RegistryAuth {
        match self.credentials.get(&normalize_registry_key(r.registry())) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// `https://index.docker.io/v1/`, `index.docker.io`, `registry-1.docker.io` → `docker.io`;
/// other keys lose their scheme and path.
pub(crate) fn normalize_registry_key(k: &str) -> String {
    let k = k.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// Reads the `auths` section of a docker-style `config.json` (`{"auths": {"reg": {"auth":
/// base64("user:pass")}}}` or explicit `username`/`password`). Hand-written because it is a
/// dozen lines of serde, and the `docker_credential` crate would also run credential-helper
/// programs, which a server should not do implicitly.
pub(crate) fn load_docker_config(
    path: &Path,
) -> Result<HashMap<String, (String, String)>, ImageError> {
    #[derive(serde::Deserialize)]
    struct Cfg {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let bytes = std::fs::read(path)
        .map_err(|e| ImageError::io(format!("read docker config {}", path.display()), e))?;
    let cfg: Cfg = serde_json::from_slice(&bytes).map_err(|e| ImageError::Metadata {
        path: path.display().to_string(),
        source: std::sync::Arc::new(e),
    })?;
    let mut out = HashMap::new();
    for (reg, e) in cfg.auths {
        let pair = match (e.username, e.password, e.auth) {
            (Some(u), Some(p), _) => Some((u, p)),
            (_, _, Some(a)) => base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                }),
            _ => None,
        };
        match pair {
            Some(p) => {
                out.insert(normalize_registry_key(&reg), p);
            }
            None => {
                tracing::warn!(registry = %reg, "docker config entry without usable credentials")
            }
        }
    }
    Ok(out)
}

/// Maps an `oci-client` error for reference `r` onto our error kinds.
pub(crate) fn map_err(e: OciDistributionError, r: &ImageRef) -> ImageError {
    let registry = r.registry().to_string();
    let reference = r.to_string();
    match e {
        OciDistributionError::RequestError(re) => {
            if re.is_connect() || re.is_timeout() || re.is_request() {
                ImageError::Unreachable {
                    registry,
                    detail: error_chain(&re),
                }
            } else {
                ImageError::Registry {
                    registry,
                    reference,
                    detail: error_chain(&re),
                }
            }
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let detail = format!("{envelope} ({url})");
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ImageError::NotFound { reference, detail }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Unauthorized {
                    registry,
                    reference,
                    detail,
                }
            } else {
                ImageError::Registry {
                    registry,
                    reference,
                    detail,
                }
            }
        }
        OciDistributionError::ServerError { code, url, message } => {
            let detail = format!("HTTP {code} from {url}: {message}");
            match code {
                404 => ImageError::NotFound { reference, detail },
                401 | 403 => ImageError::Unauthorized {
                    registry,
                    reference,
                    detail,
                },
                _ => ImageError::Registry {
                    registry,
                    reference,
                    detail,
                },
            }
        }
        OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
            registry,
            reference,
            detail: format!("401 from {url}"),
        },
        OciDistributionError::AuthenticationFailure(m) => ImageError::Unauthorized {
            registry,
            reference,
            detail: m,
        },
        OciDistributionError::ImageManifestNotFoundError(m) => ImageError::NotFound {
            reference,
            detail: m,
        },
        OciDistributionError::DigestError(d) => digest_error(d, &reference),
        OciDistributionError::UnsupportedMediaTypeError(mt) => ImageError::UnsupportedMediaType {
            reference,
            media_type: mt,
        },
        OciDistributionError::IoError(io) => map_io(io, r),
        other => ImageError::Registry {
            registry,
            reference,
            detail: other.to_string(),
        },
    }
}

fn digest_error(d: oci_client::errors::DigestError, reference: &str) -> ImageError {
    match d {
        oci_client::errors::DigestError::VerificationError { expected, actual } => {
            ImageError::DigestMismatch {
                what: format!("content of {reference}"),
                expected,
                actual,
            }
        }
        other => ImageError::invalid("digest", other),
    }
}

/// Errors from a blob byte stream: digest failures, or the transport.
pub(crate) fn map_io(e: std::io::Error, r: &ImageRef) -> ImageError {
    if let Some(inner) = e.get_ref() {
        if let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) =
            inner.downcast_ref::<oci_client::errors::DigestError>()
        {
            return ImageError::DigestMismatch {
                what: format!("blob of {r}"),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
    }
    ImageError::Unreachable {
        registry: r.registry().to_string(),
        detail: error_chain(&e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_keys_are_normalised() {
        assert_eq!(
            normalize_registry_key("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalize_registry_key("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_registry_key("GHCR.io"), "ghcr.io");
        assert_eq!(
            normalize_registry_key("http://127.0.0.1:5000/"),
            "127.0.0.1:5000"
        );
    }

    #[test]
    fn docker_config_is_read() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "ghcr.io":{{"username":"bob","password":"pw"}},"broken.io":{{}}}}}}"#
            ),
        )
        .unwrap();
        let c = load_docker_config(&p).unwrap();
        assert_eq!(
            c.get("docker.io"),
            Some(&("alice".to_string(), "s3cr:et".to_string()))
        );
        assert_eq!(
            c.get("ghcr.io"),
            Some(&("bob".to_string(), "pw".to_string()))
        );
        assert!(!c.contains_key("broken.io"));
        let regs = Registries::new(vec!["myreg:5000".into()], c);
        let hub = ImageRef::parse("busybox:1.36").unwrap();
        assert!(matches!(regs.auth(&hub), RegistryAuth::Basic(u, _) if u == "alice"));
        assert!(regs.is_plain_http("myreg:5000"));
        assert!(regs.is_plain_http("127.0.0.1:41234"));
        assert!(!regs.is_plain_http("ghcr.io"));
    }
}
