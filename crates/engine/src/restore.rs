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
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread;

use bytes::Bytes;
use serde::Serialize;

use crate::aligned::{self, AlignedBuf};
use crate::manifest::{Extent, ManifestView};
use crate::progress::Progress;
use crate::runs::{JOINS_AFTER, JOINS_BEFORE, Piece, Runs};
use crate::store::ChunkSource;
use crate::{ChunkId, Error, IdBuild, IdMap, IdSet};

/// How a restore behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Replace an existing file at the target.
    pub overwrite: bool,
    /// Threads fetching and verifying chunks; 0 picks the source's own count, or one that
    /// keeps the chunks they hold near 96 MiB (plus [`WRITE_QUEUE`] groups for the writer).
    pub threads: usize,
    /// Chunk extents planned and restored at a time; 0 means [`RESTORE_WINDOW`].
    pub window: usize,
}

/// Chunk extents a restore plans at a time by default: 16,384 (256 MiB of 16 KiB chunks,
/// about 2 MiB of bookkeeping). With 65,536 the 1 GiB mixed image (42,140 chunks) did
/// not fill one window and an 8 GiB one did: peak RSS 39–40 against 46–47 MiB; with 16,384
/// both fill it (35 and 37–38 MiB), at the same CPU time.
pub const RESTORE_WINDOW: usize = 1 << 14;

impl RestoreOptions {
    fn window(&self) -> usize {
        match self.window {
            0 => RESTORE_WINDOW,
            n => n,
        }
    }

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

/// Checks a restore target before any work: its directory exists, it is not taken unless
/// overwriting, and if it exists it is a regular file (never a device, link or directory).
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
        Ok(m) if !m.is_file() => {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            let what = if t.is_dir() {
                "a directory"
            } else if t.is_symlink() {
                "a symbolic link"
            } else if t.is_block_device() {
                "a block device"
            } else if t.is_char_device() {
                "a character device"
            } else {
                "not a regular file"
            };
            // A restore replaces its target by renaming a complete file over it, which
            // would swap a device node or a link for a plain file: refuse, even with
            // --force.
            Err(Error::Write {
                path: target.to_path_buf(),
                source: io::Error::other(format!(
                    "it is {what}; geosnap restores only to regular files"
                )),
            })
        }
        Ok(_) if !overwrite => Err(Error::TargetExists {
            path: target.to_path_buf(),
        }),
        _ => Ok(dir),
    }
}

