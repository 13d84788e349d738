//! Sending drift summaries (src/drift.rs) to the server: the windows scored since the last
//! acknowledged one, signed like feedback. Small (a few hundred bytes per window of 50
//! items, no raw data), so it rides along with every successful sync.

use super::{error_from, read_json, SyncClient, SyncError, MAX_JSON_ANSWER};
use crate::protocol::{DriftAck, DriftUpload, PROTOCOL_VERSION};
use crate::store::Store;
use std::path::Path;

/// Agent state key: the highest window id the server acknowledged.
pub const DRIFT_SENT_KEY: &str = "drift_sent_window_id";

impl SyncClient {
    /// Pushes drift windows not yet acknowledged; returns how many were sent.
    pub async fn push_drift(&self, store_path: &Path) -> Result<usize, SyncError> {
        let path = store_path.to_path_buf();
        let windows = tokio::task::spawn_blocking(move || -> Result<_, SyncError> {
            let store = Store::open(&path)?;
            let after: i64 = store
                .state(DRIFT_SENT_KEY)?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            crate::drift::windows_after(&store, after)
                .map_err(|e| SyncError::Protocol(e.to_string()))
        })
        .await
        .map_err(|e| SyncError::Protocol(e.to_string()))??;
        if windows.is_empty() {
            return Ok(0);
        }
        let n = windows.len();
        let json = serde_json::to_vec(&DriftUpload {
            protocol: PROTOCOL_VERSION,
            windows,
        })
        .map_err(|e| SyncError::Protocol(e.to_string()))?;
        let body =
            zstd::bulk::compress(&json, 9).map_err(|e| SyncError::Protocol(e.to_string()))?;
        let res = self.signed_post("/v1/drift", body).await?;
        if !res.status().is_success() {
            return Err(error_from(res).await);
        }
        let ack: DriftAck =
            read_json(res, MAX_JSON_ANSWER, &self.base, "answer to /v1/drift").await?;
        let path = store_path.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<(), SyncError> {
            Store::open(&path)?.set_state(DRIFT_SENT_KEY, &ack.up_to.to_string())?;
            Ok(())
        })
        .await
        .map_err(|e| SyncError::Protocol(e.to_string()))??;
        Ok(n)
    }
}
