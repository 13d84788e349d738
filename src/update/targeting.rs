//! Which release this device runs, decided from signed data and the agent's own identity
//! only, with the same rules online and from a USB file.
//!
//! Why: the answer to the device report is plain JSON, so anyone on the network path could
//! rewrite it. Before, the agent took its group *and its device id* from it, and a man in
//! the middle could move it to another group's release, into a 1% rollout, or back to an
//! older version. Now:
//!
//! - the **device id** is the one the agent enrolled with (it signs every request with it);
//! - the **group** is the one in the last [`DeviceAssignment`] the agent verified: signed by
//!   a threshold of the timestamp keys of its trusted root, naming this device, and echoing
//!   the random challenge of the agent's own report (so it cannot be replayed from another
//!   device or another exchange). An unsigned, forged or replayed answer changes nothing.
//!   An agent that never verified one has no group: only releases for every group apply;
//! - **channel** comes from the agent's config, **percentages** are computed on its own id;
//! - an update never installs a version **lower** than the active one, unless the signed
//!   targets withdrew the active one.
//!
//! Why a signed answer rather than group membership in targets: targets is public (anyone
//! may fetch `/v1/metadata/targets.json`) and would then list every device and its group, and
//! grow with the fleet; the assignment is per device, answers only that device's signed
//! request, and needs no change to the metadata format (issue 21 rewrites it).

use crate::model::manifest::parse_version;
use crate::protocol::DeviceAssignment;
use crate::trust::{rollout_bucket, verify_signatures, Release, Root, Signed, Targets};

/// Agent state key: the group last verified from a signed [`DeviceAssignment`].
pub const VERIFIED_GROUP_KEY: &str = "device_group_verified";

/// Who this device is, for targeting.
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    /// Channel from the config.
    pub channel: &'a str,
    /// The verified group, if any.
    pub group: Option<&'a str>,
    /// The enrolled device id, if enrolled.
    pub device_id: Option<&'a str>,
}

/// What the rules choose for one model.
#[derive(Debug)]
pub enum Choice<'a> {
    /// Install this release.
    Install(&'a Release),
    /// The chosen release is the active one.
    Current(&'a Release),
    /// Keep the active version; why.
    Keep(String),
    /// No release applies to this device.
    Nothing,
}

/// Why `r` is not for this device, or `None` if it is.
pub fn why_not(r: &Release, d: &Device) -> Option<String> {
    if r.withdrawn {
        return Some("was withdrawn by the operator".into());
    }
    if r.channel != d.channel {
        return Some(format!(
            "is on channel {}; this agent follows {}",
            r.channel, d.channel
        ));
    }
    if !r.groups.is_empty() {
        match d.group {
            None => return Some(format!(
                "is for groups {:?}; this agent's group is not confirmed by a signed answer from the server yet (run `outpost update` once online)",
                r.groups
            )),
            Some(g) if !r.groups.iter().any(|x| x == g) => {
                return Some(format!("is for groups {:?}; this device is in {g:?}", r.groups))
            }
            Some(_) => {}
        }
    }
    let percent = u32::from(r.percent.min(100));
    if percent < 100 {
        match d.device_id {
            None => return Some(format!(
                "reaches {percent}% of devices; this agent is not enrolled, so it has no place in a staged rollout"
            )),
            Some(id) if rollout_bucket(&r.model, id) >= percent => {
                return Some(format!("reaches {percent}% of devices; this device is not among them"))
            }
            Some(_) => {}
        }
    }
    None
}

/// The newest release of `model` (semantic version) meant for this device.
pub fn newest_for<'a>(targets: &'a Targets, model: &str, d: &Device) -> Option<&'a Release> {
    targets
        .releases
        .iter()
        .filter(|r| r.model == model && why_not(r, d).is_none())
        .max_by_key(|r| parse_version(&r.version))
}

/// Whether the signed targets withdrew `model` `version` for this device: an entry of it
/// is withdrawn and none of it still applies.
pub fn withdrawn(targets: &Targets, model: &str, version: &str, d: &Device) -> bool {
    let mut entries = targets
        .releases
        .iter()
        .filter(|r| r.model == model && r.version == version)
        .peekable();
    entries.peek().is_some()
        && targets
            .releases
            .iter()
            .any(|r| r.model == model && r.version == version && r.withdrawn)
        && entries.all(|r| why_not(r, d).is_some())
}

/// Why installing `release` over the `active` version would go down, or `None`: a lower
/// version is allowed only when the signed targets withdrew the active one.
pub fn downgrade(
    targets: &Targets,
    release: &Release,
    active: Option<&str>,
    d: &Device,
) -> Option<String> {
    let active = active?;
    if parse_version(&release.version) >= parse_version(active) {
        return None;
    }
    if withdrawn(targets, &release.model, active, d) {
        return None;
    }
    Some(format!(
        "{} {} is older than the active {active}, which the signed metadata does not withdraw: an update never goes down (an operator withdraws {active} to move devices off it; `outpost models rollback` goes back by hand)",
        release.model, release.version
    ))
}

/// The rules for one model: the newest release for this device, unless it is the active
/// one or would go down.
pub fn choose<'a>(
    targets: &'a Targets,
    model: &str,
    d: &Device,
    active: Option<&str>,
) -> Choice<'a> {
    let Some(r) = newest_for(targets, model, d) else {
        return Choice::Nothing;
    };
    if active == Some(r.version.as_str()) {
        return Choice::Current(r);
    }
    match downgrade(targets, r, active, d) {
        Some(why) => Choice::Keep(why),
        None => Choice::Install(r),
    }
}

