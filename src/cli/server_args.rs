//! The central server's command line (`outpost-server`): its commands, arguments and help
//! texts. They are defined in the library, as uv keeps its `uv-cli` apart from the binary,
//! so that `tests/readme_commands.rs` can check that every command the README shows still
//! parses, and so that the binary is only the dispatch from a command to the library call
//! and what it prints.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Outpost central server: ingests field feedback, retrains, signs and publishes models.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (see config/server.toml).
    #[arg(long, global = true, env = "OUTPOST_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the server keeps its database and files (default: /var/lib/outpost-server).
    #[arg(long, global = true, env = "OUTPOST_SERVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database instead of data_dir/server.db, e.g. postgres://outpost@db:5432/outpost
    /// (default: `database_url` of the config file).
    #[arg(
        long,
        global = true,
        env = "OUTPOST_SERVER_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// More log output.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the agents' API, and the operators' dashboard under /admin/.
    Serve {
        /// Address to listen on (default: 127.0.0.1:8480).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Operator accounts of the dashboard (`serve`, /admin/).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Enroll, list and revoke field devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Create the signing keys: root keys for offline storage, online keys for the server.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Publish model bundles as signed releases.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Import feedback carried on a USB stick (`outpost feedback export`).
    Feedback {
        #[command(subcommand)]
        command: FeedbackCommand,
    },
    /// Retrain a model's head on its base data plus field feedback, evaluate it against the
    /// current model on held-out data, and publish it if it does not regress.
    Train {
        /// Model name (as published).
        model: String,
        #[command(flatten)]
        overrides: TrainOverrides,
    },
    /// Tasks: new questions (is this building damaged?) trained as models of their own on
    /// the backbone of a published model.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Training runs and their outcome.
    Runs {
        /// Only this model.
        model: Option<String>,
    },
    /// Training jobs (queued, running, done, failed), newest first: which server process
    /// took each, how often, and until when its lease holds.
    Jobs {
        /// How many jobs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Drift reported by the devices: per device and model the latest state, since when and
    /// the likely cause, then per group.
    Drift,
    /// The audit log: every operator command and automatic decision, newest first.
    Audit {
        /// How many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// `train`'s overrides of the configured training settings.
#[derive(clap::Args)]
pub struct TrainOverrides {
    /// Keep the candidate for an operator even if it passes the gate.
    #[arg(long)]
    pub no_publish: bool,
    /// Override the configured tolerance (largest allowed drop, 0.02 = 2 points).
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Override where a passing candidate goes: channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Override: device groups (repeat).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Override: share of devices.
    #[arg(long)]
    pub percent: Option<u8>,
}

#[derive(Subcommand)]
pub enum TasksCommand {
    /// Define a task (or redefine one): `tasks define damage --backbone landcover --labels
    /// damage,no_damage`. It trains like any model (`train damage`, or automatically) and
    /// is published to --channel when it beats the majority class and the label prior.
    Define {
        /// Task name, which becomes its model name (lower-case letters, digits, '-').
        name: String,
        /// The published model whose backbone embeds its items.
        #[arg(long)]
        backbone: String,
        /// Its labels, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        labels: Vec<String>,
        /// Several labels per item rather than one.
        #[arg(long)]
        multi_label: bool,
        /// Channel a passing candidate goes to.
        #[arg(long, default_value = "canary")]
        channel: String,
    },
    /// Defined tasks.
    List,
    /// Tasks the field proposes: labels reviewers introduced that no task claims yet.
    Proposed,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create an operator account; prints a generated password unless --password-stdin.
    Add {
        /// The operator's name (letters, digits, '.', '-', '_').
        name: String,
        /// Read the password from standard input instead (at least 12 characters).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give an operator a new password (generated unless --password-stdin); ends their
    /// sessions.
    Passwd {
        /// The operator's name.
        name: String,
        /// Read the password from standard input instead.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an operator account; their sessions end at once.
    Remove {
        /// The operator's name.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum DevicesCommand {
    /// Register a device and print its one-time enrollment code.
    Add {
        /// A name for the device (unique).
        #[arg(long)]
        name: String,
        /// Its group (rollouts target groups).
        #[arg(long, default_value = "default")]
        group: String,
        /// Hours the code stays valid (default: enrollment_valid_hours in the config, 72).
        #[arg(long)]
        valid_hours: Option<i64>,
    },
    /// List devices.
    List,
    /// Revoke a device: refused from its next request.
    Revoke {
        /// Name or id.
        device: String,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create root keys (to keep offline) and online keys, and sign root metadata version 1.
    Init {
        /// Where the root keys go: removable media kept offline, not the server's disk.
        #[arg(long, value_name = "DIR")]
        root_keys_dir: PathBuf,
        /// How many root keys.
        #[arg(long, default_value_t = 3)]
        root_keys: usize,
        /// How many root keys must sign a new root.
        #[arg(long, default_value_t = 2)]
        threshold: u32,
    },
    /// Rotate keys: new online keys for the roles named, and optionally a new set of root
    /// keys. Needs a threshold of the current root keys (mount the offline medium).
    Rotate {
        /// The offline folder holding the current root keys (new root keys go there too).
        #[arg(long, value_name = "DIR")]
        root_keys_dir: PathBuf,
        /// Online roles to give new keys (repeat): targets, snapshot, timestamp.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Also replace the root keys by this many new ones.
        #[arg(long)]
        new_root_keys: Option<usize>,
        /// Threshold of the new root keys.
        #[arg(long, default_value_t = 2)]
        threshold: u32,
    },
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Published releases and candidates kept by training runs.
    List,
    /// Show the evaluation report of a candidate (from `train`).
    Eval {
        /// Candidate version.
        version: String,
        /// Model (needed if several models have a candidate of that version).
        #[arg(long)]
        model: Option<String>,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish a bundle folder, or a candidate version kept by `train`, as a signed release.
    Publish {
        /// A bundle folder, or a candidate version (see `models list`).
        bundle: String,
        /// Model of the candidate version (needed if several models have it).
        #[arg(long)]
        model: Option<String>,
        /// Channel.
        #[arg(long, default_value = "stable")]
        channel: String,
        /// Device groups (repeat; none: every group).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Share of the devices in those groups, 0-100.
        #[arg(long, default_value_t = 100)]
        percent: u8,
    },
    /// Change who a release goes to: widen (or narrow) its percentage and groups.
    Stage {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Only the release on this channel (default: every channel it is on).
        #[arg(long)]
        channel: Option<String>,
        /// New device groups (repeat; none given: keep the current groups).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Go to every group.
        #[arg(long, conflicts_with = "groups")]
        all_groups: bool,
        /// New share of the devices, 0-100.
        #[arg(long)]
        percent: u8,
    },
    /// Withdraw a release: devices stop installing it and move off it.
    Withdraw {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Only on this channel (default: every channel).
        #[arg(long)]
        channel: Option<String>,
    },
    /// Write a published release and its signed metadata chain to one file for a USB
    /// stick (sites with no network: `outpost models install FILE` on the laptop).
    ExportUsb {
        /// Model name.
        model: String,
        /// Published version.
        version: String,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum FeedbackCommand {
    /// Import a feedback file; each decision is stored once however often it is imported.
    Import {
        /// The file.
        file: PathBuf,
        /// The device it came from (name or id), if the file does not say.
        #[arg(long)]
        device: Option<String>,
    },
}
