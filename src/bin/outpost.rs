//! `outpost`: the field agent's command line. Parses arguments and calls the library.

use anyhow::{bail, Context, Result};
use clap::Parser;
use outpost::analyze::{self, ModelSet};
use outpost::cli::agent_args::*;
use outpost::cli::agent_models::{load_models, load_models_for, read_manifests};
use outpost::cli::agent_text as text;
use outpost::cli::unlock::unlock;
use outpost::cli::{agent_feedback, agent_models, agent_vault, EXIT_PARTIAL};
use outpost::config::AgentConfig;
use outpost::export::{self, ExportFilter, Format};
use outpost::model::runtime;
use outpost::store::Store;
use outpost::{out, outln};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(_) if outpost::cli::stdout_failed() => ExitCode::FAILURE,
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,outpost=info,ort=warn",
        1 => "info,outpost=debug,ort=info",
        _ => "debug,outpost=trace",
    };
    outpost::cli::init_logging(default, false);
}

fn load_config(cli: &Cli) -> Result<AgentConfig> {
    let mut cfg = AgentConfig::load(cli.config.as_deref())?;
    if let Some(d) = &cli.data_dir {
        cfg.data_dir = Some(d.clone());
    }
    if let Some(d) = &cli.models_dir {
        cfg.models_dir = Some(d.clone());
    }
    if let Some(l) = &cli.ort_lib {
        cfg.runtime.library = Some(l.clone());
    }
    Ok(cfg)
}

/// `outpost analyze`: loads the models, analyses the inputs (Ctrl-C stops after the
/// current batch), prints the summary and drift alerts, and exports if asked.
fn analyze_command(cfg: &AgentConfig, a: AnalyzeArgs) -> Result<ExitCode> {
    // Only the models the inputs need: a folder of tiles does not load the report model.
    // (None of them there: load all, so the run says which inputs have no model.)
    let tasks = analyze::tasks_for(&a.inputs);
    let models = match load_models_for(cfg, a.model.as_deref(), Some(&tasks)) {
        Ok(m) if !tasks.is_empty() => m,
        _ => load_models(cfg, a.model.as_deref())?,
    };
    let set = ModelSet::from_models(&models);
    let opts = a.options(cfg);
    let AnalyzeArgs {
        format,
        out,
        model,
        json_summary,
        ..
    } = a;
    let db = cfg.database_path();
    let mut store = Store::open(&db)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current batch (Ctrl-C again to quit now); finished batches are saved");
        });
    }
    let summary = analyze::analyze(&mut store, &set, &opts, stop)?;
    if json_summary {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        out!("{}", text::summary(&summary, &db));
    }
    // Drift: score the new predictions window by window and warn about unfamiliar input.
    let windows = outpost::drift::update_all(&store, &cfg.models_dir(), &cfg.drift);
    if !json_summary {
        for d in outpost::drift::summary(&store)? {
            if d.state != outpost::drift::DriftState::Ok
                && windows.iter().any(|w| w.model_name == d.model_name)
            {
                eprintln!("{}", text::drift(&d));
            }
        }
    }
    let format = format.or_else(|| out.as_deref().and_then(Format::from_path));
    if let Some(format) = format {
        let filter = ExportFilter {
            run_id: Some(summary.run_id),
            model_name: model.clone(),
        };
        let rows = export::load_rows(&store, &filter, &|n, v| {
            let m = models.iter().map(|m| m.manifest());
            m.into_iter()
                .find(|m| m.name == n && m.version == v)
                .map(|m| m.labels.clone())
        })?;
        write_rows(&rows, format, out.as_deref())?;
    }
    Ok(match summary.status() {
        "ok" => ExitCode::SUCCESS,
        "failed" => ExitCode::FAILURE,
        _ => ExitCode::from(EXIT_PARTIAL),
    })
}

