//! The streaming GGUF writer.
//!
//! Three stages, each a type, so misuse is a compile error rather than a
//! runtime state check: [`GgufWriter`] collects and validates metadata and
//! tensor infos; [`GgufWriter::create`] writes the header into a temporary
//! file beside the destination and returns a [`GgufDataWriter`] that streams
//! tensor bytes (any chunking) through a bounded buffer (written past the page
//! cache where possible, see `direct.rs`) and pads each tensor;
//! [`GgufDataWriter::finish`] fsyncs and returns a [`PendingFile`] whose
//! [`commit`](PendingFile::commit) renames it into place. Dropping either of
//! the last two without committing deletes the temporary file, so a failed
//! conversion never leaves a truncated model behind.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::direct::DirectFile;
use super::error::GgufError;
use super::reader::{tensor_n_bytes, TensorInfo};
use super::value::{Value, ValueType};
use super::{align_up, GGUF_MAGIC, MAX_DIMS, MAX_NAME_LEN, MAX_STRING_LEN};
use crate::schema;
use crate::temp_file::{parent_dir, TempFile};
use crate::GgmlType;

/// Collects metadata and tensor infos for one GGUF file.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<(String, GgmlType, Vec<u64>, u64)>,
    names: HashSet<String>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty writer with the default alignment of 32 bytes.
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: schema::DEFAULT_ALIGNMENT,
        }
    }

    /// Adds a metadata entry. Rejects duplicate keys, arrays whose elements
    /// do not match the declared element type, nested arrays (ggml cannot
    /// read them), over-long strings, and a `general.alignment` that is not a
    /// power-of-two u32 (a valid one sets this file's alignment).
    pub fn add_kv(&mut self, key: &str, value: Value) -> Result<(), GgufError> {
        if self.keys.contains(key) {
            return Err(GgufError::DuplicateKey {
                key: key.to_owned(),
            });
        }
        check_string_len(key, key.len())?;
        validate_value(key, &value)?;
        if key == schema::general::ALIGNMENT {
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = u64::from(a),
                ref other => {
                    return Err(GgufError::BadAlignment {
                        found: format!("{} {other}", other.type_name()),
                    })
                }
            }
        }
        self.keys.insert(key.to_owned());
        self.metadata.push((key.to_owned(), value));
        Ok(())
    }

    /// Declares a tensor; its data must later be written in declaration
    /// order. Checks: nonempty name shorter than 64 bytes, unique, 1..=4
    /// dims, `ne[0]` a multiple of the block size, no size overflow.
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, ne: &[u64]) -> Result<(), GgufError> {
        if name.is_empty() || name.len() >= MAX_NAME_LEN {
            return Err(GgufError::BadTensorName {
                name: name.to_owned(),
                reason: format!(
                    "length {} bytes, must be 1..{MAX_NAME_LEN} (ggml's GGML_MAX_NAME)",
                    name.len()
                ),
            });
        }
        if self.names.contains(name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_owned(),
            });
        }
        if ne.is_empty() || ne.len() > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                name: name.to_owned(),
                n_dims: ne.len() as u64,
                min: 1,
                max: MAX_DIMS as u64,
            });
        }
        let n_bytes = tensor_n_bytes(name, ty, ne)?;
        self.names.insert(name.to_owned());
        self.tensors
            .push((name.to_owned(), ty, ne.to_vec(), n_bytes));
        Ok(())
    }

    /// The tensor infos with their data offsets, as they will be written.
    pub fn tensor_infos(&self) -> Result<Vec<TensorInfo>, GgufError> {
        let mut offset = 0u64;
        let mut out = Vec::with_capacity(self.tensors.len());
        for (name, ty, ne, n_bytes) in &self.tensors {
            out.push(TensorInfo {
                name: name.clone(),
                ty: *ty,
                ne: ne.clone(),
                offset,
                n_bytes: *n_bytes,
            });
            offset = offset
                .checked_add(*n_bytes)
                .and_then(|end| align_up(end, self.alignment))
                .ok_or_else(|| GgufError::BadTensorShape {
                    name: name.clone(),
                    ty: *ty,
                    ne: ne.clone(),
                    reason: "data section size overflows u64".into(),
                })?;
        }
        Ok(out)
    }

    /// Writes the header and tensor infos to a temporary file in the
    /// destination's directory (`.<file>.tmp-<pid>-<n>`) and returns the
    /// writer for the tensor data. Fails before doing any work if `path`
    /// exists and `overwrite` is false (checked again at commit).
    pub fn create(self, path: &Path, overwrite: bool) -> Result<GgufDataWriter, GgufError> {
        if !overwrite && path_exists(path)? {
            return Err(GgufError::FileExists {
                path: path.to_path_buf(),
            });
        }
        let infos = self.tensor_infos()?;
        let (tmp, file) = TempFile::create(path)
            .map_err(|e| GgufError::io("create a temporary file beside", path, e))?;
        // `tmp` is armed: any early return from here deletes the file.
        let w = DirectFile::new(file, tmp.path())
            .map_err(|e| GgufError::io("allocate the write buffer for", tmp.path(), e))?;
        let mut out = Out {
            w,
            pos: 0,
            path: tmp.path().to_path_buf(),
        };
        out.bytes(&GGUF_MAGIC)?;
        out.bytes(&schema::GGUF_VERSION.to_le_bytes())?;
        out.bytes(&(infos.len() as u64).to_le_bytes())?;
        out.bytes(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            out.string(key)?;
            out.bytes(&value.value_type().id().to_le_bytes())?;
            out.value(value)?;
        }
        for t in &infos {
            out.string(&t.name)?;
            out.bytes(&(t.ne.len() as u32).to_le_bytes())?;
            for &d in &t.ne {
                out.bytes(&d.to_le_bytes())?;
            }
            out.bytes(&t.ty.id().to_le_bytes())?;
            out.bytes(&t.offset.to_le_bytes())?;
        }
        out.pad(self.alignment)?;
        let mut data = GgufDataWriter {
            out,
            tensors: infos.into_iter().map(|t| (t.name, t.n_bytes)).collect(),
            current: 0,
            written: 0,
            alignment: self.alignment,
            failed: false,
            tmp,
            dest: path.to_path_buf(),
            overwrite,
        };
        data.skip_empty();
        Ok(data)
    }
}

