//! The embedded default store: one SQLite file in the data folder (WAL, `synchronous = FULL`).
//! Right for one server process; several processes on one machine also work (SQLite locks
//! the file), but scaling past one machine is what [`super::postgres`] is for.

use super::*;
use crate::store::{now, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

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

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<TrainingJob> {
    Ok(TrainingJob {
        job_id: r.get(0)?,
        model_name: r.get(1)?,
        trigger: r.get(2)?,
        feedback_seen: r.get(3)?,
        state: r.get(4)?,
        attempts: r.get(5)?,
        owner: r.get(6)?,
        lease_until: r.get(7)?,
        run_id: r.get(8)?,
        error: r.get(9)?,
        enqueued_at: r.get(10)?,
        finished_at: r.get(11)?,
        settings: r.get(12)?,
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
    fn ping(&self) -> Result<(), ServerStoreError> {
        self.conn()
            .query_row("SELECT EXISTS (SELECT 1 FROM devices)", [], |_| Ok(()))?;
        Ok(())
    }

    fn stats(&self) -> Result<StoreStats, ServerStoreError> {
        let conn = self.conn();
        let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        let three = |sql: &str| -> rusqlite::Result<Vec<(String, String, i64)>> {
            let mut st = conn.prepare(sql)?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        };
        let mut st = conn.prepare(STATS_JOBS)?;
        let jobs = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(StoreStats {
            feedback: one(STATS_FEEDBACK)?,
            devices: one(STATS_DEVICES)?,
            runs: three(STATS_RUNS)?,
            jobs,
            versions: three(STATS_VERSIONS)?,
            drift: three(STATS_DRIFT)?,
        })
    }
}

impl DeviceStore for SqliteServerStore {
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

impl FeedbackStore for SqliteServerStore {
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
                let supersedes = match &r.supersedes {
                    Some(s) => match owner
                        .query_row([s], |row| row.get::<_, String>(0))
                        .optional()?
                    {
                        Some(who) if who != device_id => {
                            out.foreign_supersedes
                                .push((r.feedback_id.clone(), s.clone()));
                            None
                        }
                        _ => Some(s.as_str()),
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
                    supersedes,
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
                } else {
                    out.stored_now.push(r.feedback_id.clone());
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
        // never one that a later decision of the same device names in `supersedes` (a
        // device replaces only its own decisions; rows stored before ingest refused foreign
        // supersession still name other devices' ids, and are ignored here).
        let mut st = conn.prepare(
            "SELECT f.feedback_id, f.device_id, f.labels, f.embedding, s.split
             FROM feedback f
             LEFT JOIN feedback_split s ON s.feedback_id = f.feedback_id
             WHERE f.model_name = ?1
               AND NOT EXISTS (SELECT 1 FROM feedback l WHERE l.supersedes = f.feedback_id
                                 AND l.device_id = f.device_id)
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
        let rows = rows.collect::<Result<Vec<_>, _>>()?;
        Ok(feedback_days(rows))
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
        let rows = rows.collect::<Result<Vec<_>, _>>()?;
        Ok(field_labels_of(rows))
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
}

impl DriftStore for SqliteServerStore {
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
                     state, top_score_psi, label_psi, novel_labels, novel_folders, started_at, ended_at, received_at,
                     languages)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
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
                    at,
                    serde_json::to_string(&w.languages).unwrap_or_default()
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
                    w.device_id, w.languages
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
                    languages: serde_json::from_str(&r.get::<_, String>(15)?).unwrap_or_default(),
                },
            ))
        })?;
        let rows: Vec<_> = rows.collect::<Result<_, _>>()?;
        Ok(group_drift(rows))
    }

    fn device_drift(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::drift::DriftWindow>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT model_name, model_version, items, novel, score, state, top_score_psi, label_psi,
                    novel_labels, novel_folders, started_at, ended_at, languages
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
                languages: serde_json::from_str(&r.get::<_, String>(12)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl RunStore for SqliteServerStore {
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
                trigger,
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
            Ok(TrainingRun {
                run_id: r.get(0)?,
                model_name: r.get(1)?,
                base_version: r.get(2)?,
                candidate_version: r.get(3)?,
                trigger: r.get(4)?,
                status: r.get(5)?,
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
}

impl JobStore for SqliteServerStore {
    fn enqueue_training(
        &self,
        model: &str,
        trigger: Trigger,
        feedback_seen: i64,
    ) -> Result<Option<i64>, ServerStoreError> {
        self.enqueue_training_with(model, trigger, feedback_seen, None)
    }

    fn enqueue_training_with(
        &self,
        model: &str,
        trigger: Trigger,
        feedback_seen: i64,
        settings: Option<&str>,
    ) -> Result<Option<i64>, ServerStoreError> {
        let conn = self.conn();
        let n = conn.execute(
            "INSERT INTO training_jobs
                 (model_name, trigger, feedback_seen, state, enqueued_at, settings)
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5) ON CONFLICT DO NOTHING",
            params![model, trigger, feedback_seen, now(), settings],
        )?;
        Ok((n == 1).then(|| conn.last_insert_rowid()))
    }

    fn training_job(&self, job_id: i64) -> Result<Option<TrainingJob>, ServerStoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM training_jobs WHERE job_id = ?1"),
                [job_id],
                row_to_job,
            )
            .optional()?)
    }

    fn try_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, ServerStoreError> {
        // One statement under SQLite's write lock: only a free, expired or own lease is taken.
        let n = self.conn().execute(
            "INSERT INTO leases (name, owner, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                    expires_at = excluded.expires_at
             WHERE leases.expires_at < ?4 OR leases.owner = excluded.owner",
            params![name, owner, until, now],
        )?;
        Ok(n == 1)
    }

    fn release_lease(&self, name: &str, owner: &str) -> Result<(), ServerStoreError> {
        self.conn().execute(
            "DELETE FROM leases WHERE name = ?1 AND owner = ?2",
            params![name, owner],
        )?;
        Ok(())
    }

    fn claim_training(
        &self,
        owner: &str,
        now_unix: i64,
        lease_until: i64,
    ) -> Result<Option<TrainingJob>, ServerStoreError> {
        let mut conn = self.conn();
        // IMMEDIATE: the write lock is taken before reading, so two processes on one file
        // cannot both see the same job as free.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE training_jobs SET state = 'failed', finished_at = ?1,
                    error = 'its process died ' || attempts || ' times while training; given up'
             WHERE state = 'running' AND lease_until < ?2 AND attempts >= ?3",
            params![now(), now_unix, MAX_JOB_ATTEMPTS],
        )?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT job_id FROM training_jobs
                 WHERE state = 'queued' OR (state = 'running' AND lease_until < ?1)
                 ORDER BY job_id LIMIT 1",
                [now_unix],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            tx.commit()?;
            return Ok(None);
        };
        tx.execute(
            "UPDATE training_jobs SET state = 'running', owner = ?1, lease_until = ?2,
                    attempts = attempts + 1
             WHERE job_id = ?3",
            params![owner, lease_until, id],
        )?;
        let job = tx.query_row(
            &format!("SELECT {JOB_COLUMNS} FROM training_jobs WHERE job_id = ?1"),
            [id],
            row_to_job,
        )?;
        tx.commit()?;
        Ok(Some(job))
    }

    fn renew_training(
        &self,
        job_id: i64,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool, ServerStoreError> {
        let n = self.conn().execute(
            "UPDATE training_jobs SET lease_until = ?1
             WHERE job_id = ?2 AND owner = ?3 AND state = 'running'",
            params![lease_until, job_id, owner],
        )?;
        Ok(n == 1)
    }

    fn finish_training(
        &self,
        job_id: i64,
        owner: &str,
        run_id: Option<i64>,
        error: Option<&str>,
    ) -> Result<bool, ServerStoreError> {
        let n = self.conn().execute(
            "UPDATE training_jobs SET state = ?1, run_id = ?2, error = ?3, finished_at = ?4
             WHERE job_id = ?5 AND owner = ?6 AND state = 'running'",
            params![
                if error.is_some() { "failed" } else { "done" },
                run_id,
                error,
                now(),
                job_id,
                owner
            ],
        )?;
        Ok(n == 1)
    }

    fn training_jobs(&self, limit: usize) -> Result<Vec<TrainingJob>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM training_jobs ORDER BY job_id DESC LIMIT ?1"
        ))?;
        let rows = st.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], row_to_job)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl AccountStore for SqliteServerStore {
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

    fn put_confirmation(
        &self,
        token_sha256: &str,
        session_sha256: &str,
        action_json: &str,
        expires_at: i64,
    ) -> Result<(), ServerStoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM admin_confirmations WHERE expires_at < ?1",
            [crate::server::unix_now()],
        )?;
        conn.execute(
            "INSERT INTO admin_confirmations (token_sha256, session_sha256, action, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![token_sha256, session_sha256, action_json, expires_at],
        )?;
        Ok(())
    }

    fn take_confirmation(
        &self,
        token_sha256: &str,
        session_sha256: &str,
        now_unix: i64,
    ) -> Result<Option<String>, ServerStoreError> {
        // One statement: two processes confirming at once cannot both get the row.
        Ok(self
            .conn()
            .query_row(
                "DELETE FROM admin_confirmations
                 WHERE token_sha256 = ?1 AND session_sha256 = ?2 AND expires_at >= ?3
                 RETURNING action",
                params![token_sha256, session_sha256, now_unix],
                |r| r.get(0),
            )
            .optional()?)
    }
}

