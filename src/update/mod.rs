//! Over-the-air model updates on the agent: verify, download, stage, switch, roll back.
//!
//! Why this module exists: a field laptop must end up running the model its group and
//! channel should run, over a link that comes and goes, without ever trusting the network
//! and without ever being left with no working model. The steps, in order:
//!
//! 1. **Metadata** ([`verified`]): TUF 1.0, the specification's client workflow
//!    ([`crate::trust::tuf`]), from the root the operator pinned (`update.root` in the
//!    config), kept on disk under `<data_dir>/trust/tuf/`. Each check walks the root chain
//!    one version at a time (`N.root.json`, so a rotation missed while offline for weeks is
//!    applied in order), then timestamp, snapshot and targets, with every signature,
//!    threshold, version, hash, length and expiry rule. A pin in the format before TUF
//!    moves to TUF through a TUF root signed by its root keys. Anything refused is recorded
//!    with its reason and nothing is installed.
//! 2. **Choice** ([`targeting`]): the newest release for the configured channel (default
//!    `stable`), the group from the server's *signed* answer to this device's own report,
//!    and the device id the agent enrolled with; never lower than the active version unless
//!    the signed targets withdrew it. A model pinned by hand is left alone.
//! 3. **Download** ([`download`]): files are content-addressed. A file whose sha256 is
//!    already in the local store (`<data_dir>/models/.blobs/sha256/`) is not fetched again,
//!    so a head-only update moves kilobytes. A download goes to `.partial/<hash>.partial`,
//!    survives restarts and resumes with `Range`; it never reads more than the length the
//!    signed metadata gives (endless data), a try that slows below a minimum rate ends
//!    (resumably: slow retrieval does not hold the update), a server whose copy is shorter
//!    than signed is refused, and its sha256 is checked before it enters the store.
//! 4. **Staging** ([`local::Installed::stage`]): the bundle is assembled in
//!    `.staging/`, opened with [`crate::model::Bundle::open`] (every file against the
//!    manifest, which must name the release's model and version), loaded in ONNX Runtime
//!    and its golden cases run. Only then is it moved to `<name>/<version>/`.
//! 5. **Switch**: `<name>/active` is a symlink to the version folder, replaced by one
//!    `rename`: a crash leaves either the old or the new pointer, both verified bundles.
//!    The previous version stays on disk. The running agent ([`active::ActiveModels`])
//!    swaps its `Arc<LoadedModel>`: requests in flight finish on the old model, new ones
//!    get the new one. A failed post-swap health check switches back by itself.
//! 6. **Report**: refusals and rollbacks are kept in the agent database (`model_events`)
//!    and sent with the versions running (`POST /v1/device/models`) on the next sync; the
//!    server shows them in `outpost-server devices list`.
//!
//! A site with no network carries a single file ([`usb`]) holding the signed metadata chain
//! and the bundle's files; `outpost models install FILE` verifies it the same way, applies
//! the same targeting rules, and refuses a stale file (`--allow-stale` overrides, recorded).
//!
//! The clock: expiry is checked against the trusted time (see [`crate::trust::client`]):
//! a clock set back cannot revive expired metadata, a clock far ahead only stops updates
//! (the model already verified keeps serving) and the refusal says the clock may be wrong.
//! `OUTPOST_CLOCK_OFFSET_SECS` shifts the agent's idea of "now" (tests of a wrong clock).

pub mod active;
pub mod download;
pub mod local;
pub mod manual;
pub mod run;
pub mod targeting;
pub mod trust_store;
pub mod tuf_client;
pub mod usb;
pub mod verified;

