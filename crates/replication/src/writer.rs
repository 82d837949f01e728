//! Replicated snapshot writes.
//!
//! Per target store: drop an in-flight marker, read its index to learn what it holds,
//! receive frames of the chunks it lacks packed into large objects (concurrently with the
//! other stores), then an index object for those packs, a flush, and the manifest. A
//! manifest is written only to stores that hold every chunk, and only if at least the
//! quorum of them do; otherwise no manifest is left anywhere. A store whose buffer stays
//! full while the others keep up is cut loose (if the quorum allows) and owed a
//! replication job.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::gc::LISTING_WAIT;
use crate::index::{self, Entry};
use crate::pack::{self, PackBuilder};
use geosnap_engine::codec::EncodedFrame;
use geosnap_engine::image::Image;
use geosnap_engine::manifest::{EncodedManifest, ManifestView};
use geosnap_engine::manifest::{Extent, decode_extents};
use geosnap_engine::manifest::{ManifestHeader, SnapshotMeta};
use geosnap_engine::snapshot::{
    Checkpoint, Journal, ResumeFrom, SnapshotOptions, SnapshotStats, reuse_manifest,
    snapshot_image_with,
};
use geosnap_engine::store::ChunkSink;
use geosnap_engine::{ChunkId, Progress, SnapshotId};
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::bucket::Bucket;
use crate::region::{Regions, Tuning};
use crate::sorted::{Record, SortedIndex, SortedIndexBuilder};
use crate::{Error, Result, layout};

/// What to snapshot.
#[derive(Clone, Debug)]
pub struct WriteRequest {
    /// Image file.
    pub image: PathBuf,
    /// Snapshot identity; `completed_at` is set when the data is durable.
    pub meta: SnapshotMeta,
    /// Chunker, zstd level, threads.
    pub options: SnapshotOptions,
    /// The manifest of an earlier snapshot of the same image, which the image's file
    /// identity and times say has not changed since: reused without a scan if every store
    /// holds its chunks and sampled chunks still match (`snapshot::reuse_manifest`).
    pub reuse: Option<EncodedManifest>,
    /// An interrupted attempt's checkpoints to resume from, and where this attempt's go.
    pub resume: Resume,
}

/// Records a checkpoint; called on the scan's reader thread.
pub type CheckpointFn = dyn FnMut(&Checkpoint<'_>) + Send;

/// Picking up the scan of an interrupted attempt at the same snapshot, and leaving
/// checkpoints for the next one.
#[derive(Clone, Default)]
pub struct Resume {
    /// The extents earlier attempts recorded, from image offset 0, as
    /// `manifest::encode_extents` writes them, in a file. The scan resumes after the longest
    /// run of them that fits the image and the chunker, whose chunks every store still
    /// writing holds (their packs may not have been indexed, or gc may have taken them
    /// since), and whose sampled chunks and zero runs still read as recorded (see
    /// `resume_point`); from the start if that run is empty. The caller vouches that the
    /// image file has not changed.
    pub extents: Option<Arc<std::fs::File>>,
    /// Image offsets where the earlier attempts' checkpoints end, ascending: a resumed scan
    /// starts at one of them, so this attempt's checkpoints continue that chain.
    pub boundaries: Vec<u64>,
    /// Receives this attempt's checkpoints, every `every` bytes of image finished.
    pub journal: Option<Arc<Mutex<CheckpointFn>>>,
    /// Image bytes between checkpoints (with `journal`).
    pub every: u64,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("extents", &self.extents.is_some())
            .field("boundaries", &self.boundaries.len())
            .field("journal", &self.journal.is_some())
            .field("every", &self.every)
            .finish()
    }
}

/// Chunks at the end of a resumed run of extents, and at most as many spread over it, that
/// are read and hashed again before the scan trusts it.
pub const RESUME_SAMPLES: usize = 8;

/// Extents whose chunks are looked up in the stores' indexes at once when resuming.
const RESUME_BATCH: usize = 1 << 16;

/// How one store fared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ReplicaOutcome {
    /// Holds every chunk and the manifest.
    Written,
    /// Missed (down, failed or cut loose); a replication job owes it the snapshot.
    Owed {
        /// Why.
        reason: String,
    },
}

