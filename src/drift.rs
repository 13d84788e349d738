//! Drift monitoring on the agent: does what the field sends still look like what the model
//! was trained on?
//!
//! **Method.** Each prediction's embedding gets a *novelty*: its distance to the nearest
//! label centroid of the bundle's base training data (`base_data.safetensors`), a diagonal
//! Mahalanobis distance per dimension, `mean_d (x_d - mu_{c,d})^2 / (var_{c,d} + floor)`,
//! minimised over labels c. It is class-conditional on purpose: a run of 50 forest tiles is
//! not drift, although its mean embedding is far from the global mean; a flood scene is far
//! from *every* land-cover class. The *novelty threshold* is the 97.5th percentile of the
//! novelty of base rows held out of the centroid statistics (half the rows build the
//! centroids, the other half calibrate), so in-distribution items exceed it about 2.5% of the
//! time, whatever the model.
//!
//! Predictions are cut, in order, into windows of `window` items per model. A window's
//! **drift score** is the share of its items above the novelty threshold; the state is
//! `drifted` at or above `drifted_rate` (default 0.5), `watch` at or above `watch_rate`
//! (0.2), else `ok`. Under no drift the count of novel items in a window of 50 is about
//! Binomial(50, 0.025): 10 or more (watch) has probability below 1e-4 per window. Each window
//! also records the population stability index (PSI) of its top-score histogram and of its
//! predicted-label mix against `reference_stats.json` (PSI > 0.25 is the usual "shifted"
//! mark), and the likely cause: which labels and which source folders the novel items
//! carry. Those are shown to explain a state, not to set it: a team that photographs only
//! flooded fields legitimately moves the label mix. For reports, each window is also broken
//! down by the detected language of its items (items and unfamiliar items per language): a
//! model that reads one language worse shows it there first.
//!
//! Novel items of a `watch` or `drifted` window go to the front of the review queue: their
//! labels teach the model most. Window summaries (numbers, label names, folder names; no
//! raw data) travel to the server with sync.

use crate::model::{base_data, Bundle};
pub use crate::protocol::{DriftState, DriftWindow, LanguageDrift};
use crate::store::{Store, StoreError};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Drift settings (`[drift]` in the agent's config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftSettings {
    /// Items per window.
    pub window: usize,
    /// Share of novel items from which a window is `watch`.
    pub watch_rate: f64,
    /// Share of novel items from which a window is `drifted`.
    pub drifted_rate: f64,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            window: 50,
            watch_rate: 0.2,
            drifted_rate: 0.5,
        }
    }
}

