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
//! 4. **Train** the head in Rust ([`super::train`]), deterministic for a fixed seed.
//! 5. **Evaluate** candidate and current on the same held-out data (field and base):
//!    accuracy, macro-F1, per-label recall and precision, confusion matrix.
//! 6. **Gate.** On the labels the current model knew, the candidate may not lose more than
//!    the tolerance in accuracy, macro-F1 or any label's recall (labels with too little
//!    held-out support are reported but not gated).
//! 7. **Candidate bundle** (same backbone, new head written by our own ONNX writer, golden
//!    outputs recomputed and re-checked through ONNX Runtime) is kept on disk with its
//!    report; if it passed and publishing is on, it is signed and published.

use super::publish::{self, PublishError, Repository};
use super::store::{RunEnd, RunStatus, ServerStore, ServerStoreError, Split, TrainingRow, Trigger};
use super::train::{self, Dataset, Evaluation, LinearHead, TrainOptions};
use crate::model::{Bundle, BundleError, LoadedModel, Manifest, ModelError};
use crate::trust::{Release, Targets};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

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
    /// The run found nothing to learn from.
    #[error("no field feedback for model {0:?} yet: nothing to retrain on")]
    NoFeedback(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainingError + '_ {
    move |source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
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
pub struct Report {
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
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Run id.
    pub run_id: i64,
    /// Outcome.
    pub status: RunStatus,
    /// Why it was held, or what was published.
    pub reason: String,
    /// The report.
    pub report: Report,
    /// The candidate bundle.
    pub bundle_dir: PathBuf,
}

/// Reads the signed targets of the server's repository (empty if nothing is published).
pub fn published_targets(repo: &Repository) -> Option<Targets> {
    publish::current_targets(repo).ok()
}

/// The newest release of `model` that is not withdrawn, on any channel.
pub fn current_release(repo: &Repository, model: &str) -> Option<Release> {
    published_targets(repo)?
        .releases
        .into_iter()
        .filter(|r| r.model == model && !r.withdrawn)
        .max_by_key(|r| crate::model::manifest::parse_version(&r.version))
}

/// Puts the files of a published release in a folder (copied from the repository's blob
/// store) and verifies it as a bundle.
pub fn materialise(repo: &Repository, release: &Release) -> Result<Bundle, TrainingError> {
    let dir = repo
        .data_dir()
        .join("bundles")
        .join(&release.model)
        .join(&release.version);
    if let Ok(b) = Bundle::open(&dir) {
        return Ok(b);
    }
    let _ = std::fs::remove_dir_all(&dir);
    for (name, target) in &release.files {
        let to = dir.join(name);
        if !repo
            .blobs()
            .get_to_file(&format!("targets/{target}"), &to)
            .map_err(PublishError::from)?
        {
            return Err(TrainingError::Io {
                path: to,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "{target} is missing from the repository {}",
                        repo.blobs().url()
                    ),
                ),
            });
        }
    }
    Ok(Bundle::open(&dir)?)
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

/// The next candidate version: a minor bump when labels change, a patch bump otherwise,
/// past every version already used for the model.
pub fn next_version(base: &str, labels_changed: bool, taken: &BTreeSet<(u64, u64, u64)>) -> String {
    let (mut a, mut b, mut c) = crate::model::manifest::parse_version(base).unwrap_or((0, 0, 0));
    let newest = taken.iter().max().copied().unwrap_or((0, 0, 0));
    loop {
        if labels_changed {
            b += 1;
            c = 0;
        } else {
            c += 1;
        }
        if (a, b, c) > newest {
            return format!("{a}.{b}.{c}");
        }
        if b > 1_000_000 {
            // Unreachable in practice; keep the loop finite whatever the input.
            a += 1;
            b = 0;
        }
    }
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
        current: train::evaluate_scores(&cur_scores, &data.y, k, ml, cur_thr.as_deref(), known),
        candidate: train::evaluate_scores(&cand_scores, &data.y, k, ml, thresholds, known),
        support,
    })
}

fn link_or_copy(src: &Path, dest: &Path) -> Result<(), TrainingError> {
    if let Some(d) = dest.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    if std::fs::hard_link(src, dest).is_err() {
        std::fs::copy(src, dest).map_err(io(dest))?;
    }
    Ok(())
}

fn write_manifest(dir: &Path, m: &mut Manifest) -> Result<(), TrainingError> {
    m.files = crate::model::bundle::hash_folder(dir).map_err(io(dir))?;
    let path = dir.join("manifest.json");
    let text = serde_json::to_vec_pretty(m).unwrap_or_default();
    std::fs::write(&path, text).map_err(io(&path))
}

