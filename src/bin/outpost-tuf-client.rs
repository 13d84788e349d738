//! `outpost-tuf-client`: the agent's TUF 1.0 client behind the command-line protocol of the
//! public TUF conformance suite (tuf-conformance's CLIENT-CLI.md): `init`, `refresh`,
//! `download`. It only parses and prints; the work is in `outpost::update::tuf_client`.
//! Exit code 0 on success, 1 on any failure (with the reason on stderr).

use clap::{Parser, Subcommand};
use outpost::update::tuf_client;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "TUF 1.0 client (conformance-suite protocol) over Outpost's trust code")]
struct Cli {
    /// Folder of trusted metadata (root.json, timestamp.json, ...).
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Target path to download (repeatable, processed in order).
    #[arg(long)]
    target_name: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Folder for downloaded targets.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trust this root.json (checked: TUF 1.0, self-signed).
    Init {
        /// Initial trusted root.
        trusted_root: PathBuf,
    },
    /// Update the top-level metadata.
    Refresh,
    /// Update metadata, then download and verify each --target-name.
    Download,
}

fn need<T>(v: Option<T>, flag: &str) -> anyhow::Result<T> {
    v.ok_or_else(|| anyhow::anyhow!("{flag} is required for this command"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { trusted_root } => {
            let root = std::fs::read(&trusted_root)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", trusted_root.display()))?;
            tuf_client::init(&cli.metadata_dir, &root)?;
        }
        Command::Refresh => {
            let url = need(cli.metadata_url, "--metadata-url")?;
            tuf_client::refresh(&cli.metadata_dir, &url).await?;
        }
        Command::Download => {
            let url = need(cli.metadata_url, "--metadata-url")?;
            let base = need(cli.target_base_url, "--target-base-url")?;
            let dir = need(cli.target_dir, "--target-dir")?;
            if cli.target_name.is_empty() {
                anyhow::bail!("--target-name is required for download");
            }
            for d in
                tuf_client::download(&cli.metadata_dir, &url, &cli.target_name, &base, &dir).await?
            {
                eprintln!("{d:?}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
