//! The review queue: which predictions a reviewer should look at first, and what the review
//! page shows about one item.
//!
//! The queue holds the newest prediction of each model for each item, least confident
//! first, so a reviewer's time goes where the model is least sure:
//!
//! - single-label models: the margin between the two best scores (a tie between two labels
//!   comes first; a lone score uses the top score itself);
//! - multi-label models: the smallest distance of any label's score to that label's
//!   threshold (a score sitting on its threshold comes first).
//!
//! Unfamiliar items come before all others: those the drift monitor found far from the
//! training data in a `watch` or `drifted` window (`src/drift.rs`), because their labels teach
//! the model most. Ties fall back to the lower top score, then the item id, so the order is stable. Scores are
//! JSON in SQLite and thresholds live in the bundle manifests, so the measure is computed here
//! in Rust over the filtered rows (a few numbers per row; fine for hundreds of thousands of
//! items), and only the page asked for is read in full.

use super::feedback::{Feedback, FeedbackError};
use super::Store;
use rusqlite::{params, OptionalExtension};
use std::collections::BTreeSet;

/// How a model's scores turn into labels: what the queue needs from its manifest.
#[derive(Debug, Clone, Default)]
pub struct ScoreRule {
    /// Several labels per item (sigmoid scores against thresholds).
    pub multi_label: bool,
    /// Per-label thresholds (multi-label); 0.5 where missing.
    pub thresholds: Vec<f32>,
}

/// Which predictions the queue holds.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// Only this model (by name).
    pub model: Option<String>,
    /// Only predictions that decided this label.
    pub label: Option<String>,
    /// Only items whose source file is inside this folder (at any depth).
    pub folder: Option<String>,
    /// Only predictions made on or after this day (`YYYY-MM-DD`, UTC).
    pub date_from: Option<String>,
    /// Only predictions made on or before this day (`YYYY-MM-DD`, UTC).
    pub date_to: Option<String>,
    /// Only `image` or `text` items.
    pub kind: Option<String>,
    /// Keep items that already have an active decision (left out by default).
    pub include_reviewed: bool,
}

/// One entry of the queue: an item and the newest prediction of one model about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueEntry {
    /// Item id (content hash).
    pub item_id: String,
    /// `image` or `text`.
    pub kind: String,
    /// File it came from.
    pub source: String,
    /// Where in the file (`tile x,y,w,h`, `row 3`...).
    pub locator: Option<String>,
    /// The prediction's row id.
    pub prediction_id: i64,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Highest-scoring label.
    pub top_label: String,
    /// Its score.
    pub top_score: f32,
    /// Labels the model decided.
    pub labels: Vec<String>,
    /// Whether the model is multi-label.
    pub multi_label: bool,
    /// The certainty measure the queue is sorted by (lower: less sure); see the module doc.
    pub certainty: f32,
    /// When the prediction was made.
    pub created_at: String,
    /// Far from the training data, in a window the drift monitor flagged: shown first.
    pub unfamiliar: bool,
    /// The start of the report (text items).
    pub snippet: Option<String>,
    /// Labels of the active decision, when reviewed items are included.
    pub reviewed_labels: Option<Vec<String>>,
}

/// A page of the queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueuePage {
    /// Entries matching the filter, in all.
    pub total: usize,
    /// This page, least confident first.
    pub entries: Vec<QueueEntry>,
    /// Predictions stored in all, whatever the filter (0: nothing analysed yet, and the
    /// page says to run `outpost analyze`).
    pub analysed: usize,
}

