//! End-to-end tests against Debian's docker-registry on loopback, with a busybox image built
//! from the host's busybox-static.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use vivarium_image::test_support::{self, TestRegistry};
use vivarium_image::{ImageError, ImageInfo, ImageRef, ImageStore, PullProgress, StoreConfig};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Builds the busybox image, imports it, pushes it to a fresh registry as `vivarium/busybox:1.35`.
async fn registry_with_busybox(tmp: &Path) -> (TestRegistry, ImageRef, String) {
    let reg = TestRegistry::start().expect("start docker-registry");
    let layout = test_support::build_busybox_layout(&tmp.join("layout")).expect("build layout");
    let store = ImageStore::open(StoreConfig::new(tmp.join("seed-store"))).expect("open");
    let info = store
        .import(&layout, "vivarium/busybox:1.35")
        .await
        .expect("import");
    let target = ImageRef::parse(&format!("{}/vivarium/busybox:1.35", reg.host())).unwrap();
    let pushed = store
        .push("vivarium/busybox:1.35", &target)
        .await
        .expect("push");
    assert_eq!(pushed, info.digest, "pushing keeps the manifest digest");
    (reg, target, info.digest)
}

fn assert_busybox_rootfs(info: &ImageInfo) {
    let root = &info.rootfs;
    assert!(
        root.join("bin/busybox").is_file(),
        "{} has no /bin/busybox",
        root.display()
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(
        !root.join(test_support::WHITED_OUT_FILE).exists(),
        "whiteout not applied"
    );
    assert!(
        !root.join(test_support::OPAQUE_HIDDEN_FILE).exists(),
        "opaque dir not applied"
    );
    assert!(root.join(test_support::OPAQUE_NEW_FILE).is_file());
    let tmp_mode = std::fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777;
    assert_eq!(tmp_mode, 0o1777);
    assert_eq!(
        std::fs::metadata(root.join("home/user")).unwrap().uid(),
        1000
    );
    assert_eq!(
        std::fs::metadata(root.join("etc/passwd")).unwrap().ino(),
        std::fs::metadata(root.join("etc/passwd-")).unwrap().ino()
    );
    assert!(
        info.config
            .env
            .iter()
            .any(|e| e == test_support::MARKER_ENV),
        "{:?}",
        info.config.env
    );
    assert_eq!(info.config.cmd, vec!["/bin/sh".to_string()]);
    assert!(info.size_bytes > 1_000_000, "size {}", info.size_bytes);
    // The tree is a working root filesystem.
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", "cat /etc/vivarium-release; id -u user"])
        .output()
        .expect("chroot");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vivarium busybox test image\n1000\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_push_remove_pull_by_tag_and_digest() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, tagged, digest) = registry_with_busybox(tmp.path()).await;

    let store = ImageStore::open(StoreConfig::new(tmp.path().join("store"))).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let info = store.pull(&tagged, Some(tx)).await.expect("pull by tag");
    assert_eq!(info.digest, digest);
    assert_eq!(info.reference, tagged.to_string());
    assert_busybox_rootfs(&info);
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert_eq!(events.first(), Some(&PullProgress::Resolving));
    assert!(events.iter().any(
        |e| matches!(e, PullProgress::Layer { downloaded, total, .. } if downloaded == total)
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, PullProgress::Unpacking { .. }))
            .count(),
        2
    );
    assert_eq!(
        events.last(),
        Some(&PullProgress::Done {
            digest: digest.clone()
        })
    );

    // Local hits: by reference, by digest; ensure does not go to the registry again.
    let pulls = store.stats().registry_pulls;
    let by_digest = tagged.with_digest(&digest);
    assert_eq!(
        store.get(&by_digest).unwrap().map(|i| i.digest),
        Some(digest.clone())
    );
    assert_eq!(store.ensure(&tagged).await.unwrap().digest, digest);
    assert_eq!(store.stats().registry_pulls, pulls);
    assert_eq!(store.list().unwrap().len(), 1);

    // Remove: tree, metadata and blobs go.
    let rootfs = info.rootfs.clone();
    store.remove(&tagged.to_string()).await.unwrap();
    assert!(!rootfs.exists());
    assert!(store.list().unwrap().is_empty());
    assert!(store.get(&tagged).unwrap().is_none());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    let err = store.remove(&tagged.to_string()).await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");

    // Pull by digest.
    let info = store.pull(&by_digest, None).await.expect("pull by digest");
    assert_eq!(info.digest, digest);
    assert_busybox_rootfs(&info);

    // A reopened store finds it again.
    drop(store);
    let store = ImageStore::open(StoreConfig::new(tmp.path().join("store"))).unwrap();
    assert_eq!(
        store.get(&by_digest).unwrap().map(|i| i.rootfs),
        Some(info.rootfs.clone())
    );
    // Remove by bare digest drops the image with all its references.
    store.remove(&digest).await.unwrap();
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_one_download() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, tagged, digest) = registry_with_busybox(tmp.path()).await;
    let store = ImageStore::open(StoreConfig::new(tmp.path().join("store"))).unwrap();
    let mut receivers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        receivers.push(rx);
        let (s, r) = (store.clone(), tagged.clone());
        tasks.push(tokio::spawn(async move { s.pull(&r, Some(tx)).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("pull").digest, digest);
    }
    let stats = store.stats();
    assert_eq!(stats.registry_pulls, 1, "{stats:?}");
    assert_eq!(
        stats.blob_downloads, 3,
        "config + 2 layers, once: {stats:?}"
    );
    // Every caller saw the shared pull finish.
    for mut rx in receivers {
        let mut last = None;
        while let Ok(e) = rx.try_recv() {
            last = Some(e);
        }
        assert_eq!(
            last,
            Some(PullProgress::Done {
                digest: digest.clone()
            })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_errors_are_classified() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _tagged, _) = registry_with_busybox(tmp.path()).await;
    let store = ImageStore::open(StoreConfig::new(tmp.path().join("store"))).unwrap();

    for missing in [
        format!("{}/vivarium/busybox:9.9.9", reg.host()),
        format!("{}/no/such-image:1.0", reg.host()),
    ] {
        let err = store
            .pull(&ImageRef::parse(&missing).unwrap(), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImageError::NotFound { .. }),
            "{missing}: {err:?}"
        );
        assert_eq!(err.http_status(), 404);
    }

    let closed = test_support::closed_loopback_address();
    let err = store
        .pull(
            &ImageRef::parse(&format!("{closed}/x/y:1.0")).unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.http_status(), 502);

    let err = ImageStore::parse_reference(&format!("{}/vivarium/busybox:latest", reg.host()))
        .unwrap_err();
    assert!(matches!(err, ImageError::UnpinnedTag { .. }), "{err:?}");
    assert!(err.to_string().contains("latest"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/rootfs"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_oci_archive_and_docker_save() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let layout = test_support::build_busybox_layout(&tmp.path().join("layout")).unwrap();
    let store = ImageStore::open(StoreConfig::new(tmp.path().join("store"))).unwrap();

    let archive =
        test_support::archive_layout(&layout, &tmp.path().join("busybox.oci.tar")).unwrap();
    let a = store
        .import(&archive, "local/busybox-archive:1")
        .await
        .expect("import oci-archive");
    assert_busybox_rootfs(&a);

    // A `docker save` tarball of the same image: uncompressed layers, manifest.json.
    let ds = tmp.path().join("docker-save");
    std::fs::create_dir_all(&ds).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(mdigest)).unwrap();
    let cdigest = manifest["config"]["digest"].as_str().unwrap();
    std::fs::write(ds.join("config.json"), blob(cdigest)).unwrap();
    let mut layer_names = Vec::new();
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let compressed = blob(l["digest"].as_str().unwrap());
        let mut raw = Vec::new();
        let mut rd: Box<dyn std::io::Read> = if l["mediaType"].as_str().unwrap().ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(&compressed[..]))
        } else {
            Box::new(zstd::stream::read::Decoder::new(&compressed[..]).unwrap())
        };
        std::io::Read::read_to_end(&mut rd, &mut raw).unwrap();
        std::fs::create_dir_all(ds.join(format!("l{i}"))).unwrap();
        std::fs::write(ds.join(format!("l{i}/layer.tar")), raw).unwrap();
        layer_names.push(format!("l{i}/layer.tar"));
    }
    std::fs::write(
        ds.join("manifest.json"),
        serde_json::to_vec(&serde_json::json!([{"Config": "config.json", "RepoTags": ["busybox:1.35"], "Layers": layer_names}])).unwrap(),
    )
    .unwrap();
    let tarball = test_support::archive_layout(&ds, &tmp.path().join("docker-save.tar")).unwrap();
    let d = store
        .import(&tarball, "local/busybox-docker:1")
        .await
        .expect("import docker save");
    assert_busybox_rootfs(&d);
    assert_ne!(
        d.digest, a.digest,
        "a synthesized manifest for uncompressed layers"
    );
    assert_eq!(store.list().unwrap().len(), 2);

    // Unpinned tags are refused on import too; garbage is an invalid image.
    assert!(matches!(
        store.import(&layout, "local/x:latest").await,
        Err(ImageError::UnpinnedTag { .. })
    ));
    std::fs::write(tmp.path().join("junk.tar"), b"not a tar at all").unwrap();
    let err = store
        .import(&tmp.path().join("junk.tar"), "local/junk:1")
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 400, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leftovers_are_invisible_and_cleaned() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let layout = test_support::build_busybox_layout(&tmp.path().join("layout")).unwrap();
    let root = tmp.path().join("store");
    let store = ImageStore::open(StoreConfig::new(&root)).unwrap();
    let info = store.import(&layout, "local/busybox:1").await.unwrap();
    drop(store);
    // What a crash mid-pull leaves: a half unpack in tmp/, and a renamed tree whose metadata
    // was never written.
    std::fs::create_dir_all(root.join("tmp/unpack-crashed/rootfs/bin")).unwrap();
    let orphan = root.join("rootfs").join("ab".repeat(32));
    std::fs::create_dir_all(orphan.join("etc")).unwrap();
    let store = ImageStore::open(StoreConfig::new(&root)).unwrap();
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert!(!orphan.exists());
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].digest, info.digest);
    assert!(info.rootfs.join("bin/busybox").is_file());
}

