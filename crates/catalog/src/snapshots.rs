//! Snapshots: their rows, states, completion and expiry, and how users name them.

use geosnap_engine::SnapshotId;
use geosnap_engine::manifest::{Backing, SnapshotMeta};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use crate::error::Context;
use crate::instances::{backing_at, backing_text};
use crate::names::validate_name;
use crate::retention::Retention;
use crate::snapshot_id::{self, id_at};
use crate::text_enum::text_enum;
use crate::{Catalog, Error};

/// Shortest id prefix `find_snapshot` accepts, so a short word is not taken for an id.
pub const MIN_ID_PREFIX: usize = 6;

text_enum! {
    /// Where a snapshot is in its life.
    pub enum SnapshotState as "snapshot state" {
        /// Waiting for a worker.
        Queued = "queued",
        /// Being taken.
        Running = "running",
        /// Written to every region it belongs in.
        Available = "available",
        /// Written to the write quorum; replication still owed.
        Degraded = "degraded",
        /// Gave up; its name may be taken again.
        Failed = "failed",
    }
}

/// What `add_snapshot` needs; backing and home region come from the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSnapshot {
    /// New id (`SnapshotId::generate()`).
    pub id: SnapshotId,
    /// Instance name.
    pub instance: String,
    /// Snapshot name, unique within the instance among snapshots that did not fail.
    pub name: String,
    /// How long to keep it once completed.
    pub retention: Retention,
    /// Queue time, Unix seconds.
    pub created_at: i64,
}

/// Sizes of a completed snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStatsRow {
    /// Length of the image in bytes.
    pub image_size: u64,
    /// Bytes held by chunks (the image less its zero runs).
    pub data_bytes: u64,
    /// Bytes newly stored (compressed, after dedup) by this snapshot.
    pub stored_bytes: u64,
    /// Number of chunk extents.
    pub chunk_count: u64,
}

/// What `complete_snapshot` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Completion {
    /// When the data was durable in the write quorum, Unix seconds; expiry counts from here.
    pub completed_at: i64,
    /// [`SnapshotState::Available`] or [`SnapshotState::Degraded`].
    pub state: SnapshotState,
    /// Sizes.
    pub stats: SnapshotStatsRow,
}

/// A snapshot as the catalog holds it. Serialises with the id as hex and times as Unix
/// seconds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Id.
    #[serde(serialize_with = "snapshot_id::serialize")]
    pub id: SnapshotId,
    /// Instance name.
    pub instance: String,
    /// Snapshot name.
    pub name: String,
    /// Image- or volume-backed (copied from the instance when queued).
    pub backing: Backing,
    /// Home region (copied from the instance when queued).
    pub home_region: String,
    /// Life-cycle state.
    pub state: SnapshotState,
    /// Retention, serialised as `retention_days` (0 = forever).
    #[serde(rename = "retention_days")]
    pub retention: Retention,
    /// Queue time.
    pub created_at: i64,
    /// Completion time, once completed.
    pub completed_at: Option<i64>,
    /// Expiry time, once completed with a finite retention.
    pub expires_at: Option<i64>,
    /// Image size in bytes, once completed.
    pub image_size: Option<u64>,
    /// Bytes in chunks, once completed.
    pub data_bytes: Option<u64>,
    /// Bytes newly stored, once completed.
    pub stored_bytes: Option<u64>,
    /// Chunk count, once completed.
    pub chunk_count: Option<u64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The earlier snapshot whose manifest this one reused because the image had not
    /// changed since (its file's identity, size and times), if it did.
    #[serde(serialize_with = "snapshot_id::serialize_opt")]
    pub reused_from: Option<SnapshotId>,
    /// Image offset where the attempt that wrote it resumed the scan of an interrupted
    /// one, if it did.
    pub resumed_at: Option<u64>,
}

impl Snapshot {
    /// The manifest metadata of this snapshot; `None` until it has completed.
    pub fn meta(&self) -> Option<SnapshotMeta> {
        Some(SnapshotMeta {
            id: self.id,
            instance: self.instance.clone(),
            name: self.name.clone(),
            backing: self.backing,
            home_region: self.home_region.clone(),
            created_at: self.created_at,
            completed_at: self.completed_at?,
            retention_days: self.retention.days(),
        })
    }

    /// "instance/name (id)", as listed in ambiguity errors.
    pub fn label(&self) -> String {
        format!("{}/{} ({})", self.instance, self.name, self.id)
    }
}

