//! Writer → reader round trips, the writer's validation, and its atomic
//! file handling (temporary file, overwrite rules, cleanup on drop).

use std::path::Path;

use quant::gguf::{GgufError, GgufFile, GgufWriter, Value, ValueType};
use quant::GgmlType;
use rand::{Rng, SeedableRng};

/// One metadata entry of every value type, plus arrays of each element type
/// (string arrays and empty arrays included).
fn all_values() -> Vec<(String, Value)> {
    let scalars = vec![
        Value::U8(200),
        Value::I8(-100),
        Value::U16(60000),
        Value::I16(-30000),
        Value::U32(4_000_000_000),
        Value::I32(-2_000_000_000),
        Value::F32(-1.5e-3),
        Value::Bool(true),
        Value::String("héllo wörld ✓".into()),
        Value::U64(u64::MAX - 1),
        Value::I64(i64::MIN + 1),
        Value::F64(std::f64::consts::PI),
    ];
    let mut kv: Vec<(String, Value)> = scalars
        .iter()
        .map(|v| (format!("test.scalar.{}", v.type_name()), v.clone()))
        .collect();
    kv.push(("test.bool_false".into(), Value::Bool(false)));
    kv.push(("test.empty_string".into(), Value::String(String::new())));
    for v in &scalars {
        let ty = v.value_type();
        kv.push((
            format!("test.array.{}", ty.name()),
            Value::Array(ty, vec![v.clone(), v.clone(), v.clone()]),
        ));
        kv.push((
            format!("test.empty_array.{}", ty.name()),
            Value::Array(ty, vec![]),
        ));
    }
    kv.push((
        "tokenizer.ggml.tokens".into(),
        Value::Array(
            ValueType::String,
            ["<s>", "</s>", "", "▁the", "日本"]
                .iter()
                .map(|s| Value::String((*s).into()))
                .collect(),
        ),
    ));
    kv
}

/// (name, type, ne, byte size from ggml-common.h block sizes, by hand).
fn tensor_specs() -> Vec<(&'static str, GgmlType, Vec<u64>, u64)> {
    vec![
        ("f32", GgmlType::F32, vec![7, 3], 7 * 3 * 4),
        ("f16", GgmlType::F16, vec![4, 2, 3], 4 * 2 * 3 * 2),
        ("bf16", GgmlType::BF16, vec![5], 5 * 2),
        ("q8_0", GgmlType::Q8_0, vec![64, 2], 2 * 34 * 2),
        ("q4_k", GgmlType::Q4_K, vec![256, 1, 2], 144 * 2),
        ("q6_k", GgmlType::Q6_K, vec![512, 1, 1, 1], 2 * 210),
        ("i32", GgmlType::I32, vec![3], 12),
        ("empty", GgmlType::F32, vec![0, 4], 0),
        ("q4_0", GgmlType::Q4_0, vec![32], 18),
    ]
}

fn random_bytes(rng: &mut rand::rngs::StdRng, n: u64) -> Vec<u8> {
    (0..n).map(|_| rng.gen()).collect()
}