/// A committed snapshot.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// The header of the manifest as written.
    pub header: ManifestHeader,
    /// Engine figures.
    pub stats: SnapshotStats,
    /// Per store (region name), in target order.
    pub replicas: Vec<(String, ReplicaOutcome)>,
    /// Encoded bytes uploaded, summed over stores.
    pub uploaded_bytes: u64,
    /// The snapshot whose manifest was reused, when the image was not scanned.
    pub reused: Option<SnapshotId>,
    /// Image offset where the scan resumed after an interrupted attempt's extents (0: it
    /// scanned from the start).
    pub resumed_at: u64,
}

/// Writes a snapshot of `req.image` to the stores its backing calls for.
pub async fn write_snapshot(
    regions: &Regions,
    req: WriteRequest,
    progress: Arc<dyn Progress + Send + Sync>,
    now: &(dyn Fn() -> i64 + Sync),
) -> Result<WriteOutcome> {
    let (buckets, quorum) = regions.targets(req.meta.backing, &req.meta.home_region)?;
    let tuning = regions.tuning;
    let id = req.meta.id;

    // What each store holds, and an in-flight marker so gc spares what we add. One index
    // for all stores (bit i: store i holds the chunk), filled as their indexes stream in,
    // sorted by id into a temporary file: its memory does not grow with the stores.
    let held = Mutex::new(SortedIndexBuilder::<Holders>::with_memory(
        tuning.index_memory,
    ));
    let spill: Mutex<Option<std::io::Error>> = Mutex::default();
    let prepared = futures::future::join_all(buckets.into_iter().enumerate().map(|(i, b)| {
        let (held, spill) = (&held, &spill);
        async move {
            let ready = async {
                let marker = layout::inflight(&id);
                b.put(&marker, Bytes::from(now().to_string())).await?;
                crate::gc::wait_listed(&b, &layout::inflight_prefix(), &marker, LISTING_WAIT)
                    .await?;
                crate::gc::wait_for_gc(&b).await?;
                let mut damaged = None;
                index::visit(&b, |object, entries| match entries {
                    Ok(entries) => {
                        if let Ok(mut h) = held.lock() {
                            for e in entries {
                                let holders = Holders {
                                    chunk: e.chunk,
                                    stores: target_bit(i),
                                };
                                if let Err(err) = h.push(holders)
                                    && let Ok(mut s) = spill.lock()
                                {
                                    s.get_or_insert(err);
                                }
                            }
                        }
                    }
                    Err(why) => {
                        damaged.get_or_insert(format!("index object {object}: {why}"));
                    }
                })
                .await?;
                if let Some(why) = damaged {
                    // Chunks it names may be missing: that store gets them all again.
                    tracing::warn!(store = %b, %why, "damaged index object; its chunks are rewritten");
                }
                Ok::<_, Error>(())
            }
            .await;
            Target::new(b, ready, &tuning)
        }
    }))
    .await;
    let targets: Vec<Arc<Target>> = prepared.into_iter().map(Arc::new).collect();
    if let Err(e) = check_quorum(&targets, quorum) {
        cleanup(&targets, &id, false).await;
        return Err(e);
    }
    let held = held.into_inner().unwrap_or_default();
    let held = match spill.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => tokio::task::spawn_blocking(move || held.finish())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
    };
    let held = match held {
        Ok(held) => held,
        Err(source) => {
            cleanup(&targets, &id, false).await;
            return Err(Error::Engine(geosnap_engine::Error::Spill {
                action: "write",
                what: HELD_FILE,
                source,
            }));
        }
    };

    let sink = Arc::new(Sink {
        targets: targets.clone(),
        held,
        // Sized for the image once it is open, below.
        claimed: Mutex::new(geosnap_engine::RecentIds::for_chunks(0)),
        handle: Handle::current(),
        quorum,
        tuning,
    });
    let uploaders: Vec<_> = targets
        .iter()
        .map(|t| {
            let rx = t.take_receiver();
            tokio::spawn(upload(t.clone(), rx, tuning))
        })
        .collect();

    // Each region's state on the progress line, twice a second.
    let reporter = {
        let (targets, progress) = (targets.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                progress.message(&region_states(&targets));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let scan = {
        let (sink, image, options) = (sink.clone(), req.image.clone(), req.options);
        let reuse = req.reuse.clone();
        let resume = req.resume.clone();
        tokio::task::spawn_blocking(move || {
            let image = Image::open(&image)?;
            if let Some(previous) = reuse {
                // Every store still writing must hold every chunk.
                let held = |ids: &[ChunkId]| sink.all_held(ids);
                let seed = u64::from_le_bytes(id.0[8..].try_into().unwrap_or_default());
                match reuse_manifest(&previous, &image, options.chunker, seed, held, &*progress) {
                    Ok(Some(scanned)) => return Ok((scanned, Some(previous.header().meta.id), 0)),
                    Ok(None) => tracing::info!("image differs from its last snapshot; scanning"),
                    Err(e) => {
                        tracing::info!(error = %e, "cannot reuse the last snapshot; scanning")
                    }
                }
            }
            let chunks = image.size() / options.chunker.typical_chunk().max(1);
            if let Ok(mut claimed) = sink.claimed.lock() {
                *claimed = geosnap_engine::RecentIds::for_chunks(chunks);
            }
            let point = resume
                .extents
                .as_deref()
                .and_then(|f| resume_point(f, &resume.boundaries, &image, &options, &sink));
            let kept = point
                .zip(resume.extents.as_deref())
                .and_then(|((count, end), f)| {
                    let extents = extents_of(f).ok()?;
                    Some((extents.take(count as usize), end))
                });
            let resumed_at = kept.as_ref().map_or(0, |(_, end)| *end);
            let mut kept = kept.map(|(extents, _)| extents);
            let from = kept.as_mut().map(|extents| ResumeFrom { extents });
            if resume.extents.is_some() {
                tracing::info!(resumed_at, "resuming an interrupted snapshot");
            }
            let mut record = |c: &Checkpoint<'_>| {
                if let Some(j) = &resume.journal
                    && let Ok(mut f) = j.lock()
                {
                    f(c);
                }
            };
            let journal = resume.journal.is_some().then_some(Journal {
                every: resume.every,
                record: &mut record,
            });
            let scanned = snapshot_image_with(&image, &options, &*sink, &*progress, from, journal)?;
            Ok((scanned, None, resumed_at))
        })
        .await
    };
    for t in &targets {
        t.close();
    }
    reporter.abort();
    if let Ok(c) = sink.claimed.lock()
        && c.forgotten() > 0
    {
        tracing::info!(
            forgotten = c.forgotten(),
            "the snapshot claimed more chunks than its claim table holds; a chunk it forgot that repeats later in the image was stored again"
        );
    }
    let (scanned, reused, resumed_at) = match scan {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            abort(&uploaders);
            cleanup(&targets, &id, false).await;
            return Err(match e {
                geosnap_engine::Error::Store(boxed) => match boxed.downcast::<Error>() {
                    Ok(ours) => *ours,
                    Err(other) => Error::Engine(geosnap_engine::Error::Store(other)),
                },
                e => Error::Engine(e),
            });
        }
        Err(e) => {
            abort(&uploaders);
            cleanup(&targets, &id, false).await;
            return Err(Error::Task(e.to_string()));
        }
    };

    // Wait for the stores that kept up; those cut loose are finished by replication.
    for (t, u) in targets.iter().zip(&uploaders) {
        if t.detached.load(Ordering::SeqCst) {
            u.abort();
        }
    }
    let mut entries = Vec::with_capacity(targets.len());
    for (t, u) in targets.iter().zip(uploaders) {
        let got = if t.detached.load(Ordering::SeqCst) {
            Vec::new()
        } else {
            match u.await {
                Ok(e) => e,
                Err(_) => {
                    t.fail("upload task failed".into());
                    Vec::new()
                }
            }
        };
        entries.push(got);
    }
    // The packs are durable; now the index that finds their chunks.
    futures::future::join_all(
        targets
            .iter()
            .zip(&entries)
            .filter(|(t, _)| t.active())
            .map(|(t, entries)| async move {
                let r = if entries.is_empty() {
                    Ok(())
                } else {
                    index::write(&t.bucket, entries).await.map(|_| ())
                };
                if let Err(e) = r {
                    t.fail(e.to_string());
                }
            }),
    )
    .await;
    if let Err(e) = check_quorum(&targets, quorum) {
        cleanup(&targets, &id, false).await;
        return Err(e);
    }

    geosnap_engine::failpoint::hit("snapshot-before-manifest");
    let mut meta = req.meta.clone();
    meta.completed_at = now();
    // Encoded from the scan's extent log now that the scan's buffers are gone.
    let finished = scanned
        .extents
        .finish(meta, scanned.stats.image_size, tuning.manifest_memory);
    let (header, encoded) = match finished {
        Ok(f) => f,
        Err(e) => {
            // No manifest anywhere; the markers go too, so gc need not wait for their TTL.
            cleanup(&targets, &id, false).await;
            return Err(e.into());
        }
    };
    futures::future::join_all(targets.iter().filter(|t| t.active()).map(|t| {
        let encoded = &encoded;
        async move {
            let r = t.bucket.put_manifest(&id, encoded).await;
            if let Err(e) = r {
                t.fail(e.to_string());
            }
        }
    }))
    .await;
    if let Err(e) = check_quorum(&targets, quorum) {
        cleanup(&targets, &id, true).await;
        return Err(e);
    }
    // The snapshot is committed in the quorum: markers of written stores can go, once gc
    // can see the manifest that now protects the chunks.
    for t in targets.iter().filter(|t| t.active()) {
        let manifest = layout::manifest(&id);
        let listed = crate::gc::wait_listed(
            &t.bucket,
            &layout::snapshots_prefix(),
            &manifest,
            LISTING_WAIT,
        )
        .await;
        if matches!(listed, Ok(true)) {
            let _ = t.bucket.delete(&layout::inflight(&id)).await;
        }
    }
    let replicas = targets
        .iter()
        .map(|t| {
            let outcome = if t.active() {
                ReplicaOutcome::Written
            } else {
                ReplicaOutcome::Owed { reason: t.reason() }
            };
            (t.bucket.region.clone(), outcome)
        })
        .collect();
    Ok(WriteOutcome {
        header,
        stats: scanned.stats,
        replicas,
        uploaded_bytes: targets
            .iter()
            .map(|t| t.uploaded_bytes.load(Ordering::Relaxed))
            .sum(),
        reused,
        resumed_at,
    })
}

