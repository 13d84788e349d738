//! The server's storage, behind a trait so the PostgreSQL store of the scale-out issue can
//! sit beside the embedded SQLite default. Exactly-once ingest is a database constraint
//! (the feedback id is the primary key), not an in-process lock, so it also holds with
//! several server processes.

use crate::protocol::{FeedbackRecord, Refused};
use crate::store::{now, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

/// Migrations of the server database.
pub const SERVER_MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "server/0001_devices_feedback.sql",
        include_str!("../../migrations/server/0001_devices_feedback.sql"),
    ),
    (
        2,
        "server/0002_training.sql",
        include_str!("../../migrations/server/0002_training.sql"),
    ),
    (
        3,
        "server/0003_device_models.sql",
        include_str!("../../migrations/server/0003_device_models.sql"),
    ),
    (
        4,
        "server/0004_drift.sql",
        include_str!("../../migrations/server/0004_drift.sql"),
    ),
    (
        5,
        "server/0005_dashboard.sql",
        include_str!("../../migrations/server/0005_dashboard.sql"),
    ),
];

/// Errors of the server store.
#[derive(Debug, thiserror::Error)]
pub enum ServerStoreError {
    /// Database failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A device name is taken.
    #[error("a device named {0:?} exists already")]
    NameTaken(String),
    /// No such device.
    #[error("no device {0:?}")]
    NoDevice(String),
    /// The enrollment code is wrong, used or expired.
    #[error("the enrollment code is unknown, already used or expired; ask the operator for a new one (outpost-server devices add)")]
    BadCode,
}

impl From<rusqlite::Error> for ServerStoreError {
    fn from(e: rusqlite::Error) -> Self {
        ServerStoreError::Store(StoreError::Sqlite(e))
    }
}

/// A device as the server knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Device {
    /// Id.
    pub device_id: String,
    /// Name.
    pub name: String,
    /// Group.
    pub group: String,
    /// Ed25519 public key, once enrolled.
    #[serde(skip)]
    pub public_key: Option<Vec<u8>>,
    /// When it enrolled.
    pub enrolled_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Last authenticated request.
    pub last_seen: Option<String>,
    /// Feedback stored from it.
    pub feedback: i64,
    /// Feedback waiting in its outbox when it last reported (`None`: never reported).
    pub pending_feedback: Option<i64>,
}

/// A device's model as it last reported it, with its most recent failure of that model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceModelRow {
    /// Device id.
    pub device_id: String,
    /// Model name.
    pub model: String,
    /// Version serving on the device.
    pub active_version: Option<String>,
    /// Version pinned on the device.
    pub pinned: Option<String>,
    /// When the device reported it (server clock).
    pub reported_at: String,
    /// Refused or rolled-back versions, newest first: (version, kind, reason, at).
    pub failures: Vec<(Option<String>, String, String, String)>,
}

/// What an ingest did.
#[derive(Debug, Clone, Default)]
pub struct IngestResult {
    /// Ids stored now or before (acknowledged).
    pub acked: Vec<String>,
    /// How many were already stored.
    pub duplicates: usize,
    /// Refused records.
    pub refused: Vec<Refused>,
}

/// Where a record came from.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// Over HTTP from the device.
    Http,
    /// Imported from a USB file.
    Usb,
}

/// The server's storage operations.
pub trait ServerStore: Send + Sync {
    /// Registers a device awaiting enrollment with the sha256 of its one-time code.
    fn add_device(
        &self,
        name: &str,
        group: &str,
        code_sha256: &str,
        expires_at: &str,
    ) -> Result<Device, ServerStoreError>;
    /// Enrolls the device whose code hash matches, storing its public key; clears the code.
    fn enroll(&self, code_sha256: &str, public_key: &[u8]) -> Result<Device, ServerStoreError>;
    /// A device by id.
    fn device(&self, device_id: &str) -> Result<Option<Device>, ServerStoreError>;
    /// Every device.
    fn devices(&self) -> Result<Vec<Device>, ServerStoreError>;
    /// Revokes a device (by name or id).
    fn revoke(&self, name_or_id: &str) -> Result<Device, ServerStoreError>;
    /// Records a nonce; false if it was seen before (a replay).
    fn use_nonce(
        &self,
        device_id: &str,
        nonce: &str,
        expires_at: i64,
        now_unix: i64,
    ) -> Result<bool, ServerStoreError>;
    /// Marks a device as seen now.
    fn touch(&self, device_id: &str) -> Result<(), ServerStoreError>;
    /// Records which model versions a device runs and the updates it refused or rolled
    /// back (see [`crate::protocol::DeviceModelsReport`]).
    fn record_device_models(
        &self,
        device_id: &str,
        report: &crate::protocol::DeviceModelsReport,
    ) -> Result<(), ServerStoreError>;
    /// What every device last reported: per device, its models and its latest failures.
    fn device_models(&self) -> Result<Vec<DeviceModelRow>, ServerStoreError>;
    /// Stores each record once.
    fn ingest(
        &self,
        device_id: &str,
        records: &[FeedbackRecord],
        via: Via,
    ) -> Result<IngestResult, ServerStoreError>;
    /// Number of stored feedback records.
    fn feedback_count(&self) -> Result<i64, ServerStoreError>;
    /// Appends to the audit log.
    fn audit(&self, actor: &str, action: &str, detail: &str) -> Result<(), ServerStoreError>;
    /// The newest audit records, newest first.
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, ServerStoreError>;

