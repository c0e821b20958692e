//! The content-addressed blob directory, and reading images from OCI layouts, OCI archives
//! and `docker save` tarballs into it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

use crate::error::{io_ctx, ImageError};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The hex part of a `sha256:<64 hex>` digest; anything else (which could smuggle a path
/// into a file name) is refused.
pub(crate) fn digest_hex(d: &str) -> Result<&str, ImageError> {
    match d.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(h)
        }
        _ => Err(ImageError::invalid(
            "digest",
            format!("`{d}` is not a sha256 digest"),
        )),
    }
}

pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Media type of a manifest document: its `mediaType`, else guessed from its shape.
pub(crate) fn manifest_media_type(bytes: &[u8]) -> Result<String, ImageError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(bytes).map_err(|e| ImageError::invalid("manifest", e))?;
    Ok(match (p.media_type, p.manifests) {
        (Some(m), _) => m,
        (None, Some(_)) => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    })
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Picks the linux/amd64 manifest of an index (entries without a platform count when they are
/// the only choice). Errors list what the index offers.
pub(crate) fn select_platform<'a>(
    idx: &'a ImageIndex,
    reference: &str,
) -> Result<&'a Descriptor, ImageError> {
    use oci_spec::image::{Arch, Os};
    let entries = idx.manifests();
    if let Some(d) = entries.iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    }) {
        return Ok(d);
    }
    let unplatformed: Vec<&Descriptor> =
        entries.iter().filter(|d| d.platform().is_none()).collect();
    if unplatformed.len() == 1 {
        return Ok(unplatformed[0]);
    }
    let offered: Vec<String> = entries
        .iter()
        .filter_map(|d| {
            d.platform()
                .as_ref()
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
        })
        .collect();
    Err(ImageError::UnsupportedPlatform {
        reference: reference.to_string(),
        detail: if offered.is_empty() {
            "the index lists no platforms".into()
        } else {
            format!("it offers {}", offered.join(", "))
        },
    })
}

/// `blobs/sha256/<hex>` with writes staged in a temp dir on the same filesystem.
#[derive(Clone, Debug)]
pub(crate) struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Blobs {
    pub(crate) fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Blobs { dir, tmp }
    }

    pub(crate) fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join(digest_hex(digest)?))
    }

    pub(crate) fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub(crate) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    pub(crate) fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.path(digest)?;
        fs::read(&p).map_err(io_ctx(|| format!("read blob {}", p.display())))
    }

    /// Stores `bytes`, checking them against `expected` if given; returns the digest.
    pub(crate) fn put_bytes(
        &self,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<String, ImageError> {
        let digest = sha256_of(bytes);
        if let Some(e) = expected {
            if e != digest {
                return Err(ImageError::DigestMismatch {
                    what: "blob".into(),
                    expected: e.into(),
                    actual: digest,
                });
            }
        }
        if !self.contains(&digest) {
            let mut f = tempfile::NamedTempFile::new_in(&self.tmp)
                .map_err(io_ctx(|| "create temp blob".into()))?;
            f.write_all(bytes)
                .map_err(io_ctx(|| "write temp blob".into()))?;
            self.persist(f, &digest)?;
        }
        Ok(digest)
    }

    /// Copies the file at `src` into the store, hashing while copying; returns (digest, size).
    /// Symlinks are refused: an imported archive must not make us copy host files.
    pub(crate) fn put_file(
        &self,
        src: &Path,
        expected: Option<&str>,
    ) -> Result<(String, u64), ImageError> {
        let meta =
            fs::symlink_metadata(src).map_err(io_ctx(|| format!("stat {}", src.display())))?;
        if !meta.is_file() {
            return Err(ImageError::invalid(
                "image source",
                format!("{} is not a regular file", src.display()),
            ));
        }
        let mut input = File::open(src).map_err(io_ctx(|| format!("open {}", src.display())))?;
        let mut f = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(io_ctx(|| "create temp blob".into()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .map_err(io_ctx(|| format!("read {}", src.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n])
                .map_err(io_ctx(|| "write temp blob".into()))?;
            size += n as u64;
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(e) = expected {
            if e != digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("blob {}", src.display()),
                    expected: e.into(),
                    actual: digest,
                });
            }
        }
        if !self.contains(&digest) {
            self.persist(f, &digest)?;
        }
        Ok((digest, size))
    }

    /// fsyncs a verified temp file and renames it to its digest name.
    pub(crate) fn persist(
        &self,
        f: tempfile::NamedTempFile,
        digest: &str,
    ) -> Result<(), ImageError> {
        f.as_file()
            .sync_all()
            .map_err(io_ctx(|| "sync blob".into()))?;
        let dst = self.path(digest)?;
        f.persist(&dst)
            .map_err(|e| ImageError::io(format!("store blob {}", dst.display()), e.error))?;
        Ok(())
    }

    pub(crate) fn remove(&self, digest: &str) -> Result<(), ImageError> {
        let p = self.path(digest)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageError::io(format!("remove {}", p.display()), e))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn list(&self) -> Result<Vec<String>, ImageError> {
        let mut out = Vec::new();
        for e in
            fs::read_dir(&self.dir).map_err(io_ctx(|| format!("read {}", self.dir.display())))?
        {
            let e = e.map_err(io_ctx(|| format!("read {}", self.dir.display())))?;
            if let Some(n) = e.file_name().to_str() {
                out.push(format!("sha256:{n}"));
            }
        }
        Ok(out)
    }
}

