//! Encryption at rest: the data key that encrypts the agent's database, and how it is kept.
//!
//! A field laptop can be lost, seized or stolen, and its database holds report text, image
//! tiles, embeddings and labels. When encryption is set up (`outpost encrypt`), the whole
//! database file, its write-ahead log and its temporary files are encrypted by SQLCipher
//! with one random 256-bit **data key**. Why SQLCipher rather than encrypting columns with
//! `ring` AEAD: it encrypts every page (indexes, free pages, the WAL, the journal), so no
//! query, index or forgotten column can leak plaintext, and SQL keeps working on the data
//! (the review queue sorts and filters on labels and scores). Column encryption would have
//! left labels, scores and item counts in the clear or forced every query into Rust.
//!
//! The data key never changes, so the database is never re-encrypted. It is stored wrapped
//! in `<data_dir>/data-key.json`, in one of two modes:
//!
//! - **passphrase** (laptops): the key is sealed with ChaCha20-Poly1305 (`ring`) under a key
//!   derived from the passphrase with Argon2id. Changing the passphrase rewraps 32 bytes.
//!   A wrong passphrase fails the AEAD tag check: nothing is read or written.
//! - **systemd-creds** (unattended boxes): the key is sealed by `systemd-creds encrypt`
//!   (TPM2 where there is one, the host key otherwise) in `<data_dir>/data-key.cred`. Under
//!   systemd, `LoadCredentialEncrypted=outpost-data-key:...` hands it to the service in
//!   `$CREDENTIALS_DIRECTORY`; otherwise the agent runs `systemd-creds decrypt` (as root).
//!
//! Until the key is unlocked in this process, [`crate::store::Store::open`] refuses with
//! [`VaultError::Locked`], so every command that reads item data says so instead of reading.
//! The unlocked key lives in process memory only (a cache keyed by data folder) and is
//! zeroed when dropped.
//!
//! What a lost passphrase costs: the database cannot be read by anyone, including
//! headquarters. Decisions already synced are safe on the server; unsynced decisions and
//! items on the laptop are lost. `outpost encrypt` prints a recovery key once (the data key
//! itself): keep it apart from the laptop (on paper at headquarters) and
//! `outpost passphrase --recovery-key` sets a new passphrase with it.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use zeroize::{Zeroize, Zeroizing};

