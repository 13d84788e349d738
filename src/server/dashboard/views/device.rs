//! One device's page (`GET /admin/devices/{id}`): its models, failed updates, drift
//! windows and newest feedback (without content).

use super::*;
use crate::server::store::Device;

/// `GET /admin/devices/{id}`.
pub fn device(store: &dyn ServerStore, frame: &Frame, id: &str) -> Result<String, String> {
    let d = store
        .device(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("404 no device {id}"))?;
    let sections = [
        facts(&d, frame),
        models(store, &d)?,
        failures(store, &d)?,
        drift(store, &d)?,
        feedback(store, &d, frame)?,
        audit(store, &d)?,
    ];
    Ok(layout(
        frame,
        &format!("Device {}", d.name),
        "device",
        &sections.concat(),
    ))
}

/// What the device is, and the revoke button while it is not revoked.
fn facts(d: &Device, frame: &Frame) -> String {
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
    body
}

/// The model versions it last reported.
fn models(store: &dyn ServerStore, d: &Device) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let mut body = String::new();
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
    body.push_str("</tbody></table>");
    Ok(body)
}

/// Every refused or rolled-back update it reported.
fn failures(store: &dyn ServerStore, d: &Device) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let mut body = String::new();
    body.push_str("<h2>Refused and rolled-back updates</h2><table><thead><tr><th>When</th><th>Model</th><th>Version</th><th>What</th><th>Reason</th></tr></thead><tbody>");
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
    body.push_str("</tbody></table>");
    Ok(body)
}

/// Its newest drift windows, with the likely cause of unfamiliar input.
fn drift(store: &dyn ServerStore, d: &Device) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let mut body = String::new();
    body.push_str("<h2>Drift windows</h2><table><thead><tr><th>Window</th><th>Model</th><th>State</th><th>Unfamiliar</th><th>Likely cause</th></tr></thead><tbody>");
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
    body.push_str("</tbody></table>");
    Ok(body)
}

/// Its newest feedback, labels only; the raw item is shown on an audited request.
fn feedback(store: &dyn ServerStore, d: &Device, frame: &Frame) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let mut body = String::new();
    body.push_str("<h2>Feedback received</h2><p class=\"hint\">Labels only. Raw content is shown on request, and each request is recorded in the audit log.</p>\
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
    body.push_str("</tbody></table>");
    Ok(body)
}

/// Audit records that name it.
fn audit(store: &dyn ServerStore, d: &Device) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let mut body = String::new();
    body.push_str("<h2>Audit records about this device</h2><table><thead><tr><th>When</th><th>Who</th><th>What</th><th>Detail</th></tr></thead><tbody>");
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
    Ok(body)
}
