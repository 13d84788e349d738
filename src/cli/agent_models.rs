//! `outpost models ...` at the terminal: loading the installed bundles for a command, and
//! the `models` subcommands (hash, rollback, pin, unpin, install from a USB file, list,
//! verify). The operations themselves live in [`crate::update`] and [`crate::model`]; this
//! module turns their results into text and an exit code, shared by the binary only.

use super::agent_args::ModelsCommand;
use super::agent_text as text;
use crate::config::AgentConfig;
use crate::model::{self, runtime, LoadedModel};
use crate::{out, outln};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Loads ONNX Runtime and every bundle; a bundle that fails is reported and skipped.
pub fn load_models(cfg: &AgentConfig, only: Option<&str>) -> Result<Vec<Arc<LoadedModel>>> {
    load_models_for(cfg, only, None)
}

/// [`load_models`], only for the given tasks (`None`: all).
pub fn load_models_for(
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

/// The manifests of the installed bundles (for label names), or an error saying where.
pub fn read_manifests(dir: &Path) -> Result<Vec<model::Manifest>> {
    model::bundle::manifests(dir)
        .with_context(|| format!("cannot read the models folder {}", dir.display()))
}

/// Runs one `models` subcommand.
pub fn run(cfg: &AgentConfig, command: ModelsCommand) -> Result<ExitCode> {
    match command {
        ModelsCommand::Hash { dir } => hash(&dir),
        ModelsCommand::Rollback { name } => rollback(cfg, &name),
        ModelsCommand::Pin { name, version } => pin(cfg, &name, &version),
        ModelsCommand::Unpin { name } => {
            let installed = crate::update::Installed::new(&cfg.data_dir());
            crate::update::manual::unpin(&installed, &cfg.database_path(), &name)?;
            outln!("{name} unpinned: the next update check installs the release this device should run");
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Install { file, allow_stale } => install(cfg, &file, allow_stale),
        ModelsCommand::List { json } => list(cfg, json),
        ModelsCommand::Verify => verify(cfg),
    }
}

/// `models hash DIR`: the `files` object of a manifest, for a bundle being made.
fn hash(dir: &Path) -> Result<ExitCode> {
    let files = model::bundle::hash_folder(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?;
    outln!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "files": files }))?
    );
    Ok(ExitCode::SUCCESS)
}

fn rollback(cfg: &AgentConfig, name: &str) -> Result<ExitCode> {
    let installed = crate::update::Installed::new(&cfg.data_dir());
    runtime::init(cfg.runtime.library.as_deref())?;
    let r = crate::update::manual::rollback(
        &installed,
        &cfg.database_path(),
        name,
        cfg.session_options(),
    )?;
    outln!(
        "{name}: {} -> {} (a running `outpost run` picks it up at its next check; restart it to switch at once)",
        r.from.as_deref().unwrap_or("none"),
        r.to
    );
    Ok(ExitCode::SUCCESS)
}

fn pin(cfg: &AgentConfig, name: &str, version: &str) -> Result<ExitCode> {
    let installed = crate::update::Installed::new(&cfg.data_dir());
    installed.seed(&cfg.shipped_models_dir());
    if installed.active(name).as_deref() != Some(version) {
        runtime::init(cfg.runtime.library.as_deref())?;
    }
    crate::update::manual::pin(
        &installed,
        &cfg.database_path(),
        name,
        version,
        cfg.session_options(),
    )?;
    outln!(
        "{name} pinned at {version}: updates leave it alone until `outpost models unpin {name}`"
    );
    Ok(ExitCode::SUCCESS)
}

/// `models install FILE`: a signed update file from a USB stick.
fn install(cfg: &AgentConfig, file: &Path, allow_stale: bool) -> Result<ExitCode> {
    runtime::init(cfg.runtime.library.as_deref())?;
    let opts = cfg.update_options();
    let rt = tokio::runtime::Runtime::new()?;
    match rt.block_on(crate::update::usb::install(&opts, file, None, allow_stale)) {
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
            out!("{}", text::update_refused(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn list(cfg: &AgentConfig, json: bool) -> Result<ExitCode> {
    let installed = crate::update::Installed::new(&cfg.data_dir());
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

/// `models verify`: every bundle loads and reproduces its golden outputs.
fn verify(cfg: &AgentConfig) -> Result<ExitCode> {
    runtime::init(cfg.runtime.library.as_deref())?;
    let (models, failed) = model::load_all(&cfg.models_dir(), cfg.session_options());
    let mut ok = failed.is_empty();
    for (path, e) in &failed {
        outln!("FAIL {}: {e}", path.display());
    }
    for m in &models {
        let result = crate::infer::golden::check(m);
        ok &= matches!(&result, Ok(None)) || matches!(&result, Ok(Some(r)) if r.passed());
        out!("{}", text::golden(&m.id(), &result));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