/// An item as the review page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemDetail {
    /// Item id.
    pub item_id: String,
    /// `image` or `text`.
    pub kind: String,
    /// File it came from.
    pub source: String,
    /// Where in the file.
    pub locator: Option<String>,
    /// Tile width in pixels (images).
    pub width: Option<i64>,
    /// Tile height in pixels (images).
    pub height: Option<i64>,
    /// GeoJSON geometry (WGS84), for georeferenced tiles.
    pub geometry: Option<serde_json::Value>,
    /// MIME type of the stored content.
    pub content_type: Option<String>,
    /// Size of the stored content in bytes.
    pub content_bytes: i64,
    /// The report text (text items), decoded as UTF-8.
    pub text: Option<String>,
    /// The report's language (ISO 639-3), if known.
    pub language: Option<String>,
    /// First analysed.
    pub first_seen: String,
    /// Last analysed.
    pub last_seen: String,
    /// The newest prediction of each model, newest first.
    pub predictions: Vec<StoredPrediction>,
    /// Every decision on the item, newest first.
    pub feedback: Vec<Feedback>,
}

/// A stored prediction with its raw scores (label names come from the manifest).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredPrediction {
    /// Row id.
    pub prediction_id: i64,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Labels decided.
    pub labels: Vec<String>,
    /// Highest-scoring label.
    pub top_label: String,
    /// Its score.
    pub top_score: f32,
    /// Every label's score, in the manifest's label order.
    pub scores: Vec<f32>,
    /// The report was cut at the model's max length.
    pub truncated: bool,
    /// When.
    pub created_at: String,
}

/// An item's stored bytes.
#[derive(Debug, Clone)]
pub struct ItemContent {
    /// The tile's image bytes or the report's UTF-8 text.
    pub bytes: Vec<u8>,
    /// Their MIME type, as stored.
    pub content_type: Option<String>,
}

/// Values the queue can be filtered by, for the page's filter menus.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueFacets {
    /// Model names with predictions.
    pub models: Vec<String>,
    /// Labels decided by any prediction.
    pub labels: Vec<String>,
    /// Folders holding source files.
    pub folders: Vec<String>,
    /// First day with a prediction (`YYYY-MM-DD`).
    pub first_day: Option<String>,
    /// Last day with a prediction.
    pub last_day: Option<String>,
}

/// The certainty of a prediction: see the module documentation.
pub fn certainty(scores: &[f32], rule: &ScoreRule) -> f32 {
    if scores.is_empty() {
        return 0.0;
    }
    if rule.multi_label {
        scores
            .iter()
            .enumerate()
            .map(|(i, s)| (s - rule.thresholds.get(i).copied().unwrap_or(0.5)).abs())
            .fold(f32::INFINITY, f32::min)
    } else {
        let mut best = f32::NEG_INFINITY;
        let mut second = f32::NEG_INFINITY;
        for &s in scores {
            if s > best {
                second = best;
                best = s;
            } else if s > second {
                second = s;
            }
        }
        if second.is_finite() {
            best - second
        } else {
            best
        }
    }
}

/// The `tile x,y,w,h` box of a tile cut from a scene, if the locator is one.
pub fn tile_box(locator: &str) -> Option<(u32, u32, u32, u32)> {
    let rest = locator.strip_prefix("tile ")?;
    let v: Vec<u32> = rest
        .split(',')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    match v[..] {
        [x, y, w, h] if w > 0 && h > 0 => Some((x, y, w, h)),
        _ => None,
    }
}

fn parse_json_list<T: serde::de::DeserializeOwned>(s: &str) -> Vec<T> {
    serde_json::from_str(s).unwrap_or_default()
}

/// The folder a source path is in (`/` separated; empty for a bare file name).
/// The folder part of a source path (`/` for a file at the root, empty for a bare name).
pub fn folder_of(source: &str) -> String {
    match source.rfind('/') {
        Some(0) => "/".into(),
        Some(i) => source[..i].to_string(),
        None => String::new(),
    }
}

struct Candidate {
    prediction_id: i64,
    item_id: String,
    kind: String,
    model_name: String,
    model_version: String,
    top_label: String,
    top_score: f32,
    labels: Vec<String>,
    multi_label: bool,
    certainty: f32,
    created_at: String,
    unfamiliar: bool,
}

