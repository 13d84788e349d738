//! Retraining a bundle's head in Rust: softmax regression for single-label models,
//! one-vs-rest logistic regression for multi-label models, on embeddings (the base training
//! embeddings shipped with the bundle plus field feedback). Deterministic for a fixed seed:
//! the only randomness is the mini-batch order, drawn from a seeded xorshift generator.
//!
//! The optimiser is mini-batch Adam with L2 regularisation, which converges in a few epochs
//! on normalised embeddings and keeps 20,000 items x 1,280 dimensions well inside the
//! 10-second budget on two cores (see `benches/`). How a head is scored is in
//! [`super::evaluation`]. What a run trains with is [`fit`]: standardised features, L2
//! chosen by cross-validation on the labels, balanced classes and a calibrated temperature,
//! all folded back into one linear layer so the exported head keeps its shape.

pub use crate::model::dataset::Dataset;
pub use fit::{fit, FitOptions, FitReport};

mod fit;

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// Adam step size.
    pub learning_rate: f32,
    /// L2 penalty on the weights.
    pub l2: f32,
    /// Seed of the mini-batch order.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 30,
            batch_size: 256,
            learning_rate: 0.01,
            l2: 1e-4,
            seed: 42,
        }
    }
}

/// A linear head: `scores = act(W x + b)`, `W` is `[labels, dim]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearHead {
    /// Embedding length.
    pub dim: usize,
    /// Number of labels.
    pub labels: usize,
    /// Weights.
    pub w: Vec<f32>,
    /// Biases.
    pub b: Vec<f32>,
    /// Softmax (single-label) or sigmoid (multi-label).
    pub multi_label: bool,
}

impl LinearHead {
    /// Scores (probabilities) for one embedding, as the exported ONNX head computes them.
    pub fn scores(&self, x: &[f32]) -> Vec<f32> {
        let mut z: Vec<f32> = (0..self.labels)
            .map(|k| dot(&self.w[k * self.dim..(k + 1) * self.dim], x) + self.b[k])
            .collect();
        if self.multi_label {
            z.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
        } else {
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0;
            z.iter_mut().for_each(|v| {
                *v = (*v - m).exp();
                s += *v;
            });
            z.iter_mut().for_each(|v| *v /= s);
        }
        z
    }

    /// The ONNX file of this head (Gemm + Softmax/Sigmoid), with the bundle's names.
    pub fn to_onnx(&self, input: &str, output: &str) -> Vec<u8> {
        use crate::model::onnx_writer::{linear_head, Activation};
        let act = if self.multi_label {
            Activation::Sigmoid
        } else {
            Activation::Softmax
        };
        linear_head(input, output, self.dim, self.labels, &self.w, &self.b, act)
    }
}

/// Dot product with eight independent partial sums, which the compiler turns into SIMD
/// (a plain `sum()` must add in order and stays scalar): about 4x faster training.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Trains a head on `data` for `labels` outputs (every row weighs the same).
pub fn train(data: &Dataset, labels: usize, multi_label: bool, opts: &TrainOptions) -> LinearHead {
    train_weighted(data, labels, multi_label, opts, None)
}

