//! `outpost`: the field agent's command line. Parses arguments and calls the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use outpost::analyze::{self, AnalyzeOptions, ModelSet};
use outpost::config::AgentConfig;
use outpost::export::{self, ExportFilter, Format};
use outpost::model::{self, runtime, LoadedModel, Task};
use outpost::store::Store;
use outpost::{out, outln};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Exit code when some inputs failed but others were analysed.
const EXIT_PARTIAL: u8 = 3;

/// Outpost field agent: offline analysis of satellite imagery and crisis reports.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: $OUTPOST_CONFIG, ~/.config/outpost/agent.toml, /etc/outpost/agent.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the database and downloaded models live (default: ~/.local/share/outpost).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Folder of model bundles (default: <data-dir>/models, else the bundled models/).
    #[arg(long, global = true, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// The ONNX Runtime library file (libonnxruntime.so.1.31.1).
    #[arg(long, global = true, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyze image tiles, GeoTIFF scenes and written reports (files or folders), offline.
    ///
    /// Images: .jpg .jpeg .png .tif .tiff (scenes are cut into tiles). Reports: .txt and .md
    /// (one report per file), .csv (one per row) and .jsonl (one per line). Results go to the
    /// agent's database; --format/--out also export them. Exit code 0: all inputs analysed;
    /// 3: some inputs failed (listed in the summary); 1: nothing could be done.
    Analyze(AnalyzeArgs),
    /// Export stored results (default: those of the last run).
    Export(ExportArgs),
    /// Measure end-to-end throughput against raw ONNX Runtime on the same model, side by side.
    Bench {
        /// Folder of image tiles (default: <shared data>/eurosat).
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// CSV of reports (default: <shared data>/crisis_text/messages.csv).
        #[arg(long, value_name = "FILE")]
        reports: Option<PathBuf>,
        /// Image tiles per round.
        #[arg(long, default_value_t = 1024)]
        image_count: usize,
        /// Reports per round.
        #[arg(long, default_value_t = 1000)]
        report_count: usize,
        /// Rounds (raw and end-to-end alternate; medians are reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Items per batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Confirm or correct predictions from the command line, and manage the feedback outbox.
    Feedback {
        #[command(subcommand)]
        command: FeedbackCommand,
    },
    /// Review predictions in a local web page: least confident first, keyboard only, offline.
    Review {
        /// Address to listen on. The page has no login: keep it on 127.0.0.1 unless you
        /// know who can reach the address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        /// Name recorded with each decision (default: feedback.annotator, else the login name).
        #[arg(long, value_name = "NAME")]
        annotator: Option<String>,
        /// Send the raw tile or report text with every decision (default: the config's
        /// feedback.send_images and feedback.send_reports).
        #[arg(long)]
        include_content: bool,
    },
    /// The long-running agent: the review page plus a background loop that syncs feedback
    /// whenever the server is reachable (backing off while it is not).
    Run(RunArgs),
    /// Check this installation: ONNX Runtime, models, database, disk space, server, clock.
    ///
    /// Prints each problem with its fix. Exit code 1 if a check failed (warnings do not count).
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register this agent with the central server using the operator's one-time code.
    Enroll {
        /// The server's URL, such as https://outpost.example.org
        server_url: String,
        /// The code printed by `outpost-server devices add`.
        code: String,
    },
    /// Push the feedback outbox to the server once, then check for model updates (if a
    /// root is pinned: update.root in the config).
    Sync,
    /// Check for model updates once: verify the signed metadata from the pinned root,
    /// download what this device should run (resuming partial files), validate it and
    /// switch. Exit code 1 if something was refused (the current models keep serving).
    Update(UpdateArgs),
    /// Delete reviewed items whose decisions the server acknowledged (retention policy):
    /// the tile or report, its predictions and embeddings, its decisions. Unreviewed items
    /// and anything not yet synced stay. Securely: freed pages are zeroed and the database
    /// rebuilt (VACUUM).
    Purge(PurgeArgs),
    /// Encrypt the agent's data at rest (SQLCipher; an existing database is converted).
    ///
    /// --passphrase (laptops): the key is wrapped under a passphrase (Argon2id), asked for
    /// by every command that reads items. --systemd-creds (unattended boxes, as root): the
    /// key is sealed by systemd-creds (TPM2 where present, else the host key). Prints a
    /// recovery key once: keep it away from the device.
    Encrypt(EncryptArgs),
    /// Change the passphrase (only the 32-byte key is rewrapped; the database is not
    /// re-encrypted). The current passphrase is asked for, or $OUTPOST_PASSPHRASE_FILE read.
    Passphrase(PassphraseArgs),
    /// What is waiting, when the last sync succeeded, and why the last one failed.
    Status(StatusArgs),
    /// Inspect and check model bundles.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

/// Arguments of `status`.
#[derive(clap::Args)]
struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `purge`.
#[derive(clap::Args)]
struct PurgeArgs {
    /// Only items whose last decision was acknowledged at least this many days ago
    /// (default: retention.purge_after_days in the config, 30).
    #[arg(long, value_name = "DAYS")]
    older_than_days: Option<u32>,
    /// Count what would go, delete nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Arguments of `update`.
#[derive(clap::Args)]
struct UpdateArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `run`.
#[derive(clap::Args)]
struct RunArgs {
    /// Address of the review page.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8470")]
    listen: std::net::SocketAddr,
    /// Name recorded with each decision.
    #[arg(long, value_name = "NAME")]
    annotator: Option<String>,
    /// Upload cap in kilobytes per second (default: none).
    #[arg(long, value_name = "KB")]
    bandwidth_kbps: Option<u64>,
    /// Seconds between outbox checks when nothing happens.
    #[arg(long, default_value_t = 60)]
    idle_check_secs: u64,
    /// Longest wait between tries while the server is unreachable, in seconds.
    #[arg(long, default_value_t = 600)]
    max_backoff_secs: u64,
}

/// Arguments of `export`.
#[derive(clap::Args)]
struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Output file (default: standard output).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Export this run instead of the last one.
    #[arg(long, conflicts_with = "all")]
    run: Option<i64>,
    /// Export every stored prediction.
    #[arg(long)]
    all: bool,
    /// Only this model.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

/// Arguments of `passphrase`.
#[derive(clap::Args)]
struct PassphraseArgs {
    /// The passphrase is lost: prove the right to the data with the recovery key
    /// printed by `outpost encrypt` instead (read from this file, or asked for with `-`).
    #[arg(long, value_name = "FILE")]
    recovery_key: Option<PathBuf>,
    /// Read the new passphrase from this file instead of asking twice.
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
}

/// Arguments of `encrypt`.
#[derive(clap::Args)]
struct EncryptArgs {
    /// Keep the key under a passphrase.
    #[arg(
        long,
        conflicts_with = "systemd_creds",
        required_unless_present = "systemd_creds"
    )]
    passphrase: bool,
    /// Seal the key with systemd-creds.
    #[arg(long)]
    systemd_creds: bool,
    /// Read the new passphrase from this file instead of asking twice.
    #[arg(long, value_name = "FILE", requires = "passphrase")]
    passphrase_file: Option<PathBuf>,
}

