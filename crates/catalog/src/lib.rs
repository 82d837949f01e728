//! geosnap-catalog: the SQLite index of instances, snapshots, per-region replicas and jobs.
//!
//! The catalog is a **cache** of what the regions hold: a snapshot's manifest in a region is
//! the truth, and [`Catalog::upsert_from_manifest`] rebuilds rows from manifests. It is also
//! the home of the **job queue** ([`jobs`]), which lets several worker processes share work
//! through one file. The API is synchronous; async callers run it off the reactor.
//!
//! Invariants:
//! - every mutating call is one `BEGIN IMMEDIATE` transaction: all of it lands or none;
//! - the file is in WAL mode with foreign keys on and a 10 s busy timeout, so concurrent
//!   processes wait for each other instead of failing (past the timeout: [`Error::Busy`]);
//! - the schema version is `PRAGMA user_version`; a file from a newer geosnap is refused
//!   with [`Error::SchemaTooNew`] and left byte-for-byte untouched ([`schema`]);
//! - within an instance, a snapshot name belongs to at most one snapshot that has not
//!   failed; a failed one gives its name up when the name is taken again;
//! - snapshot ids are stored as 32 lowercase hex digits; times are Unix seconds (UTC);
//! - a snapshot expires exactly `retention days × 86 400 s` after it *completed*.
//!
//! ```
//! use geosnap_catalog::*;
//! use geosnap_engine::{SnapshotId, manifest::Backing};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let catalog = Catalog::open(&dir.path().join("catalog.db"))?;
//! catalog.add_instance(&NewInstance {
//!     name: "web-1".into(), image_path: "/images/web-1.raw".into(),
//!     home_region: "it-1".into(), backing: Backing::Image, created_at: 1_000,
//! })?;
//! let id = SnapshotId::generate();
//! catalog.add_snapshot(&NewSnapshot {
//!     id, instance: "web-1".into(), name: "nightly".into(),
//!     retention: Retention::parse("1")?, created_at: 1_000,
//! })?;
//! catalog.complete_snapshot(&id, &Completion {
//!     completed_at: 2_000, state: SnapshotState::Available, stats: SnapshotStatsRow::default(),
//! })?;
//! assert_eq!(catalog.find_snapshot("nightly")?.expires_at, Some(2_000 + 86_400));
//! assert!(catalog.expired(2_000 + 86_399)?.is_empty());
//! assert_eq!(catalog.expired(2_000 + 86_400)?.len(), 1);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod checkpoints;
mod error;
mod instances;
mod replicas;
mod snapshot_id;
mod snapshots;
mod text_enum;

pub mod clock;
pub mod jobs;
pub mod names;
pub mod retention;
pub mod schema;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

pub use clock::{Clock, FixedClock, SystemClock};
pub use error::Error;
pub use instances::{Instance, NewInstance};
pub use jobs::{Job, JobKind, JobState};
pub use replicas::{Replica, ReplicaState};
pub use retention::Retention;
pub use schema::SCHEMA_VERSION;
pub use snapshots::{
    Completion, MIN_ID_PREFIX, NewSnapshot, Snapshot, SnapshotState, SnapshotStatsRow,
};

use error::Context;

// The CLI moves a catalog into `spawn_blocking` and worker threads.
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<Catalog>();
};

/// How long a call waits for another process's write lock before [`Error::Busy`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// An open catalog: one SQLite connection. Open one per thread or process; SQLite
/// serialises writers between them.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("path", &self.path)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// Opens the catalog at `path`, creating the file if missing, and brings its schema up
    /// to date: WAL mode, busy timeout 10 s, foreign keys on, migrations applied.
    pub fn open(path: &Path) -> Result<Catalog, Error> {
        let conn = Connection::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Catalog::set_up(conn, path)
    }

    /// Opens a catalog that must exist already: [`Error::NotInitialised`] if the file is
    /// missing, [`Error::SchemaTooNew`] (file untouched) if a newer geosnap wrote it.
    pub fn open_existing(path: &Path) -> Result<Catalog, Error> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        if !path.is_file() {
            return Err(Error::NotInitialised {
                path: path.to_path_buf(),
            });
        }
        // No CREATE flag: a file deleted since the check above is not silently recreated.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        Catalog::set_up(conn, path)
    }

    /// Checks the file before anything writes to it, then configures and migrates it.
    fn set_up(conn: Connection, path: &Path) -> Result<Catalog, Error> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        schema::check(&conn, path)?;
        // The journal mode is persistent in the file; the other pragmas are per connection.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .during("switching the catalog to WAL mode")?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        schema::migrate(&conn, path)?;
        Ok(Catalog {
            conn,
            path: path.to_path_buf(),
            clock: Arc::new(SystemClock),
        })
    }

    /// Replaces the clock that stamps replica updates (the system clock by default).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Catalog {
        self.clock = clock;
        self
    }

    /// The catalog file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed if `f` succeeds. Taking the
    /// write lock up front lets the busy timeout handle contention; a deferred transaction
    /// that reads and then writes can fail at once with SQLITE_BUSY under WAL.
    pub(crate) fn write<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .during(operation)?;
        let out = f(&tx)?;
        tx.commit().during(operation)?;
        Ok(out)
    }

    /// Runs the queries of `f` against one consistent view of the catalog.
    pub(crate) fn read<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Deferred)
            .during(operation)?;
        let out = f(&tx)?;
        tx.commit().during(operation)?;
        Ok(out)
    }
}
