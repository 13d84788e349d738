//! `outpost-server`: the central server's command line. Parses arguments and calls the library.

use anyhow::{Context, Result};
use clap::Parser;
use outpost::cli::server_args::*;
use outpost::server;
use outpost::server::config::ServerConfig;
use outpost::server::dashboard::accounts::{self, AccountChange, NewPassword};
use outpost::server::ops::{self, text};
use outpost::server::store::{RunStatus, ServerStore};
use outpost::{out, outln};
use std::process::ExitCode;
use std::sync::Arc;

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
    let st = store.as_ref();
    match cli.command {
        Command::Serve { listen } => {
            let listen = listen.unwrap_or(cfg.listen.clone());
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(server::serve::run(cfg, store, repo, &listen))?;
        }
        Command::Admin { command } => admin(st, command)?,
        Command::Devices { command } => devices(st, &cfg, command)?,
        Command::Keys { command } => keys(st, &repo, command)?,
        Command::Models { command } => models(&repo, st, command)?,
        Command::Train { model, overrides } => return train(st, &repo, &cfg, &model, overrides),
        Command::Tasks { command } => tasks(st, &repo, command)?,
        Command::Runs { model } => out!("{}", text::runs(&st.runs(model.as_deref())?)),
        Command::Jobs { limit } => out!("{}", text::jobs(&st.training_jobs(limit)?)),
        Command::Drift => out!("{}", text::drift(&st.drift_latest()?)),
        Command::Audit { limit } => out!("{}", text::audit(&st.audit_log(limit)?)),
        Command::Feedback {
            command: FeedbackCommand::Import { file, device },
        } => {
            let i = ops::usb::import_feedback(st, &repo, &cfg.data_dir, &file, device)?;
            out!("{}", text::imported(&file, &i));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `outpost-server train`: a job in the job table, so exactly one process runs it: a
/// serving process may claim it, or this command does (it works the queue while it waits).
/// Exit code 4 when the candidate is held.
fn train(
    store: &dyn ServerStore,
    repo: &server::repository::Repository,
    cfg: &ServerConfig,
    model: &str,
    overrides: TrainOverrides,
) -> Result<ExitCode> {
    // A task's candidates go to the task's own channel unless the operator says otherwise.
    let mut configured = cfg.training.clone();
    if let Some(t) = store.task(model)? {
        configured.channel = t.channel;
    }
    let settings = ops::train::Overrides {
        no_publish: overrides.no_publish,
        tolerance: overrides.tolerance,
        channel: overrides.channel,
        groups: overrides.groups,
        percent: overrides.percent,
    }
    .apply(&configured);
    let t = ops::train::train_and_wait(store, repo, cfg, model, &settings, |q| {
        out!("{}", text::queued(q, model))
    })?;
    out!("{}", text::job_ended(&t.job));
    if let Some(e) = &t.job.error {
        anyhow::bail!("training job #{} failed: {e}", t.job.job_id);
    }
    let Some(run) = t.run else {
        anyhow::bail!("training job #{} ended without a run", t.job.job_id);
    };
    out!("{}", text::run_outcome(&run));
    Ok(if run.status == RunStatus::Held {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    })
}

/// `outpost-server tasks ...`.
fn tasks(
    store: &dyn ServerStore,
    repo: &server::repository::Repository,
    command: TasksCommand,
) -> Result<()> {
    match command {
        TasksCommand::Define {
            name,
            backbone,
            labels,
            multi_label,
            channel,
        } => {
            let req = ops::tasks::TaskRequest {
                name,
                backbone,
                labels,
                multi_label,
                channel,
            };
            let t = ops::tasks::define_task(store, repo, &req, "operator")?;
            out!("{}", text::task_defined(&t));
        }
        TasksCommand::List => out!("{}", text::tasks(&store.tasks()?)),
        TasksCommand::Proposed => out!("{}", text::proposed(&ops::tasks::proposed(store)?)),
    }
    Ok(())
}

/// `outpost-server devices ...`.
fn devices(store: &dyn ServerStore, cfg: &ServerConfig, command: DevicesCommand) -> Result<()> {
    match command {
        DevicesCommand::Add {
            name,
            group,
            valid_hours,
        } => {
            let valid_hours = valid_hours.unwrap_or(cfg.enrollment_valid_hours);
            let n = ops::devices::add_device(store, &name, &group, valid_hours, "operator")?;
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
            out!(
                "{}",
                text::devices(&store.devices()?, &store.device_models()?)
            )
        }
        DevicesCommand::Revoke { device } => {
            let d = ops::revoke(store, &device, "operator")?;
            outln!(
                "device {} revoked; it is refused from its next request",
                d.name
            );
        }
    }
    Ok(())
}

/// `outpost-server keys ...`.
fn keys(
    store: &dyn ServerStore,
    repo: &server::repository::Repository,
    command: KeysCommand,
) -> Result<()> {
    match command {
        KeysCommand::Init {
            root_keys_dir,
            root_keys,
            threshold,
        } => {
            ops::keys::init(store, repo, &root_keys_dir, root_keys, threshold)?;
            outln!(
                "root metadata v1 signed by {threshold} of {root_keys} root keys; root keys written to {} (move them offline now)",
                root_keys_dir.display()
            );
            outln!(
                "pin this root on the agents: tuf/1.root.json in {} (TUF 1.0; also served at <server URL>/v1/tuf/metadata/1.root.json)",
                repo.blobs().url()
            );
        }
        KeysCommand::Rotate {
            root_keys_dir,
            roles,
            new_root_keys,
            threshold,
        } => {
            let new_root = new_root_keys.map(|n| (n, threshold));
            let r = ops::keys::rotate(store, repo, &root_keys_dir, &roles, new_root)?;
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
    }
    Ok(())
}

/// `outpost-server admin ...`: operator accounts of the dashboard.
fn admin(store: &dyn ServerStore, command: AdminCommand) -> Result<()> {
    let (change, name, password_stdin) = match command {
        AdminCommand::Remove { name } => {
            accounts::remove_account(store, &name, "operator")?;
            outln!("operator {name} removed; their sessions are ended");
            return Ok(());
        }
        AdminCommand::Add {
            name,
            password_stdin,
        } => (AccountChange::Add, name, password_stdin),
        AdminCommand::Passwd {
            name,
            password_stdin,
        } => (AccountChange::Passwd, name, password_stdin),
    };
    let given = if password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Some(line.trim_end_matches(['\r', '\n']).to_string())
    } else {
        None
    };
    match accounts::set_account(store, change, &name, given, "operator")? {
        NewPassword::Given => outln!("operator {name}: password set"),
        NewPassword::Generated(p) => outln!(
            "operator {name}: password (shown once, store it in a password manager):\n\n    {p}\n"
        ),
    }
    outln!("sign in at <server URL>/admin/ (outpost-server serve)");
    Ok(())
}

/// `models eval`: a candidate's evaluation report, as text or as the stored JSON.
fn eval(store: &dyn ServerStore, version: &str, model: Option<&str>, json: bool) -> Result<()> {
    let run = ops::find_candidate(store, version, model)?;
    let Some(report) = run.report.as_deref() else {
        anyhow::bail!("run #{} recorded no evaluation report", run.run_id);
    };
    if json {
        outln!("{report}");
    } else {
        out!("{}", text::candidate(&run, &serde_json::from_str(report)?));
    }
    Ok(())
}

/// `outpost-server models ...`.
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
            let n = ops::usb::export_release(store, repo, &model, &version, &out)?;
            outln!(
                "wrote {model} {version} with its signed metadata to {} ({n} bytes); on the laptop: outpost models install {}",
                out.display(),
                out.display()
            );
        }
        ModelsCommand::List => {
            let targets = server::repository::published_targets(repo)?;
            out!("{}", text::releases(targets.as_ref(), &store.runs(None)?));
        }
        ModelsCommand::Eval {
            version,
            model,
            json,
        } => eval(store, &version, model.as_deref(), json)?,
        ModelsCommand::Publish {
            bundle,
            model,
            channel,
            groups,
            percent,
        } => {
            let p = ops::publish(
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
            // No groups given: keep them; --all-groups: every group.
            let new_groups = match (all_groups, groups.is_empty()) {
                (true, _) => Some(vec![]),
                (false, true) => None,
                (false, false) => Some(groups),
            };
            let (what, v) = ops::stage(
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
            let v = ops::withdraw(
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
