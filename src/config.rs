//! The agent's configuration: a TOML file (see `config/agent.toml` for every key with its
//! meaning), environment overrides, and command-line flags, in increasing precedence.
//!
//! - File: `--config FILE`, else `$OUTPOST_CONFIG`, else `<config dir>/agent.toml` if it
//!   exists (XDG: `~/.config/outpost/agent.toml`; installed: `/etc/outpost/agent.toml`).
//! - Environment: `OUTPOST__SECTION__KEY=value` sets any key (`OUTPOST__ANALYZE__BATCH_SIZE=64`);
//!   the value is read as TOML, or as a string if it is not valid TOML. The common ones also
//!   have short names: `OUTPOST_DATA_DIR`, `OUTPOST_MODELS_DIR`, `OUTPOST_ORT_LIB`.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file (or an override) is not valid.
    #[error("invalid config {origin}: {reason}")]
    Invalid {
        /// The file or variable.
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

/// ONNX Runtime settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so.1.31.1`; empty: search (see `model::runtime`).
    pub library: Option<PathBuf>,
    /// Intra-op threads per session; 0: every CPU, at most 4.
    pub intra_threads: usize,
    /// Sessions per model file (concurrent callers); 0: 2.
    pub sessions: usize,
}

/// `outpost analyze` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzeConfig {
    /// Image tiles per inference batch.
    pub batch_size: usize,
    /// Reports per inference batch (32), used only with a bundle that declares a
    /// batch-independent backbone (`"backbone": {"batch_independent": true}`): a dynamically
    /// quantised backbone scales activations per batch, so a report's scores would depend on
    /// its neighbours, and its reports run one at a time whatever this says.
    pub text_batch_size: usize,
    /// Tile size in pixels for scenes; 0: the model's input size.
    pub tile_size: u32,
    /// Overlap between neighbouring tiles, in pixels.
    pub tile_overlap: u32,
    /// Images up to this size (longest side, pixels) are one item, resized to the model's
    /// input; larger images and every georeferenced scene are cut into tiles.
    pub whole_image_max: u32,
    /// Tiles with less than this fraction of valid pixels (nodata, transparent) are skipped.
    pub min_valid_fraction: f32,
    /// CSV column or JSON field holding report text; empty: message, text, report, body...
    pub text_field: String,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        AnalyzeConfig {
            batch_size: 32,
            text_batch_size: 32,
            tile_size: 0,
            tile_overlap: 0,
            whole_image_max: 256,
            min_valid_fraction: 0.5,
            text_field: String::new(),
        }
    }
}

/// Input limits (bad-input and decompression-bomb protection).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest image in pixels.
    pub max_image_pixels: u64,
    /// Largest input file in bytes.
    pub max_file_bytes: u64,
    /// Longest single report in bytes.
    pub max_report_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_image_pixels: 150_000_000,
            max_file_bytes: 2 << 30,
            max_report_bytes: 100_000,
        }
    }
}

/// Feedback settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Name recorded with each decision; empty: the login name.
    pub annotator: String,
    /// Whether image tiles travel with their feedback (heads retrain from embeddings alone).
    pub send_images: bool,
    /// Whether report text travels with its feedback. Off by default: reports name people.
    pub send_reports: bool,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            annotator: String::new(),
            send_images: true,
            send_reports: false,
        }
    }
}

impl FeedbackConfig {
    /// The annotator name to record.
    pub fn annotator(&self) -> String {
        if !self.annotator.trim().is_empty() {
            return self.annotator.trim().to_string();
        }
        std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "field-staff".into())
    }

    /// Whether an item of this kind (`image` or `text`) travels with its feedback.
    pub fn include_content(&self, kind: &str) -> bool {
        match kind {
            "image" => self.send_images,
            _ => self.send_reports,
        }
    }
}

/// Over-the-air model updates.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// The root metadata (`root.json`) the operator pinned; empty: updates are off.
    pub root: Option<PathBuf>,
    /// Release channel: `stable` or `canary`.
    pub channel: String,
    /// Seconds between update checks in `outpost run`.
    pub check_interval_secs: u64,
    /// Versions kept per model (at least 2).
    pub keep_versions: usize,
    /// Whether `outpost sync` and `outpost run` check for updates.
    pub enabled: bool,
    /// A download try ends (resumably) when fewer than `download_min_bytes_per_sec` arrived
    /// over the last this many seconds (also the longest wait for the server's headers).
    pub download_stall_secs: u64,
    /// The slowest transfer rate a download try keeps going at, bytes per second.
    pub download_min_bytes_per_sec: u64,
    /// Consecutive tries that end cleanly at the same length short of the signed length
    /// before the file is refused (the server's copy is short, not the network).
    pub short_file_tries: u32,
    /// A USB update file whose signed timestamp expired more than this many days ago is
    /// refused (`outpost models install --allow-stale` overrides it, recorded).
    pub usb_max_stale_days: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            root: None,
            channel: "stable".into(),
            check_interval_secs: 3600,
            keep_versions: 3,
            enabled: true,
            download_stall_secs: 60,
            download_min_bytes_per_sec: 1024,
            short_file_tries: 3,
            usb_max_stale_days: 7,
        }
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the database and downloaded models live; empty: the XDG data dir.
    pub data_dir: Option<PathBuf>,
    /// The shipped model bundles (the installer's copy): the initial install and the
    /// fallback. Bundles installed or updated live under `<data_dir>/models` and take
    /// precedence once there. Empty: the `models/` folder of the source tree or installation.
    pub models_dir: Option<PathBuf>,
    /// ONNX Runtime.
    pub runtime: RuntimeConfig,
    /// Analysis.
    pub analyze: AnalyzeConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Feedback.
    pub feedback: FeedbackConfig,
    /// Drift monitoring.
    pub drift: crate::drift::DriftSettings,
    /// Model updates.
    pub update: UpdateConfig,
    /// How long reviewed and synced items stay on the laptop (`outpost purge`).
    pub retention: crate::store::retention::RetentionSettings,
}

