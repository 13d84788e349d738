//! Golden checks: a bundle carries a few inputs with the outputs its recipe computed in
//! Python. Reproducing them through the agent's own decode, preprocessing, tokenizer and
//! ONNX Runtime proves the whole path, not just the network; the update code runs the same
//! check before it switches to a new bundle.

use super::classify::{classify_one, Input};
use super::text::encode;
use crate::model::LoadedModel;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct GoldenFile {
    tolerance: f32,
    cases: Vec<GoldenCase>,
}

#[derive(Debug, Deserialize)]
struct GoldenCase {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    token_ids: Option<Vec<i64>>,
    scores: Vec<f32>,
}

/// The outcome of a golden check.
#[derive(Debug, Clone)]
pub struct GoldenReport {
    /// Cases run.
    pub cases: usize,
    /// Tolerance from the golden file.
    pub tolerance: f32,
    /// Largest absolute score difference seen.
    pub max_abs_diff: f32,
    /// One line per case that did not match.
    pub failures: Vec<String>,
}

impl GoldenReport {
    /// Whether every case matched.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the golden cases of a loaded bundle. `Ok(None)` if the bundle has none.
pub fn check(model: &LoadedModel) -> Result<Option<GoldenReport>, String> {
    let m = model.manifest();
    let Some(file) = &m.golden else {
        return Ok(None);
    };
    let path = model.bundle.path(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let golden: GoldenFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut report = GoldenReport {
        cases: golden.cases.len(),
        tolerance: golden.tolerance,
        max_abs_diff: 0.0,
        failures: Vec::new(),
    };
    for (i, case) in golden.cases.iter().enumerate() {
        let name = case
            .image
            .clone()
            .or_else(|| {
                case.text
                    .as_ref()
                    .map(|t| format!("{:?}", t.chars().take(40).collect::<String>()))
            })
            .unwrap_or_else(|| format!("case {i}"));
        let scores = match run_case(model, case) {
            Ok(s) => s,
            Err(e) => {
                report.failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        if scores.len() != case.scores.len() {
            report.failures.push(format!(
                "{name}: {} scores, expected {}",
                scores.len(),
                case.scores.len()
            ));
            continue;
        }
        let diff = scores
            .iter()
            .zip(&case.scores)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        report.max_abs_diff = report.max_abs_diff.max(diff);
        if let Some(problem) = decision_mismatch(m, &scores, &case.scores, golden.tolerance) {
            report.failures.push(format!("{name}: {problem}"));
            continue;
        }
        if diff > golden.tolerance {
            report.failures.push(format!(
                "{name}: scores differ by up to {diff:.2e}, tolerance {:.1e}",
                golden.tolerance
            ));
        }
    }
    Ok(Some(report))
}

/// The decisions must match even where scores may differ (int8 kernels vary by CPU): the
/// top label of a single-label model, and every label of a multi-label model whose expected
/// score is farther than `tolerance` from its threshold.
fn decision_mismatch(
    m: &crate::model::Manifest,
    got: &[f32],
    want: &[f32],
    tolerance: f32,
) -> Option<String> {
    if got.len() != want.len() || got.is_empty() {
        return None; // reported by the caller
    }
    if m.multi_label {
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            let t = m
                .thresholds
                .as_ref()
                .and_then(|t| t.get(j).copied())
                .unwrap_or(0.5);
            if (w - t).abs() > tolerance && (g >= &t) != (w >= &t) {
                let label = m.labels.get(j).map(String::as_str).unwrap_or("?");
                return Some(format!(
                    "label {label} decided differently (score {g:.3}, expected {w:.3}, threshold {t:.3})"
                ));
            }
        }
        None
    } else {
        let top = |v: &[f32]| {
            (0..v.len())
                .max_by(|&a, &b| v[a].total_cmp(&v[b]))
                .unwrap_or(0)
        };
        let (a, b) = (top(got), top(want));
        (a != b).then(|| {
            format!(
                "top label {} instead of {}",
                m.labels.get(a).map(String::as_str).unwrap_or("?"),
                m.labels.get(b).map(String::as_str).unwrap_or("?")
            )
        })
    }
}

/// Recomputes the expected outputs of a bundle's golden cases through this bundle (the
/// server does this for a retrained head: same inputs, new scores). Returns the new golden
/// file, or `Ok(None)` if the bundle has none.
pub fn recompute(model: &LoadedModel) -> Result<Option<Vec<u8>>, String> {
    let m = model.manifest();
    let Some(file) = &m.golden else {
        return Ok(None);
    };
    let path = model.bundle.path(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let cases = doc
        .get_mut("cases")
        .and_then(|c| c.as_array_mut())
        .ok_or_else(|| format!("{}: no cases", path.display()))?;
    for case in cases.iter_mut() {
        let parsed: GoldenCase =
            serde_json::from_value(case.clone()).map_err(|e| format!("{}: {e}", path.display()))?;
        let scores = run_case(model, &parsed)?;
        case["scores"] = serde_json::json!(scores);
    }
    serde_json::to_vec_pretty(&doc)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn run_case(model: &LoadedModel, case: &GoldenCase) -> Result<Vec<f32>, String> {
    let m = model.manifest();
    if let (Some(img_file), Some(_)) = (&case.image, &m.image) {
        let path = model.bundle.path(img_file);
        let rgb = image::open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .to_rgb8();
        classify_one(model, Input::Image(&rgb))
    } else if let (Some(text), Some(tok)) = (&case.text, &model.tokenizer) {
        let enc = encode(tok, text)?;
        if let Some(want) = &case.token_ids {
            if want != &enc.ids {
                return Err(format!(
                    "tokenizer ids differ from the reference: got {:?}, expected {:?}",
                    enc.ids, want
                ));
            }
        }
        classify_one(model, Input::Tokens(&enc))
    } else {
        Err("case has no input this model can read".into())
    }
}