    /// Models that have feedback.
    fn feedback_models(&self) -> Result<Vec<String>, ServerStoreError>;
    /// Feedback rows received for `model` (every row, superseded ones included): the
    /// automatic trigger compares it with the last run's `feedback_seen`.
    fn model_feedback_count(&self, model: &str) -> Result<i64, ServerStoreError>;
    /// The decisions to train on for `model`: per device and item the latest decision,
    /// without decisions a later one supersedes, with the split each was given (if any).
    fn training_feedback(&self, model: &str) -> Result<Vec<TrainingRow>, ServerStoreError>;
    /// Records splits for decisions that had none. Existing splits never change.
    fn save_splits(&self, splits: &[(String, Split)]) -> Result<(), ServerStoreError>;
    /// Starts a training run record; returns its id.
    fn start_run(
        &self,
        model: &str,
        base_version: &str,
        trigger: Trigger,
        feedback_seen: i64,
    ) -> Result<i64, ServerStoreError>;
    /// Completes a run record.
    fn finish_run(&self, run_id: i64, end: &RunEnd) -> Result<(), ServerStoreError>;
    /// Marks the run of a candidate as published (by an operator, after it was held).
    fn mark_published(
        &self,
        model: &str,
        version: &str,
        reason: &str,
    ) -> Result<(), ServerStoreError>;
    /// Training runs, newest first (all models if `model` is `None`).
    fn runs(&self, model: Option<&str>) -> Result<Vec<TrainingRun>, ServerStoreError>;

    /// Stores drift windows a device sent (each window id once); returns how many were new.
    fn store_drift(
        &self,
        device_id: &str,
        windows: &[(i64, crate::drift::DriftWindow)],
    ) -> Result<usize, ServerStoreError>;
    /// Per device and model, the latest drift window and since when its state holds.
    fn drift_latest(&self) -> Result<Vec<DeviceDrift>, ServerStoreError>;

    // The operators' dashboard.

    /// Creates an operator account or replaces its password hash; true if it was created.
    fn set_admin(&self, name: &str, password_hash: &str) -> Result<bool, ServerStoreError>;
    /// Deletes an operator account and its sessions; false if there was none.
    fn remove_admin(&self, name: &str) -> Result<bool, ServerStoreError>;
    /// The password hash (PHC string) of an operator account.
    fn admin_password_hash(&self, name: &str) -> Result<Option<String>, ServerStoreError>;
    /// Stores a sign-in session (by the sha256 of its cookie value).
    fn create_session(
        &self,
        token_sha256: &str,
        admin: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), ServerStoreError>;
    /// A live session; expired ones are deleted on the way.
    fn session(
        &self,
        token_sha256: &str,
        now_unix: i64,
    ) -> Result<Option<AdminSession>, ServerStoreError>;
    /// Ends a session (sign out).
    fn delete_session(&self, token_sha256: &str) -> Result<(), ServerStoreError>;
    /// Feedback received per day (server clock), model and label.
    fn feedback_per_day(&self) -> Result<Vec<FeedbackDay>, ServerStoreError>;
    /// Labels reviewers introduced in the field (marked as new), per model.
    fn field_labels(&self) -> Result<Vec<FieldLabel>, ServerStoreError>;
    /// When each feedback row of `model` was received (server clock), oldest first.
    fn feedback_received(&self, model: &str) -> Result<Vec<String>, ServerStoreError>;
    /// The newest feedback of a device, without its content (`limit` rows).
    fn device_feedback(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<FeedbackSummary>, ServerStoreError>;
    /// One feedback row with its raw content, for an audited "show item" request.
    fn feedback_item(&self, feedback_id: &str) -> Result<Option<FeedbackItem>, ServerStoreError>;
    /// The drift windows of one device, newest first (`limit` rows).
    fn device_drift(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::drift::DriftWindow>, ServerStoreError>;
    /// Every refused or rolled-back update a device reported, newest first:
    /// (model, version, kind, reason, at).
    fn device_failures(&self, device_id: &str) -> Result<Vec<ModelFailureRow>, ServerStoreError>;
}

/// A signed-in operator's session.
#[derive(Debug, Clone)]
pub struct AdminSession {
    /// The operator's name.
    pub admin: String,
    /// The token the page's forms must carry.
    pub csrf: String,
}

/// Feedback rows received on one day for one label of one model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedbackDay {
    /// `YYYY-MM-DD` (server clock, UTC).
    pub day: String,
    /// Model.
    pub model: String,
    /// Label given.
    pub label: String,
    /// Rows.
    pub count: i64,
}

/// A label reviewers introduced in the field.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FieldLabel {
    /// Model.
    pub model: String,
    /// The new label.
    pub label: String,
    /// Feedback rows giving it.
    pub count: i64,
    /// Devices that gave it.
    pub devices: i64,
    /// First received (server clock).
    pub first_at: String,
}

