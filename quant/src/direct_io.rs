//! Direct I/O (`O_DIRECT`, past the page cache) for streams read or written once: the
//! converter's checkpoint reads (`convert/src/readahead.rs`) and the GGUF writer
//! (`gguf/direct.rs`).
//!
//! Why: through the page cache every byte is copied into (or out of) a freshly allocated
//! cache page. On the 2-vCPU development VM that was most of a conversion's CPU time: `perf`
//! put 57 % of it in the kernel's copy of written bytes (`copy_folio_from_iter_atomic`), and
//! `dd` of 2 GiB took 4.2 s of system time buffered against 0.4 s with `oflag=direct` (reads:
//! 2.9 s against 0.2 s). Direct transfers DMA into a reused, aligned user buffer instead.
//!
//! Direct I/O wants offsets, lengths and buffer addresses aligned; callers keep to [`ALIGN`]
//! and fall back to an ordinary handle of the same file where the filesystem refuses
//! (`EINVAL` at open or at a transfer, see [`is_unsupported`]). Either way the bytes are the
//! same.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Alignment of direct transfers (file offset, length, buffer address): the largest logical
/// block size of common devices.
pub const ALIGN: usize = 4096;

/// Opens `path` with `O_DIRECT` for reading or writing, or `None` where that is refused (or
/// not a Linux system): the caller then uses an ordinary handle.
pub fn open(path: &Path, write: bool) -> Option<File> {
    let mut o = OpenOptions::new();
    o.read(!write).write(write);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_DIRECT);
        o.open(path).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (o, path);
        None
    }
}

/// Whether a direct transfer failed because the file, offset or length does not allow direct
/// I/O (then the ordinary handle does it).
pub fn is_unsupported(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        e.raw_os_error() == Some(libc::EINVAL)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        false
    }
}

/// `x` rounded down to a multiple of [`ALIGN`].
pub fn align_down(x: u64) -> u64 {
    x & !(ALIGN as u64 - 1)
}

/// `x` rounded up to a multiple of [`ALIGN`] (saturating).
pub fn align_up(x: u64) -> u64 {
    align_down(x.saturating_add(ALIGN as u64 - 1))
}

/// A byte buffer whose first byte is [`ALIGN`]-aligned, reused from transfer to transfer.
///
/// An anonymous mapping rather than a heap block: page-aligned as is, returned to the system
/// when dropped (large heap blocks freed by another thread can stay in malloc's arenas), and
/// advised to use huge pages, which makes pinning it for each direct transfer cheaper.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    map: Option<memmap2::MmapMut>,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes (zeroed when first allocated).
    pub fn with_len(len: usize) -> io::Result<AlignedBuf> {
        let mut b = AlignedBuf::default();
        b.set_len(len)?;
        Ok(b)
    }

    /// Makes the buffer `len` bytes long; it reallocates only to grow, and its contents are
    /// unspecified afterwards (callers overwrite what they use).
    pub fn set_len(&mut self, len: usize) -> io::Result<()> {
        if self.map.as_ref().map_or(0, |m| m.len()) < len {
            self.map = None;
            let map = memmap2::MmapMut::map_anon(len)?;
            // Best effort: without huge pages the buffer works the same.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            self.map = Some(map);
        }
        self.len = len;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |m| &m[..self.len])
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.map {
            Some(m) => &mut m[..self.len],
            None => &mut [],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_stay_aligned_when_they_grow() {
        let mut b = AlignedBuf::with_len(10).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.len(), 10);
        b.as_mut_slice()[9] = 7;
        b.set_len(3 * ALIGN + 5).unwrap();
        assert_eq!(b.as_mut_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_slice().len(), 3 * ALIGN + 5);
        b.set_len(0).unwrap();
        assert!(b.is_empty());
        assert!(AlignedBuf::default().as_slice().is_empty());
        assert_eq!(
            (align_down(8191), align_up(4097), align_up(0)),
            (4096, 8192, 0)
        );
    }
}
