//! The server's secret for sealed USB feedback files.
//!
//! Each enrolled agent receives an export key, HMAC-SHA256 of this secret and its device id
//! ([`crate::store::usb::ExportKey::derive`]), and seals the feedback files it writes for a
//! USB stick with it. The server keeps no per-device key: it derives the key again from the
//! `device_id` in a file's header when the file is imported. The secret is 32 random bytes
//! in `<data_dir>/keys/feedback-export.key` (mode 0600), made on first use; server processes
//! that share a store must share this file like the signing keys.

use crate::store::usb::ExportKey;
use ring::rand::SecureRandom;
use std::path::{Path, PathBuf};

/// The secret, loaded.
#[derive(Clone)]
pub struct ExportSecret(Vec<u8>);

impl std::fmt::Debug for ExportSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportSecret(..)")
    }
}

/// The secret's file in a server data folder.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("feedback-export.key")
}

impl ExportSecret {
    /// Loads the secret, creating it (owner-only) if the folder has none yet.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<ExportSecret> {
        let p = path(data_dir);
        match std::fs::read(&p) {
            Ok(b) if b.len() == 32 => return Ok(ExportSecret(b)),
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not 32 bytes: restore it from a backup (without it, sealed USB files from enrolled devices cannot be read)",
                    p.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut b = vec![0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = p.with_extension(format!("tmp.{}", std::process::id()));
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let _ = std::fs::remove_file(&tmp);
            let mut f = opts.open(&tmp)?;
            f.write_all(&b)?;
            f.sync_all()?;
        }
        // Another process may have made one meanwhile: keep whichever landed first.
        match std::fs::hard_link(&tmp, &p) {
            Ok(()) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(ExportSecret(b))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&tmp);
                Self::load_or_create(data_dir)
            }
            Err(e) => Err(e),
        }
    }

    /// The export key of a device.
    pub fn key_for(&self, device_id: &str) -> ExportKey {
        ExportKey::derive(&self.0, device_id)
    }
}
