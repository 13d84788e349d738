//! `outpost bench`: end-to-end throughput of the agent against raw ONNX Runtime, side by
//! side in one process.
//!
//! - **raw**: the same backbone and head files in bare ONNX Runtime sessions, fed tensors
//!   prepared before the clock starts (images preprocessed, reports tokenized, sorted by length
//!   and padded). Not the agent's settings: the best configuration found on this machine by
//!   [`search_raw`] (threads, batch size, spinning, graph optimisation, memory pattern; every
//!   trial is kept and printed). This is the ceiling: nothing but inference.
//! - **end to end**: `analyze` on the same inputs from disk into a real SQLite file: decode
//!   or read, tokenize, preprocess, infer, store (with `synchronous = FULL`).
//!
//! Rounds alternate raw and end-to-end so machine noise hits both alike; medians are
//! reported, with the ratio end-to-end / raw. Peak memory is the process's high-water mark.

use crate::analyze::{self, AnalyzeOptions, ModelSet};
use crate::config::AgentConfig;
use crate::infer::image as img;
use crate::infer::text;
use crate::model::classifier::{Batch, Classifier};
use crate::model::pool::{build_tuned_session, Tuning};
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
    /// The raw configurations tried and the one used (the fastest).
    pub raw_search: RawSearch,
}

/// What `bench` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Intra-op threads per session (the agent's setting).
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

fn comparison(
    model: String,
    items: usize,
    raw: Vec<f64>,
    e2e: Vec<f64>,
    raw_search: RawSearch,
) -> Comparison {
    let ratios: Vec<f64> = raw.iter().zip(&e2e).map(|(r, e)| e / r).collect();
    Comparison {
        model,
        items,
        raw_median: median(&raw),
        e2e_median: median(&e2e),
        ratio_median: median(&ratios),
        raw_per_sec: raw,
        e2e_per_sec: e2e,
        raw_search,
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

/// One configuration tried by [`search_raw`] and its throughput.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RawTrial {
    /// Session options.
    pub tuning: Tuning,
    /// Items per batch.
    pub batch: usize,
    /// Items per second.
    pub per_sec: f64,
}

impl std::fmt::Display for RawTrial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {}, {}: {:.0}/s",
            self.batch, self.tuning, self.per_sec
        )
    }
}

/// What [`search_raw`] tried and what won.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RawSearch {
    /// Every trial, in order.
    pub trials: Vec<RawTrial>,
    /// The fastest.
    pub best: RawTrial,
}

/// Finds the fastest raw ONNX Runtime configuration by coordinate search: from (all cores,
/// the middle batch size, spinning on, level 3, memory pattern on), each option in turn is
/// varied and the best value kept. `rate` measures one configuration (items/s).
pub fn search_raw(
    max_threads: usize,
    batches: &[usize],
    mut rate: impl FnMut(&Tuning, usize) -> anyhow::Result<f64>,
) -> anyhow::Result<RawSearch> {
    let mut trials: Vec<RawTrial> = Vec::new();
    let mut measure = |t: Tuning, b: usize, trials: &mut Vec<RawTrial>| -> anyhow::Result<f64> {
        if let Some(done) = trials.iter().find(|x| x.tuning == t && x.batch == b) {
            return Ok(done.per_sec);
        }
        let per_sec = rate(&t, b)?;
        trials.push(RawTrial {
            tuning: t,
            batch: b,
            per_sec,
        });
        Ok(per_sec)
    };
    let mut best_t = Tuning {
        intra_threads: max_threads.max(1),
        spinning: true,
        ..Tuning::default()
    };
    let mut best_b = batches.get(batches.len() / 2).copied().unwrap_or(1);
    let mut threads: Vec<usize> = vec![1, max_threads.max(1)];
    threads.dedup();
    type Vary = fn(&mut Tuning, usize);
    let axes: [(Vec<usize>, Option<Vary>); 5] = [
        (threads, Some(|t, v| t.intra_threads = v)),
        (batches.to_vec(), None),
        (vec![1, 0], Some(|t, v| t.spinning = v == 1)),
        (vec![3, 2, 1], Some(|t, v| t.optimization = v as u8)),
        (vec![1, 0], Some(|t, v| t.memory_pattern = v == 1)),
    ];
    for (values, set) in axes {
        let mut best_rate = measure(best_t, best_b, &mut trials)?;
        for v in values {
            let (mut t, mut b) = (best_t, best_b);
            match set {
                Some(f) => f(&mut t, v),
                None => b = v,
            }
            let r = measure(t, b, &mut trials)?;
            if r > best_rate {
                (best_t, best_b, best_rate) = (t, b, r);
            }
        }
    }
    let best = trials
        .iter()
        .copied()
        .find(|x| x.tuning == best_t && x.batch == best_b)
        .ok_or_else(|| anyhow::anyhow!("raw search measured nothing"))?;
    Ok(RawSearch { trials, best })
}

