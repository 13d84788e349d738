//! Decisions given without the review page: `outpost feedback give` (one item), `feedback
//! import` (a CSV of labels, e.g. from a GIS analyst's spreadsheet) and `feedback export`
//! (the outbox written to a USB file for a laptop that never gets online). They make the
//! same records the review page makes: labels are checked against the model's label set
//! (a label it does not know must be declared new), and each decision joins the outbox.

use crate::config::AgentConfig;
use crate::model::Manifest;
use crate::store::feedback::{Feedback, FeedbackError, LabelSpace, NewFeedback};
use crate::store::Store;
use std::path::Path;

/// Why a decision could not be given, imported or exported.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// The store refused it (unknown label, bad label, ...).
    #[error(transparent)]
    Feedback(#[from] FeedbackError),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// No analysed item matches what was named.
    #[error("no analysed item from {path:?}{}", .locator.as_ref().map(|l| format!(" at {l:?}")).unwrap_or_default())]
    NoItem {
        /// The source (path) given.
        path: String,
        /// The locator (row, tile) given.
        locator: Option<String>,
    },
    /// The item exists but no model predicted it.
    #[error("the item has no prediction")]
    NoPrediction,
    /// The model is not installed, so its labels cannot be checked.
    #[error("model {0:?} is not installed, so its labels cannot be checked")]
    ModelNotInstalled(String),
    /// The CSV file cannot be read, or lacks the columns it needs.
    #[error("{path}: {reason}")]
    Csv {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The USB file.
    #[error(transparent)]
    Usb(#[from] crate::store::usb::UsbFileError),
    /// Encryption at rest (whether the folder is encrypted).
    #[error(transparent)]
    Vault(#[from] crate::store::vault::VaultError),
    /// An encrypted agent with no key to seal the export with.
    #[error("this agent's data is encrypted, but it has no export key to seal the file with (it is not enrolled, or enrolled before sealed exports): enroll it, or pass --plain to write the decisions unencrypted")]
    NoExportKey,
    /// A database query.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// The label set of the newest installed version of model `name`.
pub fn label_space(manifests: &[Manifest], name: &str) -> Result<LabelSpace, DecisionError> {
    let m = manifests
        .iter()
        .filter(|m| m.name == name)
        .max_by_key(|m| crate::version::parse_version(&m.version))
        .ok_or_else(|| DecisionError::ModelNotInstalled(name.to_string()))?;
    Ok(LabelSpace {
        labels: m.labels.clone(),
        multi_label: m.multi_label,
    })
}

/// The item an id (64 hex digits) or a source path (and locator) names.
pub fn resolve_item(
    store: &Store,
    item: &str,
    locator: Option<&str>,
) -> Result<String, DecisionError> {
    if item.len() == 64 && item.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(item.to_string());
    }
    store
        .find_item(item, locator)?
        .ok_or_else(|| DecisionError::NoItem {
            path: item.to_string(),
            locator: locator.map(str::to_string),
        })
}

/// One decision to give.
#[derive(Debug, Clone)]
pub struct Give {
    /// Item id (64 hex digits) or the source path it was analysed from.
    pub item: String,
    /// Row or tile within the source, for sources with several items.
    pub locator: Option<String>,
    /// The model answered; default: the one that predicted the item last.
    pub model: Option<String>,
    /// The labels.
    pub labels: Vec<String>,
    /// Whether labels the model does not know are new classes (not typos).
    pub new_labels: bool,
}

/// Records one decision (into the outbox).
pub fn give(
    store: &mut Store,
    cfg: &AgentConfig,
    manifests: &[Manifest],
    g: Give,
) -> Result<Feedback, DecisionError> {
    let item_id = resolve_item(store, &g.item, g.locator.as_deref())?;
    let model = match g.model {
        Some(m) => m,
        None => store
            .item_models(&item_id)?
            .into_iter()
            .next()
            .ok_or(DecisionError::NoPrediction)?,
    };
    let space = label_space(manifests, &model)?;
    let kind: String = store
        .conn()
        .query_row(
            "SELECT kind FROM items WHERE item_id = ?1",
            [&item_id],
            |r| r.get(0),
        )
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => {
                FeedbackError::UnknownItem(item_id.clone()).into()
            }
            e => DecisionError::Sql(e),
        })?;
    let f = store.give_feedback(
        &NewFeedback {
            item_id,
            model_name: model,
            declared_new: if g.new_labels {
                g.labels.clone()
            } else {
                Vec::new()
            },
            labels: g.labels,
            annotator: cfg.feedback.annotator(),
            include_content: cfg.feedback.include_content(&kind),
        },
        &space,
    )?;
    Ok(f)
}

/// What [`import_csv`] did: decisions recorded, and each refused row with its reason.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// Rows recorded as decisions.
    pub recorded: usize,
    /// (line number, why) of every row refused; the others are still recorded.
    pub refused: Vec<(usize, String)>,
}

