//! Reading one expert matrix out of the file into memory the cache owns.
//!
//! Direct I/O (`O_DIRECT`) needs the file offset, the length and the buffer
//! address aligned to the device block; expert slices are not. So every read
//! covers the enclosing aligned span of the file, and the slice handed out
//! starts at the same offset modulo [`ALIGN`] as it has in the file, hence
//! with the same alignment as the mmap's bytes.
//!
//! Each slab is its own anonymous mapping (page-aligned, so no padding), not
//! a heap block: evicting an expert unmaps it and its memory goes back to the
//! system at once. Heap blocks of expert size (1-2 MB) stay below glibc's
//! dynamic mmap threshold after the first free, so they were carved from the
//! reader threads' malloc arenas, which kept the freed ones: measured on the
//! Tiny Q4_0 file under a 777 MiB budget, ~120 MB of anonymous memory above
//! the 255 MiB cache (BENCHMARKS.md). With mappings, what the budget counts
//! ([`Slab::footprint`]) is what the process holds.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use memmap2::{MmapMut, MmapOptions};

/// Alignment of direct-I/O offsets, lengths and buffers (the page size covers
/// every block size Linux file systems use).
pub const ALIGN: u64 = 4096;

/// Bytes of one expert matrix, owned.
#[derive(Debug)]
pub struct Slab {
    buf: MmapMut,
    start: usize,
    len: usize,
}

impl Slab {
    /// The matrix bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Memory the slab holds (what the budget counts): whole pages.
    pub fn footprint(&self) -> u64 {
        whole_pages(self.buf.len() as u64)
    }
}

/// `len` rounded up to whole pages (the kernel's size of a mapping of `len`
/// bytes: 4 KiB pages on x86-64, 16 KiB on a Pi 5's kernel).
fn whole_pages(len: u64) -> u64 {
    let page = super::madvise::page() as u64;
    len.div_ceil(page) * page
}

/// Most memory a [`ExpertFile::read`] of `len` bytes takes: the aligned span
/// reaches at most one [`ALIGN`] unit beyond each end.
pub fn bound(len: usize) -> u64 {
    whole_pages(len as u64 + 2 * ALIGN)
}

/// The file opened for expert reads: with `O_DIRECT` when asked and the file
/// system allows it.
#[derive(Debug)]
pub struct ExpertFile {
    file: File,
    direct: bool,
}

impl ExpertFile {
    /// Opens `path` read-only, direct when `direct` and supported.
    pub fn open(path: &Path, direct: bool) -> io::Result<ExpertFile> {
        if direct {
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(file) => return Ok(ExpertFile { file, direct: true }),
                // tmpfs and some FUSE file systems refuse O_DIRECT at open.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ExpertFile {
            file: File::open(path)?,
            direct: false,
        })
    }

    /// Whether reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Bytes `offset..offset + len` of the file.
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Slab> {
        let first = offset / ALIGN * ALIGN;
        let end = (offset + len as u64).div_ceil(ALIGN) * ALIGN;
        let span = ((end - first) as usize).max(ALIGN as usize);
        // Populated up front: one call faults every page in, instead of one
        // fault per page during the read.
        let mut buf = MmapOptions::new().len(span).populate().map_anon()?;
        let dst = &mut buf[..];
        let need = (offset - first) as usize + len;
        let mut got = 0;
        // The aligned span may run past the end of the file: a short read
        // there is fine as long as the wanted bytes arrived.
        while got < need {
            match self.file.read_at(&mut dst[got..], first + got as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "expert bytes {offset}..{} beyond the end of the file",
                            offset + len as u64
                        ),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            // O_DIRECT reads must keep aligned offsets: a short read that is
            // not a multiple of the block means end of file.
            if self.direct && got % ALIGN as usize != 0 && got < need {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short direct read at {first}+{got}"),
                ));
            }
        }
        Ok(Slab {
            buf,
            start: (offset - first) as usize,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Every read, at unaligned offsets and lengths up to the file's last
    /// byte, returns exactly the file's bytes, keeping their alignment.
    #[test]
    fn reads_return_the_file_bytes_at_any_offset() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..3 * ALIGN as usize + 777)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        f.write_all(&bytes).unwrap();
        f.flush().unwrap();
        for direct in [true, false] {
            let ef = ExpertFile::open(f.path(), direct).unwrap();
            let n = bytes.len();
            for (off, len) in [
                (0, 1),
                (5, 4096),
                (4095, 2),
                (4096, 4096),
                (100, n - 100),
                (n - 3, 3),
            ] {
                let s = ef.read(off as u64, len).unwrap();
                assert_eq!(
                    s.as_slice(),
                    &bytes[off..off + len],
                    "direct {direct} {off}+{len}"
                );
                assert_eq!(
                    s.as_slice().as_ptr() as usize % ALIGN as usize,
                    off % ALIGN as usize
                );
                assert!(s.footprint() >= len as u64);
                assert!(s.footprint() <= bound(len));
                assert_eq!(s.footprint() % ALIGN, 0);
            }
            assert!(ef.read(n as u64 - 2, 3).is_err(), "past the end");
        }
    }
}
