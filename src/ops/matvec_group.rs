//! One token's products of several matrices over the same input in one parallel region:
//! decode's q, k and v projections (MHA), MLA's query and latent down-projections.
//!
//! Why: a decode region costs its threads time beyond its tasks (helpers arriving, the
//! last task's wait). On 16 threads of the lent Xeon that was ~30 µs of each region's
//! ~90 (`bench model --regions`, BENCHMARKS.md), while Tiny's q, k and v matrices are
//! 0.9 MB each, ~9 µs of that machine's bandwidth: three regions cost more than the
//! bytes they stream. Here the three are one region whose tasks are cut by weight bytes
//! across all matrices. Each output row is the same kernel call on the same row and
//! activations as in [`matmul_view`], so the results are the same bits (tested below).

use quant::kernels::gemm;

use super::matmul::{gemv_tasks, matmul_view, ActsByFormat};
use super::spin_region::for_each_chunk;
use crate::tensor::MatView;

/// Tasks of one group at most (a stack array: decode allocates nothing).
const MAX_TASKS: usize = 64;

thread_local! {
    /// The input quantized once per activation format; taken out while in use, as
    /// matmul's scratch.
    static ACTS: std::cell::Cell<ActsByFormat> = std::cell::Cell::new(ActsByFormat::default());
}

