//! The agent's SQLite database: items, every place each item was seen (sightings),
//! predictions, runs and failures (and, in later migrations, the feedback outbox).
//!
//! An item is keyed by its content; where it was found is a sighting (file, place in the
//! file, footprint), so the same tile in two scenes is analysed once and exported twice.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a committed transaction survives a
//! crash or power loss (each commit syncs the WAL). A batch of predictions is written in one
//! transaction; a run that is killed keeps every batch committed before, and a re-run skips
//! what is already stored.

pub mod feedback;
pub mod migrate;
pub mod queue;
pub mod retention;
pub mod usb;
pub mod vault;

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database could not be opened.
    #[error("cannot open the database {path}: {reason}")]
    Open {
        /// Database file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A migration failed (the database is left at the previous version).
    #[error("database migration {name} failed: {reason}")]
    Migration {
        /// Migration file.
        name: String,
        /// SQLite's message.
        reason: String,
    },
    /// Encryption at rest refused (locked, wrong key file...).
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    /// The file is not a database this agent can read with the key it has.
    #[error("cannot read the database {path}: {hint}")]
    Unreadable {
        /// Database file.
        path: PathBuf,
        /// What it probably means and what to do.
        hint: &'static str,
    },
    /// The database was written by a newer agent.
    #[error("the database is at schema version {found} but this agent knows up to {supported}; upgrade the agent (your data is untouched)")]
    TooNew {
        /// Version found.
        found: u32,
        /// Newest known.
        supported: u32,
    },
}

/// The current time as RFC 3339 UTC, the form every timestamp in the database uses.
pub fn now() -> String {
    crate::clock::now_rfc3339()
}

pub use crate::encoding::{embedding_from_f16, embedding_to_f16};

/// An item to store.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// Content hash.
    pub item_id: String,
    /// `image` or `text`.
    pub kind: &'static str,
    /// File it came from.
    pub source: String,
    /// Where in the file.
    pub locator: Option<String>,
    /// Tile size (images).
    pub size: Option<(u32, u32)>,
    /// GeoJSON geometry (WGS84).
    pub geometry: Option<serde_json::Value>,
    /// Image bytes or report text.
    pub content: Vec<u8>,
    /// MIME type of `content`.
    pub content_type: &'static str,
}

impl NewItem {
    /// The language of a report (ISO 639-3), if it can be told; `None` for tiles.
    pub fn language(&self) -> Option<&'static str> {
        if self.kind != "text" {
            return None;
        }
        let text = std::str::from_utf8(&self.content).ok()?;
        crate::language::detect(text).map(|d| d.code)
    }
}

/// One place an item was seen: its file, where in the file, and its footprint.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// Content hash of the item.
    pub item_id: String,
    /// File it was found in (canonical path).
    pub source: String,
    /// Where in the file.
    pub locator: Option<String>,
    /// GeoJSON geometry (WGS84), for georeferenced tiles.
    pub geometry: Option<serde_json::Value>,
}

impl NewItem {
    /// Where this item was seen.
    pub fn sighting(&self) -> Sighting {
        Sighting {
            item_id: self.item_id.clone(),
            source: self.source.clone(),
            locator: self.locator.clone(),
            geometry: self.geometry.clone(),
        }
    }
}

/// Whether this run already stored a prediction for an item. `+run_id` keeps SQLite off the
/// `predictions_run` index: every row of a run has the same run_id, so that index made each
/// lookup scan the whole run (quadratic: 5,400 tiles took 28 s instead of 2); the item's own
/// rows (unique index on item_id, model, version) are few.
const SEEN_IN_RUN: &str = "SELECT 1 FROM predictions WHERE item_id = ?1 AND +run_id = ?2 LIMIT 1";

const PUT_SIGHTING: &str = "INSERT INTO item_sightings (item_id, source, locator, geometry, last_run_id, first_seen, last_seen)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
     ON CONFLICT (item_id, source, locator, geometry) DO UPDATE SET
       last_run_id = excluded.last_run_id, last_seen = excluded.last_seen";

/// A place stored before sources were canonical names the same file by the relative path
/// it was typed as (`scenes/a.tif`); seen again under its canonical path, the old row goes,
/// so the same place is not exported twice.
const DROP_TYPED_SIGHTING: &str = "DELETE FROM item_sightings
     WHERE item_id = ?1 AND locator = ?3 AND geometry = ?4 AND source <> ?2
       AND substr(source, 1, 1) <> '/' AND substr(?2, -length(source) - 1) = '/' || source";

