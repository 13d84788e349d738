//! The text pipeline's pure parts: read reports from files (one per `.txt`/`.md` file, one
//! per row of a CSV or line of a JSON Lines file), tokenize them with the bundle's
//! Hugging Face tokenizer, and group them into batches of similar length (padding is
//! wasted work: sorting by length before batching roughly halves the cost on real reports).

use super::InputError;
use ndarray::Array2;
use std::path::Path;
use tokenizers::Tokenizer;

/// Column or field names tried, in order, when none is configured.
pub const DEFAULT_TEXT_FIELDS: [&str; 6] = [
    "message",
    "text",
    "report",
    "body",
    "content",
    "description",
];

/// How reports are read.
#[derive(Debug, Clone)]
pub struct TextOptions {
    /// CSV column or JSON field holding the report; `None` tries [`DEFAULT_TEXT_FIELDS`].
    pub field: Option<String>,
    /// Longest report accepted, in bytes (longer ones are refused, not cut silently).
    pub max_report_bytes: usize,
    /// Largest text file accepted, in bytes.
    pub max_file_bytes: u64,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            field: None,
            max_report_bytes: 100_000,
            max_file_bytes: 1 << 30,
        }
    }
}

/// One written report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where in the file: `row 12` or `line 3`; `None` for a whole file.
    pub locator: Option<String>,
    /// The text.
    pub text: String,
}

/// Text formats the agent reads, by extension.
pub fn is_text_path(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("txt" | "md" | "markdown" | "csv" | "jsonl" | "ndjson")
    )
}

/// Content hash of a report (whitespace at the ends does not make a new item).
pub fn report_hash(text: &str) -> String {
    let mut h = crate::hash::Hasher::default();
    h.update(b"outpost-report-v1")
        .update(text.trim().as_bytes());
    h.finish_hex()
}

fn check_text(text: &str, opts: &TextOptions) -> Result<(), InputError> {
    if text.trim().is_empty() {
        return Err(InputError::EmptyText);
    }
    if text.len() > opts.max_report_bytes {
        return Err(InputError::TextTooLong {
            size: text.len(),
            limit: opts.max_report_bytes,
        });
    }
    Ok(())
}

/// Share of control characters (other than tab, newline, carriage return, form feed) from
/// which valid UTF-8 is still refused as binary.
const MAX_CONTROL_SHARE: f64 = 0.01;

/// Refuses binary content named as text: any NUL byte (no text format has one; an
/// all-NUL file is valid UTF-8), or more than 1% control characters.
pub fn check_is_text(text: &str) -> Result<(), InputError> {
    if let Some(at) = text.find('\0') {
        return Err(InputError::NotText(format!(
            "it holds NUL bytes (the first at byte {at}), which no text file has"
        )));
    }
    let (mut control, mut all) = (0usize, 0usize);
    for c in text.chars() {
        all += 1;
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{c}') {
            control += 1;
        }
    }
    if all > 0 && control as f64 > MAX_CONTROL_SHARE * all as f64 {
        return Err(InputError::NotText(format!(
            "{control} of its {all} characters are control characters"
        )));
    }
    Ok(())
}

/// Where a CSV quote opens and never closes, as (line, lines after it), or `None`.
/// Follows the CSV reader's rules: a quote opens only at the start of a field; inside,
/// `""` is a quote and a lone `"` closes.
pub fn unclosed_quote(text: &str) -> Option<(u64, u64)> {
    let (mut line, mut open_line) = (1u64, 0u64);
    let (mut in_quotes, mut field_start) = (false, true);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    in_quotes = false;
                }
            }
            continue;
        }
        if c == '"' && field_start {
            in_quotes = true;
            open_line = line;
        }
        field_start = matches!(c, ',' | '\n' | '\r');
    }
    let last = line - u64::from(text.ends_with('\n'));
    in_quotes.then_some((open_line, last.saturating_sub(open_line)))
}

