//! The trusted metadata set: the rules of the specification's client workflow (5.3-5.6),
//! one update at a time, in order. Pure (bytes in, decisions out); [`super::updater`]
//! decides what to fetch and keeps files.
//!
//! Every update verifies the received bytes: the pinned length and hashes (when the pinning
//! role lists them), the signatures over canonical JSON by the delegating role's keys, the
//! version rules (roots one by one; no rollback of timestamp, of the snapshot version it
//! pins, or of any file snapshot lists; the exact version pinned) and expiry. A document
//! that breaks a rule is refused and nothing of it is kept, except where the specification
//! keeps an old, verified document for rollback checks of the next one.

use super::metadata::{format_expires, Envelope, Root, Snapshot, Targets, Timestamp, TopRole};
use super::TufError;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Whether an update replaced the trusted document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A newer document is now trusted (store it).
    New,
    /// The offered document has the trusted version: the trusted one stays.
    Same,
}

/// The verified metadata of one refresh.
#[derive(Debug, Clone)]
pub struct TrustedSet {
    now: OffsetDateTime,
    root: Root,
    timestamp: Option<Timestamp>,
    snapshot: Option<Snapshot>,
    /// Verified targets roles by (role name, delegator name).
    targets: BTreeMap<(String, String), Targets>,
}

fn version_err(role: &str, found: u64, rule: String) -> TufError {
    TufError::Version {
        role: role.to_string(),
        found,
        rule,
    }
}

fn expired(role: &str, expires: OffsetDateTime) -> TufError {
    TufError::Expired {
        role: role.to_string(),
        expires: format_expires(expires),
    }
}

impl TrustedSet {
    /// Starts from the trusted root (5.2): it must be self-signed; its expiry is not checked
    /// (an expired root may still be rotated away).
    pub fn new(root_bytes: &[u8], now: OffsetDateTime) -> Result<TrustedSet, TufError> {
        let env = Envelope::parse("root", root_bytes)?;
        let root = Root::from_signed(&env.signed)?;
        root.verify(TopRole::Root, &env)?;
        Ok(TrustedSet {
            now,
            root,
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
        })
    }

