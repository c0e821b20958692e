//! The built-in desktop image: what a create that names no image gets when the runner was started
//! without `--default-image`, and what the reference `vivarium/desktop` (no tag) always means.
//!
//! The recipe (`images/desktop/`: build.sh, its package list and the files it copies in) is
//! compiled into the runner, so an installed `vivarium` needs no source checkout. On first need the
//! runner writes the recipe to `<cache>/recipe-<hash>/`, runs its build.sh (mmdebstrap; a cache hit
//! under `<cache>/desktop-<hash>` when the quick start or the test suite already built it), imports
//! the OCI layout as `vivarium/desktop:<hash>` and hands that reference to every waiting create.
//! Progress goes to the log (each line of build.sh) and to `GET /v1/images/default`.
//!
//! The preparation runs in a task of its own: a client that gives up does not cancel the build
//! for the others, and concurrent creates share one build. A failed preparation is retried by the
//! next create.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures::future::{BoxFuture, FutureExt, Shared};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use vivarium_api::{DefaultImageSource, DefaultImageState, DefaultImageStatus};
use vivarium_image::ImageStore;

/// The reference that always names the built-in desktop image.
pub const BUILTIN_NAME: &str = "vivarium/desktop";
/// Where build.sh keeps built layouts unless `VIVARIUM_CACHE` says otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/vivarium";

/// The recipe, as files: (name, contents, executable).
const RECIPE: [(&str, &str, bool); 4] = [
    (
        "build.sh",
        include_str!("../../../images/desktop/build.sh"),
        true,
    ),
    (
        "packages.txt",
        include_str!("../../../images/desktop/packages.txt"),
        false,
    ),
    (
        "chromium-policy.json",
        include_str!("../../../images/desktop/chromium-policy.json"),
        false,
    ),
    (
        "xterm-resources",
        include_str!("../../../images/desktop/xterm-resources"),
        false,
    ),
];

/// The parameters build.sh hashes besides its files (its defaults; the runner clears the
/// environment variables that would change them, so the hash is a function of the recipe alone).
const BUILD_PARAMS: &str = "bookworm http://deb.debian.org/debian amd64 1700000000\n";
/// Environment variables of build.sh that would make the image differ from the recipe.
const BUILD_ENV_OVERRIDES: [&str; 3] = [
    "VIVARIUM_DESKTOP_SUITE",
    "VIVARIUM_DESKTOP_MIRROR",
    "SOURCE_DATE_EPOCH",
];

/// True for references that mean the built-in desktop image.
pub fn is_builtin(reference: &str) -> bool {
    reference == BUILTIN_NAME
}

