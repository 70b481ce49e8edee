//! Sequential read speed of a checkpoint's shard files: the roofline a converter that reads
//! every byte once is measured against.
//!
//! Cold reads drop each file from the page cache first (`fdatasync` so that freshly written pages
//! are clean, then `posix_fadvise(POSIX_FADV_DONTNEED)`), and `mincore` over a mapping checks how
//! much really left the cache, so the report says whether "cold" was cold. Warm reads follow
//! immediately and measure the page-cache copy bandwidth. Reads use one large reused buffer.
//!
//! The cold read is measured twice, through the page cache and with direct I/O (`O_DIRECT`,
//! as `dd iflag=direct` reads), and the roofline is the faster of the two: the converter reads
//! with direct I/O, and on a machine whose page-cache copy is CPU-bound (the 2-vCPU VM: 260-440
//! MB/s buffered against ~940 MB/s direct) a buffered-only roofline would let the converter
//! beat "the disk".

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quant::direct_io::{self, AlignedBuf};
use serde::Serialize;

use super::BenchError;

/// Read buffer: large enough that syscall overhead is negligible.
pub const READ_BUF: usize = 16 << 20;

/// One pass over every file.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReadPass {
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

impl ReadPass {
    fn new(bytes: u64, elapsed: Duration) -> ReadPass {
        let seconds = elapsed.as_secs_f64();
        ReadPass {
            bytes,
            seconds,
            mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
        }
    }
}

/// Cold and warm sequential read of a set of files.
#[derive(Debug, Clone, Serialize)]
pub struct ReadSpeed {
    pub files: usize,
    /// The faster of `cold_buffered` and `cold_direct`: the disk's read roofline.
    pub cold: ReadPass,
    /// Cold read through the page cache.
    pub cold_buffered: ReadPass,
    /// Cold read with direct I/O (`None` where the file system refuses it).
    pub cold_direct: Option<ReadPass>,
    pub warm: ReadPass,
    /// Fraction of the files' pages still resident right after dropping them (0 = fully cold;
    /// `None` where it could not be measured).
    pub resident_after_drop: Option<f64>,
}

/// Writes back and evicts `path` from the page cache. Returns whether the kernel accepted it.
pub fn drop_from_cache(path: &Path) -> Result<bool, BenchError> {
    let file = File::open(path).map_err(|e| BenchError::io(path, e))?;
    // Dirty pages cannot be dropped: make them clean first (a no-op for files long written).
    // Opened read-only, fdatasync still flushes the file's dirty pages on Linux.
    let _ = file.sync_data();
    Ok(fadvise_dontneed(&file))
}

#[cfg(target_os = "linux")]
fn fadvise_dontneed(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the lifetime of `file`; fadvise only takes advice.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn fadvise_dontneed(_file: &File) -> bool {
    false
}

/// Fraction of `path`'s pages resident in the page cache (`None` if it cannot be measured).
#[cfg(target_os = "linux")]
pub fn resident_fraction(path: &Path) -> Option<f64> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len() as usize;
    if len == 0 {
        return Some(0.0);
    }
    // SAFETY: the mapping is read-only and never dereferenced; it only gives mincore an address
    // range. Concurrent truncation of the file cannot cause UB because no byte is read.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(page).ok().filter(|&p| p > 0)?;
    let n_pages = len.div_ceil(page);
    let mut vec = vec![0u8; n_pages];
    // SAFETY: `map` covers `len` bytes starting at a page-aligned address, and `vec` has one
    // byte per page of that range, as mincore requires.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
    Some(resident as f64 / n_pages as f64)
}

#[cfg(not(target_os = "linux"))]
pub fn resident_fraction(_path: &Path) -> Option<f64> {
    None
}

/// Reads `path` to the end through `buf`; returns the bytes read.
pub fn read_through(path: &Path, buf: &mut [u8]) -> Result<u64, BenchError> {
    let mut file = File::open(path).map_err(|e| BenchError::io(path, e))?;
    let mut total = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BenchError::io(path, e)),
        }
    }
}

