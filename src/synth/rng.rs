//! Fast, counter-seeded random fill of bf16 tensors.
//!
//! Values must be reproducible for a seed whatever the thread count, and generation must run
//! near disk speed (a 27 B checkpoint is 55 GB). So every tensor is cut into fixed blocks of
//! [`BLOCK_ELEMS`] elements; block `k` of tensor `name` gets its own SplitMix64 stream seeded
//! from `(seed, hash(name), k)`, and blocks are filled in parallel. Each value is an
//! Irwin–Hall(4) sum of four 16-bit uniforms from one 64-bit draw, rescaled to unit variance:
//! bell-shaped, bounded by ±2√3, far cheaper than Box–Muller, and all a random-weight benchmark
//! model needs.

use half::bf16;
use rayon::prelude::*;

use super::tensors::Init;

/// Elements per independently seeded block.
pub const BLOCK_ELEMS: usize = 1 << 16;

/// SplitMix64 (Steele, Lea, Flood 2014): one add and two multiply-xorshift rounds per draw.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// 64-bit FNV-1a of a tensor name: decorrelates tensors without depending on their position,
/// so `--layers` or `--no-vision` do not change the values of the tensors that remain.
pub fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// An approximately standard normal value from one 64-bit draw (Irwin–Hall of 4 uniforms).
#[inline]
fn unit_normal(x: u64) -> f32 {
    // Each 16-bit field is uniform on {0..65535}; (sum + 2) / 65536 has mean exactly 2.
    let s = (x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
    const SQRT3: f32 = 1.732_050_8;
    ((s + 2) as f32 * (1.0 / 65536.0) - 2.0) * SQRT3
}

/// The stream seed of block `block` of the tensor with name hash `tensor`.
fn block_seed(seed: u64, tensor: u64, block: u64) -> u64 {
    let mut m = SplitMix64::new(seed ^ tensor.rotate_left(17));
    let a = m.next_u64();
    SplitMix64::new(a ^ block.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// How one tensor's values are drawn: its stream (seed and name hash) and its distribution.
#[derive(Debug, Clone, Copy)]
pub struct Draw<'a> {
    pub seed: u64,
    /// [`name_hash`] of the tensor.
    pub tensor: u64,
    pub init: Init,
    /// Per-row factors on the standard deviation, with the row length in elements (the
    /// skewed router, `tensors::router_scales`); `None` = one distribution for all rows.
    pub row_scales: Option<(usize, &'a [f32])>,
}

impl Draw<'_> {
    /// The standard deviation of element `elem`.
    #[inline]
    fn std_at(&self, elem: u64) -> f32 {
        let Init::Normal { std, .. } = self.init;
        match self.row_scales {
            None => std,
            Some((row_len, scales)) => {
                let row = (elem / row_len.max(1) as u64) as usize;
                std * scales.get(row).copied().unwrap_or(1.0)
            }
        }
    }

    /// Element `elem`'s value from its draw `x`, rounded to bf16 (what a checkpoint stores).
    #[inline]
    fn value(&self, elem: u64, x: u64) -> bf16 {
        let Init::Normal { mean, .. } = self.init;
        bf16::from_f32(mean + self.std_at(elem) * unit_normal(x))
    }

    /// The generator positioned at element `elem`: block `elem / BLOCK_ELEMS`'s stream after
    /// `elem % BLOCK_ELEMS` draws (SplitMix64's state advances by a constant per draw).
    fn rng_at(&self, elem: u64) -> SplitMix64 {
        let (block, skip) = (elem / BLOCK_ELEMS as u64, elem % BLOCK_ELEMS as u64);
        let s = block_seed(self.seed, self.tensor, block);
        SplitMix64::new(s.wrapping_add(skip.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }
}

/// Fills `out` (little-endian bf16, `out.len() / 2` elements) with the values of elements
/// `first_elem ..` of the tensor, blocks in parallel. `first_elem` must be a multiple of
/// [`BLOCK_ELEMS`] so that the parallel split follows the block boundaries.
pub fn fill_bf16(d: &Draw<'_>, first_elem: u64, out: &mut [u8]) {
    debug_assert_eq!(first_elem % BLOCK_ELEMS as u64, 0);
    out.par_chunks_mut(BLOCK_ELEMS * 2)
        .enumerate()
        .for_each(|(k, dst)| {
            let start = first_elem + (k * BLOCK_ELEMS) as u64;
            let mut rng = d.rng_at(start);
            for (i, pair) in dst.chunks_exact_mut(2).enumerate() {
                let v = d.value(start + i as u64, rng.next_u64());
                pair.copy_from_slice(&v.to_bits().to_le_bytes());
            }
        });
}

/// The same values as [`fill_bf16`], widened to f32, for elements `first_elem ..
/// first_elem + out.len()` (any start; serial: the converter calling it runs many at once).
pub fn fill_f32(d: &Draw<'_>, first_elem: u64, out: &mut [f32]) {
    let mut i = 0;
    while i < out.len() {
        let elem = first_elem + i as u64;
        let in_block = BLOCK_ELEMS - (elem % BLOCK_ELEMS as u64) as usize;
        let n = in_block.min(out.len() - i);
        let mut rng = d.rng_at(elem);
        for (j, o) in out[i..i + n].iter_mut().enumerate() {
            *o = d.value(elem + j as u64, rng.next_u64()).to_f32();
        }
        i += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(init: Init) -> Draw<'static> {
        Draw {
            seed: 7,
            tensor: name_hash("t"),
            init,
            row_scales: None,
        }
    }

    fn values(init: Init, first: u64, n: usize) -> Vec<f32> {
        let mut b = vec![0u8; n * 2];
        fill_bf16(&draw(init), first, &mut b);
        b.chunks_exact(2)
            .map(|p| bf16::from_bits(u16::from_le_bytes([p[0], p[1]])).to_f32())
            .collect()
    }

    #[test]
    fn moments_match_the_init() {
        let n = 4 * BLOCK_ELEMS;
        let v = values(
            Init::Normal {
                mean: 1.0,
                std: 0.1,
            },
            0,
            n,
        );
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 1e-3, "mean {mean}");
        assert!((var.sqrt() - 0.1).abs() < 1e-3, "std {}", var.sqrt());
        assert!(v.iter().all(|&x| (x - 1.0).abs() <= 0.1 * 3.47));
    }

    #[test]
    fn batches_do_not_change_values() {
        let init = Init::normal(1.0);
        let whole = values(init, 0, 3 * BLOCK_ELEMS);
        let tail = values(init, 2 * BLOCK_ELEMS as u64, BLOCK_ELEMS);
        assert_eq!(&whole[2 * BLOCK_ELEMS..], &tail[..]);
        // Different blocks and tensors differ.
        assert_ne!(&whole[..BLOCK_ELEMS], &whole[BLOCK_ELEMS..2 * BLOCK_ELEMS]);
        assert_ne!(name_hash("a"), name_hash("b"));
    }

    #[test]
    fn f32_values_at_any_offset_equal_the_bf16_stream() {
        let scales = [0.5f32, 2.0, 1.0];
        let mut d = draw(Init::normal(0.3));
        let whole = values(Init::normal(0.3), 0, 2 * BLOCK_ELEMS + 100);
        for (first, n) in [
            (0u64, 10usize),
            (BLOCK_ELEMS as u64 - 3, 7),
            (12_345, 70_000),
        ] {
            let mut out = vec![0f32; n];
            fill_f32(&d, first, &mut out);
            assert_eq!(&out[..], &whole[first as usize..first as usize + n]);
        }
        // Row scales multiply each row's spread; the draws themselves do not change.
        let row_len = BLOCK_ELEMS / 2;
        d.row_scales = Some((row_len, &scales));
        let mut out = vec![0f32; 3 * row_len];
        fill_f32(&d, 0, &mut out);
        let mut b = vec![0u8; 3 * row_len * 2];
        fill_bf16(&d, 0, &mut b);
        for (i, (&v, p)) in out.iter().zip(b.chunks_exact(2)).enumerate() {
            assert_eq!(
                v,
                bf16::from_bits(u16::from_le_bytes([p[0], p[1]])).to_f32()
            );
            // Same draw, spread times the row's factor (both sides rounded to bf16: 2^-8 each).
            let want = scales[i / row_len] * whole[i];
            assert!((v - want).abs() <= 0.01 * want.abs(), "{i}: {v} vs {want}");
        }
    }
}
