//! `outpost encrypt` and `outpost passphrase` at the terminal: turning on encryption of the
//! data folder and changing its passphrase. Key handling lives in [`crate::store::vault`];
//! reading secrets in [`super::unlock`]; this module asks, calls and prints.

use super::agent_args::{EncryptArgs, PassphraseArgs};
use super::unlock::{new_passphrase, prompt, read_secret_file, CURRENT_INSTEAD};
use crate::config::AgentConfig;
use crate::outln;
use anyhow::Result;
use std::path::Path;
use std::process::ExitCode;

/// `encrypt`.
pub fn encrypt(cfg: &AgentConfig, a: EncryptArgs) -> Result<ExitCode> {
    let EncryptArgs {
        passphrase,
        systemd_creds: _,
        passphrase_file,
    } = a;
    use crate::store::vault::{self, KeyMode};
    let dir = cfg.data_dir();
    let (mode, pass) = if passphrase {
        (
            KeyMode::Passphrase,
            Some(new_passphrase(
                passphrase_file.as_deref(),
                "give it in a file with --passphrase-file FILE",
            )?),
        )
    } else {
        (KeyMode::SystemdCreds, None)
    };
    let r = vault::set_up(&dir, mode, pass.as_deref().map(|s| s.as_str()))?;
    outln!(
        "{} is now encrypted (SQLCipher, key kept by {}){}",
        dir.display(),
        r.mode.as_str(),
        if r.converted_database {
            "; the existing database was converted and the plain file overwritten"
        } else {
            ""
        }
    );
    outln!();
    outln!("Recovery key (shown once; write it down and keep it away from this device):");
    outln!("  {}", r.recovery_key.as_str());
    outln!(
        "If the {} is lost, `outpost passphrase --recovery-key -` sets a new passphrase with it.",
        if mode == KeyMode::Passphrase {
            "passphrase"
        } else {
            "sealed key (new disk, new TPM)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `passphrase`.
pub fn passphrase(cfg: &AgentConfig, a: PassphraseArgs) -> Result<ExitCode> {
    let PassphraseArgs {
        recovery_key,
        new_passphrase_file,
    } = a;
    use crate::store::vault::{self, Secret};
    let dir = cfg.data_dir();
    let old: zeroize::Zeroizing<String> = match &recovery_key {
        Some(f) if f.as_os_str() == "-" => prompt(
            "Recovery key: ",
            "recovery key",
            "give it in a file with --recovery-key FILE",
        )?,
        Some(f) => read_secret_file(f)?,
        None => match std::env::var_os(vault::PASSPHRASE_FILE_ENV) {
            Some(f) => read_secret_file(Path::new(&f))?,
            None => prompt("Current passphrase: ", "passphrase", CURRENT_INSTEAD)?,
        },
    };
    let secret = if recovery_key.is_some() {
        Secret::RecoveryKey(&old)
    } else {
        Secret::Passphrase(&old)
    };
    let new = new_passphrase(
        new_passphrase_file.as_deref(),
        "give it in a file with --new-passphrase-file FILE",
    )?;
    vault::change_passphrase(&dir, secret, &new)?;
    outln!(
        "passphrase changed (the database was not re-encrypted; the recovery key stays the same)"
    );
    Ok(ExitCode::SUCCESS)
}