/// Streams tensor data, in declaration order, into the temporary file.
#[derive(Debug)]
pub struct GgufDataWriter {
    out: Out,
    /// (name, byte size) of every tensor, in order.
    tensors: Vec<(String, u64)>,
    /// Index of the tensor being written.
    current: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
    alignment: u64,
    /// Set after any error in `write`: the file is in an unknown state.
    failed: bool,
    // Declared after `out` so the file is closed before it is deleted.
    tmp: TempFile,
    dest: PathBuf,
    overwrite: bool,
}

impl GgufDataWriter {
    /// Appends `bytes` to the current tensor, moving on to the next one
    /// (after writing the alignment padding) whenever a tensor is complete.
    /// A chunk may span tensors. Fails if there are more bytes than tensors.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.check_ok()?;
        let result = self.write_inner(bytes);
        // After any error the file's state is not what the caller thinks:
        // refuse further writes and `finish`.
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn write_inner(&mut self, mut bytes: &[u8]) -> Result<(), GgufError> {
        while !bytes.is_empty() {
            let Some(&(_, n_bytes)) = self.tensors.get(self.current) else {
                return Err(GgufError::TooManyBytes {
                    last: self.tensors.last().map(|t| t.0.clone()).unwrap_or_default(),
                    extra: bytes.len() as u64,
                });
            };
            let want = n_bytes - self.written;
            let k = usize::try_from(want).map_or(bytes.len(), |w| w.min(bytes.len()));
            let (now, rest) = bytes.split_at(k);
            self.out.bytes(now)?;
            bytes = rest;
            self.wrote(k as u64)?;
        }
        Ok(())
    }

    /// Counts `k` bytes written to the current tensor; pads and moves on once it is complete.
    fn wrote(&mut self, k: u64) -> Result<(), GgufError> {
        self.written += k;
        if self
            .tensors
            .get(self.current)
            .is_some_and(|t| t.1 == self.written)
        {
            self.out.pad(self.alignment)?;
            self.current += 1;
            self.written = 0;
            self.skip_empty();
        }
        Ok(())
    }

