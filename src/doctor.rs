//! `outpost doctor`: checks an installation of the agent and says how to fix each problem.
//!
//! Every check is independent and never panics: a broken part is reported with what was
//! found and what to do, and the other checks still run. The checks:
//!
//! - `onnx-runtime`: the ONNX Runtime library is found (the path that was used) and loads,
//!   and it is the version the agent is built for.
//! - `models`, then one `model <folder>` per bundle: bundles are found and every file
//!   matches its sha256 (golden inputs are re-run by `outpost models verify`).
//! - `database`: the agent database opens read-only, passes `PRAGMA integrity_check`, and
//!   its schema version is one this agent knows.
//! - `data-dir`: the data folder is writable by the user running the check.
//! - `disk-space`: free space where the data folder lives (`df -Pk`).
//! - `server`: when enrolled, `GET /v1/health` answers within 3 s and speaks our protocol;
//!   "not enrolled" and "unreachable" are warnings, since the agent works offline.
//! - `clock`: the system time is plausible (after 2026-01-01, before 2050).
//!
//! The command `outpost doctor [--json]` prints the report (its `Display`, each problem
//! with its fix below it) or the report as JSON, and exits with 1 when
//! [`DoctorReport::has_failures`] (warnings do not count).

use crate::config::AgentConfig;
use crate::model::{bundle, runtime};
use crate::protocol::{HEADER_PROTOCOL, HEADER_SERVER_TIME, PROTOCOL_VERSION};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the server probe may take.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Below this much free space in the data folder's file system: a failure.
pub const DISK_FAIL_BYTES: u64 = 200 << 20;
/// Below this much free space: a warning.
pub const DISK_WARN_BYTES: u64 = 1 << 30;
/// 2026-01-01T00:00:00Z: a clock before this is wrong (the agent was built after it).
const EARLIEST_PLAUSIBLE_UNIX: i64 = 1_767_225_600;
/// 2050-01-01T00:00:00Z: a clock after this is wrong too.
const LATEST_PLAUSIBLE_UNIX: i64 = 2_524_608_000;
/// Clock difference with the server worth a warning, in seconds.
const SKEW_WARN_SECS: i64 = 300;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but deserves attention (for example: not enrolled, server unreachable).
    Warn,
    /// Broken: the agent cannot do its job until this is fixed.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check: what was looked at, what was found, and how to fix it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short stable name (`onnx-runtime`, `models`, `model landcover`, `database`, ...).
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What was found, with paths.
    pub detail: String,
    /// What to do about it (`None` when there is nothing to do).
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn problem(
        name: &str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Everything `outpost doctor` found.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// The agent's version.
    pub version: String,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// Whether any check failed (the command then exits with 1).
    pub fn has_failures(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The first check with this name.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}

/// One line per check, its fix indented below it, then a summary line.
impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "outpost {} doctor", self.version)?;
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            writeln!(
                f,
                "{:<5} {:<width$}  {}",
                c.status.as_str(),
                c.name,
                c.detail
            )?;
            if let Some(fix) = &c.fix {
                writeln!(f, "{:<5} {:<width$}  fix: {fix}", "", "")?;
            }
        }
        let (warn, fail) = (self.count(Status::Warn), self.count(Status::Fail));
        match (warn, fail) {
            (0, 0) => writeln!(f, "all {} checks passed", self.checks.len()),
            _ => writeln!(
                f,
                "{} failed, {}",
                plural(fail, "check"),
                plural(warn, "warning")
            ),
        }
    }
}

/// Runs every check against the installation `cfg` describes. Loads ONNX Runtime into this
/// process (like any command that analyses) and may take a few seconds: it hashes every
/// model file, reads the whole database and waits up to [`SERVER_TIMEOUT`] for the server.
pub fn check(cfg: &AgentConfig) -> DoctorReport {
    let mut checks = vec![runtime_check(cfg)];
    checks.extend(model_checks(&cfg.models_dir()));
    let data_dir = cfg.data_dir();
    checks.push(encryption_check(&data_dir));
    let (db, server_url) = database_check(&cfg.database_path());
    checks.push(db);
    checks.push(data_dir_check(&data_dir));
    checks.push(disk_check(&data_dir));
    let now = unix_now();
    checks.push(server_check(server_url.as_deref(), now));
    checks.push(clock_check(now));
    DoctorReport {
        version: env!("CARGO_PKG_VERSION").into(),
        checks,
    }
}