/// A feedback row as the dashboard lists it: no embedding, no content.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedbackSummary {
    /// Id.
    pub feedback_id: String,
    /// Model.
    pub model: String,
    /// Version the reviewer saw.
    pub model_version: String,
    /// `image` or `text`.
    pub kind: String,
    /// `confirm` or `correct`.
    pub action: String,
    /// Labels given.
    pub labels: Vec<String>,
    /// Received (server clock).
    pub received_at: String,
    /// Whether raw content travelled with it.
    pub has_content: bool,
}

/// A feedback row with its raw content.
#[derive(Debug, Clone)]
pub struct FeedbackItem {
    /// The row without content.
    pub summary: FeedbackSummary,
    /// The device that sent it.
    pub device_id: String,
    /// The item's content hash.
    pub item_id: String,
    /// Who decided.
    pub annotator: String,
    /// When (device clock).
    pub created_at: String,
    /// Raw tile or report, if it travelled.
    pub content: Option<Vec<u8>>,
    /// Its content type.
    pub content_type: Option<String>,
}

/// A refused or rolled-back update as a device reported it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelFailureRow {
    /// Model (empty when the metadata itself was refused).
    pub model: String,
    /// Version.
    pub version: Option<String>,
    /// `refused` or `rolled_back`.
    pub kind: String,
    /// Why.
    pub reason: String,
    /// When (device clock).
    pub at: String,
}

/// A device's latest drift state for one model, as the server shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceDrift {
    /// Device name.
    pub device: String,
    /// Its group.
    pub group: String,
    /// The latest window.
    pub latest: crate::drift::DriftWindow,
    /// Start of the first window of the current run of windows in the latest state.
    pub since: String,
    /// Windows received from this device for this model.
    pub windows: i64,
}

/// An operator action or automatic decision, as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRecord {
    /// Sequence number.
    pub audit_id: i64,
    /// When (server clock, RFC 3339).
    pub at: String,
    /// `operator`, `trainer` or a device.
    pub actor: String,
    /// The command or event.
    pub action: String,
    /// What it did.
    pub detail: String,
}

/// Whether a decision is trained on or held out for evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Used for training.
    Train,
    /// Kept out of training; candidate and current model are compared on it.
    Holdout,
}

impl Split {
    /// The SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Holdout => "holdout",
        }
    }
}

/// A field decision as training sees it.
#[derive(Debug, Clone)]
pub struct TrainingRow {
    /// Feedback id.
    pub feedback_id: String,
    /// The device that sent it (a stratum of the held-out split).
    pub device_id: String,
    /// Labels given.
    pub labels: Vec<String>,
    /// The item's embedding, little-endian float16.
    pub embedding_f16: Vec<u8>,
    /// The split given earlier, if any.
    pub split: Option<Split>,
}

/// What started a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `outpost-server train`.
    Operator,
    /// Enough new feedback arrived while serving.
    Auto,
}

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still running (or the process died: see `finished_at`).
    Running,
    /// The candidate passed the gate and was published.
    Published,
    /// The candidate regressed (or publishing was not asked for): kept for an operator.
    Held,
    /// Training could not complete.
    Failed,
}

impl RunStatus {
    fn parse(s: &str) -> RunStatus {
        match s {
            "published" => RunStatus::Published,
            "held" => RunStatus::Held,
            "failed" => RunStatus::Failed,
            _ => RunStatus::Running,
        }
    }
    /// The SQL spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Published => "published",
            RunStatus::Held => "held",
            RunStatus::Failed => "failed",
        }
    }
}

/// The end of a run, as recorded.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// Outcome.
    pub status: RunStatus,
    /// Why (held or failed), or what was published.
    pub reason: String,
    /// The candidate's version, if one was built.
    pub candidate_version: Option<String>,
    /// Evaluation report (JSON).
    pub report: Option<String>,
    /// Where the candidate bundle is.
    pub bundle_dir: Option<String>,
}

