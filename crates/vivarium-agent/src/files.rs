//! File operations. Blocking filesystem calls run on tokio's blocking pool.

use std::fs::{self, File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use vivarium_proto::{
    ErrorCode, FileEntry, FileStat, FileType, Frame, Request, Response, WriteOptions,
    DEFAULT_CHUNK_SIZE, MAX_WHOLE_FILE, STREAM_CHUNK,
};

use crate::error::{AgentError, Result};

/// Most entries a `list_dir` returns (keeps the answer inside one frame).
pub const MAX_LIST_ENTRIES: usize = 50_000;

/// Runs blocking filesystem work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::internal(format!("file task failed: {e}")))?
}

/// Validates a request path: absolute, no NUL byte.
pub fn check_path(path: &str) -> Result<PathBuf> {
    if !path.starts_with('/') {
        return Err(AgentError::invalid(format!(
            "path must be absolute, got {path:?}"
        )));
    }
    if path.contains('\0') {
        return Err(AgentError::invalid("path contains a NUL byte"));
    }
    Ok(PathBuf::from(path))
}

fn to_stat(path: &Path, md: &Metadata) -> FileStat {
    let ft = md.file_type();
    let file_type = if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    let link_target = ft
        .is_symlink()
        .then(|| fs::read_link(path).ok())
        .flatten()
        .map(|t| t.to_string_lossy().into_owned());
    FileStat {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        path: path.to_string_lossy().into_owned(),
        file_type,
        size: md.len(),
        mode: md.mode() & 0o7777,
        mtime_ms: md.mtime() * 1000 + md.mtime_nsec() / 1_000_000,
        uid: md.uid(),
        gid: md.gid(),
        link_target,
    }
}

fn lstat(path: &Path) -> Result<FileStat> {
    let md = fs::symlink_metadata(path).map_err(|e| AgentError::io(e, path.display()))?;
    Ok(to_stat(path, &md))
}

pub async fn stat(path: String) -> Result<FileStat> {
    let p = check_path(&path)?;
    blocking(move || lstat(&p)).await
}

/// Opens a regular file for reading (following symlinks) and returns it with its metadata.
fn open_for_read(path: &Path) -> Result<(File, FileStat)> {
    let file =
        File::open(path).map_err(|e| AgentError::io(e, format!("open {}", path.display())))?;
    let md = file
        .metadata()
        .map_err(|e| AgentError::io(e, format!("stat {}", path.display())))?;
    if md.is_dir() {
        return Err(AgentError::new(
            ErrorCode::IsADirectory,
            format!("{} is a directory", path.display()),
        ));
    }
    Ok((file, to_stat(path, &md)))
}

pub async fn read_whole(path: String) -> Result<(FileStat, Bytes)> {
    let p = check_path(&path)?;
    blocking(move || {
        let (mut file, stat) = open_for_read(&p)?;
        if stat.size > MAX_WHOLE_FILE {
            return Err(AgentError::invalid(format!(
                "{} is {} bytes, more than the {MAX_WHOLE_FILE} a whole read returns; use the streamed read",
                p.display(),
                stat.size
            )));
        }
        let mut data = Vec::with_capacity(stat.size as usize);
        file.read_to_end(&mut data)
            .map_err(|e| AgentError::io(e, format!("read {}", p.display())))?;
        if data.len() as u64 > MAX_WHOLE_FILE {
            return Err(AgentError::invalid(format!(
                "{} grew past {MAX_WHOLE_FILE} bytes while being read; use the streamed read",
                p.display()
            )));
        }
        Ok((stat, Bytes::from(data)))
    })
    .await
}

/// Streams a file as `FileStart`, `FileChunk`..., `FileEnd` frames on `stream`.
pub async fn read_stream(
    path: String,
    chunk_size: Option<u32>,
    stream: u64,
    out: &mpsc::Sender<Frame<Response>>,
) -> Result<()> {
    let p = check_path(&path)?;
    let chunk = chunk_size
        .unwrap_or(DEFAULT_CHUNK_SIZE)
        .clamp(4096, STREAM_CHUNK as u32 * 4) as usize;
    let (file, stat) = blocking(move || open_for_read(&p)).await?;
    let closed = || AgentError::internal("connection closed");
    out.send(Frame::new(stream, Response::FileStart { stat }))
        .await
        .map_err(|_| closed())?;
    let mut file = Some(file);
    loop {
        let mut f = file
            .take()
            .ok_or_else(|| AgentError::internal("file handle lost"))?;
        let path = path.clone();
        let (f, data) = blocking(move || {
            let mut buf = BytesMut::zeroed(chunk);
            let mut filled = 0;
            while filled < chunk {
                match f.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(AgentError::io(e, format!("read {path}"))),
                }
            }
            buf.truncate(filled);
            Ok((f, buf.freeze()))
        })
        .await?;
        if data.is_empty() {
            break;
        }
        out.send(Frame::with_payload(stream, Response::FileChunk, data))
            .await
            .map_err(|_| closed())?;
        file = Some(f);
    }
    out.send(Frame::new(stream, Response::FileEnd))
        .await
        .map_err(|_| closed())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written; removed on drop unless committed.
