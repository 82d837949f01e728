//! Large slabs of memory for copies that are written once and kept: the in-memory stores
//! of benchmarks and tests (`MemStore`, `memory://` regions).
//!
//! A store that keeps everything it is given grows by hundreds of MiB per snapshot. In
//! 4 KiB pages that growth costs a page fault for every 4 KiB stored, on whichever core
//! writes it; the engine's pipeline bench spent about a tenth of its CPU time there — the
//! store's cost, not the pipeline's (`docs/benchmarks.md`). Slabs are 2 MiB-aligned and ask
//! the kernel for 2 MiB pages instead. Each slab is filled by one thread at a time, and the
//! copies in it share it (`Bytes`), so it is freed with the last of them. A copy larger
//! than a quarter of a slab (a pack) gets a block of its own, its size rounded up to 2 MiB.
//!
//! Even in huge pages, fresh memory is memory the kernel must find and clear: a snapshot of
//! a 1 GiB image into three memory regions spent 0.5–1.7 s of system time there, against
//! about 2.2 s of its own work. A process that measures the same work several times
//! ([`keep_freed`], `geosnap bench`) keeps the slabs of one run's dropped stores for the
//! next, as a real store's disk or network would not have to be found again.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Bytes of memory a slab holds.
pub const SLAB: usize = 32 << 20;

/// Copies larger than this get a block of their own (their size rounded up to 2 MiB)
/// instead of a place in a shared slab: a 16 MiB pack would otherwise leave most of a
/// slab's second half unused, every time.
const OWN_BLOCK_ABOVE: usize = SLAB / 4;

/// Blocks start on a huge-page boundary and are whole huge pages, so all of one can be
/// backed by 2 MiB pages.
const HUGE: usize = 2 << 20;

/// Bytes of freed blocks the process keeps for new ones ([`keep_freed`]).
static KEEP: AtomicUsize = AtomicUsize::new(0);

/// Freed blocks kept for new ones.
static FREED: Mutex<Vec<Raw>> = Mutex::new(Vec::new());

/// Keep up to `bytes` of memory of freed slabs and blocks for those made after, in this
/// process, instead of returning it to the kernel; 0 (the default) keeps none and frees
/// what was kept. For benchmarks that measure a store-filling run several times: only the
/// first pays for fresh memory.
pub fn keep_freed(bytes: usize) {
    KEEP.store(bytes, Ordering::Relaxed);
    let mut dropped = Vec::new();
    {
        let mut freed = freed();
        let mut total: usize = freed.iter().map(|r| r.cap).sum();
        while total > bytes {
            let Some(raw) = freed.pop() else { break };
            total -= raw.cap;
            dropped.push(raw);
        }
    }
    dropped.into_iter().for_each(Raw::free);
}

/// Bytes of freed slabs and blocks kept now.
pub fn kept() -> usize {
    freed().iter().map(|r| r.cap).sum()
}

/// The kept blocks (a panic elsewhere while they were locked leaves them as they were:
/// a list of whole blocks, still right).
fn freed() -> std::sync::MutexGuard<'static, Vec<Raw>> {
    FREED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One block of memory, whose bytes are only ever written through its pointer before a
/// [`Piece`] exposes them.
struct Raw {
    ptr: NonNull<u8>,
    /// A multiple of [`HUGE`], with which it was allocated.
    cap: usize,
}

// SAFETY: a `Raw` is plain memory owned by whoever holds it; nothing in it is tied to a thread.
unsafe impl Send for Raw {}

