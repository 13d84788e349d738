//! The models page (`GET /admin/models`) with releases, candidates and their actions,
//! and one training run's page (`GET /admin/runs/{id}`).

use super::*;

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
    let mut longest = 0usize;
    for name in &names {
        let mine_releases: Vec<&Release> =
            releases.iter().filter(|r| &r.model == name).rev().collect();
        let mine_runs: Vec<&TrainingRun> = runs.iter().filter(|r| &r.model_name == name).collect();
        longest = longest.max(mine_releases.len()).max(mine_runs.len());
        let _ = write!(
            body,
            "<section class=\"model\" data-model=\"{}\"><h2>{}</h2>",
            esc(name),
            esc(name)
        );
        if !mine_releases.is_empty() {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/admin/actions/train\" class=\"action\">{}<input type=\"hidden\" name=\"model\" value=\"{}\">\
                 <button type=\"submit\" class=\"train\">Train now…</button></form>",
                csrf(frame),
                esc(name)
            );
        }
        body.push_str(&releases_table(
            frame,
            name,
            &mine_releases,
            &running,
            index,
        ));
        body.push_str(&runs_table(frame, name, &mine_runs, index));
        body.push_str(&metrics_plot(name, &mine_runs));
        body.push_str("</section>");
    }
    body.push_str(&pager(index, longest));
    Ok(layout(frame, "Models and releases", "models", &body))
}

/// One page of a model's releases, newest first, with how many devices run each.
fn releases_table(
    frame: &Frame,
    name: &str,
    mine_releases: &[&Release],
    running: &[crate::server::store::DeviceModelRow],
    index: usize,
) -> String {
    let mut body = String::from("<h3>Releases</h3><table class=\"releases\"><thead><tr><th>Version</th><th>Channel</th><th>Groups</th><th>Rollout</th><th>Devices running it</th><th>State</th><th>Actions</th></tr></thead><tbody>");
    let shown = page_of(mine_releases, index);
    for r in shown.iter().copied() {
        let n = running
            .iter()
            .filter(|m| m.model == name && m.active_version.as_deref() == Some(r.version.as_str()))
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
    body
}

/// One page of a model's training runs, each with its candidate's publish form.
fn runs_table(frame: &Frame, name: &str, mine: &[&TrainingRun], index: usize) -> String {
    let mut body = String::from("<h3>Candidates from training runs</h3><table class=\"runs\"><thead><tr><th>Run</th><th>Candidate</th><th>From</th><th>Started</th><th>Trigger</th><th>Outcome</th><th>Held-out feedback accuracy</th><th>Reason</th><th>Actions</th></tr></thead><tbody>");
    let shown = page_of(mine, index);
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
    body
}

/// Metrics from version to version: the first run's current model, then each candidate,
/// oldest first.
fn metrics_plot(name: &str, mine: &[&TrainingRun]) -> String {
    let mut body = String::new();
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
    body
}

/// The strings of a JSON array (none if it is not one).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The gate's verdict and problems, and what data the run used.
fn gate_and_data(v: &Value, new: &BTreeSet<String>) -> String {
    let mut body = String::new();
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
    body
}

/// One held-out set: overall metrics, per-label precision and recall, and the confusion
/// matrix, current model against candidate.
fn eval_section(
    title: &str,
    key: &str,
    c: &Value,
    labels: &[String],
    new: &BTreeSet<String>,
) -> String {
    let mut body = String::new();
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
            plots::confusion(&format!("Confusion matrix of the candidate, {}", title.to_lowercase()), labels, &conf)
        );
    }
    body.push_str("</section>");
    body
}

/// The publish form of a candidate that was held (nothing once it is published).
fn publish_form(frame: &Frame, r: &TrainingRun) -> String {
    let mut body = String::new();
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
    body
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
    let labels = strings(&v["labels"]);
    let new: BTreeSet<String> = strings(&v["new_labels"]).into_iter().collect();
    body.push_str(&gate_and_data(&v, &new));
    for (title, key) in [
        ("Held-out field feedback", "feedback_holdout"),
        ("Held-out base data", "base_holdout"),
    ] {
        body.push_str(&eval_section(title, key, &v[key], &labels, &new));
    }
    body.push_str(&publish_form(frame, &r));
    Ok(layout(
        frame,
        &format!("Training run #{id}: evaluation report"),
        "run",
        &body,
    ))
}