/// An image staged into the blob store, ready to be unpacked.
pub(crate) struct Staged {
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: String,
    pub config_bytes: Vec<u8>,
}

/// Reads an image from `path`: an OCI layout directory, or a tar (optionally gzip/zstd) of one
/// (`oci-archive`), or a `docker save` tar. Its blobs are copied (and verified) into `blobs`.
pub(crate) fn stage_import(path: &Path, blobs: &Blobs) -> Result<Staged, ImageError> {
    let meta =
        fs::metadata(path).map_err(io_ctx(|| format!("import source {}", path.display())))?;
    let _extracted;
    let dir = if meta.is_dir() {
        path.to_path_buf()
    } else {
        let t = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(blobs.tmp_dir())
            .map_err(io_ctx(|| "create import dir".into()))?;
        let mut ar = tar::Archive::new(crate::unpack::layer_reader(path)?);
        ar.set_preserve_permissions(false);
        // tar's unpack() refuses entries escaping the destination.
        ar.unpack(t.path())
            .map_err(|e| ImageError::invalid(format!("archive {}", path.display()), e))?;
        let d = t.path().to_path_buf();
        _extracted = t;
        d
    };
    if dir.join("oci-layout").is_file() && dir.join("index.json").is_file() {
        stage_oci_layout(&dir, blobs)
    } else if dir.join("manifest.json").is_file() {
        stage_docker_save(&dir, blobs)
    } else {
        Err(ImageError::invalid(
            format!("import source {}", path.display()),
            "neither an OCI layout (oci-layout, index.json) nor a `docker save` archive (manifest.json)",
        ))
    }
}

fn layout_blob(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    Ok(dir.join("blobs/sha256").join(digest_hex(digest)?))
}

fn stage_oci_layout(dir: &Path, blobs: &Blobs) -> Result<Staged, ImageError> {
    let index_path = dir.join("index.json");
    let mut idx =
        ImageIndex::from_file(&index_path).map_err(|e| ImageError::invalid("index.json", e))?;
    // Follow nested indexes down to one image manifest (depth-limited).
    for _ in 0..4 {
        let chosen = select_platform(&idx, &dir.display().to_string())?.clone();
        let digest = chosen.digest().to_string();
        let bytes = fs::read(layout_blob(dir, &digest)?)
            .map_err(io_ctx(|| format!("read manifest {digest}")))?;
        if sha256_of(&bytes) != digest {
            return Err(ImageError::DigestMismatch {
                what: "layout manifest".into(),
                expected: digest,
                actual: sha256_of(&bytes),
            });
        }
        if is_index(&manifest_media_type(&bytes)?) {
            idx = ImageIndex::from_reader(&bytes[..])
                .map_err(|e| ImageError::invalid("nested index", e))?;
            continue;
        }
        let m = ImageManifest::from_reader(&bytes[..])
            .map_err(|e| ImageError::invalid("manifest", e))?;
        let config_digest = m.config().digest().to_string();
        let (_, _) = blobs.put_file(&layout_blob(dir, &config_digest)?, Some(&config_digest))?;
        for l in m.layers() {
            let d = l.digest().to_string();
            blobs.put_file(&layout_blob(dir, &d)?, Some(&d))?;
        }
        blobs.put_bytes(&bytes, Some(&digest))?;
        let config_bytes = blobs.read(&config_digest)?;
        return Ok(Staged {
            manifest_bytes: bytes,
            manifest_digest: digest,
            config_bytes,
        });
    }
    Err(ImageError::invalid(
        "index.json",
        "indexes nested too deeply",
    ))
}

