//! How a run trains a head, the way a careful scikit-learn recipe would: features are
//! standardised (mean 0, variance 1 per dimension, from the training rows), classes are
//! balanced (each row weighs inversely to its label's frequency, capped), the L2 penalty
//! is chosen by stratified k-fold cross-validation on the labels (log-loss of the held-out
//! folds), and the scores are calibrated by one temperature fitted on those out-of-fold
//! logits. Standardisation and temperature are folded back into the weights and biases, so
//! the exported head is still one Gemm plus Softmax/Sigmoid and agents need nothing new.
//!
//! Cross-validation costs folds x grid trainings, so it runs only when the training set is
//! small enough (`cv_max_rows`, the new-task case of a few hundred field labels); a large
//! retraining (a bundle's base data plus feedback) keeps the configured L2 and says so.

use super::{train_weighted, Dataset, LinearHead, TrainOptions};
use serde::Serialize;

/// How [`fit`] trains.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// The optimiser's settings (its `l2` is used when cross-validation does not run).
    pub train: TrainOptions,
    /// L2 penalties tried by cross-validation.
    pub l2_grid: Vec<f32>,
    /// Folds of the cross-validation.
    pub folds: usize,
    /// Cross-validate only sets of at most this many rows.
    pub cv_max_rows: usize,
    /// Weigh rows inversely to their label's frequency (single-label).
    pub balance: bool,
    /// Fit a temperature on out-of-fold logits.
    pub calibrate: bool,
    /// Per row, its group (rows of one group, e.g. the flips of one tile, share a fold);
    /// `None`: every row is its own group.
    pub groups: Option<Vec<usize>>,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            train: TrainOptions::default(),
            l2_grid: vec![1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
            folds: 5,
            cv_max_rows: 4000,
            balance: true,
            calibrate: true,
            groups: None,
        }
    }
}

/// One point of the cross-validation.
#[derive(Debug, Clone, Serialize)]
pub struct CvPoint {
    /// The L2 penalty.
    pub l2: f32,
    /// Weighted mean log-loss of the held-out folds.
    pub log_loss: f64,
    /// Share of held-out rows whose top label (single-label) or whole label set
    /// (multi-label, at 0.5) was right.
    pub accuracy: f64,
}

/// What [`fit`] chose, stored in the run's report.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// The L2 penalty trained with.
    pub l2: f32,
    /// Folds used (0: no cross-validation).
    pub folds: usize,
    /// The grid and its scores.
    pub cv: Vec<CvPoint>,
    /// The calibration temperature (logits are divided by it; 1: none).
    pub temperature: f32,
    /// Weight of a row of each label (1 for all when not balanced).
    pub label_weights: Vec<f32>,
    /// Why cross-validation or calibration did not run, if it did not.
    pub note: Option<String>,
}

/// Largest weight a row of a rare label gets relative to the mean.
pub const MAX_WEIGHT: f32 = 10.0;

/// Trains a head on `data`: standardised, balanced, L2 by cross-validation, calibrated.
/// Deterministic for a fixed seed.
pub fn fit(
    data: &Dataset,
    labels: usize,
    multi_label: bool,
    opts: &FitOptions,
) -> (LinearHead, FitReport) {
    let (mean, std) = moments(data);
    let z = standardised(data, &mean, &std);
    let label_weights = if opts.balance && !multi_label {
        balanced(data, labels)
    } else {
        vec![1.0; labels]
    };
    let weights: Vec<f32> = data
        .y
        .iter()
        .map(|y| y.first().map_or(1.0, |&k| label_weights[k]))
        .collect();
    let mut report = FitReport {
        l2: opts.train.l2,
        folds: 0,
        cv: vec![],
        temperature: 1.0,
        label_weights,
        note: None,
    };
    let folds = usable_folds(data, labels, multi_label, opts);
    let mut oof = None;
    match folds {
        Err(why) => report.note = Some(why),
        Ok(k) => {
            let (best, points, logits) = cross_validate(&z, labels, multi_label, opts, &weights, k);
            report.l2 = best;
            report.folds = k;
            report.cv = points;
            oof = Some(logits);
        }
    }
    let train = TrainOptions {
        l2: report.l2,
        ..opts.train
    };
    let mut head = train_weighted(&z, labels, multi_label, &train, Some(&weights));
    if let (true, Some(logits)) = (opts.calibrate, &oof) {
        report.temperature = temperature(logits, &data.y, &weights, labels, multi_label);
    }
    let inv_t = 1.0 / report.temperature;
    head.w.iter_mut().for_each(|w| *w *= inv_t);
    head.b.iter_mut().for_each(|b| *b *= inv_t);
    fold_standardisation(&mut head, &mean, &std);
    (head, report)
}

