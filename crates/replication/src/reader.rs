//! Restores from a chosen region: manifest and chunks come from that region; a chunk (or
//! manifest) missing or corrupt there is fetched from another region, verified, and
//! written back (repair), unless the restore is strict or volume-backed.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use geosnap_engine::codec::{DecodedFrame, Decoder, Encoder, FRAME_TARGET};
use geosnap_engine::manifest::{Backing, EncodedManifest, Extent, ManifestView};
use geosnap_engine::restore::{RestoreOptions, RestoreStats, restore_image};
use geosnap_engine::store::{ChunkSource, Fetched};
use geosnap_engine::{ChunkFilter, ChunkId, IdSet, Progress, SnapshotId};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::bucket::{Bucket, StoreKind};
use crate::index::{self, FrameRef};
use crate::pack::{self, PackBuilder};
use crate::region::Regions;
use crate::sorted::{SortedIndex, SortedIndexBuilder};
use crate::{Error, Result, layout};

/// What to restore and how.
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    /// Snapshot.
    pub snapshot: SnapshotId,
    /// Its backing, from the catalog.
    pub backing: Backing,
    /// Its home region.
    pub home: String,
    /// Region to read from.
    pub from: String,
    /// Read from `from` only: fail instead of falling back.
    pub strict: bool,
    /// Output file.
    pub target: PathBuf,
    /// Replace an existing output file.
    pub overwrite: bool,
}

/// A finished restore.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreOutcome {
    /// Region read from.
    pub region: String,
    /// Engine figures.
    pub stats: RestoreStats,
    /// Chunks that were missing or corrupt in the region and were repaired there.
    pub repaired_chunks: Vec<String>,
    /// Whether the region's manifest was repaired.
    pub repaired_manifest: bool,
    /// Chunks fetched elsewhere that could not be written back.
    pub unrepaired_chunks: Vec<String>,
    /// Compressed bytes read from each region that served any: more than one when the
    /// region asked for was slow and the others shared its work (striping), or when
    /// chunks fell back.
    pub read_from: Vec<RegionRead>,
}

/// Bytes a restore read from one region.
#[derive(Clone, Debug, Serialize)]
pub struct RegionRead {
    /// Region.
    pub region: String,
    /// Compressed bytes (frames) read.
    pub bytes: u64,
}

/// The stores a restore may read, in order of preference.
pub fn sources(regions: &Regions, req: &RestoreRequest) -> Result<Vec<Bucket>> {
    let region = regions.get(&req.from)?;
    if req.backing == Backing::Volume {
        if req.from != req.home {
            return Err(Error::Residency {
                id: req.snapshot,
                home: req.home.clone(),
                asked: req.from.clone(),
            });
        }
        return Ok(vec![region.bucket(StoreKind::Volume).clone()]);
    }
    let mut v = vec![region.bucket(StoreKind::Main).clone()];
    if !req.strict {
        v.extend(regions.others(&req.from));
    }
    Ok(v)
}

