//! Scoring heads and the gate: a head's accuracy, macro-F1, per-label recall and precision
//! and confusion matrix on labelled embeddings; candidate and current model compared on the
//! same held-out data; and the rule a candidate must pass to be published unattended.

use super::dataset::{DataCounts, RunData};
use super::head::LinearHead;
use super::{TrainingError, TrainingSettings};
use crate::model::dataset::Dataset;
use crate::model::{Bundle, LoadedModel};
use serde::Serialize;

/// Evaluation of a head on labelled data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    /// Rows evaluated.
    pub count: usize,
    /// Single-label: share of rows whose top label is right. Multi-label: share of rows
    /// whose decided label set is exactly right.
    pub accuracy: f64,
    /// Mean F1 over labels that occur in the data or the predictions.
    pub macro_f1: f64,
    /// Accuracy on the rows whose labels are all "known" (the first `known` labels: those
    /// the current model had), `None` if there are none. The gate compares this.
    pub known_accuracy: Option<f64>,
    /// Macro-F1 over the known labels on those rows.
    pub known_macro_f1: Option<f64>,
    /// Per label: recall (None where the label never occurs).
    pub recall: Vec<Option<f64>>,
    /// Per label: precision (None where the label is never predicted).
    pub precision: Vec<Option<f64>>,
    /// Single-label: `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Scores a head: `thresholds` decide multi-label outputs (single-label takes the top).
pub fn evaluate(head: &LinearHead, data: &Dataset, thresholds: Option<&[f32]>) -> Evaluation {
    let scores: Vec<Vec<f32>> = (0..data.len()).map(|i| head.scores(data.row(i))).collect();
    evaluate_scores(
        &scores,
        &data.y,
        head.labels,
        head.multi_label,
        thresholds,
        head.labels,
    )
}

#[derive(Default)]
struct Tally {
    tp: Vec<u64>,
    fp: Vec<u64>,
    fneg: Vec<u64>,
    exact: usize,
    rows: usize,
}

impl Tally {
    fn new(k: usize) -> Tally {
        Tally {
            tp: vec![0; k],
            fp: vec![0; k],
            fneg: vec![0; k],
            ..Default::default()
        }
    }
    fn add(&mut self, predicted: &[usize], truth: &[usize], k: usize) {
        self.rows += 1;
        let mut a = predicted.to_vec();
        let mut b = truth.to_vec();
        a.sort_unstable();
        b.sort_unstable();
        if a == b {
            self.exact += 1;
        }
        for j in 0..k {
            match (predicted.contains(&j), truth.contains(&j)) {
                (true, true) => self.tp[j] += 1,
                (true, false) => self.fp[j] += 1,
                (false, true) => self.fneg[j] += 1,
                _ => {}
            }
        }
    }
    fn accuracy(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.exact as f64 / self.rows as f64
        }
    }
    fn macro_f1(&self, k: usize) -> f64 {
        let f1s: Vec<f64> = (0..k)
            .filter(|&j| self.tp[j] + self.fp[j] + self.fneg[j] > 0)
            .map(|j| 2.0 * self.tp[j] as f64 / (2 * self.tp[j] + self.fp[j] + self.fneg[j]) as f64)
            .collect();
        if f1s.is_empty() {
            0.0
        } else {
            f1s.iter().sum::<f64>() / f1s.len() as f64
        }
    }
}

