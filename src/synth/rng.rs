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

/// Fills `out` (little-endian bf16, `out.len() / 2` elements) with the values of elements
/// `first_elem ..` of the tensor. `first_elem` must be a multiple of [`BLOCK_ELEMS`] so that
/// block boundaries, and therefore values, do not depend on how a tensor is cut into batches.
pub fn fill_bf16(seed: u64, tensor: u64, init: Init, first_elem: u64, out: &mut [u8]) {
    debug_assert_eq!(first_elem % BLOCK_ELEMS as u64, 0);
    let Init::Normal { mean, std } = init;
    let first_block = first_elem / BLOCK_ELEMS as u64;
    out.par_chunks_mut(BLOCK_ELEMS * 2)
        .enumerate()
        .for_each(|(k, dst)| {
            let mut rng = SplitMix64::new(block_seed(seed, tensor, first_block + k as u64));
            for pair in dst.chunks_exact_mut(2) {
                let v = mean + std * unit_normal(rng.next_u64());
                pair.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(init: Init, first: u64, n: usize) -> Vec<f32> {
        let mut b = vec![0u8; n * 2];
        fill_bf16(7, name_hash("t"), init, first, &mut b);
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
}