/// The key file's name in the data folder.
pub const KEY_FILE: &str = "data-key.json";
/// The sealed credential's name in the data folder (systemd-creds mode).
pub const CREDENTIAL_FILE: &str = "data-key.cred";
/// The credential name given to systemd (`LoadCredentialEncrypted=` uses the same).
pub const CREDENTIAL_NAME: &str = "outpost-data-key";
/// The environment variable naming a file that holds the passphrase (for scripts).
pub const PASSPHRASE_FILE_ENV: &str = "OUTPOST_PASSPHRASE_FILE";
const FORMAT: &str = "outpost-data-key 1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Errors of encryption at rest. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The data is encrypted and no key is unlocked in this process.
    #[error("the agent's data is encrypted and locked: {how}")]
    Locked {
        /// How to unlock, for this mode.
        how: String,
    },
    /// The passphrase did not open the key.
    #[error("wrong passphrase: nothing was read or changed")]
    WrongPassphrase,
    /// The recovery key does not match this data folder's key.
    #[error("that recovery key does not belong to this data folder: nothing was changed")]
    WrongRecoveryKey,
    /// Encryption is already set up.
    #[error("{0} exists: encryption is already set up for this data folder (use `outpost passphrase` to change the passphrase)")]
    AlreadySetUp(PathBuf),
    /// Encryption is not set up.
    #[error("the data folder {0} is not encrypted (set it up with `outpost encrypt`)")]
    NotSetUp(PathBuf),
    /// The key file is damaged or of an unknown format.
    #[error("the key file {path} is damaged ({why}); restore it from a backup or use the recovery key (`outpost passphrase --recovery-key`)")]
    Damaged {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `systemd-creds` failed or is missing.
    #[error("systemd-creds {action} failed: {why}")]
    SystemdCreds {
        /// encrypt or decrypt.
        action: &'static str,
        /// Its message.
        why: String,
    },
    /// The passphrase is too short.
    #[error("the passphrase is too short: use at least {0} characters (a few random words are easy to type and hard to guess)")]
    WeakPassphrase(usize),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Encrypting or decrypting failed (no system randomness, or a damaged blob).
    #[error("encryption failed: {0}")]
    Crypto(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
    move |source| VaultError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Shortest passphrase accepted.
pub const MIN_PASSPHRASE_LEN: usize = 8;

/// A 256-bit data key, zeroed when dropped.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    fn random() -> Result<DataKey, VaultError> {
        let mut k = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(k.as_mut())
            .map_err(|_| VaultError::Crypto("no system randomness".into()))?;
        Ok(DataKey(k))
    }

    fn from_slice(b: &[u8]) -> Option<DataKey> {
        let arr: [u8; 32] = b.try_into().ok()?;
        Some(DataKey(Zeroizing::new(arr)))
    }

    /// The key as SQLCipher's raw-key literal `x'..'` (no passphrase derivation on open).
    pub(crate) fn sqlcipher_literal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("\"x'{}'\"", hex::encode_upper(self.0.as_ref())))
    }

    /// A short public fingerprint (sha256 of the key, first 8 bytes), to check a recovery key.
    fn fingerprint(&self) -> String {
        hex::encode(&ring::digest::digest(&ring::digest::SHA256, self.0.as_ref()).as_ref()[..8])
    }

    /// The recovery key: the data key in groups of four hex digits.
    fn recovery_string(&self) -> Zeroizing<String> {
        let h = Zeroizing::new(hex::encode_upper(self.0.as_ref()));
        let groups: Vec<&str> = (0..h.len())
            .step_by(4)
            .map(|i| &h[i..(i + 4).min(h.len())])
            .collect();
        Zeroizing::new(groups.join("-"))
    }

    fn from_recovery_string(s: &str) -> Option<DataKey> {
        let clean: Zeroizing<String> = Zeroizing::new(
            s.chars()
                .filter(|c| c.is_ascii_hexdigit())
                .collect::<String>(),
        );
        let bytes = Zeroizing::new(hex::decode(clean.as_str()).ok()?);
        DataKey::from_slice(&bytes)
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// How the data key is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyMode {
    /// Wrapped under a passphrase (Argon2id + ChaCha20-Poly1305).
    Passphrase,
    /// Sealed by `systemd-creds` (TPM2 or the host key).
    SystemdCreds,
}

impl KeyMode {
    /// The name used in the key file and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Passphrase => "passphrase",
            KeyMode::SystemdCreds => "systemd-creds",
        }
    }
}

/// Argon2id cost parameters, stored with the key so they can be raised later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// Random salt (base64).
    pub salt: String,
}

/// `data-key.json`: public metadata and the wrapped key. Holds nothing secret in the clear.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyFile {
    format: String,
    mode: KeyMode,
    created_at: String,
    /// Fingerprint of the data key (checks a recovery key; reveals nothing about the key).
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<KdfParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapped: Option<String>,
}

/// Whether and how a data folder is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "mode")]
pub enum Protection {
    /// No encryption set up: the database is plain SQLite.
    Plain,
    /// Encrypted; the key is not unlocked in this process.
    Locked(KeyMode),
    /// Encrypted and unlocked in this process.
    Unlocked(KeyMode),
}

fn cache() -> &'static Mutex<HashMap<PathBuf, DataKey>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, DataKey>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cache_key(data_dir: &Path) -> PathBuf {
    std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf())
}

fn cached(data_dir: &Path) -> Option<DataKey> {
    cache().lock().ok()?.get(&cache_key(data_dir)).cloned()
}

fn remember(data_dir: &Path, key: DataKey) {
    if let Ok(mut c) = cache().lock() {
        c.insert(cache_key(data_dir), key);
    }
}

/// Forgets the unlocked key of a data folder in this process (the data is locked again).
pub fn lock(data_dir: &Path) {
    if let Ok(mut c) = cache().lock() {
        c.remove(&cache_key(data_dir));
    }
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

fn read_key_file(data_dir: &Path) -> Result<Option<KeyFile>, VaultError> {
    let path = key_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let kf: KeyFile = serde_json::from_slice(&bytes).map_err(|e| VaultError::Damaged {
        path: path.clone(),
        why: e.to_string(),
    })?;
    if kf.format != FORMAT {
        return Err(VaultError::Damaged {
            path,
            why: format!("unknown format {:?}", kf.format),
        });
    }
    Ok(Some(kf))
}

/// Writes a file atomically with owner-only permissions.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn write_key_file(data_dir: &Path, kf: &KeyFile) -> Result<(), VaultError> {
    let json = serde_json::to_vec_pretty(kf).map_err(|e| VaultError::Crypto(e.to_string()))?;
    write_private(&key_path(data_dir), &json)
}

