//! The server's storage, behind the [`ServerStore`] trait: the embedded SQLite default
//! ([`sqlite`], one file in the data folder) or PostgreSQL ([`postgres`], when
//! `database_url` says so) for several server processes on several machines.
//!
//! Exactly-once ingest is a database constraint (the feedback id is the primary key,
//! inserted with `ON CONFLICT DO NOTHING`), not an in-process lock, so it holds with any
//! number of server processes writing at once. Training jobs are rows that exactly one
//! process claims (see [`ServerStore::claim_training`]).

pub mod postgres;
pub mod sqlite;

pub use self::postgres::PostgresServerStore;
pub use self::sqlite::SqliteServerStore;

use crate::protocol::{FeedbackRecord, Refused};
use crate::store::StoreError;
use std::sync::Arc;

/// Opens the store `database_url` names: `postgres://...` or `postgresql://...` for
/// PostgreSQL, otherwise (`None`, empty, or `sqlite://PATH`) the SQLite file
/// `data_dir/server.db` (or PATH). Applies the migrations either way.
pub fn open(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn ServerStore>, ServerStoreError> {
    match database_url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Ok(Arc::new(PostgresServerStore::open(u)?))
        }
        Some(u) if u.starts_with("sqlite://") => Ok(Arc::new(SqliteServerStore::open(
            std::path::Path::new(&u["sqlite://".len()..]),
        )?)),
        Some(u) => Err(ServerStoreError::BadUrl(redact_url(u))),
        None => Ok(Arc::new(SqliteServerStore::open(
            &data_dir.join("server.db"),
        )?)),
    }
}

/// `url` with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host... -> scheme://user:***@host...
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}://{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// Migrations of the server database.
pub const SERVER_MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "server/0001_devices_feedback.sql",
        include_str!("../../../migrations/server/0001_devices_feedback.sql"),
    ),
    (
        2,
        "server/0002_training.sql",
        include_str!("../../../migrations/server/0002_training.sql"),
    ),
    (
        3,
        "server/0003_device_models.sql",
        include_str!("../../../migrations/server/0003_device_models.sql"),
    ),
    (
        4,
        "server/0004_drift.sql",
        include_str!("../../../migrations/server/0004_drift.sql"),
    ),
    (
        5,
        "server/0005_training_jobs.sql",
        include_str!("../../../migrations/server/0005_training_jobs.sql"),
    ),
    (
        6,
        "server/0006_dashboard.sql",
        include_str!("../../../migrations/server/0006_dashboard.sql"),
    ),
    (
        7,
        "server/0007_confirmations.sql",
        include_str!("../../../migrations/server/0007_confirmations.sql"),
    ),
    (
        8,
        "server/0008_leases_job_settings.sql",
        include_str!("../../../migrations/server/0008_leases_job_settings.sql"),
    ),
    (
        9,
        "server/0009_tasks.sql",
        include_str!("../../../migrations/server/0009_tasks.sql"),
    ),
    (
        10,
        "server/0010_drift_languages.sql",
        include_str!("../../../migrations/server/0010_drift_languages.sql"),
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
    /// PostgreSQL said no.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// No PostgreSQL connection could be had (server down, wrong URL, pool exhausted).
    #[error("cannot connect to PostgreSQL: {0}")]
    Pool(#[from] r2d2::Error),
    /// `database_url` is neither `postgres://...` nor `sqlite://...`.
    #[error("database_url {0:?} is not understood: use postgres://user@host:port/db or sqlite:///path/server.db (or leave it unset for data_dir/server.db)")]
    BadUrl(String),
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
    /// Ids stored by this call (not before): `acked` minus the duplicates.
    pub stored_now: Vec<String>,
    /// Refused records.
    pub refused: Vec<Refused>,
    /// Records stored without their `supersedes`, because it named a record of another
    /// device (a device may only replace its own decisions): `(feedback_id, supersedes)`.
    /// The record itself is kept and acknowledged, so the sender's outbox drains.
    pub foreign_supersedes: Vec<(String, String)>,
}

/// Where a record came from.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// Over HTTP from the device.
    Http,
    /// Imported from a USB file.
    Usb,
}

