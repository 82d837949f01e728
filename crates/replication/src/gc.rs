//! Garbage collection: per store, mark every chunk a manifest references, sweep the rest.
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

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use geosnap_engine::manifest::Manifest;
use serde::Serialize;

use crate::bucket::{Bucket, StoreKind};
use crate::region::Regions;
use crate::{Error, Result, layout};

/// How long a `gc/running` marker counts as a live gc.
pub const GC_MARKER_STALE: Duration = Duration::from_secs(600);

/// How gc behaves.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Keep unreferenced chunks younger than this.
    pub grace: Duration,
    /// In-flight markers older than this belong to dead snapshots and are ignored.
    pub marker_ttl: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::ZERO,
            marker_ttl: Duration::from_secs(24 * 3600),
            dry_run: false,
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
    /// Chunk objects found.
    pub chunks: u64,
    /// Chunks referenced by a manifest.
    pub referenced: u64,
    /// Chunks deleted (or that would be, in a dry run).
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
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
    let result = sweep(b, opts, &mut report).await;
    if !opts.dry_run {
        b.delete(&layout::gc_running()).await?;
    }
    result.map(|()| report)
}

async fn sweep(b: &Bucket, opts: &GcOptions, report: &mut GcReport) -> Result<()> {
    let skip = |markers: Vec<String>| format!("snapshot {} is being written", markers.join(", "));
    let markers = live_markers(b, opts.marker_ttl).await?;
    if !markers.is_empty() {
        report.skipped = Some(skip(markers));
        return Ok(());
    }
    let mut referenced = HashSet::new();
    for id in b.snapshot_ids().await? {
        let bytes = b.get_manifest(&id).await?;
        let m = Manifest::decode(&bytes).map_err(|e| {
            Error::Engine(geosnap_engine::Error::ManifestCorrupt(format!(
                "gc stopped in {b}: manifest of {id} does not decode, so its chunks cannot be \
                 told apart from garbage ({e}); run verify --repair first"
            )))
        })?;
        referenced.extend(m.chunk_ids());
        report.manifests += 1;
    }
    let now = Utc::now();
    let mut doomed = Vec::new();
    for meta in b.list(&layout::chunks_prefix()).await? {
        let Some(id) = layout::parse_chunk(&meta.location) else {
            continue;
        };
        report.chunks += 1;
        if referenced.contains(&id) {
            report.referenced += 1;
            continue;
        }
        let age = (now - meta.last_modified)
            .to_std()
            .unwrap_or(Duration::ZERO);
        if age < opts.grace {
            report.kept_young += 1;
            continue;
        }
        doomed.push((meta.location, meta.size));
    }
    let markers = live_markers(b, opts.marker_ttl).await?;
    if !markers.is_empty() {
        report.skipped = Some(skip(markers));
        return Ok(());
    }
    if opts.dry_run {
        report.deleted = doomed.len() as u64;
        report.deleted_bytes = doomed.iter().map(|d| d.1).sum();
        return Ok(());
    }
    let mut deletions = futures::stream::iter(doomed.into_iter().map(|(key, size)| async move {
        geosnap_engine::failpoint::hit("gc-sweep");
        b.delete(&key).await.map(|()| size)
    }))
    .buffer_unordered(16);
    while let Some(r) = deletions.next().await {
        report.deleted_bytes += r?;
        report.deleted += 1;
    }
    Ok(())
}

/// Collects every store of every region, main and volume; a store that fails is reported
/// and the others go on.
pub async fn gc_all(regions: &Regions, opts: &GcOptions) -> Vec<Result<GcReport>> {
    let mut out = Vec::new();
    for r in regions.iter() {
        for kind in [StoreKind::Main, StoreKind::Volume] {
            out.push(gc_store(r.bucket(kind), opts).await);
        }
    }
    out
}

/// Waits while a live gc holds `gc/running` in the store (see the module docs).
pub async fn wait_for_gc(b: &Bucket) -> Result<()> {
    loop {
        let held = match b.list(&Path::from("gc")).await {
            Ok(list) => list
                .into_iter()
                .find(|m| m.location == layout::gc_running()),
            Err(e) => return Err(e),
        };
        match held {
            None => return Ok(()),
            Some(m) => {
                let age = (Utc::now() - m.last_modified)
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                if age >= GC_MARKER_STALE {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

use object_store::path::Path;
