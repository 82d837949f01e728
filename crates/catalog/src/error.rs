//! The catalog's one error type.

use std::path::PathBuf;

use crate::snapshots::SnapshotState;

/// Everything the catalog can fail with. Callers act on the kind: `*NotFound` and
/// `*Exists` are the user's to fix, `Invalid*` name bad input, [`Error::Busy`] is worth a
/// retry, [`Error::SchemaTooNew`] asks for a newer geosnap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `open_existing` found no catalog file.
    #[error("no catalog at {path}; run `geosnap init` first")]
    NotInitialised {
        /// Where the catalog was expected.
        path: PathBuf,
    },
    /// The catalog file could not be opened or set up.
    #[error("cannot open catalog {path}: {source}")]
    Open {
        /// Catalog path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is a database, or something else, that geosnap did not create.
    #[error("{path} is not a geosnap catalog: {why}")]
    NotACatalog {
        /// File path.
        path: PathBuf,
        /// What gives it away.
        why: String,
    },
    /// The catalog was written by a newer geosnap; it is left untouched.
    #[error(
        "catalog schema version {found} is newer than this geosnap knows (up to {supported}); upgrade geosnap"
    )]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: i32,
        /// Newest version this build knows.
        supported: i32,
    },
    /// An instance with this name exists already.
    #[error("instance '{name}' already exists")]
    InstanceExists {
        /// Instance name.
        name: String,
    },
    /// No instance has this name.
    #[error("instance '{name}' not found")]
    InstanceNotFound {
        /// Instance name.
        name: String,
    },
    /// The instance still has snapshots, so it cannot be deleted.
    #[error(
        "instance '{name}' still has {count} snapshot(s); delete them first, or pass \
         --with-snapshots to delete them with it"
    )]
    InstanceHasSnapshots {
        /// Instance name.
        name: String,
        /// How many snapshots reference it.
        count: u64,
    },
    /// A live (not failed) snapshot of the instance already has this name.
    #[error("instance '{instance}' already has a snapshot named '{name}'")]
    SnapshotExists {
        /// Instance name.
        instance: String,
        /// Snapshot name.
        name: String,
    },
    /// A snapshot with this id exists already (ids are meant to be freshly generated).
    #[error("snapshot id {id} is already in the catalog")]
    SnapshotIdExists {
        /// The id, as hex.
        id: String,
    },
    /// No snapshot matches the id, id prefix or name.
    #[error(
        "snapshot '{key}' not found (name a snapshot as INSTANCE/NAME, by its name, or by at \
         least 6 hex digits of its id)"
    )]
    SnapshotNotFound {
        /// What was looked for.
        key: String,
    },
    /// More than one snapshot matches; the candidates say which.
    #[error("snapshot '{key}' is ambiguous; it matches {}", candidates.join(", "))]
    AmbiguousSnapshot {
        /// What was looked for.
        key: String,
        /// Matches, each as "instance/name (id)".
        candidates: Vec<String>,
    },
    /// A snapshot can only complete as available or degraded.
    #[error("a snapshot completes as available or degraded, not as {state}")]
    InvalidCompletion {
        /// The state asked for.
        state: SnapshotState,
    },
    /// No job has this id.
    #[error("job {id} not found")]
    JobNotFound {
        /// Job id.
        id: i64,
    },
    /// A retention that is not a whole number of days from 0 to 36500.
    #[error("invalid retention {input:?}: {why}")]
    InvalidRetention {
        /// The input, truncated to 80 characters.
        input: String,
        /// One sentence on what is wrong.
        why: String,
    },
    /// A time that is not RFC 3339.
    #[error(
        "invalid time {input:?}: expected an RFC 3339 time such as 2026-11-26T03:00:00Z or 2026-11-26T04:00:00+01:00"
    )]
    InvalidTime {
        /// The input, truncated to 80 characters.
        input: String,
    },
    /// A name a user typed that the catalog refuses.
    #[error("invalid {kind} name {name}: {why}")]
    InvalidName {
        /// "instance", "snapshot" or "region".
        kind: String,
        /// The name, escaped with `{:?}` and truncated to 80 characters.
        name: String,
        /// One sentence on what is wrong.
        why: String,
    },
    /// A text value that is not one of an enum's spellings.
    #[error("{input:?} is not a valid {what}; expected one of: {expected}")]
    UnknownValue {
        /// What was parsed ("snapshot state", "job kind", ...).
        what: &'static str,
        /// The input, truncated to 80 characters.
        input: String,
        /// The accepted spellings, comma-separated.
        expected: String,
    },
    /// The database stayed locked by another process past the busy timeout; retry later.
    #[error("catalog is busy (locked by another geosnap process) while {operation}")]
    Busy {
        /// What the catalog was doing.
        operation: &'static str,
    },
    /// Any other SQLite failure.
    #[error("catalog query failed while {operation}: {source}")]
    Sqlite {
        /// What the catalog was doing.
        operation: &'static str,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Busy { .. })
    }

    /// Whether the error says that something looked up does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::NotInitialised { .. }
                | Error::InstanceNotFound { .. }
                | Error::SnapshotNotFound { .. }
                | Error::JobNotFound { .. }
        )
    }
}

/// Shortens user input kept in an error so a pasted megabyte does not become the message.
pub(crate) fn clip(input: &str) -> String {
    const MAX: usize = 80;
    if input.chars().count() <= MAX {
        input.to_string()
    } else {
        let mut s: String = input.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

/// Adds what the catalog was doing to a SQLite error and sorts out lock contention.
pub(crate) trait Context<T> {
    /// Maps the error, naming `operation`.
    fn during(self, operation: &'static str) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn during(self, operation: &'static str) -> Result<T, Error> {
        self.map_err(|source| from_sqlite(operation, source))
    }
}

/// Maps a SQLite error, keeping lock contention apart as [`Error::Busy`].
pub(crate) fn from_sqlite(operation: &'static str, source: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    match source.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked) => Error::Busy { operation },
        _ => Error::Sqlite { operation, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_input_and_marks_cut_input() {
        assert_eq!(clip("abc"), "abc");
        let long = "x".repeat(100);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 81);
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn ambiguity_lists_every_candidate() {
        let e = Error::AmbiguousSnapshot {
            key: "nightly".into(),
            candidates: vec!["a/nightly (01)".into(), "b/nightly (02)".into()],
        };
        assert_eq!(
            e.to_string(),
            "snapshot 'nightly' is ambiguous; it matches a/nightly (01), b/nightly (02)"
        );
    }
}
