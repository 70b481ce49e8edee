//! Residency of mapped bytes steered with `madvise`: the alternative to an
//! owned cache (`--expert-io madvise`). The experts stay in the file mapping;
//! the store brings an expert's pages in with `MADV_POPULATE_READ` (one
//! blocking call that reads them with the kernel's readahead) and gives them
//! back with `MADV_PAGEOUT` (reclaims the page-cache pages, so they stop
//! counting against a memory limit).

use std::io;

/// Page size (the granule of `madvise` and of anonymous mappings).
pub fn page() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// `bytes` widened to whole pages.
fn pages(bytes: &[u8]) -> (*mut libc::c_void, usize) {
    let p = page();
    let start = bytes.as_ptr() as usize / p * p;
    let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(p) * p;
    (start as *mut libc::c_void, end - start)
}

/// Bytes the pages of `bytes` take.
pub fn footprint(len: usize) -> u64 {
    // Widened by at most one page at each end.
    (len + 2 * page()) as u64
}

fn advise(bytes: &[u8], advice: libc::c_int) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let (addr, len) = pages(bytes);
    // SAFETY: `bytes` is a slice of a live read-only file mapping; widened to
    // whole pages it stays inside that mapping (mappings are page-granular
    // and start page-aligned). Neither advice changes what a later read of
    // those addresses returns: POPULATE_READ faults the file's pages in,
    // PAGEOUT drops them to be re-read from the unchanged file on next use.
    let r = unsafe { libc::madvise(addr, len, advice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the pages of `bytes` into memory now.
pub fn populate(bytes: &[u8]) -> io::Result<()> {
    advise(bytes, libc::MADV_POPULATE_READ)
}

/// Lets the kernel reclaim the pages of `bytes` now (best effort: a page
/// another mapping uses stays).
pub fn page_out(bytes: &[u8]) {
    // Failure leaves the pages for normal reclaim: nothing to report.
    let _ = advise(bytes, libc::MADV_PAGEOUT);
}
