//! `outpost bench`: end-to-end throughput of the agent against raw ONNX Runtime, side by
//! side in one process.
//!
//! - **raw**: the same backbone and head files in bare ONNX Runtime sessions with the same
//!   thread settings, fed tensors prepared before the clock starts (images preprocessed,
//!   reports tokenized, sorted by length and padded exactly as the pipeline does). This is
//!   the ceiling: nothing but inference.
//! - **end to end**: `analyze` on the same inputs from disk into a real SQLite file: decode
//!   or read, tokenize, preprocess, infer, store (with `synchronous = FULL`).
//!
//! Rounds alternate raw and end-to-end so machine noise hits both alike; medians are
//! reported, with the ratio end-to-end / raw. Peak memory is the process's high-water mark.

use crate::analyze::{self, AnalyzeOptions, ModelSet};
use crate::config::AgentConfig;
use crate::infer::image as img;
use crate::infer::text;
use crate::model::pool::{build_session, SessionOptions};
use crate::model::LoadedModel;
use crate::store::Store;
use ndarray::Array4;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// One side-by-side comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    /// Model measured.
    pub model: String,
    /// Items per round.
    pub items: usize,
    /// Raw ONNX Runtime items/s, per round.
    pub raw_per_sec: Vec<f64>,
    /// End-to-end items/s, per round.
    pub e2e_per_sec: Vec<f64>,
    /// Median raw items/s.
    pub raw_median: f64,
    /// Median end-to-end items/s.
    pub e2e_median: f64,
    /// Median of the per-round ratios end-to-end / raw.
    pub ratio_median: f64,
}

/// What `bench` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Intra-op threads per session.
    pub threads: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Images.
    pub image: Option<Comparison>,
    /// Reports.
    pub text: Option<Comparison>,
    /// Resident memory after loading the models, MiB.
    pub rss_after_load_mib: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Reads a field (in kB) of /proc/self/status, in MiB.
pub fn proc_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        0.0
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

fn comparison(model: String, items: usize, raw: Vec<f64>, e2e: Vec<f64>) -> Comparison {
    let ratios: Vec<f64> = raw.iter().zip(&e2e).map(|(r, e)| e / r).collect();
    Comparison {
        model,
        items,
        raw_median: median(&raw),
        e2e_median: median(&e2e),
        ratio_median: median(&ratios),
        raw_per_sec: raw,
        e2e_per_sec: e2e,
    }
}

fn e2e_round(
    cfg: &AgentConfig,
    models: ModelSet,
    inputs: Vec<PathBuf>,
    batch_size: usize,
    db: &Path,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(db);
    let _ = std::fs::remove_file(db.with_extension("db-wal"));
    let mut store = Store::open(db)?;
    let mut opts = AnalyzeOptions::from_config(cfg, inputs);
    opts.batch_size = batch_size;
    opts.text_batch_size = batch_size;
    opts.force = true;
    opts.progress = false;
    let t = Instant::now();
    let s = analyze::analyze(&mut store, &models, &opts, Arc::new(AtomicBool::new(false)))?;
    let secs = t.elapsed().as_secs_f64();
    let n = s.image_items + s.text_items;
    if !s.failures.is_empty() {
        anyhow::bail!("benchmark inputs failed: {:?}", s.failures.first());
    }
    Ok(n as f64 / secs)
}

/// Feeds a backbone's output through the head (the raw side of both benchmarks).
fn run_head(
    head: &mut ort::session::Session,
    m: &crate::model::Manifest,
    backbone_out: &ort::session::SessionOutputs<'_>,
) -> anyhow::Result<()> {
    let (shape, data) = backbone_out[m.backbone.output.as_str()].try_extract_tensor::<f32>()?;
    let emb = ndarray::ArrayView2::from_shape((shape[0] as usize, shape[1] as usize), data)?;
    let scores =
        head.run(ort::inputs![m.head.input.as_str() => TensorRef::from_array_view(emb)?])?;
    std::hint::black_box(
        scores[m.head.output.as_str()]
            .try_extract_tensor::<f32>()?
            .1[0],
    );
    Ok(())
}

