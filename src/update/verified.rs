//! The verify arrow over TUF 1.0: the agent refreshes the server's `/v1/tuf/` repository
//! with [`crate::trust::tuf`] (the specification's client workflow) and gets back a
//! [`Verified`] view — the releases the signed targets carry, each file's signed length
//! and sha256 — that targeting, download and staging work on.
//!
//! - Transport is the agent's [`SyncClient`], each file bounded by the limits of
//!   [`Limits`]; a network failure stays a network failure (transient: the loop retries).
//! - Trusted metadata is kept as received in `<data_dir>/trust/tuf/`.
//! - Time: expiry is checked at the *trusted time* (the later of the clock and the floor
//!   saved when metadata was last accepted), so setting the clock back revives nothing.
//! - **Migration** from the repository's own format: an agent whose pinned root predates
//!   TUF walks that format's root chain (old rules, old keys) to the newest old root, then
//!   takes the TUF root of that same version only if a threshold of that old root's root
//!   keys signed it. Nothing unsigned is trusted on the way; from then on only TUF is read.

use super::{io, UpdateError};
use crate::sync::{SyncClient, SyncError};
use crate::trust::releases::releases_from;
use crate::trust::tuf::keys::Key;
use crate::trust::tuf::metadata::{verify_threshold, Envelope, RoleKeys, Root as TufRoot, TopRole};
use crate::trust::tuf::trusted::TrustedSet;
use crate::trust::tuf::updater::{FetchError, Fetcher, Limits, MetadataStore, Updater};
use crate::trust::tuf::{TufError, TufErrorKind};
use crate::trust::{PublicKey, Root, Targets};
use crate::update::tuf_client::DirStore;
use base64::Engine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where the server serves TUF metadata.
pub const METADATA_PATH: &str = "/v1/tuf/metadata/";

const FLOOR: &str = "time_floor";

/// `<data_dir>/trust/tuf`: trusted TUF metadata as received.
pub fn tuf_dir(data_dir: &Path) -> PathBuf {
    super::trust_dir(data_dir).join("tuf")
}

/// What the agent verified: root and targets versions and the releases in targets.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Trusted root version.
    pub root_version: u64,
    /// Releases and their files (target path -> signed length and sha256).
    pub targets: Targets,
    /// The trusted root's keys in the form the signed device assignment is checked with.
    pub assignment_root: Root,
}

impl Verified {
    /// The view of a refreshed trusted set.
    pub fn from_set(set: &TrustedSet) -> Result<Verified, UpdateError> {
        let top = set
            .targets("targets", "root")
            .ok_or_else(|| UpdateError::Tuf(TufError::Order("targets not loaded".into())))?;
        let mut targets = Targets {
            type_: "targets".into(),
            version: top.common.version,
            expires: crate::trust::tuf::metadata::format_expires(top.common.expires),
            targets: BTreeMap::new(),
            releases: Vec::new(),
        };
        let releases = releases_from(top)
            .map_err(|e| UpdateError::Tuf(TufError::malformed("targets", e.to_string())))?;
        for r in releases {
            targets.targets.extend(r.files);
            targets.releases.push(r.release);
        }
        Ok(Verified {
            root_version: set.root().common.version,
            targets,
            assignment_root: assignment_root(set.root()),
        })
    }
}

/// The trusted root's Ed25519 keys and role thresholds as the repository's own format
/// writes them: the signed device assignment (`/v1/device/models`) is signed in that
/// format by the timestamp key.
pub fn assignment_root(root: &TufRoot) -> Root {
    let mut keys = BTreeMap::new();
    let mut ids = BTreeMap::new();
    for (id, k) in &root.keys {
        if k.keytype != "ed25519" || k.scheme != "ed25519" {
            continue;
        }
        let Ok(raw) = hex::decode(&k.public) else {
            continue;
        };
        let pk = PublicKey {
            scheme: "ed25519".into(),
            public: base64::engine::general_purpose::STANDARD.encode(raw),
        };
        ids.insert(id.clone(), pk.key_id());
        keys.insert(pk.key_id(), pk);
    }
    let roles = root
        .roles
        .iter()
        .map(|(role, r)| {
            let keyids = r
                .keyids
                .iter()
                .filter_map(|id| ids.get(id).cloned())
                .collect();
            let threshold = u32::try_from(r.threshold).unwrap_or(u32::MAX);
            (
                role.name().to_string(),
                crate::trust::RoleKeys { keyids, threshold },
            )
        })
        .collect();
    Root {
        type_: "root".into(),
        version: root.common.version,
        expires: crate::trust::tuf::metadata::format_expires(root.common.expires),
        keys,
        roles,
    }
}