const COLUMNS: &str = "id, instance, name, backing, home_region, state, retention_days, \
     created_at, completed_at, expires_at, image_size, data_bytes, stored_bytes, chunk_count, error, \
     reused_from, resumed_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Snapshot> {
    let days: u32 = row.get(6)?;
    let retention = Retention::from_days(days).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Integer, Box::new(e))
    })?;
    Ok(Snapshot {
        id: id_at(row, 0)?,
        instance: row.get(1)?,
        name: row.get(2)?,
        backing: backing_at(row, 3)?,
        home_region: row.get(4)?,
        state: row.get(5)?,
        retention,
        created_at: row.get(7)?,
        completed_at: row.get(8)?,
        expires_at: row.get(9)?,
        image_size: row.get(10)?,
        data_bytes: row.get(11)?,
        stored_bytes: row.get(12)?,
        chunk_count: row.get(13)?,
        error: row.get(14)?,
        reused_from: snapshot_id::opt_id_at(row, 15)?,
        resumed_at: row.get(16)?,
    })
}

/// Runs a snapshot query and collects the rows.
fn select(
    conn: &rusqlite::Connection,
    operation: &'static str,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Snapshot>, Error> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM snapshots {filter}"))
        .during(operation)?;
    stmt.query_map(params, from_row)
        .and_then(Iterator::collect)
        .during(operation)
}

fn by_id(conn: &rusqlite::Connection, id: &SnapshotId) -> Result<Option<Snapshot>, Error> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM snapshots WHERE id = ?1"),
        [id.to_hex()],
        from_row,
    )
    .optional()
    .during("reading a snapshot")
}

fn not_found(id: &SnapshotId) -> Error {
    Error::SnapshotNotFound { key: id.to_hex() }
}

