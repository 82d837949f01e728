//! Restores: from the home region by default, from any region on request.

use std::path::Path;

use geosnap_catalog::SnapshotState;
use geosnap_replication::reader::{RestoreOutcome, RestoreRequest, restore_snapshot};

use crate::{Error, Geosnap, Result, Ui};

/// How a restore should go.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Region to read from; the snapshot's home region if `None`.
    pub region: Option<String>,
    /// Do not fall back to other regions.
    pub strict: bool,
    /// Replace an existing file at the target.
    pub force: bool,
}

impl Geosnap {
    /// Restores snapshot `key` to `to`.
    pub fn restore(
        &self,
        key: &str,
        to: &Path,
        opts: &RestoreOptions,
        ui: &dyn Ui,
    ) -> Result<RestoreOutcome> {
        let snap = self.catalog.find_snapshot(key)?;
        if !matches!(
            snap.state,
            SnapshotState::Available | SnapshotState::Degraded
        ) {
            return Err(Error::NotRestorable {
                label: snap.label(),
                state: snap.state.to_string(),
                verb: "restored",
            });
        }
        let from = match &opts.region {
            Some(r) => self.regions.get(r)?.name().to_string(),
            None => self.default_source(&snap)?,
        };
        // Fail before any work if the target is unusable.
        geosnap_engine::restore::check_target(to, opts.force)?;
        let req = RestoreRequest {
            snapshot: snap.id,
            backing: snap.backing,
            home: snap.home_region.clone(),
            from,
            strict: opts.strict,
            target: to.to_path_buf(),
            overwrite: opts.force,
        };
        let progress = ui.progress(&format!("restore {}/{}", snap.instance, snap.name));
        Ok(self.block_on(restore_snapshot(&self.regions, req, progress))?)
    }

    /// The home region when this data dir's config has it; otherwise (a catalog rebuilt
    /// from a surviving region after the home was lost) the first configured region that
    /// holds a written copy.
    fn default_source(&self, snap: &geosnap_catalog::Snapshot) -> Result<String> {
        let names = self.regions.names();
        if names.contains(&snap.home_region.as_str()) {
            return Ok(snap.home_region.clone());
        }
        let replicas = self.catalog.replicas(&snap.id)?;
        Ok(names
            .iter()
            .find(|n| {
                replicas
                    .iter()
                    .any(|r| r.region == **n && r.state == geosnap_catalog::ReplicaState::Written)
            })
            .or(names.first())
            .map_or_else(|| snap.home_region.clone(), |n| n.to_string()))
    }
}
