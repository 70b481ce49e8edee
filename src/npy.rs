//! Minimal NumPy `.npy` (format 1.0) writer for float32 and int64 arrays:
//! what `--logits-out` and `--trace` produce, readable with `numpy.load`.

use std::io::{self, Write};
use std::path::Path;

fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded with
    // spaces to a multiple of 64 and ended by a newline.
    let total = 10 + h.len() + 1;
    let pad = (64 - total % 64) % 64;
    h.push_str(&" ".repeat(pad));
    h.push('\n');
    let mut out = Vec::with_capacity(10 + h.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

/// Encodes a little-endian float32 array of `shape` (C order).
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = header("<f4", shape);
    out.reserve(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Encodes a little-endian int64 array of `shape` (C order).
pub fn encode_i64(shape: &[usize], data: &[i64]) -> Vec<u8> {
    let mut out = header("<i8", shape);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 array to `path`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(&encode_f32(shape, data))
}

/// Writes an int64 array to `path`.
pub fn write_i64(path: &Path, shape: &[usize], data: &[i64]) -> io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(&encode_i64(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_parsable() {
        let b = encode_f32(&[2, 3], &[0.0; 6]);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(h.contains("'shape': (2, 3)"));
        assert!(h.ends_with('\n'));
        assert_eq!(b.len(), 10 + hlen + 24);
        let b1 = encode_i64(&[4], &[1, 2, 3, 4]);
        let h1 = u16::from_le_bytes([b1[8], b1[9]]) as usize;
        assert!(std::str::from_utf8(&b1[10..10 + h1])
            .unwrap()
            .contains("(4,)"));
    }
}