/// Image benchmark over `files` (each one tile).
pub fn bench_images(
    cfg: &AgentConfig,
    model: &Arc<LoadedModel>,
    files: &[PathBuf],
    rounds: usize,
    batch_size: usize,
    work: &Path,
) -> anyhow::Result<Comparison> {
    let m = model.manifest();
    let spec = m
        .image
        .clone()
        .ok_or_else(|| anyhow::anyhow!("not an image model"))?;
    let opts = cfg.session_options();
    let mut backbone = build_session(
        &model.bundle.path(&m.backbone.file),
        &SessionOptions {
            max_sessions: 1,
            ..opts
        },
    )?;
    let mut head = build_session(
        &model.bundle.path(&m.head.file),
        &SessionOptions {
            max_sessions: 1,
            ..opts
        },
    )?;
    // Tensors made before the clock starts.
    let (h, w) = (spec.height as usize, spec.width as usize);
    let per = 3 * h * w;
    let mut batches = Vec::new();
    for chunk in files.chunks(batch_size) {
        let mut t = Array4::<f32>::zeros((chunk.len(), 3, h, w));
        let slice = t.as_slice_mut().expect("contiguous");
        for (i, f) in chunk.iter().enumerate() {
            let r = img::decode(f, &img::ImageLimits::default())?;
            img::preprocess_into(&r.rgb, &spec, &mut slice[i * per..(i + 1) * per]);
        }
        batches.push(t);
    }
    let mut raw = Vec::new();
    let mut e2e = Vec::new();
    let set = ModelSet {
        image: vec![model.clone()],
        text: vec![],
    };
    for _ in 0..rounds {
        let t = Instant::now();
        for b in &batches {
            let out = backbone
                .run(ort::inputs![spec.input.as_str() => TensorRef::from_array_view(b.view())?])?;
            run_head(&mut head, m, &out)?;
        }
        raw.push(files.len() as f64 / t.elapsed().as_secs_f64());
        e2e.push(e2e_round(
            cfg,
            set.clone(),
            files.to_vec(),
            batch_size,
            &work.join("bench-images.db"),
        )?);
    }
    Ok(comparison(model.id(), files.len(), raw, e2e))
}

/// Text benchmark over `reports` (written to a CSV for the end-to-end side).
pub fn bench_text(
    cfg: &AgentConfig,
    model: &Arc<LoadedModel>,
    reports: &[String],
    rounds: usize,
    batch_size: usize,
    work: &Path,
) -> anyhow::Result<Comparison> {
    let m = model.manifest();
    let tspec = m
        .text
        .clone()
        .ok_or_else(|| anyhow::anyhow!("not a text model"))?;
    let tok = model
        .tokenizer
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no tokenizer"))?;
    let opts = cfg.session_options();
    let mut backbone = build_session(
        &model.bundle.path(&m.backbone.file),
        &SessionOptions {
            max_sessions: 1,
            ..opts
        },
    )?;
    let mut head = build_session(
        &model.bundle.path(&m.head.file),
        &SessionOptions {
            max_sessions: 1,
            ..opts
        },
    )?;
    let encs: Vec<text::Encoded> = reports
        .iter()
        .map(|r| text::encode(tok, r))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let pad = text::pad_id(tok);
    let batches: Vec<_> = text::length_batches(&encs, batch_size)
        .into_iter()
        .map(|idx| {
            let refs: Vec<&text::Encoded> = idx.iter().map(|&i| &encs[i]).collect();
            text::pad_batch(&refs, pad)
        })
        .collect();
    let csv_path = work.join("bench-reports.csv");
    {
        let mut w = csv::Writer::from_path(&csv_path)?;
        w.write_record(["id", "message"])?;
        for (i, r) in reports.iter().enumerate() {
            w.write_record([i.to_string().as_str(), r.as_str()])?;
        }
        w.flush()?;
    }
    let set = ModelSet {
        image: vec![],
        text: vec![model.clone()],
    };
    let mut raw = Vec::new();
    let mut e2e = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for (ids, mask, types) in &batches {
            let ids_t = TensorRef::from_array_view(ids.view())?;
            let mask_t = TensorRef::from_array_view(mask.view())?;
            let out = match &tspec.token_type_ids {
                Some(tt) => backbone.run(ort::inputs![
                    tspec.input_ids.as_str() => ids_t,
                    tspec.attention_mask.as_str() => mask_t,
                    tt.as_str() => TensorRef::from_array_view(types.view())?
                ])?,
                None => backbone.run(ort::inputs![
                    tspec.input_ids.as_str() => ids_t,
                    tspec.attention_mask.as_str() => mask_t
                ])?,
            };
            run_head(&mut head, m, &out)?;
        }
        raw.push(reports.len() as f64 / t.elapsed().as_secs_f64());
        e2e.push(e2e_round(
            cfg,
            set.clone(),
            vec![csv_path.clone()],
            batch_size,
            &work.join("bench-text.db"),
        )?);
    }
    Ok(comparison(model.id(), reports.len(), raw, e2e))
}

/// Picks `count` image files from a folder tree, round-robin over its subfolders (classes),
/// in name order: a deterministic, balanced sample.
pub fn sample_images(dir: &Path, count: usize) -> Vec<PathBuf> {
    let mut groups: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for e in walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
    {
        if e.file_type().is_file() && img::is_image_path(e.path()) {
            let parent = e.path().parent().map(Path::to_path_buf).unwrap_or_default();
            groups.entry(parent).or_default().push(e.into_path());
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < count {
        let mut any = false;
        for g in groups.values() {
            if let Some(p) = g.get(i) {
                out.push(p.clone());
                any = true;
                if out.len() == count {
                    break;
                }
            }
        }
        if !any {
            break;
        }
        i += 1;
    }
    out
}

/// Reads up to `count` reports from a CSV (the configured or default text column).
pub fn sample_reports(csv_path: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    let (reports, _) = text::read_reports(csv_path, &text::TextOptions::default())?;
    Ok(reports.into_iter().take(count).map(|r| r.text).collect())
}
