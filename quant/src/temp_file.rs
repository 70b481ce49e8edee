//! The temporary files every output is written through, and the temporary directories of
//! support files.
//!
//! Outputs (GGUF files, synthesized checkpoints, annotated images) are written under a hidden
//! temporary name beside their destination and renamed into place once complete, so an output
//! path never holds a partial file. This module owns those temporary files and directories
//! (`synth`'s support files, `bench convert`'s output): it names them, deletes them when their
//! owner fails or is dropped, and keeps the list of the live ones so that a process ended by a
//! signal (Ctrl-C, `kill`, a closed terminal) deletes them too ([`remove_live`], which the CLI
//! calls from its signal thread). Without that an interrupted conversion left its hidden
//! `.<name>.tmp-<pid>-<n>` of up to the model's size beside the output: one such leftover of
//! 4 GB, from a synthesis stopped by a timeout, filled the disk of a later CI run.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Distinguishes the temporary files of several writers in one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// The temporary files and directories that exist and are still ours to delete.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The live list; a writer thread that panicked while holding the lock left it whole (each
/// change is one push or one removal).
fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary file beside its destination, deleted on drop unless [`kept`](TempFile::keep).
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates `.<file>.tmp-<pid>-<n>` in `dest`'s directory, exclusively: the guard exists
    /// only once the file was created by us, so a name clash never makes us delete a file we
    /// did not create.
    pub fn create(dest: &Path) -> io::Result<(TempFile, File)> {
        let file_name = dest.file_name().ok_or_else(|| {
            io::Error::new(ErrorKind::InvalidInput, "destination has no file name")
        })?;
        let prefix = format!(".{}.tmp-", file_name.to_string_lossy());
        let (path, file) = create_listed(&parent_dir(dest), &prefix, |path| {
            OpenOptions::new().write(true).create_new(true).open(path)
        })?;
        Ok((TempFile { path, armed: true }, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed into place (or must stay): neither dropping the guard nor
    /// [`remove_live`] deletes anything at its temporary name any more.
    pub fn keep(&mut self) {
        if self.armed {
            self.armed = false;
            unlist(&self.path);
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the error that dropped the writer is what the caller needs to see.
            let _ = fs::remove_file(&self.path);
            unlist(&self.path);
        }
    }
}

/// A fresh directory in `parent`, deleted with its contents on drop and by [`remove_live`].
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<prefix><pid>-<n>` in `parent` (exclusively, as [`TempFile::create`]).
    pub fn create(parent: &Path, prefix: &str) -> io::Result<TempDir> {
        let (path, ()) = create_listed(parent, prefix, |path| fs::create_dir(path))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the directory now and says whether that worked (dropping it ignores a failure).
    pub fn close(self) -> io::Result<()> {
        // Drop then finds nothing to delete and only takes the path off the list.
        fs::remove_dir_all(&self.path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort, as for a file.
        let _ = fs::remove_dir_all(&self.path);
        unlist(&self.path);
    }
}

/// Creates `<prefix><pid>-<n>` in `dir` with `create` (which must fail with `AlreadyExists` on
/// an existing name), listed as live, trying the next `n` on a clash (a stale name of a crashed
/// process that had our pid; never ours to delete).
fn create_listed<T>(
    dir: &Path,
    prefix: &str,
    create: impl Fn(&Path) -> io::Result<T>,
) -> io::Result<(PathBuf, T)> {
    let mut attempts = 0;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{prefix}{}-{n}", std::process::id()));
        // Listed before it exists, so that no moment has it on disk and off the list; a signal
        // in between finds nothing to delete at that name.
        live().push(path.clone());
        match create(&path) {
            Ok(made) => return Ok((path, made)),
            Err(e) => {
                unlist(&path);
                if e.kind() != ErrorKind::AlreadyExists || attempts == 16 {
                    return Err(e);
                }
                attempts += 1;
            }
        }
    }
}

fn unlist(path: &Path) {
    let mut live = live();
    if let Some(i) = live.iter().position(|p| p == path) {
        live.swap_remove(i);
    }
}

/// Deletes every live temporary file and directory and returns how many there were: for a
/// process that is about to end by a signal, whose owners will not get to drop their guards.
pub fn remove_live() -> usize {
    let mut live = live();
    for path in live.iter() {
        // A directory refuses `remove_file`.
        let _ = fs::remove_file(path).or_else(|_| fs::remove_dir_all(path));
    }
    let n = live.len();
    live.clear();
    n
}

/// The directory `path` is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pvl-temp-file-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn listed(path: &Path) -> bool {
        live().iter().any(|p| p == path)
    }

    // `remove_live` deletes every live file of the process, the other tests' included, so it
    // is tested from outside: `tests/it/faults.rs` stops the CLI mid-write with signals.

    #[test]
    fn dropped_guards_delete_their_files_and_kept_ones_do_not() {
        let dir = scratch("drop");
        let dest = dir.join("out.gguf");
        let (tmp, _file) = TempFile::create(&dest).unwrap();
        let path = tmp.path().to_path_buf();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".out.gguf.tmp-"), "{name}");
        assert!(path.exists() && listed(&path));
        drop(tmp);
        assert!(!path.exists() && !listed(&path));

        let (mut tmp, _file) = TempFile::create(&dest).unwrap();
        fs::rename(tmp.path(), &dest).unwrap();
        tmp.keep();
        let path = tmp.path().to_path_buf();
        drop(tmp);
        assert!(dest.exists() && !listed(&path));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_directories_go_with_their_contents() {
        let parent = scratch("dir");
        let dir = TempDir::create(&parent, "support-").unwrap();
        let path = dir.path().to_path_buf();
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("support-"));
        fs::write(path.join("config.json"), b"{}").unwrap();
        assert!(listed(&path));
        drop(dir);
        assert!(!path.exists() && !listed(&path));
        let dir = TempDir::create(&parent, "bench-").unwrap();
        let path = dir.path().to_path_buf();
        dir.close().unwrap();
        assert!(!path.exists() && !listed(&path));
        fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn a_destination_without_a_file_name_is_an_error() {
        let err = TempFile::create(Path::new("/")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
