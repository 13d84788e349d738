//! The agent's trusted metadata and the rules for replacing it (TUF's client workflow:
//! root chain, then timestamp, snapshot, targets).
//!
//! Time: a field laptop's clock may be wrong. Expiry is checked against the *trusted time*:
//! the later of the system clock and the latest clock reading at which metadata was last
//! accepted (kept with the state). Setting the clock back therefore cannot revive expired
//! metadata (a freeze or replay attack), and an honest clock that runs slow since the last
//! sync cannot either. A clock that runs far ahead makes fresh metadata look expired: the
//! agent then refuses the update, keeps running the model it has, and says the clock may be
//! wrong — it is never locked out of the model it already verified.

use super::{parse, verify_signatures, Root, Signed, Snapshot, Targets, Timestamp, TrustError};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Trusted metadata.
#[derive(Debug, Clone)]
pub struct TrustedState {
    /// The current root.
    pub root: Signed<Root>,
    /// The latest timestamp.
    pub timestamp: Option<Signed<Timestamp>>,
    /// The latest snapshot.
    pub snapshot: Option<Signed<Snapshot>>,
    /// The latest targets.
    pub targets: Option<Signed<Targets>>,
    /// Never-decreasing floor for "now" (see the module comment).
    pub time_floor: OffsetDateTime,
}

fn parse_time(role: &str, s: &str) -> Result<OffsetDateTime, TrustError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| TrustError::Malformed {
        role: role.into(),
        reason: format!("expires {s:?}: {e}"),
    })
}

