//! Where things live inside a region's store (and a volume store, which has the same
//! layout under its own root):
//!
//! ```text
//! packs/<first 2 hex>/<pack id>       a pack of frames of chunks (see crate::pack)
//! index/<index id>                    which pack and frame holds each chunk (crate::index)
//! snapshots/<snapshot id>/manifest    one manifest (see geosnap_engine::manifest)
//! inflight/<snapshot id>              a snapshot being written: protects its chunks from gc
//! tombstones/<snapshot id>            a deleted snapshot: repair must not bring it back
//! gc/running                          a gc sweep is under way: new snapshots wait for it
//! ```
//! Keys are built only from ids (hex), never from user-typed names.

use geosnap_engine::{ChunkId, SnapshotId};
use object_store::path::Path;

/// Key of a chunk object of the first layout (one object per chunk), which packs
/// replaced; kept for tools that look for strays.
pub fn chunk(id: &ChunkId) -> Path {
    let hex = id.to_hex();
    Path::from(format!("chunks/{}/{hex}", &hex[..2]))
}

/// Prefix under which all chunks live.
pub fn chunks_prefix() -> Path {
    Path::from("chunks")
}

/// Key of a snapshot's manifest.
pub fn manifest(id: &SnapshotId) -> Path {
    Path::from(format!("snapshots/{}/manifest", id.to_hex()))
}

/// Prefix under which all manifests live.
pub fn snapshots_prefix() -> Path {
    Path::from("snapshots")
}

/// Key of the in-flight marker of a snapshot being written.
pub fn inflight(id: &SnapshotId) -> Path {
    Path::from(format!("inflight/{}", id.to_hex()))
}

/// Prefix of in-flight markers.
pub fn inflight_prefix() -> Path {
    Path::from("inflight")
}

/// Key of the tombstone of a deleted snapshot.
pub fn tombstone(id: &SnapshotId) -> Path {
    Path::from(format!("tombstones/{}", id.to_hex()))
}

/// Prefix of tombstones.
pub fn tombstones_prefix() -> Path {
    Path::from("tombstones")
}

/// The snapshot id a tombstone names.
pub fn parse_tombstone(key: &Path) -> Option<SnapshotId> {
    let parts: Vec<_> = key.parts().collect();
    match parts.as_slice() {
        [s, id] if s.as_ref() == "tombstones" => id.as_ref().parse().ok(),
        _ => None,
    }
}

/// Key of the marker a running gc holds.
pub fn gc_running() -> Path {
    Path::from("gc/running")
}

/// The chunk id a key names, if it is a well-formed chunk key.
pub fn parse_chunk(key: &Path) -> Option<ChunkId> {
    let mut parts = key.parts();
    if parts.next()?.as_ref() != "chunks" {
        return None;
    }
    let fan = parts.next()?;
    let name = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let id: ChunkId = name.as_ref().parse().ok()?;
    (id.to_hex()[..2] == *fan.as_ref()).then_some(id)
}

/// The snapshot id a manifest key names.
pub fn parse_manifest(key: &Path) -> Option<SnapshotId> {
    let parts: Vec<_> = key.parts().collect();
    match parts.as_slice() {
        [s, id, m] if s.as_ref() == "snapshots" && m.as_ref() == "manifest" => {
            id.as_ref().parse().ok()
        }
        _ => None,
    }
}

/// The snapshot id an in-flight marker names.
pub fn parse_inflight(key: &Path) -> Option<SnapshotId> {
    let parts: Vec<_> = key.parts().collect();
    match parts.as_slice() {
        [s, id] if s.as_ref() == "inflight" => id.as_ref().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strangers_are_ignored() {
        let c = ChunkId::of(b"a");
        assert_eq!(parse_chunk(&chunk(&c)), Some(c));
        let s = SnapshotId::generate();
        assert_eq!(parse_manifest(&manifest(&s)), Some(s));
        assert_eq!(parse_inflight(&inflight(&s)), Some(s));
        assert_eq!(parse_tombstone(&tombstone(&s)), Some(s));
        assert_eq!(parse_tombstone(&inflight(&s)), None);
        assert_eq!(parse_chunk(&Path::from("chunks/00/zz")), None);
        let wrong_fan = format!("chunks/zz/{}", c.to_hex());
        assert_eq!(parse_chunk(&Path::from(wrong_fan)), None);
        assert_eq!(parse_manifest(&Path::from("snapshots/x/manifest")), None);
    }
}