/// Restores the image `manifest` describes to `target`.
pub fn restore_image(
    manifest: &(impl ManifestView + ?Sized),
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
        .set_len(manifest.header().image_size)
        .map_err(write_err)?;
    progress.start(manifest.header().image_size);

    // Windows of chunk extents, each restored before the next is read: what a restore
    // knows about its chunks (48 bytes per extent, sorted by id) stays bounded whatever the
    // image size. A chunk that recurs in a later window is fetched again there.
    let window = opts.window();
    let threads = match (opts.threads, source.parallelism()) {
        (0, Some(n)) => n.max(1),
        _ => opts.thread_count(manifest.header().chunker.max_chunk()),
    };
    let direct = aligned::open_direct(tmp.path());
    let writer = Writer {
        file: tmp.as_file(),
        direct: direct.as_ref(),
        target,
        progress,
        written: AtomicU64::new(0),
    };
    let cancel = AtomicBool::new(false);
    let recovered = AtomicU64::new(0);
    let recovered_ids = Mutex::new(IdSet::default());
    let mut data_bytes = 0u64;
    let mut chunk_count = 0u64;
    // Verified groups on their way to the writer: a few, so that the workers run a few
    // MiB ahead of the disk and no further (each worker holds one more while it waits to
    // hand it over). One writer outlives the windows, so the disk takes a window's last
    // groups while the next window is planned and decoded.
    let (to_writer, writes) = mpsc::sync_channel::<Vec<Piece>>(WRITE_QUEUE);
    thread::scope(|s| {
        let written = s.spawn(|| {
            let wrote = writer.run(writes, &cancel);
            if wrote.is_err() {
                cancel.store(true, Ordering::SeqCst);
            }
            wrote
        });
        let mut extents = manifest.extents();
        let mut places: Vec<Place> = Vec::new();
        let read = loop {
            if cancel.load(Ordering::SeqCst) {
                break Ok(());
            }
            places.clear();
            let mut bad = None;
            // Where the window's previous extent, a chunk, ended: the writer waits for a
            // chunk's neighbours only where they touch it.
            let mut chunk_end = None;
            for e in extents.by_ref() {
                match e {
                    Ok(Extent::Chunk { offset, len, id }) => {
                        data_bytes += u64::from(len);
                        let mut joins = 0;
                        if chunk_end == Some(offset)
                            && let Some(prev) = places.last_mut()
                        {
                            prev.joins |= JOINS_AFTER;
                            joins = JOINS_BEFORE;
                        }
                        chunk_end = offset.checked_add(u64::from(len));
                        places.push(Place {
                            id,
                            offset,
                            len,
                            joins,
                        });
                        if places.len() == window {
                            break;
                        }
                    }
                    Ok(Extent::Zero { len, .. }) => {
                        chunk_end = None;
                        progress.advance(len);
                    }
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = bad {
                break Err(e);
            }
            if places.is_empty() {
                break Ok(());
            }
            chunk_count += places.len() as u64;
            let taken = std::mem::take(&mut places);
            let window = match sorted_places(taken) {
                Ok(sorted) => Places::new(sorted),
                Err(e) => break Err(e),
            };
            let job = Restore {
                groups: &[],
                places: &window,
                next: &AtomicUsize::new(0),
                cancel: &cancel,
                recovered: &recovered,
                recovered_ids: &recovered_ids,
                source,
            };
            if let Err(e) = job.run(threads, &to_writer) {
                break Err(e);
            }
            places = window.sorted;
            crate::malloc::release_free();
        };
        if read.is_err() {
            cancel.store(true, Ordering::SeqCst);
        }
        drop(to_writer);
        let wrote = written.join().unwrap_or_else(|_| {
            Err(write_err(io::Error::other(
                "the restore's writer thread panicked",
            )))
        });
        // The writer fails only of itself (told to stop, it returns Ok), and then its
        // error is the cause of whatever the workers met after it.
        wrote.and(read)
    })?;
    progress.finish();
    // Every chunk the header counts was written: nothing short is ever renamed into place.
    let h = manifest.header();
    if chunk_count != h.chunk_count || data_bytes != h.data_bytes {
        return Err(Error::ManifestCorrupt(format!(
            "restored {chunk_count} chunks ({data_bytes} bytes) of the {} ({} bytes) it lists",
            h.chunk_count, h.data_bytes
        )));
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
    Ok(RestoreStats {
        image_size: manifest.header().image_size,
        data_bytes,
        zero_bytes: manifest.header().image_size - data_bytes,
        chunks: chunk_count,
        recovered_chunks: recovered.load(Ordering::Relaxed),
    })
}

/// Sorts a window's chunk extents by id and refuses an id given two lengths: one id is one
/// content, so one length (each chunk is checked against the first and written at every
/// place).
fn sorted_places(mut places: Vec<Place>) -> Result<Vec<Place>, Error> {
    places.sort_unstable_by_key(|p| p.id);
    if let Some(w) = places
        .windows(2)
        .find(|w| w[0].id == w[1].id && w[0].len != w[1].len)
    {
        return Err(Error::ManifestCorrupt(format!(
            "chunk {} is {} bytes at offset {} but {} bytes at offset {}",
            w[0].id.short(),
            w[0].len,
            w[0].offset,
            w[1].len,
            w[1].offset
        )));
    }
    Ok(places)
}

/// One chunk extent of a window.
#[derive(Clone, Copy, Debug)]
struct Place {
    id: ChunkId,
    offset: u64,
    len: u32,
    /// Which of its neighbours in the image are chunks that touch it (`runs::JOINS_*`).
    joins: u8,
}

/// Chunk extents sorted by chunk id, with where each 16-bit id prefix starts: finding a
/// chunk's extents is a jump and a search among the few that share its prefix, not a
/// binary search over every extent (which cost a tenth of a restore's CPU).
struct Places {
    sorted: Vec<Place>,
    starts: Vec<u32>,
}

impl Places {
    fn new(sorted: Vec<Place>) -> Places {
        let mut starts = vec![0u32; (1 << 16) + 1];
        for p in &sorted {
            starts[usize::from(prefix(&p.id)) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        Places { sorted, starts }
    }

    /// Every extent of chunk `id`.
    fn of(&self, id: &ChunkId) -> &[Place] {
        let p = usize::from(prefix(id));
        let bucket = &self.sorted[self.starts[p] as usize..self.starts[p + 1] as usize];
        let start = bucket.partition_point(|p| p.id < *id);
        let end = start + bucket[start..].partition_point(|p| p.id == *id);
        &bucket[start..end]
    }
}

/// The first two bytes of an id, the order `Places` is sorted in.
fn prefix(id: &ChunkId) -> u16 {
    u16::from_be_bytes([id.0[0], id.0[1]])
}

/// What the restore threads of one window share.
struct Restore<'a> {
    groups: &'a [Vec<ChunkId>],
    places: &'a Places,
    next: &'a AtomicUsize,
    cancel: &'a AtomicBool,
    recovered: &'a AtomicU64,
    /// Chunks recovered from a further copy so far, across windows.
    recovered_ids: &'a Mutex<IdSet>,
    source: &'a dyn ChunkSource,
}

/// What writes the restored file: every group's pieces, in the order they are handed over.
struct Writer<'a> {
    file: &'a File,
    /// The same file opened for direct I/O, where the filesystem allows it.
    direct: Option<&'a File>,
    target: &'a Path,
    progress: &'a dyn Progress,
    /// Bytes written through the page cache so far.
    written: AtomicU64,
}

impl Restore<'_> {
    /// Plans the window's distinct chunks into groups and restores them on `threads`
    /// threads, which fetch, decode and verify groups and hand their pieces to the writer;
    /// the first error stops them all.
    fn run(self, threads: usize, to_writer: &SyncSender<Vec<Piece>>) -> Result<(), Error> {
        let mut distinct: Vec<ChunkId> = self.places.sorted.iter().map(|p| p.id).collect();
        distinct.dedup();
        let mut groups = self.source.plan(&distinct);
        drop(distinct);
        // In the order of the first place in the image each group fills, so that the
        // writer gets the image roughly from start to end: after an incremental snapshot
        // the rewritten chunks (in packs of their own, planned last) come before the runs
        // they break, and the runs go out whole.
        let first_place = |g: &Vec<ChunkId>| {
            g.iter()
                .flat_map(|id| self.places.of(id))
                .map(|p| p.offset)
                .min()
                .unwrap_or(u64::MAX)
        };
        groups.sort_by_cached_key(first_place);
        let job = Restore {
            groups: &groups,
            ..self
        };
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        thread::scope(|s| {
            for _ in 0..threads.min(groups.len()).max(1) {
                let to_writer = to_writer.clone();
                s.spawn(|| {
                    if let Err(e) = job.worker(to_writer) {
                        job.cancel.store(true, Ordering::SeqCst);
                        if let Ok(mut f) = failure.lock()
                            && f.is_none()
                        {
                            *f = Some(e);
                        }
                    }
                });
            }
        });
        match failure.into_inner().ok().flatten() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes groups until none are left: fetch, verify each chunk and hand the writer its
    /// pieces (every place each chunk goes); a chunk missing or failing its hash is fetched
    /// again from further copies.
    fn worker(&self, to_writer: SyncSender<Vec<Piece>>) -> Result<(), Error> {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(group) = self.groups.get(self.next.fetch_add(1, Ordering::Relaxed)) else {
                return Ok(());
            };
            let (fetched, group_err) = match self.source.fetch(group, 0) {
                Ok(f) => (f.unwrap_or_default(), None),
                // The preferred copy failed as a whole: every chunk tries the others.
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            // Only chunks the group asked for are hashed (a source may answer with more).
            let wanted: IdSet = group.iter().copied().collect();
            let fetched: Vec<(ChunkId, Bytes)> = fetched
                .into_iter()
                .filter(|(id, _)| wanted.contains(id))
                .collect();
            let mut good: IdMap<Bytes> =
                IdMap::with_capacity_and_hasher(group.len(), IdBuild::default());
            let mut failed: IdMap<Error> = IdMap::default();
            // Every chunk's SHA-256, the group's chunks hashed together in vector lanes.
            let hashed = ChunkId::of_each(fetched.iter().map(|(_, data)| &data[..]));
            for ((id, data), actual) in fetched.into_iter().zip(hashed) {
                // A second copy counts only if the first failed its check.
                if good.contains_key(&id) {
                    continue;
                }
                match self.check_hashed(&id, actual, &data) {
                    Ok(()) => {
                        good.insert(id, data);
                    }
                    Err(e) => {
                        failed.insert(id, e);
                    }
                }
            }
            for id in group {
                if good.contains_key(id) {
                    continue;
                }
                let first = failed.remove(id).unwrap_or_else(|| match &group_err {
                    Some(e) => Error::ChunkUnreadable {
                        id: *id,
                        detail: e.clone(),
                    },
                    None => Error::ChunkMissing { id: *id },
                });
                let data = self.fallback(id, first)?;
                good.insert(*id, data);
            }
            let mut pieces: Vec<Piece> = Vec::new();
            for (id, data) in good {
                pieces.extend(self.places.of(&id).iter().map(|p| Piece {
                    offset: p.offset,
                    data: data.clone(),
                    joins: p.joins,
                }));
            }
            // The writer stopped: it failed (or panicked), which its join reports.
            if to_writer.send(pieces).is_err() {
                self.cancel.store(true, Ordering::SeqCst);
                return Ok(());
            }
        }
    }

    /// The chunk's bytes have the manifest's length and hash to its id.
    fn check(&self, id: &ChunkId, data: &[u8]) -> Result<(), Error> {
        self.check_hashed(id, ChunkId::of(data), data)
    }

    /// [`Restore::check`] of bytes already hashed to `actual`.
    fn check_hashed(&self, id: &ChunkId, actual: ChunkId, data: &[u8]) -> Result<(), Error> {
        if actual != *id {
            return Err(Error::ChunkCorrupt {
                id: *id,
                detail: format!("content hashes to {}", actual.short()),
            });
        }
        // The right content but another length than this place gives: the manifest is
        // wrong (one id given two lengths), not the store.
        if let Some(&Place {
            offset, len: want, ..
        }) = self.places.of(id).first()
            && data.len() != want as usize
        {
            return Err(Error::ManifestCorrupt(format!(
                "chunk {} is {} bytes, but the manifest gives it {want} bytes at offset {offset}",
                id.short(),
                data.len()
            )));
        }
        Ok(())
    }

    /// Asks further copies for one chunk the preferred copy failed with `first`; that
    /// first error is the one reported if no copy has it.
    fn fallback(&self, id: &ChunkId, first: Error) -> Result<Bytes, Error> {
        // No copy can fix a manifest.
        if matches!(first, Error::ManifestCorrupt(_)) {
            return Err(first);
        }
        let mut first_err = Some(first);
        for attempt in 1.. {
            match self.source.fetch(std::slice::from_ref(id), attempt) {
                Ok(None) => break,
                Ok(Some(v)) => {
                    if let Some((_, data)) = v.into_iter().find(|(c, _)| c == id) {
                        match self.check(id, &data) {
                            Ok(()) => {
                                // Once per chunk, though it may recur in later windows.
                                let first_time = self
                                    .recovered_ids
                                    .lock()
                                    .map(|mut r| r.insert(*id))
                                    .unwrap_or(true);
                                if first_time {
                                    self.source.recovered(id, attempt, &data);
                                    self.recovered.fetch_add(1, Ordering::Relaxed);
                                }
                                return Ok(data);
                            }
                            Err(e) => {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(Error::ChunkMissing { id: *id }))
    }
}

impl Writer<'_> {
    /// Writes the groups the workers verified until they have all stopped (or one failed),
    /// gathering their pieces into long runs first ([`Runs`]).
    fn run(&self, groups: Receiver<Vec<Piece>>, cancel: &AtomicBool) -> Result<(), Error> {
        let write_err = |source: io::Error| Error::Write {
            path: self.target.to_path_buf(),
            source,
        };
        // Direct writes need an aligned copy of each run they cannot take in place.
        let mut staging = match self.direct {
            Some(_) => Some(AlignedBuf::with_capacity(2 << 20).map_err(write_err)?),
            None => None,
        };
        let mut runs = Runs::new(LONG_RUN, HOLD);
        let mut ready = Vec::new();
        for (n, pieces) in groups.into_iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Ok(());
            }
            // The crash tests' full disk, a few groups in.
            if n == 3 && crate::failpoint::armed("restore-disk-full") {
                return Err(write_err(io::Error::from_raw_os_error(libc::ENOSPC)));
            }
            runs.add(pieces, &mut ready).map_err(write_err)?;
            for run in ready.drain(..) {
                self.write_pieces(&run, &mut staging)?;
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        runs.finish(&mut ready);
        for run in ready.drain(..) {
            self.write_pieces(&run, &mut staging)?;
        }
        Ok(())
    }

    /// Writes a run of touching pieces, at most [`MAX_WRITE`] bytes a call.
    fn write_pieces(&self, run: &[Piece], staging: &mut Option<AlignedBuf>) -> Result<(), Error> {
        let mut i = 0;
        while i < run.len() {
            let mut len = run[i].data.len();
            let mut j = i + 1;
            while j < run.len() && len + run[j].data.len() <= MAX_WRITE {
                len += run[j].data.len();
                j += 1;
            }
            self.write_span(&run[i..j], len, staging)?;
            i = j;
        }
        Ok(())
    }

    /// Writes `len` bytes of touching pieces in one call. Long spans aligned to
    /// [`aligned::ALIGN`] (with the fixed chunker, whose chunks and zero runs start on 4 KiB
    /// blocks, that is every long span) go straight to the disk through `direct`; the rest
    /// through the page cache.
    fn write_span(
        &self,
        pieces: &[Piece],
        len: usize,
        staging: &mut Option<AlignedBuf>,
    ) -> Result<(), Error> {
        let write_err = |source: io::Error| Error::Write {
            path: self.target.to_path_buf(),
            source,
        };
        let Some(first) = pieces.first() else {
            return Ok(());
        };
        let start = first.offset;
        let parts: Vec<&[u8]> = pieces.iter().map(|p| &p.data[..]).collect();
        match (self.direct, staging.as_mut()) {
            (Some(direct), Some(buf)) if len >= DIRECT_RUN && aligned::aligned(start, len) => {
                // Chunks of aligned sizes sit aligned in their decoded frames' buffers and
                // go to the disk from there; others are first copied into one.
                let in_place = parts.iter().all(|p| aligned::is_aligned(p));
                let written = if in_place {
                    aligned::write_all_vectored_at(direct, &parts, start)
                } else {
                    buf.clear();
                    for p in &parts {
                        buf.extend_from_slice(p).map_err(write_err)?;
                    }
                    direct.write_all_at(buf.as_slice(), start)
                };
                match written {
                    Ok(()) => {
                        self.progress.advance(len as u64);
                        Ok(())
                    }
                    // A filesystem that opens with O_DIRECT but wants larger alignment:
                    // this span goes through the page cache instead.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.write_cached(&parts, start)
                    }
                    Err(e) => Err(write_err(e)),
                }
            }
            _ => self.write_cached(&parts, start),
        }
    }

    /// Writes touching parts through the page cache in one call.
    fn write_cached(&self, parts: &[&[u8]], start: u64) -> Result<(), Error> {
        if let [one] = parts {
            return self.write_run(one, start);
        }
        self.write_run(&parts.concat(), start)
    }

    /// Writes one run through the page cache; starts writeback every 32 MiB, so the final
    /// fsync finds little left to do and the disk works while the threads decode.
    fn write_run(&self, data: &[u8], offset: u64) -> Result<(), Error> {
        self.file
            .write_all_at(data, offset)
            .map_err(|source| Error::Write {
                path: self.target.to_path_buf(),
                source,
            })?;
        let n = data.len() as u64;
        self.progress.advance(n);
        let before = self.written.fetch_add(n, Ordering::Relaxed);
        if before / WRITEBACK_STEP != (before + n) / WRITEBACK_STEP {
            start_writeback(self.file);
        }
        Ok(())
    }
}

/// Runs shorter than this go through the page cache even when aligned: a direct write waits
/// for the disk, and many short ones would spend the restore waiting.
const DIRECT_RUN: usize = 256 << 10;

/// A run this long is written at once, whether or not its neighbours have come (a direct
/// write of 1 MiB went as fast as one of 4 MiB here: `dd oflag=direct`, 1.7 GB/s both).
const LONG_RUN: usize = 1 << 20;

/// Bytes of verified pieces the writer holds at most while their neighbours are on the way.
const HOLD: usize = 32 << 20;

/// Bytes one write takes at most (the aligned copy of a run that needs one is this big).
const MAX_WRITE: usize = 8 << 20;

/// Verified groups waiting for the writer. With three fetching threads the restore of (b)
/// took 1.51-1.53 s with 6, 1.49-1.59 s with 12, 1.58-1.61 s with 3 and 1.60-1.78 s with 1;
/// with the two it has now, 4 took 1.42-1.47 s (other sizes not measured with two).
const WRITE_QUEUE: usize = 4;

/// Bytes written between two writeback kicks.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Asks the kernel to start writing the file's dirty pages now, without waiting.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a descriptor we own; it only schedules I/O. Errors (e.g.
    // on filesystems without it) are harmless: the fsync before the rename still runs.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
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
