//! The fleet page (`GET /admin/`): every device with its group, state, models, feedback,
//! update problems and drift, filtered and sorted by the query string.

use super::*;

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
    let groups: Vec<String> = devices
        .iter()
        .map(|d| d.group.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rows: Vec<FleetRow> = devices
        .into_iter()
        .map(|d| fleet_row(d, &models, &drift))
        .filter(|r| q.keeps(r))
        .collect();
    let sort = q.sort.as_deref().unwrap_or("name");
    sort_rows(&mut rows, sort, q.desc.is_some());
    let mut body = filters_form(q, &groups, sort);
    body.push_str(&fleet_table(q, sort, &rows));
    Ok(layout(frame, "Fleet", "fleet", &body))
}

/// One device's row: its state, what it runs, its update problems and its worst drift.
fn fleet_row(
    d: crate::server::store::Device,
    models: &[crate::server::store::DeviceModelRow],
    drift: &[crate::server::store::DeviceDrift],
) -> FleetRow {
    let mine: Vec<_> = models
        .iter()
        .filter(|m| m.device_id == d.device_id)
        .collect();
    let worst = drift
        .iter()
        .filter(|w| w.device == d.name)
        .max_by_key(|w| w.latest.state as usize)
        .map(|w| (w.latest.state, w.latest.model_name.clone()));
    let state = if d.revoked_at.is_some() {
        "revoked"
    } else if d.enrolled_at.is_some() {
        "enrolled"
    } else {
        "awaiting"
    };
    FleetRow {
        state,
        id: d.device_id,
        name: d.name,
        group: d.group,
        last_seen: d.last_seen,
        models: mine
            .iter()
            .map(|m| {
                let pinned = m.pinned.as_ref().map(|p| format!(" (pinned {p})"));
                let version = m.active_version.as_deref().unwrap_or("none");
                format!("{} {version}{}", m.model, pinned.unwrap_or_default())
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
}

impl FleetQuery {
    /// Whether a row passes every filter that is set (an empty value is no filter).
    fn keeps(&self, r: &FleetRow) -> bool {
        let set = |v: &Option<String>| v.as_deref().filter(|v| !v.is_empty()).map(str::to_owned);
        let drift = r.drift.as_ref().map(|d| d.0.as_str()).unwrap_or("");
        set(&self.group).is_none_or(|g| r.group == g)
            && set(&self.state).is_none_or(|s| r.state == s)
            && set(&self.drift).is_none_or(|s| drift == s)
            && (self.problems.is_none() || !r.problems.is_empty())
            && set(&self.q).is_none_or(|s| r.name.to_lowercase().contains(&s.to_lowercase()))
    }

    /// The filters as query parameters, then `extra` (for the sorting links).
    fn with(&self, extra: &str) -> String {
        let mut p = Vec::new();
        for (k, v) in [
            ("group", &self.group),
            ("state", &self.state),
            ("drift", &self.drift),
            ("problems", &self.problems),
            ("q", &self.q),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                p.push(format!("{k}={}", url(v)));
            }
        }
        p.push(extra.to_string());
        p.join("&amp;")
    }
}

fn sort_rows(rows: &mut [FleetRow], sort: &str, desc: bool) {
    match sort {
        "group" => rows.sort_by(|a, b| (&a.group, &a.name).cmp(&(&b.group, &b.name))),
        "last_seen" => rows.sort_by(|a, b| a.last_seen.cmp(&b.last_seen)),
        "feedback" => rows.sort_by_key(|r| r.feedback),
        "pending" => rows.sort_by_key(|r| r.pending.unwrap_or(-1)),
        "drift" => rows.sort_by_key(|r| r.drift.as_ref().map(|d| d.0 as i32).unwrap_or(-1)),
        _ => rows.sort_by(|a, b| a.name.cmp(&b.name)),
    }
    if desc {
        rows.reverse();
    }
}

/// A `<select>` whose first option is "all" (no filter).
fn select(name: &str, options: &[String], current: &Option<String>) -> String {
    let mut s =
        format!("<select name=\"{name}\" id=\"filter-{name}\"><option value=\"\">all</option>");
    for o in options {
        let selected = if current.as_deref() == Some(o.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(s, "<option{selected}>{}</option>", esc(o));
    }
    s + "</select>"
}

fn filters_form(q: &FleetQuery, groups: &[String], sort: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/admin/\" class=\"filters\" id=\"filters\">\
         <label>Group {}</label><label>State {}</label><label>Drift {}</label>\
         <label><input type=\"checkbox\" name=\"problems\" value=\"1\"{}> update problems only</label>\
         <label>Name <input name=\"q\" value=\"{}\"></label><input type=\"hidden\" name=\"sort\" value=\"{}\">\
         <button type=\"submit\">Filter</button> <a href=\"/admin/\">clear</a></form>",
        select("group", groups, &q.group),
        select("state", &["enrolled".into(), "awaiting".into(), "revoked".into()], &q.state),
        select("drift", &["ok".into(), "watch".into(), "drifted".into()], &q.drift),
        if q.problems.is_some() { " checked" } else { "" },
        esc(q.q.as_deref().unwrap_or("")),
        esc(sort),
    )
}

/// A column head that sorts by `key` (again: the other way round).
fn sort_head(q: &FleetQuery, sort: &str, key: &str, label: &str) -> String {
    let desc = q.desc.is_some();
    let next_desc = sort == key && !desc;
    let arrow = match (sort == key, desc) {
        (true, true) => " ▼",
        (true, false) => " ▲",
        _ => "",
    };
    let link = q.with(&format!(
        "sort={key}{}",
        if next_desc { "&amp;desc=1" } else { "" }
    ));
    format!("<th><a href=\"/admin/?{link}\" data-sort=\"{key}\">{label}{arrow}</a></th>")
}

fn fleet_table(q: &FleetQuery, sort: &str, rows: &[FleetRow]) -> String {
    let head = |key: &str, label: &str| sort_head(q, sort, key, label);
    let mut body = String::new();
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
    for r in rows {
        body.push_str(&fleet_table_row(r));
    }
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"9\">No device matches. Add one with <code>outpost-server devices add</code>.</td></tr>");
    }
    body.push_str("</tbody></table>");
    body
}

fn fleet_table_row(r: &FleetRow) -> String {
    let join = |v: &[String], n: usize| {
        v.iter()
            .take(n)
            .map(|m| esc(m))
            .collect::<Vec<_>>()
            .join("<br>")
    };
    let models = if r.models.is_empty() {
        "—".into()
    } else {
        join(&r.models, usize::MAX)
    };
    let problems = if r.problems.is_empty() {
        String::new()
    } else {
        format!("<span class=\"bad\">{}</span>", join(&r.problems, 3))
    };
    let drift = match &r.drift {
        Some((s, m)) => format!(
            "<span class=\"{}\">{} ({})</span>",
            drift_class(*s),
            s.as_str(),
            esc(m)
        ),
        None => "—".into(),
    };
    format!(
        "<tr data-device=\"{}\"><td><a href=\"/admin/devices/{}\">{}</a></td><td>{}</td><td class=\"state-{}\">{}</td><td>{}</td>\
         <td class=\"models\">{models}</td><td class=\"num feedback\">{}</td><td class=\"num pending\">{}</td><td class=\"problems\">{problems}</td><td>{drift}</td></tr>",
        esc(&r.name),
        url(&r.id),
        esc(&r.name),
        esc(&r.group),
        r.state,
        r.state,
        opt_when(r.last_seen.as_deref()),
        r.feedback,
        r.pending.map(|p| p.to_string()).unwrap_or_else(|| "—".into()),
    )
}