/// Evicts all `files` and reports how much of them is still resident (byte-weighted).
pub fn drop_all(files: &[PathBuf]) -> Result<Option<f64>, BenchError> {
    let mut resident = 0.0;
    let mut total = 0.0;
    let mut measured = true;
    for f in files {
        drop_from_cache(f)?;
        let len = std::fs::metadata(f)
            .map_err(|e| BenchError::io(f, e))?
            .len() as f64;
        match resident_fraction(f) {
            Some(r) => resident += r * len,
            None => measured = false,
        }
        total += len;
    }
    Ok(measured.then(|| if total > 0.0 { resident / total } else { 0.0 }))
}

/// Reads `path` to the end with direct I/O through `buf`; `None` where direct I/O is refused.
fn read_direct(path: &Path, buf: &mut AlignedBuf) -> Result<Option<u64>, BenchError> {
    let Some(mut file) = direct_io::open(path, false) else {
        return Ok(None);
    };
    let mut total = 0u64;
    loop {
        // Whole aligned buffers from aligned offsets; only the last read (at the end of the
        // file) is short, and the one after it returns 0.
        match file.read(buf.as_mut_slice()) {
            Ok(0) => return Ok(Some(total)),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if direct_io::is_unsupported(&e) => return Ok(None),
            Err(e) => return Err(BenchError::io(path, e)),
        }
    }
}

fn direct_pass(files: &[PathBuf]) -> Result<Option<ReadPass>, BenchError> {
    let mut buf = AlignedBuf::with_len(READ_BUF).map_err(|e| BenchError::io(&files[0], e))?;
    let start = Instant::now();
    let mut bytes = 0;
    for f in files {
        match read_direct(f, &mut buf)? {
            Some(n) => bytes += n,
            None => return Ok(None),
        }
    }
    Ok(Some(ReadPass::new(bytes, start.elapsed())))
}

fn pass(files: &[PathBuf], buf: &mut [u8]) -> Result<ReadPass, BenchError> {
    let start = Instant::now();
    let mut bytes = 0;
    for f in files {
        bytes += read_through(f, buf)?;
    }
    Ok(ReadPass::new(bytes, start.elapsed()))
}

/// Measures a cold buffered, a warm, then a cold direct sequential read of `files`.
pub fn measure(files: &[PathBuf]) -> Result<ReadSpeed, BenchError> {
    let mut buf = vec![0u8; READ_BUF];
    let resident_after_drop = drop_all(files)?;
    let cold_buffered = pass(files, &mut buf)?;
    let warm = pass(files, &mut buf)?;
    // Direct reads go to the disk whatever is cached; dropping first keeps the two cold
    // passes alike (and the converter after this starts from an empty cache either way).
    let cold_direct = if files.is_empty() {
        None
    } else {
        drop_all(files)?;
        direct_pass(files)?
    };
    let cold = match cold_direct {
        Some(d) if d.mb_per_s > cold_buffered.mb_per_s => d,
        _ => cold_buffered,
    };
    Ok(ReadSpeed {
        files: files.len(),
        cold,
        cold_buffered,
        cold_direct,
        warm,
        resident_after_drop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_byte_and_can_evict() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        let b = dir.path().join("b.bin");
        std::fs::write(&a, vec![7u8; 3 << 20]).unwrap();
        std::fs::write(&b, vec![1u8; 12345]).unwrap();
        let files = vec![a.clone(), b];
        let r = measure(&files).unwrap();
        assert_eq!(r.files, 2);
        assert_eq!(r.cold.bytes, (3 << 20) + 12345);
        assert_eq!(r.warm.bytes, r.cold.bytes);
        assert_eq!(r.cold_buffered.bytes, r.cold.bytes);
        // Where direct I/O works (not on tmpfs) it reads the same bytes, the short tail of `b`
        // included; the roofline is the faster pass.
        if let Some(d) = r.cold_direct {
            assert_eq!(d.bytes, r.cold.bytes);
            assert!(r.cold.mb_per_s >= d.mb_per_s.max(r.cold_buffered.mb_per_s));
        }
        // After a buffered read the file is cached (measure ends with the direct pass, which
        // left it uncached); after dropping it (clean pages) it is not.
        read_through(&a, &mut vec![0u8; READ_BUF]).unwrap();
        if let Some(f) = resident_fraction(&a) {
            assert!(f > 0.99, "resident after warm read: {f}");
            let after = drop_all(&[a]).unwrap().unwrap();
            // tmpfs cannot drop pages; every disk file system can.
            assert!(!(0.01..=0.99).contains(&after), "partial eviction {after}");
        }
    }
}