/// `outpost analyze`: what to read and how.
#[derive(clap::Args)]
struct AnalyzeArgs {
    /// Files and folders to analyze.
    #[arg(required = true, value_name = "PATH")]
    inputs: Vec<PathBuf>,
    /// Export this run's results in a format (to --out, or standard output).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// File to export to (the format follows the extension if --format is not given).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Only run the model with this name.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// CSV column or JSON field with the report text.
    #[arg(long, value_name = "NAME")]
    text_field: Option<String>,
    /// Analyze again items already analysed by the same model version.
    #[arg(long)]
    force: bool,
    /// Image tiles per inference batch (reports: analyze.text_batch_size in the config).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tile size for scenes in pixels (default: the model's input size).
    #[arg(long)]
    tile_size: Option<u32>,
    /// Overlap between scene tiles in pixels.
    #[arg(long)]
    tile_overlap: Option<u32>,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json_summary: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Subcommand)]
enum FeedbackCommand {
    /// List decisions, newest first.
    List {
        /// Only those waiting to be sent.
        #[arg(long)]
        pending: bool,
        /// Most rows to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one decision.
    Show {
        /// Feedback id (UUID).
        id: String,
    },
    /// Give labels to an item (by item id, or by its source file and --locator).
    Give {
        /// Item id, or the file the item came from.
        item: String,
        /// The label, or several for a multi-label model.
        #[arg(required = true)]
        labels: Vec<String>,
        /// Where in the file: "tile x,y,w,h" or "row N".
        #[arg(long)]
        locator: Option<String>,
        /// The model answered (default: the item's newest).
        #[arg(long)]
        model: Option<String>,
        /// The labels are new classes the model does not know yet (without this, an
        /// unknown label is refused: most are typos).
        #[arg(long)]
        new: bool,
    },
    /// Take back a decision that has not been sent yet.
    Undo {
        /// Feedback id (UUID).
        id: String,
    },
    /// Import labels in bulk from a CSV: columns item_id (or source and locator), label (or
    /// labels, separated by ';'), and optionally model.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Accept labels the model does not know as new classes (otherwise those rows are refused).
        #[arg(long)]
        allow_new_labels: bool,
    },
    /// Write every pending decision to one checksummed file for a USB stick (when there is
    /// no network at all). An enrolled agent seals it so that only its server can read it.
    /// The decisions stay pending until the agent syncs; the server imports each decision
    /// once, however often it arrives.
    Export {
        /// The file to write.
        file: PathBuf,
        /// Write it unencrypted even though this device could seal it (or has no key to).
        #[arg(long)]
        plain: bool,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the installed bundles: every version on disk, the active one, pins and failures.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch a model back to the version that was active before the current one.
    Rollback {
        /// Model name.
        name: String,
    },
    /// Switch a model to an installed version and keep it there (updates leave it alone).
    Pin {
        /// Model name.
        name: String,
        /// An installed version.
        version: String,
    },
    /// Let updates move a pinned model again.
    Unpin {
        /// Model name.
        name: String,
    },
    /// Install a model update carried on a USB stick (`outpost-server models export-usb`),
    /// verified against the pinned root exactly like an online update.
    Install {
        /// The update file.
        file: PathBuf,
        /// Install even if the file's signed timestamp expired longer ago than
        /// update.usb_max_stale_days (said, recorded and reported to the server).
        #[arg(long)]
        allow_stale: bool,
    },
    /// Verify every bundle's files and run its golden inputs through ONNX Runtime.
    Verify,
    /// Print the "files" object of a manifest for a bundle folder (for your own models).
    Hash {
        /// The bundle folder.
        dir: PathBuf,
    },
}

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
    runtime::init(cfg.runtime.library.as_deref())?;
    let dir = cfg.models_dir();
    let (models, failed) = model::load_all(&dir, cfg.session_options());
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

/// Whether a command reads or writes item data (so needs the data key when encrypted).
fn reads_items(c: &Command) -> bool {
    !matches!(
        c,
        Command::Doctor { .. }
            | Command::Bench { .. }
            | Command::Encrypt(_)
            | Command::Passphrase(_)
            | Command::Run(_)
            | Command::Review { .. }
            | Command::Models {
                command: ModelsCommand::Verify | ModelsCommand::Hash { .. }
            }
    )
}

/// Reads a secret from a file (trailing newline dropped).
fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<String>> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
    Ok(zeroize::Zeroizing::new(
        s.trim_end_matches(['\n', '\r']).to_string(),
    ))
}

