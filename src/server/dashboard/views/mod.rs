//! The dashboard's pages, rendered as HTML strings on the server. Every value that comes
//! from the database or the field goes through [`esc`]; device keys, embeddings and raw
//! feedback are never read here except in [`item_page`], which only the audited
//! "show item" request renders.

use super::plots::{self, Series};
use super::Action;
use crate::drift::DriftState;
use crate::server::repository::Repository;
use crate::server::store::{FeedbackItem, ServerStore, TrainingRun};
use crate::trust::Release;
use axum::http::StatusCode;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

mod device;
mod fleet;
mod learning;
mod models;

pub use device::device;
pub use fleet::{fleet, FleetQuery};
pub use learning::learning_loop;
pub use models::{models, run, PageQuery};

/// What every page shows around its content.
pub struct Frame {
    /// The signed-in operator.
    pub admin: String,
    /// The session's CSRF token, put into every form.
    pub csrf: String,
    /// The outcome of the last action, shown once.
    pub flash: Option<String>,
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes a path segment or query value.
pub fn url(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn csrf(frame: &Frame) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&frame.csrf)
    )
}

fn layout(frame: &Frame, title: &str, active: &str, body: &str) -> String {
    let nav: String = [
        ("fleet", "/admin/", "Fleet"),
        ("models", "/admin/models", "Models and releases"),
        ("loop", "/admin/loop", "The loop"),
        ("audit", "/admin/audit", "Audit log"),
    ]
    .iter()
    .map(|(k, href, label)| {
        format!(
            "<a href=\"{href}\"{}>{label}</a>",
            if *k == active {
                " class=\"active\""
            } else {
                ""
            }
        )
    })
    .collect();
    let flash = frame
        .flash
        .as_deref()
        .map(|m| format!("<p id=\"flash\" class=\"flash\">{}</p>", esc(m)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} — Outpost operators</title>\
         <link rel=\"stylesheet\" href=\"/admin/style.css\"></head><body data-page=\"{active}\">\
         <header><strong>Outpost</strong><nav>{nav}</nav><form method=\"post\" action=\"/admin/logout\" class=\"inline\">{}\
         <span id=\"who\">{}</span> <button type=\"submit\">Sign out</button></form></header><main>{flash}<h1>{}</h1>{body}</main></body></html>",
        esc(title),
        csrf(frame),
        esc(&frame.admin),
        esc(title)
    )
}

/// The sign-in form.
pub fn login_page(message: Option<&str>) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in — Outpost operators</title>\
         <link rel=\"stylesheet\" href=\"/admin/style.css\"></head><body data-page=\"login\"><main class=\"login\">\
         <h1>Outpost operators</h1>{}<form method=\"post\" action=\"/admin/login\" id=\"login\">\
         <label>Name <input name=\"name\" id=\"name\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\
         <p class=\"hint\">Accounts are made on the server: <code>outpost-server admin add NAME</code>.</p></main></body></html>",
        message
            .map(|m| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(m)))
            .unwrap_or_default()
    )
}

/// An error page.
pub fn error_page(status: StatusCode, message: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status}</title>\
         <link rel=\"stylesheet\" href=\"/admin/style.css\"></head><body data-page=\"error\"><main>\
         <h1>{}</h1><p class=\"error\" id=\"error\">{}</p><p><a href=\"/admin/\">Back to the dashboard</a></p></main></body></html>",
        esc(&status.to_string()),
        esc(message)
    )
}

pub(super) fn report_of(r: &TrainingRun) -> Option<Value> {
    r.report
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

pub(super) fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn opt(s: Option<&str>) -> String {
    s.map(esc).unwrap_or_else(|| "—".into())
}

/// A server or device time for people: to the second, in UTC (escaped).
fn when(s: &str) -> String {
    match parse_time(s) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => esc(s),
    }
}

fn opt_when(s: Option<&str>) -> String {
    s.map(when).unwrap_or_else(|| "—".into())
}

