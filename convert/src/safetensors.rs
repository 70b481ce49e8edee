//! Zero-copy reader for safetensors files and sharded Hugging Face checkpoints.
//!
//! A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor
//! names to `{dtype, shape, data_offsets}`, then the raw little-endian data. The file is mapped
//! with memmap2 and tensors are handed out as borrowed byte slices; every length and offset in
//! the header is checked against the real file size before anything is allocated or sliced, so
//! a corrupt or hostile header yields an error, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value as Json;

use crate::error::{ConvertError, Result};

/// Largest JSON header we accept (the format's reference implementation uses 100 MB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Element types of the safetensors format that pocketvl reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    I32,
    I64,
    F16,
    Bf16,
    F32,
    F64,
}

impl Dtype {
    /// Parses the header's dtype string (`"BF16"`, ...).
    pub fn from_name(name: &str) -> Option<Dtype> {
        Some(match name {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "I16" => Dtype::I16,
            "I32" => Dtype::I32,
            "I64" => Dtype::I64,
            "F16" => Dtype::F16,
            "BF16" => Dtype::Bf16,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }

    /// The header spelling of this dtype.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::I32 => "I32",
            Dtype::I64 => "I64",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// Whether this is a floating-point dtype (convertible with [`TensorView::to_f32`]).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::Bf16 | Dtype::F32 | Dtype::F64)
    }
}

/// Header entry of one tensor: dtype, shape (slowest dimension first, as PyTorch) and the
/// byte range inside the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file (header already skipped).
    pub start: usize,
    pub end: usize,
}