/// Evaluates precomputed `scores` (one row of `labels` scores per truth row). `known`: how
/// many leading labels count as known for `known_accuracy` and `known_macro_f1`.
pub fn evaluate_scores(
    scores: &[Vec<f32>],
    truth: &[Vec<usize>],
    labels: usize,
    multi_label: bool,
    thresholds: Option<&[f32]>,
    known: usize,
) -> Evaluation {
    let k = labels;
    let mut all = Tally::new(k);
    let mut known_tally = Tally::new(k);
    let mut confusion = vec![vec![0u64; k]; if multi_label { 0 } else { k }];
    for (s, truth) in scores.iter().zip(truth) {
        let predicted: Vec<usize> = if multi_label {
            (0..k.min(s.len()))
                .filter(|&j| s[j] >= thresholds.and_then(|t| t.get(j).copied()).unwrap_or(0.5))
                .collect()
        } else {
            vec![(0..k.min(s.len()))
                .max_by(|&a, &b| s[a].total_cmp(&s[b]))
                .unwrap_or(0)]
        };
        if !multi_label {
            if let (Some(&t), Some(&p)) = (truth.first(), predicted.first()) {
                if t < k {
                    confusion[t][p] += 1;
                }
            }
        }
        all.add(&predicted, truth, k);
        if truth.iter().all(|&t| t < known) {
            known_tally.add(&predicted, truth, known.min(k));
        }
    }
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            None
        } else {
            Some(a as f64 / b as f64)
        }
    };
    let t = &all;
    Evaluation {
        count: all.rows,
        accuracy: all.accuracy(),
        macro_f1: all.macro_f1(k),
        known_accuracy: (known_tally.rows > 0).then(|| known_tally.accuracy()),
        known_macro_f1: (known_tally.rows > 0).then(|| known_tally.macro_f1(known.min(k))),
        recall: (0..k)
            .map(|j| ratio(t.tp[j], t.tp[j] + t.fneg[j]))
            .collect(),
        precision: (0..k).map(|j| ratio(t.tp[j], t.tp[j] + t.fp[j])).collect(),
        confusion,
    }
}

/// The evaluation of both models on one held-out set.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The current (published) model.
    pub current: Evaluation,
    /// The candidate.
    pub candidate: Evaluation,
    /// Held-out rows per label.
    pub support: Vec<usize>,
}

/// The gate's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    /// Whether the candidate may be published.
    pub passed: bool,
    /// The tolerance used.
    pub tolerance: f64,
    /// Each regression found (empty if passed).
    pub problems: Vec<String>,
}

/// The evaluation report of a run, stored with it and inside the candidate bundle
/// (`metrics.json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunEvaluation {
    /// Model.
    pub model: String,
    /// The release it started from.
    pub base_version: String,
    /// The candidate.
    pub candidate_version: String,
    /// Candidate labels (indices of every vector below).
    pub labels: Vec<String>,
    /// Labels the current model did not know.
    pub new_labels: Vec<String>,
    /// Rows used.
    pub data: DataCounts,
    /// On held-out field decisions.
    pub feedback_holdout: Comparison,
    /// On held-out base data.
    pub base_holdout: Comparison,
    /// The verdict.
    pub gate: Gate,
    /// Seconds spent training the head.
    pub train_seconds: f64,
    /// Seed.
    pub seed: u64,
    /// What the head training chose (L2, folds, temperature, label weights).
    pub fit: super::head::FitReport,
    /// A task's run: the new-task gate's numbers (majority class, label prior).
    pub task_gate: Option<super::task::TaskGate>,
}

/// Compares current and candidate on the labels the current model knew. Each regression
/// beyond `tolerance` is one problem.
pub fn gate_problems(
    set: &str,
    cmp: &Comparison,
    known: usize,
    labels: &[String],
    tolerance: f64,
    min_support: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (cur, cand) = (&cmp.current, &cmp.candidate);
    if cur.count == 0 {
        return problems;
    }
    // Accuracy and macro-F1 of the known-label subset were computed by the caller into
    // `known_accuracy` / `known_macro_f1`.
    if let (Some(a), Some(b)) = (cur.known_accuracy, cand.known_accuracy) {
        if b + tolerance < a {
            problems.push(format!(
                "{set}: accuracy on known labels fell from {a:.3} to {b:.3}"
            ));
        }
    }
    if let (Some(a), Some(b)) = (cur.known_macro_f1, cand.known_macro_f1) {
        if b + tolerance < a {
            problems.push(format!(
                "{set}: macro-F1 on known labels fell from {a:.3} to {b:.3}"
            ));
        }
    }
    for (j, label) in labels.iter().enumerate().take(known) {
        if cmp.support.get(j).copied().unwrap_or(0) < min_support {
            continue;
        }
        if let (Some(Some(a)), Some(Some(b))) = (cur.recall.get(j), cand.recall.get(j)) {
            if b + tolerance < *a {
                problems.push(format!(
                    "{set}: recall of {label} fell from {a:.3} to {b:.3}"
                ));
            }
        }
    }
    problems
}