/// Bare backbone and head sessions of a bundle with one configuration.
pub struct RawSessions {
    backbone: ort::session::Session,
    head: ort::session::Session,
    manifest: crate::model::Manifest,
}

impl RawSessions {
    /// Opens the bundle's two ONNX files with `tuning` (the head gets one thread: it is tiny).
    pub fn open(model: &LoadedModel, tuning: &Tuning) -> anyhow::Result<RawSessions> {
        let m = model.manifest();
        let head_tuning = Tuning {
            intra_threads: 1,
            ..*tuning
        };
        Ok(RawSessions {
            backbone: build_tuned_session(&model.bundle.path(&m.backbone.file), tuning)?,
            head: build_tuned_session(&model.bundle.path(&m.head.file), &head_tuning)?,
            manifest: m.clone(),
        })
    }

    /// Feeds a backbone's output through the head.
    fn head(&mut self, emb: ndarray::ArrayView2<'_, f32>) -> anyhow::Result<()> {
        let m = &self.manifest;
        let scores = self
            .head
            .run(ort::inputs![m.head.input.as_str() => TensorRef::from_array_view(emb)?])?;
        std::hint::black_box(
            scores[m.head.output.as_str()]
                .try_extract_tensor::<f32>()?
                .1[0],
        );
        Ok(())
    }

    /// Backbone and head over `tiles` (N preprocessed images) in batches of `batch`.
    pub fn run_images(&mut self, tiles: &Array4<f32>, batch: usize) -> anyhow::Result<()> {
        let input = self
            .manifest
            .image
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("not an image model"))?
            .input
            .clone();
        let n = tiles.shape()[0];
        for start in (0..n).step_by(batch.max(1)) {
            let b = tiles.slice(ndarray::s![start..(start + batch).min(n), .., .., ..]);
            let out = self
                .backbone
                .run(ort::inputs![input.as_str() => TensorRef::from_array_view(b)?])?;
            let (shape, data) =
                out[self.manifest.backbone.output.as_str()].try_extract_tensor::<f32>()?;
            let emb =
                ndarray::ArrayView2::from_shape((shape[0] as usize, shape[1] as usize), data)?
                    .to_owned();
            drop(out);
            self.head(emb.view())?;
        }
        Ok(())
    }

    /// Backbone and head over padded token batches.
    pub fn run_tokens(&mut self, batches: &[TokenBatch]) -> anyhow::Result<()> {
        let t = self
            .manifest
            .text
            .clone()
            .ok_or_else(|| anyhow::anyhow!("not a text model"))?;
        for (ids, mask, types) in batches {
            let ids_t = TensorRef::from_array_view(ids.view())?;
            let mask_t = TensorRef::from_array_view(mask.view())?;
            let out = match &t.token_type_ids {
                Some(tt) => self.backbone.run(ort::inputs![
                    t.input_ids.as_str() => ids_t,
                    t.attention_mask.as_str() => mask_t,
                    tt.as_str() => TensorRef::from_array_view(types.view())?
                ])?,
                None => self.backbone.run(ort::inputs![
                    t.input_ids.as_str() => ids_t,
                    t.attention_mask.as_str() => mask_t
                ])?,
            };
            let (shape, data) =
                out[self.manifest.backbone.output.as_str()].try_extract_tensor::<f32>()?;
            let emb =
                ndarray::ArrayView2::from_shape((shape[0] as usize, shape[1] as usize), data)?
                    .to_owned();
            drop(out);
            self.head(emb.view())?;
        }
        Ok(())
    }
}

/// Padded (ids, mask, type ids) of one batch.
pub type TokenBatch = (
    ndarray::Array2<i64>,
    ndarray::Array2<i64>,
    ndarray::Array2<i64>,
);