/// Unlocks the data folder if it is encrypted: a sealed key unseals by itself; a
/// passphrase comes from $OUTPOST_PASSPHRASE_FILE or is asked for on the terminal (three
/// tries). `interactive_only_if_tty`: without a terminal and without the variable, return
/// `Ok(false)` (still locked) instead of failing.
fn unlock(cfg: &AgentConfig, may_stay_locked: bool) -> Result<bool> {
    use outpost::store::vault::{self, KeyMode, Protection, VaultError};
    use std::io::IsTerminal;
    let dir = cfg.data_dir();
    match vault::protection(&dir)? {
        Protection::Plain | Protection::Unlocked(_) => Ok(true),
        Protection::Locked(KeyMode::SystemdCreds) => {
            vault::unlock_unattended(&dir)?;
            Ok(true)
        }
        Protection::Locked(KeyMode::Passphrase) => {
            if let Some(f) = std::env::var_os(vault::PASSPHRASE_FILE_ENV) {
                let p = read_secret_file(Path::new(&f))?;
                vault::unlock_with_passphrase(&dir, &p)?;
                return Ok(true);
            }
            if !std::io::stdin().is_terminal() {
                if may_stay_locked {
                    return Ok(false);
                }
                return Err(vault::key_for_database(&cfg.database_path())
                    .err()
                    .map(anyhow::Error::from)
                    .unwrap_or_else(|| anyhow::anyhow!("the agent's data is locked")));
            }
            for _ in 0..3 {
                let p = prompt(
                    &format!("Passphrase for {}: ", dir.display()),
                    "passphrase",
                    CURRENT_INSTEAD,
                )?;
                match vault::unlock_with_passphrase(&dir, &p) {
                    Ok(_) => return Ok(true),
                    Err(VaultError::WrongPassphrase) => eprintln!("wrong passphrase"),
                    Err(e) => return Err(e.into()),
                }
            }
            bail!("three wrong passphrases: nothing was read or changed")
        }
    }
}

