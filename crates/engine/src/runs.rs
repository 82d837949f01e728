//! Gathers a restore's verified pieces into long runs before they are written.
//!
//! The restore's threads hand over groups of pieces in the order they finish them, and a
//! group holds what one read of a pack gave: after an incremental snapshot, a run of the
//! first snapshot's chunks in the image is broken by every rewritten chunk, which comes
//! from another pack in another group. Written as they come, such runs are short: 3,131
//! direct writes of 323 KiB on average and 9,097 page-cache writes for the restore of the
//! peer harness's image (b). [`Runs`] holds the pieces whose neighbours in the image are
//! still to come and hands the writer a run once it is complete (both its ends touch a
//! hole, the image's ends, or something already written) or long enough for one efficient
//! write.
//!
//! What it holds is bounded: past `hold` bytes it gives up waiting and hands over the
//! lowest runs as they are, and a piece still held after [`AGE`] more groups is copied out
//! of its decoded frame's buffer (which it could otherwise keep alive, a whole frame for
//! one chunk). The tail of a run that the next group continues is usually written with
//! that group, before it is copied.

use std::collections::{BTreeMap, HashSet};
use std::io;

use bytes::Bytes;

use crate::aligned::AlignedBuf;

/// The image's previous extent is a chunk that ends where this piece starts.
pub const JOINS_BEFORE: u8 = 1;
/// The image's next extent is a chunk that starts where this piece ends.
pub const JOINS_AFTER: u8 = 2;

/// Groups a held piece may wait for while it still shares its decoded frame's buffer;
/// then it is copied into a buffer of its own. With two, a tenth of the bytes of an 8 GiB
/// mixed image's restore were copied (533 MB), mostly run tails waiting for a group the
/// other thread was slower to finish.
pub const AGE: u64 = 4;

/// One chunk's bytes at one place in the image.
#[derive(Clone, Debug)]
pub struct Piece {
    /// Where in the image.
    pub offset: u64,
    /// The verified bytes.
    pub data: Bytes,
    /// [`JOINS_BEFORE`] and [`JOINS_AFTER`]: which neighbours in the image are chunks that
    /// touch this one.
    pub joins: u8,
}

impl Piece {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// Pieces waiting for their neighbours, by offset.
#[derive(Debug)]
pub struct Runs {
    pending: BTreeMap<u64, Held>,
    /// Bytes of the pieces in `pending`.
    held: usize,
    /// Groups taken so far.
    adds: u64,
    /// Offsets where a run already handed over stopped at a neighbour that was not there
    /// yet: the neighbour's run counts that end as closed.
    edges: HashSet<u64>,
    /// A run at least this long is handed over at once, complete or not.
    long: usize,
    /// Bytes held at most before the lowest runs are handed over incomplete.
    hold: usize,
}

#[derive(Debug)]
struct Held {
    piece: Piece,
    /// The group it came with ([`Runs::adds`] then), or `None` once it was copied into a
    /// buffer of its own.
    shared_since: Option<u64>,
}

impl Runs {
    /// Hands over runs of `long` bytes or more at once, and holds at most `hold` bytes.
    pub fn new(long: usize, hold: usize) -> Runs {
        Runs {
            pending: BTreeMap::new(),
            held: 0,
            adds: 0,
            edges: HashSet::new(),
            long: long.max(1),
            hold,
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes a group's pieces and pushes onto `out` every run now ready to be written: its
    /// pieces in order, each starting where the previous ends.
    pub fn add(&mut self, pieces: Vec<Piece>, out: &mut Vec<Vec<Piece>>) -> io::Result<()> {
        self.adds += 1;
        for p in pieces {
            self.held += p.data.len();
            if let Some(old) = self.pending.insert(
                p.offset,
                Held {
                    piece: p,
                    shared_since: Some(self.adds),
                },
            ) {
                self.forget(&old);
            }
        }
        for (start, end) in self.runs() {
            let len = (end - start) as usize;
            if len >= self.long || !self.open_at(start, end) {
                out.push(self.take(start, end));
            }
        }
        if self.held > self.hold {
            for (start, end) in self.runs() {
                if self.held <= self.hold {
                    break;
                }
                out.push(self.take(start, end));
            }
        }
        for h in self.pending.values_mut() {
            if h.shared_since.is_some_and(|since| self.adds - since >= AGE) {
                h.piece.data = own(&h.piece.data)?;
                h.shared_since = None;
            }
        }
        Ok(())
    }

    /// Every run still held, in order (the workers are done).
    pub fn finish(&mut self, out: &mut Vec<Vec<Piece>>) {
        for (start, end) in self.runs() {
            out.push(self.take(start, end));
        }
        self.edges.clear();
    }

    /// The held runs as (start, end): pieces that touch one another.
    fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for h in self.pending.values() {
            match runs.last_mut() {
                Some(last) if last.1 == h.piece.offset => last.1 = h.piece.end(),
                _ => runs.push((h.piece.offset, h.piece.end())),
            }
        }
        runs
    }

    /// Whether the run [start, end) still waits for a neighbour at either end.
    fn open_at(&self, start: u64, end: u64) -> bool {
        let first = &self.pending[&start].piece;
        let last = self
            .pending
            .range(..end)
            .next_back()
            .map(|(_, h)| &h.piece)
            .unwrap_or(first);
        (first.joins & JOINS_BEFORE != 0 && !self.edges.contains(&start))
            || (last.joins & JOINS_AFTER != 0 && !self.edges.contains(&end))
    }

    /// Removes the run [start, end) and notes the ends where it stopped short of a
    /// neighbour (or clears the note its neighbour left).
    fn take(&mut self, start: u64, end: u64) -> Vec<Piece> {
        let keys: Vec<u64> = self.pending.range(start..end).map(|(k, _)| *k).collect();
        let mut run = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(h) = self.pending.remove(&k) {
                self.forget(&h);
                run.push(h.piece);
            }
        }
        if let (Some(first), Some(last)) = (run.first(), run.last()) {
            if first.joins & JOINS_BEFORE != 0 {
                self.toggle(first.offset);
            }
            if last.joins & JOINS_AFTER != 0 {
                self.toggle(last.end());
            }
        }
        run
    }

