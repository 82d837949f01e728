//! Frames: several chunks compressed together. A frame is self-describing, so a pack of
//! frames can be verified, and its index rebuilt, without any other source.
//!
//! ```text
//! offset  size       field
//!      0     4       magic "GSFR"
//!      4     1       format version (1)
//!      5     1       codec: 0 = raw, 1 = zstd
//!      6     2       reserved, zero
//!      8     4       chunk count N (u32 LE)
//!     12     4       raw length R: the chunks' bytes concatenated (u32 LE)
//!     16  36*N       table: per chunk its 32-byte SHA-256 id and u32 LE length, in order
//!      .     .       payload: the concatenated chunks, zstd-compressed or raw
//! ```
//! Compressing a frame of many small chunks together keeps zstd's ratio and speed of large
//! blocks while dedup works at the chunk's granularity. A frame is stored raw when zstd
//! does not save at least 1/32 of it. Decoding checks the header and the lengths; the
//! reader of a chunk verifies its SHA-256 (see [`DecodedFrame::verified`]).

use bytes::Bytes;

use crate::aligned;
use crate::chunker::CHUNK_MAX;
use crate::{ChunkId, Error};

/// A decoded frame's buffer could not be had.
fn memory(e: std::io::Error) -> Error {
    Error::Codec(format!("no memory for a decoded frame ({e})"))
}

/// Frozen magic of a frame.
pub const FRAME_MAGIC: [u8; 4] = *b"GSFR";
/// Current frame format version.
pub const FRAME_VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 16;
/// Size of one table entry.
pub const ENTRY_LEN: usize = 36;
const _: () = assert!(HEADER_LEN == 4 + 1 + 1 + 2 + 4 + 4);
const _: () = assert!(ENTRY_LEN == 32 + 4);

/// Raw bytes a frame aims for: small enough for random reads, large enough for zstd.
pub const FRAME_TARGET: usize = 256 * 1024;
/// Largest raw length a frame may state (a single chunk of the largest size, or a batch).
pub const FRAME_RAW_MAX: usize = 2 * CHUNK_MAX as usize;

/// zstd level used when none is configured; chosen in `docs/benchmarks.md`.
pub const DEFAULT_LEVEL: i32 = 1;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// How a frame's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is: it did not shrink enough.
    Raw,
    /// zstd.
    Zstd,
}

/// An encoded frame and what it holds.
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    /// Chunk ids and lengths, in frame order.
    pub chunks: Vec<(ChunkId, u32)>,
    /// The frame's bytes.
    pub bytes: Bytes,
}

impl EncodedFrame {
    /// Raw bytes of the chunks it holds.
    pub fn raw_len(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.1)).sum()
    }
}

/// Compresses frames with one reusable zstd context (one per worker thread).
pub struct Encoder {
    ctx: zstd::bulk::Compressor<'static>,
    level: i32,
    scratch: Vec<u8>,
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
        if !zstd::compression_level_range().contains(&level) {
            return Err(Error::InvalidLevel(level));
        }
        let ctx = zstd::bulk::Compressor::new(level).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(Encoder {
            ctx,
            level,
            scratch: Vec::new(),
        })
    }

    /// Encodes `chunks` (id and bytes, at least one) as one frame.
    pub fn encode(&mut self, chunks: &[(ChunkId, &[u8])]) -> Result<EncodedFrame, Error> {
        let raw: usize = chunks.iter().map(|c| c.1.len()).sum();
        debug_assert!(!chunks.is_empty() && raw <= FRAME_RAW_MAX);
        let table_len = chunks.len() * ENTRY_LEN;
        self.scratch.clear();
        self.scratch.reserve(raw);
        for (_, data) in chunks {
            self.scratch.extend_from_slice(data);
        }
        let prefix = HEADER_LEN + table_len;
        let bound = zstd::zstd_safe::compress_bound(raw);
        let mut out = Vec::with_capacity(prefix + bound.max(raw));
        out.extend_from_slice(&header(CODEC_ZSTD, chunks.len(), raw));
        for (id, data) in chunks {
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
        let mut cursor = std::io::Cursor::new(out);
        cursor.set_position(prefix as u64);
        let written = self
            .ctx
            .compress_to_buffer(&self.scratch[..], &mut cursor)
            .map_err(|e| Error::Codec(e.to_string()))?;
        let mut out = cursor.into_inner();
        if written > raw - raw / 32 {
            out.truncate(prefix);
            out[5] = CODEC_RAW;
            out.extend_from_slice(&self.scratch);
        }
        // Room was made for the worst case; `Bytes` would keep all of it for as long as the
        // frame waits for its stores (a text frame holds a third of it). Shrinking gives the
        // tail back in place.
        out.shrink_to_fit();
        Ok(EncodedFrame {
            chunks: chunks.iter().map(|(id, d)| (*id, d.len() as u32)).collect(),
            bytes: Bytes::from(out),
        })
    }
}