/// Reads and decodes a manifest from the first store that has a good copy; writes it back
/// to the first store if that one's copy was missing or damaged. Returns the manifest and
/// whether it was repaired. A manifest longer than `memory` bytes is kept in an anonymous
/// temporary file.
pub async fn fetch_manifest(
    stores: &[Bucket],
    id: &SnapshotId,
    memory: u64,
) -> Result<(EncodedManifest, bool)> {
    let mut first_err: Option<Error> = None;
    for (i, b) in stores.iter().enumerate() {
        match b.read_manifest(id, memory).await {
            Ok(m) => {
                if m.header().meta.id != *id {
                    first_err.get_or_insert(Error::Engine(geosnap_engine::Error::ManifestCorrupt(
                        format!(
                            "manifest at {} names snapshot {}",
                            layout::manifest(id),
                            m.header().meta.id
                        ),
                    )));
                    continue;
                }
                let repaired = i > 0
                    && matches!(
                        first_err,
                        Some(Error::SnapshotNotInRegion { .. } | Error::Engine(_))
                    )
                    && stores[0].put_manifest(id, m.bytes()).await.is_ok();
                return Ok((m, repaired));
            }
            Err(e) => {
                // The region asked for is down: say so rather than quietly reading elsewhere.
                // A local failure (no room for the temporary file) is no fault of the store.
                if e.is_local() || (i == 0 && matches!(e, Error::RegionUnavailable { .. })) {
                    return Err(e);
                }
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(Error::SnapshotNotInRegion {
        id: *id,
        region: "any region".into(),
    }))
}

/// The largest manifest a restore holds in memory (or `manifest_memory`, if lower): a
/// restore walks its manifest front to back, twice, so reading a larger one through a
/// temporary file costs nothing measurable, and what it would hold in memory grows with the
/// image (36 B per chunk). 8 GiB mixed image, 12.6 MB manifest, page cache dropped: peak RSS
/// 76–80 MiB through a file against 87–90 MiB in memory, 6.7–6.9 s against 7.0–7.3 s.
pub const RESTORE_MANIFEST_MEMORY: u64 = 1 << 20;

/// Restores a snapshot from one region.
pub async fn restore_snapshot(
    regions: &Regions,
    req: RestoreRequest,
    progress: Arc<dyn Progress + Send + Sync>,
) -> Result<RestoreOutcome> {
    let stores = sources(regions, &req)?;
    let memory = regions.tuning.manifest_memory.min(RESTORE_MANIFEST_MEMORY);
    let (manifest, repaired_manifest) = fetch_manifest(&stores, &req.snapshot, memory).await?;
    // Of a store's index, only the chunks this manifest may name are kept (a store that
    // holds many instances costs a restore no more than one that holds this one), sorted
    // by id into a temporary file: what stays in memory does not grow with the image.
    let mut wanted = ChunkFilter::with_capacity(manifest.header().chunk_count);
    for e in manifest.extents() {
        if let Extent::Chunk { id, .. } = e? {
            wanted.insert(&id);
        }
    }
    // The preferred store's index is needed to plan; others are read only if needed.
    let index_memory = regions.tuning.index_memory;
    let primary_index = load_sorted(&stores[0], &wanted, index_memory).await?;
    let store_count = stores.len();
    let indexes = stores.iter().map(|_| OnceLock::new()).collect::<Vec<_>>();
    let _ = indexes[0].set(Some(primary_index));
    let source = Arc::new(RegionSource {
        handle: Handle::current(),
        stores,
        indexes,
        wanted,
        index_memory,
        window: RwLock::default(),
        primary_down: AtomicBool::new(false),
        recovered: Mutex::default(),
        stripe_below: regions.tuning.stripe_below,
        loads: Loads::new(store_count),
        striped: Mutex::default(),
    });
    let opts = RestoreOptions {
        overwrite: req.overwrite,
        ..Default::default()
    };
    let stats = {
        let (source, target) = (source.clone(), req.target.clone());
        tokio::task::spawn_blocking(move || {
            restore_image(&manifest, &*source, &target, &opts, &*progress)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??
    };
    // Write what came from elsewhere back into the preferred store: one pack, one index.
    let recovered = source
        .recovered
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    let ids: Vec<String> = recovered.iter().map(|(id, _)| id.to_hex()).collect();
    let mut repaired_chunks = Vec::new();
    let mut unrepaired_chunks = Vec::new();
    if !recovered.is_empty() {
        let primary = source.stores[0].clone();
        let written = if source.primary_down.load(Ordering::Relaxed) {
            Err(Error::RegionUnavailable {
                region: primary.to_string(),
                reason: "it failed during the restore".into(),
            })
        } else {
            store_chunks(&primary, recovered).await
        };
        match written {
            Ok(()) => repaired_chunks = ids,
            Err(e) => {
                tracing::warn!(store = %primary, error = %e, "could not repair");
                unrepaired_chunks = ids;
            }
        }
    }
    let read_from = source
        .stores
        .iter()
        .zip(source.loads.bytes())
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(store, bytes)| RegionRead {
            region: store.region.clone(),
            bytes,
        })
        .collect();
    Ok(RestoreOutcome {
        region: req.from,
        stats,
        repaired_chunks,
        repaired_manifest,
        unrepaired_chunks,
        read_from,
    })
}

/// Stores verified chunk bytes in `bucket` as new frames in one pack, then an index object
/// for them (newer than any entry it shadows).
pub async fn store_chunks(bucket: &Bucket, chunks: Vec<(ChunkId, Bytes)>) -> Result<()> {
    let frames = tokio::task::spawn_blocking(move || {
        let mut enc = Encoder::new(geosnap_engine::codec::DEFAULT_LEVEL)?;
        let mut frames = Vec::new();
        let mut group: Vec<(ChunkId, &[u8])> = Vec::new();
        let mut bytes = 0;
        for (id, data) in &chunks {
            if bytes + data.len() > FRAME_TARGET && !group.is_empty() {
                frames.push(enc.encode(&group)?);
                group.clear();
                bytes = 0;
            }
            group.push((*id, data));
            bytes += data.len();
        }
        if !group.is_empty() {
            frames.push(enc.encode(&group)?);
        }
        Ok::<_, geosnap_engine::Error>(frames)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))??;
    let mut builder = PackBuilder::new();
    for f in frames {
        builder.push_frame(f);
    }
    let (id, parts, entries) = builder.finish();
    let session = geosnap_engine::SnapshotId::generate();
    crate::gc::with_marker(bucket, &session, async {
        pack::upload(bucket, &id, parts).await?;
        index::write(bucket, &entries).await?;
        Ok(())
    })
    .await
}

/// The restore's name for its index file, in errors.
const INDEX_FILE: &str = "the restore's index temporary file";

fn spill(action: &'static str, source: io::Error) -> geosnap_engine::Error {
    geosnap_engine::Error::Spill {
        action,
        what: INDEX_FILE,
        source,
    }
}

/// Reads every index object of `bucket` into a [`SortedIndex`], keeping only the chunks
/// `wanted` may contain. A damaged index object is passed over: the chunks it names are
/// missing here, so they are fetched from another store and repaired.
pub async fn load_sorted(
    bucket: &Bucket,
    wanted: &ChunkFilter,
    memory: usize,
) -> Result<SortedIndex> {
    let mut builder = SortedIndexBuilder::with_memory(memory);
    let mut failed: Option<io::Error> = None;
    index::visit(bucket, |_, entries| {
        for e in entries.into_iter().flatten() {
            if failed.is_none()
                && wanted.may_contain(&e.chunk)
                && let Err(err) = builder.push(e)
            {
                failed = Some(err);
            }
        }
    })
    .await?;
    if let Some(e) = failed {
        return Err(Error::Engine(spill("write", e)));
    }
    tokio::task::spawn_blocking(move || builder.finish())
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|e| Error::Engine(spill("write", e)))
}

/// Ids grouped by the frame that holds them (frames in pack order), and ids without one.
type ByFrame = (Vec<(FrameRef, Vec<ChunkId>)>, Vec<ChunkId>);

/// Groups ids by the frame that holds them, frames in pack order; ids without a frame are
/// returned apart.
fn by_frame(found: impl Iterator<Item = (ChunkId, Option<FrameRef>)>) -> ByFrame {
    let mut frames: HashMap<FrameRef, Vec<ChunkId>> = HashMap::new();
    let mut unknown = Vec::new();
    for (id, frame) in found {
        match frame {
            Some(f) => frames.entry(f).or_default().push(id),
            None => unknown.push(id),
        }
    }
    let mut frames: Vec<_> = frames.into_iter().collect();
    frames.sort_by_key(|(f, _)| *f);
    (frames, unknown)
}

thread_local! {
    static DECODER: std::cell::RefCell<Option<Decoder>> = const { std::cell::RefCell::new(None) };
}

/// Decodes a frame with this thread's decoder.
pub fn decode_frame(bytes: &[u8]) -> std::result::Result<DecodedFrame, geosnap_engine::Error> {
    DECODER.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(Decoder::new()?);
        }
        match d.as_mut() {
            Some(dec) => dec.decode(bytes),
            None => Err(geosnap_engine::Error::Codec("no decoder".into())),
        }
    })
}

