//! Keys and publishing on the server: creating the TUF-style key set, and publishing a
//! bundle as a signed release (content-addressed target files, new targets, snapshot and
//! timestamp metadata).
//!
//! The signed repository lives in the [`BlobStore`] (`src/server/blob.rs`: `data_dir/repo`
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

use super::blob::{BlobError, BlobStore};
use super::store::ServerStore;
use crate::trust::{
    sign, MetaFile, Release, RoleKeys, Root, Signed, SigningKey, Snapshot, TargetFile, Targets,
    Timestamp,
};
use std::collections::BTreeMap;
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

/// How long the `repository` lease is taken for (a publish copies a bundle of a few MB).
pub const REPOSITORY_LEASE: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a change waits for the lease another process holds.
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

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

    /// The repository `cfg` configures (`[blob_store]`, else `data_dir/repo`).
    pub fn open(cfg: &super::config::ServerConfig) -> Result<Repository, PublishError> {
        Ok(Repository::new(
            BlobStore::open(&cfg.blob_store, &repo_dir(&cfg.data_dir))?,
            &cfg.data_dir,
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

    /// Takes the `repository` lease (if this repository has a database), waiting up to a
    /// minute for another process to finish its change.
    fn lock(&self) -> Result<RepoGuard, PublishError> {
        let Some(store) = self.lock.clone() else {
            return Ok(RepoGuard(None));
        };
        let owner = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let started = std::time::Instant::now();
        loop {
            let now = super::unix_now();
            let until = now + REPOSITORY_LEASE.as_secs() as i64;
            if store.try_lease(REPOSITORY_LEASE_NAME, &owner, now, until)? {
                return Ok(RepoGuard(Some((store, owner))));
            }
            if started.elapsed() > LEASE_WAIT {
                return Err(PublishError::Busy(LEASE_WAIT));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn read_signed<T: crate::trust::Role>(
        &self,
        name: &str,
    ) -> Result<Option<Signed<T>>, PublishError> {
        Ok(self
            .blobs
            .get(&format!("metadata/{name}"))?
            .and_then(|b| crate::trust::parse(&b).ok()))
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

/// The lease name in the database's `leases` table.
pub const REPOSITORY_LEASE_NAME: &str = "repository";

/// Holds the `repository` lease until dropped.
struct RepoGuard(Option<(Arc<dyn ServerStore>, String)>);

impl Drop for RepoGuard {
    fn drop(&mut self) {
        if let Some((store, owner)) = &self.0 {
            if let Err(e) = store.release_lease(REPOSITORY_LEASE_NAME, owner) {
                tracing::warn!(error = %e, "cannot release the repository lease (it runs out by itself)");
            }
        }
    }
}

/// Creates root keys (n, written to `root_keys_dir`), the online keys (in the data folder),
/// and root metadata version 1 signed by `threshold` of the root keys.
pub fn init_keys(
    repo: &Repository,
    root_keys_dir: &Path,
    n: usize,
    threshold: u32,
) -> Result<Signed<Root>, PublishError> {
    let _guard = repo.lock()?;
    if repo.blobs.exists("metadata/root.json")? {
        return Err(PublishError::Keys(format!(
            "{}: metadata/root.json exists already: keys are initialised",
            repo.blobs.url()
        )));
    }
    let data_dir = repo.data_dir();
    let root_keys: Vec<SigningKey> = (0..n.max(1)).map(|_| SigningKey::generate()).collect();
    for (i, k) in root_keys.iter().enumerate() {
        write_private(&root_keys_dir.join(format!("root-{i}.pk8")), k.pkcs8())?;
    }
    let online: Vec<(&str, SigningKey)> = ["targets", "snapshot", "timestamp"]
        .into_iter()
        .map(|r| (r, SigningKey::generate()))
        .collect();
    for (role, k) in &online {
        write_private(&data_dir.join(format!("keys/online/{role}.pk8")), k.pkcs8())?;
    }
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for k in &root_keys {
        keys.insert(k.key_id(), k.public());
    }
    roles.insert(
        "root".to_string(),
        RoleKeys {
            keyids: root_keys.iter().map(|k| k.key_id()).collect(),
            threshold: threshold.max(1),
        },
    );
    for (role, k) in &online {
        keys.insert(k.key_id(), k.public());
        roles.insert(
            role.to_string(),
            RoleKeys {
                keyids: vec![k.key_id()],
                threshold: 1,
            },
        );
    }
    let root = Root {
        type_: "root".into(),
        version: 1,
        expires: expires_in(365),
        keys,
        roles,
    };
    let signers: Vec<&SigningKey> = root_keys.iter().take(threshold.max(1) as usize).collect();
    let signed = sign(root, &signers);
    let bytes = serde_json::to_vec_pretty(&signed).unwrap_or_default();
    // 1.root.json first, with put-if-absent: of two processes initialising one shared
    // store at once, one wins and the other stops before writing root.json.
    repo.claim_meta("1.root.json", bytes.clone())?;
    repo.write_meta("root.json", bytes)?;
    Ok(signed)
}

fn online_key(data_dir: &Path, role: &str) -> Result<SigningKey, PublishError> {
    let p = data_dir.join(format!("keys/online/{role}.pk8"));
    let b = std::fs::read(&p).map_err(|e| {
        PublishError::Keys(format!(
            "online key {}: {e}; run `outpost-server keys init` first",
            p.display()
        ))
    })?;
    SigningKey::from_pkcs8(&b)
        .ok_or_else(|| PublishError::Keys(format!("online key {} is damaged", p.display())))
}

/// The blob-store prefix of a candidate bundle kept by a training run.
fn candidate_prefix(model: &str, version: &str) -> String {
    format!("candidates/{model}/{version}")
}

/// Copies a candidate bundle folder into the blob store (`candidates/<model>/<version>/`,
/// then a `.files` index written last), so that any server process sharing the store can
/// publish it later, not only the one that trained it.
pub fn store_candidate(
    repo: &Repository,
    model: &str,
    version: &str,
    dir: &Path,
) -> Result<(), PublishError> {
    let prefix = candidate_prefix(model, version);
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.map_err(|e| PublishError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap_or(e.path())
            .to_string_lossy()
            .replace('\\', "/");
        repo.blobs()
            .put_file_new(&format!("{prefix}/{rel}"), e.path())?;
        files.push(rel);
    }
    let index = serde_json::to_vec(&files).unwrap_or_default();
    repo.blobs().put(&format!("{prefix}/.files"), index)?;
    Ok(())
}

/// Brings a candidate bundle back from the blob store into `dir` when this machine does
/// not have it (it was trained by another server process). Returns whether it fetched.
pub fn fetch_candidate(
    repo: &Repository,
    model: &str,
    version: &str,
    dir: &Path,
) -> Result<bool, PublishError> {
    if dir.join("manifest.json").is_file() {
        return Ok(false);
    }
    let prefix = candidate_prefix(model, version);
    let Some(index) = repo.blobs().get(&format!("{prefix}/.files"))? else {
        return Ok(false);
    };
    let files: Vec<String> = serde_json::from_slice(&index).map_err(|e| PublishError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("damaged candidate index: {e}")),
    })?;
    let tmp = dir.with_extension(format!("fetching.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for rel in &files {
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            continue;
        }
        repo.blobs()
            .get_to_file(&format!("{prefix}/{rel}"), &tmp.join(rel))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| PublishError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::rename(&tmp, dir).map_err(|source| PublishError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(true)
}

/// Publishes a bundle folder as a release to `channel` (and `groups`, `percent`): copies
/// its files by content into the repository, adds the release to targets, and signs new
/// targets, snapshot and timestamp. Returns the new targets version.
pub fn publish(
    repo: &Repository,
    bundle_dir: &Path,
    channel: &str,
    groups: &[String],
    percent: u8,
) -> Result<u64, PublishError> {
    publish_if(repo, &|| true, bundle_dir, channel, groups, percent)
}

/// Who a release targets, in words: `all groups`, or `groups a, b` (never a raw `[]`).
pub fn audience(groups: &[String]) -> String {
    if groups.is_empty() {
        "all groups".to_string()
    } else {
        format!("groups {}", groups.join(", "))
    }
}

/// [`publish`], asking `still_ours` once the repository lease is held and before anything
/// is written: a training run whose job another process took over answers false, and then
/// nothing is published ([`PublishError::LeaseLost`]).
pub fn publish_if(
    repo: &Repository,
    still_ours: &dyn Fn() -> bool,
    bundle_dir: &Path,
    channel: &str,
    groups: &[String],
    percent: u8,
) -> Result<u64, PublishError> {
    let bundle = crate::model::Bundle::open(bundle_dir)?;
    let m = &bundle.manifest;
    let _guard = repo.lock()?;
    if !still_ours() {
        return Err(PublishError::LeaseLost);
    }
    let prev: Option<Signed<Targets>> = repo.read_signed("targets.json")?;
    let mut targets = prev.as_ref().map(|t| t.signed.clone()).unwrap_or(Targets {
        type_: "targets".into(),
        version: 0,
        expires: String::new(),
        targets: BTreeMap::new(),
        releases: vec![],
    });
    if let Some(newest) = targets
        .releases
        .iter()
        .filter(|r| r.model == m.name && r.channel == channel)
        .filter_map(|r| crate::model::manifest::parse_version(&r.version))
        .max()
    {
        if crate::model::manifest::parse_version(&m.version) <= Some(newest) {
            return Err(PublishError::NotNewer {
                model: m.name.clone(),
                version: m.version.clone(),
                published: format!("{}.{}.{}", newest.0, newest.1, newest.2),
            });
        }
    }
    let mut files = BTreeMap::new();
    let mut all: Vec<(String, PathBuf)> = m
        .files
        .keys()
        .map(|f| (f.clone(), bundle.path(f)))
        .collect();
    all.push(("manifest.json".into(), bundle.path("manifest.json")));
    for (name, path) in all {
        let (sha, len) = crate::hash::sha256_file(&path).map_err(io(&path))?;
        let target = format!("sha256/{sha}");
        // Content-addressed: a file already there (the backbone of the last release) is
        // not sent again; two processes writing the same file write the same bytes.
        repo.blobs
            .put_file_new(&format!("targets/{target}"), &path)?;
        targets.targets.insert(
            target.clone(),
            TargetFile {
                length: len,
                sha256: sha,
            },
        );
        files.insert(name, target);
    }
    targets.releases.push(Release {
        model: m.name.clone(),
        version: m.version.clone(),
        channel: channel.into(),
        groups: groups.to_vec(),
        percent: percent.min(100),
        files,
        withdrawn: false,
    });
    targets.version += 1;
    targets.expires = expires_in(90);
    sign_chain(repo, targets)
}

/// Signs `targets` and a matching snapshot and timestamp, and writes all three. The caller
/// holds the repository lease.
fn sign_chain(repo: &Repository, mut targets: Targets) -> Result<u64, PublishError> {
    let data_dir = repo.data_dir();
    targets.version = repo.next_free("targets", targets.version)?;
    let version = targets.version;
    let tg = sign(targets, &[&online_key(data_dir, "targets")?]);
    let prev_sn: Option<Signed<Snapshot>> = repo.read_signed("snapshot.json")?;
    let prev_ts: Option<Signed<Timestamp>> = repo.read_signed("timestamp.json")?;
    let mut sm = BTreeMap::new();
    sm.insert(
        "targets.json".to_string(),
        MetaFile {
            version,
            sha256: None,
            length: None,
        },
    );
    let sn = sign(
        Snapshot {
            type_: "snapshot".into(),
            version: repo.next_free(
                "snapshot",
                prev_sn.map(|s| s.signed.version).unwrap_or(0) + 1,
            )?,
            expires: expires_in(30),
            meta: sm,
        },
        &[&online_key(data_dir, "snapshot")?],
    );
    let snb = serde_json::to_vec_pretty(&sn).unwrap_or_default();
    let mut tm = BTreeMap::new();
    tm.insert(
        "snapshot.json".to_string(),
        MetaFile {
            version: sn.signed.version,
            sha256: Some(crate::hash::sha256_hex(&snb)),
            length: Some(snb.len() as u64),
        },
    );
    let ts = sign(
        Timestamp {
            type_: "timestamp".into(),
            version: repo.next_free(
                "timestamp",
                prev_ts.map(|t| t.signed.version).unwrap_or(0) + 1,
            )?,
            expires: expires_in(1),
            meta: tm,
        },
        &[&online_key(data_dir, "timestamp")?],
    );
    let tgb = serde_json::to_vec_pretty(&tg).unwrap_or_default();
    let tsb = serde_json::to_vec_pretty(&ts).unwrap_or_default();
    // Each version once (put-if-absent): a process that lost a race stops here, before it
    // replaced anything another process signed.
    repo.claim_meta(&format!("{version}.targets.json"), tgb.clone())?;
    repo.claim_meta(&format!("{}.snapshot.json", sn.signed.version), snb.clone())?;
    repo.claim_meta(
        &format!("{}.timestamp.json", ts.signed.version),
        tsb.clone(),
    )?;
    // Targets and snapshot first, timestamp last: a client never sees a timestamp that
    // points at metadata not written yet.
    repo.write_meta("targets.json", tgb)?;
    repo.write_meta("snapshot.json", snb)?;
    repo.write_meta("timestamp.json", tsb)?;
    Ok(version)
}

/// The signed targets of the repository (an error if nothing is published yet).
pub fn current_targets(repo: &Repository) -> Result<Targets, PublishError> {
    repo.read_signed::<Targets>("targets.json")?
        .map(|t| t.signed)
        .ok_or_else(|| {
            PublishError::Keys(format!(
                "{}: metadata/targets.json: nothing published yet",
                repo.blobs.url()
            ))
        })
}

/// Changes the releases of `model` `version` (on `channel`, or every channel) with `change`,
/// and signs a new targets version. Errors if no release matched.
fn change_releases(
    repo: &Repository,
    model: &str,
    version: &str,
    channel: Option<&str>,
    change: impl Fn(&mut Release),
) -> Result<u64, PublishError> {
    let _guard = repo.lock()?;
    let mut targets = current_targets(repo)?;
    let mut hit = 0;
    for r in targets.releases.iter_mut().filter(|r| {
        r.model == model && r.version == version && channel.is_none_or(|c| r.channel == c)
    }) {
        change(r);
        hit += 1;
    }
    if hit == 0 {
        return Err(PublishError::NoRelease {
            model: model.into(),
            version: version.into(),
        });
    }
    targets.version += 1;
    targets.expires = expires_in(90);
    sign_chain(repo, targets)
}

/// Withdraws a release: agents stop installing it and those running it move to the newest
/// release that still applies to them. Its files stay (agents may still roll back to them).
pub fn withdraw(
    repo: &Repository,
    model: &str,
    version: &str,
    channel: Option<&str>,
) -> Result<u64, PublishError> {
    change_releases(repo, model, version, channel, |r| r.withdrawn = true)
}

/// Changes who a release goes to: its groups (if given) and its percentage.
pub fn restage(
    repo: &Repository,
    model: &str,
    version: &str,
    channel: Option<&str>,
    groups: Option<&[String]>,
    percent: u8,
) -> Result<u64, PublishError> {
    change_releases(repo, model, version, channel, |r| {
        if let Some(g) = groups {
            r.groups = g.to_vec();
        }
        r.percent = percent.min(100);
        r.withdrawn = false;
    })
}

fn timestamp_due(ts: &Signed<Timestamp>, margin: time::Duration) -> bool {
    let expires = time::OffsetDateTime::parse(
        &ts.signed.expires,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    expires - time::OffsetDateTime::now_utc() <= margin
}

/// Re-signs the timestamp (same snapshot) if it expires within `margin`: every serving
/// process calls this regularly so agents never see stale metadata from a live server.
/// Returns the new timestamp version, or `None` if it was fresh enough or another process
/// re-signed it first: the new version is written with put-if-absent as
/// `metadata/N.timestamp.json` before `timestamp.json`, so of the processes that find it
/// due at the same moment exactly one signs it. (With a database the check also runs
/// under the repository lease, so it is not even attempted twice.)
pub fn refresh_timestamp(
    repo: &Repository,
    margin: time::Duration,
) -> Result<Option<u64>, PublishError> {
    // A cheap look first, without the lease: almost always fresh.
    match repo.read_signed::<Timestamp>("timestamp.json")? {
        Some(ts) if timestamp_due(&ts, margin) => {}
        _ => return Ok(None),
    }
    let _guard = repo.lock()?;
    let Some(ts) = repo.read_signed::<Timestamp>("timestamp.json")? else {
        return Ok(None);
    };
    if !timestamp_due(&ts, margin) {
        return Ok(None);
    }
    let version = repo.next_free("timestamp", ts.signed.version + 1)?;
    let signed = sign(
        Timestamp {
            version,
            expires: expires_in(1),
            ..ts.signed
        },
        &[&online_key(repo.data_dir(), "timestamp")?],
    );
    let bytes = serde_json::to_vec_pretty(&signed).unwrap_or_default();
    if !repo
        .blobs
        .put_new(&format!("metadata/{version}.timestamp.json"), bytes.clone())?
    {
        tracing::debug!(version, "timestamp already re-signed by another process");
        return Ok(None);
    }
    repo.write_meta("timestamp.json", bytes)?;
    Ok(Some(version))
}

/// What a key rotation changed.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The new root version.
    pub root_version: u64,
    /// Online roles given new keys.
    pub roles: Vec<String>,
    /// New root key files written (empty if the root keys were kept).
    pub new_root_key_files: Vec<PathBuf>,
}

/// Rotates keys: new keys for the online `roles`, and (with `new_root`) a new set of
/// `n` root keys with a threshold. Writes root version N+1 signed by a threshold of the
/// current root keys (read from `root_keys_dir`) and, if they changed, of the new ones,
/// then re-signs targets, snapshot and timestamp with the current online keys. Agents walk
/// from their pinned root through every version, so an agent offline during several
/// rotations still catches up.
pub fn rotate_keys(
    repo: &Repository,
    root_keys_dir: &Path,
    roles: &[String],
    new_root: Option<(usize, u32)>,
) -> Result<Rotation, PublishError> {
    let _guard = repo.lock()?;
    let data_dir = repo.data_dir();
    let current: Signed<Root> = repo.read_signed("root.json")?.ok_or_else(|| {
        PublishError::Keys(format!(
            "{}: no metadata/root.json; run `outpost-server keys init` first",
            repo.blobs.url()
        ))
    })?;
    for r in roles {
        if !["targets", "snapshot", "timestamp"].contains(&r.as_str()) {
            return Err(PublishError::Keys(format!(
                "unknown role {r:?}: online roles are targets, snapshot and timestamp"
            )));
        }
    }
    // The current root keys present on the offline medium.
    let root_role = current
        .signed
        .roles
        .get("root")
        .cloned()
        .ok_or_else(|| PublishError::Keys("root metadata defines no root role".into()))?;
    let mut old_keys = Vec::new();
    let entries = std::fs::read_dir(root_keys_dir).map_err(io(root_keys_dir))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("pk8") {
            continue;
        }
        if let Some(k) = std::fs::read(&p)
            .ok()
            .and_then(|b| SigningKey::from_pkcs8(&b))
        {
            if root_role.keyids.contains(&k.key_id()) {
                old_keys.push(k);
            }
        }
    }
    if old_keys.len() < root_role.threshold as usize {
        return Err(PublishError::Keys(format!(
            "{} holds {} of the current root keys; {} are needed to sign a new root",
            root_keys_dir.display(),
            old_keys.len(),
            root_role.threshold
        )));
    }
    let mut root = current.signed.clone();
    root.version += 1;
    root.expires = expires_in(365);
    // New online keys: written beside the old ones first, swapped in once root is written.
    let mut staged = Vec::new();
    for role in roles {
        let k = SigningKey::generate();
        if let Some(old) = root.roles.get(role) {
            for id in &old.keyids {
                root.keys.remove(id);
            }
        }
        root.keys.insert(k.key_id(), k.public());
        root.roles.insert(
            role.clone(),
            RoleKeys {
                keyids: vec![k.key_id()],
                threshold: 1,
            },
        );
        staged.push((role.clone(), k));
    }
    let mut new_root_key_files = Vec::new();
    let mut new_root_keys = Vec::new();
    if let Some((n, threshold)) = new_root {
        for id in &root_role.keyids {
            root.keys.remove(id);
        }
        let keys: Vec<SigningKey> = (0..n.max(1)).map(|_| SigningKey::generate()).collect();
        for (i, k) in keys.iter().enumerate() {
            let p = root_keys_dir.join(format!("root-v{}-{i}.pk8", root.version));
            write_private(&p, k.pkcs8())?;
            new_root_key_files.push(p);
            root.keys.insert(k.key_id(), k.public());
        }
        root.roles.insert(
            "root".into(),
            RoleKeys {
                keyids: keys.iter().map(|k| k.key_id()).collect(),
                threshold: threshold.clamp(1, n.max(1) as u32),
            },
        );
        new_root_keys = keys;
    }
    let t_new = root.roles.get("root").map(|r| r.threshold).unwrap_or(1) as usize;
    let mut signers: Vec<&SigningKey> =
        old_keys.iter().take(root_role.threshold as usize).collect();
    signers.extend(new_root_keys.iter().take(t_new));
    let version = root.version;
    let signed = sign(root, &signers);
    let bytes = serde_json::to_vec_pretty(&signed).unwrap_or_default();
    for (role, k) in &staged {
        write_private(&data_dir.join(format!("keys/online/{role}.pk8")), k.pkcs8())?;
    }
    repo.claim_meta(&format!("{version}.root.json"), bytes.clone())?;
    repo.write_meta("root.json", bytes)?;
    // Re-sign the chain with the (new) online keys so agents find metadata they accept.
    if let Ok(mut t) = current_targets(repo) {
        t.version += 1;
        t.expires = expires_in(90);
        sign_chain(repo, t)?;
    }
    Ok(Rotation {
        root_version: version,
        roles: roles.to_vec(),
        new_root_key_files,
    })
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
