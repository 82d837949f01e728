//! Manifests: what one snapshot holds, in order, with everything needed to list and restore
//! it without any other source (the catalog is rebuilt from these).
//!
//! ```text
//! offset size  field
//!      0    8  magic "GSNAPMAN"
//!      8    2  format version, u16 LE (1)
//!     10    2  reserved, zero
//!     12    4  header length H, u32 LE
//!     16    H  header: UTF-8 JSON object (see `SnapshotMeta`, `ManifestHeader`)
//!   16+H    8  extent count N, u64 LE
//!      .    .  N extents: tag u8 (1 = chunk, 2 = zero run), length as LEB128,
//!              and for a chunk its 32-byte SHA-256
//!      .   32  SHA-256 of every byte before it
//! ```
//! Offsets are implied: extents follow each other from offset 0 and their lengths add up
//! to the image size, so overlaps and gaps cannot be written down at all.

use std::fmt;
use std::io::{BufWriter, Read, Seek, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunker::ChunkerParams;
use crate::zero::{ZERO_BLOCK, ZERO_RUN_MIN};
use crate::{ChunkId, Error, SnapshotId};

/// Frozen magic of a manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"GSNAPMAN";
/// Current manifest format version.
pub const MANIFEST_VERSION: u16 = 1;
const FIXED_PREFIX: usize = 16;
const _: () = assert!(FIXED_PREFIX == 8 + 2 + 2 + 4);
const TAG_CHUNK: u8 = 1;
const TAG_ZERO: u8 = 2;

/// Where an instance's snapshots may live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// Image-backed: replicated to every region.
    Image,
    /// Volume-backed: kept in the home region's volume store only.
    Volume,
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backing::Image => "image",
            Backing::Volume => "volume",
        })
    }
}

/// Who and what a snapshot is: the part of a manifest a catalog lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Snapshot id.
    #[serde(with = "snapshot_id_hex")]
    pub id: SnapshotId,
    /// Instance name.
    pub instance: String,
    /// Snapshot name.
    pub name: String,
    /// Image- or volume-backed.
    pub backing: Backing,
    /// Home region of the instance.
    pub home_region: String,
    /// When the snapshot was queued, Unix seconds (UTC).
    pub created_at: i64,
    /// When its data was durable in the write quorum, Unix seconds (UTC); expiry counts
    /// from here.
    pub completed_at: i64,
    /// Whole days to keep it after `completed_at`; 0 keeps it forever.
    pub retention_days: u32,
}

/// Everything in a manifest except its extents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// The snapshot.
    #[serde(flatten)]
    pub meta: SnapshotMeta,
    /// Length of the image in bytes.
    pub image_size: u64,
    /// How the image was cut.
    pub chunker: ChunkerParams,
    /// Zero detection block size used (informational).
    pub zero_block: u32,
    /// Shortest zero run recorded (informational).
    pub zero_run_min: u32,
    /// Bytes held by chunk extents.
    pub data_bytes: u64,
    /// Number of chunk extents.
    pub chunk_count: u64,
}

/// One extent of the image, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Bytes stored as chunk `id`.
    Chunk {
        /// Image offset.
        offset: u64,
        /// Length (also the chunk's length).
        len: u32,
        /// Chunk id.
        id: ChunkId,
    },
    /// Zeros: a hole on restore.
    Zero {
        /// Image offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl Extent {
    /// Image offset.
    pub fn offset(&self) -> u64 {
        match *self {
            Extent::Chunk { offset, .. } | Extent::Zero { offset, .. } => offset,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Chunk { len, .. } => u64::from(len),
            Extent::Zero { len, .. } => len,
        }
    }

    /// Whether the extent covers no bytes (never true in a valid manifest).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A snapshot's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Metadata.
    pub header: ManifestHeader,
    /// Extents in image order, contiguous from 0 to `image_size`.
    pub extents: Vec<Extent>,
}

impl Manifest {
    /// Builds a manifest from extents, filling the derived header fields; checks it.
    pub fn new(
        meta: SnapshotMeta,
        chunker: ChunkerParams,
        image_size: u64,
        extents: Vec<Extent>,
    ) -> Result<Manifest, Error> {
        let mut data_bytes = 0;
        let mut chunk_count = 0;
        for e in &extents {
            if let Extent::Chunk { len, .. } = e {
                data_bytes += u64::from(*len);
                chunk_count += 1;
            }
        }
        let m = Manifest {
            header: ManifestHeader {
                meta,
                image_size,
                chunker,
                zero_block: ZERO_BLOCK as u32,
                zero_run_min: ZERO_RUN_MIN as u32,
                data_bytes,
                chunk_count,
            },
            extents,
        };
        m.check()?;
        Ok(m)
    }