/// A restore window's chunks and the frames holding them in the preferred store.
#[derive(Default)]
struct Window {
    /// Chunk ids, sorted, each with its frame's number in `frames`.
    ids: Vec<(ChunkId, u32)>,
    frames: Vec<FrameRef>,
}

impl Window {
    /// The number of a chunk the preferred store's index does not name.
    const UNKNOWN: u32 = u32::MAX;

    fn frame(&self, n: u32) -> Option<FrameRef> {
        self.frames.get(n as usize).copied()
    }
}

/// What the preferred store must have read before its speed is judged: a few reads say
/// more about their latency than about the store's rate (the demo's first reads of a cold
/// local directory measured below 128 MiB/s), and a restore that small gains nothing from
/// reading the other stores' indexes.
const STRIPE_PROBE_READS: u64 = 2;
const STRIPE_PROBE_BYTES: u64 = 16 << 20;
/// Reads of another store below which its rate is not trusted yet.
const STRIPE_SAMPLE_READS: u64 = 4;

/// Bytes of a store's reads its rate looks back over, about: once its recent reads pass
/// this, their bytes and busy time are halved, so older reads count for less and less and a
/// store that slows down (or recovers) late in a restore is seen within a few groups.
const RATE_WINDOW: u64 = 32 << 20;

