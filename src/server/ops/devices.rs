//! Adding a device: a row for it in its group and a one-time enrollment code, of which the
//! server keeps only the sha256. The code is shown once to the operator, who gives it to
//! the field team; `outpost enroll` proves it and registers the device's key.

use super::OpsError;
use crate::server::store::{Device, ServerStore};

/// A device added and the code that enrolls it.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// The device's row.
    pub device: Device,
    /// The one-time code (`XXXX-XXXX-...`), shown once.
    pub code: String,
    /// When the code stops working (RFC 3339).
    pub expires: String,
}

/// `devices add`: a device named `name` in `group`, with a code valid for `valid_hours`.
pub fn add_device(
    store: &dyn ServerStore,
    name: &str,
    group: &str,
    valid_hours: i64,
    actor: &str,
) -> Result<NewDevice, OpsError> {
    let code = new_code()?;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(valid_hours);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| OpsError::Internal(format!("cannot format the code expiry: {e}")))?;
    let hash = crate::hash::sha256_hex(crate::server::normalise_code(&code).as_bytes());
    let device = store.add_device(name, group, &hash, &expires)?;
    store.audit(
        actor,
        "devices add",
        &format!(
            "{} ({}) group {}",
            device.name, device.device_id, device.group
        ),
    )?;
    Ok(NewDevice {
        device,
        code,
        expires,
    })
}

/// The state of a device as the device list says it.
pub fn state(d: &Device) -> &'static str {
    if d.revoked_at.is_some() {
        "revoked"
    } else if d.enrolled_at.is_some() {
        "enrolled"
    } else {
        "awaiting enrollment"
    }
}

/// A random code of 20 characters from an alphabet without look-alikes (no 0/O, 1/I),
/// in groups of four: about 100 bits.
fn new_code() -> Result<String, OpsError> {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| OpsError::Internal("the system random source failed".into()))?;
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    Ok(chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}
