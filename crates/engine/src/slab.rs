//! Large slabs of memory for copies that are written once and kept: the in-memory stores
//! of benchmarks and tests (`MemStore`, `memory://` regions).
//!
//! A store that keeps everything it is given grows by hundreds of MiB per snapshot. In
//! 4 KiB pages that growth costs a page fault for every 4 KiB stored, on whichever core
//! writes it; the engine's pipeline bench spent about a tenth of its CPU time there — the
//! store's cost, not the pipeline's (`docs/benchmarks.md`). Slabs ask the kernel for 2 MiB
//! pages instead. Each slab is filled by one thread at a time, and the copies in it share
//! it (`Bytes`), so it is freed with the last of them.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// Bytes of memory a slab holds.
pub const SLAB: usize = 32 << 20;

/// A pool of partly filled slabs.
#[derive(Debug, Default)]
pub struct Slabs {
    open: Mutex<Vec<BytesMut>>,
}

impl Slabs {
    /// An empty pool.
    pub fn new() -> Slabs {
        Slabs::default()
    }

    /// A copy of the concatenated `parts`, `len` bytes in all, in a slab.
    pub fn copy<'a>(&self, len: usize, parts: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
        let open = self.open.lock().ok().and_then(|mut s| s.pop());
        let mut slab = match open {
            Some(slab) if slab.capacity() - slab.len() >= len => slab,
            // A slab without room for it is left to the copies it holds.
            _ => new_slab(len.max(SLAB)),
        };
        for part in parts {
            slab.extend_from_slice(part);
        }
        debug_assert_eq!(slab.len(), len, "the parts do not add up to len");
        let copy = slab.split().freeze();
        if let Ok(mut s) = self.open.lock() {
            s.push(slab);
        }
        copy
    }
}

/// An empty slab of `capacity` bytes whose pages the kernel may back with huge pages.
fn new_slab(capacity: usize) -> BytesMut {
    let mut slab = BytesMut::with_capacity(capacity);
    crate::malloc::advise_huge_pages(slab.spare_capacity_mut());
    slab
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_keep_their_bytes_across_slabs_and_threads() {
        let slabs = Slabs::new();
        // Sizes that fill a slab unevenly, one larger than a slab, from two threads at once.
        let sizes = [1usize, 4095, 300 << 10, SLAB - 7, SLAB + 1, 0, 257 << 10];
        let made: Vec<(Vec<u8>, Bytes)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2u8)
                .map(|t| {
                    let slabs = &slabs;
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for round in 0..3u8 {
                            for (i, &n) in sizes.iter().enumerate() {
                                let want: Vec<u8> = (0..n)
                                    .map(|k| (k as u8) ^ (i as u8) ^ round.wrapping_mul(31) ^ t)
                                    .collect();
                                let (a, b) = want.split_at(n / 3);
                                out.push((want.clone(), slabs.copy(n, [a, b])));
                            }
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(made.len(), 2 * 3 * sizes.len());
        for (want, got) in &made {
            assert_eq!(got.len(), want.len());
            assert!(
                got[..] == want[..],
                "a copy of {} bytes changed",
                want.len()
            );
        }
    }
}
