//! The engine's one error type.

use std::io;
use std::path::PathBuf;

use crate::ChunkId;

/// Everything the engine can fail with. Callers act on the kind: a corrupt chunk is
/// fetched elsewhere, a missing image is the user's to fix, a store error may be retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image could not be opened or read.
    #[error("cannot read image {path}: {source}")]
    Image {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The image path names a directory.
    #[error("{path} is a directory, not a disk image")]
    ImageIsDirectory {
        /// Image path.
        path: PathBuf,
    },
    /// The image shrank or vanished while it was read.
    #[error("image {path} changed while it was read: {source}")]
    ImageChanged {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A stored chunk does not decode to the bytes its id names.
    #[error("chunk {id} is corrupt: {detail}")]
    ChunkCorrupt {
        /// Chunk id.
        id: ChunkId,
        /// What is wrong.
        detail: String,
    },
    /// A frame does not decode (its header, table or payload is damaged).
    #[error("frame is corrupt: {0}")]
    FrameCorrupt(String),
    /// The chunk could not be read (its store or frame failed).
    #[error("chunk {id} could not be read: {detail}")]
    ChunkUnreadable {
        /// Chunk id.
        id: ChunkId,
        /// Why.
        detail: String,
    },
    /// No store holds the chunk.
    #[error("chunk {id} is missing")]
    ChunkMissing {
        /// Chunk id.
        id: ChunkId,
    },
    /// A manifest is damaged or inconsistent.
    #[error("manifest is corrupt: {0}")]
    ManifestCorrupt(String),
    /// A manifest was written by a newer geosnap.
    #[error(
        "manifest format version {found} is newer than this geosnap reads (up to {supported}); upgrade geosnap"
    )]
    ManifestVersion {
        /// Version in the manifest.
        found: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// Chunker parameters are out of range.
    #[error("{0}")]
    InvalidChunker(String),
    /// A zstd level zstd does not offer.
    #[error("zstd level {0} is out of range")]
    InvalidLevel(i32),
    /// zstd itself failed (out of memory and the like).
    #[error("zstd failed: {0}")]
    Codec(String),
    /// The restore target exists and overwriting was not asked for.
    #[error("restore target {path} already exists")]
    TargetExists {
        /// Target path.
        path: PathBuf,
    },
    /// The restore target's directory is missing.
    #[error("cannot restore to {path}: directory {dir} does not exist")]
    TargetDirMissing {
        /// Target path.
        path: PathBuf,
        /// Its parent.
        dir: PathBuf,
    },
    /// Writing the restored image failed (a full disk, for one).
    #[error("cannot write {path}: {source}")]
    Write {
        /// Path being written.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A temporary file that holds a manifest, its extents or a restore's index failed (a
    /// full disk, for one).
    #[error("cannot {action} {what} in {}: {source}", std::env::temp_dir().display())]
    Spill {
        /// "write" or "read".
        action: &'static str,
        /// Which temporary file: "the manifest's temporary file", for one.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A chunk store failed; the boxed error says which and why.
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync>),
    /// Work was cancelled because another part of it failed.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Wraps a store's own error.
    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Store(Box::new(e))
    }
}
