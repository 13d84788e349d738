//! How operator results read at a terminal: the listings and reports that
//! `outpost-server` prints (devices, runs, jobs, drift, audit, releases, an evaluation
//! report). They live in the library, next to the actions that produce the data, so the
//! binary only parses and prints, and a test can read exactly what an operator reads.
//! Every function returns whole lines, each ending in a newline.

use crate::server::store::{
    AuditRecord, Device, DeviceDrift, DeviceModelRow, TaskDefinition, TrainingJob, TrainingRun,
};
use crate::trust::Targets;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// `devices list`: one line per device, then the models it last reported.
pub fn devices(devices: &[Device], models: &[DeviceModelRow]) -> String {
    let mut s = String::new();
    for d in devices {
        let _ = writeln!(
            s,
            "{:<20} {:<12} {:<20} feedback {:>6}{}  last seen {}  {}",
            d.name,
            d.group,
            super::devices::state(d),
            d.feedback,
            d.pending_feedback
                .map(|p| format!(" (+{p} pending on the device)"))
                .unwrap_or_default(),
            d.last_seen.as_deref().unwrap_or("never"),
            d.device_id
        );
        s.push_str(&device_models(models, &d.device_id));
    }
    s
}

/// The models a device last reported running, and its latest refused or rolled-back updates.
fn device_models(rows: &[DeviceModelRow], device_id: &str) -> String {
    let mut s = String::new();
    for r in rows.iter().filter(|r| r.device_id == device_id) {
        let pinned = r.pinned.as_ref().map(|p| format!(" pinned at {p}"));
        let _ = writeln!(
            s,
            "    model {:<18} runs {:<10}{}  (reported {})",
            r.model,
            r.active_version.as_deref().unwrap_or("none"),
            pinned.unwrap_or_default(),
            r.reported_at
        );
        for (version, kind, reason, at) in &r.failures {
            let version = version.as_deref().unwrap_or("metadata");
            let _ = writeln!(s, "      {kind} {version}: {reason} ({at})");
        }
    }
    s
}

/// `runs`: one line per training run.
pub fn runs(runs: &[TrainingRun]) -> String {
    let mut s = String::new();
    for r in runs {
        let _ = writeln!(
            s,
            "#{:<4} {:<16} {} -> {:<8} {:<9} {:<8} {}  {}",
            r.run_id,
            r.model_name,
            r.base_version,
            r.candidate_version.as_deref().unwrap_or("-"),
            r.status.as_str(),
            r.trigger,
            r.started_at,
            r.reason
        );
    }
    s
}

/// `jobs`: one line per training job, or what to expect when there is none.
pub fn jobs(jobs: &[TrainingJob]) -> String {
    if jobs.is_empty() {
        return "no training jobs yet (serving processes queue them when a model is due)\n".into();
    }
    let mut s = String::new();
    for j in jobs {
        let dash = || "-".to_string();
        let _ = writeln!(
            s,
            "#{:<4} {:<16} {:<8} {:<7} attempts {} run {} owner {} lease until {}  {}{}",
            j.job_id,
            j.model_name,
            j.state,
            j.trigger,
            j.attempts,
            j.run_id.map(|r| format!("#{r}")).unwrap_or_else(dash),
            j.owner.as_deref().unwrap_or("-"),
            j.lease_until.map(|t| t.to_string()).unwrap_or_else(dash),
            j.enqueued_at,
            j.error
                .as_ref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default()
        );
    }
    s
}

/// `drift`: per device and model the latest state, since when and the likely cause, then
/// per group and model how many devices are in each state.
pub fn drift(all: &[DeviceDrift]) -> String {
    if all.is_empty() {
        return "no drift summaries yet (agents send them when they sync)\n".into();
    }
    let mut s = String::new();
    for d in all {
        let w = &d.latest;
        let cause = w
            .novel_labels
            .iter()
            .map(|(l, n)| format!("{l} ({n})"))
            .chain(w.novel_folders.iter().map(|(f, n)| format!("{f} ({n})")))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "{:<16} {:<10} {:<16} {:<8} since {}  {}/{} unfamiliar  {}",
            d.device,
            d.group,
            w.model_name,
            w.state.as_str().to_uppercase(),
            d.since,
            w.novel,
            w.items,
            cause
        );
        if !w.languages.is_empty() {
            let _ = writeln!(
                s,
                "{:<16} by language: {}",
                "",
                crate::drift::describe_languages(&w.languages)
            );
        }
    }
    let mut groups: BTreeMap<(&str, &str), [usize; 3]> = BTreeMap::new();
    for d in all {
        let key = (d.group.as_str(), d.latest.model_name.as_str());
        groups.entry(key).or_default()[d.latest.state as usize] += 1;
    }
    for ((g, m), [ok, watch, drifted]) in groups {
        let _ = writeln!(
            s,
            "group {g} / {m}: {ok} ok, {watch} watch, {drifted} drifted"
        );
    }
    s
}

