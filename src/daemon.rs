//! `outpost run`: the long-running agent. One process serves the review page (and
//! `POST /api/classify` with models that updates swap in place), and runs three loops in
//! the background: sync (push the outbox when a link is up, with backoff), model updates
//! (check, verify, install, swap) and retention (purge old reviewed items). With encryption
//! at rest the loops start only once the page has unlocked the database. Ctrl-C stops the
//! page and lets each loop finish its current step.

use crate::config::AgentConfig;
use crate::review::{ReviewOptions, ReviewServer};
use crate::sync::LoopOptions;
use crate::update::ActiveModels;
use std::sync::Arc;
use std::time::Duration;

/// Why `outpost run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The review page could not start, or stopped with an error.
    #[error("review page: {0:#}")]
    Review(#[from] anyhow::Error),
}

/// The models `outpost run` serves for classification: every bundle of the models folder
/// (shipped bundles seeded into the installed-models folder first when updates are on),
/// with a warning per bundle that does not load. `None` when ONNX Runtime does not load:
/// the page still works, classification is not served.
pub fn serving_models(
    cfg: &AgentConfig,
    updates: bool,
) -> (Option<Arc<ActiveModels>>, Vec<String>) {
    let mut warnings = Vec::new();
    if let Err(e) = crate::model::runtime::init(cfg.runtime.library.as_deref()) {
        warnings.push(format!("classification not served: {e}"));
        return (None, warnings);
    }
    if updates {
        crate::update::Installed::new(&cfg.data_dir()).seed(&cfg.shipped_models_dir());
    }
    let (models, failed) = crate::model::load_all(&cfg.models_dir(), cfg.session_options());
    for (path, e) in &failed {
        warnings.push(format!("model bundle {} not loaded: {e}", path.display()));
    }
    (Some(Arc::new(ActiveModels::new(models))), warnings)
}

/// Whether `outpost run` checks for model updates (on, with a pinned root).
pub fn updates_enabled(cfg: &AgentConfig) -> bool {
    cfg.update.enabled && cfg.update_options().pinned_root.is_some()
}

/// Serves the review page with `opts` and runs the background loops until Ctrl-C.
/// `on_listening` is told the page's URL once it accepts connections.
pub async fn run(
    cfg: AgentConfig,
    mut opts: ReviewOptions,
    loop_opts: LoopOptions,
    on_listening: impl FnOnce(&str),
) -> Result<(), DaemonError> {
    let wake = Arc::new(tokio::sync::Notify::new());
    opts.on_feedback = Some(wake.clone());
    let serving = opts.serving.clone();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = ReviewServer::bind(opts).await?;
    on_listening(&server.url());
    // The background loops read the database: they start once it is unlocked.
    let data_dir = cfg.data_dir();
    let update = match (&serving, updates_enabled(&cfg)) {
        (Some(active), true) => {
            let interval = Duration::from_secs(cfg.update.check_interval_secs.max(1));
            let (d, active, mut rx, uo) = (
                data_dir.clone(),
                active.clone(),
                rx.clone(),
                cfg.update_options(),
            );
            Some(tokio::spawn(async move {
                if crate::store::vault::wait_open(&d, &mut rx).await {
                    crate::update::run::run_loop(uo, active, interval, rx).await
                }
            }))
        }
        _ => None,
    };
    let retention = {
        let (d, db, r, mut rx) = (
            data_dir.clone(),
            cfg.database_path(),
            cfg.retention.clone(),
            rx.clone(),
        );
        tokio::spawn(async move {
            if crate::store::vault::wait_open(&d, &mut rx).await {
                crate::store::retention::run_loop(db, r, rx).await
            }
        })
    };
    let sync = {
        let (d, db, mut rx) = (data_dir.clone(), cfg.database_path(), rx);
        tokio::spawn(async move {
            if crate::store::vault::wait_open(&d, &mut rx).await {
                crate::sync::run_loop(db, d, loop_opts, wake, rx).await
            }
        })
    };
    server
        .run(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = tx.send(true);
        })
        .await?;
    let _ = sync.await;
    let _ = retention.await;
    if let Some(u) = update {
        let _ = u.await;
    }
    Ok(())
}

/// What [`sync_and_update`] did.
#[derive(Debug)]
pub enum SyncOutcome {
    /// The outbox was pushed; then, with updates on, the update check ran.
    Synced {
        /// The push.
        push: crate::sync::PushReport,
        /// The update check after it (`None`: updates are off; boxed, it is large).
        update: Option<Box<UpdateAfterSync>>,
    },
    /// The server said this device is revoked: its item data was wiped per
    /// `retention.on_revoked`.
    Revoked(crate::store::retention::WipeReport),
}

/// The update check that follows a sync.
#[derive(Debug)]
pub enum UpdateAfterSync {
    /// It ran.
    Checked(crate::update::UpdateReport),
    /// It was refused; the current models keep serving.
    Refused(crate::update::UpdateError),
    /// ONNX Runtime did not load, so no update could be validated.
    Skipped(String),
}

/// `outpost sync`: pushes the outbox once, then (with updates on) checks for model updates,
/// as the `outpost run` loop does. A revoked device wipes its item data instead.
pub async fn sync_and_update(cfg: &AgentConfig) -> Result<SyncOutcome, crate::sync::SyncError> {
    let (db, data_dir) = (cfg.database_path(), cfg.data_dir());
    let push = match crate::sync::sync_once(&db, &data_dir).await {
        Err(crate::sync::SyncError::Revoked) => {
            let w = crate::sync::after_revocation(&db, &data_dir, cfg.retention.on_revoked)?;
            return Ok(SyncOutcome::Revoked(w));
        }
        r => r?,
    };
    if !updates_enabled(cfg) {
        return Ok(SyncOutcome::Synced { push, update: None });
    }
    let update = match crate::model::runtime::init(cfg.runtime.library.as_deref()) {
        Ok(_) => match crate::update::check_and_install(&cfg.update_options(), None).await {
            Ok(u) => UpdateAfterSync::Checked(u),
            Err(e) => UpdateAfterSync::Refused(e),
        },
        Err(e) => UpdateAfterSync::Skipped(e.to_string()),
    };
    Ok(SyncOutcome::Synced {
        push,
        update: Some(Box::new(update)),
    })
}
