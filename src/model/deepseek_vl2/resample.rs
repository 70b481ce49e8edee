//! Pillow's BICUBIC resize for 8-bit RGB, bit for bit.
//!
//! The reference resizes with `PIL.Image.resize(size, BICUBIC)` (through `ImageOps.pad`), and
//! the vision tower sees those exact bytes. Pillow's resampler is not textbook bicubic
//! interpolation, so this is a port of its algorithm (spec §3.5; Pillow 13.0
//! `libImaging/Resample.c`, written from the description, not copied):
//!
//! * separable: one 1-D convolution per axis, an axis only if its length changes;
//! * the kernel (Keys, a = -0.5, support 2) is **stretched by the scale when shrinking**, which
//!   makes it an antialiasing filter;
//! * weights are computed in double precision per output sample, normalised to sum 1, then
//!   turned into 22-bit fixed point (round half away from zero);
//! * each output sample is `clamp((2^21 + sum(pixel * weight)) >> 22, 0, 255)`;
//! * the image between the two passes is 8-bit (rounded and clamped);
//! * pass order (Pillow 13, python-pillow/Pillow#9549): horizontal first, unless the height
//!   shrinks by more than twice as many pixels as the width does, then vertical first.
//!
//! Only the full-image box (`box = (0, 0, w, h)`, what `Image.resize` passes when called
//! without one, as `ImageOps` does) is exposed; the coefficient routine still takes the box
//! edges so that the arithmetic is Pillow's own (`center = in0 + (i + 0.5) * scale`).

use rayon::prelude::*;

use crate::image_io::RgbImage;

/// Bits of fraction in the fixed-point weights: 32 - 8 (pixel) - 2 (overshoot headroom).
const PRECISION_BITS: u32 = 22;
/// Support of the bicubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys' cubic convolution kernel with a = -0.5, evaluated in Pillow's operation order
/// (the order matters for the last bit of the weights).
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point convolution weights for one axis: output sample `i` reads `len[i]` input
/// samples starting at `start[i]`, with weights `weights[i * ksize ..][.. len[i]]`.
#[derive(Debug, Clone)]
pub(crate) struct AxisCoeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

impl AxisCoeffs {
    /// Weights for resampling `in_size` samples (source box `[in0, in1)`) to `out_size`.
    /// `out_size` must be non-zero.
    pub(crate) fn new(in_size: usize, in0: f32, in1: f32, out_size: usize) -> Self {
        // Pillow subtracts the box edges in single precision, then widens.
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        // Pillow multiplies by the reciprocal rather than dividing by the scale.
        let ss = 1.0 / filterscale;

        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for i in 0..out_size {
            let center = f64::from(in0) + (i as f64 + 0.5) * scale;
            // C `(int)` casts truncate toward zero; the clamps follow.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).max(0) as usize;
            let n = n.min(ksize);
            let mut sum = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(n) {
                let w = bicubic_kernel((x as f64 + xmin as f64 - center + 0.5) * ss);
                *kx = w;
                sum += w;
            }
            let row = &mut weights[i * ksize..i * ksize + n];
            for (dst, &w) in row.iter_mut().zip(k.iter()) {
                let w = if sum != 0.0 { w / sum } else { w };
                *dst = to_fixed(w);
            }
            start.push(xmin as usize);
            len.push(n);
        }
        Self {
            ksize,
            start,
            len,
            weights,
        }
    }

    fn out_size(&self) -> usize {
        self.start.len()
    }

    /// (first input index, weights) of output sample `i`.
    #[inline]
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let w = &self.weights[i * self.ksize..i * self.ksize + self.len[i]];
        (self.start[i], w)
    }

    /// The input range the whole output reads: `[first, last)`.
    fn input_span(&self) -> (usize, usize) {
        let n = self.out_size();
        if n == 0 {
            return (0, 0);
        }
        (self.start[0], self.start[n - 1] + self.len[n - 1])
    }
}

/// A weight in 22-bit fixed point, rounded half away from zero and truncated like C's `(int)`.
fn to_fixed(w: f64) -> i32 {
    let s = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (s - 0.5) as i32
    } else {
        (s + 0.5) as i32
    }
}