/// What one store has done for this restore.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    /// Groups being fetched from it now.
    assigned: usize,
    /// Reads in flight, and since when its busy time was last counted (while any is).
    reading: usize,
    busy_since: Option<Instant>,
    /// Its recent reads (see [`RATE_WINDOW`]): what they brought in and the time it had at
    /// least one read in flight.
    busy: Duration,
    recent: u64,
    /// All it has read for this restore, and in how many reads.
    bytes: u64,
    reads: u64,
    /// A read failed: it gets no more striped groups.
    failed: bool,
}

impl Load {
    /// Bytes per second while busy, lately: what the store delivers with the reads this
    /// restore keeps in flight (a shared link or a per-request latency both show here).
    fn rate(&self, now: Instant) -> Option<f64> {
        let busy = self.busy + self.busy_since.map_or(Duration::ZERO, |s| now - s);
        (self.reads > 0 && !busy.is_zero()).then(|| self.recent as f64 / busy.as_secs_f64())
    }

    fn started(&mut self, now: Instant) {
        self.reading += 1;
        if self.reading == 1 {
            self.busy_since = Some(now);
        }
    }

    /// A read ended at `now`, having brought `bytes` (`None`: it failed).
    fn ended(&mut self, now: Instant, bytes: Option<u64>) {
        self.reading = self.reading.saturating_sub(1);
        if let Some(since) = self.busy_since.take() {
            self.busy += now.saturating_duration_since(since);
        }
        if self.reading > 0 {
            self.busy_since = Some(now);
        }
        if let Some(n) = bytes {
            self.bytes += n;
            self.recent += n;
            self.reads += 1;
            if self.recent > RATE_WINDOW {
                self.recent /= 2;
                self.busy /= 2;
            }
        }
    }
}

/// Every store's [`Load`]: decides which store reads the next group.
#[derive(Debug)]
struct Loads(Mutex<Vec<Load>>);

impl Loads {
    fn new(stores: usize) -> Loads {
        Loads(Mutex::new(vec![Load::default(); stores]))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vec<Load>) -> T) -> T {
        match self.0.lock() {
            Ok(mut l) => f(&mut l),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Runs a read of store `n`, timing it.
    fn timed(&self, n: usize, read: impl FnOnce() -> Result<Vec<Bytes>>) -> Result<Vec<Bytes>> {
        self.with(|l| l[n].started(Instant::now()));
        let got = read();
        let bytes = got
            .as_ref()
            .ok()
            .map(|frames| frames.iter().map(|f| f.len() as u64).sum());
        self.with(|l| l[n].ended(Instant::now(), bytes));
        got
    }

    /// The store the next group goes to, counted as assigned to it.
    fn pick(&self, stripe_below: u64, primary_down: bool) -> usize {
        self.with(|l| {
            let n = choose(l, Instant::now(), stripe_below, primary_down);
            l[n].assigned += 1;
            n
        })
    }

    fn done(&self, n: usize) {
        self.with(|l| l[n].assigned = l[n].assigned.saturating_sub(1));
    }

    fn fail(&self, n: usize) {
        self.with(|l| l[n].failed = true);
    }

    /// Bytes read from each store.
    fn bytes(&self) -> Vec<u64> {
        self.with(|l| l.iter().map(|l| l.bytes).collect())
    }
}

/// Store 0 (the preferred one) while it reads at `stripe_below` bytes per second or more
/// (0: always); otherwise the store that would finish one more group soonest, from each
/// store's rate and the groups it already has. A store not yet tried is tried with one
/// group; a failed one gets none. With the preferred store down, the others share the rest.
fn choose(loads: &[Load], now: Instant, stripe_below: u64, primary_down: bool) -> usize {
    if stripe_below == 0 || loads.len() < 2 {
        return 0;
    }
    if !primary_down {
        let p = &loads[0];
        if p.reads < STRIPE_PROBE_READS || p.bytes < STRIPE_PROBE_BYTES {
            return 0;
        }
        if p.rate(now).is_some_and(|r| r >= stripe_below as f64) {
            return 0;
        }
    }
    let mut best: Option<(f64, usize)> = None;
    for (n, load) in loads.iter().enumerate() {
        if load.failed || (n == 0 && primary_down) {
            continue;
        }
        let wait = match load.rate(now) {
            // Measured by fewer than a few reads: tried again whenever it is idle, so one
            // read that met a cold cache does not starve it for the rest of the restore.
            _ if load.assigned == 0 && load.reads < STRIPE_SAMPLE_READS => 0.0,
            Some(r) => (load.assigned + 1) as f64 / r,
            None => continue,
        };
        if best.is_none_or(|(b, _)| wait < b) {
            best = Some((wait, n));
        }
    }
    best.map_or(0, |(_, n)| n)
}

/// A group assigned to a store until it is fetched.
struct Assigned<'a> {
    loads: &'a Loads,
    store: usize,
}