fn write_sample(path: &Path, chunk: usize, alignment: Option<u32>) -> Vec<Vec<u8>> {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.add_kv("general.alignment", Value::U32(a)).unwrap();
    }
    for (k, v) in all_values() {
        w.add_kv(&k, v).unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut datas = Vec::new();
    for (name, ty, ne, n_bytes) in tensor_specs() {
        w.add_tensor(name, ty, &ne).unwrap();
        datas.push(random_bytes(&mut rng, n_bytes));
    }
    let mut dw = w.create(path, false).unwrap();
    // Stream everything as one byte stream cut into chunks that span tensors.
    let all: Vec<u8> = datas.concat();
    for c in all.chunks(chunk) {
        dw.write(c).unwrap();
    }
    assert!(dw.pending().is_none());
    let pending = dw.finish().unwrap();
    assert_eq!(pending.commit().unwrap(), path);
    datas
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn check_sample(f: &GgufFile, datas: &[Vec<u8>], alignment: u64) {
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), alignment);
    assert_eq!(f.data_offset() % alignment, 0);
    let mut expected = all_values();
    if alignment != 32 {
        expected.insert(
            0,
            ("general.alignment".into(), Value::U32(alignment as u32)),
        );
    }
    assert_eq!(f.metadata(), expected.as_slice());
    for (k, v) in &expected {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert_eq!(f.get("missing"), None);
    let specs = tensor_specs();
    assert_eq!(f.tensors().len(), specs.len());
    let mut next_offset = 0;
    for ((name, ty, ne, n_bytes), data) in specs.iter().zip(datas) {
        let t = f.tensor(name).unwrap();
        assert_eq!((t.ty, &t.ne, t.n_bytes), (*ty, ne, *n_bytes), "{name}");
        // ggml's rule: offsets are sequential, each padded to the alignment.
        assert_eq!(t.offset, next_offset, "{name}");
        next_offset = (t.offset + n_bytes).div_ceil(alignment) * alignment;
        assert_eq!(f.tensor_data(t), data.as_slice(), "{name}");
    }
    // The file ends after the last tensor's padding, as gguf-py writes it.
    assert_eq!(f.file_len(), f.data_offset() + next_offset);
}

#[test]
fn round_trip_every_value_type_and_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    for (i, chunk) in [1usize, 7, 100, 1 << 20].into_iter().enumerate() {
        let path = dir.path().join(format!("m{i}.gguf"));
        let datas = write_sample(&path, chunk, None);
        let f = GgufFile::open(&path).unwrap();
        check_sample(&f, &datas, 32);
        let g = GgufFile::from_bytes(std::fs::read(&path).unwrap()).unwrap();
        check_sample(&g, &datas, 32);
    }
    // Only the committed files remain: no temporary files left behind.
    assert_eq!(
        dir_entries(dir.path()),
        ["m0.gguf", "m1.gguf", "m2.gguf", "m3.gguf"]
    );
}

#[test]
fn custom_alignment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    let datas = write_sample(&path, 13, Some(256));
    let f = GgufFile::open(&path).unwrap();
    check_sample(&f, &datas, 256);
}

#[test]
fn mapped_tensor_data_is_aligned_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    write_sample(&path, 4096, None);
    let f = GgufFile::open(&path).unwrap();
    let g = GgufFile::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    for file in [&f, &g] {
        for t in file.tensors().iter().filter(|t| t.n_bytes > 0) {
            assert_eq!(file.tensor_data(t).as_ptr() as usize % 32, 0, "{}", t.name);
        }
    }
}

/// The exact bytes of a minimal file, spelled out from the format
/// description (DEEPSEEK-VL2.md §9.1), independent of the writer's code.
#[test]
fn minimal_file_bytes_match_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("min.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("a", Value::U32(1)).unwrap();
    w.add_kv(
        "s",
        Value::Array(ValueType::String, vec![Value::String("xy".into())]),
    )
    .unwrap();
    w.add_tensor("t", GgmlType::F32, &[2]).unwrap();
    let mut dw = w.create(&path, false).unwrap();
    dw.write(&1.0f32.to_le_bytes()).unwrap();
    dw.write(&2.0f32.to_le_bytes()).unwrap();
    dw.finish().unwrap().commit().unwrap();

    let mut e = Vec::new();
    e.extend_from_slice(b"GGUF");
    e.extend_from_slice(&3u32.to_le_bytes());
    e.extend_from_slice(&1u64.to_le_bytes()); // tensors
    e.extend_from_slice(&2u64.to_le_bytes()); // kv pairs
    e.extend_from_slice(&1u64.to_le_bytes());
    e.extend_from_slice(b"a");
    e.extend_from_slice(&4u32.to_le_bytes()); // u32
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&1u64.to_le_bytes());
    e.extend_from_slice(b"s");
    e.extend_from_slice(&9u32.to_le_bytes()); // array
    e.extend_from_slice(&8u32.to_le_bytes()); // of string
    e.extend_from_slice(&1u64.to_le_bytes());
    e.extend_from_slice(&2u64.to_le_bytes());
    e.extend_from_slice(b"xy");
    e.extend_from_slice(&1u64.to_le_bytes());
    e.extend_from_slice(b"t");
    e.extend_from_slice(&1u32.to_le_bytes()); // n_dims
    e.extend_from_slice(&2u64.to_le_bytes()); // ne[0]
    e.extend_from_slice(&0u32.to_le_bytes()); // F32
    e.extend_from_slice(&0u64.to_le_bytes()); // offset
    e.resize(e.len().next_multiple_of(32), 0);
    e.extend_from_slice(&1.0f32.to_le_bytes());
    e.extend_from_slice(&2.0f32.to_le_bytes());
    e.resize(e.len().next_multiple_of(32), 0);
    assert_eq!(std::fs::read(&path).unwrap(), e);
}

