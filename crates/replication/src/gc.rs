//! Garbage collection: per store, mark every chunk a manifest references; drop the rest
//! from the index, delete packs with nothing live, rewrite packs that are partly dead
//! (frame by frame, without recompressing), then fold the index into one object.
//!
//! Safety against snapshots in flight (see `docs/format.md`, "gc rule"):
//! 1. gc writes `gc/running`, then lists in-flight markers; a live marker (younger than
//!    [`GcOptions::marker_ttl`]) means a snapshot may be reusing chunks: the store is skipped;
//! 2. it marks from every manifest (a manifest that does not decode stops gc of that store);
//! 3. just before sweeping it lists markers again and skips the store if one appeared;
//! 4. a snapshot writes its marker first, then waits while a fresh `gc/running` exists,
//!    and only then lists what the store holds. Either gc saw the marker, or the snapshot
//!    lists after the sweep: no chunk it counts on can vanish.
//!
//! Chunks younger than [`GcOptions::grace`] are kept as well.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use geosnap_engine::ChunkId;
use geosnap_engine::codec::Encoder;
use geosnap_engine::manifest::ManifestView;
use serde::Serialize;

use crate::bucket::{Bucket, StoreKind};
use crate::index::{self, FrameRef, PackId, StoreIndex};
use crate::pack::{self, PackBuilder};
use crate::region::Regions;
use crate::{Error, Result, layout};

/// How often a running gc rewrites `gc/running`, so that writers can tell it is alive.
pub const GC_HEARTBEAT: Duration = Duration::from_secs(10);

/// How long a `gc/running` marker counts as a live gc: six missed heartbeats. A gc killed
/// mid-sweep holds writers back no longer than this.
pub const GC_MARKER_STALE: Duration = Duration::from_secs(60);

/// How gc behaves.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Keep unreferenced chunks younger than this.
    pub grace: Duration,
    /// In-flight markers older than this belong to dead snapshots and are ignored.
    pub marker_ttl: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// The largest manifest read into memory (`Tuning::manifest_memory`); [`gc_all`] uses
    /// the regions' setting.
    pub manifest_memory: u64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::ZERO,
            marker_ttl: Duration::from_secs(24 * 3600),
            dry_run: false,
            manifest_memory: crate::Tuning::default().manifest_memory,
        }
    }
}

/// What gc did in one store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Store.
    pub store: String,
    /// Manifests read.
    pub manifests: u64,
    /// Chunks indexed before gc.
    pub chunks: u64,
    /// Chunks referenced by a manifest.
    pub referenced: u64,
    /// Chunks no manifest references, dropped from the index (or that would be, in a dry
    /// run).
    pub deleted: u64,
    /// Bytes given back: packs deleted, and the dead part of packs rewritten.
    pub deleted_bytes: u64,
    /// Packs deleted whole.
    pub packs_deleted: u64,
    /// Packs rewritten without their dead frames.
    pub packs_repacked: u64,
    /// Packs no index names, younger than the grace period, kept.
    pub kept_young: u64,
    /// Why the store was skipped, if it was.
    pub skipped: Option<String>,
}

async fn live_markers(b: &Bucket, ttl: Duration) -> Result<Vec<String>> {
    let now = Utc::now();
    Ok(b.list(&layout::inflight_prefix())
        .await?
        .into_iter()
        .filter(|m| {
            (now - m.last_modified)
                .to_std()
                .map(|age| age < ttl)
                .unwrap_or(true)
        })
        .filter_map(|m| layout::parse_inflight(&m.location).map(|id| id.to_hex()))
        .collect())
}

/// Collects one store.
pub async fn gc_store(b: &Bucket, opts: &GcOptions) -> Result<GcReport> {
    let mut report = GcReport {
        store: b.to_string(),
        ..Default::default()
    };
    if !opts.dry_run {
        b.put(&layout::gc_running(), Bytes::from(Utc::now().to_rfc3339()))
            .await?;
    }
    let result = if opts.dry_run {
        sweep(b, opts, &mut report).await
    } else {
        // The sweep runs only while its heartbeat lands: a gc that cannot refresh its
        // marker stops before writers could take the marker as stale.
        tokio::select! {
            r = sweep(b, opts, &mut report) => r,
            Err(e) = heartbeat(b) => Err(e),
        }
    };
    if !opts.dry_run {
        b.delete(&layout::gc_running()).await?;
    }
    result.map(|()| report)
}

