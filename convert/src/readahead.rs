//! Reading ahead of the converters: a thread loads each chunk's input bytes with direct I/O
//! (`quant::direct_io`, past the page cache) while the converters work on earlier chunks, and
//! hands them over as a [`ChunkInput`], a [`TensorSource`] that serves the chunk's reads from
//! those bytes.
//!
//! Why not the memory map: faulting a cold checkpoint in through the page cache cost more CPU
//! than the conversion itself on the 2-vCPU development VM (fresh cache pages, reclaim, then a
//! cold first touch), and with both vCPUs busy that CPU time was the limit. Direct reads into
//! a few reused buffers take ~0.2 s of system time per 2 GB.
//!
//! The loaded ranges come from [`mapping::input_spans`], which covers what
//! [`mapping::fill_rows`] reads; a read outside them (or any read of a source without files,
//! such as `synth`'s generated weights) goes to the underlying source, so the bytes converted
//! are the same either way.
//!
//! [`READERS`] threads read, taking turns chunk by chunk, so that that many reads are in
//! flight: on the development VM (virtio disk) one synchronous reader left the disk idle
//! between its requests. Memory: at most `READERS` × ([`READ_AHEAD`] + 1) + 1 chunk inputs
//! exist (queued, being loaded, in use), each about `CHUNK_ELEMS` checkpoint elements.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use quant::direct_io::{self, AlignedBuf};

use crate::error::{ConvertError, Result};
use crate::mapping::{self, MappedTensor};
use crate::safetensors::{Dtype, TensorView};
use crate::source::TensorSource;

/// Loaded chunk inputs queued ahead of the converters, per reader.
pub const READ_AHEAD: usize = 2;
/// Reader threads, each loading every `READERS`-th chunk.
pub const READERS: usize = 2;

/// One loaded range of a checkpoint tensor.
#[derive(Debug)]
struct Span {
    name: String,
    /// First element and element count.
    first: usize,
    count: usize,
    dtype: Dtype,
    /// Byte offset of the first element in the buffer.
    at: usize,
}

/// The input bytes of one chunk of output rows, and the source they came from.
#[derive(Debug, Default)]
pub struct ChunkInput {
    spans: Vec<Span>,
    buf: AlignedBuf,
}

impl ChunkInput {
    /// Loads what output rows `row0 .. row0 + n_rows` of `m` read, for every input that lies in
    /// a file (the rest stays with the source).
    fn load(
        &mut self,
        ck: &dyn TensorSource,
        m: &MappedTensor,
        row0: usize,
        n_rows: usize,
        files: &mut Files,
    ) -> Result<()> {
        self.spans.clear();
        let mut reads = Vec::new();
        let mut total = 0usize;
        for (name, first, count) in mapping::input_spans(ck, m, row0, n_rows)? {
            let Some((path, base)) = ck.file_span(name) else {
                continue;
            };
            let (shape, dtype) = ck.info(name)?;
            let numel: usize = shape.iter().product();
            let count = count.min(numel.saturating_sub(first));
            if count == 0 {
                continue;
            }
            let es = dtype.size() as u64;
            let from = base + first as u64 * es;
            let to = from + count as u64 * es;
            let (a0, a1) = (direct_io::align_down(from), direct_io::align_up(to));
            self.spans.push(Span {
                name: name.to_string(),
                first,
                count,
                dtype,
                at: total + (from - a0) as usize,
            });
            reads.push((path, a0, total, (a1 - a0) as usize, (to - a0) as usize));
            total += (a1 - a0) as usize;
        }
        self.buf.set_len(total).map_err(|e| ConvertError::Quant {
            context: format!("{}: read-ahead buffer of {total} bytes", m.name),
            message: e.to_string(),
        })?;
        for (path, offset, at, len, need) in reads {
            files.read(
                path,
                offset,
                &mut self.buf.as_mut_slice()[at..at + len],
                need,
            )?;
        }
        Ok(())
    }
}

