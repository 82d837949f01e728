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
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

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
        let src = Source::Slice(bytes);
        let (header, body, count) = decode_prefix(src)?;
        let mut extents = Vec::with_capacity(count as usize);
        walk(src, body, count, |e| {
            extents.push(e);
            Ok(())
        })?;
        let m = Manifest { header, extents };
        m.check()?;
        Ok(m)
    }
}

/// The largest header a manifest may have (names are short; this only bounds what a
/// damaged or hostile length field can make a reader allocate).
const MAX_HEADER: u64 = 1 << 20;

/// Parses and checks everything before the extents: the checked header, where the extents
/// start, and how many there are. The checksum is checked over the whole manifest first.
fn decode_prefix(src: Source<'_>) -> Result<(ManifestHeader, u64, u64), Error> {
    let corrupt = |why: &str| Error::ManifestCorrupt(why.to_string());
    let len = src.len();
    let mut fixed = [0u8; FIXED_PREFIX];
    if len >= 8 {
        src.read_exact_at(&mut fixed[..8], 0)?;
    }
    if len < 8 || fixed[..8] != MANIFEST_MAGIC {
        return Err(corrupt("not a geosnap manifest (bad magic)"));
    }
    if len < (FIXED_PREFIX + 8 + 32) as u64 {
        return Err(corrupt("manifest is truncated"));
    }
    src.read_exact_at(&mut fixed, 0)?;
    let version = u16::from_le_bytes([fixed[8], fixed[9]]);
    if version > MANIFEST_VERSION {
        return Err(Error::ManifestVersion {
            found: version,
            supported: MANIFEST_VERSION,
        });
    }
    if version == 0 || fixed[10..12] != [0, 0] {
        return Err(corrupt("manifest prefix is damaged"));
    }
    let body_end = len - 32;
    let mut sum = [0u8; 32];
    src.read_exact_at(&mut sum, body_end)?;
    if src.digest(body_end)?[..] != sum {
        return Err(corrupt(
            "manifest is truncated or damaged (checksum mismatch)",
        ));
    }
    let hlen = u64::from(u32::from_le_bytes([
        fixed[12], fixed[13], fixed[14], fixed[15],
    ]));
    let start = FIXED_PREFIX as u64 + hlen;
    if hlen > MAX_HEADER || start + 8 > body_end {
        return Err(corrupt("header length exceeds the manifest"));
    }
    let mut json = vec![0u8; hlen as usize];
    src.read_exact_at(&mut json, FIXED_PREFIX as u64)?;
    let header: ManifestHeader = serde_json::from_slice(&json)
        .map_err(|e| Error::ManifestCorrupt(format!("header is not valid: {e}")))?;
    let mut count = [0u8; 8];
    src.read_exact_at(&mut count, start)?;
    let count = u64::from_le_bytes(count);
    // Each extent takes at least two bytes: refuse counts the bytes cannot hold.
    if count > (body_end - start - 8) / 2 {
        return Err(corrupt("extent count exceeds the manifest's length"));
    }
    Ok((header, start + 8, count))
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

/// Appends `extents` to `out` encoded as a manifest's extent list encodes them (tag,
/// length, a chunk's id; no offsets): how a snapshot's checkpoints keep the extents a scan
/// has finished, so that a later attempt can resume after them.
pub fn encode_extents<'a>(out: &mut Vec<u8>, extents: impl IntoIterator<Item = &'a Extent>) {
    for e in extents {
        encode_extent(out, e);
    }
}