/// Rewrites `gc/running` every [`GC_HEARTBEAT`]; returns only when a rewrite fails.
async fn heartbeat(b: &Bucket) -> Result<()> {
    loop {
        tokio::time::sleep(GC_HEARTBEAT).await;
        b.put(&layout::gc_running(), Bytes::from(Utc::now().to_rfc3339()))
            .await?;
    }
}

/// A frame and its indexed chunks, each marked live or dead.
type FrameChunks = (FrameRef, Vec<(ChunkId, bool)>);

/// A rewritten pack waits in memory no longer than this before it is uploaded.
const REPACK_BYTES: usize = 16 << 20;

async fn sweep(b: &Bucket, opts: &GcOptions, report: &mut GcReport) -> Result<()> {
    let skip = |markers: Vec<String>| format!("snapshot {} is being written", markers.join(", "));
    let markers = live_markers(b, opts.marker_ttl).await?;
    if !markers.is_empty() {
        report.skipped = Some(skip(markers));
        return Ok(());
    }
    // Mark.
    let mut referenced = HashSet::new();
    for id in b.snapshot_ids().await? {
        let m = match b.read_manifest(&id, opts.manifest_memory).await {
            Ok(m) => m,
            Err(e) if e.is_local() => return Err(e),
            Err(Error::Engine(e)) => {
                return Err(Error::Engine(geosnap_engine::Error::ManifestCorrupt(
                    format!(
                        "gc stopped in {b}: manifest of {id} does not decode, so its chunks cannot \
                     be told apart from garbage ({e}); run verify --repair first"
                    ),
                )));
            }
            Err(e) => return Err(e),
        };
        referenced.extend(m.chunk_ids()?);
        report.manifests += 1;
    }
    let index = StoreIndex::load(b).await?;
    if let Some((id, why)) = index.damaged.first() {
        return Err(Error::Engine(geosnap_engine::Error::ManifestCorrupt(
            format!(
                "gc stopped in {b}: index object {id} does not decode ({why}); run verify --repair first"
            ),
        )));
    }
    report.chunks = index.chunks.len() as u64;
    // Frames by pack, with which of their chunks are live.
    let mut frames: HashMap<PackId, HashMap<FrameRef, Vec<(ChunkId, bool)>>> = HashMap::new();
    for (id, f) in index.chunks.iter() {
        let is_live = referenced.contains(id);
        frames
            .entry(f.pack)
            .or_default()
            .entry(f)
            .or_default()
            .push((*id, is_live));
        if is_live {
            report.referenced += 1;
        } else {
            report.deleted += 1;
        }
    }
    // Packs no index names: garbage from a crash, unless young.
    let now = Utc::now();
    let mut doomed: Vec<(Path, u64)> = Vec::new();
    let mut sizes: HashMap<PackId, u64> = HashMap::new();
    for meta in b.list(&pack::prefix()).await? {
        let Some(id) = pack::parse_key(&meta.location) else {
            continue;
        };
        sizes.insert(id, meta.size);
        if !frames.contains_key(&id) {
            let age = (now - meta.last_modified)
                .to_std()
                .unwrap_or(Duration::ZERO);
            if age < opts.grace {
                report.kept_young += 1;
            } else {
                doomed.push((meta.location, meta.size));
            }
        }
    }
    // Sweep plan: packs with nothing live go; packs with anything dead are rewritten.
    let mut rewrite: Vec<(PackId, Vec<FrameChunks>)> = Vec::new();
    for (pack_id, fr) in &frames {
        let size = sizes.get(pack_id).copied().unwrap_or(0);
        let any_live = fr.values().flatten().any(|c| c.1);
        let any_dead = fr.values().flatten().any(|c| !c.1);
        if !any_live {
            doomed.push((pack::key(pack_id), size));
        } else if any_dead {
            let mut keep: Vec<_> = fr
                .iter()
                .filter(|(_, cs)| cs.iter().any(|c| c.1))
                .map(|(f, cs)| (*f, cs.clone()))
                .collect();
            keep.sort_by_key(|(f, _)| *f);
            rewrite.push((*pack_id, keep));
        }
    }
    let parts = (report.referenced as usize)
        .div_ceil(index::OBJECT_ENTRIES)
        .max(1);
    if report.deleted == 0 && doomed.is_empty() && index.objects.len() <= parts {
        return Ok(());
    }
    if opts.dry_run {
        report.packs_deleted = doomed.len() as u64;
        report.packs_repacked = rewrite.len() as u64;
        report.deleted_bytes = doomed.iter().map(|d| d.1).sum();
        return Ok(());
    }
    // New packs for what is live in rewritten packs: whole frames are copied, frames with
    // dead chunks are decoded, checked, and re-encoded with only their live chunks.
    let mut moved: HashMap<ChunkId, FrameRef> = HashMap::new();
    let mut builder = PackBuilder::new();
    for (pack_id, keep) in &rewrite {
        let mut kept = 0u64;
        for (f, chunks) in keep {
            let bytes = index::read_frame(b, f).await?;
            let all_live = chunks.iter().all(|c| c.1);
            let (table, frame) = if all_live {
                let table = geosnap_engine::codec::parse_table(&bytes)
                    .map(|t| t.chunks)
                    .map_err(Error::Engine)?;
                (table, bytes)
            } else {
                let live: Vec<ChunkId> = chunks.iter().filter(|c| c.1).map(|c| c.0).collect();
                let f = tokio::task::spawn_blocking(move || reencode(&bytes, &live))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))??;
                (f.chunks, f.bytes)
            };
            let new = FrameRef {
                pack: builder.id(),
                offset: (builder.len() + 4) as u64,
                len: frame.len() as u32,
            };
            kept += frame.len() as u64 + 4;
            for (id, _) in &table {
                moved.insert(*id, new);
            }
            builder.push(&table, frame);
            if builder.len() >= REPACK_BYTES {
                let (id, parts, _) = std::mem::take(&mut builder).finish();
                pack::upload(b, &id, parts).await?;
            }
        }
        let old = sizes.get(pack_id).copied().unwrap_or(0);
        report.deleted_bytes += old.saturating_sub(kept);
        doomed.push((pack::key(pack_id), 0));
    }
    if !builder.is_empty() {
        let (id, parts, _) = builder.finish();
        pack::upload(b, &id, parts).await?;
    }
    report.packs_repacked = rewrite.len() as u64;
    // Index objects for everything live, written before anything is deleted: in pack
    // order, so a reader's index keeps each frame's address once (`ChunkTable`), and in
    // parts of at most `OBJECT_ENTRIES`, so no reader holds a whole store's index at once
    // (a part left by a crash only repeats entries a newer gc writes again).
    let mut entries: Vec<index::Entry> = index
        .chunks
        .iter()
        .filter(|(id, _)| referenced.contains(*id))
        .map(|(chunk, f)| {
            let f = moved.get(chunk).copied().unwrap_or(f);
            index::Entry {
                chunk: *chunk,
                pack: f.pack,
                offset: f.offset,
                len: f.len,
            }
        })
        .collect();
    entries.sort_unstable_by_key(|e| (e.pack, e.offset, e.chunk));
    for part in entries.chunks(index::OBJECT_ENTRIES) {
        index::write(b, part).await?;
    }
    // A snapshot that started meanwhile may count on what we would delete: stop.
    let markers = live_markers(b, opts.marker_ttl).await?;
    if !markers.is_empty() {
        report.skipped = Some(skip(markers));
        return Ok(());
    }
    for id in &index.objects {
        b.delete(&index::key(id)).await?;
    }
    let mut deletions = futures::stream::iter(doomed.into_iter().map(|(key, size)| async move {
        geosnap_engine::failpoint::hit("gc-sweep");
        b.delete(&key).await.map(|()| size)
    }))
    .buffer_unordered(16);
    while let Some(r) = deletions.next().await {
        let size = r?;
        if size > 0 {
            report.packs_deleted += 1;
            report.deleted_bytes += size;
        }
    }
    Ok(())
}