struct PendingWrite {
    target: PathBuf,
    /// The temp file for atomic writes, `None` when writing in place.
    temp: Option<PathBuf>,
    file: Option<File>,
    mode: Option<u32>,
}

impl PendingWrite {
    fn open(target: PathBuf, opts: &WriteOptions) -> Result<Self> {
        let ctx = |e, what: &str| AgentError::io(e, format!("{what} {}", target.display()));
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| AgentError::invalid("cannot write to /"))?
            .to_path_buf();
        if opts.create_parents {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&parent)
                .map_err(|e| AgentError::io(e, format!("create {}", parent.display())))?;
        }
        let existing = match fs::metadata(&target) {
            Ok(md) if md.is_dir() => {
                return Err(AgentError::new(
                    ErrorCode::IsADirectory,
                    format!("{} is a directory", target.display()),
                ))
            }
            Ok(md) => Some(md),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ctx(e, "stat")),
        };
        // Explicit mode wins; otherwise keep an existing file's mode; new files get 0644.
        let mode = opts
            .mode
            .map(|m| m & 0o7777)
            .or_else(|| existing.as_ref().map(|m| m.mode() & 0o7777));
        let create_mode = mode.unwrap_or(0o644);
        if opts.atomic {
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let temp = parent.join(format!(
                ".{name}.vivarium-{}-{}.tmp",
                std::process::id(),
                TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(create_mode)
                .open(&temp)
                .map_err(|e| AgentError::io(e, format!("create {}", temp.display())))?;
            if let Some(md) = &existing {
                // Keep the replaced file's owner; failure (not root) leaves ours.
                let _ = std::os::unix::fs::fchown(&file, Some(md.uid()), Some(md.gid()));
            }
            Ok(PendingWrite {
                target,
                temp: Some(temp),
                file: Some(file),
                mode: Some(mode.unwrap_or(0o644)),
            })
        } else {
            let file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(create_mode)
                .open(&target)
                .map_err(|e| ctx(e, "open"))?;
            Ok(PendingWrite {
                target,
                temp: None,
                file: Some(file),
                mode: opts.mode.map(|m| m & 0o7777),
            })
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| AgentError::internal("write after commit"))?;
        file.write_all(data)
            .map_err(|e| AgentError::io(e, format!("write {}", self.target.display())))
    }

    /// Sets the mode (exactly, regardless of umask) and renames the temp file into place.
    /// No fsync: the sandbox's scratch layer does not outlive a host crash anyway; readers still
    /// never observe a partial file thanks to the rename.
    fn commit(mut self) -> Result<FileStat> {
        let file = self
            .file
            .take()
            .ok_or_else(|| AgentError::internal("double commit"))?;
        if let Some(mode) = self.mode {
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| AgentError::io(e, format!("chmod {}", self.target.display())))?;
        }
        drop(file);
        if let Some(temp) = self.temp.take() {
            if let Err(e) = fs::rename(&temp, &self.target) {
                let _ = fs::remove_file(&temp);
                return Err(AgentError::io(
                    e,
                    format!("rename into {}", self.target.display()),
                ));
            }
        }
        lstat(&self.target)
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            if let Err(e) = fs::remove_file(&temp) {
                tracing::warn!(path = %temp.display(), error = %e, "removing aborted upload");
            }
        }
    }
}

pub async fn write_whole(path: String, opts: WriteOptions, data: Bytes) -> Result<FileStat> {
    let p = check_path(&path)?;
    blocking(move || {
        let mut w = PendingWrite::open(p, &opts)?;
        w.write(&data)?;
        w.commit()
    })
    .await
}

/// Receives `WriteChunk` frames until `WriteEnd`, then commits. A closed channel (connection
/// gone) or `Cancel` aborts and removes the partial temp file.
pub async fn write_stream(
    path: String,
    opts: WriteOptions,
    follow: &mut mpsc::Receiver<(Request, Bytes)>,
) -> Result<FileStat> {
    let p = check_path(&path)?;
    let mut pending = blocking(move || PendingWrite::open(p, &opts)).await?;
    loop {
        match follow.recv().await {
            Some((Request::WriteChunk, data)) => {
                pending = blocking(move || {
                    pending.write(&data)?;
                    Ok(pending)
                })
                .await?;
            }
            Some((Request::WriteEnd, _)) => return blocking(move || pending.commit()).await,
            Some((other, _)) => {
                return Err(AgentError::invalid(format!(
                    "unexpected {} during a streamed write",
                    other.name()
                )))
            }
            None => return Err(AgentError::internal("upload aborted")),
        }
    }
}

