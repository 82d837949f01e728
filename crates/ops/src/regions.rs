//! Regions as the user sees them: list with what they hold, fail and heal through the
//! simulator.

use futures::TryStreamExt;
use geosnap_catalog::{JobKind, ReplicaState};
use geosnap_replication::simulator::{FaultConfig, FaultMode};
use geosnap_replication::{Bucket, StoreKind};
use serde::Serialize;

use crate::config::{load_simulator, save_simulator};
use crate::{Geosnap, Result};

/// One region's line in `region list`.
#[derive(Clone, Debug, Serialize)]
pub struct RegionView {
    /// Name.
    pub name: String,
    /// Country.
    pub country: String,
    /// Main store URL.
    pub url: String,
    /// Volume store URL.
    pub volume_url: String,
    /// Simulated condition.
    pub simulated: FaultConfig,
    /// Objects and bytes in the main store (`None` if it cannot be listed).
    pub objects: Option<u64>,
    /// Bytes in the main store.
    pub bytes: Option<u64>,
    /// Objects in the volume store.
    pub volume_objects: Option<u64>,
    /// Bytes in the volume store.
    pub volume_bytes: Option<u64>,
    /// Why a store could not be listed.
    pub error: Option<String>,
}

async fn usage(b: &Bucket) -> std::result::Result<(u64, u64), String> {
    let metas: Vec<_> = b
        .store
        .list(None)
        .try_collect()
        .await
        .map_err(|e| format!("{b}: {e}"))?;
    Ok((metas.len() as u64, metas.iter().map(|m| m.size).sum()))
}

impl Geosnap {
    /// Every region with its simulated state and what it holds.
    pub fn region_list(&self) -> Result<Vec<RegionView>> {
        let mut out = Vec::new();
        for r in self.regions.iter() {
            let main = self.block_on(usage(r.bucket(StoreKind::Main)));
            let vol = self.block_on(usage(r.bucket(StoreKind::Volume)));
            let error = [main.as_ref().err(), vol.as_ref().err()]
                .into_iter()
                .flatten()
                .next()
                .cloned();
            out.push(RegionView {
                name: r.name().to_string(),
                country: r.spec().country.clone(),
                url: r.spec().url.clone(),
                volume_url: r.spec().volume_url.clone(),
                simulated: r.faults().config(),
                objects: main.as_ref().ok().map(|m| m.0),
                bytes: main.as_ref().ok().map(|m| m.1),
                volume_objects: vol.as_ref().ok().map(|m| m.0),
                volume_bytes: vol.as_ref().ok().map(|m| m.1),
                error,
            });
        }
        Ok(out)
    }

    /// Makes region `name` misbehave (persisted across commands).
    pub fn region_fail(&self, name: &str, mode: FaultMode) -> Result<FaultConfig> {
        let region = self.regions.get(name)?;
        let mut state = load_simulator(&self.dir)?;
        let config = state.entry(name.to_string()).or_default();
        config.apply(mode);
        let config = config.clone();
        save_simulator(&self.dir, &state)?;
        region.faults().set(config.clone());
        Ok(config)
    }

    /// Heals region `name` and queues the replication jobs it is owed. Returns their count.
    pub fn region_heal(&self, name: &str) -> Result<usize> {
        let region = self.regions.get(name)?;
        let mut state = load_simulator(&self.dir)?;
        state.remove(name);
        save_simulator(&self.dir, &state)?;
        region.faults().set(FaultConfig::default());
        let mut queued = 0;
        for s in self.catalog.snapshots(None)? {
            let owed = self
                .catalog
                .replicas(&s.id)?
                .iter()
                .any(|r| r.region == name && r.state != ReplicaState::Written);
            let committed = matches!(
                s.state,
                geosnap_catalog::SnapshotState::Available
                    | geosnap_catalog::SnapshotState::Degraded
            );
            if owed && committed && s.backing == geosnap_engine::manifest::Backing::Image {
                self.catalog
                    .enqueue(JobKind::Replicate, Some(&s.id), name, self.now())?;
                queued += 1;
            }
        }
        Ok(queued)
    }
}
