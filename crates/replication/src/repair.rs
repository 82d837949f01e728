//! Bringing stores up to date: copy a snapshot into a store that missed it (replication
//! jobs, repair after an outage), verify a store chunk by chunk, and delete snapshots
//! everywhere with tombstones so repair never brings them back.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use futures::StreamExt;
use geosnap_engine::manifest::{Backing, EncodedManifest, Extent, ManifestView};
use geosnap_engine::{ChunkId, SnapshotId};
use serde::Serialize;

use crate::bucket::{Bucket, StoreKind};
use crate::index::{self, FrameRef, PackId, StoreIndex};
use crate::pack::{self, PackBuilder};
use crate::reader::{decode_frame, fetch_manifest};
use crate::region::Regions;
use crate::{Error, Result, layout};

/// What a replication of one snapshot into one store did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplicateReport {
    /// Chunks copied.
    pub copied_chunks: u64,
    /// Their encoded bytes.
    pub copied_bytes: u64,
    /// Whether the manifest had to be written.
    pub manifest_written: bool,
}

/// Verified bytes of `wanted` chunks, gathered from `sources` frame by frame: a frame that
/// verifies whole is returned as is (so it can be copied without recompressing); chunks of
/// damaged frames are taken one by one when they verify, and looked for further on.
#[derive(Debug)]
pub struct Gathered {
    /// Whole frames that verified, with their tables.
    pub frames: Vec<(Vec<(ChunkId, u32)>, Bytes)>,
    /// Single chunks that verified where their frame did not.
    pub loose: Vec<(ChunkId, Bytes)>,
    /// Chunks no source had a good copy of.
    pub missing: Vec<ChunkId>,
}

/// Finds good copies of `wanted` in `sources`, in order.
pub async fn gather(sources: &[Bucket], wanted: HashSet<ChunkId>, concurrency: usize) -> Gathered {
    let mut remaining = wanted;
    let mut out = Gathered {
        frames: Vec::new(),
        loose: Vec::new(),
        missing: Vec::new(),
    };
    for src in sources {
        if remaining.is_empty() {
            break;
        }
        let Ok(idx) = StoreIndex::load(src).await else {
            continue;
        };
        let ids: Vec<ChunkId> = remaining.iter().copied().collect();
        let (frames, _) = idx.by_frame(&ids);
        let results = futures::stream::iter(frames.into_iter().map(|(frame, want)| async move {
            let bytes = index::read_frame(src, &frame).await.ok()?;
            let checked = tokio::task::spawn_blocking(move || {
                let decoded = decode_frame(&bytes).ok()?;
                let whole = decoded.hashed().iter().all(|(id, actual)| id == actual);
                if whole {
                    return Some((Some((decoded.table.chunks.clone(), bytes)), Vec::new()));
                }
                let good: Vec<(ChunkId, Bytes)> = want
                    .iter()
                    .filter_map(|id| decoded.verified(id).map(|b| (*id, b)))
                    .collect();
                Some((None, good))
            })
            .await
            .ok()??;
            Some(checked)
        }))
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
        for (frame, loose) in results.into_iter().flatten() {
            if let Some((table, bytes)) = frame {
                for (id, _) in &table {
                    remaining.remove(id);
                }
                out.frames.push((table, bytes));
            }
            for (id, b) in loose {
                if remaining.remove(&id) {
                    out.loose.push((id, b));
                }
            }
        }
    }
    out.missing = remaining.into_iter().collect();
    out
}

/// Writes gathered chunks into `target`: whole frames copied into packs, loose chunks
/// re-encoded; then one index object. Returns the chunks and bytes written.
pub async fn store_gathered(target: &Bucket, g: Gathered, pack_bytes: usize) -> Result<(u64, u64)> {
    let session = SnapshotId::generate();
    crate::gc::with_marker(target, &session, store_gathered_now(target, g, pack_bytes)).await
}

