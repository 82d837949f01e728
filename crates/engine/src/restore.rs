//! The restore writer: chunks are fetched by several threads, verified against their
//! SHA-256, and written at their offsets (in any order) into a temporary file beside the
//! target; zero runs stay holes. Only a complete, fsynced file is renamed into place, so a
//! failed restore leaves nothing at the target.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;

use serde::Serialize;

use crate::codec::Decoder;
use crate::manifest::{Extent, Manifest};
use crate::progress::Progress;
use crate::store::ChunkSource;
use crate::{ChunkId, Error};

/// How a restore behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Replace an existing file at the target.
    pub overwrite: bool,
    /// Chunks in flight; 0 picks a count that keeps memory near 96 MiB.
    pub threads: usize,
}

impl RestoreOptions {
    fn thread_count(&self, max_chunk: usize) -> usize {
        match self.threads {
            0 => ((96usize << 20) / (2 * max_chunk.max(1))).clamp(2, 32),
            n => n,
        }
    }
}

/// What a restore wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    /// Logical image size.
    pub image_size: u64,
    /// Bytes written from chunks.
    pub data_bytes: u64,
    /// Bytes left as holes.
    pub zero_bytes: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Chunks whose first copy was missing or corrupt and that came from another copy.
    pub recovered_chunks: u64,
}

/// Checks a restore target before any work: its directory exists, and it is not taken
/// unless overwriting.
pub fn check_target(target: &Path, overwrite: bool) -> Result<PathBuf, Error> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::TargetDirMissing {
            path: target.to_path_buf(),
            dir,
        });
    }
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err(Error::Write {
            path: target.to_path_buf(),
            source: io::Error::other("it is a directory"),
        }),
        Ok(_) if !overwrite => Err(Error::TargetExists {
            path: target.to_path_buf(),
        }),
        _ => Ok(dir),
    }
}

/// Restores the image `manifest` describes to `target`.
pub fn restore_image(
    manifest: &Manifest,
    source: &dyn ChunkSource,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats, Error> {
    manifest.check()?;
    let dir = check_target(target, opts.overwrite)?;
    let write_err = |source: io::Error| Error::Write {
        path: target.to_path_buf(),
        source,
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    remove_partials(&dir, &name);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".geosnap-partial")
        .tempfile_in(&dir)
        .map_err(write_err)?;
    tmp.as_file()
        .set_len(manifest.header.image_size)
        .map_err(write_err)?;
    progress.start(manifest.header.image_size);

    let chunks: Vec<(u64, u32, ChunkId)> = manifest
        .extents
        .iter()
        .filter_map(|e| match *e {
            Extent::Chunk { offset, len, id } => Some((offset, len, id)),
            Extent::Zero { len, .. } => {
                progress.advance(len);
                None
            }
        })
        .collect();
    let next = AtomicUsize::new(0);
    let recovered = AtomicU64::new(0);
    let cancel = AtomicBool::new(false);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let threads = opts
        .thread_count(manifest.header.chunker.max_chunk())
        .min(chunks.len().max(1));
    let file = tmp.as_file();
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let result = restore_worker(
                    &chunks, &next, &cancel, &recovered, source, file, target, progress,
                );
                if let Err(e) = result {
                    cancel.store(true, Ordering::SeqCst);
                    if let Ok(mut f) = failure.lock()
                        && f.is_none()
                    {
                        *f = Some(e);
                    }
                }
            });
        }
    });
    progress.finish();
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    crate::failpoint::hit("restore-before-rename");
    if opts.overwrite {
        tmp.persist(target).map_err(|e| write_err(e.error))?;
    } else {
        tmp.persist_noclobber(target).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                Error::TargetExists {
                    path: target.to_path_buf(),
                }
            } else {
                write_err(e.error)
            }
        })?;
    }
    sync_dir(&dir).map_err(write_err)?;
    let data_bytes: u64 = chunks.iter().map(|c| u64::from(c.1)).sum();
    Ok(RestoreStats {
        image_size: manifest.header.image_size,
        data_bytes,
        zero_bytes: manifest.header.image_size - data_bytes,
        chunks: chunks.len() as u64,
        recovered_chunks: recovered.load(Ordering::Relaxed),
    })
}

#[allow(clippy::too_many_arguments)]
fn restore_worker(
    chunks: &[(u64, u32, ChunkId)],
    next: &AtomicUsize,
    cancel: &AtomicBool,
    recovered: &AtomicU64,
    source: &dyn ChunkSource,
    file: &File,
    target: &Path,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let mut dec = Decoder::new()?;
    let mut buf = Vec::new();
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(&(offset, len, id)) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) else {
            return Ok(());
        };
        let attempt = fetch_verified(source, &mut dec, &id, len as usize, &mut buf)?;
        if attempt > 0 {
            recovered.fetch_add(1, Ordering::Relaxed);
        }
        file.write_all_at(&buf, offset)
            .map_err(|source| Error::Write {
                path: target.to_path_buf(),
                source,
            })?;
        progress.advance(u64::from(len));
    }
}

/// Fetches `id` into `out`, trying further copies while the source offers them. Returns the
/// attempt that verified.
pub fn fetch_verified(
    source: &dyn ChunkSource,
    dec: &mut Decoder,
    id: &ChunkId,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<u32, Error> {
    let mut first_err: Option<Error> = None;
    for attempt in 0.. {
        let result = source.fetch(id, attempt).and_then(|obj| match obj {
            Some(obj) => dec
                .decode_into(id, &obj, Some(len), out)
                .map(|()| Some(obj)),
            None => Ok(None),
        });
        match result {
            Ok(Some(obj)) => {
                if attempt > 0 {
                    source.recovered(id, attempt, &obj);
                }
                return Ok(attempt);
            }
            Ok(None) => break,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(Error::ChunkMissing { id: *id }))
}

/// Removes what an earlier restore to the same target left when it was killed (its
/// temporary file is only deleted by a clean exit).
fn remove_partials(dir: &Path, name: &str) {
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let file = file.to_string_lossy();
        if file.starts_with(&prefix) && file.ends_with(".geosnap-partial") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// fsyncs a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