/// The protection of a data folder, as seen by this process.
pub fn protection(data_dir: &Path) -> Result<Protection, VaultError> {
    Ok(match read_key_file(data_dir)? {
        None => Protection::Plain,
        Some(kf) if cached(data_dir).is_some() => Protection::Unlocked(kf.mode),
        Some(kf) => Protection::Locked(kf.mode),
    })
}

/// Whether the data folder's key is unlocked in this process (or there is none).
pub fn is_open(data_dir: &Path) -> bool {
    matches!(
        protection(data_dir),
        Ok(Protection::Plain | Protection::Unlocked(_))
    )
}

/// Waits until [`is_open`] (checked every 200 ms) or shutdown; true if open. The background
/// loops of `outpost run` start only once a reviewer has unlocked the agent.
pub async fn wait_open(data_dir: &Path, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    loop {
        if is_open(data_dir) {
            return true;
        }
        if *shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            r = shutdown.changed() => if r.is_err() { return false },
        }
    }
}

/// The data key for the database at `db_path` (whose folder holds the key file), for
/// [`crate::store::Store::open`]: `None` if the folder is not encrypted. A sealed
/// (systemd-creds) key is unsealed here, unattended; a passphrase-wrapped key must have
/// been unlocked before, or this fails with [`VaultError::Locked`].
pub fn key_for_database(db_path: &Path) -> Result<Option<DataKey>, VaultError> {
    let data_dir = match db_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(kf) = read_key_file(data_dir)? else {
        return Ok(None);
    };
    if let Some(k) = cached(data_dir) {
        return Ok(Some(k));
    }
    match kf.mode {
        KeyMode::SystemdCreds => {
            let key = unseal(data_dir, &kf)?;
            remember(data_dir, key.clone());
            Ok(Some(key))
        }
        KeyMode::Passphrase => Err(VaultError::Locked {
            how: format!(
                "type the passphrase when asked (run the command in a terminal), set {PASSPHRASE_FILE_ENV} to a file holding it, or unlock the review page of `outpost run`"
            ),
        }),
    }
}

fn kek(passphrase: &str, params: &KdfParams) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let salt = B64
        .decode(&params.salt)
        .map_err(|e| VaultError::Crypto(e.to_string()))?;
    let p = Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| VaultError::Crypto(e.to_string()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(passphrase.as_bytes(), &salt, out.as_mut())
        .map_err(|e| VaultError::Crypto(e.to_string()))?;
    Ok(out)
}

fn aad(mode: KeyMode) -> Vec<u8> {
    format!("{FORMAT}|{}", mode.as_str()).into_bytes()
}

fn wrap(passphrase: &str, key: &DataKey, created_at: String) -> Result<KeyFile, VaultError> {
    if passphrase.chars().count() < MIN_PASSPHRASE_LEN {
        return Err(VaultError::WeakPassphrase(MIN_PASSPHRASE_LEN));
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt)
        .and_then(|_| rng.fill(&mut nonce))
        .map_err(|_| VaultError::Crypto("no system randomness".into()))?;
    let params = KdfParams {
        m_kib: kdf_memory_kib(),
        t: 3,
        p: 1,
        salt: B64.encode(salt),
    };
    let k = kek(passphrase, &params)?;
    let sealing = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, k.as_ref())
            .map_err(|_| VaultError::Crypto("bad key length".into()))?,
    );
    let mut buf = key.0.to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(KeyMode::Passphrase)),
            &mut buf,
        )
        .map_err(|_| VaultError::Crypto("sealing the data key failed".into()))?;
    let kf = KeyFile {
        format: FORMAT.into(),
        mode: KeyMode::Passphrase,
        created_at,
        fingerprint: key.fingerprint(),
        kdf: Some(params),
        nonce: Some(B64.encode(nonce)),
        wrapped: Some(B64.encode(&buf)),
    };
    buf.zeroize();
    Ok(kf)
}

