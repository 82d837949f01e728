//! The job queue: durable units of work that survive a crash and are taken over when
//! their worker stops sending heartbeats.
//!
//! A job is claimed by one `UPDATE ... RETURNING` inside a `BEGIN IMMEDIATE` transaction,
//! so any number of processes can claim from the same catalog and each job goes to one
//! worker at a time. A worker proves it is alive with [`Catalog::heartbeat`]; a running
//! job whose heartbeat is older than the claimer's `stale_after` is runnable again, and
//! the old worker learns it lost the job when its next heartbeat or finish returns false.

use geosnap_engine::SnapshotId;
use rusqlite::{OptionalExtension, Row, params};

use crate::error::Context;
use crate::snapshot_id::{self, opt_id_at};
use crate::text_enum::text_enum;
use crate::{Catalog, Error};

text_enum! {
    /// What a job does.
    pub enum JobKind as "job kind" {
        /// Take a snapshot.
        Snapshot = "snapshot",
        /// Bring a snapshot's missing replicas up to date.
        Replicate = "replicate",
        /// Delete expired snapshots.
        Prune = "prune",
        /// Delete chunks no manifest references.
        Gc = "gc",
        /// Check stored chunks and manifests.
        Verify = "verify",
    }
}

text_enum! {
    /// Where a job is in its life.
    pub enum JobState as "job state" {
        /// Waiting for a worker.
        Queued = "queued",
        /// Claimed by a worker that sends heartbeats.
        Running = "running",
        /// Finished.
        Done = "done",
        /// Gave up; `error` says why.
        Failed = "failed",
    }
}

/// A job as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    /// Id, increasing in enqueue order and never reused.
    pub id: i64,
    /// What it does.
    pub kind: JobKind,
    /// The snapshot it works on, if any (serialised as hex).
    #[serde(serialize_with = "snapshot_id::serialize_opt")]
    pub snapshot: Option<SnapshotId>,
    /// Kind-specific parameters (JSON by convention; the catalog does not look inside).
    pub payload: String,
    /// Life-cycle state.
    pub state: JobState,
    /// How many times it has been claimed.
    pub attempts: u32,
    /// The worker that claimed it last.
    pub worker: Option<String>,
    /// Last sign of life from that worker, Unix seconds.
    pub heartbeat_at: Option<i64>,
    /// Enqueue time, Unix seconds.
    pub created_at: i64,
    /// Last change, Unix seconds.
    pub updated_at: i64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

const COLUMNS: &str = "id, kind, snapshot_id, payload, state, attempts, worker, heartbeat_at, \
                       created_at, updated_at, error";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: row.get(0)?,
        kind: row.get(1)?,
        snapshot: opt_id_at(row, 2)?,
        payload: row.get(3)?,
        state: row.get(4)?,
        attempts: row.get(5)?,
        worker: row.get(6)?,
        heartbeat_at: row.get(7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
        error: row.get(10)?,
    })
}

impl Catalog {
    /// Queues a job.
    pub fn enqueue(
        &self,
        kind: JobKind,
        snapshot: Option<&SnapshotId>,
        payload: &str,
        now: i64,
    ) -> Result<Job, Error> {
        self.write("queueing a job", |tx| {
            insert_job(tx, kind, snapshot, payload, now)
        })
    }

