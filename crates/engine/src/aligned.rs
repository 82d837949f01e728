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

    /// A buffer that holds nothing and owns no allocation.
    const fn empty() -> AlignedBuf {
        AlignedBuf {
            ptr: NonNull::dangling(),
            cap: 0,
            len: 0,
        }
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

/// Smallest and largest sizes [`pooled`] keeps buffers of: powers of two between them.
const POOL_MIN: usize = 64 << 10;
const POOL_MAX: usize = 4 << 20;
const POOL_CLASSES: usize = (POOL_MAX / POOL_MIN).trailing_zeros() as usize + 1;

/// Bytes of free buffers kept per size class.
const POOL_BYTES: usize = 32 << 20;

/// Free buffers by size class (`POOL_MIN << i`).
static POOL: [std::sync::Mutex<Vec<AlignedBuf>>; POOL_CLASSES] =
    [const { std::sync::Mutex::new(Vec::new()) }; POOL_CLASSES];

/// An empty page-aligned buffer with room for at least `len` bytes that goes back to a
/// process-wide pool when dropped (for sizes up to 4 MiB; larger ones are freed). A restore
/// decodes every frame into one of these: taking them from glibc's arenas each time left
/// the arenas fragmented by the alignment (peak RSS of a 2 GiB restore 83–85 MiB against
/// 59 MiB with unaligned buffers), and fresh memory must be faulted in again.
pub fn pooled(len: usize) -> io::Result<Pooled> {
    let class = (len.max(POOL_MIN).next_power_of_two() / POOL_MIN).trailing_zeros() as usize;
    let reused = POOL
        .get(class)
        .and_then(|p| p.lock().ok().and_then(|mut free| free.pop()));
    let buf = match reused {
        Some(mut b) => {
            b.clear();
            b
        }
        None if class < POOL_CLASSES => AlignedBuf::with_capacity(POOL_MIN << class)?,
        None => AlignedBuf::with_capacity(len)?,
    };
    Ok(Pooled(buf))
}

/// A buffer from [`pooled`].
#[derive(Debug)]
pub struct Pooled(AlignedBuf);

impl Pooled {
    /// The buffer.
    pub fn buf(&mut self) -> &mut AlignedBuf {
        &mut self.0
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let b = std::mem::replace(&mut self.0, AlignedBuf::empty());
        let class = (b.cap / POOL_MIN).trailing_zeros() as usize;
        if b.cap.is_power_of_two()
            && b.cap >= POOL_MIN
            && class < POOL_CLASSES
            && let Some(Ok(mut free)) = POOL.get(class).map(|p| p.lock())
            && free.len() * b.cap < POOL_BYTES
        {
            free.push(b);
        }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

// SAFETY: `as_slice` covers only the `len` initialised bytes, `capacity` and `as_mut_ptr`
// describe the allocation, and `filled_until` records a length the decompressor reports to
// have written from the start of it, which is never more than `capacity`.
unsafe impl zstd::zstd_safe::WriteBuf for AlignedBuf {
    fn as_slice(&self) -> &[u8] {
        AlignedBuf::as_slice(self)
    }

    fn capacity(&self) -> usize {
        self.cap
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    unsafe fn filled_until(&mut self, n: usize) {
        self.len = n.min(self.cap);
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
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

/// Whether `data` may be handed to a direct write as it is: its address and its length
/// are [`ALIGN`]ed.
pub fn is_aligned(data: &[u8]) -> bool {
    (data.as_ptr() as usize).is_multiple_of(ALIGN) && data.len().is_multiple_of(ALIGN)
}

/// Reads `len` bytes of `file` from `offset` into a new buffer, fewer only where the file
/// ends first: positional reads into memory that is not cleared beforehand (clearing a
/// buffer only to overwrite it cost a fortieth of a restore's CPU).
pub fn read_at_most(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
    while buf.len() < len {
        let at = buf.len();
        let Ok(pos) = libc::off_t::try_from(offset + at as u64) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: the kernel writes at most `len - at` bytes into the buffer's spare
        // capacity, which holds at least that many.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(at).cast(),
                len - at,
                pos,
            )
        };
        match n {
            0 => break,
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: the kernel has just written these `n` bytes.
            n => unsafe { buf.set_len(at + n as usize) },
        }
    }
    Ok(buf)
}

/// Writes `parts` one after another at `offset` with `pwritev`, up to 1,024 of them per
/// call: on a direct descriptor, chunks already in aligned buffers go to the disk without
/// first being copied into one (each part must then be [`is_aligned`]).
pub fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let mut first = 0;
    while first < iov.len() {
        let last = (first + 1024).min(iov.len());
        let at = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: each iovec points into a slice of `parts`, alive for this call, for at most
        // its length; pwritev only reads through them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov[first..last].as_ptr(),
                (last - first) as libc::c_int,
                at,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize;
        offset += n as u64;
        // Past what was written: whole parts, then into the part it stopped in.
        while n > 0 && first < iov.len() {
            if n >= iov[first].iov_len {
                n -= iov[first].iov_len;
                first += 1;
            } else {
                // SAFETY: n is less than this part's length: still inside its slice.
                iov[first].iov_base = unsafe { iov[first].iov_base.cast::<u8>().add(n) }.cast();
                iov[first].iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
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

    #[test]
    fn chunks_of_a_decoded_frame_go_to_a_direct_write_as_they_are() {
        use crate::ChunkId;
        use crate::codec::{Decoder, Encoder};
        // Four 16 KiB chunks and one of 5000 bytes, in one frame.
        let parts: Vec<Vec<u8>> = (0..5u8)
            .map(|i| {
                let n = if i == 4 { 5000 } else { 16 << 10 };
                (0..n).map(|j| (j as u8).wrapping_mul(i + 1)).collect()
            })
            .collect();
        let chunks: Vec<(ChunkId, &[u8])> = parts
            .iter()
            .map(|p| (ChunkId::of(p), p.as_slice()))
            .collect();
        let frame = Encoder::new(1).unwrap().encode(&chunks).unwrap();
        let decoded = Decoder::new()
            .unwrap()
            .decode_verified(&frame.bytes)
            .unwrap();
        let got: Vec<bytes::Bytes> = decoded.chunks().map(|(_, b)| b).collect();
        // The 16 KiB ones sit aligned in the decoded buffer; the last is too short.
        assert!(got[..4].iter().all(|c| is_aligned(c)));
        assert!(!is_aligned(&got[4]));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(80 << 10)
            .unwrap();
        let file = open_direct(&path)
            .unwrap_or_else(|| std::fs::OpenOptions::new().write(true).open(&path).unwrap());
        let four: Vec<&[u8]> = got[..4].iter().map(|c| &c[..]).collect();
        write_all_vectored_at(&file, &four, 8 << 10).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert!(back[..8 << 10].iter().all(|&x| x == 0));
        assert_eq!(back[8 << 10..72 << 10], parts[..4].concat()[..]);
        assert!(back[72 << 10..].iter().all(|&x| x == 0));

        // More parts than one call takes, through the page cache.
        let buffered = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let bytes: Vec<[u8; 3]> = (0..3000u32).map(|i| [i as u8, (i >> 8) as u8, 1]).collect();
        let many: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
        write_all_vectored_at(&buffered, &many, 0).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back[..9000], bytes.concat()[..]);
    }

    #[test]
    fn pooled_buffers_are_aligned_big_enough_empty_and_reused() {
        // A size class of its own in this test process (3 MiB rounds up to 4 MiB).
        let mut a = pooled(3 << 20).unwrap();
        assert!(a.buf().is_empty());
        a.buf().extend_from_slice(&[9u8; 100]).unwrap();
        assert_eq!(a.as_ref(), &[9u8; 100][..]);
        let at = a.as_ref().as_ptr() as usize;
        assert_eq!(at % ALIGN, 0);
        drop(a);
        let mut b = pooled(3 << 20).unwrap();
        assert!(b.buf().is_empty(), "a reused buffer starts empty");
        assert_eq!(
            b.as_ref().as_ptr() as usize,
            at,
            "the freed buffer is handed out again"
        );
        // Larger than the largest class: a buffer of its own, freed when dropped.
        let mut big = pooled(5 << 20).unwrap();
        big.buf().extend_from_slice(&vec![1u8; 5 << 20]).unwrap();
        assert_eq!(big.as_ref().len(), 5 << 20);
    }
}
