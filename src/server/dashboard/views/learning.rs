//! The loop page (`GET /admin/loop`): how long each arrow of the learning loop takes,
//! from a field decision to the model that learnt from it running on devices.

use super::*;

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
        body.push_str(&per_day(m, &days));
    }
    let runs = store.runs(None).map_err(e)?;
    body.push_str(&proposed_labels(store, repo, &runs)?);
    // Feedback to published model: for each published run, the feedback that arrived since
    // the previous run started, to the end of this run.
    body.push_str("<h2>From feedback to a published model</h2><p class=\"hint\">Per published run: how long the feedback it was the first to learn from waited, from its arrival until the model was published (the end of the run, or the operator's publish of a held candidate).</p>\
                   <table id=\"latency\"><thead><tr><th>Model</th><th>Release</th><th>New feedback</th><th>Median wait</th><th>Longest wait</th></tr></thead><tbody>");
    let audit = store.audit_log(100_000).map_err(e)?;
    let mut by_model: BTreeMap<String, Vec<&TrainingRun>> = BTreeMap::new();
    for r in &runs {
        by_model.entry(r.model_name.clone()).or_default().push(r);
    }
    for (m, rs) in by_model {
        let received: Vec<time::OffsetDateTime> = store
            .feedback_received(&m)
            .map_err(e)?
            .iter()
            .filter_map(|s| parse_time(s))
            .collect();
        body.push_str(&latency_rows(&m, rs, &received, &audit));
    }
    body.push_str("</tbody></table>");
    Ok(layout(frame, "The loop", "loop", &body))
}

/// One model's feedback per day and label: a stacked bar plot and the newest 60 rows.
fn per_day(m: &str, days: &[crate::server::store::FeedbackDay]) -> String {
    let mut body = String::new();
    let mine: Vec<_> = days.iter().filter(|d| d.model == m).collect();
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
    body
}

/// Labels the model does not know yet: proposed in the field, and not among the labels of
/// a live (published, not withdrawn) release built by a training run.
fn proposed_labels(
    store: &dyn ServerStore,
    repo: &Repository,
    runs: &[TrainingRun],
) -> Result<String, String> {
    let e = |e: crate::server::store::ServerStoreError| e.to_string();
    let mut body = String::new();
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
    Ok(body)
}

/// Per published run of one model: how long the feedback it was the first to learn from
/// waited until the model was published.
fn latency_rows(
    m: &str,
    mut rs: Vec<&TrainingRun>,
    received: &[time::OffsetDateTime],
    audit: &[crate::server::store::AuditRecord],
) -> String {
    let mut body = String::new();
    rs.sort_by_key(|r| r.run_id);
    let mut prev_start: Option<time::OffsetDateTime> = None;
    for r in rs {
        let start = parse_time(&r.started_at);
        if r.status == crate::server::store::RunStatus::Published {
            // Published by hand: the first `models publish` of its bundle.
            let by_hand = r.bundle_dir.as_deref().and_then(|dir| {
                audit
                    .iter()
                    .filter(|a| {
                        a.action == "models publish" && a.detail.starts_with(&format!("{dir} to "))
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
                    esc(m),
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
    body
}
