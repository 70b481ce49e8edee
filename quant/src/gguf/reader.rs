//! The GGUF reader: parses the header, metadata and tensor infos into owned
//! values and keeps the file memory-mapped so tensor data is a zero-copy
//! slice of the map.
//!
//! The file is untrusted input. Every count, length and offset is checked
//! against the bytes that remain before it is used, so a hostile or truncated
//! file produces a [`GgufError`], never a panic, an out-of-bounds read or an
//! allocation larger than the file itself.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapMut};

use super::error::GgufError;
use super::value::{Value, ValueType};
use super::{
    align_up, GGUF_MAGIC, HEADER_LEN, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_METADATA_VALUES,
    MAX_STRING_LEN, MIN_TENSOR_INFO_LEN,
};
use crate::schema;
use crate::GgmlType;

/// One tensor's entry in the tensor-info table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// Dimensions, fastest-varying first (ggml order; the reverse of PyTorch).
    pub ne: Vec<u64>,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of `ne`; 1 for a 0-dimensional tensor).
    /// The reader and writer have checked that it does not overflow.
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// An open GGUF file: owned metadata and tensor infos plus a read-only memory
/// map of the whole file.
#[derive(Debug)]
pub struct GgufFile {
    map: Mmap,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and validates `path`, memory-mapping it (no copy of tensor data).
    ///
    /// The map is read-only; as with any mmap, the file must not be truncated
    /// or rewritten by another process while the `GgufFile` is alive.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = File::open(path).map_err(|e| GgufError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| GgufError::io("stat", path, e))?
            .len();
        let in_file = |source: GgufError| GgufError::InFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        if len < HEADER_LEN as u64 {
            // Too short to hold a header; mapping an empty file is not portable.
            return Err(in_file(GgufError::Truncated {
                what: "GGUF header".into(),
                offset: 0,
                needed: HEADER_LEN as u64,
                file_len: len,
            }));
        }
        // SAFETY: the map is read-only and we never hand out mutable access.
        // Soundness additionally requires that no other process truncates or
        // modifies the file while it is mapped; that is the documented
        // contract of `open` (model files are immutable once committed, and
        // our writer only ever replaces them by atomic rename, which leaves
        // this mapping's inode untouched).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io("mmap", path, e))?;
        let parsed = parse(&map).map_err(in_file)?;
        Ok(parsed.into_file(map))
    }

    /// Parses a GGUF held in memory. The bytes are copied into an anonymous
    /// page-aligned map so tensor data has the same alignment guarantees as
    /// with [`GgufFile::open`] (data offset + tensor offset from a page
    /// boundary).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        let parsed = parse(&bytes)?;
        let mut anon = MmapMut::map_anon(bytes.len())
            .map_err(|e| GgufError::io("map anonymous memory for", "<bytes>", e))?;
        anon.copy_from_slice(&bytes);
        let map = anon
            .make_read_only()
            .map_err(|e| GgufError::io("protect anonymous memory for", "<bytes>", e))?;
        Ok(parsed.into_file(map))
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Tensor data alignment (`general.alignment` or 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.key_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor info named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.tensor_index.get(name)?;
        self.tensors.get(i)
    }

    /// The bytes of tensor `t` (zero-copy slice of the map). For a `t` from
    /// this file the range was validated at open; for a foreign `t` whose
    /// range does not fit, the slice is empty rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|start| Some((start, start.checked_add(t.n_bytes)?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range.and_then(|r| self.map.get(r)).unwrap_or(&[])
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Asks Linux to bring the mapped file in as transparent huge pages (2 MiB folios), except
    /// the bytes of the tensors in `except`, which keep normal pages. For weights streamed
    /// whole on every token: on 4 KiB pages each page starts with a TLB miss and the hardware
    /// prefetchers stop at its end (on a 2-core Intel Xeon VM decode ran 5-11 % faster with
    /// the whole file on huge pages, BENCHMARKS.md). `except` is for tensors read a few rows
    /// at a time (the token embedding): on huge pages every row looked up would make 2 MiB
    /// resident. Best effort, like any `madvise`: outside Linux, or where the kernel has no
    /// THP for files, nothing changes. Call before the bytes are first read: pages already
    /// cached stay as they are.
    pub fn advise_huge_pages(&self, except: &[&TensorInfo]) {
        #[cfg(target_os = "linux")]
        for r in self.ranges_except(except) {
            let _ = self
                .map
                .advise_range(memmap2::Advice::HugePage, r.start, r.len());
        }
        #[cfg(not(target_os = "linux"))]
        let _ = except;
    }

    /// The byte ranges of the mapping outside the data of the tensors in `except`, in file
    /// order (the whole file when `except` is empty).
    pub fn ranges_except(&self, except: &[&TensorInfo]) -> Vec<std::ops::Range<usize>> {
        let mut skip: Vec<(usize, usize)> = except
            .iter()
            .filter_map(|t| {
                let d = self.tensor_data(t);
                let start = (d.as_ptr() as usize).checked_sub(self.map.as_ptr() as usize)?;
                Some((start, start + d.len()))
            })
            .collect();
        skip.sort_unstable();
        let mut ranges = Vec::new();
        let mut from = 0;
        for (start, end) in skip.into_iter().chain([(self.map.len(), self.map.len())]) {
            if start > from {
                ranges.push(from..start);
            }
            from = from.max(end);
        }
        ranges
    }

    /// Reads the mapped bytes `range` into memory now and maps them into this process
    /// (`MADV_POPULATE_READ`: the same page faults, readahead and folio sizes a first read
    /// of those bytes would take, done ahead of it). Blocks until they are in. An error where
    /// the kernel lacks the advice (before Linux 5.14) or outside Linux; a range past the
    /// mapping's end is an error, never a read outside it.
    pub fn populate(&self, range: std::ops::Range<usize>) -> std::io::Result<()> {
        if range.start > range.end || range.end > self.map.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "range {range:?} outside a mapping of {} bytes",
                    self.map.len()
                ),
            ));
        }
        #[cfg(target_os = "linux")]
        {
            self.map
                .advise_range(memmap2::Advice::PopulateRead, range.start, range.len())
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "populating a mapping needs Linux",
            ))
        }
    }
}