/// The extents in `file` (see [`Resume::extents`]), from its start.
fn extents_of(
    file: &std::fs::File,
) -> std::result::Result<
    impl Iterator<Item = std::result::Result<Extent, geosnap_engine::Error>> + use<>,
    geosnap_engine::Error,
> {
    use std::io::{Seek, SeekFrom};
    let spill = |source| geosnap_engine::Error::Spill {
        action: "read",
        what: "the interrupted attempt's extents",
        source,
    };
    let mut f = file.try_clone().map_err(spill)?;
    f.seek(SeekFrom::Start(0)).map_err(spill)?;
    Ok(decode_extents(
        std::io::BufReader::with_capacity(1 << 20, f),
        0,
    ))
}

/// How many of the extents in `file` a resumed scan keeps, and the image offset where they
/// end: the longest run from the start that ends at one of `boundaries`, decodes, fits the
/// image and the chunker, and names only chunks every store still writing holds, if its
/// last [`RESUME_SAMPLES`] chunks and as many spread over it (the first of every run
/// between boundaries, thinned) still hash to their ids and the first 64 KiB of its last
/// four zero runs still read as zeros. `None` when that run is empty or anything fails: the scan
/// starts from 0.
fn resume_point(
    file: &std::fs::File,
    boundaries: &[u64],
    image: &Image,
    options: &SnapshotOptions,
    sink: &Sink,
) -> Option<(u64, u64)> {
    let max = options.chunker.max_chunk() as u64;
    let mut extents = extents_of(file).ok()?;
    let mut count = 0u64;
    // The last boundary reached, with the extents up to it and the last chunks before it.
    let mut kept = (0u64, 0u64);
    let mut kept_last = Vec::new();
    let mut boundaries = boundaries.iter().copied().peekable();
    let mut last: std::collections::VecDeque<(u64, u32, ChunkId)> = Default::default();
    // The first chunk of every run between boundaries, thinned to at most RESUME_SAMPLES
    // spread over the image, and the last zero runs.
    let mut spread: Vec<(u64, u32, ChunkId)> = Vec::new();
    let mut row_start = true;
    let mut zeros: std::collections::VecDeque<(u64, u64)> = Default::default();
    let mut kept_zeros = Vec::new();
    let mut batch: Vec<Extent> = Vec::with_capacity(RESUME_BATCH);
    'runs: loop {
        batch.clear();
        let mut more = true;
        while batch.len() < RESUME_BATCH {
            match extents.next() {
                Some(Ok(e))
                    if !e.is_empty()
                        && e.offset()
                            .checked_add(e.len())
                            .is_some_and(|end| end <= image.size())
                        && !matches!(e, Extent::Chunk { len, .. } if u64::from(len) > max) =>
                {
                    batch.push(e)
                }
                _ => {
                    more = false;
                    break;
                }
            }
        }
        let mut ids: Vec<ChunkId> = batch
            .iter()
            .filter_map(|e| match e {
                Extent::Chunk { id, .. } => Some(*id),
                Extent::Zero { .. } => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let held = sink.held_by_all(&ids);
        for e in &batch {
            match *e {
                Extent::Chunk { offset, len, id } => {
                    if !ids.binary_search(&id).is_ok_and(|i| held[i]) {
                        break 'runs;
                    }
                    if last.len() == RESUME_SAMPLES {
                        last.pop_front();
                    }
                    last.push_back((offset, len, id));
                    if row_start {
                        if spread.len() == 2 * RESUME_SAMPLES {
                            let thinned = spread.iter().step_by(2).copied().collect();
                            spread = thinned;
                        }
                        spread.push((offset, len, id));
                        row_start = false;
                    }
                }
                Extent::Zero { offset, len } => {
                    if zeros.len() == 4 {
                        zeros.pop_front();
                    }
                    zeros.push_back((offset, len));
                }
            }
            count += 1;
            // Checked when the batch was read.
            let end = e.offset().saturating_add(e.len());
            while boundaries.next_if(|b| *b < end).is_some() {}
            if boundaries.next_if_eq(&end).is_some() {
                kept = (count, end);
                kept_last = last.iter().chain(&spread).copied().collect();
                kept_zeros = zeros.iter().copied().collect();
                row_start = true;
            }
        }
        if !more {
            break;
        }
    }
    let (count, end) = kept;
    if count == 0 {
        return None;
    }
    // The file's stamp says the image has not changed; its last chunks, chunks spread over
    // the run and its last zero runs confirm it.
    for (offset, len) in kept_zeros {
        let mut buf = vec![0u8; len.min(64 << 10) as usize];
        image.read_at(offset, &mut buf).ok()?;
        if !geosnap_engine::zero::is_zero(&buf) {
            tracing::info!(
                "the image no longer holds what the interrupted attempt read; scanning from the start"
            );
            return None;
        }
    }
    let last = kept_last;
    let mut data = Vec::new();
    for &(offset, len, _) in &last {
        let mut buf = vec![0u8; len as usize];
        image.read_at(offset, &mut buf).ok()?;
        data.push(buf);
    }
    let ids = ChunkId::of_each(data.iter().map(|d| &d[..]));
    if ids.iter().zip(&last).any(|(got, want)| *got != want.2) {
        tracing::info!(
            "the image no longer holds what the interrupted attempt read; scanning from the start"
        );
        return None;
    }
    Some((count, end))
}

/// "it-1 41 MiB, de-1 38 MiB, nl-1 down": what each store has received.
fn region_states(targets: &[Arc<Target>]) -> String {
    targets
        .iter()
        .map(|t| {
            let state = if t.failed.load(Ordering::Relaxed) {
                "failed".to_string()
            } else if t.detached.load(Ordering::Relaxed) {
                "owed".to_string()
            } else {
                let mib = t.uploaded_bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
                format!("{mib:.0} MiB")
            };
            format!("{} {state}", t.bucket.region)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_quorum(targets: &[Arc<Target>], quorum: usize) -> Result<()> {
    let written = targets.iter().filter(|t| t.active()).count();
    if written >= quorum {
        return Ok(());
    }
    let reasons = targets
        .iter()
        .filter(|t| !t.active())
        .map(|t| t.labelled_reason())
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::QuorumNotMet {
        written,
        needed: quorum,
        reasons,
    })
}

fn abort<T>(uploaders: &[tokio::task::JoinHandle<T>]) {
    for u in uploaders {
        u.abort();
    }
}

/// Removes what a failed snapshot left visible: manifests (if any were written) and
/// markers. Chunks stay for gc.
async fn cleanup(targets: &[Arc<Target>], id: &geosnap_engine::SnapshotId, manifests: bool) {
    for t in targets {
        if manifests {
            let _ = t.bucket.delete(&layout::manifest(id)).await;
        }
        let _ = t.bucket.delete(&layout::inflight(id)).await;
    }
}

struct Upload {
    frame: EncodedFrame,
    permit: OwnedSemaphorePermit,
}

/// One store being written.
struct Target {
    bucket: Bucket,
    failed: AtomicBool,
    detached: AtomicBool,
    reason: Mutex<String>,
    budget: Arc<Semaphore>,
    budget_total: usize,
    full_since: Mutex<Option<Instant>>,
    tx: Mutex<Option<mpsc::UnboundedSender<Upload>>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Upload>>>,
    uploaded_bytes: AtomicU64,
}

impl Target {
    fn new(bucket: Bucket, ready: Result<()>, tuning: &Tuning) -> Target {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget_total = (tuning.buffer_bytes / 1024).max(1);
        let t = Target {
            bucket,
            failed: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            budget: Arc::new(Semaphore::new(budget_total)),
            budget_total,
            full_since: Mutex::new(None),
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            uploaded_bytes: AtomicU64::new(0),
        };
        if let Err(e) = ready {
            t.fail(e.to_string());
        }
        t
    }

    fn active(&self) -> bool {
        !self.failed.load(Ordering::SeqCst) && !self.detached.load(Ordering::SeqCst)
    }

    fn fail(&self, reason: String) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            tracing::warn!(store = %self.bucket, %reason, "store dropped from snapshot");
            if let Ok(mut r) = self.reason.lock() {
                *r = reason;
            }
        }
        self.close();
    }

    fn detach(&self) {
        if !self.detached.swap(true, Ordering::SeqCst) {
            if let Ok(mut r) = self.reason.lock() {
                *r = "fell behind the other regions; a replication job will finish it".into();
            }
            self.close();
        }
    }

    fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The reason, prefixed with the store unless it already names it.
    fn labelled_reason(&self) -> String {
        let reason = self.reason();
        let store = self.bucket.to_string();
        if reason.contains(&store) {
            reason
        } else {
            format!("{store}: {reason}")
        }
    }

    fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }

    fn take_receiver(&self) -> mpsc::UnboundedReceiver<Upload> {
        self.rx
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .unwrap_or_else(|| mpsc::unbounded_channel().1)
    }

    fn has_room(&self) -> bool {
        self.budget.available_permits() * 4 > self.budget_total
    }
}

