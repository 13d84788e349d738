//! Operator actions, one function per action, shared by the command line
//! (`outpost-server models publish|stage|withdraw`, `train`, `devices revoke`) and the
//! operators' dashboard, so both do exactly the same thing and leave the same audit record
//! (the action is named as the command is: `models withdraw`, `devices revoke`, ...). The
//! `actor` is who did it: `operator` at the command line, `operator:<name>` on the page.
//!
//! - this module: publish, stage, withdraw a release; revoke a device.
//! - [`devices`]: adding a device and its one-time enrollment code.
//! - [`keys`]: creating and rotating the repository's keys.
//! - [`train`]: "train now": queue a job and wait for it.
//! - [`tasks`]: defining a task (a new question as a model of its own), and the tasks the
//!   field proposes.
//! - [`usb`]: USB files: a release with its signed metadata for a laptop with no network,
//!   and decisions brought back from the field.
//! - [`text`]: how the results of these actions and the server's listings read at a
//!   terminal (what `outpost-server` prints).

pub mod devices;
pub mod keys;
pub mod tasks;
pub mod text;
pub mod train;
pub mod usb;

pub use crate::server::training::job::with_training_lock;
pub use train::{enqueue_train, wait_for_job, Queued};

use super::repository::{self, PublishError, Repository};
use super::store::{Device, ServerStore, ServerStoreError, TrainingRun};
use super::training::TrainingError;
use std::path::PathBuf;
use std::time::Duration;

/// Why an operator action could not be done.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Signing or publishing.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The database.
    #[error(transparent)]
    Store(#[from] ServerStoreError),
    /// Training.
    #[error(transparent)]
    Training(#[from] TrainingError),
    /// No training run built that candidate.
    #[error("no candidate {version}{}; see `outpost-server models list`", .model.as_ref().map(|m| format!(" of {m}")).unwrap_or_default())]
    NoCandidate {
        /// The version asked for.
        version: String,
        /// The model, if given.
        model: Option<String>,
    },
    /// Several models have a candidate of that version.
    #[error("several models have a candidate {version}: say which with --model ({models})")]
    AmbiguousCandidate {
        /// The version asked for.
        version: String,
        /// The models that have it.
        models: String,
    },
    /// The run kept no bundle (it failed before building one).
    #[error("run #{0} kept no bundle")]
    NoBundle(i64),
    /// ONNX Runtime could not be loaded (training evaluates bundles with it).
    #[error("{0}")]
    Runtime(String),
    /// Files (USB exports and imports).
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// A USB file (reading or writing it).
    #[error(transparent)]
    Usb(#[from] crate::store::usb::UsbFileError),
    /// A USB update file could not be written.
    #[error(transparent)]
    Update(#[from] crate::update::UpdateError),
    /// Something this process needs failed (randomness, the clock's formatting).
    #[error("{0}")]
    Internal(String),
    /// What the operator asked for does not make sense (said how to fix it).
    #[error("{0}")]
    Invalid(String),
    /// Nothing matched what the operator named.
    #[error("{0}")]
    NotFound(String),
    /// Not possible as asked; the message says what to do instead.
    #[error("{0}")]
    Refused(String),
    /// A queued training job did not end in time.
    #[error("training job #{job} has not ended after {waited:?} (state {state}); `outpost-server jobs` shows it")]
    JobTimeout {
        /// The job.
        job: i64,
        /// Its last state.
        state: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// The training run that built candidate `version` (of `model`, if several have it).
pub fn find_candidate(
    store: &dyn ServerStore,
    version: &str,
    model: Option<&str>,
) -> Result<TrainingRun, OpsError> {
    let mut runs: Vec<_> = store
        .runs(model)?
        .into_iter()
        .filter(|r| r.candidate_version.as_deref() == Some(version))
        .collect();
    match runs.len() {
        0 => Err(OpsError::NoCandidate {
            version: version.into(),
            model: model.map(String::from),
        }),
        1 => Ok(runs.remove(0)),
        _ => Err(OpsError::AmbiguousCandidate {
            version: version.into(),
            models: runs
                .iter()
                .map(|r| r.model_name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The bundle folder published.
    pub bundle_dir: PathBuf,
    /// The new targets version.
    pub targets_version: u64,
}

/// `models publish`: publishes a bundle folder, or a candidate version kept by a training
/// run, to `channel`, `groups` (empty: every group) and `percent`; marks the candidate's
/// run as published.
#[allow(clippy::too_many_arguments)]
pub fn publish(
    store: &dyn ServerStore,
    repo: &Repository,
    bundle_or_version: &str,
    model: Option<&str>,
    channel: &str,
    groups: &[String],
    percent: u8,
    actor: &str,
) -> Result<Published, OpsError> {
    let path = PathBuf::from(bundle_or_version);
    let (dir, candidate) = if path.is_dir() {
        (path, None)
    } else {
        let run = find_candidate(store, bundle_or_version, model)?;
        let recorded = PathBuf::from(
            run.bundle_dir
                .clone()
                .ok_or(OpsError::NoBundle(run.run_id))?,
        );
        let dir = if recorded.join("manifest.json").is_file() {
            recorded
        } else {
            // Trained by another server process: bring it from the shared blob store.
            let local = repo
                .data_dir()
                .join("candidates")
                .join(&run.model_name)
                .join(bundle_or_version);
            repository::fetch_candidate(repo, &run.model_name, bundle_or_version, &local)?;
            local
        };
        (dir, Some(run))
    };
    let v = repository::publish(repo, &dir, channel, groups, percent)?;
    let what = format!(
        "{} to {channel} {} {percent}%",
        dir.display(),
        repository::publish::audience(groups)
    );
    store.audit(actor, "models publish", &what)?;
    if let Some(run) = candidate {
        store.mark_published(
            &run.model_name,
            bundle_or_version,
            &format!("published by {actor}: {what}"),
        )?;
    }
    Ok(Published {
        bundle_dir: dir,
        targets_version: v,
    })
}

/// `models stage`: changes who a release goes to (`groups`: `None` keeps them, an empty
/// list means every group) and its percentage. Returns a summary and the targets version.
#[allow(clippy::too_many_arguments)]
pub fn stage(
    store: &dyn ServerStore,
    repo: &Repository,
    model: &str,
    version: &str,
    channel: Option<&str>,
    groups: Option<&[String]>,
    percent: u8,
    actor: &str,
) -> Result<(String, u64), OpsError> {
    let v = repository::restage(repo, model, version, channel, groups, percent)?;
    let what = format!(
        "{model} {version}: groups {}, {percent}%",
        match groups {
            None => "unchanged".to_string(),
            Some([]) => "all".to_string(),
            Some(g) => g.join(","),
        }
    );
    store.audit(actor, "models stage", &what)?;
    Ok((what, v))
}

/// `models withdraw`: devices stop installing the release and move off it. Returns the
/// targets version.
pub fn withdraw(
    store: &dyn ServerStore,
    repo: &Repository,
    model: &str,
    version: &str,
    channel: Option<&str>,
    actor: &str,
) -> Result<u64, OpsError> {
    let v = repository::withdraw(repo, model, version, channel)?;
    store.audit(
        actor,
        "models withdraw",
        &format!("{model} {version} {}", channel.unwrap_or("(all channels)")),
    )?;
    Ok(v)
}

/// `devices revoke`: the device is refused from its next request.
pub fn revoke(store: &dyn ServerStore, device: &str, actor: &str) -> Result<Device, OpsError> {
    let d = store.revoke(device)?;
    store.audit(
        actor,
        "devices revoke",
        &format!("{} ({})", d.name, d.device_id),
    )?;
    Ok(d)
}
