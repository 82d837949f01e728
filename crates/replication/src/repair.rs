//! Bringing stores up to date: copy a snapshot into a store that missed it (replication
//! jobs, repair after an outage), verify a store chunk by chunk, and delete snapshots
//! everywhere with tombstones so repair never brings them back.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use futures::StreamExt;
use geosnap_engine::codec::Decoder;
use geosnap_engine::manifest::{Backing, Extent, Manifest};
use geosnap_engine::{ChunkId, SnapshotId};
use serde::Serialize;

use crate::bucket::{Bucket, StoreKind};
use crate::reader::fetch_manifest;
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

/// Verifies an encoded chunk off the reactor.
async fn verify_object(id: ChunkId, object: Bytes, len: Option<usize>) -> Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        Decoder::new()?.decode_into(&id, &object, len, &mut out)?;
        Ok::<_, geosnap_engine::Error>(object)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
    .map_err(Error::Engine)
}

/// A verified copy of `id` from the first of `sources` that has a good one.
async fn fetch_good_chunk(sources: &[Bucket], id: &ChunkId, len: Option<usize>) -> Result<Bytes> {
    let mut first_err = None;
    for s in sources {
        match s.get_chunk(id).await {
            Ok(obj) => match verify_object(*id, obj, len).await {
                Ok(obj) => return Ok(obj),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            },
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(Error::ChunkMissing {
        id: *id,
        region: "any region".into(),
    }))
}

/// Copies snapshot `id` into the main store of region `to`: the chunks it lacks (each
/// verified before it is written), then the manifest. Idempotent.
pub async fn replicate_snapshot(
    regions: &Regions,
    id: &SnapshotId,
    to: &str,
) -> Result<ReplicateReport> {
    let target = regions.get(to)?.bucket(StoreKind::Main).clone();
    let sources = regions.others(to);
    let mut report = ReplicateReport::default();
    let (manifest, _) = fetch_manifest(&sources, id).await?;
    let held = target.chunk_ids().await?;
    let lengths = chunk_lengths(&manifest);
    let missing: Vec<(ChunkId, usize)> = lengths
        .iter()
        .filter(|(id, _)| !held.contains(id))
        .map(|(id, len)| (*id, *len))
        .collect();
    let concurrency = regions.tuning.upload_concurrency;
    let mut copies = futures::stream::iter(missing.into_iter().map(|(cid, len)| {
        let (sources, target) = (&sources, &target);
        async move {
            let obj = fetch_good_chunk(sources, &cid, Some(len)).await?;
            let n = obj.len() as u64;
            target.put(&layout::chunk(&cid), obj).await?;
            Ok::<_, Error>(n)
        }
    }))
    .buffer_unordered(concurrency);
    while let Some(r) = copies.next().await {
        report.copied_bytes += r?;
        report.copied_chunks += 1;
        if report.copied_chunks == 2 {
            geosnap_engine::failpoint::hit("replicate-some-chunks");
        }
    }
    drop(copies);
    target.sync().await?;
    if !target.exists(&layout::manifest(id)).await? {
        target
            .put(&layout::manifest(id), Bytes::from(manifest.encode()?))
            .await?;
        target.sync().await?;
        report.manifest_written = true;
    }
    target.delete(&layout::inflight(id)).await?;
    Ok(report)
}

fn chunk_lengths(m: &Manifest) -> BTreeMap<ChunkId, usize> {
    m.extents
        .iter()
        .filter_map(|e| match *e {
            Extent::Chunk { id, len, .. } => Some((id, len as usize)),
            Extent::Zero { .. } => None,
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
    /// Chunk objects read and hashed.
    pub chunks_checked: u64,
    /// Their encoded bytes.
    pub bytes_checked: u64,
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
    /// Whether nothing is wrong (after repairs).
    pub fn is_clean(&self) -> bool {
        self.unrepaired.is_empty()
            && (self.repaired.len()
                == self.corrupt_chunks.len()
                    + self.missing_chunks.len()
                    + self.corrupt_manifests.len())
    }
}

/// Reads every manifest and every chunk they reference in one store of region `name`,
/// checks every hash, and with `repair` fixes damage from other regions' copies.
pub async fn verify_store(
    regions: &Regions,
    name: &str,
    kind: StoreKind,
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
    let mut lengths: BTreeMap<ChunkId, usize> = BTreeMap::new();
    for id in store.snapshot_ids().await? {
        report.manifests += 1;
        let decoded = match store.get_manifest(&id).await {
            Ok(bytes) => Manifest::decode(&bytes).map_err(Error::Engine),
            Err(e) => Err(e),
        };
        match decoded {
            Ok(m) => lengths.extend(chunk_lengths(&m)),
            Err(e) => {
                report.corrupt_manifests.push(format!("{id}: {e}"));
                if repair && !others.is_empty() {
                    match fetch_manifest(&others, &id).await {
                        Ok((m, _)) => {
                            store
                                .put(&layout::manifest(&id), Bytes::from(m.encode()?))
                                .await?;
                            lengths.extend(chunk_lengths(&m));
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
    let held = store.chunk_ids().await?;
    let checks = futures::stream::iter(lengths.into_iter().map(|(cid, len)| {
        let (store, held) = (&store, &held);
        async move {
            if !held.contains(&cid) {
                return (cid, len, Err(None));
            }
            match store.get_chunk(&cid).await {
                Ok(obj) => {
                    let n = obj.len() as u64;
                    match verify_object(cid, obj, Some(len)).await {
                        Ok(_) => (cid, len, Ok(n)),
                        Err(e) => (cid, len, Err(Some(e))),
                    }
                }
                Err(e) if e.is_not_found() => (cid, len, Err(None)),
                Err(e) => (cid, len, Err(Some(e))),
            }
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for (cid, len, result) in checks {
        match result {
            Ok(n) => {
                report.chunks_checked += 1;
                report.bytes_checked += n;
                continue;
            }
            Err(None) => report.missing_chunks.push(cid.to_hex()),
            Err(Some(Error::RegionUnavailable { region, reason })) => {
                return Err(Error::RegionUnavailable { region, reason });
            }
            Err(Some(_)) => {
                report.chunks_checked += 1;
                report.corrupt_chunks.push(cid.to_hex());
            }
        }
        if repair && !others.is_empty() {
            match fetch_good_chunk(&others, &cid, Some(len)).await {
                Ok(obj) => {
                    store.put(&layout::chunk(&cid), obj).await?;
                    report.repaired.push(format!("chunk {cid}"));
                }
                Err(e) => report.unrepaired.push(format!("chunk {cid}: {e}")),
            }
        } else {
            report.unrepaired.push(format!("chunk {cid}"));
        }
    }
    Ok(report)
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