/// `docker save` format: `manifest.json` = `[{"Config": "...", "Layers": ["a/layer.tar", …]}]`.
/// We build an OCI manifest for it (layers keep their bytes, so their digests are real).
fn stage_docker_save(dir: &Path, blobs: &Blobs) -> Result<Staged, ImageError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        layers: Vec<String>,
    }
    let bytes =
        fs::read(dir.join("manifest.json")).map_err(io_ctx(|| "read manifest.json".into()))?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&bytes).map_err(|e| ImageError::invalid("manifest.json", e))?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| ImageError::invalid("manifest.json", "no images"))?;
    let inside = |rel: &str| -> Result<PathBuf, ImageError> {
        let p = Path::new(rel);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ImageError::PathEscape {
                path: rel.to_string(),
            });
        }
        Ok(dir.join(p))
    };
    let (config_digest, config_size) = blobs.put_file(&inside(&entry.config)?, None)?;
    let mut layers = Vec::new();
    for l in &entry.layers {
        let p = inside(l)?;
        let mut head = [0u8; 4];
        let n = File::open(&p)
            .and_then(|mut f| f.read(&mut head))
            .map_err(io_ctx(|| format!("read {l}")))?;
        let media_type = match &head[..n] {
            [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => "application/vnd.oci.image.layer.v1.tar",
        };
        let (digest, size) = blobs.put_file(&p, None)?;
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| ImageError::Internal(e.to_string()))?;
    let manifest_digest = blobs.put_bytes(&manifest_bytes, None)?;
    let config_bytes = blobs.read(&config_digest)?;
    Ok(Staged {
        manifest_bytes,
        manifest_digest,
        config_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated_before_becoming_paths() {
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:ABC",
            "md5:00",
            &format!("sha256:{}/", "a".repeat(63)),
        ] {
            assert!(digest_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_type_probe() {
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"layers":[]}"#).unwrap(),
            OCI_MANIFEST
        );
        assert_eq!(
            manifest_media_type(format!(r#"{{"mediaType":"{DOCKER_LIST}"}}"#).as_bytes()).unwrap(),
            DOCKER_LIST
        );
    }

    #[test]
    fn platform_selection() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let idx = |entries: serde_json::Value| -> ImageIndex {
            serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": entries}))
                .unwrap()
        };
        let e = |digest: String, arch: &str| {
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 1,
            "platform": {"os": "linux", "architecture": arch}})
        };
        let multi = idx(serde_json::json!([e(d('a'), "arm64"), e(d('b'), "amd64")]));
        assert_eq!(
            select_platform(&multi, "x").unwrap().digest().to_string(),
            d('b')
        );
        let arm_only = idx(serde_json::json!([e(d('a'), "arm64")]));
        match select_platform(&arm_only, "x") {
            Err(err @ ImageError::UnsupportedPlatform { .. }) => {
                assert!(err.to_string().contains("linux/arm64"), "{err}")
            }
            other => panic!("{other:?}"),
        }
        let bare =
            idx(serde_json::json!([{"mediaType": OCI_MANIFEST, "digest": d('c'), "size": 1}]));
        assert_eq!(
            select_platform(&bare, "x").unwrap().digest().to_string(),
            d('c')
        );
    }
}
