//! Training jobs: the queue that makes each run happen on exactly one server process.
//! Every few seconds, each model whose feedback grew by `training.auto_train_after` rows
//! since its last run (or by `training.drift_train_after` rows when a device reports it
//! drifted) gets a job in the store's job table; each process claims at most one free job
//! and runs it (on a blocking thread so the API keeps answering). With several server
//! processes on one PostgreSQL database, the job table makes sure exactly one of them runs
//! each job; a job whose process died is taken over once its lease runs out. A process
//! whose lease was taken over stops its run and publishes nothing (the run checks its lease
//! before publishing).

use super::{Candidate, Outcome, TrainingError, TrainingSettings};
use crate::server::config::ServerConfig;
use crate::server::repository::{self, Repository};
use crate::server::store::{
    RunEnd, RunStatus, ServerStore, ServerStoreError, TrainingJob, Trigger,
};
use std::time::Duration;

/// One training run at a time in this process: two jobs claimed by the same process would
/// otherwise race for the same next version.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` while holding the process-wide training lock.
pub fn with_training_lock<T>(f: impl FnOnce() -> T) -> T {
    let _guard = TRAINING.lock().unwrap_or_else(|p| p.into_inner());
    f()
}

/// How often the background loop looks for work.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Models due for automatic retraining: feedback grew by at least `after` rows since the
/// last run (or since the start, if it never ran), or by `drift_after` rows for a model
/// that some device reports as drifted.
pub fn due_models(store: &dyn ServerStore, after: i64, drift_after: i64) -> Vec<String> {
    let Ok(mut models) = store.feedback_models() else {
        return vec![];
    };
    // A task is due when its own decisions or its backbone model's grew.
    for t in store.tasks().unwrap_or_default() {
        if !models.contains(&t.name) && models.contains(&t.backbone) {
            models.push(t.name);
        }
    }
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
            let count = super::feedback_seen(store, m).unwrap_or(0);
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

/// How long a claimed training job stays ours without renewal. The worker renews it every
/// third of this while it trains; a process that dies stops renewing, and once the lease has
/// run out another process takes the job over.
pub const JOB_LEASE: Duration = Duration::from_secs(60);

/// This process's name in the job table: host, pid and a random part (pids are reused).
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &rand[..8])
}

/// Queues a training job for every model [`due_models`] names (a model with a job queued or
/// running already gets no second one). Returns the ids of new jobs.
pub fn enqueue_due(store: &dyn ServerStore, after: i64, drift_after: i64) -> Vec<i64> {
    let mut queued = Vec::new();
    let recent = store.training_jobs(100).unwrap_or_default();
    for model in due_models(store, after, drift_after) {
        let seen = super::feedback_seen(store, &model).unwrap_or(0);
        // A job that already covers this very feedback is not queued again: one that failed
        // on it (no release to train from, say) waits for new feedback or an operator, and
        // one queued or running (or done) covers it. Any state counts, so a job that another
        // process queued and that failed between our look and our insert is not missed.
        if recent
            .iter()
            .any(|j| j.model_name == model && j.feedback_seen >= seen)
        {
            continue;
        }
        match store.enqueue_training(&model, Trigger::Auto, seen) {
            Ok(Some(id)) => {
                tracing::info!(model = %model, job = id, "enough new feedback: training queued");
                queued.push(id);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(model = %model, error = %e, "cannot queue training"),
        }
    }
    queued
}

/// What [`work_one`] did with the job it claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Trained: the run it produced (if `train` reported one).
    Done(Option<i64>),
    /// A finished run had already seen the feedback the job was queued for.
    Skipped,
    /// `train` failed with this message.
    Failed(String),
    /// The lease ran out while training and another process took the job over.
    LostLease,
}