impl Drop for Assigned<'_> {
    fn drop(&mut self) {
        self.loads.done(self.store);
    }
}

/// Chunks from a preferred store, then from the others.
struct RegionSource {
    handle: Handle,
    stores: Vec<Bucket>,
    indexes: Vec<OnceLock<Option<SortedIndex>>>,
    /// The chunks the manifest may name: what is kept of each store's index.
    wanted: ChunkFilter,
    /// Bytes of index entries each store's index sorts in memory.
    index_memory: usize,
    /// The frames of the window being restored in the preferred store, by id: found once
    /// when the window is planned, read by every fetch of it.
    window: RwLock<Window>,
    primary_down: AtomicBool,
    recovered: Mutex<Vec<(ChunkId, Bytes)>>,
    /// Bytes per second below which the preferred store shares groups with the others
    /// (0: never).
    stripe_below: u64,
    loads: Loads,
    /// Chunks of this window that striped groups read from another store.
    striped: Mutex<IdSet>,
}

impl RegionSource {
    /// Largest read from store `n`: larger from remote stores, whose cost is per request.
    fn span_bytes(&self, n: usize) -> u64 {
        match self.stores.get(n).map(|b| b.remote.is_some()) {
            Some(true) => index::REMOTE_SPAN_BYTES,
            _ => index::SPAN_BYTES,
        }
    }

    /// The index of store `n`, read on first use; `None` if it cannot be read.
    fn index(&self, n: usize) -> Option<&SortedIndex> {
        self.indexes[n]
            .get_or_init(|| {
                match self.handle.block_on(load_sorted(
                    &self.stores[n],
                    &self.wanted,
                    self.index_memory,
                )) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        tracing::warn!(store = %self.stores[n], error = %e, "index unreadable");
                        None
                    }
                }
            })
            .as_ref()
    }
}

impl RegionSource {
    /// The frames holding `ids` in store `n`: for the preferred store, as the window's plan
    /// found them; otherwise (or for ids the plan was not given) from the store's index.
    fn frames(
        &self,
        n: usize,
        index: &SortedIndex,
        ids: &[ChunkId],
    ) -> std::result::Result<ByFrame, geosnap_engine::Error> {
        let mut found: Vec<(ChunkId, Option<FrameRef>)> = Vec::with_capacity(ids.len());
        let mut rest: Vec<ChunkId> = Vec::new();
        match (n, self.window.read()) {
            (0, Ok(window)) => {
                for id in ids {
                    match window.ids.binary_search_by_key(id, |(w, _)| *w) {
                        Ok(i) => found.push((*id, window.frame(window.ids[i].1))),
                        Err(_) => rest.push(*id),
                    }
                }
            }
            _ => rest.extend_from_slice(ids),
        }
        if !rest.is_empty() {
            rest.sort_unstable();
            let frames = index.lookup(&rest).map_err(|e| spill("read", e))?;
            found.extend(
                rest.into_iter()
                    .zip(frames.into_iter().map(|e| e.map(|e| e.frame()))),
            );
        }
        Ok(by_frame(found.into_iter()))
    }
}

impl RegionSource {
    /// The chunks of `ids` that store `n` holds; those it does not name are left out (all
    /// of them missing is an error).
    fn read_from(
        &self,
        n: usize,
        ids: &[ChunkId],
    ) -> std::result::Result<Fetched, geosnap_engine::Error> {
        let (frames, unknown) = self.locate(n, ids)?;
        if let Some(id) = unknown.first()
            && frames.is_empty()
        {
            return Err(geosnap_engine::Error::store(Error::ChunkMissing {
                id: *id,
                region: self.stores[n].to_string(),
            }));
        }
        self.read_frames(n, frames)
    }

    fn unavailable(&self, n: usize, reason: &str) -> geosnap_engine::Error {
        geosnap_engine::Error::store(Error::RegionUnavailable {
            region: self.stores[n].to_string(),
            reason: reason.into(),
        })
    }

