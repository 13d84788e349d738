//! The training job: from field feedback to a candidate bundle, its evaluation, and the
//! gate that decides whether it is published.
//!
//! One run:
//! 1. **Current model.** The newest release of the model in the server's signed repository
//!    is materialised from the content-addressed files and verified like an agent would.
//! 2. **Data.** The bundle's base training embeddings (`base_data.safetensors`) plus the
//!    current field decisions (latest per device and item, superseded ones dropped). Labels
//!    the field introduced (`damaged` on a land-cover model) extend the label set.
//! 3. **Split.** Each decision is given a split once, per stratum (device, labels), so every
//!    stratum keeps close to the configured held-out share and a held-out decision is never
//!    trained on later. A fixed tenth of the base data is held out too.
//! 4. **Train** the head in Rust ([`head::fit`]: standardised, balanced, L2 chosen by
//!    cross-validation when the set is small, calibrated), deterministic for a fixed seed.
//! 5. **Evaluate** candidate and current on the same held-out data (field and base):
//!    accuracy, macro-F1, per-label recall and precision, confusion matrix.
//! 6. **Gate.** On the labels the current model knew, the candidate may not lose more than
//!    the tolerance in accuracy, macro-F1 or any label's recall (labels with too little
//!    held-out support are reported but not gated).
//! 7. **Candidate bundle** (same backbone, new head written by our own ONNX writer, golden
//!    outputs recomputed and re-checked through ONNX Runtime) is kept on disk with its
//!    report; if it passed and publishing is on, it is signed and published.

use super::repository::{self, current_release, materialise, PublishError, Repository};
use super::store::{RunEnd, RunStatus, ServerStore, ServerStoreError, Trigger};
use crate::model::{BundleError, ModelError};
use crate::trust::Release;
use head::TrainOptions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub mod augment;
pub mod candidate;
pub mod dataset;
pub mod evaluation;
pub mod head;
pub mod job;
pub mod task;

pub use candidate::next_version;
pub use dataset::{assign_splits, DataCounts};
pub use evaluation::{gate_problems, Comparison, Gate, RunEvaluation};

/// `[training]` in the server's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSettings {
    /// Train automatically once this many new feedback rows arrived for a model since its
    /// last run (0: only `outpost-server train`).
    pub auto_train_after: i64,
    /// When a device reports a model as drifted, train it as soon as this many new feedback
    /// rows arrived (fewer than `auto_train_after`: drifted data teaches most; 0: off).
    pub drift_train_after: i64,
    /// Share of field decisions held out for evaluation, per device and label (0-90).
    pub holdout_percent: u8,
    /// Largest allowed drop (0.02 = 2 points) in accuracy, macro-F1 or a label's recall on
    /// the labels the current model knew.
    pub tolerance: f64,
    /// Labels with fewer held-out rows than this are reported but not gated.
    pub min_support: usize,
    /// Publish a candidate that passes the gate (otherwise keep it for an operator).
    pub publish: bool,
    /// Channel a passing candidate goes to.
    pub channel: String,
    /// Device groups it goes to (empty: every group).
    pub groups: Vec<String>,
    /// Share of those devices (0-100).
    pub percent: u8,
    /// Passes over the data.
    pub epochs: usize,
    /// Seed of the mini-batch order (same data and seed, same head).
    pub seed: u64,
    /// Tasks on an image backbone: embed the other 7 flips and quarter turns of every
    /// training tile the server holds ([`augment`]).
    pub augment: bool,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        TrainingSettings {
            auto_train_after: 200,
            drift_train_after: 20,
            holdout_percent: 20,
            tolerance: 0.02,
            min_support: 30,
            publish: true,
            channel: "canary".into(),
            groups: vec![],
            percent: 100,
            epochs: 30,
            seed: 42,
            augment: true,
        }
    }
}

