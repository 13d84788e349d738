//! `outpost analyze`: walk the inputs, run every image tile and report through the models
//! of its kind, store every result, and summarise.
//!
//! Each kind of input runs as a three-stage pipeline so the CPU stays busy:
//!
//! ```text
//!  producer thread            inference thread             caller's thread
//!  decode / tile / tokenize -> backbone + heads (ONNX)  -> SQLite (one transaction a batch)
//!  and preprocess              shared backbone computed     progress bar, label counts
//!                              once per batch
//! ```
//!
//! Channels between stages are bounded (two batches), so memory stays flat on a scene of
//! any size. A file that cannot be read becomes a failure record with a reason; the run goes
//! on. Items already analysed by the same model version are skipped (so an interrupted run
//! resumes where it stopped) unless `force` is set. An item is keyed by its content, and
//! every place it is met (another scene, another file, another tile of the same scene) is
//! stored as a sighting, so the export has every footprint and the summary counts items
//! and places apart. Which files a run reads is decided in `analyze/inputs.rs`; the report
//! stage (tokenise a chunk while the previous one infers; batches only for batch-independent
//! backbones) is `analyze/reports.rs`.

use crate::config::AgentConfig;
use crate::infer::geotiff::{footprint, Reprojector};
use crate::infer::image::{self as img, ImageLimits, TileBox};
use crate::infer::text::TextOptions;
use crate::infer::InputError;
use crate::model::classifier::{Batch, Classifier};
use crate::model::LoadedModel;
use crate::store::{NewItem, NewPrediction, Sighting, Store, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, Array4};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod inputs;
mod reports;

pub use reports::report_batch_size;
use reports::TextStage;

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Files and folders to analyse.
    pub inputs: Vec<PathBuf>,
    /// Image tiles per batch.
    pub batch_size: usize,
    /// Reports per batch.
    pub text_batch_size: usize,
    /// Scene tile size; 0: the model's input size.
    pub tile_size: u32,
    /// Tile overlap in pixels.
    pub tile_overlap: u32,
    /// Images up to this size are one item.
    pub whole_image_max: u32,
    /// Tiles with less valid data than this are skipped.
    pub min_valid_fraction: f32,
    /// Image limits.
    pub image_limits: ImageLimits,
    /// Report reading options.
    pub text: TextOptions,
    /// Analyse again items that already have a prediction from the same model version.
    pub force: bool,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl AnalyzeOptions {
    /// Options from the configuration.
    pub fn from_config(cfg: &AgentConfig, inputs: Vec<PathBuf>) -> AnalyzeOptions {
        let a = &cfg.analyze;
        AnalyzeOptions {
            inputs,
            batch_size: a.batch_size.max(1),
            text_batch_size: a.text_batch_size.max(1),
            tile_size: a.tile_size,
            tile_overlap: a.tile_overlap,
            whole_image_max: a.whole_image_max,
            min_valid_fraction: a.min_valid_fraction,
            image_limits: ImageLimits {
                max_pixels: cfg.limits.max_image_pixels,
                max_file_bytes: cfg.limits.max_file_bytes,
            },
            text: TextOptions {
                field: (!a.text_field.is_empty()).then(|| a.text_field.clone()),
                max_report_bytes: cfg.limits.max_report_bytes,
                max_file_bytes: cfg.limits.max_file_bytes,
            },
            force: false,
            progress: true,
        }
    }
}

/// The models a run uses, by kind of input.
#[derive(Default, Clone)]
pub struct ModelSet {
    /// Image models.
    pub image: Vec<Arc<LoadedModel>>,
    /// Text models.
    pub text: Vec<Arc<LoadedModel>>,
}

impl ModelSet {
    /// The models sorted by what they read (images or reports).
    pub fn from_models(models: &[Arc<LoadedModel>]) -> ModelSet {
        let mut set = ModelSet::default();
        for m in models {
            tracing::info!(model = %m.id(), task = m.task().as_str(), "model ready");
            match m.task() {
                crate::model::Task::ImageClassification => set.image.push(m.clone()),
                crate::model::Task::TextClassification => set.text.push(m.clone()),
            }
        }
        set
    }
}

