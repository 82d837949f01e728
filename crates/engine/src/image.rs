//! Raw disk images, read with bounded memory; holes are found with `SEEK_DATA`/`SEEK_HOLE`
//! and never read.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// An open raw disk image (a regular file or a block device).
#[derive(Debug)]
pub struct Image {
    file: File,
    path: PathBuf,
    size: u64,
    sparse_aware: bool,
}

impl Image {
    /// Opens `path` read-only and finds its size.
    pub fn open(path: &Path) -> Result<Image, Error> {
        let image_err = |source| Error::Image {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(image_err)?;
        if meta.is_dir() {
            return Err(Error::ImageIsDirectory {
                path: path.to_path_buf(),
            });
        }
        let mut file = File::open(path).map_err(image_err)?;
        let size = file.seek(SeekFrom::End(0)).map_err(image_err)?;
        let mut image = Image {
            file,
            path: path.to_path_buf(),
            size,
            sparse_aware: true,
        };
        // Filesystems without SEEK_DATA answer EINVAL: then every byte counts as data.
        if size > 0 && image.seek(0, libc::SEEK_DATA).is_err() {
            image.sparse_aware = false;
        }
        Ok(image)
    }

    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file (for metadata such as mtime and inode).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn seek(&self, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let off = libc::off_t::try_from(pos).map_err(|_| io::Error::other("offset too large"))?;
        // SAFETY: lseek on an fd we own; it only moves the file position, which no other
        // code relies on (all reads are positional).
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(r as u64))
    }

    /// The first offset at or after `pos` that holds data, `None` if only a hole follows.
    pub fn next_data(&self, pos: u64) -> Result<Option<u64>, Error> {
        if pos >= self.size {
            return Ok(None);
        }
        if !self.sparse_aware {
            return Ok(Some(pos));
        }
        self.seek(pos, libc::SEEK_DATA).map_err(|e| self.changed(e))
    }

    /// The first offset at or after `pos` that starts a hole (or the end of the image).
    pub fn next_hole(&self, pos: u64) -> Result<u64, Error> {
        if !self.sparse_aware || pos >= self.size {
            return Ok(self.size);
        }
        Ok(self
            .seek(pos, libc::SEEK_HOLE)
            .map_err(|e| self.changed(e))?
            .unwrap_or(self.size)
            .min(self.size))
    }

    /// Appends the image bytes `[pos, pos + len)` to `buf`: data is read, holes are zeros.
    pub fn read_into(&self, pos: u64, len: usize, buf: &mut Vec<u8>) -> Result<(), Error> {
        let start = buf.len();
        buf.resize(start + len, 0);
        self.read_at(pos, &mut buf[start..])
    }

    /// Fills `dst` with the image bytes from `pos` on: data is read, holes are zeroed, so
    /// whatever `dst` held before is overwritten (a reused buffer need not be cleared).
    pub fn read_at(&self, pos: u64, dst: &mut [u8]) -> Result<(), Error> {
        let end = pos + dst.len() as u64;
        let mut p = pos;
        while p < end {
            let d = match self.next_data(p)? {
                Some(d) if d < end => d,
                _ => end,
            };
            dst[(p - pos) as usize..(d - pos) as usize].fill(0);
            if d == end {
                break;
            }
            let h = self.next_hole(d)?.min(end);
            self.file
                .read_exact_at(&mut dst[(d - pos) as usize..(h - pos) as usize], d)
                .map_err(|e| self.changed(e))?;
            p = h;
        }
        Ok(())
    }

    fn changed(&self, source: io::Error) -> Error {
        Error::ImageChanged {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_buffer_is_overwritten_with_data_and_zeroed_over_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        // data, a 1 MiB hole, data, and a hole up to the end.
        let f = File::create(&path).unwrap();
        f.write_all_at(&[7u8; 4096], 0).unwrap();
        f.write_all_at(&[9u8; 4096], (1 << 20) + 4096).unwrap();
        f.set_len(3 << 20).unwrap();
        drop(f);
        let image = Image::open(&path).unwrap();
        let expect = std::fs::read(&path).unwrap();
        // Every window placement, into a buffer full of stale bytes.
        for (pos, len) in [
            (0, 3 << 20),
            (100, 8192),
            (4096, 1 << 20),
            ((1 << 20) + 8000, 5000),
        ] {
            let mut buf = vec![0xAAu8; len];
            image.read_at(pos, &mut buf).unwrap();
            assert!(
                buf == expect[pos as usize..pos as usize + len],
                "window at {pos} of {len}"
            );
        }
        // And appended to a buffer that already holds something.
        let mut buf = b"carry".to_vec();
        image.read_into(4090, 16, &mut buf).unwrap();
        assert_eq!(&buf[..5], b"carry");
        assert_eq!(buf[5..], expect[4090..4106]);
    }
}
