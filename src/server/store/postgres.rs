//! The scale-out store: PostgreSQL, for several identical server processes (on one or many
//! machines) sharing one database. Same tables and semantics as [`super::sqlite`]; the
//! schema is `migrations/server-postgres/`, applied at open under an advisory lock so two
//! processes starting together do not race.
//!
//! Everything that must happen once is a database constraint, never a lock in a process:
//! feedback ids are a primary key inserted with `ON CONFLICT DO NOTHING`, nonces likewise,
//! enrollment codes are taken with `SELECT ... FOR UPDATE`. The client is the synchronous
//! `postgres` crate behind an r2d2 pool: the [`ServerStore`] trait is synchronous and is
//! called from blocking threads.

use super::*;
use crate::store::now;
use ::postgres::error::SqlState;
use ::postgres::{Config, GenericClient, NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;
use std::time::Duration;

/// Connections per server process. Two processes use at most 32 of PostgreSQL's default 100.
pub const POOL_SIZE: u32 = 16;

/// Key of the advisory lock held while migrating (any constant; "outpost" in ASCII).
const MIGRATION_LOCK: i64 = 0x006f_7574_706f_7374;

/// First key of the per-feedback-id advisory locks of [`ServerStore::ingest`] (the
/// two-key lock space, apart from [`MIGRATION_LOCK`]).
const FEEDBACK_LOCKS: i32 = 0x6f70;

/// Migrations of the PostgreSQL server database (mirroring [`SERVER_MIGRATIONS`]).
pub const POSTGRES_MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "server-postgres/0001_devices_feedback.sql",
        include_str!("../../../migrations/server-postgres/0001_devices_feedback.sql"),
    ),
    (
        2,
        "server-postgres/0002_training.sql",
        include_str!("../../../migrations/server-postgres/0002_training.sql"),
    ),
    (
        3,
        "server-postgres/0003_device_models.sql",
        include_str!("../../../migrations/server-postgres/0003_device_models.sql"),
    ),
    (
        4,
        "server-postgres/0004_drift.sql",
        include_str!("../../../migrations/server-postgres/0004_drift.sql"),
    ),
    (
        5,
        "server-postgres/0005_training_jobs.sql",
        include_str!("../../../migrations/server-postgres/0005_training_jobs.sql"),
    ),
    (
        6,
        "server-postgres/0006_dashboard.sql",
        include_str!("../../../migrations/server-postgres/0006_dashboard.sql"),
    ),
    (
        7,
        "server-postgres/0007_confirmations.sql",
        include_str!("../../../migrations/server-postgres/0007_confirmations.sql"),
    ),
    (
        8,
        "server-postgres/0008_leases_job_settings.sql",
        include_str!("../../../migrations/server-postgres/0008_leases_job_settings.sql"),
    ),
    (
        9,
        "server-postgres/0009_tasks.sql",
        include_str!("../../../migrations/server-postgres/0009_tasks.sql"),
    ),
    (
        10,
        "server-postgres/0010_drift_languages.sql",
        include_str!("../../../migrations/server-postgres/0010_drift_languages.sql"),
    ),
];

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// The PostgreSQL store: a pool of connections to the database `database_url` names.
pub struct PostgresServerStore {
    pool: Pool,
}

