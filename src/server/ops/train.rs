//! "Train now" (`outpost-server train`, the dashboard's button): a training job is queued
//! in the job table so exactly one server process runs it, and the command line waits for
//! it (working the queue itself, so it also works with no server running).

use super::OpsError;
use crate::server::config::ServerConfig;
use crate::server::repository::Repository;
use crate::server::store::{ServerStore, TrainingJob, TrainingRun, Trigger};
use crate::server::training::TrainingSettings;
use std::time::Duration;

/// What [`enqueue_train`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// A new job with this id.
    New(i64),
    /// A job for the model was queued or running already (this id): nothing new queued.
    AlreadyOpen(i64),
}

impl Queued {
    /// The job to follow.
    pub fn job_id(self) -> i64 {
        match self {
            Queued::New(j) | Queued::AlreadyOpen(j) => j,
        }
    }
}

/// `train` (the command and the dashboard's "train now"): queues a training job for `model`
/// with `settings` in the job table, so that exactly one server process runs it (its
/// settings travel with the job). Does not wait; see [`wait_for_job`].
pub fn enqueue_train(
    store: &dyn ServerStore,
    model: &str,
    settings: &TrainingSettings,
    actor: &str,
) -> Result<Queued, OpsError> {
    let seen = crate::server::training::feedback_seen(store, model)?;
    let json = serde_json::to_string(settings).unwrap_or_default();
    match store.enqueue_training_with(model, Trigger::Operator, seen, Some(&json))? {
        Some(job) => {
            store.audit(actor, "train", &format!("{model} (job #{job} queued)"))?;
            Ok(Queued::New(job))
        }
        None => {
            let open = store
                .training_jobs(200)?
                .into_iter()
                .find(|j| j.model_name == model && !j.state.ended())
                .map(|j| j.job_id)
                .unwrap_or(0);
            Ok(Queued::AlreadyOpen(open))
        }
    }
}

/// Waits until job `job` is done or failed, calling `work` between looks (the command line
/// passes a function that claims and runs free jobs itself, so `outpost-server train`
/// also works with no server running; a serving process may claim the job first, and then
/// this only waits). Gives up after `limit`.
pub fn wait_for_job(
    store: &dyn ServerStore,
    job: i64,
    limit: Duration,
    mut work: impl FnMut(),
) -> Result<TrainingJob, OpsError> {
    let started = std::time::Instant::now();
    loop {
        let j = store.training_job(job)?.ok_or(OpsError::JobTimeout {
            job,
            state: "missing".into(),
            waited: started.elapsed(),
        })?;
        if j.state.ended() {
            return Ok(j);
        }
        if started.elapsed() > limit {
            return Err(OpsError::JobTimeout {
                job,
                state: j.state.to_string(),
                waited: started.elapsed(),
            });
        }
        work();
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What [`train_and_wait`] saw: the job, and the run it recorded (none if it failed first).
#[derive(Debug, Clone)]
pub struct Trained {
    /// Whether the job was new or one already open.
    pub queued: Queued,
    /// The job as it ended.
    pub job: TrainingJob,
    /// Its run.
    pub run: Option<TrainingRun>,
}

/// Queues a training job for `model` and waits (up to an hour) for it to end, running free
/// jobs in this process meanwhile. `on_queued` is told at once, before the wait.
pub fn train_and_wait(
    store: &dyn ServerStore,
    repo: &Repository,
    cfg: &ServerConfig,
    model: &str,
    settings: &TrainingSettings,
    on_queued: impl FnOnce(Queued),
) -> Result<Trained, OpsError> {
    let queued = enqueue_train(store, model, settings, "operator")?;
    on_queued(queued);
    let owner = crate::server::training::job::worker_id();
    let job = wait_for_job(store, queued.job_id(), Duration::from_secs(3600), || {
        if let Err(e) = crate::server::training::job::work_once(store, repo, cfg, &owner) {
            tracing::warn!(error = %e, "training job queue unavailable");
        }
    })?;
    let run = match job.run_id {
        Some(id) => store
            .runs(Some(model))?
            .into_iter()
            .find(|r| r.run_id == id),
        None => None,
    };
    Ok(Trained { queued, job, run })
}

/// An operator's overrides of the configured training settings for one `train` command.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Keep the candidate for an operator even if it passes the gate.
    pub no_publish: bool,
    /// Largest allowed drop.
    pub tolerance: Option<f64>,
    /// Where a passing candidate goes: channel.
    pub channel: Option<String>,
    /// Device groups (empty: as configured).
    pub groups: Vec<String>,
    /// Share of devices.
    pub percent: Option<u8>,
}

impl Overrides {
    /// The configured settings with these overrides applied.
    pub fn apply(self, configured: &TrainingSettings) -> TrainingSettings {
        let mut s = configured.clone();
        s.publish &= !self.no_publish;
        s.tolerance = self.tolerance.unwrap_or(s.tolerance);
        s.channel = self.channel.unwrap_or(s.channel);
        if !self.groups.is_empty() {
            s.groups = self.groups;
        }
        s.percent = self.percent.unwrap_or(s.percent);
        s
    }
}
