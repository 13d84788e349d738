//! Tasks: a question the field asks (is this building damaged? what kind of information is
//! this message?) trained as a model of its own on an existing model's backbone, instead of
//! being squeezed into that model's label set. The backbone model stays untouched: its own
//! retraining leaves out the decisions a task claims.
//!
//! A task run:
//! 1. **Backbone.** The newest release of the task's backbone model is materialised; its
//!    backbone (and preprocessing, tokenizer, golden inputs) is what the task bundle reuses.
//! 2. **Data.** Field decisions given under the task's name, plus decisions given under
//!    the backbone model's name whose labels are the task's (the field's
//!    `--allow-new-labels` path), each restricted to the task's labels. Decisions that do
//!    not fit are counted as skipped. Splits are given once per decision, as for any run.
//! 3. **Augment** (image tasks, `training.augment`): the other 7 flips and quarter turns of
//!    each training tile the server holds are embedded through the backbone
//!    ([`super::augment`]).
//! 4. **Train** a head on those embeddings alone ([`super::head::fit`]: standardised,
//!    balanced, L2 by cross-validation, calibrated).
//! 5. **Gate** ([`new_task_gate`]): there is no predecessor, so on the held-out field labels
//!    the candidate must beat the majority class in accuracy by more than the noise of that
//!    many labels (two binomial standard errors, at least 2 points) and the label-prior
//!    baseline in log-loss. The gate scores exactly the head that is published.
//! 6. **Candidate bundle** named after the task, version 1.0.0 first, published like any
//!    candidate (to the task's channel) by [`super::job::settle`], or held with the reason.

use super::augment::{self, AugmentCounts};
use super::candidate::{self, NewHead};
use super::dataset::{assign_splits, DataCounts, RunData};
use super::evaluation::{evaluate, evaluate_scores, Comparison, Evaluation, Gate, RunEvaluation};
use super::head::{self, LinearHead, TrainOptions};
use super::{Candidate, TrainingError, TrainingSettings};
use crate::model::dataset::Dataset;
use crate::model::LoadedModel;
use crate::server::repository::{self, current_release, materialise, PublishError, Repository};
use crate::server::store::{ServerStore, Split, TaskDefinition, TrainingRow};
use crate::trust::Release;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// Fewest held-out field labels a new task is judged on.
pub const MIN_TASK_HOLDOUT: usize = 10;

/// Most labels a task may have.
pub const MAX_TASK_LABELS: usize = 64;

/// What is wrong with a task definition, said so an operator can fix it.
pub fn validate(t: &TaskDefinition) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if !name_ok(&t.name) {
        return Err(format!(
            "task name {:?} must be 1-64 lower-case letters, digits and '-' (it becomes a model name)",
            t.name
        ));
    }
    if !name_ok(&t.backbone) || t.backbone == t.name {
        return Err(format!(
            "backbone {:?} must name another published model (e.g. landcover)",
            t.backbone
        ));
    }
    let distinct: BTreeSet<&String> = t.labels.iter().collect();
    let least = if t.multi_label { 1 } else { 2 };
    if t.labels.len() < least
        || t.labels.len() > MAX_TASK_LABELS
        || distinct.len() != t.labels.len()
    {
        return Err(format!(
            "a {} task needs {least} to {MAX_TASK_LABELS} distinct labels, got {:?}",
            if t.multi_label {
                "multi-label"
            } else {
                "single-label"
            },
            t.labels
        ));
    }
    if let Some(l) = t
        .labels
        .iter()
        .find(|l| l.is_empty() || l.len() > 64 || l.chars().any(char::is_control))
    {
        return Err(format!("label {l:?} must be 1-64 printable characters"));
    }
    if t.channel.is_empty() || t.channel.len() > 64 {
        return Err("the channel must be a name (e.g. canary)".into());
    }
    Ok(())
}