/// Reports tokenized, sorted by length and padded in batches of `batch` (as analyze does).
pub fn token_batches(encs: &[text::Encoded], pad: i64, batch: usize) -> Vec<TokenBatch> {
    text::length_batches(encs, batch)
        .into_iter()
        .map(|idx| {
            let refs: Vec<&text::Encoded> = idx.iter().map(|&i| &encs[i]).collect();
            text::pad_batch(&refs, pad)
        })
        .collect()
}

/// Preprocessed tiles, one row per file (each file one tile), made before any clock starts.
pub fn preprocessed_tiles(model: &LoadedModel, files: &[PathBuf]) -> anyhow::Result<Array4<f32>> {
    let spec = model
        .manifest()
        .image
        .clone()
        .ok_or_else(|| anyhow::anyhow!("not an image model"))?;
    let (h, w) = (spec.height as usize, spec.width as usize);
    let per = 3 * h * w;
    let mut t = Array4::<f32>::zeros((files.len(), 3, h, w));
    let slice = t
        .as_slice_mut()
        .ok_or_else(|| anyhow::anyhow!("tensor not contiguous"))?;
    for (i, f) in files.iter().enumerate() {
        let r = img::decode(f, &img::ImageLimits::default())?;
        img::preprocess_into(&r.rgb, &spec, &mut slice[i * per..(i + 1) * per]);
    }
    Ok(t)
}

/// Items/s of one raw configuration on preprocessed tiles: a warm-up batch, then the best
/// of two timed passes.
pub fn raw_image_rate(
    model: &LoadedModel,
    tiles: &Array4<f32>,
    tuning: &Tuning,
    batch: usize,
) -> anyhow::Result<f64> {
    let mut s = RawSessions::open(model, tuning)?;
    let n = tiles.shape()[0];
    s.run_images(
        &tiles
            .slice(ndarray::s![..batch.min(n), .., .., ..])
            .to_owned(),
        batch,
    )?;
    best_of(2, n, || s.run_images(tiles, batch))
}

/// Items/s of one raw configuration on tokenized reports (padding made outside the clock).
pub fn raw_text_rate(
    model: &LoadedModel,
    encs: &[text::Encoded],
    tuning: &Tuning,
    batch: usize,
) -> anyhow::Result<f64> {
    let tok = model
        .tokenizer
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no tokenizer"))?;
    let batches = token_batches(encs, text::pad_id(tok), batch);
    let mut s = RawSessions::open(model, tuning)?;
    s.run_tokens(&batches[..1.min(batches.len())])?;
    best_of(2, encs.len(), || s.run_tokens(&batches))
}

fn best_of(
    passes: usize,
    items: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut best = 0.0f64;
    for _ in 0..passes {
        let t = Instant::now();
        f()?;
        best = best.max(items as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Items/s through the agent's [`Classifier`] path on tensors in memory (what analyze runs
/// per batch, without decoding or storing): the cost of the trait and session pool over raw.
pub fn classifier_image_rate(
    model: &LoadedModel,
    tiles: &Array4<f32>,
    batch: usize,
) -> anyhow::Result<f64> {
    let n = tiles.shape()[0];
    best_of(2, n, || {
        for start in (0..n).step_by(batch.max(1)) {
            let b = tiles.slice(ndarray::s![start..(start + batch).min(n), .., .., ..]);
            std::hint::black_box(Classifier::classify(model, Batch::Images(b))?);
        }
        Ok(())
    })
}

/// The thread count the raw search tries besides 1: every logical CPU.
pub fn machine_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
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
    let tiles = preprocessed_tiles(model, files)?;
    let search = search_raw(machine_threads(), &[32, 64, 128], |t, b| {
        raw_image_rate(model, &tiles, t, b)
    })?;
    let mut raw_s = RawSessions::open(model, &search.best.tuning)?;
    let set = ModelSet {
        image: vec![model.clone()],
        text: vec![],
    };
    let mut raw = Vec::new();
    let mut e2e = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        raw_s.run_images(&tiles, search.best.batch)?;
        raw.push(files.len() as f64 / t.elapsed().as_secs_f64());
        e2e.push(e2e_round(
            cfg,
            set.clone(),
            files.to_vec(),
            batch_size,
            &work.join("bench-images.db"),
        )?);
    }
    Ok(comparison(model.id(), files.len(), raw, e2e, search))
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
    let tok = model
        .tokenizer
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no tokenizer"))?;
    let encs: Vec<text::Encoded> = reports
        .iter()
        .map(|r| text::encode(tok, r))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let search = search_raw(machine_threads(), &[1, 8, 32, 64], |t, b| {
        raw_text_rate(model, &encs, t, b)
    })?;
    let batches = token_batches(&encs, text::pad_id(tok), search.best.batch);
    let mut raw_s = RawSessions::open(model, &search.best.tuning)?;
    let csv_path = work.join("bench-reports.csv");
    write_reports_csv(&csv_path, reports)?;
    let set = ModelSet {
        image: vec![],
        text: vec![model.clone()],
    };
    let mut raw = Vec::new();
    let mut e2e = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        raw_s.run_tokens(&batches)?;
        raw.push(reports.len() as f64 / t.elapsed().as_secs_f64());
        e2e.push(e2e_round(
            cfg,
            set.clone(),
            vec![csv_path.clone()],
            batch_size,
            &work.join("bench-text.db"),
        )?);
    }
    Ok(comparison(model.id(), reports.len(), raw, e2e, search))
}