/// A training run, as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainingRun {
    /// Id.
    pub run_id: i64,
    /// Model.
    pub model_name: String,
    /// The release it started from.
    pub base_version: String,
    /// The candidate it built.
    pub candidate_version: Option<String>,
    /// What started it.
    pub trigger: String,
    /// Outcome.
    pub status: RunStatus,
    /// Why.
    pub reason: String,
    /// Feedback rows for the model when it started.
    pub feedback_seen: i64,
    /// Evaluation report (JSON).
    pub report: Option<String>,
    /// Candidate bundle folder.
    pub bundle_dir: Option<String>,
    /// Start (server clock).
    pub started_at: String,
    /// End.
    pub finished_at: Option<String>,
}

/// The embedded default: one SQLite file.
pub struct SqliteServerStore {
    conn: Mutex<Connection>,
}

impl SqliteServerStore {
    /// Opens (creating) the database and applies the server migrations.
    pub fn open(path: &Path) -> Result<SqliteServerStore, ServerStoreError> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        let mut conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        crate::store::migrate::migrate_with(&mut conn, SERVER_MIGRATIONS)?;
        Ok(SqliteServerStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const DEVICE_COLUMNS: &str =
    "d.device_id, d.name, d.device_group, d.public_key, d.enrolled_at, d.revoked_at, d.last_seen,
    (SELECT COUNT(*) FROM feedback f WHERE f.device_id = d.device_id), d.pending_feedback";

fn row_to_device(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        device_id: r.get(0)?,
        name: r.get(1)?,
        group: r.get(2)?,
        public_key: r.get(3)?,
        enrolled_at: r.get(4)?,
        revoked_at: r.get(5)?,
        last_seen: r.get(6)?,
        feedback: r.get(7)?,
        pending_feedback: r.get(8)?,
    })
}

fn get_device(
    conn: &Connection,
    where_: &str,
    arg: &str,
) -> Result<Option<Device>, ServerStoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE {where_}"),
            [arg],
            row_to_device,
        )
        .optional()?)
}