/// What to do instead of typing the current passphrase.
const CURRENT_INSTEAD: &str = "set OUTPOST_PASSPHRASE_FILE to a file holding it";

fn prompt(
    text: &str,
    what: &'static str,
    instead: &'static str,
) -> Result<zeroize::Zeroizing<String>> {
    Ok(outpost::cli::prompt_secret(text, what, instead)?)
}

/// A new passphrase: from a file, or typed twice on the terminal. `instead` says how to
/// give it in a file (said when there is no terminal).
fn new_passphrase(
    file: Option<&Path>,
    instead: &'static str,
) -> Result<zeroize::Zeroizing<String>> {
    if let Some(f) = file {
        return read_secret_file(f);
    }
    let a = prompt("New passphrase: ", "new passphrase", instead)?;
    let b = prompt("The same again: ", "new passphrase", instead)?;
    if a != b {
        bail!("the two passphrases differ: nothing was changed");
    }
    Ok(a)
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
    let models = load_models(cfg, model.as_deref())?;
    let mut set = ModelSet::default();
    for m in &models {
        tracing::info!(model = %m.id(), task = m.task().as_str(), "model ready");
        match m.task() {
            Task::ImageClassification => set.image.push(m.clone()),
            Task::TextClassification => set.text.push(m.clone()),
        }
    }
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
        print_summary(&summary, &db);
    }
    // Drift: score the new predictions window by window and warn about unfamiliar input.
    let windows = outpost::drift::update_all(&store, &cfg.models_dir(), &cfg.drift);
    if !json_summary {
        for d in outpost::drift::summary(&store)? {
            if d.state != outpost::drift::DriftState::Ok
                && windows.iter().any(|w| w.model_name == d.model_name)
            {
                eprintln!("{}", drift_line(&d));
            }
        }
    }
    let format = format.or_else(|| out.as_deref().and_then(format_from_extension));
    if let Some(format) = format {
        let filter = ExportFilter {
            run_id: Some(summary.run_id),
            model_name: model.clone(),
        };
        do_export(&store, &models, &filter, format, out.as_deref())?;
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
    let manifests = read_manifests(&cfg.models_dir());
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
    let mut opts = review_options(cfg, listen, annotator, false)?;
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
                print_update(&r);
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
    outln!(
        "{} {} reviewed and synced items older than {days} days ({} predictions, {} decisions)",
        if dry_run { "would purge" } else { "purged" },
        r.items,
        r.predictions,
        r.feedback
    );
    if r.kept_unsynced > 0 {
        outln!(
            "kept {} reviewed items whose decisions are not synced yet (run `outpost sync`)",
            r.kept_unsynced
        );
    }
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
    outln!(
        "sent {} decisions in {} batches ({} bytes); {} were already on the server",
        r.acked,
        r.batches,
        r.bytes_sent,
        r.duplicates
    );
    for x in &r.refused {
        outln!("  refused {}: {}", x.feedback_id, x.reason);
    }
    use outpost::daemon::UpdateAfterSync;
    match update.map(|u| *u) {
        Some(UpdateAfterSync::Checked(u)) => print_update(&u),
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
        let (server, name, c, drift) = (&st.server_url, &st.device_name, &st.counters, &st.drift);
        let (err, update_check, update_err) = (
            &st.last_sync_error,
            &st.last_update_check,
            &st.last_update_error,
        );
        match (&server, &name) {
            (Some(s), Some(n)) => outln!("enrolled as {n} with {s}"),
            _ => outln!("not enrolled (outpost enroll <server-url> <code>)"),
        }
        outln!(
            "feedback waiting to sync: {}; synced: {}; reviewed today: {}",
            c.waiting_to_sync,
            c.synced,
            c.reviewed_today
        );
        outln!(
            "last successful sync: {}",
            c.last_sync.as_deref().unwrap_or("never")
        );
        if let Some(e) = err {
            outln!("last sync failed: {e}");
        }
        outln!(
            "last model update check: {}",
            update_check.as_deref().unwrap_or("never")
        );
        if let Some(e) = update_err {
            outln!("last update refused: {e}");
        }
        if drift.is_empty() {
            outln!(
                "drift: not enough analysed items yet (windows of {})",
                cfg.drift.window
            );
        }
        for d in drift {
            outln!("{}", drift_line(d));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cfg = load_config(&cli)?;
    if reads_items(&cli.command) {
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
            let opts = review_options(&cfg, listen, annotator, include_content)?;
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
        Command::Bench {
            images,
            reports,
            image_count,
            report_count,
            rounds,
            batch_size,
            json,
        } => bench_command(
            &cfg,
            images,
            reports,
            image_count,
            report_count,
            rounds,
            batch_size,
            json,
        ),
    }
}

/// One line per model: state, since when, score, and the likely cause of the last alert.
fn drift_line(d: &outpost::drift::ModelDrift) -> String {
    let mut line = format!(
        "drift {}: {} since {} (latest window: {} of {} items unfamiliar; {} windows)",
        d.model_name,
        d.state.as_str().to_uppercase(),
        d.since,
        d.latest.novel,
        d.latest.items,
        d.windows
    );
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
        if d.state != outpost::drift::DriftState::Ok {
            line.push_str(
                "\n  unfamiliar items are at the front of the review queue: `outpost review`",
            );
        }
    }
    line
}

fn read_manifests(dir: &Path) -> Vec<model::Manifest> {
    model::bundle::discover(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| model::bundle::read_manifest(d).ok())
        .collect()
}

fn format_from_extension(p: &Path) -> Option<Format> {
    match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "json" => Some(Format::Json),
        "csv" => Some(Format::Csv),
        "geojson" => Some(Format::Geojson),
        _ => None,
    }
}