/// Checks a signed assignment from the device report's answer: signed by a threshold of the
/// timestamp keys `root` lists, for `device_id`, answering `challenge`. Returns the group.
pub fn verify_assignment(
    doc: Option<&Signed<DeviceAssignment>>,
    root: &Root,
    device_id: &str,
    challenge: &str,
) -> Result<String, String> {
    let doc = doc.ok_or("it carries no signed assignment")?;
    if doc.signed.type_ != crate::protocol::DEVICE_ASSIGNMENT_TYPE {
        return Err(format!("its assignment is of type {:?}", doc.signed.type_));
    }
    verify_signatures(doc, root, "timestamp")
        .map_err(|e| format!("its assignment is not signed by the trusted timestamp key ({e})"))?;
    if doc.signed.device_id != device_id {
        return Err(format!(
            "its signed assignment is for device {}, not this one",
            doc.signed.device_id
        ));
    }
    if doc.signed.challenge != challenge {
        return Err("its signed assignment answers another report (replayed)".into());
    }
    Ok(doc.signed.group.clone())
}

/// A fresh random challenge for a device report (32 bytes, hex).
pub fn new_challenge() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rel(version: &str, groups: &[&str], percent: u8, withdrawn: bool) -> Release {
        Release {
            model: "m".into(),
            version: version.into(),
            channel: "stable".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            percent,
            files: BTreeMap::new(),
            withdrawn,
        }
    }

    fn targets(releases: Vec<Release>) -> Targets {
        Targets {
            type_: "targets".into(),
            version: 1,
            expires: String::new(),
            targets: BTreeMap::new(),
            releases,
        }
    }

    const DEV: Device = Device {
        channel: "stable",
        group: Some("south"),
        device_id: Some("d"),
    };

    #[test]
    fn never_down_unless_the_active_one_is_withdrawn() {
        let mut t = targets(vec![
            rel("1.0.0", &[], 100, false),
            rel("1.1.0", &["north"], 100, false),
        ]);
        // 1.1.0 is active but no longer for this device's group: it stays.
        assert!(matches!(
            choose(&t, "m", &DEV, Some("1.1.0")),
            Choice::Keep(_)
        ));
        assert!(
            matches!(choose(&t, "m", &DEV, Some("0.9.0")), Choice::Install(r) if r.version == "1.0.0")
        );
        t.releases[1].withdrawn = true;
        assert!(
            matches!(choose(&t, "m", &DEV, Some("1.1.0")), Choice::Install(r) if r.version == "1.0.0")
        );
        // Withdrawn in one entry but live for this device in another: not withdrawn for it.
        t.releases.push(rel("1.1.0", &[], 100, false));
        assert!(matches!(
            choose(&t, "m", &DEV, Some("1.1.0")),
            Choice::Current(_)
        ));
    }

    #[test]
    fn an_assignment_counts_only_signed_for_this_device_and_this_report() {
        use crate::trust::{sign, RoleKeys, SigningKey};
        let key = SigningKey::generate();
        let mut root = Root {
            type_: "root".into(),
            version: 1,
            expires: String::new(),
            keys: BTreeMap::from([(key.key_id(), key.public())]),
            roles: BTreeMap::new(),
        };
        root.roles.insert(
            "timestamp".into(),
            RoleKeys {
                keyids: vec![key.key_id()],
                threshold: 1,
            },
        );
        let doc = |by: &SigningKey| {
            sign(
                DeviceAssignment {
                    type_: crate::protocol::DEVICE_ASSIGNMENT_TYPE.into(),
                    device_id: "d".into(),
                    group: "north".into(),
                    challenge: "c1".into(),
                    issued_at: 1,
                    expires: String::new(),
                },
                &[by],
            )
        };
        let good = doc(&key);
        assert_eq!(
            verify_assignment(Some(&good), &root, "d", "c1").unwrap(),
            "north"
        );
        assert!(verify_assignment(Some(&good), &root, "other", "c1").is_err());
        assert!(verify_assignment(Some(&good), &root, "d", "c2")
            .unwrap_err()
            .contains("replayed"));
        assert!(verify_assignment(None, &root, "d", "c1").is_err());
        let forged = doc(&SigningKey::generate());
        assert!(verify_assignment(Some(&forged), &root, "d", "c1").is_err());
        let mut moved = good.clone();
        moved.signed.group = "south".into();
        assert!(verify_assignment(Some(&moved), &root, "d", "c1").is_err());
    }

    #[test]
    fn no_group_or_no_id_gets_only_what_every_device_gets() {
        let t = targets(vec![
            rel("1.0.0", &[], 100, false),
            rel("2.0.0", &["south"], 100, false),
            rel("3.0.0", &[], 50, false),
        ]);
        let anon = Device {
            group: None,
            device_id: None,
            ..DEV
        };
        assert_eq!(newest_for(&t, "m", &anon).unwrap().version, "1.0.0");
        assert!(why_not(&t.releases[1], &anon)
            .unwrap()
            .contains("not confirmed"));
        assert!(why_not(&t.releases[2], &anon)
            .unwrap()
            .contains("not enrolled"));
    }
}
