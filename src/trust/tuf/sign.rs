//! Signing TUF 1.0 documents with Ed25519 (`ring`): the repository side of [`super::keys`].
//! A document is `{"signatures": [{"keyid", "sig"}], "signed": ...}`, each signature over
//! the canonical JSON of `signed`, the key id the hex sha256 of the canonical public key.

use super::canonical::{self, CanonicalError};
use super::keys::Key;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

/// An Ed25519 private key and its TUF public key.
pub struct Ed25519Signer {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
    key: Key,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ed25519Signer({})", self.key.key_id())
    }
}

impl Ed25519Signer {
    /// A new random key.
    pub fn generate() -> Ed25519Signer {
        let rng = ring::rand::SystemRandom::new();
        // Generation fails only if the system's random source does; nothing works then.
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("system random source");
        Self::from_pkcs8(pkcs8.as_ref()).expect("a key ring just generated")
    }

    /// The key in `pkcs8` (as [`Self::pkcs8`] writes it); `None` if it is not one.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Option<Ed25519Signer> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).ok()?;
        let key = Key::ed25519(pair.public_key().as_ref());
        Some(Ed25519Signer {
            pair,
            pkcs8: pkcs8.to_vec(),
            key,
        })
    }

    /// The private key, PKCS#8.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The key id.
    pub fn key_id(&self) -> String {
        self.key.key_id()
    }

    /// The hex signature over `message`.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }
}

/// The document bytes of `signed` signed by each of `signers` (pretty JSON; the signatures
/// cover the canonical form, so the layout does not matter).
pub fn sign(signed: &Value, signers: &[&Ed25519Signer]) -> Result<Vec<u8>, CanonicalError> {
    let bytes = canonical::encode(signed)?;
    let signatures: Vec<Value> = signers
        .iter()
        .map(|s| json!({"keyid": s.key_id(), "sig": s.sign_hex(&bytes)}))
        .collect();
    let doc = json!({"signatures": signatures, "signed": signed});
    serde_json::to_vec_pretty(&doc).map_err(|e| CanonicalError(e.to_string()))
}