    /// The frames of store `n` that hold `ids`, and the ids it does not name.
    fn locate(
        &self,
        n: usize,
        ids: &[ChunkId],
    ) -> std::result::Result<ByFrame, geosnap_engine::Error> {
        if n == 0 && self.primary_down.load(Ordering::Relaxed) {
            return Err(self.unavailable(n, "it failed earlier in this restore"));
        }
        let Some(index) = self.index(n) else {
            return Err(self.unavailable(n, "its index cannot be read"));
        };
        self.frames(n, index, ids)
    }

    /// Reads `frames` from store `n` in spans and decodes them; a frame that does not
    /// decode yields nothing (its chunks fall back one by one).
    fn read_frames(
        &self,
        n: usize,
        frames: Vec<(FrameRef, Vec<ChunkId>)>,
    ) -> std::result::Result<Fetched, geosnap_engine::Error> {
        let store = &self.stores[n];
        let mut out = Vec::new();
        for run in index::spans(frames, self.span_bytes(n)) {
            let refs: Vec<_> = run.iter().map(|(f, _)| *f).collect();
            // This thread waits for the read anyway: a directory store reads right here.
            let bytes = self.loads.timed(n, || {
                crate::direct::reading_inline(|| {
                    self.handle.block_on(index::read_span(store, &refs))
                })
            });
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    if n == 0 && matches!(e, Error::RegionUnavailable { .. }) {
                        self.primary_down.store(true, Ordering::Relaxed);
                    }
                    return Err(geosnap_engine::Error::store(e));
                }
            };
            for ((_, wanted), frame) in run.iter().zip(bytes) {
                match decode_frame(&frame) {
                    Ok(d) => out.extend(d.chunks().filter(|(id, _)| wanted.contains(id))),
                    Err(e) => {
                        tracing::debug!(store = %store, error = %e, "a frame does not decode");
                    }
                }
            }
        }
        Ok(out)
    }

    /// The store the next group is read from: the preferred one, unless it has read
    /// slower than `stripe_below` and another store would finish the group sooner.
    fn pick(&self) -> Assigned<'_> {
        let primary_down = self.primary_down.load(Ordering::Relaxed);
        let store = self.loads.pick(self.stripe_below, primary_down);
        Assigned {
            loads: &self.loads,
            store,
        }
    }

    /// A group striped to store `n`: its chunks from there, and what `n` does not name from
    /// the preferred store. A store that fails gets no more groups. The chunks `n` gave are
    /// remembered for this window: if one fails its check, the restore's fallback asks the
    /// preferred store first and repairs it only if it fails there too (`n`'s fault is not
    /// the preferred store's).
    fn fetch_elsewhere(&self, ids: &[ChunkId], n: usize) -> Fetched {
        let read = self
            .locate(n, ids)
            .and_then(|(frames, _)| self.read_frames(n, frames));
        let mut got = match read {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(store = %self.stores[n], error = %e, "not striping to it any more");
                self.loads.fail(n);
                Vec::new()
            }
        };
        let have: IdSet = got.iter().map(|(id, _)| *id).collect();
        if let Ok(mut striped) = self.striped.lock() {
            striped.extend(have.iter().copied());
        }
        if have.len() < ids.len() {
            let rest: Vec<ChunkId> = ids
                .iter()
                .filter(|id| !have.contains(id))
                .copied()
                .collect();
            // What the preferred store cannot give either, the restore asks the others for.
            if let Ok(more) = self.read_from(0, &rest) {
                got.extend(more);
            }
        }
        got
    }

    /// Whether `id` came from a store other than the preferred one in a striped group of
    /// this window.
    fn was_striped(&self, id: &ChunkId) -> bool {
        self.striped.lock().is_ok_and(|s| s.contains(id))
    }

    /// The store copy number `attempt` of `id` is read from: the preferred store's copy
    /// is 0 and the others follow in order; a chunk a striped group read elsewhere goes back
    /// to the preferred store first, then every other store in order.
    fn store_for(&self, id: Option<&ChunkId>, attempt: usize) -> usize {
        match id {
            Some(id) if attempt > 0 && self.was_striped(id) => attempt - 1,
            _ => attempt,
        }
    }
}