/// A frame with only `live` of its chunks, each checked against its hash first.
fn reencode(frame: &[u8], live: &[ChunkId]) -> Result<geosnap_engine::codec::EncodedFrame> {
    let decoded = crate::reader::decode_frame(frame).map_err(Error::Engine)?;
    let mut keep = Vec::with_capacity(live.len());
    for id in live {
        let data = decoded.verified(id).ok_or_else(|| {
            Error::Engine(geosnap_engine::Error::ChunkCorrupt {
                id: *id,
                detail: "damaged in its frame; gc leaves the pack for verify --repair".into(),
            })
        })?;
        keep.push((*id, data));
    }
    let refs: Vec<(ChunkId, &[u8])> = keep.iter().map(|(id, d)| (*id, d.as_ref())).collect();
    Ok(Encoder::new(geosnap_engine::codec::DEFAULT_LEVEL)?.encode(&refs)?)
}

/// Collects every store of every region, main and volume; a store that fails is reported
/// and the others go on.
pub async fn gc_all(regions: &Regions, opts: &GcOptions) -> Vec<Result<GcReport>> {
    let opts = GcOptions {
        manifest_memory: regions.tuning.manifest_memory,
        ..*opts
    };
    let mut out = Vec::new();
    for r in regions.iter() {
        for kind in [StoreKind::Main, StoreKind::Volume] {
            out.push(gc_store(r.bucket(kind), &opts).await);
        }
    }
    out
}

