//! The candidate bundle of a run: the current bundle's files with a new head, manifest,
//! golden outputs and evaluation report, and the next version number it gets.

use super::head::LinearHead;
use super::{io, TrainingError};
use crate::model::{Bundle, LoadedModel, Manifest};
use crate::server::repository::{published_targets, Repository};
use crate::server::store::{ServerStore, TaskDefinition};
use crate::trust::Release;
use crate::version::parse_version;
use std::collections::BTreeSet;
use std::path::Path;

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

/// What a candidate bundle changes against the current one.
#[derive(Debug)]
pub struct NewHead<'a> {
    /// The candidate's version.
    pub version: &'a str,
    /// Its labels (the current ones, then new ones).
    pub labels: &'a [String],
    /// Its decision thresholds (multi-label), one per label.
    pub thresholds: Option<Vec<f32>>,
    /// The retrained head.
    pub head: &'a LinearHead,
    /// The evaluation report (`metrics.json`).
    pub report_json: &'a [u8],
    /// A task's bundle: named after the task, its single/multi-label kind, and without the
    /// backbone model's base data and drift reference (they describe the other labels).
    pub task: Option<&'a TaskDefinition>,
}

/// Every version of `model` already published or given to an earlier candidate.
pub fn taken_versions(
    store: &dyn ServerStore,
    repo: &Repository,
    model: &str,
) -> Result<BTreeSet<(u64, u64, u64)>, TrainingError> {
    let mut taken: BTreeSet<(u64, u64, u64)> = published_targets(repo)?
        .map(|t| {
            t.releases
                .iter()
                .filter(|r| r.model == model)
                .filter_map(|r| parse_version(&r.version))
                .collect()
        })
        .unwrap_or_default();
    taken.extend(
        store
            .runs(Some(model))?
            .iter()
            .filter_map(|r| r.candidate_version.as_deref())
            .filter_map(parse_version),
    );
    Ok(taken)
}

/// The version a candidate gets: above the release it started from and above every
/// version already published or given to an earlier candidate of the model.
pub fn choose_version(
    store: &dyn ServerStore,
    repo: &Repository,
    release: &Release,
    labels_changed: bool,
) -> Result<String, TrainingError> {
    let taken = taken_versions(store, repo, release.model.as_str())?;
    Ok(next_version(&release.version, labels_changed, &taken))
}

/// Writes the candidate bundle: the current bundle's files, a new head, manifest, metrics
/// and golden outputs recomputed through ONNX Runtime, then checks it loads and reproduces
/// its golden outputs exactly as an agent will.
pub fn write(
    current: &Bundle,
    dir: &Path,
    new: &NewHead<'_>,
    session: crate::model::pool::SessionOptions,
) -> Result<(), TrainingError> {
    let NewHead {
        version,
        labels,
        thresholds,
        head,
        report_json,
        task,
    } = new;
    let thresholds = thresholds.clone();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cm = &current.manifest;
    let mut regenerated: BTreeSet<&str> = [cm.head.file.as_str(), "metrics.json", "manifest.json"]
        .into_iter()
        .collect();
    if task.is_some() {
        regenerated.extend(cm.base_data.as_deref());
        regenerated.extend(cm.reference_stats.as_deref());
    }
    for name in cm.files.keys() {
        if !regenerated.contains(name.as_str()) {
            link_or_copy(&current.path(name), &dir.join(name))?;
        }
    }
    let head_path = dir.join(&cm.head.file);
    std::fs::write(&head_path, head.to_onnx(&cm.head.input, &cm.head.output))
        .map_err(io(&head_path))?;
    let metrics = dir.join("metrics.json");
    std::fs::write(&metrics, *report_json).map_err(io(&metrics))?;
    let mut m = cm.clone();
    m.version = version.to_string();
    m.labels = labels.to_vec();
    m.thresholds = thresholds;
    if let Some(t) = task {
        m.name = t.name.clone();
        m.multi_label = t.multi_label;
        m.description = format!(
            "task {} ({}) on the backbone of {} {}",
            t.name,
            t.labels.join(", "),
            cm.name,
            cm.version
        );
        m.base_data = None;
        m.reference_stats = None;
    }
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
