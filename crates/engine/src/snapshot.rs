//! The snapshot pipeline: one reader thread scans the image and cuts chunks; a pool of
//! workers hashes them, compresses the ones the store lacks and hands them to the sink.
//! A bounded queue between them keeps memory flat whatever the image size.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use bytes::Bytes;
use serde::Serialize;

use crate::chunker::ChunkerParams;
use crate::codec::{DEFAULT_LEVEL, Encoder, FRAME_TARGET};
use crate::image::Image;
use crate::manifest::{Extent, ExtentLog, ManifestView};
use crate::progress::Progress;
use crate::scanner::{Piece, Scanner};
use crate::store::ChunkSink;
use crate::zero::{ZERO_BLOCK, ZERO_RUN_MIN};
use crate::{ChunkId, Error};

/// How to cut, compress and parallelise a snapshot.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotOptions {
    /// Chunker.
    pub chunker: ChunkerParams,
    /// zstd level.
    pub level: i32,
    /// Hash-and-compress workers; 0 means one per core.
    pub threads: usize,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            chunker: ChunkerParams::default(),
            level: DEFAULT_LEVEL,
            threads: 0,
        }
    }
}

impl SnapshotOptions {
    /// Worker count after resolving 0 to the number of cores.
    pub fn worker_count(&self) -> usize {
        match self.threads {
            0 => thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    /// Bytes read per window: large enough to amortise syscalls and to hold two chunks.
    pub fn window(&self) -> usize {
        (8usize << 20).max(2 * self.chunker.max_chunk())
    }
}

/// What a snapshot found and stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotStats {
    /// Logical image size.
    pub image_size: u64,
    /// Bytes in chunks.
    pub data_bytes: u64,
    /// Bytes in zero runs (holes on restore).
    pub zero_bytes: u64,
    /// Chunk extents.
    pub chunks: u64,
    /// Chunks the store did not have.
    pub new_chunks: u64,
    /// Uncompressed bytes of those chunks.
    pub new_bytes: u64,
    /// Encoded bytes of those chunks, as handed to the store.
    pub stored_bytes: u64,
}

/// The extents of a snapshot, ready for a manifest, and its figures.
#[derive(Debug)]
pub struct Scanned {
    /// Image extents in order, on disk until the manifest is encoded.
    pub extents: ExtentLog,
    /// Figures.
    pub stats: SnapshotStats,
}

/// Consecutive chunks of the image, about one frame's worth.
struct Job {
    chunks: Vec<(usize, Bytes)>,
}

struct Done {
    /// Extent index and chunk id of every chunk of the job.
    ids: Vec<(usize, ChunkId)>,
    /// Chunks that were new, their raw bytes, and the encoded frame's size.
    new_chunks: u64,
    new_bytes: u64,
    stored: u64,
}

/// Where a scan picks up from an earlier, interrupted attempt at the same snapshot.
pub struct ResumeFrom<'a> {
    /// The extents of the image before the resume point, in order from offset 0, as the
    /// earlier attempt cut them; their chunks must already be in the store.
    pub extents: &'a mut dyn Iterator<Item = Result<Extent, Error>>,
}

impl std::fmt::Debug for ResumeFrom<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeFrom").finish_non_exhaustive()
    }
}

/// The extents a scan has finished since its last checkpoint: every byte of the image
/// before `end` is described by them and the checkpoints before.
#[derive(Debug)]
pub struct Checkpoint<'a> {
    /// Image offset where the first of them starts (the last checkpoint's `end`).
    pub start: u64,
    /// Image offset where the last of them ends.
    pub end: u64,
    /// The extents, as [`crate::manifest::encode_extents`] writes them.
    pub extents: &'a [u8],
}

/// Receives checkpoints once at least `every` bytes of the image have been finished since
/// the last one. Called on the scan's reader thread: it should not take long.
pub struct Journal<'a> {
    /// Image bytes between checkpoints.
    pub every: u64,
    /// Records one checkpoint.
    pub record: &'a mut dyn FnMut(&Checkpoint<'_>),
}

impl std::fmt::Debug for Journal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// Scans `image`, stores every chunk `sink` lacks, and returns the extents.
pub fn snapshot_image(
    image: &Image,
    opts: &SnapshotOptions,
    sink: &dyn ChunkSink,
    progress: &dyn Progress,
) -> Result<Scanned, Error> {
    snapshot_image_with(image, opts, sink, progress, None, None)
}