/// The tasks whose models a run over `inputs` needs (images, reports or both), so a run
/// loads only those: a folder of tiles does not pay for loading the report model.
pub fn tasks_for(inputs: &[PathBuf]) -> Vec<crate::model::Task> {
    let found = inputs::collect(inputs);
    let mut tasks = Vec::new();
    if !found.images.is_empty() {
        tasks.push(crate::model::Task::ImageClassification);
    }
    if !found.texts.is_empty() {
        tasks.push(crate::model::Task::TextClassification);
    }
    tasks
}

/// One input that could not be analysed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailureRecord {
    /// The file.
    pub source: String,
    /// Where in the file, if one part failed.
    pub locator: Option<String>,
    /// Short code (`corrupt`, `empty`, ...).
    pub code: String,
    /// The reason, with what to do.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// The run's id in the database.
    pub run_id: i64,
    /// Input files found.
    pub files: usize,
    /// Image items (distinct tiles) analysed in this run.
    pub image_items: u64,
    /// Report items (distinct reports) analysed in this run.
    pub text_items: u64,
    /// Items skipped because the same model version had analysed them in an earlier run.
    pub already_analysed: u64,
    /// Places items were seen in this run (file, place in the file, footprint): the same
    /// tile in two scenes is one item and two sightings, and both reach the export.
    pub sightings: u64,
    /// Scene tiles skipped for lack of valid pixels (nodata borders).
    pub skipped_nodata: u64,
    /// Files in folders ignored for their extension.
    pub ignored_files: u64,
    /// Per model (`name@version`): label -> count of items given that label.
    pub labels: BTreeMap<String, BTreeMap<String, u64>>,
    /// Reports truncated to the model's max length.
    pub truncated_reports: u64,
    /// Inputs that failed.
    pub failures: Vec<FailureRecord>,
    /// Notes about conversions (16-bit scaling, missing CRS...).
    pub notes: Vec<String>,
    /// Wall time.
    pub elapsed_secs: f64,
    /// Stopped by the user before the end.
    pub interrupted: bool,
}

impl Summary {
    /// `ok`, `partial` (some inputs failed), `failed` (nothing analysed) or `interrupted`.
    pub fn status(&self) -> &'static str {
        if self.interrupted {
            "interrupted"
        } else if self.failures.is_empty() {
            "ok"
        } else if self.image_items + self.text_items + self.already_analysed == 0 {
            "failed"
        } else {
            "partial"
        }
    }
}

/// Errors that stop a whole run (per-input problems are [`FailureRecord`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker thread panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Messages from the producer and inference stages to the writer.
enum Event {
    Batch(Vec<NewItem>, Vec<NewPrediction>),
    Already(Vec<(String, String, String)>, Sighting),
    Failure(FailureRecord),
    Note(String),
    SkippedNodata(u64),
    MoreWork(u64),
    Truncated(u64),
    Ignore,
}

fn failure(source: &Path, locator: Option<String>, e: &InputError) -> FailureRecord {
    FailureRecord {
        source: source.display().to_string(),
        locator,
        code: e.code().to_string(),
        reason: e.to_string(),
    }
}