/// Measurement: pull + unpack of the busybox image from the loopback registry (median of 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_pull_and_unpack() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, tagged, _) = registry_with_busybox(tmp.path()).await;
    let store = ImageStore::open(StoreConfig::new(tmp.path().join("store"))).unwrap();
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let info = store.pull(&tagged, None).await.unwrap();
        times.push(t.elapsed());
        assert!(info.rootfs.join("bin/busybox").is_file());
        store.remove(&tagged.to_string()).await.unwrap();
    }
    times.sort();
    eprintln!(
        "MEASURE busybox pull+unpack from loopback registry: median {:?} (min {:?}, max {:?}, n={})",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
}

/// Importing an image the store already holds (a second tag, or the same import again) only adds
/// the reference. It once deadlocked: the state's read guard lived through `add_ref`'s write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_a_stored_image_again_adds_the_reference() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let layout = test_support::build_busybox_layout(&tmp.path().join("layout")).unwrap();
    let store = ImageStore::open(StoreConfig::new(tmp.path().join("store"))).unwrap();
    let first = store.import(&layout, "local/busybox:1").await.unwrap();
    // On its own task, so a deadlock fails the test after the timeout instead of hanging it.
    let (s, l) = (store.clone(), layout.clone());
    let again = tokio::spawn(async move {
        let second = s.import(&l, "local/busybox:again").await?;
        let same = s.import(&l, "local/busybox:1").await?;
        Ok::<_, ImageError>((second, same))
    });
    let (second, same) = tokio::time::timeout(Duration::from_secs(60), again)
        .await
        .expect("re-import finished (no deadlock)")
        .unwrap()
        .unwrap();
    assert_eq!(second.digest, first.digest);
    assert_eq!(same.digest, first.digest);
    assert_eq!(second.rootfs, first.rootfs);
    let refs: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert!(
        refs.iter().any(|r| r.ends_with("local/busybox:again")),
        "{refs:?}"
    );
}