/// [`snapshot_image`], after the extents of `resume` (whose chunks are taken as stored,
/// and which are not read again) and handing finished extents to `journal` as it goes.
pub fn snapshot_image_with(
    image: &Image,
    opts: &SnapshotOptions,
    sink: &dyn ChunkSink,
    progress: &dyn Progress,
    resume: Option<ResumeFrom<'_>>,
    journal: Option<Journal<'_>>,
) -> Result<Scanned, Error> {
    opts.chunker.validate()?;
    Encoder::new(opts.level)?;
    let workers = opts.worker_count();
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(workers * 4);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let cancel = AtomicBool::new(false);
    let fail = |e: Error| {
        cancel.store(true, Ordering::SeqCst);
        if let Ok(mut f) = failure.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
    };
    progress.start(image.size());

    let read = thread::scope(|s| {
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let (fail, cancel) = (&fail, &cancel);
            s.spawn(move || {
                let mut enc = match Encoder::new(opts.level) {
                    Ok(e) => e,
                    Err(e) => return fail(e),
                };
                for job in job_rx.iter() {
                    if cancel.load(Ordering::Relaxed) {
                        continue;
                    }
                    let mut ids = Vec::with_capacity(job.chunks.len());
                    let mut fresh: Vec<(u32, ChunkId, &[u8])> = Vec::new();
                    let hashed = ChunkId::of_each(job.chunks.iter().map(|c| &c.1[..]));
                    for ((index, data), id) in job.chunks.iter().zip(hashed) {
                        ids.push((*index, id));
                        if let Some(class) = sink.claim(&id) {
                            fresh.push((class, id, data));
                        }
                    }
                    let mut done = Done {
                        ids,
                        new_chunks: fresh.len() as u64,
                        new_bytes: fresh.iter().map(|f| f.2.len() as u64).sum(),
                        stored: 0,
                    };
                    // One frame per class (nearly always one class per job).
                    fresh.sort_by_key(|f| f.0);
                    for class in fresh.chunk_by(|a, b| a.0 == b.0) {
                        let chunks: Vec<(ChunkId, &[u8])> =
                            class.iter().map(|f| (f.1, f.2)).collect();
                        let put = enc.encode(&chunks).and_then(|frame| {
                            let n = frame.bytes.len() as u64;
                            sink.put_frame(frame, class[0].0).map(|()| n)
                        });
                        match put {
                            Ok(n) => done.stored += n,
                            Err(e) => {
                                fail(e);
                                break;
                            }
                        }
                    }
                    if cancel.load(Ordering::Relaxed) {
                        continue;
                    }
                    progress.advance(job.chunks.iter().map(|c| c.1.len() as u64).sum());
                    let _ = done_tx.send(done);
                }
            });
        }
        drop(done_tx);
        let r = read_image(
            image, opts, &job_tx, &done_rx, &cancel, progress, resume, journal,
        );
        drop(job_tx);
        r
    });
    progress.finish();
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    let (mut pending, mut stats) = read?;
    for d in done_rx.iter() {
        apply(d, &mut pending, &mut stats)?;
    }
    let extents = pending.finish()?;
    Ok(Scanned { extents, stats })
}

/// Records a finished job's chunk ids and figures.
fn apply(d: Done, pending: &mut Pending<'_>, stats: &mut SnapshotStats) -> Result<(), Error> {
    for (index, id) in d.ids {
        pending.fill(index, id);
    }
    stats.new_chunks += d.new_chunks;
    stats.new_bytes += d.new_bytes;
    stats.stored_bytes += d.stored;
    pending.drain()
}

/// Extents cut but not yet in the log: a chunk waits for its id, and everything after it
/// waits for it, so the log receives extents in image order. Only the jobs in flight are
/// waited for, so this stays small whatever the image size.
struct Pending<'j> {
    /// Index (in image order) of `queue[0]`.
    first: usize,
    /// Extents and whether their id is known.
    queue: VecDeque<(Extent, bool)>,
    log: ExtentLog,
    journal: Option<Journaled<'j>>,
}

