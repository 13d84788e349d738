//! One update check (`outpost update`, each `outpost sync`, and the loop of `outpost run`):
//! report, refresh the metadata, install what the device should run, report again.

use super::local::{self, Installed};
use super::targeting::{self, Choice, Device};
use super::{clock_now, io, verified, ActiveModels, UpdateError, UpdateLimits};
use crate::model::pool::SessionOptions;
use crate::protocol::{DeviceModel, DeviceModelsReport, DeviceStatus, ModelFailure};
use crate::store::Store;
use crate::sync::SyncClient;
use crate::trust::tuf::TufError;
use crate::trust::{Release, Targets};
use rusqlite::params;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What an update check needs.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// The agent's data folder.
    pub data_dir: PathBuf,
    /// The agent database.
    pub database: PathBuf,
    /// The root metadata the operator pinned (`update.root`); `None`: updates are off.
    pub pinned_root: Option<PathBuf>,
    /// Release channel (`stable`, `canary`).
    pub channel: String,
    /// The shipped models folder (the initial install, seeded into the data folder).
    pub shipped_models: Option<PathBuf>,
    /// ONNX Runtime session settings for validation.
    pub session: SessionOptions,
    /// Versions kept per model (at least 2: the active and the previous one).
    pub keep_versions: usize,
    /// Download and USB bounds.
    pub limits: UpdateLimits,
}

/// What an update check did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpdateReport {
    /// Trusted root version after the check.
    pub root_version: u64,
    /// Trusted targets version after the check.
    pub targets_version: Option<u64>,
    /// `name@version` switched to.
    pub installed: Vec<String>,
    /// Models already on the release they should run (or pinned), with why.
    pub unchanged: Vec<String>,
    /// Updates refused, with the reason.
    pub refused: Vec<String>,
    /// Versions switched to and then rolled back, with the reason.
    pub rolled_back: Vec<String>,
    /// Bytes received for bundle files.
    pub bytes_downloaded: u64,
    /// Files downloaded (or resumed).
    pub files_fetched: usize,
    /// Files the store already had.
    pub files_cached: usize,
    /// A download was cut off (network trouble): it resumes at the next check.
    pub interrupted: bool,
    /// Rules an operator overrode for this install (said aloud, recorded and reported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}

/// Records an event in the agent database (identical unreported refusals are not repeated).
pub fn record(
    db: &Path,
    model: &str,
    version: Option<&str>,
    kind: &str,
    reason: &str,
) -> Result<(), UpdateError> {
    let store = Store::open(db)?;
    let c = store.conn();
    let dup: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM model_events WHERE reported = 0 AND model = ?1 AND version IS ?2 AND kind = ?3 AND reason = ?4",
            params![model, version, kind, reason],
            |r| r.get(0),
        )
        .map_err(crate::store::StoreError::from)?;
    if dup == 0 || !matches!(kind, "refused") {
        c.execute(
            "INSERT INTO model_events (at, model, version, kind, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![crate::store::now(), model, version, kind, reason],
        )
        .map_err(crate::store::StoreError::from)?;
    }
    match kind {
        "refused" | "rolled_back" => tracing::warn!(model, version, kind, reason, "model update"),
        _ => tracing::info!(model, version, kind, reason, "model update"),
    }
    Ok(())
}

/// The report the server gets: versions running and unreported failures (with their ids).
pub fn build_report(
    db: &Path,
    installed: &Installed,
) -> Result<(DeviceModelsReport, Vec<i64>), UpdateError> {
    let models = installed
        .list()
        .into_iter()
        .map(|l| DeviceModel {
            model: l.model,
            active_version: l.active,
            pinned: l.state.pinned,
            installed: l.versions,
        })
        .collect();
    let store = Store::open(db)?;
    let mut st = store
        .conn()
        .prepare(
            "SELECT event_id, model, version, kind, reason, at FROM model_events
             WHERE reported = 0 AND kind IN ('refused', 'rolled_back', 'override') ORDER BY event_id LIMIT 200",
        )
        .map_err(crate::store::StoreError::from)?;
    let rows: Vec<(i64, ModelFailure)> = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                ModelFailure {
                    model: r.get(1)?,
                    version: r.get(2)?,
                    kind: r.get(3)?,
                    reason: r.get(4)?,
                    at: r.get(5)?,
                },
            ))
        })
        .map_err(crate::store::StoreError::from)?
        .collect::<Result<_, _>>()
        .map_err(crate::store::StoreError::from)?;
    let ids = rows.iter().map(|r| r.0).collect();
    let pending_feedback = store
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL",
            [],
            |r| r.get(0),
        )
        .ok();
    Ok((
        DeviceModelsReport {
            models,
            failures: rows.into_iter().map(|r| r.1).collect(),
            pending_feedback,
            challenge: None,
        },
        ids,
    ))
}

