//! Keys and publishing on the server: creating the TUF-style key set, and publishing a
//! bundle as a signed release (content-addressed target files, new targets, snapshot and
//! timestamp metadata).
//!
//! Layout under the server's data folder:
//!
//! ```text
//! keys/online/{targets,snapshot,timestamp}.pk8   online keys (mode 0600), used by the server
//! repo/metadata/{root,targets,snapshot,timestamp}.json, and N.root.json for every root version
//! repo/targets/sha256/<hash>                    bundle files, stored once by content
//! ```
//!
//! The root keys never live there: `keys init` writes them to a separate folder meant for
//! an offline medium (`--root-keys-dir`), and only root metadata signed with them is copied in.

use crate::trust::{
    sign, MetaFile, Release, RoleKeys, Root, Signed, SigningKey, Snapshot, TargetFile, Targets,
    Timestamp,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn expires_in(days: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(days))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The repository folder of a server data folder.
pub fn repo_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("repo")
}

/// Creates root keys (n, written to `root_keys_dir`), the online keys (in the data folder),
/// and root metadata version 1 signed by `threshold` of the root keys.
pub fn init_keys(
    data_dir: &Path,
    root_keys_dir: &Path,
    n: usize,
    threshold: u32,
) -> Result<Signed<Root>, PublishError> {
    let meta = repo_dir(data_dir).join("metadata/root.json");
    if meta.exists() {
        return Err(PublishError::Keys(format!(
            "{} exists already: keys are initialised",
            meta.display()
        )));
    }
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
    write_atomic(&meta, &bytes)?;
    write_atomic(&repo_dir(data_dir).join("metadata/1.root.json"), &bytes)?;
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

fn read_signed<T: crate::trust::Role>(path: &Path) -> Option<Signed<T>> {
    std::fs::read(path)
        .ok()
        .and_then(|b| crate::trust::parse(&b).ok())
}

/// Publishes a bundle folder as a release to `channel` (and `groups`, `percent`): copies
/// its files by content into the repository, adds the release to targets, and signs new
/// targets, snapshot and timestamp. Returns the new targets version.
pub fn publish(
    data_dir: &Path,
    bundle_dir: &Path,
    channel: &str,
    groups: &[String],
    percent: u8,
) -> Result<u64, PublishError> {
    let bundle = crate::model::Bundle::open(bundle_dir)?;
    let m = &bundle.manifest;
    let repo = repo_dir(data_dir);
    let meta = repo.join("metadata");
    let prev: Option<Signed<Targets>> = read_signed(&meta.join("targets.json"));
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
        let dest = repo.join("targets").join(&target);
        if !dest.exists() {
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            std::fs::copy(&path, &dest).map_err(io(&dest))?;
        }
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
    sign_chain(data_dir, targets)
}

/// Signs `targets` and a matching snapshot and timestamp, and writes all three.
pub fn sign_chain(data_dir: &Path, targets: Targets) -> Result<u64, PublishError> {
    let meta = repo_dir(data_dir).join("metadata");
    let version = targets.version;
    let tg = sign(targets, &[&online_key(data_dir, "targets")?]);
    let prev_sn: Option<Signed<Snapshot>> = read_signed(&meta.join("snapshot.json"));
    let prev_ts: Option<Signed<Timestamp>> = read_signed(&meta.join("timestamp.json"));
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
            version: prev_sn.map(|s| s.signed.version).unwrap_or(0) + 1,
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
            version: prev_ts.map(|t| t.signed.version).unwrap_or(0) + 1,
            expires: expires_in(1),
            meta: tm,
        },
        &[&online_key(data_dir, "timestamp")?],
    );
    // Targets and snapshot first, timestamp last: a client never sees a timestamp that
    // points at metadata not written yet.
    write_atomic(
        &meta.join("targets.json"),
        &serde_json::to_vec_pretty(&tg).unwrap_or_default(),
    )?;
    write_atomic(&meta.join("snapshot.json"), &snb)?;
    write_atomic(
        &meta.join("timestamp.json"),
        &serde_json::to_vec_pretty(&ts).unwrap_or_default(),
    )?;
    Ok(version)
}