/// Whether a decision on `model` with `labels` belongs to a task on `model`'s backbone
/// (all its labels are one task's labels): the backbone model's own retraining leaves it out.
pub fn claimed(tasks: &[TaskDefinition], model: &str, labels: &[String]) -> Option<String> {
    tasks
        .iter()
        .find(|t| {
            t.backbone == model && !labels.is_empty() && labels.iter().all(|l| t.labels.contains(l))
        })
        .map(|t| t.name.clone())
}

/// Rows a task trains on: its own decisions and the backbone model's decisions that carry
/// its labels, labels restricted to the task's; each with its split (new ones get theirs).
fn task_rows(
    store: &dyn ServerStore,
    task: &TaskDefinition,
    holdout_percent: u8,
) -> Result<Vec<TrainingRow>, TrainingError> {
    let mut rows = store.training_feedback(&task.name)?;
    for mut r in store.training_feedback(&task.backbone)? {
        r.labels.retain(|l| task.labels.contains(l));
        if !r.labels.is_empty() {
            rows.push(r);
        }
    }
    if rows.is_empty() {
        return Err(TrainingError::NoFeedback(task.name.clone()));
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

/// The task's training and held-out sets (no base data: the task starts from the field),
/// and the feedback id of each training row.
fn task_data(rows: &[TrainingRow], task: &TaskDefinition, dim: usize) -> (RunData, Vec<String>) {
    let mut train_ids = Vec::new();
    let index: HashMap<&str, usize> = task
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let empty = || Dataset {
        dim,
        ..Default::default()
    };
    let mut d = RunData {
        train: empty(),
        base_holdout: empty(),
        field_holdout: empty(),
        labels: task.labels.clone(),
        known: 0,
        counts: DataCounts::default(),
    };
    for r in rows {
        let e = crate::encoding::embedding_from_f16(&r.embedding_f16);
        let y: Vec<usize> = r
            .labels
            .iter()
            .filter_map(|l| index.get(l.as_str()).copied())
            .collect();
        if e.len() != dim || y.is_empty() || (!task.multi_label && y.len() != 1) {
            d.counts.feedback_skipped += 1;
            continue;
        }
        if r.split == Some(Split::Holdout) {
            d.field_holdout.push(&e, y);
            d.counts.feedback_holdout += 1;
        } else {
            d.train.push(&e, y);
            d.counts.feedback_train += 1;
            train_ids.push(r.feedback_id.clone());
        }
    }
    (d, train_ids)
}

/// Adds the other views of every training tile the server holds (see [`augment`]) and
/// gives each row its group (its original decision), for cross-validation.
fn augmented(
    store: &dyn ServerStore,
    model: &LoadedModel,
    train: &mut Dataset,
    train_ids: &[String],
) -> Result<(Vec<usize>, AugmentCounts), TrainingError> {
    let mut groups: Vec<usize> = (0..train.len()).collect();
    let mut counts = AugmentCounts::default();
    let mut tiles = Vec::new();
    for (i, id) in train_ids.iter().enumerate() {
        let item = store.feedback_item(id)?;
        let tile = item.and_then(|it| match (it.content, it.content_type) {
            (Some(c), Some(t)) if t.starts_with("image/") => Some(c),
            _ => None,
        });
        let Some(bytes) = tile else {
            counts.without_tile += 1;
            continue;
        };
        match augment::decode_tile(&bytes) {
            Ok(t) => tiles.push((t, train.y[i].clone(), i)),
            Err(e) => {
                tracing::warn!(feedback = %id, error = %e, "tile does not decode; not augmented");
                counts.undecodable += 1;
            }
        }
    }
    counts.tiles = tiles.len();
    counts.added = augment::add_views(model, &tiles, train, &mut groups)?;
    Ok((groups, counts))
}

/// The new-task gate's numbers, stored in the run's report.
#[derive(Debug, Clone, Serialize)]
pub struct TaskGate {
    /// Held-out field labels judged on.
    pub holdout: usize,
    /// Accuracy of always answering the training set's most common label (set).
    pub majority_accuracy: f64,
    /// What the candidate must beat it by: two binomial standard errors, at least 0.02.
    pub margin: f64,
    /// The candidate's accuracy.
    pub candidate_accuracy: f64,
    /// Log-loss of answering the training set's label frequencies.
    pub prior_log_loss: f64,
    /// The candidate's log-loss.
    pub candidate_log_loss: f64,
}

/// Label frequencies of the training set, smoothed so that none is 0: single-label, one
/// distribution over the labels; multi-label, each label's rate of occurrence.
fn prior(train: &Dataset, labels: usize, multi_label: bool) -> Vec<f32> {
    let mut c = vec![1.0f32; labels];
    train.y.iter().flatten().for_each(|&k| c[k] += 1.0);
    let total = if multi_label {
        train.len() as f32 + 2.0
    } else {
        c.iter().sum()
    };
    c.iter().map(|v| v / total).collect()
}

fn log_loss(scores: &[Vec<f32>], truth: &[Vec<usize>], multi_label: bool) -> f64 {
    let eps = 1e-6f64;
    let per_row = |s: &Vec<f32>, y: &Vec<usize>| -> f64 {
        if multi_label {
            let k = s.len().max(1) as f64;
            s.iter()
                .enumerate()
                .map(|(j, &p)| {
                    let p = f64::from(p).clamp(eps, 1.0 - eps);
                    if y.contains(&j) {
                        -p.ln()
                    } else {
                        -(1.0 - p).ln()
                    }
                })
                .sum::<f64>()
                / k
        } else {
            let t = y.first().copied().unwrap_or(0);
            -f64::from(s.get(t).copied().unwrap_or(0.0)).max(eps).ln()
        }
    };
    let n = truth.len().max(1) as f64;
    scores
        .iter()
        .zip(truth)
        .map(|(s, y)| per_row(s, y))
        .sum::<f64>()
        / n
}

/// Judges a new task's head on held-out field labels against the majority class and the
/// label prior. Returns the comparison (the baseline as "current"), the numbers and each
/// reason it is held (empty: passed).
pub fn new_task_gate(
    head: &LinearHead,
    train: &Dataset,
    holdout: &Dataset,
    thresholds: Option<&[f32]>,
) -> (Comparison, TaskGate, Vec<String>) {
    let k = head.labels;
    let ml = head.multi_label;
    let p = prior(train, k, ml);
    let base_scores = vec![p.clone(); holdout.len()];
    let cand_scores: Vec<Vec<f32>> = (0..holdout.len())
        .map(|i| head.scores(holdout.row(i)))
        .collect();
    // For multi-label, the baseline answers the labels more than half of the rows carry.
    let base_thr: Vec<f32> = vec![0.5; k];
    let baseline: Evaluation = evaluate_scores(&base_scores, &holdout.y, k, ml, Some(&base_thr), k);
    let candidate = evaluate(head, holdout, thresholds);
    let n = holdout.len();
    let p0 = baseline.accuracy;
    let margin = (2.0 * (p0 * (1.0 - p0) / n.max(1) as f64).sqrt()).max(0.02);
    let gate = TaskGate {
        holdout: n,
        majority_accuracy: p0,
        margin,
        candidate_accuracy: candidate.accuracy,
        prior_log_loss: log_loss(&base_scores, &holdout.y, ml),
        candidate_log_loss: log_loss(&cand_scores, &holdout.y, ml),
    };
    let mut problems = Vec::new();
    if n < MIN_TASK_HOLDOUT {
        problems.push(format!(
            "only {n} held-out field labels (a new task needs {MIN_TASK_HOLDOUT}): label more items"
        ));
    } else {
        if gate.candidate_accuracy <= p0 + margin {
            problems.push(format!(
                "accuracy {:.3} does not beat the majority class ({p0:.3}) by more than the noise of {n} labels ({margin:.3})",
                gate.candidate_accuracy
            ));
        }
        if gate.candidate_log_loss >= gate.prior_log_loss {
            problems.push(format!(
                "log-loss {:.3} is not below the label prior's {:.3}",
                gate.candidate_log_loss, gate.prior_log_loss
            ));
        }
    }
    let mut support = vec![0usize; k];
    holdout.y.iter().flatten().for_each(|&j| support[j] += 1);
    let cmp = Comparison {
        current: baseline,
        candidate,
        support,
    };
    (cmp, gate, problems)
}

/// The first version of a task is 1.0.0; later ones go up past every version used.
fn task_version(
    store: &dyn ServerStore,
    repo: &Repository,
    task: &str,
) -> Result<String, TrainingError> {
    let taken = candidate::taken_versions(store, repo, task)?;
    Ok(match taken.iter().max() {
        None => "1.0.0".into(),
        Some((a, b, c)) => candidate::next_version(&format!("{a}.{b}.{c}"), false, &taken),
    })
}

/// The backbone release a task trains on.
pub fn backbone_release(
    repo: &Repository,
    task: &TaskDefinition,
) -> Result<Release, TrainingError> {
    current_release(repo, &task.backbone)?
        .ok_or_else(|| TrainingError::NoRelease(task.backbone.clone()))
}

/// Trains, judges and writes the candidate bundle of `task` (run `run_id` is started).
pub fn train_task(
    store: &dyn ServerStore,
    repo: &Repository,
    task: &TaskDefinition,
    settings: &TrainingSettings,
    run_id: i64,
    still_ours: &dyn Fn() -> bool,
) -> Result<Candidate, TrainingError> {
    let release = backbone_release(repo, task)?;
    let bundle = materialise(repo, &release)?;
    let dim = bundle.manifest.backbone.embedding_dim;
    let rows = task_rows(store, task, settings.holdout_percent)?;
    let (mut data, train_ids) = task_data(&rows, task, dim);
    let session = crate::model::pool::SessionOptions {
        intra_threads: crate::model::pool::default_threads(),
        max_sessions: 1,
    };
    let started = std::time::Instant::now();
    let mut groups = None;
    if settings.augment && bundle.manifest.image.is_some() {
        let loaded = LoadedModel::from_bundle(bundle.clone(), session)?;
        let (g, counts) = augmented(store, &loaded, &mut data.train, &train_ids)?;
        groups = Some(g);
        data.counts.augment = Some(counts);
    }
    let (head, fit) = head::fit(
        &data.train,
        task.labels.len(),
        task.multi_label,
        &head::FitOptions {
            train: TrainOptions {
                epochs: settings.epochs,
                seed: settings.seed,
                ..Default::default()
            },
            groups,
            ..Default::default()
        },
    );
    let train_seconds = started.elapsed().as_secs_f64();
    let thresholds = task.multi_label.then(|| vec![0.5; task.labels.len()]);
    let (field, gate, problems) = new_task_gate(
        &head,
        &data.train,
        &data.field_holdout,
        thresholds.as_deref(),
    );
    if !still_ours() {
        return Err(PublishError::LeaseLost.into());
    }
    let version = task_version(store, repo, &task.name)?;
    let empty = Dataset {
        dim,
        ..Default::default()
    };
    let report = RunEvaluation {
        model: task.name.clone(),
        base_version: format!("{}@{}", release.model, release.version),
        candidate_version: version.clone(),
        new_labels: task.labels.clone(),
        labels: task.labels.clone(),
        data: data.counts.clone(),
        feedback_holdout: field,
        base_holdout: Comparison {
            current: evaluate(&head, &empty, None),
            candidate: evaluate(&head, &empty, None),
            support: vec![0; task.labels.len()],
        },
        gate: Gate {
            passed: problems.is_empty(),
            tolerance: settings.tolerance,
            problems,
        },
        train_seconds,
        seed: settings.seed,
        fit,
        task_gate: Some(gate),
    };
    let report_json = serde_json::to_string_pretty(&report)
        .map_err(|e| TrainingError::Candidate(format!("cannot encode the evaluation: {e}")))?;
    let dir = repo
        .data_dir()
        .join("candidates")
        .join(&task.name)
        .join(&version);
    candidate::write(
        &bundle,
        &dir,
        &NewHead {
            version: &version,
            labels: &task.labels,
            thresholds,
            head: &head,
            report_json: report_json.as_bytes(),
            task: Some(task),
        },
        session,
    )?;
    repository::store_candidate(repo, &task.name, &version, &dir)?;
    Ok(Candidate {
        run_id,
        report,
        report_json,
        bundle_dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(labels: &[&str]) -> TaskDefinition {
        TaskDefinition {
            name: "damage".into(),
            backbone: "landcover".into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            multi_label: false,
            channel: "canary".into(),
            defined_by: "op".into(),
            defined_at: "2026-12-04T00:00:00Z".into(),
        }
    }

    #[test]
    fn definitions_are_checked() {
        assert!(validate(&def(&["damage", "no_damage"])).is_ok());
        assert!(validate(&def(&["damage"])).unwrap_err().contains("2 to"));
        assert!(validate(&def(&["a", "a"])).is_err());
        let mut t = def(&["a", "b"]);
        t.name = "Damage!".into();
        assert!(validate(&t).unwrap_err().contains("lower-case"));
        t.name = "landcover".into();
        assert!(validate(&t).unwrap_err().contains("another"));
    }

    #[test]
    fn claimed_decisions_carry_only_task_labels() {
        let tasks = vec![def(&["damage", "no_damage"])];
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            claimed(&tasks, "landcover", &l(&["damage"])).as_deref(),
            Some("damage")
        );
        assert_eq!(claimed(&tasks, "landcover", &l(&["Forest"])), None);
        assert_eq!(
            claimed(&tasks, "landcover", &l(&["Forest", "damage"])),
            None
        );
        assert_eq!(claimed(&tasks, "crisis-reports", &l(&["damage"])), None);
    }

    fn set(rows: &[(f32, usize)]) -> Dataset {
        let mut d = Dataset {
            dim: 2,
            ..Default::default()
        };
        rows.iter().for_each(|&(x, y)| d.push(&[x, 1.0], vec![y]));
        d
    }

    #[test]
    fn the_new_task_gate_needs_more_than_the_majority_class_and_the_prior() {
        // 70% label 0; x separates the labels.
        let rows: Vec<(f32, usize)> = (0..100)
            .map(|i| if i % 10 < 7 { (-1.0, 0) } else { (1.0, 1) })
            .collect();
        let (train, hold) = (set(&rows), set(&rows[..40]));
        let good = LinearHead {
            dim: 2,
            labels: 2,
            w: vec![-3.0, 0.0, 3.0, 0.0],
            b: vec![0.0, 0.0],
            multi_label: false,
        };
        let (_, g, p) = new_task_gate(&good, &train, &hold, None);
        assert!(p.is_empty(), "{p:?} {g:?}");
        assert!((g.majority_accuracy - 0.7).abs() < 1e-9, "{g:?}");
        // A head that always answers the majority: held, with both reasons.
        let lazy = LinearHead {
            w: vec![0.0; 4],
            b: vec![1.0, 0.0],
            ..good.clone()
        };
        let (_, _, p) = new_task_gate(&lazy, &train, &hold, None);
        assert!(p.iter().any(|p| p.contains("majority class")), "{p:?}");
        // Too few held-out labels.
        let (_, _, p) = new_task_gate(&good, &train, &set(&rows[..5]), None);
        assert!(p.iter().any(|p| p.contains("label more items")), "{p:?}");
    }
}
