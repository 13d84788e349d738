//! Retention: raw items that were reviewed and whose decisions the server acknowledged are
//! removed from the laptop after `retention.purge_after_days` (`outpost purge`).
//!
//! An item is purged whole: the item row (tile bytes or report text, its file path and
//! place), its predictions (scores and embeddings) and its feedback (labels and embedding)
//! with their acknowledged outbox rows. Items never reviewed stay (they still wait for a
//! person), and so does every item with a decision not yet acknowledged by the server, so
//! no field work is lost. The deletion runs with SQLite's `secure_delete` on, then the WAL
//! is checkpointed and truncated and the database is rebuilt with `VACUUM`, so the bytes
//! are gone from the database file and its journal, not just unlinked. (Copies the file
//! system or an SSD keeps of old blocks are out of SQLite's reach: that is what encryption
//! at rest is for.)

use super::{Store, StoreError};
use rusqlite::params;

/// Retention settings (`[retention]` in the agent config).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days after the server acknowledged an item's last decision before the item is
    /// purged by `outpost purge`. 0 purges every reviewed and synced item.
    pub purge_after_days: u32,
    /// What the agent wipes when the server says this device was revoked.
    pub on_revoked: RevokedPolicy,
    /// Seconds between automatic purges in `outpost run` (0: only `outpost purge`).
    pub check_interval_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            purge_after_days: 30,
            on_revoked: RevokedPolicy::WipeSynced,
            check_interval_secs: 3600,
        }
    }
}

/// What a revoked device wipes (`retention.on_revoked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevokedPolicy {
    /// Every item, prediction and decision except the items with decisions the server
    /// never received (they stay, so no field work is lost), and the device key.
    WipeSynced,
    /// Everything about items, the unsynced outbox too, and the device key.
    WipeAll,
    /// Nothing (the operator will collect the laptop).
    Keep,
}

/// What a purge removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PurgeReport {
    /// Items removed.
    pub items: usize,
    /// Their predictions.
    pub predictions: usize,
    /// Their feedback decisions (all acknowledged by the server).
    pub feedback: usize,
    /// Items kept because a decision on them still waits to be synced.
    pub kept_unsynced: usize,
    /// Whether nothing was deleted (dry run).
    pub dry_run: bool,
}

/// Items every decision of which the server acknowledged, the last before `cutoff`.
const PURGEABLE: &str = "
    SELECT i.item_id FROM items i
    WHERE EXISTS (SELECT 1 FROM feedback f WHERE f.item_id = i.item_id)
      AND NOT EXISTS (
          SELECT 1 FROM feedback f LEFT JOIN outbox o ON o.feedback_id = f.feedback_id
          WHERE f.item_id = i.item_id AND o.acked_at IS NULL)
      AND (SELECT MAX(o.acked_at) FROM feedback f JOIN outbox o ON o.feedback_id = f.feedback_id
           WHERE f.item_id = i.item_id) <= ?1";

/// Reviewed items with a decision the server has not acknowledged yet.
const UNSYNCED: &str = "
    SELECT COUNT(DISTINCT f.item_id) FROM feedback f
    LEFT JOIN outbox o ON o.feedback_id = f.feedback_id
    WHERE o.acked_at IS NULL";

/// Items with no decision waiting for the server (`WipeSynced`), or every item (`WipeAll`).
const WIPE_SYNCED: &str = "
    SELECT i.item_id FROM items i
    WHERE NOT EXISTS (
        SELECT 1 FROM feedback f LEFT JOIN outbox o ON o.feedback_id = f.feedback_id
        WHERE f.item_id = i.item_id AND o.acked_at IS NULL)";
const WIPE_ALL: &str = "SELECT item_id FROM items";

/// What a revocation wipe removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WipeReport {
    /// Items removed.
    pub items: usize,
    /// Items kept because a decision on them never reached the server.
    pub kept_unsynced: usize,
    /// Whether the device key file was deleted.
    pub key_deleted: bool,
}

