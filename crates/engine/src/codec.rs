//! Chunk objects: a 12-byte versioned header and a payload, zstd-compressed or raw.
//!
//! ```text
//! offset size field
//!      0    4 magic "GSCK"
//!      4    1 format version (1)
//!      5    1 codec: 0 = raw, 1 = zstd
//!      6    2 reserved, zero
//!      8    4 uncompressed length, u32 little-endian
//!     12    . payload
//! ```
//! Decoding checks the header, decompresses into exactly the stated length, and verifies
//! the SHA-256 against the chunk id: a chunk is never returned unverified.

use std::io::Cursor;

use bytes::Bytes;

use crate::chunker::CHUNK_MAX;
use crate::{ChunkId, Error};

/// Frozen magic of a chunk object.
pub const CHUNK_MAGIC: [u8; 4] = *b"GSCK";
/// Current chunk object format version.
pub const CHUNK_VERSION: u8 = 1;
/// Size of the chunk object header.
pub const HEADER_LEN: usize = 12;
const _: () = assert!(HEADER_LEN == 4 + 1 + 1 + 2 + 4);

/// zstd level used when none is configured; chosen in `docs/benchmarks.md`.
pub const DEFAULT_LEVEL: i32 = 1;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// How a chunk's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is: it did not shrink enough.
    Raw,
    /// zstd frame.
    Zstd,
}

fn header(codec: u8, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&CHUNK_MAGIC);
    h[4] = CHUNK_VERSION;
    h[5] = codec;
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// Compresses chunks with one reusable zstd context (one per worker thread).
pub struct Encoder {
    ctx: zstd::bulk::Compressor<'static>,
    level: i32,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("level", &self.level)
            .finish()
    }
}

impl Encoder {
    /// An encoder at zstd `level` (negative levels are zstd's fast modes).
    pub fn new(level: i32) -> Result<Self, Error> {
        let range = zstd::compression_level_range();
        if !range.contains(&level) {
            return Err(Error::InvalidLevel(level));
        }
        let ctx = zstd::bulk::Compressor::new(level).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(Encoder { ctx, level })
    }

    /// Encodes `data` as a chunk object; stores it raw unless zstd saves at least 1/32.
    pub fn encode(&mut self, data: &[u8]) -> Result<Bytes, Error> {
        debug_assert!(data.len() <= CHUNK_MAX as usize);
        let bound = zstd::zstd_safe::compress_bound(data.len());
        let mut out = Vec::with_capacity(HEADER_LEN + bound);
        out.extend_from_slice(&header(CODEC_ZSTD, data.len()));
        let mut cursor = Cursor::new(out);
        cursor.set_position(HEADER_LEN as u64);
        let written = self
            .ctx
            .compress_to_buffer(data, &mut cursor)
            .map_err(|e| Error::Codec(e.to_string()))?;
        let mut out = cursor.into_inner();
        if written > data.len() - data.len() / 32 {
            out.clear();
            out.extend_from_slice(&header(CODEC_RAW, data.len()));
            out.extend_from_slice(data);
        }
        Ok(Bytes::from(out))
    }
}

/// The parsed header of a chunk object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Payload encoding.
    pub codec: Codec,
    /// Length of the chunk once decoded.
    pub len: usize,
}

/// Reads and checks a chunk object's header.
pub fn parse_header(id: &ChunkId, object: &[u8]) -> Result<ChunkHeader, Error> {
    let corrupt = |detail: String| Error::ChunkCorrupt { id: *id, detail };
    if object.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "object is {} bytes, shorter than its header",
            object.len()
        )));
    }
    if object[..4] != CHUNK_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    if object[4] != CHUNK_VERSION {
        return Err(corrupt(format!(
            "format version {} is not supported (this geosnap reads version {CHUNK_VERSION})",
            object[4]
        )));
    }
    let codec = match object[5] {
        CODEC_RAW => Codec::Raw,
        CODEC_ZSTD => Codec::Zstd,
        other => return Err(corrupt(format!("unknown codec {other}"))),
    };
    if object[6..8] != [0, 0] {
        return Err(corrupt("reserved header bytes are not zero".into()));
    }
    let len = u32::from_le_bytes([object[8], object[9], object[10], object[11]]) as usize;
    if len == 0 || len > CHUNK_MAX as usize {
        return Err(corrupt(format!("stated length {len} is out of range")));
    }
    Ok(ChunkHeader { codec, len })
}

