//! Disaster recovery: rebuild the catalog from the manifests one region holds. Manifests
//! carry everything the catalog lists, so no other source is needed.

use geosnap_catalog::{ReplicaState, SnapshotState, SnapshotStatsRow};
use geosnap_engine::manifest::ManifestView;
use geosnap_replication::{StoreKind, layout};
use serde::Serialize;

use crate::{Geosnap, Result};

/// What a rebuild found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RebuildReport {
    /// Region read.
    pub from: String,
    /// Snapshots recorded ("instance/name (id)").
    pub snapshots: Vec<String>,
    /// Manifests not recorded, with the reason.
    pub skipped: Vec<String>,
}

impl Geosnap {
    /// Records every snapshot whose manifest region `from` holds (main and volume store),
    /// skipping deleted ones (tombstones). Idempotent: running it twice changes nothing.
    pub fn rebuild_catalog(&self, from: &str) -> Result<RebuildReport> {
        let region = self.regions.get(from)?;
        let dead = self.block_on(geosnap_replication::repair::tombstones(&self.regions));
        let mut report = RebuildReport {
            from: from.to_string(),
            ..Default::default()
        };
        for kind in [StoreKind::Main, StoreKind::Volume] {
            let store = region.bucket(kind);
            for id in self.block_on(store.snapshot_ids())? {
                if dead.contains(&id) {
                    report.skipped.push(format!("{id}: deleted (tombstone)"));
                    continue;
                }
                let decoded =
                    self.block_on(store.read_manifest(&id, self.regions.tuning.manifest_memory));
                let m = match decoded {
                    Ok(m) if m.header().meta.id == id => m,
                    // Not the manifest's fault: no room for its temporary file here.
                    Err(e) if e.is_local() => return Err(e.into()),
                    Ok(_) => {
                        report
                            .skipped
                            .push(format!("{id}: manifest names another snapshot"));
                        continue;
                    }
                    Err(e) => {
                        report.skipped.push(format!("{id}: {e}"));
                        continue;
                    }
                };
                let h = m.header();
                // Which configured stores hold it decides available or degraded.
                let (targets, _) = match self.regions.targets(h.meta.backing, &h.meta.home_region) {
                    Ok(t) => t,
                    // Its home region is not configured here: only `from` is known to hold it.
                    Err(_) => (vec![store.clone()], 1),
                };
                let mut all = true;
                let mut holders = Vec::new();
                for t in &targets {
                    let held = self
                        .block_on(t.exists(&layout::manifest(&id)))
                        .unwrap_or(false);
                    all &= held;
                    holders.push((t.region.clone(), held));
                }
                let state = if all {
                    SnapshotState::Available
                } else {
                    SnapshotState::Degraded
                };
                let stats = SnapshotStatsRow {
                    image_size: h.image_size,
                    data_bytes: h.data_bytes,
                    stored_bytes: 0,
                    chunk_count: h.chunk_count,
                };
                match self.catalog.upsert_from_manifest(&h.meta, &stats, state) {
                    Ok(()) => {}
                    Err(e) => {
                        report.skipped.push(format!("{id}: {e}"));
                        continue;
                    }
                }
                for (r, held) in holders {
                    let s = if held {
                        ReplicaState::Written
                    } else {
                        ReplicaState::Pending
                    };
                    self.catalog.set_replica(&id, &r, s)?;
                }
                report
                    .snapshots
                    .push(format!("{}/{} ({id})", h.meta.instance, h.meta.name));
            }
        }
        Ok(report)
    }
}