/// Writes reports as a CSV with `id` and `message` columns (what analyze and the Python
/// pipeline both read).
pub fn write_reports_csv(path: &Path, reports: &[String]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(["id", "message"])?;
    for (i, r) in reports.iter().enumerate() {
        w.write_record([i.to_string().as_str(), r.as_str()])?;
    }
    w.flush()?;
    Ok(())
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

/// What `outpost bench` measures: where its inputs are and how much of them.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// Folder of image tiles.
    pub images: PathBuf,
    /// CSV of reports.
    pub reports: PathBuf,
    /// Image tiles per round.
    pub image_count: usize,
    /// Reports per round.
    pub report_count: usize,
    /// Rounds (raw and end-to-end alternate).
    pub rounds: usize,
    /// Tiles per batch.
    pub batch_size: usize,
}

/// `outpost bench`: the first image model and the first text model, each raw against end to
/// end, in a scratch folder that is removed afterwards. `say` hears what is being measured
/// and what is skipped (no images, no report CSV), so nothing is left out silently.
pub fn run(
    cfg: &AgentConfig,
    models: &[Arc<LoadedModel>],
    req: &BenchRequest,
    say: &dyn Fn(String),
) -> anyhow::Result<BenchReport> {
    use crate::model::Task;
    let work = std::env::temp_dir().join(format!("outpost-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut report = BenchReport {
        threads: cfg.session_options().intra_threads,
        batch_size: req.batch_size,
        image: None,
        text: None,
        rss_after_load_mib: proc_status_mib("VmRSS:"),
        peak_rss_mib: 0.0,
    };
    let rounds = req.rounds.max(1);
    if let Some(m) = models
        .iter()
        .find(|m| m.task() == Task::ImageClassification)
    {
        let files = sample_images(&req.images, req.image_count);
        if files.is_empty() {
            say(format!(
                "no images under {}: image benchmark skipped (use --images DIR)",
                req.images.display()
            ));
        } else {
            say(format!(
                "images: {} tiles x {rounds} rounds with {} ...",
                files.len(),
                m.id()
            ));
            report.image = Some(bench_images(cfg, m, &files, rounds, req.batch_size, &work)?);
        }
    }
    if let Some(m) = models.iter().find(|m| m.task() == Task::TextClassification) {
        if req.reports.is_file() {
            let texts = sample_reports(&req.reports, req.report_count)?;
            say(format!(
                "reports: {} reports x {rounds} rounds with {} ...",
                texts.len(),
                m.id()
            ));
            let text_batch = crate::analyze::report_batch_size(
                std::slice::from_ref(m),
                cfg.analyze.text_batch_size,
            );
            say(format!(
                "reports use batches of {text_batch} (analyze.text_batch_size, 1 unless the bundle's backbone is batch_independent)"
            ));
            report.text = Some(bench_text(cfg, m, &texts, rounds, text_batch, &work)?);
        } else {
            say(format!(
                "no report CSV at {}: text benchmark skipped (use --reports FILE)",
                req.reports.display()
            ));
        }
    }
    report.peak_rss_mib = proc_status_mib("VmHWM:");
    let _ = std::fs::remove_dir_all(&work);
    Ok(report)
}
