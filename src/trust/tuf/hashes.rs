//! The `hashes` of pinned metadata and target files: every listed algorithm is checked;
//! an algorithm this client cannot compute fails the check rather than being skipped.

use super::TufError;
use std::collections::BTreeMap;

/// Checks every hash in `hashes` of `bytes` (named `what` in errors).
pub fn verify(what: &str, hashes: &BTreeMap<String, String>, bytes: &[u8]) -> Result<(), TufError> {
    for (alg, expected) in hashes {
        let digest = match alg.as_str() {
            "sha256" => &ring::digest::SHA256,
            "sha384" => &ring::digest::SHA384,
            "sha512" => &ring::digest::SHA512,
            other => {
                return Err(TufError::Hash {
                    what: what.to_string(),
                    reason: format!(
                        "hash algorithm {other:?} is not supported (sha256, sha384, sha512 are)"
                    ),
                })
            }
        };
        let found = hex::encode(ring::digest::digest(digest, bytes));
        if !found.eq_ignore_ascii_case(expected) {
            return Err(TufError::Hash {
                what: what.to_string(),
                reason: format!("{alg} is {found}, signed metadata says {expected}"),
            });
        }
    }
    Ok(())
}

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}