impl ChunkSource for RegionSource {
    fn plan(&self, ids: &[ChunkId]) -> Vec<Vec<ChunkId>> {
        let one_by_one = || ids.iter().map(|id| vec![*id]).collect();
        let Some(index) = self.index(0) else {
            return one_by_one();
        };
        // Each id with its frame's number: 36 bytes an id, and a frame address for about
        // every 16 ids, instead of a whole address per id (restores peaked 3-4 MiB lower).
        let mut window = Window::default();
        let mut numbers: HashMap<FrameRef, u32> = HashMap::new();
        let mut unknown = Vec::new();
        let looked = index.lookup_each(ids, |i, entry| {
            let n = match entry {
                Some(e) => *numbers.entry(e.frame()).or_insert_with(|| {
                    window.frames.push(e.frame());
                    (window.frames.len() - 1) as u32
                }),
                None => {
                    unknown.push(ids[i]);
                    Window::UNKNOWN
                }
            };
            window.ids.push((ids[i], n));
        });
        if let Err(e) = looked {
            tracing::warn!(error = %spill("read", e), "planning chunk by chunk");
            return one_by_one();
        }
        drop(numbers);
        if !window.ids.is_sorted_by_key(|(id, _)| *id) {
            window.ids.sort_unstable_by_key(|(id, _)| *id);
        }
        let mut members: Vec<Vec<ChunkId>> = vec![Vec::new(); window.frames.len()];
        for (id, n) in &window.ids {
            if let Some(m) = members.get_mut(*n as usize) {
                m.push(*id);
            }
        }
        let mut frames: Vec<(FrameRef, Vec<ChunkId>)> =
            window.frames.iter().copied().zip(members).collect();
        frames.sort_unstable_by_key(|(f, _)| *f);
        if let Ok(mut w) = self.window.write() {
            *w = window;
        }
        if let Ok(mut striped) = self.striped.lock() {
            *striped = IdSet::default();
        }
        index::spans(frames, self.span_bytes(0))
            .into_iter()
            .map(|run| run.into_iter().flat_map(|(_, ids)| ids).collect())
            .chain(unknown.into_iter().map(|id| vec![id]))
            .collect()
    }

    fn fetch(
        &self,
        ids: &[ChunkId],
        attempt: u32,
    ) -> std::result::Result<Option<Fetched>, geosnap_engine::Error> {
        let attempt = attempt as usize;
        if attempt > 0 {
            // The restore asks further copies one chunk at a time.
            let n = self.store_for(ids.first(), attempt);
            if n >= self.stores.len() {
                return Ok(None);
            }
            return self.read_from(n, ids).map(Some);
        }
        let assigned = self.pick();
        match assigned.store {
            0 => self.read_from(0, ids).map(Some),
            other => Ok(Some(self.fetch_elsewhere(ids, other))),
        }
    }

    fn parallelism(&self) -> Option<usize> {
        // Each group is a span of about 1 MiB of frames, decoded (some 15 MiB of peak RSS
        // each, measured). A remote store needs requests in flight to hide its latency;
        // from a local directory the threads only read (the restore's writer thread
        // writes), and two keep two cores busy: the restore of (b) took 1.43-1.46 s with
        // 2 and 1.42-1.46 s with 3 (1.79-1.82 against 1.76-1.88 s with the packs read
        // from the disk), peak RSS 70-78 against 86-94 MiB.
        match self.stores.first().map(|b| b.remote.is_some()) {
            Some(true) => Some(6),
            _ => Some(2),
        }
    }

