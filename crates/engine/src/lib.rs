//! geosnap-engine: everything between a disk image and a set of content-addressed chunks.
//!
//! A snapshot flows through it like this:
//!
//! ```text
//! image ──► scanner ──► workers ─────────────► ChunkSink (regions)
//!  (SEEK_DATA,  (zero runs cut out,  (SHA-256 id; zstd
//!   windows)     then chunker cuts)   only if the sink lacks it)
//! ```
//! and a restore the other way, through [`restore::restore_image`], which verifies every
//! chunk's SHA-256 and writes into a temporary file that is renamed only when complete.
//!
//! Invariants:
//! - a chunk's id is the SHA-256 of its uncompressed bytes; every decode verifies it;
//! - zero runs never become chunks, and restore turns them into holes;
//! - the scan of an image depends only on its bytes, not on holes or read sizes;
//! - memory is bounded by the window size and the work queue, never by the image size.
//!
//! ```
//! use geosnap_engine::{manifest::*, store::MemStore, *};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.img");
//! std::fs::write(&path, b"hello, disk".repeat(10_000))?;
//! let store = MemStore::new();
//! let image = image::Image::open(&path)?;
//! let scanned = snapshot::snapshot_image(&image, &Default::default(), &store, &NoProgress)?;
//! let meta = SnapshotMeta {
//!     id: SnapshotId::generate(), instance: "vm".into(), name: "first".into(),
//!     backing: Backing::Image, home_region: "it-1".into(),
//!     created_at: 0, completed_at: 0, retention_days: 0,
//! };
//! let manifest = scanned.extents.into_manifest(meta, image.size())?;
//! let out = dir.path().join("restored.img");
//! restore::restore_image(&manifest, &store, &out, &Default::default(), &NoProgress)?;
//! assert_eq!(std::fs::read(&out)?, std::fs::read(&path)?);
//! # Ok(()) }
//! ```

mod error;
mod id;
mod progress;
mod runs;

pub mod aligned;
pub mod chunker;
pub mod codec;
pub mod failpoint;
pub mod image;
pub mod imagegen;
pub mod malloc;
pub mod manifest;
pub mod restore;
pub mod scanner;
pub mod slab;
pub mod snapshot;
pub mod store;
pub mod zero;

pub use error::Error;
pub use id::{
    ChunkFilter, ChunkId, IdBuild, IdHasher, IdMap, IdSet, ParseIdError, RecentIds, SnapshotId,
};
pub use progress::{NoProgress, Progress};
