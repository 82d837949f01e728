//! Turns an image into pieces: chunks of data and zero runs, in image order.
//!
//! Zero runs are maximal runs of aligned [`ZERO_BLOCK`]-byte blocks that hold only zeros
//! and span at least [`ZERO_RUN_MIN`] bytes; holes count as zeros. They are cut out before
//! any chunker runs, so no chunker hashes or compresses zeros, and chunks never straddle a
//! zero run. Everything else is data, cut by the [`Cutter`].
//!
//! The result depends only on the image's content, never on how it was fed (window sizes,
//! holes versus written zeros): a property test below checks this.

use bytes::Bytes;

use crate::chunker::{ChunkerParams, Cutter};
use crate::zero::{ZERO_BLOCK, ZERO_RUN_MIN, is_zero};

/// One piece of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Data to hash and store.
    Chunk {
        /// Image offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Zeros.
    Zero {
        /// Image offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

/// Streaming segmentation and chunking. Feed it windows with [`Scanner::take_buffer`] and
/// [`Scanner::push`], or known zeros with [`Scanner::push_zeros`]; every window but the
/// last must end on a [`ZERO_BLOCK`] boundary.
#[derive(Debug)]
pub struct Scanner {
    cutter: Cutter,
    /// Bytes not yet emitted, ending at `next`.
    carry: Bytes,
    /// Start of a confirmed zero run that reached the end of the last window.
    open_zero: Option<u64>,
    /// Absolute offset of the next byte to be fed.
    next: u64,
    /// Offset of the first byte of a buffer handed out by `take_buffer`.
    taken_base: Option<u64>,
    /// Most bytes a window can carry over to the next: an open chunk's lookahead plus a
    /// zero run too short to cut yet. Buffers are sized window + this once, never regrown.
    max_carry: usize,
    /// Window buffers come back here once every chunk cut from them is dropped, so a scan
    /// reuses a few warm buffers instead of faulting in fresh pages for every window.
    pool: (
        crossbeam_channel::Sender<Vec<u8>>,
        crossbeam_channel::Receiver<Vec<u8>>,
    ),
}

/// A window's bytes; returns its buffer to the scanner's pool when the last chunk that
/// refers to it is dropped.
struct Pooled {
    buf: Vec<u8>,
    home: crossbeam_channel::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}

impl Scanner {
    /// A scanner for validated chunker parameters.
    pub fn new(params: ChunkerParams) -> Scanner {
        Scanner {
            cutter: params.cutter(),
            carry: Bytes::new(),
            open_zero: None,
            next: 0,
            taken_base: None,
            max_carry: params.max_chunk() + ZERO_RUN_MIN,
            pool: crossbeam_channel::bounded(8),
        }
    }

    /// The same scanner fed from image offset `offset` on (a resumed scan) instead of 0.
    /// Until it reaches a [`ZERO_BLOCK`] boundary it takes windows, not holes.
    pub fn starting_at(mut self, offset: u64) -> Scanner {
        self.next = offset;
        self
    }

    /// Offset of the next byte to feed.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// A buffer of the carried-over bytes followed by `room` bytes for the next window:
    /// overwrite those (they hold whatever a pooled buffer held last) and pass the buffer
    /// to [`Scanner::push`].
    pub fn take_buffer(&mut self, room: usize) -> Vec<u8> {
        let mut v = self.pool.1.try_recv().unwrap_or_default();
        let carry = self.carry.len();
        // Exact: `reserve` would double a pooled buffer the first time a carry does not
        // fit, and every buffer in flight would then cost two windows of memory.
        v.reserve_exact((room + carry.max(self.max_carry)).saturating_sub(v.len()));
        // A pooled buffer's bytes are kept as they are: zeroing 8 MiB that the read then
        // overwrites cost the reader thread a tenth of its time. Only bytes the buffer
        // never held are zeroed.
        v.resize(carry + room, 0);
        v[..carry].copy_from_slice(&self.carry);
        self.taken_base = Some(self.next - carry as u64);
        self.carry = Bytes::new();
        v
    }

    /// Feeds a buffer from [`Scanner::take_buffer`] with the window's bytes written after
    /// the carried-over ones.
    /// `eof` marks the image's last window.
    pub fn push(&mut self, buf: Vec<u8>, eof: bool, out: &mut dyn FnMut(Piece)) {
        let base = self.taken_base.take().unwrap_or(self.next);
        let buf = Bytes::from_owner(Pooled {
            buf,
            home: self.pool.0.clone(),
        });
        self.next = base + buf.len() as u64;
        debug_assert!(eof || self.next.is_multiple_of(ZERO_BLOCK as u64));
        self.scan(buf, base, eof, out);
    }

    /// Feeds `len` bytes known to be zero (a hole), `len >= ZERO_RUN_MIN`.
    pub fn push_zeros(&mut self, len: u64, eof: bool, out: &mut dyn FnMut(Piece)) {
        debug_assert!(self.taken_base.is_none());
        debug_assert!(len >= ZERO_RUN_MIN as u64 && self.next.is_multiple_of(ZERO_BLOCK as u64));
        let start = match self.open_zero {
            Some(zs) => zs,
            None => {
                let carry = std::mem::take(&mut self.carry);
                let base = self.next - carry.len() as u64;
                let first = (align_up(base) - base) as usize;
                let mut rs = carry.len();
                while rs >= first + ZERO_BLOCK && is_zero(&carry[rs - ZERO_BLOCK..rs]) {
                    rs -= ZERO_BLOCK;
                }
                self.chunk_closed(&carry, base, 0, rs, out);
                base + rs as u64
            }
        };
        self.next += len;
        if eof {
            out(Piece::Zero {
                offset: start,
                len: self.next - start,
            });
            self.open_zero = None;
        } else {
            self.open_zero = Some(start);
        }
    }

    fn scan(&mut self, buf: Bytes, base: u64, eof: bool, out: &mut dyn FnMut(Piece)) {
        let len = buf.len();
        let mut pos = 0;
        if let Some(zs) = self.open_zero.take() {
            let z = zero_prefix(&buf, eof);
            if z == len && !eof {
                self.open_zero = Some(zs);
                return;
            }
            out(Piece::Zero {
                offset: zs,
                len: base + z as u64 - zs,
            });
            if z == len {
                return;
            }
            pos = z;
        }
        let mut extent = pos;
        let mut run: Option<usize> = None;
        let mut b = (align_up(base + pos as u64) - base) as usize;
        while b < len {
            let e = (b + ZERO_BLOCK).min(len);
            let full = e - b == ZERO_BLOCK || (eof && e == len);
            if full && is_zero(&buf[b..e]) {
                run.get_or_insert(b);
            } else if let Some(rs) = run.take()
                && b - rs >= ZERO_RUN_MIN
            {
                self.chunk_closed(&buf, base, extent, rs, out);
                out(Piece::Zero {
                    offset: base + rs as u64,
                    len: (b - rs) as u64,
                });
                extent = b;
            }
            b = e;
        }
        match run {
            Some(rs) if len - rs >= ZERO_RUN_MIN => {
                self.chunk_closed(&buf, base, extent, rs, out);
                if eof {
                    out(Piece::Zero {
                        offset: base + rs as u64,
                        len: (len - rs) as u64,
                    });
                } else {
                    self.open_zero = Some(base + rs as u64);
                }
            }
            _ if eof => self.chunk_closed(&buf, base, extent, len, out),
            run => {
                let certain = run.unwrap_or(len);
                let p = self.chunk_open(&buf, base, extent, certain, out);
                self.carry = buf.slice(p..);
            }
        }
    }

    /// Chunks the whole extent `[start, end)` of `buf`.
    fn chunk_closed(
        &self,
        buf: &Bytes,
        base: u64,
        start: usize,
        end: usize,
        out: &mut dyn FnMut(Piece),
    ) {
        let mut s = start;
        while s < end {
            let n = self.cutter.next_len(base + s as u64, &buf[s..end]);
            out(Piece::Chunk {
                offset: base + s as u64,
                data: buf.slice(s..s + n),
            });
            s += n;
        }
    }

    /// Chunks the part of an extent that later bytes cannot change: `[start, certain)` is
    /// data for sure. Returns the first byte not emitted.
    fn chunk_open(
        &self,
        buf: &Bytes,
        base: u64,
        start: usize,
        certain: usize,
        out: &mut dyn FnMut(Piece),
    ) -> usize {
        let mut s = start;
        while s < certain {
            let need = self.cutter.lookahead(base + s as u64) as usize;
            if certain - s < need {
                break;
            }
            let n = self.cutter.next_len(base + s as u64, &buf[s..certain]);
            out(Piece::Chunk {
                offset: base + s as u64,
                data: buf.slice(s..s + n),
            });
            s += n;
        }
        s
    }
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(ZERO_BLOCK as u64) * ZERO_BLOCK as u64
}

/// Bytes of `buf` (which starts block-aligned) covered by leading zero blocks; a final
/// partial block counts only at the end of the image.
fn zero_prefix(buf: &[u8], eof: bool) -> usize {
    let mut b = 0;
    while b < buf.len() {
        let e = (b + ZERO_BLOCK).min(buf.len());
        if (e - b != ZERO_BLOCK && !eof) || !is_zero(&buf[b..e]) {
            break;
        }
        b = e;
    }
    b
}

/// Scans an in-memory image in windows of `window` bytes (a multiple of [`ZERO_BLOCK`]);
/// for tests and benchmarks.
pub fn scan_bytes(params: ChunkerParams, data: &[u8], window: usize) -> Vec<Piece> {
    let mut s = Scanner::new(params);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let n = window.min(data.len() - pos);
        let mut buf = s.take_buffer(n);
        let carry = buf.len() - n;
        buf[carry..].copy_from_slice(&data[pos..pos + n]);
        pos += n;
        s.push(buf, pos == data.len(), &mut |p| out.push(p));
        if pos == data.len() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Flattens pieces back to bytes, checking order and contiguity.
    fn reassemble(pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Chunk { offset, data } => {
                    assert_eq!(*offset, out.len() as u64);
                    assert!(!data.is_empty());
                    out.extend_from_slice(data);
                }
                Piece::Zero { offset, len } => {
                    assert_eq!(*offset, out.len() as u64);
                    assert!(*len >= ZERO_RUN_MIN as u64 || out.len() as u64 + len > 0);
                    out.resize(out.len() + *len as usize, 0);
                }
            }
        }
        out
    }

    /// Image with data and zero runs of assorted lengths and alignments.
    fn patchwork(seed: u64, spans: &[(bool, usize)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, &(zero, len)) in spans.iter().enumerate() {
            if zero {
                v.resize(v.len() + len, 0);
            } else {
                v.extend(noise(seed + i as u64, len));
            }
        }
        v
    }

    fn params() -> [ChunkerParams; 3] {
        [
            ChunkerParams::fixed(65536).unwrap(),
            ChunkerParams::fixed(1 << 20).unwrap(),
            ChunkerParams::cdc(8192, 32768, 131072).unwrap(),
        ]
    }

    #[test]
    fn zero_runs_are_cut_out_whatever_the_chunker() {
        let img = patchwork(
            1,
            &[
                (false, 100_000),
                (true, 300_000),
                (false, 5000),
                (true, 8192),
                (false, 70_000),
                (true, 1 << 20),
            ],
        );
        for p in params() {
            let pieces = scan_bytes(p, &img, 1 << 20);
            assert_eq!(reassemble(&pieces), img, "{p}");
            let zero: u64 = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Zero { len, .. } => Some(*len),
                    _ => None,
                })
                .sum();
            // The 300 000-byte run loses its unaligned edges; the 8 KiB run is too short.
            assert!(
                zero >= (300_000 - 2 * 4096) + (1 << 20) - 4096,
                "{p}: {zero}"
            );
            for piece in &pieces {
                if let Piece::Chunk { data, .. } = piece {
                    assert!(!is_zero(data) || data.len() < ZERO_RUN_MIN, "{p}");
                }
            }
        }
    }

    #[test]
    fn empty_and_tiny_images() {
        for p in params() {
            assert!(scan_bytes(p, &[], 65536).is_empty());
            let one = scan_bytes(p, &[9], 65536);
            assert_eq!(reassemble(&one), vec![9]);
            let zeros = vec![0u8; 4097];
            assert_eq!(reassemble(&scan_bytes(p, &zeros, 4096)), zeros);
            let big_zero = vec![0u8; 200_001];
            let pieces = scan_bytes(p, &big_zero, 8192);
            assert_eq!(pieces.len(), 1, "{p}: {pieces:?}");
            assert_eq!(reassemble(&pieces), big_zero);
        }
    }

    #[test]
    fn holes_fed_as_zeros_give_the_same_pieces() {
        let img = patchwork(3, &[(false, 90_000), (true, 3 << 20), (false, 50_000)]);
        for p in params() {
            let expect = scan_bytes(p, &img, 1 << 20);
            // Feed the hole through push_zeros in the middle.
            let mut s = Scanner::new(p);
            let mut got = Vec::new();
            let mut buf = s.take_buffer(1 << 20);
            let carry = buf.len() - (1 << 20);
            buf[carry..].copy_from_slice(&img[..1 << 20]);
            s.push(buf, false, &mut |x| got.push(x));
            s.push_zeros(2 << 20, false, &mut |x| got.push(x));
            let rest = &img[3 << 20..];
            let mut buf = s.take_buffer(rest.len());
            let carry = buf.len() - rest.len();
            buf[carry..].copy_from_slice(rest);
            s.push(buf, true, &mut |x| got.push(x));
            assert_eq!(got, expect, "{p}");
        }
    }

    #[test]
    fn cdc_cuts_match_the_fastcdc_crate_inside_an_extent() {
        let data = noise(11, 3 << 20);
        let (min, avg, max) = (16384usize, 65536usize, 262144usize);
        let expect: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, min, avg, max)
            .map(|c| c.length)
            .collect();
        let p = ChunkerParams::cdc(min as u32, avg as u32, max as u32).unwrap();
        for window in [4096, 65536, 1 << 20, 4 << 20] {
            let got: Vec<usize> = scan_bytes(p, &data, window)
                .iter()
                .map(|p| match p {
                    Piece::Chunk { data, .. } => data.len(),
                    Piece::Zero { .. } => panic!("no zeros here"),
                })
                .collect();
            assert_eq!(got, expect, "window {window}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Chunks concatenate to the input, respect the size bounds, and do not depend on
        /// the window size (byte-at-a-block feeding = feeding at once).
        #[test]
        fn pieces_reassemble_and_ignore_windowing(
            seed in any::<u64>(),
            spans in prop::collection::vec((any::<bool>(), 1usize..300_000), 0..8),
            which in 0usize..3,
            window_blocks in 1usize..64,
        ) {
            let img = patchwork(seed, &spans);
            let p = params()[which];
            let whole = scan_bytes(p, &img, img.len().div_ceil(4096).max(1) * 4096);
            let windowed = scan_bytes(p, &img, window_blocks * 4096);
            prop_assert_eq!(reassemble(&whole), img);
            prop_assert_eq!(&windowed, &whole);
            for piece in &whole {
                if let Piece::Chunk { data, .. } = piece {
                    prop_assert!(data.len() <= p.max_chunk());
                }
            }
            // Only an extent's last chunk (before zeros or the end) may be cut short: fixed
            // chunks otherwise end on the grid, CDC chunks are at least `min`.
            for pair in whole.windows(2) {
                if let [Piece::Chunk { offset, data }, Piece::Chunk { .. }] = pair {
                    let end = offset + data.len() as u64;
                    match p {
                        ChunkerParams::Fixed { size } => {
                            prop_assert_eq!(end % u64::from(size), 0, "fixed chunk ends off the grid");
                        }
                        ChunkerParams::Cdc { min, .. } => {
                            prop_assert!(data.len() >= min as usize, "CDC chunk of {} < min {}", data.len(), min);
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3))]

        /// An insertion near the start of a 64 MiB random buffer leaves at least 90 % of
        /// the CDC chunks unchanged.
        #[test]
        fn a_small_insertion_keeps_most_cdc_chunks(
            seed in any::<u64>(),
            at in 0usize..100_000,
            inserted in prop::collection::vec(any::<u8>(), 1..200),
        ) {
            let data = noise(seed, 64 << 20);
            let p = ChunkerParams::cdc(65536, 262144, 1 << 20).unwrap();
            let ids = |d: &[u8]| -> std::collections::HashSet<crate::ChunkId> {
                scan_bytes(p, d, 8 << 20)
                    .iter()
                    .filter_map(|p| match p {
                        Piece::Chunk { data, .. } => Some(crate::ChunkId::of(data)),
                        Piece::Zero { .. } => None,
                    })
                    .collect()
            };
            let before = ids(&data);
            let mut edited = data.clone();
            edited.splice(at..at, inserted.iter().copied());
            let after = ids(&edited);
            let kept = before.intersection(&after).count();
            prop_assert!(kept * 10 >= before.len() * 9, "kept {} of {}", kept, before.len());
        }
    }
}