/// Claims one training job, if any is free, and runs `train` on it while a helper thread
/// renews the lease every third of `lease`. Returns the job and what became of it.
///
/// `train` gets the job and a check, `still_ours`, to call before anything that must not
/// happen twice (publishing): it renews the lease there and then and answers false once the
/// lease is lost (renewal found another owner, or the lease ran out and was taken), after
/// which the run must stop without publishing. The outcome is then [`JobOutcome::LostLease`].
pub fn work_one(
    store: &dyn ServerStore,
    owner: &str,
    lease: Duration,
    train: impl FnOnce(&TrainingJob, &(dyn Fn() -> bool + Sync)) -> Result<Option<i64>, String>,
) -> Result<Option<(TrainingJob, JobOutcome)>, ServerStoreError> {
    let lease_secs = lease.as_secs().max(1) as i64;
    let now = crate::clock::unix_now();
    let Some(job) = store.claim_training(owner, now, now + lease_secs)? else {
        return Ok(None);
    };
    tracing::info!(model = %job.model_name, job = job.job_id, attempt = job.attempts, "training job claimed");
    // Another process may have trained this model on this feedback already (the job was
    // queued again between its run's end and our look): then there is nothing to do. A run
    // that never finished (its process died) does not count.
    // An operator's job always trains (they may have changed the settings).
    let covered = job.trigger == Trigger::Auto
        && store
            .runs(Some(&job.model_name))?
            .iter()
            .any(|r| r.finished_at.is_some() && r.feedback_seen >= job.feedback_seen);
    if covered {
        store.finish_training(job.job_id, owner, None, None)?;
        return Ok(Some((job, JobOutcome::Skipped)));
    }
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let lost = std::sync::atomic::AtomicBool::new(false);
    let (job_ref, lost_ref) = (&job, &lost);
    let result = std::thread::scope(|scope| {
        scope.spawn(move || {
            let every = Duration::from_secs((lease_secs as u64 / 3).max(1));
            // Renews until `stop_tx` is dropped (training ended) or the lease is lost.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every)
            {
                let until = crate::clock::unix_now() + lease_secs;
                match store.renew_training(job_ref.job_id, owner, until) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            job = job_ref.job_id,
                            "training job lease lost to another process"
                        );
                        lost_ref.store(true, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    Err(e) => tracing::warn!(
                        job = job_ref.job_id,
                        error = %e,
                        "cannot renew the training job lease"
                    ),
                }
            }
        });
        let still_ours = || {
            if lost_ref.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            let until = crate::clock::unix_now() + lease_secs;
            match store.renew_training(job_ref.job_id, owner, until) {
                Ok(true) => true,
                Ok(false) => {
                    tracing::warn!(
                        job = job_ref.job_id,
                        "training job lease lost: the run stops"
                    );
                    lost_ref.store(true, std::sync::atomic::Ordering::Relaxed);
                    false
                }
                // Unsure is not ours: better a run that is retried than one published twice.
                Err(e) => {
                    tracing::warn!(job = job_ref.job_id, error = %e, "cannot confirm the training job lease: the run stops");
                    false
                }
            }
        };
        let r = train(&job, &still_ours);
        drop(stop_tx);
        r
    });
    let (run_id, error) = match &result {
        Ok(run) => (*run, None),
        Err(e) => (None, Some(e.as_str())),
    };
    if !store.finish_training(job.job_id, owner, run_id, error)?
        || lost.load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(Some((job, JobOutcome::LostLease)));
    }
    let outcome = match result {
        Ok(run) => JobOutcome::Done(run),
        Err(e) => JobOutcome::Failed(e),
    };
    Ok(Some((job, outcome)))
}