/// "1 bundle", "2 bundles".
fn plural(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {unix}"))
}

/// Where the installer puts the library for this binary: `<exe dir>/../lib/outpost/`.
fn installed_lib_dir() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("lib/outpost")))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<prefix>/lib/outpost".into())
}

fn runtime_check(cfg: &AgentConfig) -> Check {
    const NAME: &str = "onnx-runtime";
    let file = runtime::ORT_LIB_FILE;
    match runtime::init(cfg.runtime.library.as_deref()) {
        Ok(path) => {
            // ONNX Runtime refuses to load when older than the API the agent needs; the
            // wheel's file name carries the exact version (the path is canonical, so a
            // symlink named like the right version does not hide another one).
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.as_deref() == Some(file) {
                Check::ok(
                    NAME,
                    format!(
                        "ONNX Runtime {} loaded from {}",
                        runtime::ORT_VERSION,
                        path.display()
                    ),
                )
            } else {
                Check::problem(
                    NAME,
                    Status::Warn,
                    format!(
                        "ONNX Runtime loaded from {}, whose name does not say version {}",
                        path.display(),
                        runtime::ORT_VERSION
                    ),
                    format!(
                        "use {file} from the onnxruntime=={} wheel (the installer puts it in {}); other versions are untested",
                        runtime::ORT_VERSION,
                        installed_lib_dir()
                    ),
                )
            }
        }
        Err(e) => Check::problem(
            NAME,
            Status::Fail,
            match e {
                runtime::RuntimeError::NotFound { looked } => format!(
                    "{file} not found; looked for: {}",
                    looked
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                runtime::RuntimeError::Load { path, reason } => {
                    format!("{} does not load: {reason}", path.display())
                }
            },
            format!(
                "run the installer again (it puts {file} in {}), or set runtime.library in the config (or {}) to the full path of {file} from the onnxruntime=={} wheel",
                installed_lib_dir(),
                runtime::ORT_LIB_ENV,
                runtime::ORT_VERSION
            ),
        ),
    }
}

fn model_checks(dir: &Path) -> Vec<Check> {
    const FIX: &str = "run the installer again (it installs the default models), or set models_dir in the config to a folder of model bundles";
    let dirs = match bundle::discover(dir) {
        Ok(d) => d,
        Err(e) => {
            return vec![Check::problem(
                "models",
                Status::Fail,
                format!("cannot read the models folder {}: {e}", dir.display()),
                FIX,
            )]
        }
    };
    if dirs.is_empty() {
        return vec![Check::problem(
            "models",
            Status::Fail,
            format!(
                "no model bundle (a folder with manifest.json) in {}",
                dir.display()
            ),
            FIX,
        )];
    }
    let mut checks = vec![Check::ok(
        "models",
        format!("{} in {}", plural(dirs.len(), "bundle"), dir.display()),
    )];
    for d in dirs {
        let name = format!(
            "model {}",
            d.file_name().unwrap_or_default().to_string_lossy()
        );
        checks.push(match bundle::Bundle::open(&d) {
            Ok(b) => Check::ok(
                &name,
                format!(
                    "{} {} ({}): {} files match their sha256",
                    b.manifest.name,
                    b.manifest.version,
                    b.manifest.task.as_str(),
                    b.manifest.files.len()
                ),
            ),
            Err(e) => Check::problem(
                &name,
                Status::Fail,
                e.to_string(),
                format!(
                    "reinstall the bundle: run the installer again, or copy {} again from its source",
                    d.display()
                ),
            ),
        });
    }
    checks
}

/// Whether item data is encrypted at rest, and unlocked.
fn encryption_check(data_dir: &Path) -> Check {
    use crate::store::vault::{self, KeyMode, Protection};
    const NAME: &str = "encryption";
    // An unattended (systemd-creds) key unseals without asking; try it so the report is true.
    let _ = vault::unlock_unattended(data_dir);
    match vault::protection(data_dir) {
        Ok(Protection::Plain) => Check::problem(
            NAME,
            Status::Warn,
            "item data (reports, tiles, embeddings, labels) is stored unencrypted",
            "on a laptop: `outpost encrypt --passphrase`; on an unattended box: `outpost encrypt --systemd-creds` (existing data is converted)",
        ),
        Ok(Protection::Unlocked(mode)) => Check::ok(
            NAME,
            format!("the database is encrypted (SQLCipher); key kept by {}", mode.as_str()),
        ),
        Ok(Protection::Locked(KeyMode::Passphrase)) => Check::ok(
            NAME,
            "the database is encrypted (SQLCipher) and locked; commands that read items ask for the passphrase",
        ),
        Ok(Protection::Locked(KeyMode::SystemdCreds)) => Check::problem(
            NAME,
            Status::Fail,
            "the database is encrypted but its sealed key did not open",
            "run as root on the machine that sealed it (systemd-creds needs the same host key or TPM); `outpost status` shows the exact error",
        ),
        Err(e) => Check::problem(NAME, Status::Fail, e.to_string(), "restore data-key.json from a backup, or use the recovery key"),
    }
}

/// The database check, and the server URL recorded at enrollment (if any).
fn database_check(path: &Path) -> (Check, Option<String>) {
    const NAME: &str = "database";
    if !path.exists() {
        let msg = format!(
            "no database yet at {}: the first `outpost analyze` (or the agent service) creates it",
            path.display()
        );
        return (Check::ok(NAME, msg), None);
    }
    let conn = match open_for_check(path) {
        Ok(c) => c,
        Err(check) => return (check, None),
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    if let Some(damaged) = integrity_problem(&conn, path) {
        return (damaged, None);
    }
    let server_url: Option<String> = conn
        .query_row(
            "SELECT value FROM agent_state WHERE key = 'server_url'",
            [],
            |r| r.get(0),
        )
        .ok()
        .filter(|s: &String| !s.is_empty());
    (schema_check(&conn, path), server_url)
}

/// Opens the database read-only with its key if it is encrypted; the check that failed
/// (or the "locked, not checked" note) otherwise.
fn open_for_check(path: &Path) -> Result<rusqlite::Connection, Check> {
    use rusqlite::{Connection, OpenFlags};
    const NAME: &str = "database";
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| {
        Check::problem(
            NAME,
            Status::Fail,
            format!("cannot open {} read-only: {e}", path.display()),
            "run the check as the user the agent runs as (installed as a service: `sudo -u outpost outpost doctor`), or fix the file's owner and mode",
        )
    })?;
    match crate::store::vault::key_for_database(path) {
        Ok(Some(key)) => {
            let _ = crate::store::vault::apply_key(&conn, &key);
            Ok(conn)
        }
        Ok(None) => Ok(conn),
        Err(crate::store::vault::VaultError::Locked { .. }) => Err(Check::ok(
            NAME,
            format!(
                "{}: encrypted and locked, so its integrity was not checked",
                path.display()
            ),
        )),
        Err(e) => Err(Check::problem(
            NAME,
            Status::Fail,
            e.to_string(),
            "restore data-key.json from a backup, or use the recovery key",
        )),
    }
}

/// `PRAGMA integrity_check`: the failed check if the file is damaged.
fn integrity_problem(conn: &rusqlite::Connection, path: &Path) -> Option<Check> {
    let integrity: Result<Vec<String>, rusqlite::Error> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    let p = match integrity {
        Ok(rows) if rows == ["ok"] => return None,
        Ok(rows) => rows.into_iter().take(5).collect::<Vec<_>>().join("; "),
        Err(e) => e.to_string(),
    };
    Some(Check::problem(
        "database",
        Status::Fail,
        format!("{} is damaged: {p}", path.display()),
        "stop the agent and keep a copy of the file; if `outpost feedback export FILE` still works, carry the pending feedback out with it; then recover with `sqlite3 agent.db .recover | sqlite3 recovered.db`, or move the file aside and analyze again",
    ))
}

/// The schema version against the migrations this agent knows, and the file's size.
fn schema_check(conn: &rusqlite::Connection, path: &Path) -> Check {
    const NAME: &str = "database";
    let found: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap_or(0);
    let known = crate::store::migrate::MIGRATIONS
        .last()
        .map(|m| m.0)
        .unwrap_or(0);
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if found > known {
        return Check::problem(
            NAME,
            Status::Fail,
            format!(
                "{} has schema version {found}, written by a newer agent (this one knows up to {known})",
                path.display()
            ),
            "install the newer agent again (the data is untouched)",
        );
    }
    let upgrade = if found < known {
        format!(" (the agent upgrades it to {known} at next use)")
    } else {
        String::new()
    };
    Check::ok(
        NAME,
        format!(
            "{}: integrity ok, schema version {found}{upgrade}, {:.1} MB",
            path.display(),
            size as f64 / 1e6
        ),
    )
}

fn data_dir_check(dir: &Path) -> Check {
    const NAME: &str = "data-dir";
    if !dir.exists() {
        return Check::ok(
            NAME,
            format!(
                "{} does not exist yet: it is created at first use",
                dir.display()
            ),
        );
    }
    let probe = dir.join(format!(".outpost-doctor-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Check::ok(NAME, format!("{} is writable", dir.display()))
        }
        Err(e) => Check::problem(
            NAME,
            Status::Fail,
            format!("cannot write in {}: {e}", dir.display()),
            format!(
                "run the agent as the folder's owner (installed as a service: `sudo -u outpost outpost ...`, or join its group: `sudo usermod -aG outpost $USER`), or fix its owner: `sudo chown -R outpost:outpost {}`",
                dir.display()
            ),
        ),
    }
}

/// The available space in kibibytes from `df -Pk` output (POSIX format: one line per file
/// system after the header; the field before the capacity percentage is the free space).
fn parse_df_available_kib(out: &str) -> Option<u64> {
    let fields: Vec<&str> = out.lines().nth(1)?.split_whitespace().collect();
    let capacity = fields.iter().enumerate().skip(4).find_map(|(i, f)| {
        let digits = f.strip_suffix('%')?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(i)
    })?;
    fields.get(capacity - 1)?.parse().ok()
}

fn disk_check(dir: &Path) -> Check {
    const NAME: &str = "disk-space";
    // The folder may not exist yet: measure the file system it will be created on.
    let existing: PathBuf = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(&existing)
        .env("LC_ALL", "C")
        .output();
    let available = match &out {
        Ok(o) if o.status.success() => {
            parse_df_available_kib(&String::from_utf8_lossy(&o.stdout)).map(|k| k * 1024)
        }
        _ => None,
    };
    let Some(bytes) = available else {
        return Check::problem(
            NAME,
            Status::Warn,
            format!(
                "cannot tell the free space for {}: `df -Pk` is missing or unreadable",
                existing.display()
            ),
            format!("check it by hand: df -h {}", existing.display()),
        );
    };
    let detail = format!(
        "{:.1} GB free for {}",
        bytes as f64 / 1e9,
        existing.display()
    );
    let fix = format!("free space on that disk (old exports, copied scenes), or move data_dir in the config to a bigger disk; the agent needs at least {} MB and warns below {} MB",
        DISK_FAIL_BYTES >> 20, DISK_WARN_BYTES >> 20);
    if bytes < DISK_FAIL_BYTES {
        Check::problem(NAME, Status::Fail, detail, fix)
    } else if bytes < DISK_WARN_BYTES {
        Check::problem(NAME, Status::Warn, detail, fix)
    } else {
        Check::ok(NAME, detail)
    }
}

/// What `GET /v1/health` answered.
struct Probe {
    status: u16,
    protocol: Option<i64>,
    server_time: Option<i64>,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s = format!("{s}: {c}");
        source = c.source();
    }
    s
}

