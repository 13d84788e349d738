//! The client workflow's order of work (specification section 5): the root walk, the
//! timestamp, snapshot and targets updates with local copies tried first, fast-forward
//! recovery, delegation traversal, and target download, each download bounded in size.
//!
//! Transport ([`Fetcher`]) and storage of trusted metadata ([`MetadataStore`]) are traits:
//! the rules do not depend on HTTP or on files. Everything fetched is hostile until
//! [`TrustedSet`] accepts it; only then is it stored, as received.

use super::metadata::{TargetFile, TopRole};
use super::trusted::{Applied, TrustedSet};
use super::TufError;
use std::collections::BTreeSet;
use std::future::Future;
use time::OffsetDateTime;

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The repository has no such file (HTTP 404 or 403): ends the root walk.
    NotFound,
    /// The body exceeded the bound.
    TooLarge {
        /// The bound, in bytes.
        max: u64,
    },
    /// Anything else (network, timeout, server error).
    Failed(String),
}

/// Fetches one file, refusing more than `max_len` bytes.
pub trait Fetcher {
    /// The body of `url`, at most `max_len` bytes.
    fn fetch(
        &self,
        url: &str,
        max_len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

impl<T: Fetcher + Sync> Fetcher for &T {
    fn fetch(
        &self,
        url: &str,
        max_len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
        (**self).fetch(url, max_len)
    }
}

/// Where trusted metadata is kept, by role name (the store quotes names as it needs).
pub trait MetadataStore {
    /// The stored bytes of `role`, if any.
    fn load(&self, role: &str) -> Result<Option<Vec<u8>>, TufError>;
    /// Replaces the stored bytes of `role` (atomically).
    fn save(&self, role: &str, bytes: &[u8]) -> Result<(), TufError>;
    /// Forgets `role`.
    fn remove(&self, role: &str) -> Result<(), TufError>;
}

/// Bounds on one refresh (python-tuf's defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most root versions walked in one refresh.
    pub max_root_rotations: u64,
    /// Most targets roles visited looking for one target.
    pub max_delegations: usize,
    /// Bytes: root.
    pub root_max: u64,
    /// Bytes: timestamp.
    pub timestamp_max: u64,
    /// Bytes: snapshot when timestamp pins no length.
    pub snapshot_max: u64,
    /// Bytes: a targets role when snapshot pins no length.
    pub targets_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_root_rotations: 256,
            max_delegations: 32,
            root_max: 512_000,
            timestamp_max: 16_384,
            snapshot_max: 2_000_000,
            targets_max: 5_000_000,
        }
    }
}

/// Percent-encodes everything but `A-Za-z0-9_.-~` (Python's `quote(name, safe="")`): a role
/// name is safe in a URL path segment and a file name (`../x` becomes `..%2Fx`).
pub fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn fetch_error(url: String, e: FetchError) -> TufError {
    TufError::Fetch {
        url,
        reason: match e {
            FetchError::NotFound => "not found (HTTP 404/403)".into(),
            FetchError::TooLarge { max } => format!("larger than the bound of {max} bytes"),
            FetchError::Failed(r) => r,
        },
    }
}

/// One client session over a repository.
pub struct Updater<F, S> {
    fetcher: F,
    store: S,
    metadata_url: String,
    limits: Limits,
    set: TrustedSet,
    refreshed: bool,
}

impl<F: Fetcher, S: MetadataStore> Updater<F, S> {
    /// Starts from the stored trusted root (which must verify as self-signed).
    pub fn new(
        fetcher: F,
        store: S,
        metadata_url: &str,
        limits: Limits,
        now: OffsetDateTime,
    ) -> Result<Self, TufError> {
        let root = store.load("root")?.ok_or_else(|| {
            TufError::Store("no trusted root; initialise the client first".into())
        })?;
        let set = TrustedSet::new(&root, now)?;
        let mut metadata_url = metadata_url.to_string();
        if !metadata_url.ends_with('/') {
            metadata_url.push('/');
        }
        Ok(Updater {
            fetcher,
            store,
            metadata_url,
            limits,
            set,
            refreshed: false,
        })
    }

