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
pub const SERVER_MIGRATIONS: &[(u32, &str, &str)] = &[(
    1,
    "server/0001_devices_feedback.sql",
    include_str!("../../migrations/server/0001_devices_feedback.sql"),
)];

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
    (SELECT COUNT(*) FROM feedback f WHERE f.device_id = d.device_id)";

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
}