fn pct(x: Option<f64>) -> String {
    x.map(|x| format!("{:.1}%", 100.0 * x))
        .unwrap_or_else(|| "—".into())
}

fn f3(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.3}"))
        .unwrap_or_else(|| "—".into())
}

fn drift_class(s: DriftState) -> &'static str {
    match s {
        DriftState::Ok => "ok",
        DriftState::Watch => "watch",
        DriftState::Drifted => "bad",
    }
}

/// `GET /admin/audit`.
pub fn audit(store: &dyn ServerStore, frame: &Frame) -> Result<String, String> {
    let mut body = String::from("<table id=\"audit\"><thead><tr><th>When</th><th>Who</th><th>What</th><th>Detail</th></tr></thead><tbody>");
    for a in store.audit_log(500).map_err(|e| e.to_string())? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(&a.at),
            esc(&a.actor),
            esc(&a.action),
            esc(&a.detail)
        );
    }
    body.push_str("</tbody></table>");
    Ok(layout(frame, "Audit log", "audit", &body))
}

/// The confirmation step of an action.
pub fn confirm_page(frame: &Frame, action: &Action, token: &str) -> String {
    let body = format!(
        "<p id=\"confirm-what\" class=\"confirm\">{}</p><p class=\"hint\">Command: <code>outpost-server {}</code>. It is recorded in the audit log under your name.</p>\
         <form method=\"post\" action=\"/admin/confirm\" class=\"inline\">{}<input type=\"hidden\" name=\"token\" value=\"{}\">\
         <button type=\"submit\" id=\"confirm\" class=\"danger\">Confirm</button></form> <a href=\"{}\" id=\"cancel\">Cancel</a>",
        esc(&action.describe()),
        esc(action.command()),
        csrf(frame),
        esc(token),
        esc(&super::back_of(action)),
    );
    layout(frame, "Confirm", "confirm", &body)
}

