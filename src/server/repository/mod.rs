//! The signed model repository on the server: what agents fetch and verify.
//!
//! - [`read`]: the published targets, the current release of a model, a release's files.
//! - [`publish`]: publishing a bundle as a signed release, staging, withdrawing, re-signing
//!   the timestamp (content-addressed target files, new targets, snapshot and timestamp).
//! - [`candidates`]: candidate bundles shared by every server process.
//! - [`keys`]: creating the TUF-style key set, the online keys, rotation.
//! - [`lease`]: the `repository` lease that serialises changes across processes.
//! - [`blob`]: where it is all stored (a local folder or S3).
//! - [`tuf`]: the same repository in TUF 1.0's format (`tuf/`), signed with the same keys,
//!   served at `/v1/tuf/metadata/` and `/v1/tuf/targets/` for any TUF client.
//!
//! The signed repository lives in the [`BlobStore`] ([`blob`]: `data_dir/repo`
//! on the local disk by default, or an S3 bucket every server process shares):
//!
//! ```text
//! metadata/{root,targets,snapshot,timestamp}.json, and N.root.json for every root version
//! metadata/N.{targets,snapshot,timestamp}.json  every signed version, written once
//! targets/sha256/<hash>                         bundle files, stored once by content
//! ```
//!
//! The keys never go there: the online keys stay in the data folder
//! (`keys/online/{targets,snapshot,timestamp}.pk8`, mode 0600), and `keys init` writes the
//! root keys to a separate folder meant for an offline medium (`--root-keys-dir`); only
//! root metadata signed with them is copied in.
//!
//! **Several processes.** Every change of the repository (publish, stage, withdraw, key
//! rotation, re-signing the timestamp) runs under the `repository` lease in the server's
//! database when the [`Repository`] has one ([`Repository::with_lock`]), so two processes
//! never sign from the same starting state. As a second guard each signed version is first
//! written as `metadata/N.<role>.json` with put-if-absent: a process that would sign a
//! version another already signed stops ([`PublishError::Conflict`]) instead of replacing
//! it. That is also what makes re-signing the timestamp happen once: every process looks
//! every few seconds, and only the one whose put-if-absent of the next version succeeds
//! writes `timestamp.json`.

pub mod blob;
pub mod candidates;
pub mod keys;
pub mod lease;
pub mod publish;
pub mod read;
pub mod tuf;

pub use candidates::{fetch_candidate, store_candidate};
pub use keys::{init_keys, rotate_keys, Rotation};
pub use lease::{REPOSITORY_LEASE, REPOSITORY_LEASE_NAME};
pub use publish::{publish, publish_if, refresh_timestamp, restage, withdraw};
pub use read::{current_release, current_targets, materialise, published_targets};

