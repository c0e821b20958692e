//! The image store: metadata, pulls (shared between concurrent callers), imports, pushes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{io_ctx, ImageError};
use crate::layout::{self, digest_hex, Blobs, Staged};
use crate::reference::ImageRef;
use crate::registry::{self, Registries};
use crate::unpack;

/// Manifest media types we ask registries for.
const ACCEPTED_MANIFESTS: &[&str] = &[
    layout::OCI_MANIFEST,
    layout::DOCKER_MANIFEST,
    layout::OCI_INDEX,
    layout::DOCKER_LIST,
];
/// Layers downloaded at once per pull.
const PARALLEL_DOWNLOADS: usize = 3;
/// Size of one upload request when pushing a blob.
const PUSH_CHUNK: usize = 8 << 20;

/// Where the store lives and how it reaches registries.
#[derive(Clone, Debug, Default)]
pub struct StoreConfig {
    /// Store directory (created if missing).
    pub root: PathBuf,
    /// `host[:port]` registries spoken to over plain HTTP. Loopback registries (127.0.0.0/8,
    /// `localhost`, `[::1]`) always are, like Docker does.
    pub insecure_registries: Vec<String>,
    /// registry (`docker.io`, `ghcr.io`, `host:port`) → (username, password).
    pub credentials: HashMap<String, (String, String)>,
    /// A docker-style `config.json` whose `auths` are read too (entries in `credentials` win).
    pub docker_config: Option<PathBuf>,
}

impl StoreConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreConfig {
            root: root.into(),
            ..Default::default()
        }
    }
}

/// What a sandbox needs from the image config. ENTRYPOINT/CMD are informative: sandboxes do
/// not run them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRuntimeConfig {
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// A stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Normalised reference (`docker.io/library/busybox:1.36.1`), or the digest when the image is
    /// only known by digest.
    pub reference: String,
    /// Manifest digest `sha256:…` (of the linux/amd64 manifest when pulled through an index).
    pub digest: String,
    /// Read-only unpacked tree: use it as an overlayfs lower dir, never write into it.
    pub rootfs: PathBuf,
    pub config: ImageRuntimeConfig,
    /// Apparent size of the unpacked tree (hard links counted once).
    pub size_bytes: u64,
    /// When this store got the image.
    pub created_at: DateTime<Utc>,
}

/// Progress of a pull, sent to every caller sharing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullProgress {
    Resolving,
    Layer {
        digest: String,
        downloaded: u64,
        total: u64,
    },
    Unpacking {
        digest: String,
    },
    Done {
        digest: String,
    },
}

