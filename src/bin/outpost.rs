//! `outpost`: the field agent's command line. Parses arguments and calls the library.

use anyhow::{bail, Context, Result};
use clap::Parser;
use outpost::analyze::{self, AnalyzeOptions, ModelSet};
use outpost::cli::agent_args::*;
use outpost::cli::agent_text as text;
use outpost::cli::unlock::{new_passphrase, prompt, read_secret_file, unlock, CURRENT_INSTEAD};
use outpost::config::AgentConfig;
use outpost::export::{self, ExportFilter, Format};
use outpost::model::{self, runtime, LoadedModel};
use outpost::store::Store;
use outpost::{out, outln};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Exit code when some inputs failed but others were analysed.
const EXIT_PARTIAL: u8 = 3;

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

/// Loads ONNX Runtime and every bundle; a bundle that fails is reported and skipped.
fn load_models(cfg: &AgentConfig, only: Option<&str>) -> Result<Vec<Arc<LoadedModel>>> {
    load_models_for(cfg, only, None)
}

/// [`load_models`], only for the given tasks (`None`: all).
fn load_models_for(
    cfg: &AgentConfig,
    only: Option<&str>,
    tasks: Option<&[model::Task]>,
) -> Result<Vec<Arc<LoadedModel>>> {
    runtime::init(cfg.runtime.library.as_deref())?;
    let dir = cfg.models_dir();
    let (models, failed) = model::load_where(&dir, cfg.session_options(), |m| {
        tasks.is_none_or(|t| t.contains(&m.task)) && only.is_none_or(|n| m.name == n)
    });
    for (path, e) in &failed {
        eprintln!("warning: model bundle {} not loaded: {e}", path.display());
    }
    let models: Vec<_> = models
        .into_iter()
        .filter(|m| only.is_none_or(|n| m.manifest().name == n))
        .collect();
    if models.is_empty() {
        match only {
            Some(n) => bail!("no model named {n:?} in {}", dir.display()),
            None => bail!(
                "no usable model bundle in {}; set --models-dir or models_dir in the config",
                dir.display()
            ),
        }
    }
    Ok(models)
}