/// Sends the report (with `challenge`, for a signed answer); on success marks its
/// failures reported. The answer is returned as it came: nothing in it is trusted until
/// [`confirm_group`] verified its signed assignment.
pub async fn report(
    client: &SyncClient,
    db: &Path,
    installed: &Installed,
    challenge: Option<&str>,
) -> Result<DeviceStatus, UpdateError> {
    let (mut body, ids) = build_report(db, installed)?;
    body.challenge = challenge.map(str::to_string);
    let status: DeviceStatus = client.signed_json("/v1/device/models", &body).await?;
    let store = Store::open(db)?;
    for id in ids {
        store
            .conn()
            .execute(
                "UPDATE model_events SET reported = 1 WHERE event_id = ?1",
                [id],
            )
            .map_err(crate::store::StoreError::from)?;
    }
    Ok(status)
}

/// An agent-state read or write that failed.
pub(crate) fn state_error(e: crate::store::feedback::FeedbackError) -> UpdateError {
    UpdateError::Refused(format!("agent state: {e}"))
}

/// The group this device targets with: the one in the answer's signed assignment if it
/// verifies against `root` for this device and `challenge` (then remembered), else the
/// one verified before (`None` if never). An answer that does not verify is recorded and
/// reported as refused; it changes nothing.
pub fn confirm_group(
    db: &Path,
    root: &crate::trust::Root,
    device_id: &str,
    answer: Option<(&DeviceStatus, &str)>,
    report: &mut UpdateReport,
) -> Result<Option<String>, UpdateError> {
    let store = Store::open(db)?;
    let known = store
        .state(targeting::VERIFIED_GROUP_KEY)
        .map_err(state_error)?;
    let Some((status, challenge)) = answer else {
        return Ok(known);
    };
    match targeting::verify_assignment(status.assignment.as_ref(), root, device_id, challenge) {
        Ok(group) => {
            if known.as_deref() != Some(group.as_str()) {
                tracing::info!(
                    group,
                    "device group confirmed by the server's signed answer"
                );
            }
            store
                .set_state(targeting::VERIFIED_GROUP_KEY, &group)
                .map_err(state_error)?;
            store
                .set_state("device_group", &group)
                .map_err(state_error)?;
            Ok(Some(group))
        }
        Err(why) => {
            let stays = match &known {
                Some(g) => format!("the group stays {g:?}"),
                None => "no group is confirmed yet (only releases for every group apply)".into(),
            };
            let reason =
                format!("the server's answer to the device report was not used: {why}; {stays}");
            record(db, "", None, "refused", &reason)?;
            report.refused.push(reason);
            Ok(known)
        }
    }
}

