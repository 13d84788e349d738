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

// ---------------------------------------------------------------------------------------
// Fleet

/// Filters and sorting of the fleet table (query parameters).
#[derive(Debug, Default, serde::Deserialize)]
pub struct FleetQuery {
    /// Only this group.
    pub group: Option<String>,
    /// `enrolled`, `awaiting` or `revoked`.
    pub state: Option<String>,
    /// `ok`, `watch` or `drifted`.
    pub drift: Option<String>,
    /// Only devices with refused or rolled-back updates.
    pub problems: Option<String>,
    /// Name contains.
    pub q: Option<String>,
    /// `name`, `group`, `last_seen`, `feedback`, `pending`, `drift`.
    pub sort: Option<String>,
    /// Descending.
    pub desc: Option<String>,
}

struct FleetRow {
    id: String,
    name: String,
    group: String,
    state: &'static str,
    last_seen: Option<String>,
    models: Vec<String>,
    feedback: i64,
    pending: Option<i64>,
    problems: Vec<String>,
    drift: Option<(DriftState, String)>,
}

/// `GET /admin/`.
pub fn fleet(store: &dyn ServerStore, frame: &Frame, q: &FleetQuery) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let devices = store.devices().map_err(e)?;
    let models = store.device_models().map_err(e)?;
    let drift = store.drift_latest().map_err(e)?;
    let groups: BTreeSet<String> = devices.iter().map(|d| d.group.clone()).collect();
    let mut rows: Vec<FleetRow> = devices
        .into_iter()
        .map(|d| {
            let mine: Vec<_> = models
                .iter()
                .filter(|m| m.device_id == d.device_id)
                .collect();
            let worst = drift
                .iter()
                .filter(|w| w.device == d.name)
                .max_by_key(|w| w.latest.state as usize)
                .map(|w| (w.latest.state, w.latest.model_name.clone()));
            FleetRow {
                state: if d.revoked_at.is_some() {
                    "revoked"
                } else if d.enrolled_at.is_some() {
                    "enrolled"
                } else {
                    "awaiting"
                },
                id: d.device_id,
                name: d.name,
                group: d.group,
                last_seen: d.last_seen,
                models: mine
                    .iter()
                    .map(|m| {
                        format!(
                            "{} {}{}",
                            m.model,
                            m.active_version.as_deref().unwrap_or("none"),
                            m.pinned
                                .as_ref()
                                .map(|p| format!(" (pinned {p})"))
                                .unwrap_or_default()
                        )
                    })
                    .collect(),
                feedback: d.feedback,
                pending: d.pending_feedback,
                problems: mine
                    .iter()
                    .flat_map(|m| m.failures.iter())
                    .map(|(v, kind, reason, _)| {
                        format!("{kind} {}: {reason}", v.as_deref().unwrap_or("metadata"))
                    })
                    .collect(),
                drift: worst,
            }
        })
        .filter(|r| {
            q.group
                .as_deref()
                .is_none_or(|g| g.is_empty() || r.group == g)
        })
        .filter(|r| {
            q.state
                .as_deref()
                .is_none_or(|s| s.is_empty() || r.state == s)
        })
        .filter(|r| {
            q.drift.as_deref().is_none_or(|s| {
                s.is_empty() || r.drift.as_ref().map(|d| d.0.as_str()).unwrap_or("") == s
            })
        })
        .filter(|r| q.problems.is_none() || !r.problems.is_empty())
        .filter(|r| {
            q.q.as_deref()
                .is_none_or(|s| s.is_empty() || r.name.to_lowercase().contains(&s.to_lowercase()))
        })
        .collect();
    let sort = q.sort.as_deref().unwrap_or("name");
    match sort {
        "group" => rows.sort_by(|a, b| (&a.group, &a.name).cmp(&(&b.group, &b.name))),
        "last_seen" => rows.sort_by(|a, b| a.last_seen.cmp(&b.last_seen)),
        "feedback" => rows.sort_by_key(|r| r.feedback),
        "pending" => rows.sort_by_key(|r| r.pending.unwrap_or(-1)),
        "drift" => rows.sort_by_key(|r| r.drift.as_ref().map(|d| d.0 as i32).unwrap_or(-1)),
        _ => rows.sort_by(|a, b| a.name.cmp(&b.name)),
    }
    let desc = q.desc.is_some();
    if desc {
        rows.reverse();
    }
    let keep = |extra: &str| {
        let mut p = Vec::new();
        for (k, v) in [
            ("group", &q.group),
            ("state", &q.state),
            ("drift", &q.drift),
            ("problems", &q.problems),
            ("q", &q.q),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                p.push(format!("{k}={}", url(v)));
            }
        }
        p.push(extra.to_string());
        p.join("&amp;")
    };
    let head = |key: &str, label: &str| {
        let next_desc = sort == key && !desc;
        format!(
            "<th><a href=\"/admin/?{}\" data-sort=\"{key}\">{label}{}</a></th>",
            keep(&format!(
                "sort={key}{}",
                if next_desc { "&amp;desc=1" } else { "" }
            )),
            if sort == key {
                if desc {
                    " ▼"
                } else {
                    " ▲"
                }
            } else {
                ""
            }
        )
    };
    let select = |name: &str, options: &[String], current: &Option<String>| {
        let mut s =
            format!("<select name=\"{name}\" id=\"filter-{name}\"><option value=\"\">all</option>");
        for o in options {
            let _ = write!(
                s,
                "<option{}>{}</option>",
                if current.as_deref() == Some(o.as_str()) {
                    " selected"
                } else {
                    ""
                },
                esc(o)
            );
        }
        s + "</select>"
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/admin/\" class=\"filters\" id=\"filters\">\
         <label>Group {}</label><label>State {}</label><label>Drift {}</label>\
         <label><input type=\"checkbox\" name=\"problems\" value=\"1\"{}> update problems only</label>\
         <label>Name <input name=\"q\" value=\"{}\"></label><input type=\"hidden\" name=\"sort\" value=\"{}\">\
         <button type=\"submit\">Filter</button> <a href=\"/admin/\">clear</a></form>",
        select("group", &groups.into_iter().collect::<Vec<_>>(), &q.group),
        select("state", &["enrolled".into(), "awaiting".into(), "revoked".into()], &q.state),
        select("drift", &["ok".into(), "watch".into(), "drifted".into()], &q.drift),
        if q.problems.is_some() { " checked" } else { "" },
        esc(q.q.as_deref().unwrap_or("")),
        esc(sort),
    );
    let _ = write!(
        body,
        "<table id=\"fleet\"><thead><tr>{}{}<th>State</th>{}<th>Models running</th>{}{}<th>Failed or rolled-back updates</th>{}</tr></thead><tbody>",
        head("name", "Device"),
        head("group", "Group"),
        head("last_seen", "Last seen"),
        head("feedback", "Feedback synced"),
        head("pending", "Pending on device"),
        head("drift", "Drift"),
    );
    for r in &rows {
        let _ = write!(
            body,
            "<tr data-device=\"{}\"><td><a href=\"/admin/devices/{}\">{}</a></td><td>{}</td><td class=\"state-{}\">{}</td><td>{}</td>\
             <td class=\"models\">{}</td><td class=\"num feedback\">{}</td><td class=\"num pending\">{}</td><td class=\"problems\">{}</td><td>{}</td></tr>",
            esc(&r.name),
            url(&r.id),
            esc(&r.name),
            esc(&r.group),
            r.state,
            r.state,
            opt_when(r.last_seen.as_deref()),
            if r.models.is_empty() { "—".into() } else { r.models.iter().map(|m| esc(m)).collect::<Vec<_>>().join("<br>") },
            r.feedback,
            r.pending.map(|p| p.to_string()).unwrap_or_else(|| "—".into()),
            if r.problems.is_empty() { String::new() } else {
                format!("<span class=\"bad\">{}</span>", r.problems.iter().take(3).map(|p| esc(p)).collect::<Vec<_>>().join("<br>"))
            },
            match &r.drift {
                Some((s, m)) => format!("<span class=\"{}\">{} ({})</span>", drift_class(*s), s.as_str(), esc(m)),
                None => "—".into(),
            }
        );
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"9\">No device matches. Add one with <code>outpost-server devices add</code>.</td></tr>");
    }
    body.push_str("</tbody></table>");
    Ok(layout(frame, "Fleet", "fleet", &body))
}