/// The extents [`encode_extents`] wrote to `r`, the first starting at image offset
/// `start`, until `r` ends; an extent cut short or malformed is an error that ends them.
pub fn decode_extents<R: BufRead>(r: R, start: u64) -> impl Iterator<Item = Result<Extent, Error>> {
    let mut extents = Extents::new(r, u64::MAX);
    extents.offset = start;
    extents.until_end = true;
    extents
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
        let file = tempfile::tempfile().map_err(write_err)?;
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
        self.out.write_all(&self.scratch).map_err(write_err)
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
    /// its encoded bytes, in memory if they take at most `memory` bytes and in an anonymous
    /// temporary file otherwise.
    pub fn finish(
        self,
        meta: SnapshotMeta,
        image_size: u64,
        memory: u64,
    ) -> Result<(ManifestHeader, ManifestBytes), Error> {
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
        let spill = read_err;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| write_err(e.into_error()))?;
        let body = file.stream_position().map_err(spill)?;
        file.rewind().map_err(spill)?;
        let prefix = encode_prefix(&header, self.checker.count, 0)?;
        let total = prefix.len() as u64 + body + 32;
        let mut sum = Sha256::new();
        sum.update(&prefix);
        let mut body_reader = BufReader::with_capacity(1 << 20, file.take(body));
        let bytes = if total <= memory {
            let mut out = prefix;
            out.reserve_exact(body as usize + 32);
            let start = out.len();
            body_reader.read_to_end(&mut out).map_err(spill)?;
            sum.update(&out[start..]);
            out.extend_from_slice(&sum.finalize());
            ManifestBytes::Memory(Bytes::from(out))
        } else {
            let mut spool = Spool::new()?;
            spool.write(&prefix)?;
            loop {
                let buf = body_reader.fill_buf().map_err(spill)?;
                if buf.is_empty() {
                    break;
                }
                sum.update(buf);
                spool.write(buf)?;
                let n = buf.len();
                body_reader.consume(n);
            }
            spool.write(&sum.finalize())?;
            spool.finish()?
        };
        if bytes.len() != total {
            return Err(spill(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok((header, bytes))
    }

    /// The manifest of these extents, decoded and checked (tests and tools).
    pub fn into_manifest(self, meta: SnapshotMeta, image_size: u64) -> Result<Manifest, Error> {
        let (_, bytes) = self.finish(meta, image_size, u64::MAX)?;
        EncodedManifest::parse(bytes)?.decode()
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

/// Decodes `count` extents starting at byte `start` of the manifest in `src`, handing each
/// to `f`; the extents must fill the bytes before the checksum exactly.
fn walk(
    src: Source<'_>,
    start: u64,
    count: u64,
    mut f: impl FnMut(Extent) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut it = Extents::new(src.reader(start, src.len() - 32), count);
    while let Some(e) = it.try_next()? {
        f(e)?;
    }
    if !it.r.fill_buf().map_err(read_err)?.is_empty() {
        return Err(Error::ManifestCorrupt(
            "trailing bytes after the extent list".into(),
        ));
    }
    Ok(())
}

fn read_err(source: std::io::Error) -> Error {
    Error::Spill {
        action: "read",
        what: "the manifest's temporary file",
        source,
    }
}

fn write_err(source: std::io::Error) -> Error {
    Error::Spill {
        action: "write",
        what: "the manifest's temporary file",
        source,
    }
}

/// Extents decoded one by one from a manifest's encoded bytes.
#[derive(Debug)]
struct Extents<R> {
    r: R,
    left: u64,
    offset: u64,
    index: u64,
    failed: bool,
    /// Read until `r` ends instead of `left` extents.
    until_end: bool,
}

impl<R: BufRead> Extents<R> {
    /// `count` extents read from `r`.
    fn new(r: R, count: u64) -> Extents<R> {
        Extents {
            r,
            left: count,
            offset: 0,
            index: 0,
            failed: false,
            until_end: false,
        }
    }

    fn byte(&mut self) -> Result<Option<u8>, Error> {
        let Some(&b) = self.r.fill_buf().map_err(read_err)?.first() else {
            return Ok(None);
        };
        self.r.consume(1);
        Ok(Some(b))
    }

    fn varint(&mut self) -> Result<Option<u64>, Error> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(b) = self.byte()? else {
                return Ok(None);
            };
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Ok(None);
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn id(&mut self) -> Result<Option<ChunkId>, Error> {
        let mut id = [0u8; 32];
        match self.r.read_exact(&mut id) {
            Ok(()) => Ok(Some(ChunkId(id))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(read_err(e)),
        }
    }

    fn try_next(&mut self) -> Result<Option<Extent>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        if self.until_end && self.r.fill_buf().map_err(read_err)?.is_empty() {
            return Ok(None);
        }
        let i = self.index;
        let corrupt = |why: &str| Error::ManifestCorrupt(why.to_string());
        let tag = self
            .byte()?
            .ok_or_else(|| corrupt("extent list is cut short"))?;
        let len = self
            .varint()?
            .ok_or_else(|| corrupt("extent length is malformed"))?;
        let offset = self.offset;
        let e = match tag {
            TAG_CHUNK => {
                let id = self
                    .id()?
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

impl<R: BufRead> Iterator for Extents<R> {
    type Item = Result<Extent, Error>;

    /// The next extent, or the error that ends the walk (after which it yields nothing).
    fn next(&mut self) -> Option<Result<Extent, Error>> {
        if self.failed {
            return None;
        }
        let next = self.try_next();
        self.failed = next.is_err();
        next.transpose()
    }
}

/// A manifest's encoded bytes: in memory, or — a large one, which would hold 36 bytes per
/// 16 KiB chunk (2.4 GB for a dense 1 TiB image) — in an anonymous temporary file.
#[derive(Clone, Debug)]
pub enum ManifestBytes {
    /// Held in memory.
    Memory(Bytes),
    /// Held in an anonymous temporary file, gone when the last clone is dropped.
    File(Arc<SpoolFile>),
}

/// An anonymous temporary file that holds a manifest's bytes.
#[derive(Debug)]
pub struct SpoolFile {
    file: File,
    len: u64,
}

impl ManifestBytes {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ManifestBytes::Memory(b) => b.len() as u64,
            ManifestBytes::File(f) => f.len,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, if they are held in memory.
    pub fn as_memory(&self) -> Option<&Bytes> {
        match self {
            ManifestBytes::Memory(b) => Some(b),
            ManifestBytes::File(_) => None,
        }
    }

    /// Reads `buf.len()` bytes from `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.source().read_exact_at(buf, offset)
    }

    fn source(&self) -> Source<'_> {
        match self {
            ManifestBytes::Memory(b) => Source::Slice(b),
            ManifestBytes::File(f) => Source::File(f),
        }
    }
}

/// Writes a manifest's bytes into an anonymous temporary file, as they arrive.
#[derive(Debug)]
pub struct Spool {
    out: BufWriter<File>,
    len: u64,
}

impl Spool {
    /// An empty spool in the system's temporary directory.
    pub fn new() -> Result<Spool, Error> {
        let file = tempfile::tempfile().map_err(write_err)?;
        Ok(Spool {
            out: BufWriter::with_capacity(1 << 20, file),
            len: 0,
        })
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.write_all(bytes).map_err(write_err)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The bytes written.
    pub fn finish(self) -> Result<ManifestBytes, Error> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| write_err(e.into_error()))?;
        Ok(ManifestBytes::File(Arc::new(SpoolFile {
            file,
            len: self.len,
        })))
    }
}

/// Where a manifest's bytes are read from.
#[derive(Clone, Copy, Debug)]
enum Source<'a> {
    Slice(&'a [u8]),
    File(&'a SpoolFile),
}

impl<'a> Source<'a> {
    fn len(&self) -> u64 {
        match self {
            Source::Slice(b) => b.len() as u64,
            Source::File(f) => f.len,
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len()) {
            return Err(read_err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        match self {
            Source::Slice(b) => {
                let start = offset as usize;
                buf.copy_from_slice(&b[start..start + buf.len()]);
                Ok(())
            }
            Source::File(f) => f.file.read_exact_at(buf, offset).map_err(read_err),
        }
    }

    /// The bytes from `start` (at most the length) to `end`, in order.
    fn reader(&self, start: u64, end: u64) -> ByteReader<'a> {
        match *self {
            Source::Slice(b) => ByteReader::Slice(&b[start as usize..end as usize]),
            Source::File(f) => ByteReader::File(BufReader::with_capacity(
                1 << 18,
                FileRange {
                    file: &f.file,
                    pos: start,
                    end,
                },
            )),
        }
    }

    /// SHA-256 of the first `end` bytes.
    fn digest(&self, end: u64) -> Result<[u8; 32], Error> {
        let mut sum = Sha256::new();
        match self {
            Source::Slice(b) => sum.update(&b[..end as usize]),
            Source::File(_) => {
                let mut r = self.reader(0, end);
                loop {
                    let buf = r.fill_buf().map_err(read_err)?;
                    if buf.is_empty() {
                        break;
                    }
                    sum.update(buf);
                    let n = buf.len();
                    r.consume(n);
                }
            }
        }
        Ok(sum.finalize().into())
    }
}

/// A range of a file, read with positioned reads (so readers of one file never share a
/// cursor); it ends early if the file is shorter.
#[derive(Debug)]
struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A manifest's bytes from memory or from its temporary file.
#[derive(Debug)]
enum ByteReader<'a> {
    Slice(&'a [u8]),
    File(BufReader<FileRange<'a>>),
}

impl Read for ByteReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ByteReader::Slice(b) => b.read(buf),
            ByteReader::File(f) => f.read(buf),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            ByteReader::Slice(b) => b.read_exact(buf),
            ByteReader::File(f) => f.read_exact(buf),
        }
    }
}

impl BufRead for ByteReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        match self {
            ByteReader::Slice(b) => b.fill_buf(),
            ByteReader::File(f) => f.fill_buf(),
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            ByteReader::Slice(b) => b.consume(n),
            ByteReader::File(f) => f.consume(n),
        }
    }
}

/// A manifest kept as its checked, encoded bytes — 36 bytes per 16 KiB chunk, where the
/// decoded [`Manifest`] adds 48 more per extent — in memory or in a temporary file. Its
/// extents are decoded as they are read, so a restore of a large image never holds them
/// all.
#[derive(Clone, Debug)]
pub struct EncodedManifest {
    header: ManifestHeader,
    bytes: ManifestBytes,
    body: u64,
    count: u64,
}

impl EncodedManifest {
    /// Parses and checks a manifest exactly as [`Manifest::decode`] does, keeping its bytes.
    pub fn parse(bytes: impl Into<ManifestBytes>) -> Result<EncodedManifest, Error> {
        let bytes = bytes.into();
        let src = bytes.source();
        let (header, body, count) = decode_prefix(src)?;
        let mut c = Checker::new(&header.chunker, Some(header.image_size))?;
        walk(src, body, count, |e| c.push(&e))?;
        c.finish(&header)?;
        Ok(EncodedManifest {
            header,
            bytes,
            body,
            count,
        })
    }

    /// The encoded manifest.
    pub fn bytes(&self) -> &ManifestBytes {
        &self.bytes
    }

    /// The manifest decoded into memory (tests and tools; a restore walks the extents).
    pub fn decode(&self) -> Result<Manifest, Error> {
        Ok(Manifest {
            header: self.header.clone(),
            extents: self.extents().collect::<Result<_, _>>()?,
        })
    }
}

impl From<Bytes> for ManifestBytes {
    fn from(b: Bytes) -> ManifestBytes {
        ManifestBytes::Memory(b)
    }
}

impl From<Vec<u8>> for ManifestBytes {
    fn from(b: Vec<u8>) -> ManifestBytes {
        ManifestBytes::Memory(Bytes::from(b))
    }
}

/// What restore, gc and repair read of a manifest: its header and its extents in order,
/// whether decoded into memory ([`Manifest`]) or decoded as read ([`EncodedManifest`]).
pub trait ManifestView {
    /// The header.
    fn header(&self) -> &ManifestHeader;
    /// The extents in image order; reading them from a temporary file can fail, and the
    /// error ends the walk.
    fn extents(&self) -> impl Iterator<Item = Result<Extent, Error>> + '_;
    /// Checks the invariants a restore relies on.
    fn check(&self) -> Result<(), Error>;

    /// Every distinct chunk id the manifest names.
    fn chunk_ids(&self) -> Result<std::collections::BTreeSet<ChunkId>, Error> {
        self.extents()
            .filter_map(|e| match e {
                Ok(Extent::Chunk { id, .. }) => Some(Ok(id)),
                Ok(Extent::Zero { .. }) => None,
                Err(e) => Some(Err(e)),
            })
            .collect()
    }
}

impl ManifestView for Manifest {
    fn header(&self) -> &ManifestHeader {
        &self.header
    }

    fn extents(&self) -> impl Iterator<Item = Result<Extent, Error>> + '_ {
        self.extents.iter().copied().map(Ok)
    }

    fn check(&self) -> Result<(), Error> {
        Manifest::check(self)
    }
}

impl ManifestView for EncodedManifest {
    fn header(&self) -> &ManifestHeader {
        &self.header
    }

    fn extents(&self) -> impl Iterator<Item = Result<Extent, Error>> + '_ {
        let src = self.bytes.source();
        Extents::new(src.reader(self.body, src.len() - 32), self.count)
    }

    /// Checked when parsed; its bytes cannot change since (a temporary file is unlinked
    /// and private to this process).
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

    /// Every byte, read back.
    fn all(b: &ManifestBytes) -> Vec<u8> {
        let mut v = vec![0; b.len() as usize];
        b.read_exact_at(&mut v, 0).unwrap();
        v
    }

    /// The bytes in an anonymous temporary file.
    fn spooled(b: &[u8]) -> ManifestBytes {
        let mut s = Spool::new().unwrap();
        s.write(b).unwrap();
        s.finish().unwrap()
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
        assert_eq!(m.chunk_ids().unwrap().len(), 1);
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_rejected() {
        let bytes = sample().encode().unwrap();
        let parse = |b: &[u8]| EncodedManifest::parse(bytes::Bytes::copy_from_slice(b));
        let parse_file = |b: &[u8]| EncodedManifest::parse(spooled(b));
        for cut in 0..bytes.len() {
            let err = Manifest::decode(&bytes[..cut]).unwrap_err().to_string();
            assert_eq!(parse(&bytes[..cut]).unwrap_err().to_string(), err);
            assert_eq!(parse_file(&bytes[..cut]).unwrap_err().to_string(), err);
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let err = Manifest::decode(&bad).unwrap_err().to_string();
            assert_eq!(parse(&bad).unwrap_err().to_string(), err, "flip at {i}");
            assert_eq!(parse_file(&bad).unwrap_err().to_string(), err);
        }
        assert_eq!(
            EncodedManifest::parse(spooled(&bytes))
                .unwrap()
                .decode()
                .unwrap(),
            sample()
        );
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
            prop_assert_eq!(&kept.decode().unwrap(), &m);
            prop_assert_eq!(kept.chunk_ids().unwrap(), m.chunk_ids().unwrap());
            // A scan's extent log encodes the very same bytes, in memory or in a file; kept
            // in a file, they read back the same.
            for memory in [u64::MAX, 0] {
                let mut log = ExtentLog::new(p).unwrap();
                for e in &m.extents {
                    log.push(e).unwrap();
                }
                prop_assert_eq!(log.len(), m.extents.len() as u64);
                let (header, got) = log.finish(meta(), offset, memory).unwrap();
                prop_assert_eq!(&header, &m.header);
                prop_assert_eq!(got.as_memory().is_some(), memory > 0);
                prop_assert_eq!(&all(&got), &bytes);
                let kept = EncodedManifest::parse(got).unwrap();
                prop_assert_eq!(kept.decode().unwrap(), m.clone());
            }
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
        let err = ExtentLog::new(p).unwrap().finish(meta(), 1, 0).unwrap_err();
        assert!(
            err.to_string().contains("cover 0 bytes of a 1-byte image"),
            "{err}"
        );
        assert!(log.finish(meta(), 9, u64::MAX).is_err());
    }
}
