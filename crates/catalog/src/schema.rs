//! The schema and its migrations, versioned by `PRAGMA user_version`.
//!
//! A catalog at version N has had `MIGRATIONS[..N]` applied, each step once, in one
//! transaction with the version bump, so a crash leaves version N or N+1 and nothing in
//! between. Steps are never edited once released; a change is a new step. A file with a
//! version above [`SCHEMA_VERSION`] belongs to a newer geosnap and is not touched.

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::Error;
use crate::error::{Context, from_sqlite};

/// Marks a SQLite file as a geosnap catalog (`PRAGMA application_id`, "GSNP").
pub const APPLICATION_ID: i32 = 0x4753_4E50;

/// Migration steps; step `i` takes a catalog from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema. Times are Unix seconds (UTC); snapshot ids 32 lowercase hex
    // digits. Unsigned statistics fit in INTEGER because rusqlite refuses u64 > i64::MAX.
    r#"
    CREATE TABLE instances (
        name        TEXT PRIMARY KEY NOT NULL,
        image_path  TEXT NOT NULL,
        home_region TEXT NOT NULL,
        backing     TEXT NOT NULL CHECK (backing IN ('image', 'volume')),
        created_at  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE snapshots (
        id             TEXT PRIMARY KEY NOT NULL
                       CHECK (length(id) = 32 AND id NOT GLOB '*[^0-9a-f]*'),
        instance       TEXT NOT NULL REFERENCES instances (name),
        name           TEXT NOT NULL,
        backing        TEXT NOT NULL CHECK (backing IN ('image', 'volume')),
        home_region    TEXT NOT NULL,
        state          TEXT NOT NULL
                       CHECK (state IN ('queued', 'running', 'available', 'degraded', 'failed')),
        retention_days INTEGER NOT NULL CHECK (retention_days BETWEEN 0 AND 36500),
        created_at     INTEGER NOT NULL,
        completed_at   INTEGER,
        expires_at     INTEGER,
        image_size     INTEGER CHECK (image_size >= 0),
        data_bytes     INTEGER CHECK (data_bytes >= 0),
        stored_bytes   INTEGER CHECK (stored_bytes >= 0),
        chunk_count    INTEGER CHECK (chunk_count >= 0),
        error          TEXT,
        UNIQUE (instance, name)
    ) STRICT;
    CREATE INDEX snapshots_by_name ON snapshots (name);
    CREATE INDEX snapshots_by_created ON snapshots (created_at, id);
    CREATE INDEX snapshots_by_expiry ON snapshots (expires_at)
        WHERE state IN ('available', 'degraded');

    CREATE TABLE replicas (
        snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
        region      TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('pending', 'written', 'failed')),
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (snapshot_id, region)
    ) STRICT, WITHOUT ROWID;

    -- snapshot_id has no foreign key on purpose: a job's history outlives the snapshot it
    -- worked on (a prune job deletes its snapshot; a failed snapshot is replaced on retry).
    CREATE TABLE jobs (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        kind         TEXT NOT NULL
                     CHECK (kind IN ('snapshot', 'replicate', 'prune', 'gc', 'verify')),
        snapshot_id  TEXT,
        payload      TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        worker       TEXT,
        heartbeat_at INTEGER,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        error        TEXT
    ) STRICT;
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE INDEX jobs_by_snapshot ON jobs (snapshot_id);
    "#,
    // 2: where a snapshot's image came from (its file's device, inode, size and times, as
    // geosnap-ops writes them) and, for a snapshot that reused an earlier one's manifest
    // because that file had not changed, which snapshot that was.
    r#"
    ALTER TABLE snapshots ADD COLUMN source TEXT;
    ALTER TABLE snapshots ADD COLUMN reused_from TEXT
        CHECK (reused_from IS NULL OR (length(reused_from) = 32
                                       AND reused_from NOT GLOB '*[^0-9a-f]*'));
    CREATE INDEX snapshots_by_source ON snapshots (instance, source) WHERE source IS NOT NULL;
    "#,
    // 3: checkpoints of a snapshot's scan (the extents it finished from start_offset to
    // end_offset, encoded as a manifest encodes them, with the image file's stamp and the
    // chunker they hold for), from which a retry of an interrupted attempt resumes; and
    // where the attempt that committed a snapshot resumed its scan.
    r#"
    CREATE TABLE checkpoints (
        snapshot_id  TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
        start_offset INTEGER NOT NULL CHECK (start_offset >= 0),
        end_offset   INTEGER NOT NULL CHECK (end_offset > start_offset),
        source       TEXT NOT NULL,
        chunker      TEXT NOT NULL,
        extents      BLOB NOT NULL,
        PRIMARY KEY (snapshot_id, start_offset)
    ) STRICT;
    ALTER TABLE snapshots ADD COLUMN resumed_at INTEGER
        CHECK (resumed_at IS NULL OR resumed_at > 0);
    "#,
];

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Reads the schema version without writing anything.
pub(crate) fn version(conn: &Connection) -> Result<i32, Error> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .during("reading the schema version")
}

