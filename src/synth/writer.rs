//! A streaming safetensors writer: the header is written first (all shapes are known up front),
//! then tensor data is appended in header order, so a multi-gigabyte shard never has to be held
//! in memory.
//!
//! Format (huggingface/safetensors README): an 8-byte little-endian header length `N`, `N` bytes
//! of JSON mapping each name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets
//! relative to the data section) plus an optional `"__metadata__"` string map, then the data.
//! Like the Python writer we pad the JSON with spaces so that the data section starts 8-byte
//! aligned, and lay tensors out in name order, so offsets increase with the (sorted) keys and the
//! data is contiguous with no gaps. The file is written through a [`TempFile`] and renamed into
//! place by [`SafetensorsWriter::finish`]; an abandoned writer removes its temporary.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use quant::temp_file::TempFile;
use serde_json::{json, Map, Value};

use super::SynthError;

/// Element types the writer can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    BF16,
    F16,
    F32,
}

impl StDtype {
    /// The dtype string of the safetensors header.
    pub fn name(self) -> &'static str {
        match self {
            StDtype::BF16 => "BF16",
            StDtype::F16 => "F16",
            StDtype::F32 => "F32",
        }
    }
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            StDtype::BF16 | StDtype::F16 => 2,
            StDtype::F32 => 4,
        }
    }
}

/// A tensor declared in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
}

impl HeaderEntry {
    /// Data bytes of this tensor.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product::<u64>() * self.dtype.size()
    }
}

/// Builds the padded header JSON for `entries` (already in data order).
fn header_json(entries: &[HeaderEntry], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut root = Map::new();
    if !metadata.is_empty() {
        root.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0u64;
    for e in entries {
        let end = offset + e.bytes();
        root.insert(
            e.name.clone(),
            json!({"dtype": e.dtype.name(), "shape": e.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = Value::Object(root).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    text
}

/// Streams one safetensors file.
pub struct SafetensorsWriter {
    /// Declared before `tmp`: the file is closed before its guard deletes it.
    out: Option<BufWriter<File>>,
    tmp: TempFile,
    path: PathBuf,
    entries: Vec<HeaderEntry>,
    /// Index of the tensor currently being written and bytes of it written so far.
    current: usize,
    written: u64,
    total: u64,
}

impl SafetensorsWriter {
    /// Creates `path` (through a temporary) and writes the header for `entries`, which are
    /// sorted by name: data must then be supplied in the order of [`Self::entries`].
    pub fn create(
        path: &Path,
        mut entries: Vec<HeaderEntry>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<SafetensorsWriter, SynthError> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(SynthError::Writer {
                path: path.to_path_buf(),
                reason: format!("tensor '{}' declared twice", w[0].name),
            });
        }
        let header = header_json(&entries, metadata);
        let (tmp, file) = TempFile::create(path).map_err(|e| SynthError::io(path, e))?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        let io = |e| SynthError::io(tmp.path(), e);
        out.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&header).map_err(io)?;
        let total = entries.iter().map(HeaderEntry::bytes).sum();
        let mut w = SafetensorsWriter {
            out: Some(out),
            tmp,
            path: path.to_path_buf(),
            entries,
            current: 0,
            written: 0,
            total,
        };
        w.skip_empty();
        Ok(w)
    }

    /// The tensors in data order.
    pub fn entries(&self) -> &[HeaderEntry] {
        &self.entries
    }

    /// Total data bytes the header declares.
    pub fn data_bytes(&self) -> u64 {
        self.total
    }

    fn skip_empty(&mut self) {
        while self
            .entries
            .get(self.current)
            .is_some_and(|e| self.written == e.bytes())
        {
            self.current += 1;
            self.written = 0;
        }
    }

    /// Appends data of the current tensor; a call may not cross into the next tensor.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SynthError> {
        let Some(entry) = self.entries.get(self.current) else {
            return Err(self.err(format!("{} bytes written past the last tensor", data.len())));
        };
        if self.written + data.len() as u64 > entry.bytes() {
            return Err(self.err(format!(
                "tensor '{}': {} bytes written, {} declared",
                entry.name,
                self.written + data.len() as u64,
                entry.bytes()
            )));
        }
        let Some(out) = self.out.as_mut() else {
            return Err(self.err("writer already failed".into()));
        };
        if let Err(e) = out.write_all(data) {
            self.out = None;
            return Err(SynthError::io(self.tmp.path(), e));
        }
        self.written += data.len() as u64;
        self.skip_empty();
        Ok(())
    }

    /// Checks that every tensor was written, flushes and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf, SynthError> {
        if let Some(e) = self.entries.get(self.current) {
            return Err(self.err(format!(
                "tensor '{}' incomplete: {} of {} bytes",
                e.name,
                self.written,
                e.bytes()
            )));
        }
        let Some(out) = self.out.take() else {
            return Err(self.err("writer already failed".into()));
        };
        let file = out
            .into_inner()
            .map_err(|e| SynthError::io(self.tmp.path(), e.into_error()))?;
        file.sync_all()
            .map_err(|e| SynthError::io(self.tmp.path(), e))?;
        drop(file);
        std::fs::rename(self.tmp.path(), &self.path).map_err(|e| SynthError::io(&self.path, e))?;
        self.tmp.keep();
        Ok(self.path.clone())
    }

    fn err(&self, reason: String) -> SynthError {
        SynthError::Writer {
            path: self.path.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, dtype: StDtype, shape: &[usize]) -> HeaderEntry {
        HeaderEntry {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn header_is_aligned_and_offsets_follow_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let mut w = SafetensorsWriter::create(
            &path,
            vec![
                entry("z", StDtype::F32, &[3]),
                entry("a", StDtype::BF16, &[2, 1]),
                entry("empty", StDtype::F32, &[0, 4]),
            ],
            &BTreeMap::from([("format".into(), "pt".into())]),
        )
        .unwrap();
        let names: Vec<_> = w.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "empty", "z"]);
        w.write(&[1, 2]).unwrap();
        w.write(&[3, 4]).unwrap();
        assert!(w.write(&[0; 13]).is_err(), "crossing into the next tensor");
        w.write(&[0; 12]).unwrap();
        assert!(w.write(&[0]).is_err(), "past the end");
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(bytes.len(), 8 + n + 16);
        let h: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(h["a"]["data_offsets"], json!([0, 4]));
        assert_eq!(h["empty"]["data_offsets"], json!([4, 4]));
        assert_eq!(h["z"]["data_offsets"], json!([4, 16]));
        assert_eq!(h["__metadata__"]["format"], "pt");
        assert_eq!(&bytes[8 + n..8 + n + 4], &[1, 2, 3, 4]);
    }

    #[test]
    fn incomplete_file_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.safetensors");
        let mut w = SafetensorsWriter::create(
            &path,
            vec![entry("x", StDtype::F32, &[2])],
            &BTreeMap::new(),
        )
        .unwrap();
        w.write(&[0; 4]).unwrap();
        assert!(w.finish().is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut w = SafetensorsWriter::create(
            &path,
            vec![
                entry("x", StDtype::F32, &[2]),
                entry("x", StDtype::F32, &[1]),
            ],
            &BTreeMap::new(),
        );
        assert!(w.is_err());
        w = SafetensorsWriter::create(
            &path,
            vec![entry("x", StDtype::F32, &[1])],
            &BTreeMap::new(),
        );
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