fn header(codec: u8, count: usize, raw: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&FRAME_MAGIC);
    h[4] = FRAME_VERSION;
    h[5] = codec;
    h[8..12].copy_from_slice(&(count as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(raw as u32).to_le_bytes());
    h
}

/// A frame's table, as read from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameTable {
    /// Payload encoding.
    pub codec: Codec,
    /// Chunk ids and lengths, in order.
    pub chunks: Vec<(ChunkId, u32)>,
    /// Where the payload starts.
    pub payload_at: usize,
}

/// Reads and checks a frame's header and table (not its payload).
pub fn parse_table(frame: &[u8]) -> Result<FrameTable, Error> {
    let bad = |why: String| Error::FrameCorrupt(why);
    if frame.len() < HEADER_LEN {
        return Err(bad(format!(
            "{} bytes is shorter than a frame header",
            frame.len()
        )));
    }
    if frame[..4] != FRAME_MAGIC {
        return Err(bad("bad magic".into()));
    }
    if frame[4] != FRAME_VERSION {
        return Err(bad(format!(
            "format version {} is not supported (this geosnap reads version {FRAME_VERSION})",
            frame[4]
        )));
    }
    let codec = match frame[5] {
        CODEC_RAW => Codec::Raw,
        CODEC_ZSTD => Codec::Zstd,
        other => return Err(bad(format!("unknown codec {other}"))),
    };
    if frame[6..8] != [0, 0] {
        return Err(bad("reserved header bytes are not zero".into()));
    }
    let count = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]) as usize;
    let raw = u32::from_le_bytes([frame[12], frame[13], frame[14], frame[15]]) as usize;
    let payload_at = count
        .checked_mul(ENTRY_LEN)
        .and_then(|t| t.checked_add(HEADER_LEN))
        .filter(|&p| p <= frame.len() && count > 0 && raw <= FRAME_RAW_MAX)
        .ok_or_else(|| {
            bad(format!(
                "{count} chunks of {raw} bytes do not fit the frame"
            ))
        })?;
    let mut chunks = Vec::with_capacity(count);
    let mut total = 0usize;
    for e in frame[HEADER_LEN..payload_at].chunks_exact(ENTRY_LEN) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let len = u32::from_le_bytes([e[32], e[33], e[34], e[35]]);
        if len == 0 || len > CHUNK_MAX {
            return Err(bad(format!("a chunk length of {len} is out of range")));
        }
        total += len as usize;
        chunks.push((ChunkId(id), len));
    }
    if total != raw {
        return Err(bad(format!("chunk lengths add up to {total}, not {raw}")));
    }
    Ok(FrameTable {
        codec,
        chunks,
        payload_at,
    })
}

/// A decoded frame: its table and its chunks' bytes.
#[derive(Clone, Debug)]
pub struct DecodedFrame {
    /// The table.
    pub table: FrameTable,
    /// The chunks' bytes, concatenated in table order.
    pub data: Bytes,
}

impl DecodedFrame {
    /// Every chunk's id from the table with the SHA-256 of its bytes, the frame's chunks
    /// hashed together ([`ChunkId::of_each`]): the chunk is intact where the two agree.
    pub fn hashed(&self) -> Vec<(ChunkId, ChunkId)> {
        let mut at = 0usize;
        let pieces = self.table.chunks.iter().map(|(_, len)| {
            let piece = &self.data[at..at + *len as usize];
            at += *len as usize;
            piece
        });
        let actual = ChunkId::of_each(pieces);
        self.table.chunks.iter().map(|c| c.0).zip(actual).collect()
    }

    /// Every chunk with its bytes, unverified.
    pub fn chunks(&self) -> impl Iterator<Item = (ChunkId, Bytes)> + '_ {
        let mut at = 0usize;
        self.table.chunks.iter().map(move |(id, len)| {
            let b = self.data.slice(at..at + *len as usize);
            at += *len as usize;
            (*id, b)
        })
    }

    /// The bytes of chunk `id` if the frame holds it and they hash to `id`.
    pub fn verified(&self, id: &ChunkId) -> Option<Bytes> {
        self.chunks()
            .find(|(c, _)| c == id)
            .map(|(_, b)| b)
            .filter(|b| ChunkId::of(b) == *id)
    }
}

