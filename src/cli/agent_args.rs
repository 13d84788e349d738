//! The field agent's command line (`outpost`): its commands, arguments and help texts,
//! defined in the library for the same reasons as [`super::server_args`]: a test parses
//! every command the README shows, and the binary is only the dispatch and its printing.

use crate::export::Format;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Outpost field agent: offline analysis of satellite imagery and crisis reports.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (default: $OUTPOST_CONFIG, ~/.config/outpost/agent.toml, /etc/outpost/agent.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the database and downloaded models live (default: ~/.local/share/outpost).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder of model bundles (default: <data-dir>/models, else the bundled models/).
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// The ONNX Runtime library file (libonnxruntime.so.1.31.1).
    #[arg(long, global = true, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    Bench(BenchArgs),
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

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Folder of image tiles (default: <shared data>/eurosat).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// CSV of reports (default: <shared data>/crisis_text/messages.csv).
    #[arg(long, value_name = "FILE")]
    pub reports: Option<PathBuf>,
    /// Image tiles per round.
    #[arg(long, default_value_t = 1024)]
    pub image_count: usize,
    /// Reports per round.
    #[arg(long, default_value_t = 1000)]
    pub report_count: usize,
    /// Rounds (raw and end-to-end alternate; medians are reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Items per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `purge`.
#[derive(clap::Args)]
pub struct PurgeArgs {
    /// Only items whose last decision was acknowledged at least this many days ago
    /// (default: retention.purge_after_days in the config, 30).
    #[arg(long, value_name = "DAYS")]
    pub older_than_days: Option<u32>,
    /// Count what would go, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `update`.
#[derive(clap::Args)]
pub struct UpdateArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Address of the review page.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8470")]
    pub listen: std::net::SocketAddr,
    /// Name recorded with each decision.
    #[arg(long, value_name = "NAME")]
    pub annotator: Option<String>,
    /// Upload cap in kilobytes per second (default: none).
    #[arg(long, value_name = "KB")]
    pub bandwidth_kbps: Option<u64>,
    /// Seconds between outbox checks when nothing happens.
    #[arg(long, default_value_t = 60)]
    pub idle_check_secs: u64,
    /// Longest wait between tries while the server is unreachable, in seconds.
    #[arg(long, default_value_t = 600)]
    pub max_backoff_secs: u64,
}

/// Arguments of `export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Output file (default: standard output).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Export this run instead of the last one.
    #[arg(long, conflicts_with = "all")]
    pub run: Option<i64>,
    /// Export every stored prediction.
    #[arg(long)]
    pub all: bool,
    /// Only this model.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
}

/// Arguments of `passphrase`.
#[derive(clap::Args)]
pub struct PassphraseArgs {
    /// The passphrase is lost: prove the right to the data with the recovery key
    /// printed by `outpost encrypt` instead (read from this file, or asked for with `-`).
    #[arg(long, value_name = "FILE")]
    pub recovery_key: Option<PathBuf>,
    /// Read the new passphrase from this file instead of asking twice.
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
}

/// Arguments of `encrypt`.
#[derive(clap::Args)]
pub struct EncryptArgs {
    /// Keep the key under a passphrase.
    #[arg(
        long,
        conflicts_with = "systemd_creds",
        required_unless_present = "systemd_creds"
    )]
    pub passphrase: bool,
    /// Seal the key with systemd-creds.
    #[arg(long)]
    pub systemd_creds: bool,
    /// Read the new passphrase from this file instead of asking twice.
    #[arg(long, value_name = "FILE", requires = "passphrase")]
    pub passphrase_file: Option<PathBuf>,
}

/// `outpost analyze`: what to read and how.
#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Files and folders to analyze.
    #[arg(required = true, value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
    /// Export this run's results in a format (to --out, or standard output).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// File to export to (the format follows the extension if --format is not given).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Only run the model with this name.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// CSV column or JSON field with the report text.
    #[arg(long, value_name = "NAME")]
    pub text_field: Option<String>,
    /// Analyze again items already analysed by the same model version.
    #[arg(long)]
    pub force: bool,
    /// Image tiles per inference batch (reports: analyze.text_batch_size in the config).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tile size for scenes in pixels (default: the model's input size).
    #[arg(long)]
    pub tile_size: Option<u32>,
    /// Overlap between scene tiles in pixels.
    #[arg(long)]
    pub tile_overlap: Option<u32>,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    pub json_summary: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Subcommand)]
pub enum FeedbackCommand {
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
pub enum ModelsCommand {
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

impl Command {
    /// Whether a command reads or writes item data (so needs the data key when encrypted).
    pub fn reads_items(&self) -> bool {
        !matches!(
            self,
            Command::Doctor { .. }
                | Command::Bench(_)
                | Command::Encrypt(_)
                | Command::Passphrase(_)
                | Command::Run(_)
                | Command::Review { .. }
                | Command::Models {
                    command: ModelsCommand::Verify | ModelsCommand::Hash { .. }
                }
        )
    }
}

impl AnalyzeArgs {
    /// The analysis options: the config's, with what was given on the command line on top.
    pub fn options(&self, cfg: &crate::config::AgentConfig) -> crate::analyze::AnalyzeOptions {
        let mut opts = crate::analyze::AnalyzeOptions::from_config(cfg, self.inputs.clone());
        opts.force = self.force;
        opts.progress = !self.no_progress;
        if let Some(f) = &self.text_field {
            opts.text.field = Some(f.clone());
        }
        if let Some(b) = self.batch_size {
            opts.batch_size = b.max(1);
        }
        if let Some(t) = self.tile_size {
            opts.tile_size = t;
        }
        if let Some(o) = self.tile_overlap {
            opts.tile_overlap = o;
        }
        opts
    }
}

impl BenchArgs {
    /// What to measure; inputs default to the shared data (`$OUTPOST_SHARED_DATA`, else
    /// `../shared/data`).
    pub fn request(&self) -> crate::bench::BenchRequest {
        let shared = std::env::var_os("OUTPOST_SHARED_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("../shared/data"));
        crate::bench::BenchRequest {
            images: self
                .images
                .clone()
                .unwrap_or_else(|| shared.join("eurosat")),
            reports: self
                .reports
                .clone()
                .unwrap_or_else(|| shared.join("crisis_text/messages.csv")),
            image_count: self.image_count,
            report_count: self.report_count,
            rounds: self.rounds,
            batch_size: self.batch_size,
        }
    }
}
