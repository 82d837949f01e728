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