    /// Checks the invariants decoding relies on: contiguous, non-empty extents that end at
    /// the image size, chunks no longer than the chunker allows, consistent totals.
    pub fn check(&self) -> Result<(), Error> {
        let mut c = Checker::new(&self.header.chunker, Some(self.header.image_size))?;
        for e in &self.extents {
            c.push(e)?;
        }
        c.finish(&self.header)
    }

    /// Serialises the manifest (see the module docs for the layout).
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = encode_prefix(
            &self.header,
            self.extents.len() as u64,
            40 * self.extents.len(),
        )?;
        for e in &self.extents {
            encode_extent(&mut out, e);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Parses and checks a manifest; any damage is an error that says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, Error> {
        let (header, body, count) = Manifest::decode_prefix(bytes)?;
        let mut extents = Vec::with_capacity(count as usize);
        walk(&bytes[..bytes.len() - 32], body, count, |e| {
            extents.push(e);
            Ok(())
        })?;
        let m = Manifest { header, extents };
        m.check()?;
        Ok(m)
    }

    /// The checked header, where the extents start, and how many there are.
    fn decode_prefix(bytes: &[u8]) -> Result<(ManifestHeader, usize, u64), Error> {
        let header = Manifest::decode_header(bytes)?;
        let corrupt = |why: &str| Error::ManifestCorrupt(why.to_string());
        let body_end = bytes.len() - 32;
        let mut r = Reader {
            buf: &bytes[..body_end],
            pos: FIXED_PREFIX + header_len(bytes) as usize,
        };
        let count = r.u64().ok_or_else(|| corrupt("extent count is missing"))?;
        // Each extent takes at least two bytes: refuse counts the bytes cannot hold.
        if count > (r.buf.len() - r.pos) as u64 / 2 {
            return Err(corrupt("extent count exceeds the manifest's length"));
        }
        Ok((header, r.pos, count))
    }

    /// Parses and checks only the header (the checksum still covers the whole manifest).
    pub fn decode_header(bytes: &[u8]) -> Result<ManifestHeader, Error> {
        let corrupt = |why: &str| Error::ManifestCorrupt(why.to_string());
        if bytes.len() < 8 || bytes[..8] != MANIFEST_MAGIC {
            return Err(corrupt("not a geosnap manifest (bad magic)"));
        }
        if bytes.len() < FIXED_PREFIX + 8 + 32 {
            return Err(corrupt("manifest is truncated"));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version > MANIFEST_VERSION {
            return Err(Error::ManifestVersion {
                found: version,
                supported: MANIFEST_VERSION,
            });
        }
        if version == 0 || bytes[10..12] != [0, 0] {
            return Err(corrupt("manifest prefix is damaged"));
        }
        let body_end = bytes.len() - 32;
        if Sha256::digest(&bytes[..body_end])[..] != bytes[body_end..] {
            return Err(corrupt(
                "manifest is truncated or damaged (checksum mismatch)",
            ));
        }
        let hlen = header_len(bytes) as usize;
        if FIXED_PREFIX + hlen + 8 > body_end {
            return Err(corrupt("header length exceeds the manifest"));
        }
        serde_json::from_slice(&bytes[FIXED_PREFIX..FIXED_PREFIX + hlen])
            .map_err(|e| Error::ManifestCorrupt(format!("header is not valid: {e}")))
    }
}

fn header_len(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]])
}

/// The bytes before the extents: magic, version, header, extent count; with room for
/// `body` more bytes and the checksum.
fn encode_prefix(header: &ManifestHeader, count: u64, body: usize) -> Result<Vec<u8>, Error> {
    let json = serde_json::to_vec(header).map_err(|e| Error::ManifestCorrupt(e.to_string()))?;
    let json_len =
        u32::try_from(json.len()).map_err(|_| Error::ManifestCorrupt("header too long".into()))?;
    let mut out = Vec::with_capacity(FIXED_PREFIX + json.len() + 8 + body + 32);
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&json_len.to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&count.to_le_bytes());
    Ok(out)
}