/// Fixed-point accumulator back to a byte: floor shift, then clamp (Pillow's `clip8`).
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const ROUND_HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `[row0, row0 + n_rows)` of `src` (width `w_in`, RGB interleaved).
fn horizontal(src: &[u8], w_in: usize, row0: usize, n_rows: usize, c: &AxisCoeffs) -> Vec<u8> {
    let w_out = c.out_size();
    let mut out = vec![0u8; 3 * w_out * n_rows];
    if w_out == 0 {
        return out;
    }
    out.par_chunks_mut(3 * w_out)
        .enumerate()
        .for_each(|(r, dst)| {
            let line = &src[3 * w_in * (row0 + r)..3 * w_in * (row0 + r + 1)];
            for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                let (x0, k) = c.taps(x);
                let (mut s0, mut s1, mut s2) = (ROUND_HALF, ROUND_HALF, ROUND_HALF);
                for (j, &kw) in k.iter().enumerate() {
                    let p = &line[3 * (x0 + j)..3 * (x0 + j) + 3];
                    s0 += i32::from(p[0]) * kw;
                    s1 += i32::from(p[1]) * kw;
                    s2 += i32::from(p[2]) * kw;
                }
                px[0] = clip8(s0);
                px[1] = clip8(s1);
                px[2] = clip8(s2);
            }
        });
    out
}