/// build.sh's hash of its inputs, computed the same way (first 16 hex digits of a SHA-256 over
/// the recipe files in build.sh's order, then the build parameters).
pub fn inputs_hash() -> String {
    let mut h = Sha256::new();
    for (_, contents, _) in RECIPE {
        h.update(contents.as_bytes());
    }
    h.update(BUILD_PARAMS.as_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

/// The reference the built-in image is stored under.
pub fn builtin_reference() -> String {
    format!("{BUILTIN_NAME}:{}", inputs_hash())
}

type Preparation = Shared<BoxFuture<'static, Result<String, String>>>;

pub struct DesktopImage {
    cache_root: PathBuf,
    /// `--default-image`, when the runner was given one.
    configured: Option<String>,
    status: Arc<Mutex<DefaultImageStatus>>,
    inflight: Mutex<Option<Preparation>>,
}

impl DesktopImage {
    pub fn new(cache_root: PathBuf, configured: Option<String>) -> Self {
        let status = DefaultImageStatus {
            reference: configured.clone().unwrap_or_else(builtin_reference),
            source: if configured.is_some() {
                DefaultImageSource::Configured
            } else {
                DefaultImageSource::Builtin
            },
            state: if configured.is_some() {
                DefaultImageState::Ready
            } else {
                DefaultImageState::NotPrepared
            },
            message: None,
            started_at: None,
            finished_at: None,
        };
        Self {
            cache_root,
            configured,
            status: Arc::new(Mutex::new(status)),
            inflight: Mutex::new(None),
        }
    }

    /// The cache directory named by `VIVARIUM_CACHE`, or [`DEFAULT_CACHE`].
    pub fn default_cache_root() -> PathBuf {
        std::env::var_os("VIVARIUM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
    }

    /// The image a create that names none gets (before any preparation).
    pub fn default_reference(&self) -> String {
        self.configured
            .clone()
            .unwrap_or_else(|| BUILTIN_NAME.to_string())
    }

    pub fn status(&self, images: &ImageStore) -> DefaultImageStatus {
        let mut s = self.lock_status().clone();
        if s.source == DefaultImageSource::Builtin
            && s.state == DefaultImageState::NotPrepared
            && stored(images, &s.reference)
        {
            s.state = DefaultImageState::Ready;
        }
        s
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, DefaultImageStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored reference of the built-in desktop image, building and importing it first if
    /// needed. Concurrent callers share one preparation.
    pub async fn prepare(&self, images: &ImageStore) -> Result<String, String> {
        let reference = builtin_reference();
        if stored(images, &reference) {
            return Ok(reference);
        }
        let prep = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.as_ref() {
                Some(p) => p.clone(),
                None => {
                    let status = self.status.clone();
                    let images = images.clone();
                    let cache = self.cache_root.clone();
                    let task = tokio::spawn(async move {
                        let result = build_and_import(&cache, &images, &status).await;
                        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                        s.finished_at = Some(Utc::now());
                        match &result {
                            Ok(r) => {
                                s.state = DefaultImageState::Ready;
                                s.reference = r.clone();
                                s.message = Some("ready".into());
                            }
                            Err(e) => {
                                s.state = DefaultImageState::Failed;
                                s.message = Some(e.clone());
                            }
                        }
                        result
                    });
                    let p: Preparation = async move {
                        task.await
                            .unwrap_or_else(|e| Err(format!("preparation task failed: {e}")))
                    }
                    .boxed()
                    .shared();
                    *inflight = Some(p.clone());
                    p
                }
            }
        };
        let result = prep.await;
        // The next caller after a failure starts over; after a success the store answers.
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        result
    }
}

fn stored(images: &ImageStore, reference: &str) -> bool {
    ImageStore::parse_reference(reference)
        .ok()
        .and_then(|r| images.get(&r).ok().flatten())
        .is_some()
}

fn set(status: &Mutex<DefaultImageStatus>, f: impl FnOnce(&mut DefaultImageStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Writes the recipe under `cache`, runs its build.sh and imports the layout it prints.
async fn build_and_import(
    cache: &Path,
    images: &ImageStore,
    status: &Mutex<DefaultImageStatus>,
) -> Result<String, String> {
    let hash = inputs_hash();
    set(status, |s| {
        s.state = DefaultImageState::Building;
        s.started_at = Some(Utc::now());
        s.finished_at = None;
        s.message = Some("building the desktop image (cached by its inputs)".into());
    });
    let recipe = cache.join(format!("recipe-{hash}"));
    write_recipe(&recipe)
        .map_err(|e| format!("writing the recipe to {}: {e}", recipe.display()))?;
    tracing::info!(recipe = %recipe.display(), "preparing the built-in desktop image");

    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(recipe.join("build.sh"))
        .env("VIVARIUM_CACHE", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in BUILD_ENV_OVERRIDES {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {}/build.sh: {e}", recipe.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut tail: Vec<String> = Vec::new();
    let mut lines = BufReader::new(stderr).lines();
    let out = tokio::spawn(async move {
        let mut last = String::new();
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            last = l;
        }
        last
    });
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "vivarium::desktop_image", "{line}");
        set(status, |s| s.message = Some(line.clone()));
        tail.push(line);
        if tail.len() > 5 {
            tail.remove(0);
        }
    }
    let exit = child
        .wait()
        .await
        .map_err(|e| format!("waiting for build.sh: {e}"))?;
    let layout = PathBuf::from(out.await.unwrap_or_default().trim());
    if !exit.success() {
        return Err(format!(
            "building the desktop image failed ({exit}): {}; run `vivarium doctor`",
            tail.join(" | ")
        ));
    }
    let built_hash = layout
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("desktop-"))
        .unwrap_or_default()
        .to_string();
    if built_hash != hash {
        tracing::warn!(expected = %hash, built = %built_hash, "build.sh hashed its inputs differently");
    }
    let reference = format!("{BUILTIN_NAME}:{hash}");
    set(status, |s| {
        s.state = DefaultImageState::Importing;
        s.message = Some(format!("importing {}", layout.display()));
    });
    tracing::info!(layout = %layout.display(), %reference, "importing the built-in desktop image");
    images
        .import(&layout, &reference)
        .await
        .map_err(|e| format!("importing {}: {e}", layout.display()))?;
    tracing::info!(%reference, "the built-in desktop image is ready");
    Ok(reference)
}

fn write_recipe(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, contents, exec) in RECIPE {
        let path = dir.join(name);
        // Written to a temporary name and renamed, so a concurrent reader never sees half a file.
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(if exec {
            0o755
        } else {
            0o644
        }))?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runner's hash must be build.sh's own, or a layout the test suite or quick start built
    /// would not be recognised (and `GET /v1/images/default` would name the wrong reference).
    #[test]
    fn inputs_hash_matches_build_sh() {
        let dir = tempfile::tempdir().unwrap();
        write_recipe(dir.path()).unwrap();
        // build.sh's own hashing line, run on the written recipe.
        let script = std::fs::read_to_string(dir.path().join("build.sh")).unwrap();
        let line = script
            .lines()
            .find(|l| l.starts_with("inputs_hash="))
            .expect("build.sh computes inputs_hash");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "here={:?}; suite=bookworm; mirror=http://deb.debian.org/debian; arch=amd64; SOURCE_DATE_EPOCH=1700000000; {line}; echo $inputs_hash",
                dir.path()
            ))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), inputs_hash());
        // And the defaults the runner assumes are build.sh's defaults.
        assert!(script.contains(r#"suite="${VIVARIUM_DESKTOP_SUITE:-bookworm}""#));
        assert!(
            script.contains(r#"mirror="${VIVARIUM_DESKTOP_MIRROR:-http://deb.debian.org/debian}""#)
        );
        assert!(script.contains(r#"SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}""#));
    }

    #[test]
    fn builtin_name_is_recognised() {
        assert!(is_builtin("vivarium/desktop"));
        assert!(!is_builtin("vivarium/desktop:abc"));
        assert!(builtin_reference().starts_with("vivarium/desktop:"));
        ImageStore::parse_reference(&builtin_reference()).unwrap();
    }
}