/// One feedback item with its raw content (after an audited request).
pub fn item_page(frame: &Frame, item: &FeedbackItem) -> String {
    use base64::Engine;
    let s = &item.summary;
    let content = match (&item.content, item.content_type.as_deref()) {
        (None, _) => "<p>No raw content travelled with this decision (the agent's <code>feedback.send_images</code> / <code>send_reports</code> settings).</p>".to_string(),
        (Some(b), Some(ct)) if ["image/png", "image/jpeg", "image/tiff", "image/gif", "image/webp"].contains(&ct) => format!(
            "<img id=\"item-content\" alt=\"the item\" src=\"data:{ct};base64,{}\">",
            base64::engine::general_purpose::STANDARD.encode(b)
        ),
        (Some(b), _) => format!("<pre id=\"item-content\">{}</pre>", esc(&String::from_utf8_lossy(b))),
    };
    let body = format!(
        "<p class=\"hint\">This view was recorded in the audit log.</p><dl class=\"facts\"><dt>Model</dt><dd>{} {}</dd><dt>Labels</dt><dd>{}</dd><dt>Decision</dt><dd>{}</dd>\
         <dt>Annotator</dt><dd>{}</dd><dt>Decided</dt><dd>{}</dd><dt>Received</dt><dd>{}</dd><dt>Item</dt><dd>{}</dd></dl>{content}\
         <p><a href=\"/admin/devices/{}\">Back to the device</a></p>",
        esc(&s.model),
        esc(&s.model_version),
        esc(&s.labels.join(", ")),
        esc(&s.action),
        esc(&item.annotator),
        esc(&item.created_at),
        when(&s.received_at),
        esc(&item.item_id),
        url(&item.device_id)
    );
    layout(frame, "Feedback item", "item", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::DriftWindow;
    use crate::protocol::{DeviceModel, DeviceModelsReport, ModelFailure};
    use crate::server::store::SqliteServerStore;
    use crate::server::store::{DeviceStore, DriftStore};

    fn frame() -> Frame {
        Frame {
            admin: "alice".into(),
            csrf: "tok".into(),
            flash: None,
        }
    }

    fn window(state: DriftState) -> DriftWindow {
        DriftWindow {
            model_name: "landcover".into(),
            model_version: "1.0.0".into(),
            items: 50,
            novel: 40,
            score: 0.8,
            state,
            top_score_psi: None,
            label_psi: None,
            novel_labels: vec![("<b>SeaLake</b>".into(), 21)],
            novel_folders: vec![],
            started_at: "2026-11-28T00:00:00Z".into(),
            ended_at: "2026-11-28T00:01:00Z".into(),
            languages: vec![],
        }
    }

    /// The fleet on a real SQLite store: drift, update failures, pending feedback,
    /// filters and sorting; names from the field are escaped and keys never appear.
    #[test]
    fn fleet_shows_drift_failures_and_pending_and_filters() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteServerStore::open(&tmp.path().join("server.db")).unwrap();
        let a = store
            .add_device("north-1", "north", "c1", "2099-01-01T00:00:00Z")
            .unwrap();
        let key = [0xABu8; 32];
        store.enroll("c1", &key).unwrap();
        store
            .add_device("south-1", "south", "c2", "2099-01-01T00:00:00Z")
            .unwrap();
        store
            .record_device_models(
                &a.device_id,
                &DeviceModelsReport {
                    models: vec![DeviceModel {
                        model: "landcover".into(),
                        active_version: Some("1.0.0".into()),
                        pinned: None,
                        installed: vec!["1.0.0".into()],
                    }],
                    failures: vec![ModelFailure {
                        model: "landcover".into(),
                        version: Some("1.1.0".into()),
                        kind: "rolled_back".into(),
                        reason: "golden check failed".into(),
                        at: "2026-11-28T00:00:00Z".into(),
                    }],
                    pending_feedback: Some(7),
                    challenge: None,
                },
            )
            .unwrap();
        store
            .store_drift(&a.device_id, &[(1, window(DriftState::Drifted))])
            .unwrap();
        let html = fleet(&store, &frame(), &FleetQuery::default()).unwrap();
        assert!(
            html.contains("rolled_back 1.1.0: golden check failed"),
            "{html}"
        );
        assert!(html.contains("drifted (landcover)"));
        assert!(html.contains("<td class=\"num pending\">7</td>"));
        assert!(html.contains("landcover 1.0.0"));
        use base64::Engine;
        assert!(!html.contains(&base64::engine::general_purpose::STANDARD.encode(key)));
        assert!(!html.contains(&hex::encode(key)));
        assert!(html.find("north-1").unwrap() < html.find("south-1").unwrap());

        let only = |q: FleetQuery| fleet(&store, &frame(), &q).unwrap();
        let h = only(FleetQuery {
            drift: Some("drifted".into()),
            ..Default::default()
        });
        assert!(h.contains("data-device=\"north-1\"") && !h.contains("data-device=\"south-1\""));
        let h = only(FleetQuery {
            state: Some("awaiting".into()),
            ..Default::default()
        });
        assert!(!h.contains("data-device=\"north-1\"") && h.contains("data-device=\"south-1\""));
        let h = only(FleetQuery {
            problems: Some("1".into()),
            ..Default::default()
        });
        assert!(h.contains("data-device=\"north-1\"") && !h.contains("data-device=\"south-1\""));
        let h = only(FleetQuery {
            sort: Some("name".into()),
            desc: Some("1".into()),
            ..Default::default()
        });
        assert!(
            h.find("data-device=\"south-1\"").unwrap() < h.find("data-device=\"north-1\"").unwrap()
        );

        // The device page: the drift cause is escaped.
        let d = device(&store, &frame(), &a.device_id).unwrap();
        assert!(d.contains("&lt;b&gt;SeaLake&lt;/b&gt; (21)") && !d.contains("<b>SeaLake"));
        assert!(d.contains("golden check failed"));
        assert!(device(&store, &frame(), "nope")
            .unwrap_err()
            .starts_with("404 "));
    }

    #[test]
    fn escaping_and_urls() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("a b/c"), "a%20b%2Fc");
    }
}