/// Counters, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Pulls that actually went to a registry (shared pulls count once).
    pub registry_pulls: u64,
    /// Blobs (configs and layers) downloaded from registries.
    pub blob_downloads: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LayerRecord {
    digest: String,
    media_type: String,
    size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ImageRecord {
    digest: String,
    /// Digest of the index it was selected from, when pulled through one.
    index_digest: Option<String>,
    manifest_media_type: String,
    config_digest: String,
    layers: Vec<LayerRecord>,
    config: ImageRuntimeConfig,
    size_bytes: u64,
    created_at: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    refs: BTreeMap<String, String>,
    images: HashMap<String, ImageRecord>,
}

type SharedPull = Shared<BoxFuture<'static, Result<ImageInfo, ImageError>>>;

struct InFlight {
    fut: SharedPull,
    progress: Progress,
}

/// Fans progress out to every caller sharing one pull.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<Vec<UnboundedSender<PullProgress>>>>);

impl Progress {
    fn send(&self, p: PullProgress) {
        let mut subs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.send(p.clone()).is_ok());
    }
    fn add(&self, s: UnboundedSender<PullProgress>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

struct InFlightGuard {
    store: ImageStore,
    key: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.store
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

struct Inner {
    root: PathBuf,
    blobs: Blobs,
    registries: Registries,
    state: RwLock<State>,
    /// Serialises metadata file writes.
    persist: Mutex<()>,
    inflight: Mutex<HashMap<String, InFlight>>,
    registry_pulls: AtomicU64,
    blob_downloads: AtomicU64,
}

/// The image store. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `cfg.root`, discarding anything a crash left in
    /// `tmp/` and unpacked trees whose metadata was never written.
    pub fn open(cfg: StoreConfig) -> Result<Self, ImageError> {
        let root = cfg.root.clone();
        for d in ["blobs/sha256", "rootfs", "images", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_ctx(|| format!("create {}", p.display())))?;
        }
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_ctx(|| format!("read {}", tmp.display())))? {
            let p = e
                .map_err(io_ctx(|| format!("read {}", tmp.display())))?
                .path();
            let r = if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(io_ctx(|| format!("clean {}", p.display())))?;
        }

        let mut state = State::default();
        let images_dir = root.join("images");
        for e in fs::read_dir(&images_dir)
            .map_err(io_ctx(|| format!("read {}", images_dir.display())))?
        {
            let p = e
                .map_err(io_ctx(|| format!("read {}", images_dir.display())))?
                .path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let rec: ImageRecord = match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "dropping unreadable image record");
                    let _ = fs::remove_file(&p);
                    continue;
                }
            };
            let Ok(hex) = digest_hex(&rec.digest) else {
                continue;
            };
            if !root.join("rootfs").join(hex).is_dir() {
                tracing::warn!(digest = %rec.digest, "image record without rootfs; dropping it");
                let _ = fs::remove_file(&p);
                continue;
            }
            state.images.insert(rec.digest.clone(), rec);
        }
        let rootfs_dir = root.join("rootfs");
        for e in fs::read_dir(&rootfs_dir)
            .map_err(io_ctx(|| format!("read {}", rootfs_dir.display())))?
        {
            let e = e.map_err(io_ctx(|| format!("read {}", rootfs_dir.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !state.images.contains_key(&format!("sha256:{name}")) {
                tracing::info!(rootfs = %name, "removing unpacked tree left by an interrupted pull");
                fs::remove_dir_all(e.path())
                    .map_err(io_ctx(|| format!("remove {}", e.path().display())))?;
            }
        }
        let refs_path = root.join("refs.json");
        if refs_path.exists() {
            let b =
                fs::read(&refs_path).map_err(io_ctx(|| format!("read {}", refs_path.display())))?;
            let refs: BTreeMap<String, String> =
                serde_json::from_slice(&b).map_err(|e| ImageError::Metadata {
                    path: refs_path.display().to_string(),
                    source: Arc::new(e),
                })?;
            state.refs = refs
                .into_iter()
                .filter(|(_, d)| state.images.contains_key(d))
                .collect();
        }

        let mut credentials = match &cfg.docker_config {
            Some(p) => registry::load_docker_config(p)?,
            None => HashMap::new(),
        };
        credentials.extend(cfg.credentials);
        Ok(ImageStore {
            inner: Arc::new(Inner {
                blobs: Blobs::new(root.join("blobs/sha256"), tmp),
                root,
                registries: Registries::new(cfg.insecure_registries, credentials),
                state: RwLock::new(state),
                persist: Mutex::new(()),
                inflight: Mutex::new(HashMap::new()),
                registry_pulls: AtomicU64::new(0),
                blob_downloads: AtomicU64::new(0),
            }),
        })
    }

    /// Parses a reference, refusing unpinned ones (see [`ImageRef::parse`]).
    pub fn parse_reference(r: &str) -> Result<ImageRef, ImageError> {
        ImageRef::parse(r)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            registry_pulls: self.inner.registry_pulls.load(Ordering::Relaxed),
            blob_downloads: self.inner.blob_downloads.load(Ordering::Relaxed),
        }
    }

    /// The locally stored image for `r` (by reference, or by manifest / index digest).
    pub fn get(&self, r: &ImageRef) -> Result<Option<ImageInfo>, ImageError> {
        let st = self.read_state();
        let key = r.to_string();
        let digest = st.refs.get(&key).cloned().or_else(|| {
            let d = r.digest()?;
            st.images
                .values()
                .find(|rec| rec.digest == d || rec.index_digest.as_deref() == Some(d))
                .map(|rec| rec.digest.clone())
        });
        Ok(digest
            .and_then(|d| st.images.get(&d))
            .map(|rec| self.info(key, rec)))
    }

    /// Every stored image, one entry per reference (an image known by no reference is listed
    /// under its digest).
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let st = self.read_state();
        let mut out: Vec<ImageInfo> = Vec::new();
        let mut referenced = HashSet::new();
        for (r, d) in &st.refs {
            if let Some(rec) = st.images.get(d) {
                referenced.insert(d.clone());
                out.push(self.info(r.clone(), rec));
            }
        }
        for (d, rec) in &st.images {
            if !referenced.contains(d) {
                out.push(self.info(d.clone(), rec));
            }
        }
        Ok(out)
    }

    /// The local image, or a pull.
    pub async fn ensure(&self, r: &ImageRef) -> Result<ImageInfo, ImageError> {
        match self.get(r)? {
            Some(i) => Ok(i),
            None => self.pull(r, None).await,
        }
    }

    /// Pulls `r` from its registry. Concurrent pulls of one reference share one download; each
    /// caller's `progress` receives the shared progress.
    pub async fn pull(
        &self,
        r: &ImageRef,
        progress: Option<UnboundedSender<PullProgress>>,
    ) -> Result<ImageInfo, ImageError> {
        let key = r.to_string();
        let fut = {
            let mut map = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(f) = map.get(&key) {
                if let Some(tx) = progress {
                    f.progress.add(tx);
                }
                tracing::debug!(reference = %key, "joining a pull in flight");
                f.fut.clone()
            } else {
                let prog = Progress::default();
                if let Some(tx) = progress {
                    prog.add(tx);
                }
                let this = self.clone();
                let (r2, key2, prog2) = (r.clone(), key.clone(), prog.clone());
                // A task, so the pull finishes (for the others) even if the first caller goes away.
                let task = tokio::spawn(async move {
                    // Leaves the in-flight map however the pull ends (even by panic), so a
                    // failed pull is never joined by later callers.
                    let _done = InFlightGuard {
                        store: this.clone(),
                        key: key2,
                    };
                    this.do_pull(&r2, &prog2).await
                });
                let fut: SharedPull = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(ImageError::Internal(format!("pull task failed: {e}")))
                    })
                }
                .boxed()
                .shared();
                map.insert(
                    key,
                    InFlight {
                        fut: fut.clone(),
                        progress: prog,
                    },
                );
                fut
            }
        };
        fut.await
    }

    async fn do_pull(&self, r: &ImageRef, progress: &Progress) -> Result<ImageInfo, ImageError> {
        let started = std::time::Instant::now();
        progress.send(PullProgress::Resolving);
        self.inner.registry_pulls.fetch_add(1, Ordering::Relaxed);
        let client = self.inner.registries.client(r);
        let auth = self.inner.registries.auth(r);
        client
            .store_auth_if_needed(r.as_oci().resolve_registry(), &auth)
            .await;

        let (bytes, digest) = client
            .pull_manifest_raw(r.as_oci(), &auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| registry::map_err(e, r))?;
        check_digest(&bytes, &digest, "manifest")?;
        let (manifest_bytes, manifest_digest, index_digest) =
            if layout::is_index(&layout::manifest_media_type(&bytes)?) {
                let idx = ImageIndex::from_reader(&bytes[..])
                    .map_err(|e| ImageError::invalid("image index", e))?;
                let entry = layout::select_platform(&idx, &r.to_string())?;
                let pr = r.with_digest(entry.digest().as_ref());
                let (b, d) = client
                    .pull_manifest_raw(pr.as_oci(), &auth, ACCEPTED_MANIFESTS)
                    .await
                    .map_err(|e| registry::map_err(e, r))?;
                check_digest(&b, &d, "manifest")?;
                if layout::is_index(&layout::manifest_media_type(&b)?) {
                    return Err(ImageError::invalid(
                        "image index",
                        "an index entry is itself an index",
                    ));
                }
                (b.to_vec(), d, Some(digest))
            } else {
                (bytes.to_vec(), digest, None)
            };

        // Bound first: in an `if let` scrutinee the read guard would live through the body, and
        // `add_ref` takes the write lock (a deadlock when the image is already stored).
        let stored = self.read_state().images.get(&manifest_digest).cloned();
        if let Some(rec) = stored {
            self.add_ref(&r.to_string(), &rec.digest)?;
            progress.send(PullProgress::Done {
                digest: rec.digest.clone(),
            });
            return Ok(self.info(r.to_string(), &rec));
        }

        let manifest = ImageManifest::from_reader(&manifest_bytes[..])
            .map_err(|e| ImageError::invalid("manifest", e))?;
        check_layer_media_types(&manifest, &r.to_string())?;
        let blobs = &self.inner.blobs;
        let config_digest = manifest.config().digest().to_string();
        digest_hex(&config_digest)?;
        if !blobs.contains(&config_digest) {
            self.inner.blob_downloads.fetch_add(1, Ordering::Relaxed);
            let mut buf = Vec::new();
            client
                .pull_blob(r.as_oci(), config_digest.as_str(), &mut buf)
                .await
                .map_err(|e| registry::map_err(e, r))?;
            blobs.put_bytes(&buf, Some(&config_digest))?;
        }
        let wanted: Vec<(String, u64)> = manifest
            .layers()
            .iter()
            .map(|l| (l.digest().to_string(), l.size()))
            .collect();
        futures::stream::iter(wanted)
            .map(|(digest, size)| {
                self.download_blob(&client, r, digest, size, progress)
                    .boxed()
            })
            .buffer_unordered(PARALLEL_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        blobs.put_bytes(&manifest_bytes, Some(&manifest_digest))?;
        let config_bytes = blobs.read(&config_digest)?;
        let staged = Staged {
            manifest_bytes,
            manifest_digest,
            config_bytes,
        };
        let info = self
            .commit(staged, index_digest, &r.to_string(), progress)
            .await?;
        tracing::info!(reference = %r, digest = %info.digest, ms = started.elapsed().as_millis() as u64, "pulled image");
        Ok(info)
    }

    /// Streams one blob into the blob store, verifying its sha256 and size on the way.
    async fn download_blob(
        &self,
        client: &oci_client::Client,
        r: &ImageRef,
        digest: String,
        size: u64,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let blobs = &self.inner.blobs;
        digest_hex(&digest)?;
        if blobs.contains(&digest) {
            progress.send(PullProgress::Layer {
                digest,
                downloaded: size,
                total: size,
            });
            return Ok(());
        }
        self.inner.blob_downloads.fetch_add(1, Ordering::Relaxed);
        let mut stream = client
            .pull_blob_stream(r.as_oci(), digest.as_str())
            .await
            .map_err(|e| registry::map_err(e, r))?;
        let tmp = tempfile::NamedTempFile::new_in(blobs.tmp_dir())
            .map_err(io_ctx(|| "create temp blob".into()))?;
        let std_file = tmp.reopen().map_err(io_ctx(|| "open temp blob".into()))?;
        let mut file =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(std_file));
        let mut hasher = Sha256::new();
        let mut downloaded = 0u64;
        let mut reported = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| registry::map_io(e, r))?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io_ctx(|| "write temp blob".into()))?;
            downloaded += chunk.len() as u64;
            if downloaded - reported >= 1 << 20 {
                reported = downloaded;
                progress.send(PullProgress::Layer {
                    digest: digest.clone(),
                    downloaded,
                    total: size,
                });
            }
        }
        file.flush()
            .await
            .map_err(io_ctx(|| "write temp blob".into()))?;
        drop(file);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest || downloaded != size {
            return Err(ImageError::DigestMismatch {
                what: format!("layer of {r} ({downloaded} of {size} bytes)"),
                expected: digest,
                actual,
            });
        }
        progress.send(PullProgress::Layer {
            digest: digest.clone(),
            downloaded,
            total: size,
        });
        let blobs = blobs.clone();
        tokio::task::spawn_blocking(move || blobs.persist(tmp, &digest))
            .await
            .map_err(|e| ImageError::Internal(format!("blob task: {e}")))?
    }

    /// Unpacks a staged image (all blobs present) into `rootfs/<hex>`, then records it.
    async fn commit(
        &self,
        staged: Staged,
        index_digest: Option<String>,
        reference: &str,
        progress: &Progress,
    ) -> Result<ImageInfo, ImageError> {
        let manifest = ImageManifest::from_reader(&staged.manifest_bytes[..])
            .map_err(|e| ImageError::invalid("manifest", e))?;
        check_layer_media_types(&manifest, reference)?;
        let config = ImageConfiguration::from_reader(&staged.config_bytes[..])
            .map_err(|e| ImageError::invalid("image config", e))?;
        {
            use oci_spec::image::{Arch, Os};
            if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
                return Err(ImageError::UnsupportedPlatform {
                    reference: reference.to_string(),
                    detail: format!("the image is {}/{}", config.os(), config.architecture()),
                });
            }
        }
        let layers: Vec<LayerRecord> = manifest
            .layers()
            .iter()
            .map(|l| LayerRecord {
                digest: l.digest().to_string(),
                media_type: l.media_type().to_string(),
                size: l.size(),
            })
            .collect();
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != layers.len() {
            return Err(ImageError::invalid(
                "image config",
                format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
            ));
        }
        let hex = digest_hex(&staged.manifest_digest)?.to_string();
        let final_dir = self.inner.root.join("rootfs").join(&hex);
        let blobs = self.inner.blobs.clone();
        let layer_list = layers.clone();
        let prog = progress.clone();
        let size_bytes = tokio::task::spawn_blocking(move || -> Result<u64, ImageError> {
            if final_dir.is_dir() {
                return tree_size(&final_dir);
            }
            let work = tempfile::Builder::new()
                .prefix("unpack-")
                .tempdir_in(blobs.tmp_dir())
                .map_err(io_ctx(|| "create unpack dir".into()))?;
            let tree = work.path().join("rootfs");
            fs::create_dir(&tree).map_err(io_ctx(|| format!("create {}", tree.display())))?;
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&tree, fs::Permissions::from_mode(0o755))
                    .map_err(io_ctx(|| format!("chmod {}", tree.display())))?;
            }
            for (l, diff_id) in layer_list.iter().zip(diff_ids.iter()) {
                prog.send(PullProgress::Unpacking {
                    digest: l.digest.clone(),
                });
                unpack::apply_layer_file(&tree, &blobs.path(&l.digest)?, Some(diff_id))?;
            }
            let size = tree_size(&tree)?;
            match fs::rename(&tree, &final_dir) {
                Ok(()) => Ok(size),
                // Another pull of the same manifest (under another reference) won the race.
                Err(_) if final_dir.is_dir() => Ok(size),
                Err(e) => Err(ImageError::io(
                    format!("rename into {}", final_dir.display()),
                    e,
                )),
            }
        })
        .await
        .map_err(|e| ImageError::Internal(format!("unpack task: {e}")))??;

        let rec = ImageRecord {
            digest: staged.manifest_digest.clone(),
            index_digest,
            manifest_media_type: layout::manifest_media_type(&staged.manifest_bytes)?,
            config_digest: manifest.config().digest().to_string(),
            layers,
            config: runtime_config(&config),
            size_bytes,
            created_at: Utc::now(),
        };
        self.write_record(&rec)?;
        self.write_state(|st| {
            st.images.insert(rec.digest.clone(), rec.clone());
            st.refs.insert(reference.to_string(), rec.digest.clone());
        })?;
        progress.send(PullProgress::Done {
            digest: rec.digest.clone(),
        });
        Ok(self.info(reference.to_string(), &rec))
    }

    /// Imports an OCI layout directory, an OCI archive (tar of a layout, optionally gzip/zstd),
    /// or a `docker save` tar, and stores it under `tag` (a pinned reference).
    pub async fn import(&self, path: &Path, tag: &str) -> Result<ImageInfo, ImageError> {
        let r = ImageRef::parse(tag)?;
        let blobs = self.inner.blobs.clone();
        let p = path.to_path_buf();
        let staged = tokio::task::spawn_blocking(move || layout::stage_import(&p, &blobs))
            .await
            .map_err(|e| ImageError::Internal(format!("import task: {e}")))??;
        // Bound first: in an `if let` scrutinee the read guard would live through the body, and
        // `add_ref` takes the write lock (a deadlock when the image is already stored).
        let stored = self
            .read_state()
            .images
            .get(&staged.manifest_digest)
            .cloned();
        if let Some(rec) = stored {
            self.add_ref(&r.to_string(), &rec.digest)?;
            return Ok(self.info(r.to_string(), &rec));
        }
        let info = self
            .commit(staged, None, &r.to_string(), &Progress::default())
            .await?;
        tracing::info!(reference = %r, digest = %info.digest, source = %path.display(), "imported image");
        Ok(info)
    }

    /// Pushes the stored image `local` (reference or digest) to `target`; returns the manifest
    /// digest (the same as the local one: the manifest bytes are pushed unchanged).
    pub async fn push(&self, local: &str, target: &ImageRef) -> Result<String, ImageError> {
        let rec = self.find_record(local)?;
        if let Some(d) = target.digest() {
            if d != rec.digest {
                return Err(ImageError::InvalidReference {
                    reference: target.to_string(),
                    reason: format!("its digest differs from the local image's {}", rec.digest),
                });
            }
        }
        let client = self.inner.registries.client(target);
        let auth = self.inner.registries.auth(target);
        client
            .store_auth_if_needed(target.as_oci().resolve_registry(), &auth)
            .await;
        let mut blobs_to_push: Vec<String> = vec![rec.config_digest.clone()];
        blobs_to_push.extend(rec.layers.iter().map(|l| l.digest.clone()));
        for digest in blobs_to_push {
            if client
                .blob_exists(target.as_oci(), &digest)
                .await
                .map_err(|e| registry::map_err(e, target))?
            {
                continue;
            }
            let path = self.inner.blobs.path(&digest)?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(io_ctx(|| format!("open {}", path.display())))?;
            let size = file
                .metadata()
                .await
                .map_err(io_ctx(|| format!("stat {}", path.display())))?
                .len();
            client
                .push_blob_stream(target.as_oci(), file_chunks(file), &digest, Some(size))
                .await
                .map_err(|e| registry::map_err(e, target))?;
        }
        let manifest = self.inner.blobs.read(&rec.digest)?;
        let ct = http::HeaderValue::from_str(&rec.manifest_media_type)
            .map_err(|e| ImageError::invalid("manifest media type", e))?;
        client
            .push_manifest_raw(target.as_oci(), manifest, ct)
            .await
            .map_err(|e| registry::map_err(e, target))?;
        tracing::info!(local, target = %target, digest = %rec.digest, "pushed image");
        Ok(rec.digest)
    }

    /// Removes a reference (or, given a digest, the image and all its references). The unpacked
    /// tree and blobs go once no reference is left. The caller must ensure no sandbox still uses
    /// the tree as a lower dir.
    pub async fn remove(&self, r: &str) -> Result<(), ImageError> {
        let r = r.trim();
        let (digest, drop_all) = if digest_hex(r).is_ok() {
            (r.to_string(), true)
        } else {
            let parsed = ImageRef::parse(r)?;
            let st = self.read_state();
            match st.refs.get(&parsed.to_string()) {
                Some(d) => (d.clone(), false),
                None => match parsed.digest() {
                    Some(d) if st.images.contains_key(d) => (d.to_string(), true),
                    _ => {
                        return Err(ImageError::NotFound {
                            reference: r.to_string(),
                            detail: "not in the local store".into(),
                        })
                    }
                },
            }
        };
        let key = if drop_all {
            None
        } else {
            ImageRef::parse(r).ok().map(|p| p.to_string())
        };
        let mut gone: Option<ImageRecord> = None;
        self.write_state(|st| {
            match &key {
                Some(k) => {
                    st.refs.remove(k);
                }
                None => st.refs.retain(|_, d| *d != digest),
            }
            if !st.refs.values().any(|d| *d == digest) {
                gone = st.images.remove(&digest);
            }
        })?;
        if gone.is_none() && drop_all {
            // Unknown digest.
            return Err(ImageError::NotFound {
                reference: r.to_string(),
                detail: "not in the local store".into(),
            });
        }
        let Some(rec) = gone else { return Ok(()) };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.delete_image_files(&rec))
            .await
            .map_err(|e| ImageError::Internal(format!("remove task: {e}")))?
    }

    fn delete_image_files(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let hex = digest_hex(&rec.digest)?;
        let _guard = self.inner.persist.lock().unwrap_or_else(|e| e.into_inner());
        let rp = self.inner.root.join("images").join(format!("{hex}.json"));
        match fs::remove_file(&rp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ImageError::io(format!("remove {}", rp.display()), e))
            }
            _ => {}
        }
        // Rename first so a crash mid-delete leaves nothing half-visible under rootfs/.
        let dir = self.inner.root.join("rootfs").join(hex);
        if dir.exists() {
            let trash = self
                .inner
                .blobs
                .tmp_dir()
                .join(format!("trash-{hex}-{}", uuid::Uuid::new_v4()));
            fs::rename(&dir, &trash).map_err(io_ctx(|| format!("move {}", dir.display())))?;
            fs::remove_dir_all(&trash).map_err(io_ctx(|| format!("remove {}", trash.display())))?;
        }
        // Blobs no remaining image uses.
        let st = self.read_state();
        let mut keep = HashSet::new();
        for r in st.images.values() {
            keep.insert(r.digest.clone());
            keep.insert(r.config_digest.clone());
            keep.extend(r.layers.iter().map(|l| l.digest.clone()));
        }
        drop(st);
        for b in self.inner.blobs.list()? {
            if !keep.contains(&b) {
                self.inner.blobs.remove(&b)?;
            }
        }
        Ok(())
    }

    fn find_record(&self, local: &str) -> Result<ImageRecord, ImageError> {
        let st = self.read_state();
        let local = local.trim();
        let digest = if digest_hex(local).is_ok() {
            Some(local.to_string())
        } else {
            let r = ImageRef::parse(local)?;
            st.refs
                .get(&r.to_string())
                .cloned()
                .or_else(|| r.digest().map(str::to_string))
        };
        digest
            .and_then(|d| st.images.get(&d).cloned())
            .ok_or_else(|| ImageError::NotFound {
                reference: local.to_string(),
                detail: "not in the local store".into(),
            })
    }

    fn info(&self, reference: String, rec: &ImageRecord) -> ImageInfo {
        let hex = rec.digest.strip_prefix("sha256:").unwrap_or(&rec.digest);
        ImageInfo {
            reference,
            digest: rec.digest.clone(),
            rootfs: self.inner.root.join("rootfs").join(hex),
            config: rec.config.clone(),
            size_bytes: rec.size_bytes,
            created_at: rec.created_at,
        }
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the state and persists `refs.json` atomically.
    fn write_state(&self, f: impl FnOnce(&mut State)) -> Result<(), ImageError> {
        let _guard = self.inner.persist.lock().unwrap_or_else(|e| e.into_inner());
        let refs = {
            let mut st = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
            f(&mut st);
            st.refs.clone()
        };
        let bytes =
            serde_json::to_vec_pretty(&refs).map_err(|e| ImageError::Internal(e.to_string()))?;
        atomic_write(
            &self.inner.root.join("refs.json"),
            &bytes,
            self.inner.blobs.tmp_dir(),
        )
    }

    fn write_record(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let _guard = self.inner.persist.lock().unwrap_or_else(|e| e.into_inner());
        let hex = digest_hex(&rec.digest)?;
        let bytes =
            serde_json::to_vec_pretty(rec).map_err(|e| ImageError::Internal(e.to_string()))?;
        atomic_write(
            &self.inner.root.join("images").join(format!("{hex}.json")),
            &bytes,
            self.inner.blobs.tmp_dir(),
        )
    }

    fn add_ref(&self, reference: &str, digest: &str) -> Result<(), ImageError> {
        self.write_state(|st| {
            st.refs.insert(reference.to_string(), digest.to_string());
        })
    }
}

