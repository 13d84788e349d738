//! `outpost-server`: the central server's command line. Parses arguments and calls the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use outpost::server::store::{ServerStore, SqliteServerStore, Via};
use outpost::server::{self, AppState};
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
    /// More log output.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the agents' API.
    Serve {
        /// Address to listen on (default: 127.0.0.1:8480).
        #[arg(long)]
        listen: Option<String>,
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
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Publish a bundle folder as a signed release.
    Publish {
        /// The bundle folder.
        bundle: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = if cli.verbose > 0 { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `config/server.toml`.
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ServerConfig {
    data_dir: PathBuf,
    listen: String,
    enrollment_valid_hours: i64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("/var/lib/outpost-server"),
            listen: "127.0.0.1:8480".into(),
            enrollment_valid_hours: 72,
        }
    }
}

fn load_config(cli: &Cli) -> Result<ServerConfig> {
    let mut cfg = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config {}", p.display()))?
        }
        None => ServerConfig::default(),
    };
    if let Some(d) = &cli.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

fn open_store(cfg: &ServerConfig) -> Result<Arc<SqliteServerStore>> {
    let path = cfg.data_dir.join("server.db");
    Ok(Arc::new(SqliteServerStore::open(&path).with_context(
        || format!("cannot open {}", path.display()),
    )?))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cfg = load_config(&cli)?;
    let store = open_store(&cfg)?;
    match cli.command {
        Command::Serve { listen } => {
            let listen = listen.unwrap_or(cfg.listen.clone());
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
                tracing::info!(address = %listener.local_addr()?, data_dir = %cfg.data_dir.display(), "outpost-server listening");
                server::serve(listener, AppState { store, repo: Some(outpost::server::publish::repo_dir(&cfg.data_dir)) }).await?;
                anyhow::Ok(())
            })?;
        }
        Command::Devices { command } => match command {
            DevicesCommand::Add {
                name,
                group,
                valid_hours,
            } => {
                let valid_hours = valid_hours.unwrap_or(cfg.enrollment_valid_hours);
                let code = new_code();
                let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(valid_hours);
                let expires = expires.format(&time::format_description::well_known::Rfc3339)?;
                let hash = outpost::hash::sha256_hex(server::normalise_code(&code).as_bytes());
                let d = store.add_device(&name, &group, &hash, &expires)?;
                store.audit(
                    "operator",
                    "devices add",
                    &format!("{} ({}) group {}", d.name, d.device_id, d.group),
                )?;
                println!(
                    "device {} added to group {} (id {})",
                    d.name, d.group, d.device_id
                );
                println!("enrollment code (valid until {expires}, usable once):\n\n    {code}\n");
                println!("on the device: outpost enroll <this server's URL> {code}");
            }
            DevicesCommand::List => {
                for d in store.devices()? {
                    let state = if d.revoked_at.is_some() {
                        "revoked"
                    } else if d.enrolled_at.is_some() {
                        "enrolled"
                    } else {
                        "awaiting enrollment"
                    };
                    println!(
                        "{:<20} {:<12} {:<20} feedback {:>6}  last seen {}  {}",
                        d.name,
                        d.group,
                        state,
                        d.feedback,
                        d.last_seen.as_deref().unwrap_or("never"),
                        d.device_id
                    );
                }
            }
            DevicesCommand::Revoke { device } => {
                let d = store.revoke(&device)?;
                store.audit(
                    "operator",
                    "devices revoke",
                    &format!("{} ({})", d.name, d.device_id),
                )?;
                println!(
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
            let root =
                server::publish::init_keys(&cfg.data_dir, &root_keys_dir, root_keys, threshold)?;
            store.audit(
                "operator",
                "keys init",
                &format!("{root_keys} root keys, threshold {threshold}"),
            )?;
            println!(
                "root metadata v1 signed by {threshold} of {root_keys} root keys; root keys written to {} (move them offline now)",
                root_keys_dir.display()
            );
            println!(
                "pin this root on the agents: {}",
                server::publish::repo_dir(&cfg.data_dir)
                    .join("metadata/root.json")
                    .display()
            );
            let _ = root;
        }
        Command::Models {
            command:
                ModelsCommand::Publish {
                    bundle,
                    channel,
                    groups,
                    percent,
                },
        } => {
            let v = server::publish::publish(&cfg.data_dir, &bundle, &channel, &groups, percent)?;
            store.audit(
                "operator",
                "models publish",
                &format!("{} to {channel} {groups:?} {percent}%", bundle.display()),
            )?;
            println!(
                "published {} as targets version {v} on channel {channel}",
                bundle.display()
            );
        }
        Command::Feedback {
            command: FeedbackCommand::Import { file, device },
        } => {
            let (header, records) = outpost::store::usb::read(&file)?;
            let who = device
                .or(header.device_id.clone())
                .context("the file does not name its device: pass --device NAME")?;
            let d = store
                .devices()?
                .into_iter()
                .find(|d| d.name == who || d.device_id == who)
                .with_context(|| format!("no device {who:?}"))?;
            let r = store.ingest(&d.device_id, &records, Via::Usb)?;
            store.audit(
                "operator",
                "feedback import",
                &format!(
                    "{} from {}: {} new, {} duplicates",
                    file.display(),
                    d.name,
                    r.acked.len() - r.duplicates,
                    r.duplicates
                ),
            )?;
            println!(
                "{}: {} records, {} new, {} already stored, {} refused",
                file.display(),
                records.len(),
                r.acked.len() - r.duplicates,
                r.duplicates,
                r.refused.len()
            );
            for x in &r.refused {
                println!("  refused {}: {}", x.feedback_id, x.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A one-time code: 20 random characters from an alphabet without look-alikes, in groups of 4.
fn new_code() -> String {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_config_parses() {
        let c: super::ServerConfig =
            toml::from_str(include_str!("../../config/server.toml")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8480");
    }
}