/// Everything parsed from the bytes, before it is tied to its storage.
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl Parsed {
    fn into_file(self, map: Mmap) -> GgufFile {
        GgufFile {
            map,
            version: self.version,
            alignment: self.alignment,
            data_offset: self.data_offset,
            metadata: self.metadata,
            key_index: self.key_index,
            tensors: self.tensors,
            tensor_index: self.tensor_index,
        }
    }
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements the metadata may still hold (see [`MAX_METADATA_VALUES`]).
    value_budget: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos.min(self.buf.len())) as u64
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// The next `n` bytes, or `Truncated` naming `what()`.
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let truncated = || GgufError::Truncated {
            what: what(),
            offset: self.pos as u64,
            needed: n,
            file_len: self.buf.len() as u64,
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Fails unless `count` items of at least `min_size` bytes each can fit
    /// in what is left, so no count from the file drives an allocation or a
    /// loop longer than the file.
    fn check_count(
        &self,
        count: u64,
        min_size: usize,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        let fits = count
            .checked_mul(min_size as u64)
            .is_some_and(|n| n <= self.remaining());
        if fits {
            Ok(())
        } else {
            Err(GgufError::CountTooLarge {
                what: what(),
                offset: self.offset(),
                count,
                remaining: self.remaining(),
            })
        }
    }

    /// A GGUF string: u64 length, then UTF-8 bytes without a NUL.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let start = self.offset();
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::StringTooLong {
                what: what(),
                offset: start,
                len,
                max: MAX_STRING_LEN,
            });
        }
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                what: what(),
                offset: start + 8,
            }),
        }
    }
}

