//! The data of a run: which field decisions are held out (a split given once per decision,
//! stratified by device and labels), and how many rows of each kind were used.

use super::TrainingError;
use crate::model::dataset::Dataset;
use crate::model::Manifest;
use crate::server::store::{ServerStore, Split, TrainingRow};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Row counts of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataCounts {
    /// Base rows trained on.
    pub base_train: usize,
    /// Base rows held out.
    pub base_holdout: usize,
    /// Field decisions trained on.
    pub feedback_train: usize,
    /// Field decisions held out.
    pub feedback_holdout: usize,
    /// Field decisions not usable (wrong embedding length, several labels on a
    /// single-label model).
    pub feedback_skipped: usize,
    /// Field decisions left out because they answer a task on this model's backbone
    /// (they train that task).
    pub feedback_for_tasks: usize,
    /// A task's image run: what server-side augmentation added.
    pub augment: Option<super::augment::AugmentCounts>,
}

/// Gives a split to every decision that has none: per stratum (device and label set), in
/// the order of the hash of their ids, so that each stratum's held-out share stays as close
/// as possible to `percent`. Decisions that have a split keep it.
pub fn assign_splits(rows: &[TrainingRow], percent: u8) -> Vec<(String, Split)> {
    let share = f64::from(percent.min(90)) / 100.0;
    let mut strata: BTreeMap<(String, String), Vec<&TrainingRow>> = BTreeMap::new();
    for r in rows {
        let mut labels = r.labels.clone();
        labels.sort();
        strata
            .entry((r.device_id.clone(), labels.join("\u{1f}")))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for rows in strata.values() {
        let mut n = rows.iter().filter(|r| r.split.is_some()).count();
        let mut held = rows
            .iter()
            .filter(|r| r.split == Some(Split::Holdout))
            .count();
        let mut new: Vec<&&TrainingRow> = rows.iter().filter(|r| r.split.is_none()).collect();
        new.sort_by_key(|r| crate::hash::sha256_hex(r.feedback_id.as_bytes()));
        for r in new {
            n += 1;
            let target = (share * n as f64).round() as usize;
            let split = if held < target {
                held += 1;
                Split::Holdout
            } else {
                Split::Train
            };
            out.push((r.feedback_id.clone(), split));
        }
    }
    out
}

/// The current field decisions of `model`, each with its split (new ones get theirs now,
/// saved so it never changes). An error if there are none.
pub fn field_rows(
    store: &dyn ServerStore,
    model: &str,
    holdout_percent: u8,
) -> Result<Vec<TrainingRow>, TrainingError> {
    let mut rows = store.training_feedback(model)?;
    if rows.is_empty() {
        return Err(TrainingError::NoFeedback(model.into()));
    }
    let new_splits = assign_splits(&rows, holdout_percent);
    store.save_splits(&new_splits)?;
    let given: HashMap<&str, Split> = new_splits.iter().map(|(i, s)| (i.as_str(), *s)).collect();
    for r in &mut rows {
        if r.split.is_none() {
            r.split = given.get(r.feedback_id.as_str()).copied();
        }
    }
    Ok(rows)
}

/// The data of one run: what the head trains on and the two held-out sets it is judged on.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Base rows (nine in ten) and field decisions of the training split.
    pub train: Dataset,
    /// Every tenth base row.
    pub base_holdout: Dataset,
    /// Field decisions of the held-out split.
    pub field_holdout: Dataset,
    /// The candidate's labels: the current model's, then the labels the field introduced.
    pub labels: Vec<String>,
    /// How many of `labels` the current model knew.
    pub known: usize,
    /// Rows of each kind.
    pub counts: DataCounts,
}

impl RunData {
    /// Whether the field introduced labels (the candidate's minor version goes up).
    pub fn labels_changed(&self) -> bool {
        self.labels.len() != self.known
    }
}

/// Splits base data and field rows into training and held-out sets over the extended label
/// set. A field row whose embedding does not fit, or whose labels do not fit the model
/// (none, or several on a single-label model), is skipped and counted.
pub fn build(base: &Dataset, rows: &[TrainingRow], m: &Manifest) -> RunData {
    let mut labels = m.labels.clone();
    let known = labels.len();
    let fresh: BTreeSet<&String> = rows
        .iter()
        .flat_map(|r| r.labels.iter())
        .filter(|l| !m.labels.contains(l))
        .collect();
    labels.extend(fresh.into_iter().cloned());
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let empty = || Dataset {
        dim: base.dim,
        ..Default::default()
    };
    let mut d = RunData {
        train: empty(),
        base_holdout: empty(),
        field_holdout: empty(),
        labels: Vec::new(),
        known,
        counts: DataCounts::default(),
    };
    for i in 0..base.len() {
        // Every tenth base row (by a fixed rule) is held out.
        if i % 10 == 9 {
            d.base_holdout.push(base.row(i), base.y[i].clone());
            d.counts.base_holdout += 1;
        } else {
            d.train.push(base.row(i), base.y[i].clone());
            d.counts.base_train += 1;
        }
    }
    for r in rows {
        let e = crate::encoding::embedding_from_f16(&r.embedding_f16);
        let y: Vec<usize> = r
            .labels
            .iter()
            .filter_map(|l| index.get(l.as_str()).copied())
            .collect();
        if e.len() != base.dim || y.is_empty() || (!m.multi_label && y.len() != 1) {
            d.counts.feedback_skipped += 1;
            continue;
        }
        if r.split == Some(Split::Holdout) {
            d.field_holdout.push(&e, y);
            d.counts.feedback_holdout += 1;
        } else {
            d.train.push(&e, y);
            d.counts.feedback_train += 1;
        }
    }
    d.labels = labels;
    d
}
