//! Snapshots: queue them, list them, show them, delete them everywhere.

use geosnap_catalog::{Job, NewSnapshot, Replica, Retention, Snapshot};
use geosnap_engine::SnapshotId;
use geosnap_engine::image::Image;
use serde::Serialize;

use crate::{Geosnap, Result};

/// A snapshot with its per-region replicas.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotView {
    /// The catalog row.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// One entry per target region.
    pub replicas: Vec<Replica>,
}

/// What deleting a snapshot did.
#[derive(Clone, Debug, Serialize)]
pub struct Deleted {
    /// Snapshot id.
    pub id: String,
    /// "instance/name".
    pub snapshot: String,
    /// Stores that were unreachable; repair finishes the deletion there.
    pub unreachable: Vec<String>,
}

impl Geosnap {
    /// Queues a snapshot of `instance` and the job that takes it. Checks the image first
    /// so that bad input changes nothing.
    pub fn queue_snapshot(
        &self,
        instance: &str,
        name: &str,
        retention: Retention,
    ) -> Result<(Snapshot, Job)> {
        geosnap_catalog::names::validate_name("snapshot", name)?;
        let inst = self.catalog.instance(instance)?;
        if inst.image_path.is_empty() {
            return Err(crate::Error::NoImage {
                instance: instance.to_string(),
            });
        }
        Image::open(std::path::Path::new(&inst.image_path))?;
        let now = self.now();
        let new = NewSnapshot {
            id: SnapshotId::generate(),
            instance: instance.to_string(),
            name: name.to_string(),
            retention,
            created_at: now,
        };
        Ok(self.catalog.queue_snapshot(&new, now)?)
    }

    /// Snapshots with their replicas, oldest first.
    pub fn snapshots(&self, instance: Option<&str>) -> Result<Vec<SnapshotView>> {
        self.catalog
            .snapshots(instance)?
            .into_iter()
            .map(|s| self.view(s))
            .collect()
    }

    /// One snapshot by id, id prefix, name or instance/name.
    pub fn snapshot(&self, key: &str) -> Result<SnapshotView> {
        let s = self.catalog.find_snapshot(key)?;
        self.view(s)
    }

    fn view(&self, snapshot: Snapshot) -> Result<SnapshotView> {
        let replicas = self.catalog.replicas(&snapshot.id)?;
        Ok(SnapshotView { snapshot, replicas })
    }

    /// Deletes a snapshot in every store that holds it, then from the catalog.
    pub fn delete_snapshot(&self, key: &str) -> Result<Deleted> {
        let s = self.catalog.find_snapshot(key)?;
        self.delete_snapshot_row(&s)
    }

    pub(crate) fn delete_snapshot_row(&self, s: &Snapshot) -> Result<Deleted> {
        let unreachable = self.block_on(geosnap_replication::repair::delete_snapshot(
            &self.regions,
            &s.id,
            s.backing,
            &s.home_region,
        ))?;
        geosnap_engine::failpoint::hit("delete-before-catalog");
        self.catalog.delete_snapshot(&s.id)?;
        Ok(Deleted {
            id: s.id.to_hex(),
            snapshot: format!("{}/{}", s.instance, s.name),
            unreachable,
        })
    }
}
