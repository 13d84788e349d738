//! Feedback and the outbox.
//!
//! A reviewer confirms or corrects a prediction. The decision is written to `feedback` (the
//! history) and queued in `outbox` (what still has to reach the server) in ONE transaction,
//! so there is never a label without its outbox row or the reverse. With WAL and
//! `synchronous = FULL` the commit is on disk before the call returns: a kill -9 or a power
//! cut afterwards loses nothing.
//!
//! A new decision on the same item and model supersedes the earlier one: if the earlier one
//! was not sent yet it leaves the outbox (only the latest decision travels); if it was sent,
//! the new one travels with `supersedes` naming it, and the server keeps the history.

use super::{embedding_from_f16, now, Store, StoreError};
use crate::protocol::Action;
use rusqlite::{params, OptionalExtension, Transaction};

/// Why feedback was refused. Nothing is written when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// The item id is unknown.
    #[error("no item {0}: analyse it first")]
    UnknownItem(String),
    /// The item has no prediction from that model.
    #[error("item {item} has no prediction from model {model}")]
    NoPrediction {
        /// Item id.
        item: String,
        /// Model name.
        model: String,
    },
    /// A label is empty, too long or has control characters.
    #[error("invalid label {0:?}: labels are 1 to 64 printable characters")]
    BadLabel(String),
    /// No labels were given.
    #[error("give at least one label (or confirm the prediction)")]
    NoLabels,
    /// A label the model does not know, not marked as a new class (a typo guard).
    #[error("{label:?} is not a label of model {model} (its labels: {}); to propose a new class, mark the label as new (review page: n; command line: --new)", known.join(", "))]
    UnknownLabel {
        /// The label.
        label: String,
        /// The model.
        model: String,
        /// The labels it knows.
        known: Vec<String>,
    },
    /// Several labels for a single-label model.
    #[error("model {model} gives one label per item; {given} were given")]
    SingleLabel {
        /// Model name.
        model: String,
        /// How many were given.
        given: usize,
    },
    /// The feedback id is unknown.
    #[error("no feedback {0}")]
    UnknownFeedback(String),
    /// Undo of feedback the server already has.
    #[error("feedback {0} was already sent to the server and cannot be undone; give a new label instead, which replaces it")]
    AlreadySynced(String),
    /// Undo of feedback that is not the latest on its item.
    #[error("feedback {0} is not the latest decision on its item; only the latest can be undone")]
    NotLatest(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for FeedbackError {
    fn from(e: rusqlite::Error) -> Self {
        FeedbackError::Store(StoreError::Sqlite(e))
    }
}

/// A decision to record.
#[derive(Debug, Clone)]
pub struct NewFeedback {
    /// The item.
    pub item_id: String,
    /// The model whose prediction is answered (its latest version's prediction is used).
    pub model_name: String,
    /// The labels given (one for single-label models).
    pub labels: Vec<String>,
    /// Who gave it.
    pub annotator: String,
    /// Whether the raw item travels with it.
    pub include_content: bool,
    /// Labels the reviewer deliberately proposes as new classes. A given label that the
    /// model does not know and that is not listed here is refused (most are typos).
    pub declared_new: Vec<String>,
}

/// What the store needs to know about the model to validate labels.
#[derive(Debug, Clone)]
pub struct LabelSpace {
    /// The model's labels.
    pub labels: Vec<String>,
    /// Several labels per item allowed.
    pub multi_label: bool,
}

/// A stored decision.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Feedback {
    /// UUID.
    pub feedback_id: String,
    /// Item.
    pub item_id: String,
    /// Prediction answered.
    pub prediction_id: Option<i64>,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Whether the reviewer confirmed or corrected the prediction.
    pub action: Action,
    /// Labels given.
    pub labels: Vec<String>,
    /// Given labels the model does not know.
    pub new_labels: Vec<String>,
    /// Who.
    pub annotator: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// Earlier decision replaced.
    pub supersedes: Option<String>,
    /// Whether it is the item's current decision.
    pub state: DecisionState,
    /// Where it is on its way to the server.
    pub delivery: Delivery,
    /// Whether the raw item travels.
    pub include_content: bool,
}