/// [`ChunkInput`]'s bytes in front of the source they were read from.
pub struct Staged<'a> {
    pub src: &'a dyn TensorSource,
    pub input: &'a ChunkInput,
}

impl Staged<'_> {
    /// The staged span holding elements `start .. start + count` of `name`, if one does.
    fn span(&self, name: &str, start: usize, count: usize) -> Option<&Span> {
        self.input
            .spans
            .iter()
            .find(|s| s.name == name && start >= s.first && start + count <= s.first + s.count)
    }

    /// The staged elements of span `s`, as a tensor of their own.
    fn view<'v>(&'v self, s: &'v Span) -> TensorView<'v> {
        TensorView {
            name: &s.name,
            dtype: s.dtype,
            shape: &[],
            data: &self.input.buf.as_slice()[s.at..s.at + s.count * s.dtype.size()],
        }
    }
}

impl TensorSource for Staged<'_> {
    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        self.src.names()
    }

    fn info(&self, name: &str) -> Result<(&[usize], Dtype)> {
        self.src.info(name)
    }

    fn read_f32(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()> {
        match self.span(name, start, out.len()) {
            Some(s) => self.view(s).read_f32(start - s.first, out),
            None => self.src.read_f32(name, start, out),
        }
    }

    fn stored(&self, name: &str, start: usize, count: usize) -> Option<(Dtype, &[u8])> {
        match self.span(name, start, count) {
            Some(s) => self.view(s).stored(start - s.first, count),
            None => self.src.stored(name, start, count),
        }
    }

    fn tensor_bytes(&self, name: &str) -> usize {
        self.src.tensor_bytes(name)
    }

    fn data_bytes(&self) -> u64 {
        self.src.data_bytes()
    }

    fn file_span(&self, name: &str) -> Option<(&Path, u64)> {
        self.src.file_span(name)
    }
}

/// Each file read so far, opened for direct I/O where possible and ordinarily.
#[derive(Default)]
struct Files(HashMap<PathBuf, (Option<File>, File)>);

impl Files {
    /// Reads `buf.len()` bytes at `offset` (both aligned) of which the first `need` must
    /// exist (the rest may lie past the end of the file).
    fn read(&mut self, path: &Path, offset: u64, buf: &mut [u8], need: usize) -> Result<()> {
        let (direct, plain) = match self.0.entry(path.to_path_buf()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let plain = File::open(path).map_err(|err| ConvertError::io(path, err))?;
                e.insert((direct_io::open(path, false), plain))
            }
        };
        if let Some(d) = direct {
            match read_at_least(d, offset, buf, need) {
                Ok(()) => return Ok(()),
                // Refused after all (alignment, filesystem): read ordinarily from now on.
                Err(e) if direct_io::is_unsupported(&e) => *direct = None,
                Err(e) => return Err(ConvertError::io(path, e)),
            }
        }
        read_at_least(plain, offset, buf, need).map_err(|e| ConvertError::io(path, e))
    }
}

/// Reads into `buf` at `offset` until at least `need` bytes are there or the file ends (an
/// error: the tensor lies past the end of the file).
fn read_at_least(f: &File, offset: u64, buf: &mut [u8], need: usize) -> std::io::Result<()> {
    let mut done = 0;
    while done < need {
        match f.read_at(&mut buf[done..], offset + done as u64)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "tensor data ends past the end of the file",
                ))
            }
            k => done += k,
        }
    }
    Ok(())
}

/// Loads the inputs of every chunk of `chunks` (tensor, first row, rows), in order, into
/// buffers taken from `empty` (or new ones) and sends them to `full`; stops at the first error
/// (sent on) or when the receiver is gone.
fn read_ahead<'a>(
    ck: &dyn TensorSource,
    chunks: impl Iterator<Item = (&'a MappedTensor, usize, usize)>,
    full: &SyncSender<Result<ChunkInput>>,
    empty: &Receiver<ChunkInput>,
) {
    let mut files = Files::default();
    for (m, row0, n_rows) in chunks {
        let mut input = empty.try_recv().unwrap_or_default();
        let loaded = input.load(ck, m, row0, n_rows, &mut files).map(|()| input);
        let failed = loaded.is_err();
        if full.send(loaded).is_err() || failed {
            return;
        }
    }
}