/// The server's storage: one role trait per stage that reads or writes it (devices,
/// feedback, drift, runs, the job queue, accounts, audit, tasks), so a stage can take just
/// the role it needs (`&dyn FeedbackStore`); a backend implements them all.
pub trait ServerStore:
    DeviceStore
    + FeedbackStore
    + DriftStore
    + RunStore
    + JobStore
    + AccountStore
    + AuditStore
    + TaskStore
{
    /// A cheap read of a table (the health check of a load balancer): fails when the
    /// database is unreachable or its tables are gone.
    fn ping(&self) -> Result<(), ServerStoreError>;
    /// Counts for `/metrics`, each one `GROUP BY` query.
    fn stats(&self) -> Result<StoreStats, ServerStoreError>;
}

/// Devices: enrollment, revocation, replay nonces, and what each device reports it runs.
pub trait DeviceStore: Send + Sync {
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
    /// Every refused or rolled-back update a device reported, newest first:
    /// (model, version, kind, reason, at).
    fn device_failures(&self, device_id: &str) -> Result<Vec<ModelFailureRow>, ServerStoreError>;
}

/// Field decisions as received (ingest) and as training reads them.
pub trait FeedbackStore: Send + Sync {
    /// Stores each record once.
    fn ingest(
        &self,
        device_id: &str,
        records: &[FeedbackRecord],
        via: Via,
    ) -> Result<IngestResult, ServerStoreError>;
    /// Number of stored feedback records.
    fn feedback_count(&self) -> Result<i64, ServerStoreError>;
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
}