/// Index entries a store's writer holds before it writes them as an index object: 16,384
/// entries (256 MiB of 16 KiB chunks, a 0.9 MB object) cap what each store's writer holds
/// at about 1 MiB; gc folds the objects into parts of [`index::OBJECT_ENTRIES`].
const INDEX_FLUSH: usize = 1 << 14;

/// Packs the frames queued for one store and uploads each pack once it is large enough,
/// `tuning.upload_concurrency` packs at a time; returns the index entries of every pack
/// written (empty if the store failed).
async fn upload(
    t: Arc<Target>,
    mut rx: mpsc::UnboundedReceiver<Upload>,
    tuning: Tuning,
) -> Vec<Entry> {
    let mut builder = PackBuilder::new();
    let mut permits = Vec::new();
    let mut entries = Vec::new();
    // Pack bytes uploaded since the last index object.
    let mut unindexed = 0u64;
    // Uploads run as tasks of their own: they progress while this loop waits for frames.
    let mut inflight = tokio::task::JoinSet::new();
    let send = |builder: PackBuilder, permits: Vec<OwnedSemaphorePermit>| {
        let t = t.clone();
        async move {
            let (id, parts, e) = builder.finish();
            let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
            let r = pack::upload(&t.bucket, &id, parts).await;
            drop(permits);
            match r {
                Ok(()) => {
                    if t.uploaded_bytes.fetch_add(n, Ordering::Relaxed) + n > 1 << 20 {
                        geosnap_engine::failpoint::hit("snapshot-some-chunks");
                    }
                    Some((e, n))
                }
                Err(e) => {
                    t.fail(e.to_string());
                    None
                }
            }
        }
    };
    while let Some(u) = rx.recv().await {
        if t.failed.load(Ordering::SeqCst) {
            continue;
        }
        builder.push_frame(u.frame);
        permits.push(u.permit);
        // A pack never waits for more than a quarter of the buffer: its frames hold that
        // buffer until it is uploaded.
        if builder.len() >= tuning.pack_bytes.min(tuning.buffer_bytes / 4).max(1) {
            let full = std::mem::take(&mut builder);
            inflight.spawn(send(full, std::mem::take(&mut permits)));
            while inflight.len() >= tuning.upload_concurrency.max(1) {
                if let Some(Ok(Some((e, n)))) = inflight.join_next().await {
                    entries.extend(e);
                    unindexed += n;
                }
            }
            // Index what is durable as it goes, so memory does not grow with the image and
            // an attempt that is interrupted leaves what it uploaded findable.
            if entries.len() >= INDEX_FLUSH || unindexed >= tuning.index_every.max(1) {
                if let Err(e) = index::write(&t.bucket, &entries).await {
                    t.fail(e.to_string());
                }
                entries.clear();
                unindexed = 0;
                geosnap_engine::failpoint::hit("snapshot-indexed-some");
            }
        }
    }
    if !builder.is_empty() && !t.failed.load(Ordering::SeqCst) {
        inflight.spawn(send(builder, permits));
    }
    while let Some(done) = inflight.join_next().await {
        match done {
            Ok(Some((e, _))) => entries.extend(e),
            Ok(None) => {}
            Err(e) => t.fail(format!("pack upload task failed: {e}")),
        }
    }
    if t.failed.load(Ordering::SeqCst) {
        Vec::new()
    } else {
        entries
    }
}