/// Decodes chunk objects with one reusable zstd context.
pub struct Decoder {
    ctx: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl Decoder {
    /// A new decoder.
    pub fn new() -> Result<Self, Error> {
        let ctx = zstd::bulk::Decompressor::new().map_err(|e| Error::Codec(e.to_string()))?;
        Ok(Decoder { ctx })
    }

    /// Decodes `object` into `out` (cleared first) and verifies its SHA-256 is `id`.
    /// `expected_len`, when known (from the manifest), must match the header.
    pub fn decode_into(
        &mut self,
        id: &ChunkId,
        object: &[u8],
        expected_len: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let header = parse_header(id, object)?;
        if let Some(want) = expected_len
            && want != header.len
        {
            return Err(Error::ChunkCorrupt {
                id: *id,
                detail: format!(
                    "holds {} bytes where the manifest expects {want}",
                    header.len
                ),
            });
        }
        let payload = &object[HEADER_LEN..];
        out.clear();
        match header.codec {
            Codec::Raw => {
                if payload.len() != header.len {
                    return Err(Error::ChunkCorrupt {
                        id: *id,
                        detail: format!(
                            "raw payload is {} bytes, header says {}",
                            payload.len(),
                            header.len
                        ),
                    });
                }
                out.extend_from_slice(payload);
            }
            Codec::Zstd => {
                out.reserve(header.len);
                let n = self.ctx.decompress_to_buffer(payload, out).map_err(|e| {
                    Error::ChunkCorrupt {
                        id: *id,
                        detail: format!("zstd payload does not decode ({e})"),
                    }
                })?;
                if n != header.len {
                    return Err(Error::ChunkCorrupt {
                        id: *id,
                        detail: format!("decodes to {n} bytes, header says {}", header.len),
                    });
                }
            }
        }
        let actual = ChunkId::of(out);
        if actual != *id {
            return Err(Error::ChunkCorrupt {
                id: *id,
                detail: format!("content hashes to {}", actual.short()),
            });
        }
        Ok(())
    }

    /// Decodes and verifies `object` into a new buffer.
    pub fn decode(&mut self, id: &ChunkId, object: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.decode_into(id, object, None, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_chunks_shrink_and_round_trip() {
        let data: Vec<u8> = b"geosnap ".iter().cycle().take(100_000).copied().collect();
        let id = ChunkId::of(&data);
        let obj = Encoder::new(DEFAULT_LEVEL).unwrap().encode(&data).unwrap();
        assert!(obj.len() < 2000);
        assert_eq!(parse_header(&id, &obj).unwrap().codec, Codec::Zstd);
        assert_eq!(Decoder::new().unwrap().decode(&id, &obj).unwrap(), data);
    }

    #[test]
    fn incompressible_chunks_are_stored_raw() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let id = ChunkId::of(&data);
        let obj = Encoder::new(3).unwrap().encode(&data).unwrap();
        assert_eq!(obj.len(), HEADER_LEN + data.len());
        assert_eq!(parse_header(&id, &obj).unwrap().codec, Codec::Raw);
        assert_eq!(Decoder::new().unwrap().decode(&id, &obj).unwrap(), data);
    }

    #[test]
    fn every_single_byte_flip_is_caught_and_names_the_chunk() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let id = ChunkId::of(&data);
        let mut dec = Decoder::new().unwrap();
        for level in [1, 19] {
            let obj = Encoder::new(level).unwrap().encode(&data).unwrap();
            for i in 0..obj.len() {
                let mut bad = obj.to_vec();
                bad[i] ^= 0x01;
                match dec.decode(&id, &bad) {
                    Err(Error::ChunkCorrupt { id: named, .. }) => assert_eq!(named, id),
                    other => panic!("flip at {i} not caught: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn truncated_and_foreign_objects_are_rejected() {
        let data = vec![7u8; 1000];
        let id = ChunkId::of(&data);
        let obj = Encoder::new(1).unwrap().encode(&data).unwrap();
        let mut dec = Decoder::new().unwrap();
        for cut in [0, 5, HEADER_LEN, obj.len() - 1] {
            assert!(dec.decode(&id, &obj[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_len = Vec::new();
        assert!(
            dec.decode_into(&id, &obj, Some(999), &mut wrong_len)
                .is_err()
        );
        assert!(Encoder::new(1000).is_err());
    }
}