fn do_export(
    store: &Store,
    models: &[Arc<LoadedModel>],
    filter: &ExportFilter,
    format: Format,
    out: Option<&Path>,
) -> Result<()> {
    let rows = export::load_rows(store, filter, &|n, v| {
        models
            .iter()
            .find(|m| m.manifest().name == n && m.manifest().version == v)
            .map(|m| m.manifest().labels.clone())
    })?;
    write_rows(&rows, format, out)
}

fn write_rows(rows: &[export::ExportRow], format: Format, out: Option<&Path>) -> Result<()> {
    let left_out = match out {
        Some(path) => {
            // Write to a temporary file and rename, so a reader never sees half a file.
            let tmp = path.with_extension("partial");
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?,
            );
            let n = export::write(rows, format, &mut f)?;
            use std::io::Write;
            f.flush()?;
            drop(f);
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
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

fn print_summary(s: &analyze::Summary, db: &Path) {
    let analysed = s.image_items + s.text_items;
    outln!(
        "Analysed {analysed} items ({} image tiles, {} reports) from {} files in {:.1} s.",
        s.image_items,
        s.text_items,
        s.files,
        s.elapsed_secs
    );
    if s.sightings != analysed + s.already_analysed {
        outln!(
            "  Seen in {} places: the same tile or report found in several places is one item, and every place is kept (export has them all).",
            s.sightings
        );
    }
    if s.already_analysed > 0 {
        outln!(
            "  {} items were already analysed by the same model version (use --force to redo).",
            s.already_analysed
        );
    }

    if s.skipped_nodata > 0 {
        outln!(
            "  {} scene tiles skipped: mostly nodata or transparent.",
            s.skipped_nodata
        );
    }
    if s.truncated_reports > 0 {
        outln!(
            "  {} reports were longer than the model reads and were cut.",
            s.truncated_reports
        );
    }
    if s.ignored_files > 0 {
        outln!(
            "  {} files in folders were ignored (not images or reports).",
            s.ignored_files
        );
    }
    for (model, counts) in &s.labels {
        let mut v: Vec<_> = counts.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = v.iter().take(12).map(|(l, n)| format!("{l} {n}")).collect();
        let more = if v.len() > 12 {
            format!(", and {} more labels", v.len() - 12)
        } else {
            String::new()
        };
        outln!("  {model}: {}{more}", shown.join(", "));
    }
    if !s.failures.is_empty() {
        outln!("{} inputs failed:", s.failures.len());
        for f in s.failures.iter().take(20) {
            match &f.locator {
                Some(l) => outln!("  {} ({l}): {}", f.source, f.reason),
                None => outln!("  {}: {}", f.source, f.reason),
            }
        }
        if s.failures.len() > 20 {
            outln!(
                "  ... and {} more (see the failures table of run {})",
                s.failures.len() - 20,
                s.run_id
            );
        }
    }
    if s.interrupted {
        outln!("Interrupted: run the same command again to continue where it stopped.");
    }
    outln!("Results: run {} in {}", s.run_id, db.display());
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
                    print_update(&r);
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
                return Ok(ExitCode::SUCCESS);
            }
            if !list.is_empty() {
                outln!("installed models: {}", installed.root().display());
                for l in &list {
                    outln!(
                        "  {:<20} active {:<10} installed {}{}",
                        l.model,
                        l.active.as_deref().unwrap_or("none"),
                        l.versions.join(", "),
                        l.state
                            .pinned
                            .as_ref()
                            .map(|p| format!("  (pinned at {p})"))
                            .unwrap_or_default()
                    );
                    for (v, why) in &l.state.failed {
                        outln!("      {v} failed: {why}");
                    }
                }
            }
            let dir = cfg.models_dir();
            outln!("models folder: {}", dir.display());
            let dirs = model::bundle::discover(&dir).unwrap_or_default();
            if dirs.is_empty() {
                outln!("  (no bundles)");
            }
            for d in dirs {
                match model::bundle::read_manifest(&d) {
                    Ok(m) => {
                        let size: u64 = m.files.values().map(|f| f.size).sum();
                        outln!(
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
                    Err(e) => outln!("  {}: {e}", d.display()),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Verify => {
            runtime::init(cfg.runtime.library.as_deref())?;
            let dir = cfg.models_dir();
            let (models, failed) = model::load_all(&dir, cfg.session_options());
            let mut ok = failed.is_empty();
            for (path, e) in &failed {
                outln!("FAIL {}: {e}", path.display());
            }
            for m in &models {
                match outpost::infer::golden::check(m) {
                    Ok(Some(r)) if r.passed() => outln!(
                        "ok   {}: files verified; {} golden cases within {:.0e} (max difference {:.1e})",
                        m.id(),
                        r.cases,
                        r.tolerance,
                        r.max_abs_diff
                    ),
                    Ok(Some(r)) => {
                        ok = false;
                        outln!("FAIL {}: golden outputs not reproduced:", m.id());
                        for f in &r.failures {
                            outln!("       {f}");
                        }
                    }
                    Ok(None) => outln!("ok   {}: files verified (no golden cases)", m.id()),
                    Err(e) => {
                        ok = false;
                        outln!("FAIL {}: {e}", m.id());
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_command(
    cfg: &AgentConfig,
    images: Option<PathBuf>,
    reports: Option<PathBuf>,
    image_count: usize,
    report_count: usize,
    rounds: usize,
    batch_size: usize,
    json: bool,
) -> Result<ExitCode> {
    use outpost::bench;
    let shared = std::env::var_os("OUTPOST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let images = images.unwrap_or_else(|| shared.join("eurosat"));
    let reports = reports.unwrap_or_else(|| shared.join("crisis_text/messages.csv"));
    let models = load_models(cfg, None)?;
    let rss_after_load = bench::proc_status_mib("VmRSS:");
    let work = tempfile_dir()?;
    let threads = cfg.session_options().intra_threads;
    let mut report = bench::BenchReport {
        threads,
        batch_size,
        image: None,
        text: None,
        rss_after_load_mib: rss_after_load,
        peak_rss_mib: 0.0,
    };
    let rounds = rounds.max(1);
    if let Some(m) = models
        .iter()
        .find(|m| m.task() == Task::ImageClassification)
    {
        let files = bench::sample_images(&images, image_count);
        if files.is_empty() {
            eprintln!(
                "no images under {}: image benchmark skipped (use --images DIR)",
                images.display()
            );
        } else {
            eprintln!(
                "images: {} tiles x {rounds} rounds with {} ...",
                files.len(),
                m.id()
            );
            report.image = Some(bench::bench_images(
                cfg, m, &files, rounds, batch_size, &work,
            )?);
        }
    }
    if let Some(m) = models.iter().find(|m| m.task() == Task::TextClassification) {
        if reports.is_file() {
            let texts = bench::sample_reports(&reports, report_count)?;
            eprintln!(
                "reports: {} reports x {rounds} rounds with {} ...",
                texts.len(),
                m.id()
            );
            let text_batch = cfg.analyze.text_batch_size.max(1);
            eprintln!("reports use batches of {text_batch} (analyze.text_batch_size)");
            report.text = Some(bench::bench_text(
                cfg, m, &texts, rounds, text_batch, &work,
            )?);
        } else {
            eprintln!(
                "no report CSV at {}: text benchmark skipped (use --reports FILE)",
                reports.display()
            );
        }
    }
    report.peak_rss_mib = bench::proc_status_mib("VmHWM:");
    let _ = std::fs::remove_dir_all(&work);
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("threads per session: {threads}, batch size: {batch_size}, rounds: {rounds} (medians)");
    for (kind, c) in [("tiles", &report.image), ("reports", &report.text)] {
        if let Some(c) = c {
            outln!(
                "{:<8} {:<28} raw ONNX Runtime {:>8.1}/s   end to end {:>8.1}/s   ratio {:.2}",
                kind,
                c.model,
                c.raw_median,
                c.e2e_median,
                c.ratio_median
            );
            outln!(
                "         best raw configuration found: {}",
                c.raw_search.best
            );
        }
    }
    outln!(
        "memory: {:.0} MiB resident after loading models, {:.0} MiB peak",
        report.rss_after_load_mib,
        report.peak_rss_mib
    );
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("outpost-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
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

fn print_feedback(f: &outpost::store::feedback::Feedback) {
    let new = if f.new_labels.is_empty() {
        String::new()
    } else {
        format!("  new: {}", f.new_labels.join(";"))
    };
    outln!(
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
                rows.iter().for_each(print_feedback);
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
            let manifests = read_manifests(&cfg.models_dir());
            let g = outpost::decisions::Give {
                item,
                locator,
                model,
                labels,
                new_labels: new,
            };
            let f = outpost::decisions::give(&mut store, cfg, &manifests, g)?;
            print_feedback(&f);
        }
        FeedbackCommand::Undo { id } => {
            let restored = store.undo_feedback(&id)?;
            outln!("undone {id}");
            if let Some(r) = restored {
                out!("the earlier decision is active again: ");
                print_feedback(&r);
            }
        }
        FeedbackCommand::Import {
            file,
            allow_new_labels,
        } => {
            let manifests = read_manifests(&cfg.models_dir());
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

fn print_update(r: &outpost::update::UpdateReport) {
    for m in &r.installed {
        outln!("installed and switched to {m}");
    }
    for m in &r.rolled_back {
        outln!("rolled back {m}");
    }
    for m in &r.refused {
        outln!("refused: {m}");
    }
    for m in &r.unchanged {
        outln!("unchanged: {m}");
    }
    outln!(
        "root v{}, targets v{}; {} bytes downloaded ({} files fetched, {} already here)",
        r.root_version,
        r.targets_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
        r.bytes_downloaded,
        r.files_fetched,
        r.files_cached
    );
}

fn review_options(
    cfg: &AgentConfig,
    listen: std::net::SocketAddr,
    annotator: Option<String>,
    include_content: bool,
) -> Result<outpost::review::ReviewOptions> {
    // A fresh data folder gets an empty database: the page says to analyse first.
    let db = cfg.database_path();
    let mut opts = outpost::review::ReviewOptions::new(db, cfg.models_dir());
    opts.listen = listen;
    opts.annotator = annotator.unwrap_or_else(|| cfg.feedback.annotator());
    opts.send_images = include_content || cfg.feedback.send_images;
    opts.send_reports = include_content || cfg.feedback.send_reports;
    opts.image_limits = outpost::infer::image::ImageLimits {
        max_pixels: cfg.limits.max_image_pixels,
        max_file_bytes: cfg.limits.max_file_bytes,
    };
    Ok(opts)
}
