//! The replication crate's one error type.

use geosnap_engine::{ChunkId, SnapshotId};

/// What replication can fail with; each variant names the region involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The region is down or unreachable (after retries).
    #[error("region {region} is unavailable ({reason})")]
    RegionUnavailable {
        /// Region name.
        region: String,
        /// Why.
        reason: String,
    },
    /// The region's store has no room left (a full disk, an exceeded quota, a read-only
    /// filesystem): retries do not fix it.
    #[error("region {region} has no space left ({reason})")]
    RegionFull {
        /// Region name.
        region: String,
        /// What the store said.
        reason: String,
    },
    /// A store request failed in a way retries do not fix.
    #[error("region {region}: {source}")]
    Store {
        /// Region name.
        region: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// No region of that name is configured.
    #[error("unknown region '{name}'; configured regions: {known}")]
    UnknownRegion {
        /// Name asked for.
        name: String,
        /// Names available, comma-separated.
        known: String,
    },
    /// A region's URL or settings are unusable.
    #[error("region {region}: {reason}")]
    Config {
        /// Region name.
        region: String,
        /// What is wrong.
        reason: String,
    },
    /// The snapshot has no manifest in the region asked.
    #[error("snapshot {id} is not in region {region}")]
    SnapshotNotInRegion {
        /// Snapshot.
        id: SnapshotId,
        /// Region.
        region: String,
    },
    /// A chunk is absent from a region.
    #[error("chunk {id} is missing in region {region}")]
    ChunkMissing {
        /// Chunk.
        id: ChunkId,
        /// Region.
        region: String,
    },
    /// A volume-backed snapshot was asked for outside its home region.
    #[error(
        "snapshot {id} is volume-backed and stays in its home region {home} for data residency; it cannot be restored from {asked}"
    )]
    Residency {
        /// Snapshot.
        id: SnapshotId,
        /// Home region.
        home: String,
        /// Region asked for.
        asked: String,
    },
    /// Fewer regions than the write quorum hold the snapshot.
    #[error("only {written} of {needed} required regions could be written ({reasons})")]
    QuorumNotMet {
        /// Regions that hold every chunk.
        written: usize,
        /// Quorum.
        needed: usize,
        /// What went wrong where.
        reasons: String,
    },
    /// The engine failed (image, chunk, manifest, restore target).
    #[error(transparent)]
    Engine(#[from] geosnap_engine::Error),
    /// A background task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl Error {
    /// Whether this error happened here rather than in a store: a temporary file that
    /// cannot be written or read (a full `TMPDIR`), or a task that died. Such an error says
    /// nothing about the object being read, which must not be reported or repaired as
    /// damaged because of it.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Error::Engine(geosnap_engine::Error::Spill { .. }) | Error::Task(_)
        )
    }

    /// Whether this error means "the thing is not there" rather than "could not ask".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::SnapshotNotInRegion { .. }
                | Error::ChunkMissing { .. }
                | Error::Store {
                    source: object_store::Error::NotFound { .. },
                    ..
                }
        )
    }
}