/// Trains the model of `job`: with the settings the job carries (an operator's `train`)
/// or the configured ones, one run at a time in this process. `still_ours` is
/// [`work_one`]'s lease check. Returns the run's id.
pub fn train_job(
    store: &dyn ServerStore,
    repo: &Repository,
    cfg: &ServerConfig,
    job: &TrainingJob,
    still_ours: &(dyn Fn() -> bool + Sync),
) -> Result<Option<i64>, String> {
    crate::model::runtime::init(cfg.ort_lib.as_deref()).map_err(|e| e.to_string())?;
    let settings = match &job.settings {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| format!("job #{} carries unreadable settings: {e}", job.job_id))?,
        None => {
            // An automatic run of a task publishes to the task's channel.
            let mut s = cfg.training.clone();
            if let Ok(Some(t)) = store.task(&job.model_name) {
                s.channel = t.channel;
            }
            s
        }
    };
    let o = with_training_lock(|| {
        let candidate = super::run(
            store,
            repo,
            &job.model_name,
            &settings,
            job.trigger,
            still_ours,
        )?;
        settle(store, repo, candidate, &settings, still_ours)
    });
    let o = match o {
        Ok(o) => o,
        // Not a failure: the run is recorded (held, with the reason).
        Err(e @ super::TrainingError::NothingToTrain { run_id, .. }) => {
            tracing::info!(model = %job.model_name, reason = %e, "training run had nothing to do");
            return Ok(Some(run_id));
        }
        Err(e) => return Err(e.to_string()),
    };
    tracing::info!(
        model = %job.model_name,
        version = %o.report.candidate_version,
        status = o.status.as_str(),
        reason = %o.reason,
        "training run finished"
    );
    Ok(Some(o.run_id))
}

/// Ends a run: a candidate that passed the gate is signed and published to the configured
/// channel, groups and percentage (if automatic publishing is on), otherwise it is held with
/// the reason. `still_ours` is asked again once the repository lease is held, just before
/// publishing; a run whose job was taken over publishes nothing and is recorded as failed.
pub fn settle(
    store: &dyn ServerStore,
    repo: &Repository,
    c: Candidate,
    settings: &TrainingSettings,
    still_ours: &dyn Fn() -> bool,
) -> Result<Outcome, TrainingError> {
    let (model, version) = (&c.report.model, &c.report.candidate_version);
    let decided = if !c.report.gate.passed {
        Ok((
            RunStatus::Held,
            format!(
                "held: {}; inspect with `outpost-server models eval {version}`, publish by hand with `outpost-server models publish {version}` if acceptable",
                c.report.gate.problems.join("; ")
            ),
        ))
    } else if !settings.publish {
        Ok((
            RunStatus::Held,
            "passed the gate; automatic publishing is off".to_string(),
        ))
    } else {
        repository::publish_if(
            repo,
            still_ours,
            &c.bundle_dir,
            &settings.channel,
            &settings.groups,
            settings.percent,
        )
        .map(|tv| {
            (
                RunStatus::Published,
                format!(
                    "published to {} {} {}% as targets version {tv}",
                    settings.channel,
                    repository::publish::audience(&settings.groups),
                    settings.percent
                ),
            )
        })
    };
    let (status, reason) =
        decided.map_err(|e| super::record_failure(store, c.run_id, model, e.into()))?;
    store.finish_run(
        c.run_id,
        &RunEnd {
            status,
            reason: reason.clone(),
            candidate_version: Some(version.clone()),
            report: Some(c.report_json.clone()),
            bundle_dir: Some(c.bundle_dir.display().to_string()),
        },
    )?;
    store.audit(
        "trainer",
        "train",
        &format!("{model} {} -> {version}: {reason}", c.report.base_version),
    )?;
    Ok(Outcome {
        run_id: c.run_id,
        status,
        reason,
        report: c.report,
        bundle_dir: c.bundle_dir,
    })
}

/// Claims one free training job, if any, and trains it ([`work_one`] with [`train_job`]).
pub fn work_once(
    store: &dyn ServerStore,
    repo: &Repository,
    cfg: &ServerConfig,
    owner: &str,
) -> Result<Option<(TrainingJob, JobOutcome)>, ServerStoreError> {
    work_one(store, owner, JOB_LEASE, |job, still_ours| {
        train_job(store, repo, cfg, job, still_ours)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{DriftState, DriftWindow};
    use crate::protocol::FeedbackRecord;
    use crate::server::store::{DeviceStore, DriftStore, FeedbackStore, RunStore};
    use crate::server::store::{SqliteServerStore, Via};

    fn record(i: usize) -> FeedbackRecord {
        FeedbackRecord {
            feedback_id: uuid::Uuid::new_v4().to_string(),
            item_id: format!("item-{i}"),
            kind: crate::protocol::ItemKind::Image,
            model_name: "landcover".into(),
            model_version: "1.0.0".into(),
            action: crate::protocol::Action::Correct,
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
            languages: vec![],
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