async fn store_gathered_now(target: &Bucket, g: Gathered, pack_bytes: usize) -> Result<(u64, u64)> {
    let mut entries = Vec::new();
    let mut builder = PackBuilder::new();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    for (table, frame) in g.frames {
        chunks += table.len() as u64;
        bytes += frame.len() as u64;
        builder.push(&table, frame);
        if builder.len() >= pack_bytes {
            let (id, parts, e) = std::mem::take(&mut builder).finish();
            pack::upload(target, &id, parts).await?;
            entries.extend(e);
        }
    }
    if !builder.is_empty() {
        let (id, parts, e) = builder.finish();
        pack::upload(target, &id, parts).await?;
        entries.extend(e);
    }
    if !g.loose.is_empty() {
        chunks += g.loose.len() as u64;
        bytes += g.loose.iter().map(|c| c.1.len() as u64).sum::<u64>();
        crate::reader::store_chunks(target, g.loose).await?;
    }
    if !entries.is_empty() {
        index::write(target, &entries).await?;
    }
    Ok((chunks, bytes))
}

/// Copies snapshot `id` into the main store of region `to`: the chunks it lacks (every
/// frame verified before it is written), then the manifest. Idempotent.
pub async fn replicate_snapshot(
    regions: &Regions,
    id: &SnapshotId,
    to: &str,
) -> Result<ReplicateReport> {
    let target = regions.get(to)?.bucket(StoreKind::Main).clone();
    let sources = regions.others(to);
    let (manifest, _) = fetch_manifest(&sources, id, regions.tuning.manifest_memory).await?;
    // The snapshot's own marker: gc spares what this copies until the manifest is there.
    crate::gc::with_marker(&target, id, async {
        let mut report = ReplicateReport::default();
        let held = StoreIndex::load(&target).await?;
        let missing: HashSet<ChunkId> = manifest
            .chunk_ids()?
            .into_iter()
            .filter(|c| !held.contains(c))
            .collect();
        if !missing.is_empty() {
            let g = gather(&sources, missing, regions.tuning.upload_concurrency).await;
            if let Some(first) = g.missing.first() {
                return Err(Error::ChunkMissing {
                    id: *first,
                    region: "every other region".into(),
                });
            }
            geosnap_engine::failpoint::hit("replicate-some-chunks");
            let (chunks, bytes) = store_gathered_now(&target, g, regions.tuning.pack_bytes).await?;
            report.copied_chunks = chunks;
            report.copied_bytes = bytes;
        }
        let key = layout::manifest(id);
        // A copy the target already has must be this very manifest: an earlier attempt of
        // the snapshot may have left it another one (or a damaged one) there.
        let same = match target
            .read_manifest(id, regions.tuning.manifest_memory)
            .await
        {
            Ok(held) => held.header() == manifest.header() && same_checksum(&held, &manifest)?,
            Err(e) if e.is_local() => return Err(e),
            Err(_) => false,
        };
        if !same {
            target.put_manifest(id, manifest.bytes()).await?;
            report.manifest_written = true;
        }
        crate::gc::wait_listed(
            &target,
            &layout::snapshots_prefix(),
            &key,
            crate::gc::LISTING_WAIT,
        )
        .await?;
        Ok(report)
    })
    .await
}

/// Whether two checked manifests end in the same checksum (so hold the same bytes).
fn same_checksum(a: &EncodedManifest, b: &EncodedManifest) -> Result<bool> {
    let sum = |m: &EncodedManifest| -> Result<[u8; 32]> {
        let mut s = [0u8; 32];
        m.bytes().read_exact_at(&mut s, m.bytes().len() - 32)?;
        Ok(s)
    };
    Ok(a.bytes().len() == b.bytes().len() && sum(a)? == sum(b)?)
}

fn chunk_lengths(m: &impl ManifestView) -> Result<BTreeMap<ChunkId, usize>> {
    m.extents()
        .filter_map(|e| match e {
            Ok(Extent::Chunk { id, len, .. }) => Some(Ok((id, len as usize))),
            Ok(Extent::Zero { .. }) => None,
            Err(e) => Some(Err(Error::Engine(e))),
        })
        .collect()
}

/// What repairing a region did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    /// Snapshots copied into the region, with what each took.
    pub snapshots: Vec<(String, ReplicateReport)>,
    /// Manifests of deleted snapshots removed from the region.
    pub removed: Vec<String>,
}

