//! `outpost feedback ...` at the terminal: listing, showing, giving, undoing, importing
//! and exporting decisions. The rules live in [`crate::decisions`] and [`crate::store`];
//! this module prints their results and picks the exit code.

use super::agent_args::FeedbackCommand;
use super::agent_models::read_manifests;
use super::agent_text as text;
use super::EXIT_PARTIAL;
use crate::config::AgentConfig;
use crate::store::Store;
use crate::{out, outln};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::ExitCode;

/// The agent's database, or an error saying to analyse first.
pub fn open_existing_store(cfg: &AgentConfig) -> Result<Store> {
    let db = cfg.database_path();
    if !db.exists() {
        bail!(
            "no database at {}: run `outpost analyze` first",
            db.display()
        );
    }
    Ok(Store::open(&db)?)
}

/// Runs one `feedback` subcommand.
pub fn run(cfg: &AgentConfig, command: FeedbackCommand) -> Result<ExitCode> {
    let mut store = open_existing_store(cfg)?;
    match command {
        FeedbackCommand::List {
            pending,
            limit,
            json,
        } => list(&store, pending, limit, json)?,
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
            let g = crate::decisions::Give {
                item,
                locator,
                model,
                labels,
                new_labels: new,
            };
            let f = crate::decisions::give(&mut store, cfg, &manifests, g)?;
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
        } => return import(cfg, &mut store, &file, allow_new_labels),
        FeedbackCommand::Export { file, plain } => export(cfg, &store, &file, plain)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `feedback list`: the counters, then one line per decision (or JSON).
fn list(store: &Store, pending: bool, limit: usize, json: bool) -> Result<()> {
    let rows = store.list_feedback(pending, limit)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let c = store.counters()?;
    outln!(
        "{} waiting to sync, {} synced, {} reviewed today; last sync: {}",
        c.waiting_to_sync,
        c.synced,
        c.reviewed_today,
        c.last_sync.as_deref().unwrap_or("never")
    );
    rows.iter().for_each(|f| out!("{}", text::feedback(f)));
    Ok(())
}

/// `feedback import FILE`: decisions from a CSV; refused rows are named, and make the exit
/// code partial.
fn import(
    cfg: &AgentConfig,
    store: &mut Store,
    file: &Path,
    allow_new_labels: bool,
) -> Result<ExitCode> {
    let manifests = read_manifests(&cfg.models_dir())?;
    let r = crate::decisions::import_csv(store, cfg, &manifests, file, allow_new_labels)?;
    for (row, why) in &r.refused {
        eprintln!("row {row}: {why}");
    }
    outln!(
        "imported {} decisions from {}; {} rows refused",
        r.recorded,
        file.display(),
        r.refused.len()
    );
    Ok(if r.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

/// `feedback export FILE`: pending decisions onto a USB file (sealed for the server
/// unless `--plain`); they stay pending here.
fn export(cfg: &AgentConfig, store: &Store, file: &Path, plain: bool) -> Result<()> {
    let e = crate::decisions::export_usb(store, &cfg.data_dir(), file, plain)?;
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
    Ok(())
}
