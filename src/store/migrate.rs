//! Schema migrations: the numbered SQL files in `migrations/agent/` (and, for the server's
//! database, `migrations/server/`), embedded in the binary and applied in order at open. `PRAGMA user_version` holds the number of the last one applied,
//! so each runs exactly once, inside a transaction with the version bump.

use rusqlite::Connection;

/// (number, file name, SQL) for each migration, in order.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "0001_items_predictions.sql",
        include_str!("../../migrations/agent/0001_items_predictions.sql"),
    ),
    (
        2,
        "0002_feedback_outbox.sql",
        include_str!("../../migrations/agent/0002_feedback_outbox.sql"),
    ),
    (
        3,
        "0003_drift.sql",
        include_str!("../../migrations/agent/0003_drift.sql"),
    ),
    (
        4,
        "0004_model_updates.sql",
        include_str!("../../migrations/agent/0004_model_updates.sql"),
    ),
    (
        5,
        "0005_item_sightings.sql",
        include_str!("../../migrations/agent/0005_item_sightings.sql"),
    ),
    (
        6,
        "0006_item_language.sql",
        include_str!("../../migrations/agent/0006_item_language.sql"),
    ),
    (
        7,
        "0007_drift_languages.sql",
        include_str!("../../migrations/agent/0007_drift_languages.sql"),
    ),
];

/// Applies every agent migration newer than the database.
pub fn migrate(conn: &mut Connection) -> Result<u32, super::StoreError> {
    migrate_with(conn, MIGRATIONS)
}

/// Applies every migration of `migrations` newer than the database. Refuses a database
/// written by a newer program.
pub fn migrate_with(
    conn: &mut Connection,
    migrations: &[(u32, &str, &str)],
) -> Result<u32, super::StoreError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = migrations.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(super::StoreError::TooNew {
            found: current,
            supported: latest,
        });
    }
    for (n, name, sql) in migrations {
        if *n <= current {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| super::StoreError::Migration {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        tx.pragma_update(None, "user_version", n)?;
        tx.commit()?;
        tracing::debug!(migration = name, "applied database migration");
    }
    Ok(latest)
}