fn fmt(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl TrustedState {
    /// Starts from the pinned root (shipped with the agent or its config). The pinned root
    /// must be signed by a threshold of its own root keys.
    pub fn from_pinned_root(
        bytes: &[u8],
        clock: OffsetDateTime,
    ) -> Result<TrustedState, TrustError> {
        let root: Signed<Root> = parse(bytes)?;
        verify_signatures(&root, &root.signed, "root")?;
        Ok(TrustedState {
            root,
            timestamp: None,
            snapshot: None,
            targets: None,
            time_floor: clock,
        })
    }

    /// The time expiry is checked against.
    pub fn trusted_now(&self, clock: OffsetDateTime) -> OffsetDateTime {
        clock.max(self.time_floor)
    }

    fn check_expiry(
        &self,
        role: &str,
        expires: &str,
        clock: OffsetDateTime,
    ) -> Result<(), TrustError> {
        let now = self.trusted_now(clock);
        let exp = parse_time(role, expires)?;
        if exp <= now {
            return Err(TrustError::Expired {
                role: role.into(),
                expires: expires.into(),
                now: fmt(now),
            });
        }
        Ok(())
    }

    /// Applies the next root (version + 1), signed by a threshold of the current root's
    /// keys and of its own. Trusted metadata of roles whose keys changed is dropped.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<(), TrustError> {
        let new: Signed<Root> = parse(bytes)?;
        let trusted = self.root.signed.version;
        if new.signed.version <= trusted {
            return Err(TrustError::Rollback {
                role: "root".into(),
                offered: new.signed.version,
                trusted,
            });
        }
        if new.signed.version != trusted + 1 {
            return Err(TrustError::RootSkip {
                offered: new.signed.version,
                trusted,
            });
        }
        verify_signatures(&new, &self.root.signed, "root")?;
        verify_signatures(&new, &new.signed, "root")?;
        let changed = |role: &str| self.root.signed.roles.get(role) != new.signed.roles.get(role);
        // TUF 5.3.11 (fast-forward recovery): a rotation of either the timestamp or the
        // snapshot keys drops both trusted files, so a fast-forwarded snapshot version
        // pinned by the old timestamp cannot block the new snapshot.
        if changed("timestamp") || changed("snapshot") {
            self.timestamp = None;
            self.snapshot = None;
        }
        if changed("targets") {
            self.targets = None;
        }
        self.root = new;
        Ok(())
    }

    /// Checks that the current root has not expired (after walking the root chain).
    pub fn check_root(&self, clock: OffsetDateTime) -> Result<(), TrustError> {
        self.check_expiry("root", &self.root.signed.expires, clock)
    }

    /// Applies a timestamp.
    pub fn update_timestamp(
        &mut self,
        bytes: &[u8],
        clock: OffsetDateTime,
    ) -> Result<(), TrustError> {
        let new: Signed<Timestamp> = parse(bytes)?;
        verify_signatures(&new, &self.root.signed, "timestamp")?;
        if let Some(cur) = &self.timestamp {
            if new.signed.version < cur.signed.version {
                return Err(TrustError::Rollback {
                    role: "timestamp".into(),
                    offered: new.signed.version,
                    trusted: cur.signed.version,
                });
            }
            if let (Some(a), Some(b)) = (
                new.signed.meta.get("snapshot.json"),
                cur.signed.meta.get("snapshot.json"),
            ) {
                if a.version < b.version {
                    return Err(TrustError::Rollback {
                        role: "snapshot".into(),
                        offered: a.version,
                        trusted: b.version,
                    });
                }
            }
        }
        self.check_expiry("timestamp", &new.signed.expires, clock)?;
        self.timestamp = Some(new);
        self.time_floor = self.trusted_now(clock);
        Ok(())
    }

    /// Applies a snapshot; it must be the one the timestamp pins.
    pub fn update_snapshot(
        &mut self,
        bytes: &[u8],
        clock: OffsetDateTime,
    ) -> Result<(), TrustError> {
        let pinned = self
            .timestamp
            .as_ref()
            .and_then(|t| t.signed.meta.get("snapshot.json").cloned())
            .ok_or_else(|| TrustError::Mismatch {
                role: "snapshot".into(),
                by: "timestamp".into(),
                what: "no trusted timestamp pins a snapshot".into(),
            })?;
        if let Some(h) = &pinned.sha256 {
            let got = crate::hash::sha256_hex(bytes);
            if &got != h {
                return Err(TrustError::Mismatch {
                    role: "snapshot".into(),
                    by: "timestamp".into(),
                    what: format!("sha256 {got}, pinned {h}"),
                });
            }
        }
        if let Some(l) = pinned.length {
            if bytes.len() as u64 != l {
                return Err(TrustError::Mismatch {
                    role: "snapshot".into(),
                    by: "timestamp".into(),
                    what: format!("{} bytes, pinned {l}", bytes.len()),
                });
            }
        }
        let new: Signed<Snapshot> = parse(bytes)?;
        verify_signatures(&new, &self.root.signed, "snapshot")?;
        if new.signed.version != pinned.version {
            return Err(TrustError::Mismatch {
                role: "snapshot".into(),
                by: "timestamp".into(),
                what: format!("version {}, pinned {}", new.signed.version, pinned.version),
            });
        }
        if let Some(cur) = &self.snapshot {
            if new.signed.version < cur.signed.version {
                return Err(TrustError::Rollback {
                    role: "snapshot".into(),
                    offered: new.signed.version,
                    trusted: cur.signed.version,
                });
            }
            if let (Some(a), Some(b)) = (
                new.signed.meta.get("targets.json"),
                cur.signed.meta.get("targets.json"),
            ) {
                if a.version < b.version {
                    return Err(TrustError::Rollback {
                        role: "targets".into(),
                        offered: a.version,
                        trusted: b.version,
                    });
                }
            }
        }
        self.check_expiry("snapshot", &new.signed.expires, clock)?;
        self.snapshot = Some(new);
        Ok(())
    }

    /// Applies targets; it must be the version the snapshot pins.
    pub fn update_targets(
        &mut self,
        bytes: &[u8],
        clock: OffsetDateTime,
    ) -> Result<(), TrustError> {
        let pinned = self
            .snapshot
            .as_ref()
            .and_then(|s| s.signed.meta.get("targets.json").cloned())
            .ok_or_else(|| TrustError::Mismatch {
                role: "targets".into(),
                by: "snapshot".into(),
                what: "no trusted snapshot pins targets".into(),
            })?;
        if let Some(h) = &pinned.sha256 {
            let got = crate::hash::sha256_hex(bytes);
            if &got != h {
                return Err(TrustError::Mismatch {
                    role: "targets".into(),
                    by: "snapshot".into(),
                    what: format!("sha256 {got}, pinned {h}"),
                });
            }
        }
        if let Some(l) = pinned.length {
            if bytes.len() as u64 != l {
                return Err(TrustError::Mismatch {
                    role: "targets".into(),
                    by: "snapshot".into(),
                    what: format!("{} bytes, pinned {l}", bytes.len()),
                });
            }
        }
        let new: Signed<Targets> = parse(bytes)?;
        verify_signatures(&new, &self.root.signed, "targets")?;
        if new.signed.version != pinned.version {
            return Err(TrustError::Mismatch {
                role: "targets".into(),
                by: "snapshot".into(),
                what: format!("version {}, pinned {}", new.signed.version, pinned.version),
            });
        }
        if let Some(cur) = &self.targets {
            if new.signed.version < cur.signed.version {
                return Err(TrustError::Rollback {
                    role: "targets".into(),
                    offered: new.signed.version,
                    trusted: cur.signed.version,
                });
            }
        }
        self.check_expiry("targets", &new.signed.expires, clock)?;
        self.targets = Some(new);
        Ok(())
    }
}