/// Waits while a live gc holds `gc/running` in the store (see the module docs). Asks with a
/// HEAD, which sees a new object at once even where listings lag.
pub async fn wait_for_gc(b: &Bucket) -> Result<()> {
    let key = layout::gc_running();
    let mut told = false;
    loop {
        let meta = match crate::retry::retry(b.retry, || b.store.head(&key)).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(b.err(e)),
        };
        let age = (Utc::now() - meta.last_modified)
            .to_std()
            .unwrap_or(Duration::ZERO);
        if age >= GC_MARKER_STALE {
            tracing::warn!(store = %b, "gc/running is {}s old: taken as left by a dead gc", age.as_secs());
            return Ok(());
        }
        if !told {
            tracing::warn!(store = %b, "waiting for a running gc to finish its sweep");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a writer waits for what it wrote to show in listings.
pub const LISTING_WAIT: Duration = Duration::from_secs(10);

/// Waits until `key` shows in a listing of `prefix`, up to `limit`; returns whether it did.
/// Stores whose listings lag their writes (OpenStack Swift) must not let a gc miss a marker
/// or a manifest that was just written.
pub async fn wait_listed(b: &Bucket, prefix: &Path, key: &Path, limit: Duration) -> Result<bool> {
    let start = std::time::Instant::now();
    loop {
        if b.list(prefix).await?.iter().any(|m| &m.location == key) {
            return Ok(true);
        }
        if start.elapsed() >= limit {
            tracing::warn!(store = %b, %key, "not listed yet; gc may not see it");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `work` inside an in-flight session named `id`: a marker gc respects, listed before
/// the work starts and removed after it (also when it fails), once no gc is sweeping.
pub async fn with_marker<T>(
    b: &Bucket,
    id: &geosnap_engine::SnapshotId,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let marker = layout::inflight(id);
    b.put(&marker, Bytes::from(Utc::now().to_rfc3339())).await?;
    let out = async {
        wait_listed(b, &layout::inflight_prefix(), &marker, LISTING_WAIT).await?;
        wait_for_gc(b).await?;
        work.await
    }
    .await;
    let removed = b.delete(&marker).await;
    let out = out?;
    removed?;
    Ok(out)
}

use object_store::ObjectStoreExt;
use object_store::path::Path;
