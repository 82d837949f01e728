//! The operations layer's error type: the lower crates' errors, plus the ones only a
//! whole command can meet.

use std::io;
use std::path::PathBuf;

/// Everything a geosnap command can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory has no configuration.
    #[error("{dir} is not a geosnap data directory; run `geosnap init` first")]
    NotInitialised {
        /// Data directory.
        dir: PathBuf,
    },
    /// `init` on a directory that already holds geosnap data.
    #[error("{dir} is already initialised")]
    AlreadyInitialised {
        /// Data directory.
        dir: PathBuf,
    },
    /// The configuration file cannot be used.
    #[error("configuration {path}: {reason}")]
    Config {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The snapshot is not in a state that allows this.
    #[error("snapshot {label} is {state}; only available or degraded snapshots can be {verb}")]
    NotRestorable {
        /// "instance/name (id)".
        label: String,
        /// Its state.
        state: String,
        /// What was asked.
        verb: &'static str,
    },
    /// An instance whose catalog entry was rebuilt from manifests, which hold no image path.
    #[error(
        "instance {instance} has no image path (its catalog entry was rebuilt from a region's \
         manifests, which do not record one): its snapshots restore, but a new snapshot needs \
         an instance created with --image"
    )]
    NoImage {
        /// Instance name.
        instance: String,
    },
    /// A volume-backed snapshot was asked for in a region that, by design, holds no copy.
    #[error(
        "snapshot {label} is volume-backed and kept only in its home region {home}; {region} holds no copy of it"
    )]
    NotHeld {
        /// "instance/name (id)".
        label: String,
        /// Region asked for.
        region: String,
        /// Home region.
        home: String,
    },
    /// `geosnap bench` would need more memory than the machine has free.
    #[error(
        "bench keeps three in-memory copies of what it stores: {image} holds {data} of data, \
         which would need about {need} of memory, and {available} is available; bench a \
         smaller image"
    )]
    BenchTooLarge {
        /// The image: its path, or "the generated image".
        image: String,
        /// Its data (allocated, non-hole bytes), human-readable.
        data: String,
        /// What the pipelines may need, human-readable.
        need: String,
        /// MemAvailable, human-readable.
        available: String,
    },
    /// A job ended in failure.
    #[error("{0}")]
    JobFailed(String),
    /// Catalog failure.
    #[error(transparent)]
    Catalog(#[from] geosnap_catalog::Error),
    /// Region failure.
    #[error(transparent)]
    Replication(#[from] geosnap_replication::Error),
    /// Engine failure.
    #[error(transparent)]
    Engine(#[from] geosnap_engine::Error),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