/// Holds `<models>/.update.lock` so two agents (a CLI next to `outpost run`) never stage
/// or switch at the same time.
pub struct UpdateLock(#[allow(dead_code)] std::fs::File);

/// Takes the update lock, or says another update is running.
pub fn lock(installed: &Installed) -> Result<UpdateLock, UpdateError> {
    let root = installed.root();
    std::fs::create_dir_all(root).map_err(io(root))?;
    let path = root.join(".update.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(UpdateLock(f)),
        Err(_) => Err(UpdateError::Refused(
            "another update is running on this agent; try again when it is done".into(),
        )),
    }
}

/// Server clock minus this agent's clock (as [`clock_now`] sees it), in seconds.
fn clock_skew(client: &SyncClient) -> i64 {
    crate::clock::unix_now() + client.clock_offset() - clock_now().unix_timestamp()
}

fn trust_refusal(e: UpdateError, offset: i64) -> UpdateError {
    match e {
        UpdateError::Tuf(e @ TufError::Expired { .. }) if offset.abs() > 300 => {
            UpdateError::Clock {
                source: e,
                offset_secs: offset,
            }
        }
        e => e,
    }
}

/// Refreshes the TUF metadata from the server ([`verified::refresh`]) and says when a
/// refusal may come from a wrong device clock.
pub async fn refresh_metadata(
    client: &SyncClient,
    pinned_root: &Path,
    data_dir: &Path,
) -> Result<verified::Verified, UpdateError> {
    verified::refresh(client, pinned_root, data_dir, clock_now())
        .await
        .map_err(|e| trust_refusal(e, clock_skew(client)))
}

/// Downloads (if `client`), stages, validates, commits, switches and health-checks one
/// release. On a failed health check it switches back by itself.
#[allow(clippy::too_many_arguments)]
pub async fn install_release(
    opts: &UpdateOptions,
    installed: &Installed,
    release: &Release,
    targets: &Targets,
    client: Option<&SyncClient>,
    active: Option<&ActiveModels>,
    report: &mut UpdateReport,
) -> Result<(), UpdateError> {
    let (model, version) = (release.model.clone(), release.version.clone());
    for (name, target) in &release.files {
        let entry = targets
            .targets
            .get(target)
            .ok_or_else(|| UpdateError::Release {
                model: model.clone(),
                version: version.clone(),
                reason: format!("{name} names {target}, which targets does not list"),
            })?;
        match client {
            Some(c) => {
                let f = super::download::fetch(
                    c,
                    installed,
                    target,
                    entry,
                    &opts.data_dir,
                    &opts.limits,
                    &mut report.bytes_downloaded,
                )
                .await?;
                if f.cached {
                    report.files_cached += 1;
                } else {
                    report.files_fetched += 1;
                }
            }
            None if installed.has_blob(&entry.sha256) => report.files_cached += 1,
            None => {
                return Err(UpdateError::Release {
                    model,
                    version,
                    reason: format!("{name} ({target}) is not in the update file"),
                })
            }
        }
    }
    let staged = installed.stage(release, targets)?;
    let dir = staged.dir.clone();
    let session = opts.session;
    let validated = tokio::task::spawn_blocking(move || local::validate(&dir, session).map(drop))
        .await
        .map_err(|e| UpdateError::Refused(e.to_string()))?;
    if let Err(reason) = validated {
        let _ = std::fs::remove_dir_all(&staged.dir);
        let mut st = installed.state(&model);
        st.failed.insert(version.clone(), reason.clone());
        installed.save_state(&model, &st)?;
        return Err(UpdateError::Validation {
            model,
            version,
            reason,
        });
    }
    let dest = installed.commit(&staged)?;
    let dd = opts.data_dir.clone();
    let _ = tokio::task::spawn_blocking(move || super::pause_point(&dd, "swap")).await;
    let before_state = installed.state(&model);
    let before = installed.activate(&model, &version)?;
    record(&opts.database, &model, Some(&version), "activated", "")?;
    let session = opts.session;
    let d2 = dest.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let m = crate::model::LoadedModel::load(&d2, session).map_err(|e| e.to_string())?;
        local::post_swap_check(&m)?;
        Ok::<_, String>(m)
    })
    .await
    .map_err(|e| UpdateError::Refused(e.to_string()))?;
    match checked {
        Ok(m) => {
            if let Some(a) = active {
                a.swap(Arc::new(m));
            }
            report.installed.push(format!("{model}@{version}"));
            Ok(())
        }
        Err(reason) => {
            let back = match &before {
                Some(b) => {
                    installed.activate(&model, b)?;
                    format!("back on {b}")
                }
                None => "no earlier version to go back to".into(),
            };
            let mut st = before_state;
            st.failed.insert(version.clone(), reason.clone());
            installed.save_state(&model, &st)?;
            let why = format!("post-swap health check failed: {reason}; {back}");
            record(&opts.database, &model, Some(&version), "rolled_back", &why)?;
            report.rolled_back.push(format!("{model}@{version}: {why}"));
            Ok(())
        }
    }
}

