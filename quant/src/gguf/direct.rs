//! The GGUF writer's file sink: appends through an aligned staging buffer and writes each full
//! buffer with direct I/O, past the page cache, where the filesystem allows it (why:
//! [`crate::direct_io`]).
//!
//! Only whole, aligned buffers go direct; the last partial one (and everything, where the
//! filesystem refuses direct I/O) goes through the ordinary handle of the same file. Both
//! write at explicit offsets, so the bytes are the same either way; the caller's `fsync`
//! covers both (one inode).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::direct_io::{self, AlignedBuf};

/// Bytes staged per write: large writes keep the device busy with one request in flight.
const STAGE_BYTES: usize = 8 << 20;
const _: () = assert!(STAGE_BYTES.is_multiple_of(direct_io::ALIGN));

/// An append-only file writer; see the module documentation.
#[derive(Debug)]
pub(super) struct DirectFile {
    /// The ordinary handle: the tail, the fallback, and what `finish` returns.
    file: File,
    /// The same file opened for direct I/O, while the filesystem accepts it.
    direct: Option<File>,
    /// `STAGE_BYTES` long; the first `fill` bytes are staged.
    stage: AlignedBuf,
    fill: usize,
    /// File offset of the first staged byte.
    offset: u64,
}

impl DirectFile {
    /// Wraps `file` (opened for writing at `path`, empty); opens the direct handle if it can.
    pub(super) fn new(file: File, path: &Path) -> io::Result<DirectFile> {
        Ok(DirectFile {
            file,
            direct: direct_io::open(path, true),
            stage: AlignedBuf::with_len(STAGE_BYTES)?,
            fill: 0,
            offset: 0,
        })
    }

    /// Appends `b`.
    pub(super) fn write_all(&mut self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            let k = (STAGE_BYTES - self.fill).min(b.len());
            self.stage.as_mut_slice()[self.fill..self.fill + k].copy_from_slice(&b[..k]);
            self.fill += k;
            b = &b[k..];
            if self.fill == STAGE_BYTES {
                self.flush_stage()?;
            }
        }
        Ok(())
    }

    /// Writes the full staging buffer at `offset`.
    fn flush_stage(&mut self) -> io::Result<()> {
        let stage = &self.stage.as_slice()[..self.fill];
        if let Some(direct) = &self.direct {
            match direct.write_all_at(stage, self.offset) {
                Ok(()) => {
                    self.offset += self.fill as u64;
                    self.fill = 0;
                    return Ok(());
                }
                // The filesystem takes no direct I/O after all: rewrite the whole buffer
                // through the ordinary handle, from now on.
                Err(e) if direct_io::is_unsupported(&e) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(stage, self.offset)?;
        self.offset += self.fill as u64;
        self.fill = 0;
        Ok(())
    }

    /// Writes the staged tail through the ordinary handle and returns it (for `fsync`).
    pub(super) fn finish(self) -> io::Result<File> {
        self.file
            .write_all_at(&self.stage.as_slice()[..self.fill], self.offset)?;
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the chunking, and whether or not the directory takes direct I/O, the file
    /// holds exactly the bytes appended: tails shorter than, equal to and longer than a
    /// stage, with writes straddling stage boundaries.
    #[test]
    fn appended_bytes_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for (total, step) in [
            (0usize, 1usize),
            (1, 1),
            (4095, 1000),
            (STAGE_BYTES, STAGE_BYTES),
            (STAGE_BYTES + 1, 3 << 20),
            (2 * STAGE_BYTES + 12_345, 1_000_003),
        ] {
            let path = dir.path().join(format!("f{total}"));
            let file = File::create(&path).unwrap();
            let mut w = DirectFile::new(file, &path).unwrap();
            let data: Vec<u8> = (0..total).map(|i| (i * 31 + i / 7) as u8).collect();
            for c in data.chunks(step) {
                w.write_all(c).unwrap();
            }
            w.finish().unwrap().sync_all().unwrap();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                data,
                "total {total} step {step}"
            );
        }
    }
}