/// Argon2id memory: 64 MiB (about 0.3 s on a field laptop). `OUTPOST_KDF_MEMORY_KIB`
/// lowers it for tests; the value used is stored in the key file.
fn kdf_memory_kib() -> u32 {
    std::env::var("OUTPOST_KDF_MEMORY_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&m: &u32| m >= 8 * 1024)
        .unwrap_or(64 * 1024)
}

fn unwrap_passphrase(passphrase: &str, kf: &KeyFile, path: &Path) -> Result<DataKey, VaultError> {
    let damaged = |why: &str| VaultError::Damaged {
        path: path.to_path_buf(),
        why: why.into(),
    };
    let params = kf.kdf.as_ref().ok_or_else(|| damaged("no kdf"))?;
    let nonce = B64
        .decode(kf.nonce.as_deref().ok_or_else(|| damaged("no nonce"))?)
        .map_err(|_| damaged("bad nonce"))?;
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| damaged("bad nonce"))?;
    let mut buf = B64
        .decode(kf.wrapped.as_deref().ok_or_else(|| damaged("no key"))?)
        .map_err(|_| damaged("bad key"))?;
    let k = kek(passphrase, params)?;
    let opening = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, k.as_ref())
            .map_err(|_| VaultError::Crypto("bad key length".into()))?,
    );
    let plain = opening
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(KeyMode::Passphrase)),
            &mut buf,
        )
        .map_err(|_| VaultError::WrongPassphrase)?;
    let key = DataKey::from_slice(plain).ok_or_else(|| damaged("wrong key length"));
    buf.zeroize();
    key
}

/// Unlocks a passphrase-protected data folder in this process. A wrong passphrase is
/// refused with [`VaultError::WrongPassphrase`] and changes nothing.
pub fn unlock_with_passphrase(data_dir: &Path, passphrase: &str) -> Result<KeyMode, VaultError> {
    let kf = read_key_file(data_dir)?.ok_or_else(|| VaultError::NotSetUp(data_dir.into()))?;
    let key = match kf.mode {
        KeyMode::Passphrase => unwrap_passphrase(passphrase, &kf, &key_path(data_dir))?,
        KeyMode::SystemdCreds => unseal(data_dir, &kf)?,
    };
    remember(data_dir, key);
    Ok(kf.mode)
}

/// Unlocks a data folder whose key needs no passphrase (systemd-creds). Does nothing for a
/// plain folder; fails with [`VaultError::Locked`] for a passphrase folder.
pub fn unlock_unattended(data_dir: &Path) -> Result<Protection, VaultError> {
    key_for_database(&data_dir.join("agent.db"))?;
    protection(data_dir)
}