/// Refuses files a newer geosnap wrote, or that are some other program's database.
/// Reads only, so a refused file is left exactly as it was.
pub(crate) fn check(conn: &Connection, path: &Path) -> Result<(), Error> {
    let found = version(conn).map_err(|e| not_a_database(e, path))?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .during("reading the application id")?;
    if found < 0 || (found > 0 && app != APPLICATION_ID) {
        return Err(Error::NotACatalog {
            path: path.to_path_buf(),
            why: format!(
                "it is a SQLite database of another program (application id {app:#x}, user version {found})"
            ),
        });
    }
    if found == 0 {
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .during("inspecting a new catalog")?;
        if tables > 0 {
            return Err(Error::NotACatalog {
                path: path.to_path_buf(),
                why: format!("it is a SQLite database that already holds {tables} table(s)"),
            });
        }
    }
    Ok(())
}

/// Applies the steps the catalog lacks. Safe against several processes opening the same
/// file at once: the version is read again under the write lock.
pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<(), Error> {
    check(conn, path)?;
    if version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .during("starting a migration")?;
    check(&tx, path)?;
    let from = version(&tx)?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.execute_batch(step)
            .map_err(|e| from_sqlite("migrating the catalog schema", e))?;
        tx.pragma_update(None, "user_version", i as i32 + 1)
            .during("recording the schema version")?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .during("marking the file as a geosnap catalog")?;
    tx.commit().during("committing a migration")
}

/// Turns "file is not a database" into [`Error::NotACatalog`].
fn not_a_database(e: Error, path: &Path) -> Error {
    match e {
        Error::Sqlite { source, .. }
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) =>
        {
            Error::NotACatalog {
                path: path.to_path_buf(),
                why: "it is not a SQLite database".into(),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_reaches_the_current_version_once() {
        let conn = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        check(&conn, path).unwrap();
        migrate(&conn, path).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        // A second run has nothing to do (and would fail on CREATE TABLE if it tried).
        migrate(&conn, path).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn check_constraints_hold() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn, Path::new(":memory:")).unwrap();
        conn.execute_batch("INSERT INTO instances VALUES ('vm', '/x', 'it-1', 'image', 0);")
            .unwrap();
        let bad_state = conn.execute(
            "INSERT INTO snapshots (id, instance, name, backing, home_region, state, retention_days, created_at)
             VALUES ('0123456789abcdef0123456789abcdef', 'vm', 's', 'image', 'it-1', 'lost', 0, 0)",
            [],
        );
        assert!(bad_state.is_err());
        let bad_id = conn.execute(
            "INSERT INTO snapshots (id, instance, name, backing, home_region, state, retention_days, created_at)
             VALUES ('0123456789ABCDEF0123456789abcdef', 'vm', 's', 'image', 'it-1', 'queued', 0, 0)",
            [],
        );
        assert!(bad_id.is_err());
    }

    /// A catalog written by the first release (version 1) gains the snapshot-source columns
    /// and keeps every row; the new columns start empty.
    #[test]
    fn a_version_1_catalog_is_upgraded_in_place() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO instances VALUES ('vm', '/x', 'it-1', 'image', 0);
             INSERT INTO snapshots (id, instance, name, backing, home_region, state, retention_days, created_at)
             VALUES ('0123456789abcdef0123456789abcdef', 'vm', 's', 'image', 'it-1', 'available', 0, 5);",
        )
        .unwrap();
        migrate(&conn, Path::new(":memory:")).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let (created, source, reused): (i64, Option<String>, Option<String>) = conn
            .query_row(
                "SELECT created_at, source, reused_from FROM snapshots",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((created, source, reused), (5, None, None));
        let bad = conn.execute("UPDATE snapshots SET reused_from = 'nope'", []);
        assert!(bad.is_err());
    }

    #[test]
    fn foreign_databases_are_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 1;")
            .unwrap();
        let e = migrate(&conn, Path::new("x.db")).unwrap_err();
        assert!(matches!(e, Error::NotACatalog { .. }), "{e:?}");

        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x);").unwrap();
        let e = migrate(&conn, Path::new("x.db")).unwrap_err();
        assert!(matches!(e, Error::NotACatalog { .. }), "{e:?}");
    }
}
