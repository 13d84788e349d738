//! Export of stored predictions as JSON, CSV or GeoJSON.
//!
//! One row per prediction and place its item was seen (`item_sightings`): the same tile in
//! two scenes is analysed once and exported at both footprints. With a run, only the places
//! that run saw.
//!
//! GeoJSON is written for GIS analysts: one Feature per georeferenced tile, a Polygon
//! footprint in WGS84 (RFC 7946), and flat properties (QGIS shows nested objects as text),
//! including one `score_<label>` column per label. CSV carries the same footprint as WKT in
//! a `wkt` column, which QGIS's "Delimited Text" layer reads as geometry.

use crate::store::{Store, StoreError};
use rusqlite::params;
use serde_json::{json, Map, Value};
use std::io::Write;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A JSON array, one object per prediction.
    Json,
    /// Comma-separated values with a header row.
    Csv,
    /// A GeoJSON FeatureCollection of the georeferenced tiles.
    Geojson,
}

impl Format {
    /// The format a file name asks for by its extension (`.json`, `.csv`, `.geojson`).
    pub fn from_path(p: &std::path::Path) -> Option<Format> {
        match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "geojson" => Some(Format::Geojson),
            _ => None,
        }
    }
}

/// One exported prediction at one place its item was seen.
#[derive(Debug, Clone)]
pub struct ExportRow {
    /// Item id (content hash).
    pub item_id: String,
    /// `image` or `text`.
    pub kind: String,
    /// Source file.
    pub source: String,
    /// Where in the file.
    pub locator: Option<String>,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// Labels decided.
    pub labels: Vec<String>,
    /// Top label.
    pub top_label: String,
    /// Its score.
    pub top_score: f64,
    /// Label -> score, in the model's label order.
    pub scores: Vec<(String, f64)>,
    /// GeoJSON geometry, if georeferenced.
    pub geometry: Option<Value>,
    /// The report's language (ISO 639-3), if known ([`crate::language`]).
    pub language: Option<String>,
}

/// Which predictions to export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Only this run (the predictions it produced or saw, at the places it saw them).
    pub run_id: Option<i64>,
    /// Only this model.
    pub model_name: Option<String>,
}

/// Reads the predictions to export, with label names from the manifests of the models that
/// made them (`labels_of` gives a model's label list by name and version).
pub fn load_rows(
    store: &Store,
    filter: &ExportFilter,
    labels_of: &dyn Fn(&str, &str) -> Option<Vec<String>>,
) -> Result<Vec<ExportRow>, StoreError> {
    let mut st = store.conn().prepare(
        "SELECT p.item_id, i.kind, s.source, NULLIF(s.locator, ''), p.model_name, p.model_version,
                p.labels, p.top_label, p.top_score, p.scores, NULLIF(s.geometry, ''), i.language
         FROM predictions p JOIN items i ON i.item_id = p.item_id
              JOIN item_sightings s ON s.item_id = p.item_id
         WHERE (?1 IS NULL OR (p.run_id = ?1 AND s.last_run_id = ?1))
           AND (?2 IS NULL OR p.model_name = ?2)
         ORDER BY s.source, p.prediction_id, s.sighting_id",
    )?;
    let rows = st.query_map(params![filter.run_id, filter.model_name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, f64>(8)?,
            r.get::<_, String>(9)?,
            r.get::<_, Option<String>>(10)?,
            r.get::<_, Option<String>>(11)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            item_id,
            kind,
            source,
            locator,
            model_name,
            model_version,
            labels,
            top_label,
            top_score,
            scores,
            geometry,
            language,
        ) = row?;
        let scores: Vec<f64> = serde_json::from_str(&scores).unwrap_or_default();
        let names = labels_of(&model_name, &model_version)
            .filter(|n| n.len() == scores.len())
            .unwrap_or_else(|| (0..scores.len()).map(|i| format!("label_{i}")).collect());
        out.push(ExportRow {
            item_id,
            kind,
            source,
            locator,
            model_name,
            model_version,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            top_label,
            top_score,
            scores: names.into_iter().zip(scores).collect(),
            geometry: geometry.and_then(|g| serde_json::from_str(&g).ok()),
            language,
        });
    }
    Ok(out)
}

/// Writes rows in a format. Returns how many rows were left out (GeoJSON: rows without a
/// geometry).
pub fn write(rows: &[ExportRow], format: Format, out: &mut dyn Write) -> std::io::Result<usize> {
    match format {
        Format::Json => write_json(rows, out),
        Format::Csv => write_csv(rows, out),
        Format::Geojson => write_geojson(rows, out),
    }
}