/// Every snapshot id with a tombstone in any reachable region.
pub async fn tombstones(regions: &Regions) -> HashSet<SnapshotId> {
    let mut out = HashSet::new();
    for r in regions.iter() {
        for kind in [StoreKind::Main, StoreKind::Volume] {
            if let Ok(list) = r.bucket(kind).list(&layout::tombstones_prefix()).await {
                out.extend(
                    list.iter()
                        .filter_map(|m| layout::parse_tombstone(&m.location)),
                );
            }
        }
    }
    out
}

/// Brings region `name` up to date with every image-backed snapshot the other regions
/// hold, and removes manifests of snapshots deleted while it was away. Idempotent.
pub async fn repair_region(regions: &Regions, name: &str) -> Result<RepairReport> {
    let target = regions.get(name)?.bucket(StoreKind::Main).clone();
    let dead = tombstones(regions).await;
    let mut wanted = HashSet::new();
    for other in regions.others(name) {
        match other.snapshot_ids().await {
            Ok(ids) => wanted.extend(ids),
            Err(e) => tracing::warn!(store = %other, error = %e, "skipping unreachable region"),
        }
    }
    let have: HashSet<SnapshotId> = target.snapshot_ids().await?.into_iter().collect();
    let mut report = RepairReport::default();
    for id in have.intersection(&dead) {
        target.delete(&layout::manifest(id)).await?;
        report.removed.push(id.to_hex());
    }
    let mut todo: Vec<_> = wanted.difference(&dead).copied().collect();
    todo.sort();
    for id in todo {
        let r = replicate_snapshot(regions, &id, name).await?;
        if r.manifest_written || r.copied_chunks > 0 {
            report.snapshots.push((id.to_hex(), r));
        }
    }
    Ok(report)
}

/// What verifying a store found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Store verified.
    pub store: String,
    /// Manifests read.
    pub manifests: u64,
    /// Chunks indexed (each hashed inside its frame).
    pub chunks_checked: u64,
    /// Packs read whole.
    pub packs_checked: u64,
    /// Bytes read.
    pub bytes_checked: u64,
    /// Packs whose structure is damaged (a frame that does not decode, a bad header).
    pub corrupt_packs: Vec<String>,
    /// Packs the index points into that are gone.
    pub missing_packs: Vec<String>,
    /// Index objects that do not decode.
    pub corrupt_indexes: Vec<String>,
    /// Manifests that do not decode.
    pub corrupt_manifests: Vec<String>,
    /// Referenced chunks that are absent.
    pub missing_chunks: Vec<String>,
    /// Chunks that fail their hash check.
    pub corrupt_chunks: Vec<String>,
    /// Damage fixed from other regions.
    pub repaired: Vec<String>,
    /// Damage that could not be fixed (no good copy elsewhere, or a volume store).
    pub unrepaired: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is wrong, or everything wrong was repaired.
    pub fn is_clean(&self) -> bool {
        self.unrepaired.is_empty()
    }

    /// Whether anything was found wrong (repaired or not).
    pub fn found_damage(&self) -> bool {
        !(self.corrupt_manifests.is_empty()
            && self.missing_chunks.is_empty()
            && self.corrupt_chunks.is_empty()
            && self.corrupt_packs.is_empty()
            && self.missing_packs.is_empty()
            && self.corrupt_indexes.is_empty())
    }
}