/// Decodes frames with one reusable zstd context.
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

    /// Decodes a frame: checks its header and table, decompresses the payload into exactly
    /// the stated length, in a page-aligned buffer (a restore hands chunks of aligned sizes
    /// to direct writes from it as they are). Chunk hashes are checked by whoever uses them.
    pub fn decode(&mut self, frame: &[u8]) -> Result<DecodedFrame, Error> {
        let table = parse_table(frame)?;
        let raw: usize = table.chunks.iter().map(|c| c.1 as usize).sum();
        let payload = &frame[table.payload_at..];
        let data = match table.codec {
            Codec::Raw => {
                if payload.len() != raw {
                    return Err(Error::FrameCorrupt(format!(
                        "raw payload is {} bytes, the table says {raw}",
                        payload.len()
                    )));
                }
                let mut out = aligned::pooled(raw).map_err(memory)?;
                out.buf().extend_from_slice(payload).map_err(memory)?;
                Bytes::from_owner(out)
            }
            Codec::Zstd => {
                let mut out = aligned::pooled(raw).map_err(memory)?;
                let n = self
                    .ctx
                    .decompress_to_buffer(payload, out.buf())
                    .map_err(|e| {
                        Error::FrameCorrupt(format!("zstd payload does not decode ({e})"))
                    })?;
                if n != raw {
                    return Err(Error::FrameCorrupt(format!(
                        "payload decodes to {n} bytes, the table says {raw}"
                    )));
                }
                Bytes::from_owner(out)
            }
        };
        Ok(DecodedFrame { table, data })
    }

    /// Decodes a frame and checks every chunk's SHA-256: the frame is whole or an error
    /// names the first chunk that is not.
    pub fn decode_verified(&mut self, frame: &[u8]) -> Result<DecodedFrame, Error> {
        let d = self.decode(frame)?;
        for (id, actual) in d.hashed() {
            if actual != id {
                return Err(Error::ChunkCorrupt {
                    id,
                    detail: format!("content hashes to {}", actual.short()),
                });
            }
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn frame_of(parts: &[Vec<u8>], level: i32) -> EncodedFrame {
        let chunks: Vec<(ChunkId, &[u8])> = parts
            .iter()
            .map(|p| (ChunkId::of(p), p.as_slice()))
            .collect();
        Encoder::new(level).unwrap().encode(&chunks).unwrap()
    }

    #[test]
    fn compressible_frames_shrink_and_round_trip() {
        let parts: Vec<Vec<u8>> = (0..8)
            .map(|i| format!("chunk {i} geosnap ").repeat(1000).into_bytes())
            .collect();
        let f = frame_of(&parts, DEFAULT_LEVEL);
        let raw: usize = parts.iter().map(Vec::len).sum();
        assert!(f.bytes.len() < raw / 10);
        let d = Decoder::new().unwrap().decode_verified(&f.bytes).unwrap();
        let got: Vec<Vec<u8>> = d.chunks().map(|(_, b)| b.to_vec()).collect();
        assert_eq!(got, parts);
        assert_eq!(d.verified(&ChunkId::of(&parts[3])).unwrap(), parts[3]);
        assert!(d.verified(&ChunkId::of(b"absent")).is_none());
    }

    #[test]
    fn incompressible_frames_are_stored_raw() {
        let parts = vec![noise(65536, 1), noise(4096, 2)];
        let f = frame_of(&parts, 3);
        assert_eq!(f.bytes.len(), HEADER_LEN + 2 * ENTRY_LEN + 65536 + 4096);
        assert_eq!(parse_table(&f.bytes).unwrap().codec, Codec::Raw);
        Decoder::new().unwrap().decode_verified(&f.bytes).unwrap();
    }

    #[test]
    fn every_single_byte_flip_is_caught() {
        let parts = vec![noise(3000, 3), b"text ".repeat(900)];
        let ids: Vec<ChunkId> = parts.iter().map(|p| ChunkId::of(p)).collect();
        let mut dec = Decoder::new().unwrap();
        for level in [1, 19] {
            let f = frame_of(&parts, level);
            for i in 0..f.bytes.len() {
                let mut bad = f.bytes.to_vec();
                bad[i] ^= 0x01;
                // Either the frame does not decode, or a chunk fails its hash, or the
                // flip moved a table entry off every id the reader asks for.
                match dec.decode_verified(&bad) {
                    Err(_) => {}
                    Ok(d) => panic!(
                        "flip at {i} not caught; ids now {:?}",
                        d.table
                            .chunks
                            .iter()
                            .map(|c| ids.contains(&c.0))
                            .collect::<Vec<_>>()
                    ),
                }
            }
        }
    }

    #[test]
    fn a_frame_that_fails_does_not_spoil_the_decoder_for_the_next() {
        let good = frame_of(&[b"good frame ".repeat(500)], 1);
        let mut bad = good.bytes.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x20;
        let mut dec = Decoder::new().unwrap();
        assert!(dec.decode(&bad).is_err());
        dec.decode_verified(&good.bytes).unwrap();
    }

    #[test]
    fn truncated_and_foreign_frames_are_rejected() {
        let f = frame_of(&[b"x".repeat(1000)], 1);
        let mut dec = Decoder::new().unwrap();
        for cut in [0, 5, HEADER_LEN, HEADER_LEN + ENTRY_LEN, f.bytes.len() - 1] {
            assert!(dec.decode(&f.bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Encoder::new(1000).is_err());
        let mut lie = f.bytes.to_vec();
        lie[8] = 200; // more chunks than the table holds
        assert!(dec.decode(&lie).is_err());
    }
}
