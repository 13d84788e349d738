//! `outpost-server`: the central server's command line. Parses arguments and calls the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use outpost::outln;
use outpost::server;
use outpost::server::config::ServerConfig;
use outpost::server::store::RunStatus;
use outpost::server::store::ServerStore;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Outpost central server: ingests field feedback, retrains, signs and publishes models.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (see config/server.toml).
    #[arg(long, global = true, env = "OUTPOST_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Where the server keeps its database and files (default: /var/lib/outpost-server).
    #[arg(long, global = true, env = "OUTPOST_SERVER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database instead of data_dir/server.db, e.g. postgres://outpost@db:5432/outpost
    /// (default: `database_url` of the config file).
    #[arg(
        long,
        global = true,
        env = "OUTPOST_SERVER_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// More log output.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        /// Keep the candidate for an operator even if it passes the gate.
        #[arg(long)]
        no_publish: bool,
        /// Override the configured tolerance (largest allowed drop, 0.02 = 2 points).
        #[arg(long)]
        tolerance: Option<f64>,
        /// Override where a passing candidate goes: channel.
        #[arg(long)]
        channel: Option<String>,
        /// Override: device groups (repeat).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Override: share of devices.
        #[arg(long)]
        percent: Option<u8>,
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

#[derive(Subcommand)]
enum TasksCommand {
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
enum AdminCommand {
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
enum DevicesCommand {
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
enum KeysCommand {
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
enum ModelsCommand {
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
enum FeedbackCommand {
    /// Import a feedback file; each decision is stored once however often it is imported.
    Import {
        /// The file.
        file: PathBuf,
        /// The device it came from (name or id), if the file does not say.
        #[arg(long)]
        device: Option<String>,
    },
}

/// The models a device last reported running, and its latest refused or rolled-back updates.
fn print_device_models(rows: &[server::store::DeviceModelRow], device_id: &str) {
    for r in rows.iter().filter(|r| r.device_id == device_id) {
        outln!(
            "    model {:<18} runs {:<10}{}  (reported {})",
            r.model,
            r.active_version.as_deref().unwrap_or("none"),
            r.pinned
                .as_ref()
                .map(|p| format!(" pinned at {p}"))
                .unwrap_or_default(),
            r.reported_at
        );
        for (version, kind, reason, at) in &r.failures {
            outln!(
                "      {kind} {}: {reason} ({at})",
                version.as_deref().unwrap_or("metadata")
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = if cli.verbose > 0 { "debug" } else { "info" };
    outpost::cli::init_logging(default, true);
    match run(cli) {
        Ok(_) if outpost::cli::stdout_failed() => ExitCode::FAILURE,
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<ServerConfig> {
    let mut cfg = ServerConfig::load(cli.config.as_deref())?;
    if let Some(d) = &cli.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(u) = &cli.database_url {
        cfg.database_url = Some(u.clone());
    }
    Ok(cfg)
}

fn open_store(cfg: &ServerConfig) -> Result<Arc<dyn ServerStore>> {
    let what = match &cfg.database_url {
        Some(u) if !u.trim().is_empty() => server::store::redact_url(u),
        _ => cfg.data_dir.join("server.db").display().to_string(),
    };
    server::store::open(cfg.database_url.as_deref(), &cfg.data_dir)
        .with_context(|| format!("cannot open the server database {what}"))
}

fn open_repo(
    cfg: &ServerConfig,
    store: &Arc<dyn ServerStore>,
) -> Result<server::repository::Repository> {
    Ok(
        server::repository::Repository::open(&cfg.blob_store, &cfg.data_dir)
            .context("cannot open the model repository's blob store ([blob_store] in the config)")?
            .with_lock(store.clone()),
    )
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cfg = load_config(&cli)?;
    let store = open_store(&cfg)?;
    let repo = open_repo(&cfg, &store)?;
    match cli.command {
        Command::Serve { listen } => {
            let listen = listen.unwrap_or(cfg.listen.clone());
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(server::serve::run(cfg, store, repo, &listen))?;
        }
        Command::Admin { command } => admin(store.as_ref(), command)?,
        Command::Devices { command } => match command {
            DevicesCommand::Add {
                name,
                group,
                valid_hours,
            } => {
                let valid_hours = valid_hours.unwrap_or(cfg.enrollment_valid_hours);
                let n = server::ops::devices::add_device(
                    store.as_ref(),
                    &name,
                    &group,
                    valid_hours,
                    "operator",
                )?;
                let (d, code) = (&n.device, &n.code);
                outln!(
                    "device {} added to group {} (id {})",
                    d.name,
                    d.group,
                    d.device_id
                );
                outln!(
                    "enrollment code (valid until {}, usable once):\n\n    {code}\n",
                    n.expires
                );
                outln!("on the device: outpost enroll <this server's URL> {code}");
            }
            DevicesCommand::List => {
                let device_models = store.device_models()?;
                for d in store.devices()? {
                    outln!(
                        "{:<20} {:<12} {:<20} feedback {:>6}{}  last seen {}  {}",
                        d.name,
                        d.group,
                        server::ops::devices::state(&d),
                        d.feedback,
                        d.pending_feedback
                            .map(|p| format!(" (+{p} pending on the device)"))
                            .unwrap_or_default(),
                        d.last_seen.as_deref().unwrap_or("never"),
                        d.device_id
                    );
                    print_device_models(&device_models, &d.device_id);
                }
            }
            DevicesCommand::Revoke { device } => {
                let d = server::ops::revoke(store.as_ref(), &device, "operator")?;
                outln!(
                    "device {} revoked; it is refused from its next request",
                    d.name
                );
            }
        },
        Command::Keys {
            command:
                KeysCommand::Init {
                    root_keys_dir,
                    root_keys,
                    threshold,
                },
        } => {
            server::ops::keys::init(store.as_ref(), &repo, &root_keys_dir, root_keys, threshold)?;
            outln!(
                "root metadata v1 signed by {threshold} of {root_keys} root keys; root keys written to {} (move them offline now)",
                root_keys_dir.display()
            );
            outln!(
                "pin this root on the agents: metadata/root.json in {} (also served at <server URL>/v1/metadata/1.root.json)",
                repo.blobs().url()
            );
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    root_keys_dir,
                    roles,
                    new_root_keys,
                    threshold,
                },
        } => {
            let r = server::ops::keys::rotate(
                store.as_ref(),
                &repo,
                &root_keys_dir,
                &roles,
                new_root_keys.map(|n| (n, threshold)),
            )?;
            outln!(
                "root metadata v{} written; online keys replaced for {:?}",
                r.root_version,
                r.roles
            );
            for f in &r.new_root_key_files {
                outln!("new root key: {} (move it offline now)", f.display());
            }
            outln!(
                "agents pick the new root up on their next sync, however many versions they missed"
            );
        }
        Command::Models { command } => models(&repo, store.as_ref(), command)?,
        Command::Train {
            model,
            no_publish,
            tolerance,
            channel,
            groups,
            percent,
        } => {
            let mut settings = cfg.training.clone();
            if let Some(t) = store.task(&model)? {
                settings.channel = t.channel;
            }
            settings.publish &= !no_publish;
            if let Some(t) = tolerance {
                settings.tolerance = t;
            }
            if let Some(c) = channel {
                settings.channel = c;
            }
            if !groups.is_empty() {
                settings.groups = groups;
            }
            if let Some(p) = percent {
                settings.percent = p;
            }
            // A job in the job table, so exactly one process runs it: a serving process
            // may claim it, or this command does (it works the queue while it waits).
            let t = server::ops::train::train_and_wait(
                store.as_ref(),
                &repo,
                &cfg,
                &model,
                &settings,
                |queued| {
                    match queued {
                    server::ops::Queued::New(j) => outln!("training job #{j} queued for {model}"),
                    server::ops::Queued::AlreadyOpen(j) => outln!(
                        "a training job for {model} is already queued or running (#{j}); waiting for it (its own settings apply)"
                    ),
                }
                },
            )?;
            let job = &t.job;
            outln!(
                "job #{} {} (run by {})",
                job.job_id,
                job.state,
                job.owner.as_deref().unwrap_or("-")
            );
            if let Some(e) = &job.error {
                anyhow::bail!("training job #{} failed: {e}", job.job_id);
            }
            let Some(run) = t.run else {
                anyhow::bail!("training job #{} ended without a run", job.job_id);
            };
            if let Some(report) = &run.report {
                print_report_value(&serde_json::from_str(report)?);
            }
            outln!(
                "candidate bundle: {}",
                run.bundle_dir.as_deref().unwrap_or("-")
            );
            outln!("{}: {}", run.status.as_str(), run.reason);
            if run.status == RunStatus::Held {
                return Ok(ExitCode::from(4));
            }
        }
        Command::Tasks { command } => tasks(&repo, store.as_ref(), command)?,
        Command::Runs { model } => {
            for r in store.runs(model.as_deref())? {
                outln!(
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
        }
        Command::Jobs { limit } => {
            let jobs = store.training_jobs(limit)?;
            if jobs.is_empty() {
                outln!("no training jobs yet (serving processes queue them when a model is due)");
            }
            for j in jobs {
                outln!(
                    "#{:<4} {:<16} {:<8} {:<7} attempts {} run {} owner {} lease until {}  {}{}",
                    j.job_id,
                    j.model_name,
                    j.state,
                    j.trigger,
                    j.attempts,
                    j.run_id
                        .map(|r| format!("#{r}"))
                        .unwrap_or_else(|| "-".into()),
                    j.owner.as_deref().unwrap_or("-"),
                    j.lease_until
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    j.enqueued_at,
                    j.error.map(|e| format!("  {e}")).unwrap_or_default()
                );
            }
        }
        Command::Drift => {
            let all = store.drift_latest()?;
            if all.is_empty() {
                outln!("no drift summaries yet (agents send them when they sync)");
            }
            for d in &all {
                let w = &d.latest;
                let cause = w
                    .novel_labels
                    .iter()
                    .map(|(l, n)| format!("{l} ({n})"))
                    .chain(w.novel_folders.iter().map(|(f, n)| format!("{f} ({n})")))
                    .collect::<Vec<_>>()
                    .join(", ");
                outln!(
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
            }
            let mut groups: std::collections::BTreeMap<(String, String), [usize; 3]> =
                Default::default();
            for d in &all {
                let e = groups
                    .entry((d.group.clone(), d.latest.model_name.clone()))
                    .or_default();
                e[d.latest.state as usize] += 1;
            }
            for ((g, m), [ok, watch, drifted]) in groups {
                outln!("group {g} / {m}: {ok} ok, {watch} watch, {drifted} drifted");
            }
        }
        Command::Audit { limit } => {
            for a in store.audit_log(limit)? {
                outln!("{} {:<8} {:<18} {}", a.at, a.actor, a.action, a.detail);
            }
        }
        Command::Feedback {
            command: FeedbackCommand::Import { file, device },
        } => {
            let i = server::ops::usb::import_feedback(
                store.as_ref(),
                &repo,
                &cfg.data_dir,
                &file,
                device,
            )?;
            let r = &i.result;
            outln!(
                "{}: {} records, {} new, {} already stored, {} refused",
                file.display(),
                i.records,
                r.acked.len() - r.duplicates,
                r.duplicates,
                r.refused.len()
            );
            for x in &r.refused {
                outln!("  refused {}: {}", x.feedback_id, x.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `outpost-server admin ...`: operator accounts of the dashboard.
fn admin(store: &dyn ServerStore, command: AdminCommand) -> Result<()> {
    let (name, password_stdin, create) = match command {
        AdminCommand::Remove { name } => {
            if !store.remove_admin(&name)? {
                anyhow::bail!("no operator {name:?}");
            }
            store.audit("operator", "admin remove", &name)?;
            outln!("operator {name} removed; their sessions are ended");
            return Ok(());
        }
        AdminCommand::Add {
            name,
            password_stdin,
        } => (name, password_stdin, true),
        AdminCommand::Passwd {
            name,
            password_stdin,
        } => (name, password_stdin, false),
    };
    let exists = store.admin_password_hash(&name)?.is_some();
    if create && exists {
        anyhow::bail!(
            "operator {name:?} exists already; `outpost-server admin passwd {name}` gives a new password"
        );
    }
    if !create && !exists {
        anyhow::bail!("no operator {name:?}; create it with `outpost-server admin add {name}`");
    }
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        server::dashboard::auth::generate_password()
    };
    server::dashboard::auth::set_password(store, &name, &password)?;
    store.audit(
        "operator",
        if create { "admin add" } else { "admin passwd" },
        &name,
    )?;
    if password_stdin {
        outln!("operator {name}: password set");
    } else {
        outln!(
            "operator {name}: password (shown once, store it in a password manager):\n\n    {password}\n"
        );
    }
    outln!("sign in at <server URL>/admin/ (outpost-server serve)");
    Ok(())
}

fn models(
    repo: &server::repository::Repository,
    store: &dyn ServerStore,
    command: ModelsCommand,
) -> Result<()> {
    match command {
        ModelsCommand::ExportUsb {
            model,
            version,
            out,
        } => {
            let n = server::ops::usb::export_release(store, repo, &model, &version, &out)?;
            outln!(
                "wrote {model} {version} with its signed metadata to {} ({n} bytes); on the laptop: outpost models install {}",
                out.display(),
                out.display()
            );
        }
        ModelsCommand::List => {
            let targets = server::repository::published_targets(repo)?;
            outln!("published releases:");
            for r in targets.iter().flat_map(|t| t.releases.iter()) {
                outln!(
                    "  {:<16} {:<8} {:<8} groups {:<16} {:>3}%{}",
                    r.model,
                    r.version,
                    r.channel,
                    if r.groups.is_empty() {
                        "(all)".to_string()
                    } else {
                        r.groups.join(",")
                    },
                    r.percent,
                    if r.withdrawn { "  WITHDRAWN" } else { "" }
                );
            }
            outln!("candidates:");
            for r in store.runs(None)? {
                if let Some(v) = &r.candidate_version {
                    outln!(
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
        }
        ModelsCommand::Eval {
            version,
            model,
            json,
        } => {
            let run = server::ops::find_candidate(store, &version, model.as_deref())?;
            let report = run.report.clone().unwrap_or_default();
            if json {
                outln!("{report}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&report)?;
                print_report_value(&v);
                outln!("status: {} — {}", run.status.as_str(), run.reason);
                outln!("bundle: {}", run.bundle_dir.as_deref().unwrap_or("-"));
            }
        }
        ModelsCommand::Publish {
            bundle,
            model,
            channel,
            groups,
            percent,
        } => {
            let p = server::ops::publish(
                store,
                repo,
                &bundle,
                model.as_deref(),
                &channel,
                &groups,
                percent,
                "operator",
            )?;
            outln!(
                "published {} as targets version {} on channel {channel}",
                p.bundle_dir.display(),
                p.targets_version
            );
        }
        ModelsCommand::Stage {
            model,
            version,
            channel,
            groups,
            all_groups,
            percent,
        } => {
            let new_groups = if all_groups {
                Some(vec![])
            } else if groups.is_empty() {
                None
            } else {
                Some(groups)
            };
            let (what, v) = server::ops::stage(
                store,
                repo,
                &model,
                &version,
                channel.as_deref(),
                new_groups.as_deref(),
                percent,
                "operator",
            )?;
            outln!("{what} (targets version {v})");
        }
        ModelsCommand::Withdraw {
            model,
            version,
            channel,
        } => {
            let v = server::ops::withdraw(
                store,
                repo,
                &model,
                &version,
                channel.as_deref(),
                "operator",
            )?;
            outln!("{model} {version} withdrawn (targets version {v}); devices running it move to the newest release that applies to them");
        }
    }
    Ok(())
}

/// Prints an evaluation report for a person: counts, the two held-out comparisons, the gate.
fn print_report_value(v: &serde_json::Value) {
    let labels: Vec<String> = v["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    outln!(
        "{} {} -> {} (new labels: {})",
        v["model"].as_str().unwrap_or("?"),
        v["base_version"].as_str().unwrap_or("?"),
        v["candidate_version"].as_str().unwrap_or("?"),
        v["new_labels"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    );
    let d = &v["data"];
    outln!(
        "data: base {} train / {} held out; field {} train / {} held out / {} skipped; trained in {:.1} s",
        d["base_train"], d["base_holdout"], d["feedback_train"], d["feedback_holdout"], d["feedback_skipped"],
        v["train_seconds"].as_f64().unwrap_or(0.0)
    );
    let f = |x: &serde_json::Value| {
        x.as_f64()
            .map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "-".into())
    };
    for (name, key) in [
        ("held-out field feedback", "feedback_holdout"),
        ("held-out base data", "base_holdout"),
    ] {
        let c = &v[key];
        outln!("{name} ({} rows):", c["candidate"]["count"]);
        outln!("  {:<24} {:>9} {:>9}", "", "current", "candidate");
        for (m, k) in [
            ("accuracy", "accuracy"),
            ("macro-F1", "macro_f1"),
            ("accuracy, known labels", "known_accuracy"),
            ("macro-F1, known labels", "known_macro_f1"),
        ] {
            outln!(
                "  {:<24} {:>9} {:>9}",
                m,
                f(&c["current"][k]),
                f(&c["candidate"][k])
            );
        }
        for (j, l) in labels.iter().enumerate() {
            let support = c["support"][j].as_u64().unwrap_or(0);
            if support > 0 {
                outln!(
                    "  recall {:<17} {:>9} {:>9}   ({support} rows)",
                    l,
                    f(&c["current"]["recall"][j]),
                    f(&c["candidate"]["recall"][j])
                );
            }
        }
        if let Some(conf) = c["candidate"]["confusion"]
            .as_array()
            .filter(|a| !a.is_empty() && a.len() <= 16)
        {
            outln!("  candidate confusion (rows: truth, columns: predicted, in label order):");
            for (j, row) in conf.iter().enumerate() {
                let cells: Vec<String> = row
                    .as_array()
                    .map(|r| r.iter().map(|x| format!("{x:>4}")).collect())
                    .unwrap_or_default();
                outln!(
                    "  {:<22}{}",
                    labels.get(j).map(String::as_str).unwrap_or("?"),
                    cells.join("")
                );
            }
        }
    }
    let g = &v["gate"];
    if g["passed"].as_bool() == Some(true) {
        outln!("gate: passed (tolerance {})", g["tolerance"]);
    } else {
        outln!("gate: FAILED (tolerance {})", g["tolerance"]);
        for p in g["problems"].as_array().into_iter().flatten() {
            outln!("  - {}", p.as_str().unwrap_or(""));
        }
    }
}

fn tasks(
    repo: &server::repository::Repository,
    store: &dyn server::store::ServerStore,
    command: TasksCommand,
) -> anyhow::Result<()> {
    use server::ops::tasks;
    match command {
        TasksCommand::Define {
            name,
            backbone,
            labels,
            multi_label,
            channel,
        } => {
            let req = tasks::TaskRequest {
                name,
                backbone,
                labels,
                multi_label,
                channel,
            };
            let t = tasks::define_task(store, repo, &req, "operator")?;
            outln!(
                "task {} defined on the backbone of {}: {} ({}); train it with `outpost-server train {}`",
                t.name,
                t.backbone,
                t.labels.join(", "),
                if t.multi_label { "multi-label" } else { "single-label" },
                t.name
            );
        }
        TasksCommand::List => {
            for t in store.tasks()? {
                outln!(
                    "{:<20} on {:<16} {:<12} -> {:<8} {}",
                    t.name,
                    t.backbone,
                    if t.multi_label {
                        "multi-label"
                    } else {
                        "single-label"
                    },
                    t.channel,
                    t.labels.join(",")
                );
            }
        }
        TasksCommand::Proposed => {
            for p in tasks::proposed(store)? {
                let labels: Vec<String> =
                    p.labels.iter().map(|(l, n)| format!("{l} ({n})")).collect();
                outln!(
                    "on {}: {} from {} device(s); accept with `outpost-server tasks define NAME --backbone {} --labels {}`",
                    p.backbone,
                    labels.join(", "),
                    p.devices,
                    p.backbone,
                    p.labels.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(",")
                );
            }
        }
    }
    Ok(())
}
