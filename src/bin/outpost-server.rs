//! `outpost-server`: the central training server. Its commands arrive with the sync,
//! training and publishing issues; for now it only says so.

use clap::Parser;

/// Outpost central server: ingests field feedback, retrains, signs and publishes models.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _ = Cli::parse();
    eprintln!("outpost-server has no commands yet: the server arrives with the sync issue. See README.md.");
    std::process::ExitCode::from(2)
}