/// Refuses layers we cannot unpack (foreign/non-distributable layers, artifacts such as wasm).
fn check_layer_media_types(manifest: &ImageManifest, reference: &str) -> Result<(), ImageError> {
    for l in manifest.layers() {
        let mt = l.media_type().to_string();
        if !unpack::is_supported_layer_media_type(&mt) {
            return Err(ImageError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: mt,
            });
        }
    }
    Ok(())
}

fn check_digest(bytes: &[u8], digest: &str, what: &str) -> Result<(), ImageError> {
    let actual = layout::sha256_of(bytes);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: what.into(),
            expected: digest.into(),
            actual,
        });
    }
    Ok(())
}

fn atomic_write(path: &Path, bytes: &[u8], tmp_dir: &Path) -> Result<(), ImageError> {
    use std::io::Write;
    let mut f =
        tempfile::NamedTempFile::new_in(tmp_dir).map_err(io_ctx(|| "create temp file".into()))?;
    f.write_all(bytes)
        .map_err(io_ctx(|| format!("write {}", path.display())))?;
    f.as_file()
        .sync_all()
        .map_err(io_ctx(|| format!("sync {}", path.display())))?;
    f.persist(path)
        .map_err(|e| ImageError::io(format!("replace {}", path.display()), e.error))?;
    Ok(())
}