fn put_sighting(conn: &Connection, run_id: i64, s: &Sighting, ts: &str) -> rusqlite::Result<()> {
    let locator = s.locator.as_deref().unwrap_or("");
    let geometry = s
        .geometry
        .as_ref()
        .map(|g| g.to_string())
        .unwrap_or_default();
    conn.prepare_cached(PUT_SIGHTING)?
        .execute(params![s.item_id, s.source, locator, geometry, run_id, ts])?;
    conn.prepare_cached(DROP_TYPED_SIGHTING)?
        .execute(params![s.item_id, s.source, locator, geometry])?;
    Ok(())
}

/// A prediction to store.
#[derive(Debug, Clone)]
pub struct NewPrediction {
    /// Item it is about.
    pub item_id: String,
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
    /// Every label's score.
    pub scores: Vec<f32>,
    /// Backbone embedding.
    pub embedding: Vec<f32>,
    /// Report cut at max_length.
    pub truncated: bool,
    /// Per-item preprocessing time.
    pub preprocess_ms: f64,
    /// Per-item inference time.
    pub infer_ms: f64,
}

/// The agent's database connection.
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        // Encrypted folders: the key must be unlocked (or unsealable) before anything is read.
        let key = vault::key_for_database(path)?;
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(key) = &key {
            // SQLCipher: must be the first statement on the connection.
            vault::apply_key(&conn, key)?;
        }
        let readable = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        });
        if let Err(rusqlite::Error::SqliteFailure(e, _)) = &readable {
            if e.code == rusqlite::ErrorCode::NotADatabase {
                return Err(StoreError::Unreadable {
                    path: path.to_path_buf(),
                    hint: if key.is_some() {
                        "it does not open with this folder's data key (was data-key.json replaced?); restore the matching data-key.json"
                    } else {
                        "it is encrypted or damaged, and this folder has no data-key.json; restore data-key.json from a backup (without it the data cannot be read)"
                    },
                });
            }
        }
        readable?;
        Self::setup(conn, Some(path.to_path_buf()))
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::setup(Connection::open_in_memory()?, None)
    }

    fn setup(mut conn: Connection, path: Option<PathBuf>) -> Result<Store, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Sorts and temporary tables stay in memory, never in a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate::migrate(&mut conn)?;
        Ok(Store { conn, path })
    }

    /// For bulk analysis only: commits stop waiting for the disk (`synchronous = NORMAL`;
    /// in WAL mode the database stays consistent after a crash, but the last batches before
    /// a power cut may be lost). Predictions can be recomputed, and a re-run resumes, so
    /// `analyze` trades that for speed; feedback never uses this connection setting.
    pub fn set_bulk_writes(&self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    /// The database file, if not in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The raw connection, for queries that have no method yet.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Records the start of a run.
    pub fn begin_run(&self, inputs: &[String]) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO runs (started_at, inputs) VALUES (?1, ?2)",
            params![now(), serde_json::to_string(inputs).unwrap_or_default()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the end of a run.
    pub fn finish_run(
        &self,
        run_id: i64,
        items: u64,
        failures: u64,
        status: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE runs SET finished_at = ?1, items = ?2, failures = ?3, status = ?4 WHERE run_id = ?5",
            params![now(), items as i64, failures as i64, status, run_id],
        )?;
        Ok(())
    }

    /// Records an input that could not be analysed.
    pub fn record_failure(
        &self,
        run_id: i64,
        source: &str,
        locator: Option<&str>,
        code: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO failures (run_id, source, locator, code, reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![run_id, source, locator, code, reason, now()],
        )?;
        Ok(())
    }

    /// Stores items, where they were seen and their predictions in one transaction.
    /// Returns the ids of the items new to this run (an item met again in the same run, in
    /// another place or through another backbone, is only a new sighting).
    pub fn save_batch(
        &mut self,
        run_id: i64,
        items: &[NewItem],
        predictions: &[NewPrediction],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let ts = now();
        let tx = self.conn.transaction()?;
        let mut fresh = std::collections::HashSet::new();
        {
            let mut seen_in_run = tx.prepare_cached(SEEN_IN_RUN)?;
            for it in items {
                if !fresh.contains(&it.item_id)
                    && seen_in_run
                        .query_row(params![it.item_id, run_id], |_| Ok(()))
                        .optional()?
                        .is_none()
                {
                    fresh.insert(it.item_id.clone());
                }
            }
            let mut put_item = tx.prepare_cached(
                "INSERT INTO items (item_id, kind, source, locator, width, height, geometry, content, content_type, first_seen, last_seen, language)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)
                 ON CONFLICT (item_id) DO UPDATE SET source = excluded.source, locator = excluded.locator,
                   geometry = COALESCE(excluded.geometry, items.geometry), last_seen = excluded.last_seen,
                   language = COALESCE(excluded.language, items.language)",
            )?;
            for it in items {
                put_item.execute(params![
                    it.item_id,
                    it.kind,
                    it.source,
                    it.locator,
                    it.size.map(|s| s.0),
                    it.size.map(|s| s.1),
                    it.geometry.as_ref().map(|g| g.to_string()),
                    it.content,
                    it.content_type,
                    ts,
                    it.language()
                ])?;
                put_sighting(&tx, run_id, &it.sighting(), &ts)?;
            }
            let mut put_pred = tx.prepare_cached(
                "INSERT INTO predictions (item_id, model_name, model_version, run_id, labels, top_label, top_score, scores, embedding, truncated, preprocess_ms, infer_ms, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (item_id, model_name, model_version) DO UPDATE SET run_id = excluded.run_id,
                   labels = excluded.labels, top_label = excluded.top_label, top_score = excluded.top_score,
                   scores = excluded.scores, embedding = excluded.embedding, truncated = excluded.truncated,
                   preprocess_ms = excluded.preprocess_ms, infer_ms = excluded.infer_ms, created_at = excluded.created_at",
            )?;
            for p in predictions {
                put_pred.execute(params![
                    p.item_id,
                    p.model_name,
                    p.model_version,
                    run_id,
                    serde_json::to_string(&p.labels).unwrap_or_default(),
                    p.top_label,
                    p.top_score as f64,
                    serde_json::to_string(&p.scores).unwrap_or_default(),
                    embedding_to_f16(&p.embedding),
                    p.truncated,
                    p.preprocess_ms,
                    p.infer_ms,
                    ts
                ])?;
            }
        }
        tx.commit()?;
        Ok(fresh)
    }

    /// Whether an item already has a prediction from this model version.
    pub fn has_prediction(
        &self,
        item_id: &str,
        model_name: &str,
        model_version: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM predictions WHERE item_id = ?1 AND model_name = ?2 AND model_version = ?3")?
            .query_row(params![item_id, model_name, model_version], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Marks existing predictions as seen by this run (re-runs that skip inference), and
    /// records where their item was seen. Returns how many distinct items had not been
    /// seen by this run before (the others were met earlier in the same run).
    pub fn touch_predictions(
        &mut self,
        run_id: i64,
        keys: &[(String, String, String)],
        sightings: &[Sighting],
    ) -> Result<u64, StoreError> {
        let ts = now();
        let tx = self.conn.transaction()?;
        let mut earlier = std::collections::HashSet::new();
        {
            let mut st = tx.prepare_cached(
                "UPDATE predictions SET run_id = ?1 WHERE item_id = ?2 AND model_name = ?3 AND model_version = ?4
                 AND run_id IS NOT ?1",
            )?;
            for (item, name, version) in keys {
                if st.execute(params![run_id, item, name, version])? > 0 {
                    earlier.insert(item.as_str());
                }
            }
            for s in sightings {
                put_sighting(&tx, run_id, s, &ts)?;
            }
        }
        tx.commit()?;
        Ok(earlier.len() as u64)
    }

    /// How many places (sightings) this run saw items in.
    pub fn run_sightings(&self, run_id: i64) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM item_sightings WHERE last_run_id = ?1",
            [run_id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// The most recent run, if any.
    pub fn last_run_id(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT MAX(run_id) FROM runs", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod plan_tests {
    /// The per-item lookup of `save_batch` searches by item, not by run (see [`super::SEEN_IN_RUN`]).
    #[test]
    fn seen_in_run_searches_by_item_not_by_run() {
        let store = super::Store::open_in_memory().expect("store");
        let plan: Vec<String> = store
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {}", super::SEEN_IN_RUN))
            .expect("plan")
            .query_map(rusqlite::params!["x", 1], |r| r.get::<_, String>(3))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        let plan = plan.join("; ");
        assert!(plan.contains("(item_id=?"), "{plan}");
        assert!(!plan.contains("predictions_run"), "{plan}");
    }
}