/// Runs a whole analysis. `stop` is polled between files and batches (Ctrl-C).
pub fn analyze(
    store: &mut Store,
    models: &ModelSet,
    opts: &AnalyzeOptions,
    stop: Arc<AtomicBool>,
) -> Result<Summary, AnalyzeError> {
    let started = Instant::now();
    store.set_bulk_writes()?;
    let inputs = inputs::collect(&opts.inputs);
    let run_id = store.begin_run(
        &opts
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
    )?;
    let mut summary = Summary {
        run_id,
        files: inputs.images.len() + inputs.texts.len(),
        ignored_files: inputs.ignored,
        ..Default::default()
    };
    for f in &inputs.failures {
        store.record_failure(run_id, &f.source, f.locator.as_deref(), &f.code, &f.reason)?;
    }
    summary.failures.extend(inputs.failures.iter().cloned());
    for n in &inputs.notes {
        tracing::info!("{n}");
    }
    summary.notes.extend(inputs.notes.iter().cloned());
    let db_path = store.path().map(Path::to_path_buf);

    if !inputs.images.is_empty() {
        if models.image.is_empty() {
            for p in &inputs.images {
                let f = failure(p, None, &InputError::NoModel("image"));
                store.record_failure(run_id, &f.source, None, &f.code, &f.reason)?;
                summary.failures.push(f);
            }
        } else {
            // One unit per file; scenes add their tiles when they are decoded (no pre-pass
            // over the files just to size the bar).
            let total = inputs.images.len() as u64;
            let pb = progress_bar(opts.progress, total, "tiles");
            let (tx, rx) = sync_channel::<Event>(4);
            let stage = ImageStage {
                files: inputs.images.clone(),
                models: models.image.clone(),
                opts: opts.clone(),
                db_path: db_path.clone(),
                stop: stop.clone(),
            };
            run_pipeline(
                store,
                run_id,
                &mut summary,
                &pb,
                tx,
                rx,
                move |tx| stage.run(tx),
                true,
            )?;
            pb.finish_and_clear();
        }
    }
    if !inputs.texts.is_empty() && !stop.load(Ordering::Relaxed) {
        if models.text.is_empty() {
            for p in &inputs.texts {
                let f = failure(p, None, &InputError::NoModel("text"));
                store.record_failure(run_id, &f.source, None, &f.code, &f.reason)?;
                summary.failures.push(f);
            }
        } else {
            let pb = progress_bar(opts.progress, 0, "reports");
            let (tx, rx) = sync_channel::<Event>(4);
            let stage = TextStage {
                files: inputs.texts.clone(),
                models: models.text.clone(),
                opts: opts.clone(),
                db_path,
                stop: stop.clone(),
                pb: pb.clone(),
            };
            run_pipeline(
                store,
                run_id,
                &mut summary,
                &pb,
                tx,
                rx,
                move |tx| stage.run(tx),
                false,
            )?;
            pb.finish_and_clear();
        }
    }
    summary.sightings = store.run_sightings(run_id)?;
    summary.interrupted = stop.load(Ordering::Relaxed);
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    store.finish_run(
        run_id,
        summary.image_items + summary.text_items,
        summary.failures.len() as u64,
        summary.status(),
    )?;
    store
        .conn()
        .pragma_update(None, "synchronous", "FULL")
        .map_err(crate::store::StoreError::from)?;
    Ok(summary)
}

