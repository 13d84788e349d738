//! `outpost status`: what the agent knows about itself, gathered in one place for the
//! command line (text or JSON) and anything else that shows it: enrollment, the outbox,
//! the last sync and update check, and each model's drift (new windows are scored first).

use crate::config::AgentConfig;
use crate::drift::ModelDrift;
use crate::store::feedback::Counters;
use crate::store::Store;
use serde::Serialize;

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Decision counters.
    #[error(transparent)]
    Feedback(#[from] crate::store::feedback::FeedbackError),
    /// Drift windows.
    #[error(transparent)]
    Drift(#[from] crate::drift::DriftError),
}

/// The agent's status. Its JSON form is what `outpost status --json` prints (fields in
/// alphabetical order, as that command always printed them).
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// Decisions waiting, synced, reviewed today; the last sync.
    pub counters: Counters,
    /// This agent's device name on that server.
    pub device_name: Option<String>,
    /// Each model's drift state.
    pub drift: Vec<ModelDrift>,
    /// Why the last sync failed, if it did.
    pub last_sync_error: Option<String>,
    /// When updates were last checked.
    pub last_update_check: Option<String>,
    /// Why the last update was refused, if it was.
    pub last_update_error: Option<String>,
    /// The server this agent enrolled with.
    pub server_url: Option<String>,
}

/// Reads the status of the agent whose database `store` is (scoring new drift windows).
pub fn read(store: &Store, cfg: &AgentConfig) -> Result<AgentStatus, StatusError> {
    crate::drift::update_all(store, &cfg.models_dir(), &cfg.drift);
    let nonempty = |v: Option<String>| v.filter(|e| !e.is_empty());
    Ok(AgentStatus {
        drift: crate::drift::summary(store)?,
        counters: store.counters()?,
        server_url: store.state("server_url")?,
        device_name: store.state("device_name")?,
        last_sync_error: nonempty(store.state("last_sync_error")?),
        last_update_check: store.state("last_update_check")?,
        last_update_error: nonempty(store.state("last_update_error")?),
    })
}
