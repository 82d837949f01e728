//! Directory stores that write large objects (packs) with direct I/O.
//!
//! A pack put through the page cache costs a copy into freshly allocated cache pages and
//! then the kernel's write-back, all on the two cores that also hash and compress; with
//! three regions on one machine that is three copies of every pack. Measured here
//! (`docs/benchmarks.md`, "Writing packs"): three 650 MB files written with `fsync` took
//! 2.9 s and 1.4 s of system CPU each through the page cache, 0.96 s and 0.05 s each with
//! `O_DIRECT`. So a [`DirectFs`] writes every object of at least [`DIRECT_MIN`] bytes itself:
//! into a staging file beside the target with `O_DIRECT` (through a small aligned bounce
//! buffer; the unaligned tail with a plain write), then `fsync`, rename and `fsync` of the
//! directory — the same durable, atomic publish as object_store's `LocalFileSystem` with
//! fsync on, to the same path. Everything else (small objects, reads, listings, deletes)
//! is the wrapped `LocalFileSystem`'s. Filesystems without `O_DIRECT` (tmpfs) get plain
//! writes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use geosnap_engine::aligned::{ALIGN, AlignedBuf, stop_direct};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload, PutResult, Result};

/// Objects at least this large are written with direct I/O.
pub const DIRECT_MIN: usize = 1 << 20;

/// Bytes one direct write moves (the bounce buffer's size).
const BOUNCE: usize = 2 << 20;

/// A local directory store: `LocalFileSystem` with fsync on, and direct I/O for large puts.
#[derive(Debug)]
pub struct DirectFs {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
}

impl DirectFs {
    /// A store rooted at `root` (an existing directory).
    pub fn new(root: &FsPath) -> Result<DirectFs> {
        let inner = LocalFileSystem::new_with_prefix(root)?.with_fsync(true);
        let root = std::fs::canonicalize(root).map_err(|source| object_store::Error::Generic {
            store: "DirectFs",
            source: Box::new(source),
        })?;
        Ok(DirectFs {
            inner: Arc::new(inner),
            root,
        })
    }

    /// Where `location` lives, if it is a key this store writes itself: plain segments of
    /// ASCII letters, digits, `-`, `_` and `.` (what object_store maps to the same path
    /// unchanged). Other keys go to `LocalFileSystem`, which escapes them its own way.
    fn file_of(&self, location: &Path) -> Option<PathBuf> {
        let mut path = self.root.clone();
        let mut parts = 0;
        for part in location.parts() {
            let p = part.as_ref();
            let plain = !p.is_empty()
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !plain {
                return None;
            }
            path.push(p);
            parts += 1;
        }
        (parts > 0).then_some(path)
    }
}

impl fmt::Display for DirectFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirectFs({})", self.root.display())
    }
}

fn generic(source: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "DirectFs",
        source: Box::new(source),
    }
}