impl AuditStore for SqliteServerStore {
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
}

impl TaskStore for SqliteServerStore {
    fn put_task(&self, t: &TaskDefinition) -> Result<(), ServerStoreError> {
        let labels = serde_json::to_string(&t.labels).unwrap_or_default();
        self.conn().execute(
            "INSERT INTO tasks (name, backbone, labels, multi_label, channel, defined_by, defined_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (name) DO UPDATE SET backbone = excluded.backbone,
               labels = excluded.labels, multi_label = excluded.multi_label,
               channel = excluded.channel, defined_by = excluded.defined_by,
               defined_at = excluded.defined_at",
            params![
                t.name,
                t.backbone,
                labels,
                t.multi_label,
                t.channel,
                t.defined_by,
                t.defined_at
            ],
        )?;
        Ok(())
    }

    fn tasks(&self) -> Result<Vec<TaskDefinition>, ServerStoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT name, backbone, labels, multi_label, channel, defined_by, defined_at
             FROM tasks ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            let labels: String = r.get(2)?;
            Ok(TaskDefinition {
                name: r.get(0)?,
                backbone: r.get(1)?,
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                multi_label: r.get(3)?,
                channel: r.get(4)?,
                defined_by: r.get(5)?,
                defined_at: r.get(6)?,
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
