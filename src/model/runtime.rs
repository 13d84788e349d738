//! Locating and loading ONNX Runtime.
//!
//! The agent does not link ONNX Runtime at build time: it loads the shared library from the
//! `onnxruntime==1.31.1` wheel at start (see `scripts/fetch-onnxruntime.sh`). A missing or
//! wrong library must be a clear error that names the files looked at and the fix, never a
//! panic, because a field user cannot debug a crash.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime version the agent is built against (`ort` feature `api-31`).
pub const ORT_VERSION: &str = "1.31.1";
/// The file name of the library inside the wheel.
pub const ORT_LIB_FILE: &str = "libonnxruntime.so.1.31.1";
/// Environment variable naming the library file explicitly.
pub const ORT_LIB_ENV: &str = "OUTPOST_ORT_LIB";

/// Why ONNX Runtime could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// No candidate file exists.
    #[error(
        "ONNX Runtime library not found. Looked for:\n{}\nFix: run `bash scripts/setup.sh` in the source tree (it fetches the onnxruntime=={ORT_VERSION} wheel and unpacks {ORT_LIB_FILE}), \
         or set {ORT_LIB_ENV} (or `library` in the `[runtime]` section of the config) to the full path of {ORT_LIB_FILE}",
        looked.iter().map(|p| format!("  - {}", p.display())).collect::<Vec<_>>().join("\n")
    )]
    NotFound {
        /// Every path that was tried.
        looked: Vec<PathBuf>,
    },
    /// The file exists but is not a usable ONNX Runtime of the right version.
    #[error("could not load ONNX Runtime from {path}: {reason}. Outpost needs ONNX Runtime {ORT_VERSION} (file {ORT_LIB_FILE} from the onnxruntime=={ORT_VERSION} wheel); run `bash scripts/setup.sh` or point {ORT_LIB_ENV} at the right file")]
    Load {
        /// The file that was loaded.
        path: PathBuf,
        /// What ONNX Runtime or the loader said.
        reason: String,
    },
}

static LOADED: OnceLock<Result<PathBuf, RuntimeError>> = OnceLock::new();
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The paths tried, in order, when no explicit library is configured.
pub fn candidate_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for var in [ORT_LIB_ENV, "ORT_DYLIB_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            if !v.is_empty() {
                out.push(PathBuf::from(v));
            }
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join(ORT_LIB_FILE));
            out.push(dir.join("../lib/outpost").join(ORT_LIB_FILE));
            // A source checkout: target/<profile>/ or target/<profile>/deps/ below the repo.
            for up in dir.ancestors().skip(1).take(3) {
                out.push(up.join(".ort").join(ORT_LIB_FILE));
            }
        }
    }
    out.push(PathBuf::from("/usr/local/lib/outpost").join(ORT_LIB_FILE));
    out.push(PathBuf::from("/usr/lib/outpost").join(ORT_LIB_FILE));
    out
}

/// The process's ONNX Runtime environment, once [`init`] succeeded.
pub fn environment() -> Option<&'static ort::environment::Environment> {
    ENVIRONMENT.get()
}

/// Loads ONNX Runtime once per process. `explicit` (from the config or the command line)
/// wins over the search path. Later calls return the first result.
pub fn init(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    LOADED.get_or_init(|| load(explicit)).clone()
}

fn load(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let candidates = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => candidate_paths(),
    };
    let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
        return Err(RuntimeError::NotFound { looked: candidates });
    };
    let path = path.canonicalize().unwrap_or(path);
    let builder = ort::init_from(&path).map_err(|e| RuntimeError::Load {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    // Telemetry stays off: the agent must not try to phone home.
    let env = builder
        .with_telemetry(false)
        .with_name("outpost")
        .build()
        .map_err(|e| RuntimeError::Load {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    // Sessions hold a weak reference to the environment: keep it for the whole process.
    let _ = ENVIRONMENT.set(env);
    tracing::info!(library = %path.display(), "loaded ONNX Runtime");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_explicit_library_is_a_clear_error() {
        let err = load(Some(Path::new("/nonexistent/libonnxruntime.so.1.31.1"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/libonnxruntime.so.1.31.1"),
            "{msg}"
        );
        assert!(msg.contains("scripts/setup.sh"), "{msg}");
    }
}