/// The engine's view of the target stores.
struct Sink {
    targets: Vec<Arc<Target>>,
    /// Chunks some target held before the snapshot: bit i set if `targets[i]` holds it.
    held: SortedIndex<Holders>,
    /// Chunks this snapshot has claimed, in bounded memory: forgetting one only stores a
    /// later copy of it again.
    claimed: Mutex<geosnap_engine::RecentIds>,
    handle: Handle,
    quorum: usize,
    tuning: Tuning,
}

/// A target's bit in the held map and in a chunk's class ([`Regions`] allows at most
/// [`crate::region::MAX_REGIONS`] = 32 regions, so every target has a bit of its own).
fn target_bit(i: usize) -> u32 {
    const _: () = assert!(crate::region::MAX_REGIONS <= 32);
    1 << i
}

/// Which stores held a chunk before the snapshot: bit i for `targets[i]`.
#[derive(Clone, Copy, Debug)]
struct Holders {
    chunk: ChunkId,
    stores: u32,
}

impl Record for Holders {
    const LEN: usize = 36;

    fn chunk(&self) -> &ChunkId {
        &self.chunk
    }

    fn encode(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(self.chunk.as_bytes());
        out[32..36].copy_from_slice(&self.stores.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Self {
        let mut chunk = [0u8; 32];
        chunk.copy_from_slice(&bytes[..32]);
        Holders {
            chunk: ChunkId(chunk),
            stores: u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]),
        }
    }

