//! How a [`SnapshotId`] is stored (32 lowercase hex digits, TEXT) and serialised (the same
//! string), since the engine's type carries neither rusqlite nor serde impls.

use geosnap_engine::SnapshotId;
use rusqlite::Row;
use serde::Serializer;

/// Reads a snapshot id column.
pub(crate) fn id_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<SnapshotId> {
    let text: String = row.get(idx)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Reads a nullable snapshot id column.
pub(crate) fn opt_id_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<SnapshotId>> {
    match row.get_ref(idx)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => id_at(row, idx).map(Some),
    }
}

/// Serialises an id as its hex string.
pub(crate) fn serialize<S: Serializer>(id: &SnapshotId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

/// Serialises an optional id as its hex string or null.
pub(crate) fn serialize_opt<S: Serializer>(
    id: &Option<SnapshotId>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.to_hex()),
        None => s.serialize_none(),
    }
}