    /// Appends `rows` rows of `row_bytes` bytes to the current tensor, made in place in the
    /// write buffer rather than copied into it: `fill(first, dst)` must write rows `first ..`
    /// into `dst` (a whole number of rows, at least one); it is called for consecutive runs
    /// of rows until all are written. A row that would straddle two write buffers is made in a
    /// side buffer and copied. The rows must fit in the current tensor.
    pub fn write_rows<E: From<GgufError>>(
        &mut self,
        row_bytes: usize,
        rows: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.check_ok()?;
        let len = row_bytes as u64 * rows as u64;
        if len == 0 {
            return Ok(());
        }
        let (name, left) = self
            .pending()
            .map(|(n, left)| (n.to_string(), left))
            .unwrap_or_default();
        if len > left {
            self.failed = true;
            return Err(GgufError::RowsPastTensor {
                name,
                rows: len,
                left,
            }
            .into());
        }
        let mut done = 0;
        let mut side = Vec::new();
        while done < rows {
            let space = self.out.w.space();
            let run = (space.len() / row_bytes).min(rows - done);
            let step = if run > 0 {
                fill(done, &mut space[..run * row_bytes]).and_then(|()| {
                    self.out.advance(run * row_bytes)?;
                    Ok(run)
                })
            } else {
                side.resize(row_bytes, 0);
                fill(done, &mut side).and_then(|()| {
                    self.out.bytes(&side)?;
                    Ok(1)
                })
            };
            match step {
                Ok(k) => done += k,
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        self.wrote(len).inspect_err(|_| self.failed = true)?;
        Ok(())
    }

    /// Moves past zero-byte tensors (they take no data and no padding).
    fn skip_empty(&mut self) {
        while self.tensors.get(self.current).is_some_and(|t| t.1 == 0) {
            self.current += 1;
        }
    }

    fn check_ok(&self) -> Result<(), GgufError> {
        if self.failed {
            return Err(GgufError::io(
                "write to",
                self.tmp.path(),
                std::io::Error::other("an earlier write failed; start again"),
            ));
        }
        Ok(())
    }

    /// The tensor currently expecting bytes and how many it still needs, or
    /// `None` when every tensor is complete.
    pub fn pending(&self) -> Option<(&str, u64)> {
        self.tensors
            .get(self.current)
            .map(|(name, n)| (name.as_str(), n - self.written))
    }

    /// Checks that every tensor got exactly its bytes, flushes and fsyncs
    /// the temporary file.
    pub fn finish(self) -> Result<PendingFile, GgufError> {
        self.check_ok()?;
        if let Some((name, n_bytes)) = self.tensors.get(self.current) {
            return Err(GgufError::IncompleteTensor {
                name: name.clone(),
                expected: *n_bytes,
                written: self.written,
            });
        }
        let GgufDataWriter {
            out,
            tmp,
            dest,
            overwrite,
            ..
        } = self;
        let file = out
            .w
            .finish()
            .map_err(|e| GgufError::io("flush", tmp.path(), e))?;
        file.sync_all()
            .map_err(|e| GgufError::io("fsync", tmp.path(), e))?;
        drop(file);
        Ok(PendingFile {
            tmp,
            dest,
            overwrite,
        })
    }
}

/// A complete GGUF in its temporary file, waiting to be renamed into place.
#[derive(Debug)]
pub struct PendingFile {
    tmp: TempFile,
    dest: PathBuf,
    overwrite: bool,
}

impl PendingFile {
    /// Path of the complete temporary file (e.g. to verify it with
    /// [`GgufFile::open`](super::GgufFile::open) before committing).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Where [`commit`](Self::commit) will put the file.
    pub fn destination(&self) -> &Path {
        &self.dest
    }

    /// Moves the file into place and fsyncs the directory. Without
    /// `overwrite` the move cannot clobber a file created since `create`
    /// (hard link + unlink, which fails atomically if the name exists).
    pub fn commit(mut self) -> Result<PathBuf, GgufError> {
        let dest = self.dest.clone();
        if self.overwrite {
            fs::rename(self.tmp.path(), &dest).map_err(|e| GgufError::io("rename", &dest, e))?;
            self.tmp.keep();
        } else {
            match fs::hard_link(self.tmp.path(), &dest) {
                // The temporary name is removed when `self.tmp` drops.
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(GgufError::FileExists { path: dest });
                }
                // Filesystems without hard links: check, then rename.
                Err(_) => {
                    if path_exists(&dest)? {
                        return Err(GgufError::FileExists { path: dest });
                    }
                    fs::rename(self.tmp.path(), &dest)
                        .map_err(|e| GgufError::io("rename", &dest, e))?;
                    self.tmp.keep();
                }
            }
        }
        let dir = parent_dir(&dest);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| GgufError::io("fsync directory", dir, e))?;
        Ok(dest)
    }
}