    fn forget(&mut self, h: &Held) {
        self.held -= h.piece.data.len();
    }

    fn toggle(&mut self, at: u64) {
        if !self.edges.remove(&at) {
            self.edges.insert(at);
        }
    }
}

/// A copy of `data` in a page-aligned buffer of its own (so it can still go to the disk
/// with a direct write).
fn own(data: &Bytes) -> io::Result<Bytes> {
    // A piece of unaligned length goes through the page cache anyway: no page of its own.
    if !data.len().is_multiple_of(crate::aligned::ALIGN) {
        return Ok(Bytes::copy_from_slice(data));
    }
    let mut buf = AlignedBuf::with_capacity(data.len())?;
    buf.extend_from_slice(data)?;
    Ok(Bytes::from_owner(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn piece(offset: u64, len: usize, joins: u8) -> Piece {
        let data: Vec<u8> = (0..len).map(|i| (offset as usize + i) as u8).collect();
        Piece {
            offset,
            data: Bytes::from(data),
            joins,
        }
    }

    fn spans(runs: &[Vec<Piece>]) -> Vec<(u64, u64)> {
        runs.iter()
            .map(|r| (r[0].offset, r[r.len() - 1].end()))
            .collect()
    }

    #[test]
    fn a_run_broken_by_pieces_of_another_group_is_written_once_whole() {
        // Chunks of 4 at 0..40, one extent of the image; chunks 3 and 7 come first.
        let joins = |i: u64| match i {
            0 => JOINS_AFTER,
            9 => JOINS_BEFORE,
            _ => JOINS_BEFORE | JOINS_AFTER,
        };
        let mut runs = Runs::new(1 << 20, 1 << 20);
        let mut out = Vec::new();
        runs.add(
            vec![piece(12, 4, joins(3)), piece(28, 4, joins(7))],
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty(), "nothing is complete yet");
        let rest: Vec<Piece> = (0..10)
            .filter(|i| *i != 3 && *i != 7)
            .map(|i| piece(i * 4, 4, joins(i)))
            .collect();
        runs.add(rest, &mut out).unwrap();
        assert_eq!(spans(&out), vec![(0, 40)]);
        assert_eq!(runs.held(), 0);
    }

    #[test]
    fn a_run_next_to_holes_is_written_at_once_however_short() {
        let mut runs = Runs::new(1 << 20, 1 << 20);
        let mut out = Vec::new();
        runs.add(vec![piece(100, 8, 0), piece(200, 8, JOINS_AFTER)], &mut out)
            .unwrap();
        assert_eq!(spans(&out), vec![(100, 108)]);
        out.clear();
        runs.add(vec![piece(208, 8, JOINS_BEFORE)], &mut out)
            .unwrap();
        assert_eq!(spans(&out), vec![(200, 216)]);
    }

    #[test]
    fn a_long_run_goes_at_once_and_its_neighbour_later_counts_that_end_as_closed() {
        let mut runs = Runs::new(16, 1 << 20);
        let mut out = Vec::new();
        runs.add(vec![piece(0, 16, JOINS_AFTER)], &mut out).unwrap();
        assert_eq!(spans(&out), vec![(0, 16)]);
        out.clear();
        runs.add(vec![piece(16, 4, JOINS_BEFORE)], &mut out)
            .unwrap();
        assert_eq!(
            spans(&out),
            vec![(16, 20)],
            "its left neighbour is on the disk"
        );
        assert!(runs.edges.is_empty());
    }

    #[test]
    fn past_the_hold_the_lowest_runs_go_incomplete() {
        let both = JOINS_BEFORE | JOINS_AFTER;
        let mut runs = Runs::new(1 << 20, 10);
        let mut out = Vec::new();
        runs.add(
            vec![piece(0, 4, both), piece(8, 4, both), piece(16, 4, both)],
            &mut out,
        )
        .unwrap();
        assert_eq!(spans(&out), vec![(0, 4)], "12 bytes held, the hold is 10");
        assert_eq!(runs.held(), 8);
    }

    #[test]
    fn pieces_held_past_age_more_groups_get_buffers_of_their_own() {
        let both = JOINS_BEFORE | JOINS_AFTER;
        let frame = Bytes::from(vec![7u8; 3 * 4096]);
        let shared = |i: usize| Piece {
            offset: i as u64 * 8192,
            data: frame.slice(i * 4096..(i + 1) * 4096),
            joins: both,
        };
        let mut runs = Runs::new(1 << 30, 1 << 30);
        let mut out = Vec::new();
        runs.add(vec![shared(0), shared(1)], &mut out).unwrap();
        runs.add(vec![shared(2)], &mut out).unwrap();
        for _ in 2..AGE {
            runs.add(Vec::new(), &mut out).unwrap();
        }
        assert!(runs.pending.values().all(|h| h.shared_since.is_some()));
        runs.add(Vec::new(), &mut out).unwrap();
        let copied: Vec<u64> = runs
            .pending
            .values()
            .filter(|h| h.shared_since.is_none())
            .map(|h| h.piece.offset)
            .collect();
        assert_eq!(
            copied,
            vec![0, 8192],
            "the first group's two, not the second's"
        );
        runs.add(Vec::new(), &mut out).unwrap();
        assert!(out.is_empty());
        for h in runs.pending.values() {
            assert!(h.shared_since.is_none());
            assert!(crate::aligned::is_aligned(&h.piece.data));
            assert_eq!(&h.piece.data[..], &[7u8; 4096][..]);
        }
    }

    proptest! {
        /// Whatever the grouping and order, every piece comes out exactly once, in runs of
        /// touching pieces, and no more than the hold (plus one group) is ever held.
        #[test]
        fn every_piece_is_written_once_in_touching_runs(
            lens in proptest::collection::vec((1usize..40, any::<bool>()), 1..60),
            seed in any::<u64>(),
            groups in 1usize..8,
            long in 1usize..200,
            hold in 0usize..300,
        ) {
            // Extents one after another; `true` puts a hole before one.
            let mut pieces = Vec::new();
            let mut at = 0u64;
            let mut prev_end: Option<u64> = None;
            for (len, hole) in &lens {
                if *hole { at += 7; }
                let mut joins = 0;
                if prev_end == Some(at) {
                    joins |= JOINS_BEFORE;
                    if let Some(p) = pieces.last_mut() {
                        let p: &mut Piece = p;
                        p.joins |= JOINS_AFTER;
                    }
                }
                pieces.push(piece(at, *len, joins));
                prev_end = Some(at + *len as u64);
                at += *len as u64;
            }
            // Deal them into groups in a shuffled order.
            let mut order: Vec<usize> = (0..pieces.len()).collect();
            let mut s = seed | 1;
            for i in (1..order.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                order.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut dealt: Vec<Vec<Piece>> = vec![Vec::new(); groups];
            for (n, i) in order.into_iter().enumerate() {
                dealt[n % groups].push(pieces[i].clone());
            }
            let mut runs = Runs::new(long, hold);
            let mut out = Vec::new();
            for g in dealt {
                runs.add(g, &mut out).unwrap();
                prop_assert!(runs.held() <= hold);
            }
            // Every piece has come, so every run is closed at both ends: all were written,
            // and no end is left waiting for a neighbour.
            prop_assert_eq!(runs.held(), 0);
            prop_assert!(runs.edges.is_empty());
            runs.finish(&mut out);
            prop_assert_eq!(runs.held(), 0);
            let mut seen: Vec<(u64, Vec<u8>)> = Vec::new();
            for run in &out {
                for w in run.windows(2) {
                    prop_assert_eq!(w[0].end(), w[1].offset);
                }
                seen.extend(run.iter().map(|p| (p.offset, p.data.to_vec())));
            }
            seen.sort();
            let want: Vec<(u64, Vec<u8>)> =
                pieces.iter().map(|p| (p.offset, p.data.to_vec())).collect();
            prop_assert_eq!(seen, want);
        }
    }
}