// ---------------------------------------------------------------------------------------
// A device

/// `GET /admin/devices/{id}`.
pub fn device(store: &dyn ServerStore, frame: &Frame, id: &str) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let d = store
        .device(id)
        .map_err(e)?
        .ok_or_else(|| format!("404 no device {id}"))?;
    let mut body = String::new();
    let _ = write!(
        body,
        "<dl class=\"facts\"><dt>Group</dt><dd>{}</dd><dt>Enrolled</dt><dd>{}</dd><dt>Last seen</dt><dd>{}</dd>\
         <dt>Revoked</dt><dd id=\"revoked\">{}</dd><dt>Feedback synced</dt><dd>{}</dd><dt>Pending on device</dt><dd>{}</dd></dl>",
        esc(&d.group),
        opt_when(d.enrolled_at.as_deref()),
        opt_when(d.last_seen.as_deref()),
        opt_when(d.revoked_at.as_deref()),
        d.feedback,
        d.pending_feedback.map(|p| p.to_string()).unwrap_or_else(|| "not reported".into()),
    );
    if d.revoked_at.is_none() {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/admin/actions/revoke\" class=\"action\">{}<input type=\"hidden\" name=\"device_id\" value=\"{}\">\
             <button type=\"submit\" class=\"danger\" id=\"revoke\">Revoke this device…</button></form>",
            csrf(frame),
            esc(&d.device_id)
        );
    }
    body.push_str("<h2>Models</h2><table><thead><tr><th>Model</th><th>Running</th><th>Pinned</th><th>Reported</th></tr></thead><tbody>");
    for m in store
        .device_models()
        .map_err(e)?
        .iter()
        .filter(|m| m.device_id == d.device_id)
    {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&m.model),
            opt(m.active_version.as_deref()),
            opt(m.pinned.as_deref()),
            when(&m.reported_at)
        );
    }
    body.push_str("</tbody></table><h2>Refused and rolled-back updates</h2><table><thead><tr><th>When</th><th>Model</th><th>Version</th><th>What</th><th>Reason</th></tr></thead><tbody>");
    for f in store.device_failures(&d.device_id).map_err(e)? {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"bad\">{}</td><td>{}</td></tr>",
            esc(&f.at),
            esc(&f.model),
            opt(f.version.as_deref()),
            esc(&f.kind),
            esc(&f.reason)
        );
    }
    body.push_str("</tbody></table><h2>Drift windows</h2><table><thead><tr><th>Window</th><th>Model</th><th>State</th><th>Unfamiliar</th><th>Likely cause</th></tr></thead><tbody>");
    for w in store.device_drift(&d.device_id, 30).map_err(e)? {
        let cause: Vec<String> = w
            .novel_labels
            .iter()
            .map(|(l, n)| format!("{} ({n})", esc(l)))
            .chain(
                w.novel_folders
                    .iter()
                    .map(|(f, n)| format!("{} ({n})", esc(f))),
            )
            .collect();
        let _ = write!(
            body,
            "<tr><td>{} – {}</td><td>{} {}</td><td class=\"{}\">{}</td><td>{}/{}</td><td>{}</td></tr>",
            esc(&w.started_at),
            esc(&w.ended_at),
            esc(&w.model_name),
            esc(&w.model_version),
            drift_class(w.state),
            w.state.as_str(),
            w.novel,
            w.items,
            cause.join(", ")
        );
    }
    body.push_str("</tbody></table><h2>Feedback received</h2><p class=\"hint\">Labels only. Raw content is shown on request, and each request is recorded in the audit log.</p>\
                   <table id=\"feedback\"><thead><tr><th>Received</th><th>Model</th><th>Kind</th><th>Decision</th><th>Labels</th><th></th></tr></thead><tbody>");
    for f in store.device_feedback(&d.device_id, 100).map_err(e)? {
        let _ = write!(
            body,
            "<tr data-feedback=\"{}\"><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>\
             <form method=\"post\" action=\"/admin/feedback/{}/show\" class=\"inline\">{}<button type=\"submit\" class=\"show-item\">Show item</button></form></td></tr>",
            esc(&f.feedback_id),
            when(&f.received_at),
            esc(&f.model),
            esc(&f.model_version),
            esc(&f.kind),
            esc(&f.action),
            esc(&f.labels.join(", ")),
            url(&f.feedback_id),
            csrf(frame)
        );
    }
    body.push_str("</tbody></table><h2>Audit records about this device</h2><table><thead><tr><th>When</th><th>Who</th><th>What</th><th>Detail</th></tr></thead><tbody>");
    for a in
        store.audit_log(2000).map_err(e)?.into_iter().filter(|a| {
            a.detail.contains(&d.device_id) || a.detail.contains(&format!("{} (", d.name))
        })
    {
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
    Ok(layout(
        frame,
        &format!("Device {}", d.name),
        "device",
        &body,
    ))
}