/// `outpost analyze`: loads the models, analyses the inputs (Ctrl-C stops after the
/// current batch), prints the summary and drift alerts, and exports if asked.
fn analyze_command(cfg: &AgentConfig, a: AnalyzeArgs) -> Result<ExitCode> {
    let AnalyzeArgs {
        inputs,
        format,
        out,
        model,
        text_field,
        force,
        batch_size,
        tile_size,
        tile_overlap,
        json_summary,
        no_progress,
    } = a;
    // Only the models the inputs need: a folder of tiles does not load the report model.
    let tasks = analyze::tasks_for(&inputs);
    // (None of them there: load all, so the run says which inputs have no model.)
    let models = match load_models_for(cfg, model.as_deref(), Some(&tasks)) {
        Ok(m) if !tasks.is_empty() => m,
        _ => load_models(cfg, model.as_deref())?,
    };
    let set = ModelSet::from_models(&models);
    let mut opts = AnalyzeOptions::from_config(cfg, inputs);
    opts.force = force;
    opts.progress = !no_progress;
    if let Some(f) = text_field {
        opts.text.field = Some(f);
    }
    if let Some(b) = batch_size {
        opts.batch_size = b.max(1);
    }
    if let Some(t) = tile_size {
        opts.tile_size = t;
    }
    if let Some(o) = tile_overlap {
        opts.tile_overlap = o;
    }
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

/// `encrypt`.
fn encrypt_command(cfg: &AgentConfig, a: EncryptArgs) -> Result<ExitCode> {
    let EncryptArgs {
        passphrase,
        systemd_creds: _,
        passphrase_file,
    } = a;
    use outpost::store::vault::{self, KeyMode};
    let dir = cfg.data_dir();
    let (mode, pass) = if passphrase {
        (
            KeyMode::Passphrase,
            Some(new_passphrase(
                passphrase_file.as_deref(),
                "give it in a file with --passphrase-file FILE",
            )?),
        )
    } else {
        (KeyMode::SystemdCreds, None)
    };
    let r = vault::set_up(&dir, mode, pass.as_deref().map(|s| s.as_str()))?;
    outln!(
        "{} is now encrypted (SQLCipher, key kept by {}){}",
        dir.display(),
        r.mode.as_str(),
        if r.converted_database {
            "; the existing database was converted and the plain file overwritten"
        } else {
            ""
        }
    );
    outln!();
    outln!("Recovery key (shown once; write it down and keep it away from this device):");
    outln!("  {}", r.recovery_key.as_str());
    outln!(
        "If the {} is lost, `outpost passphrase --recovery-key -` sets a new passphrase with it.",
        if mode == KeyMode::Passphrase {
            "passphrase"
        } else {
            "sealed key (new disk, new TPM)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `passphrase`.
fn passphrase_command(cfg: &AgentConfig, a: PassphraseArgs) -> Result<ExitCode> {
    let PassphraseArgs {
        recovery_key,
        new_passphrase_file,
    } = a;
    use outpost::store::vault::{self, Secret};
    let dir = cfg.data_dir();
    let old: zeroize::Zeroizing<String> = match &recovery_key {
        Some(f) if f.as_os_str() == "-" => prompt(
            "Recovery key: ",
            "recovery key",
            "give it in a file with --recovery-key FILE",
        )?,
        Some(f) => read_secret_file(f)?,
        None => match std::env::var_os(vault::PASSPHRASE_FILE_ENV) {
            Some(f) => read_secret_file(Path::new(&f))?,
            None => prompt("Current passphrase: ", "passphrase", CURRENT_INSTEAD)?,
        },
    };
    let secret = if recovery_key.is_some() {
        Secret::RecoveryKey(&old)
    } else {
        Secret::Passphrase(&old)
    };
    let new = new_passphrase(
        new_passphrase_file.as_deref(),
        "give it in a file with --new-passphrase-file FILE",
    )?;
    vault::change_passphrase(&dir, secret, &new)?;
    outln!(
        "passphrase changed (the database was not re-encrypted; the recovery key stays the same)"
    );
    Ok(ExitCode::SUCCESS)
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
                outln!("refused: {e}");
                outln!("the current models keep serving");
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
            eprintln!(
                "retention.on_revoked = {}: wiped {} items and {}; kept {} items whose decisions never reached the server",
                serde_json::to_string(&cfg.retention.on_revoked)?,
                w.items,
                if w.key_deleted { "the device key" } else { "no key (none was there)" },
                w.kept_unsynced
            );
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
        Command::Encrypt(a) => encrypt_command(&cfg, a),
        Command::Passphrase(a) => passphrase_command(&cfg, a),
        Command::Analyze(a) => analyze_command(&cfg, a),
        Command::Export(a) => export_command(&cfg, a),
        Command::Models { command } => models_command(&cfg, command),
        Command::Feedback { command } => feedback_command(&cfg, command),
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

/// The manifests of the installed bundles (for label names), or an error saying where.
fn read_manifests(dir: &Path) -> Result<Vec<model::Manifest>> {
    model::bundle::manifests(dir)
        .with_context(|| format!("cannot read the models folder {}", dir.display()))
}

fn models_command(cfg: &AgentConfig, command: ModelsCommand) -> Result<ExitCode> {
    match command {
        ModelsCommand::Hash { dir } => {
            let files = model::bundle::hash_folder(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?;
            outln!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "files": files }))?
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Rollback { name } => {
            let installed = outpost::update::Installed::new(&cfg.data_dir());
            runtime::init(cfg.runtime.library.as_deref())?;
            let r = outpost::update::manual::rollback(
                &installed,
                &cfg.database_path(),
                &name,
                cfg.session_options(),
            )?;
            outln!(
                "{name}: {} -> {} (a running `outpost run` picks it up at its next check; restart it to switch at once)",
                r.from.as_deref().unwrap_or("none"),
                r.to
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Pin { name, version } => {
            let installed = outpost::update::Installed::new(&cfg.data_dir());
            installed.seed(&cfg.shipped_models_dir());
            if installed.active(&name).as_deref() != Some(version.as_str()) {
                runtime::init(cfg.runtime.library.as_deref())?;
            }
            outpost::update::manual::pin(
                &installed,
                &cfg.database_path(),
                &name,
                &version,
                cfg.session_options(),
            )?;
            outln!("{name} pinned at {version}: updates leave it alone until `outpost models unpin {name}`");
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Unpin { name } => {
            let installed = outpost::update::Installed::new(&cfg.data_dir());
            outpost::update::manual::unpin(&installed, &cfg.database_path(), &name)?;
            outln!("{name} unpinned: the next update check installs the release this device should run");
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Install { file, allow_stale } => {
            runtime::init(cfg.runtime.library.as_deref())?;
            let opts = cfg.update_options();
            let rt = tokio::runtime::Runtime::new()?;
            match rt.block_on(outpost::update::usb::install(
                &opts,
                &file,
                None,
                allow_stale,
            )) {
                Ok(r) => {
                    for o in &r.overrides {
                        eprintln!("WARNING: {o}");
                    }
                    out!("{}", text::update(&r));
                    Ok(if r.rolled_back.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Err(e) => {
                    outln!("refused: {e}");
                    outln!("the current models keep serving");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        ModelsCommand::List { json } => {
            let installed = outpost::update::Installed::new(&cfg.data_dir());
            installed.seed(&cfg.shipped_models_dir());
            let list = installed.list();
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                out!("{}", text::installed(installed.root(), &list));
                out!("{}", text::bundles(&cfg.models_dir()));
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Verify => {
            runtime::init(cfg.runtime.library.as_deref())?;
            let (models, failed) = model::load_all(&cfg.models_dir(), cfg.session_options());
            let mut ok = failed.is_empty();
            for (path, e) in &failed {
                outln!("FAIL {}: {e}", path.display());
            }
            for m in &models {
                let result = outpost::infer::golden::check(m);
                ok &= matches!(&result, Ok(None)) || matches!(&result, Ok(Some(r)) if r.passed());
                out!("{}", text::golden(&m.id(), &result));
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `bench`: raw ONNX Runtime against end to end on the same models, side by side.
fn bench_command(cfg: &AgentConfig, a: BenchArgs) -> Result<ExitCode> {
    let shared = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let req = outpost::bench::BenchRequest {
        images: a.images.unwrap_or_else(|| shared.join("eurosat")),
        reports: a
            .reports
            .unwrap_or_else(|| shared.join("crisis_text/messages.csv")),
        image_count: a.image_count,
        report_count: a.report_count,
        rounds: a.rounds,
        batch_size: a.batch_size,
    };
    let models = load_models(cfg, None)?;
    let report = outpost::bench::run(cfg, &models, &req, &|m| eprintln!("{m}"))?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", text::bench(&report, req.rounds.max(1)));
    }
    Ok(ExitCode::SUCCESS)
}

fn open_existing_store(cfg: &AgentConfig) -> Result<Store> {
    let db = cfg.database_path();
    if !db.exists() {
        bail!(
            "no database at {}: run `outpost analyze` first",
            db.display()
        );
    }
    Ok(Store::open(&db)?)
}

fn feedback_command(cfg: &AgentConfig, command: FeedbackCommand) -> Result<ExitCode> {
    let mut store = open_existing_store(cfg)?;
    match command {
        FeedbackCommand::List {
            pending,
            limit,
            json,
        } => {
            let rows = store.list_feedback(pending, limit)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let c = store.counters()?;
                outln!(
                    "{} waiting to sync, {} synced, {} reviewed today; last sync: {}",
                    c.waiting_to_sync,
                    c.synced,
                    c.reviewed_today,
                    c.last_sync.as_deref().unwrap_or("never")
                );
                rows.iter().for_each(|f| out!("{}", text::feedback(f)));
            }
        }
        FeedbackCommand::Show { id } => {
            let f = store
                .feedback(&id)?
                .with_context(|| format!("no feedback {id}"))?;
            outln!("{}", serde_json::to_string_pretty(&f)?);
        }
        FeedbackCommand::Give {
            item,
            labels,
            locator,
            model,
            new,
        } => {
            let manifests = read_manifests(&cfg.models_dir())?;
            let g = outpost::decisions::Give {
                item,
                locator,
                model,
                labels,
                new_labels: new,
            };
            let f = outpost::decisions::give(&mut store, cfg, &manifests, g)?;
            out!("{}", text::feedback(&f));
        }
        FeedbackCommand::Undo { id } => {
            let restored = store.undo_feedback(&id)?;
            outln!("undone {id}");
            if let Some(r) = restored {
                out!("the earlier decision is active again: ");
                out!("{}", text::feedback(&r));
            }
        }
        FeedbackCommand::Import {
            file,
            allow_new_labels,
        } => {
            let manifests = read_manifests(&cfg.models_dir())?;
            let r = outpost::decisions::import_csv(
                &mut store,
                cfg,
                &manifests,
                &file,
                allow_new_labels,
            )?;
            for (row, why) in &r.refused {
                eprintln!("row {row}: {why}");
            }
            outln!(
                "imported {} decisions from {}; {} rows refused",
                r.recorded,
                file.display(),
                r.refused.len()
            );
            if !r.refused.is_empty() {
                return Ok(ExitCode::from(EXIT_PARTIAL));
            }
        }
        FeedbackCommand::Export { file, plain } => {
            let e = outpost::decisions::export_usb(&store, &cfg.data_dir(), &file, plain)?;
            outln!(
                "wrote {} pending decisions to {} ({}, sha256 {}); they stay pending here until the agent syncs",
                e.header.records,
                file.display(),
                if e.sealed {
                    "sealed for the server this device enrolled with"
                } else {
                    "NOT encrypted: keep the stick safe"
                },
                &e.header.sha256[..16]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