/// `export`.
fn export_command(cfg: &AgentConfig, a: ExportArgs) -> Result<ExitCode> {
    let ExportArgs {
        format,
        out,
        run,
        all,
        model,
    } = a;
    let db = cfg.database_path();
    if !db.exists() {
        bail!(
            "no database at {}: run `outpost analyze` first",
            db.display()
        );
    }
    let store = Store::open(&db)?;
    let run_id = if all {
        None
    } else {
        match run {
            Some(r) => Some(r),
            None => Some(
                store
                    .last_run_id()?
                    .context("no run stored yet: run `outpost analyze` first")?,
            ),
        }
    };
    // Label names come from the manifests; models need not load into ONNX Runtime.
    let manifests = read_manifests(&cfg.models_dir())?;
    let filter = ExportFilter {
        run_id,
        model_name: model,
    };
    let rows = export::load_rows(&store, &filter, &|n, v| {
        manifests
            .iter()
            .find(|m| m.name == n && m.version == v)
            .map(|m| m.labels.clone())
    })?;
    write_rows(&rows, format, out.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// `run`.
fn run_command(cfg: &AgentConfig, a: RunArgs) -> Result<ExitCode> {
    let RunArgs {
        listen,
        annotator,
        bandwidth_kbps,
        idle_check_secs,
        max_backoff_secs,
    } = a;
    if !unlock(cfg, true)? {
        eprintln!("The agent's data is encrypted and locked: type the passphrase on the review page. Sync, updates and retention start once it is unlocked.");
    }
    let mut opts = outpost::review::ReviewOptions::from_config(cfg, listen, annotator, false);
    let (serving, warnings) =
        outpost::daemon::serving_models(cfg, outpost::daemon::updates_enabled(cfg));
    for w in warnings {
        eprintln!("warning: {w}");
    }
    opts.serving = serving;
    opts.models_dir = cfg.models_dir();
    let loop_opts = outpost::sync::LoopOptions {
        idle_check: std::time::Duration::from_secs(idle_check_secs.max(1)),
        max_backoff: std::time::Duration::from_secs(max_backoff_secs.max(1)),
        bandwidth_bytes_per_sec: bandwidth_kbps.map(|k| k * 1000),
        on_revoked: cfg.retention.on_revoked,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(outpost::daemon::run(cfg.clone(), opts, loop_opts, |url| {
        outln!("Review page: {url}  (sync runs in the background; Ctrl-C to stop)")
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// `update`.
fn update_command(cfg: &AgentConfig, a: UpdateArgs) -> Result<ExitCode> {
    let UpdateArgs { json } = a;
    runtime::init(cfg.runtime.library.as_deref())?;
    let opts = cfg.update_options();
    let rt = tokio::runtime::Runtime::new()?;
    match rt.block_on(outpost::update::check_and_install(&opts, None)) {
        Ok(r) => {
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                out!("{}", text::update(&r));
            }
            Ok(if r.refused.is_empty() && r.rolled_back.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            if json {
                outln!("{}", serde_json::json!({ "error": e.to_string() }));
            } else {
                out!("{}", text::update_refused(&e));
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `purge`.
fn purge_command(cfg: &AgentConfig, a: PurgeArgs) -> Result<ExitCode> {
    let PurgeArgs {
        older_than_days,
        dry_run,
    } = a;
    let store = Store::open(&cfg.database_path())?;
    let days = older_than_days.unwrap_or(cfg.retention.purge_after_days);
    let r = outpost::store::retention::purge(&store, days, dry_run)?;
    out!("{}", text::purged(&r, days, dry_run));
    Ok(ExitCode::SUCCESS)
}

/// `sync`.
fn sync_command(cfg: &AgentConfig) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let (r, update) = match rt.block_on(outpost::daemon::sync_and_update(cfg))? {
        outpost::daemon::SyncOutcome::Revoked(w) => {
            eprintln!("error: {}", outpost::sync::SyncError::Revoked);
            let policy = serde_json::to_string(&cfg.retention.on_revoked)?;
            eprintln!("{}", text::revoked_wipe(&policy, &w));
            return Ok(ExitCode::FAILURE);
        }
        outpost::daemon::SyncOutcome::Synced { push, update } => (push, update),
    };
    out!("{}", text::pushed(&r));
    use outpost::daemon::UpdateAfterSync;
    match update.map(|u| *u) {
        Some(UpdateAfterSync::Checked(u)) => out!("{}", text::update(&u)),
        Some(UpdateAfterSync::Refused(e)) => {
            outln!("model update refused: {e} (the current models keep serving)")
        }
        Some(UpdateAfterSync::Skipped(e)) => outln!("model updates skipped: {e}"),
        None => {}
    }
    Ok(if r.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

/// `status`.
fn status_command(cfg: &AgentConfig, a: StatusArgs) -> Result<ExitCode> {
    let StatusArgs { json } = a;
    let store = Store::open(&cfg.database_path())?;
    let st = outpost::status::read(&store, cfg)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        out!("{}", text::status(&st, cfg.drift.window));
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cfg = load_config(&cli)?;
    if cli.command.reads_items() {
        unlock(&cfg, false)?;
    }
    match cli.command {
        Command::Encrypt(a) => agent_vault::encrypt(&cfg, a),
        Command::Passphrase(a) => agent_vault::passphrase(&cfg, a),
        Command::Analyze(a) => analyze_command(&cfg, a),
        Command::Export(a) => export_command(&cfg, a),
        Command::Models { command } => agent_models::run(&cfg, command),
        Command::Feedback { command } => agent_feedback::run(&cfg, command),
        Command::Review {
            listen,
            annotator,
            include_content,
        } => {
            if !unlock(&cfg, true)? {
                eprintln!("The agent's data is encrypted and locked: type the passphrase on the review page.");
            }
            let opts = outpost::review::ReviewOptions::from_config(
                &cfg,
                listen,
                annotator,
                include_content,
            );
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(outpost::review::serve(opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => run_command(&cfg, a),
        Command::Doctor { json } => {
            let report = outpost::doctor::check(&cfg);
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{report}");
            }
            Ok(if report.has_failures() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Enroll { server_url, code } => {
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(outpost::sync::enroll(
                &cfg.database_path(),
                &cfg.data_dir(),
                &server_url,
                &code,
            ))?;
            outln!(
                "enrolled as {} (group {}, device id {}) with {}",
                r.name,
                r.group,
                r.device_id,
                server_url
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Update(a) => update_command(&cfg, a),
        Command::Purge(a) => purge_command(&cfg, a),
        Command::Sync => sync_command(&cfg),
        Command::Status(a) => status_command(&cfg, a),
        Command::Bench(a) => bench_command(&cfg, a),
    }
}

/// Writes exported rows to a file or standard output, saying what was left out.
fn write_rows(rows: &[export::ExportRow], format: Format, out: Option<&Path>) -> Result<()> {
    let left_out = match out {
        Some(path) => {
            let n = export::write_file(rows, format, path)?;
            eprintln!(
                "exported {} predictions to {}",
                rows.len() - n,
                path.display()
            );
            n
        }
        None => export::write(rows, format, &mut outpost::cli::stdout())?,
    };
    if left_out > 0 {
        eprintln!("note: {left_out} predictions have no map position (reports, or tiles without georeferencing) and are not in the GeoJSON; use --format csv or json for them");
    }
    Ok(())
}

/// `bench`: raw ONNX Runtime against end to end on the same models, side by side.
fn bench_command(cfg: &AgentConfig, a: BenchArgs) -> Result<ExitCode> {
    let req = a.request();
    let models = load_models(cfg, None)?;
    let report = outpost::bench::run(cfg, &models, &req, &|m| eprintln!("{m}"))?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", text::bench(&report, req.rounds.max(1)));
    }
    Ok(ExitCode::SUCCESS)
}