// ---------------------------------------------------------------------------------------
// Models and releases

fn report_of(r: &TrainingRun) -> Option<Value> {
    r.report
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

fn release_form(frame: &Frame, r: &Release) -> String {
    format!(
        "<form method=\"post\" action=\"/admin/actions/stage\" class=\"inline stage\">{c}\
         <input type=\"hidden\" name=\"model\" value=\"{m}\"><input type=\"hidden\" name=\"version\" value=\"{v}\">\
         <input type=\"hidden\" name=\"channel\" value=\"{ch}\">\
         <input name=\"percent\" type=\"number\" min=\"0\" max=\"100\" value=\"{p}\" aria-label=\"percent\">% \
         <input name=\"groups\" placeholder=\"groups (comma)\" value=\"{g}\" aria-label=\"groups\">\
         <label><input type=\"checkbox\" name=\"all_groups\" value=\"1\"> all groups</label> \
         <button type=\"submit\">Stage…</button></form>\
         <form method=\"post\" action=\"/admin/actions/withdraw\" class=\"inline\">{c}\
         <input type=\"hidden\" name=\"model\" value=\"{m}\"><input type=\"hidden\" name=\"version\" value=\"{v}\">\
         <input type=\"hidden\" name=\"channel\" value=\"{ch}\"><button type=\"submit\" class=\"danger withdraw\">Withdraw…</button></form>",
        c = csrf(frame),
        m = esc(&r.model),
        v = esc(&r.version),
        ch = esc(&r.channel),
        p = r.percent,
        g = esc(&r.groups.join(",")),
    )
}

/// Rows of each table of the models page per page.
pub const MODELS_PER_PAGE: usize = 20;

/// The page asked for (`?page=N`, from 1).
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    /// 1-based page number.
    pub page: Option<usize>,
}