/// Writes the candidate bundle: the current bundle's files, a new head, manifest, metrics
/// and golden outputs recomputed through ONNX Runtime, then checks it loads and reproduces
/// its golden outputs exactly as an agent will.
#[allow(clippy::too_many_arguments)]
fn write_candidate(
    current: &Bundle,
    dir: &Path,
    version: &str,
    labels: &[String],
    thresholds: Option<Vec<f32>>,
    head: &LinearHead,
    report_json: &[u8],
    session: crate::model::pool::SessionOptions,
) -> Result<(), TrainingError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cm = &current.manifest;
    let regenerated: BTreeSet<&str> = [cm.head.file.as_str(), "metrics.json", "manifest.json"]
        .into_iter()
        .collect();
    for name in cm.files.keys() {
        if !regenerated.contains(name.as_str()) {
            link_or_copy(&current.path(name), &dir.join(name))?;
        }
    }
    let head_path = dir.join(&cm.head.file);
    std::fs::write(&head_path, head.to_onnx(&cm.head.input, &cm.head.output))
        .map_err(io(&head_path))?;
    let metrics = dir.join("metrics.json");
    std::fs::write(&metrics, report_json).map_err(io(&metrics))?;
    let mut m = cm.clone();
    m.version = version.to_string();
    m.labels = labels.to_vec();
    m.thresholds = thresholds;
    if let Some(g) = &cm.golden {
        // The golden file is linked from the current bundle: replace it by a copy before
        // rewriting, so the current bundle's file is never touched.
        let gp = dir.join(g);
        let bytes = std::fs::read(&gp).map_err(io(&gp))?;
        std::fs::remove_file(&gp).map_err(io(&gp))?;
        std::fs::write(&gp, bytes).map_err(io(&gp))?;
        write_manifest(dir, &mut m)?;
        let loaded = LoadedModel::load(dir, session)?;
        let fresh = crate::infer::golden::recompute(&loaded)
            .map_err(TrainingError::Golden)?
            .unwrap_or_default();
        drop(loaded);
        std::fs::write(&gp, fresh).map_err(io(&gp))?;
    }
    write_manifest(dir, &mut m)?;
    let loaded = LoadedModel::load(dir, session)?;
    if let Some(r) = crate::infer::golden::check(&loaded).map_err(TrainingError::Golden)? {
        if !r.passed() {
            return Err(TrainingError::Golden(r.failures.join("; ")));
        }
    }
    Ok(())
}

/// Runs one training job for `model` and records it. A run that cannot complete is
/// recorded as failed with the reason, and the error is returned.
///
/// `still_ours` is asked after training and again once the repository lease is held, just
/// before publishing: a job whose lease another process took over answers false, and the
/// run then stops as failed without publishing ([`PublishError::LeaseLost`]).
pub fn run(
    store: &dyn ServerStore,
    repo: &Repository,
    model: &str,
    settings: &TrainingSettings,
    trigger: Trigger,
    still_ours: &dyn Fn() -> bool,
) -> Result<Outcome, TrainingError> {
    let release =
        current_release(repo, model).ok_or_else(|| TrainingError::NoRelease(model.into()))?;
    let seen = store.model_feedback_count(model)?;
    let run_id = store.start_run(model, &release.version, trigger, seen)?;
    match run_inner(store, repo, &release, settings, run_id, still_ours) {
        Ok(o) => Ok(o),
        Err(e) => {
            let _ = store.finish_run(
                run_id,
                &RunEnd {
                    status: RunStatus::Failed,
                    reason: e.to_string(),
                    candidate_version: None,
                    report: None,
                    bundle_dir: None,
                },
            );
            let _ = store.audit("trainer", "train failed", &format!("{model}: {e}"));
            Err(e)
        }
    }
}