/// Vertical pass: `src` has width `w` and its row 0 is input row `row_offset` of the
/// coefficient table.
fn vertical(src: &[u8], w: usize, row_offset: usize, c: &AxisCoeffs) -> Vec<u8> {
    let h_out = c.out_size();
    let mut out = vec![0u8; 3 * w * h_out];
    if w == 0 {
        return out;
    }
    let stride = 3 * w;
    out.par_chunks_mut(stride).enumerate().for_each(|(y, dst)| {
        let (y0, k) = c.taps(y);
        let y0 = y0 - row_offset;
        let mut acc = vec![ROUND_HALF; stride];
        for (j, &kw) in k.iter().enumerate() {
            let line = &src[stride * (y0 + j)..stride * (y0 + j + 1)];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += i32::from(p) * kw;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    });
    out
}

/// Resizes `src` to `out_w` x `out_h` exactly as Pillow 13's
/// `Image.resize((out_w, out_h), Image.BICUBIC)` does for an RGB image.
///
/// Same size: an exact copy. A zero output side gives an empty image (Pillow's `ImageOps`
/// never resizes to zero: it returns an empty image instead, which is the same thing).
pub fn resize_bicubic(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w_in, h_in) = (src.width() as usize, src.height() as usize);
    let (w_out, h_out) = (out_w as usize, out_h as usize);
    if (w_in, h_in) == (w_out, h_out) {
        return src.clone();
    }
    if w_out == 0 || h_out == 0 || w_in == 0 || h_in == 0 {
        return RgbImage::filled(out_w, out_h, [0, 0, 0]);
    }
    let need_h = w_out != w_in;
    let need_v = h_out != h_in;
    let ch = AxisCoeffs::new(w_in, 0.0, w_in as f32, w_out);
    let cv = AxisCoeffs::new(h_in, 0.0, h_in as f32, h_out);
    let data = src.as_raw();

    let vertical_first =
        need_h && need_v && h_out < h_in && (h_in - h_out) > 2 * w_in.saturating_sub(w_out);
    let out = match (need_h, need_v) {
        (true, false) => horizontal(data, w_in, 0, h_in, &ch),
        (false, true) => vertical(data, w_in, 0, &cv),
        (true, true) if vertical_first => {
            let tmp = vertical(data, w_in, 0, &cv);
            horizontal(&tmp, w_in, 0, h_out, &ch)
        }
        _ => {
            // Horizontal first, on the input rows the vertical pass will read only.
            let (first, last) = cv.input_span();
            let tmp = horizontal(data, w_in, first, last - first, &ch);
            vertical(&tmp, w_out, first, &cv)
        }
    };
    // The buffer length is 3 * out_w * out_h by construction.
    RgbImage::from_raw(out_w, out_h, out).unwrap_or_else(|_| RgbImage::filled(out_w, out_h, [0; 3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> RgbImage {
        let mut d = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = f(x, y);
                d.extend_from_slice(&[v, v, v]);
            }
        }
        RgbImage::from_raw(w, h, d).unwrap()
    }

    #[test]
    fn kernel_values() {
        assert_eq!(bicubic_kernel(0.0), 1.0);
        assert_eq!(bicubic_kernel(1.0), 0.0);
        assert_eq!(bicubic_kernel(2.0), 0.0);
        assert_eq!(bicubic_kernel(-0.5), 0.5625);
        assert_eq!(bicubic_kernel(1.5), -0.0625);
    }

    #[test]
    fn fixed_point_rounds_half_away_from_zero() {
        let half_ulp = 0.5 / f64::from(1u32 << 22);
        assert_eq!(to_fixed(1.0), 1 << 22);
        assert_eq!(to_fixed(half_ulp), 1);
        assert_eq!(to_fixed(-half_ulp), -1);
        assert_eq!(to_fixed(-0.0625), -(1 << 18));
    }

    #[test]
    fn upscale_2x_weights() {
        // 2 -> 4: centres 0.25, 0.75, 1.25, 1.75; support 2 -> every tap of the 2 inputs.
        let c = AxisCoeffs::new(2, 0.0, 2.0, 4);
        assert_eq!(c.ksize, 5);
        let (x0, k) = c.taps(0);
        assert_eq!(x0, 0);
        // Taps at pixel centres: t = x + 0.5 - 0.25 -> K(0.25) = 0.8671875, K(1.25) =
        // -0.0703125; their sum 0.796875 is renormalised to one.
        let (a, b) = (0.8671875 / 0.796875, -0.0703125 / 0.796875);
        assert_eq!(k, &[to_fixed(a), to_fixed(b)]);
        assert_eq!(k, &[4564390, -370086]);
        let (_, k3) = c.taps(3);
        assert_eq!(k3, &[to_fixed(b), to_fixed(a)]);
    }

    #[test]
    fn downscale_support_widens() {
        // 12 -> 3: scale 4, support 8, ksize 17.
        let c = AxisCoeffs::new(12, 0.0, 12.0, 3);
        assert_eq!(c.ksize, 17);
        let (x0, k) = c.taps(1);
        // centre 6: xmin = trunc(6 - 8 + 0.5) = -1 -> 0; xmax = trunc(14.5) = 14 -> 12.
        assert_eq!((x0, k.len()), (0, 12));
        let sum: i64 = k.iter().map(|&v| i64::from(v)).sum();
        assert!(
            (sum - (1 << 22)).abs() <= 12,
            "weights sum to one in fixed point"
        );
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::filled(37, 23, [10, 127, 250]);
        for &(w, h) in &[(5, 7), (80, 50), (37, 9), (11, 23), (100, 3)] {
            let out = resize_bicubic(&img, w, h);
            assert_eq!((out.width(), out.height()), (w, h));
            assert!(
                out.as_raw().chunks(3).all(|p| p == [10, 127, 250]),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let img = grey(9, 4, |x, y| (x * 20 + y) as u8);
        assert_eq!(resize_bicubic(&img, 9, 4), img);
    }

    #[test]
    fn overshoot_is_clipped() {
        // A hard 0/255 edge upscaled rings below 0 and above 255: bicubic's negative lobes.
        let img = grey(4, 1, |x, _| if x < 2 { 0 } else { 255 });
        let out = resize_bicubic(&img, 16, 1);
        let row: Vec<u8> = out.as_raw().chunks(3).map(|p| p[0]).collect();
        // Unclamped, the samples next to the edge would leave 0..=255; clamped, the row is a
        // monotone ramp from exactly 0 to exactly 255.
        assert_eq!(row[0], 0);
        assert_eq!(row[15], 255);
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
    }

    #[test]
    fn pass_order_changes_only_rounding() {
        // 40x400 -> 30x100: the height shrinks much more than the width, vertical runs first.
        let img = grey(40, 400, |x, y| ((x * 7 + y * 13) % 256) as u8);
        let out = resize_bicubic(&img, 30, 100);
        let ch = AxisCoeffs::new(40, 0.0, 40.0, 30);
        let cv = AxisCoeffs::new(400, 0.0, 400.0, 100);
        let hv = vertical(&horizontal(img.as_raw(), 40, 0, 400, &ch), 30, 0, &cv);
        let vh = horizontal(&vertical(img.as_raw(), 40, 0, &cv), 40, 0, 100, &ch);
        assert_eq!(out.as_raw(), &vh[..]);
        let maxdiff = hv.iter().zip(&vh).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(maxdiff.unwrap_or(0) <= 2);
    }
}