pub use active::ActiveModels;
pub use local::Installed;
pub use run::{check_and_install, UpdateOptions, UpdateReport};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bounds on what an update may cost in time and trust (`[update]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct UpdateLimits {
    /// A download try ends when fewer than `min_rate` bytes per second arrived over the
    /// last `stall` (and the server's headers must come within it).
    pub stall: Duration,
    /// Slowest rate kept, bytes per second.
    pub min_rate: u64,
    /// Consecutive tries ending cleanly at the same short length before a refusal.
    pub short_tries: u32,
    /// How long after its signed timestamp expired a USB file is still accepted.
    pub usb_max_stale: Duration,
}

impl Default for UpdateLimits {
    fn default() -> Self {
        UpdateLimits {
            stall: Duration::from_secs(60),
            min_rate: 1024,
            short_tries: 3,
            usb_max_stale: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Why an update step failed. Each says what was refused and why.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Updates are not configured.
    #[error("updates are off: no pinned root (set update.root in the config to the root.json your operator gave you)")]
    NoRoot,
    /// The pinned root could not be read.
    #[error("cannot read the pinned root {path}: {reason}")]
    PinnedRoot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Metadata refused.
    #[error("update metadata refused: {0}")]
    Trust(#[from] crate::trust::TrustError),
    /// TUF metadata refused.
    #[error("update metadata refused: {0}")]
    Tuf(crate::trust::tuf::TufError),
    /// Metadata refused, with a hint that the device clock may be wrong.
    #[error("update metadata refused: {source}; the device clock may be wrong (it is {offset_secs} s off the server's): fix the clock; the current model keeps serving")]
    Clock {
        /// The refusal.
        source: crate::trust::tuf::TufError,
        /// Server clock minus device clock.
        offset_secs: i64,
    },
    /// A downloaded file was refused.
    #[error("file {target} refused: {reason}")]
    File {
        /// Target path (`sha256/<hash>`).
        target: String,
        /// Why.
        reason: String,
    },
    /// The release is inconsistent with its own bundle.
    #[error("release {model} {version} refused: {reason}")]
    Release {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Why.
        reason: String,
    },
    /// The bundle did not validate (hashes, loading, golden outputs).
    #[error("{model} {version} failed validation: {reason}")]
    Validation {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Why.
        reason: String,
    },
    /// Network or server trouble.
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    /// Local files.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Local database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// An operator request that cannot be done (unknown version, nothing to roll back to).
    #[error("{0}")]
    Refused(String),
    /// A USB update file that is not one.
    #[error("update file {path}: {reason}")]
    UsbFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl UpdateError {
    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, UpdateError::Sync(e) if e.is_transient())
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The agent's "now" for expiry checks: the system clock, shifted by
/// `OUTPOST_CLOCK_OFFSET_SECS` if set (a test hook that simulates a wrong laptop clock).
pub fn clock_now() -> time::OffsetDateTime {
    let offset = std::env::var("OUTPOST_CLOCK_OFFSET_SECS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    time::OffsetDateTime::now_utc() + time::Duration::seconds(offset)
}

/// `<data_dir>/models`: installed bundle versions, the blob store, partial downloads.
pub fn models_root(data_dir: &Path) -> PathBuf {
    data_dir.join("models")
}

/// `<data_dir>/trust`: the trusted metadata.
pub fn trust_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("trust")
}

/// Test hook: `OUTPOST_UPDATE_PAUSE_AT=<point>` makes the agent write
/// `<data_dir>/paused-at-<point>` and sleep 60 s at that point (`download`, `swap`), so a
/// test can kill -9 it there.
pub(crate) fn pause_point(data_dir: &Path, point: &str) {
    if std::env::var("OUTPOST_UPDATE_PAUSE_AT").ok().as_deref() == Some(point) {
        let _ = std::fs::write(data_dir.join(format!("paused-at-{point}")), b"");
        tracing::warn!(point, "test hook: pausing for 60 s");
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Every model name the verified targets has a release for.
pub fn release_models(targets: &crate::trust::Targets) -> Vec<String> {
    let mut v: Vec<String> = targets.releases.iter().map(|r| r.model.clone()).collect();
    v.sort();
    v.dedup();
    v
}