/// `audit`: one line per record.
pub fn audit(records: &[AuditRecord]) -> String {
    let mut s = String::new();
    for a in records {
        let _ = writeln!(s, "{} {:<8} {:<18} {}", a.at, a.actor, a.action, a.detail);
    }
    s
}

/// `models list`: the published releases, then every candidate a run built.
pub fn releases(targets: Option<&Targets>, runs: &[TrainingRun]) -> String {
    let mut s = String::from("published releases:\n");
    for r in targets.iter().flat_map(|t| t.releases.iter()) {
        let groups = if r.groups.is_empty() {
            "(all)".to_string()
        } else {
            r.groups.join(",")
        };
        let _ = writeln!(
            s,
            "  {:<16} {:<8} {:<8} groups {:<16} {:>3}%{}",
            r.model,
            r.version,
            r.channel,
            groups,
            r.percent,
            if r.withdrawn { "  WITHDRAWN" } else { "" }
        );
    }
    s.push_str("candidates:\n");
    for r in runs {
        if let Some(v) = &r.candidate_version {
            let _ = writeln!(
                s,
                "  {:<16} {:<8} {:<9} from {} (run #{})  {}",
                r.model_name,
                v,
                r.status.as_str(),
                r.base_version,
                r.run_id,
                r.reason
            );
        }
    }
    s
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn score(x: &Value) -> String {
    x.as_f64()
        .map(|x| format!("{x:.3}"))
        .unwrap_or_else(|| "-".into())
}

/// An evaluation report (the JSON a training run stores) for a person: counts, the two
/// held-out comparisons, the gate. The report is the server's own record, but it is read
/// leniently: a field a report lacks prints as `?` or `-`, never as a failure.
pub fn evaluation(v: &Value) -> String {
    let labels = strings(&v["labels"]);
    let new_labels = strings(&v["new_labels"]).join(", ");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} {} -> {} (new labels: {})",
        v["model"].as_str().unwrap_or("?"),
        v["base_version"].as_str().unwrap_or("?"),
        v["candidate_version"].as_str().unwrap_or("?"),
        if new_labels.is_empty() {
            "none"
        } else {
            &new_labels
        }
    );
    let d = &v["data"];
    let _ = writeln!(
        s,
        "data: base {} train / {} held out; field {} train / {} held out / {} skipped; trained in {:.1} s",
        d["base_train"], d["base_holdout"], d["feedback_train"], d["feedback_holdout"], d["feedback_skipped"],
        v["train_seconds"].as_f64().unwrap_or(0.0)
    );
    for (name, key) in [
        ("held-out field feedback", "feedback_holdout"),
        ("held-out base data", "base_holdout"),
    ] {
        s.push_str(&comparison(name, &v[key], &labels));
    }
    s.push_str(&gate(&v["gate"]));
    s
}

/// One held-out comparison of an evaluation report: current against candidate.
fn comparison(name: &str, c: &Value, labels: &[&str]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{name} ({} rows):", c["candidate"]["count"]);
    let _ = writeln!(s, "  {:<24} {:>9} {:>9}", "", "current", "candidate");
    for (m, k) in [
        ("accuracy", "accuracy"),
        ("macro-F1", "macro_f1"),
        ("accuracy, known labels", "known_accuracy"),
        ("macro-F1, known labels", "known_macro_f1"),
    ] {
        let (cur, cand) = (score(&c["current"][k]), score(&c["candidate"][k]));
        let _ = writeln!(s, "  {m:<24} {cur:>9} {cand:>9}");
    }
    for (j, l) in labels.iter().enumerate() {
        let support = c["support"][j].as_u64().unwrap_or(0);
        if support > 0 {
            let (cur, cand) = (
                score(&c["current"]["recall"][j]),
                score(&c["candidate"]["recall"][j]),
            );
            let _ = writeln!(s, "  recall {l:<17} {cur:>9} {cand:>9}   ({support} rows)");
        }
    }
    if let Some(conf) = c["candidate"]["confusion"]
        .as_array()
        .filter(|a| !a.is_empty() && a.len() <= 16)
    {
        s.push_str("  candidate confusion (rows: truth, columns: predicted, in label order):\n");
        for (j, row) in conf.iter().enumerate() {
            let cells: Vec<String> = row
                .as_array()
                .map(|r| r.iter().map(|x| format!("{x:>4}")).collect())
                .unwrap_or_default();
            let label = labels.get(j).copied().unwrap_or("?");
            let _ = writeln!(s, "  {label:<22}{}", cells.join(""));
        }
    }
    s
}

