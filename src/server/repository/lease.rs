//! The `repository` lease: every change of the signed repository (publish, stage,
//! withdraw, key rotation, re-signing the timestamp) takes it in the server's database
//! first, so two server processes never sign from the same starting state.

use super::{PublishError, Repository};
use crate::server::store::ServerStore;
use std::sync::Arc;

/// How long the `repository` lease is taken for (a publish copies a bundle of a few MB).
pub const REPOSITORY_LEASE: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a change waits for the lease another process holds.
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Repository {
    /// Takes the `repository` lease (if this repository has a database), waiting up to a
    /// minute for another process to finish its change.
    pub(super) fn lock(&self) -> Result<RepoGuard, PublishError> {
        let Some(store) = self.lock.clone() else {
            return Ok(RepoGuard(None));
        };
        let owner = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let started = std::time::Instant::now();
        loop {
            let now = crate::clock::unix_now();
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
}

/// The lease name in the database's `leases` table.
pub const REPOSITORY_LEASE_NAME: &str = "repository";

/// Holds the `repository` lease until dropped.
pub(super) struct RepoGuard(Option<(Arc<dyn ServerStore>, String)>);

impl Drop for RepoGuard {
    fn drop(&mut self) {
        if let Some((store, owner)) = &self.0 {
            if let Err(e) = store.release_lease(REPOSITORY_LEASE_NAME, owner) {
                tracing::warn!(error = %e, "cannot release the repository lease (it runs out by itself)");
            }
        }
    }
}