#[test]
fn metadata_only_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("clip".into()))
        .unwrap();
    let dw = w.create(&path, false).unwrap();
    dw.finish().unwrap().commit().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        f.get("general.architecture").and_then(Value::as_str),
        Some("clip")
    );
    assert!(f.tensors().is_empty());
}

#[test]
fn existing_file_is_refused_without_overwrite_and_replaced_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    std::fs::write(&path, b"keep me").unwrap();
    let err = GgufWriter::new().create(&path, false).unwrap_err();
    assert!(matches!(err, GgufError::FileExists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    assert_eq!(dir_entries(dir.path()), ["x.gguf"]);

    let mut w = GgufWriter::new();
    w.add_kv("k", Value::I8(-1)).unwrap();
    w.create(&path, true)
        .unwrap()
        .finish()
        .unwrap()
        .commit()
        .unwrap();
    assert_eq!(
        GgufFile::open(&path).unwrap().get("k"),
        Some(&Value::I8(-1))
    );
    assert_eq!(dir_entries(dir.path()), ["x.gguf"]);
}

#[test]
fn file_appearing_before_commit_is_not_clobbered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.gguf");
    let pending = GgufWriter::new()
        .create(&path, false)
        .unwrap()
        .finish()
        .unwrap();
    let tmp = pending.path().to_path_buf();
    let tmp_name = tmp.file_name().unwrap().to_string_lossy().into_owned();
    assert!(tmp_name.starts_with(".race.gguf.tmp-"), "{tmp_name}");
    assert!(tmp.exists());
    std::fs::write(&path, b"someone else").unwrap();
    let err = pending.commit().unwrap_err();
    assert!(matches!(err, GgufError::FileExists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else");
    assert_eq!(dir_entries(dir.path()), ["race.gguf"]);
}

#[test]
fn dropping_without_commit_removes_the_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::F32, &[4]).unwrap();
    let mut dw = w.clone().create(&path, false).unwrap();
    dw.write(&[0; 8]).unwrap();
    assert_eq!(dir_entries(dir.path()).len(), 1);
    drop(dw);
    assert!(dir_entries(dir.path()).is_empty());

    let mut dw = w.create(&path, false).unwrap();
    dw.write(&[0; 16]).unwrap();
    let pending = dw.finish().unwrap();
    drop(pending);
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn data_writer_counts_bytes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[2]).unwrap();
    w.add_tensor("b", GgmlType::F16, &[2]).unwrap();

    let mut dw = w.clone().create(&path, false).unwrap();
    dw.write(&[1; 9]).unwrap();
    assert_eq!(dw.pending(), Some(("b", 3)));
    match dw.finish().unwrap_err() {
        GgufError::IncompleteTensor {
            name,
            expected,
            written,
        } => assert_eq!((name.as_str(), expected, written), ("b", 4, 1)),
        e => panic!("{e}"),
    }

    let mut dw = w.create(&path, false).unwrap();
    let err = dw.write(&[1; 13]).unwrap_err();
    match err {
        GgufError::TooManyBytes { last, extra } => assert_eq!((last.as_str(), extra), ("b", 1)),
        e => panic!("{e}"),
    }
    drop(dw);
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn add_tensor_validates() {
    let mut w = GgufWriter::new();
    let name63 = "n".repeat(63);
    w.add_tensor(&name63, GgmlType::F32, &[1]).unwrap();
    let e = w
        .add_tensor(&"n".repeat(64), GgmlType::F32, &[1])
        .unwrap_err();
    assert!(matches!(e, GgufError::BadTensorName { .. }), "{e}");
    let e = w.add_tensor("", GgmlType::F32, &[1]).unwrap_err();
    assert!(matches!(e, GgufError::BadTensorName { .. }), "{e}");
    let e = w.add_tensor(&name63, GgmlType::F32, &[1]).unwrap_err();
    assert!(matches!(e, GgufError::DuplicateTensor { .. }), "{e}");
    let e = w.add_tensor("z", GgmlType::F32, &[]).unwrap_err();
    assert!(matches!(e, GgufError::BadDimCount { n_dims: 0, .. }), "{e}");
    let e = w.add_tensor("z", GgmlType::F32, &[1; 5]).unwrap_err();
    assert!(matches!(e, GgufError::BadDimCount { n_dims: 5, .. }), "{e}");
    let e = w.add_tensor("z", GgmlType::Q8_0, &[33, 2]).unwrap_err();
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
    let e = w.add_tensor("z", GgmlType::Q4_K, &[128]).unwrap_err();
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
    let e = w
        .add_tensor("z", GgmlType::F32, &[1 << 32, 1 << 32])
        .unwrap_err();
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
    // A rejected tensor leaves no trace: the name is still free.
    w.add_tensor("z", GgmlType::Q4_K, &[256, 3]).unwrap();
}