/// Probes the server on a thread of its own with its own small runtime, so the check is
/// safe to call from anywhere (including from inside another Tokio runtime).
fn probe_server(base: &str) -> Result<Probe, String> {
    let url = format!("{}/v1/health", base.trim_end_matches('/'));
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .connect_timeout(SERVER_TIMEOUT)
                .timeout(SERVER_TIMEOUT)
                .user_agent(concat!("outpost-doctor/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| error_chain(&e))?;
            let res = client.get(&url).send().await.map_err(|e| error_chain(&e))?;
            let header = |name: &str| {
                res.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
            };
            Ok(Probe {
                status: res.status().as_u16(),
                protocol: header(HEADER_PROTOCOL),
                server_time: header(HEADER_SERVER_TIME),
            })
        })
    });
    thread
        .join()
        .unwrap_or_else(|_| Err("the probe failed unexpectedly".into()))
}

fn server_check(server_url: Option<&str>, now: i64) -> Check {
    const NAME: &str = "server";
    let Some(url) = server_url else {
        return Check::problem(
            NAME,
            Status::Warn,
            "not enrolled: feedback stays on this device until it is",
            "ask the operator for a code (`outpost-server devices add`), then run `outpost enroll <server-url> <code>` (as the service user if the agent runs as a service: `sudo -u outpost outpost enroll ...`); analysis and review work without a server",
        );
    };
    let probe = match probe_server(url) {
        Ok(p) => p,
        Err(e) => {
            return Check::problem(
                NAME,
                Status::Warn,
                format!("enrolled with {url}, which is unreachable now: {e}"),
                "nothing to do if this device is offline: feedback waits in the outbox and `outpost run` syncs when the network is back; otherwise check the network, the URL and that the server runs",
            )
        }
    };
    if !(200..300).contains(&probe.status) {
        return Check::problem(
            NAME,
            Status::Warn,
            format!("{url}/v1/health answered HTTP {}", probe.status),
            "check that the URL is the Outpost server's (not a proxy's login page) and read the server's log",
        );
    }
    match probe.protocol {
        Some(p) if p == i64::from(PROTOCOL_VERSION) => {}
        other => {
            let theirs = other.map_or("no".to_string(), |p| format!("version {p}"));
            return Check::problem(
                NAME,
                Status::Fail,
                format!(
                    "{url} speaks {theirs} Outpost protocol, this agent speaks version {PROTOCOL_VERSION}"
                ),
                "upgrade the older of the two (agent or server); check that the URL points at the Outpost server",
            );
        }
    }
    let detail = format!("{url} is reachable (protocol {PROTOCOL_VERSION})");
    match probe.server_time.map(|t| now - t) {
        Some(skew) if skew.abs() > SKEW_WARN_SECS => Check::problem(
            NAME,
            Status::Warn,
            format!("{detail}, but this device's clock is {skew} s off the server's"),
            "set the clock (`sudo timedatectl set-ntp true`, or `sudo timedatectl set-time 'YYYY-MM-DD HH:MM:SS'`): sync corrects for it, but times recorded here are off",
        ),
        _ => Check::ok(NAME, detail),
    }
}

