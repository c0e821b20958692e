//! Applying layer tarballs onto a root filesystem directory, with OCI whiteouts.
//!
//! The `tar` crate parses the archive and writes each entry (data, modes, ownership, mtimes,
//! file xattrs). What it does not do, and this module does:
//! - resolve every parent path *inside the root* the way a chroot would (an absolute symlink
//!   `etc -> /host/etc` is followed to `<root>/host/etc`, `..` stops at the root), so no entry
//!   can ever be written outside the root, whatever symlinks earlier layers planted. `tar`'s own
//!   `unpack_in` would follow such a symlink on the host and then refuse, which breaks legitimate
//!   images; this is the behaviour of containerd/runc's `securejoin`;
//! - refuse entry and hard-link names containing `..`;
//! - OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`), applied to lower layers only;
//! - replacement semantics (a later entry replaces an existing one unless both are directories);
//! - device nodes and FIFOs (`tar` would write them as regular files).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_ctx, ImageError};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const MAX_SYMLINK_HOPS: usize = 40;

/// Layer media types we can unpack (the compression itself is detected from magic bytes).
pub(crate) fn is_supported_layer_media_type(mt: &str) -> bool {
    matches!(
        mt,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
    )
}

/// Opens a layer blob, detecting gzip / zstd / plain tar from its first bytes.
pub(crate) fn layer_reader(path: &Path) -> Result<Box<dyn Read + Send>, ImageError> {
    let file = File::open(path).map_err(io_ctx(|| format!("open layer {}", path.display())))?;
    let mut br = BufReader::with_capacity(256 * 1024, file);
    let head = br
        .fill_buf()
        .map_err(io_ctx(|| format!("read layer {}", path.display())))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::with_buffer(br)
            .map_err(io_ctx(|| format!("zstd layer {}", path.display())))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(br))
    }
}

/// A reader that hashes what passes through it (for verifying a layer's DiffID).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Applies the layer blob at `blob` onto `root` and, if given, checks the uncompressed stream
/// against `diff_id` (`sha256:…` from the image config).
pub(crate) fn apply_layer_file(
    root: &Path,
    blob: &Path,
    diff_id: Option<&str>,
) -> Result<(), ImageError> {
    let mut reader = HashingReader {
        inner: layer_reader(blob)?,
        hasher: Sha256::new(),
    };
    apply_layer(root, &mut reader)?;
    // The archive ends at its end-of-archive marker; hash the padding after it too.
    io::copy(&mut reader, &mut io::sink())
        .map_err(io_ctx(|| format!("read layer {}", blob.display())))?;
    if let Some(expected) = diff_id {
        let actual = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
        if actual != expected {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {}", blob.display()),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// Applies one layer tar stream onto `root` (a directory we own).
pub(crate) fn apply_layer<R: Read>(root: &Path, reader: R) -> Result<(), ImageError> {
    let root = root
        .canonicalize()
        .map_err(io_ctx(|| format!("canonicalize {}", root.display())))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    // Paths (relative to root, after resolution) this layer wrote, with their ancestors:
    // whiteouts only hide what lower layers had.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(io_ctx(|| "read layer tar".to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(io_ctx(|| "read layer tar entry".to_string()))?;
        let raw_path = entry
            .path()
            .map_err(io_ctx(|| "layer entry path".to_string()))?
            .into_owned();
        let comps = normal_components(&raw_path)?;
        let Some((name, parent)) = comps.split_last() else {
            continue; // the root directory itself
        };
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }

        let name_bytes = name.as_bytes();
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            let Some(dir) = resolve_in_root(&root, parent, false)? else {
                continue; // parent absent: nothing to hide
            };
            if name_bytes == OPAQUE_MARKER {
                make_opaque(&root, &dir, &seen)?;
            } else if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other AUFS metadata (`.wh..wh.plnk`, …): not part of the image content.
            } else if hidden.is_empty() || hidden == b"." || hidden == b".." {
                // `.wh..` would remove the parent directory (or the whole tree).
                return Err(ImageError::invalid(
                    "layer",
                    format!("whiteout {} names no entry", raw_path.display()),
                ));
            } else {
                let target = dir.join(OsStr::from_bytes(hidden));
                if !seen.contains(rel(&root, &target)) {
                    remove_existing(&target)?;
                }
            }
            continue;
        }

        let dir = resolve_in_root(&root, parent, true)?
            .ok_or_else(|| ImageError::Internal("parent resolution with create".into()))?;
        let target = dir.join(name);
        if let Ok(m) = fs::symlink_metadata(&target) {
            if !(m.is_dir() && kind.is_dir()) {
                remove_existing(&target)?;
            }
        }
        match kind {
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io_ctx(|| {
                        format!("hard link name of {}", raw_path.display())
                    }))?
                    .ok_or_else(|| {
                        ImageError::invalid(
                            "layer",
                            format!("hard link {} has no target", raw_path.display()),
                        )
                    })?
                    .into_owned();
                let lcomps = normal_components(&link)?;
                let Some((lname, lparent)) = lcomps.split_last() else {
                    return Err(ImageError::invalid(
                        "layer",
                        format!("hard link {} to the root", raw_path.display()),
                    ));
                };
                let source = resolve_in_root(&root, lparent, false)?
                    .map(|d| d.join(lname))
                    .ok_or_else(|| {
                        ImageError::invalid(
                            "layer",
                            format!("hard link target {} missing", link.display()),
                        )
                    })?;
                let meta = fs::symlink_metadata(&source)
                    .map_err(io_ctx(|| format!("hard link target {}", link.display())))?;
                if meta.is_dir() {
                    return Err(ImageError::invalid(
                        "layer",
                        format!("hard link to directory {}", link.display()),
                    ));
                }
                fs::hard_link(&source, &target).map_err(io_ctx(|| {
                    format!("hard link {} -> {}", target.display(), source.display())
                }))?;
            }
            // Device nodes are never made: one for the host's disk or memory, shipped in a layer,
            // would be a door out (the sandbox's rootfs is `nodev` as well, and its /dev holds
            // only the standard nodes the runtime makes).
            tar::EntryType::Char | tar::EntryType::Block => {
                tracing::warn!(path = %raw_path.display(), "skipping a device node in an image layer");
                continue;
            }
            tar::EntryType::Fifo => {
                make_node(&entry, kind, &target)?;
            }
            _ => {
                entry
                    .unpack(&target)
                    .map_err(io_ctx(|| format!("unpack {}", raw_path.display())))?;
                if kind.is_dir() {
                    set_dir_xattrs(&mut entry, &target)?;
                }
            }
        }
        let mut r = rel(&root, &target).to_path_buf();
        loop {
            if !seen.insert(r.clone()) || !r.pop() || r.as_os_str().is_empty() {
                break;
            }
        }
    }
    Ok(())
}

