//! The reader on hand-crafted and mutated bytes: every malformed file must
//! give a specific error, never a panic, an out-of-bounds read or a huge
//! allocation.

use quant::gguf::{GgufError, GgufFile, GgufWriter, Value, ValueType};
use quant::GgmlType;
use rand::{Rng, SeedableRng};

/// A little-endian byte builder for hand-made files.
#[derive(Default, Clone)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        let mut b = B::default();
        b.raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn raw(&mut self, x: &[u8]) -> &mut Self {
        self.0.extend_from_slice(x);
        self
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.raw(&x.to_le_bytes())
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.raw(&x.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A key with a u32 value.
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info.
    fn tensor(&mut self, name: &str, ne: &[i64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.raw(&d.to_le_bytes());
        }
        self.u32(ty).u64(offset)
    }
    /// Zero padding to `align`, then `n` data bytes.
    fn data(&mut self, align: usize, n: usize) -> &mut Self {
        self.0.resize(self.0.len().next_multiple_of(align), 0);
        self.0.resize(self.0.len() + n, 0xab);
        self
    }
    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0.clone())
    }
}

fn err(b: &B) -> GgufError {
    match b.parse() {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            // Every error renders to a message (Display must not panic either).
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[test]
fn header_errors() {
    for len in 0..24 {
        let mut b = B::header(3, 0, 0);
        b.0.truncate(len);
        let e = err(&b);
        assert!(matches!(e, GgufError::Truncated { .. }), "{len}: {e}");
    }
    let mut b = B::header(3, 0, 0);
    b.0[0] = b'X';
    assert!(matches!(err(&b), GgufError::BadMagic { .. }));

    let mut be = B::default();
    be.raw(b"GGUF").raw(&3u32.to_be_bytes()).u64(0).u64(0);
    let e = err(&be);
    assert!(matches!(e, GgufError::BigEndian { version: 3 }), "{e}");
    assert!(e.to_string().contains("big-endian"));

    for v in [0, 1, 4, 1000] {
        let e = err(&B::header(v, 0, 0));
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version } if version == v),
            "{e}"
        );
    }
    for v in [2, 3] {
        let f = B::header(v, 0, 0).parse().unwrap();
        assert_eq!(f.version(), v);
        assert!(f.metadata().is_empty() && f.tensors().is_empty());
    }
}

#[test]
fn huge_counts_fail_fast() {
    for n in [1u64 << 60, u64::MAX, 2] {
        let e = err(&B::header(3, 0, n));
        assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
        let e = err(&B::header(3, n, 0));
        assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
    }
    // An array claiming 2^60 elements fails before allocating anything.
    for elem in [ValueType::U8, ValueType::String, ValueType::Array] {
        let mut b = B::header(3, 0, 1);
        b.str("k").u32(9).u32(elem.id()).u64(1 << 60).raw(&[0; 64]);
        let e = err(&b);
        assert!(matches!(e, GgufError::CountTooLarge { .. }), "{elem}: {e}");
    }
}

#[test]
fn string_errors() {
    let mut b = B::header(3, 0, 1);
    b.u64(1 << 60).raw(b"key").raw(&[0; 20]);
    assert!(matches!(err(&b), GgufError::StringTooLong { .. }));
    let mut b = B::header(3, 0, 1);
    b.u64(100).raw(b"key").raw(&[0; 20]);
    assert!(matches!(err(&b), GgufError::Truncated { .. }));
    let mut b = B::header(3, 0, 1);
    b.u64(2).raw(&[0xc3, 0x28]).u32(4).u32(0);
    assert!(matches!(err(&b), GgufError::InvalidUtf8 { .. }));
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(8).u64(1).raw(&[0xff]);
    assert!(matches!(err(&b), GgufError::InvalidUtf8 { .. }));
}

#[test]
fn value_errors() {
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(13).u32(0);
    let e = err(&b);
    assert!(
        matches!(&e, GgufError::UnknownValueType { key, id: 13, .. } if key == "k"),
        "{e}"
    );
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(9).u32(77).u64(0);
    assert!(matches!(
        err(&b),
        GgufError::UnknownValueType { id: 77, .. }
    ));
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(7).raw(&[2]);
    assert!(matches!(err(&b), GgufError::InvalidBool { byte: 2, .. }));
    let mut b = B::header(3, 0, 2);
    b.kv_u32("k", 1).kv_u32("k", 2);
    assert!(matches!(err(&b), GgufError::DuplicateKey { .. }));
    // Value cut short.
    let mut b = B::header(3, 0, 1);
    b.str("k").u32(12).raw(&[0; 7]);
    assert!(matches!(err(&b), GgufError::Truncated { .. }));
}