impl ServerStore for SqliteServerStore {
    fn add_device(
        &self,
        name: &str,
        group: &str,
        code_sha256: &str,
        expires_at: &str,
    ) -> Result<Device, ServerStoreError> {
        let conn = self.conn();
        let id = uuid::Uuid::new_v4().to_string();
        let r = conn.execute(
            "INSERT INTO devices (device_id, name, device_group, enrollment_code_sha256, enrollment_expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, name, group, code_sha256, expires_at, now()],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(ServerStoreError::NameTaken(name.into()))
            }
            other => {
                other?;
            }
        }
        get_device(&conn, "d.device_id = ?1", &id)?.ok_or(ServerStoreError::NoDevice(id))
    }

    fn enroll(&self, code_sha256: &str, public_key: &[u8]) -> Result<Device, ServerStoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let id: Option<String> = tx
            .query_row(
                "SELECT device_id FROM devices WHERE enrollment_code_sha256 = ?1 AND enrollment_expires_at > ?2 AND revoked_at IS NULL",
                params![code_sha256, now()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Err(ServerStoreError::BadCode);
        };
        tx.execute(
            "UPDATE devices SET public_key = ?1, enrolled_at = ?2, enrollment_code_sha256 = NULL, last_seen = ?2 WHERE device_id = ?3",
            params![public_key, now(), id],
        )?;
        let d = get_device(&tx, "d.device_id = ?1", &id)?
            .ok_or_else(|| ServerStoreError::NoDevice(id.clone()))?;
        tx.commit()?;
        Ok(d)
    }

    fn device(&self, device_id: &str) -> Result<Option<Device>, ServerStoreError> {
        get_device(&self.conn(), "d.device_id = ?1", device_id)
    }

    fn devices(&self) -> Result<Vec<Device>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d ORDER BY d.name"
        ))?;
        let rows = st.query_map([], row_to_device)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke(&self, name_or_id: &str) -> Result<Device, ServerStoreError> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?1), enrollment_code_sha256 = NULL WHERE name = ?2 OR device_id = ?2",
            params![now(), name_or_id],
        )?;
        if n == 0 {
            return Err(ServerStoreError::NoDevice(name_or_id.into()));
        }
        get_device(&conn, "d.name = ?1 OR d.device_id = ?1", name_or_id)?
            .ok_or_else(|| ServerStoreError::NoDevice(name_or_id.into()))
    }

    fn use_nonce(
        &self,
        device_id: &str,
        nonce: &str,
        expires_at: i64,
        now_unix: i64,
    ) -> Result<bool, ServerStoreError> {
        let conn = self.conn();
        conn.execute("DELETE FROM nonces WHERE expires_at < ?1", [now_unix])?;
        let n = conn.execute(
            "INSERT OR IGNORE INTO nonces (device_id, nonce, expires_at) VALUES (?1, ?2, ?3)",
            params![device_id, nonce, expires_at],
        )?;
        Ok(n == 1)
    }

    fn record_device_models(
        &self,
        device_id: &str,
        report: &crate::protocol::DeviceModelsReport,
    ) -> Result<(), ServerStoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let at = now();
        for m in &report.models {
            tx.execute(
                "INSERT INTO device_models (device_id, model, active_version, pinned, installed, reported_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device_id, model) DO UPDATE SET active_version = excluded.active_version,
                   pinned = excluded.pinned, installed = excluded.installed, reported_at = excluded.reported_at",
                params![
                    device_id,
                    m.model,
                    m.active_version,
                    m.pinned,
                    serde_json::to_string(&m.installed).unwrap_or_default(),
                    at
                ],
            )?;
        }
        if let Some(p) = report.pending_feedback {
            tx.execute(
                "UPDATE devices SET pending_feedback = ?1, pending_reported_at = ?2 WHERE device_id = ?3",
                params![p.max(0), at, device_id],
            )?;
        }
        for f in &report.failures {
            tx.execute(
                "INSERT INTO device_model_failures (device_id, model, version, kind, reason, at, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![device_id, f.model, f.version, f.kind, f.reason, f.at, at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn device_models(&self) -> Result<Vec<DeviceModelRow>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT device_id, model, active_version, pinned, reported_at FROM device_models
             ORDER BY device_id, model",
        )?;
        let mut rows: Vec<DeviceModelRow> = st
            .query_map([], |r| {
                Ok(DeviceModelRow {
                    device_id: r.get(0)?,
                    model: r.get(1)?,
                    active_version: r.get(2)?,
                    pinned: r.get(3)?,
                    reported_at: r.get(4)?,
                    failures: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut fs = conn.prepare(
            "SELECT version, kind, reason, at FROM device_model_failures
             WHERE device_id = ?1 AND (model = ?2 OR model = '') ORDER BY failure_id DESC LIMIT 5",
        )?;
        for row in &mut rows {
            row.failures = fs
                .query_map(params![row.device_id, row.model], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
        }
        Ok(rows)
    }

    fn touch(&self, device_id: &str) -> Result<(), ServerStoreError> {
        self.conn().execute(
            "UPDATE devices SET last_seen = ?1 WHERE device_id = ?2",
            params![now(), device_id],
        )?;
        Ok(())
    }

    fn ingest(
        &self,
        device_id: &str,
        records: &[FeedbackRecord],
        via: Via,
    ) -> Result<IngestResult, ServerStoreError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut out = IngestResult::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO feedback (feedback_id, device_id, item_id, kind, model_name, model_version, action, labels, new_labels,
                                       annotator, created_at, supersedes, embedding, content, content_type, received_at, received_via)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
                 ON CONFLICT (feedback_id) DO NOTHING",
            )?;
            let mut owner =
                tx.prepare_cached("SELECT device_id FROM feedback WHERE feedback_id = ?1")?;
            let ts = now();
            for r in records {
                let refuse = |reason: &str| Refused {
                    feedback_id: r.feedback_id.clone(),
                    reason: reason.to_string(),
                };
                if uuid::Uuid::parse_str(&r.feedback_id).is_err() {
                    out.refused.push(refuse("feedback_id is not a UUID"));
                    continue;
                }
                if r.labels.is_empty() {
                    out.refused.push(refuse("no labels"));
                    continue;
                }
                let Ok(embedding) = b64.decode(&r.embedding_f16) else {
                    out.refused.push(refuse("embedding is not base64"));
                    continue;
                };
                let content = match &r.content {
                    Some(c) => match b64.decode(c) {
                        Ok(b) => Some(b),
                        Err(_) => {
                            out.refused.push(refuse("content is not base64"));
                            continue;
                        }
                    },
                    None => None,
                };
                let n = insert.execute(params![
                    r.feedback_id,
                    device_id,
                    r.item_id,
                    r.kind,
                    r.model_name,
                    r.model_version,
                    r.action,
                    serde_json::to_string(&r.labels).unwrap_or_default(),
                    serde_json::to_string(&r.new_labels).unwrap_or_default(),
                    r.annotator,
                    r.created_at,
                    r.supersedes,
                    embedding,
                    content,
                    r.content_type,
                    ts,
                    match via {
                        Via::Http => "http",
                        Via::Usb => "usb",
                    }
                ])?;
                if n == 0 {
                    // Already stored: acknowledge again, unless another device owns that id.
                    let who: String = owner.query_row([&r.feedback_id], |row| row.get(0))?;
                    if who != device_id {
                        out.refused
                            .push(refuse("this feedback id belongs to another device"));
                        continue;
                    }
                    out.duplicates += 1;
                }
                out.acked.push(r.feedback_id.clone());
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn feedback_count(&self) -> Result<i64, ServerStoreError> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM feedback", [], |r| r.get(0))?)
    }

    fn audit(&self, actor: &str, action: &str, detail: &str) -> Result<(), ServerStoreError> {
        self.conn().execute(
            "INSERT INTO audit (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
            params![now(), actor, action, detail],
        )?;
        Ok(())
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT audit_id, at, actor, action, detail FROM audit ORDER BY audit_id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(AuditRecord {
                audit_id: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn feedback_models(&self) -> Result<Vec<String>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT DISTINCT model_name FROM feedback ORDER BY 1")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn model_feedback_count(&self, model: &str) -> Result<i64, ServerStoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM feedback WHERE model_name = ?1",
            [model],
            |r| r.get(0),
        )?)
    }

    fn training_feedback(&self, model: &str) -> Result<Vec<TrainingRow>, ServerStoreError> {
        let conn = self.conn();
        // Latest decision per device and item (by the reviewer's time, then arrival), and
        // never one that a later decision names in `supersedes`.
        let mut st = conn.prepare(
            "SELECT f.feedback_id, f.device_id, f.labels, f.embedding, s.split
             FROM feedback f
             LEFT JOIN feedback_split s ON s.feedback_id = f.feedback_id
             WHERE f.model_name = ?1
               AND NOT EXISTS (SELECT 1 FROM feedback l WHERE l.supersedes = f.feedback_id)
               AND NOT EXISTS (SELECT 1 FROM feedback n
                               WHERE n.model_name = f.model_name AND n.device_id = f.device_id
                                 AND n.item_id = f.item_id
                                 AND (n.created_at > f.created_at
                                      OR (n.created_at = f.created_at AND n.rowid > f.rowid)))
             ORDER BY f.rowid",
        )?;
        let rows = st.query_map([model], |r| {
            let labels: String = r.get(2)?;
            let split: Option<String> = r.get(4)?;
            Ok(TrainingRow {
                feedback_id: r.get(0)?,
                device_id: r.get(1)?,
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                embedding_f16: r.get(3)?,
                split: split.map(|s| {
                    if s == "holdout" {
                        Split::Holdout
                    } else {
                        Split::Train
                    }
                }),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn save_splits(&self, splits: &[(String, Split)]) -> Result<(), ServerStoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO feedback_split (feedback_id, split, assigned_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (feedback_id) DO NOTHING",
            )?;
            let at = now();
            for (id, split) in splits {
                st.execute(params![id, split.as_str(), at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn start_run(
        &self,
        model: &str,
        base_version: &str,
        trigger: Trigger,
        feedback_seen: i64,
    ) -> Result<i64, ServerStoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO training_runs (model_name, base_version, trigger, status, feedback_seen, started_at)
             VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
            params![
                model,
                base_version,
                match trigger {
                    Trigger::Operator => "operator",
                    Trigger::Auto => "auto",
                },
                feedback_seen,
                now()
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn finish_run(&self, run_id: i64, end: &RunEnd) -> Result<(), ServerStoreError> {
        self.conn().execute(
            "UPDATE training_runs SET status = ?2, reason = ?3, candidate_version = ?4, report = ?5,
                    bundle_dir = ?6, finished_at = ?7
             WHERE run_id = ?1",
            params![
                run_id,
                end.status.as_str(),
                end.reason,
                end.candidate_version,
                end.report,
                end.bundle_dir,
                now()
            ],
        )?;
        Ok(())
    }

    fn mark_published(
        &self,
        model: &str,
        version: &str,
        reason: &str,
    ) -> Result<(), ServerStoreError> {
        self.conn().execute(
            "UPDATE training_runs SET status = 'published', reason = reason || ?3
             WHERE model_name = ?1 AND candidate_version = ?2",
            params![model, version, format!(" | {reason}")],
        )?;
        Ok(())
    }

    fn runs(&self, model: Option<&str>) -> Result<Vec<TrainingRun>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT run_id, model_name, base_version, candidate_version, trigger, status, reason,
                    feedback_seen, report, bundle_dir, started_at, finished_at
             FROM training_runs WHERE ?1 IS NULL OR model_name = ?1 ORDER BY run_id DESC",
        )?;
        let rows = st.query_map([model], |r| {
            let status: String = r.get(5)?;
            Ok(TrainingRun {
                run_id: r.get(0)?,
                model_name: r.get(1)?,
                base_version: r.get(2)?,
                candidate_version: r.get(3)?,
                trigger: r.get(4)?,
                status: RunStatus::parse(&status),
                reason: r.get(6)?,
                feedback_seen: r.get(7)?,
                report: r.get(8)?,
                bundle_dir: r.get(9)?,
                started_at: r.get(10)?,
                finished_at: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn store_drift(
        &self,
        device_id: &str,
        windows: &[(i64, crate::drift::DriftWindow)],
    ) -> Result<usize, ServerStoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO drift_windows (device_id, window_id, model_name, model_version, items, novel, score,
                     state, top_score_psi, label_psi, novel_labels, novel_folders, started_at, ended_at, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (device_id, window_id) DO NOTHING",
            )?;
            let at = now();
            for (id, w) in windows {
                n += st.execute(params![
                    device_id,
                    id,
                    w.model_name,
                    w.model_version,
                    w.items as i64,
                    w.novel as i64,
                    w.score,
                    w.state.as_str(),
                    w.top_score_psi,
                    w.label_psi,
                    serde_json::to_string(&w.novel_labels).unwrap_or_default(),
                    serde_json::to_string(&w.novel_folders).unwrap_or_default(),
                    w.started_at,
                    w.ended_at,
                    at
                ])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    fn drift_latest(&self) -> Result<Vec<DeviceDrift>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT d.name, d.device_group, w.model_name, w.model_version, w.items, w.novel, w.score, w.state,
                    w.top_score_psi, w.label_psi, w.novel_labels, w.novel_folders, w.started_at, w.ended_at,
                    w.device_id
             FROM drift_windows w JOIN devices d ON d.device_id = w.device_id
             ORDER BY d.name, w.model_name, w.window_id DESC",
        )?;
        let rows = st.query_map([], |r| {
            let labels: String = r.get(10)?;
            let folders: String = r.get(11)?;
            let state: String = r.get(7)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                crate::drift::DriftWindow {
                    model_name: r.get(2)?,
                    model_version: r.get(3)?,
                    items: r.get::<_, i64>(4)? as usize,
                    novel: r.get::<_, i64>(5)? as usize,
                    score: r.get(6)?,
                    state: crate::drift::DriftState::parse(&state),
                    top_score_psi: r.get(8)?,
                    label_psi: r.get(9)?,
                    novel_labels: serde_json::from_str(&labels).unwrap_or_default(),
                    novel_folders: serde_json::from_str(&folders).unwrap_or_default(),
                    started_at: r.get(12)?,
                    ended_at: r.get(13)?,
                },
            ))
        })?;
        let mut out: Vec<DeviceDrift> = Vec::new();
        let mut run_open = false;
        for row in rows {
            let (device, group, w) = row?;
            match out.last_mut() {
                Some(last) if last.device == device && last.latest.model_name == w.model_name => {
                    last.windows += 1;
                    if run_open && w.state == last.latest.state {
                        last.since = w.started_at.clone();
                    } else {
                        run_open = false;
                    }
                }
                _ => {
                    run_open = true;
                    out.push(DeviceDrift {
                        device,
                        group,
                        since: w.started_at.clone(),
                        latest: w,
                        windows: 1,
                    });
                }
            }
        }
        Ok(out)
    }

    fn set_admin(&self, name: &str, password_hash: &str) -> Result<bool, ServerStoreError> {
        let conn = self.conn();
        let at = now();
        let existed: bool = conn
            .query_row("SELECT 1 FROM admins WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some();
        conn.execute(
            "INSERT INTO admins (name, password_hash, created_at, password_set_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
               password_set_at = excluded.password_set_at",
            params![name, password_hash, at],
        )?;
        if existed {
            // A new password ends every session signed in with the old one.
            conn.execute("DELETE FROM admin_sessions WHERE admin = ?1", [name])?;
        }
        Ok(!existed)
    }

    fn remove_admin(&self, name: &str) -> Result<bool, ServerStoreError> {
        let conn = self.conn();
        conn.execute("DELETE FROM admin_sessions WHERE admin = ?1", [name])?;
        Ok(conn.execute("DELETE FROM admins WHERE name = ?1", [name])? == 1)
    }

    fn admin_password_hash(&self, name: &str) -> Result<Option<String>, ServerStoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT password_hash FROM admins WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn create_session(
        &self,
        token_sha256: &str,
        admin: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), ServerStoreError> {
        self.conn().execute(
            "INSERT INTO admin_sessions (token_sha256, admin, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_sha256, admin, csrf, now(), expires_at],
        )?;
        Ok(())
    }

    fn session(
        &self,
        token_sha256: &str,
        now_unix: i64,
    ) -> Result<Option<AdminSession>, ServerStoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM admin_sessions WHERE expires_at < ?1",
            [now_unix],
        )?;
        Ok(conn
            .query_row(
                "SELECT admin, csrf FROM admin_sessions WHERE token_sha256 = ?1",
                [token_sha256],
                |r| {
                    Ok(AdminSession {
                        admin: r.get(0)?,
                        csrf: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn delete_session(&self, token_sha256: &str) -> Result<(), ServerStoreError> {
        self.conn().execute(
            "DELETE FROM admin_sessions WHERE token_sha256 = ?1",
            [token_sha256],
        )?;
        Ok(())
    }

    fn feedback_per_day(&self) -> Result<Vec<FeedbackDay>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT substr(received_at, 1, 10), model_name, labels, COUNT(*) FROM feedback
             GROUP BY 1, 2, 3 ORDER BY 1, 2",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out: std::collections::BTreeMap<(String, String, String), i64> = Default::default();
        for row in rows {
            let (day, model, labels, n) = row?;
            let labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
            for l in labels {
                *out.entry((day.clone(), model.clone(), l)).or_default() += n;
            }
        }
        Ok(out
            .into_iter()
            .map(|((day, model, label), count)| FeedbackDay {
                day,
                model,
                label,
                count,
            })
            .collect())
    }

    fn field_labels(&self) -> Result<Vec<FieldLabel>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT model_name, new_labels, device_id, received_at FROM feedback
             WHERE new_labels != '[]' ORDER BY received_at",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        type Acc = (i64, std::collections::BTreeSet<String>, String);
        let mut out: std::collections::BTreeMap<(String, String), Acc> = Default::default();
        for row in rows {
            let (model, labels, device, at) = row?;
            let labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
            for l in labels {
                let e = out
                    .entry((model.clone(), l))
                    .or_insert_with(|| (0, Default::default(), at.clone()));
                e.0 += 1;
                e.1.insert(device.clone());
            }
        }
        Ok(out
            .into_iter()
            .map(|((model, label), (count, devices, first_at))| FieldLabel {
                model,
                label,
                count,
                devices: devices.len() as i64,
                first_at,
            })
            .collect())
    }

    fn feedback_received(&self, model: &str) -> Result<Vec<String>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT received_at FROM feedback WHERE model_name = ?1 ORDER BY received_at",
        )?;
        let rows = st.query_map([model], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn device_feedback(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<FeedbackSummary>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT feedback_id, model_name, model_version, kind, action, labels, received_at,
                    content IS NOT NULL
             FROM feedback WHERE device_id = ?1 ORDER BY received_at DESC, rowid DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![device_id, limit as i64], row_to_summary)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn feedback_item(&self, feedback_id: &str) -> Result<Option<FeedbackItem>, ServerStoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT feedback_id, model_name, model_version, kind, action, labels, received_at,
                        content IS NOT NULL, device_id, item_id, annotator, created_at, content, content_type
                 FROM feedback WHERE feedback_id = ?1",
                [feedback_id],
                |r| {
                    Ok(FeedbackItem {
                        summary: row_to_summary(r)?,
                        device_id: r.get(8)?,
                        item_id: r.get(9)?,
                        annotator: r.get(10)?,
                        created_at: r.get(11)?,
                        content: r.get(12)?,
                        content_type: r.get(13)?,
                    })
                },
            )
            .optional()?)
    }

    fn device_drift(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::drift::DriftWindow>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT model_name, model_version, items, novel, score, state, top_score_psi, label_psi,
                    novel_labels, novel_folders, started_at, ended_at
             FROM drift_windows WHERE device_id = ?1 ORDER BY window_id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![device_id, limit as i64], |r| {
            let state: String = r.get(5)?;
            let labels: String = r.get(8)?;
            let folders: String = r.get(9)?;
            Ok(crate::drift::DriftWindow {
                model_name: r.get(0)?,
                model_version: r.get(1)?,
                items: r.get::<_, i64>(2)? as usize,
                novel: r.get::<_, i64>(3)? as usize,
                score: r.get(4)?,
                state: crate::drift::DriftState::parse(&state),
                top_score_psi: r.get(6)?,
                label_psi: r.get(7)?,
                novel_labels: serde_json::from_str(&labels).unwrap_or_default(),
                novel_folders: serde_json::from_str(&folders).unwrap_or_default(),
                started_at: r.get(10)?,
                ended_at: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn device_failures(&self, device_id: &str) -> Result<Vec<ModelFailureRow>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT model, version, kind, reason, at FROM device_model_failures
             WHERE device_id = ?1 ORDER BY failure_id DESC",
        )?;
        let rows = st.query_map([device_id], |r| {
            Ok(ModelFailureRow {
                model: r.get(0)?,
                version: r.get(1)?,
                kind: r.get(2)?,
                reason: r.get(3)?,
                at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn row_to_summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<FeedbackSummary> {
    let labels: String = r.get(5)?;
    Ok(FeedbackSummary {
        feedback_id: r.get(0)?,
        model: r.get(1)?,
        model_version: r.get(2)?,
        kind: r.get(3)?,
        action: r.get(4)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        received_at: r.get(6)?,
        has_content: r.get(7)?,
    })
}
