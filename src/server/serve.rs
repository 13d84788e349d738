//! `outpost-server serve`: one listener for the agents' protocol API and the operators'
//! dashboard, plus the background work every serving process does (training jobs, fresh
//! timestamps), all on the same store and repository.

use super::config::ServerConfig;
use super::repository::Repository;
use super::store::ServerStore;
use super::AppState;
use std::sync::Arc;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// What was asked.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The secret of sealed USB feedback files could not be read or created.
    #[error("the feedback export secret {path}: {source}")]
    ExportSecret {
        /// Its file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds `listen` and serves until the process ends.
pub async fn run(
    cfg: ServerConfig,
    store: Arc<dyn ServerStore>,
    repo: Repository,
    listen: &str,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            address: listen.to_string(),
            source,
        })?;
    let address = listener.local_addr()?;
    tracing::info!(%address, data_dir = %cfg.data_dir.display(), repository = repo.blobs().url(), "outpost-server listening");
    tracing::info!(
        "operators' dashboard: http://{address}/admin/ (accounts: outpost-server admin add NAME)"
    );
    tokio::spawn(super::background::run(
        store.clone(),
        repo.clone(),
        cfg.clone(),
    ));
    let dashboard = super::dashboard::Dashboard::new(store.clone(), cfg.clone(), repo.clone());
    let export_secret =
        super::export_key::ExportSecret::load_or_create(&cfg.data_dir).map_err(|source| {
            ServeError::ExportSecret {
                path: super::export_key::path(&cfg.data_dir).display().to_string(),
                source,
            }
        })?;
    let state = AppState::new(store, Some(repo.blobs().clone()))
        .with_export_secret(export_secret)
        .with_keys_dir(repo.data_dir())
        .with_http(cfg.http.clone());
    let app = super::router(state).merge(super::dashboard::router(dashboard));
    super::serve_app(listener, app, cfg.http.clone()).await?;
    Ok(())
}