/// TUF downloads over the agent's sync client. Keeps the last network error so that a
/// refresh cut off by the network is reported as one (and retried), not as a refusal.
pub struct SyncFetcher<'a> {
    client: &'a SyncClient,
    timeout: Duration,
    last_error: Mutex<Option<SyncError>>,
}

impl<'a> SyncFetcher<'a> {
    /// Fetches through `client`, each file within `timeout`.
    pub fn new(client: &'a SyncClient, timeout: Duration) -> Self {
        SyncFetcher {
            client,
            timeout,
            last_error: Mutex::new(None),
        }
    }

    fn keep(&self, e: SyncError) -> FetchError {
        let msg = e.to_string();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e);
        }
        FetchError::Failed(msg)
    }

    /// The network error that ended the last failed fetch, if any.
    pub fn take_error(&self) -> Option<SyncError> {
        self.last_error.lock().ok().and_then(|mut e| e.take())
    }
}

impl Fetcher for SyncFetcher<'_> {
    async fn fetch(&self, url: &str, max_len: u64) -> Result<Vec<u8>, FetchError> {
        let res = match self.client.get(url, None, self.timeout).await {
            Ok(r) => r,
            Err(e) => return Err(self.keep(e)),
        };
        let status = res.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Err(FetchError::NotFound);
        }
        if !status.is_success() {
            return Err(self.keep(crate::sync::error_from(res).await));
        }
        if res.content_length().is_some_and(|n| n > max_len) {
            return Err(FetchError::TooLarge { max: max_len });
        }
        let limit = usize::try_from(max_len).unwrap_or(usize::MAX);
        let what = format!("TUF file {url}");
        crate::sync::read_limited(res, limit, self.client.server_url(), &what)
            .await
            .map_err(|e| match e {
                SyncError::TooLarge { .. } => FetchError::TooLarge { max: max_len },
                e => self.keep(e),
            })
    }
}