/// One extent as the manifest stores it: tag, length, and a chunk's id.
fn encode_extent(out: &mut Vec<u8>, e: &Extent) {
    match e {
        Extent::Chunk { len, id, .. } => {
            out.push(TAG_CHUNK);
            put_varint(out, u64::from(*len));
            out.extend_from_slice(id.as_bytes());
        }
        Extent::Zero { len, .. } => {
            out.push(TAG_ZERO);
            put_varint(out, *len);
        }
    }
}

/// A manifest's extents, encoded as a scan cuts them into an anonymous temporary file, so
/// a snapshot holds no extent list in memory whatever the image size (36 bytes per 16 KiB
/// chunk: 2.4 GB for a dense 1 TiB image). [`ExtentLog::finish`] turns it into the
/// manifest's bytes once the scan is over and its buffers are gone.
#[derive(Debug)]
pub struct ExtentLog {
    chunker: ChunkerParams,
    out: BufWriter<std::fs::File>,
    scratch: Vec<u8>,
    checker: Checker,
}

impl ExtentLog {
    /// An empty log in the system's temporary directory.
    pub fn new(chunker: ChunkerParams) -> Result<ExtentLog, Error> {
        let checker = Checker::new(&chunker, None)?;
        let file = tempfile::tempfile().map_err(|source| Error::Spill { source })?;
        Ok(ExtentLog {
            chunker,
            out: BufWriter::with_capacity(1 << 16, file),
            scratch: Vec::with_capacity(48),
            checker,
        })
    }

    /// Appends the next extent; it must start where the last one ended, hold bytes, and
    /// (a chunk) be no longer than the chunker allows, as [`Manifest::check`] demands.
    pub fn push(&mut self, e: &Extent) -> Result<(), Error> {
        self.checker.push(e)?;
        self.scratch.clear();
        encode_extent(&mut self.scratch, e);
        self.out
            .write_all(&self.scratch)
            .map_err(|source| Error::Spill { source })
    }

    /// Extents appended so far.
    pub fn len(&self) -> u64 {
        self.checker.count
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.checker.count == 0
    }

