//! Unlocking an encrypted data folder at the terminal, and reading the secrets that do it:
//! a sealed key unseals by itself; a passphrase comes from `$OUTPOST_PASSPHRASE_FILE` or is
//! asked for (three tries); a new passphrase is read from a file or typed twice. This is
//! the terminal's side of [`crate::store::vault`], which holds the key handling itself;
//! the review page unlocks through its own form.

use crate::config::AgentConfig;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Reads a secret from a file (trailing newline dropped).
pub fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<String>> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
    Ok(zeroize::Zeroizing::new(
        s.trim_end_matches(['\n', '\r']).to_string(),
    ))
}

/// Unlocks the data folder if it is encrypted: a sealed key unseals by itself; a
/// passphrase comes from $OUTPOST_PASSPHRASE_FILE or is asked for on the terminal (three
/// tries). `interactive_only_if_tty`: without a terminal and without the variable, return
/// `Ok(false)` (still locked) instead of failing.
pub fn unlock(cfg: &AgentConfig, may_stay_locked: bool) -> Result<bool> {
    use crate::store::vault::{self, KeyMode, Protection, VaultError};
    use std::io::IsTerminal;
    let dir = cfg.data_dir();
    match vault::protection(&dir)? {
        Protection::Plain | Protection::Unlocked(_) => Ok(true),
        Protection::Locked(KeyMode::SystemdCreds) => {
            vault::unlock_unattended(&dir)?;
            Ok(true)
        }
        Protection::Locked(KeyMode::Passphrase) => {
            if let Some(f) = std::env::var_os(vault::PASSPHRASE_FILE_ENV) {
                let p = read_secret_file(Path::new(&f))?;
                vault::unlock_with_passphrase(&dir, &p)?;
                return Ok(true);
            }
            if !std::io::stdin().is_terminal() {
                if may_stay_locked {
                    return Ok(false);
                }
                return Err(vault::key_for_database(&cfg.database_path())
                    .err()
                    .map(anyhow::Error::from)
                    .unwrap_or_else(|| anyhow::anyhow!("the agent's data is locked")));
            }
            for _ in 0..3 {
                let p = prompt(
                    &format!("Passphrase for {}: ", dir.display()),
                    "passphrase",
                    CURRENT_INSTEAD,
                )?;
                match vault::unlock_with_passphrase(&dir, &p) {
                    Ok(_) => return Ok(true),
                    Err(VaultError::WrongPassphrase) => eprintln!("wrong passphrase"),
                    Err(e) => return Err(e.into()),
                }
            }
            bail!("three wrong passphrases: nothing was read or changed")
        }
    }
}

/// What to do instead of typing the current passphrase.
pub const CURRENT_INSTEAD: &str = "set OUTPOST_PASSPHRASE_FILE to a file holding it";

pub fn prompt(
    text: &str,
    what: &'static str,
    instead: &'static str,
) -> Result<zeroize::Zeroizing<String>> {
    Ok(super::prompt_secret(text, what, instead)?)
}

/// A new passphrase: from a file, or typed twice on the terminal. `instead` says how to
/// give it in a file (said when there is no terminal).
pub fn new_passphrase(
    file: Option<&Path>,
    instead: &'static str,
) -> Result<zeroize::Zeroizing<String>> {
    if let Some(f) = file {
        return read_secret_file(f);
    }
    let a = prompt("New passphrase: ", "new passphrase", instead)?;
    let b = prompt("The same again: ", "new passphrase", instead)?;
    if a != b {
        bail!("the two passphrases differ: nothing was changed");
    }
    Ok(a)
}