    /// The verified metadata so far.
    pub fn trusted(&self) -> &TrustedSet {
        &self.set
    }

    async fn download(&self, file: &str, max: u64) -> Result<Vec<u8>, TufError> {
        self.fetch_metadata(file, max)
            .await
            .map_err(|(url, e)| fetch_error(url, e))
    }

    async fn fetch_metadata(&self, file: &str, max: u64) -> Result<Vec<u8>, (String, FetchError)> {
        let url = format!("{}{file}", self.metadata_url);
        self.fetcher.fetch(&url, max).await.map_err(|e| (url, e))
    }

    fn load_local(&self, role: &str) -> Option<Vec<u8>> {
        // A local copy that cannot be read is treated as absent: it is fetched again.
        self.store.load(role).ok().flatten()
    }

    /// 5.3-5.6: updates root, timestamp, snapshot and top-level targets.
    pub async fn refresh(&mut self) -> Result<(), TufError> {
        self.load_root().await?;
        self.load_timestamp().await?;
        self.load_snapshot().await?;
        self.load_targets("targets", "root").await?;
        self.refreshed = true;
        Ok(())
    }

    fn fast_forward_keys(&self) -> [(BTreeSet<super::keys::Key>, u64); 2] {
        let root = self.set.root();
        [TopRole::Timestamp, TopRole::Snapshot].map(|r| {
            let (keys, t) = root.role_key_set(r);
            (keys.into_iter().cloned().collect(), t)
        })
    }

    /// 5.3: walks the roots one version at a time until the repository has no next one;
    /// then 5.3.11: if the timestamp or snapshot keys changed, forgets both trusted files
    /// (recovery from a fast-forward attack).
    async fn load_root(&mut self) -> Result<(), TufError> {
        let before = self.fast_forward_keys();
        let first = self.set.root().common.version + 1;
        for version in first..first + self.limits.max_root_rotations {
            let file = format!("{version}.root.json");
            let bytes = match self.fetch_metadata(&file, self.limits.root_max).await {
                Ok(b) => b,
                Err((_, FetchError::NotFound)) => break,
                Err((url, e)) => return Err(fetch_error(url, e)),
            };
            self.set.update_root(&bytes)?;
            self.store.save("root", &bytes)?;
        }
        if self.fast_forward_keys() != before {
            tracing::info!("timestamp or snapshot keys rotated: forgetting trusted timestamp and snapshot (TUF 5.3.11)");
            self.store.remove("timestamp")?;
            self.store.remove("snapshot")?;
        }
        self.set.check_final_root()
    }

    /// 5.4: the local timestamp (for rollback checks), then the repository's.
    async fn load_timestamp(&mut self) -> Result<(), TufError> {
        if let Some(local) = self.load_local("timestamp") {
            if let Err(e) = self.set.update_timestamp(&local) {
                tracing::debug!("local timestamp not usable as final: {e}");
            }
        }
        let bytes = self
            .download("timestamp.json", self.limits.timestamp_max)
            .await?;
        if self.set.update_timestamp(&bytes)? == Applied::New {
            self.store.save("timestamp", &bytes)?;
        }
        Ok(())
    }