/// Scores embeddings with the current model's head in ONNX Runtime, padded with zeros for
/// labels it does not know.
fn current_scores(
    model: &LoadedModel,
    data: &Dataset,
    labels: usize,
) -> Result<Vec<Vec<f32>>, TrainingError> {
    let mut out = Vec::with_capacity(data.len());
    for chunk in (0..data.len()).collect::<Vec<_>>().chunks(512) {
        let mut x = ndarray::Array2::<f32>::zeros((chunk.len(), data.dim));
        for (r, &i) in chunk.iter().enumerate() {
            x.row_mut(r)
                .as_slice_mut()
                .expect("a fresh array is contiguous")
                .copy_from_slice(data.row(i));
        }
        let s = model.score(x.view())?;
        for row in s.rows() {
            let mut v = row.to_vec();
            v.resize(labels, 0.0);
            out.push(v);
        }
    }
    Ok(out)
}

fn compare(
    current: &LoadedModel,
    candidate: &LinearHead,
    data: &Dataset,
    known: usize,
    current_thresholds: Option<&[f32]>,
    thresholds: Option<&[f32]>,
) -> Result<Comparison, TrainingError> {
    let k = candidate.labels;
    let cur_scores = current_scores(current, data, k)?;
    let cand_scores: Vec<Vec<f32>> = (0..data.len())
        .map(|i| candidate.scores(data.row(i)))
        .collect();
    let mut cur_thr = current_thresholds.map(|t| t.to_vec());
    if let Some(t) = &mut cur_thr {
        t.resize(k, 2.0); // never predicts a label it does not know
    }
    let mut support = vec![0usize; k];
    data.y.iter().flatten().for_each(|&j| support[j] += 1);
    let ml = candidate.multi_label;
    Ok(Comparison {
        current: evaluate_scores(&cur_scores, &data.y, k, ml, cur_thr.as_deref(), known),
        candidate: evaluate_scores(&cand_scores, &data.y, k, ml, thresholds, known),
        support,
    })
}

/// Candidate against current model on both held-out sets, and what the gate found.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// On held-out field decisions.
    pub field: Comparison,
    /// On held-out base data.
    pub base: Comparison,
    /// Each regression the gate found (empty: passed).
    pub problems: Vec<String>,
    /// The candidate's thresholds: the current ones, 0.5 for new labels (multi-label).
    pub thresholds: Option<Vec<f32>>,
}

/// Scores the candidate head and the current bundle (through ONNX Runtime) on the same
/// held-out data, and applies the gate on the labels the current model knew.
pub fn judge(
    current: &Bundle,
    session: crate::model::pool::SessionOptions,
    head: &LinearHead,
    data: &RunData,
    settings: &TrainingSettings,
) -> Result<Verdict, TrainingError> {
    let m = &current.manifest;
    let loaded = LoadedModel::from_bundle(current.clone(), session)?;
    let thresholds = m.thresholds.as_ref().map(|t| {
        let mut t = t.clone();
        t.resize(data.labels.len(), 0.5);
        t
    });
    let cur_thr = m.thresholds.as_deref();
    let (known, thr) = (data.known, thresholds.as_deref());
    let field = compare(&loaded, head, &data.field_holdout, known, cur_thr, thr)?;
    let base = compare(&loaded, head, &data.base_holdout, known, cur_thr, thr)?;
    let (tol, support) = (settings.tolerance, settings.min_support);
    let mut problems = gate_problems(
        "held-out field feedback",
        &field,
        known,
        &data.labels,
        tol,
        support,
    );
    problems.extend(gate_problems(
        "held-out base data",
        &base,
        known,
        &data.labels,
        tol,
        support,
    ));
    Ok(Verdict {
        field,
        base,
        problems,
        thresholds,
    })
}