fn run_inner(
    store: &dyn ServerStore,
    repo: &Repository,
    release: &Release,
    settings: &TrainingSettings,
    run_id: i64,
    still_ours: &dyn Fn() -> bool,
) -> Result<Outcome, TrainingError> {
    let model = release.model.as_str();
    let data_dir = repo.data_dir();
    let bundle = materialise(repo, release)?;
    let base = crate::model::base_data::read(&bundle).map_err(|e| TrainingError::BaseData {
        path: e.path,
        reason: e.reason,
    })?;
    let m = bundle.manifest.clone();
    let dim = base.dim;

    // Field decisions, their labels, and their splits.
    let mut rows = store.training_feedback(model)?;
    if rows.is_empty() {
        return Err(TrainingError::NoFeedback(model.into()));
    }
    let new_splits = assign_splits(&rows, settings.holdout_percent);
    store.save_splits(&new_splits)?;
    let given: HashMap<&str, Split> = new_splits.iter().map(|(i, s)| (i.as_str(), *s)).collect();
    for r in &mut rows {
        if r.split.is_none() {
            r.split = given.get(r.feedback_id.as_str()).copied();
        }
    }
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

    let mut counts = DataCounts::default();
    let empty = || Dataset {
        dim,
        ..Default::default()
    };
    let (mut train_set, mut base_hold, mut field_hold) = (empty(), empty(), empty());
    for i in 0..base.len() {
        // Every tenth base row (by a fixed rule) is held out.
        if i % 10 == 9 {
            base_hold.push(base.row(i), base.y[i].clone());
            counts.base_holdout += 1;
        } else {
            train_set.push(base.row(i), base.y[i].clone());
            counts.base_train += 1;
        }
    }
    for r in &rows {
        let e = crate::store::embedding_from_f16(&r.embedding_f16);
        let y: Vec<usize> = r
            .labels
            .iter()
            .filter_map(|l| index.get(l.as_str()).copied())
            .collect();
        if e.len() != dim || y.is_empty() || (!m.multi_label && y.len() != 1) {
            counts.feedback_skipped += 1;
            continue;
        }
        if r.split == Some(Split::Holdout) {
            field_hold.push(&e, y);
            counts.feedback_holdout += 1;
        } else {
            train_set.push(&e, y);
            counts.feedback_train += 1;
        }
    }

    let started = std::time::Instant::now();
    let head = train::train(
        &train_set,
        labels.len(),
        m.multi_label,
        &TrainOptions {
            epochs: settings.epochs,
            seed: settings.seed,
            ..Default::default()
        },
    );
    let train_seconds = started.elapsed().as_secs_f64();

    let session = crate::model::pool::SessionOptions {
        intra_threads: crate::model::pool::default_threads(),
        max_sessions: 1,
    };
    let current = LoadedModel::from_bundle(bundle.clone(), session)?;
    let thresholds = m.thresholds.as_ref().map(|t| {
        let mut t = t.clone();
        t.resize(labels.len(), 0.5);
        t
    });
    let cur_thr = m.thresholds.as_deref();
    let field_cmp = compare(
        &current,
        &head,
        &field_hold,
        known,
        cur_thr,
        thresholds.as_deref(),
    )?;
    let base_cmp = compare(
        &current,
        &head,
        &base_hold,
        known,
        cur_thr,
        thresholds.as_deref(),
    )?;
    drop(current);

    let mut problems = gate_problems(
        "held-out field feedback",
        &field_cmp,
        known,
        &labels,
        settings.tolerance,
        settings.min_support,
    );
    problems.extend(gate_problems(
        "held-out base data",
        &base_cmp,
        known,
        &labels,
        settings.tolerance,
        settings.min_support,
    ));

    if !still_ours() {
        return Err(PublishError::LeaseLost.into());
    }
    let mut taken: BTreeSet<(u64, u64, u64)> = published_targets(repo)
        .map(|t| {
            t.releases
                .iter()
                .filter(|r| r.model == model)
                .filter_map(|r| crate::model::manifest::parse_version(&r.version))
                .collect()
        })
        .unwrap_or_default();
    taken.extend(
        store
            .runs(Some(model))?
            .iter()
            .filter_map(|r| r.candidate_version.as_deref())
            .filter_map(crate::model::manifest::parse_version),
    );
    let version = next_version(&release.version, labels.len() != known, &taken);
    let report = Report {
        model: model.into(),
        base_version: release.version.clone(),
        candidate_version: version.clone(),
        new_labels: labels[known..].to_vec(),
        labels: labels.clone(),
        data: counts,
        feedback_holdout: field_cmp,
        base_holdout: base_cmp,
        gate: Gate {
            passed: problems.is_empty(),
            tolerance: settings.tolerance,
            problems,
        },
        train_seconds,
        seed: settings.seed,
    };
    let report_json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    let dir = data_dir.join("candidates").join(model).join(&version);
    write_candidate(
        &bundle,
        &dir,
        &version,
        &labels,
        thresholds,
        &head,
        &report_json,
        session,
    )?;
    // Shared with every server process, so a held candidate can be published from any.
    publish::store_candidate(repo, model, &version, &dir)?;

    let (status, reason) = if !report.gate.passed {
        (
            RunStatus::Held,
            format!(
                "held: {}; inspect with `outpost-server models eval {version}`, publish by hand with `outpost-server models publish {version}` if acceptable",
                report.gate.problems.join("; ")
            ),
        )
    } else if !settings.publish {
        (
            RunStatus::Held,
            "passed the gate; automatic publishing is off".to_string(),
        )
    } else {
        let tv = publish::publish_if(
            repo,
            still_ours,
            &dir,
            &settings.channel,
            &settings.groups,
            settings.percent,
        )?;
        (
            RunStatus::Published,
            format!(
                "published to {} {} {}% as targets version {tv}",
                settings.channel,
                publish::audience(&settings.groups),
                settings.percent
            ),
        )
    };
    store.finish_run(
        run_id,
        &RunEnd {
            status,
            reason: reason.clone(),
            candidate_version: Some(version.clone()),
            report: Some(String::from_utf8_lossy(&report_json).into_owned()),
            bundle_dir: Some(dir.display().to_string()),
        },
    )?;
    store.audit(
        "trainer",
        "train",
        &format!("{model} {} -> {version}: {reason}", release.version),
    )?;
    Ok(Outcome {
        run_id,
        status,
        reason,
        report,
        bundle_dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            current: train::evaluate_scores(&pick(&cur), &y, 3, false, None, 2),
            candidate: train::evaluate_scores(&pick(cand), &y, 3, false, None, 2),
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