/// Per-dimension mean and standard deviation (a constant dimension gets 1).
fn moments(data: &Dataset) -> (Vec<f32>, Vec<f32>) {
    let (d, n) = (data.dim, data.len().max(1) as f64);
    let mut sum = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for i in 0..data.len() {
        for (j, &v) in data.row(i).iter().enumerate() {
            sum[j] += f64::from(v);
            sq[j] += f64::from(v) * f64::from(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| {
            let v = (s / n - m * m).max(0.0).sqrt();
            if v < 1e-6 {
                1.0
            } else {
                v as f32
            }
        })
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

fn standardised(data: &Dataset, mean: &[f32], std: &[f32]) -> Dataset {
    let mut z = data.clone();
    for row in z.x.chunks_mut(data.dim.max(1)) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
            *v = (*v - m) / s;
        }
    }
    z
}

/// `w·((x - m)/s) + b` = `(w/s)·x + (b - Σ w m / s)`.
fn fold_standardisation(head: &mut LinearHead, mean: &[f32], std: &[f32]) {
    let d = head.dim;
    for k in 0..head.labels {
        let row = &mut head.w[k * d..(k + 1) * d];
        let mut shift = 0f64;
        for j in 0..d {
            row[j] /= std[j];
            shift += f64::from(row[j]) * f64::from(mean[j]);
        }
        head.b[k] -= shift as f32;
    }
}

/// Weight per label: n / (labels present x rows of the label), scaled to mean 1 over rows
/// and capped at [`MAX_WEIGHT`].
fn balanced(data: &Dataset, labels: usize) -> Vec<f32> {
    let mut count = vec![0usize; labels];
    data.y
        .iter()
        .filter_map(|y| y.first())
        .for_each(|&k| count[k] += 1);
    let present = count.iter().filter(|&&c| c > 0).count().max(1);
    let n = data.len().max(1) as f32;
    count
        .iter()
        .map(|&c| {
            if c == 0 {
                1.0
            } else {
                (n / (present as f32 * c as f32)).min(MAX_WEIGHT)
            }
        })
        .collect()
}

/// How many folds the labels allow, or why cross-validation does not run.
fn usable_folds(
    data: &Dataset,
    labels: usize,
    multi_label: bool,
    opts: &FitOptions,
) -> Result<usize, String> {
    if data.len() > opts.cv_max_rows {
        return Err(format!(
            "{} rows > cv_max_rows {}: L2 kept at {} and no calibration",
            data.len(),
            opts.cv_max_rows,
            opts.train.l2
        ));
    }
    let mut count = vec![0usize; labels];
    data.y.iter().flatten().for_each(|&k| count[k] += 1);
    let smallest = count.iter().filter(|&&c| c > 0).min().copied().unwrap_or(0);
    let present = count.iter().filter(|&&c| c > 0).count();
    let k = opts.folds.min(smallest);
    if k < 2 || (!multi_label && present < 2) || opts.l2_grid.is_empty() {
        return Err(format!(
            "too few labelled rows to cross-validate (smallest label has {smallest})"
        ));
    }
    Ok(k)
}

/// Fold of each row: groups (each row its own, unless `groups` says otherwise) in a fixed
/// order per (first) label, dealt round-robin, so every fold keeps each label's share.
fn fold_of(data: &Dataset, folds: usize, groups: Option<&[usize]>) -> Vec<usize> {
    let group = |i: usize| groups.and_then(|g| g.get(i).copied()).unwrap_or(i);
    let mut first: std::collections::BTreeMap<usize, Option<usize>> = Default::default();
    for i in 0..data.len() {
        first.entry(group(i)).or_insert(data.y[i].first().copied());
    }
    let mut order: Vec<(Option<usize>, u64, usize)> = first
        .iter()
        .map(|(&g, &label)| (label, (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), g))
        .collect();
    order.sort_unstable();
    let mut fold_of_group: std::collections::HashMap<usize, usize> = Default::default();
    let mut seen: std::collections::HashMap<Option<usize>, usize> = Default::default();
    for (label, _, g) in order {
        let c = seen.entry(label).or_default();
        fold_of_group.insert(g, *c % folds);
        *c += 1;
    }
    (0..data.len()).map(|i| fold_of_group[&group(i)]).collect()
}

fn subset(data: &Dataset, rows: &[usize]) -> Dataset {
    let mut s = Dataset {
        dim: data.dim,
        ..Default::default()
    };
    rows.iter()
        .for_each(|&i| s.push(data.row(i), data.y[i].clone()));
    s
}

fn logits(head: &LinearHead, x: &[f32]) -> Vec<f32> {
    (0..head.labels)
        .map(|k| super::dot(&head.w[k * head.dim..(k + 1) * head.dim], x) + head.b[k])
        .collect()
}

/// Out-of-fold logits for each L2 of the grid; the one with the lowest weighted log-loss
/// wins. Returns it, the grid's scores and its out-of-fold logits.
fn cross_validate(
    z: &Dataset,
    labels: usize,
    multi_label: bool,
    opts: &FitOptions,
    weights: &[f32],
    folds: usize,
) -> (f32, Vec<CvPoint>, Vec<Vec<f32>>) {
    let fold = fold_of(z, folds, opts.groups.as_deref());
    let mut best: Option<(f64, f32, Vec<Vec<f32>>)> = None;
    let mut points = Vec::new();
    for &l2 in &opts.l2_grid {
        let mut oof = vec![vec![]; z.len()];
        for f in 0..folds {
            let (tr, te): (Vec<usize>, Vec<usize>) = (0..z.len()).partition(|&i| fold[i] != f);
            let w: Vec<f32> = tr.iter().map(|&i| weights[i]).collect();
            let o = TrainOptions { l2, ..opts.train };
            let h = train_weighted(&subset(z, &tr), labels, multi_label, &o, Some(&w));
            te.iter().for_each(|&i| oof[i] = logits(&h, z.row(i)));
        }
        let (loss, accuracy) = loss_and_accuracy(&oof, &z.y, weights, labels, multi_label, 1.0);
        points.push(CvPoint {
            l2,
            log_loss: loss,
            accuracy,
        });
        if best.as_ref().is_none_or(|(b, _, _)| loss < *b) {
            best = Some((loss, l2, oof));
        }
    }
    let (_, l2, oof) = best.unwrap_or((0.0, opts.train.l2, vec![]));
    (l2, points, oof)
}

/// Weighted mean log-loss and accuracy of logits scaled by `a` (= 1 / temperature).
fn loss_and_accuracy(
    logits: &[Vec<f32>],
    y: &[Vec<usize>],
    weights: &[f32],
    labels: usize,
    multi_label: bool,
    a: f64,
) -> (f64, f64) {
    let (mut loss, mut total, mut right) = (0f64, 0f64, 0usize);
    for ((z, y), &w) in logits.iter().zip(y).zip(weights) {
        let z: Vec<f64> = z.iter().map(|&v| f64::from(v) * a).collect();
        let l = if multi_label {
            let ok = (0..labels).all(|k| (z[k] >= 0.0) == y.contains(&k));
            right += usize::from(ok);
            (0..labels)
                .map(|k| {
                    // log(1 + e^-|z|) + max(z, 0) - y z: a stable binary cross-entropy.
                    let t = if y.contains(&k) { 1.0 } else { 0.0 };
                    (1.0 + (-z[k].abs()).exp()).ln() + z[k].max(0.0) - t * z[k]
                })
                .sum::<f64>()
                / labels.max(1) as f64
        } else {
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let t = y.first().copied().unwrap_or(0);
            let top = (0..labels)
                .max_by(|&i, &j| z[i].total_cmp(&z[j]))
                .unwrap_or(0);
            right += usize::from(top == t);
            lse - z[t]
        };
        loss += f64::from(w) * l;
        total += f64::from(w);
    }
    let n = logits.len().max(1) as f64;
    (loss / total.max(f64::MIN_POSITIVE), right as f64 / n)
}

/// The temperature that minimises the weighted log-loss of the out-of-fold logits. The loss
/// is convex in 1/T, so a golden-section search on log(1/T) in [1/20, 20] finds it.
fn temperature(
    logits: &[Vec<f32>],
    y: &[Vec<usize>],
    weights: &[f32],
    labels: usize,
    multi_label: bool,
) -> f32 {
    let f = |la: f64| loss_and_accuracy(logits, y, weights, labels, multi_label, la.exp()).0;
    let (mut lo, mut hi) = ((1.0f64 / 20.0).ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..40 {
        let (a, b) = (hi - g * (hi - lo), lo + g * (hi - lo));
        if f(a) < f(b) {
            hi = b;
        } else {
            lo = a;
        }
    }
    (1.0 / ((lo + hi) / 2.0).exp()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::training::evaluation::evaluate;

    /// Two labels in 20 dimensions, only dimension 3 informative and on a scale 1,000 times
    /// smaller than the noise dimensions; 90% of rows are label 0.
    fn skewed(n: usize, seed: u64) -> Dataset {
        let mut x = seed | 1;
        let mut r = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 10_000) as f32 / 10_000.0 - 0.5
        };
        let mut d = Dataset {
            dim: 20,
            ..Default::default()
        };
        for i in 0..n {
            let c = usize::from(i % 10 == 0);
            let e: Vec<f32> = (0..20)
                .map(|j| {
                    if j == 3 {
                        0.001 * (c as f32 * 1.5 + r())
                    } else {
                        10.0 * r()
                    }
                })
                .collect();
            d.push(&e, vec![c]);
        }
        d
    }

    #[test]
    fn fit_standardises_balances_and_cross_validates() {
        let (train_set, test_set) = (skewed(400, 1), skewed(2000, 2));
        let (head, report) = fit(&train_set, 2, false, &FitOptions::default());
        assert_eq!(report.folds, 5, "{report:?}");
        assert_eq!(report.cv.len(), 6);
        assert!(
            report.label_weights[1] > 4.0 * report.label_weights[0],
            "{report:?}"
        );
        let e = evaluate(&head, &test_set, None);
        let minority = e.recall[1].unwrap_or(0.0);
        assert!(minority > 0.8 && e.accuracy > 0.8, "{e:?} {report:?}");
        // The plain optimiser on raw features barely sees dimension 3.
        let plain = evaluate(
            &super::super::train(&train_set, 2, false, &TrainOptions::default()),
            &test_set,
            None,
        );
        assert!(plain.recall[1].unwrap_or(0.0) < minority, "{plain:?}");
        // Deterministic.
        assert_eq!(fit(&train_set, 2, false, &FitOptions::default()).0, head);
    }

    #[test]
    fn large_sets_skip_cross_validation_and_say_why() {
        let d = skewed(300, 3);
        let o = FitOptions {
            cv_max_rows: 100,
            ..Default::default()
        };
        let (_, report) = fit(&d, 2, false, &o);
        assert_eq!(report.folds, 0);
        assert_eq!(report.temperature, 1.0);
        assert!(
            report.note.as_deref().unwrap_or("").contains("cv_max_rows"),
            "{report:?}"
        );
    }
}
