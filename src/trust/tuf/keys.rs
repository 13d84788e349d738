//! Public keys as TUF 1.0 writes them, their key ids, and signature verification.
//!
//! A key is `{"keytype", "scheme", "keyval": {"public"}}`; its id is the hex sha256 of its
//! canonical JSON. Verified schemes (all through `ring`): `ed25519` (public key as 64 hex
//! digits), `ecdsa-sha2-nistp256` and `ecdsa-sha2-nistp384` (PEM SubjectPublicKeyInfo,
//! DER signatures, as hardware tokens and cloud KMS produce) and `rsassa-pss-sha256` (PEM
//! SubjectPublicKeyInfo, 2048-8192 bits). Signatures are hex. A key of any other type parses
//! (a root may list keys this client cannot use) but no signature by it ever counts.

use super::canonical;
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{json, Value};

/// A public key from metadata.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// `ed25519`, `ecdsa`, `rsa`, ...
    pub keytype: String,
    /// `ed25519`, `ecdsa-sha2-nistp256`, `rsassa-pss-sha256`, ...
    pub scheme: String,
    /// `keyval.public` as written.
    pub public: String,
}

impl Key {
    /// Reads a key object; `None` names the missing field.
    pub fn from_value(v: &Value) -> Result<Key, String> {
        let text = |field: &str| {
            v.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("key has no string field {field:?}"))
        };
        let public = v
            .get("keyval")
            .and_then(|kv| kv.get("public"))
            .and_then(Value::as_str)
            .ok_or("key has no string field \"keyval.public\"")?;
        Ok(Key {
            keytype: text("keytype")?,
            scheme: text("scheme")?,
            public: public.to_string(),
        })
    }

    /// An Ed25519 key from its 32 raw bytes.
    pub fn ed25519(public: &[u8]) -> Key {
        Key {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            public: hex::encode(public),
        }
    }

    /// The key's JSON object.
    pub fn to_value(&self) -> Value {
        json!({"keytype": self.keytype, "scheme": self.scheme, "keyval": {"public": self.public}})
    }

    /// The key id: hex sha256 of the canonical key object.
    pub fn key_id(&self) -> String {
        // A key object holds strings only: it always has a canonical form.
        let bytes = canonical::encode(&self.to_value()).unwrap_or_default();
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
    }

    /// Whether `sig_hex` is this key's valid signature over `message`. Unknown schemes,
    /// undecodable keys and signatures are simply not valid.
    pub fn verify(&self, message: &[u8], sig_hex: &str) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        let (alg, public): (&'static dyn signature::VerificationAlgorithm, Vec<u8>) =
            match (self.keytype.as_str(), self.scheme.as_str()) {
                ("ed25519", "ed25519") => match hex::decode(&self.public) {
                    Ok(p) if p.len() == 32 => (&signature::ED25519, p),
                    _ => return false,
                },
                ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                    match spki_key(&self.public) {
                        Some(p) => (&signature::ECDSA_P256_SHA256_ASN1, p),
                        None => return false,
                    }
                }
                ("ecdsa" | "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384") => {
                    match spki_key(&self.public) {
                        Some(p) => (&signature::ECDSA_P384_SHA384_ASN1, p),
                        None => return false,
                    }
                }
                ("rsa", "rsassa-pss-sha256") => match spki_key(&self.public) {
                    Some(p) => (&signature::RSA_PSS_2048_8192_SHA256, p),
                    None => return false,
                },
                _ => return false,
            };
        UnparsedPublicKey::new(alg, public)
            .verify(message, &sig)
            .is_ok()
    }
}

/// The subjectPublicKey bits of a PEM (or hex DER) SubjectPublicKeyInfo: the EC point, or
/// the PKCS#1 RSAPublicKey, which is what `ring` verifies with.
fn spki_key(text: &str) -> Option<Vec<u8>> {
    let der = if text.contains("-----BEGIN PUBLIC KEY-----") {
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()?
    } else {
        hex::decode(text.trim()).ok()?
    };
    // SEQUENCE { SEQUENCE algorithm, BIT STRING subjectPublicKey }
    let (tag, spki, rest) = der_item(&der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (tag, _alg, rest) = der_item(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, bits, rest) = der_item(rest)?;
    if tag != 0x03 || !rest.is_empty() {
        return None;
    }
    match bits.split_first() {
        Some((0, key)) => Some(key.to_vec()),
        _ => None,
    }
}

/// One DER item: (tag, contents, what follows). Definite lengths only, as DER requires.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    #[test]
    fn ed25519_signature_verifies_and_tampering_does_not() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = Key::ed25519(pair.public_key().as_ref());
        let sig = hex::encode(pair.sign(b"msg").as_ref());
        assert!(key.verify(b"msg", &sig));
        assert!(!key.verify(b"msh", &sig));
        assert_eq!(key.key_id().len(), 64);
    }

    #[test]
    fn ecdsa_p256_pem_key_verifies() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        // SubjectPublicKeyInfo prefix for an uncompressed P-256 point.
        let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        der.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let key = Key {
            keytype: "ecdsa".into(),
            scheme: "ecdsa-sha2-nistp256".into(),
            public: pem,
        };
        let sig = hex::encode(pair.sign(&rng, b"msg").unwrap().as_ref());
        assert!(key.verify(b"msg", &sig));
        assert!(!key.verify(b"other", &sig));
    }
}