    fn absorb(&mut self, newer: Self) {
        self.stores |= newer.stores;
    }
}

/// The snapshot's name for its temporary file of what the stores hold, in errors.
const HELD_FILE: &str = "the snapshot's temporary file of the chunks the stores hold";

impl Sink {
    /// The targets that held chunk `id` before the snapshot, as bits. A failed read of the
    /// temporary file counts as "none": the chunk is stored again, which is safe.
    fn held_by(&self, id: &ChunkId) -> u32 {
        match self.held.get(id) {
            Ok(h) => h.map_or(0, |h| h.stores),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read {HELD_FILE}; storing the chunk");
                0
            }
        }
    }

    /// The bits of the targets still writing.
    fn active_bits(&self) -> u32 {
        self.targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.active())
            .fold(0, |m, (i, _)| m | target_bit(i))
    }

    /// For each of `ids` (sorted), whether every target still writing held it before the
    /// snapshot.
    fn held_by_all(&self, ids: &[ChunkId]) -> Vec<bool> {
        let active = self.active_bits();
        match self.held.lookup(ids) {
            Ok(found) => found
                .iter()
                .map(|h| h.is_some_and(|h| h.stores & active == active))
                .collect(),
            Err(_) => vec![false; ids.len()],
        }
    }

    /// Whether every target still writing held every one of `ids` (sorted) before the
    /// snapshot.
    fn all_held(&self, ids: &[ChunkId]) -> bool {
        self.held_by_all(ids).into_iter().all(|held| held)
    }

    fn active(&self) -> usize {
        self.targets.iter().filter(|t| t.active()).count()
    }

    /// Waits for room in `t`'s buffer; cuts `t` loose instead if it has been full for a
    /// while, another store has room, and the quorum survives without it.
    fn reserve(&self, t: &Target, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let permits = bytes.div_ceil(1024).min(t.budget_total) as u32;
        if let Ok(p) = t.budget.clone().try_acquire_many_owned(permits) {
            if let Ok(mut f) = t.full_since.lock() {
                *f = None;
            }
            return Some(p);
        }
        loop {
            let waited = self.handle.block_on(async {
                tokio::time::timeout(
                    Duration::from_millis(100),
                    t.budget.clone().acquire_many_owned(permits),
                )
                .await
            });
            match waited {
                Ok(Ok(p)) => return Some(p),
                Ok(Err(_)) => return None,
                Err(_) => {}
            }
            if !t.active() {
                return None;
            }
            let since = t
                .full_since
                .lock()
                .map(|mut f| *f.get_or_insert_with(Instant::now))
                .unwrap_or_else(|_| Instant::now());
            let others_keep_up = self
                .targets
                .iter()
                .any(|o| !std::ptr::eq(&**o, t) && o.active() && o.has_room());
            if since.elapsed() >= self.tuning.detach_after
                && others_keep_up
                && self.active() > self.quorum
            {
                t.detach();
                return None;
            }
        }
    }
}

