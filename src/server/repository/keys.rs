//! Keys of the signed repository: creating the root keys (for an offline medium) and the
//! online keys (targets, snapshot, timestamp; kept in the data folder, mode 0600), and
//! rotating them with a new root version signed by the old and new root keys.

use super::publish::sign_chain;
use super::read::current_targets;
use super::{expires_in, io, write_private, PublishError, Repository};
use crate::trust::{sign, RoleKeys, Root, Signed, SigningKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    super::tuf::write_root(repo, &signed.signed, &signers)?;
    Ok(signed)
}

/// An online signing key from `data_dir/keys/online/<role>.pk8`.
pub(crate) fn online_key(data_dir: &Path, role: &str) -> Result<SigningKey, PublishError> {
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
    // The same root in TUF's format, signed by the same keys (a repository initialised
    // before the TUF format gets its first TUF root here).
    super::tuf::write_root(repo, &signed.signed, &signers)?;
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