/// Parses and validates the whole header, metadata and tensor-info table.
fn parse(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut cur = Cursor {
        buf,
        pos: 0,
        value_budget: MAX_METADATA_VALUES,
    };
    let magic: [u8; 4] = cur.array(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32(&|| "version".into())?;
    if version & 0xffff == 0 && matches!(version.swap_bytes(), 1..=3) {
        return Err(GgufError::BigEndian {
            version: version.swap_bytes(),
        });
    }
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count = cur.u64(&|| "tensor count".into())?;
    let kv_count = cur.u64(&|| "metadata count".into())?;
    // Each key/value pair takes at least an empty key, a type and one byte.
    cur.check_count(kv_count, 8 + 4 + 1, &|| "metadata count".into())?;

    let mut metadata = Vec::with_capacity(cap(kv_count));
    let mut key_index = HashMap::with_capacity(cap(kv_count));
    for i in 0..kv_count {
        let key = cur.string(&|| format!("key of metadata entry {i}"))?;
        let type_offset = cur.offset();
        let type_id = cur.u32(&|| format!("value type of key {key:?}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            offset: type_offset,
            id: type_id,
        })?;
        let value = read_value(&mut cur, ty, &key, 0)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.push((key, value));
    }

    let alignment = match key_index.get(schema::general::ALIGNMENT) {
        None => schema::DEFAULT_ALIGNMENT,
        Some(&i) => match metadata.get(i).map(|(_, v)| v) {
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            other => {
                return Err(GgufError::BadAlignment {
                    found: other.map_or_else(String::new, |v| format!("{} {v}", v.type_name())),
                })
            }
        },
    };

    cur.check_count(tensor_count, MIN_TENSOR_INFO_LEN, &|| "tensor count".into())?;
    let mut tensors = Vec::with_capacity(cap(tensor_count));
    let mut tensor_index = HashMap::with_capacity(cap(tensor_count));
    for i in 0..tensor_count {
        let info = read_tensor_info(&mut cur, i)?;
        if tensor_index
            .insert(info.name.clone(), tensors.len())
            .is_some()
        {
            return Err(GgufError::DuplicateTensor { name: info.name });
        }
        tensors.push(info);
    }

    let data_offset = align_up(cur.offset(), alignment).ok_or(GgufError::Truncated {
        what: "data section".into(),
        offset: cur.offset(),
        needed: alignment,
        file_len: buf.len() as u64,
    })?;
    check_tensor_ranges(&tensors, data_offset, alignment, buf.len() as u64)?;

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

/// Initial capacity for a collection of `count` items read from the file:
/// the count is already bounded by the file size, but a small cap keeps a
/// hostile file from reserving far more than it will fill.
fn cap(count: u64) -> usize {
    usize::try_from(count.min(4096)).unwrap_or(4096)
}

/// Reads one value of type `ty` for metadata key `key`. Arrays may nest (the
/// Python writer can produce them) up to [`MAX_ARRAY_DEPTH`] levels, which
/// bounds the recursion.
fn read_value(
    cur: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value, GgufError> {
    let what = || format!("value of key {key:?}");
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(cur.array(&what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(cur.array(&what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(&what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(cur.array(&what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(&what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(cur.array(&what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(&what)?)),
        ValueType::Bool => {
            let offset = cur.offset();
            let [byte] = cur.array(&what)?;
            match byte {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => {
                    return Err(GgufError::InvalidBool {
                        key: key.to_owned(),
                        offset,
                        byte,
                    })
                }
            }
        }
        ValueType::String => Value::String(cur.string(&what)?),
        ValueType::Array => {
            let type_offset = cur.offset();
            let type_id = cur.u32(&|| format!("array element type of key {key:?}"))?;
            let elem = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.to_owned(),
                offset: type_offset,
                id: type_id,
            })?;
            if elem == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep {
                    key: key.to_owned(),
                    max: MAX_ARRAY_DEPTH,
                });
            }
            let count = cur.u64(&|| format!("array length of key {key:?}"))?;
            cur.check_count(count, elem.min_encoded_size(), &|| {
                format!("array of {elem} of key {key:?}")
            })?;
            cur.value_budget =
                cur.value_budget
                    .checked_sub(count)
                    .ok_or_else(|| GgufError::TooManyValues {
                        key: key.to_owned(),
                        max: MAX_METADATA_VALUES,
                    })?;
            let mut items = Vec::with_capacity(cap(count));
            for _ in 0..count {
                items.push(read_value(cur, elem, key, depth + 1)?);
            }
            Value::Array(elem, items)
        }
    })
}

/// Reads and validates the `index`-th tensor info (name, dims, type, offset).
fn read_tensor_info(cur: &mut Cursor<'_>, index: u64) -> Result<TensorInfo, GgufError> {
    let name = cur.string(&|| format!("name of tensor {index}"))?;
    let n_dims = cur.u32(&|| format!("dimension count of tensor {name:?}"))?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::BadDimCount {
            name,
            n_dims: n_dims.into(),
            min: 0,
            max: MAX_DIMS as u64,
        });
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims as usize {
        let raw = i64::from_le_bytes(cur.array(&|| format!("dimension {d} of tensor {name:?}"))?);
        let dim = u64::try_from(raw).map_err(|_| GgufError::NegativeDim {
            name: name.clone(),
            index: d,
            value: raw,
        })?;
        ne.push(dim);
    }
    let type_id = cur.u32(&|| format!("type of tensor {name:?}"))?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
        name: name.clone(),
        id: type_id,
    })?;
    let offset = cur.u64(&|| format!("data offset of tensor {name:?}"))?;
    let n_bytes = tensor_n_bytes(&name, ty, &ne)?;
    Ok(TensorInfo {
        name,
        ty,
        ne,
        offset,
        n_bytes,
    })
}

/// Byte size of a tensor, checking (like ggml) that the element count fits in
/// an i64, that `ne[0]` is a whole number of blocks and that the size does not
/// overflow.
pub(crate) fn tensor_n_bytes(name: &str, ty: GgmlType, ne: &[u64]) -> Result<u64, GgufError> {
    let bad = |reason: String| GgufError::BadTensorShape {
        name: name.to_owned(),
        ty,
        ne: ne.to_vec(),
        reason,
    };
    let n_elements = ne
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64);
    if n_elements.is_none() {
        return Err(bad("element count overflows i64".into()));
    }
    let first = ne.first().copied().unwrap_or(1);
    if first % ty.block_size() as u64 != 0 {
        return Err(bad(format!(
            "ne[0] = {first} is not a multiple of the block size {}",
            ty.block_size()
        )));
    }
    ty.tensor_bytes(ne)
        .ok_or_else(|| bad("byte size overflows u64".into()))
}

/// Checks every tensor's data range: offset aligned, inside the file, and not
/// overlapping another tensor.
fn check_tensor_ranges(
    tensors: &[TensorInfo],
    data_offset: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    for t in tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                name: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_len => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    name: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if let [a, b] = pair {
            // Both ranges are in bounds, so the sum cannot overflow.
            if a.offset + a.n_bytes > b.offset {
                return Err(GgufError::TensorOverlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                });
            }
        }
    }
    Ok(())
}
