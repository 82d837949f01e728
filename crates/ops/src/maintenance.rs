//! Keeping the stores tidy and whole: prune expired snapshots, collect garbage, verify
//! and repair regions.

use geosnap_catalog::{ReplicaState, SnapshotState};
use geosnap_replication::StoreKind;
use geosnap_replication::gc::{GcOptions, GcReport, gc_all};
use geosnap_replication::repair::{RepairReport, VerifyReport, repair_region, verify_store};
use serde::Serialize;

use crate::{Geosnap, Result};

/// What `prune` did (or would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// The instant expiry was judged at, Unix seconds.
    pub now: i64,
    /// Whether anything was deleted.
    pub dry_run: bool,
    /// Snapshots expired at `now`.
    pub pruned: Vec<Pruned>,
}

/// One pruned snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Pruned {
    /// Id.
    pub id: String,
    /// "instance/name".
    pub snapshot: String,
    /// When it completed.
    pub completed_at: Option<i64>,
    /// When it expired.
    pub expires_at: Option<i64>,
    /// Stores not reachable now; repair finishes the deletion there.
    pub unreachable: Vec<String>,
}

/// What `verify` found in one region.
#[derive(Clone, Debug, Serialize)]
pub struct RegionVerify {
    /// Region.
    pub region: String,
    /// Snapshots copied in before verifying (with `--repair`).
    pub repair: Option<RepairReport>,
    /// Main store.
    pub main: VerifyReport,
    /// Volume store.
    pub volume: VerifyReport,
}

impl RegionVerify {
    /// No damage left.
    pub fn is_clean(&self) -> bool {
        self.main.is_clean() && self.volume.is_clean()
    }
}

impl Geosnap {
    /// Deletes every snapshot whose retention has run out at `now` (the clock's time if
    /// `None`): manifests in every store, then the catalog row.
    pub fn prune(&self, now: Option<i64>, dry_run: bool) -> Result<PruneReport> {
        let now = now.unwrap_or_else(|| self.now());
        let mut report = PruneReport {
            now,
            dry_run,
            pruned: Vec::new(),
        };
        for s in self.catalog.expired(now)? {
            let mut unreachable = Vec::new();
            if !dry_run {
                unreachable = self.block_on(geosnap_replication::repair::delete_snapshot(
                    &self.regions,
                    &s.id,
                    s.backing,
                    &s.home_region,
                ))?;
                geosnap_engine::failpoint::hit("prune-before-catalog");
                self.catalog.delete_snapshot(&s.id)?;
            }
            report.pruned.push(Pruned {
                id: s.id.to_hex(),
                snapshot: format!("{}/{}", s.instance, s.name),
                completed_at: s.completed_at,
                expires_at: s.expires_at,
                unreachable,
            });
        }
        Ok(report)
    }

    /// Deletes chunks no manifest references, store by store.
    pub fn gc(&self, opts: &GcOptions) -> Result<Vec<std::result::Result<GcReport, String>>> {
        Ok(self
            .block_on(gc_all(&self.regions, opts))
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect())
    }

    /// Verifies every chunk of one region (or all), both stores; with `repair`, first
    /// copies in the snapshots the region missed, then fixes damage from other regions.
    /// With `snapshot`, only that snapshot, in the store of each region that should hold it.
    pub fn verify(
        &self,
        region: Option<&str>,
        snapshot: Option<&str>,
        repair: bool,
    ) -> Result<Vec<RegionVerify>> {
        let snap = snapshot
            .map(|key| self.catalog.find_snapshot(key))
            .transpose()?;
        let volume_home = snap
            .as_ref()
            .filter(|s| s.backing == geosnap_engine::manifest::Backing::Volume)
            .map(|s| s.home_region.clone());
        let names: Vec<String> = match (region, &volume_home) {
            (Some(r), Some(home)) if self.regions.get(r)?.name() != home => {
                return Err(crate::Error::NotHeld {
                    label: snap.as_ref().map(|s| s.label()).unwrap_or_default(),
                    region: r.to_string(),
                    home: home.clone(),
                });
            }
            (Some(r), _) => vec![self.regions.get(r)?.name().to_string()],
            (None, Some(home)) => vec![home.clone()],
            (None, None) => self.regions.names().iter().map(|s| s.to_string()).collect(),
        };
        let only = snap.as_ref().map(|s| s.id);
        let mut out = Vec::new();
        for name in names {
            let repaired = if repair && only.is_none() {
                Some(self.block_on(repair_region(&self.regions, &name))?)
            } else {
                None
            };
            let check = |kind: StoreKind| -> Result<VerifyReport> {
                let store = self.regions.get(&name)?.bucket(kind).to_string();
                let wanted = match (&snap, kind) {
                    (None, _) => true,
                    (Some(_), StoreKind::Volume) => volume_home.is_some(),
                    (Some(_), StoreKind::Main) => volume_home.is_none(),
                };
                if !wanted {
                    return Ok(VerifyReport {
                        store,
                        ..Default::default()
                    });
                }
                Ok(self.block_on(verify_store(&self.regions, &name, kind, only, repair))?)
            };
            let main = check(StoreKind::Main)?;
            let volume = check(StoreKind::Volume)?;
            if repaired.is_some() || (repair && only.is_some()) {
                self.mark_replicas_written(&name)?;
            }
            out.push(RegionVerify {
                region: name,
                repair: repaired,
                main,
                volume,
            });
        }
        Ok(out)
    }

    /// After a repair of `region`, records the image-backed snapshots it now holds.
    fn mark_replicas_written(&self, region: &str) -> Result<()> {
        let held: std::collections::HashSet<_> = self
            .block_on(
                self.regions
                    .get(region)?
                    .bucket(StoreKind::Main)
                    .snapshot_ids(),
            )?
            .into_iter()
            .collect();
        for s in self.catalog.snapshots(None)? {
            if s.backing != geosnap_engine::manifest::Backing::Image
                || !matches!(s.state, SnapshotState::Available | SnapshotState::Degraded)
            {
                continue;
            }
            if held.contains(&s.id) {
                self.catalog
                    .set_replica(&s.id, region, ReplicaState::Written)?;
                self.refresh_state(&s)?;
            }
        }
        Ok(())
    }
}
