//! The repository's keys as operator actions: `keys init` (root keys written for an offline
//! medium, online keys kept in the data folder) and `keys rotate`, each audited.

use super::OpsError;
use crate::server::repository::{self, Repository, Rotation};
use crate::server::store::ServerStore;
use crate::trust::{Root, Signed};
use std::path::Path;

/// `keys init`: `n` root keys (threshold `threshold`) into `root_keys_dir`, online keys,
/// and root metadata version 1.
pub fn init(
    store: &dyn ServerStore,
    repo: &Repository,
    root_keys_dir: &Path,
    n: usize,
    threshold: u32,
) -> Result<Signed<Root>, OpsError> {
    let root = repository::init_keys(repo, root_keys_dir, n, threshold)?;
    store.audit(
        "operator",
        "keys init",
        &format!("{n} root keys, threshold {threshold}"),
    )?;
    Ok(root)
}

/// `keys rotate`: new online keys for `roles`, and with `new_root` a new root key set.
pub fn rotate(
    store: &dyn ServerStore,
    repo: &Repository,
    root_keys_dir: &Path,
    roles: &[String],
    new_root: Option<(usize, u32)>,
) -> Result<Rotation, OpsError> {
    let r = repository::rotate_keys(repo, root_keys_dir, roles, new_root)?;
    let root_part = if r.new_root_key_files.is_empty() {
        String::new()
    } else {
        format!(", {} new root keys", r.new_root_key_files.len())
    };
    store.audit(
        "operator",
        "keys rotate",
        &format!(
            "root v{}: new keys for {:?}{root_part}",
            r.root_version, r.roles
        ),
    )?;
    Ok(r)
}