/// Wipes item data after the server revoked this device, per `policy`. The device key goes
/// too (it is refused anyway); enrolling again gives the laptop a new one.
pub fn wipe_after_revocation(
    store: &Store,
    data_dir: &std::path::Path,
    policy: RevokedPolicy,
) -> Result<WipeReport, StoreError> {
    let mut report = WipeReport::default();
    let sql = match policy {
        RevokedPolicy::Keep => return Ok(report),
        RevokedPolicy::WipeSynced => WIPE_SYNCED,
        RevokedPolicy::WipeAll => WIPE_ALL,
    };
    let ids: Vec<String> = {
        let mut st = store.conn().prepare(sql)?;
        let rows = st.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    report.items = delete_items(store, &ids)?;
    report.kept_unsynced = store
        .conn()
        .query_row("SELECT COUNT(*) FROM items", [], |r| r.get::<_, i64>(0))?
        as usize;
    let key = data_dir.join("device.key");
    report.key_deleted = key.exists() && std::fs::remove_file(&key).is_ok();
    // The key that seals USB feedback files for that server goes with the device key.
    store
        .conn()
        .execute("DELETE FROM agent_state WHERE key = 'export_key'", [])?;
    tracing::warn!(
        items = report.items,
        kept_unsynced = report.kept_unsynced,
        key_deleted = report.key_deleted,
        "this device was revoked: item data wiped"
    );
    Ok(report)
}

/// Deletes items with everything that refers to them, zeroing freed pages, then rebuilds
/// the file and truncates the WAL. Returns the number of items deleted.
fn delete_items(store: &Store, ids: &[String]) -> Result<usize, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let conn = store.conn();
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let deleted = (|| -> rusqlite::Result<()> {
        for id in ids {
            conn.execute(
                "DELETE FROM outbox WHERE feedback_id IN (SELECT feedback_id FROM feedback WHERE item_id = ?1)",
                params![id],
            )?;
            conn.execute("DELETE FROM feedback WHERE item_id = ?1", params![id])?;
            conn.execute("DELETE FROM predictions WHERE item_id = ?1", params![id])?;
            conn.execute("DELETE FROM item_sightings WHERE item_id = ?1", params![id])?;
            conn.execute("DELETE FROM items WHERE item_id = ?1", params![id])?;
        }
        Ok(())
    })();
    match deleted {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    // Rebuild the file without the freed pages, and empty the write-ahead log.
    conn.execute_batch(
        "PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
    )?;
    Ok(ids.len())
}

/// Removes what the policy says: reviewed items whose decisions were all acknowledged more
/// than `older_than_days` days ago. `dry_run` counts without deleting.
pub fn purge(
    store: &Store,
    older_than_days: u32,
    dry_run: bool,
) -> Result<PurgeReport, StoreError> {
    // Same form as every stored timestamp (RFC 3339 UTC), so text order is time order.
    let cutoff = (time::OffsetDateTime::now_utc()
        - time::Duration::days(i64::from(older_than_days)))
    .format(&time::format_description::well_known::Rfc3339)
    .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    let conn = store.conn();
    let ids: Vec<String> = {
        let mut st = conn.prepare(PURGEABLE)?;
        let rows = st.query_map([&cutoff], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut report = PurgeReport {
        kept_unsynced: conn.query_row(UNSYNCED, [], |r| r.get::<_, i64>(0))? as usize,
        dry_run,
        ..Default::default()
    };
    let count = |sql: &str, id: &str| -> Result<usize, StoreError> {
        Ok(conn.query_row(sql, [id], |r| r.get::<_, i64>(0))? as usize)
    };
    for id in &ids {
        report.predictions += count("SELECT COUNT(*) FROM predictions WHERE item_id = ?1", id)?;
        report.feedback += count("SELECT COUNT(*) FROM feedback WHERE item_id = ?1", id)?;
    }
    report.items = ids.len();
    if dry_run || ids.is_empty() {
        return Ok(report);
    }
    delete_items(store, &ids)?;
    tracing::info!(
        items = report.items,
        predictions = report.predictions,
        feedback = report.feedback,
        "purged reviewed and synced items"
    );
    Ok(report)
}

/// `outpost run`'s retention task: purges by policy at start and every
/// `check_interval_secs` until `shutdown` changes. A failed purge is logged and retried at
/// the next tick (a busy database is not an emergency).
pub async fn run_loop(
    db: std::path::PathBuf,
    settings: RetentionSettings,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if settings.check_interval_secs == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(settings.check_interval_secs);
    loop {
        let (p, days) = (db.clone(), settings.purge_after_days);
        let result = tokio::task::spawn_blocking(move || -> Result<PurgeReport, StoreError> {
            purge(&Store::open(&p)?, days, false)
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "retention purge failed; will retry"),
            Err(e) => tracing::error!(error = %e, "retention purge panicked"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