/// Reads every manifest, index object and pack of one store of region `name`, checks the
/// packs' structure and every chunk's SHA-256, and that every chunk a manifest names is
/// indexed and whole. With `only`, just that snapshot's manifest and the packs holding its
/// chunks. With `repair`, damage is fixed from other regions' copies (a manifest the store
/// lacks included).
pub async fn verify_store(
    regions: &Regions,
    name: &str,
    kind: StoreKind,
    only: Option<SnapshotId>,
    repair: bool,
) -> Result<VerifyReport> {
    let store = regions.get(name)?.bucket(kind).clone();
    let others = match kind {
        StoreKind::Main => regions.others(name),
        StoreKind::Volume => Vec::new(),
    };
    let mut report = VerifyReport {
        store: store.to_string(),
        ..Default::default()
    };
    // Manifests: what must be there.
    let mut wanted: BTreeMap<ChunkId, usize> = BTreeMap::new();
    let snapshots = match only {
        Some(id) => vec![id],
        None => store.snapshot_ids().await?,
    };
    for id in snapshots {
        report.manifests += 1;
        let memory = regions.tuning.manifest_memory;
        match store.read_manifest(&id, memory).await {
            Ok(m) => wanted.extend(chunk_lengths(&m)?),
            Err(e) if e.is_local() => return Err(e),
            Err(e) => {
                report.corrupt_manifests.push(format!("{id}: {e}"));
                if repair && !others.is_empty() {
                    match fetch_manifest(&others, &id, memory).await {
                        Ok((m, _)) => {
                            store.put_manifest(&id, m.bytes()).await?;
                            wanted.extend(chunk_lengths(&m)?);
                            report.repaired.push(format!("manifest {id}"));
                        }
                        Err(e) => report.unrepaired.push(format!("manifest {id}: {e}")),
                    }
                } else {
                    report.unrepaired.push(format!("manifest {id}"));
                }
            }
        }
    }
    // The index: what is there, and where.
    let index = StoreIndex::load(&store).await?;
    for (id, why) in &index.damaged {
        report.corrupt_indexes.push(format!("{id}: {why}"));
    }
    // Every pack the index points into, walked whole and every frame decoded.
    let mut packs: BTreeMap<PackId, Vec<FrameRef>> = BTreeMap::new();
    for (id, f) in index.chunks.iter() {
        // One snapshot: only the packs that hold its chunks.
        if only.is_none() || wanted.contains_key(id) {
            packs.entry(f.pack).or_default().push(f);
        }
    }
    // Chunks whole at the frame the index names.
    let mut good: HashSet<(ChunkId, PackId, u64)> = HashSet::new();
    let checks = futures::stream::iter(packs.into_iter().map(|(pack_id, frames)| {
        let store = &store;
        async move {
            let bytes = match store.get(&pack::key(&pack_id)).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return (pack_id, frames, Err(None)),
                Err(e) => return (pack_id, frames, Err(Some(e))),
            };
            let n = bytes.len() as u64;
            let checked = tokio::task::spawn_blocking(move || check_pack(&bytes)).await;
            match checked {
                Ok(c) => (pack_id, frames, Ok((n, c))),
                Err(e) => (pack_id, frames, Err(Some(Error::Task(e.to_string())))),
            }
        }
    }))
    .buffer_unordered(4)
    .collect::<Vec<_>>()
    .await;
    for (pack_id, frames, result) in checks {
        match result {
            Ok((n, checked)) => {
                report.packs_checked += 1;
                report.bytes_checked += n;
                if let Some(why) = &checked.structure {
                    report.corrupt_packs.push(format!("{pack_id}: {why}"));
                }
                // A frame the index still points at must decode; superseded ones are
                // garbage for gc.
                let mut bad_frames = Vec::new();
                for f in &frames {
                    match checked.frames.get(&f.offset) {
                        Some(Ok(whole)) => {
                            good.extend(whole.iter().map(|id| (*id, pack_id, f.offset)));
                        }
                        Some(Err(why)) => bad_frames.push(format!("frame at {}: {why}", f.offset)),
                        None if checked.structure.is_none() => {
                            bad_frames.push(format!("no frame at byte {}", f.offset));
                        }
                        None => {}
                    }
                }
                bad_frames.sort();
                bad_frames.dedup();
                for why in bad_frames {
                    report.corrupt_packs.push(format!("{pack_id}: {why}"));
                }
            }
            Err(None) => report.missing_packs.push(pack_id.to_hex()),
            Err(Some(Error::RegionUnavailable { region, reason })) => {
                return Err(Error::RegionUnavailable { region, reason });
            }
            Err(Some(e)) => report.corrupt_packs.push(format!("{pack_id}: {e}")),
        }
    }
    report.chunks_checked = match only {
        Some(_) => wanted.len() as u64,
        None => index.chunks.len() as u64,
    };
    let mut broken: HashSet<ChunkId> = HashSet::new();
    for (id, f) in index.chunks.iter() {
        let whole = good.contains(&(*id, f.pack, f.offset));
        if !whole && wanted.contains_key(id) {
            if report.missing_packs.contains(&f.pack.to_hex()) {
                report.missing_chunks.push(id.to_hex());
            } else {
                report.corrupt_chunks.push(id.to_hex());
            }
            broken.insert(*id);
        }
    }
    for id in wanted.keys() {
        if !index.contains(id) {
            report.missing_chunks.push(id.to_hex());
            broken.insert(*id);
        }
    }
    let structural = report.corrupt_packs.len() + report.corrupt_indexes.len();
    if repair {
        if !broken.is_empty() {
            if others.is_empty() {
                report
                    .unrepaired
                    .extend(broken.iter().map(|c| format!("chunk {c}: no other copy")));
            } else {
                let g = gather(&others, broken.clone(), regions.tuning.upload_concurrency).await;
                for c in &g.missing {
                    report
                        .unrepaired
                        .push(format!("chunk {c}: no good copy anywhere"));
                }
                let fixed: Vec<ChunkId> = broken
                    .iter()
                    .filter(|c| !g.missing.contains(c))
                    .copied()
                    .collect();
                store_gathered(&store, g, regions.tuning.pack_bytes).await?;
                report
                    .repaired
                    .extend(fixed.iter().map(|c| format!("chunk {c}")));
            }
        }
        // Damaged packs and index objects whose good content is indexed elsewhere now can
        // be dropped by gc; their chunks were re-stored above or are whole in them.
        if structural > 0 && report.unrepaired.is_empty() {
            report.repaired.extend(
                report
                    .corrupt_packs
                    .iter()
                    .map(|p| format!("pack {p} (superseded)")),
            );
            report.repaired.extend(
                report
                    .corrupt_indexes
                    .iter()
                    .map(|p| format!("index {p} (superseded)")),
            );
        }
    } else {
        report
            .unrepaired
            .extend(broken.iter().map(|c| format!("chunk {c}")));
        report
            .unrepaired
            .extend(report.corrupt_packs.iter().map(|p| format!("pack {p}")));
        report
            .unrepaired
            .extend(report.corrupt_indexes.iter().map(|p| format!("index {p}")));
    }
    report.missing_chunks.sort();
    report.corrupt_chunks.sort();
    Ok(report)
}