#[test]
fn add_kv_validates() {
    let mut w = GgufWriter::new();
    w.add_kv("k", Value::U8(1)).unwrap();
    let e = w.add_kv("k", Value::U8(2)).unwrap_err();
    assert!(matches!(e, GgufError::DuplicateKey { .. }), "{e}");
    let nested = Value::Array(
        ValueType::Array,
        vec![Value::Array(ValueType::U8, vec![Value::U8(1)])],
    );
    let e = w.add_kv("nested", nested).unwrap_err();
    assert!(matches!(e, GgufError::BadValue { .. }), "{e}");
    let mixed = Value::Array(ValueType::U32, vec![Value::U32(1), Value::I32(2)]);
    let e = w.add_kv("mixed", mixed).unwrap_err();
    assert!(matches!(e, GgufError::BadValue { .. }), "{e}");
    for bad in [Value::U32(0), Value::U32(48), Value::U64(64)] {
        let e = w.add_kv("general.alignment", bad).unwrap_err();
        assert!(matches!(e, GgufError::BadAlignment { .. }), "{e}");
    }
    w.add_kv("general.alignment", Value::U32(64)).unwrap();
}

#[test]
fn data_writer_refuses_work_after_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[1]).unwrap();
    let mut dw = w.create(&path, false).unwrap();
    assert!(dw.write(&[0; 5]).is_err());
    // Every tensor is complete, but the caller saw an error: no file.
    assert!(dw.write(&[]).is_err());
    assert!(dw.finish().is_err());
    assert!(dir_entries(dir.path()).is_empty());
}