/// A journal and the extents logged since its last checkpoint.
struct Journaled<'j> {
    journal: Journal<'j>,
    start: u64,
    end: u64,
    since: Vec<u8>,
}

impl<'j> Pending<'j> {
    fn new(log: ExtentLog, journal: Option<Journal<'j>>) -> Pending<'j> {
        Pending {
            first: 0,
            queue: VecDeque::new(),
            log,
            journal: journal.map(|journal| Journaled {
                journal,
                start: 0,
                end: 0,
                since: Vec::new(),
            }),
        }
    }

    /// Logs an extent an earlier attempt finished (already checkpointed).
    fn resumed(&mut self, e: &Extent) -> Result<(), Error> {
        self.log.push(e)?;
        if let Some(j) = &mut self.journal {
            j.start = e.offset() + e.len();
            j.end = j.start;
        }
        Ok(())
    }

    /// Queues the next extent; returns its index.
    fn push(&mut self, e: Extent) -> usize {
        let ready = matches!(e, Extent::Zero { .. });
        self.queue.push_back((e, ready));
        self.first + self.queue.len() - 1
    }

    fn fill(&mut self, index: usize, chunk: ChunkId) {
        if let Some((Extent::Chunk { id, .. }, ready)) = index
            .checked_sub(self.first)
            .and_then(|i| self.queue.get_mut(i))
        {
            *id = chunk;
            *ready = true;
        }
    }

    /// Moves the ready extents at the front into the log.
    fn drain(&mut self) -> Result<(), Error> {
        while let Some((e, true)) = self.queue.front() {
            self.log.push(e)?;
            if let Some(j) = &mut self.journal {
                crate::manifest::encode_extents(&mut j.since, [e]);
                j.end = e.offset() + e.len();
                if j.end - j.start >= j.journal.every.max(1) {
                    (j.journal.record)(&Checkpoint {
                        start: j.start,
                        end: j.end,
                        extents: &j.since,
                    });
                    j.since.clear();
                    j.start = j.end;
                }
            }
            self.queue.pop_front();
            self.first += 1;
        }
        Ok(())
    }

    /// The log, once every extent is in it.
    fn finish(mut self) -> Result<ExtentLog, Error> {
        self.drain()?;
        if self.queue.is_empty() {
            Ok(self.log)
        } else {
            Err(Error::Cancelled)
        }
    }
}

/// The reader: windows in, jobs and extents out.
#[allow(clippy::too_many_arguments)]
fn read_image<'j>(
    image: &Image,
    opts: &SnapshotOptions,
    jobs: &crossbeam_channel::Sender<Job>,
    done: &crossbeam_channel::Receiver<Done>,
    cancel: &AtomicBool,
    progress: &dyn Progress,
    resume: Option<ResumeFrom<'_>>,
    journal: Option<Journal<'j>>,
) -> Result<(Pending<'j>, SnapshotStats), Error> {
    let size = image.size();
    let window = opts.window();
    let mut scanner = Scanner::new(opts.chunker);
    let mut pending = Pending::new(ExtentLog::new(opts.chunker)?, journal);
    let failed: std::cell::Cell<Option<Error>> = std::cell::Cell::new(None);
    let mut stats = SnapshotStats {
        image_size: size,
        ..SnapshotStats::default()
    };
    // An earlier attempt's extents: logged as they are; the scan starts where they end.
    let mut start = 0u64;
    if let Some(resume) = resume {
        for e in resume.extents {
            let e = e?;
            match e {
                Extent::Zero { len, .. } => stats.zero_bytes += len,
                Extent::Chunk { len, .. } => {
                    stats.data_bytes += u64::from(len);
                    stats.chunks += 1;
                }
            }
            pending.resumed(&e)?;
            start = e.offset().checked_add(e.len()).ok_or_else(|| {
                Error::ManifestCorrupt("an interrupted attempt's extent ends past 2^64".into())
            })?;
        }
        if start > size {
            return Err(Error::ManifestCorrupt(format!(
                "the interrupted attempt's extents reach {start}, past the image's {size} bytes"
            )));
        }
        progress.advance(start);
        scanner = scanner.starting_at(start);
    }
    let stopped = std::cell::Cell::new(false);
    let mut batch: Vec<(usize, Bytes)> = Vec::new();
    let mut batch_bytes = 0usize;
    let send = |batch: &mut Vec<(usize, Bytes)>, batch_bytes: &mut usize| {
        if batch.is_empty() {
            return;
        }
        let job = Job {
            chunks: std::mem::take(batch),
        };
        *batch_bytes = 0;
        if jobs.send(job).is_err() {
            stopped.set(true);
        }
    };
    let mut emit = |piece: Piece| match piece {
        Piece::Zero { offset, len } => {
            stats.zero_bytes += len;
            progress.advance(len);
            pending.push(Extent::Zero { offset, len });
        }
        Piece::Chunk { offset, data } => {
            stats.data_bytes += data.len() as u64;
            stats.chunks += 1;
            let index = pending.push(Extent::Chunk {
                offset,
                len: data.len() as u32,
                id: ChunkId([0; 32]),
            });
            if batch_bytes + data.len() > FRAME_TARGET {
                send(&mut batch, &mut batch_bytes);
                // Take in what the workers finished, so results never pile up.
                for d in done.try_iter() {
                    if let Err(e) = apply(d, &mut pending, &mut stats) {
                        let first = failed.take();
                        failed.set(first.or(Some(e)));
                    }
                }
            }
            batch_bytes += data.len();
            batch.push((index, data));
        }
    };
    let mut pos = start;
    while pos < size {
        if let Some(e) = failed.take() {
            return Err(e);
        }
        if cancel.load(Ordering::Relaxed) || stopped.get() {
            return Err(Error::Cancelled);
        }
        // A resumed scan may start inside a zero block (after a content-defined chunk):
        // then a window first, shortened to end on a block boundary; holes are skipped only
        // from a boundary on.
        let misaligned = pos % ZERO_BLOCK as u64;
        if misaligned == 0 {
            // Skip long holes without reading them.
            let hole_end = match image.next_data(pos)? {
                None => size,
                Some(d) => d / ZERO_BLOCK as u64 * ZERO_BLOCK as u64,
            };
            let hole = hole_end.saturating_sub(pos);
            if hole >= window as u64 || (hole_end == size && hole >= ZERO_RUN_MIN as u64) {
                scanner.push_zeros(hole, hole_end == size, &mut emit);
                pos = hole_end;
                continue;
            }
        }
        let n = (window as u64 - misaligned).min(size - pos) as usize;
        let mut buf = scanner.take_buffer(n);
        let carry = buf.len() - n;
        image.read_at(pos, &mut buf[carry..])?;
        pos += n as u64;
        scanner.push(buf, pos == size, &mut emit);
    }
    send(&mut batch, &mut batch_bytes);
    if let Some(e) = failed.take() {
        return Err(e);
    }
    if stopped.get() {
        return Err(Error::Cancelled);
    }
    Ok((pending, stats))
}