impl Raw {
    fn layout(cap: usize) -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(cap, HUGE).ok()
    }

    /// A block of at least `need` bytes (`need` > 0): the smallest kept one that is at
    /// most a quarter larger than `need` rounded up to 2 MiB, else fresh memory the kernel
    /// may back with huge pages; `None` if no such block can be laid out.
    fn new(need: usize) -> Option<Raw> {
        let cap = need.checked_next_multiple_of(HUGE)?;
        // Nothing is kept unless a process asked for it (and then the lock is worth it).
        if KEEP.load(Ordering::Relaxed) > 0 {
            let mut freed = freed();
            let fits = |r: &Raw| r.cap >= cap && r.cap - cap <= cap / 4;
            let best = (0..freed.len())
                .filter(|&i| fits(&freed[i]))
                .min_by_key(|&i| freed[i].cap);
            if let Some(i) = best {
                return Some(freed.swap_remove(i));
            }
        }
        let layout = Raw::layout(cap)?;
        // SAFETY: the layout has a non-zero size (cap >= HUGE).
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        // SAFETY: the range is the allocation just made, aligned to 2 MiB (a page); advice
        // changes how its pages are backed, never their contents.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), cap, libc::MADV_HUGEPAGE);
        }
        Some(Raw { ptr, cap })
    }

    fn free(self) {
        if let Some(layout) = Raw::layout(self.cap) {
            // SAFETY: allocated in `Raw::new` with this layout, and owned by `self` alone.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// A block, shared by the copies in it; kept or freed when the last goes.
struct Block(Option<Raw>);

// SAFETY: the bytes a `Block` shares are written before any `Piece` covers them and never
// after; concurrent readers only read.
unsafe impl Sync for Block {}

impl Drop for Block {
    fn drop(&mut self) {
        let Some(raw) = self.0.take() else { return };
        let keep = KEEP.load(Ordering::Relaxed);
        if keep > 0 {
            let mut freed = freed();
            let total: usize = freed.iter().map(|r| r.cap).sum();
            if total + raw.cap <= keep {
                freed.push(raw);
                return;
            }
        }
        raw.free();
    }
}

impl Block {
    fn base(&self) -> *mut u8 {
        self.0
            .as_ref()
            .map_or(NonNull::dangling(), |r| r.ptr)
            .as_ptr()
    }
}

/// The bytes of one copy in a block.
struct Piece {
    block: Arc<Block>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: start..start + len lies in the block and was written before this piece
        // was made; nothing writes it again while the block lives.
        unsafe { std::slice::from_raw_parts(self.block.base().add(self.start), self.len) }
    }
}

/// A slab being filled: bytes from `filled` on are written by whoever holds it.
struct Open {
    block: Arc<Block>,
    filled: usize,
}

/// Copies `parts` into `block` from `start`, at most `len` bytes; returns how many.
///
/// # Safety
/// `start + len` must lie within the block, no [`Piece`] may cover `start..start + len`
/// yet, and no other thread may write there.
unsafe fn fill<'a>(
    block: &Block,
    start: usize,
    len: usize,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> usize {
    let mut written = 0;
    for part in parts {
        let n = part.len().min(len - written);
        // SAFETY: start + written + n <= start + len, inside the block and unshared (the
        // caller's promise).
        unsafe {
            std::ptr::copy_nonoverlapping(part.as_ptr(), block.base().add(start + written), n);
        }
        written += n;
    }
    written
}

/// The concatenated `parts`, at most `len` bytes, in an ordinary allocation (for a size no
/// block can be laid out for).
fn joined<'a>(len: usize, parts: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut whole = Vec::with_capacity(len);
    for part in parts {
        let n = part.len().min(len - whole.len());
        whole.extend_from_slice(&part[..n]);
    }
    Bytes::from(whole)
}

/// A pool of partly filled slabs.
#[derive(Default)]
pub struct Slabs {
    open: Mutex<Vec<Open>>,
}

impl std::fmt::Debug for Slabs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slabs")
            .field("open", &self.open().len())
            .finish()
    }
}

impl Slabs {
    /// An empty pool.
    pub fn new() -> Slabs {
        Slabs::default()
    }

    /// The open slabs (a list that a panic elsewhere cannot leave half-changed).
    fn open(&self) -> std::sync::MutexGuard<'_, Vec<Open>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A copy of the concatenated `parts`, `len` bytes in all: in a shared slab, or in a
    /// block of its own when it is large. Parts beyond `len` bytes are cut off; a
    /// shortfall leaves the copy shorter than `len`.
    pub fn copy<'a>(&self, len: usize, parts: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
        if len == 0 {
            return Bytes::new();
        }
        // A large copy fills a block of its own, never reopened; a small one the tail of
        // an open slab (a slab without room for it is left to the copies it holds).
        let own = len > OWN_BLOCK_ABOVE;
        let open = if own { None } else { self.open().pop() };
        let mut slab = match open {
            Some(slab) if SLAB - slab.filled >= len => slab,
            _ => match Raw::new(if own { len } else { SLAB }) {
                Some(raw) => Open {
                    block: Arc::new(Block(Some(raw))),
                    filled: 0,
                },
                None => return joined(len, parts),
            },
        };
        let start = slab.filled;
        // SAFETY: start + len is within the block (a slab with room for it, or a block of
        // at least len bytes), past every piece made of it so far, and this thread alone
        // holds it.
        let written = unsafe { fill(&slab.block, start, len, parts) };
        slab.filled += written;
        let copy = Bytes::from_owner(Piece {
            block: Arc::clone(&slab.block),
            start,
            len: written,
        });
        if !own && slab.filled < SLAB {
            self.open().push(slab);
        }
        copy
    }
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