    fn recovered(&self, id: &ChunkId, attempt: u32, data: &Bytes) {
        // A chunk a striped group read elsewhere that the preferred store then gave is no
        // fault of the preferred store.
        if attempt == 1 && self.was_striped(id) {
            return;
        }
        if let Ok(mut r) = self.recovered.lock() {
            // A copy of the chunk alone: a slice would keep its whole decoded frame alive.
            r.push((*id, Bytes::copy_from_slice(data)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that read `mib` MiB in `ms` milliseconds, with `assigned` groups now.
    fn load(mib: u64, ms: u64, assigned: usize) -> Load {
        Load {
            assigned,
            busy: Duration::from_millis(ms),
            recent: mib << 20,
            bytes: mib << 20,
            reads: mib,
            ..Load::default()
        }
    }

    #[test]
    fn the_preferred_store_keeps_every_group_while_it_is_fast_or_unmeasured() {
        let now = Instant::now();
        let fast = 1 << 30;
        // 100 MiB in 50 ms: 2 GB/s.
        let loads = [load(100, 50, 2), Load::default(), Load::default()];
        assert_eq!(choose(&loads, now, 128 << 20, false), 0);
        // Not judged before two reads and 16 MiB, however slow.
        let loads = [load(1, 5_000, 1), Load::default()];
        assert_eq!(choose(&loads, now, fast, false), 0);
        let loads = [load(15, 5_000, 1), Load::default()];
        assert_eq!(choose(&loads, now, fast, false), 0);
        // Striping off.
        let loads = [load(40, 5_000, 1), Load::default()];
        assert_eq!(choose(&loads, now, 0, false), 0);
        // One store: nothing to share with.
        assert_eq!(choose(&[load(40, 5_000, 1)], now, fast, false), 0);
    }

    #[test]
    fn a_slow_preferred_store_shares_groups_by_rate_and_load() {
        let now = Instant::now();
        let below = 128 << 20;
        // 40 MiB in 1 s: slow. An untried store is tried with one group...
        let mut loads = [load(40, 1_000, 3), Load::default(), load(100, 100, 0)];
        assert_eq!(choose(&loads, now, below, false), 1);
        // ...and no second one before its first is measured.
        loads[1].assigned = 1;
        assert_eq!(choose(&loads, now, below, false), 2);
        // One slow read (a cold cache) does not starve it: idle, it is tried again.
        loads[1] = load(1, 1_000, 0);
        assert_eq!(choose(&loads, now, below, false), 1);
        loads[1].assigned = 1;
        assert_eq!(choose(&loads, now, below, false), 2);
        // Measured: the one that would finish a group first. Store 2 reads 1 GB/s but has
        // eight groups; store 1 reads 500 MB/s with one.
        loads[1] = load(50, 100, 1);
        loads[2] = load(100, 100, 8);
        assert_eq!(choose(&loads, now, below, false), 1);
        // A failed store gets nothing.
        loads[1].failed = true;
        assert_eq!(choose(&loads, now, below, false), 2);
        // Every other store failed: back to the preferred one.
        loads[2].failed = true;
        assert_eq!(choose(&loads, now, below, false), 0);
    }

    #[test]
    fn with_the_preferred_store_down_the_others_share_the_rest() {
        let now = Instant::now();
        let loads = [load(100, 50, 0), load(10, 100, 3), load(10, 100, 0)];
        // Fast until it went down: now never chosen.
        assert_eq!(choose(&loads, now, 128 << 20, true), 2);
    }

    #[test]
    fn reads_are_timed_while_any_is_in_flight() {
        let loads = Loads::new(2);
        let got = loads.timed(1, || {
            std::thread::sleep(Duration::from_millis(20));
            Ok(vec![
                Bytes::from(vec![0u8; 1000]),
                Bytes::from(vec![0u8; 24]),
            ])
        });
        assert_eq!(got.unwrap().len(), 2);
        let failed = loads.timed(1, || Err(Error::Task("gone".into())));
        assert!(failed.is_err());
        assert_eq!(loads.bytes(), vec![0, 1024]);
        let l = loads.with(|l| l[1]);
        assert_eq!((l.reads, l.reading), (1, 0));
        assert!(l.busy >= Duration::from_millis(20), "{:?}", l.busy);
        assert!(l.rate(Instant::now()).is_some_and(|r| r < 1024.0 / 0.02));
    }

    #[test]
    fn a_store_that_slows_down_late_is_judged_by_its_recent_reads() {
        let start = Instant::now();
        let mut l = Load::default();
        let mut at = start;
        let read = |l: &mut Load, at: &mut Instant, mib: u64, ms: u64| {
            l.started(*at);
            *at += Duration::from_millis(ms);
            l.ended(*at, Some(mib << 20));
        };
        // 256 MiB at 1 GiB/s, then 24 MiB at 16 MiB/s.
        for _ in 0..64 {
            read(&mut l, &mut at, 4, 4);
        }
        let fast = l.rate(at).unwrap();
        assert!(fast > 1e9, "{fast}");
        for _ in 0..6 {
            read(&mut l, &mut at, 4, 250);
        }
        // Over the whole restore it would still read 190 MB/s; lately it reads far less.
        let total = l.bytes as f64 / (at - start).as_secs_f64();
        assert!(total > 128e6, "{total}");
        let lately = l.rate(at).unwrap();
        assert!(lately < 64e6, "{lately}");
        assert_eq!((l.bytes, l.reads), (280 << 20, 70));
        // Reads that overlap count their shared time once.
        let mut m = Load::default();
        m.started(start);
        m.started(start);
        m.ended(start + Duration::from_millis(100), Some(1 << 20));
        m.ended(start + Duration::from_millis(100), Some(1 << 20));
        assert_eq!(m.busy, Duration::from_millis(100));
        assert_eq!(m.reading, 0);
    }
}
