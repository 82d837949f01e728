//! Restores from a chosen region: manifest and chunks come from that region; a chunk (or
//! manifest) missing or corrupt there is fetched from another region, verified, and
//! written back (repair), unless the restore is strict or volume-backed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use geosnap_engine::manifest::{Backing, Manifest};
use geosnap_engine::restore::{RestoreOptions, RestoreStats, restore_image};
use geosnap_engine::store::ChunkSource;
use geosnap_engine::{ChunkId, Progress, SnapshotId};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::bucket::{Bucket, StoreKind};
use crate::region::Regions;
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
/// whether it was repaired.
pub async fn fetch_manifest(stores: &[Bucket], id: &SnapshotId) -> Result<(Manifest, bool)> {
    let mut first_err: Option<Error> = None;
    for (i, b) in stores.iter().enumerate() {
        let got = match b.get_manifest(id).await {
            Ok(bytes) => Manifest::decode(&bytes)
                .map(|m| (m, bytes))
                .map_err(Error::Engine),
            Err(e) => Err(e),
        };
        match got {
            Ok((m, bytes)) => {
                if m.header.meta.id != *id {
                    first_err.get_or_insert(Error::Engine(geosnap_engine::Error::ManifestCorrupt(
                        format!(
                            "manifest at {} names snapshot {}",
                            layout::manifest(id),
                            m.header.meta.id
                        ),
                    )));
                    continue;
                }
                let repaired = i > 0
                    && matches!(
                        first_err,
                        Some(Error::SnapshotNotInRegion { .. } | Error::Engine(_))
                    )
                    && stores[0].put(&layout::manifest(id), bytes).await.is_ok();
                return Ok((m, repaired));
            }
            Err(e) => {
                // The region asked for is down: say so rather than quietly reading elsewhere.
                if i == 0 && matches!(e, Error::RegionUnavailable { .. }) {
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

/// Restores a snapshot from one region.
pub async fn restore_snapshot(
    regions: &Regions,
    req: RestoreRequest,
    progress: Arc<dyn Progress + Send + Sync>,
) -> Result<RestoreOutcome> {
    let stores = sources(regions, &req)?;
    let (manifest, repaired_manifest) = fetch_manifest(&stores, &req.snapshot).await?;
    let source = Arc::new(RegionSource {
        handle: Handle::current(),
        stores,
        primary_down: AtomicBool::new(false),
        repaired: Mutex::default(),
        unrepaired: Mutex::default(),
    });
    let opts = RestoreOptions {
        overwrite: req.overwrite,
        threads: 0,
    };
    let stats = {
        let (source, target) = (source.clone(), req.target.clone());
        tokio::task::spawn_blocking(move || {
            restore_image(&manifest, &*source, &target, &opts, &*progress)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??
    };
    let list = |m: &Mutex<Vec<ChunkId>>| {
        m.lock()
            .map(|v| v.iter().map(ChunkId::to_hex).collect())
            .unwrap_or_default()
    };
    Ok(RestoreOutcome {
        region: req.from,
        stats,
        repaired_chunks: list(&source.repaired),
        repaired_manifest,
        unrepaired_chunks: list(&source.unrepaired),
    })
}

/// Chunks from a preferred store, then from the others.
struct RegionSource {
    handle: Handle,
    stores: Vec<Bucket>,
    primary_down: AtomicBool,
    repaired: Mutex<Vec<ChunkId>>,
    unrepaired: Mutex<Vec<ChunkId>>,
}

impl ChunkSource for RegionSource {
    fn fetch(
        &self,
        id: &ChunkId,
        attempt: u32,
    ) -> std::result::Result<Option<Bytes>, geosnap_engine::Error> {
        let Some(store) = self.stores.get(attempt as usize) else {
            return Ok(None);
        };
        if attempt == 0 && self.primary_down.load(Ordering::Relaxed) {
            return Err(geosnap_engine::Error::store(Error::RegionUnavailable {
                region: store.to_string(),
                reason: "it failed earlier in this restore".into(),
            }));
        }
        match self.handle.block_on(store.get_chunk(id)) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                if attempt == 0 && matches!(e, Error::RegionUnavailable { .. }) {
                    self.primary_down.store(true, Ordering::Relaxed);
                }
                Err(geosnap_engine::Error::store(e))
            }
        }
    }

    fn recovered(&self, id: &ChunkId, _attempt: u32, object: &Bytes) {
        let primary = &self.stores[0];
        let ok = !self.primary_down.load(Ordering::Relaxed)
            && self
                .handle
                .block_on(primary.put(&layout::chunk(id), object.clone()))
                .is_ok();
        let list = if ok { &self.repaired } else { &self.unrepaired };
        if let Ok(mut l) = list.lock() {
            l.push(*id);
        }
    }
}