crate::vocabulary! {
    /// Whether a decision is an item's current one (`feedback.state`).
    pub enum DecisionState {
        /// The item's current decision for its model.
        Active = "active",
        /// Replaced by a newer decision on the same item.
        Superseded = "superseded",
        /// Taken back before it was sent.
        Undone = "undone",
    }
}

crate::vocabulary! {
    /// Where a decision is on its way to the server (from the outbox; not a stored column).
    pub enum Delivery {
        /// In the outbox, not acknowledged yet.
        Pending = "pending",
        /// The server acknowledged it.
        Synced = "synced",
        /// Never queued or taken out of the outbox (replaced or undone before it was sent).
        NotQueued = "none",
    }
}

/// Counters for the review page and `outpost status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counters {
    /// Decisions made today (UTC).
    pub reviewed_today: i64,
    /// Outbox rows waiting for the server.
    pub waiting_to_sync: i64,
    /// Outbox rows the server acknowledged.
    pub synced: i64,
    /// When the last sync succeeded (RFC 3339), if ever.
    pub last_sync: Option<String>,
}

fn validate_label(l: &str) -> Result<String, FeedbackError> {
    let t = l.trim();
    if t.is_empty() || t.chars().count() > 64 || t.chars().any(char::is_control) {
        return Err(FeedbackError::BadLabel(l.to_string()));
    }
    Ok(t.to_string())
}

const FEEDBACK_COLUMNS: &str = "f.feedback_id, f.item_id, f.prediction_id, f.model_name, f.model_version, f.action, f.labels,
    f.new_labels, f.annotator, f.created_at, f.supersedes, f.state, f.include_content,
    CASE WHEN o.feedback_id IS NULL THEN 'none' WHEN o.acked_at IS NULL THEN 'pending' ELSE 'synced' END";

/// A JSON list stored in column `i`; a value that is not one is an error naming the column,
/// never an empty list.
fn json_column(i: usize, s: &str) -> rusqlite::Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn row_to_feedback(r: &rusqlite::Row<'_>) -> rusqlite::Result<Feedback> {
    let labels: String = r.get(6)?;
    let new_labels: String = r.get(7)?;
    Ok(Feedback {
        feedback_id: r.get(0)?,
        item_id: r.get(1)?,
        prediction_id: r.get(2)?,
        model_name: r.get(3)?,
        model_version: r.get(4)?,
        action: r.get(5)?,
        labels: json_column(6, &labels)?,
        new_labels: json_column(7, &new_labels)?,
        annotator: r.get(8)?,
        created_at: r.get(9)?,
        supersedes: r.get(10)?,
        state: r.get(11)?,
        include_content: r.get(12)?,
        delivery: r.get(13)?,
    })
}

fn get_feedback(tx: &rusqlite::Connection, id: &str) -> Result<Option<Feedback>, FeedbackError> {
    Ok(tx
        .query_row(
            &format!("SELECT {FEEDBACK_COLUMNS} FROM feedback f LEFT JOIN outbox o USING (feedback_id) WHERE f.feedback_id = ?1"),
            [id],
            row_to_feedback,
        )
        .optional()?)
}

fn active_feedback(
    tx: &Transaction<'_>,
    item: &str,
    model: &str,
) -> Result<Option<Feedback>, FeedbackError> {
    Ok(tx
        .query_row(
            &format!(
                "SELECT {FEEDBACK_COLUMNS} FROM feedback f LEFT JOIN outbox o USING (feedback_id)
                 WHERE f.item_id = ?1 AND f.model_name = ?2 AND f.state = 'active'
                 ORDER BY f.created_at DESC, f.rowid DESC LIMIT 1"
            ),
            params![item, model],
            row_to_feedback,
        )
        .optional()?)
}

