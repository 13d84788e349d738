//! Work the serving process does on its own, beside the API:
//! - **automatic retraining**: every few seconds, each model whose feedback grew by
//!   `training.auto_train_after` rows since its last run (or by `training.drift_train_after`
//!   rows when a device reports it drifted) is retrained (one run at a time,
//!   on a blocking thread so the API keeps answering);
//! - **fresh timestamps**: the timestamp metadata expires after a day (so a replayed old
//!   state goes stale quickly); it is re-signed when less than half a day is left.

use super::config::ServerConfig;
use super::store::{ServerStore, Trigger};
use std::sync::Arc;
use std::time::Duration;

/// How often the background loop looks for work.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Models due for automatic retraining: feedback grew by at least `after` rows since the
/// last run (or since the start, if it never ran), or by `drift_after` rows for a model
/// that some device reports as drifted.
pub fn due_models(store: &dyn ServerStore, after: i64, drift_after: i64) -> Vec<String> {
    let Ok(models) = store.feedback_models() else {
        return vec![];
    };
    let drifted: std::collections::BTreeSet<String> = store
        .drift_latest()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.latest.state == crate::drift::DriftState::Drifted)
        .map(|d| d.latest.model_name)
        .collect();
    models
        .into_iter()
        .filter(|m| {
            let count = store.model_feedback_count(m).unwrap_or(0);
            let last = store
                .runs(Some(m))
                .ok()
                .and_then(|r| r.first().map(|r| r.feedback_seen))
                .unwrap_or(0);
            let new = count - last;
            (after > 0 && new >= after)
                || (drift_after > 0 && drifted.contains(m) && new >= drift_after)
        })
        .collect()
}

/// Runs until the process ends.
pub async fn run(store: Arc<dyn ServerStore>, cfg: ServerConfig) {
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let dir = cfg.data_dir.clone();
        match super::publish::refresh_timestamp(&dir, time::Duration::hours(12)) {
            Ok(Some(v)) => tracing::info!(version = v, "timestamp metadata re-signed"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot re-sign the timestamp metadata"),
        }
        let due = due_models(
            store.as_ref(),
            cfg.training.auto_train_after,
            cfg.training.drift_train_after,
        );
        for model in due {
            let (store, cfg) = (store.clone(), cfg.clone());
            tracing::info!(model = %model, "enough new feedback: retraining");
            let result = tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::model::runtime::init(cfg.ort_lib.as_deref()) {
                    return Err(e.to_string());
                }
                super::ops::with_training_lock(|| {
                    super::training::run(
                        store.as_ref(),
                        &cfg.data_dir,
                        &model,
                        &cfg.training,
                        Trigger::Auto,
                    )
                })
                .map(|o| (model, o))
                .map_err(|e| e.to_string())
            })
            .await;
            match result {
                Ok(Ok((model, o))) => tracing::info!(
                    model = %model,
                    version = %o.report.candidate_version,
                    status = o.status.as_str(),
                    reason = %o.reason,
                    "training run finished"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "training run failed"),
                Err(e) => tracing::error!(error = %e, "training task panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{DriftState, DriftWindow};
    use crate::protocol::FeedbackRecord;
    use crate::server::store::{SqliteServerStore, Via};

    fn record(i: usize) -> FeedbackRecord {
        FeedbackRecord {
            feedback_id: uuid::Uuid::new_v4().to_string(),
            item_id: format!("item-{i}"),
            kind: "image".into(),
            model_name: "landcover".into(),
            model_version: "1.0.0".into(),
            action: "correct".into(),
            labels: vec!["flooded".into()],
            new_labels: vec!["flooded".into()],
            annotator: "t".into(),
            created_at: "2026-11-28T00:00:00Z".into(),
            supersedes: None,
            embedding_f16: crate::protocol::b64(&[0u8; 8]),
            content: None,
            content_type: None,
        }
    }

    fn window(state: DriftState) -> DriftWindow {
        DriftWindow {
            model_name: "landcover".into(),
            model_version: "1.0.0".into(),
            items: 50,
            novel: 40,
            score: 0.8,
            state,
            top_score_psi: None,
            label_psi: None,
            novel_labels: vec![],
            novel_folders: vec![],
            started_at: "2026-11-28T00:00:00Z".into(),
            ended_at: "2026-11-28T00:01:00Z".into(),
        }
    }

    #[test]
    fn a_drifted_model_is_due_after_fewer_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteServerStore::open(&tmp.path().join("server.db")).unwrap();
        let d = store
            .add_device("laptop", "north", "code", "2099-01-01T00:00:00Z")
            .unwrap();
        let records: Vec<FeedbackRecord> = (0..25).map(record).collect();
        store.ingest(&d.device_id, &records, Via::Usb).unwrap();
        assert!(
            due_models(&store, 200, 20).is_empty(),
            "25 < 200 and no drift"
        );
        store
            .store_drift(&d.device_id, &[(1, window(DriftState::Watch))])
            .unwrap();
        assert!(
            due_models(&store, 200, 20).is_empty(),
            "watch is not drifted"
        );
        store
            .store_drift(&d.device_id, &[(2, window(DriftState::Drifted))])
            .unwrap();
        assert_eq!(due_models(&store, 200, 20), vec!["landcover".to_string()]);
        assert!(due_models(&store, 200, 0).is_empty(), "drift trigger off");
        assert_eq!(due_models(&store, 25, 0), vec!["landcover".to_string()]);
        // A run that saw those rows resets the count.
        store
            .start_run("landcover", "1.0.0", Trigger::Auto, 25)
            .unwrap();
        assert!(due_models(&store, 200, 20).is_empty());
    }
}