fn write_json(rows: &[ExportRow], out: &mut dyn Write) -> std::io::Result<usize> {
    let arr: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "item_id": r.item_id, "kind": r.kind, "source": r.source, "locator": r.locator,
                "model": r.model_name, "model_version": r.model_version, "labels": r.labels,
                "top_label": r.top_label, "top_score": r.top_score,
                "scores": r.scores.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
                "geometry": r.geometry, "language": r.language,
            })
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &arr)?;
    writeln!(out)?;
    Ok(0)
}

/// CSV: one row per prediction, a `score_<label>` column per label any row has.
fn write_csv(rows: &[ExportRow], out: &mut dyn Write) -> std::io::Result<usize> {
    let mut w = csv::Writer::from_writer(out);
    // Score columns: the union of label names, in first-seen order.
    let mut score_cols: Vec<String> = Vec::new();
    for r in rows {
        for (k, _) in &r.scores {
            if !score_cols.contains(k) {
                score_cols.push(k.clone());
            }
        }
    }
    let mut header: Vec<String> = [
        "item_id",
        "kind",
        "source",
        "locator",
        "model",
        "model_version",
        "labels",
        "top_label",
        "top_score",
        "wkt",
        "language",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(score_cols.iter().map(|c| format!("score_{c}")));
    w.write_record(&header)?;
    for r in rows {
        let mut rec = vec![
            r.item_id.clone(),
            r.kind.clone(),
            r.source.clone(),
            r.locator.clone().unwrap_or_default(),
            r.model_name.clone(),
            r.model_version.clone(),
            r.labels.join(";"),
            r.top_label.clone(),
            format!("{:.6}", r.top_score),
            r.geometry.as_ref().map(wkt).unwrap_or_default(),
            r.language.clone().unwrap_or_default(),
        ];
        for c in &score_cols {
            rec.push(
                r.scores
                    .iter()
                    .find(|(k, _)| k == c)
                    .map(|(_, v)| format!("{v:.6}"))
                    .unwrap_or_default(),
            );
        }
        w.write_record(&rec)?;
    }
    w.flush()?;
    Ok(0)
}

/// GeoJSON for QGIS: one feature per prediction that has a geometry.
fn write_geojson(rows: &[ExportRow], out: &mut dyn Write) -> std::io::Result<usize> {
    let mut features = Vec::new();
    let mut left_out = 0;
    for r in rows {
        let Some(g) = &r.geometry else {
            left_out += 1;
            continue;
        };
        let mut props = Map::new();
        props.insert("item_id".into(), json!(r.item_id));
        props.insert("source".into(), json!(r.source));
        props.insert("locator".into(), json!(r.locator));
        props.insert("model".into(), json!(r.model_name));
        props.insert("model_version".into(), json!(r.model_version));
        props.insert("top_label".into(), json!(r.top_label));
        props.insert("top_score".into(), json!(r.top_score));
        props.insert("labels".into(), json!(r.labels.join(";")));
        for (k, v) in &r.scores {
            props.insert(format!("score_{k}"), json!(v));
        }
        features.push(
            json!({"type": "Feature", "id": features.len(), "geometry": g, "properties": props}),
        );
    }
    let fc = json!({"type": "FeatureCollection", "features": features});
    serde_json::to_writer(&mut *out, &fc)?;
    writeln!(out)?;
    Ok(left_out)
}

/// WKT of a GeoJSON Polygon (the only geometry the agent writes).
fn wkt(g: &Value) -> String {
    let Some(rings) = g.get("coordinates").and_then(|c| c.as_array()) else {
        return String::new();
    };
    let rings: Vec<String> = rings
        .iter()
        .filter_map(|ring| ring.as_array())
        .map(|ring| {
            let pts: Vec<String> = ring
                .iter()
                .filter_map(|p| {
                    let p = p.as_array()?;
                    Some(format!("{} {}", p.first()?.as_f64()?, p.get(1)?.as_f64()?))
                })
                .collect();
            format!("({})", pts.join(", "))
        })
        .collect();
    format!("POLYGON ({})", rings.join(", "))
}

/// Writes rows to a file through a temporary file and a rename, so that a reader (QGIS
/// watching the file) never sees half of it. Returns how many rows were left out, as
/// [`write`] does.
pub fn write_file(
    rows: &[ExportRow],
    format: Format,
    path: &std::path::Path,
) -> std::io::Result<usize> {
    let with_path =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let tmp = path.with_extension("partial");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(with_path)?);
    let left_out = write(rows, format, &mut f)?;
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(with_path)?;
    Ok(left_out)
}
