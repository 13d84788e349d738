//! The blob store that holds the signed model repository: the update metadata
//! (`metadata/*.json`) and the content-addressed bundle files (`targets/sha256/<hash>`).
//!
//! Why: several server processes behind a load balancer must serve the same repository, and
//! what one process publishes must be what every other one serves. The repository therefore
//! lives behind the [`object_store`] crate: the local file system by default
//! (`data_dir/repo`, the layout the server always had, so one process needs nothing more),
//! or S3-compatible storage by configuration (`[blob_store] url = "s3://bucket/prefix"`),
//! shared by every process. The signing keys never go there: they stay in `data_dir`.
//!
//! Keys inside the store (under the URL's prefix):
//!
//! ```text
//! metadata/{root,targets,snapshot,timestamp}.json   the current signed metadata
//! metadata/N.root.json                              every root version (agents walk them)
//! metadata/N.targets.json, N.snapshot.json,         each signed version, written once with
//! metadata/N.timestamp.json                         put-if-absent (see publish.rs)
//! targets/sha256/<hash>                             bundle files, stored once by content
//! ```
//!
//! `object_store` is asynchronous while the publishing code runs on blocking threads (and
//! in the command line). All blob I/O runs on one small runtime owned by this module; the
//! synchronous methods hand their future to it and wait, the `async` ones await it, so a
//! connection pool is never shared between runtimes and a blocking caller never blocks an
//! async worker of the server.

use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// `[blob_store]` in `config/server.toml`. Every key is optional: unset, the repository is
/// `data_dir/repo` on the local disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobStoreConfig {
    /// `file:///absolute/path` or `s3://bucket[/prefix]`. Unset: `file://<data_dir>/repo`.
    pub url: Option<String>,
    /// S3 endpoint for S3-compatible storage (MinIO, Ceph, moto): `https://s3.example.org`.
    /// Unset: `$AWS_ENDPOINT_URL` / `$AWS_ENDPOINT`, else AWS itself.
    pub endpoint: Option<String>,
    /// S3 region. Unset: `$AWS_REGION` / `$AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Access key id. Unset: `$AWS_ACCESS_KEY_ID` (or the instance's role).
    pub access_key_id: Option<String>,
    /// Secret key. Unset: `$AWS_SECRET_ACCESS_KEY`. Prefer the environment to this file.
    pub secret_access_key: Option<String>,
    /// Allow an `http://` endpoint (a local test server); off by default.
    pub allow_http: bool,
}

/// Blob store errors.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The configuration cannot make a store.
    #[error("blob store {url:?}: {reason}")]
    Config {
        /// The configured URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A read or write failed.
    #[error("blob store {url}: {key}: {source}")]
    Store {
        /// The store.
        url: String,
        /// The key.
        key: String,
        /// The error.
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The blob I/O runtime could not start or the task died.
    #[error("blob store I/O task: {0}")]
    Runtime(String),
}

/// The runtime every blob operation runs on (never dropped: a static).
fn runtime() -> Result<&'static tokio::runtime::Runtime, BlobError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("outpost-blob")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| BlobError::Runtime(e.clone()))
}

/// Runs `fut` on the blob runtime and waits for it on this (blocking) thread.
fn block<T: Send + 'static>(
    fut: impl Future<Output = Result<T, BlobError>> + Send + 'static,
) -> Result<T, BlobError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| BlobError::Runtime("the blob task ended without an answer".into()))?
}

/// Runs `fut` on the blob runtime and awaits it from another runtime.
async fn spawn<T: Send + 'static>(
    fut: impl Future<Output = Result<T, BlobError>> + Send + 'static,
) -> Result<T, BlobError> {
    runtime()?
        .spawn(fut)
        .await
        .map_err(|e| BlobError::Runtime(e.to_string()))?
}

/// Part of an object and the object's full size (for `Content-Range`).
#[derive(Debug, Clone)]
pub struct Ranged {
    /// The bytes from the requested offset to the end.
    pub bytes: axum::body::Bytes,
    /// The object's full size.
    pub size: u64,
}

/// A handle on the repository's blob store; cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    url: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("url", &self.url).finish()
    }
}