impl PageQuery {
    fn index(&self) -> usize {
        self.page.unwrap_or(1).max(1) - 1
    }
}

/// The rows of page `index` (0-based) of `rows`.
fn page_of<T>(rows: &[T], index: usize) -> &[T] {
    let start = (index * MODELS_PER_PAGE).min(rows.len());
    &rows[start..(start + MODELS_PER_PAGE).min(rows.len())]
}

/// "Releases 21–40 of 45" under a table.
fn page_count(what: &str, shown: usize, total: usize, index: usize) -> String {
    if total <= MODELS_PER_PAGE {
        return String::new();
    }
    let first = index * MODELS_PER_PAGE + 1;
    if shown == 0 {
        return format!("<p class=\"page-count\">No {what} on this page ({total} in all).</p>");
    }
    format!(
        "<p class=\"page-count\">{what} {first}–{} of {total}, newest first.</p>",
        first + shown - 1
    )
}

/// Newer / older links, if some table has more than one page.
fn pager(index: usize, longest: usize) -> String {
    let pages = longest.div_ceil(MODELS_PER_PAGE).max(1);
    if pages <= 1 && index == 0 {
        return String::new();
    }
    let mut s = format!(
        "<nav class=\"pager\" aria-label=\"pages\">Page {} of {pages} ",
        index + 1
    );
    if index > 0 {
        let _ = write!(
            s,
            "<a href=\"/admin/models?page={index}\" rel=\"prev\">← newer</a> "
        );
    }
    if index + 1 < pages {
        let _ = write!(
            s,
            "<a href=\"/admin/models?page={}\" rel=\"next\">older →</a>",
            index + 2
        );
    }
    s + "</nav>"
}

/// A stored reason for display: runs stored before reasons said "all groups" carry a raw
/// `[]` ("published to stable [] 100%").
fn reason_text(reason: &str) -> String {
    reason.replace(" [] ", " all groups ")
}