fn rel<'a>(root: &Path, p: &'a Path) -> &'a Path {
    p.strip_prefix(root).unwrap_or(p)
}

/// The normal components of an entry path; `..` anywhere is refused.
fn normal_components(p: &Path) -> Result<Vec<OsString>, ImageError> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(ImageError::PathEscape {
                    path: p.display().to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Resolves `comps` under `root` as if `root` were `/`: symlinks are followed, absolute ones
/// relative to `root`, `..` stops at `root`. Missing directories are created when `create`
/// (mode 0755), otherwise `None` is returned. The result is a real directory inside `root`.
fn resolve_in_root(
    root: &Path,
    comps: &[OsString],
    create: bool,
) -> Result<Option<PathBuf>, ImageError> {
    let mut cur: Vec<OsString> = Vec::new();
    let mut queue: std::collections::VecDeque<OsString> = comps.iter().cloned().collect();
    let mut hops = 0usize;
    let join = |cur: &[OsString]| cur.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    while let Some(c) = queue.pop_front() {
        let b = c.as_bytes();
        if b.is_empty() || b == b"." {
            continue;
        }
        if b == b".." {
            cur.pop();
            continue;
        }
        let p = join(&cur).join(&c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => cur.push(c),
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ImageError::invalid(
                        "layer",
                        format!("too many symlinks resolving {}", p.display()),
                    ));
                }
                let target =
                    fs::read_link(&p).map_err(io_ctx(|| format!("readlink {}", p.display())))?;
                if target.is_absolute() {
                    cur.clear();
                }
                let mut parts: Vec<OsString> = target
                    .components()
                    .filter_map(|tc| match tc {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                parts.extend(queue.drain(..));
                queue = parts.into();
            }
            Ok(_) => {
                return Err(ImageError::invalid(
                    "layer",
                    format!("{} is not a directory", rel(root, &p).display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                fs::create_dir(&p).map_err(io_ctx(|| format!("mkdir {}", p.display())))?;
                cur.push(c);
            }
            Err(e) => return Err(ImageError::io(format!("stat {}", p.display()), e)),
        }
    }
    Ok(Some(join(&cur)))
}

/// Removes whatever is at `p` (never following a symlink); absent is fine.
fn remove_existing(p: &Path) -> Result<(), ImageError> {
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io(format!("stat {}", p.display()), e)),
    };
    // std's remove_dir_all does not follow symlinks (CVE-2022-21658 fixed in 1.58.1).
    let r = if m.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    r.map_err(io_ctx(|| format!("remove {}", p.display())))
}

/// Opaque directory: hide every child a lower layer put there.
fn make_opaque(root: &Path, dir: &Path, seen: &HashSet<PathBuf>) -> Result<(), ImageError> {
    let rd = fs::read_dir(dir).map_err(io_ctx(|| format!("read dir {}", dir.display())))?;
    for child in rd {
        let child = child.map_err(io_ctx(|| format!("read dir {}", dir.display())))?;
        let path = child.path();
        if !seen.contains(rel(root, &path)) {
            remove_existing(&path)?;
        }
    }
    Ok(())
}

fn make_node<R: Read>(
    entry: &tar::Entry<'_, R>,
    kind: tar::EntryType,
    target: &Path,
) -> Result<(), ImageError> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let h = entry.header();
    let bad = |e: io::Error| ImageError::io(format!("header of {}", target.display()), e);
    let mode = h.mode().map_err(bad)?;
    let (kind_flag, dev) = match kind {
        tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
        _ => {
            let major = h.device_major().map_err(bad)?.unwrap_or(0);
            let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
            let f = if kind == tar::EntryType::Char {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            (f, makedev(major.into(), minor.into()))
        }
    };
    mknod(
        target,
        kind_flag,
        Mode::from_bits_truncate(mode & 0o7777),
        dev,
    )
    .map_err(|e| ImageError::io(format!("mknod {}", target.display()), e.into()))?;
    let uid = u32::try_from(h.uid().map_err(bad)?).ok();
    let gid = u32::try_from(h.gid().map_err(bad)?).ok();
    std::os::unix::fs::lchown(target, uid, gid)
        .map_err(io_ctx(|| format!("chown {}", target.display())))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(target, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_ctx(|| format!("chmod {}", target.display())))?;
    Ok(())
}

fn set_dir_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, target: &Path) -> Result<(), ImageError> {
    let Some(exts) = entry
        .pax_extensions()
        .map_err(io_ctx(|| format!("pax headers of {}", target.display())))?
    else {
        return Ok(());
    };
    for ext in exts {
        let ext = ext.map_err(io_ctx(|| format!("pax headers of {}", target.display())))?;
        let Ok(key) = ext.key() else { continue };
        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            if let Err(e) = xattr::set(target, name, ext.value_bytes()) {
                // Some filesystems refuse some namespaces; the image stays usable.
                tracing::warn!(path = %target.display(), xattr = name, error = %e, "cannot set xattr");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        FileOwned(&'a str, &'a [u8], u32, u64),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Char(&'a str, u32, u32),
    }

    /// Writes a raw name into the header (tar::Builder refuses `..`, which we want to test).
    fn set_raw(h: &mut tar::Header, field: &str, v: &str) {
        let old = h.as_old_mut();
        let dst: &mut [u8] = if field == "name" {
            &mut old.name
        } else {
            &mut old.linkname
        };
        dst.fill(0);
        dst[..v.len()].copy_from_slice(v.as_bytes());
    }

    fn layer(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            let (name, data): (&str, &[u8]) = match e {
                E::Dir(n) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    (n, &[])
                }
                E::File(n, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    (n, d)
                }
                E::FileOwned(n, d, mode, uid) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_uid(*uid);
                    h.set_gid(*uid);
                    (n, d)
                }
                E::Sym(n, t) | E::Hard(n, t) => {
                    h.set_entry_type(if matches!(e, E::Sym(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    set_raw(&mut h, "linkname", t);
                    (n, &[])
                }
                E::Char(n, maj, min) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o666);
                    h.set_device_major(*maj).unwrap();
                    h.set_device_minor(*min).unwrap();
                    (n, &[])
                }
            };
            set_raw(&mut h, "name", name);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, entries: &[E]) -> Result<(), ImageError> {
        apply_layer(root, &layer(entries)[..])
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        apply(
            root,
            &[
                E::Dir("a"),
                E::File("a/gone", b"1"),
                E::File("a/kept", b"2"),
                E::Dir("d"),
                E::File("d/old", b"3"),
                E::Dir("d/sub"),
                E::File("d/sub/deep", b"4"),
                E::Dir("e"),
                E::File("e/x", b"5"),
            ],
        )
        .unwrap();
        apply(
            root,
            &[
                E::File("a/.wh.gone", b""),
                // Same-layer entry before the opaque marker must survive it.
                E::File("d/new-before", b"n"),
                E::File("d/.wh..wh..opq", b""),
                E::File("d/new-after", b"m"),
                E::File(".wh.e", b""),
                E::File("nonexistent/.wh.thing", b""),
            ],
        )
        .unwrap();
        assert!(!root.join("a/gone").exists());
        assert!(!root.join("a/.wh.gone").exists());
        assert_eq!(fs::read(root.join("a/kept")).unwrap(), b"2");
        assert!(!root.join("d/old").exists());
        assert!(!root.join("d/sub").exists());
        assert!(!root.join("d/.wh..wh..opq").exists());
        assert_eq!(fs::read(root.join("d/new-before")).unwrap(), b"n");
        assert_eq!(fs::read(root.join("d/new-after")).unwrap(), b"m");
        assert!(!root.join("e").exists());
        assert!(!root.join("nonexistent").exists());
    }

    #[test]
    fn dot_dot_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let err = apply(&root, &[E::File("../escaped", b"x")]).unwrap_err();
        assert!(matches!(err, ImageError::PathEscape { .. }), "{err:?}");
        assert!(!t.path().join("escaped").exists());
        let err = apply(
            &root,
            &[E::File("a", b"x"), E::Hard("b", "../../etc/passwd")],
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::PathEscape { .. }), "{err:?}");
        assert!(!root.join("b").exists());
    }

    #[test]
    fn symlinks_never_lead_outside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"host").unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        let abs = outside.to_str().unwrap();
        apply(
            &root,
            &[
                E::Sym("abs", abs),
                E::Sym("up", "../../../../.."),
                E::File("abs/pwned", b"x"),
                E::File("up/escaped", b"y"),
            ],
        )
        .unwrap();
        // Nothing landed outside; the writes were confined as if chrooted.
        assert!(!outside.join("pwned").exists());
        assert!(!t.path().join("escaped").exists());
        assert_eq!(
            fs::read(root.join(abs.trim_start_matches('/')).join("pwned")).unwrap(),
            b"x"
        );
        assert_eq!(fs::read(root.join("escaped")).unwrap(), b"y");
        // A hard link through the absolute symlink finds nothing inside the root: no host file linked.
        let err = apply(&root, &[E::Hard("stolen", "abs/secret")]).unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
        assert!(!root.join("stolen").exists());
        // A whiteout through the symlink cannot delete a host file either.
        apply(&root, &[E::File("abs/.wh.secret", b"")]).unwrap();
        assert!(outside.join("secret").exists());
    }

    #[test]
    fn whiteouts_of_dot_and_dotdot_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir(&root).unwrap();
        apply(&root, &[E::Dir("sub"), E::File("sub/keep", b"1")]).unwrap();
        for bad in ["sub/.wh..", "sub/.wh...", ".wh..."] {
            assert!(apply(&root, &[E::File(bad, b"")]).is_err(), "{bad}");
            assert!(root.join("sub/keep").exists(), "{bad} removed content");
        }
    }

    #[test]
    fn replacement_modes_owners_links_devices() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        apply(
            root,
            &[
                E::Dir("x"),
                E::File("x/in", b"1"),
                E::File("f", b"file"),
                E::FileOwned("suid", b"s", 0o4755, 1000),
                E::Sym("link", "f"),
                E::Hard("hard", "f"),
                E::Char("null", 1, 3),
            ],
        )
        .unwrap();
        let m = fs::metadata(root.join("suid")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((m.uid(), m.gid()), (1000, 1000));
        assert_eq!(fs::read_link(root.join("link")).unwrap(), Path::new("f"));
        assert_eq!(
            fs::metadata(root.join("hard")).unwrap().ino(),
            fs::metadata(root.join("f")).unwrap().ino()
        );
        // Device nodes are never made from a layer (the rest of the layer still is).
        assert!(fs::symlink_metadata(root.join("null")).is_err());
        // Layer 2: a file replaces a directory, a directory replaces a file, a symlink is replaced.
        apply(
            root,
            &[
                E::File("x", b"now a file"),
                E::Dir("f"),
                E::File("link", b"plain"),
            ],
        )
        .unwrap();
        assert_eq!(fs::read(root.join("x")).unwrap(), b"now a file");
        assert!(fs::symlink_metadata(root.join("f")).unwrap().is_dir());
        assert!(fs::symlink_metadata(root.join("link")).unwrap().is_file());
        assert_eq!(fs::read(root.join("hard")).unwrap(), b"file");
    }

    #[test]
    fn layers_are_decompressed_and_diff_ids_checked() {
        let t = tempfile::tempdir().unwrap();
        let raw = layer(&[E::File("hello", b"world")]);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &raw).unwrap();
            e.finish().unwrap()
        };
        let zs = zstd::encode_all(&raw[..], 3).unwrap();
        for (i, blob) in [raw.clone(), gz, zs].into_iter().enumerate() {
            let p = t.path().join(format!("blob{i}"));
            fs::write(&p, blob).unwrap();
            let root = t.path().join(format!("root{i}"));
            fs::create_dir(&root).unwrap();
            apply_layer_file(&root, &p, Some(&diff_id)).unwrap();
            assert_eq!(fs::read(root.join("hello")).unwrap(), b"world");
            let err = apply_layer_file(&root, &p, Some("sha256:00")).unwrap_err();
            assert!(matches!(err, ImageError::DigestMismatch { .. }));
        }
    }
}