/// The converters' end of the readers: hands out the chunk inputs in chunk order, taking them
/// from the readers in turn, and returns spent buffers to the reader that loaded them.
pub struct ReadAhead {
    loaded: Vec<Receiver<Result<ChunkInput>>>,
    spent: Vec<Sender<ChunkInput>>,
    /// Index of the next chunk.
    next: usize,
}

impl ReadAhead {
    /// Starts [`READERS`] threads in `scope` loading the inputs of `chunks` (a function, so
    /// that each reader walks its own copy of the list).
    pub fn start<'scope, 'env, I>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        ck: &'env dyn TensorSource,
        chunks: impl Fn() -> I + Send + Sync + Copy + 'env,
    ) -> ReadAhead
    where
        I: Iterator<Item = (&'env MappedTensor, usize, usize)>,
    {
        let mut ra = ReadAhead {
            loaded: Vec::new(),
            spent: Vec::new(),
            next: 0,
        };
        for reader in 0..READERS {
            let (loaded_tx, loaded_rx) = mpsc::sync_channel(READ_AHEAD);
            let (spent_tx, spent_rx) = mpsc::channel();
            scope.spawn(move || {
                let mine = chunks()
                    .enumerate()
                    .filter(|(k, _)| k % READERS == reader)
                    .map(|(_, c)| c);
                read_ahead(ck, mine, &loaded_tx, &spent_rx);
            });
            ra.loaded.push(loaded_rx);
            ra.spent.push(spent_tx);
        }
        ra
    }

    /// The next chunk's input (an error if its reader failed or stopped).
    pub fn next_input(&mut self) -> Result<ChunkInput> {
        let reader = self.next % READERS;
        self.next += 1;
        self.loaded[reader]
            .recv()
            .map_err(|_| ConvertError::Quant {
                context: "read-ahead".into(),
                message: "the reader stopped".into(),
            })?
    }

    /// Returns the buffer of the chunk last handed out, for reuse.
    pub fn give_back(&self, input: ChunkInput) {
        // The reader may be done already; the buffer is just dropped then.
        let _ = self.spent[(self.next + READERS - 1) % READERS].send(input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{Role, Source};
    use std::sync::Mutex;

    /// A bf16 source whose element `i` of every tensor is `i` (exact in bf16 up to 256, and
    /// different enough after that), recording every read.
    struct Recording {
        shapes: Vec<(String, Vec<usize>)>,
        reads: Mutex<Vec<(String, usize, usize)>>,
    }

    impl TensorSource for Recording {
        fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
            Box::new(self.shapes.iter().map(|(n, _)| n.as_str()))
        }
        fn info(&self, name: &str) -> Result<(&[usize], Dtype)> {
            let (_, s) = self
                .shapes
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| ConvertError::MissingTensor(name.into()))?;
            Ok((s, Dtype::Bf16))
        }
        fn read_f32(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()> {
            self.reads
                .lock()
                .unwrap()
                .push((name.to_string(), start, out.len()));
            for (k, o) in out.iter_mut().enumerate() {
                *o = (start + k) as f32;
            }
            Ok(())
        }
        fn tensor_bytes(&self, _name: &str) -> usize {
            0
        }
        fn data_bytes(&self) -> u64 {
            0
        }
    }

    /// Every read `fill_rows` makes for a range of rows lies inside one of `input_spans`'s
    /// ranges for those rows, for every kind of source and ranges that start and end
    /// mid-head and mid-expert.
    #[test]
    fn input_spans_cover_every_read_of_fill_rows() {
        let (n_head, nope, v, kv_lora) = (3usize, 4usize, 2usize, 5usize);
        let ck = Recording {
            shapes: vec![
                ("w".into(), vec![12, 8]),
                ("e0".into(), vec![5, 8]),
                ("e1".into(), vec![5, 8]),
                ("e2".into(), vec![5, 8]),
                ("kvb".into(), vec![n_head * (nope + v), kv_lora]),
            ],
            reads: Mutex::new(Vec::new()),
        };
        let tensor = |source, ne: Vec<u64>| MappedTensor {
            name: "t".into(),
            ne,
            role: Role::Attn,
            source,
        };
        let cases = [
            tensor(Source::Copy("w".into()), vec![8, 12]),
            tensor(
                Source::PermuteRope {
                    name: "w".into(),
                    n_head: 3,
                },
                vec![8, 12],
            ),
            tensor(
                Source::Stack(vec!["e0".into(), "e1".into(), "e2".into()]),
                vec![8, 5, 3],
            ),
            tensor(
                Source::KvbV {
                    name: "kvb".into(),
                    n_head,
                    nope,
                    v,
                    kv_lora,
                },
                vec![kv_lora as u64, v as u64, n_head as u64],
            ),
            tensor(
                Source::KvbK {
                    name: "kvb".into(),
                    n_head,
                    nope,
                    v,
                    kv_lora,
                },
                vec![nope as u64, kv_lora as u64, n_head as u64],
            ),
        ];
        for m in &cases {
            let ne0 = m.ne[0] as usize;
            let rows = m.ne.iter().product::<u64>() as usize / ne0;
            for row0 in 0..rows {
                for n in 1..=rows - row0 {
                    ck.reads.lock().unwrap().clear();
                    let mut out = vec![0f32; n * ne0];
                    mapping::fill_rows(&ck, m, row0, &mut out).unwrap();
                    let spans = mapping::input_spans(&ck, m, row0, n).unwrap();
                    for (name, start, len) in ck.reads.lock().unwrap().iter() {
                        assert!(
                            spans.iter().any(|&(sn, f, c)| sn == name
                                && *start >= f
                                && start + len <= f + c),
                            "{:?} rows {row0}+{n}: read {name} {start}+{len} not in {spans:?}",
                            m.source
                        );
                    }
                }
            }
        }
    }

    /// A chunk loaded from a file gives the bytes the source gives, for reads inside and
    /// outside its spans, whether or not the directory takes direct I/O.
    #[test]
    fn staged_reads_match_the_checkpoint() {
        use crate::safetensors::{Checkpoint, SafeTensorsFile};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        // Two bf16 tensors, the second at an offset that is not 4096-aligned.
        let (a, b) = (3000usize, 5000usize);
        let header = format!(
            r#"{{"a":{{"dtype":"BF16","shape":[{a}],"data_offsets":[0,{}]}},"b":{{"dtype":"BF16","shape":[10,{}],"data_offsets":[{},{}]}}}}"#,
            2 * a,
            b / 10,
            2 * a,
            2 * (a + b)
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        for i in 0..a + b {
            bytes.extend_from_slice(&((i as u16).wrapping_mul(40503) ^ 0x3f00).to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        let ck = Checkpoint::from_files(vec![SafeTensorsFile::open(&path).unwrap()]).unwrap();
        let m = MappedTensor {
            name: "t".into(),
            ne: vec![b as u64 / 10, 10],
            role: Role::Attn,
            source: Source::Copy("b".into()),
        };
        let mut input = ChunkInput::default();
        input.load(&ck, &m, 3, 4, &mut Files::default()).unwrap();
        let staged = Staged {
            src: &ck,
            input: &input,
        };
        for (start, len) in [(1500, 2000), (1500, 1), (2000, 1000), (0, 5000), (4999, 1)] {
            let (mut got, mut want) = (vec![0f32; len], vec![0f32; len]);
            staged.read_f32("b", start, &mut got).unwrap();
            ck.read_f32("b", start, &mut want).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "b {start}+{len}");
        }
    }
}
