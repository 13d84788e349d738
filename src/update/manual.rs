//! Model changes a person makes on the laptop, not the server: `outpost models rollback`
//! (back to the version active before), `pin` (stay on an installed version; updates leave
//! the model alone) and `unpin`. Each takes the update lock, validates a version before it
//! becomes active (files, ONNX Runtime load, golden cases), and is recorded in the agent's
//! model events, which the next device report tells the server.

use super::local::{validate, Installed};
use super::run::{lock, record};
use super::UpdateError;
use crate::model::pool::SessionOptions;
use std::path::Path;

/// A rollback done: from which version to which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The version that was active (none if nothing was).
    pub from: Option<String>,
    /// The version now active.
    pub to: String,
}

fn validated(
    installed: &Installed,
    name: &str,
    version: &str,
    session: SessionOptions,
) -> Result<(), UpdateError> {
    validate(&installed.version_dir(name, version), session)
        .map(drop)
        .map_err(|reason| UpdateError::Validation {
            model: name.into(),
            version: version.into(),
            reason,
        })
}

/// Switches `name` back to the version active before the current one. The current one is
/// marked failed ("rolled back by hand") so updates do not install it again; a pin moves
/// with the rollback. ONNX Runtime must be loaded.
pub fn rollback(
    installed: &Installed,
    db: &Path,
    name: &str,
    session: SessionOptions,
) -> Result<RolledBack, UpdateError> {
    let _lock = lock(installed)?;
    let from = installed.active(name);
    let to = installed
        .state(name)
        .previous
        .filter(|p| Some(p) != from.as_ref())
        .ok_or_else(|| {
            UpdateError::Refused(format!(
                "{name} has no earlier version to go back to (installed: {})",
                installed.versions(name).join(", ")
            ))
        })?;
    validated(installed, name, &to, session)?;
    installed.activate(name, &to)?;
    let mut st = installed.state(name);
    if let Some(c) = &from {
        st.failed
            .entry(c.clone())
            .or_insert_with(|| "rolled back by hand".into());
    }
    if st.pinned.is_some() {
        st.pinned = Some(to.clone());
    }
    installed.save_state(name, &st)?;
    record(
        db,
        name,
        from.as_deref(),
        "rolled_back",
        &format!("by hand (outpost models rollback), back on {to}"),
    )?;
    Ok(RolledBack { from, to })
}

/// Pins `name` at `version` (activating it first if it is not active). ONNX Runtime must
/// be loaded when the version is not the active one.
pub fn pin(
    installed: &Installed,
    db: &Path,
    name: &str,
    version: &str,
    session: SessionOptions,
) -> Result<(), UpdateError> {
    let _lock = lock(installed)?;
    if installed.active(name).as_deref() != Some(version) {
        validated(installed, name, version, session)?;
        installed.activate(name, version)?;
    }
    let mut st = installed.state(name);
    st.pinned = Some(version.to_string());
    installed.save_state(name, &st)?;
    record(db, name, Some(version), "pinned", "")
}

/// Unpins `name`; returns the version it was pinned at.
pub fn unpin(installed: &Installed, db: &Path, name: &str) -> Result<Option<String>, UpdateError> {
    let mut st = installed.state(name);
    let was = st.pinned.take();
    installed.save_state(name, &st)?;
    record(db, name, was.as_deref(), "unpinned", "")?;
    Ok(was)
}