use super::store::ServerStore;
use crate::trust::Signed;
use blob::{BlobError, BlobStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Publishing errors.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Files.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Keys missing or damaged.
    #[error("{0}")]
    Keys(String),
    /// The bundle was refused.
    #[error(transparent)]
    Bundle(#[from] crate::model::BundleError),
    /// No release matched.
    #[error("no release {model} {version} is published (see `outpost-server models list`)")]
    NoRelease {
        /// Model.
        model: String,
        /// Version.
        version: String,
    },
    /// The blob store holding the repository.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The database (the `repository` lease).
    #[error(transparent)]
    Store(#[from] super::store::ServerStoreError),
    /// Signed metadata in the repository that does not parse (damaged or edited by hand).
    #[error("{name} is damaged: {reason}; restore it from a backup of the repository")]
    Metadata {
        /// Where.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Another process signed this version first.
    #[error("{0} was signed by another server process at the same time; try again")]
    Conflict(String),
    /// Another process held the repository for too long.
    #[error("another server process has been changing the repository for {0:?}; try again")]
    Busy(std::time::Duration),
    /// A training run lost its job (another process took it over): it publishes nothing.
    #[error("the training job was taken over by another process; this run publishes nothing")]
    LeaseLost,
    /// A version that does not go up.
    #[error("{model} {version} is not newer than the published {published}; versions only go up")]
    NotNewer {
        /// Model.
        model: String,
        /// Offered.
        version: String,
        /// Published.
        published: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn expires_in(days: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(days))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The repository folder of a server data folder (the default, local blob store).
pub fn repo_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("repo")
}

/// The signed repository: where it is stored, the data folder holding the online keys,
/// and (with several processes) the database whose `repository` lease serialises changes.
#[derive(Clone)]
pub struct Repository {
    blobs: BlobStore,
    data_dir: PathBuf,
    lock: Option<Arc<dyn ServerStore>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("blobs", &self.blobs)
            .field("data_dir", &self.data_dir)
            .field("locked", &self.lock.is_some())
            .finish()
    }
}

impl Repository {
    /// The repository in `blobs`, signed with the keys of `data_dir`, without a lease.
    pub fn new(blobs: BlobStore, data_dir: &Path) -> Repository {
        Repository {
            blobs,
            data_dir: data_dir.to_path_buf(),
            lock: None,
        }
    }

    /// The default: `data_dir/repo` on the local disk, without a lease (one process).
    pub fn local(data_dir: &Path) -> Result<Repository, PublishError> {
        Ok(Repository::new(
            BlobStore::local(&repo_dir(data_dir))?,
            data_dir,
        ))
    }

    /// The repository in `blobs` (`[blob_store]`, else `data_dir/repo`), with its online
    /// keys and candidates under `data_dir`.
    pub fn open(
        blobs: &blob::BlobStoreConfig,
        data_dir: &Path,
    ) -> Result<Repository, PublishError> {
        Ok(Repository::new(
            BlobStore::open(blobs, &repo_dir(data_dir))?,
            data_dir,
        ))
    }

    /// Changes take the `repository` lease in `store` first (several processes).
    pub fn with_lock(mut self, store: Arc<dyn ServerStore>) -> Repository {
        self.lock = Some(store);
        self
    }

    /// Where the repository is stored.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The data folder (online keys, candidates).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn read_signed<T: crate::trust::Role>(
        &self,
        name: &str,
    ) -> Result<Option<Signed<T>>, PublishError> {
        let Some(bytes) = self.blobs.get(&format!("metadata/{name}"))? else {
            return Ok(None);
        };
        crate::trust::parse(&bytes)
            .map(Some)
            .map_err(|e| PublishError::Metadata {
                name: format!("{}/metadata/{name}", self.blobs.url()),
                reason: e.to_string(),
            })
    }

    fn write_meta(&self, name: &str, bytes: Vec<u8>) -> Result<(), PublishError> {
        Ok(self.blobs.put(&format!("metadata/{name}"), bytes)?)
    }

    /// The first version from `from` on whose `metadata/N.<role>.json` is not written yet,
    /// when this repository has the lease: under the lease no other process is signing, so a
    /// version written but never made current is left by a process that died (or failed to
    /// write) in between, and is skipped (versions only need to go up). Without a lease,
    /// `from` as it is: then put-if-absent must see the conflict.
    fn next_free(&self, role: &str, from: u64) -> Result<u64, PublishError> {
        if self.lock.is_none() {
            return Ok(from);
        }
        let mut v = from;
        while self.blobs.exists(&format!("metadata/{v}.{role}.json"))? {
            tracing::warn!(
                role,
                version = v,
                "skipping a version signed but never made current"
            );
            v += 1;
        }
        Ok(v)
    }

    /// Writes `N.<role>.json` once: a [`PublishError::Conflict`] if it exists.
    fn claim_meta(&self, name: &str, bytes: Vec<u8>) -> Result<(), PublishError> {
        if self.blobs.put_new(&format!("metadata/{name}"), bytes)? {
            Ok(())
        } else {
            Err(PublishError::Conflict(name.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_stored_by_one_process_is_fetched_by_another() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("bucket");
        let a = Repository::new(BlobStore::local(&shared).unwrap(), &tmp.path().join("a"));
        let b = Repository::new(BlobStore::local(&shared).unwrap(), &tmp.path().join("b"));
        let dir_a = tmp.path().join("a/candidates/landcover/1.1.0");
        std::fs::create_dir_all(dir_a.join("golden")).unwrap();
        std::fs::write(dir_a.join("manifest.json"), b"{\"name\":\"landcover\"}").unwrap();
        std::fs::write(dir_a.join("head.onnx"), vec![7u8; 5000]).unwrap();
        std::fs::write(dir_a.join("golden/t0.png"), b"png bytes").unwrap();
        store_candidate(&a, "landcover", "1.1.0", &dir_a).unwrap();

        let dir_b = tmp.path().join("b/candidates/landcover/1.1.0");
        assert!(!fetch_candidate(&b, "landcover", "9.9.9", &tmp.path().join("b/x")).unwrap());
        assert!(fetch_candidate(&b, "landcover", "1.1.0", &dir_b).unwrap());
        for f in ["manifest.json", "head.onnx", "golden/t0.png"] {
            assert_eq!(
                std::fs::read(dir_a.join(f)).unwrap(),
                std::fs::read(dir_b.join(f)).unwrap(),
                "{f}"
            );
        }
        // Already here: nothing fetched again.
        assert!(!fetch_candidate(&b, "landcover", "1.1.0", &dir_b).unwrap());
    }
}