impl TensorEntry {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafeTensorsFile {
    path: PathBuf,
    mmap: Mmap,
    tensors: BTreeMap<String, TensorEntry>,
    metadata: BTreeMap<String, String>,
}

/// A borrowed tensor: name, dtype, shape and its raw little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

fn st_err(path: &Path, reason: impl Into<String>) -> ConvertError {
    ConvertError::SafeTensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl SafeTensorsFile {
    /// Maps `path` and validates its header against the file size.
    pub fn open(path: &Path) -> Result<SafeTensorsFile> {
        let file = File::open(path).map_err(|e| ConvertError::io(path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| ConvertError::io(path, e))?
            .len();
        if file_len < 8 {
            return Err(st_err(
                path,
                format!("file is {file_len} bytes, shorter than the 8-byte header length"),
            ));
        }
        // SAFETY: the file is opened read-only and we only ever read through the map. A
        // concurrent writer truncating the file could fault us; checkpoints are not expected
        // to change while being converted, as with every mmap-based model loader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ConvertError::io(path, e))?;
        let (tensors, metadata) = parse_header(path, &mmap)?;
        Ok(SafeTensorsFile {
            path: path.to_path_buf(),
            mmap,
            tensors,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The optional `__metadata__` string map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Header entry of a tensor, if present.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Borrowed view of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let (key, entry) = self
            .tensors
            .get_key_value(name)
            .ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
        let bytes: &[u8] = &self.mmap;
        let data = bytes
            .get(entry.start..entry.end)
            .ok_or_else(|| st_err(&self.path, format!("tensor '{name}' lies outside the file")))?;
        Ok(TensorView {
            name: key,
            dtype: entry.dtype,
            shape: &entry.shape,
            data,
        })
    }
}

/// Parses and validates the header of a mapped file.
#[allow(clippy::type_complexity)]
fn parse_header(
    path: &Path,
    bytes: &[u8],
) -> Result<(BTreeMap<String, TensorEntry>, BTreeMap<String, String>)> {
    let file_len = bytes.len() as u64;
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| st_err(path, "missing the 8-byte header length"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len - 8 {
        return Err(st_err(
            path,
            format!(
                "header claims {header_len} bytes but only {} follow the length field",
                file_len - 8
            ),
        ));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(st_err(
            path,
            format!("header of {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    // Both bounds are below file_len, which fits in usize because the file is mapped.
    let data_start = 8 + header_len as usize;
    let header = bytes
        .get(8..data_start)
        .ok_or_else(|| st_err(path, "header outside the file"))?;
    let json: Json = serde_json::from_slice(header)
        .map_err(|e| st_err(path, format!("header is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| st_err(path, "header is not a JSON object"))?;
    let data_len = bytes.len() - data_start;

    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in obj {
        if name == "__metadata__" {
            let m = value
                .as_object()
                .ok_or_else(|| st_err(path, "__metadata__ is not an object"))?;
            for (k, v) in m {
                let s = v.as_str().ok_or_else(|| {
                    st_err(path, format!("__metadata__ value '{k}' is not a string"))
                })?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let entry = parse_entry(path, name, value, data_start, data_len)?;
        tensors.insert(name.clone(), entry);
    }
    Ok((tensors, metadata))
}

/// Validates one header entry: dtype known, shape sane, offsets inside the data section and
/// consistent with `numel * dtype size`.
fn parse_entry(
    path: &Path,
    name: &str,
    value: &Json,
    data_start: usize,
    data_len: usize,
) -> Result<TensorEntry> {
    let bad = |reason: String| st_err(path, format!("tensor '{name}': {reason}"));
    let dtype_name = value
        .get("dtype")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("missing string 'dtype'".into()))?;
    let dtype = Dtype::from_name(dtype_name).ok_or_else(|| ConvertError::UnknownDtype {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        dtype: dtype_name.to_string(),
    })?;
    let shape_json = value
        .get("shape")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("missing array 'shape'".into()))?;
    let mut shape = Vec::with_capacity(shape_json.len().min(16));
    let mut numel: u64 = 1;
    for d in shape_json {
        let d = d
            .as_u64()
            .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| bad("element count overflows".into()))?;
        shape.push(usize::try_from(d).map_err(|_| bad(format!("dimension {d} too large")))?);
    }
    let offsets = value
        .get("data_offsets")
        .and_then(Json::as_array)
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad("'data_offsets' must be [begin, end]".into()))?;
    let begin = offsets
        .first()
        .and_then(Json::as_u64)
        .ok_or_else(|| bad("data_offsets begin is not an integer".into()))?;
    let end = offsets
        .get(1)
        .and_then(Json::as_u64)
        .ok_or_else(|| bad("data_offsets end is not an integer".into()))?;
    if begin > end || end > data_len as u64 {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] outside the {data_len}-byte data section (file truncated?)"
        )));
    }
    let want = numel
        .checked_mul(dtype.size() as u64)
        .ok_or_else(|| bad("byte size overflows".into()))?;
    if end - begin != want {
        return Err(bad(format!(
            "data_offsets span {} bytes but shape {shape:?} of {} needs {want}",
            end - begin,
            dtype.name()
        )));
    }
    // end <= data_len, so both fit in usize.
    Ok(TensorEntry {
        dtype,
        shape,
        start: data_start + begin as usize,
        end: data_start + end as usize,
    })
}

impl<'a> TensorView<'a> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn mismatch(&self, wanted: &'static str) -> ConvertError {
        ConvertError::DtypeMismatch {
            tensor: self.name.to_string(),
            dtype: self.dtype.name(),
            wanted,
        }
    }

    /// The whole tensor widened (or narrowed, for F64) to f32. Exact for F16/BF16/F32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.numel()];
        self.read_f32(0, &mut out)?;
        Ok(out)
    }

    /// The bytes of elements `start .. start + count` as stored (`None` past the end).
    pub fn stored(&self, start: usize, count: usize) -> Option<(Dtype, &'a [u8])> {
        let es = self.dtype.size();
        let from = start.checked_mul(es)?;
        let to = from.checked_add(count.checked_mul(es)?)?;
        Some((self.dtype, self.data.get(from..to)?))
    }

    /// Converts `out.len()` elements starting at element `start` to f32 (streaming access
    /// for converters that work a few rows at a time).
    pub fn read_f32(&self, start: usize, out: &mut [f32]) -> Result<()> {
        if !self.dtype.is_float() {
            return Err(self.mismatch("f32"));
        }
        let es = self.dtype.size();
        let range = start
            .checked_mul(es)
            .and_then(|b| Some((b, b.checked_add(out.len().checked_mul(es)?)?)))
            .filter(|&(_, e)| e <= self.data.len())
            .ok_or_else(|| ConvertError::SafeTensors {
                path: PathBuf::new(),
                reason: format!(
                    "tensor '{}': elements {start}..+{} out of range ({} elements)",
                    self.name,
                    out.len(),
                    self.numel()
                ),
            })?;
        let src = self.data.get(range.0..range.1).unwrap_or(&[]);
        match self.dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::F16 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Dtype::Bf16 => quant::block::bf16::widen_row(src, out),
            Dtype::F64 => {
                for (o, c) in out.iter_mut().zip(src.chunks_exact(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    *o = f64::from_le_bytes(b) as f32;
                }
            }
            _ => return Err(self.mismatch("f32")),
        }
        Ok(())
    }

    /// Integer tensors (I8/I16/I32/I64/U8/BOOL) widened to i64.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        let d = self.data;
        Ok(match self.dtype {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    i64::from_le_bytes(b)
                })
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::I16 => d
                .chunks_exact(2)
                .map(|c| i64::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::I8 => d.iter().map(|&b| i64::from(b as i8)).collect(),
            Dtype::U8 | Dtype::Bool => d.iter().map(|&b| i64::from(b)).collect(),
            _ => return Err(self.mismatch("i64")),
        })
    }

    /// The raw bytes of a U8 tensor (e.g. the fixture's uint8 pixel store).
    pub fn as_u8(&self) -> Result<&'a [u8]> {
        match self.dtype {
            Dtype::U8 => Ok(self.data),
            _ => Err(self.mismatch("u8")),
        }
    }

    /// A BOOL tensor as booleans (any non-zero byte is true).
    pub fn to_bool(&self) -> Result<Vec<bool>> {
        match self.dtype {
            Dtype::Bool => Ok(self.data.iter().map(|&b| b != 0).collect()),
            _ => Err(self.mismatch("bool")),
        }
    }
}

/// Name of the index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// A Hugging Face checkpoint: one `model.safetensors` or shards listed by
/// `model.safetensors.index.json`. Tensor lookups go to the shard that holds them.
#[derive(Debug)]
pub struct Checkpoint {
    shards: Vec<SafeTensorsFile>,
    /// Tensor name -> index into `shards`.
    location: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens the checkpoint in directory `dir`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join(INDEX_FILE);
        if index_path.exists() {
            return Self::open_index(dir, &index_path);
        }
        let single = dir.join(SINGLE_FILE);
        if !single.exists() {
            return Err(ConvertError::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("neither {INDEX_FILE} nor {SINGLE_FILE} found"),
                ),
            ));
        }
        Self::from_files(vec![SafeTensorsFile::open(&single)?])
    }

    /// Builds a checkpoint from already-opened files (names must be unique across them).
    pub fn from_files(shards: Vec<SafeTensorsFile>) -> Result<Checkpoint> {
        let mut location = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.names() {
                if location.insert(name.to_string(), i).is_some() {
                    return Err(st_err(
                        shard.path(),
                        format!("tensor '{name}' also appears in another shard"),
                    ));
                }
            }
        }
        Ok(Checkpoint { shards, location })
    }

    fn open_index(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
        let text =
            std::fs::read_to_string(index_path).map_err(|e| ConvertError::io(index_path, e))?;
        let json: Json = serde_json::from_str(&text).map_err(|e| ConvertError::Json {
            path: index_path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let map = json
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| ConvertError::Json {
                path: index_path.to_path_buf(),
                reason: "missing object 'weight_map'".into(),
            })?;
        let mut shard_names: Vec<String> = Vec::new();
        let mut wanted: BTreeMap<String, usize> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| ConvertError::Json {
                path: index_path.to_path_buf(),
                reason: format!("weight_map['{tensor}'] is not a string"),
            })?;
            let idx = match shard_names.iter().position(|s| s == file) {
                Some(i) => i,
                None => {
                    shard_names.push(file.to_string());
                    shard_names.len() - 1
                }
            };
            wanted.insert(tensor.clone(), idx);
        }
        let mut shards = Vec::with_capacity(shard_names.len());
        for (i, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            if !path.is_file() {
                let tensor = wanted
                    .iter()
                    .find(|(_, &s)| s == i)
                    .map(|(t, _)| t.clone())
                    .unwrap_or_default();
                return Err(ConvertError::MissingShard {
                    index: index_path.to_path_buf(),
                    shard: name.clone(),
                    tensor,
                    reason: "no such file".into(),
                });
            }
            shards.push(SafeTensorsFile::open(&path)?);
        }
        // Every tensor the index promises must be in its shard.
        for (tensor, &i) in &wanted {
            let shard = shards
                .get(i)
                .ok_or_else(|| ConvertError::MissingTensor(tensor.clone()))?;
            if shard.entry(tensor).is_none() {
                return Err(st_err(
                    shard.path(),
                    format!("tensor '{tensor}' is listed in {INDEX_FILE} but not in this shard"),
                ));
            }
        }
        let checkpoint = Self::from_files(shards)?;
        // And the shards hold nothing the index does not list.
        for (name, &i) in &checkpoint.location {
            if !wanted.contains_key(name) {
                let path = checkpoint.shards.get(i).map(|s| s.path().to_path_buf());
                return Err(st_err(
                    &path.unwrap_or_default(),
                    format!("tensor '{name}' is not listed in {INDEX_FILE}"),
                ));
            }
        }
        Ok(checkpoint)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Borrowed view of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let shard = self
            .location
            .get(name)
            .and_then(|&i| self.shards.get(i))
            .ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
        shard.tensor(name)
    }

    /// The shard file holding tensor `name` and the byte offset of its data in it (`None`
    /// if absent): where the converter's read-ahead reads it with direct I/O.
    pub fn file_span(&self, name: &str) -> Option<(&Path, u64)> {
        let shard = self.location.get(name).and_then(|&i| self.shards.get(i))?;
        let e = shard.tensors.get(name)?;
        Some((shard.path(), e.start as u64))
    }

    /// Data bytes of tensor `name` (0 if absent).
    pub fn tensor_bytes(&self, name: &str) -> usize {
        self.location
            .get(name)
            .and_then(|&i| self.shards.get(i))
            .and_then(|s| s.tensors.get(name))
            .map_or(0, |e| e.end - e.start)
    }

    /// The shard files, in index order.
    pub fn shards(&self) -> &[SafeTensorsFile] {
        &self.shards
    }

    /// Total bytes of tensor data over all shards.
    pub fn data_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.tensors.values())
            .map(|e| (e.end - e.start) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a safetensors file from (name, dtype, shape, bytes), laid out back to back.
    pub(crate) fn build(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let h = serde_json::to_vec(&Json::Object(header)).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&data);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(rel)
    }

    #[test]
    fn reads_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bf: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let f16: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let f64s: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let i64s: Vec<u8> = [7i64, -9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let i32s: Vec<u8> = [7i32, -9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let i16s: Vec<u8> = [7i16, -9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = build(&[
            ("a", "F32", vec![2], f32s),
            ("b", "BF16", vec![2], bf),
            ("c", "F16", vec![1, 2], f16),
            ("d", "F64", vec![2], f64s),
            ("e", "I64", vec![2], i64s),
            ("f", "I32", vec![2], i32s),
            ("g", "I16", vec![2], i16s),
            ("h", "I8", vec![2], vec![7, (-9i8) as u8]),
            ("i", "U8", vec![2], vec![7, 250]),
            ("j", "BOOL", vec![2], vec![1, 0]),
        ]);
        let p = write(dir.path(), "x.safetensors", &bytes);
        let f = SafeTensorsFile::open(&p).unwrap();
        for n in ["a", "b", "c", "d"] {
            assert_eq!(
                f.tensor(n).unwrap().to_f32().unwrap(),
                vec![1.5, -2.0],
                "{n}"
            );
        }
        for n in ["e", "f", "g", "h"] {
            assert_eq!(f.tensor(n).unwrap().to_i64().unwrap(), vec![7, -9], "{n}");
        }
        assert_eq!(f.tensor("i").unwrap().as_u8().unwrap(), &[7, 250]);
        assert_eq!(f.tensor("j").unwrap().to_bool().unwrap(), vec![true, false]);
        assert_eq!(f.tensor("c").unwrap().shape, &[1, 2]);
        assert!(matches!(
            f.tensor("e").unwrap().to_f32(),
            Err(ConvertError::DtypeMismatch { .. })
        ));
        assert!(matches!(
            f.tensor("zz"),
            Err(ConvertError::MissingTensor(_))
        ));
    }

    #[test]
    fn huge_header_length_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let p = write(dir.path(), "x.safetensors", &bytes);
        let e = SafeTensorsFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("header claims 1152921504606846976 bytes"), "{e}");
    }

    #[test]
    fn truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = build(&[("w", "F32", vec![4, 4], vec![0u8; 64])]);
        let p = write(dir.path(), "x.safetensors", &bytes[..bytes.len() - 10]);
        let e = SafeTensorsFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("tensor 'w'") && e.contains("truncated"), "{e}");
        let p = write(dir.path(), "y.safetensors", &bytes[..5]);
        assert!(SafeTensorsFile::open(&p).is_err());
    }

    #[test]
    fn size_mismatch_and_unknown_dtype_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "x.safetensors",
            &build(&[("w", "F32", vec![3], vec![0u8; 8])]),
        );
        let e = SafeTensorsFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("needs 12"), "{e}");
        let p = write(
            dir.path(),
            "y.safetensors",
            &build(&[("w", "F8_E4M3", vec![2], vec![0u8; 2])]),
        );
        let e = SafeTensorsFile::open(&p).unwrap_err();
        assert!(
            matches!(e, ConvertError::UnknownDtype { ref dtype, .. } if dtype == "F8_E4M3"),
            "{e}"
        );
    }

    #[test]
    fn sharded_fixture_opens_and_missing_shard_is_named() {
        let ck = Checkpoint::open(&fixture("tiny-mla/hf")).unwrap();
        let t = ck.tensor("language.model.embed_tokens.weight").unwrap();
        assert_eq!(t.dtype, Dtype::Bf16);
        assert_eq!(t.shape, &[1280, 64]);
        assert_eq!(t.to_f32().unwrap().len(), 1280 * 64);
        assert!(ck.contains("language.lm_head.weight"));

        let dir = tempfile::tempdir().unwrap();
        let src = fixture("tiny-mla/hf");
        for f in [INDEX_FILE, "model-00001-of-00002.safetensors"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    }

    #[test]
    fn golden_and_pixel_files_read() {
        let px = SafeTensorsFile::open(&fixture("preprocess/pixels.safetensors")).unwrap();
        let t = px.tensor("tiles.pixel_u8").unwrap();
        assert_eq!(t.shape, &[7, 3, 384, 384]);
        assert_eq!(t.as_u8().unwrap().len(), 7 * 3 * 384 * 384);
        let g = SafeTensorsFile::open(&fixture("tiny-mha/golden.safetensors")).unwrap();
        let ids = g.tensor("text.input_ids").unwrap().to_i64().unwrap();
        assert_eq!(ids.len(), 24);
        let mask = g.tensor("text.images_seq_mask").unwrap().to_bool().unwrap();
        assert!(mask.iter().all(|&b| !b));
    }
}