/// `GET /admin/models`: each model's releases and training runs, [`MODELS_PER_PAGE`] of
/// each per page, newest first.
pub fn models(
    store: &dyn ServerStore,
    repo: &Repository,
    frame: &Frame,
    q: &PageQuery,
) -> Result<String, String> {
    let index = q.index();
    let mut longest = 0usize;
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let targets = crate::server::repository::published_targets(repo).map_err(|e| e.to_string())?;
    let releases: Vec<Release> = targets.map(|t| t.releases).unwrap_or_default();
    let runs = store.runs(None).map_err(e)?;
    let running = store.device_models().map_err(e)?;
    let mut names: BTreeSet<String> = releases.iter().map(|r| r.model.clone()).collect();
    names.extend(runs.iter().map(|r| r.model_name.clone()));
    let mut body = String::new();
    if names.is_empty() {
        body.push_str(
            "<p>Nothing published yet: <code>outpost-server models publish models/NAME</code>.</p>",
        );
    }
    for name in &names {
        let _ = write!(
            body,
            "<section class=\"model\" data-model=\"{}\"><h2>{}</h2>",
            esc(name),
            esc(name)
        );
        if releases.iter().any(|r| &r.model == name) {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/admin/actions/train\" class=\"action\">{}<input type=\"hidden\" name=\"model\" value=\"{}\">\
                 <button type=\"submit\" class=\"train\">Train now…</button></form>",
                csrf(frame),
                esc(name)
            );
        }
        body.push_str("<h3>Releases</h3><table class=\"releases\"><thead><tr><th>Version</th><th>Channel</th><th>Groups</th><th>Rollout</th><th>Devices running it</th><th>State</th><th>Actions</th></tr></thead><tbody>");
        let mine_releases: Vec<&Release> =
            releases.iter().filter(|r| &r.model == name).rev().collect();
        longest = longest.max(mine_releases.len());
        let shown = page_of(&mine_releases, index);
        for r in shown.iter().copied() {
            let n = running
                .iter()
                .filter(|m| {
                    &m.model == name && m.active_version.as_deref() == Some(r.version.as_str())
                })
                .count();
            let _ = write!(
                body,
                "<tr data-release=\"{} {} {}\"><td>{}</td><td>{}</td><td>{}</td><td>{}%</td><td class=\"num\">{n}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                esc(&r.model),
                esc(&r.version),
                esc(&r.channel),
                esc(&r.version),
                esc(&r.channel),
                if r.groups.is_empty() { "all".into() } else { esc(&r.groups.join(", ")) },
                r.percent,
                if r.withdrawn { "bad" } else { "ok" },
                if r.withdrawn { "withdrawn" } else { "live" },
                if r.withdrawn { String::new() } else { release_form(frame, r) }
            );
        }
        body.push_str("</tbody></table>");
        body.push_str(&page_count(
            "Releases",
            shown.len(),
            mine_releases.len(),
            index,
        ));
        body.push_str("<h3>Candidates from training runs</h3><table class=\"runs\"><thead><tr><th>Run</th><th>Candidate</th><th>From</th><th>Started</th><th>Trigger</th><th>Outcome</th><th>Held-out feedback accuracy</th><th>Reason</th><th>Actions</th></tr></thead><tbody>");
        let mine: Vec<&TrainingRun> = runs.iter().filter(|r| &r.model_name == name).collect();
        longest = longest.max(mine.len());
        let shown = page_of(&mine, index);
        for r in shown {
            let rep = report_of(r);
            let acc = rep
                .as_ref()
                .map(|v| f3(&v["feedback_holdout"]["candidate"]["accuracy"]))
                .unwrap_or_else(|| "—".into());
            let publish = match (&r.candidate_version, &r.bundle_dir) {
                (Some(v), Some(_)) if r.status != crate::server::store::RunStatus::Published => format!(
                    "<form method=\"post\" action=\"/admin/actions/publish\" class=\"inline publish\">{}\
                     <input type=\"hidden\" name=\"model\" value=\"{}\"><input type=\"hidden\" name=\"version\" value=\"{}\">\
                     <select name=\"channel\" aria-label=\"channel\"><option>canary</option><option>stable</option></select>\
                     <input name=\"groups\" placeholder=\"groups (comma)\" aria-label=\"groups\">\
                     <input name=\"percent\" type=\"number\" min=\"0\" max=\"100\" value=\"10\" aria-label=\"percent\">% \
                     <button type=\"submit\">Publish…</button></form>",
                    csrf(frame),
                    esc(name),
                    esc(v)
                ),
                _ => String::new(),
            };
            let _ = write!(
                body,
                "<tr data-run=\"{}\" data-candidate=\"{}\"><td><a href=\"/admin/runs/{}\" class=\"report\">#{} report</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"status-{}\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                r.run_id,
                esc(r.candidate_version.as_deref().unwrap_or("")),
                r.run_id,
                r.run_id,
                opt(r.candidate_version.as_deref()),
                esc(&r.base_version),
                when(&r.started_at),
                r.trigger.as_str(),
                r.status.as_str(),
                r.status.as_str(),
                acc,
                esc(&reason_text(&r.reason)),
                publish
            );
        }
        body.push_str("</tbody></table>");
        body.push_str(&page_count("Training runs", shown.len(), mine.len(), index));
        // Metrics from version to version: the first run's current model, then each
        // candidate, oldest first.
        let mut x: Vec<String> = Vec::new();
        let mut cols: [Vec<Option<f64>>; 4] = Default::default();
        let pick = |v: &Value, set: &str, who: &str, k: &str| v[set][who][k].as_f64();
        for (i, r) in mine
            .iter()
            .rev()
            .filter_map(|r| report_of(r).map(|v| (r, v)))
            .enumerate()
        {
            let (_, v) = r;
            if i == 0 {
                x.push(v["base_version"].as_str().unwrap_or("?").to_string());
                cols[0].push(pick(&v, "feedback_holdout", "current", "accuracy"));
                cols[1].push(pick(&v, "feedback_holdout", "current", "macro_f1"));
                cols[2].push(pick(&v, "base_holdout", "current", "accuracy"));
                cols[3].push(pick(&v, "base_holdout", "current", "macro_f1"));
            }
            x.push(v["candidate_version"].as_str().unwrap_or("?").to_string());
            cols[0].push(pick(&v, "feedback_holdout", "candidate", "accuracy"));
            cols[1].push(pick(&v, "feedback_holdout", "candidate", "macro_f1"));
            cols[2].push(pick(&v, "base_holdout", "candidate", "accuracy"));
            cols[3].push(pick(&v, "base_holdout", "candidate", "macro_f1"));
        }
        if !x.is_empty() {
            let names = [
                "accuracy, held-out feedback",
                "macro-F1, held-out feedback",
                "accuracy, held-out base data",
                "macro-F1, held-out base data",
            ];
            let series: Vec<Series> = names
                .iter()
                .zip(cols)
                .map(|(n, values)| Series {
                    name: n.to_string(),
                    values,
                })
                .collect();
            let _ = write!(
                body,
                "<h3>Metrics from version to version</h3><figure class=\"plot metrics\">{}<figcaption>Each candidate on the held-out data of its own run (the first point: the model it started from).</figcaption></figure>",
                plots::lines(&format!("{name}: held-out metrics by version"), &x, &series)
            );
        }
        body.push_str("</section>");
    }
    body.push_str(&pager(index, longest));
    Ok(layout(frame, "Models and releases", "models", &body))
}

