//! geosnap-replication: regions, replicated snapshot writes, fallback reads, the fault
//! simulator, volume stores and repair.
//!
//! A region is a name plus two [`object_store::ObjectStore`]s (main and volume), each seen
//! through the [`simulator`]. Nothing here asks what backs a store: a local directory,
//! memory or an S3 bucket behave the same.
//!
//! Invariants:
//! - a manifest is written to a store only after every chunk it names is durable there,
//!   and only when the write quorum of stores is reached; a failed snapshot leaves no
//!   manifest anywhere;
//! - volume-backed snapshots touch only their home region's volume store, and are never
//!   read from anywhere else;
//! - every chunk read is verified against its SHA-256 before it is used or copied;
//! - deletions leave tombstones, so repair never resurrects a deleted snapshot.

mod error;

pub mod bucket;
pub mod direct;
pub mod gc;
pub mod index;
pub mod layout;
pub mod memory;
pub mod pack;
pub mod reader;
pub mod region;
pub mod repair;
pub mod retry;
pub mod s3;
pub mod simulator;
pub mod sorted;
pub mod writer;

pub use bucket::{Bucket, StoreKind};
pub use error::Error;
pub use region::{Region, RegionSpec, Regions, Tuning};

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