/// The buffered output with a running byte position; tensor data never
/// accumulates beyond its staging buffer.
#[derive(Debug)]
struct Out {
    w: DirectFile,
    pos: u64,
    path: PathBuf,
}

impl Out {
    /// Appends the first `k` bytes of `w.space()`, filled in place.
    fn advance(&mut self, k: usize) -> Result<(), GgufError> {
        self.w
            .advance(k)
            .map_err(|e| GgufError::io("write", &self.path, e))?;
        self.pos += k as u64;
        Ok(())
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), GgufError> {
        self.w
            .write_all(b)
            .map_err(|e| GgufError::io("write", &self.path, e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), GgufError> {
        self.bytes(&(s.len() as u64).to_le_bytes())?;
        self.bytes(s.as_bytes())
    }

    /// Zero bytes up to the next multiple of `align` (a power of two).
    fn pad(&mut self, align: u64) -> Result<(), GgufError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let target = align_up(self.pos, align).unwrap_or(self.pos);
        let mut left = target - self.pos;
        while left > 0 {
            let k = left.min(ZEROS.len() as u64) as usize;
            self.bytes(&ZEROS[..k])?;
            left -= k as u64;
        }
        Ok(())
    }

    /// A value without its type id (arrays carry their element type).
    fn value(&mut self, v: &Value) -> Result<(), GgufError> {
        match v {
            Value::U8(x) => self.bytes(&x.to_le_bytes()),
            Value::I8(x) => self.bytes(&x.to_le_bytes()),
            Value::U16(x) => self.bytes(&x.to_le_bytes()),
            Value::I16(x) => self.bytes(&x.to_le_bytes()),
            Value::U32(x) => self.bytes(&x.to_le_bytes()),
            Value::I32(x) => self.bytes(&x.to_le_bytes()),
            Value::F32(x) => self.bytes(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes(&[u8::from(*x)]),
            Value::String(s) => self.string(s),
            Value::U64(x) => self.bytes(&x.to_le_bytes()),
            Value::I64(x) => self.bytes(&x.to_le_bytes()),
            Value::F64(x) => self.bytes(&x.to_le_bytes()),
            Value::Array(ty, items) => {
                self.bytes(&ty.id().to_le_bytes())?;
                self.bytes(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|item| self.value(item))
            }
        }
    }
}

/// Checks what the writer will encode: array elements all of the declared
/// type, no nested arrays, strings within the format's limit.
fn validate_value(key: &str, value: &Value) -> Result<(), GgufError> {
    match value {
        Value::String(s) => check_string_len(key, s.len()),
        Value::Array(ValueType::Array, _) => Err(GgufError::BadValue {
            key: key.to_owned(),
            reason: "arrays of arrays cannot be read by ggml".into(),
        }),
        Value::Array(ty, items) => {
            for (i, item) in items.iter().enumerate() {
                if item.value_type() != *ty {
                    return Err(GgufError::BadValue {
                        key: key.to_owned(),
                        reason: format!("array of {ty}: element {i} is a {}", item.type_name()),
                    });
                }
                validate_value(key, item)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_string_len(key: &str, len: usize) -> Result<(), GgufError> {
    if len as u64 > MAX_STRING_LEN {
        return Err(GgufError::StringTooLong {
            what: format!("string in metadata key {key:?}"),
            offset: 0,
            len: len as u64,
            max: MAX_STRING_LEN,
        });
    }
    Ok(())
}

/// Whether anything (file, directory, dangling link) has this name.
fn path_exists(path: &Path) -> Result<bool, GgufError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(GgufError::io("stat", path, e)),
    }
}
