//! Work the serving process does on its own, beside the API, every few seconds:
//! - **automatic retraining**: queue the training jobs that are due and run at most one
//!   ([`super::training::job`]);
//! - **fresh timestamps**: the timestamp metadata expires after a day (so a replayed old
//!   state goes stale quickly); it is re-signed when less than half a day is left, once
//!   across all processes (under the repository lease, with put-if-absent of the new
//!   version in the shared blob store: see [`super::repository::refresh_timestamp`]).

use super::config::ServerConfig;
use super::repository::Repository;
use super::store::ServerStore;
use super::training::job::{enqueue_due, work_once, worker_id, JobOutcome, CHECK_EVERY};
use std::sync::Arc;

/// Runs until the process ends. Every server process runs this loop; the job table makes
/// sure each training job is run by exactly one of them.
pub async fn run(store: Arc<dyn ServerStore>, repo: Repository, cfg: ServerConfig) {
    let owner = worker_id();
    tracing::info!(worker = %owner, "background work started");
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // The store may be PostgreSQL's blocking client, and the blob store is read from
        // blocking code: never on an async thread.
        let (store, repo, cfg, owner) = (store.clone(), repo.clone(), cfg.clone(), owner.clone());
        let result = tokio::task::spawn_blocking(move || {
            match super::repository::refresh_timestamp(&repo, time::Duration::hours(12)) {
                Ok(Some(v)) => tracing::info!(version = v, "timestamp metadata re-signed"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot re-sign the timestamp metadata"),
            }
            enqueue_due(
                store.as_ref(),
                cfg.training.auto_train_after,
                cfg.training.drift_train_after,
            );
            work_once(store.as_ref(), &repo, &cfg, &owner)
        })
        .await;
        match result {
            Ok(Ok(Some((job, JobOutcome::Failed(e))))) => {
                tracing::warn!(model = %job.model_name, error = %e, "training run failed")
            }
            Ok(Ok(Some((job, outcome)))) => {
                tracing::info!(model = %job.model_name, job = job.job_id, outcome = ?outcome, "training job ended")
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "training job queue unavailable"),
            Err(e) => tracing::error!(error = %e, "training task panicked"),
        }
    }
}