/// Drift windows the devices send.
pub trait DriftStore: Send + Sync {
    /// Stores drift windows a device sent (each window id once); returns how many were new.
    fn store_drift(
        &self,
        device_id: &str,
        windows: &[(i64, crate::drift::DriftWindow)],
    ) -> Result<usize, ServerStoreError>;
    /// Per device and model, the latest drift window and since when its state holds.
    fn drift_latest(&self) -> Result<Vec<DeviceDrift>, ServerStoreError>;
    /// The drift windows of one device, newest first (`limit` rows).
    fn device_drift(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::drift::DriftWindow>, ServerStoreError>;
}

/// Training runs: what was trained on what, and its verdict.
pub trait RunStore: Send + Sync {
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
}

/// The training queue shared by server processes, and named leases.
pub trait JobStore: Send + Sync {
    /// Queues training of `model` unless a job for it is already queued or running (a
    /// partial unique index decides, so concurrent processes queue it once). Returns the
    /// new job's id, or `None` if one was open.
    fn enqueue_training(
        &self,
        model: &str,
        trigger: Trigger,
        feedback_seen: i64,
    ) -> Result<Option<i64>, ServerStoreError>;
    /// Claims for `owner`, until `lease_until` (unix seconds), the oldest job that is queued
    /// or running with a lease that expired before `now_unix` (its process died). Exactly
    /// one concurrent claimer gets a given job. A job already claimed
    /// [`MAX_JOB_ATTEMPTS`] times is marked failed instead of being claimed again.
    fn claim_training(
        &self,
        owner: &str,
        now_unix: i64,
        lease_until: i64,
    ) -> Result<Option<TrainingJob>, ServerStoreError>;
    /// Extends `owner`'s lease on a running job; false if it no longer holds it.
    fn renew_training(
        &self,
        job_id: i64,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool, ServerStoreError>;
    /// Closes `owner`'s job: `done` (with the run it produced, if any) when `error` is
    /// `None`, else `failed`. False if `owner` no longer held it.
    fn finish_training(
        &self,
        job_id: i64,
        owner: &str,
        run_id: Option<i64>,
        error: Option<&str>,
    ) -> Result<bool, ServerStoreError>;
    /// Training jobs, newest first.
    fn training_jobs(&self, limit: usize) -> Result<Vec<TrainingJob>, ServerStoreError>;
    /// Queues an operator's training of `model` with `settings` (JSON overrides of the
    /// configured training settings, read by whichever process claims the job), unless a
    /// job for the model is open. Returns the new job's id, or `None` if one was open.
    fn enqueue_training_with(
        &self,
        model: &str,
        trigger: Trigger,
        feedback_seen: i64,
        settings: Option<&str>,
    ) -> Result<Option<i64>, ServerStoreError>;
    /// One training job.
    fn training_job(&self, job_id: i64) -> Result<Option<TrainingJob>, ServerStoreError>;
    /// Takes the lease `name` for `owner` until `until` (unix seconds) if nobody holds it,
    /// its holder's lease ran out before `now`, or `owner` holds it already. Exactly one of
    /// several concurrent callers gets it.
    fn try_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, ServerStoreError>;
    /// Gives the lease `name` back if `owner` holds it.
    fn release_lease(&self, name: &str, owner: &str) -> Result<(), ServerStoreError>;
}

/// Operator accounts, dashboard sessions and confirmations of risky actions.
pub trait AccountStore: Send + Sync {
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
    /// Keeps a proposed dashboard action (JSON) until it is confirmed or expires.
    fn put_confirmation(
        &self,
        token_sha256: &str,
        session_sha256: &str,
        action_json: &str,
        expires_at: i64,
    ) -> Result<(), ServerStoreError>;
    /// Takes a proposed action once: only for the session that proposed it and before it
    /// expires; the row is gone afterwards (a second take finds nothing).
    fn take_confirmation(
        &self,
        token_sha256: &str,
        session_sha256: &str,
        now_unix: i64,
    ) -> Result<Option<String>, ServerStoreError>;
}

/// The audit log.
pub trait AuditStore: Send + Sync {
    /// Appends to the audit log.
    fn audit(&self, actor: &str, action: &str, detail: &str) -> Result<(), ServerStoreError>;
    /// The newest audit records, newest first.
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, ServerStoreError>;
}

/// Task definitions (a new question taught from field labels).
pub trait TaskStore: Send + Sync {
    /// Defines a task, or replaces the definition of the task of that name.
    fn put_task(&self, task: &TaskDefinition) -> Result<(), ServerStoreError>;
    /// Every defined task, by name.
    fn tasks(&self) -> Result<Vec<TaskDefinition>, ServerStoreError>;
    /// The task of that name, if one is defined.
    fn task(&self, name: &str) -> Result<Option<TaskDefinition>, ServerStoreError> {
        Ok(self.tasks()?.into_iter().find(|t| t.name == name))
    }
}

/// A task: a question the field asks (is this building damaged?) that is trained as a model
/// of its own, with its own name and labels, on the embeddings of an existing model's
/// backbone (which agents already have). Field decisions for it arrive under its own name
/// or under the backbone model's name with the task's labels (`--allow-new-labels`); the
/// backbone model's own retraining leaves the latter out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskDefinition {
    /// The model name the task is published under.
    pub name: String,
    /// The published model whose backbone embeds the task's items.
    pub backbone: String,
    /// The task's labels.
    pub labels: Vec<String>,
    /// Several labels per item (sigmoid) or exactly one (softmax).
    pub multi_label: bool,
    /// Channel a candidate that passes the new-task gate is published to.
    pub channel: String,
    /// Who defined it.
    pub defined_by: String,
    /// When (server clock, RFC 3339).
    pub defined_at: String,
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

/// Feedback per day and label from `(day, model, labels JSON, rows)` groups (both backends).
pub(crate) fn feedback_days(
    rows: impl IntoIterator<Item = (String, String, String, i64)>,
) -> Vec<FeedbackDay> {
    let mut out: std::collections::BTreeMap<(String, String, String), i64> = Default::default();
    for (day, model, labels, n) in rows {
        let labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
        for l in labels {
            *out.entry((day.clone(), model.clone(), l)).or_default() += n;
        }
    }
    out.into_iter()
        .map(|((day, model, label), count)| FeedbackDay {
            day,
            model,
            label,
            count,
        })
        .collect()
}

/// Labels introduced in the field from `(model, new_labels JSON, device, received_at)`
/// rows, oldest first (both backends).
pub(crate) fn field_labels_of(
    rows: impl IntoIterator<Item = (String, String, String, String)>,
) -> Vec<FieldLabel> {
    type Acc = (i64, std::collections::BTreeSet<String>, String);
    let mut out: std::collections::BTreeMap<(String, String), Acc> = Default::default();
    for (model, labels, device, at) in rows {
        let labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
        for l in labels {
            let e = out
                .entry((model.clone(), l))
                .or_insert_with(|| (0, Default::default(), at.clone()));
            e.0 += 1;
            e.1.insert(device.clone());
        }
    }
    out.into_iter()
        .map(|((model, label), (count, devices, first_at))| FieldLabel {
            model,
            label,
            count,
            devices: devices.len() as i64,
            first_at,
        })
        .collect()
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

/// Deployment-wide counts for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// Feedback records stored.
    pub feedback: i64,
    /// Enrolled devices that are not revoked.
    pub devices: i64,
    /// Training runs: (model, status, count).
    pub runs: Vec<(String, String, i64)>,
    /// Training jobs: (state, count).
    pub jobs: Vec<(String, i64)>,
    /// Devices by the version they serve: (model, version or `none`, count).
    pub versions: Vec<(String, String, i64)>,
    /// Devices by the state of their latest drift window: (model, state, count).
    pub drift: Vec<(String, String, i64)>,
}

/// The queries behind [`StoreStats`], valid on SQLite and PostgreSQL alike.
const STATS_FEEDBACK: &str = "SELECT COUNT(*) FROM feedback";
const STATS_DEVICES: &str =
    "SELECT COUNT(*) FROM devices WHERE enrolled_at IS NOT NULL AND revoked_at IS NULL";
const STATS_RUNS: &str =
    "SELECT model_name, status, COUNT(*) FROM training_runs GROUP BY 1, 2 ORDER BY 1, 2";
const STATS_JOBS: &str = "SELECT state, COUNT(*) FROM training_jobs GROUP BY 1 ORDER BY 1";
const STATS_VERSIONS: &str = "SELECT model, COALESCE(active_version, 'none'), COUNT(*)
     FROM device_models GROUP BY 1, 2 ORDER BY 1, 2";
const STATS_DRIFT: &str = "SELECT w.model_name, w.state, COUNT(*) FROM drift_windows w
     WHERE w.window_id = (SELECT MAX(x.window_id) FROM drift_windows x
                          WHERE x.device_id = w.device_id AND x.model_name = w.model_name)
     GROUP BY 1, 2 ORDER BY 1, 2";

/// Claims of one training job before it is given up as failed (a job that kills its
/// process every time must not take the servers down one after another for ever).
pub const MAX_JOB_ATTEMPTS: i64 = 3;

/// A training job in the queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainingJob {
    /// Id.
    pub job_id: i64,
    /// Model to train.
    pub model_name: String,
    /// What queued it.
    pub trigger: Trigger,
    /// Feedback rows for the model when it was queued.
    pub feedback_seen: i64,
    /// Where it is in the queue.
    pub state: JobState,
    /// Times it was claimed.
    pub attempts: i64,
    /// The process that holds (or last held) it.
    pub owner: Option<String>,
    /// Its lease, unix seconds.
    pub lease_until: Option<i64>,
    /// The training run it produced.
    pub run_id: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was queued (server clock).
    pub enqueued_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// An operator's overrides of the training settings (JSON), if any.
    pub settings: Option<String>,
}

/// Columns of [`TrainingJob`], in field order (both stores).
const JOB_COLUMNS: &str = "job_id, model_name, trigger, feedback_seen, state, attempts, owner,
    lease_until, run_id, error, enqueued_at, finished_at, settings";

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

crate::vocabulary! {
    /// What started a training run (or queued a job).
    pub enum Trigger {
        /// `outpost-server train`.
        Operator = "operator",
        /// Enough new feedback arrived while serving.
        Auto = "auto",
    }
}

crate::vocabulary! {
    /// How a training run ended.
    pub enum RunStatus {
        /// Still running (or the process died: see `finished_at`).
        Running = "running",
        /// The candidate passed the gate and was published.
        Published = "published",
        /// The candidate regressed (or publishing was not asked for): kept for an operator.
        Held = "held",
        /// Training could not complete.
        Failed = "failed",
    }
}

crate::vocabulary! {
    /// Where a training job is in the queue.
    pub enum JobState {
        /// Waiting for a server process to claim it.
        Queued = "queued",
        /// Claimed; its lease says until when.
        Running = "running",
        /// Ended with a run.
        Done = "done",
        /// Given up (see its error).
        Failed = "failed",
    }
}

impl JobState {
    /// Whether the job has ended (done or failed).
    pub fn ended(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
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
    pub trigger: Trigger,
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

/// Groups drift windows ordered by device name, model, newest window first into one
/// [`DeviceDrift`] per device and model (shared by both stores).
fn group_drift(
    rows: impl IntoIterator<Item = (String, String, crate::drift::DriftWindow)>,
) -> Vec<DeviceDrift> {
    let mut out: Vec<DeviceDrift> = Vec::new();
    let mut run_open = false;
    for (device, group, w) in rows {
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
    out
}
