//! Every `outpost` and `outpost-server` command the README shows still parses, with the
//! arguments it shows: a renamed flag or a removed command fails here rather than in a
//! field team's hands. The command lines are read from the README's code blocks and
//! parsed by the binaries' own definitions (`outpost::cli::agent_args`, `server_args`).

use clap::Parser;
use outpost::cli::{agent_args, server_args};

/// The command lines in the code blocks of `text`: comments cut, `sudo` and leading
/// `VAR=value` assignments dropped, `a; b` split in two.
fn command_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let line = match line.find(" #") {
            Some(i) => &line[..i],
            None => line,
        };
        for part in line.split(';') {
            let words: Vec<&str> = part
                .split_whitespace()
                .skip_while(|w| *w == "sudo" || (w.contains('=') && !w.starts_with('-')))
                .collect();
            if matches!(words.first(), Some(&"outpost") | Some(&"outpost-server")) {
                out.push(words.join(" "));
            }
        }
    }
    out
}

#[test]
fn every_command_in_the_readme_parses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let lines = command_lines(&readme);
    assert!(
        lines.len() >= 30,
        "expected the README to show at least 30 commands, found {}",
        lines.len()
    );
    let mut refused = Vec::new();
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let parsed = if words[0] == "outpost" {
            agent_args::Cli::try_parse_from(&words).map(|_| ())
        } else {
            server_args::Cli::try_parse_from(&words).map(|_| ())
        };
        if let Err(e) = parsed {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            refused.push(format!("{line}\n    {first}"));
        }
    }
    assert!(
        refused.is_empty(),
        "README commands that do not parse:\n{}",
        refused.join("\n")
    );
}

#[test]
fn the_reader_finds_commands_and_skips_prose() {
    let text = "prose outpost analyze x\n```sh\nsudo outpost encrypt --systemd-creds  # c\nX=1 outpost-server runs; outpost-server audit\nls\n```\n";
    assert_eq!(
        command_lines(text),
        [
            "outpost encrypt --systemd-creds",
            "outpost-server runs",
            "outpost-server audit"
        ]
    );
    // And a wrong flag is refused, so the check above can fail.
    assert!(
        agent_args::Cli::try_parse_from(["outpost", "analyze", "--no-such-flag", "x"]).is_err()
    );
    assert!(server_args::Cli::try_parse_from(["outpost-server", "models", "publish"]).is_err());
}
