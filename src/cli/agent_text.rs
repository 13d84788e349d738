//! How the agent's results read at a terminal: the analyze summary, drift lines, decisions,
//! update reports. They live in the library next to the results they render, so the binary
//! only dispatches and prints, and tests can read exactly what a person reads. Each function
//! returns whole lines ending in a newline (except [`drift`], one entry of a list).

use crate::analyze;
use crate::drift::{DriftState, ModelDrift};
use crate::infer::golden::GoldenReport;
use crate::model::bundle;
use crate::status::AgentStatus;
use crate::store::feedback::Feedback;
use crate::store::retention::PurgeReport;
use crate::sync::PushReport;
use crate::update::local::ModelListing;
use crate::update::UpdateReport;
use std::fmt::Write;
use std::path::Path;

/// `writeln!` into a `String`, which cannot fail.
macro_rules! push {
    ($s:ident, $($arg:tt)*) => {{
        let _ = writeln!($s, $($arg)*);
    }};
}

/// One line per model: state, since when, score, and the likely cause of the last alert.
pub fn drift(d: &ModelDrift) -> String {
    let mut line = format!(
        "drift {}: {} since {} (latest window: {} of {} items unfamiliar; {} windows)",
        d.model_name,
        d.state.as_str().to_uppercase(),
        d.since,
        d.latest.novel,
        d.latest.items,
        d.windows
    );
    if !d.latest.languages.is_empty() {
        line.push_str(&format!(
            "\n  latest window by language: {}",
            crate::drift::describe_languages(&d.latest.languages)
        ));
    }
    if let Some(a) = &d.last_alert {
        let list = |v: &[(String, usize)]| {
            v.iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        line.push_str(&format!(
            "\n  likely cause (window ending {}): labels {}; folders {}",
            a.ended_at,
            list(&a.novel_labels),
            list(&a.novel_folders)
        ));
        if d.state != DriftState::Ok {
            line.push_str(
                "\n  unfamiliar items are at the front of the review queue: `outpost review`",
            );
        }
    }
    line
}

/// The summary `outpost analyze` prints: counts, what was skipped and why, labels, failures.
pub fn summary(s: &analyze::Summary, db: &Path) -> String {
    let mut out = String::new();
    let analysed = s.image_items + s.text_items;
    push!(
        out,
        "Analysed {analysed} items ({} image tiles, {} reports) from {} files in {:.1} s.",
        s.image_items,
        s.text_items,
        s.files,
        s.elapsed_secs
    );
    if s.sightings != analysed + s.already_analysed {
        push!(out,
            "  Seen in {} places: the same tile or report found in several places is one item, and every place is kept (export has them all).",
            s.sightings
        );
    }
    if s.already_analysed > 0 {
        push!(
            out,
            "  {} items were already analysed by the same model version (use --force to redo).",
            s.already_analysed
        );
    }

    if s.skipped_nodata > 0 {
        push!(
            out,
            "  {} scene tiles skipped: mostly nodata or transparent.",
            s.skipped_nodata
        );
    }
    if s.truncated_reports > 0 {
        push!(
            out,
            "  {} reports were longer than the model reads and were cut.",
            s.truncated_reports
        );
    }
    if s.ignored_files > 0 {
        push!(
            out,
            "  {} files in folders were ignored (not images or reports).",
            s.ignored_files
        );
    }
    out.push_str(&label_counts(s));
    out.push_str(&failures(s));
    if s.interrupted {
        push!(
            out,
            "Interrupted: run the same command again to continue where it stopped."
        );
    }
    push!(out, "Results: run {} in {}", s.run_id, db.display());
    out
}

/// Per model, its most frequent labels in this run.
fn label_counts(s: &analyze::Summary) -> String {
    let mut out = String::new();
    for (model, counts) in &s.labels {
        let mut v: Vec<_> = counts.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = v.iter().take(12).map(|(l, n)| format!("{l} {n}")).collect();
        let more = if v.len() > 12 {
            format!(", and {} more labels", v.len() - 12)
        } else {
            String::new()
        };
        push!(out, "  {model}: {}{more}", shown.join(", "));
    }
    out
}

/// The inputs that failed (the first 20), each with its reason.
fn failures(s: &analyze::Summary) -> String {
    let mut out = String::new();
    if !s.failures.is_empty() {
        push!(out, "{} inputs failed:", s.failures.len());
        for f in s.failures.iter().take(20) {
            match &f.locator {
                Some(l) => push!(out, "  {} ({l}): {}", f.source, f.reason),
                None => push!(out, "  {}: {}", f.source, f.reason),
            }
        }
        if s.failures.len() > 20 {
            push!(
                out,
                "  ... and {} more (see the failures table of run {})",
                s.failures.len() - 20,
                s.run_id
            );
        }
    }
    out
}

pub fn feedback(f: &Feedback) -> String {
    let mut s = String::new();
    let new = if f.new_labels.is_empty() {
        String::new()
    } else {
        format!("  new: {}", f.new_labels.join(";"))
    };
    push!(
        s,
        "{}  {}  {:<7} {:<9} {}@{}  item {}  [{}]{}  by {}",
        f.feedback_id,
        &f.created_at[..f.created_at.len().min(19)],
        f.action,
        f.delivery,
        f.model_name,
        f.model_version,
        &f.item_id[..12.min(f.item_id.len())],
        f.labels.join(";"),
        new,
        f.annotator
    );
    s
}

pub fn update(r: &UpdateReport) -> String {
    let mut s = String::new();
    for m in &r.installed {
        push!(s, "installed and switched to {m}");
    }
    for m in &r.rolled_back {
        push!(s, "rolled back {m}");
    }
    for m in &r.refused {
        push!(s, "refused: {m}");
    }
    for m in &r.unchanged {
        push!(s, "unchanged: {m}");
    }
    push!(
        s,
        "root v{}, targets v{}; {} bytes downloaded ({} files fetched, {} already here)",
        r.root_version,
        r.targets_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
        r.bytes_downloaded,
        r.files_fetched,
        r.files_cached
    );
    s
}

/// An update that was refused as a whole: why, and that nothing changed.
pub fn update_refused(e: &dyn std::fmt::Display) -> String {
    format!("refused: {e}\nthe current models keep serving\n")
}

/// `outpost sync` on a revoked device: what the wipe took and what it kept.
pub fn revoked_wipe(policy: &str, w: &crate::store::retention::WipeReport) -> String {
    format!(
        "retention.on_revoked = {policy}: wiped {} items and {}; kept {} items whose decisions never reached the server",
        w.items,
        if w.key_deleted { "the device key" } else { "no key (none was there)" },
        w.kept_unsynced
    )
}

/// `models list`: the installed tree, one line per model and its failed versions.
pub fn installed(root: &Path, list: &[ModelListing]) -> String {
    let mut s = String::new();
    if list.is_empty() {
        return s;
    }
    push!(s, "installed models: {}", root.display());
    for l in list {
        let pinned = l
            .state
            .pinned
            .as_ref()
            .map(|p| format!("  (pinned at {p})"));
        push!(
            s,
            "  {:<20} active {:<10} installed {}{}",
            l.model,
            l.active.as_deref().unwrap_or("none"),
            l.versions.join(", "),
            pinned.unwrap_or_default()
        );
        for (v, why) in &l.state.failed {
            push!(s, "      {v} failed: {why}");
        }
    }
    s
}

/// `models list`: the bundles of the models folder, with their size, or why one is unreadable.
pub fn bundles(dir: &Path) -> String {
    let mut s = String::new();
    push!(s, "models folder: {}", dir.display());
    let dirs = match bundle::discover(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            push!(s, "  (cannot read it: {e})");
            return s;
        }
    };
    if dirs.is_empty() {
        push!(s, "  (no bundles)");
    }
    for d in dirs {
        match bundle::read_manifest(&d) {
            Ok(m) => {
                let size: u64 = m.files.values().map(|f| f.size).sum();
                push!(
                    s,
                    "  {:<20} {:<9} {:<22} {} labels{}  {:.1} MB  {}",
                    m.name,
                    m.version,
                    m.task.as_str(),
                    m.labels.len(),
                    if m.multi_label { " (multi-label)" } else { "" },
                    size as f64 / 1e6,
                    d.display()
                );
            }
            Err(e) => push!(s, "  {}: {e}", d.display()),
        }
    }
    s
}

