//! Token choice from logits, with Hugging Face `generate` semantics
//! (transformers 4.38, DEEPSEEK-VL2.md §8.2): repetition penalty, then
//! temperature, top-k, top-p, min-p, then a draw from the softmax. Temperature
//! 0 is greedy (argmax, first index on ties), with the penalty still applied
//! as HF's logits processors do. Draws use an explicit-seed PCG32, so a run is
//! reproducible from its `--seed`.

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most probable ids (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of ids whose probability reaches top_p (1 = off).
    pub top_p: f32,
    /// Drop ids whose probability is below min_p times the best one (0 = off).
    pub min_p: f32,
    /// HF repetition penalty over every id seen so far (1 = off).
    pub repeat_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// The CLI defaults: temperature 0.6 (the model card advises T <= 0.7),
    /// HF's implicit top-k 50, top-p 0.9 (the reference demos), no min-p, no
    /// repetition penalty.
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.6,
            top_k: 50,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.0,
            seed: 0,
        }
    }
}

/// PCG32 (O'Neill's pcg32 XSH-RR): small, fast, deterministic.
#[derive(Clone, Debug)]
pub struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    pub fn new(seed: u64) -> Pcg32 {
        let mut r = Pcg32 {
            state: 0,
            inc: (0xda3e_39cb_94b9_5bdb << 1) | 1,
        };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(6364136223846793005).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        let hi = (self.next_u32() as u64) << 21;
        let lo = (self.next_u32() >> 11) as u64;
        ((hi | lo) as f64) / (1u64 << 53) as f64
    }
}

/// A sampler with its random state.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub cfg: SamplerConfig,
    rng: Pcg32,
}

/// HF `RepetitionPenaltyLogitsProcessor`: each distinct id in `history` has
/// its logit divided by `p` if positive, multiplied by `p` if negative.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], p: f32) {
    if p == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in history {
        let i = id as usize;
        if i < logits.len() && !seen[i] {
            seen[i] = true;
            let z = logits[i];
            logits[i] = if z < 0.0 { z * p } else { z / p };
        }
    }
}

/// Index of the largest value, the first one on ties.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

fn softmax_f64(x: &[f32]) -> Vec<f64> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x
        .iter()
        .map(|v| {
            if v.is_finite() {
                (*v as f64 - m).exp()
            } else {
                0.0
            }
        })
        .collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = Pcg32::new(cfg.seed);
        Sampler { cfg, rng }
    }

    /// Chooses the next id from `logits` (modified in place by the
    /// processors); `history` holds every id of the context so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        apply_repetition_penalty(logits, history, self.cfg.repeat_penalty);
        if self.cfg.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        if self.cfg.temperature != 1.0 {
            let t = self.cfg.temperature;
            logits.iter_mut().for_each(|z| *z /= t);
        }
        let n = logits.len();
        // Top-k: keep logits >= the k-th largest (ties at the threshold stay).
        let k = self.cfg.top_k;
        if k > 0 && k < n {
            let mut sorted = logits.to_vec();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
            let thr = sorted[k - 1];
            logits.iter_mut().for_each(|z| {
                if *z < thr {
                    *z = f32::NEG_INFINITY
                }
            });
        }
        // Top-p: sort ascending, drop ids whose cumulative probability is
        // <= 1 - top_p, always keeping the most probable.
        if self.cfg.top_p < 1.0 {
            let probs = softmax_f64(logits);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| {
                logits[a]
                    .partial_cmp(&logits[b])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let mut cum = 0.0f64;
            let cut = 1.0 - self.cfg.top_p as f64;
            for (j, &i) in order.iter().enumerate() {
                cum += probs[i];
                if cum <= cut && j + 1 < n {
                    logits[i] = f32::NEG_INFINITY;
                }
            }
        }
        // Min-p: relative to the most probable id.
        if self.cfg.min_p > 0.0 {
            let probs = softmax_f64(logits);
            let top = probs.iter().copied().fold(0.0, f64::max);
            let thr = self.cfg.min_p as f64 * top;
            for (z, p) in logits.iter_mut().zip(&probs) {
                if *p < thr {
                    *z = f32::NEG_INFINITY;
                }
            }
        }
        let probs = softmax_f64(logits);
        let r = self.rng.next_f64();
        let mut cum = 0.0;
        let mut last = argmax(logits);
        for (i, p) in probs.iter().enumerate() {
            if *p > 0.0 {
                last = i;
                cum += p;
                if r < cum {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_first_on_ties() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        });
        let mut l = vec![0.1, 3.0, 3.0, -1.0];
        assert_eq!(s.sample(&mut l, &[]), 1);
    }

    #[test]
    fn repetition_penalty_follows_hf() {
        let mut l = vec![2.0f32, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
        // Greedy with a penalty can change the choice.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 3.0,
            ..Default::default()
        });
        let mut l = vec![2.0f32, 1.0];
        assert_eq!(s.sample(&mut l, &[0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_is_deterministic() {
        let base: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 * 0.1).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        for _ in 0..5 {
            let mut l = base.clone();
            assert_eq!(s.sample(&mut l, &[]) as usize, argmax(&base));
        }
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 9,
            ..Default::default()
        };
        let run = |cfg: &SamplerConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..20)
                .map(|_| s.sample(&mut base.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&cfg), run(&cfg));
        assert_ne!(
            run(&cfg),
            run(&SamplerConfig {
                seed: 10,
                ..cfg.clone()
            })
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        // probs ~ [0.6, 0.3, 0.1]: top_p 0.5 keeps only id 0, 0.8 keeps 0 and 1.
        let l = vec![(0.6f32).ln(), (0.3f32).ln(), (0.1f32).ln()];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut l.clone(), &[]), 0);
        }
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            ..Default::default()
        });
        let mut seen = [0usize; 3];
        for _ in 0..400 {
            seen[s.sample(&mut l.clone(), &[]) as usize] += 1;
        }
        assert_eq!(seen[2], 0);
        assert!(seen[1] > 0 && seen[0] > seen[1]);
    }

    #[test]
    fn min_p_drops_unlikely_ids() {
        let l = vec![(0.7f32).ln(), (0.25f32).ln(), (0.05f32).ln()];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.2,
            ..Default::default()
        });
        for _ in 0..300 {
            assert_ne!(s.sample(&mut l.clone(), &[]), 2);
        }
    }
}