/// The signed targets of the repository (an error if nothing is published yet).
pub fn current_targets(data_dir: &Path) -> Result<Targets, PublishError> {
    let meta = repo_dir(data_dir).join("metadata/targets.json");
    read_signed::<Targets>(&meta)
        .map(|t| t.signed)
        .ok_or_else(|| PublishError::Keys(format!("{}: nothing published yet", meta.display())))
}

/// Changes the releases of `model` `version` (on `channel`, or every channel) with `change`,
/// and signs a new targets version. Errors if no release matched.
fn change_releases(
    data_dir: &Path,
    model: &str,
    version: &str,
    channel: Option<&str>,
    change: impl Fn(&mut Release),
) -> Result<u64, PublishError> {
    let mut targets = current_targets(data_dir)?;
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
    sign_chain(data_dir, targets)
}

/// Withdraws a release: agents stop installing it and those running it move to the newest
/// release that still applies to them. Its files stay (agents may still roll back to them).
pub fn withdraw(
    data_dir: &Path,
    model: &str,
    version: &str,
    channel: Option<&str>,
) -> Result<u64, PublishError> {
    change_releases(data_dir, model, version, channel, |r| r.withdrawn = true)
}

/// Changes who a release goes to: its groups (if given) and its percentage.
pub fn restage(
    data_dir: &Path,
    model: &str,
    version: &str,
    channel: Option<&str>,
    groups: Option<&[String]>,
    percent: u8,
) -> Result<u64, PublishError> {
    change_releases(data_dir, model, version, channel, |r| {
        if let Some(g) = groups {
            r.groups = g.to_vec();
        }
        r.percent = percent.min(100);
        r.withdrawn = false;
    })
}

/// Re-signs the timestamp (same snapshot) if it expires within `margin`: the serving
/// process calls this regularly so agents never see stale metadata from a live server.
/// Returns the new timestamp version, or `None` if it was fresh enough.
pub fn refresh_timestamp(
    data_dir: &Path,
    margin: time::Duration,
) -> Result<Option<u64>, PublishError> {
    let meta = repo_dir(data_dir).join("metadata");
    let Some(ts) = read_signed::<Timestamp>(&meta.join("timestamp.json")) else {
        return Ok(None);
    };
    let expires = time::OffsetDateTime::parse(
        &ts.signed.expires,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    if expires - time::OffsetDateTime::now_utc() > margin {
        return Ok(None);
    }
    let version = ts.signed.version + 1;
    let signed = sign(
        Timestamp {
            version,
            expires: expires_in(1),
            ..ts.signed
        },
        &[&online_key(data_dir, "timestamp")?],
    );
    write_atomic(
        &meta.join("timestamp.json"),
        &serde_json::to_vec_pretty(&signed).unwrap_or_default(),
    )?;
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
    data_dir: &Path,
    root_keys_dir: &Path,
    roles: &[String],
    new_root: Option<(usize, u32)>,
) -> Result<Rotation, PublishError> {
    let meta = repo_dir(data_dir).join("metadata");
    let current: Signed<Root> = read_signed(&meta.join("root.json")).ok_or_else(|| {
        PublishError::Keys(format!(
            "{}: no root metadata; run `outpost-server keys init` first",
            meta.join("root.json").display()
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
    write_atomic(&meta.join(format!("{version}.root.json")), &bytes)?;
    write_atomic(&meta.join("root.json"), &bytes)?;
    // Re-sign the chain with the (new) online keys so agents find metadata they accept.
    if let Ok(mut t) = current_targets(data_dir) {
        t.version += 1;
        t.expires = expires_in(90);
        sign_chain(data_dir, t)?;
    }
    Ok(Rotation {
        root_version: version,
        roles: roles.to_vec(),
        new_root_key_files,
    })
}