/// Chunk extents of the image a reused manifest is checked against: read and hashed, each
/// must still have the id the manifest gives it.
pub const REUSE_SAMPLES: u64 = 32;

/// Chunk ids a reused manifest's check hands to `held` at once (2 MiB of ids).
pub const REUSE_BATCH: usize = 1 << 16;

/// The snapshot of an image that has not changed since `previous` was taken (its file's
/// identity and times say so), without scanning it: `previous`'s extents, if the image is
/// still its size, was cut by `chunker`, every chunk is one `held` says the stores hold
/// (asked about [`REUSE_BATCH`] ids at a time, sorted, so that a store index on disk is
/// read in order), and [`REUSE_SAMPLES`] chunks spread over the image (the first and the last among them,
/// the rest at offsets `seed` varies) and the start of up to four zero runs still read as
/// the manifest says. `None` when any of that fails: the caller scans instead.
pub fn reuse_manifest(
    previous: &impl ManifestView,
    image: &Image,
    chunker: ChunkerParams,
    seed: u64,
    held: impl Fn(&[ChunkId]) -> bool,
    progress: &dyn Progress,
) -> Result<Option<Scanned>, Error> {
    let h = previous.header();
    if h.chunker != chunker || h.image_size != image.size() {
        return Ok(None);
    }
    let stride = (h.chunk_count / REUSE_SAMPLES).max(1);
    let phase = seed % stride;
    let mut log = ExtentLog::new(chunker)?;
    let mut stats = SnapshotStats {
        image_size: h.image_size,
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut zero_samples = 0;
    let mut batch: Vec<ChunkId> = Vec::new();
    let all_held = |batch: &mut Vec<ChunkId>| {
        batch.sort_unstable();
        let held = held(batch);
        batch.clear();
        held
    };
    for e in previous.extents() {
        let e = e?;
        log.push(&e)?;
        match e {
            Extent::Chunk { offset, len, id } => {
                batch.push(id);
                if batch.len() == REUSE_BATCH && !all_held(&mut batch) {
                    return Ok(None);
                }
                let i = stats.chunks;
                if i % stride == phase || i == 0 || i + 1 == h.chunk_count {
                    buf.clear();
                    image.read_into(offset, len as usize, &mut buf)?;
                    if ChunkId::of(&buf) != id {
                        return Ok(None);
                    }
                }
                stats.chunks += 1;
                stats.data_bytes += u64::from(len);
            }
            Extent::Zero { offset, len } => {
                if zero_samples < 4 {
                    zero_samples += 1;
                    buf.clear();
                    image.read_into(offset, len.min(ZERO_RUN_MIN as u64) as usize, &mut buf)?;
                    if !crate::zero::is_zero(&buf) {
                        return Ok(None);
                    }
                }
                stats.zero_bytes += len;
            }
        }
    }
    if !batch.is_empty() && !all_held(&mut batch) {
        return Ok(None);
    }
    progress.start(h.image_size);
    progress.advance(h.image_size);
    progress.finish();
    Ok(Some(Scanned {
        extents: log,
        stats,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Extents of `lens` (true = chunk), offsets contiguous.
    fn extents(lens: &[(u32, bool)]) -> Vec<Extent> {
        let mut offset = 0;
        lens.iter()
            .enumerate()
            .map(|(i, &(len, chunk))| {
                let e = if chunk {
                    Extent::Chunk {
                        offset,
                        len,
                        id: ChunkId::of(&i.to_le_bytes()),
                    }
                } else {
                    Extent::Zero {
                        offset,
                        len: u64::from(len),
                    }
                };
                offset += u64::from(len);
                e
            })
            .collect()
    }

    proptest! {
        /// Whatever order the workers finish in, the log receives the extents in image
        /// order with their ids, and nothing before every id is known.
        #[test]
        fn ids_filled_in_any_order_reach_the_log_in_image_order(
            lens in prop::collection::vec((1u32..=16384, any::<bool>()), 1..60),
            order in any::<u64>(),
        ) {
            let want = extents(&lens);
            let chunker = ChunkerParams::fixed(16384).unwrap();
            let mut pending = Pending::new(ExtentLog::new(chunker).unwrap(), None);
            let mut indexes = Vec::new();
            for e in &want {
                let placeholder = match *e {
                    Extent::Chunk { offset, len, .. } => Extent::Chunk { offset, len, id: ChunkId([0; 32]) },
                    z => z,
                };
                let i = pending.push(placeholder);
                if let Extent::Chunk { id, .. } = e {
                    indexes.push((i, *id));
                }
            }
            // A seeded shuffle stands for the workers' finishing order.
            let mut x = order | 1;
            for k in (1..indexes.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                indexes.swap(k, (x % (k as u64 + 1)) as usize);
            }
            let last = indexes.pop();
            for (i, id) in indexes {
                pending.fill(i, id);
                pending.drain().unwrap();
            }
            if let Some((i, id)) = last {
                // One id still missing: the log cannot be finished yet.
                prop_assert!(!pending.queue.is_empty());
                pending.fill(i, id);
            }
            let log = pending.finish().unwrap();
            prop_assert_eq!(log.into_extents().unwrap(), want);
        }
    }

    #[test]
    fn a_chunk_never_filled_leaves_the_snapshot_cancelled() {
        let chunker = ChunkerParams::fixed(16384).unwrap();
        let mut pending = Pending::new(ExtentLog::new(chunker).unwrap(), None);
        pending.push(Extent::Zero {
            offset: 0,
            len: 4096,
        });
        pending.push(Extent::Chunk {
            offset: 4096,
            len: 100,
            id: ChunkId([0; 32]),
        });
        pending.drain().unwrap();
        assert!(matches!(pending.finish(), Err(Error::Cancelled)));
    }
}