/// Reads the reports in one file. A file-level problem is an `Err`; a problem with one row
/// or line goes into the returned list of per-row failures and the rest is read.
#[allow(clippy::type_complexity)]
pub fn read_reports(
    path: &Path,
    opts: &TextOptions,
) -> Result<(Vec<Report>, Vec<(String, InputError)>), InputError> {
    let meta = std::fs::metadata(path).map_err(InputError::Io)?;
    if meta.len() == 0 {
        return Err(InputError::Empty);
    }
    if meta.len() > opts.max_file_bytes {
        return Err(InputError::TooLarge {
            size: meta.len(),
            limit: opts.max_file_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(InputError::Io)?;
    let text = String::from_utf8(bytes).map_err(|e| InputError::NotUtf8 {
        offset: e.utf8_error().valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    check_is_text(text)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "csv" => read_csv(text, opts),
        "jsonl" | "ndjson" => read_jsonl(text, opts),
        _ => {
            check_text(text, opts)?;
            Ok((
                vec![Report {
                    locator: None,
                    text: text.to_string(),
                }],
                Vec::new(),
            ))
        }
    }
}

fn pick_field<'a>(
    names: impl Iterator<Item = &'a str> + Clone,
    opts: &TextOptions,
) -> Result<String, InputError> {
    if let Some(f) = &opts.field {
        return names
            .clone()
            .find(|n| n == f)
            .map(str::to_string)
            .ok_or_else(|| InputError::NoTextField {
                wanted: vec![f.clone()],
                found: names.map(str::to_string).collect(),
            });
    }
    for want in DEFAULT_TEXT_FIELDS {
        if let Some(n) = names.clone().find(|n| n.eq_ignore_ascii_case(want)) {
            return Ok(n.to_string());
        }
    }
    Err(InputError::NoTextField {
        wanted: DEFAULT_TEXT_FIELDS.iter().map(|s| s.to_string()).collect(),
        found: names.map(str::to_string).collect(),
    })
}

#[allow(clippy::type_complexity)]
fn read_csv(
    text: &str,
    opts: &TextOptions,
) -> Result<(Vec<Report>, Vec<(String, InputError)>), InputError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| InputError::Decode(format!("CSV header: {e}")))?
        .clone();
    let field = pick_field(headers.iter(), opts)?;
    let col = headers.iter().position(|h| h == field).unwrap_or(0);
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    // A quote that never closes swallows the rest of the file into its record; that
    // record is refused with the line the quote opens on, not read as one long report.
    // It is always the last record, as it runs to the end of the file.
    let unclosed = unclosed_quote(text);
    let records: Vec<_> = rdr.records().collect();
    if let (Some((line, swallowed)), true) = (unclosed, records.is_empty()) {
        return Err(InputError::UnclosedQuote { line, swallowed });
    }
    let last = records.len();
    for (i, rec) in records.into_iter().enumerate() {
        let row = format!("row {}", i + 2); // the header is row 1, as in a spreadsheet
        if let Some((line, swallowed)) = unclosed.filter(|_| i + 1 == last) {
            failed.push((row, InputError::UnclosedQuote { line, swallowed }));
            continue;
        }
        match rec {
            Err(e) => failed.push((row, InputError::Decode(e.to_string()))),
            Ok(r) => match r.get(col) {
                None => failed.push((row, InputError::EmptyText)),
                Some(t) => match check_text(t, opts) {
                    Ok(()) => reports.push(Report {
                        locator: Some(row),
                        text: t.to_string(),
                    }),
                    Err(e) => failed.push((row, e)),
                },
            },
        }
    }
    Ok((reports, failed))
}

#[allow(clippy::type_complexity)]
fn read_jsonl(
    text: &str,
    opts: &TextOptions,
) -> Result<(Vec<Report>, Vec<(String, InputError)>), InputError> {
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let loc = format!("line {}", i + 1);
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                failed.push((loc, InputError::Decode(format!("not JSON: {e}"))));
                continue;
            }
        };
        let Some(obj) = v.as_object() else {
            failed.push((loc, InputError::Decode("not a JSON object".into())));
            continue;
        };
        let field = match pick_field(obj.keys().map(String::as_str), opts) {
            Ok(f) => f,
            Err(e) => {
                failed.push((loc, e));
                continue;
            }
        };
        match obj.get(&field).and_then(|t| t.as_str()) {
            None => failed.push((
                loc,
                InputError::Decode(format!("field {field:?} is not a string")),
            )),
            Some(t) => match check_text(t, opts) {
                Ok(()) => reports.push(Report {
                    locator: Some(loc),
                    text: t.to_string(),
                }),
                Err(e) => failed.push((loc, e)),
            },
        }
    }
    Ok((reports, failed))
}