/// `models verify`: one bundle's golden check.
pub fn golden(id: &str, result: &Result<Option<GoldenReport>, String>) -> String {
    let mut s = String::new();
    match result {
        Ok(Some(r)) if r.passed() => push!(
            s,
            "ok   {id}: files verified; {} golden cases within {:.0e} (max difference {:.1e})",
            r.cases,
            r.tolerance,
            r.max_abs_diff
        ),
        Ok(Some(r)) => {
            push!(s, "FAIL {id}: golden outputs not reproduced:");
            for f in &r.failures {
                push!(s, "       {f}");
            }
        }
        Ok(None) => push!(s, "ok   {id}: files verified (no golden cases)"),
        Err(e) => push!(s, "FAIL {id}: {e}"),
    }
    s
}

/// `status`: enrollment, the outbox, the last sync and update check, drift.
pub fn status(st: &AgentStatus, drift_window: usize) -> String {
    let mut s = String::new();
    let c = &st.counters;
    match (&st.server_url, &st.device_name) {
        (Some(url), Some(n)) => push!(s, "enrolled as {n} with {url}"),
        _ => push!(s, "not enrolled (outpost enroll <server-url> <code>)"),
    }
    push!(
        s,
        "feedback waiting to sync: {}; synced: {}; reviewed today: {}",
        c.waiting_to_sync,
        c.synced,
        c.reviewed_today
    );
    let never = |v: &Option<String>| v.clone().unwrap_or_else(|| "never".into());
    push!(s, "last successful sync: {}", never(&c.last_sync));
    if let Some(e) = &st.last_sync_error {
        push!(s, "last sync failed: {e}");
    }
    push!(
        s,
        "last model update check: {}",
        never(&st.last_update_check)
    );
    if let Some(e) = &st.last_update_error {
        push!(s, "last update refused: {e}");
    }
    if st.drift.is_empty() {
        push!(
            s,
            "drift: not enough analysed items yet (windows of {drift_window})"
        );
    }
    for d in &st.drift {
        push!(s, "{}", drift(d));
    }
    s
}