/// Rows made in place (`write_rows`) give the very file `write` gives: tensors larger than
/// several write buffers (8 MiB) with rows of 1,258 bytes, so rows straddle buffer
/// boundaries, in runs of varying length, with a small tensor and its padding between.
#[test]
fn rows_written_in_place_equal_copied_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let row_bytes = 37 * 34; // 37 Q8_0 blocks
    let rows = [20_000usize, 3, 7_001];
    let mut w = GgufWriter::new();
    for (i, &n) in rows.iter().enumerate() {
        w.add_tensor(&format!("t{i}"), GgmlType::Q8_0, &[37 * 32, n as u64])
            .unwrap();
    }
    let byte = |t: usize, r: usize, j: usize| (t * 131 + r * 7 + j * 13 + r / 255) as u8;
    let copied = dir.path().join("copied.gguf");
    let mut dw = w.clone().create(&copied, false).unwrap();
    for (t, &n) in rows.iter().enumerate() {
        let data: Vec<u8> = (0..n)
            .flat_map(|r| (0..row_bytes).map(move |j| byte(t, r, j)))
            .collect();
        dw.write(&data).unwrap();
    }
    dw.finish().unwrap().commit().unwrap();

    let in_place = dir.path().join("in_place.gguf");
    let mut dw = w.create(&in_place, false).unwrap();
    let mut calls = 0;
    for (t, &n) in rows.iter().enumerate() {
        let mut r0 = 0;
        for run in [1usize, 5_000, 2, 9_000].into_iter().cycle() {
            let run = run.min(n - r0);
            if run == 0 {
                break;
            }
            dw.write_rows(
                row_bytes,
                run,
                |first, dst: &mut [u8]| -> Result<(), GgufError> {
                    calls += 1;
                    assert!(!dst.is_empty() && dst.len().is_multiple_of(row_bytes));
                    for (k, row) in dst.chunks_exact_mut(row_bytes).enumerate() {
                        for (j, b) in row.iter_mut().enumerate() {
                            *b = byte(t, r0 + first + k, j);
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
            r0 += run;
        }
    }
    dw.finish().unwrap().commit().unwrap();
    assert!(calls > 8, "runs split at buffer boundaries: {calls} calls");
    assert!(std::fs::read(&copied).unwrap() == std::fs::read(&in_place).unwrap());
}

/// `write_rows` refuses rows past the current tensor, and a failing fill fails the writer:
/// neither leaves a file behind.
#[test]
fn write_rows_refuses_overruns_and_stops_at_fill_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F16, &[4, 2]).unwrap();
    let ok = |_: usize, _: &mut [u8]| -> Result<(), GgufError> { Ok(()) };

    let mut dw = w.clone().create(&path, false).unwrap();
    dw.write_rows(8, 1, ok).unwrap();
    match dw.write_rows(8, 2, ok).unwrap_err() {
        GgufError::RowsPastTensor { name, rows, left } => {
            assert_eq!((name.as_str(), rows, left), ("a", 16, 8))
        }
        e => panic!("{e}"),
    }
    assert!(dw.write(&[0; 8]).is_err(), "the writer stays failed");
    drop(dw);

    let mut dw = w.create(&path, false).unwrap();
    let failing = |_: usize, _: &mut [u8]| -> Result<(), GgufError> {
        Err(GgufError::TooManyBytes {
            last: "x".into(),
            extra: 1,
        })
    };
    assert!(dw.write_rows(8, 2, failing).is_err());
    assert!(dw.finish().is_err());
    assert!(dir_entries(dir.path()).is_empty());
}

/// `advise_huge_pages` marks the mapping for huge pages (`hg` in the kernel's `VmFlags`) around
/// the excepted tensor and leaves that tensor's pages unmarked; the bytes read the same.
#[cfg(target_os = "linux")]
#[test]
fn huge_page_advice_skips_the_excepted_tensors() {
    if !Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
        println!("skipped: this kernel has no transparent huge pages");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.gguf");
    let mut w = GgufWriter::new();
    // Page-aligned tensors of four pages each, so the advice's page bounds are the tensors'.
    w.add_kv("general.alignment", Value::U32(4096)).unwrap();
    let names = ["first", "embedding", "last"];
    for name in names {
        w.add_tensor(name, GgmlType::F32, &[4096]).unwrap();
    }
    let mut dw = w.create(&path, false).unwrap();
    let datas: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 4 * 4096]).collect();
    for d in &datas {
        dw.write(d).unwrap();
    }
    dw.finish().unwrap().commit().unwrap();

    let f = GgufFile::open(&path).unwrap();
    let embedding = f.tensor("embedding").unwrap();
    f.advise_huge_pages(&[embedding]);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    // (start, end, flags) of every mapping of this process.
    let mut vmas = Vec::new();
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        let Some((range, _)) = line.split_once(' ') else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        let flags = lines
            .by_ref()
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap_or_default();
        vmas.push((a, b, flags.split_whitespace().any(|f| f == "hg")));
    }
    for (name, data) in names.iter().zip(&datas) {
        let bytes = f.tensor_data(f.tensor(name).unwrap());
        assert_eq!(bytes, &data[..], "{name}");
        let (start, end) = (
            bytes.as_ptr() as usize,
            bytes.as_ptr() as usize + bytes.len(),
        );
        let marked: Vec<bool> = vmas
            .iter()
            .filter(|(a, b, _)| *a < end && start < *b)
            .map(|v| v.2)
            .collect();
        let want = *name != "embedding";
        assert!(
            !marked.is_empty() && marked.iter().all(|&m| m == want),
            "{name}: huge-page flags of its mappings {marked:?}, want all {want}"
        );
    }
}