pub use crate::model::tokenizer::load_tokenizer;

/// A tokenized report.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<i64>,
    /// Token type ids.
    pub type_ids: Vec<i64>,
    /// Whether the report was longer than the model's `max_length` and cut.
    pub truncated: bool,
}

/// Tokenizes one report.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Encoded, String> {
    let enc = tok.encode(text, true).map_err(|e| e.to_string())?;
    Ok(Encoded {
        ids: enc.get_ids().iter().map(|&i| i as i64).collect(),
        type_ids: enc.get_type_ids().iter().map(|&i| i as i64).collect(),
        truncated: !enc.get_overflowing().is_empty(),
    })
}

/// Groups indices of `encoded` into batches of at most `batch_size`, shortest first, so
/// each batch pads to a length close to that of its members.
pub fn length_batches(encoded: &[Encoded], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| encoded[i].ids.len());
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// Pads a batch to its longest member: (ids, attention mask, token type ids).
pub fn pad_batch(batch: &[&Encoded], pad_id: i64) -> (Array2<i64>, Array2<i64>, Array2<i64>) {
    let len = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
    let mut ids = Array2::from_elem((batch.len(), len), pad_id);
    let mut mask = Array2::zeros((batch.len(), len));
    let mut types = Array2::zeros((batch.len(), len));
    for (r, e) in batch.iter().enumerate() {
        for (c, &id) in e.ids.iter().enumerate() {
            ids[(r, c)] = id;
            mask[(r, c)] = 1;
            types[(r, c)] = e.type_ids.get(c).copied().unwrap_or(0);
        }
    }
    (ids, mask, types)
}

/// The padding id of a tokenizer: its `[PAD]` token, or 0.
pub fn pad_id(tok: &Tokenizer) -> i64 {
    tok.token_to_id("[PAD]").map(|i| i as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_quote_that_never_closes_is_unclosed() {
        // Closed quotes, doubled quotes, a quoted field over two lines, a quote inside an
        // unquoted field: all well-formed.
        let good =
            "id,message\n1,\"a, b\"\n2,\"she said \"\"go\"\"\"\n3,\"two\nlines\"\n4,5\" tall\n";
        assert_eq!(unclosed_quote(good), None);
        let bad = "id,message\n1,ok\n2,\"never closed\n3,x\n4,y\n";
        assert_eq!(unclosed_quote(bad), Some((3, 2)));
        let (reports, failed) = read_csv(bad, &TextOptions::default()).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "row 3");
        assert_eq!(failed[0].1.code(), "unclosed-quote");
        let (reports, failed) = read_csv(good, &TextOptions::default()).unwrap();
        assert_eq!((reports.len(), failed.len()), (4, 0));
    }

    #[test]
    fn binary_content_is_not_text() {
        assert!(check_is_text("A report.\n\tWith a tab\r\n").is_ok());
        assert!(check_is_text("caf\u{e9} na\u{ef}ve \u{1F600}").is_ok());
        assert_eq!(check_is_text("\0\0\0").unwrap_err().code(), "not-text");
        let junk: String = (0..200u8).map(|i| char::from(1 + i % 8)).collect();
        assert_eq!(check_is_text(&junk).unwrap_err().code(), "not-text");
    }
}