/// What walking one pack found.
struct PackCheck {
    /// Per frame offset: the chunks whole in it, or why it does not decode.
    frames: HashMap<u64, std::result::Result<Vec<ChunkId>, String>>,
    /// Where the pack's structure breaks, if it does.
    structure: Option<String>,
}

fn check_pack(bytes: &Bytes) -> PackCheck {
    let mut c = PackCheck {
        frames: HashMap::new(),
        structure: None,
    };
    let frames = match pack::walk(bytes) {
        Ok(f) => f,
        Err(why) => {
            c.structure = Some(why);
            return c;
        }
    };
    for f in frames {
        let result = match decode_frame(&f.bytes) {
            Ok(d) => Ok(d
                .hashed()
                .into_iter()
                .filter(|(id, actual)| id == actual)
                .map(|(id, _)| id)
                .collect()),
            Err(e) => Err(e.to_string()),
        };
        c.frames.insert(f.offset, result);
    }
    c
}

/// Deletes a snapshot: a tombstone, then the manifest, in every store that may hold it.
/// Chunks stay for gc. Returns the stores that could not be reached (the deletion is
/// finished there by repair once they are back).
pub async fn delete_snapshot(
    regions: &Regions,
    id: &SnapshotId,
    backing: Backing,
    home: &str,
) -> Result<Vec<String>> {
    let (stores, _) = regions.targets(backing, home)?;
    let mut unreachable = Vec::new();
    for s in stores {
        let r = async {
            s.put(&layout::tombstone(id), Bytes::from_static(b"deleted"))
                .await?;
            s.delete(&layout::manifest(id)).await?;
            s.delete(&layout::inflight(id)).await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(store = %s, error = %e, "snapshot not deleted there yet");
            unreachable.push(s.to_string());
        }
    }
    Ok(unreachable)
}