/// `sync`: what the push delivered and what the server refused.
pub fn pushed(r: &PushReport) -> String {
    let mut s = String::new();
    push!(
        s,
        "sent {} decisions in {} batches ({} bytes); {} were already on the server",
        r.acked,
        r.batches,
        r.bytes_sent,
        r.duplicates
    );
    for x in &r.refused {
        push!(s, "  refused {}: {}", x.feedback_id, x.reason);
    }
    s
}

/// `purge`: what went (or would go) and what stayed because it is not synced.
pub fn purged(r: &PurgeReport, days: u32, dry_run: bool) -> String {
    let mut s = String::new();
    push!(
        s,
        "{} {} reviewed and synced items older than {days} days ({} predictions, {} decisions)",
        if dry_run { "would purge" } else { "purged" },
        r.items,
        r.predictions,
        r.feedback
    );
    if r.kept_unsynced > 0 {
        push!(
            s,
            "kept {} reviewed items whose decisions are not synced yet (run `outpost sync`)",
            r.kept_unsynced
        );
    }
    s
}

/// `bench`: each comparison's medians and ratio, the best raw configuration, memory.
pub fn bench(r: &crate::bench::BenchReport, rounds: usize) -> String {
    let mut s = String::new();
    push!(
        s,
        "threads per session: {}, batch size: {}, rounds: {rounds} (medians)",
        r.threads,
        r.batch_size
    );
    for (kind, c) in [("tiles", &r.image), ("reports", &r.text)] {
        if let Some(c) = c {
            push!(
                s,
                "{:<8} {:<28} raw ONNX Runtime {:>8.1}/s   end to end {:>8.1}/s   ratio {:.2}",
                kind,
                c.model,
                c.raw_median,
                c.e2e_median,
                c.ratio_median
            );
            push!(
                s,
                "         best raw configuration found: {}",
                c.raw_search.best
            );
        }
    }
    push!(
        s,
        "memory: {:.0} MiB resident after loading models, {:.0} MiB peak",
        r.rss_after_load_mib,
        r.peak_rss_mib
    );
    s
}
