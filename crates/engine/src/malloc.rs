//! The allocator settings geosnap runs with. The binary applies them first thing in
//! `main`; benchmarks apply them too, so they measure the pipeline as it runs.

/// Two malloc arenas instead of glibc's eight per core: the restore's and the snapshot's
/// worker threads hand buffers to each other, and with an arena per thread the freed
/// memory piles up (peak RSS of a 2 GiB restore: 176 MiB with the default, 137 MiB with
/// two; no measurable change in time). Three (one per thread of a two-core snapshot) made
/// the engine's pipeline alone faster (snapshots of a 512 MiB image into a `MemStore`:
/// 1.57–1.60 against 1.37–1.49 GiB/s in one round) but not the snapshot of a disk image,
/// and a rescan of an unchanged 4 GiB image took 72–75 MiB instead of 61–64 MiB
/// (`docs/benchmarks.md`).
///
/// And a fixed mmap threshold just above the 1 MiB restore span: glibc otherwise raises
/// it to the largest block freed (the 8 MiB image windows), after which the 2 MiB bounce
/// buffers of direct writes and other large, short-lived blocks are carved out of the
/// arenas and leave them fragmented (peak RSS of an 8 GiB snapshot 218–297 MiB over six
/// runs with the default, 160–187 MiB with this, same time). Fixing it also fixes the trim
/// threshold, at 128 KiB unless set: freed memory then goes back to the kernel at once and
/// is faulted in again (a 2 GiB restore: 200,000–260,000 page faults instead of 27,000, 0.2 s
/// more), so it is set to 64 MiB.
///
/// And 16 MiB of top padding rather than 128 KiB: the main arena grows (`brk`) and new
/// heaps of the other arena are made that much ahead of need. A snapshot's frames are new
/// blocks at the top of an arena, and growing it for each one is a system call that takes
/// the process's memory-map lock, under the arena's lock, while the other core faults pages
/// in (the engine's pipeline alone: 1.41–1.43 GiB/s against 1.34–1.39 over three runs of 24
/// snapshots each; the padding is address space until touched, and peak RSS of the 1 and
/// 8 GiB snapshots and restores stayed within their run-to-run spread).
///
/// Call it before any other thread starts; elsewhere than glibc it does nothing.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; callers run it before other threads
    // exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, (1 << 20) + (64 << 10));
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

/// Hands the pages of every free block of every arena back to the kernel (glibc's
/// `malloc_trim(0)`), whatever the trim threshold says. For a pause between phases of
/// work whose blocks land in different places each time: a restore calls it between
/// windows. Elsewhere than glibc it does nothing.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; live blocks are untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks the kernel to back `buf` with transparent huge pages (2 MiB) where it can: one page
/// fault instead of 512 as fresh memory is first written. For large buffers that are filled
/// once and kept. The kernel may ignore it (huge pages disabled, fragmented memory); it
/// does nothing elsewhere than Linux.
pub fn advise_huge_pages(buf: &mut [std::mem::MaybeUninit<u8>]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_mut_ptr() as usize;
        let end = start + buf.len();
        let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if from < to {
            // SAFETY: the range lies inside `buf`, which this call borrows mutably;
            // MADV_HUGEPAGE changes how the pages are backed, never their contents.
            unsafe {
                libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
            }
        }
    }
}