/// `outs[i] = ws[i] · x` for `n_tokens` tokens (`x` `[n_tokens, k]`, `outs[i]` `[n_tokens,
/// ws[i].n]`): one token in one parallel region ([`matvec_group`]), a batch as one
/// [`matmul_view`] per matrix (its products are long enough to fill their own regions).
pub fn matmul_group<const N: usize>(
    ws: [&MatView<'_>; N],
    x: &[f32],
    n_tokens: usize,
    outs: [&mut [f32]; N],
) {
    if n_tokens == 1 {
        matvec_group(ws, x, outs);
    } else {
        for (w, o) in ws.into_iter().zip(outs) {
            matmul_view(w, x, n_tokens, o);
        }
    }
}

/// `outs[i] = ws[i] · x` for one token (`x` of `k` values, every matrix `k` wide, `outs[i]`
/// of `ws[i].n` values), in one parallel region. The weight types must have dot kernels
/// (checked when weights are loaded).
pub fn matvec_group<const N: usize>(ws: [&MatView<'_>; N], x: &[f32], outs: [&mut [f32]; N]) {
    for (w, o) in ws.iter().zip(outs.iter()) {
        assert_eq!(w.k, x.len(), "matvec group: activation shape");
        assert_eq!(o.len(), w.n, "matvec group: output shape");
    }
    let mut acts = ACTS.with(|c| c.take());
    acts.reset();
    for w in &ws {
        acts.ensure(w.ty, x, 1, x.len());
    }
    // Rows per task of each matrix: `gemv_tasks` in all, each matrix cut into as many equal
    // tasks (whole 16-row tiles) as its share of the weight bytes asks for, so that the
    // tasks are near one size (a short task left at each matrix's end paired badly with the
    // long ones: 2 threads over Tiny's q, k and v ran 3, 1, 3, 1, 3, 1).
    let bytes: usize = ws.iter().map(|w| w.n * w.row_bytes()).sum();
    let want = gemv_tasks(bytes).clamp(1, MAX_TASKS - N);
    let per_task = bytes.div_ceil(want).max(1);
    let rows_per = ws.map(|w| {
        let tasks = (w.n * w.row_bytes()).div_ceil(per_task).max(1);
        w.n.div_ceil(tasks).div_ceil(16).max(1) * 16
    });
    // (matrix, first row, output rows) per task.
    let mut tasks: [Option<(usize, usize, &mut [f32])>; MAX_TASKS] = std::array::from_fn(|_| None);
    let mut n_tasks = 0;
    for (i, out) in outs.into_iter().enumerate() {
        for (c, o) in out.chunks_mut(rows_per[i]).enumerate() {
            tasks[n_tasks] = Some((i, c * rows_per[i], o));
            n_tasks += 1;
        }
    }
    let acts_ref = &acts;
    for_each_chunk(&mut tasks[..n_tasks], 1, |_, t| {
        let Some((i, r0, o)) = t[0].take() else {
            return;
        };
        let w = ws[i];
        let rb = w.row_bytes();
        let rows = o.len();
        let data = &w.data[r0 * rb..(r0 + rows) * rb];
        gemm(w.ty, w.k, data, rows, acts_ref.get(w.ty), 1, o, rows);
    });
    ACTS.with(|c| c.set(acts));
}

#[cfg(test)]
mod tests {
    use super::*;
    use quant::block::quantize_row;
    use quant::GgmlType;

    fn quantized(ty: GgmlType, k: usize, n: usize, seed: usize) -> Vec<u8> {
        let rb = ty.row_bytes(k as u64).unwrap() as usize;
        let mut b = vec![0u8; rb * n];
        for (r, d) in b.chunks_mut(rb).enumerate() {
            let row: Vec<f32> = (0..k)
                .map(|i| ((((r + seed) * 7919 + i * 104_729) % 2003) as f32 / 2003.0 - 0.5) * 0.3)
                .collect();
            quantize_row(ty, &row, d).unwrap();
        }
        b
    }

    /// Every output row is the same bits as each matrix's own product, for matrices of
    /// different types and row counts (odd counts, fewer rows than a tile, a count whose
    /// tasks end in a short one), on pools of 1 to 5 threads and with an empty matrix; and
    /// [`matmul_group`] at one token and at three.
    #[test]
    fn a_group_equals_each_product_alone() {
        let k = 512;
        let specs = [
            (GgmlType::Q4_0, 1280usize),
            (GgmlType::Q8_0, 37),
            (GgmlType::Q4_K, 200),
        ];
        let data: Vec<Vec<u8>> = specs
            .iter()
            .enumerate()
            .map(|(s, &(ty, n))| quantized(ty, k, n, s))
            .collect();
        let views: Vec<MatView<'_>> = specs
            .iter()
            .zip(&data)
            .map(|(&(ty, n), d)| MatView::new(ty, k, n, d).unwrap())
            .collect();
        let x: Vec<f32> = (0..k).map(|i| ((i % 23) as f32 - 11.0) * 0.07).collect();
        let want: Vec<Vec<f32>> = views
            .iter()
            .map(|w| {
                let mut o = vec![0.0f32; w.n];
                matmul_view(w, &x, 1, &mut o);
                o
            })
            .collect();
        for threads in 1..=5 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut o: Vec<Vec<f32>> = views.iter().map(|w| vec![f32::NAN; w.n]).collect();
                let [a, b, c] = &mut o[..] else {
                    unreachable!()
                };
                matvec_group([&views[0], &views[1], &views[2]], &x, [a, b, c]);
                assert_eq!(o, want, "{threads} threads");
                let empty = MatView::new(GgmlType::Q8_0, k, 0, &[]).unwrap();
                let mut one = vec![f32::NAN; views[1].n];
                matvec_group([&empty, &views[1]], &x, [&mut [], &mut one]);
                assert_eq!(one, want[1], "{threads} threads, with an empty matrix");
            });
        }
        // matmul_group: one token through the group, a batch through each product.
        let x3: Vec<f32> = (0..3 * k)
            .map(|i| ((i % 29) as f32 - 14.0) * 0.05)
            .collect();
        for (xs, t) in [(&x, 1usize), (&x3, 3)] {
            let mut a = vec![f32::NAN; t * views[0].n];
            let mut b = vec![f32::NAN; t * views[1].n];
            matmul_group([&views[0], &views[1]], xs, t, [&mut a, &mut b]);
            for (w, got) in views.iter().zip([&a, &b]) {
                let mut o = vec![0.0f32; t * w.n];
                matmul_view(w, xs, t, &mut o);
                assert_eq!(got, &o, "{t} tokens");
            }
        }
    }
}