impl BlobStore {
    /// The local-disk store rooted at `dir` (created if missing).
    pub fn local(dir: &Path) -> Result<BlobStore, BlobError> {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            BlobError::Config {
                url: dir.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(BlobStore {
            inner: Arc::new(fs),
            url: format!("file://{}", dir.display()),
        })
    }

    /// The store `cfg` names; `default_dir` (the data folder's `repo/`) if it names none.
    pub fn open(cfg: &BlobStoreConfig, default_dir: &Path) -> Result<BlobStore, BlobError> {
        let Some(url) = cfg.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return BlobStore::local(default_dir);
        };
        let bad = |reason: &str| BlobError::Config {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a file URL needs an absolute path: file:///srv/outpost/repo",
                ));
            }
            return BlobStore::local(Path::new(path));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad(
                "unknown scheme; use file:///absolute/path or s3://bucket/prefix",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            return Err(bad("no bucket: s3://bucket/prefix"));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        // The AWS CLI's name for a custom endpoint, which from_env does not read.
        if let Ok(e) = std::env::var("AWS_ENDPOINT_URL") {
            b = b.with_endpoint(e);
        }
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &cfg.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if cfg.allow_http {
            b = b.with_allow_http(true);
        }
        // Conditional writes (If-None-Match: *) make put-if-absent safe with many writers.
        let s3 = b
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        Ok(BlobStore {
            inner,
            url: url.to_string(),
        })
    }

    /// The store's URL (for logs and messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, key: &str) -> impl FnOnce(object_store::Error) -> BlobError {
        let (url, key) = (self.url.clone(), key.to_string());
        move |source| BlobError::Store { url, key, source }
    }

    /// The object `key`, or `None` if there is none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let (inner, path, err) = (self.inner.clone(), ObjPath::from(key), self.err(key));
        block(async move {
            match inner.get_opts(&path, GetOptions::default()).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())).map_err(err),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err(e)),
            }
        })
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool, BlobError> {
        let (inner, path, err) = (self.inner.clone(), ObjPath::from(key), self.err(key));
        block(async move {
            let head = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            match inner.get_opts(&path, head).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(err(e)),
            }
        })
    }

    /// Writes `bytes` to `key`, replacing what was there (atomically: readers see the old
    /// object or the new one, never a part).
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.put_mode(key, bytes, PutMode::Overwrite).map(|_| ())
    }

    /// Writes `bytes` to `key` only if no object `key` exists (a conditional write: of
    /// several processes racing, exactly one gets `true`).
    pub fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        self.put_mode(key, bytes, PutMode::Create)
    }

    fn put_mode(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> Result<bool, BlobError> {
        let (inner, path, err) = (self.inner.clone(), ObjPath::from(key), self.err(key));
        block(async move {
            let opts = PutOptions {
                mode,
                ..PutOptions::default()
            };
            match inner.put_opts(&path, PutPayload::from(bytes), opts).await {
                Ok(_) => Ok(true),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(false),
                Err(e) => Err(err(e)),
            }
        })
    }

    /// Copies the local file `from` to `key` unless `key` exists (content-addressed files
    /// are written once). Returns whether it wrote.
    pub fn put_file_new(&self, key: &str, from: &Path) -> Result<bool, BlobError> {
        if self.exists(key)? {
            return Ok(false);
        }
        let bytes = std::fs::read(from).map_err(|source| BlobError::Io {
            path: from.to_path_buf(),
            source,
        })?;
        self.put_new(key, bytes)
    }

    /// Copies `key` to the local file `to` (written beside it, then renamed into place).
    /// Returns false if there is no object `key`.
    pub fn get_to_file(&self, key: &str, to: &Path) -> Result<bool, BlobError> {
        let Some(bytes) = self.get(key)? else {
            return Ok(false);
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { path, source }
        };
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let tmp = to.with_extension("partial");
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, to).map_err(io(to))?;
        Ok(true)
    }

    /// The object `key` from byte `start` on (0: all of it), with its full size; `None`
    /// if there is no object `key`. A start past the end is an error of the store.
    pub async fn get_from(&self, key: &str, start: u64) -> Result<Option<Ranged>, BlobError> {
        let (inner, path, err) = (self.inner.clone(), ObjPath::from(key), self.err(key));
        spawn(async move {
            let opts = GetOptions {
                range: (start > 0).then_some(GetRange::Offset(start)),
                ..GetOptions::default()
            };
            match inner.get_opts(&path, opts).await {
                Ok(r) => {
                    let size = r.meta.size;
                    let bytes = r.bytes().await.map_err(err)?;
                    Ok(Some(Ranged { bytes, size }))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err(e)),
            }
        })
        .await
    }

    /// The size of `key`, or `None` if there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let (inner, path, err) = (self.inner.clone(), ObjPath::from(key), self.err(key));
        spawn(async move {
            let head = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            match inner.get_opts(&path, head).await {
                Ok(r) => Ok(Some(r.meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err(e)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_store_put_new_is_put_if_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let b = BlobStore::local(&tmp.path().join("repo")).unwrap();
        assert_eq!(b.get("metadata/x.json").unwrap(), None);
        assert!(b.put_new("metadata/x.json", b"one".to_vec()).unwrap());
        assert!(!b.put_new("metadata/x.json", b"two".to_vec()).unwrap());
        assert_eq!(b.get("metadata/x.json").unwrap().unwrap(), b"one");
        b.put("metadata/x.json", b"three".to_vec()).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("repo/metadata/x.json")).unwrap(),
            b"three",
            "the local layout is the repository folder the server always had"
        );
        assert!(b.exists("metadata/x.json").unwrap());
        assert!(!b.exists("metadata/y.json").unwrap());
    }

    #[test]
    fn configuration_errors_say_what_to_write() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = |u: &str| BlobStoreConfig {
            url: Some(u.into()),
            ..BlobStoreConfig::default()
        };
        for bad in ["ftp://x", "file://relative/path", "s3://"] {
            let e = BlobStore::open(&cfg(bad), tmp.path()).unwrap_err();
            assert!(matches!(e, BlobError::Config { .. }), "{bad}: {e}");
        }
        let s3 = BlobStore::open(&cfg("s3://bucket/some/prefix"), tmp.path()).unwrap();
        assert_eq!(s3.url(), "s3://bucket/some/prefix");
    }
}
