//! The device's identity: an Ed25519 key pair made at first start (`ring`), kept in the
//! data folder with owner-only permissions, and the signing of requests to the server.
//!
//! Every request is signed (see `protocol::signing_payload`) rather than carrying a bearer
//! token: nothing that could be replayed from a log or a proxy ever travels, a stolen
//! request cannot be altered or reused (the nonce and the time window), and the server
//! keeps no session state beyond recent nonces. Revoking a device takes effect on its next
//! request.

use crate::protocol::{self, b64};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::path::{Path, PathBuf};

/// Problems with the device key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key failed.
    #[error("device key {path}: {source}")]
    Io {
        /// Key file.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The key file is damaged.
    #[error("device key {0} is damaged; move it away and enroll this device again")]
    Damaged(PathBuf),
    /// Key generation failed.
    #[error("could not generate a device key (no system randomness)")]
    Random,
}

/// The device key pair.
pub struct DeviceKey {
    pair: Ed25519KeyPair,
}

impl DeviceKey {
    /// Loads the key at `path`, creating it (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<DeviceKey, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            let bytes = std::fs::read(path).map_err(io)?;
            let pair = Ed25519KeyPair::from_pkcs8(&bytes)
                .map_err(|_| IdentityError::Damaged(path.to_path_buf()))?;
            return Ok(DeviceKey { pair });
        }
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| IdentityError::Random)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("partial");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(pkcs8.as_ref()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| IdentityError::Damaged(path.to_path_buf()))?;
        tracing::info!(key = %path.display(), "created the device key");
        Ok(DeviceKey { pair })
    }

    /// The public key, base64.
    pub fn public_key_b64(&self) -> String {
        b64(self.pair.public_key().as_ref())
    }

    /// Signature headers for a request: (timestamp, nonce, signature).
    pub fn sign_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timestamp: i64,
    ) -> (String, String, String) {
        let mut n = [0u8; 16];
        // SystemRandom only fails if the OS has no randomness; a zero nonce is then refused
        // as a replay by the server rather than silently accepted.
        let _ = SystemRandom::new().fill(&mut n);
        let nonce = hex::encode(n);
        let payload = protocol::signing_payload(method, path, body, timestamp, &nonce);
        let sig = self.pair.sign(&payload);
        (timestamp.to_string(), nonce, b64(sig.as_ref()))
    }
}

/// Verifies a request signature against a device's public key.
pub fn verify(public_key: &[u8], payload: &[u8], signature_b64: &str) -> bool {
    use base64::Engine;
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature_b64) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(payload, &sig)
        .is_ok()
}