/// Why a reference could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// No or bad base data.
    #[error("drift reference: {0}")]
    BaseData(#[from] base_data::BaseDataError),
    /// Database.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for DriftError {
    fn from(e: rusqlite::Error) -> Self {
        DriftError::Store(StoreError::from(e))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ReferenceStats {
    #[serde(default)]
    top_score_histogram: Option<Histogram>,
    #[serde(default)]
    label_frequencies: Vec<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Histogram {
    edges: Vec<f64>,
    counts: Vec<f64>,
}

/// What a model's inputs are compared with: per-label centroids of its base data, the
/// novelty threshold, and the reference histograms.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Labels.
    pub labels: Vec<String>,
    /// Whether the model is multi-label.
    pub multi_label: bool,
    dim: usize,
    centroids: Vec<(Vec<f32>, Vec<f32>)>, // (mean, 1 / (var + floor))
    /// Novelty above which an item counts as unfamiliar.
    pub threshold: f32,
    stats: ReferenceStats,
}

impl Reference {
    /// Builds the reference of a verified bundle.
    pub fn from_bundle(bundle: &Bundle) -> Result<Reference, DriftError> {
        let m = &bundle.manifest;
        let data = base_data::read(bundle)?;
        let dim = data.dim;
        let k = m.labels.len();
        // Even rows build the centroids, odd rows calibrate the threshold.
        let mut sums = vec![(vec![0f64; dim], vec![0f64; dim], 0usize); k + 1]; // last: global
        for i in (0..data.len()).step_by(2) {
            let x = data.row(i);
            for &c in data.y[i].iter().chain(std::iter::once(&k)) {
                let (s, s2, n) = &mut sums[c.min(k)];
                for (d, &v) in x.iter().enumerate() {
                    s[d] += f64::from(v);
                    s2[d] += f64::from(v) * f64::from(v);
                }
                *n += 1;
            }
        }
        let stats_of = |(s, s2, n): &(Vec<f64>, Vec<f64>, usize)| {
            let n = (*n).max(1) as f64;
            let mean: Vec<f64> = s.iter().map(|v| v / n).collect();
            let var: Vec<f64> = s2
                .iter()
                .zip(&mean)
                .map(|(v, m)| (v / n - m * m).max(0.0))
                .collect();
            (mean, var)
        };
        let (gmean, gvar) = stats_of(&sums[k]);
        let floor = 0.05 * gvar.iter().sum::<f64>() / dim.max(1) as f64 + 1e-9;
        let centroids: Vec<(Vec<f32>, Vec<f32>)> = (0..k)
            .map(|c| {
                // Labels with too few examples (or none: a label added in the field) use the
                // global statistics.
                let (mean, var) = if sums[c].2 >= 10 {
                    stats_of(&sums[c])
                } else {
                    (gmean.clone(), gvar.clone())
                };
                (
                    mean.iter().map(|&v| v as f32).collect(),
                    var.iter().map(|&v| (1.0 / (v + floor)) as f32).collect(),
                )
            })
            .collect();
        let stats: ReferenceStats = m
            .reference_stats
            .as_ref()
            .and_then(|f| std::fs::read(bundle.path(f)).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut r = Reference {
            model: m.name.clone(),
            version: m.version.clone(),
            labels: m.labels.clone(),
            multi_label: m.multi_label,
            dim,
            centroids,
            threshold: f32::INFINITY,
            stats,
        };
        let mut cal: Vec<f32> = (1..data.len())
            .step_by(2)
            .map(|i| r.novelty(data.row(i)))
            .collect();
        cal.sort_by(f32::total_cmp);
        if !cal.is_empty() {
            r.threshold = cal[((cal.len() as f64 * 0.975) as usize).min(cal.len() - 1)];
        }
        Ok(r)
    }

    /// Distance of an embedding to the nearest label centroid (see the module comment).
    pub fn novelty(&self, x: &[f32]) -> f32 {
        if x.len() != self.dim {
            return f32::INFINITY;
        }
        self.centroids
            .iter()
            .map(|(mean, inv)| {
                let s: f32 = x
                    .iter()
                    .zip(mean)
                    .zip(inv)
                    .map(|((v, m), i)| (v - m) * (v - m) * i)
                    .sum();
                s / self.dim as f32
            })
            .fold(f32::INFINITY, f32::min)
    }
}

/// The state of a window with drift score `score` (share of unfamiliar items).
pub fn verdict(score: f64, settings: &DriftSettings) -> DriftState {
    if score >= settings.drifted_rate {
        DriftState::Drifted
    } else if score >= settings.watch_rate {
        DriftState::Watch
    } else {
        DriftState::Ok
    }
}

/// Population stability index of `observed` counts against `expected` proportions.
pub fn psi(observed: &[f64], expected: &[f64]) -> Option<f64> {
    let n: f64 = observed.iter().sum();
    let e: f64 = expected.iter().sum();
    if n <= 0.0 || e <= 0.0 || observed.len() != expected.len() {
        return None;
    }
    let eps = 1e-4;
    Some(
        observed
            .iter()
            .zip(expected)
            .map(|(o, x)| {
                let p = (o / n).max(eps);
                let q = (x / e).max(eps);
                (p - q) * (p / q).ln()
            })
            .sum(),
    )
}

fn top_counts(v: impl Iterator<Item = String>, n: usize) -> Vec<(String, usize)> {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    v.for_each(|k| *m.entry(k).or_default() += 1);
    let mut out: Vec<(String, usize)> = m.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.truncate(n);
    out
}

struct Row {
    prediction_id: i64,
    top_label: String,
    top_score: f64,
    embedding: Vec<u8>,
    source: String,
    created_at: String,
    language: Option<String>,
}

/// Items and unfamiliar items per language, most items first (then by code).
fn language_counts<'a>(items: impl Iterator<Item = (Option<&'a str>, bool)>) -> Vec<LanguageDrift> {
    let mut by: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (lang, novel) in items {
        let e = by
            .entry(lang.unwrap_or(LanguageDrift::UNKNOWN))
            .or_default();
        e.0 += 1;
        e.1 += usize::from(novel);
    }
    let mut v: Vec<LanguageDrift> = by
        .into_iter()
        .map(|(l, (items, novel))| LanguageDrift {
            language: l.to_string(),
            items,
            novel,
        })
        .collect();
    v.sort_by(|a, b| {
        b.items
            .cmp(&a.items)
            .then_with(|| a.language.cmp(&b.language))
    });
    v
}

/// Scores the predictions of `reference`'s model version not yet in a window, and stores
/// every complete window. Returns the new windows.
pub fn update(
    store: &Store,
    reference: &Reference,
    settings: &DriftSettings,
) -> Result<Vec<DriftWindow>, DriftError> {
    let w = settings.window.max(1);
    let conn = store.conn();
    let last: i64 = conn.query_row(
        "SELECT COALESCE(MAX(last_prediction_id), 0) FROM drift_windows WHERE model_name = ?1 AND model_version = ?2",
        params![reference.model, reference.version],
        |r| r.get(0),
    )?;
    let mut st = conn.prepare(
        "SELECT p.prediction_id, p.top_label, p.top_score, p.embedding, i.source, p.created_at,
                i.language
         FROM predictions p JOIN items i ON i.item_id = p.item_id
         WHERE p.model_name = ?1 AND p.model_version = ?2 AND p.prediction_id > ?3
         ORDER BY p.prediction_id",
    )?;
    let rows: Vec<Row> = st
        .query_map(params![reference.model, reference.version, last], |r| {
            Ok(Row {
                prediction_id: r.get(0)?,
                top_label: r.get(1)?,
                top_score: r.get(2)?,
                embedding: r.get(3)?,
                source: r.get(4)?,
                created_at: r.get(5)?,
                language: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for chunk in rows.chunks(w) {
        if chunk.len() < w {
            break; // an incomplete window waits for more items
        }
        let novelty: Vec<f32> = chunk
            .iter()
            .map(|r| reference.novelty(&crate::store::embedding_from_f16(&r.embedding)))
            .collect();
        let is_novel: Vec<bool> = novelty.iter().map(|&n| n > reference.threshold).collect();
        let novel = is_novel.iter().filter(|&&b| b).count();
        let score = novel as f64 / w as f64;
        let state = verdict(score, settings);
        let top_score_psi = reference.stats.top_score_histogram.as_ref().and_then(|h| {
            let bins = h.counts.len();
            let mut obs = vec![0f64; bins];
            for r in chunk {
                let b = h
                    .edges
                    .iter()
                    .skip(1)
                    .position(|&e| r.top_score < e)
                    .unwrap_or(bins.saturating_sub(1));
                if let Some(o) = obs.get_mut(b.min(bins.saturating_sub(1))) {
                    *o += 1.0;
                }
            }
            psi(&obs, &h.counts)
        });
        let label_psi = (!reference.multi_label
            && reference.stats.label_frequencies.len() == reference.labels.len())
        .then(|| {
            let mut obs = vec![0f64; reference.labels.len()];
            for r in chunk {
                if let Some(j) = reference.labels.iter().position(|l| *l == r.top_label) {
                    obs[j] += 1.0;
                }
            }
            psi(&obs, &reference.stats.label_frequencies)
        })
        .flatten();
        let novel_rows = || {
            chunk
                .iter()
                .zip(&is_novel)
                .filter(|(_, &n)| n)
                .map(|(r, _)| r)
        };
        let window = DriftWindow {
            model_name: reference.model.clone(),
            model_version: reference.version.clone(),
            items: w,
            novel,
            score,
            state,
            top_score_psi,
            label_psi,
            novel_labels: top_counts(novel_rows().map(|r| r.top_label.clone()), 3),
            novel_folders: top_counts(
                novel_rows().map(|r| crate::store::queue::folder_of(&r.source)),
                3,
            ),
            started_at: chunk[0].created_at.clone(),
            ended_at: chunk[w - 1].created_at.clone(),
            // Tiles carry no language: an all-unknown breakdown says nothing, so none is kept.
            languages: Some(language_counts(
                chunk
                    .iter()
                    .zip(&is_novel)
                    .map(|(r, &n)| (r.language.as_deref(), n)),
            ))
            .filter(|v| v.iter().any(|l| l.language != LanguageDrift::UNKNOWN))
            .unwrap_or_default(),
        };
        let tx = conn.unchecked_transaction()?;
        {
            let mut upd = tx.prepare_cached(
                "UPDATE predictions SET novelty = ?2, drift_priority = ?3 WHERE prediction_id = ?1",
            )?;
            for ((r, n), &is) in chunk.iter().zip(&novelty).zip(&is_novel) {
                let priority = is && state != DriftState::Ok;
                upd.execute(params![
                    r.prediction_id,
                    if n.is_finite() {
                        f64::from(*n)
                    } else {
                        f64::MAX
                    },
                    priority as i64
                ])?;
            }
            tx.execute(
                "INSERT INTO drift_windows (model_name, model_version, first_prediction_id, last_prediction_id,
                     items, novel, score, state, top_score_psi, label_psi, novel_labels, novel_folders,
                     started_at, ended_at, languages)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    window.model_name,
                    window.model_version,
                    chunk[0].prediction_id,
                    chunk[w - 1].prediction_id,
                    w as i64,
                    novel as i64,
                    score,
                    state.as_str(),
                    top_score_psi,
                    label_psi,
                    serde_json::to_string(&window.novel_labels).unwrap_or_default(),
                    serde_json::to_string(&window.novel_folders).unwrap_or_default(),
                    window.started_at,
                    window.ended_at,
                    serde_json::to_string(&window.languages).unwrap_or_default()
                ],
            )?;
        }
        tx.commit()?;
        out.push(window);
    }
    Ok(out)
}

/// A window's language breakdown in words, e.g. `hat 31 (9 unfamiliar), eng 19 (0)`;
/// empty when the window has none (tiles).
pub fn describe_languages(languages: &[LanguageDrift]) -> String {
    languages
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let what = if i == 0 { " unfamiliar" } else { "" };
            format!("{} {} ({}{what})", l.language, l.items, l.novel)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A model's drift state as `outpost status` and the review page show it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDrift {
    /// Model.
    pub model_name: String,
    /// State of the latest window.
    pub state: DriftState,
    /// When the current state began (start of the first window of the current run of
    /// windows in that state).
    pub since: String,
    /// Windows scored.
    pub windows: usize,
    /// The latest window.
    pub latest: DriftWindow,
    /// The latest window that was not `ok` (its cause), if any.
    pub last_alert: Option<DriftWindow>,
}

fn row_to_window(r: &rusqlite::Row<'_>) -> rusqlite::Result<DriftWindow> {
    let labels: String = r.get(9)?;
    let folders: String = r.get(10)?;
    let state: String = r.get(6)?;
    let languages: String = r.get(12)?;
    Ok(DriftWindow {
        model_name: r.get(0)?,
        model_version: r.get(1)?,
        items: r.get::<_, i64>(2)? as usize,
        novel: r.get::<_, i64>(3)? as usize,
        score: r.get(4)?,
        top_score_psi: r.get(5)?,
        state: DriftState::parse(&state),
        label_psi: r.get(7)?,
        started_at: r.get(8)?,
        novel_labels: serde_json::from_str(&labels).unwrap_or_default(),
        novel_folders: serde_json::from_str(&folders).unwrap_or_default(),
        ended_at: r.get(11)?,
        languages: serde_json::from_str(&languages).unwrap_or_default(),
    })
}

const WINDOW_COLUMNS: &str = "model_name, model_version, items, novel, score, top_score_psi, state, label_psi, started_at, novel_labels, novel_folders, ended_at, languages";

/// Windows stored after `after_id` (for sync), with their ids, oldest first.
pub fn windows_after(store: &Store, after_id: i64) -> Result<Vec<(i64, DriftWindow)>, DriftError> {
    let conn = store.conn();
    let mut st = conn.prepare(&format!(
        "SELECT {WINDOW_COLUMNS}, window_id FROM drift_windows WHERE window_id > ?1 ORDER BY window_id LIMIT 1000"
    ))?;
    let rows = st.query_map([after_id], |r| Ok((r.get(13)?, row_to_window(r)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every model's drift state.
pub fn summary(store: &Store) -> Result<Vec<ModelDrift>, DriftError> {
    let conn = store.conn();
    let models: Vec<String> = conn
        .prepare("SELECT DISTINCT model_name FROM drift_windows ORDER BY 1")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for m in models {
        let mut st = conn.prepare(&format!(
            "SELECT {WINDOW_COLUMNS} FROM drift_windows WHERE model_name = ?1 ORDER BY window_id DESC"
        ))?;
        let windows: Vec<DriftWindow> = st
            .query_map([&m], row_to_window)?
            .collect::<Result<_, _>>()?;
        let Some(latest) = windows.first().cloned() else {
            continue;
        };
        let since = windows
            .iter()
            .take_while(|w| w.state == latest.state)
            .last()
            .map(|w| w.started_at.clone())
            .unwrap_or_default();
        out.push(ModelDrift {
            model_name: m,
            state: latest.state,
            since,
            windows: windows.len(),
            last_alert: windows.iter().find(|w| w.state != DriftState::Ok).cloned(),
            latest,
        });
    }
    Ok(out)
}

/// Scores new predictions of every model in `models_dir` (those with base data) and returns
/// the new windows. Models that cannot be read are skipped with a warning.
pub fn update_all(
    store: &Store,
    models_dir: &std::path::Path,
    settings: &DriftSettings,
) -> Vec<DriftWindow> {
    let mut out = Vec::new();
    for dir in crate::model::bundle::discover(models_dir).unwrap_or_default() {
        let reference = Bundle::open(&dir)
            .map_err(|e| e.to_string())
            .and_then(|b| Reference::from_bundle(&b).map_err(|e| e.to_string()));
        match reference {
            Ok(r) => match update(store, &r, settings) {
                Ok(w) => out.extend(w),
                Err(e) => tracing::warn!(model = %r.model, error = %e, "drift update failed"),
            },
            Err(e) => tracing::debug!(bundle = %dir.display(), error = %e, "no drift reference"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_the_same_mix_and_grows_with_shift() {
        assert!(psi(&[10.0, 10.0], &[0.5, 0.5]).unwrap().abs() < 1e-12);
        let small = psi(&[12.0, 8.0], &[0.5, 0.5]).unwrap();
        let large = psi(&[19.0, 1.0], &[0.5, 0.5]).unwrap();
        assert!(small < 0.1 && large > 0.25, "{small} {large}");
        assert_eq!(psi(&[], &[]), None);
    }

    #[test]
    fn windows_break_down_by_language_most_items_first() {
        let items = [
            (Some("hat"), true),
            (Some("eng"), false),
            (Some("hat"), false),
            (None, true),
            (Some("hat"), true),
        ];
        let v = language_counts(items.into_iter());
        let got: Vec<_> = v
            .iter()
            .map(|l| (l.language.as_str(), l.items, l.novel))
            .collect();
        assert_eq!(got, [("hat", 3, 2), ("eng", 1, 0), ("unknown", 1, 1)]);
        assert_eq!(
            describe_languages(&v),
            "hat 3 (2 unfamiliar), eng 1 (0), unknown 1 (1)"
        );
    }

    #[test]
    fn a_received_language_breakdown_is_checked_field_by_field() {
        let mut w = DriftWindow {
            model_name: "crisis-reports".into(),
            model_version: "2.0.0".into(),
            items: 50,
            novel: 3,
            score: 0.06,
            state: DriftState::Ok,
            top_score_psi: None,
            label_psi: None,
            novel_labels: vec![],
            novel_folders: vec![],
            started_at: String::new(),
            ended_at: String::new(),
            languages: vec![LanguageDrift {
                language: "hat".into(),
                items: 30,
                novel: 3,
            }],
        };
        assert!(w.check_languages().is_ok());
        for (lang, items, novel) in [("HAT", 30, 3), ("h", 30, 3), ("hat", 3, 30), ("eng", 51, 0)] {
            w.languages = vec![LanguageDrift {
                language: lang.into(),
                items,
                novel,
            }];
            assert!(w.check_languages().is_err(), "{lang} {items} {novel}");
        }
        w.languages = (0..65)
            .map(|_| LanguageDrift {
                language: "eng".into(),
                items: 0,
                novel: 0,
            })
            .collect();
        assert!(w.check_languages().is_err());
        // An agent older than the field sends none: accepted, read as empty.
        let mut json = serde_json::to_value(&w).unwrap();
        json.as_object_mut().unwrap().remove("languages");
        let old: DriftWindow = serde_json::from_value(json).unwrap();
        assert!(old.languages.is_empty());
    }
}
