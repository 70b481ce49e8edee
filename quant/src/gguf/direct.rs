//! The GGUF writer's file sink: appends through aligned staging buffers and writes each full
//! buffer with direct I/O, past the page cache, where the filesystem allows it (why:
//! [`crate::direct_io`]), on a writer thread of its own while the next buffer fills. Callers
//! may fill the buffer in place ([`DirectFile::space`]) rather than copy bytes into it.
//!
//! Only whole, aligned buffers go direct; the last partial one (and everything, where the
//! filesystem refuses direct I/O) goes through the ordinary handle of the same file. Both
//! write at explicit offsets, so the bytes are the same either way; the caller's `fsync`
//! covers both (one inode).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::direct_io::{self, AlignedBuf};

/// Bytes staged per write: large writes keep the device busy with one request in flight.
const STAGE_BYTES: usize = 8 << 20;
const _: () = assert!(STAGE_BYTES.is_multiple_of(direct_io::ALIGN));

/// Staging buffers at most: one being filled while the others wait for or are under the
/// write, so that producing bytes and writing them overlap.
const STAGES: usize = 3;

/// An append-only file writer; see the module documentation.
#[derive(Debug)]
pub(super) struct DirectFile {
    /// `STAGE_BYTES` long; the first `fill` bytes are staged.
    stage: AlignedBuf,
    fill: usize,
    /// File offset of the first staged byte.
    offset: u64,
    /// Staging buffers made so far (at most [`STAGES`]).
    made: usize,
    io: Writer,
}

/// A full stage for the writer thread: the buffer, its length and its file offset.
type Job = (AlignedBuf, usize, u64);

/// The thread that writes full stages, in order, and hands each buffer back.
#[derive(Debug)]
struct Writer {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<io::Result<AlignedBuf>>,
    /// Returns the ordinary handle when the job queue closes.
    thread: Option<JoinHandle<File>>,
}

impl DirectFile {
    /// Wraps `file` (opened for writing at `path`, empty); opens the direct handle if it can and
    /// starts the writer thread.
    pub(super) fn new(file: File, path: &Path) -> io::Result<DirectFile> {
        let direct = direct_io::open(path, true);
        let (jobs, queue) = mpsc::sync_channel::<Job>(STAGES);
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gguf-write".into())
            .spawn(move || {
                let mut direct = direct;
                for (buf, len, offset) in queue {
                    let r = write_at(&file, &mut direct, &buf.as_slice()[..len], offset);
                    let failed = r.is_err();
                    // Stop at the first error: the producer finds it at its next stage.
                    if done_tx.send(r.map(|()| buf)).is_err() || failed {
                        break;
                    }
                }
                file
            })?;
        Ok(DirectFile {
            stage: AlignedBuf::with_len(STAGE_BYTES)?,
            fill: 0,
            offset: 0,
            made: 1,
            io: Writer {
                jobs: Some(jobs),
                done,
                thread: Some(thread),
            },
        })
    }

    /// Appends `b`.
    pub(super) fn write_all(&mut self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            let space = self.space();
            let k = space.len().min(b.len());
            space[..k].copy_from_slice(&b[..k]);
            b = &b[k..];
            self.advance(k)?;
        }
        Ok(())
    }

    /// The unfilled rest of the current staging buffer (never empty): the caller writes the
    /// next bytes of the file into its start in place, then calls [`advance`](Self::advance).
    pub(super) fn space(&mut self) -> &mut [u8] {
        &mut self.stage.as_mut_slice()[self.fill..]
    }

    /// Appends the first `k` bytes of [`space`](Self::space) (`k` at most its length); hands
    /// the staging buffer to the writer thread when it is full.
    pub(super) fn advance(&mut self, k: usize) -> io::Result<()> {
        self.fill = (self.fill + k).min(STAGE_BYTES);
        if self.fill < STAGE_BYTES {
            return Ok(());
        }
        let next = if self.made < STAGES {
            self.made += 1;
            AlignedBuf::with_len(STAGE_BYTES)?
        } else {
            self.io.written()?
        };
        let full = std::mem::replace(&mut self.stage, next);
        self.io.send((full, STAGE_BYTES, self.offset))?;
        self.offset += STAGE_BYTES as u64;
        self.fill = 0;
        Ok(())
    }

    /// Waits for every staged write, writes the staged tail through the ordinary handle and
    /// returns it (for `fsync`).
    pub(super) fn finish(mut self) -> io::Result<File> {
        let file = self.io.close()?;
        file.write_all_at(&self.stage.as_slice()[..self.fill], self.offset)?;
        Ok(file)
    }
}

impl Writer {
    fn send(&mut self, job: Job) -> io::Result<()> {
        let sent = self.jobs.as_ref().map(|j| j.send(job));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped at a write error: report it.
            _ => match self.done.try_iter().find_map(Result::err) {
                Some(e) => Err(e),
                None => Err(io::Error::other("the GGUF writer thread stopped")),
            },
        }
    }

    /// The next written buffer back, or the error its write met.
    fn written(&mut self) -> io::Result<AlignedBuf> {
        self.done
            .recv()
            .map_err(|_| io::Error::other("the GGUF writer thread stopped"))?
    }

    /// Closes the queue, waits for the thread and returns the file, or the first write error.
    fn close(&mut self) -> io::Result<File> {
        self.jobs = None;
        let file = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(file)) => file,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => return Err(io::Error::other("the GGUF writer was closed already")),
        };
        match self.done.try_iter().find_map(Result::err) {
            Some(e) => Err(e),
            None => Ok(file),
        }
    }
}

impl Drop for Writer {
    /// Without `finish` (a failed write): stops the thread and waits for it, so that no write
    /// lands after the caller deletes the temporary file.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `stage` at `offset`: direct where the filesystem takes it, else (from then on)
/// through the ordinary handle.
fn write_at(file: &File, direct: &mut Option<File>, stage: &[u8], offset: u64) -> io::Result<()> {
    if let Some(d) = direct {
        match d.write_all_at(stage, offset) {
            Ok(()) => return Ok(()),
            // The filesystem takes no direct I/O after all: rewrite the whole buffer
            // through the ordinary handle, from now on.
            Err(e) if direct_io::is_unsupported(&e) => *direct = None,
            Err(e) => return Err(e),
        }
    }
    file.write_all_at(stage, offset)
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
