//! The TUF client over HTTP and a metadata folder: the fetch arrow for TUF 1.0
//! repositories, and the three operations of the public conformance suite's client
//! protocol (`init`, `refresh`, `download`; see `outpost-tuf-client`).
//!
//! Why here: [`crate::trust::tuf`] holds every rule but no transport. This module gives it
//! an HTTP [`Fetcher`] that bounds every download in bytes (never reading past the bound,
//! whatever `Content-Length` says) and in time, and a [`MetadataStore`] that keeps each
//! trusted document, as received, in `<dir>/<quoted role>.json` (written atomically).

use crate::trust::tuf::trusted::TrustedSet;
use crate::trust::tuf::updater::{quote, FetchError, Fetcher, Limits, MetadataStore, Updater};
use crate::trust::tuf::TufError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// HTTP downloads with a byte bound (per call) and a time bound (per file).
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpFetcher {
    /// A fetcher whose every download ends after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, TufError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| TufError::Fetch {
                url: String::new(),
                reason: format!("HTTP client: {e}"),
            })?;
        Ok(HttpFetcher { client, timeout })
    }

    async fn get(&self, url: &str, max: u64) -> Result<Vec<u8>, FetchError> {
        let failed = |e: reqwest::Error| FetchError::Failed(e.to_string());
        let mut resp = self.client.get(url).send().await.map_err(failed)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Err(FetchError::NotFound);
        }
        if !status.is_success() {
            return Err(FetchError::Failed(format!("HTTP {status}")));
        }
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(FetchError::TooLarge { max });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(FetchError::TooLarge { max });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

impl Fetcher for HttpFetcher {
    async fn fetch(&self, url: &str, max_len: u64) -> Result<Vec<u8>, FetchError> {
        match tokio::time::timeout(self.timeout, self.get(url, max_len)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Failed(format!(
                "no complete answer within {} s",
                self.timeout.as_secs()
            ))),
        }
    }
}

/// Trusted metadata as files: `<dir>/<quoted role name>.json`, the bytes as received.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// A store in `dir` (created when missing).
    pub fn new(dir: &Path) -> Result<Self, TufError> {
        std::fs::create_dir_all(dir).map_err(|e| store_err(dir, e))?;
        Ok(DirStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{}.json", quote(role)))
    }
}

fn store_err(path: &Path, e: std::io::Error) -> TufError {
    TufError::Store(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename: a crash leaves the old
/// file or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TufError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| store_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| store_err(path, e))
}

impl MetadataStore for DirStore {
    fn load(&self, role: &str) -> Result<Option<Vec<u8>>, TufError> {
        let path = self.path(role);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_err(&path, e)),
        }
    }

    fn save(&self, role: &str, bytes: &[u8]) -> Result<(), TufError> {
        write_atomic(&self.path(role), bytes)
    }

    fn remove(&self, role: &str) -> Result<(), TufError> {
        let path = self.path(role);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_err(&path, e)),
        }
    }
}

/// The per-download time bound of the conformance client.
const TIMEOUT: Duration = Duration::from_secs(30);

/// `init`: checks that `root` is a self-signed TUF 1.0 root and makes it the trusted root.
pub fn init(metadata_dir: &Path, root: &[u8]) -> Result<(), TufError> {
    TrustedSet::new(root, OffsetDateTime::now_utc())?;
    DirStore::new(metadata_dir)?.save("root", root)
}

fn updater(metadata_dir: &Path, url: &str) -> Result<Updater<HttpFetcher, DirStore>, TufError> {
    Updater::new(
        HttpFetcher::new(TIMEOUT)?,
        DirStore::new(metadata_dir)?,
        url,
        Limits::default(),
        OffsetDateTime::now_utc(),
    )
}

/// `refresh`: the client workflow for the top-level roles.
pub async fn refresh(metadata_dir: &Path, url: &str) -> Result<(), TufError> {
    updater(metadata_dir, url)?.refresh().await
}

/// What `download` did with one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downloaded {
    /// Fetched and verified, stored at this path.
    Fetched(PathBuf),
    /// A verified copy was there already.
    Cached(PathBuf),
}

/// `download`: refreshes, then fetches each target in order (stopping at the first
/// failure) into `target_dir/<quoted target path>`, unless a copy with the signed length
/// and hashes is there.
pub async fn download(
    metadata_dir: &Path,
    url: &str,
    names: &[String],
    target_base_url: &str,
    target_dir: &Path,
) -> Result<Vec<Downloaded>, TufError> {
    let mut up = updater(metadata_dir, url)?;
    up.refresh().await?;
    std::fs::create_dir_all(target_dir).map_err(|e| store_err(target_dir, e))?;
    let mut done = Vec::with_capacity(names.len());
    for name in names {
        let info = up.target_info(name).await?.ok_or_else(|| {
            TufError::Missing(format!(
                "target {name:?} is not listed by any trusted targets role"
            ))
        })?;
        let local = target_dir.join(quote(name));
        if let Ok(existing) = std::fs::read(&local) {
            if info.verify(name, &existing).is_ok() {
                done.push(Downloaded::Cached(local));
                continue;
            }
        }
        let bytes = up.download_target(name, &info, target_base_url).await?;
        write_atomic(&local, &bytes)?;
        done.push(Downloaded::Fetched(local));
    }
    Ok(done)
}
