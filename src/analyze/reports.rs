//! The report stage of `analyze`: read every report once, then per backbone group tokenise
//! on one thread while the previous batches run through the model on another.
//!
//! ```text
//!  stage thread                         inference thread            writer (caller)
//!  read files -> tokenise a chunk of -> backbone + heads per batch -> SQLite, 64 reports
//!  512, sort it by length, pad batches                                per transaction
//! ```
//!
//! Reports are batched only when the bundle declares `"backbone": {"batch_independent":
//! true}` (a statically quantised or float backbone, whose every row is computed on its own):
//! then batches of similar length (sorted inside each chunk, so padding stays small) give a
//! report exactly the scores it gets alone. A dynamically quantised backbone (crisis-reports
//! 1.1.0) computes activation scales per run, so its reports run one at a time.

use super::{
    backbone_groups, failure, predictions_for, AlreadyCheck, AnalyzeOptions, Event, FailureRecord,
};
use crate::infer::text::{self, Encoded};
use crate::model::classifier::{Batch, Classifier};
use crate::model::LoadedModel;
use crate::store::{NewItem, NewPrediction};
use indicatif::ProgressBar;
use ndarray::Array2;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

/// Reports tokenised, sorted by length and batched at a time: big enough that sorting
/// inside it leaves little padding, small enough that inference starts at once.
const TOKENIZE_CHUNK: usize = 512;

/// Reports written per transaction. Inference batches of reports are small (one report for a
/// dynamically quantised backbone); committing each one alone made the writer, not the model,
/// the bottleneck.
const WRITE_BATCH: usize = 64;

pub(super) struct TextStage {
    pub files: Vec<PathBuf>,
    pub models: Vec<Arc<LoadedModel>>,
    pub opts: AnalyzeOptions,
    pub db_path: Option<PathBuf>,
    pub stop: Arc<AtomicBool>,
    pub pb: ProgressBar,
}

/// One padded batch of reports on its way to inference.
struct ReportBatch {
    items: Vec<NewItem>,
    ids: Array2<i64>,
    mask: Array2<i64>,
    types: Array2<i64>,
    truncated: Vec<bool>,
    prep_ms: f64,
}

/// The batch size a group of models may use: `wanted` if every bundle of the group declares
/// a batch-independent backbone, otherwise 1.
pub fn report_batch_size(models: &[Arc<LoadedModel>], wanted: usize) -> usize {
    if !models.is_empty()
        && models
            .iter()
            .all(|m| m.manifest().backbone.batch_independent)
    {
        wanted.max(1)
    } else {
        1
    }
}

impl TextStage {
    pub fn run(self, out: SyncSender<Event>) {
        let Some(reports) = self.read(&out) else {
            return;
        };
        self.pb.set_length(reports.len() as u64);
        for group in backbone_groups(&self.models) {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let (btx, brx) = sync_channel::<ReportBatch>(2);
            let infer_out = out.clone();
            let infer_group = group.clone();
            std::thread::scope(|s| {
                s.spawn(move || infer_reports(&infer_group, brx, infer_out));
                self.tokenize(&group, &reports, btx, &out);
            });
        }
    }

    /// Every report of every file, once (failures sent as they are found); `None` if stopped.
    fn read(&self, out: &SyncSender<Event>) -> Option<Vec<NewItem>> {
        let mut reports = Vec::new();
        for path in &self.files {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            match text::read_reports(path, &self.opts.text) {
                Err(e) => {
                    let _ = out.send(Event::Failure(failure(path, None, &e)));
                }
                Ok((rs, failed)) => {
                    for (loc, e) in failed {
                        let _ = out.send(Event::Failure(failure(path, Some(loc), &e)));
                    }
                    reports.extend(rs.into_iter().map(|r| NewItem {
                        item_id: text::report_hash(&r.text),
                        kind: "text",
                        source: path.display().to_string(),
                        locator: r.locator,
                        size: None,
                        geometry: None,
                        content: r.text.into_bytes(),
                        content_type: "text/plain",
                    }));
                }
            }
        }
        Some(reports)
    }