/// The preload's ranges are the whole mapping less exactly the excepted tensors' data (in
/// file order), and populating reads the same bytes in while a range past the mapping's end
/// is refused.
#[test]
fn ranges_except_leave_out_the_excepted_data_and_populate_stays_in_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.gguf");
    let mut w = GgufWriter::new();
    let names = ["first", "embedding", "middle", "last"];
    for (i, name) in names.iter().enumerate() {
        w.add_tensor(name, GgmlType::F32, &[100 + 7 * i as u64])
            .unwrap();
    }
    let mut dw = w.create(&path, false).unwrap();
    let datas: Vec<Vec<u8>> = (0..4u8)
        .map(|i| vec![i + 1; 4 * (100 + 7 * i as usize)])
        .collect();
    for d in &datas {
        dw.write(d).unwrap();
    }
    dw.finish().unwrap().commit().unwrap();
    let f = GgufFile::open(&path).unwrap();
    let len = f.file_len() as usize;

    assert_eq!(f.ranges_except(&[]), vec![0..len]);
    let span = |name: &str| {
        let t = f.tensor(name).unwrap();
        let start = (f.data_offset() + t.offset) as usize;
        start..start + t.n_bytes as usize
    };
    let (e, m) = (span("embedding"), span("middle"));
    let ranges = f.ranges_except(&[f.tensor("middle").unwrap(), f.tensor("embedding").unwrap()]);
    assert_eq!(ranges, vec![0..e.start, e.end..m.start, m.end..len]);
    // Neighbours: what lies between them (the alignment padding) stays in.
    let first = span("first");
    let ranges = f.ranges_except(&[f.tensor("embedding").unwrap(), f.tensor("first").unwrap()]);
    let padding = (first.end < e.start).then_some(first.end..e.start);
    let want: Vec<_> = std::iter::once(0..first.start)
        .chain(padding)
        .chain(std::iter::once(e.end..len))
        .collect();
    assert_eq!(ranges, want);

    if cfg!(target_os = "linux") {
        for r in f.ranges_except(&[f.tensor("embedding").unwrap()]) {
            f.populate(r).unwrap();
        }
        f.populate(0..len).unwrap();
        f.populate(len..len).unwrap();
    }
    #[allow(clippy::reversed_empty_ranges)]
    let bad = [len..len + 1, 0..len + 4096, 5..4];
    for r in bad {
        let e = f.populate(r.clone()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{r:?}: {e}");
    }
    for (name, data) in names.iter().zip(&datas) {
        assert_eq!(f.tensor_data(f.tensor(name).unwrap()), &data[..], "{name}");
    }
}