/// `GET /admin/runs/{id}`: a run's evaluation report.
pub fn run(
    store: &dyn ServerStore,
    _repo: &Repository,
    frame: &Frame,
    id: i64,
) -> Result<String, String> {
    let r = store
        .runs(None)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|r| r.run_id == id)
        .ok_or_else(|| format!("404 no training run #{id}"))?;
    let mut body = String::new();
    let _ = write!(
        body,
        "<dl class=\"facts\"><dt>Model</dt><dd>{}</dd><dt>Candidate</dt><dd id=\"candidate\">{}</dd><dt>From</dt><dd>{}</dd>\
         <dt>Outcome</dt><dd id=\"outcome\" class=\"status-{}\">{}</dd><dt>Why</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd></dl>",
        esc(&r.model_name),
        opt(r.candidate_version.as_deref()),
        esc(&r.base_version),
        r.status.as_str(),
        r.status.as_str(),
        esc(&reason_text(&r.reason)),
        when(&r.started_at),
        opt_when(r.finished_at.as_deref()),
    );
    let Some(v) = report_of(&r) else {
        body.push_str("<p>This run has no evaluation report (it failed before evaluating).</p>");
        return Ok(layout(frame, &format!("Training run #{id}"), "run", &body));
    };
    let labels: Vec<String> = v["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let new: BTreeSet<String> = v["new_labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let g = &v["gate"];
    let passed = g["passed"].as_bool() == Some(true);
    let _ = write!(
        body,
        "<p id=\"gate\" class=\"{}\">Gate {} (tolerance {})</p><ul>{}</ul>",
        if passed { "ok" } else { "bad" },
        if passed { "passed" } else { "failed" },
        f3(&g["tolerance"]),
        g["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("<li>{}</li>", esc(p.as_str().unwrap_or(""))))
            .collect::<String>()
    );
    let d = &v["data"];
    let _ = write!(
        body,
        "<p>Data: base {} trained on, {} held out; field decisions {} trained on, {} held out, {} skipped. Labels new to this model: {}.</p>",
        d["base_train"], d["base_holdout"], d["feedback_train"], d["feedback_holdout"], d["feedback_skipped"],
        if new.is_empty() { "none".to_string() } else { esc(&new.iter().cloned().collect::<Vec<_>>().join(", ")) }
    );
    for (title, key) in [
        ("Held-out field feedback", "feedback_holdout"),
        ("Held-out base data", "base_holdout"),
    ] {
        let c = &v[key];
        let _ = write!(
            body,
            "<section class=\"eval\" id=\"{key}\"><h2>{title} ({} rows)</h2><table class=\"metrics\"><thead><tr><th></th><th>current</th><th>candidate</th></tr></thead><tbody>",
            c["candidate"]["count"]
        );
        for (name, k) in [
            ("accuracy", "accuracy"),
            ("macro-F1", "macro_f1"),
            ("accuracy, known labels", "known_accuracy"),
            ("macro-F1, known labels", "known_macro_f1"),
        ] {
            let _ = write!(
                body,
                "<tr><td>{name}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                f3(&c["current"][k]),
                f3(&c["candidate"][k])
            );
        }
        body.push_str("</tbody></table><table class=\"per-label\"><thead><tr><th>Label</th><th>Held-out rows</th><th>Precision (current)</th><th>Precision (candidate)</th><th>Recall (current)</th><th>Recall (candidate)</th></tr></thead><tbody>");
        for (j, l) in labels.iter().enumerate() {
            let _ = write!(
                body,
                "<tr data-label=\"{}\"><td>{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(l),
                esc(l),
                if new.contains(l) { " <em>(new)</em>" } else { "" },
                c["support"][j].as_u64().unwrap_or(0),
                pct(c["current"]["precision"][j].as_f64()),
                pct(c["candidate"]["precision"][j].as_f64()),
                pct(c["current"]["recall"][j].as_f64()),
                pct(c["candidate"]["recall"][j].as_f64()),
            );
        }
        body.push_str("</tbody></table>");
        let conf: Vec<Vec<u64>> = c["candidate"]["confusion"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r.as_array()
                            .map(|r| r.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !conf.is_empty() {
            let _ = write!(
                body,
                "<figure class=\"plot confusion\">{}<figcaption>Rows: the true label; columns: the candidate's label. Green: right; red: confused.</figcaption></figure>",
                plots::confusion(&format!("Confusion matrix of the candidate, {}", title.to_lowercase()), &labels, &conf)
            );
        }
        body.push_str("</section>");
    }
    if let (Some(ver), Some(_), false) = (
        &r.candidate_version,
        &r.bundle_dir,
        r.status == crate::server::store::RunStatus::Published,
    ) {
        let _ = write!(
            body,
            "<h2>Publish this candidate</h2><form method=\"post\" action=\"/admin/actions/publish\" class=\"action publish\">{}\
             <input type=\"hidden\" name=\"model\" value=\"{}\"><input type=\"hidden\" name=\"version\" value=\"{}\">\
             <label>Channel <select name=\"channel\"><option>canary</option><option>stable</option></select></label>\
             <label>Groups <input name=\"groups\" placeholder=\"comma-separated; empty: all\"></label>\
             <label>Percent <input name=\"percent\" type=\"number\" min=\"0\" max=\"100\" value=\"10\"></label>\
             <button type=\"submit\">Publish…</button></form>",
            csrf(frame),
            esc(&r.model_name),
            esc(ver)
        );
    }
    Ok(layout(
        frame,
        &format!("Training run #{id}: evaluation report"),
        "run",
        &body,
    ))
}

// ---------------------------------------------------------------------------------------
// The loop

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn duration(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 2.0 * 3600.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 2.0 * 86400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} days", secs / 86400.0)
    }
}

/// `GET /admin/loop`.
pub fn learning_loop(
    store: &dyn ServerStore,
    repo: &Repository,
    frame: &Frame,
) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let days = store.feedback_per_day().map_err(e)?;
    let mut body = String::new();
    let models: BTreeSet<String> = days.iter().map(|d| d.model.clone()).collect();
    body.push_str("<h2>Feedback arriving per day and label</h2>");
    if models.is_empty() {
        body.push_str("<p>No feedback received yet.</p>");
    }
    for m in &models {
        let mine: Vec<_> = days.iter().filter(|d| &d.model == m).collect();
        let x: Vec<String> = mine
            .iter()
            .map(|d| d.day.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let labels: BTreeSet<String> = mine.iter().map(|d| d.label.clone()).collect();
        let series: Vec<Series> = labels
            .iter()
            .map(|l| Series {
                name: l.clone(),
                values: x
                    .iter()
                    .map(|day| {
                        mine.iter()
                            .find(|d| &d.day == day && &d.label == l)
                            .map(|d| d.count as f64)
                    })
                    .collect(),
            })
            .collect();
        let _ = write!(
            body,
            "<figure class=\"plot per-day\" data-model=\"{}\">{}</figure><table class=\"per-day\"><thead><tr><th>Day</th><th>Label</th><th>Feedback</th></tr></thead><tbody>",
            esc(m),
            plots::stacked_bars(&format!("{m}: feedback per day"), &x, &series)
        );
        for d in mine.iter().rev().take(60) {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(&d.day),
                esc(&d.label),
                d.count
            );
        }
        body.push_str("</tbody></table>");
    }
    // Labels the model does not know yet: proposed in the field, and not among the labels
    // of a live (published, not withdrawn) release built by a training run.
    let runs = store.runs(None).map_err(e)?;
    let live: BTreeSet<(String, String)> = crate::server::repository::published_targets(repo)
        .map_err(|e| e.to_string())?
        .map(|t| t.releases)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r.withdrawn)
        .map(|r| (r.model, r.version))
        .collect();
    let learnt: BTreeSet<(String, String)> = runs
        .iter()
        .filter(|r| {
            r.candidate_version
                .as_ref()
                .is_some_and(|v| live.contains(&(r.model_name.clone(), v.clone())))
        })
        .filter_map(|r| report_of(r).map(|v| (r.model_name.clone(), v)))
        .flat_map(|(m, v)| {
            v["labels"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |l| l.as_str().map(|l| (m.clone(), l.to_string())))
        })
        .collect();
    body.push_str("<h2>Labels proposed in the field</h2><table id=\"new-labels\"><thead><tr><th>Model</th><th>Label</th><th>Feedback</th><th>Devices</th><th>First received</th><th>In a live release</th></tr></thead><tbody>");
    for l in store.field_labels().map_err(e)? {
        let known = learnt.contains(&(l.model.clone(), l.label.clone()));
        let _ = write!(
            body,
            "<tr data-label=\"{}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&l.label),
            esc(&l.model),
            esc(&l.label),
            l.count,
            l.devices,
            when(&l.first_at),
            if known { "ok" } else { "watch" },
            if known { "yes" } else { "not yet" }
        );
    }
    body.push_str("</tbody></table>");
    // Feedback to published model: for each published run, the feedback that arrived since
    // the previous run started, to the end of this run.
    body.push_str("<h2>From feedback to a published model</h2><p class=\"hint\">Per published run: how long the feedback it was the first to learn from waited, from its arrival until the model was published (the end of the run, or the operator's publish of a held candidate).</p>\
                   <table id=\"latency\"><thead><tr><th>Model</th><th>Release</th><th>New feedback</th><th>Median wait</th><th>Longest wait</th></tr></thead><tbody>");
    let audit = store.audit_log(100_000).map_err(e)?;
    let mut by_model: BTreeMap<String, Vec<&TrainingRun>> = BTreeMap::new();
    for r in &runs {
        by_model.entry(r.model_name.clone()).or_default().push(r);
    }
    for (m, mut rs) in by_model {
        rs.sort_by_key(|r| r.run_id);
        let received: Vec<time::OffsetDateTime> = store
            .feedback_received(&m)
            .map_err(e)?
            .iter()
            .filter_map(|s| parse_time(s))
            .collect();
        let mut prev_start: Option<time::OffsetDateTime> = None;
        for r in rs {
            let start = parse_time(&r.started_at);
            if r.status == crate::server::store::RunStatus::Published {
                // Published by hand: the first `models publish` of its bundle.
                let by_hand = r.bundle_dir.as_deref().and_then(|dir| {
                    audit
                        .iter()
                        .filter(|a| {
                            a.action == "models publish"
                                && a.detail.starts_with(&format!("{dir} to "))
                        })
                        .filter_map(|a| parse_time(&a.at))
                        .min()
                });
                let end = by_hand.or_else(|| r.finished_at.as_deref().and_then(parse_time));
                if let (Some(s), Some(end)) = (start, end) {
                    let mut waits: Vec<f64> = received
                        .iter()
                        .filter(|t| **t <= s && prev_start.is_none_or(|p| **t > p))
                        .map(|t| (end - *t).as_seconds_f64())
                        .collect();
                    waits.sort_by(f64::total_cmp);
                    let _ = write!(
                        body,
                        "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&m),
                        opt(r.candidate_version.as_deref()),
                        waits.len(),
                        waits.get(waits.len() / 2).map(|w| duration(*w)).unwrap_or_else(|| "—".into()),
                        waits.last().map(|w| duration(*w)).unwrap_or_else(|| "—".into()),
                    );
                }
            }
            if start.is_some() {
                prev_start = start;
            }
        }
    }
    body.push_str("</tbody></table>");
    Ok(layout(frame, "The loop", "loop", &body))
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
