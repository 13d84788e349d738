//! Schema migrations: the numbered SQL files in `migrations/`, embedded in the binary and
//! applied in order at open. `PRAGMA user_version` holds the number of the last one applied,
//! so each runs exactly once, inside a transaction with the version bump.

use rusqlite::Connection;

/// (number, file name, SQL) for each migration, in order.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "0001_items_predictions.sql",
        include_str!("../../migrations/0001_items_predictions.sql"),
    ),
    (
        2,
        "0002_feedback_outbox.sql",
        include_str!("../../migrations/0002_feedback_outbox.sql"),
    ),
];

/// Applies every migration newer than the database. Refuses a database from a newer agent.
pub fn migrate(conn: &mut Connection) -> Result<u32, super::StoreError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(super::StoreError::TooNew {
            found: current,
            supported: latest,
        });
    }
    for (n, name, sql) in MIGRATIONS {
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
        tracing::info!(migration = name, "applied database migration");
    }
    Ok(latest)
}