pub async fn list_dir(path: String, depth: u32) -> Result<Vec<FileEntry>> {
    let root = check_path(&path)?;
    blocking(move || {
        let md = fs::metadata(&root).map_err(|e| AgentError::io(e, root.display()))?;
        if !md.is_dir() {
            return Err(AgentError::new(
                ErrorCode::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut entries = Vec::new();
        let mut stack = vec![(root, 1u32)];
        while let Some((dir, level)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                // The top level must be readable; deeper unreadable dirs are listed, not entered.
                Err(e) if level > 1 => {
                    tracing::debug!(dir = %dir.display(), error = %e, "skipping unreadable dir");
                    continue;
                }
                Err(e) => return Err(AgentError::io(e, format!("list {}", dir.display()))),
            };
            for entry in rd {
                let entry =
                    entry.map_err(|e| AgentError::io(e, format!("list {}", dir.display())))?;
                let p = entry.path();
                let md = match fs::symlink_metadata(&p) {
                    Ok(md) => md,
                    Err(_) => continue, // removed meanwhile
                };
                if md.is_dir() && level < depth.max(1) {
                    stack.push((p.clone(), level + 1));
                }
                entries.push(to_stat(&p, &md));
                if entries.len() > MAX_LIST_ENTRIES {
                    return Err(AgentError::invalid(format!(
                        "more than {MAX_LIST_ENTRIES} entries; list with a smaller depth"
                    )));
                }
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    })
    .await
}

pub async fn remove(path: String, recursive: bool) -> Result<()> {
    let p = check_path(&path)?;
    if p.parent().is_none() {
        return Err(AgentError::invalid("refusing to remove /"));
    }
    blocking(move || {
        let md = fs::symlink_metadata(&p).map_err(|e| AgentError::io(e, p.display()))?;
        let r = if md.is_dir() {
            if recursive {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_dir(&p)
            }
        } else {
            fs::remove_file(&p)
        };
        r.map_err(|e| {
            if e.kind() == std::io::ErrorKind::DirectoryNotEmpty {
                AgentError::invalid(format!(
                    "{} is a non-empty directory; set recursive to remove it",
                    p.display()
                ))
            } else {
                AgentError::io(e, format!("remove {}", p.display()))
            }
        })
    })
    .await
}

pub async fn mkdir(path: String, mode: Option<u32>, parents: bool) -> Result<()> {
    let p = check_path(&path)?;
    blocking(move || {
        let mode = mode.map(|m| m & 0o7777);
        fs::DirBuilder::new()
            .recursive(parents)
            .mode(mode.unwrap_or(0o755))
            .create(&p)
            .map_err(|e| AgentError::io(e, format!("mkdir {}", p.display())))?;
        if let Some(mode) = mode {
            // Exact bits, independent of the umask.
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                .map_err(|e| AgentError::io(e, format!("chmod {}", p.display())))?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn atomic_write_leaves_no_temp_on_abort_and_keeps_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("sub/f.txt");
        let path = target.to_string_lossy().into_owned();
        let opts = WriteOptions {
            mode: Some(0o640),
            create_parents: true,
            atomic: true,
        };
        let st = write_whole(path.clone(), opts.clone(), Bytes::from_static(b"hello"))
            .await
            .expect("write");
        assert_eq!((st.size, st.mode), (5, 0o640));

        let (tx, mut rx) = mpsc::channel(4);
        tx.send((Request::WriteChunk, Bytes::from_static(b"partial")))
            .await
            .expect("send");
        drop(tx);
        let err = write_stream(path.clone(), WriteOptions::default(), &mut rx)
            .await
            .expect_err("aborted");
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(fs::read(&target).expect("read"), b"hello");
        let names: Vec<_> = fs::read_dir(target.parent().expect("parent"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
        // Mode of the replaced file is kept when none is given.
        let st = write_whole(path, WriteOptions::default(), Bytes::from_static(b"x"))
            .await
            .expect("rewrite");
        assert_eq!(st.mode, 0o640);
    }

    #[tokio::test]
    async fn relative_paths_are_rejected() {
        let err = stat("etc/passwd".into()).await.expect_err("relative");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }
}