/// The trusted time's floor: when metadata was last accepted (the epoch if never).
pub fn time_floor(data_dir: &Path) -> OffsetDateTime {
    std::fs::read_to_string(super::trust_dir(data_dir).join(FLOOR))
        .ok()
        .and_then(|s| OffsetDateTime::parse(s.trim(), &Rfc3339).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Raises the floor to `now` (only ever called after metadata was accepted).
pub fn save_floor(data_dir: &Path, now: OffsetDateTime) -> Result<(), UpdateError> {
    let dir = super::trust_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let floor = time_floor(data_dir).max(now);
    super::local::write_atomic(
        &dir.join(FLOOR),
        floor.format(&Rfc3339).unwrap_or_default().as_bytes(),
    )
}

/// Whether `bytes` is a TUF 1.0 document (it has `signed.spec_version`), as opposed to
/// the repository's own format.
pub fn is_tuf(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v["signed"]["spec_version"].is_string())
}

/// Refreshes from the server and returns what was verified. The trusted TUF root comes
/// from `<data_dir>/trust/tuf/`, else the pinned root, else the migration (module doc).
pub async fn refresh(
    client: &SyncClient,
    pinned_root: &Path,
    data_dir: &Path,
    now: OffsetDateTime,
) -> Result<Verified, UpdateError> {
    let store = DirStore::new(&tuf_dir(data_dir)).map_err(UpdateError::Tuf)?;
    let fetcher = SyncFetcher::new(client, Duration::from_secs(60));
    if store.load("root").map_err(UpdateError::Tuf)?.is_none() {
        let root = initial_root(client, &fetcher, pinned_root, data_dir, now).await?;
        store.save("root", &root).map_err(UpdateError::Tuf)?;
    }
    let trusted_now = now.max(time_floor(data_dir));
    let mut up = Updater::new(
        &fetcher,
        store,
        METADATA_PATH,
        Limits::default(),
        trusted_now,
    )
    .map_err(UpdateError::Tuf)?;
    if let Err(e) = up.refresh().await {
        if e.kind() == TufErrorKind::Fetch {
            if let Some(net) = fetcher.take_error() {
                return Err(UpdateError::Sync(net));
            }
        }
        return Err(UpdateError::Tuf(e));
    }
    save_floor(data_dir, trusted_now)?;
    Verified::from_set(up.trusted())
}

/// The first trusted TUF root: the pinned root if it is TUF's (it must be self-signed),
/// else the signed transition from the repository's own format.
async fn initial_root(
    client: &SyncClient,
    fetcher: &SyncFetcher<'_>,
    pinned_root: &Path,
    data_dir: &Path,
    now: OffsetDateTime,
) -> Result<Vec<u8>, UpdateError> {
    let pinned = std::fs::read(pinned_root).map_err(|e| UpdateError::PinnedRoot {
        path: pinned_root.to_path_buf(),
        reason: e.to_string(),
    })?;
    if is_tuf(&pinned) {
        TrustedSet::new(&pinned, now).map_err(|e| UpdateError::PinnedRoot {
            path: pinned_root.to_path_buf(),
            reason: e.to_string(),
        })?;
        return Ok(pinned);
    }
    let legacy = super::trust_store::walk_legacy_roots(client, pinned_root, data_dir).await?;
    let v = legacy.version;
    let url = format!("{METADATA_PATH}{v}.root.json");
    let bytes = match fetcher.fetch(&url, Limits::default().root_max).await {
        Ok(b) => b,
        Err(FetchError::NotFound) => {
            return Err(UpdateError::Refused(format!(
                "the server has no TUF root version {v} yet: this agent's pinned root is in the \
                 format before TUF, and moves to TUF through a TUF root signed by the same root \
                 keys. Ask the operator to run `outpost-server keys rotate` (it signs one)"
            )))
        }
        Err(e) => {
            return Err(match fetcher.take_error() {
                Some(net) => UpdateError::Sync(net),
                None => UpdateError::Refused(format!("fetching {url}: {e:?}")),
            })
        }
    };
    transition(&legacy, &bytes, now).map_err(UpdateError::Tuf)?;
    tracing::info!(
        version = v,
        "moved to TUF 1.0 metadata: a TUF root signed by the trusted root keys"
    );
    Ok(bytes)
}

/// The signed transition: `bytes` is accepted as the first TUF root only if it has the
/// version of the verified old-format root `legacy`, is signed by a threshold of
/// `legacy`'s root keys, and is a valid self-signed TUF root.
pub fn transition(legacy: &Root, bytes: &[u8], now: OffsetDateTime) -> Result<(), TufError> {
    let env = Envelope::parse("root", bytes)?;
    let root = TufRoot::from_signed(&env.signed)?;
    if root.common.version != legacy.version {
        return Err(TufError::Version {
            role: "root".into(),
            found: root.common.version,
            rule: format!(
                "the TUF root taking over from the trusted root version {} must have that version",
                legacy.version
            ),
        });
    }
    let mut keys = BTreeMap::new();
    let mut keyids = Vec::new();
    let role = legacy
        .roles
        .get("root")
        .ok_or_else(|| TufError::Missing("the trusted root defines no root role".into()))?;
    for id in &role.keyids {
        let Some(pk) = legacy.keys.get(id) else {
            continue;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&pk.public) else {
            continue;
        };
        let key = Key::ed25519(&raw);
        keyids.push(key.key_id());
        keys.insert(key.key_id(), key);
    }
    let old_root_keys = RoleKeys {
        keyids,
        threshold: u64::from(role.threshold.max(1)),
    };
    verify_threshold("root", &keys, &old_root_keys, &env)?;
    root.verify(TopRole::Root, &env)?;
    TrustedSet::new(bytes, now)?;
    Ok(())
}