/// Writes `payload` to `dest` durably and atomically: staging file, direct writes, fsync,
/// rename, fsync of the directory (and of every directory created for it, up to `root`).
fn publish(root: &FsPath, dest: &FsPath, payload: &PutPayload) -> io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| io::Error::other("an object needs a directory"))?;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        let mut d = dir;
        while let Some(parent) = d.parent() {
            File::open(parent)?.sync_all()?;
            if parent == root || !parent.starts_with(root) {
                break;
            }
            d = parent;
        }
    }
    // Staging names end in '#' and digits, which LocalFileSystem's listings skip.
    let staging = {
        let mut s = dest.as_os_str().to_owned();
        s.push(format!("#{}", rand::random::<u32>()));
        PathBuf::from(s)
    };
    let result = write_staged(&staging, payload).and_then(|file| {
        file.sync_all()?;
        drop(file);
        std::fs::rename(&staging, dest)?;
        File::open(dir)?.sync_all()
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

/// Writes the payload into a new file at `path`: whole aligned blocks with `O_DIRECT`, the
/// tail (and everything, where the filesystem refuses direct I/O) through the page cache.
fn write_staged(path: &FsPath, payload: &PutPayload) -> io::Result<File> {
    match write_direct(path, payload) {
        // Opened with O_DIRECT, but the filesystem wants another alignment: start over
        // through the page cache.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => write_buffered(path, payload),
        other => other,
    }
}

/// Writes the payload into `path` through the page cache (creating or truncating it).
fn write_buffered(path: &FsPath, payload: &PutPayload) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    for part in payload.iter() {
        f.write_all(part)?;
    }
    Ok(f)
}

/// Writes the payload into a new file at `path` with `O_DIRECT` (the unaligned tail
/// through the page cache); EINVAL when the filesystem refuses.
fn write_direct(path: &FsPath, payload: &PutPayload) -> io::Result<File> {
    let direct = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    // tmpfs refuses the open with EINVAL (and may have created the file already, which
    // write_buffered truncates).
    let file = direct?;
    let mut buf = AlignedBuf::with_capacity(BOUNCE)?;
    let mut offset = 0u64;
    for part in payload.iter() {
        let mut part: &[u8] = part;
        while !part.is_empty() {
            let n = part.len().min(BOUNCE - buf.len());
            buf.extend_from_slice(&part[..n])?;
            part = &part[n..];
            if buf.len() == BOUNCE {
                file.write_all_at(buf.as_slice(), offset)?;
                offset += BOUNCE as u64;
                buf.clear();
            }
        }
    }
    let whole = buf.len() / ALIGN * ALIGN;
    if whole > 0 {
        file.write_all_at(&buf.as_slice()[..whole], offset)?;
        offset += whole as u64;
    }
    if whole < buf.len() {
        // The unaligned tail goes through the page cache.
        stop_direct(&file)?;
        file.write_all_at(&buf.as_slice()[whole..], offset)?;
    }
    Ok(file)
}

object_store_over_inner!(DirectFs, {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let direct = payload.content_length() >= DIRECT_MIN
            && matches!(opts.mode, PutMode::Overwrite)
            && opts.attributes.is_empty();
        let Some(dest) = direct.then(|| self.file_of(location)).flatten() else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || publish(&root, &dest, &payload))
            .await
            .map_err(|e| generic(io::Error::other(e.to_string())))?
            .map_err(generic)?;
        Ok(PutResult {
            e_tag: None,
            version: None,
            extensions: Default::default(),
        })
    }
});

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    use object_store::ObjectStoreExt;

    use super::*;

    /// A payload of several parts whose total is not a multiple of the block size.
    fn payload(len: usize) -> (PutPayload, Vec<u8>) {
        let all: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
        let mut cut = [0, 7.min(len), (4096 * 3 + 5).min(len), len / 2, len];
        cut.sort_unstable();
        let parts: Vec<Bytes> = cut
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&all[w[0]..w[1]]))
            .collect();
        (parts.into_iter().collect(), all)
    }

    async fn round_trip(root: &FsPath) {
        let store = DirectFs::new(root).unwrap();
        for len in [DIRECT_MIN, DIRECT_MIN + 1, 5 * BOUNCE + 4095, 100] {
            let key = Path::from(format!("packs/ab/obj-{len}"));
            let (p, all) = payload(len);
            store.put(&key, p).await.unwrap();
            let back = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(back.len(), all.len());
            assert!(back == all, "{len} bytes differ");
            // Overwrite with other bytes: the new content wins, whole.
            let (p, _) = payload(len / 2 + 1);
            store.put(&key, p).await.unwrap();
            assert_eq!(store.head(&key).await.unwrap().size, (len / 2 + 1) as u64);
        }
        // Listings show the objects only, never a staging file.
        let listed: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 4, "{listed:?}");
        let on_disk = std::fs::read_dir(root.join("packs/ab")).unwrap().count();
        assert_eq!(on_disk, 4, "staging files left behind");
    }

    #[tokio::test]
    async fn large_objects_written_directly_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        round_trip(dir.path()).await;
    }

    #[tokio::test]
    async fn filesystems_without_direct_io_get_plain_writes() {
        // tmpfs refuses O_DIRECT; where there is one, the fallback must give the same result.
        let shm = FsPath::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        round_trip(dir.path()).await;
    }

    #[test]
    fn only_plain_keys_are_written_directly() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectFs::new(dir.path()).unwrap();
        assert!(store.file_of(&Path::from("packs/ab/0123")).is_some());
        assert!(store.file_of(&Path::from("a b/c")).is_none());
        assert!(store.file_of(&Path::from("x/.hidden")).is_none());
        assert!(store.file_of(&Path::from("")).is_none());
    }
}