    /// The manifest of these extents, which must cover `image_size` bytes: its header and
    /// its encoded bytes.
    pub fn finish(
        self,
        meta: SnapshotMeta,
        image_size: u64,
    ) -> Result<(ManifestHeader, Vec<u8>), Error> {
        let header = ManifestHeader {
            meta,
            image_size,
            chunker: self.chunker,
            zero_block: ZERO_BLOCK as u32,
            zero_run_min: ZERO_RUN_MIN as u32,
            data_bytes: self.checker.data,
            chunk_count: self.checker.chunks,
        };
        self.checker.finish(&header)?;
        let spill = |source| Error::Spill { source };
        let mut file = self.out.into_inner().map_err(|e| spill(e.into_error()))?;
        let body = file.stream_position().map_err(spill)?;
        let body = usize::try_from(body)
            .map_err(|_| Error::ManifestCorrupt("manifest too large for memory".into()))?;
        file.rewind().map_err(spill)?;
        let mut out = encode_prefix(&header, self.checker.count, body)?;
        let start = out.len();
        file.take(body as u64)
            .read_to_end(&mut out)
            .map_err(spill)?;
        if out.len() - start != body {
            return Err(spill(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        Ok((header, out))
    }

    /// The manifest of these extents, decoded and checked (tests and tools).
    pub fn into_manifest(self, meta: SnapshotMeta, image_size: u64) -> Result<Manifest, Error> {
        Manifest::decode(&self.finish(meta, image_size)?.1)
    }

    /// The extents, read back into memory (tests and tools).
    pub fn into_extents(self) -> Result<Vec<Extent>, Error> {
        let meta = SnapshotMeta {
            id: SnapshotId([0; 16]),
            instance: String::new(),
            name: String::new(),
            backing: Backing::Image,
            home_region: String::new(),
            created_at: 0,
            completed_at: 0,
            retention_days: 0,
        };
        let size = self.checker.next;
        Ok(self.into_manifest(meta, size)?.extents)
    }
}

/// The invariants of a manifest's extents, checked one extent at a time: each starts where
/// the last ended and holds bytes, no chunk is longer than the chunker allows, none reaches
/// past the image, and at the end they cover the image and match the header's totals.
#[derive(Debug)]
struct Checker {
    max: u64,
    image_size: Option<u64>,
    count: u64,
    next: u64,
    data: u64,
    chunks: u64,
}

impl Checker {
    fn new(chunker: &ChunkerParams, image_size: Option<u64>) -> Result<Checker, Error> {
        chunker.validate()?;
        Ok(Checker {
            max: chunker.max_chunk() as u64,
            image_size,
            count: 0,
            next: 0,
            data: 0,
            chunks: 0,
        })
    }

    fn push(&mut self, e: &Extent) -> Result<(), Error> {
        let (i, next) = (self.count, self.next);
        let bad = |why: String| Err(Error::ManifestCorrupt(why));
        if e.offset() != next {
            return bad(format!(
                "extent {i} starts at {} instead of {next}",
                e.offset()
            ));
        }
        if e.is_empty() {
            return bad(format!("extent {i} is empty"));
        }
        if let Extent::Chunk { len, .. } = e
            && u64::from(*len) > self.max
        {
            return bad(format!(
                "chunk extent {i} is {len} bytes, longer than the chunker's {}",
                self.max
            ));
        }
        self.next = match (next.checked_add(e.len()), self.image_size) {
            (Some(n), None) => n,
            (Some(n), Some(size)) if n <= size => n,
            (_, size) => {
                return bad(format!(
                    "extent {i} reaches past the image size {}",
                    size.unwrap_or(u64::MAX)
                ));
            }
        };
        if let Extent::Chunk { len, .. } = e {
            self.data += u64::from(*len);
            self.chunks += 1;
        }
        self.count += 1;
        Ok(())
    }

    fn finish(&self, header: &ManifestHeader) -> Result<(), Error> {
        if self.next != header.image_size {
            return Err(Error::ManifestCorrupt(format!(
                "extents cover {} bytes of a {}-byte image",
                self.next, header.image_size
            )));
        }
        if self.data != header.data_bytes || self.chunks != header.chunk_count {
            return Err(Error::ManifestCorrupt(
                "header totals do not match the extents".into(),
            ));
        }
        Ok(())
    }
}

/// Decodes `count` extents from `body[start..]` (the bytes before the checksum), handing
/// each to `f`; the extents must fill the rest of `body` exactly.
fn walk(
    body: &[u8],
    start: usize,
    count: u64,
    mut f: impl FnMut(Extent) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut it = Extents::new(body, start, count);
    while let Some(e) = it.try_next()? {
        f(e)?;
    }
    if it.r.pos != body.len() {
        return Err(Error::ManifestCorrupt(
            "trailing bytes after the extent list".into(),
        ));
    }
    Ok(())
}

/// Extents decoded one by one from a manifest's bytes.
#[derive(Debug)]
struct Extents<'a> {
    r: Reader<'a>,
    left: u64,
    offset: u64,
    index: u64,
}

impl<'a> Extents<'a> {
    /// `count` extents from `body[start..]`.
    fn new(body: &'a [u8], start: usize, count: u64) -> Extents<'a> {
        Extents {
            r: Reader {
                buf: body,
                pos: start,
            },
            left: count,
            offset: 0,
            index: 0,
        }
    }

    fn try_next(&mut self) -> Result<Option<Extent>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        let i = self.index;
        let corrupt = |why: &str| Error::ManifestCorrupt(why.to_string());
        let tag = self
            .r
            .u8()
            .ok_or_else(|| corrupt("extent list is cut short"))?;
        let len = self
            .r
            .varint()
            .ok_or_else(|| corrupt("extent length is malformed"))?;
        let offset = self.offset;
        let e = match tag {
            TAG_CHUNK => {
                let id = self
                    .r
                    .id()
                    .ok_or_else(|| corrupt("extent list is cut short"))?;
                let len = u32::try_from(len)
                    .map_err(|_| Error::ManifestCorrupt(format!("chunk extent {i} is too long")))?;
                Extent::Chunk { offset, len, id }
            }
            TAG_ZERO => Extent::Zero { offset, len },
            other => {
                return Err(Error::ManifestCorrupt(format!(
                    "extent {i} has unknown tag {other}"
                )));
            }
        };
        self.offset = offset.saturating_add(len);
        self.left -= 1;
        self.index += 1;
        Ok(Some(e))
    }
}

impl Iterator for Extents<'_> {
    type Item = Extent;

    /// The next extent; an [`EncodedManifest`] was checked whole when parsed, so this only
    /// ends early if that check was wrong.
    fn next(&mut self) -> Option<Extent> {
        self.try_next().ok().flatten()
    }
}

/// A manifest kept as its checked, encoded bytes: 36 bytes per 16 KiB chunk, where the
/// decoded [`Manifest`] adds 48 more per extent. Its extents are decoded as they are read,
/// so a restore of a large image never holds them all.
#[derive(Clone, Debug)]
pub struct EncodedManifest {
    header: ManifestHeader,
    bytes: bytes::Bytes,
    body: usize,
    count: u64,
}

impl EncodedManifest {
    /// Parses and checks a manifest exactly as [`Manifest::decode`] does, keeping its bytes.
    pub fn parse(bytes: bytes::Bytes) -> Result<EncodedManifest, Error> {
        let (header, body, count) = Manifest::decode_prefix(&bytes)?;
        let mut c = Checker::new(&header.chunker, Some(header.image_size))?;
        walk(&bytes[..bytes.len() - 32], body, count, |e| c.push(&e))?;
        c.finish(&header)?;
        Ok(EncodedManifest {
            header,
            bytes,
            body,
            count,
        })
    }