fn seal(data_dir: &Path, key: &DataKey) -> Result<(), VaultError> {
    use std::io::Write;
    let out = data_dir.join(CREDENTIAL_FILE);
    let mut child = std::process::Command::new("systemd-creds")
        .args(["encrypt", "--with-key=auto"])
        .arg(format!("--name={CREDENTIAL_NAME}"))
        .arg("-")
        .arg(&out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| VaultError::SystemdCreds {
            action: "encrypt",
            why: format!("{e} (is systemd 250 or newer installed?)"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(key.0.as_ref())
            .map_err(|e| VaultError::SystemdCreds {
                action: "encrypt",
                why: e.to_string(),
            })?;
    }
    let o = child
        .wait_with_output()
        .map_err(|e| VaultError::SystemdCreds {
            action: "encrypt",
            why: e.to_string(),
        })?;
    if !o.status.success() {
        return Err(VaultError::SystemdCreds {
            action: "encrypt",
            why: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn unseal(data_dir: &Path, kf: &KeyFile) -> Result<DataKey, VaultError> {
    // Under systemd (LoadCredentialEncrypted=), the service manager has unsealed it already.
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = Path::new(&dir).join(CREDENTIAL_NAME);
        if let Ok(b) = std::fs::read(&p) {
            let b = Zeroizing::new(b);
            if let Some(k) = DataKey::from_slice(&b).filter(|k| k.fingerprint() == kf.fingerprint) {
                return Ok(k);
            }
        }
    }
    let sealed = data_dir.join(CREDENTIAL_FILE);
    let o = std::process::Command::new("systemd-creds")
        .arg("decrypt")
        .arg(format!("--name={CREDENTIAL_NAME}"))
        .arg(&sealed)
        .arg("-")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| VaultError::SystemdCreds {
            action: "decrypt",
            why: format!("{e} (is systemd 250 or newer installed?)"),
        })?;
    let out = Zeroizing::new(o.stdout);
    if !o.status.success() {
        return Err(VaultError::SystemdCreds {
            action: "decrypt",
            why: format!(
                "{} (the sealed key {} opens only on the machine, and with the TPM, that sealed it, and needs root)",
                String::from_utf8_lossy(&o.stderr).trim(),
                sealed.display()
            ),
        });
    }
    let key = DataKey::from_slice(&out).ok_or_else(|| VaultError::Damaged {
        path: sealed.clone(),
        why: "the unsealed key is not 32 bytes".into(),
    })?;
    if key.fingerprint() != kf.fingerprint {
        return Err(VaultError::Damaged {
            path: sealed,
            why: "the unsealed key does not match data-key.json".into(),
        });
    }
    Ok(key)
}

/// What [`set_up`] did.
#[derive(Debug)]
pub struct SetUp {
    /// The mode chosen.
    pub mode: KeyMode,
    /// The recovery key, to be shown once and kept apart from the device.
    pub recovery_key: Zeroizing<String>,
    /// Whether an existing plain database was converted.
    pub converted_database: bool,
}

/// Sets up encryption for a data folder: makes a data key, keeps it per `mode`, and
/// converts an existing plain `agent.db` into an encrypted one (the plain file is
/// overwritten with zeros, then replaced). Refuses if encryption is already set up.
pub fn set_up(
    data_dir: &Path,
    mode: KeyMode,
    passphrase: Option<&str>,
) -> Result<SetUp, VaultError> {
    if key_path(data_dir).exists() {
        return Err(VaultError::AlreadySetUp(key_path(data_dir)));
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let key = DataKey::random()?;
    let kf = match mode {
        KeyMode::Passphrase => wrap(
            passphrase.ok_or(VaultError::WeakPassphrase(MIN_PASSPHRASE_LEN))?,
            &key,
            super::now(),
        )?,
        KeyMode::SystemdCreds => {
            seal(data_dir, &key)?;
            KeyFile {
                format: FORMAT.into(),
                mode,
                created_at: super::now(),
                fingerprint: key.fingerprint(),
                kdf: None,
                nonce: None,
                wrapped: None,
            }
        }
    };
    let db = data_dir.join("agent.db");
    let converted = if db.exists() {
        encrypt_existing(&db, &key)?;
        true
    } else {
        false
    };
    write_key_file(data_dir, &kf)?;
    let recovery_key = key.recovery_string();
    remember(data_dir, key);
    Ok(SetUp {
        mode,
        recovery_key,
        converted_database: converted,
    })
}

/// Rewraps the data key under a new passphrase (the database is not touched). The current
/// key comes from the old passphrase or the recovery key.
pub fn change_passphrase(
    data_dir: &Path,
    old: Secret<'_>,
    new_passphrase: &str,
) -> Result<(), VaultError> {
    let kf = read_key_file(data_dir)?.ok_or_else(|| VaultError::NotSetUp(data_dir.into()))?;
    let key = match old {
        Secret::Passphrase(p) => {
            if kf.mode != KeyMode::Passphrase {
                return Err(VaultError::Crypto(
                    "this data folder's key is sealed by systemd-creds, not a passphrase".into(),
                ));
            }
            unwrap_passphrase(p, &kf, &key_path(data_dir))?
        }
        Secret::RecoveryKey(r) => DataKey::from_recovery_string(r)
            .filter(|k| k.fingerprint() == kf.fingerprint)
            .ok_or(VaultError::WrongRecoveryKey)?,
    };
    let new_kf = wrap(new_passphrase, &key, kf.created_at.clone())?;
    write_key_file(data_dir, &new_kf)?;
    let _ = std::fs::remove_file(data_dir.join(CREDENTIAL_FILE));
    remember(data_dir, key);
    Ok(())
}

/// What proves the right to the data key.
#[derive(Debug, Clone, Copy)]
pub enum Secret<'a> {
    /// The current passphrase.
    Passphrase(&'a str),
    /// The recovery key printed by `outpost encrypt`.
    RecoveryKey(&'a str),
}

/// Runs one statement and reads past any rows it answers (`PRAGMA key` answers "ok" in
/// recent SQLCipher; `execute` would call that an error).
fn exec(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// Keys a freshly opened connection (must come before any other statement).
pub fn apply_key(conn: &rusqlite::Connection, key: &DataKey) -> rusqlite::Result<()> {
    exec(
        conn,
        &Zeroizing::new(format!("PRAGMA key = {}", key.sqlcipher_literal().as_str())),
    )
}

/// Converts a plain database into an encrypted one with SQLCipher's `sqlcipher_export`,
/// then overwrites the plain file with zeros before the encrypted copy replaces it.
fn encrypt_existing(db: &Path, key: &DataKey) -> Result<(), VaultError> {
    let sql = |e: rusqlite::Error| VaultError::Crypto(format!("converting {}: {e}", db.display()));
    let tmp = db.with_extension("db.encrypting");
    let _ = std::fs::remove_file(&tmp);
    {
        let conn = rusqlite::Connection::open(db).map_err(sql)?;
        // Fold the WAL into the main file first, so the export sees every committed row.
        exec(&conn, "PRAGMA wal_checkpoint(TRUNCATE)").map_err(sql)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        let tmp_str = tmp.to_string_lossy().replace('\'', "''");
        let attach = Zeroizing::new(format!(
            "ATTACH DATABASE '{tmp_str}' AS encrypted KEY {}",
            key.sqlcipher_literal().as_str()
        ));
        exec(&conn, &attach).map_err(sql)?;
        exec(&conn, "SELECT sqlcipher_export('encrypted')").map_err(sql)?;
        exec(&conn, &format!("PRAGMA encrypted.user_version = {version}")).map_err(sql)?;
        exec(&conn, "DETACH DATABASE encrypted").map_err(sql)?;
    }
    // Overwrite the plain bytes before letting go of the file (best effort: SSDs and
    // copy-on-write file systems may keep old blocks; see the README).
    for p in [
        db.to_path_buf(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ] {
        if let Ok(meta) = std::fs::metadata(&p) {
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&p) {
                use std::io::Write;
                let zeros = vec![0u8; 1 << 16];
                let mut left = meta.len();
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    if f.write_all(&zeros[..n]).is_err() {
                        break;
                    }
                    left -= n as u64;
                }
                let _ = f.sync_all();
            }
            if p != db {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    std::fs::rename(&tmp, db).map_err(io(db))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_kdf() {
        std::env::set_var("OUTPOST_KDF_MEMORY_KIB", "8192");
    }

    #[test]
    fn wrong_passphrase_is_refused_and_right_one_unlocks() {
        small_kdf();
        let d = tempfile::tempdir().unwrap();
        let s = set_up(d.path(), KeyMode::Passphrase, Some("correct horse")).unwrap();
        assert!(!s.converted_database);
        lock(d.path());
        assert_eq!(
            protection(d.path()).unwrap(),
            Protection::Locked(KeyMode::Passphrase)
        );
        assert!(matches!(
            key_for_database(&d.path().join("agent.db")),
            Err(VaultError::Locked { .. })
        ));
        assert!(matches!(
            unlock_with_passphrase(d.path(), "wrong horse"),
            Err(VaultError::WrongPassphrase)
        ));
        unlock_with_passphrase(d.path(), "correct horse").unwrap();
        assert!(key_for_database(&d.path().join("agent.db"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn passphrase_change_and_recovery_keep_the_same_key() {
        small_kdf();
        let d = tempfile::tempdir().unwrap();
        let s = set_up(d.path(), KeyMode::Passphrase, Some("first passphrase")).unwrap();
        let before = cached(d.path()).unwrap().fingerprint();
        assert!(matches!(
            set_up(d.path(), KeyMode::Passphrase, Some("again again")),
            Err(VaultError::AlreadySetUp(_))
        ));
        change_passphrase(
            d.path(),
            Secret::Passphrase("first passphrase"),
            "second passphrase",
        )
        .unwrap();
        lock(d.path());
        assert!(matches!(
            unlock_with_passphrase(d.path(), "first passphrase"),
            Err(VaultError::WrongPassphrase)
        ));
        unlock_with_passphrase(d.path(), "second passphrase").unwrap();
        assert_eq!(cached(d.path()).unwrap().fingerprint(), before);
        // The recovery key sets a new passphrase when the old one is lost.
        assert!(matches!(
            change_passphrase(d.path(), Secret::RecoveryKey("00-11"), "third passphrase"),
            Err(VaultError::WrongRecoveryKey)
        ));
        change_passphrase(
            d.path(),
            Secret::RecoveryKey(&s.recovery_key.to_lowercase()),
            "third passphrase",
        )
        .unwrap();
        lock(d.path());
        unlock_with_passphrase(d.path(), "third passphrase").unwrap();
        assert_eq!(cached(d.path()).unwrap().fingerprint(), before);
        assert!(matches!(
            wrap("short", &DataKey::random().unwrap(), super::super::now()),
            Err(VaultError::WeakPassphrase(_))
        ));
    }
}