#[test]
fn nested_arrays_are_read_up_to_a_depth() {
    // [[1, 2], []] as arrays of i32 (what gguf-py writes for nested lists).
    let mut b = B::header(3, 0, 1);
    b.str("n").u32(9).u32(9).u64(2);
    b.u32(5).u64(2).u32(1).u32(2);
    b.u32(5).u64(0);
    let f = b.parse().unwrap();
    let expected = Value::Array(
        ValueType::Array,
        vec![
            Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(2)]),
            Value::Array(ValueType::I32, vec![]),
        ],
    );
    assert_eq!(f.get("n"), Some(&expected));

    // 1000 levels of nesting: refused, and without exhausting the stack.
    let mut b = B::header(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..1000 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(0);
    let e = err(&b);
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{e}");
}

#[test]
fn alignment_key_is_checked_and_honoured() {
    for (ty, bytes) in [
        (10u32, 64u64.to_le_bytes().to_vec()),
        (4, 0u32.to_le_bytes().to_vec()),
        (4, 48u32.to_le_bytes().to_vec()),
    ] {
        let mut b = B::header(3, 0, 1);
        b.str("general.alignment").u32(ty).raw(&bytes);
        let e = err(&b);
        assert!(matches!(e, GgufError::BadAlignment { .. }), "{e}");
    }
    let mut b = B::header(3, 2, 1);
    b.kv_u32("general.alignment", 64);
    b.tensor("a", &[4], 0, 0).tensor("b", &[4], 0, 64);
    b.data(64, 64 + 16);
    let f = b.parse().unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()), &[0xab; 16]);

    // Offset 32 is fine with the default alignment, not with 64.
    let mut b = B::header(3, 2, 1);
    b.kv_u32("general.alignment", 64);
    b.tensor("a", &[4], 0, 0).tensor("b", &[4], 0, 32);
    b.data(64, 64 + 16);
    let e = err(&b);
    assert!(
        matches!(&e, GgufError::MisalignedTensor { name, offset: 32, alignment: 64 } if name == "b"),
        "{e}"
    );
}

#[test]
fn tensor_info_errors() {
    let one = |ne: &[i64], ty: u32, offset: u64, data: usize| {
        let mut b = B::header(3, 1, 0);
        b.tensor("w", ne, ty, offset).data(32, data);
        b
    };
    // Valid baseline, then one defect at a time.
    let f = one(&[8, 2], 0, 0, 64).parse().unwrap();
    assert_eq!(f.tensor("w").unwrap().n_bytes, 64);

    let e = err(&one(&[1, 1, 1, 1, 1], 0, 0, 4));
    assert!(matches!(e, GgufError::BadDimCount { n_dims: 5, .. }), "{e}");
    let e = err(&one(&[4, -1], 0, 0, 64));
    assert!(
        matches!(
            e,
            GgufError::NegativeDim {
                index: 1,
                value: -1,
                ..
            }
        ),
        "{e}"
    );
    for id in [4u32, 31, 1000, u32::MAX] {
        let e = err(&one(&[32], id, 0, 64));
        assert!(
            matches!(&e, GgufError::UnknownGgmlType { name, id: i } if name == "w" && *i == id),
            "{e}"
        );
    }
    let e = err(&one(&[1 << 40, 1 << 40], 0, 0, 64));
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
    let e = err(&one(&[i64::MAX, 2], 0, 0, 64));
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
    let e = err(&one(&[33], GgmlType::Q8_0.id(), 0, 64));
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
    let e = err(&one(&[8, 2], 0, 16, 128));
    assert!(matches!(e, GgufError::MisalignedTensor { .. }), "{e}");
    let e = err(&one(&[8, 2], 0, 0, 63));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    let e = err(&one(&[8, 2], 0, 1 << 40, 64));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    let e = err(&one(&[8, 2], 0, u64::MAX - 31, 64));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    // Tensor info itself cut short.
    let mut b = B::header(3, 1, 0);
    b.str("w").u32(2).u64(8).u64(8); // no type or offset
    assert!(matches!(err(&b), GgufError::Truncated { .. }));

    // A 0-dimensional tensor (gguf-py writes one for a NumPy scalar) is one element.
    let f = one(&[], 0, 0, 4).parse().unwrap();
    assert_eq!(f.tensor("w").unwrap().n_bytes, 4);
}

#[test]
fn duplicate_and_overlapping_tensors() {
    let mut b = B::header(3, 2, 0);
    b.tensor("w", &[8], 0, 0)
        .tensor("w", &[8], 0, 32)
        .data(32, 64);
    assert!(matches!(err(&b), GgufError::DuplicateTensor { .. }));
    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .data(32, 64);
    let e = err(&b);
    assert!(matches!(e, GgufError::TensorOverlap { .. }), "{e}");
    // Out of order but disjoint is accepted (gguf-py does not require order).
    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[8], 0, 32)
        .tensor("b", &[8], 0, 0)
        .data(32, 64);
    b.parse().unwrap();
}