    /// The encoded manifest.
    pub fn bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }
}

/// What restore, gc and repair read of a manifest: its header and its extents in order,
/// whether decoded into memory ([`Manifest`]) or decoded as read ([`EncodedManifest`]).
pub trait ManifestView {
    /// The header.
    fn header(&self) -> &ManifestHeader;
    /// The extents in image order.
    fn extents(&self) -> impl Iterator<Item = Extent> + '_;
    /// Checks the invariants a restore relies on.
    fn check(&self) -> Result<(), Error>;

    /// Every distinct chunk id the manifest names.
    fn chunk_ids(&self) -> std::collections::BTreeSet<ChunkId> {
        self.extents()
            .filter_map(|e| match e {
                Extent::Chunk { id, .. } => Some(id),
                Extent::Zero { .. } => None,
            })
            .collect()
    }
}

impl ManifestView for Manifest {
    fn header(&self) -> &ManifestHeader {
        &self.header
    }

    fn extents(&self) -> impl Iterator<Item = Extent> + '_ {
        self.extents.iter().copied()
    }

    fn check(&self) -> Result<(), Error> {
        Manifest::check(self)
    }
}

impl ManifestView for EncodedManifest {
    fn header(&self) -> &ManifestHeader {
        &self.header
    }

    fn extents(&self) -> impl Iterator<Item = Extent> + '_ {
        Extents::new(&self.bytes[..self.bytes.len() - 32], self.body, self.count)
    }

    /// Checked when parsed; its bytes cannot change since.
    fn check(&self) -> Result<(), Error> {
        Ok(())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[derive(Debug)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.buf.get(self.pos..self.pos + 8)?;
        self.pos += 8;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    fn id(&mut self) -> Option<ChunkId> {
        let b = self.buf.get(self.pos..self.pos + 32)?;
        self.pos += 32;
        Some(ChunkId(b.try_into().ok()?))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return None;
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

mod snapshot_id_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::SnapshotId;

    pub fn serialize<S: Serializer>(id: &SnapshotId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SnapshotId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn meta() -> SnapshotMeta {
        SnapshotMeta {
            id: SnapshotId([7; 16]),
            instance: "web-1".into(),
            name: "nightly".into(),
            backing: Backing::Image,
            home_region: "it-1".into(),
            created_at: 1_700_000_000,
            completed_at: 1_700_000_100,
            retention_days: 1,
        }
    }

    fn sample() -> Manifest {
        let id = ChunkId::of(b"x");
        let extents = vec![
            Extent::Chunk {
                offset: 0,
                len: 65536,
                id,
            },
            Extent::Zero {
                offset: 65536,
                len: 1 << 40,
            },
            Extent::Chunk {
                offset: 65536 + (1 << 40),
                len: 10,
                id,
            },
        ];
        Manifest::new(
            meta(),
            ChunkerParams::fixed(65536).unwrap(),
            65546 + (1 << 40),
            extents,
        )
        .unwrap()
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.chunk_ids().len(), 1);
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_rejected() {
        let bytes = sample().encode().unwrap();
        let parse = |b: &[u8]| EncodedManifest::parse(bytes::Bytes::copy_from_slice(b));
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i}");
            assert!(parse(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn newer_versions_are_named() {
        let mut bytes = sample().encode().unwrap();
        bytes[8] = 9;
        let err = Manifest::decode(&bytes).unwrap_err();
        assert!(
            matches!(err, Error::ManifestVersion { found: 9, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_encoded_manifest_is_checked_like_a_decoded_one() {
        // Valid checksum, but the header's totals disagree with the extents (`encode` does
        // not check, as a buggy or hostile writer would not).
        let mut m = sample();
        m.header.chunk_count += 1;
        let bytes = m.encode().unwrap();
        let err = EncodedManifest::parse(bytes::Bytes::from(bytes.clone())).unwrap_err();
        assert!(err.to_string().contains("header totals"), "{err}");
        assert_eq!(
            Manifest::decode(&bytes).unwrap_err().to_string(),
            err.to_string()
        );
        // An extent reaching past the image.
        let mut m = sample();
        m.header.image_size -= 1;
        let err = EncodedManifest::parse(bytes::Bytes::from(m.encode().unwrap())).unwrap_err();
        assert!(
            err.to_string().contains("reaches past the image size"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_extents_are_refused() {
        let id = ChunkId::of(b"x");
        let p = ChunkerParams::fixed(65536).unwrap();
        let gap = vec![Extent::Chunk {
            offset: 10,
            len: 10,
            id,
        }];
        assert!(Manifest::new(meta(), p, 20, gap).is_err());
        let too_long = vec![Extent::Chunk {
            offset: 0,
            len: 65537,
            id,
        }];
        assert!(Manifest::new(meta(), p, 65537, too_long).is_err());
        let short = vec![Extent::Zero { offset: 0, len: 10 }];
        assert!(Manifest::new(meta(), p, 11, short).is_err());
        let past = vec![Extent::Zero { offset: 0, len: 12 }];
        assert!(Manifest::new(meta(), p, 11, past).is_err());
    }

    proptest! {
        #[test]
        fn any_valid_extent_list_round_trips(lens in prop::collection::vec((1u64..70_000, any::<bool>(), any::<u8>()), 0..200)) {
            let mut offset = 0;
            let mut extents = Vec::new();
            for (len, zero, seed) in lens {
                if zero {
                    extents.push(Extent::Zero { offset, len });
                } else {
                    let len = len.min(65536) as u32;
                    extents.push(Extent::Chunk { offset, len, id: ChunkId::of(&[seed]) });
                }
                offset += extents.last().unwrap().len();
            }
            let p = ChunkerParams::fixed(65536).unwrap();
            let m = Manifest::new(meta(), p, offset, extents).unwrap();
            let bytes = m.encode().unwrap();
            prop_assert_eq!(&Manifest::decode(&bytes).unwrap(), &m);
            // Kept encoded, it yields the same header and extents.
            let kept = EncodedManifest::parse(bytes::Bytes::from(bytes.clone())).unwrap();
            prop_assert_eq!(ManifestView::header(&kept), &m.header);
            prop_assert_eq!(ManifestView::extents(&kept).collect::<Vec<_>>(), m.extents.clone());
            prop_assert_eq!(kept.chunk_ids(), m.chunk_ids());
            // A scan's extent log encodes the very same bytes.
            let mut log = ExtentLog::new(p).unwrap();
            for e in &m.extents {
                log.push(e).unwrap();
            }
            prop_assert_eq!(log.len(), m.extents.len() as u64);
            prop_assert_eq!(log.finish(meta(), offset).unwrap(), (m.header.clone(), bytes));
        }
    }

    #[test]
    fn an_extent_log_refuses_what_a_manifest_would() {
        let id = ChunkId::of(b"x");
        let p = ChunkerParams::fixed(65536).unwrap();
        let mut log = ExtentLog::new(p).unwrap();
        let gap = Extent::Chunk {
            offset: 10,
            len: 10,
            id,
        };
        assert!(matches!(log.push(&gap), Err(Error::ManifestCorrupt(_))));
        let too_long = Extent::Chunk {
            offset: 0,
            len: 65537,
            id,
        };
        assert!(matches!(
            log.push(&too_long),
            Err(Error::ManifestCorrupt(_))
        ));
        assert!(log.push(&Extent::Zero { offset: 0, len: 0 }).is_err());
        assert!(log.is_empty());
        log.push(&Extent::Zero { offset: 0, len: 10 }).unwrap();
        // Short of the image size, and past it.
        let err = ExtentLog::new(p).unwrap().finish(meta(), 1).unwrap_err();
        assert!(
            err.to_string().contains("cover 0 bytes of a 1-byte image"),
            "{err}"
        );
        assert!(log.finish(meta(), 9).is_err());
    }
}