fn default_config_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTPOST_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let user = directories::ProjectDirs::from("org", "outpost", "outpost")
        .map(|d| d.config_dir().join("agent.toml"));
    [user, Some(PathBuf::from("/etc/outpost/agent.toml"))]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

fn set_path(root: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = root;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.clone(), value);
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

impl AgentConfig {
    /// Loads the configuration: `file` (or the default file), then the environment.
    pub fn load(file: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let file = file.map(Path::to_path_buf).or_else(default_config_file);
        let mut table = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid {
                        origin: path.display().to_string(),
                        reason: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let short = [
            ("OUTPOST_DATA_DIR", vec!["data_dir"]),
            ("OUTPOST_MODELS_DIR", vec!["models_dir"]),
            ("OUTPOST_ORT_LIB", vec!["runtime", "library"]),
        ];
        for (var, path) in short {
            if let Ok(v) = std::env::var(var) {
                if !v.is_empty() {
                    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                    set_path(&mut table, &path, toml::Value::String(v));
                }
            }
        }
        for (k, v) in std::env::vars() {
            if let Some(rest) = k.strip_prefix("OUTPOST__") {
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                set_path(&mut table, &path, parse_env_value(&v));
            }
        }
        let origin = file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(defaults and environment)".into());
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin,
                reason: e.to_string(),
            })
    }

    /// The data folder (created by whoever writes to it).
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        directories::ProjectDirs::from("org", "outpost", "outpost")
            .map(|d| d.data_dir().to_path_buf())
            .unwrap_or_else(|| PathBuf::from(".outpost"))
    }

    /// The agent database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir().join("agent.db")
    }

    /// The folder of model bundles the agent runs: `<data_dir>/models` (installed and
    /// updated versions, each model's `active` one) once it holds bundles, else the
    /// shipped models.
    pub fn models_dir(&self) -> PathBuf {
        let data_models = self.data_dir().join("models");
        let has_bundles = |d: &Path| {
            crate::model::bundle::discover(d)
                .map(|v| !v.is_empty())
                .unwrap_or(false)
        };
        if has_bundles(&data_models) {
            return data_models;
        }
        self.shipped_models_dir()
    }

    /// The shipped models: `models_dir` if set, else the `models/` folder of the source
    /// tree or installation (or `<data_dir>/models` if there is none).
    pub fn shipped_models_dir(&self) -> PathBuf {
        if let Some(d) = &self.models_dir {
            return d.clone();
        }
        let has_bundles = |d: &Path| {
            crate::model::bundle::discover(d)
                .map(|v| !v.is_empty())
                .unwrap_or(false)
        };
        let data_models = self.data_dir().join("models");
        let mut candidates = vec![PathBuf::from("models")];
        if let Ok(exe) = std::env::current_exe() {
            for up in exe.ancestors().skip(1).take(4) {
                candidates.push(up.join("models"));
                candidates.push(up.join("share/outpost/models"));
            }
        }
        candidates
            .into_iter()
            .find(|d| has_bundles(d))
            .unwrap_or(data_models)
    }

    /// Settings of an update check.
    pub fn update_options(&self) -> crate::update::UpdateOptions {
        crate::update::UpdateOptions {
            data_dir: self.data_dir(),
            database: self.database_path(),
            pinned_root: self
                .update
                .root
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            channel: if self.update.channel.trim().is_empty() {
                "stable".into()
            } else {
                self.update.channel.trim().to_string()
            },
            shipped_models: Some(self.shipped_models_dir()),
            session: self.session_options(),
            keep_versions: self.update.keep_versions.max(2),
            limits: crate::update::UpdateLimits {
                stall: std::time::Duration::from_secs(self.update.download_stall_secs.max(1)),
                min_rate: self.update.download_min_bytes_per_sec,
                short_tries: self.update.short_file_tries.max(1),
                usb_max_stale: std::time::Duration::from_secs(
                    self.update.usb_max_stale_days.saturating_mul(86_400),
                ),
            },
        }
    }

    /// Session options from the runtime section.
    pub fn session_options(&self) -> crate::model::pool::SessionOptions {
        let mut o = crate::model::pool::SessionOptions::default();
        if self.runtime.intra_threads > 0 {
            o.intra_threads = self.runtime.intra_threads;
        }
        if self.runtime.sessions > 0 {
            o.max_sessions = self.runtime.sessions;
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/agent.toml");
        let t: toml::Table = text.parse().expect("config/agent.toml is valid TOML");
        let c: AgentConfig = toml::Value::Table(t)
            .try_into()
            .expect("config/agent.toml matches AgentConfig");
        assert_eq!(c.analyze.batch_size, AnalyzeConfig::default().batch_size);
    }

    #[test]
    fn env_values_parse_as_toml_or_string() {
        assert_eq!(parse_env_value("64"), toml::Value::Integer(64));
        assert_eq!(
            parse_env_value("/tmp/x"),
            toml::Value::String("/tmp/x".into())
        );
    }
}