/// Columns of a labels CSV, by header name (any case): `item_id` or `source` (and
/// `locator`), `label` or `labels` (`;`-separated), optional `model`.
struct Columns {
    item: Option<usize>,
    source: Option<usize>,
    locator: Option<usize>,
    model: Option<usize>,
    labels: usize,
}

fn columns(path: &Path, headers: &csv::StringRecord) -> Result<Columns, DecisionError> {
    let col = |n: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(n));
    let bad = |reason: String| DecisionError::Csv {
        path: path.display().to_string(),
        reason,
    };
    let labels = col("labels").or_else(|| col("label")).ok_or_else(|| {
        bad(format!(
            "no label or labels column (found {:?})",
            headers.iter().collect::<Vec<_>>()
        ))
    })?;
    let c = Columns {
        item: col("item_id"),
        source: col("source"),
        locator: col("locator"),
        model: col("model"),
        labels,
    };
    if c.item.is_none() && c.source.is_none() {
        return Err(bad(
            "needs an item_id column, or source (and locator) columns".into(),
        ));
    }
    Ok(c)
}

/// Records a decision for every row of a labels CSV. A row that cannot be recorded is
/// refused with its line number and reason; the other rows still are.
pub fn import_csv(
    store: &mut Store,
    cfg: &AgentConfig,
    manifests: &[Manifest],
    file: &Path,
    allow_new_labels: bool,
) -> Result<Imported, DecisionError> {
    let csv_err = |e: csv::Error| DecisionError::Csv {
        path: file.display().to_string(),
        reason: e.to_string(),
    };
    let mut rdr = csv::Reader::from_path(file).map_err(csv_err)?;
    let headers = rdr.headers().map_err(csv_err)?.clone();
    let c = columns(file, &headers)?;
    let mut out = Imported::default();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let row = rec.map_err(|e| e.to_string()).and_then(|rec| {
            let get = |c: Option<usize>| {
                c.and_then(|c| rec.get(c))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            let item = get(c.item)
                .or_else(|| get(c.source))
                .ok_or_else(|| "empty source".to_string())?;
            let labels = get(Some(c.labels))
                .unwrap_or_default()
                .split(';')
                .map(str::to_string)
                .collect();
            let g = Give {
                item,
                locator: if get(c.item).is_some() {
                    None
                } else {
                    get(c.locator)
                },
                model: get(c.model),
                labels,
                new_labels: allow_new_labels,
            };
            give(store, cfg, manifests, g).map_err(|e| e.to_string())
        });
        match row {
            Ok(_) => out.recorded += 1,
            Err(why) => out.refused.push((line, why)),
        }
    }
    Ok(out)
}

/// What [`export_usb`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The file's header (records, sha256).
    pub header: crate::store::usb::UsbHeader,
    /// Whether it is sealed for the server this device enrolled with.
    pub sealed: bool,
}

/// Writes every pending decision to a USB feedback file, sealed with the export key the
/// server gave at enrollment. An encrypted agent without that key refuses unless `plain`.
/// The decisions stay pending until the agent syncs (the server stores each once).
pub fn export_usb(
    store: &Store,
    data_dir: &Path,
    file: &Path,
    plain: bool,
) -> Result<Exported, DecisionError> {
    let records = store.pending_records(usize::MAX >> 1)?;
    let key = store
        .state("export_key")?
        .and_then(|k| crate::encoding::unb64(&k).ok())
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .map(crate::store::usb::ExportKey)
        .filter(|_| !plain);
    let encrypted = !matches!(
        crate::store::vault::protection(data_dir)?,
        crate::store::vault::Protection::Plain
    );
    if key.is_none() && encrypted && !plain {
        return Err(DecisionError::NoExportKey);
    }
    let header = crate::store::usb::write(file, &records, store.state("device_id")?, key.as_ref())?;
    Ok(Exported {
        header,
        sealed: key.is_some(),
    })
}