impl PostgresServerStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database[?options=...]`)
    /// and applies the migrations not applied yet.
    pub fn open(url: &str) -> Result<PostgresServerStore, ServerStoreError> {
        let mut config: Config = url.parse()?;
        if config.get_application_name().is_none() {
            config.application_name("outpost-server");
        }
        config.connect_timeout(Duration::from_secs(10));
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(15))
            .build(manager)?;
        let store = PostgresServerStore { pool };
        let mut conn = store.conn()?;
        migrate(&mut conn)?;
        drop(conn);
        Ok(store)
    }

    fn conn(&self) -> Result<Conn, ServerStoreError> {
        Ok(self.pool.get()?)
    }
}

/// Applies every migration newer than the database, in one transaction holding an
/// advisory lock: a second process starting at the same moment waits, then finds them done.
fn migrate(client: &mut ::postgres::Client) -> Result<u32, ServerStoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TEXT NOT NULL
         )",
    )?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    let current = current.max(0) as u32;
    let latest = POSTGRES_MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest,
        }
        .into());
    }
    for (n, name, sql) in POSTGRES_MIGRATIONS {
        if *n <= current {
            continue;
        }
        tx.batch_execute(sql).map_err(|e| StoreError::Migration {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[&(*n as i32), name, &now()],
        )?;
        tracing::info!(migration = name, "applied PostgreSQL migration");
    }
    tx.commit()?;
    Ok(latest)
}

const DEVICE_COLUMNS: &str =
    "d.device_id, d.name, d.device_group, d.public_key, d.enrolled_at, d.revoked_at, d.last_seen,
    (SELECT COUNT(*) FROM feedback f WHERE f.device_id = d.device_id), d.pending_feedback";

fn row_to_device(r: &Row) -> Device {
    Device {
        device_id: r.get(0),
        name: r.get(1),
        group: r.get(2),
        public_key: r.get(3),
        enrolled_at: r.get(4),
        revoked_at: r.get(5),
        last_seen: r.get(6),
        feedback: r.get(7),
        pending_feedback: r.get(8),
    }
}

fn get_device(
    c: &mut impl GenericClient,
    where_: &str,
    arg: &str,
) -> Result<Option<Device>, ServerStoreError> {
    Ok(c.query_opt(
        format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE {where_}").as_str(),
        &[&arg],
    )?
    .map(|r| row_to_device(&r)))
}

fn is_unique_violation(e: &::postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn row_to_job(r: &Row) -> TrainingJob {
    TrainingJob {
        job_id: r.get(0),
        model_name: r.get(1),
        trigger: r.get(2),
        feedback_seen: r.get(3),
        state: r.get(4),
        attempts: r.get::<_, i32>(5).into(),
        owner: r.get(6),
        lease_until: r.get(7),
        run_id: r.get(8),
        error: r.get(9),
        enqueued_at: r.get(10),
        finished_at: r.get(11),
        settings: r.get(12),
    }
}

fn row_to_run(r: &Row) -> TrainingRun {
    TrainingRun {
        run_id: r.get(0),
        model_name: r.get(1),
        base_version: r.get(2),
        candidate_version: r.get(3),
        trigger: r.get(4),
        status: r.get(5),
        reason: r.get(6),
        feedback_seen: r.get(7),
        report: r.get(8),
        bundle_dir: r.get(9),
        started_at: r.get(10),
        finished_at: r.get(11),
    }
}

impl ServerStore for PostgresServerStore {
    fn ping(&self) -> Result<(), ServerStoreError> {
        self.conn()?
            .query_one("SELECT EXISTS (SELECT 1 FROM devices)", &[])?;
        Ok(())
    }

    fn stats(&self) -> Result<StoreStats, ServerStoreError> {
        let mut c = self.conn()?;
        let mut three = |sql: &str| -> Result<Vec<(String, String, i64)>, ::postgres::Error> {
            Ok(c.query(sql, &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        };
        let runs = three(STATS_RUNS)?;
        let versions = three(STATS_VERSIONS)?;
        let drift = three(STATS_DRIFT)?;
        Ok(StoreStats {
            feedback: c.query_one(STATS_FEEDBACK, &[])?.get(0),
            devices: c.query_one(STATS_DEVICES, &[])?.get(0),
            runs,
            jobs: c
                .query(STATS_JOBS, &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
            versions,
            drift,
        })
    }
}

impl DeviceStore for PostgresServerStore {
    fn add_device(
        &self,
        name: &str,
        group: &str,
        code_sha256: &str,
        expires_at: &str,
    ) -> Result<Device, ServerStoreError> {
        let mut c = self.conn()?;
        let id = uuid::Uuid::new_v4().to_string();
        let r = c.execute(
            "INSERT INTO devices (device_id, name, device_group, enrollment_code_sha256, enrollment_expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&id, &name, &group, &code_sha256, &expires_at, &now()],
        );
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(ServerStoreError::NameTaken(name.into()))
            }
            other => {
                other?;
            }
        }
        get_device(&mut *c, "d.device_id = $1", &id)?.ok_or(ServerStoreError::NoDevice(id))
    }

    fn enroll(&self, code_sha256: &str, public_key: &[u8]) -> Result<Device, ServerStoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        // FOR UPDATE: two processes given the same code at once cannot both enroll with it.
        let id: Option<String> = tx
            .query_opt(
                "SELECT device_id FROM devices
                 WHERE enrollment_code_sha256 = $1 AND enrollment_expires_at > $2 AND revoked_at IS NULL
                 FOR UPDATE",
                &[&code_sha256, &now()],
            )?
            .map(|r| r.get(0));
        let Some(id) = id else {
            return Err(ServerStoreError::BadCode);
        };
        let n = tx.execute(
            "UPDATE devices SET public_key = $1, enrolled_at = $2, enrollment_code_sha256 = NULL, last_seen = $2
             WHERE device_id = $3 AND enrollment_code_sha256 = $4",
            &[&public_key, &now(), &id, &code_sha256],
        )?;
        if n == 0 {
            return Err(ServerStoreError::BadCode);
        }
        let d = get_device(&mut tx, "d.device_id = $1", &id)?
            .ok_or_else(|| ServerStoreError::NoDevice(id.clone()))?;
        tx.commit()?;
        Ok(d)
    }

    fn device(&self, device_id: &str) -> Result<Option<Device>, ServerStoreError> {
        get_device(&mut *self.conn()?, "d.device_id = $1", device_id)
    }

    fn devices(&self) -> Result<Vec<Device>, ServerStoreError> {
        Ok(self
            .conn()?
            .query(
                format!("SELECT {DEVICE_COLUMNS} FROM devices d ORDER BY d.name").as_str(),
                &[],
            )?
            .iter()
            .map(row_to_device)
            .collect())
    }

    fn revoke(&self, name_or_id: &str) -> Result<Device, ServerStoreError> {
        let mut c = self.conn()?;
        let n = c.execute(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, $1), enrollment_code_sha256 = NULL
             WHERE name = $2 OR device_id = $2",
            &[&now(), &name_or_id],
        )?;
        if n == 0 {
            return Err(ServerStoreError::NoDevice(name_or_id.into()));
        }
        get_device(&mut *c, "d.name = $1 OR d.device_id = $1", name_or_id)?
            .ok_or_else(|| ServerStoreError::NoDevice(name_or_id.into()))
    }

    fn use_nonce(
        &self,
        device_id: &str,
        nonce: &str,
        expires_at: i64,
        now_unix: i64,
    ) -> Result<bool, ServerStoreError> {
        let mut c = self.conn()?;
        c.execute("DELETE FROM nonces WHERE expires_at < $1", &[&now_unix])?;
        let n = c.execute(
            "INSERT INTO nonces (device_id, nonce, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&device_id, &nonce, &expires_at],
        )?;
        Ok(n == 1)
    }

    fn touch(&self, device_id: &str) -> Result<(), ServerStoreError> {
        self.conn()?.execute(
            "UPDATE devices SET last_seen = $1 WHERE device_id = $2",
            &[&now(), &device_id],
        )?;
        Ok(())
    }

    fn record_device_models(
        &self,
        device_id: &str,
        report: &crate::protocol::DeviceModelsReport,
    ) -> Result<(), ServerStoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let at = now();
        for m in &report.models {
            tx.execute(
                "INSERT INTO device_models (device_id, model, active_version, pinned, installed, reported_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (device_id, model) DO UPDATE SET active_version = EXCLUDED.active_version,
                   pinned = EXCLUDED.pinned, installed = EXCLUDED.installed, reported_at = EXCLUDED.reported_at",
                &[
                    &device_id,
                    &m.model,
                    &m.active_version,
                    &m.pinned,
                    &serde_json::to_string(&m.installed).unwrap_or_default(),
                    &at,
                ],
            )?;
        }
        if let Some(p) = report.pending_feedback {
            tx.execute(
                "UPDATE devices SET pending_feedback = $1, pending_reported_at = $2 WHERE device_id = $3",
                &[&p.max(0), &at, &device_id],
            )?;
        }
        for f in &report.failures {
            tx.execute(
                "INSERT INTO device_model_failures (device_id, model, version, kind, reason, at, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&device_id, &f.model, &f.version, &f.kind, &f.reason, &f.at, &at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn device_models(&self) -> Result<Vec<DeviceModelRow>, ServerStoreError> {
        let mut c = self.conn()?;
        let mut rows: Vec<DeviceModelRow> = c
            .query(
                "SELECT device_id, model, active_version, pinned, reported_at FROM device_models
                 ORDER BY device_id, model",
                &[],
            )?
            .iter()
            .map(|r| DeviceModelRow {
                device_id: r.get(0),
                model: r.get(1),
                active_version: r.get(2),
                pinned: r.get(3),
                reported_at: r.get(4),
                failures: Vec::new(),
            })
            .collect();
        let fs = c.prepare(
            "SELECT version, kind, reason, at FROM device_model_failures
             WHERE device_id = $1 AND (model = $2 OR model = '') ORDER BY failure_id DESC LIMIT 5",
        )?;
        for row in &mut rows {
            row.failures = c
                .query(&fs, &[&row.device_id, &row.model])?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect();
        }
        Ok(rows)
    }

    fn device_failures(&self, device_id: &str) -> Result<Vec<ModelFailureRow>, ServerStoreError> {
        Ok(self
            .conn()?
            .query(
                "SELECT model, version, kind, reason, at FROM device_model_failures
                 WHERE device_id = $1 ORDER BY failure_id DESC",
                &[&device_id],
            )?
            .iter()
            .map(|r| ModelFailureRow {
                model: r.get(0),
                version: r.get(1),
                kind: r.get(2),
                reason: r.get(3),
                at: r.get(4),
            })
            .collect())
    }
}

impl FeedbackStore for PostgresServerStore {
    fn ingest(
        &self,
        device_id: &str,
        records: &[FeedbackRecord],
        via: Via,
    ) -> Result<IngestResult, ServerStoreError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let insert = tx.prepare(
            "INSERT INTO feedback (feedback_id, device_id, item_id, kind, model_name, model_version, action, labels, new_labels,
                                   annotator, created_at, supersedes, embedding, content, content_type, received_at, received_via)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT (feedback_id) DO NOTHING",
        )?;
        let owner = tx.prepare("SELECT device_id FROM feedback WHERE feedback_id = $1")?;
        let ts = now();
        let via = match via {
            Via::Http => "http",
            Via::Usb => "usb",
        };
        // Two processes ingesting overlapping batches in different orders would each wait
        // for the other's uncommitted rows (a deadlock). So first take a transaction lock per
        // id, in sorted order: overlapping batches then queue behind each other. The rows
        // are still inserted in batch order (the arrival order training breaks ties with),
        // and the primary key alone decides what is stored once.
        let mut ids: Vec<&str> = records.iter().map(|r| r.feedback_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, k)
             FROM (SELECT DISTINCT hashtext(x) AS k FROM unnest($2::TEXT[]) AS x ORDER BY 1) s",
            &[&FEEDBACK_LOCKS, &ids],
        )?;
        let mut out = IngestResult::default();
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
            let supersedes: Option<&str> = match &r.supersedes {
                Some(s) => match tx
                    .query_opt(&owner, &[s])?
                    .map(|row| row.get::<_, String>(0))
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
            let n = tx.execute(
                &insert,
                &[
                    &r.feedback_id,
                    &device_id,
                    &r.item_id,
                    &r.kind.as_str(),
                    &r.model_name,
                    &r.model_version,
                    &r.action.as_str(),
                    &serde_json::to_string(&r.labels).unwrap_or_default(),
                    &serde_json::to_string(&r.new_labels).unwrap_or_default(),
                    &r.annotator,
                    &r.created_at,
                    &supersedes,
                    &embedding,
                    &content,
                    &r.content_type,
                    &ts,
                    &via,
                ],
            )?;
            if n == 0 {
                // Already stored (by this or another process): acknowledge again, unless
                // another device owns that id.
                let who: String = tx.query_one(&owner, &[&r.feedback_id])?.get(0);
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
        tx.commit()?;
        Ok(out)
    }

    fn feedback_count(&self) -> Result<i64, ServerStoreError> {
        Ok(self
            .conn()?
            .query_one("SELECT COUNT(*) FROM feedback", &[])?
            .get(0))
    }

    fn feedback_models(&self) -> Result<Vec<String>, ServerStoreError> {
        Ok(self
            .conn()?
            .query("SELECT DISTINCT model_name FROM feedback ORDER BY 1", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn model_feedback_count(&self, model: &str) -> Result<i64, ServerStoreError> {
        Ok(self
            .conn()?
            .query_one(
                "SELECT COUNT(*) FROM feedback WHERE model_name = $1",
                &[&model],
            )?
            .get(0))
    }

    fn training_feedback(&self, model: &str) -> Result<Vec<TrainingRow>, ServerStoreError> {
        // As on SQLite, with `seq` (arrival order) in place of SQLite's rowid; supersession
        // only within a device.
        let rows = self.conn()?.query(
            "SELECT f.feedback_id, f.device_id, f.labels, f.embedding, s.split
             FROM feedback f
             LEFT JOIN feedback_split s ON s.feedback_id = f.feedback_id
             WHERE f.model_name = $1
               AND NOT EXISTS (SELECT 1 FROM feedback l WHERE l.supersedes = f.feedback_id
                                 AND l.device_id = f.device_id)
               AND NOT EXISTS (SELECT 1 FROM feedback n
                               WHERE n.model_name = f.model_name AND n.device_id = f.device_id
                                 AND n.item_id = f.item_id
                                 AND (n.created_at > f.created_at
                                      OR (n.created_at = f.created_at AND n.seq > f.seq)))
             ORDER BY f.seq",
            &[&model],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let labels: String = r.get(2);
                let split: Option<String> = r.get(4);
                TrainingRow {
                    feedback_id: r.get(0),
                    device_id: r.get(1),
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    embedding_f16: r.get(3),
                    split: split.map(|s| {
                        if s == "holdout" {
                            Split::Holdout
                        } else {
                            Split::Train
                        }
                    }),
                }
            })
            .collect())
    }

    fn save_splits(&self, splits: &[(String, Split)]) -> Result<(), ServerStoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let st = tx.prepare(
            "INSERT INTO feedback_split (feedback_id, split, assigned_at) VALUES ($1, $2, $3)
             ON CONFLICT (feedback_id) DO NOTHING",
        )?;
        let at = now();
        for (id, split) in splits {
            tx.execute(&st, &[id, &split.as_str(), &at])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn feedback_per_day(&self) -> Result<Vec<FeedbackDay>, ServerStoreError> {
        let rows = self.conn()?.query(
            "SELECT substr(received_at, 1, 10), model_name, labels, COUNT(*) FROM feedback
             GROUP BY 1, 2, 3 ORDER BY 1, 2",
            &[],
        )?;
        Ok(feedback_days(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))),
        ))
    }

    fn field_labels(&self) -> Result<Vec<FieldLabel>, ServerStoreError> {
        let rows = self.conn()?.query(
            "SELECT model_name, new_labels, device_id, received_at FROM feedback
             WHERE new_labels != '[]' ORDER BY received_at, seq",
            &[],
        )?;
        Ok(field_labels_of(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))),
        ))
    }

    fn feedback_received(&self, model: &str) -> Result<Vec<String>, ServerStoreError> {
        Ok(self
            .conn()?
            .query(
                "SELECT received_at FROM feedback WHERE model_name = $1 ORDER BY received_at, seq",
                &[&model],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn device_feedback(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<FeedbackSummary>, ServerStoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .conn()?
            .query(
                "SELECT feedback_id, model_name, model_version, kind, action, labels, received_at,
                        content IS NOT NULL
                 FROM feedback WHERE device_id = $1 ORDER BY received_at DESC, seq DESC LIMIT $2",
                &[&device_id, &limit],
            )?
            .iter()
            .map(row_to_summary)
            .collect())
    }

    fn feedback_item(&self, feedback_id: &str) -> Result<Option<FeedbackItem>, ServerStoreError> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT feedback_id, model_name, model_version, kind, action, labels, received_at,
                        content IS NOT NULL, device_id, item_id, annotator, created_at, content, content_type
                 FROM feedback WHERE feedback_id = $1",
                &[&feedback_id],
            )?
            .map(|r| FeedbackItem {
                summary: row_to_summary(&r),
                device_id: r.get(8),
                item_id: r.get(9),
                annotator: r.get(10),
                created_at: r.get(11),
                content: r.get(12),
                content_type: r.get(13),
            }))
    }
}

impl DriftStore for PostgresServerStore {
    fn store_drift(
        &self,
        device_id: &str,
        windows: &[(i64, crate::drift::DriftWindow)],
    ) -> Result<usize, ServerStoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let st = tx.prepare(
            "INSERT INTO drift_windows (device_id, window_id, model_name, model_version, items, novel, score,
                 state, top_score_psi, label_psi, novel_labels, novel_folders, started_at, ended_at, received_at,
                 languages)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (device_id, window_id) DO NOTHING",
        )?;
        let at = now();
        let mut n = 0;
        for (id, w) in windows {
            n += tx.execute(
                &st,
                &[
                    &device_id,
                    id,
                    &w.model_name,
                    &w.model_version,
                    &(w.items as i64),
                    &(w.novel as i64),
                    &w.score,
                    &w.state.as_str(),
                    &w.top_score_psi,
                    &w.label_psi,
                    &serde_json::to_string(&w.novel_labels).unwrap_or_default(),
                    &serde_json::to_string(&w.novel_folders).unwrap_or_default(),
                    &w.started_at,
                    &w.ended_at,
                    &at,
                    &serde_json::to_string(&w.languages).unwrap_or_default(),
                ],
            )? as usize;
        }
        tx.commit()?;
        Ok(n)
    }

    fn drift_latest(&self) -> Result<Vec<DeviceDrift>, ServerStoreError> {
        let rows = self.conn()?.query(
            "SELECT d.name, d.device_group, w.model_name, w.model_version, w.items, w.novel, w.score, w.state,
                    w.top_score_psi, w.label_psi, w.novel_labels, w.novel_folders, w.started_at, w.ended_at,
                    w.device_id, w.languages
             FROM drift_windows w JOIN devices d ON d.device_id = w.device_id
             ORDER BY d.name, w.model_name, w.window_id DESC",
            &[],
        )?;
        let windows = rows.iter().map(|r| {
            let labels: String = r.get(10);
            let folders: String = r.get(11);
            let state: String = r.get(7);
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                crate::drift::DriftWindow {
                    model_name: r.get(2),
                    model_version: r.get(3),
                    items: r.get::<_, i64>(4).max(0) as usize,
                    novel: r.get::<_, i64>(5).max(0) as usize,
                    score: r.get(6),
                    state: crate::drift::DriftState::parse(&state),
                    top_score_psi: r.get(8),
                    label_psi: r.get(9),
                    novel_labels: serde_json::from_str(&labels).unwrap_or_default(),
                    novel_folders: serde_json::from_str(&folders).unwrap_or_default(),
                    started_at: r.get(12),
                    ended_at: r.get(13),
                    languages: serde_json::from_str(&r.get::<_, String>(15)).unwrap_or_default(),
                },
            )
        });
        Ok(group_drift(windows))
    }

    fn device_drift(
        &self,
        device_id: &str,
        limit: usize,
    ) -> Result<Vec<crate::drift::DriftWindow>, ServerStoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .conn()?
            .query(
                "SELECT model_name, model_version, items, novel, score, state, top_score_psi, label_psi,
                        novel_labels, novel_folders, started_at, ended_at, languages
                 FROM drift_windows WHERE device_id = $1 ORDER BY window_id DESC LIMIT $2",
                &[&device_id, &limit],
            )?
            .iter()
            .map(|r| {
                let state: String = r.get(5);
                let labels: String = r.get(8);
                let folders: String = r.get(9);
                crate::drift::DriftWindow {
                    model_name: r.get(0),
                    model_version: r.get(1),
                    items: r.get::<_, i64>(2).max(0) as usize,
                    novel: r.get::<_, i64>(3).max(0) as usize,
                    score: r.get(4),
                    state: crate::drift::DriftState::parse(&state),
                    top_score_psi: r.get(6),
                    label_psi: r.get(7),
                    novel_labels: serde_json::from_str(&labels).unwrap_or_default(),
                    novel_folders: serde_json::from_str(&folders).unwrap_or_default(),
                    started_at: r.get(10),
                    ended_at: r.get(11),
                    languages: serde_json::from_str(&r.get::<_, String>(12)).unwrap_or_default(),
                }
            })
            .collect())
    }
}

impl RunStore for PostgresServerStore {
    fn start_run(
        &self,
        model: &str,
        base_version: &str,
        trigger: Trigger,
        feedback_seen: i64,
    ) -> Result<i64, ServerStoreError> {
        Ok(self
            .conn()?
            .query_one(
                "INSERT INTO training_runs (model_name, base_version, trigger, status, feedback_seen, started_at)
                 VALUES ($1, $2, $3, 'running', $4, $5) RETURNING run_id",
                &[&model, &base_version, &trigger, &feedback_seen, &now()],
            )?
            .get(0))
    }

    fn finish_run(&self, run_id: i64, end: &RunEnd) -> Result<(), ServerStoreError> {
        self.conn()?.execute(
            "UPDATE training_runs SET status = $2, reason = $3, candidate_version = $4, report = $5,
                    bundle_dir = $6, finished_at = $7
             WHERE run_id = $1",
            &[
                &run_id,
                &end.status.as_str(),
                &end.reason,
                &end.candidate_version,
                &end.report,
                &end.bundle_dir,
                &now(),
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
        self.conn()?.execute(
            "UPDATE training_runs SET status = 'published', reason = reason || $3
             WHERE model_name = $1 AND candidate_version = $2",
            &[&model, &version, &format!(" | {reason}")],
        )?;
        Ok(())
    }

    fn runs(&self, model: Option<&str>) -> Result<Vec<TrainingRun>, ServerStoreError> {
        Ok(self
            .conn()?
            .query(
                "SELECT run_id, model_name, base_version, candidate_version, trigger, status, reason,
                        feedback_seen, report, bundle_dir, started_at, finished_at
                 FROM training_runs WHERE $1::TEXT IS NULL OR model_name = $1 ORDER BY run_id DESC",
                &[&model],
            )?
            .iter()
            .map(row_to_run)
            .collect())
    }
}

impl JobStore for PostgresServerStore {
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
        Ok(self
            .conn()?
            .query_opt(
                "INSERT INTO training_jobs
                     (model_name, trigger, feedback_seen, state, enqueued_at, settings)
                 VALUES ($1, $2, $3, 'queued', $4, $5) ON CONFLICT DO NOTHING RETURNING job_id",
                &[&model, &trigger, &feedback_seen, &now(), &settings],
            )?
            .map(|r| r.get(0)))
    }

    fn training_job(&self, job_id: i64) -> Result<Option<TrainingJob>, ServerStoreError> {
        Ok(self
            .conn()?
            .query_opt(
                format!("SELECT {JOB_COLUMNS} FROM training_jobs WHERE job_id = $1").as_str(),
                &[&job_id],
            )?
            .map(|r| row_to_job(&r)))
    }

    fn try_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, ServerStoreError> {
        // One statement: the row lock of the upsert makes concurrent takers queue, and the
        // WHERE lets only a free, expired or own lease be taken.
        Ok(self
            .conn()?
            .query_opt(
                "INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                        expires_at = excluded.expires_at
                 WHERE leases.expires_at < $4 OR leases.owner = excluded.owner
                 RETURNING name",
                &[&name, &owner, &until, &now],
            )?
            .is_some())
    }

    fn release_lease(&self, name: &str, owner: &str) -> Result<(), ServerStoreError> {
        self.conn()?.execute(
            "DELETE FROM leases WHERE name = $1 AND owner = $2",
            &[&name, &owner],
        )?;
        Ok(())
    }

    fn claim_training(
        &self,
        owner: &str,
        now_unix: i64,
        lease_until: i64,
    ) -> Result<Option<TrainingJob>, ServerStoreError> {
        let mut c = self.conn()?;
        c.execute(
            "UPDATE training_jobs SET state = 'failed', finished_at = $1,
                    error = 'its process died ' || attempts || ' times while training; given up'
             WHERE state = 'running' AND lease_until < $2 AND attempts >= $3",
            &[&now(), &now_unix, &(MAX_JOB_ATTEMPTS as i32)],
        )?;
        // SKIP LOCKED: a row another process is claiming right now is passed over, and the
        // row lock makes the claim exclusive: one claimer per job.
        Ok(c.query_opt(
            format!(
                "UPDATE training_jobs SET state = 'running', owner = $1, lease_until = $2,
                        attempts = attempts + 1
                 WHERE job_id = (SELECT job_id FROM training_jobs
                                 WHERE state = 'queued' OR (state = 'running' AND lease_until < $3)
                                 ORDER BY job_id LIMIT 1
                                 FOR UPDATE SKIP LOCKED)
                 RETURNING {JOB_COLUMNS}"
            )
            .as_str(),
            &[&owner, &lease_until, &now_unix],
        )?
        .map(|r| row_to_job(&r)))
    }

    fn renew_training(
        &self,
        job_id: i64,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool, ServerStoreError> {
        let n = self.conn()?.execute(
            "UPDATE training_jobs SET lease_until = $1
             WHERE job_id = $2 AND owner = $3 AND state = 'running'",
            &[&lease_until, &job_id, &owner],
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
        let state = if error.is_some() { "failed" } else { "done" };
        let n = self.conn()?.execute(
            "UPDATE training_jobs SET state = $1, run_id = $2, error = $3, finished_at = $4
             WHERE job_id = $5 AND owner = $6 AND state = 'running'",
            &[&state, &run_id, &error, &now(), &job_id, &owner],
        )?;
        Ok(n == 1)
    }

    fn training_jobs(&self, limit: usize) -> Result<Vec<TrainingJob>, ServerStoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .conn()?
            .query(
                format!("SELECT {JOB_COLUMNS} FROM training_jobs ORDER BY job_id DESC LIMIT $1")
                    .as_str(),
                &[&limit],
            )?
            .iter()
            .map(row_to_job)
            .collect())
    }
}

impl AccountStore for PostgresServerStore {
    fn set_admin(&self, name: &str, password_hash: &str) -> Result<bool, ServerStoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let at = now();
        let existed = tx
            .query_opt("SELECT 1 FROM admins WHERE name = $1 FOR UPDATE", &[&name])?
            .is_some();
        tx.execute(
            "INSERT INTO admins (name, password_hash, created_at, password_set_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash,
               password_set_at = EXCLUDED.password_set_at",
            &[&name, &password_hash, &at],
        )?;
        if existed {
            // A new password ends every session signed in with the old one.
            tx.execute("DELETE FROM admin_sessions WHERE admin = $1", &[&name])?;
        }
        tx.commit()?;
        Ok(!existed)
    }

    fn remove_admin(&self, name: &str) -> Result<bool, ServerStoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        tx.execute("DELETE FROM admin_sessions WHERE admin = $1", &[&name])?;
        let n = tx.execute("DELETE FROM admins WHERE name = $1", &[&name])?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn admin_password_hash(&self, name: &str) -> Result<Option<String>, ServerStoreError> {
        Ok(self
            .conn()?
            .query_opt("SELECT password_hash FROM admins WHERE name = $1", &[&name])?
            .map(|r| r.get(0)))
    }

    fn create_session(
        &self,
        token_sha256: &str,
        admin: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), ServerStoreError> {
        self.conn()?.execute(
            "INSERT INTO admin_sessions (token_sha256, admin, csrf, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&token_sha256, &admin, &csrf, &now(), &expires_at],
        )?;
        Ok(())
    }

    fn session(
        &self,
        token_sha256: &str,
        now_unix: i64,
    ) -> Result<Option<AdminSession>, ServerStoreError> {
        let mut c = self.conn()?;
        c.execute(
            "DELETE FROM admin_sessions WHERE expires_at < $1",
            &[&now_unix],
        )?;
        Ok(c.query_opt(
            "SELECT admin, csrf FROM admin_sessions WHERE token_sha256 = $1",
            &[&token_sha256],
        )?
        .map(|r| AdminSession {
            admin: r.get(0),
            csrf: r.get(1),
        }))
    }

    fn delete_session(&self, token_sha256: &str) -> Result<(), ServerStoreError> {
        self.conn()?.execute(
            "DELETE FROM admin_sessions WHERE token_sha256 = $1",
            &[&token_sha256],
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
        let mut c = self.conn()?;
        c.execute(
            "DELETE FROM admin_confirmations WHERE expires_at < $1",
            &[&crate::server::unix_now()],
        )?;
        c.execute(
            "INSERT INTO admin_confirmations (token_sha256, session_sha256, action, expires_at)
             VALUES ($1, $2, $3, $4)",
            &[&token_sha256, &session_sha256, &action_json, &expires_at],
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
            .conn()?
            .query_opt(
                "DELETE FROM admin_confirmations
                 WHERE token_sha256 = $1 AND session_sha256 = $2 AND expires_at >= $3
                 RETURNING action",
                &[&token_sha256, &session_sha256, &now_unix],
            )?
            .map(|r| r.get(0)))
    }
}

impl AuditStore for PostgresServerStore {
    fn audit(&self, actor: &str, action: &str, detail: &str) -> Result<(), ServerStoreError> {
        self.conn()?.execute(
            "INSERT INTO audit (at, actor, action, detail) VALUES ($1, $2, $3, $4)",
            &[&now(), &actor, &action, &detail],
        )?;
        Ok(())
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, ServerStoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .conn()?
            .query(
                "SELECT audit_id, at, actor, action, detail FROM audit ORDER BY audit_id DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| AuditRecord {
                audit_id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                detail: r.get(4),
            })
            .collect())
    }
}

impl TaskStore for PostgresServerStore {
    fn put_task(&self, t: &TaskDefinition) -> Result<(), ServerStoreError> {
        let labels = serde_json::to_string(&t.labels).unwrap_or_default();
        let multi = i32::from(t.multi_label);
        self.conn()?.execute(
            "INSERT INTO tasks (name, backbone, labels, multi_label, channel, defined_by, defined_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET backbone = EXCLUDED.backbone,
               labels = EXCLUDED.labels, multi_label = EXCLUDED.multi_label,
               channel = EXCLUDED.channel, defined_by = EXCLUDED.defined_by,
               defined_at = EXCLUDED.defined_at",
            &[&t.name, &t.backbone, &labels, &multi, &t.channel, &t.defined_by, &t.defined_at],
        )?;
        Ok(())
    }

    fn tasks(&self) -> Result<Vec<TaskDefinition>, ServerStoreError> {
        let rows = self.conn()?.query(
            "SELECT name, backbone, labels, multi_label, channel, defined_by, defined_at
             FROM tasks ORDER BY name",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| TaskDefinition {
                name: r.get(0),
                backbone: r.get(1),
                labels: serde_json::from_str(&r.get::<_, String>(2)).unwrap_or_default(),
                multi_label: r.get::<_, i32>(3) != 0,
                channel: r.get(4),
                defined_by: r.get(5),
                defined_at: r.get(6),
            })
            .collect())
    }
}

fn row_to_summary(r: &Row) -> FeedbackSummary {
    let labels: String = r.get(5);
    FeedbackSummary {
        feedback_id: r.get(0),
        model: r.get(1),
        model_version: r.get(2),
        kind: r.get(3),
        action: r.get(4),
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        received_at: r.get(6),
        has_content: r.get(7),
    }
}
