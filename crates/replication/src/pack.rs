//! Packs: many frames in one object, so a region holds a few large objects per GiB
//! instead of one per chunk.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "GSPK"
//!      4     1  format version (1)
//!      5     3  reserved, zero
//!      8     .  frames, each: u32 LE length L, then L bytes of frame (geosnap_engine::codec)
//! ```
//! The index (see [`crate::index`]) says where each chunk's frame lies; the length
//! prefixes let a pack be walked, verified and re-indexed without it.

use bytes::Bytes;
use geosnap_engine::ChunkId;
use geosnap_engine::codec::EncodedFrame;
use object_store::path::Path;

use crate::index::{Entry, PackId};

/// Frozen magic of a pack.
pub const PACK_MAGIC: [u8; 4] = *b"GSPK";
/// Current pack format version.
pub const PACK_VERSION: u8 = 1;
/// Size of the pack header.
pub const PACK_HEADER_LEN: usize = 8;

/// Key of a pack.
pub fn key(id: &PackId) -> Path {
    let hex = id.to_hex();
    Path::from(format!("packs/{}/{hex}", &hex[..2]))
}

/// Prefix of all packs.
pub fn prefix() -> Path {
    Path::from("packs")
}

/// The pack id a key names.
pub fn parse_key(key: &Path) -> Option<PackId> {
    let parts: Vec<_> = key.parts().collect();
    match parts.as_slice() {
        [p, fan, name] if p.as_ref() == "packs" => {
            let id: PackId = name.as_ref().parse().ok()?;
            (id.to_hex()[..2] == *fan.as_ref()).then_some(id)
        }
        _ => None,
    }
}

/// A pack being assembled from frames; frames are shared, not copied.
#[derive(Debug)]
pub struct PackBuilder {
    id: PackId,
    parts: Vec<Bytes>,
    len: usize,
    entries: Vec<Entry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder::new()
    }
}

impl PackBuilder {
    /// An empty pack with a fresh id.
    pub fn new() -> PackBuilder {
        let mut header = [0u8; PACK_HEADER_LEN];
        header[..4].copy_from_slice(&PACK_MAGIC);
        header[4] = PACK_VERSION;
        PackBuilder {
            id: PackId::generate(),
            parts: vec![Bytes::copy_from_slice(&header)],
            len: PACK_HEADER_LEN,
            entries: Vec::new(),
        }
    }

    /// Appends a frame; every chunk it holds gets an index entry.
    pub fn push(&mut self, chunks: &[(ChunkId, u32)], frame: Bytes) {
        let frame_len = frame.len() as u32;
        self.parts
            .push(Bytes::copy_from_slice(&frame_len.to_le_bytes()));
        let offset = (self.len + 4) as u64;
        for (id, _) in chunks {
            self.entries.push(Entry {
                chunk: *id,
                pack: self.id,
                offset,
                len: frame_len,
            });
        }
        self.len += 4 + frame.len();
        self.parts.push(frame);
    }

    /// Appends an encoded frame.
    pub fn push_frame(&mut self, frame: EncodedFrame) {
        self.push(&frame.chunks, frame.bytes);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no frame was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pack id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// The pack's parts (for an upload without copying) and its index entries.
    pub fn finish(self) -> (PackId, Vec<Bytes>, Vec<Entry>) {
        (self.id, self.parts, self.entries)
    }
}

/// Uploads a pack from its parts (no copy), retried like every store call.
pub async fn upload(bucket: &crate::Bucket, id: &PackId, parts: Vec<Bytes>) -> crate::Result<()> {
    let path = key(id);
    crate::retry::retry(bucket.retry, || {
        let payload: object_store::PutPayload = parts.iter().cloned().collect();
        let path = &path;
        async move {
            object_store::ObjectStoreExt::put(&*bucket.store, path, payload)
                .await
                .map(|_| ())
        }
    })
    .await
    .map_err(|e| bucket.err(e))
}

/// A frame found by walking a pack.
#[derive(Debug, Clone)]
pub struct WalkedFrame {
    /// Offset of the frame's bytes in the pack.
    pub offset: u64,
    /// The frame.
    pub bytes: Bytes,
}

/// Walks a whole pack's frames; an error says where its structure breaks.
pub fn walk(pack: &Bytes) -> Result<Vec<WalkedFrame>, String> {
    if pack.len() < PACK_HEADER_LEN || pack[..4] != PACK_MAGIC {
        return Err("not a geosnap pack (bad magic)".into());
    }
    if pack[4] != PACK_VERSION || pack[5..8] != [0, 0, 0] {
        return Err(format!(
            "pack version {} or its header is not understood",
            pack[4]
        ));
    }
    let mut at = PACK_HEADER_LEN;
    let mut out = Vec::new();
    while at < pack.len() {
        let Some(len) = pack.get(at..at + 4) else {
            return Err(format!("frame length cut short at byte {at}"));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= pack.len() && len > 0)
            .ok_or_else(|| format!("frame at byte {start} of {len} bytes runs past the pack"))?;
        out.push(WalkedFrame {
            offset: start as u64,
            bytes: pack.slice(start..end),
        });
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use geosnap_engine::codec::Encoder;

    fn frame(data: &[u8]) -> EncodedFrame {
        Encoder::new(1)
            .unwrap()
            .encode(&[(ChunkId::of(data), data)])
            .unwrap()
    }

    #[test]
    fn a_pack_walks_back_into_its_frames_at_the_indexed_offsets() {
        let mut b = PackBuilder::new();
        let frames = [frame(b"one"), frame(&[7u8; 5000]), frame(b"three")];
        for f in &frames {
            b.push_frame(f.clone());
        }
        let (id, parts, entries) = b.finish();
        let bytes: Bytes = parts.concat().into();
        let walked = walk(&bytes).unwrap();
        assert_eq!(walked.len(), 3);
        for ((w, f), e) in walked.iter().zip(&frames).zip(&entries) {
            assert_eq!(w.bytes, f.bytes);
            assert_eq!(e.offset, w.offset);
            assert_eq!(e.pack, id);
            assert_eq!(e.len as usize, f.bytes.len());
        }
        assert_eq!(parse_key(&key(&id)), Some(id));
        for cut in [0, 7, 10, bytes.len() - 1] {
            assert!(walk(&bytes.slice(..cut)).is_err() || cut == 8, "cut {cut}");
        }
    }
}