fn runtime_config(c: &ImageConfiguration) -> ImageRuntimeConfig {
    let Some(cfg) = c.config() else {
        return ImageRuntimeConfig::default();
    };
    ImageRuntimeConfig {
        env: cfg.env().clone().unwrap_or_default(),
        working_dir: cfg.working_dir().clone().filter(|s| !s.is_empty()),
        user: cfg.user().clone().filter(|s| !s.is_empty()),
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        labels: cfg
            .labels()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        stop_signal: cfg.stop_signal().clone(),
    }
}

/// Apparent size of a tree, each inode counted once.
fn tree_size(root: &Path) -> Result<u64, ImageError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_ctx(|| format!("read {}", d.display())))? {
            let e = e.map_err(io_ctx(|| format!("read {}", d.display())))?;
            let m = e
                .metadata()
                .map_err(io_ctx(|| format!("stat {}", e.path().display())))?;
            if m.is_dir() {
                stack.push(e.path());
            } else if seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    Ok(total)
}

/// A file as a stream of `PUSH_CHUNK`-sized pieces (oci-client sends one request per item).
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<bytes::Bytes, oci_client::errors::OciDistributionError>>
       + Send
       + 'static {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = bytes::BytesMut::with_capacity(PUSH_CHUNK);
        while buf.len() < PUSH_CHUNK {
            let n = file.read_buf(&mut buf).await?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            Ok(None)
        } else {
            Ok(Some((buf.freeze(), file)))
        }
    })
}