impl Store {
    /// A page of the review queue, least confident first. `rule` gives each model version's
    /// scoring (from its manifest); a model it does not know is scored as single-label.
    pub fn review_queue(
        &self,
        filter: &QueueFilter,
        rule: &dyn Fn(&str, &str) -> Option<ScoreRule>,
        offset: usize,
        limit: usize,
    ) -> Result<QueuePage, FeedbackError> {
        let all = self.queue_candidates(filter, rule)?;
        let total = all.len();
        let mut item_st = self.conn().prepare_cached(
            "SELECT source, locator, CASE WHEN kind = 'text' THEN substr(CAST(content AS TEXT), 1, 240) END
             FROM items WHERE item_id = ?1",
        )?;
        let mut reviewed_st = self.conn().prepare_cached(
            "SELECT labels FROM feedback WHERE item_id = ?1 AND model_name = ?2 AND state = 'active'
             ORDER BY created_at DESC, rowid DESC LIMIT 1",
        )?;
        let mut entries = Vec::new();
        for c in all.into_iter().skip(offset).take(limit) {
            let (source, locator, snippet): (String, Option<String>, Option<String>) =
                item_st.query_row([&c.item_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            let reviewed_labels = if filter.include_reviewed {
                reviewed_st
                    .query_row(params![c.item_id, c.model_name], |r| r.get::<_, String>(0))
                    .optional()?
                    .map(|s| parse_json_list(&s))
            } else {
                None
            };
            entries.push(QueueEntry {
                item_id: c.item_id,
                kind: c.kind,
                source,
                locator,
                prediction_id: c.prediction_id,
                model_name: c.model_name,
                model_version: c.model_version,
                top_label: c.top_label,
                top_score: c.top_score,
                labels: c.labels,
                multi_label: c.multi_label,
                certainty: c.certainty,
                created_at: c.created_at,
                unfamiliar: c.unfamiliar,
                snippet,
                reviewed_labels,
            });
        }
        let analysed = self
            .conn()
            .query_row("SELECT COUNT(*) FROM predictions", [], |r| {
                r.get::<_, i64>(0)
            })? as usize;
        Ok(QueuePage {
            total,
            entries,
            analysed,
        })
    }

    /// Every item's latest prediction per model that passes the filter, scored by its
    /// model's rule and sorted: unfamiliar first, then least certain.
    fn queue_candidates(
        &self,
        filter: &QueueFilter,
        rule: &dyn Fn(&str, &str) -> Option<ScoreRule>,
    ) -> Result<Vec<Candidate>, FeedbackError> {
        let folder = filter.folder.as_deref().map(|f| {
            let f = f.trim_end_matches('/');
            format!("{f}/")
        });
        let mut st = self.conn().prepare(
            "SELECT p.prediction_id, p.item_id, i.kind, p.model_name, p.model_version, p.top_label, p.top_score,
                    p.labels, p.scores, p.created_at, p.drift_priority
             FROM predictions p JOIN items i ON i.item_id = p.item_id
             WHERE p.prediction_id = (SELECT p2.prediction_id FROM predictions p2
                                      WHERE p2.item_id = p.item_id AND p2.model_name = p.model_name
                                      ORDER BY p2.created_at DESC, p2.prediction_id DESC LIMIT 1)
               AND (?1 IS NULL OR p.model_name = ?1)
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(p.labels) j WHERE j.value = ?2))
               AND (?3 IS NULL OR substr(i.source, 1, length(?3)) = ?3)
               AND (?4 IS NULL OR substr(p.created_at, 1, 10) >= ?4)
               AND (?5 IS NULL OR substr(p.created_at, 1, 10) <= ?5)
               AND (?6 IS NULL OR i.kind = ?6)
               AND (?7 = 1 OR NOT EXISTS (SELECT 1 FROM feedback f WHERE f.item_id = p.item_id
                                           AND f.model_name = p.model_name AND f.state = 'active'))",
        )?;
        let rows = st.query_map(
            params![
                filter.model,
                filter.label,
                folder,
                filter.date_from,
                filter.date_to,
                filter.kind,
                filter.include_reviewed
            ],
            |r| {
                let labels: String = r.get(7)?;
                let scores: String = r.get(8)?;
                Ok((
                    Candidate {
                        prediction_id: r.get(0)?,
                        item_id: r.get(1)?,
                        kind: r.get(2)?,
                        model_name: r.get(3)?,
                        model_version: r.get(4)?,
                        top_label: r.get(5)?,
                        top_score: r.get::<_, f64>(6)? as f32,
                        labels: parse_json_list(&labels),
                        multi_label: false,
                        certainty: 0.0,
                        created_at: r.get(9)?,
                        unfamiliar: r.get::<_, i64>(10)? != 0,
                    },
                    scores,
                ))
            },
        )?;
        let mut all = Vec::new();
        for row in rows {
            let (mut c, scores) = row?;
            let scores: Vec<f32> = parse_json_list(&scores);
            let r = rule(&c.model_name, &c.model_version).unwrap_or_default();
            c.multi_label = r.multi_label;
            c.certainty = certainty(&scores, &r);
            all.push(c);
        }
        all.sort_by(|a, b| {
            b.unfamiliar
                .cmp(&a.unfamiliar)
                .then(a.certainty.total_cmp(&b.certainty))
                .then(a.top_score.total_cmp(&b.top_score))
                .then_with(|| a.item_id.cmp(&b.item_id))
                .then_with(|| a.model_name.cmp(&b.model_name))
        });
        Ok(all)
    }

