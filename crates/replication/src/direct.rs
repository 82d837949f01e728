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
//! fsync on, to the same path. Filesystems without `O_DIRECT` (tmpfs) get plain writes.
//!
//! A range read of such a key is one open, one `fstat` and positional reads into a buffer
//! that is not cleared first; on a thread that asked for it with [`reading_inline`] (a
//! restore's fetching threads, which have nothing else to do meanwhile) it runs right there.
//! `LocalFileSystem` hands each read to the blocking pool and back and clears the buffer
//! first, which cost a restore about 4 % of its time and 10 MiB of its peak RSS
//! (`docs/benchmarks.md`, "Tenth stop"). Everything else (small objects, whole reads,
//! listings, deletes) is the wrapped `LocalFileSystem`'s.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use geosnap_engine::aligned::{ALIGN, AlignedBuf, read_at_most, stop_direct};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ObjectMeta, PutMode, PutOptions, PutPayload,
    PutResult, Result,
};

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

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        let (Some(range), Some(file), true) = (&options.range, self.file_of(location), plain)
        else {
            return self.inner.get_opts(location, options).await;
        };
        let (range, location) = (range.clone(), location.clone());
        let read = move || read_range(&file, &location, &range);
        // Inside a runtime, a blocking read would hold up every other future of this
        // thread, unless the thread said it waits for this read alone.
        let inline = INLINE.get() || tokio::runtime::Handle::try_current().is_err();
        let (bytes, meta, range) = if inline {
            read()?
        } else {
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|e| generic(io::Error::other(e.to_string())))??
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(bytes) }).boxed(),
            ),
            meta,
            range,
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }
});

thread_local! {
    /// Whether this thread's range reads run on it (see [`reading_inline`]).
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's [`DirectFs`] range reads done on the thread itself, not
/// handed to the blocking pool: for a thread that blocks on one read at a time anyway
/// (`Handle::block_on` of a single read).
pub fn reading_inline<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            INLINE.set(self.0);
        }
    }
    let _reset = Reset(INLINE.replace(true));
    f()
}

/// Reads `range` of the object at `path`: what `LocalFileSystem` gives for a range get,
/// from one open, one `fstat` and positional reads into a buffer that is not cleared first.
fn read_range(
    path: &FsPath,
    location: &Path,
    range: &GetRange,
) -> Result<(Bytes, ObjectMeta, Range<u64>)> {
    let not_found = |source: io::Error| object_store::Error::NotFound {
        path: location.to_string(),
        source: Box::new(source),
    };
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => not_found(e),
        _ => generic(e),
    })?;
    let m = file.metadata().map_err(generic)?;
    if m.is_dir() {
        return Err(not_found(io::Error::from(io::ErrorKind::NotFound)));
    }
    let range = range
        .as_range(m.len())
        .map_err(|e| object_store::Error::Generic {
            store: "DirectFs",
            source: Box::new(e),
        })?;
    let len = usize::try_from(range.end - range.start)
        .map_err(|_| generic(io::Error::from(io::ErrorKind::OutOfMemory)))?;
    let bytes = read_at_most(&file, range.start, len).map_err(generic)?;
    if bytes.len() < len {
        // The file shrank after the fstat: not what it said it holds.
        return Err(generic(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{location} ended {} bytes into a {len}-byte range read",
                bytes.len()
            ),
        )));
    }
    let meta = ObjectMeta {
        location: location.clone(),
        last_modified: m.modified().map(DateTime::<Utc>::from).unwrap_or_default(),
        size: m.len(),
        e_tag: Some(etag(&m)),
        version: None,
    };
    Ok((Bytes::from(bytes), meta, range))
}

/// The entity tag `LocalFileSystem` gives a file: inode, mtime in microseconds and size.
fn etag(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{:x}-{mtime:x}-{:x}\"", m.ino(), m.len())
}

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
    fn range_reads_give_what_the_local_file_system_gives() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DirectFs::new(dir.path()).unwrap());
        let local = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let len = 3 * BOUNCE + 17;
        let key = Path::from("packs/ab/obj");
        let (p, all) = payload(len);
        rt.block_on(store.put(&key, p)).unwrap();
        let len = len as u64;
        let ranges = [
            GetRange::Bounded(0..1),
            GetRange::Bounded(5..4096 * 3 + 9),
            GetRange::Bounded(len - 10..len),
            GetRange::Bounded(100..len + 50),
            GetRange::Offset(len - 5),
            GetRange::Suffix(7),
            GetRange::Suffix(len + 9),
        ];
        for range in ranges {
            let want = range.as_range(len).unwrap();
            let want = &all[want.start as usize..want.end as usize];
            let opts = || GetOptions::new().with_range(Some(range.clone()));
            // Inside the runtime: handed to the blocking pool, as LocalFileSystem does.
            let ours = rt.block_on(store.get_opts(&key, opts())).unwrap();
            let theirs = rt.block_on(local.get_opts(&key, opts())).unwrap();
            assert!(
                matches!(ours.payload, GetResultPayload::Stream(_)),
                "not ours"
            );
            assert!(matches!(theirs.payload, GetResultPayload::File(..)));
            assert_eq!(ours.meta, theirs.meta);
            assert_eq!(ours.range, theirs.range, "{range:?}");
            assert!(rt.block_on(ours.bytes()).unwrap() == want, "{range:?}");
            // On a thread that reads inline: the same bytes.
            let here = reading_inline(|| rt.block_on(store.get_opts(&key, opts()))).unwrap();
            assert_eq!(here.range, theirs.range);
            assert!(rt.block_on(here.bytes()).unwrap() == want, "{range:?}");
        }
        let missing = rt.block_on(store.get_range(&Path::from("packs/ab/none"), 0..10));
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "{missing:?}"
        );
        let folder = rt.block_on(store.get_range(&Path::from("packs/ab"), 0..10));
        assert!(
            matches!(folder, Err(object_store::Error::NotFound { .. })),
            "{folder:?}"
        );
        // A range starting past the end is refused, as LocalFileSystem refuses it.
        for s in [store.as_ref() as &dyn ObjectStore, &local] {
            let past = rt.block_on(s.get_range(&key, len + 1..len + 5));
            assert!(
                matches!(past, Err(object_store::Error::Generic { .. })),
                "{past:?}"
            );
        }
        assert!(!INLINE.get(), "reading_inline left its mark");
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