/// Why a training run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// Nothing published for this model yet: there is no current bundle to start from.
    #[error("no release of model {0:?} is published; publish its bundle first (`outpost-server models publish models/{0}`)")]
    NoRelease(String),
    /// The current bundle does not verify.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// ONNX Runtime could not load a bundle.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The bundle has no base training data.
    #[error("{path}: {reason}")]
    BaseData {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Golden outputs could not be recomputed or did not reproduce.
    #[error("golden check of the candidate: {0}")]
    Golden(String),
    /// Files.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The database.
    #[error(transparent)]
    Store(#[from] ServerStoreError),
    /// Signing or publishing.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The candidate could not be assembled.
    #[error("candidate bundle: {0}")]
    Candidate(String),
    /// The run found nothing to learn from.
    #[error("no field feedback for model {0:?} yet: nothing to retrain on")]
    NoFeedback(String),
    /// Every new decision on the model belongs to a task: the model has nothing to learn,
    /// which is not a failure. The run is recorded as held with this reason.
    #[error("nothing to retrain for model {model:?}: all {claimed} of its field decisions answer tasks ({tasks}), which train on their own")]
    NothingToTrain {
        /// The run that was started (recorded as held).
        run_id: i64,
        /// The model.
        model: String,
        /// Decisions claimed by tasks.
        claimed: usize,
        /// The tasks claiming them.
        tasks: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainingError + '_ {
    move |source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a run produced before anything is published: the candidate bundle and its
/// verdict. The job worker ([`job::settle`]) publishes it or holds it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Run id.
    pub run_id: i64,
    /// The evaluation, with the gate's verdict.
    pub report: RunEvaluation,
    /// The evaluation as stored (`metrics.json`).
    pub report_json: String,
    /// The candidate bundle.
    pub bundle_dir: PathBuf,
}

/// What a run ended as.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Run id.
    pub run_id: i64,
    /// Outcome.
    pub status: RunStatus,
    /// Why it was held, or what was published.
    pub reason: String,
    /// The report.
    pub report: RunEvaluation,
    /// The candidate bundle.
    pub bundle_dir: PathBuf,
}

/// Runs one training run for `model`: data, head, evaluation, gate and candidate bundle.
/// Publishes nothing ([`job::settle`] does). A run that cannot complete is recorded as
/// failed with the reason, and the error is returned.
///
/// `still_ours` is asked after training: a job whose lease another process took over
/// answers false, and the run then stops as failed ([`PublishError::LeaseLost`]).
pub fn run(
    store: &dyn ServerStore,
    repo: &Repository,
    model: &str,
    settings: &TrainingSettings,
    trigger: Trigger,
    still_ours: &dyn Fn() -> bool,
) -> Result<Candidate, TrainingError> {
    let seen = feedback_seen(store, model)?;
    if let Some(t) = store.task(model)? {
        let release = task::backbone_release(repo, &t)?;
        let base = format!("{}@{}", release.model, release.version);
        let run_id = store.start_run(model, &base, trigger, seen)?;
        return task::train_task(store, repo, &t, settings, run_id, still_ours)
            .map_err(|e| record_failure(store, run_id, model, e));
    }
    let release =
        current_release(repo, model)?.ok_or_else(|| TrainingError::NoRelease(model.into()))?;
    let run_id = store.start_run(model, &release.version, trigger, seen)?;
    train_candidate(store, repo, &release, settings, run_id, still_ours).map_err(|e| match e {
        TrainingError::NothingToTrain { .. } => record_nothing_to_train(store, run_id, e),
        e => record_failure(store, run_id, model, e),
    })
}

/// Records a run that found nothing to learn (every decision answers a task) as held with
/// the reason, so it counts as having seen that feedback and is not queued again for it.
fn record_nothing_to_train(
    store: &dyn ServerStore,
    run_id: i64,
    e: TrainingError,
) -> TrainingError {
    let end = RunEnd {
        status: RunStatus::Held,
        reason: e.to_string(),
        candidate_version: None,
        report: None,
        bundle_dir: None,
    };
    if let Err(se) = store.finish_run(run_id, &end) {
        tracing::warn!(run = run_id, error = %se, "cannot record the run");
    }
    e
}

/// The feedback a run of `model` has seen, for deciding when it is due again: its own
/// decisions, plus for a task the decisions given under its backbone model (which may
/// carry the task's labels).
pub fn feedback_seen(store: &dyn ServerStore, model: &str) -> Result<i64, ServerStoreError> {
    let own = store.model_feedback_count(model)?;
    Ok(match store.task(model)? {
        Some(t) => own + store.model_feedback_count(&t.backbone)?,
        None => own,
    })
}

/// Records a run as failed with the error's text, and gives the error back.
pub fn record_failure(
    store: &dyn ServerStore,
    run_id: i64,
    model: &str,
    e: TrainingError,
) -> TrainingError {
    let end = RunEnd {
        status: RunStatus::Failed,
        reason: e.to_string(),
        candidate_version: None,
        report: None,
        bundle_dir: None,
    };
    if let Err(se) = store.finish_run(run_id, &end) {
        tracing::warn!(run = run_id, error = %se, "cannot record the failed run");
    }
    if let Err(se) = store.audit("trainer", "train failed", &format!("{model}: {e}")) {
        tracing::warn!(run = run_id, error = %se, "cannot audit the failed run");
    }
    e
}

fn train_candidate(
    store: &dyn ServerStore,
    repo: &Repository,
    release: &Release,
    settings: &TrainingSettings,
    run_id: i64,
    still_ours: &dyn Fn() -> bool,
) -> Result<Candidate, TrainingError> {
    let model = release.model.as_str();
    let bundle = materialise(repo, release)?;
    let base = crate::model::base_data::read(&bundle).map_err(|e| TrainingError::BaseData {
        path: e.path,
        reason: e.reason,
    })?;
    let m = bundle.manifest.clone();
    let mut rows = dataset::field_rows(store, model, settings.holdout_percent)?;
    // Decisions that answer a task on this model's backbone train that task, not this model.
    let tasks = store.tasks()?;
    let before = rows.len();
    rows.retain(|r| task::claimed(&tasks, model, &r.labels).is_none());
    let for_tasks = before - rows.len();
    if rows.is_empty() {
        let names: BTreeSet<String> = tasks
            .iter()
            .filter(|t| t.backbone == model)
            .map(|t| t.name.clone())
            .collect();
        return Err(TrainingError::NothingToTrain {
            run_id,
            model: model.into(),
            claimed: for_tasks,
            tasks: names.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    let mut data = dataset::build(&base, &rows, &m);
    data.counts.feedback_for_tasks = for_tasks;

    let started = std::time::Instant::now();
    let (head, fit) = head::fit(
        &data.train,
        data.labels.len(),
        m.multi_label,
        &head::FitOptions {
            train: TrainOptions {
                epochs: settings.epochs,
                seed: settings.seed,
                ..Default::default()
            },
            // Base data plus feedback: the configured L2, no cross-validation (folds x grid
            // trainings of the whole label set would not fit the 10 s budget); tasks
            // cross-validate ([`task`]).
            cv_max_rows: 0,
            ..Default::default()
        },
    );
    let train_seconds = started.elapsed().as_secs_f64();

    let session = crate::model::pool::SessionOptions {
        intra_threads: crate::model::pool::default_threads(),
        max_sessions: 1,
    };
    let verdict = evaluation::judge(&bundle, session, &head, &data, settings)?;
    if !still_ours() {
        return Err(PublishError::LeaseLost.into());
    }
    let version = candidate::choose_version(store, repo, release, data.labels_changed())?;
    let report = RunEvaluation {
        model: model.into(),
        base_version: release.version.clone(),
        candidate_version: version.clone(),
        new_labels: data.labels[data.known..].to_vec(),
        labels: data.labels.clone(),
        data: data.counts.clone(),
        feedback_holdout: verdict.field,
        base_holdout: verdict.base,
        gate: Gate {
            passed: verdict.problems.is_empty(),
            tolerance: settings.tolerance,
            problems: verdict.problems,
        },
        train_seconds,
        seed: settings.seed,
        fit,
        task_gate: None,
    };
    let report_json = serde_json::to_string_pretty(&report)
        .map_err(|e| TrainingError::Candidate(format!("cannot encode the evaluation: {e}")))?;
    let dir = repo
        .data_dir()
        .join("candidates")
        .join(model)
        .join(&version);
    candidate::write(
        &bundle,
        &dir,
        &candidate::NewHead {
            version: &version,
            labels: &data.labels,
            thresholds: verdict.thresholds,
            head: &head,
            report_json: report_json.as_bytes(),
            task: None,
        },
        session,
    )?;
    // Shared with every server process, so a held candidate can be published from any.
    repository::store_candidate(repo, model, &version, &dir)?;
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
    use crate::server::store::{Split, TrainingRow};
    use std::collections::{BTreeSet, HashMap};

    fn row(id: &str, device: &str, label: &str, split: Option<Split>) -> TrainingRow {
        TrainingRow {
            feedback_id: id.into(),
            device_id: device.into(),
            labels: vec![label.into()],
            embedding_f16: vec![],
            split,
        }
    }

    #[test]
    fn splits_are_stratified_and_never_change() {
        let mut rows: Vec<TrainingRow> = (0..100)
            .map(|i| row(&format!("a{i}"), "dev-a", "flooded", None))
            .chain((0..10).map(|i| row(&format!("b{i}"), "dev-b", "dry", None)))
            .collect();
        let first = assign_splits(&rows, 20);
        assert_eq!(first.len(), 110);
        let held = |v: &[(String, Split)], p: &str| {
            v.iter()
                .filter(|(i, s)| i.starts_with(p) && *s == Split::Holdout)
                .count()
        };
        assert_eq!(held(&first, "a"), 20);
        assert_eq!(held(&first, "b"), 2, "the small stratum is held out too");
        // Record them, add new rows: old ones keep their split, new ones keep the share.
        let given: HashMap<String, Split> = first.into_iter().collect();
        rows.iter_mut()
            .for_each(|r| r.split = given.get(&r.feedback_id).copied());
        rows.extend((100..150).map(|i| row(&format!("a{i}"), "dev-a", "flooded", None)));
        let second = assign_splits(&rows, 20);
        assert_eq!(second.len(), 50, "only the new rows are assigned");
        assert_eq!(held(&second, "a"), 10, "30 of 150 held out in all");
    }

    #[test]
    fn versions_go_up_past_every_used_one() {
        let taken: BTreeSet<_> = [(1, 0, 0), (1, 1, 0)].into_iter().collect();
        assert_eq!(next_version("1.0.0", true, &taken), "1.2.0");
        assert_eq!(next_version("1.1.0", false, &taken), "1.1.1");
        assert_eq!(next_version("1.0.0", false, &BTreeSet::new()), "1.0.1");
    }

    #[test]
    fn the_gate_flags_regressions_on_known_labels_only() {
        let labels: Vec<String> = ["a", "b", "new"].iter().map(|s| s.to_string()).collect();
        // truth: 10 a, 10 b, 10 new
        let y: Vec<Vec<usize>> = (0..30).map(|i| vec![i / 10]).collect();
        let pick = |p: &[usize]| -> Vec<Vec<f32>> {
            p.iter()
                .map(|&j| (0..3).map(|k| if k == j { 0.9 } else { 0.05 }).collect())
                .collect()
        };
        // Current: perfect on a and b, never says "new" (it does not know it).
        let cur: Vec<usize> = (0..30).map(|i| if i < 20 { i / 10 } else { 0 }).collect();
        // Candidate A: perfect everywhere. Candidate B: loses half of b to "new".
        let good: Vec<usize> = (0..30).map(|i| i / 10).collect();
        let bad: Vec<usize> = (0..30)
            .map(|i| if (10..15).contains(&i) { 2 } else { i / 10 })
            .collect();
        let cmp = |cand: &[usize]| Comparison {
            current: evaluation::evaluate_scores(&pick(&cur), &y, 3, false, None, 2),
            candidate: evaluation::evaluate_scores(&pick(cand), &y, 3, false, None, 2),
            support: vec![10, 10, 10],
        };
        assert!(gate_problems("x", &cmp(&good), 2, &labels, 0.02, 5).is_empty());
        let p = gate_problems("x", &cmp(&bad), 2, &labels, 0.02, 5);
        assert!(
            p.iter()
                .any(|p| p.contains("recall of b fell from 1.000 to 0.500")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.contains("accuracy on known labels")),
            "{p:?}"
        );
        // A tolerance of 0.6 lets it through; too little support is not gated.
        assert!(gate_problems("x", &cmp(&bad), 2, &labels, 0.6, 5).is_empty());
        let p = gate_problems("x", &cmp(&bad), 2, &labels, 0.02, 11);
        assert!(!p.iter().any(|p| p.contains("recall")), "{p:?}");
    }
}