    /// The trusted root.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The trusted timestamp, if loaded.
    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref()
    }

    /// The trusted snapshot, if loaded.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// A verified targets role, as delegated by `delegator`.
    pub fn targets(&self, role: &str, delegator: &str) -> Option<&Targets> {
        self.targets.get(&(role.to_string(), delegator.to_string()))
    }

    /// 5.3.4-5.3.8: the next root, signed by a threshold of the trusted root's root keys and
    /// of its own, with exactly the next version.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<(), TufError> {
        if self.timestamp.is_some() {
            return Err(TufError::Order("root updated after timestamp".into()));
        }
        let env = Envelope::parse("root", bytes)?;
        let new = Root::from_signed(&env.signed)?;
        self.root.verify(TopRole::Root, &env)?;
        let expected = self.root.common.version + 1;
        if new.common.version != expected {
            return Err(version_err(
                "root",
                new.common.version,
                format!("the next root must be version {expected}"),
            ));
        }
        new.verify(TopRole::Root, &env)?;
        self.root = new;
        Ok(())
    }

    /// 5.3.10: the final root must not be expired.
    pub fn check_final_root(&self) -> Result<(), TufError> {
        if self.root.common.is_expired(self.now) {
            return Err(expired("root", self.root.common.expires));
        }
        Ok(())
    }

    /// 5.4: a timestamp signed by the root's timestamp keys, no older than the trusted one,
    /// not pinning an older snapshot, then not expired. An expired timestamp stays loaded
    /// (for the rollback check of the next) but the error is returned.
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<Applied, TufError> {
        if self.snapshot.is_some() {
            return Err(TufError::Order("timestamp updated after snapshot".into()));
        }
        self.check_final_root()?;
        let env = Envelope::parse("timestamp", bytes)?;
        let new = Timestamp::from_signed(&env.signed)?;
        self.root.verify(TopRole::Timestamp, &env)?;
        if let Some(old) = &self.timestamp {
            let (v, ov) = (new.common.version, old.common.version);
            if v < ov {
                return Err(version_err(
                    "timestamp",
                    v,
                    format!("older than the trusted {ov}"),
                ));
            }
            if v == ov {
                return Ok(Applied::Same);
            }
            let (s, os) = (new.snapshot.version, old.snapshot.version);
            if s < os {
                return Err(version_err(
                    "snapshot",
                    s,
                    format!("timestamp pins it, older than the trusted snapshot version {os}"),
                ));
            }
        }
        self.timestamp = Some(new);
        self.check_final_timestamp()?;
        Ok(Applied::New)
    }

    fn check_final_timestamp(&self) -> Result<&Timestamp, TufError> {
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| TufError::Order("no timestamp loaded".into()))?;
        if ts.common.is_expired(self.now) {
            return Err(expired("timestamp", ts.common.expires));
        }
        Ok(ts)
    }

    /// 5.5: a snapshot matching the timestamp's pinned length and hashes (unless `local`, a
    /// copy this client verified before), signed by the snapshot keys, removing or rolling
    /// back no file the trusted snapshot lists, then of the pinned version and not expired.
    pub fn update_snapshot(&mut self, bytes: &[u8], local: bool) -> Result<(), TufError> {
        if !self.targets.is_empty() {
            return Err(TufError::Order("snapshot updated after targets".into()));
        }
        let pinned = self.check_final_timestamp()?.snapshot.clone();
        if !local {
            pinned.verify("snapshot.json", bytes)?;
        }
        let env = Envelope::parse("snapshot", bytes)?;
        let new = Snapshot::from_signed(&env.signed)?;
        self.root.verify(TopRole::Snapshot, &env)?;
        if let Some(old) = &self.snapshot {
            for (name, info) in &old.meta {
                let Some(now) = new.meta.get(name) else {
                    return Err(TufError::Missing(format!(
                        "snapshot no longer lists {name} (a trusted snapshot did)"
                    )));
                };
                if now.version < info.version {
                    return Err(version_err(
                        name,
                        now.version,
                        format!("snapshot pins it older than the trusted {}", info.version),
                    ));
                }
            }
        }
        self.snapshot = Some(new);
        self.check_final_snapshot().map(|_| ())
    }

    fn check_final_snapshot(&self) -> Result<&Snapshot, TufError> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| TufError::Order("no snapshot loaded".into()))?;
        let pinned = self.check_final_timestamp()?.snapshot.version;
        if snap.common.is_expired(self.now) {
            return Err(expired("snapshot", snap.common.expires));
        }
        if snap.common.version != pinned {
            return Err(version_err(
                "snapshot",
                snap.common.version,
                format!("timestamp pins version {pinned}"),
            ));
        }
        Ok(snap)
    }

    /// 5.6 (and 5.6.7 for delegations): a targets role named `role`, delegated by
    /// `delegator` (`root` for the top-level targets), matching the snapshot's pinned
    /// length, hashes and version, signed by the keys the delegator names, not expired.
    pub fn update_targets(
        &mut self,
        bytes: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<&Targets, TufError> {
        let snap = self.check_final_snapshot()?;
        let file = format!("{role}.json");
        let pinned = snap
            .meta
            .get(&file)
            .ok_or_else(|| TufError::Missing(format!("snapshot does not list {file}")))?
            .clone();
        pinned.verify(&file, bytes)?;
        let env = Envelope::parse(role, bytes)?;
        let new = Targets::from_signed(role, &env.signed)?;
        self.verify_delegated(role, delegator, &env)?;
        if new.common.version != pinned.version {
            return Err(version_err(
                role,
                new.common.version,
                format!("snapshot pins version {}", pinned.version),
            ));
        }
        if new.common.is_expired(self.now) {
            return Err(expired(role, new.common.expires));
        }
        let key = (role.to_string(), delegator.to_string());
        self.targets.insert(key.clone(), new);
        self.targets
            .get(&key)
            .ok_or_else(|| TufError::Order(format!("{role} vanished")))
    }

    fn verify_delegated(
        &self,
        role: &str,
        delegator: &str,
        env: &Envelope,
    ) -> Result<(), TufError> {
        if delegator == "root" {
            return self.root.verify(TopRole::Targets, env);
        }
        let parent = self
            .targets
            .iter()
            .find(|((name, _), _)| name == delegator)
            .map(|(_, t)| t)
            .ok_or_else(|| TufError::Order(format!("delegator {delegator} not loaded")))?;
        let delegations = parent
            .delegations
            .as_ref()
            .ok_or_else(|| TufError::Missing(format!("{delegator} delegates to no role")))?;
        let d = delegations
            .roles
            .iter()
            .find(|d| d.name == role)
            .ok_or_else(|| TufError::Missing(format!("{delegator} does not delegate to {role}")))?;
        super::metadata::verify_threshold(role, &delegations.keys, &d.keys, env)
    }
}