/// The gate's verdict and, when it failed, each problem.
fn gate(g: &Value) -> String {
    if g["passed"].as_bool() == Some(true) {
        return format!("gate: passed (tolerance {})\n", g["tolerance"]);
    }
    let mut s = format!("gate: FAILED (tolerance {})\n", g["tolerance"]);
    for p in g["problems"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "  - {}", p.as_str().unwrap_or(""));
    }
    s
}

/// `train`: whether the job is new or one already open was joined.
pub fn queued(q: super::Queued, model: &str) -> String {
    match q {
        super::Queued::New(j) => format!("training job #{j} queued for {model}\n"),
        super::Queued::AlreadyOpen(j) => format!(
            "a training job for {model} is already queued or running (#{j}); waiting for it (its own settings apply)\n"
        ),
    }
}

/// `train`: how the job ended.
pub fn job_ended(job: &TrainingJob) -> String {
    format!(
        "job #{} {} (run by {})\n",
        job.job_id,
        job.state,
        job.owner.as_deref().unwrap_or("-")
    )
}

/// A run's report (when it has one), its candidate bundle and its verdict.
pub fn run_outcome(run: &TrainingRun) -> String {
    let mut s = String::new();
    if let Some(report) = run.report.as_deref() {
        match serde_json::from_str(report) {
            Ok(v) => s.push_str(&evaluation(&v)),
            Err(e) => {
                let _ = writeln!(s, "(the run's report is not readable JSON: {e})");
            }
        }
    }
    let _ = writeln!(
        s,
        "candidate bundle: {}",
        run.bundle_dir.as_deref().unwrap_or("-")
    );
    let _ = writeln!(s, "{}: {}", run.status.as_str(), run.reason);
    s
}

/// `models eval`: a candidate's evaluation report, its verdict and its bundle.
pub fn candidate(run: &TrainingRun, report: &Value) -> String {
    let mut s = evaluation(report);
    let _ = writeln!(s, "status: {} — {}", run.status.as_str(), run.reason);
    let _ = writeln!(s, "bundle: {}", run.bundle_dir.as_deref().unwrap_or("-"));
    s
}

fn label_kind(multi_label: bool) -> &'static str {
    if multi_label {
        "multi-label"
    } else {
        "single-label"
    }
}

/// `tasks define`: what was defined and how to train it.
pub fn task_defined(t: &TaskDefinition) -> String {
    format!(
        "task {} defined on the backbone of {}: {} ({}); train it with `outpost-server train {}`\n",
        t.name,
        t.backbone,
        t.labels.join(", "),
        label_kind(t.multi_label),
        t.name
    )
}

/// `tasks list`: one line per task.
pub fn tasks(tasks: &[TaskDefinition]) -> String {
    let mut s = String::new();
    for t in tasks {
        let _ = writeln!(
            s,
            "{:<20} on {:<16} {:<12} -> {:<8} {}",
            t.name,
            t.backbone,
            label_kind(t.multi_label),
            t.channel,
            t.labels.join(",")
        );
    }
    s
}

/// `tasks proposed`: the field's new labels per model, and the command that accepts them.
pub fn proposed(proposals: &[super::tasks::Proposal]) -> String {
    let mut s = String::new();
    for p in proposals {
        let counted: Vec<String> = p.labels.iter().map(|(l, n)| format!("{l} ({n})")).collect();
        let names: Vec<&str> = p.labels.iter().map(|(l, _)| l.as_str()).collect();
        let _ = writeln!(
            s,
            "on {}: {} from {} device(s); accept with `outpost-server tasks define NAME --backbone {} --labels {}`",
            p.backbone,
            counted.join(", "),
            p.devices,
            p.backbone,
            names.join(",")
        );
    }
    s
}

/// `feedback import FILE`: how many records were new, already stored or refused, and why
/// each refused one was.
pub fn imported(file: &std::path::Path, i: &super::usb::Imported) -> String {
    let r = &i.result;
    let mut s = format!(
        "{}: {} records, {} new, {} already stored, {} refused\n",
        file.display(),
        i.records,
        r.acked.len() - r.duplicates,
        r.duplicates,
        r.refused.len()
    );
    for x in &r.refused {
        s.push_str(&format!("  refused {}: {}\n", x.feedback_id, x.reason));
    }
    s
}
