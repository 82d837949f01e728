//! Page-aligned byte buffers and direct (`O_DIRECT`) writes.
//!
//! Writing a restored image or a pack through the page cache costs a copy into freshly
//! allocated cache pages and then the kernel's write-back, on the same two cores that hash,
//! compress and decompress. Direct I/O hands the buffer to the disk instead; it needs the
//! buffer, the file offset and the length aligned to the filesystem's block size ([`ALIGN`]
//! covers every block size Linux filesystems use). Measured in `docs/benchmarks.md`.

use std::alloc::Layout;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// Alignment of buffers, offsets and lengths for direct I/O.
pub const ALIGN: usize = 4096;

/// A growable byte buffer whose start is [`ALIGN`]-aligned.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads, like Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl AlignedBuf {
    /// An empty buffer with room for `cap` bytes (rounded up to [`ALIGN`]).
    pub fn with_capacity(cap: usize) -> io::Result<AlignedBuf> {
        let cap = cap.max(ALIGN).div_ceil(ALIGN) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).map_err(io::Error::other)?;
        // SAFETY: the layout's size is at least ALIGN, never zero.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "aligned buffer"))?;
        Ok(AlignedBuf { ptr, cap, len: 0 })
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the contents, keeps the allocation.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `data`, growing if needed.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> io::Result<()> {
        if self.len + data.len() > self.cap {
            let mut bigger = AlignedBuf::with_capacity((self.len + data.len()).max(2 * self.cap))?;
            bigger.extend_from_slice(self.as_slice())?;
            *self = bigger;
        }
        // SAFETY: room for data.len() bytes after len was ensured above; the source is a
        // distinct slice (it cannot alias our allocation through &mut self).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                data.len(),
            );
        }
        self.len += data.len();
        Ok(())
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised and owned by us.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Layout::from_size_align(self.cap, ALIGN) {
            // SAFETY: allocated in `with_capacity` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// Opens `path` (an existing file) for direct writes; `None` where the filesystem does not
/// do direct I/O (tmpfs), so callers write through the page cache instead.
pub fn open_direct(path: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Whether a write of `len` bytes at `offset` may go through a direct descriptor.
pub fn aligned(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN)
}

/// Turns direct I/O off on `file`, for a last unaligned write.
pub fn stop_direct(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with the flags it reports.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn grows_keeps_bytes_and_stays_aligned() {
        let mut b = AlignedBuf::with_capacity(10).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        b.extend_from_slice(&data[..5000]).unwrap();
        b.extend_from_slice(&data[5000..]).unwrap();
        assert_eq!(b.as_slice(), &data[..]);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn direct_writes_land_where_buffered_reads_find_them() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(3 * ALIGN as u64)
            .unwrap();
        let mut b = AlignedBuf::with_capacity(ALIGN).unwrap();
        b.extend_from_slice(&[7u8; ALIGN]).unwrap();
        match open_direct(&path) {
            Some(f) => f.write_all_at(b.as_slice(), ALIGN as u64).unwrap(),
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .write_all_at(b.as_slice(), ALIGN as u64)
                .unwrap(),
        }
        let back = std::fs::read(&path).unwrap();
        assert!(back[..ALIGN].iter().all(|&x| x == 0));
        assert!(back[ALIGN..2 * ALIGN].iter().all(|&x| x == 7));
        assert!(back[2 * ALIGN..].iter().all(|&x| x == 0));
        assert!(aligned(ALIGN as u64, 2 * ALIGN) && !aligned(1, ALIGN) && !aligned(0, 100));
    }
}