/// Mini-batch Adam on softmax / sigmoid cross-entropy, each row's loss multiplied by its
/// weight (`None`: all 1). Small sets get at least [`MIN_STEPS`] steps: 30 epochs of a
/// 200-row set in batches of 256 would otherwise be 30 steps, far from converged.
fn train_weighted(
    data: &Dataset,
    labels: usize,
    multi_label: bool,
    opts: &TrainOptions,
    weights: Option<&[f32]>,
) -> LinearHead {
    let d = data.dim;
    let n = data.len();
    let mut head = LinearHead {
        dim: d,
        labels,
        w: vec![0.0; labels * d],
        b: vec![0.0; labels],
        multi_label,
    };
    let batch = opts.batch_size.max(1);
    let per_epoch = n.div_ceil(batch).max(1);
    let epochs = opts.epochs.max(MIN_STEPS.div_ceil(per_epoch));
    let mut adam = Adam::new(labels * d, labels);
    let mut rng = XorShift(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut gw = vec![0.0f32; labels * d];
    let mut gb = vec![0.0f32; labels];
    for _ in 0..epochs {
        rng.shuffle(&mut order);
        for chunk in order.chunks(batch) {
            gw.iter_mut().for_each(|g| *g = 0.0);
            gb.iter_mut().for_each(|g| *g = 0.0);
            let mut total = 0.0f32;
            for &i in chunk {
                let x = data.row(i);
                let wi = weights.map_or(1.0, |w| w[i]);
                total += wi;
                let p = head.scores(x);
                for k in 0..labels {
                    // d(loss)/d(logit): p - y for both softmax+cross-entropy and sigmoid+BCE.
                    let target = if data.y[i].contains(&k) { 1.0 } else { 0.0 };
                    let err = (p[k] - target) * wi;
                    if err == 0.0 {
                        continue;
                    }
                    gb[k] += err;
                    let g = &mut gw[k * d..(k + 1) * d];
                    g.iter_mut().zip(x).for_each(|(g, xv)| *g += err * xv);
                }
            }
            let scale = 1.0 / total.max(f32::MIN_POSITIVE);
            adam.step(&mut head, &gw, &gb, scale, opts);
        }
    }
    head
}

/// Smallest number of optimiser steps a training gets, however few rows it has.
pub const MIN_STEPS: usize = 400;

struct Adam {
    mw: Vec<f32>,
    vw: Vec<f32>,
    mb: Vec<f32>,
    vb: Vec<f32>,
    t: i32,
}

impl Adam {
    fn new(weights: usize, biases: usize) -> Adam {
        Adam {
            mw: vec![0.0; weights],
            vw: vec![0.0; weights],
            mb: vec![0.0; biases],
            vb: vec![0.0; biases],
            t: 0,
        }
    }

    // Four parallel arrays (gradient, two moments, weight) indexed together.
    #[allow(clippy::needless_range_loop)]
    fn step(
        &mut self,
        head: &mut LinearHead,
        gw: &[f32],
        gb: &[f32],
        scale: f32,
        o: &TrainOptions,
    ) {
        let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        self.t += 1;
        let (c1, c2) = (1.0 - beta1.powi(self.t), 1.0 - beta2.powi(self.t));
        for j in 0..gw.len() {
            let g = gw[j] * scale + o.l2 * head.w[j];
            self.mw[j] = beta1 * self.mw[j] + (1.0 - beta1) * g;
            self.vw[j] = beta2 * self.vw[j] + (1.0 - beta2) * g * g;
            head.w[j] -= o.learning_rate * (self.mw[j] / c1) / ((self.vw[j] / c2).sqrt() + eps);
        }
        for k in 0..gb.len() {
            let g = gb[k] * scale;
            self.mb[k] = beta1 * self.mb[k] + (1.0 - beta1) * g;
            self.vb[k] = beta2 * self.vb[k] + (1.0 - beta2) * g * g;
            head.b[k] -= o.learning_rate * (self.mb[k] / c1) / ((self.vb[k] / c2).sqrt() + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::evaluation::evaluate;
    use super::*;

    fn blobs(n: usize, seed: u64) -> Dataset {
        // Three well-separated clusters in 8 dimensions.
        let mut rng = XorShift(seed | 1);
        let mut d = Dataset {
            dim: 8,
            ..Default::default()
        };
        for i in 0..n {
            let c = i % 3;
            let x: Vec<f32> = (0..8)
                .map(|j| {
                    (if j == c * 2 { 2.0 } else { 0.0 })
                        + ((rng.next() % 1000) as f32 / 1000.0 - 0.5)
                })
                .collect();
            d.push(&x, vec![c]);
        }
        d
    }

    #[test]
    fn softmax_regression_learns_and_is_deterministic() {
        let train_set = blobs(600, 1);
        let test_set = blobs(300, 2);
        let opts = TrainOptions {
            epochs: 20,
            ..Default::default()
        };
        let a = train(&train_set, 3, false, &opts);
        let b = train(&train_set, 3, false, &opts);
        assert_eq!(a, b, "same seed, same head");
        let e = evaluate(&a, &test_set, None);
        assert!(e.accuracy > 0.97, "{e:?}");
        assert_eq!(e.confusion.iter().flatten().sum::<u64>(), 300);
        let c = train(&train_set, 3, false, &TrainOptions { seed: 7, ..opts });
        assert_ne!(a, c, "another seed, another mini-batch order");
    }

    #[test]
    fn one_vs_rest_learns_multi_label() {
        let mut d = Dataset {
            dim: 4,
            ..Default::default()
        };
        let mut rng = XorShift(3);
        for _ in 0..800 {
            let bits = rng.next() % 4; // label 0 if bit 0, label 1 if bit 1
            let x: Vec<f32> = (0..4)
                .map(|j| if j < 2 && bits & (1 << j) != 0 { 1.5 } else { 0.0 } + (rng.next() % 100) as f32 / 500.0)
                .collect();
            let y = (0..2).filter(|j| bits & (1 << j) != 0).collect();
            d.push(&x, y);
        }
        let h = train(
            &d,
            2,
            true,
            &TrainOptions {
                epochs: 30,
                ..Default::default()
            },
        );
        let e = evaluate(&h, &d, Some(&[0.5, 0.5]));
        assert!(e.accuracy > 0.95 && e.macro_f1 > 0.95, "{e:?}");
    }
}
