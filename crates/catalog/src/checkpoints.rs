//! Checkpoints of a snapshot's scan: the extents it has finished, recorded as it goes, so
//! that a retry of an interrupted attempt resumes where that attempt got to instead of
//! reading the image again from the start.

use geosnap_engine::SnapshotId;
use rusqlite::{OptionalExtension, params};

use crate::error::Context;
use crate::{Catalog, Error};

impl Catalog {
    /// Records that the scan of snapshot `id`'s image, identified by `source` (its file's
    /// stamp) and cut by `chunker`, finished the image from `start` to `end` with
    /// `extents` (encoded as a manifest encodes them). A checkpoint recorded again with the
    /// same start replaces the old one, and so do all recorded from a later start: each
    /// checkpoint continues the chain of those before it.
    pub fn add_checkpoint(
        &self,
        id: &SnapshotId,
        source: &str,
        chunker: &str,
        start: u64,
        end: u64,
        extents: &[u8],
    ) -> Result<(), Error> {
        self.write("recording a snapshot checkpoint", |tx| {
            tx.execute(
                "DELETE FROM checkpoints WHERE snapshot_id = ?1 AND start_offset >= ?2",
                params![id.to_hex(), start],
            )
            .during("recording a snapshot checkpoint")?;
            tx.execute(
                "INSERT INTO checkpoints
                     (snapshot_id, start_offset, end_offset, source, chunker, extents)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id.to_hex(), start, end, source, chunker, extents],
            )
            .during("recording a snapshot checkpoint")?;
            Ok(())
        })
    }

    /// Hands `f` the end offset and the extents of each of `id`'s checkpoints that were
    /// recorded from `source` with `chunker`, in image order from offset 0, for as long as
    /// each starts where the last ended and `f` returns true; returns the image offset
    /// where those end (0: none).
    pub fn visit_checkpoints(
        &self,
        id: &SnapshotId,
        source: &str,
        chunker: &str,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<u64, Error> {
        const OP: &str = "reading a snapshot's checkpoints";
        self.read(OP, |tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT start_offset, end_offset, source, chunker, extents FROM checkpoints
                     WHERE snapshot_id = ?1 ORDER BY start_offset",
                )
                .during(OP)?;
            let mut rows = stmt.query(params![id.to_hex()]).during(OP)?;
            let mut end = 0u64;
            while let Some(row) = rows.next().during(OP)? {
                let (start, stop): (u64, u64) = (row.get(0).during(OP)?, row.get(1).during(OP)?);
                let (from, cut): (String, String) =
                    (row.get(2).during(OP)?, row.get(3).during(OP)?);
                if start != end || from != source || cut != chunker {
                    break;
                }
                let extents = row.get_ref(4).during(OP)?;
                let Ok(extents) = extents.as_blob() else {
                    break;
                };
                if !f(stop, extents) {
                    break;
                }
                end = stop;
            }
            Ok(end)
        })
    }

    /// Gives snapshot `id` of `instance` the checkpoints of the newest failed snapshot of the
    /// same instance that were recorded from `source` with `chunker` and start at offset 0,
    /// if `id` has none of its own from them: a snapshot taken again after a failed one
    /// (a region outage, a full disk) of the same, unchanged image resumes where that one
    /// got to. Returns whether any were taken over.
    pub fn adopt_checkpoints(
        &self,
        id: &SnapshotId,
        instance: &str,
        source: &str,
        chunker: &str,
    ) -> Result<bool, Error> {
        const OP: &str = "taking over a failed snapshot's checkpoints";
        self.write(OP, |tx| {
            let own: i64 = tx
                .query_row(
                    "SELECT count(*) FROM checkpoints
                     WHERE snapshot_id = ?1 AND start_offset = 0 AND source = ?2 AND chunker = ?3",
                    params![id.to_hex(), source, chunker],
                    |r| r.get(0),
                )
                .during(OP)?;
            if own > 0 {
                return Ok(false);
            }
            let from: Option<String> = tx
                .query_row(
                    "SELECT s.id FROM snapshots s JOIN checkpoints c ON c.snapshot_id = s.id
                     WHERE s.instance = ?1 AND s.state = 'failed' AND s.id != ?2
                       AND c.start_offset = 0 AND c.source = ?3 AND c.chunker = ?4
                     ORDER BY s.created_at DESC, s.id DESC LIMIT 1",
                    params![instance, id.to_hex(), source, chunker],
                    |r| r.get(0),
                )
                .optional()
                .during(OP)?;
            let Some(from) = from else {
                return Ok(false);
            };
            tx.execute(
                "DELETE FROM checkpoints WHERE snapshot_id = ?1",
                params![id.to_hex()],
            )
            .during(OP)?;
            tx.execute(
                "UPDATE checkpoints SET snapshot_id = ?1 WHERE snapshot_id = ?2",
                params![id.to_hex(), from],
            )
            .during(OP)?;
            Ok(true)
        })
    }

    /// Forgets `id`'s checkpoints (once it is committed, or its image has changed).
    pub fn clear_checkpoints(&self, id: &SnapshotId) -> Result<(), Error> {
        self.write("clearing a snapshot's checkpoints", |tx| {
            tx.execute(
                "DELETE FROM checkpoints WHERE snapshot_id = ?1",
                params![id.to_hex()],
            )
            .during("clearing a snapshot's checkpoints")?;
            Ok(())
        })
    }

    /// Forgets the checkpoints of every failed snapshot of `id`'s instance created no later
    /// than `id`, once `id` is committed: a later snapshot of the same unchanged image
    /// reuses `id`'s manifest instead, and a changed image cannot resume from them, so
    /// they would only weigh on the catalog (about 36 bytes per 16 KiB chunk of image)
    /// until those snapshots are deleted. Returns how many rows went.
    pub fn clear_superseded_checkpoints(&self, id: &SnapshotId) -> Result<usize, Error> {
        const OP: &str = "clearing superseded checkpoints";
        self.write(OP, |tx| {
            tx.execute(
                "DELETE FROM checkpoints WHERE snapshot_id IN (
                     SELECT s.id FROM snapshots s, snapshots done
                     WHERE done.id = ?1 AND s.instance = done.instance AND s.id != done.id
                       AND s.state = 'failed' AND s.created_at <= done.created_at)",
                params![id.to_hex()],
            )
            .during(OP)
        })
    }
}
