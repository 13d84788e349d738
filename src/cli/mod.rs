//! What the two binaries share when they talk to the person at the terminal: standard
//! output that survives its reader going away, logging that colours only a terminal, and
//! secret prompts that say what to do when there is no terminal.
//!
//! `println!` panics (exit 101) when standard output is a pipe whose reader has gone, as in
//! `outpost status --json | head -1`. Everything the binaries print goes through
//! [`outln!`](crate::outln) and [`stdout`] instead: a closed pipe makes the rest of the
//! output go nowhere, quietly, and the command finishes its work (nothing it was doing is
//! cut short). Any other write error is said once on stderr and makes the exit code a
//! failure ([`stdout_failed`]). The sockets of `outpost run` are not standard output and
//! keep their own handling.
//!
//! The command lines themselves (commands, arguments, help texts) are defined here too:
//! [`agent_args`] for `outpost`, [`server_args`] for `outpost-server`, so that a test can parse every command the README
//! shows and the binary is only the dispatch and its printing.

pub mod agent_args;
pub mod agent_feedback;
pub mod agent_models;
pub mod agent_text;
pub mod agent_vault;
pub mod server_args;
pub mod unlock;

/// Exit code of a command that did part of its work: some inputs or rows failed, the rest
/// were done (analyze, feedback import, sync).
pub const EXIT_PARTIAL: u8 = 3;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

/// Standard output that swallows a broken pipe (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdout;

/// Standard output for whole documents (`export`, JSON): a [`Stdout`].
pub fn stdout() -> Stdout {
    Stdout
}

/// Whether writing to standard output failed for a reason other than a closed pipe.
pub fn stdout_failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

fn absorb(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            if !CLOSED.swap(true, Ordering::Relaxed) {
                FAILED.store(true, Ordering::Relaxed);
                eprintln!("error: cannot write to standard output: {e}");
            }
            Ok(())
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !CLOSED.load(Ordering::Relaxed) {
            absorb(std::io::stdout().lock().write_all(buf))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if CLOSED.load(Ordering::Relaxed) {
            return Ok(());
        }
        absorb(std::io::stdout().lock().flush())
    }
}

/// Writes one formatted line to standard output (what [`outln!`](crate::outln) calls).
pub fn print_line(args: std::fmt::Arguments<'_>) {
    let mut s = args.to_string();
    s.push('\n');
    print_str(&s);
}

/// Writes text to standard output as it is (what [`out!`](crate::out) calls).
pub fn print_str(s: &str) {
    let _ = Stdout.write_all(s.as_bytes());
    let _ = Stdout.flush();
}

/// `println!` that tolerates a closed standard output (see [`crate::cli`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::print_str("\n")
    };
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

/// `print!` that tolerates a closed standard output (see [`crate::cli`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::print_str(&format!($($arg)*))
    };
}

/// Whether log lines on stderr may carry ANSI colour: only on a terminal, and not when
/// `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
pub fn log_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Sets up `tracing` on stderr for a binary: `RUST_LOG` if set, else `default`; colour only
/// on a terminal.
pub fn init_logging(default: &str, with_target: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colour())
        .with_target(with_target)
        .init();
}

/// Why a secret could not be asked for.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// No terminal to type on (a script, a service, `ssh` without `-t`).
    #[error("there is no terminal to type the {what} on; {instead}")]
    NoTerminal {
        /// What was to be typed.
        what: &'static str,
        /// What to do instead (the flag or variable naming a file).
        instead: &'static str,
    },
    /// Reading from the terminal failed.
    #[error("cannot read the {what} from the terminal: {source}")]
    Read {
        /// What was to be typed.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Asks for a secret on the controlling terminal (nothing echoed). Without a terminal it
/// fails with `instead`: the flag or variable that names a file holding the secret.
pub fn prompt_secret(
    prompt: &str,
    what: &'static str,
    instead: &'static str,
) -> Result<zeroize::Zeroizing<String>, PromptError> {
    if cfg!(unix) && std::fs::File::open("/dev/tty").is_err() {
        return Err(PromptError::NoTerminal { what, instead });
    }
    rpassword::prompt_password(prompt)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| match source.raw_os_error() {
            // ENXIO: the terminal went away between the check and the read.
            Some(6) => PromptError::NoTerminal { what, instead },
            _ => PromptError::Read { what, source },
        })
}