/// Installs, for each model the targets has releases for, the release this device should
/// run (unless pinned, already active, or failed before).
#[allow(clippy::too_many_arguments)]
pub async fn apply_targets(
    opts: &UpdateOptions,
    installed: &Installed,
    targets: &Targets,
    device: &Device<'_>,
    client: Option<&SyncClient>,
    active: Option<&ActiveModels>,
    report: &mut UpdateReport,
) -> Result<(), UpdateError> {
    // Files of the releases this device should run: kept by pruning even while their
    // release is not installed yet (a download cut off resumes, it does not start over).
    let mut wanted = std::collections::BTreeSet::new();
    for model in super::release_models(targets) {
        if let Some(r) = targeting::newest_for(targets, &model, device) {
            for t in r.files.values() {
                if let Some(e) = targets.targets.get(t) {
                    wanted.insert(e.sha256.to_ascii_lowercase());
                }
            }
        }
    }
    for model in super::release_models(targets) {
        let st = installed.state(&model);
        let current = installed.active(&model);
        if let Some(p) = &st.pinned {
            report
                .unchanged
                .push(format!("{model}: pinned at {p} by hand"));
            continue;
        }
        let release = match targeting::choose(targets, &model, device, current.as_deref()) {
            Choice::Nothing => continue,
            Choice::Current(r) => {
                report
                    .unchanged
                    .push(format!("{model}: {} is current", r.version));
                continue;
            }
            Choice::Keep(why) => {
                report.unchanged.push(format!("{model}: kept: {why}"));
                continue;
            }
            Choice::Install(r) => r,
        };
        if let Some(why) = st.failed.get(&release.version) {
            report.unchanged.push(format!(
                "{model}: {} failed before ({why}); not retried",
                release.version
            ));
            continue;
        }
        match install_release(opts, installed, release, targets, client, active, report).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                tracing::info!(model, error = %e, "update download interrupted; resumes next time");
                report
                    .refused
                    .push(format!("{model} {}: {e}", release.version));
                report.interrupted = true;
            }
            Err(e) => {
                record(
                    &opts.database,
                    &model,
                    Some(&release.version),
                    "refused",
                    &e.to_string(),
                )?;
                report.refused.push(e.to_string());
            }
        }
    }
    installed.prune(opts.keep_versions, &wanted);
    Ok(())
}

/// What every install starts with: the pinned root, the installed tree under the update
/// lock (held until the returned guard drops), no staging left over from a killed run, and
/// the shipped models seeded on first use.
pub fn prepare(
    opts: &UpdateOptions,
) -> Result<(std::path::PathBuf, Installed, UpdateLock), UpdateError> {
    let root = opts.pinned_root.clone().ok_or(UpdateError::NoRoot)?;
    let installed = Installed::new(&opts.data_dir);
    let guard = lock(&installed)?;
    installed.clean_staging();
    if let Some(shipped) = &opts.shipped_models {
        installed.seed(shipped);
    }
    Ok((root, installed, guard))
}

/// One full check against the server. Metadata refusals are recorded (and reported) and
/// returned as errors; nothing is installed then and the current models keep serving.
pub async fn check_and_install(
    opts: &UpdateOptions,
    active: Option<&ActiveModels>,
) -> Result<UpdateReport, UpdateError> {
    let (root, installed, _lock) = prepare(opts)?;
    let client = {
        let store = Store::open(&opts.database)?;
        SyncClient::from_store(&store, &opts.data_dir)?
    };
    let challenge = targeting::new_challenge();
    let status = match report(&client, &opts.database, &installed, Some(&challenge)).await {
        Ok(s) => Some(s),
        Err(e @ UpdateError::Sync(crate::sync::SyncError::Unreachable { .. })) => return Err(e),
        Err(e) => {
            // A server without the report endpoint (older, or its database not migrated),
            // or an answer refused unread: updates go on with the group verified before.
            tracing::warn!(error = %e, "device report refused; keeping the group verified before");
            None
        }
    };
    let mut out = UpdateReport::default();
    let verified = match refresh_metadata(&client, &root, &opts.data_dir).await {
        Ok(v) => v,
        Err(e) => {
            if !e.is_transient() {
                record(&opts.database, "", None, "refused", &e.to_string())?;
                let _ = report(&client, &opts.database, &installed, None).await;
            }
            set_last(&opts.database, Err(&e));
            return Err(e);
        }
    };
    out.root_version = verified.root_version;
    out.targets_version = Some(verified.targets.version);
    // Targeting: the device id the agent enrolled with, the group only from a signed answer
    // (checked against the root just refreshed), never the plain JSON of the answer.
    let device_id = client.device_id().to_string();
    let answer = status.as_ref().map(|s| (s, challenge.as_str()));
    let group = confirm_group(
        &opts.database,
        &verified.assignment_root,
        &device_id,
        answer,
        &mut out,
    )?;
    let device = Device {
        channel: &opts.channel,
        group: group.as_deref(),
        device_id: Some(&device_id),
    };
    let result = apply_targets(
        opts,
        &installed,
        &verified.targets,
        &device,
        Some(&client),
        active,
        &mut out,
    )
    .await;
    if let Some(a) = active {
        refresh_serving(&installed, a, opts.session, &mut out).await;
    }
    let _ = report(&client, &opts.database, &installed, None).await;
    set_last(&opts.database, result.as_ref().map(|_| &out));
    result.map(|_| out)
}