fn clock_check(now: i64) -> Check {
    const NAME: &str = "clock";
    let fix = "set the date and time: `sudo timedatectl set-time 'YYYY-MM-DD HH:MM:SS'`, or turn on network time with `sudo timedatectl set-ntp true`; a laptop whose clock resets at every start needs a new clock (CMOS) battery";
    if now < EARLIEST_PLAUSIBLE_UNIX {
        Check::problem(
            NAME,
            Status::Fail,
            format!(
                "the system time {} is before {}, so it is wrong: decisions and syncs get wrong times",
                rfc3339(now),
                rfc3339(EARLIEST_PLAUSIBLE_UNIX)
            ),
            fix,
        )
    } else if now >= LATEST_PLAUSIBLE_UNIX {
        Check::problem(
            NAME,
            Status::Fail,
            format!(
                "the system time {} is implausibly far in the future",
                rfc3339(now)
            ),
            fix,
        )
    } else {
        Check::ok(NAME, format!("system time {}", rfc3339(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_output_parses_even_with_spaces_in_the_device_name() {
        let out = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                   /dev/vda         264091588 34567890 60123456      37% /\n";
        assert_eq!(parse_df_available_kib(out), Some(60_123_456));
        let spaced = "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                      my share  1000 400 600 40% /mnt/my share\n";
        assert_eq!(parse_df_available_kib(spaced), Some(600));
        assert_eq!(parse_df_available_kib("garbage"), None);
        assert_eq!(parse_df_available_kib(""), None);
    }

    #[test]
    fn clock_before_2026_or_after_2050_fails() {
        assert_eq!(clock_check(0).status, Status::Fail);
        assert_eq!(
            clock_check(EARLIEST_PLAUSIBLE_UNIX - 1).status,
            Status::Fail
        );
        assert_eq!(
            clock_check(EARLIEST_PLAUSIBLE_UNIX + 86_400).status,
            Status::Ok
        );
        assert_eq!(clock_check(LATEST_PLAUSIBLE_UNIX).status, Status::Fail);
        assert!(clock_check(0).detail.contains("1970-01-01"));
    }

    #[test]
    fn report_prints_fixes_and_a_summary() {
        let report = DoctorReport {
            version: "0.0.0".into(),
            checks: vec![
                Check::ok("clock", "fine"),
                Check::problem("server", Status::Warn, "not enrolled", "enroll"),
            ],
        };
        let text = report.to_string();
        assert!(text.contains("warn  server  not enrolled"), "{text}");
        assert!(text.contains("fix: enroll"), "{text}");
        assert!(text.contains("0 checks failed, 1 warning"), "{text}");
        assert!(!report.has_failures());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][1]["status"], "warn");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
    }
}