/// Frees the (instance, name) slot held by another snapshot if that one failed, by moving
/// it aside (it is deleted by [`replace_failed`] once the new one is in); refuses with
/// [`Error::SnapshotExists`] if it did not.
fn free_name(
    tx: &Transaction<'_>,
    instance: &str,
    name: &str,
    id: &SnapshotId,
) -> Result<Option<String>, Error> {
    let holder: Option<(String, SnapshotState)> = tx
        .query_row(
            "SELECT id, state FROM snapshots WHERE instance = ?1 AND name = ?2 AND id != ?3",
            params![instance, name, id.to_hex()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .during("checking a snapshot name")?;
    match holder {
        None => Ok(None),
        Some((other, SnapshotState::Failed)) => {
            // No snapshot name holds a '/', so this one cannot clash.
            tx.execute(
                "UPDATE snapshots SET name = '/replaced/' || id WHERE id = ?1",
                [&other],
            )
            .during("removing a failed snapshot")?;
            Ok(Some(other))
        }
        Some(_) => Err(Error::SnapshotExists {
            instance: instance.into(),
            name: name.into(),
        }),
    }
}

/// Deletes the failed snapshot `old` that `new` replaces under its name, after handing its
/// checkpoints to `new`: a snapshot taken again under the name of a failed one resumes
/// where that one got to (when the image has not changed).
fn replace_failed(tx: &Transaction<'_>, old: &str, new: &SnapshotId) -> Result<(), Error> {
    tx.execute(
        "UPDATE checkpoints SET snapshot_id = ?1 WHERE snapshot_id = ?2",
        params![new.to_hex(), old],
    )
    .during("removing a failed snapshot")?;
    tx.execute("DELETE FROM snapshots WHERE id = ?1", [old])
        .during("removing a failed snapshot")?;
    Ok(())
}

impl Catalog {
    /// Queues a snapshot (state `queued`). A failed snapshot holding the same name is
    /// removed so the name can be retried; any other holder gives [`Error::SnapshotExists`].
    pub fn add_snapshot(&self, new: &NewSnapshot) -> Result<Snapshot, Error> {
        validate_name("snapshot", &new.name)?;
        self.write("adding a snapshot", |tx| insert_snapshot(tx, new))
    }

    /// Queues a snapshot and the job that takes it, in one transaction: a crash leaves
    /// either both or neither.
    pub fn queue_snapshot(
        &self,
        new: &NewSnapshot,
        now: i64,
    ) -> Result<(Snapshot, crate::Job), Error> {
        validate_name("snapshot", &new.name)?;
        self.write("queueing a snapshot", |tx| {
            let snapshot = insert_snapshot(tx, new)?;
            let job =
                crate::jobs::insert_job(tx, crate::JobKind::Snapshot, Some(&new.id), "", now)?;
            Ok((snapshot, job))
        })
    }

    /// The snapshot with this id; [`Error::SnapshotNotFound`] if none.
    pub fn snapshot(&self, id: &SnapshotId) -> Result<Snapshot, Error> {
        by_id(&self.conn, id)?.ok_or_else(|| not_found(id))
    }

    /// Finds the one snapshot a user means by `key`: its full id (any case), an id prefix of
    /// at least [`MIN_ID_PREFIX`] hex digits, its name if unique across instances, or
    /// `instance/name`. A full id wins outright; otherwise prefix and name matches are
    /// pooled, and more than one gives [`Error::AmbiguousSnapshot`] rather than a guess.
    pub fn find_snapshot(&self, key: &str) -> Result<Snapshot, Error> {
        const OP: &str = "finding a snapshot";
        let not_found = || Error::SnapshotNotFound { key: key.into() };
        self.read(OP, |tx| {
            // Names cannot contain '/', so this form is never ambiguous.
            if let Some((instance, name)) = key.split_once('/') {
                return select(
                    tx,
                    OP,
                    "WHERE instance = ?1 AND name = ?2",
                    params![instance, name],
                )?
                .pop()
                .ok_or_else(not_found);
            }
            let hex = key.to_ascii_lowercase();
            let is_hex = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
            if let Some(id) = is_hex.then(|| hex.parse::<SnapshotId>().ok()).flatten()
                && let Some(s) = by_id(tx, &id)?
            {
                return Ok(s);
            }
            let mut found = Vec::new();
            if is_hex && (MIN_ID_PREFIX..32).contains(&hex.len()) {
                // Hex digits only, so the GLOB pattern has no wildcard but the last.
                found = select(
                    tx,
                    OP,
                    "WHERE id GLOB ?1 || '*' ORDER BY created_at, id",
                    [&hex],
                )?;
            }
            for s in select(tx, OP, "WHERE name = ?1 ORDER BY created_at, id", [key])? {
                if !found.iter().any(|f| f.id == s.id) {
                    found.push(s);
                }
            }
            match found.len() {
                0 => Err(not_found()),
                1 => Ok(found.remove(0)),
                _ => Err(Error::AmbiguousSnapshot {
                    key: key.into(),
                    candidates: found.iter().map(Snapshot::label).collect(),
                }),
            }
        })
    }

    /// Snapshots, of one instance or all, ordered by creation time then id;
    /// [`Error::InstanceNotFound`] if the instance named does not exist.
    pub fn snapshots(&self, instance: Option<&str>) -> Result<Vec<Snapshot>, Error> {
        const OP: &str = "listing snapshots";
        self.read(OP, |tx| match instance {
            None => select(tx, OP, "ORDER BY created_at, id", []),
            Some(name) => {
                let found = select(
                    tx,
                    OP,
                    "WHERE instance = ?1 ORDER BY created_at, id",
                    [name],
                )?;
                if found.is_empty() {
                    let exists = tx
                        .query_row(
                            "SELECT 1 FROM instances WHERE name = ?1",
                            [name],
                            |_| Ok(()),
                        )
                        .optional()
                        .during(OP)?;
                    if exists.is_none() {
                        return Err(Error::InstanceNotFound { name: name.into() });
                    }
                }
                Ok(found)
            }
        })
    }

    /// Sets a snapshot's state and error message (`None` clears it).
    pub fn set_snapshot_state(
        &self,
        id: &SnapshotId,
        state: SnapshotState,
        error: Option<&str>,
    ) -> Result<(), Error> {
        self.write("setting a snapshot's state", |tx| {
            let n = tx
                .execute(
                    "UPDATE snapshots SET state = ?2, error = ?3 WHERE id = ?1",
                    params![id.to_hex(), state, error],
                )
                .during("setting a snapshot's state")?;
            if n == 0 {
                return Err(not_found(id));
            }
            Ok(())
        })
    }

    /// Records completion: time, sizes, state (available or degraded), and the expiry that
    /// follows from the snapshot's retention; clears any error message.
    pub fn complete_snapshot(&self, id: &SnapshotId, done: &Completion) -> Result<(), Error> {
        if !matches!(
            done.state,
            SnapshotState::Available | SnapshotState::Degraded
        ) {
            return Err(Error::InvalidCompletion { state: done.state });
        }
        self.write("completing a snapshot", |tx| {
            let snap = by_id(tx, id)?.ok_or_else(|| not_found(id))?;
            let s = &done.stats;
            tx.execute(
                "UPDATE snapshots SET state = ?2, completed_at = ?3, expires_at = ?4,
                     image_size = ?5, data_bytes = ?6, stored_bytes = ?7, chunk_count = ?8,
                     error = NULL
                 WHERE id = ?1",
                params![
                    id.to_hex(),
                    done.state,
                    done.completed_at,
                    snap.retention.expires_at(done.completed_at),
                    s.image_size,
                    s.data_bytes,
                    s.stored_bytes,
                    s.chunk_count,
                ],
            )
            .during("completing a snapshot")?;
            Ok(())
        })
    }

    /// Records where a completed snapshot's image came from (`source`, opaque here: the
    /// caller's description of the image file) and the snapshot it reused, if any.
    pub fn set_snapshot_source(
        &self,
        id: &SnapshotId,
        source: Option<&str>,
        reused_from: Option<&SnapshotId>,
    ) -> Result<(), Error> {
        self.write("recording a snapshot's source", |tx| {
            let n = tx
                .execute(
                    "UPDATE snapshots SET source = ?2, reused_from = ?3 WHERE id = ?1",
                    params![id.to_hex(), source, reused_from.map(|r| r.to_hex())],
                )
                .during("recording a snapshot's source")?;
            if n == 0 {
                return Err(not_found(id));
            }
            Ok(())
        })
    }

    /// Records where the attempt that committed snapshot `id` resumed its scan.
    pub fn set_snapshot_resumed(&self, id: &SnapshotId, offset: u64) -> Result<(), Error> {
        self.write("recording where a snapshot resumed", |tx| {
            let n = tx
                .execute(
                    "UPDATE snapshots SET resumed_at = ?2 WHERE id = ?1",
                    params![id.to_hex(), (offset > 0).then_some(offset)],
                )
                .during("recording where a snapshot resumed")?;
            if n == 0 {
                return Err(not_found(id));
            }
            Ok(())
        })
    }

    /// The newest available or degraded snapshot of `instance` taken from `source`,
    /// provided one of them that scanned the image (reused nothing) completed at or after
    /// `scanned_since`.
    pub fn snapshot_from_source(
        &self,
        instance: &str,
        source: &str,
        scanned_since: i64,
    ) -> Result<Option<SnapshotId>, Error> {
        let found = select(
            &self.conn,
            "finding a snapshot by source",
            "WHERE instance = ?1 AND source = ?2 AND state IN ('available', 'degraded')
               AND EXISTS (SELECT 1 FROM snapshots AS scan
                           WHERE scan.instance = ?1 AND scan.source = ?2
                             AND scan.reused_from IS NULL
                             AND scan.state IN ('available', 'degraded')
                             AND scan.completed_at >= ?3)
             ORDER BY completed_at DESC, id DESC LIMIT 1",
            params![instance, source, scanned_since],
        )?;
        Ok(found.first().map(|s| s.id))
    }

    /// Deletes a snapshot row and its replica rows (not its data in the regions).
    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), Error> {
        self.write("deleting a snapshot", |tx| {
            // Replica rows go by ON DELETE CASCADE (foreign keys are on for every connection).
            let n = tx
                .execute("DELETE FROM snapshots WHERE id = ?1", [id.to_hex()])
                .during("deleting a snapshot")?;
            if n == 0 {
                return Err(not_found(id));
            }
            Ok(())
        })
    }

    /// Completed (available or degraded) snapshots whose expiry is at or before `now`,
    /// oldest expiry first. Snapshots kept forever never appear.
    pub fn expired(&self, now: i64) -> Result<Vec<Snapshot>, Error> {
        select(
            &self.conn,
            "listing expired snapshots",
            "WHERE state IN ('available', 'degraded') AND expires_at <= ?1
             ORDER BY expires_at, id",
            [now],
        )
    }

    /// Inserts or updates a snapshot row from a manifest (catalog rebuild): idempotent,
    /// and creates a missing instance with an unknown (empty) image path. A failed
    /// snapshot holding the same name is removed; a live one gives
    /// [`Error::SnapshotExists`], for the caller to report and skip.
    pub fn upsert_from_manifest(
        &self,
        meta: &SnapshotMeta,
        stats: &SnapshotStatsRow,
        state: SnapshotState,
    ) -> Result<(), Error> {
        let retention = Retention::from_days(meta.retention_days)?;
        self.write("recording a snapshot from a manifest", |tx| {
            tx.execute(
                "INSERT INTO instances (name, image_path, home_region, backing, created_at)
                 VALUES (?1, '', ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING",
                params![
                    meta.instance,
                    meta.home_region,
                    backing_text(meta.backing),
                    meta.created_at
                ],
            )
            .during("recording an instance from a manifest")?;
            let replaced = free_name(tx, &meta.instance, &meta.name, &meta.id)?;
            tx.execute(
                "INSERT INTO snapshots (id, instance, name, backing, home_region, state,
                     retention_days, created_at, completed_at, expires_at,
                     image_size, data_bytes, stored_bytes, chunk_count, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, NULL)
                 ON CONFLICT (id) DO UPDATE SET
                     instance = excluded.instance, name = excluded.name,
                     backing = excluded.backing, home_region = excluded.home_region,
                     state = excluded.state, retention_days = excluded.retention_days,
                     created_at = excluded.created_at, completed_at = excluded.completed_at,
                     expires_at = excluded.expires_at, image_size = excluded.image_size,
                     data_bytes = excluded.data_bytes, stored_bytes = excluded.stored_bytes,
                     chunk_count = excluded.chunk_count, error = NULL",
                params![
                    meta.id.to_hex(),
                    meta.instance,
                    meta.name,
                    backing_text(meta.backing),
                    meta.home_region,
                    state,
                    retention.days(),
                    meta.created_at,
                    meta.completed_at,
                    retention.expires_at(meta.completed_at),
                    stats.image_size,
                    stats.data_bytes,
                    stats.stored_bytes,
                    stats.chunk_count,
                ],
            )
            .during("recording a snapshot from a manifest")?;
            if let Some(old) = replaced {
                tx.execute("DELETE FROM snapshots WHERE id = ?1", [old])
                    .during("removing a failed snapshot")?;
            }
            Ok(())
        })
    }
}

/// Inserts a queued snapshot (see [`Catalog::add_snapshot`]).
fn insert_snapshot(tx: &rusqlite::Transaction<'_>, new: &NewSnapshot) -> Result<Snapshot, Error> {
    let (backing, home_region) = tx
        .query_row(
            "SELECT backing, home_region FROM instances WHERE name = ?1",
            [&new.instance],
            |r| Ok((backing_at(r, 0)?, r.get::<_, String>(1)?)),
        )
        .optional()
        .during("reading a snapshot's instance")?
        .ok_or_else(|| Error::InstanceNotFound {
            name: new.instance.clone(),
        })?;
    if by_id(tx, &new.id)?.is_some() {
        return Err(Error::SnapshotIdExists {
            id: new.id.to_hex(),
        });
    }
    let replaced = free_name(tx, &new.instance, &new.name, &new.id)?;
    tx.execute(
        "INSERT INTO snapshots
                 (id, instance, name, backing, home_region, state, retention_days, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            new.id.to_hex(),
            new.instance,
            new.name,
            backing_text(backing),
            home_region,
            SnapshotState::Queued,
            new.retention.days(),
            new.created_at,
        ],
    )
    .during("adding a snapshot")?;
    if let Some(old) = replaced {
        replace_failed(tx, &old, &new.id)?;
    }
    Ok(Snapshot {
        id: new.id,
        instance: new.instance.clone(),
        name: new.name.clone(),
        backing,
        home_region,
        state: SnapshotState::Queued,
        retention: new.retention,
        created_at: new.created_at,
        completed_at: None,
        expires_at: None,
        image_size: None,
        data_bytes: None,
        stored_bytes: None,
        chunk_count: None,
        error: None,
        reused_from: None,
        resumed_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_spell_lowercase_everywhere() {
        for s in SnapshotState::ALL {
            assert_eq!(s.to_string().parse::<SnapshotState>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(SnapshotState::Degraded.to_string(), "degraded");
        let e = "Available".parse::<SnapshotState>().unwrap_err();
        assert!(
            e.to_string()
                .contains("queued, running, available, degraded, failed"),
            "{e}"
        );
    }

    #[test]
    fn meta_only_once_completed() {
        let mut s = Snapshot {
            id: SnapshotId([1; 16]),
            instance: "vm".into(),
            name: "n".into(),
            backing: Backing::Volume,
            home_region: "de-1".into(),
            state: SnapshotState::Running,
            retention: Retention::from_days(3).unwrap(),
            created_at: 10,
            completed_at: None,
            expires_at: None,
            image_size: None,
            data_bytes: None,
            stored_bytes: None,
            chunk_count: None,
            error: None,
            reused_from: None,
            resumed_at: None,
        };
        assert_eq!(s.meta(), None);
        s.completed_at = Some(20);
        let m = s.meta().unwrap();
        assert_eq!(
            (m.created_at, m.completed_at, m.retention_days),
            (10, 20, 3)
        );
        assert_eq!(m.backing, Backing::Volume);
        assert_eq!(m.home_region, "de-1");
    }
}