#[test]
fn open_reports_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b"GGUF\x01\0\0\0").unwrap();
    let e = GgufFile::open(&path).unwrap_err();
    assert!(e.to_string().contains("bad.gguf"), "{e}");
    assert!(matches!(e.root(), GgufError::Truncated { .. }), "{e}");
    let mut long = B::header(1, 0, 0);
    long.raw(&[0; 8]);
    std::fs::write(&path, &long.0).unwrap();
    let e = GgufFile::open(&path).unwrap_err();
    assert!(
        matches!(e.root(), GgufError::UnsupportedVersion { version: 1 }),
        "{e}"
    );
    let e = GgufFile::open(&dir.path().join("missing.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
}

/// A small valid file with every kind of field, to mutate.
fn valid_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("deepseek".into()))
        .unwrap();
    w.add_kv("general.alignment", Value::U32(32)).unwrap();
    w.add_kv("u64", Value::U64(5)).unwrap();
    w.add_kv("b", Value::Bool(true)).unwrap();
    w.add_kv("f", Value::F64(2.5)).unwrap();
    w.add_kv(
        "toks",
        Value::Array(
            ValueType::String,
            vec![Value::String("ab".into()), Value::String("c".into())],
        ),
    )
    .unwrap();
    w.add_kv("ids", Value::Array(ValueType::I32, vec![Value::I32(-1); 3]))
        .unwrap();
    w.add_tensor("a", GgmlType::F32, &[3, 2]).unwrap();
    w.add_tensor("q", GgmlType::Q8_0, &[32]).unwrap();
    w.add_tensor("h", GgmlType::BF16, &[5]).unwrap();
    let mut dw = w.create(&path, false).unwrap();
    let n = 24 + 34 + 10;
    dw.write(&(0..n).map(|i| i as u8).collect::<Vec<_>>())
        .unwrap();
    dw.finish().unwrap().commit().unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn truncation_at_every_length_is_an_error_not_a_panic() {
    let full = valid_file();
    let f = GgufFile::from_bytes(full.clone()).unwrap();
    let data_end = f
        .tensors()
        .iter()
        .map(|t| f.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    for len in 0..full.len() {
        let r = GgufFile::from_bytes(full[..len].to_vec());
        // Cutting only trailing padding leaves a valid file.
        assert_eq!(r.is_ok(), len >= data_end, "length {len}");
    }
}

#[test]
fn mutations_at_every_position_never_panic() {
    let full = valid_file();
    let mut n_ok = 0;
    for pos in 0..full.len() {
        let orig = full[pos];
        for v in [
            0x00,
            0xff,
            0x7f,
            0x80,
            orig ^ 0x01,
            orig.wrapping_add(1),
            orig ^ 0x40,
        ] {
            let mut m = full.clone();
            m[pos] = v;
            if let Ok(f) = GgufFile::from_bytes(m) {
                n_ok += 1;
                // Whatever parsed must be self-consistent.
                for t in f.tensors() {
                    assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
                }
            }
        }
    }
    assert!(n_ok > 0);
    // Random multi-byte mutations, including 8-byte runs over counts and lengths.
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..20_000 {
        let mut m = full.clone();
        for _ in 0..rng.gen_range(1..4) {
            let pos = rng.gen_range(0..m.len());
            if rng.gen_bool(0.3) && pos + 8 <= m.len() {
                let big: u64 = rng.gen::<u64>() >> rng.gen_range(0..64);
                m[pos..pos + 8].copy_from_slice(&big.to_le_bytes());
            } else {
                m[pos] = rng.gen();
            }
        }
        if rng.gen_bool(0.2) {
            let len = rng.gen_range(0..=m.len());
            m.truncate(len);
        }
        if let Ok(f) = GgufFile::from_bytes(m) {
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
    }
}

#[test]
fn metadata_element_budget_bounds_memory() {
    use quant::gguf::MAX_METADATA_VALUES;
    let half = MAX_METADATA_VALUES / 2;
    let mut b = B::header(3, 0, 2);
    b.str("a").u32(9).u32(0).u64(half);
    b.0.resize(b.0.len() + half as usize, 1);
    b.str("b").u32(9).u32(0).u64(half + 1);
    b.0.resize(b.0.len() + half as usize + 1, 1);
    let e = err(&b);
    assert!(
        matches!(&e, GgufError::TooManyValues { key, .. } if key == "b"),
        "{e}"
    );
    // Exactly at the budget is fine.
    let mut b = B::header(3, 0, 2);
    b.str("a").u32(9).u32(0).u64(half);
    b.0.resize(b.0.len() + half as usize, 1);
    b.str("b").u32(9).u32(0).u64(half);
    b.0.resize(b.0.len() + half as usize, 1);
    let f = b.parse().unwrap();
    assert_eq!(
        f.get("b").and_then(Value::as_array).map(<[Value]>::len),
        Some(half as usize)
    );
}
