//! Replicas: which regions hold (or owe) a copy of each snapshot.

use geosnap_engine::SnapshotId;
use rusqlite::{OptionalExtension, params};

use crate::error::Context;
use crate::names::validate_region;
use crate::text_enum::text_enum;
use crate::{Catalog, Error};

text_enum! {
    /// Whether a region holds a snapshot's manifest and chunks.
    pub enum ReplicaState as "replica state" {
        /// Not written yet.
        Pending = "pending",
        /// Manifest written after every chunk it names.
        Written = "written",
        /// Writing failed; repair owes it.
        Failed = "failed",
    }
}

/// One region's copy of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Replica {
    /// Region name.
    pub region: String,
    /// State of the copy.
    pub state: ReplicaState,
    /// When the state last changed, Unix seconds (from the catalog's clock).
    pub updated_at: i64,
}

impl Catalog {
    /// Records the state of a snapshot's copy in a region, stamped with the catalog's
    /// clock; [`Error::SnapshotNotFound`] if the snapshot is not in the catalog.
    pub fn set_replica(
        &self,
        id: &SnapshotId,
        region: &str,
        state: ReplicaState,
    ) -> Result<(), Error> {
        validate_region(region)?;
        let now = self.clock.now();
        self.write("recording a replica", |tx| {
            require_snapshot(tx, id)?;
            tx.execute(
                "INSERT INTO replicas (snapshot_id, region, state, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (snapshot_id, region)
                 DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                params![id.to_hex(), region, state, now],
            )
            .during("recording a replica")?;
            Ok(())
        })
    }

    /// A snapshot's replicas, ordered by region; [`Error::SnapshotNotFound`] if the
    /// snapshot is not in the catalog.
    pub fn replicas(&self, id: &SnapshotId) -> Result<Vec<Replica>, Error> {
        const OP: &str = "listing replicas";
        self.read(OP, |tx| {
            require_snapshot(tx, id)?;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT region, state, updated_at FROM replicas
                     WHERE snapshot_id = ?1 ORDER BY region",
                )
                .during(OP)?;
            stmt.query_map([id.to_hex()], |r| {
                Ok(Replica {
                    region: r.get(0)?,
                    state: r.get(1)?,
                    updated_at: r.get(2)?,
                })
            })
            .and_then(Iterator::collect)
            .during(OP)
        })
    }
}

fn require_snapshot(conn: &rusqlite::Connection, id: &SnapshotId) -> Result<(), Error> {
    conn.query_row(
        "SELECT 1 FROM snapshots WHERE id = ?1",
        [id.to_hex()],
        |_| Ok(()),
    )
    .optional()
    .during("looking up a snapshot")?
    .ok_or_else(|| Error::SnapshotNotFound { key: id.to_hex() })
}
