//! Sign-in for the operators' dashboard: Argon2id password hashes, random session cookies,
//! per-session CSRF tokens, and a brake on password guessing.
//!
//! Why this design:
//! - **Argon2id** (the `argon2` crate, OWASP's parameters m = 19 MiB, t = 2, p = 1) is
//!   memory-hard, so a stolen database is expensive to brute-force; the PHC string keeps
//!   the parameters and salt, so they can be raised later without a migration.
//! - **Sessions** are 256-bit random tokens in a cookie that is `HttpOnly` (scripts cannot
//!   read it), `SameSite=Strict` (no other site can make the browser send it) and scoped to
//!   `/admin`; the database stores only their sha256, so a copy of it signs nobody in.
//!   `Secure` is added when a TLS-terminating proxy says so (`X-Forwarded-Proto: https`).
//! - **CSRF**: every form carries the session's own token and every POST checks it (and
//!   refuses a foreign `Origin`), on top of `SameSite=Strict`.
//! - **Guessing**: after [`MAX_FAILURES`] wrong passwords for a name within
//!   [`LOCKOUT`], that name is refused until the window passes; an unknown name costs the
//!   same hashing time as a known one, so names cannot be probed by timing.

use crate::server::store::{AdminSession, ServerStore, ServerStoreError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::HeaderMap;
use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "outpost_admin";
/// How long a session lasts.
pub const SESSION_SECS: i64 = 12 * 3600;
/// Wrong passwords allowed per name within [`LOCKOUT`].
pub const MAX_FAILURES: u32 = 5;
/// The window of [`MAX_FAILURES`], and how long a name stays refused after it.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Sign-in errors.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The database.
    #[error(transparent)]
    Store(#[from] ServerStoreError),
    /// The name is not usable.
    #[error("an operator name is 1-64 letters, digits, '.', '-' or '_'")]
    BadName,
    /// The password is too short.
    #[error("a password has at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
    /// Hashing failed (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Random bytes from the operating system.
fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the operating system's random number generator");
    b
}

/// A fresh random token (256 bits, URL-safe base64).
pub fn new_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>())
}

/// A generated password: 24 characters from an alphabet without look-alikes (about 120
/// bits), in groups of 4 so it can be read out.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    random::<24>()
        .chunks(4)
        .map(|c| {
            c.iter()
                .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Argon2id with OWASP's recommended parameters (the crate's defaults).
fn argon2() -> argon2::Argon2<'static> {
    argon2::Argon2::default()
}

/// Hashes a password as an Argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt =
        SaltString::encode_b64(&random::<16>()).map_err(|e| AuthError::Hash(e.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a PHC string (false for a malformed string).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// `outpost-server admin add|passwd`: creates the account or replaces its password (which
/// ends its sessions). Returns true if the account is new.
pub fn set_password(
    store: &dyn ServerStore,
    name: &str,
    password: &str,
) -> Result<bool, AuthError> {
    if !valid_name(name) {
        return Err(AuthError::BadName);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::WeakPassword);
    }
    Ok(store.set_admin(name, &hash_password(password)?)?)
}

/// The sha256 of a session token, as stored.
pub fn token_hash(token: &str) -> String {
    crate::hash::sha256_hex(token.as_bytes())
}

/// The session cookie's value, if the request has one.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The signed-in operator of a request (and the stored hash of its token), if any.
pub fn session(
    store: &dyn ServerStore,
    headers: &HeaderMap,
) -> Result<Option<(String, AdminSession)>, ServerStoreError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let hash = token_hash(&token);
    Ok(store
        .session(&hash, crate::server::unix_now())?
        .map(|s| (hash, s)))
}