    /// Everything the review page shows about one item, or `None` if it is unknown.
    pub fn item_detail(&self, item_id: &str) -> Result<Option<ItemDetail>, FeedbackError> {
        let row = self
            .conn()
            .query_row(
                "SELECT item_id, kind, source, locator, width, height, geometry, content_type,
                        COALESCE(length(content), 0), CASE WHEN kind = 'text' THEN content END, first_seen, last_seen,
                        language
                 FROM items WHERE item_id = ?1",
                [item_id],
                |r| {
                    let geometry: Option<String> = r.get(6)?;
                    let text: Option<Vec<u8>> = r.get(9)?;
                    Ok(ItemDetail {
                        item_id: r.get(0)?,
                        kind: r.get(1)?,
                        source: r.get(2)?,
                        locator: r.get(3)?,
                        width: r.get(4)?,
                        height: r.get(5)?,
                        geometry: geometry.and_then(|g| serde_json::from_str(&g).ok()),
                        content_type: r.get(7)?,
                        content_bytes: r.get(8)?,
                        text: text.map(|t| String::from_utf8_lossy(&t).into_owned()),
                        first_seen: r.get(10)?,
                        last_seen: r.get(11)?,
                        language: r.get(12)?,
                        predictions: Vec::new(),
                        feedback: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut detail) = row else {
            return Ok(None);
        };
        let mut st = self.conn().prepare(
            "SELECT p.prediction_id, p.model_name, p.model_version, p.labels, p.top_label, p.top_score, p.scores,
                    p.truncated, p.created_at
             FROM predictions p
             WHERE p.item_id = ?1 AND p.prediction_id = (SELECT p2.prediction_id FROM predictions p2
                   WHERE p2.item_id = p.item_id AND p2.model_name = p.model_name
                   ORDER BY p2.created_at DESC, p2.prediction_id DESC LIMIT 1)
             ORDER BY p.created_at DESC, p.prediction_id DESC",
        )?;
        let preds = st.query_map([item_id], |r| {
            let labels: String = r.get(3)?;
            let scores: String = r.get(6)?;
            Ok(StoredPrediction {
                prediction_id: r.get(0)?,
                model_name: r.get(1)?,
                model_version: r.get(2)?,
                labels: parse_json_list(&labels),
                top_label: r.get(4)?,
                top_score: r.get::<_, f64>(5)? as f32,
                scores: parse_json_list(&scores),
                truncated: r.get(7)?,
                created_at: r.get(8)?,
            })
        })?;
        detail.predictions = preds.collect::<Result<_, _>>()?;
        detail.feedback = self.item_feedback(item_id)?;
        Ok(Some(detail))
    }

    /// Every decision on an item, newest first.
    pub fn item_feedback(&self, item_id: &str) -> Result<Vec<Feedback>, FeedbackError> {
        let mut st = self.conn().prepare(
            "SELECT feedback_id FROM feedback WHERE item_id = ?1 ORDER BY created_at DESC, rowid DESC",
        )?;
        let ids = st
            .query_map([item_id], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(f) = self.feedback(&id)? {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// An item's stored content and its MIME type, or `None` if the item is unknown.
    pub fn item_content(&self, item_id: &str) -> Result<Option<ItemContent>, FeedbackError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT COALESCE(content, X''), content_type FROM items WHERE item_id = ?1",
                [item_id],
                |r| {
                    Ok(ItemContent {
                        bytes: r.get(0)?,
                        content_type: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// An item's source file and locator, or `None` if the item is unknown.
    pub fn item_source(
        &self,
        item_id: &str,
    ) -> Result<Option<(String, Option<String>)>, FeedbackError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT source, locator FROM items WHERE item_id = ?1",
                [item_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The values the queue can be filtered by.
    pub fn queue_facets(&self) -> Result<QueueFacets, FeedbackError> {
        let conn = self.conn();
        let strings = |sql: &str| -> Result<Vec<String>, FeedbackError> {
            let mut st = conn.prepare(sql)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        let models = strings("SELECT DISTINCT model_name FROM predictions ORDER BY 1")?;
        let labels = strings(
            "SELECT DISTINCT CAST(j.value AS TEXT) FROM predictions p, json_each(p.labels) j ORDER BY 1",
        )?;
        let folders: BTreeSet<String> = strings("SELECT DISTINCT source FROM items")?
            .iter()
            .map(|s| folder_of(s))
            .filter(|f| !f.is_empty())
            .collect();
        let (first_day, last_day) = conn.query_row(
            "SELECT substr(MIN(created_at), 1, 10), substr(MAX(created_at), 1, 10) FROM predictions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(QueueFacets {
            models,
            labels,
            folders: folders.into_iter().collect(),
            first_day,
            last_day,
        })
    }

    /// The newest decision that can still be undone (active, not yet synced), if any.
    pub fn last_undoable_feedback(&self) -> Result<Option<Feedback>, FeedbackError> {
        let id: Option<String> = self
            .conn()
            .query_row(
                "SELECT f.feedback_id FROM feedback f JOIN outbox o ON o.feedback_id = f.feedback_id
                 WHERE f.state = 'active' AND o.acked_at IS NULL
                 ORDER BY f.created_at DESC, f.rowid DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.feedback(&id),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certainty_is_margin_or_distance_to_threshold() {
        let single = ScoreRule::default();
        assert!((certainty(&[0.5, 0.3, 0.2], &single) - 0.2).abs() < 1e-6);
        assert!((certainty(&[0.2, 0.4, 0.4], &single)).abs() < 1e-6);
        assert!((certainty(&[0.9], &single) - 0.9).abs() < 1e-6);
        let multi = ScoreRule {
            multi_label: true,
            thresholds: vec![0.5, 0.3],
        };
        assert!((certainty(&[0.9, 0.35], &multi) - 0.05).abs() < 1e-6);
        assert!((certainty(&[0.1, 0.9], &multi) - 0.4).abs() < 1e-6);
    }

    #[test]
    fn tile_boxes_parse() {
        assert_eq!(tile_box("tile 0,160,160,160"), Some((0, 160, 160, 160)));
        assert_eq!(tile_box("row 3"), None);
        assert_eq!(tile_box("tile 1,2,3"), None);
        assert_eq!(tile_box("tile 1,2,0,4"), None);
        assert_eq!(folder_of("/a/b/c.png"), "/a/b");
        assert_eq!(folder_of("c.png"), "");
        assert_eq!(folder_of("/c.png"), "/");
    }
}