    /// 5.5: the local snapshot if it is the one the timestamp pins, else the repository's.
    async fn load_snapshot(&mut self) -> Result<(), TufError> {
        if let Some(local) = self.load_local("snapshot") {
            match self.set.update_snapshot(&local, true) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_repository_error() => {
                    tracing::debug!("local snapshot not usable as final: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        let pinned = self
            .set
            .timestamp()
            .ok_or_else(|| TufError::Order("snapshot before timestamp".into()))?
            .snapshot
            .clone();
        let file = if self.set.root().consistent_snapshot {
            format!("{}.snapshot.json", pinned.version)
        } else {
            "snapshot.json".to_string()
        };
        let max = pinned.length.unwrap_or(self.limits.snapshot_max);
        let bytes = self.download(&file, max).await?;
        self.set.update_snapshot(&bytes, false)?;
        self.store.save("snapshot", &bytes)
    }

    /// 5.6: a targets role as delegated by `delegator`: the local copy if it is the pinned
    /// one, else the repository's.
    async fn load_targets(&mut self, role: &str, delegator: &str) -> Result<(), TufError> {
        if self.set.targets(role, delegator).is_some() {
            return Ok(());
        }
        if let Some(local) = self.load_local(role) {
            match self.set.update_targets(&local, role, delegator) {
                Ok(_) => return Ok(()),
                Err(e) if e.is_repository_error() => {
                    tracing::debug!("local {role} not usable: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        let snap = self
            .set
            .snapshot()
            .ok_or_else(|| TufError::Order("targets before snapshot".into()))?;
        let pinned = snap
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| {
                TufError::Missing(format!(
                    "role {role} is delegated but snapshot does not list it"
                ))
            })?
            .clone();
        let file = if self.set.root().consistent_snapshot {
            format!("{}.{}.json", pinned.version, quote(role))
        } else {
            format!("{}.json", quote(role))
        };
        let max = pinned.length.unwrap_or(self.limits.targets_max);
        let bytes = self.download(&file, max).await?;
        self.set.update_targets(&bytes, role, delegator)?;
        self.store.save(role, &bytes)
    }

    /// 5.6.7: the signed description of `path`, searching delegations depth first in
    /// priority order, stopping at a terminating role, visiting at most
    /// `max_delegations` roles. `None`: no trusted role lists it.
    pub async fn target_info(&mut self, path: &str) -> Result<Option<TargetFile>, TufError> {
        if !self.refreshed {
            self.refresh().await?;
        }
        let mut to_visit = vec![("targets".to_string(), "root".to_string())];
        let mut visited = BTreeSet::new();
        let mut budget = self.limits.max_delegations;
        while budget > 0 {
            let Some((role, parent)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&(role.clone(), parent.clone())) {
                continue;
            }
            self.load_targets(&role, &parent).await?;
            let Some(targets) = self.set.targets(&role, &parent) else {
                return Err(TufError::Order(format!("{role} not loaded")));
            };
            if let Some(t) = targets.targets.get(path) {
                return Ok(Some(t.clone()));
            }
            budget -= 1;
            let mut children = Vec::new();
            for d in targets.delegations.iter().flat_map(|d| &d.roles) {
                if d.matches(path) {
                    children.push((d.name.clone(), role.clone()));
                    if d.terminating {
                        to_visit.clear();
                        break;
                    }
                }
            }
            visited.insert((role, parent));
            to_visit.extend(children.into_iter().rev());
        }
        if !to_visit.is_empty() {
            tracing::warn!(
                "{path}: stopped after {} delegated roles",
                self.limits.max_delegations
            );
        }
        Ok(None)
    }

    /// Downloads `path` from `target_base_url` and verifies its length and hashes. With
    /// consistent snapshots the file is fetched by content: `dir/<hash>.<name>`.
    pub async fn download_target(
        &self,
        path: &str,
        info: &TargetFile,
        target_base_url: &str,
    ) -> Result<Vec<u8>, TufError> {
        let mut base = target_base_url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let remote = match (
            self.set.root().consistent_snapshot,
            info.hashes.values().next(),
        ) {
            (true, Some(hash)) => match path.rsplit_once('/') {
                Some((dir, name)) => format!("{dir}/{hash}.{name}"),
                None => format!("{hash}.{path}"),
            },
            _ => path.to_string(),
        };
        let url = format!("{base}{remote}");
        let bytes = match self.fetcher.fetch(&url, info.length).await {
            Ok(b) => b,
            Err(e) => return Err(fetch_error(url, e)),
        };
        info.verify(path, &bytes)?;
        Ok(bytes)
    }
}