/// The `Set-Cookie` value that starts a session.
pub fn session_cookie(token: &str, headers: &HeaderMap) -> String {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!(
        "{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Compares two strings in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A POST from another site: its `Origin` names a host other than the one addressed.
pub fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return false; // not sent: SameSite and the CSRF token still apply
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
    origin == "null" || origin_host != host
}

/// Counts wrong passwords per name.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    /// Whether `name` is refused for now.
    pub fn locked(&self, name: &str) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.retain(|_, (_, since)| since.elapsed() < LOCKOUT);
        f.get(name).is_some_and(|(n, _)| *n >= MAX_FAILURES)
    }
    /// Records a wrong password.
    pub fn failed(&self, name: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let e = f.entry(name.to_string()).or_insert((0, Instant::now()));
        e.0 += 1;
    }
    /// Forgets the failures of a name that signed in.
    pub fn succeeded(&self, name: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

/// Checks a name and password: the name's hash, or a dummy one for an unknown name (same
/// cost either way).
pub fn check_password(
    store: &dyn ServerStore,
    name: &str,
    password: &str,
) -> Result<bool, ServerStoreError> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match store.admin_password_hash(name)? {
        Some(phc) => Ok(verify_password(password, &phc)),
        None => {
            let dummy =
                DUMMY.get_or_init(|| hash_password("not a real password").unwrap_or_default());
            let _ = verify_password(password, dummy);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::AccountStore;

    #[test]
    fn argon2id_round_trip_and_refusals() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("x", "not a phc string"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn accounts_passwords_and_sessions_on_a_real_store() {
        use crate::server::store::SqliteServerStore;
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteServerStore::open(&tmp.path().join("server.db")).unwrap();
        assert!(matches!(
            set_password(&store, "alice", "short"),
            Err(AuthError::WeakPassword)
        ));
        assert!(matches!(
            set_password(&store, "a lice", "long enough password"),
            Err(AuthError::BadName)
        ));
        assert!(set_password(&store, "alice", "long enough password").unwrap());
        assert!(check_password(&store, "alice", "long enough password").unwrap());
        assert!(!check_password(&store, "alice", "long enough passworD").unwrap());
        assert!(!check_password(&store, "bob", "long enough password").unwrap());
        let now = crate::server::unix_now();
        store.create_session("h1", "alice", "c1", now + 60).unwrap();
        store.create_session("old", "alice", "c0", now - 1).unwrap();
        assert_eq!(store.session("h1", now).unwrap().unwrap().csrf, "c1");
        assert!(store.session("old", now).unwrap().is_none(), "expired");
        // A new password ends the sessions signed in with the old one.
        assert!(!set_password(&store, "alice", "another long password").unwrap());
        assert!(store.session("h1", now).unwrap().is_none());
        store.create_session("h2", "alice", "c2", now + 60).unwrap();
        assert!(store.remove_admin("alice").unwrap());
        assert!(store.session("h2", now).unwrap().is_none());
        assert!(!check_password(&store, "alice", "another long password").unwrap());
        assert!(!store.remove_admin("alice").unwrap());
    }

    #[test]
    fn throttle_locks_a_name_after_too_many_failures() {
        let t = Throttle::default();
        for _ in 0..MAX_FAILURES {
            assert!(!t.locked("alice"));
            t.failed("alice");
        }
        assert!(t.locked("alice") && !t.locked("bob"));
        t.succeeded("alice");
        assert!(!t.locked("alice"));
    }

    #[test]
    fn cookies_origins_and_tokens() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; outpost_admin=tok; b=2".parse().unwrap());
        assert_eq!(cookie_token(&h).as_deref(), Some("tok"));
        h.insert("host", "127.0.0.1:8480".parse().unwrap());
        assert!(!foreign_origin(&h));
        h.insert("origin", "http://127.0.0.1:8480".parse().unwrap());
        assert!(!foreign_origin(&h));
        h.insert("origin", "http://evil.example".parse().unwrap());
        assert!(foreign_origin(&h));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_eq!(generate_password().len(), 29);
        let c = session_cookie("t", &h);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
    }
}
