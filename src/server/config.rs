//! The server's configuration (`config/server.toml`): where it keeps its data, where it
//! listens, and how it retrains. Every key is optional; command-line flags win.

use super::training::TrainingSettings;
use std::path::{Path, PathBuf};

/// `config/server.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Database, keys, repository, candidates.
    pub data_dir: PathBuf,
    /// Where the server's tables live: unset for the embedded SQLite file
    /// `data_dir/server.db`; `postgres://user@host:5432/db` for PostgreSQL, which several
    /// server processes can share (see README, "Scaling out").
    pub database_url: Option<String>,
    /// Address of the agents' API.
    pub listen: String,
    /// Hours an enrollment code stays valid.
    pub enrollment_valid_hours: i64,
    /// ONNX Runtime library (training evaluates bundles); found like the agent's otherwise.
    pub ort_lib: Option<PathBuf>,
    /// Retraining.
    pub training: TrainingSettings,
    /// Where the signed model repository is stored (`[blob_store]`): `data_dir/repo` on the
    /// local disk by default, or an S3 bucket shared by several server processes.
    pub blob_store: super::repository::blob::BlobStoreConfig,
    /// The listener's timeouts, connection limits and `/metrics` access (`[http]`).
    pub http: super::http::HttpSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("/var/lib/outpost-server"),
            database_url: None,
            listen: "127.0.0.1:8480".into(),
            enrollment_valid_hours: 72,
            ort_lib: None,
            training: TrainingSettings::default(),
            blob_store: super::repository::blob::BlobStoreConfig::default(),
            http: super::http::HttpSettings::default(),
        }
    }
}

/// Config errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Not valid TOML for this config.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Error.
        source: toml::de::Error,
    },
}

impl ServerConfig {
    /// Reads `file` (defaults if `None`).
    pub fn load(file: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        match file {
            None => Ok(ServerConfig::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: p.to_path_buf(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_config_parses_with_the_defaults() {
        let c: super::ServerConfig =
            toml::from_str(include_str!("../../config/server.toml")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8480");
        assert_eq!(c.database_url, None);
        assert_eq!(
            c.blob_store,
            super::super::repository::blob::BlobStoreConfig::default()
        );
        let d = super::TrainingSettings::default();
        assert_eq!(c.training.holdout_percent, d.holdout_percent);
        assert_eq!(c.training.auto_train_after, d.auto_train_after);
        assert_eq!(c.training.channel, d.channel);
        assert_eq!(c.http, super::super::http::HttpSettings::default());
    }
}