impl Store {
    /// Records a decision and queues it, in one transaction. Returns the stored row.
    pub fn give_feedback(
        &mut self,
        input: &NewFeedback,
        space: &LabelSpace,
    ) -> Result<Feedback, FeedbackError> {
        let mut labels = Vec::new();
        for l in &input.labels {
            let l = validate_label(l)?;
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        if labels.is_empty() {
            return Err(FeedbackError::NoLabels);
        }
        for l in &labels {
            if !space.labels.contains(l) && !input.declared_new.iter().any(|d| d.trim() == l) {
                return Err(FeedbackError::UnknownLabel {
                    label: l.clone(),
                    model: input.model_name.clone(),
                    known: space.labels.clone(),
                });
            }
        }
        if !space.multi_label && labels.len() != 1 {
            return Err(FeedbackError::SingleLabel {
                model: input.model_name.clone(),
                given: labels.len(),
            });
        }
        let annotator = validate_label(&input.annotator).unwrap_or_else(|_| "unknown".into());
        let tx = self.conn.transaction()?;
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM items WHERE item_id = ?1",
                [&input.item_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            return Err(FeedbackError::UnknownItem(input.item_id.clone()));
        }
        // The newest prediction of this model for the item.
        let pred: Option<(i64, String, String, Vec<u8>)> = tx
            .query_row(
                "SELECT prediction_id, model_version, labels, embedding FROM predictions
                 WHERE item_id = ?1 AND model_name = ?2 ORDER BY created_at DESC, prediction_id DESC LIMIT 1",
                params![input.item_id, input.model_name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((prediction_id, version, predicted, embedding)) = pred else {
            return Err(FeedbackError::NoPrediction {
                item: input.item_id.clone(),
                model: input.model_name.clone(),
            });
        };
        let predicted: Vec<String> = serde_json::from_str(&predicted).unwrap_or_default();
        let same = {
            let mut a = labels.clone();
            let mut b = predicted.clone();
            a.sort();
            b.sort();
            a == b
        };
        let action = if same {
            Action::Confirm
        } else {
            Action::Correct
        };
        let new_labels: Vec<String> = labels
            .iter()
            .filter(|l| !space.labels.contains(l))
            .cloned()
            .collect();
        let previous = active_feedback(&tx, &input.item_id, &input.model_name)?;
        if let Some(p) = &previous {
            tx.execute(
                "UPDATE feedback SET state = 'superseded' WHERE feedback_id = ?1",
                [&p.feedback_id],
            )?;
            // Not sent yet: only the newest decision needs to travel.
            tx.execute(
                "DELETE FROM outbox WHERE feedback_id = ?1 AND acked_at IS NULL",
                [&p.feedback_id],
            )?;
        }
        // The server only needs to hear about a replaced decision if it has seen it.
        let supersedes = previous.as_ref().and_then(|p| {
            if p.delivery == Delivery::Synced {
                Some(p.feedback_id.clone())
            } else {
                p.supersedes.clone()
            }
        });
        let id = uuid::Uuid::new_v4().to_string();
        let ts = now();
        tx.execute(
            "INSERT INTO feedback (feedback_id, item_id, prediction_id, model_name, model_version, action, labels, new_labels,
                                   annotator, created_at, embedding, include_content, supersedes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                id,
                input.item_id,
                prediction_id,
                input.model_name,
                version,
                action,
                serde_json::Value::from(labels.clone()).to_string(),
                serde_json::Value::from(new_labels.clone()).to_string(),
                annotator,
                ts,
                embedding,
                input.include_content,
                supersedes
            ],
        )?;
        tx.execute(
            "INSERT INTO outbox (feedback_id, enqueued_at) VALUES (?1, ?2)",
            params![id, ts],
        )?;
        let fb =
            get_feedback(&tx, &id)?.ok_or_else(|| FeedbackError::UnknownFeedback(id.clone()))?;
        tx.commit()?;
        Ok(fb)
    }

    /// Takes back the latest decision on an item while it is still in the outbox. The
    /// decision it replaced, if any, becomes active again (and is queued again if it was
    /// never sent).
    pub fn undo_feedback(&mut self, feedback_id: &str) -> Result<Option<Feedback>, FeedbackError> {
        let tx = self.conn.transaction()?;
        let fb = get_feedback(&tx, feedback_id)?
            .ok_or_else(|| FeedbackError::UnknownFeedback(feedback_id.into()))?;
        if fb.state != DecisionState::Active {
            return Err(FeedbackError::NotLatest(feedback_id.into()));
        }
        if fb.delivery == Delivery::Synced {
            return Err(FeedbackError::AlreadySynced(feedback_id.into()));
        }
        tx.execute(
            "UPDATE feedback SET state = 'undone' WHERE feedback_id = ?1",
            [feedback_id],
        )?;
        tx.execute("DELETE FROM outbox WHERE feedback_id = ?1", [feedback_id])?;
        // The decision before it (the newest superseded one on the same item and model).
        let prev_id: Option<String> = tx
            .query_row(
                "SELECT feedback_id FROM feedback WHERE item_id = ?1 AND model_name = ?2 AND state = 'superseded'
                 AND created_at <= ?3 AND feedback_id != ?4 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                params![fb.item_id, fb.model_name, fb.created_at, feedback_id],
                |r| r.get(0),
            )
            .optional()?;
        let mut restored = None;
        if let Some(p) = prev_id {
            tx.execute(
                "UPDATE feedback SET state = 'active' WHERE feedback_id = ?1",
                [&p],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO outbox (feedback_id, enqueued_at) VALUES (?1, ?2)",
                params![p, now()],
            )?;
            restored = get_feedback(&tx, &p)?;
        }
        tx.commit()?;
        Ok(restored)
    }

    /// One decision by id.
    pub fn feedback(&self, feedback_id: &str) -> Result<Option<Feedback>, FeedbackError> {
        get_feedback(&self.conn, feedback_id)
    }

    /// Decisions, newest first. `pending_only`: only those waiting in the outbox.
    pub fn list_feedback(
        &self,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<Feedback>, FeedbackError> {
        let sql = format!(
            "SELECT {FEEDBACK_COLUMNS} FROM feedback f LEFT JOIN outbox o USING (feedback_id)
             WHERE (?1 = 0 OR (o.feedback_id IS NOT NULL AND o.acked_at IS NULL))
             ORDER BY f.created_at DESC, f.rowid DESC LIMIT ?2"
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params![pending_only, limit as i64], row_to_feedback)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The embedding stored with a decision.
    pub fn feedback_embedding(&self, feedback_id: &str) -> Result<Vec<f32>, FeedbackError> {
        let b: Vec<u8> = self
            .conn
            .query_row(
                "SELECT embedding FROM feedback WHERE feedback_id = ?1",
                [feedback_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| FeedbackError::UnknownFeedback(feedback_id.into()))?;
        Ok(embedding_from_f16(&b))
    }

    /// Marks outbox rows as acknowledged by the server.
    pub fn ack_outbox(&mut self, feedback_ids: &[String]) -> Result<usize, FeedbackError> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut st = tx.prepare_cached(
                "UPDATE outbox SET acked_at = ?1 WHERE feedback_id = ?2 AND acked_at IS NULL",
            )?;
            let ts = now();
            for id in feedback_ids {
                n += st.execute(params![ts, id])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Counters for the review page.
    pub fn counters(&self) -> Result<Counters, FeedbackError> {
        let today = &now()[..10];
        let q = |sql: &str| -> rusqlite::Result<i64> { self.conn.query_row(sql, [], |r| r.get(0)) };
        Ok(Counters {
            reviewed_today: self.conn.query_row(
                "SELECT COUNT(*) FROM feedback WHERE substr(created_at, 1, 10) = ?1 AND state != 'undone'",
                [today],
                |r| r.get(0),
            )?,
            waiting_to_sync: q("SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL")?,
            synced: q("SELECT COUNT(*) FROM outbox WHERE acked_at IS NOT NULL")?,
            last_sync: self.state("last_sync")?,
        })
    }

    /// Reads an `agent_state` value.
    pub fn state(&self, key: &str) -> Result<Option<String>, FeedbackError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM agent_state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Writes an `agent_state` value.
    pub fn set_state(&self, key: &str, value: &str) -> Result<(), FeedbackError> {
        self.conn.execute(
            "INSERT INTO agent_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

impl Store {
    /// The outbox as wire records, oldest first: what sync sends and a USB export carries.
    pub fn pending_records(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::protocol::FeedbackRecord>, FeedbackError> {
        let mut st = self.conn.prepare(
            "SELECT f.feedback_id, f.item_id, i.kind, f.model_name, f.model_version, f.action, f.labels, f.new_labels,
                    f.annotator, f.created_at, f.supersedes, f.embedding, f.include_content, i.content, i.content_type
             FROM outbox o JOIN feedback f USING (feedback_id) JOIN items i ON i.item_id = f.item_id
             WHERE o.acked_at IS NULL ORDER BY o.enqueued_at, f.rowid LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            let labels: String = r.get(6)?;
            let new_labels: String = r.get(7)?;
            let emb: Vec<u8> = r.get(11)?;
            let include: bool = r.get(12)?;
            let content: Option<Vec<u8>> = r.get(13)?;
            let content_type: Option<String> = r.get(14)?;
            Ok(crate::protocol::FeedbackRecord {
                feedback_id: r.get(0)?,
                item_id: r.get(1)?,
                kind: r.get(2)?,
                model_name: r.get(3)?,
                model_version: r.get(4)?,
                action: r.get(5)?,
                labels: json_column(6, &labels)?,
                new_labels: json_column(7, &new_labels)?,
                annotator: r.get(8)?,
                created_at: r.get(9)?,
                supersedes: r.get(10)?,
                embedding_f16: crate::protocol::b64(&emb),
                content: if include {
                    content.as_deref().map(crate::protocol::b64)
                } else {
                    None
                },
                content_type: if include { content_type } else { None },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Finds an item by a file it was seen in (and locator, for tiles of a scene or rows of
    /// a CSV). The path matches in either form: sources are stored canonical (absolute,
    /// links resolved), older rows as typed; a bare file name or a path's tail matches too.
    /// An exact match wins, then the most recently seen.
    pub fn find_item(
        &self,
        source: &str,
        locator: Option<&str>,
    ) -> Result<Option<String>, FeedbackError> {
        let canon = std::fs::canonicalize(source)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| absolute(source));
        Ok(self
            .conn
            .query_row(
                "SELECT item_id FROM item_sightings
                 WHERE (source IN (?1, ?3)
                        OR substr(source, -length(?1) - 1) = '/' || ?1
                        OR substr(?3, -length(source) - 1) = '/' || source)
                   AND (?2 IS NULL OR locator = ?2)
                 ORDER BY source IN (?1, ?3) DESC, last_seen DESC LIMIT 1",
                params![source, locator, canon],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The models that have predictions for an item (newest first).
    pub fn item_models(&self, item_id: &str) -> Result<Vec<String>, FeedbackError> {
        let mut st = self.conn.prepare(
            "SELECT model_name FROM predictions WHERE item_id = ?1 GROUP BY model_name ORDER BY MAX(created_at) DESC",
        )?;
        let rows = st.query_map([item_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// `path` made absolute against the working folder (`.` and `..` resolved by text), for a
/// path that no longer exists on disk.
fn absolute(path: &str) -> String {
    let p = std::path::Path::new(path);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = std::path::PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.display().to_string()
}