    /// Tokenises the reports chunk by chunk and sends their batches; returns when done,
    /// stopped, or the inference thread has gone.
    fn tokenize(
        &self,
        group: &[Arc<LoadedModel>],
        reports: &[NewItem],
        btx: SyncSender<ReportBatch>,
        out: &SyncSender<Event>,
    ) {
        let Some(tok) = group[0].tokenizer.as_ref() else {
            return;
        };
        let already = AlreadyCheck::new(&self.db_path, self.opts.force, group);
        let batch_size = report_batch_size(group, self.opts.text_batch_size);
        let pad = text::pad_id(tok);
        for chunk in reports.chunks(TOKENIZE_CHUNK) {
            let t0 = Instant::now();
            let mut items = Vec::with_capacity(chunk.len());
            let mut encs = Vec::with_capacity(chunk.len());
            for item in chunk {
                if let Some(keys) = already.done(&item.item_id) {
                    let _ = out.send(Event::Already(keys, item.sighting()));
                    continue;
                }
                // Reports were read as UTF-8 text: their bytes are a valid string.
                let t = String::from_utf8_lossy(&item.content);
                match text::encode(tok, &t) {
                    Ok(e) => {
                        items.push(item);
                        encs.push(e);
                    }
                    Err(e) => {
                        let _ = out.send(Event::Failure(FailureRecord {
                            source: item.source.clone(),
                            locator: item.locator.clone(),
                            code: "tokenizer".into(),
                            reason: format!("cannot tokenize: {e}"),
                        }));
                    }
                }
            }
            let truncated = encs.iter().filter(|e| e.truncated).count() as u64;
            if truncated > 0 {
                let _ = out.send(Event::Truncated(truncated));
            }
            let per_item_ms = t0.elapsed().as_secs_f64() * 1000.0 / encs.len().max(1) as f64;
            for idx in text::length_batches(&encs, batch_size) {
                if self.stop.load(Ordering::Relaxed) {
                    return; // the inference thread finishes what it holds, and it is kept
                }
                let t1 = Instant::now();
                let refs: Vec<&Encoded> = idx.iter().map(|&i| &encs[i]).collect();
                let (ids, mask, types) = text::pad_batch(&refs, pad);
                let batch = ReportBatch {
                    items: idx.iter().map(|&i| items[i].clone()).collect(),
                    truncated: refs.iter().map(|e| e.truncated).collect(),
                    ids,
                    mask,
                    types,
                    prep_ms: t1.elapsed().as_secs_f64() * 1000.0 + per_item_ms * idx.len() as f64,
                };
                if btx.send(batch).is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs the batches through the group's backbone and heads and sends the predictions to the
/// writer, `WRITE_BATCH` reports at a time (and whatever is left when the batches end).
fn infer_reports(group: &[Arc<LoadedModel>], rx: Receiver<ReportBatch>, out: SyncSender<Event>) {
    let mut write: (Vec<NewItem>, Vec<NewPrediction>) = Default::default();
    for b in rx.iter() {
        let t = Instant::now();
        let item_ids: Vec<String> = b.items.iter().map(|i| i.item_id.clone()).collect();
        let tokens = Batch::Tokens {
            ids: b.ids.view(),
            mask: b.mask.view(),
            types: b.types.view(),
        };
        let result = Classifier::embed(&*group[0], tokens)
            .map_err(|e| e.to_string())
            .and_then(|emb| {
                let backbone_ms = t.elapsed().as_secs_f64() * 1000.0;
                predictions_for(group, &item_ids, &emb, &b.truncated, b.prep_ms, backbone_ms)
            });
        match result {
            Ok(preds) => {
                write.0.extend(b.items);
                write.1.extend(preds);
            }
            Err(e) => {
                for item in &b.items {
                    let _ = out.send(Event::Failure(FailureRecord {
                        source: item.source.clone(),
                        locator: item.locator.clone(),
                        code: "model".into(),
                        reason: format!("inference failed: {e}"),
                    }));
                }
            }
        }
        if write.0.len() >= WRITE_BATCH && !send_write(&out, &mut write) {
            return;
        }
    }
    send_write(&out, &mut write);
}

/// Sends the reports gathered for writing, if any; false if the writer has gone.
fn send_write(out: &SyncSender<Event>, write: &mut (Vec<NewItem>, Vec<NewPrediction>)) -> bool {
    if write.0.is_empty() {
        return true;
    }
    let (items, preds) = std::mem::take(write);
    out.send(Event::Batch(items, preds)).is_ok()
}