/// Brings the serving models in line with the active versions on disk (a switch made by
/// another process: `outpost update`, `models rollback`, `pin`, `install`). A version that
/// does not load or pass its golden cases is not swapped in; the current one keeps serving.
pub async fn refresh_serving(
    installed: &Installed,
    active: &ActiveModels,
    session: SessionOptions,
    report: &mut UpdateReport,
) {
    let serving = active.versions();
    for model in installed.models() {
        let Some(v) = installed.active(&model) else {
            continue;
        };
        if serving.get(&model) == Some(&v) {
            continue;
        }
        let dir = installed.version_dir(&model, &v);
        let loaded = tokio::task::spawn_blocking(move || local::validate(&dir, session)).await;
        match loaded {
            Ok(Ok(m)) => {
                active.swap(Arc::new(m));
                tracing::info!(model, version = %v, "now serving the version active on disk");
            }
            Ok(Err(e)) => {
                report
                    .refused
                    .push(format!("{model} {v} (active on disk) not served: {e}"));
            }
            Err(e) => tracing::warn!(error = %e, "validation task failed"),
        }
    }
}

fn set_last(db: &Path, r: Result<&UpdateReport, &UpdateError>) {
    if let Ok(store) = Store::open(db) {
        let now = crate::store::now();
        match r {
            Ok(rep) => {
                let _ = store.set_state("last_update_check", &now);
                let msg = if rep.refused.is_empty() {
                    String::new()
                } else {
                    format!("{} at {now}", rep.refused.join("; "))
                };
                let _ = store.set_state("last_update_error", &msg);
            }
            Err(e) => {
                let _ = store.set_state("last_update_error", &format!("{e} at {now}"));
            }
        }
    }
}

/// Runs update checks every `interval` until `shutdown`, backing off on network trouble.
/// The active models are swapped in place when an update is installed.
pub async fn run_loop(
    opts: UpdateOptions,
    active: Arc<ActiveModels>,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let backoff_opts = crate::sync::LoopOptions {
        max_backoff: interval.max(Duration::from_secs(1)),
        min_backoff: Duration::from_secs(1),
        ..Default::default()
    };
    loop {
        let wait = match check_and_install(&opts, Some(&active)).await {
            Ok(r) if r.interrupted => {
                failures += 1;
                let w = crate::sync::backoff(&backoff_opts, failures);
                tracing::info!(refused = ?r.refused, retry_in_secs = w.as_secs_f64(), "update download interrupted; will resume");
                w
            }
            Ok(r) => {
                failures = 0;
                if !r.installed.is_empty() || !r.rolled_back.is_empty() {
                    tracing::info!(installed = ?r.installed, rolled_back = ?r.rolled_back, bytes = r.bytes_downloaded, "model update check");
                }
                interval
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                let w = crate::sync::backoff(&backoff_opts, failures);
                tracing::info!(error = %e, retry_in_secs = w.as_secs_f64(), "update check failed; will retry");
                w
            }
            Err(UpdateError::NoRoot) => {
                tracing::info!("{}", UpdateError::NoRoot);
                return;
            }
            Err(e) => {
                failures = 0;
                tracing::warn!(error = %e, "update check refused");
                interval
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