    /// Claims the oldest runnable job for `worker`: a queued one, or a running one whose
    /// heartbeat is more than `stale_after` seconds old (its worker is taken to be dead).
    /// The job becomes running under `worker` with a fresh heartbeat and one more attempt.
    /// `None` when nothing is runnable.
    pub fn claim_job(
        &self,
        worker: &str,
        now: i64,
        stale_after: i64,
    ) -> Result<Option<Job>, Error> {
        const OP: &str = "claiming a job";
        let cutoff = now.saturating_sub(stale_after);
        self.write(OP, |tx| {
            tx.query_row(
                &format!(
                    "UPDATE jobs
                     SET state = 'running', worker = ?1, heartbeat_at = ?2, updated_at = ?2,
                         attempts = attempts + 1
                     WHERE id = (
                         SELECT id FROM jobs
                         WHERE state = 'queued'
                            OR (state = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < ?3))
                         ORDER BY id LIMIT 1)
                     RETURNING {COLUMNS}"
                ),
                params![worker, now, cutoff],
                from_row,
            )
            .optional()
            .during(OP)
        })
    }

    /// Refreshes the heartbeat of a job `worker` runs; false if the job is no longer
    /// running under `worker` (it was taken over or finished), so the worker should stop.
    pub fn heartbeat(&self, job: i64, worker: &str, now: i64) -> Result<bool, Error> {
        const OP: &str = "recording a heartbeat";
        self.write(OP, |tx| {
            let n = tx
                .execute(
                    "UPDATE jobs SET heartbeat_at = ?3, updated_at = ?3
                     WHERE id = ?1 AND state = 'running' AND worker = ?2",
                    params![job, worker, now],
                )
                .during(OP)?;
            owned(tx, job, n)
        })
    }

    /// Ends a job `worker` runs: done, or failed with the message. False, and nothing
    /// changed, if the job is no longer running under `worker`.
    pub fn finish_job(
        &self,
        job: i64,
        worker: &str,
        outcome: Result<(), &str>,
        now: i64,
    ) -> Result<bool, Error> {
        const OP: &str = "finishing a job";
        let (state, error) = match outcome {
            Ok(()) => (JobState::Done, None),
            Err(message) => (JobState::Failed, Some(message)),
        };
        self.write(OP, |tx| {
            let n = tx
                .execute(
                    "UPDATE jobs SET state = ?3, error = ?4, updated_at = ?5
                     WHERE id = ?1 AND state = 'running' AND worker = ?2",
                    params![job, worker, state, error, now],
                )
                .during(OP)?;
            owned(tx, job, n)
        })
    }

    /// The job with this id; [`Error::JobNotFound`] if none.
    pub fn job(&self, id: i64) -> Result<Job, Error> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()
            .during("reading a job")?
            .ok_or(Error::JobNotFound { id })
    }

    /// Every job, ordered by id.
    pub fn jobs(&self) -> Result<Vec<Job>, Error> {
        const OP: &str = "listing jobs";
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs ORDER BY id"))
            .during(OP)?;
        stmt.query_map([], from_row)
            .and_then(Iterator::collect)
            .during(OP)
    }

    /// How many jobs are queued or running.
    pub fn pending_jobs(&self) -> Result<u64, Error> {
        self.conn
            .query_row(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')",
                [],
                |r| r.get(0),
            )
            .during("counting pending jobs")
    }
}

/// Whether a guarded update touched the job; [`Error::JobNotFound`] if there is no job.
fn owned(conn: &rusqlite::Connection, job: i64, updated: usize) -> Result<bool, Error> {
    if updated > 0 {
        return Ok(true);
    }
    let exists = conn
        .query_row("SELECT 1 FROM jobs WHERE id = ?1", [job], |_| Ok(()))
        .optional()
        .during("looking up a job")?;
    match exists {
        Some(()) => Ok(false),
        None => Err(Error::JobNotFound { id: job }),
    }
}

/// Inserts a queued job (see [`Catalog::enqueue`]).
pub(crate) fn insert_job(
    tx: &rusqlite::Transaction<'_>,
    kind: JobKind,
    snapshot: Option<&SnapshotId>,
    payload: &str,
    now: i64,
) -> Result<Job, Error> {
    const OP: &str = "queueing a job";
    tx.query_row(
        &format!(
            "INSERT INTO jobs (kind, snapshot_id, payload, state, attempts, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'queued', 0, ?4, ?4) RETURNING {COLUMNS}"
        ),
        params![kind, snapshot.map(SnapshotId::to_hex), payload, now],
        from_row,
    )
    .during(OP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_spell_lowercase() {
        for k in JobKind::ALL {
            assert_eq!(k.as_str().parse::<JobKind>().unwrap(), *k);
        }
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
        }
        assert_eq!(JobKind::Gc.to_string(), "gc");
        assert_eq!(
            serde_json::to_string(&JobKind::Replicate).unwrap(),
            "\"replicate\""
        );
        assert!("GC".parse::<JobKind>().is_err());
    }
}