fn progress_bar(show: bool, len: u64, unit: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}  {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix("analyzing");
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Runs a producer (which spawns its own inference stage) and writes what comes back.
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    store: &mut Store,
    run_id: i64,
    summary: &mut Summary,
    pb: &ProgressBar,
    tx: SyncSender<Event>,
    rx: Receiver<Event>,
    producer: impl FnOnce(SyncSender<Event>) + Send,
    images: bool,
) -> Result<(), AnalyzeError> {
    std::thread::scope(|scope| -> Result<(), AnalyzeError> {
        let handle = scope.spawn(move || producer(tx));
        let mut write_error = None;
        for ev in rx.iter() {
            if write_error.is_some() {
                continue; // drain so the producer can finish
            }
            let res = handle_event(store, run_id, summary, pb, ev, images);
            if let Err(e) = res {
                write_error = Some(e);
            }
        }
        handle
            .join()
            .map_err(|_| AnalyzeError::Internal("the analysis worker panicked".into()))?;
        match write_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

fn handle_event(
    store: &mut Store,
    run_id: i64,
    summary: &mut Summary,
    pb: &ProgressBar,
    ev: Event,
    images: bool,
) -> Result<(), AnalyzeError> {
    match ev {
        Event::Batch(items, preds) => {
            let fresh = store.save_batch(run_id, &items, &preds)?;
            count_labels(summary, &preds, &fresh);
            if images {
                summary.image_items += fresh.len() as u64;
            } else {
                summary.text_items += fresh.len() as u64;
            }
            pb.inc(items.len() as u64);
        }
        Event::Already(keys, seen) => {
            summary.already_analysed += store.touch_predictions(run_id, &keys, &[seen])?;
            pb.inc(1);
        }
        Event::Failure(f) => {
            store.record_failure(run_id, &f.source, f.locator.as_deref(), &f.code, &f.reason)?;
            pb.suspend(|| tracing::warn!(source = %f.source, locator = ?f.locator, "{}", f.reason));
            summary.failures.push(f);
        }
        Event::Note(n) => {
            pb.suspend(|| tracing::info!("{n}"));
            summary.notes.push(n);
        }
        Event::SkippedNodata(n) => {
            summary.skipped_nodata += n;
            pb.inc(n);
        }
        Event::Truncated(n) => summary.truncated_reports += n,
        Event::Ignore => pb.inc(1),
        Event::MoreWork(n) => pb.inc_length(n),
    }
    Ok(())
}

/// Adds a batch's labels to the summary, once per item new to this run and model (an
/// item met again, in another place, is not counted twice).
fn count_labels(
    summary: &mut Summary,
    preds: &[NewPrediction],
    fresh: &std::collections::HashSet<String>,
) {
    let mut counted = std::collections::HashSet::new();
    for p in preds {
        if !fresh.contains(&p.item_id)
            || !counted.insert((&p.item_id, &p.model_name, &p.model_version))
        {
            continue;
        }
        let counts = summary
            .labels
            .entry(format!("{}@{}", p.model_name, p.model_version))
            .or_default();
        for l in &p.labels {
            *counts.entry(l.clone()).or_default() += 1;
        }
    }
}

/// Groups models that share a backbone file (same sha256), so the embedding is computed
/// once per batch and only the small heads run per model.
fn backbone_groups(models: &[Arc<LoadedModel>]) -> Vec<Vec<Arc<LoadedModel>>> {
    let mut groups: Vec<(String, Vec<Arc<LoadedModel>>)> = Vec::new();
    for m in models {
        let man = m.manifest();
        let mut key = man
            .files
            .get(&man.backbone.file)
            .map(|f| f.sha256.clone())
            .unwrap_or_default();
        if let Some(t) = &man.text {
            key.push_str(
                &man.files
                    .get(&t.tokenizer)
                    .map(|f| f.sha256.clone())
                    .unwrap_or_default(),
            );
        }
        if let Some(i) = &man.image {
            key.push_str(&format!(
                "{:?}",
                (i.height, i.width, i.mean, i.std, i.channel_order, i.resize)
            ));
        }
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(m.clone()),
            None => groups.push((key, vec![m.clone()])),
        }
    }
    groups.into_iter().map(|g| g.1).collect()
}

/// Turns a batch's embeddings into predictions for every model of a group.
fn predictions_for(
    group: &[Arc<LoadedModel>],
    item_ids: &[String],
    emb: &Array2<f32>,
    truncated: &[bool],
    prep_ms: f64,
    backbone_ms: f64,
) -> Result<Vec<NewPrediction>, String> {
    let n = item_ids.len().max(1) as f64;
    let mut out = Vec::with_capacity(item_ids.len() * group.len());
    for model in group {
        let t = Instant::now();
        let model: &dyn Classifier = &**model;
        let scores = model.score(emb.view()).map_err(|e| e.to_string())?;
        let head_ms = t.elapsed().as_secs_f64() * 1000.0;
        let man = model.manifest();
        for (i, id) in item_ids.iter().enumerate() {
            let s = scores.row(i).to_vec();
            let decided = model.decide(&s);
            let top = (0..s.len())
                .max_by(|&a, &b| s[a].total_cmp(&s[b]))
                .unwrap_or(0);
            out.push(NewPrediction {
                item_id: id.clone(),
                model_name: man.name.clone(),
                model_version: man.version.clone(),
                labels: decided.iter().map(|&k| man.labels[k].clone()).collect(),
                top_label: man.labels[top].clone(),
                top_score: s[top],
                scores: s,
                embedding: emb.row(i).to_vec(),
                truncated: truncated.get(i).copied().unwrap_or(false),
                preprocess_ms: prep_ms / n,
                infer_ms: (backbone_ms / group.len() as f64 + head_ms) / n,
            });
        }
    }
    Ok(out)
}

/// Looks up, on its own read connection, which items every model already analysed.
struct AlreadyCheck {
    store: Option<Store>,
    keys: Vec<(String, String)>,
}

impl AlreadyCheck {
    fn new(db_path: &Option<PathBuf>, force: bool, models: &[Arc<LoadedModel>]) -> AlreadyCheck {
        let store = if force {
            None
        } else {
            db_path.as_deref().and_then(|p| Store::open(p).ok())
        };
        AlreadyCheck {
            store,
            keys: models
                .iter()
                .map(|m| (m.manifest().name.clone(), m.manifest().version.clone()))
                .collect(),
        }
    }

    /// The (item, model, version) keys if every model has a prediction for `item_id`.
    fn done(&self, item_id: &str) -> Option<Vec<(String, String, String)>> {
        let store = self.store.as_ref()?;
        let mut out = Vec::new();
        for (name, version) in &self.keys {
            if !store
                .has_prediction(item_id, name, version)
                .unwrap_or(false)
            {
                return None;
            }
            out.push((item_id.to_string(), name.clone(), version.clone()));
        }
        Some(out)
    }
}

// ---------------------------------------------------------------------------------------
// Images

fn tile_plan(
    w: u32,
    h: u32,
    georeferenced: bool,
    spec_side: u32,
    opts: &AnalyzeOptions,
) -> Vec<TileBox> {
    if !georeferenced && w.max(h) <= opts.whole_image_max {
        return vec![TileBox { x: 0, y: 0, w, h }];
    }
    let tile = if opts.tile_size > 0 {
        opts.tile_size
    } else {
        spec_side
    };
    img::plan_tiles(w, h, tile, opts.tile_overlap)
}

struct ImageStage {
    files: Vec<PathBuf>,
    models: Vec<Arc<LoadedModel>>,
    opts: AnalyzeOptions,
    db_path: Option<PathBuf>,
    stop: Arc<AtomicBool>,
}

/// A batch of preprocessed tiles on its way to inference.
struct TileBatch {
    tensor: Array4<f32>,
    items: Vec<NewItem>,
    prep_ms: f64,
}

impl ImageStage {
    fn run(self, out: SyncSender<Event>) {
        for group in backbone_groups(&self.models) {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let (btx, brx) = sync_channel::<Option<TileBatch>>(2);
            let infer_out = out.clone();
            let group2 = group.clone();
            std::thread::scope(|s| {
                s.spawn(move || infer_images(&group2, brx, infer_out));
                self.produce(&group, btx, &out);
            });
        }
    }

    fn produce(
        &self,
        group: &[Arc<LoadedModel>],
        btx: SyncSender<Option<TileBatch>>,
        out: &SyncSender<Event>,
    ) {
        let Some(spec) = group[0].manifest().image.clone() else {
            return;
        };
        let already = AlreadyCheck::new(&self.db_path, self.opts.force, group);
        let (h, w) = (spec.height as usize, spec.width as usize);
        let per = 3 * h * w;
        let bs = self.opts.batch_size;
        let mut cur = TileBatch {
            tensor: Array4::zeros((bs, 3, h, w)),
            items: Vec::with_capacity(bs),
            prep_ms: 0.0,
        };
        let flush = |cur: &mut TileBatch| -> bool {
            if cur.items.is_empty() {
                return true;
            }
            let n = cur.items.len();
            let mut full = std::mem::replace(
                cur,
                TileBatch {
                    tensor: Array4::zeros((bs, 3, h, w)),
                    items: Vec::with_capacity(bs),
                    prep_ms: 0.0,
                },
            );
            if n < bs {
                full.tensor = full.tensor.slice_move(ndarray::s![..n, .., .., ..]);
            }
            btx.send(Some(full)).is_ok()
        };
        for path in &self.files {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let t0 = Instant::now();
            let raster = match img::decode(path, &self.opts.image_limits) {
                Ok(r) => r,
                Err(e) => {
                    let _ = out.send(Event::Failure(failure(path, None, &e)));
                    let _ = out.send(Event::Ignore);
                    continue;
                }
            };
            for n in &raster.notes {
                let _ = out.send(Event::Note(format!("{}: {n}", path.display())));
            }
            let (rw, rh) = raster.rgb.dimensions();
            let reproj: Option<Reprojector> =
                raster.georef.as_ref().and_then(|g| g.to_wgs84().ok());
            let boxes = tile_plan(
                rw,
                rh,
                raster.georef.is_some(),
                spec.width.max(spec.height),
                &self.opts,
            );
            let whole =
                boxes.len() == 1 && boxes[0].w == rw && boxes[0].h == rh && raster.georef.is_none();
            if boxes.len() > 1 {
                let _ = out.send(Event::MoreWork(boxes.len() as u64 - 1));
            }
            let decode_ms = t0.elapsed().as_secs_f64() * 1000.0 / boxes.len().max(1) as f64;
            let mut nodata = 0u64;
            for b in boxes {
                let t1 = Instant::now();
                if img::valid_fraction(&raster, &b) < self.opts.min_valid_fraction {
                    nodata += 1;
                    continue;
                }
                let tile = if whole {
                    raster.rgb.clone()
                } else {
                    img::crop(&raster.rgb, &b)
                };
                let item_id = img::tile_hash(&tile);
                let geometry = tile_geometry(path, &raster, reproj.as_ref(), &b, out);
                let locator = (!whole).then(|| format!("tile {},{},{},{}", b.x, b.y, b.w, b.h));
                if let Some(keys) = already.done(&item_id) {
                    let seen = Sighting {
                        item_id,
                        source: path.display().to_string(),
                        locator,
                        geometry,
                    };
                    let _ = out.send(Event::Already(keys, seen));
                    continue;
                }
                let (content, content_type) =
                    tile_content(path, raster.file_bytes.as_deref(), &tile, whole);
                let row = cur.items.len();
                let slice = &mut cur
                    .tensor
                    .as_slice_mut()
                    .expect("batch tensor is contiguous")[row * per..(row + 1) * per];
                img::preprocess_into(&tile, &spec, slice);
                cur.items.push(NewItem {
                    item_id,
                    kind: "image",
                    source: path.display().to_string(),
                    locator,
                    size: Some((b.w, b.h)),
                    geometry,
                    content,
                    content_type,
                });
                cur.prep_ms += decode_ms + t1.elapsed().as_secs_f64() * 1000.0;
                if cur.items.len() == bs && !flush(&mut cur) {
                    return;
                }
            }
            if nodata > 0 {
                let _ = out.send(Event::SkippedNodata(nodata));
            }
        }
        flush(&mut cur);
        let _ = btx.send(None);
    }
}

/// The WGS84 footprint of a tile of a georeferenced scene (a note says why if it has none).
fn tile_geometry(
    path: &Path,
    raster: &img::Raster,
    reproj: Option<&Reprojector>,
    b: &TileBox,
    out: &SyncSender<Event>,
) -> Option<serde_json::Value> {
    let (g, r) = (raster.georef.as_ref()?, reproj?);
    match footprint(g, r, b.x, b.y, b.w, b.h) {
        Ok(ring) => Some(serde_json::json!({"type": "Polygon", "coordinates": [ring]})),
        Err(e) => {
            let _ = out.send(Event::Note(format!(
                "{}: tile {},{}: cannot reproject ({e})",
                path.display(),
                b.x,
                b.y
            )));
            None
        }
    }
}

/// The bytes kept for the review page: the original file for a whole JPEG or PNG of
/// reasonable size, otherwise the tile encoded as PNG.
fn tile_content(
    path: &Path,
    file_bytes: Option<&[u8]>,
    tile: &image::RgbImage,
    whole: bool,
) -> (Vec<u8>, &'static str) {
    if whole {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .unwrap_or_default();
        let ct = match ext.as_str() {
            "jpg" | "jpeg" => Some("image/jpeg"),
            "png" => Some("image/png"),
            _ => None,
        };
        if let (Some(ct), Some(bytes)) = (ct, file_bytes) {
            if bytes.len() <= 4 << 20 {
                return (bytes.to_vec(), ct);
            }
        }
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    match tile.write_to(&mut buf, image::ImageFormat::Png) {
        Ok(()) => (buf.into_inner(), "image/png"),
        Err(_) => (Vec::new(), "image/png"),
    }
}

fn infer_images(
    group: &[Arc<LoadedModel>],
    rx: Receiver<Option<TileBatch>>,
    out: SyncSender<Event>,
) {
    // Keep receiving until the producer says it is done, so it never blocks on a full channel.
    while let Ok(Some(batch)) = rx.recv() {
        let t = Instant::now();
        let ids: Vec<String> = batch.items.iter().map(|i| i.item_id.clone()).collect();
        let result = Classifier::embed(&*group[0], Batch::Images(batch.tensor.view()))
            .map_err(|e| e.to_string())
            .and_then(|emb| {
                let backbone_ms = t.elapsed().as_secs_f64() * 1000.0;
                predictions_for(group, &ids, &emb, &[], batch.prep_ms, backbone_ms)
            });
        let ev = match result {
            Ok(preds) => Event::Batch(batch.items, preds),
            Err(e) => {
                for item in &batch.items {
                    let f = FailureRecord {
                        source: item.source.clone(),
                        locator: item.locator.clone(),
                        code: "model".into(),
                        reason: format!("inference failed: {e}"),
                    };
                    if out.send(Event::Failure(f)).is_err() {
                        return;
                    }
                }
                Event::Ignore
            }
        };
        if out.send(ev).is_err() {
            return;
        }
    }
}