impl ChunkSink for Sink {
    fn claim(&self, id: &ChunkId) -> Option<u32> {
        // The class is the set of targets that lack the chunk: a frame then goes only to
        // targets that lack every chunk in it.
        let lacking = self.active_bits() & !self.held_by(id);
        let fresh = lacking != 0
            && self
                .claimed
                .lock()
                .map(|mut c| c.insert(*id))
                .unwrap_or(true);
        fresh.then_some(lacking)
    }

    fn put_frame(
        &self,
        frame: EncodedFrame,
        class: u32,
    ) -> std::result::Result<(), geosnap_engine::Error> {
        // The class is the targets that lacked every chunk of the frame when it was claimed.
        for (i, t) in self.targets.iter().enumerate() {
            if !t.active() || class & target_bit(i) == 0 {
                continue;
            }
            let Some(permit) = self.reserve(t, frame.bytes.len()) else {
                continue;
            };
            let sent = t.tx.lock().ok().and_then(|tx| {
                tx.as_ref().map(|tx| {
                    tx.send(Upload {
                        frame: frame.clone(),
                        permit,
                    })
                })
            });
            if !matches!(sent, Some(Ok(()))) && t.active() {
                t.fail("upload queue closed".into());
            }
        }
        if self.active() < self.quorum {
            let reasons = self
                .targets
                .iter()
                .filter(|t| !t.active())
                .map(|t| t.labelled_reason())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(geosnap_engine::Error::store(Error::QuorumNotMet {
                written: self.active(),
                needed: self.quorum,
                reasons,
            }));
        }
        Ok(())
    }
}
