//! The installer (installer/*.sh) end to end, in throw-away prefixes: install, analyze with
//! the installed binary alone, `outpost doctor`, a server next to the agent, enrollment,
//! upgrade in place, uninstall and purge; the offline bundle and its SHA256SUMS check; and
//! the doctor's report on broken installations. Nothing touches the real /usr/local,
//! /etc, /var or systemd: without --systemd, install.sh under --prefix never calls
//! systemctl or useradd.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a command did.
struct Ran {
    code: i32,
    out: String,
    err: String,
}

impl Ran {
    fn ok(self, what: &str) -> Ran {
        assert_eq!(
            self.code, 0,
            "{what} failed\nstdout:\n{}\nstderr:\n{}",
            self.out, self.err
        );
        self
    }
}

/// Runs `c` with none of the variables that would point the agent at a library, models,
/// data or a configuration (CI exports OUTPOST_ORT_LIB): an installation must work alone.
fn run(mut c: Command) -> Ran {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("OUTPOST") || k == "ORT_DYLIB_PATH" || k == "RUST_LOG" {
            c.env_remove(k.as_ref());
        }
    }
    let o = c.output().expect("command runs");
    Ran {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into(),
        err: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// `bash installer/<script> args...`
fn script(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Ran {
    let mut c = Command::new("bash");
    c.arg(common::repo().join("installer").join(name));
    for a in args {
        c.arg(a);
    }
    run(c)
}

/// The folder holding the built `outpost` and `outpost-server` (target/debug).
fn built_binaries() -> PathBuf {
    common::outpost_bin().parent().unwrap().to_path_buf()
}

/// The checkout's default models if it has any, else None: the test then installs a tiny
/// bundle of its own (the default models may not be in the checkout yet).
fn checkout_has_models() -> bool {
    outpost::model::bundle::discover(&common::repo().join("models"))
        .map(|v| !v.is_empty())
        .unwrap_or(false)
}

/// A folder with one tiny image bundle ("colours": the brightest channel).
fn tiny_models(tmp: &Path) -> PathBuf {
    let dir = tmp.join("models-src");
    common::make_image_bundle(&dir.join("colours"), "colours", "1.0.0");
    dir
}

/// The layout install.sh creates under a prefix.
struct Layout {
    prefix: PathBuf,
}

impl Layout {
    fn p(&self, rel: &str) -> PathBuf {
        self.prefix.join(rel)
    }
    fn agent_bin(&self) -> PathBuf {
        self.p("usr/local/bin/outpost")
    }
    fn server_bin(&self) -> PathBuf {
        self.p("usr/local/bin/outpost-server")
    }
    fn lib(&self) -> PathBuf {
        self.p("usr/local/lib/outpost/libonnxruntime.so.1.31.1")
    }
    fn models(&self) -> PathBuf {
        self.p("usr/local/share/outpost/models")
    }
    fn agent_conf(&self) -> PathBuf {
        self.p("etc/outpost/agent.toml")
    }
    fn server_conf(&self) -> PathBuf {
        self.p("etc/outpost/server.toml")
    }
    fn agent_data(&self) -> PathBuf {
        self.p("var/lib/outpost")
    }
    fn server_data(&self) -> PathBuf {
        self.p("var/lib/outpost-server")
    }
    fn unit(&self, name: &str) -> PathBuf {
        self.p("etc/systemd/system").join(name)
    }

    /// The installed agent with its installed configuration, run from an unrelated folder.
    fn agent(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Ran {
        let mut c = Command::new(self.agent_bin());
        c.arg("--config").arg(self.agent_conf());
        for a in args {
            c.arg(a);
        }
        c.current_dir(self.prefix.parent().unwrap());
        run(c)
    }

    /// The installed server's admin command with its installed configuration.
    fn server_admin(&self, args: &[&str]) -> Ran {
        let mut c = Command::new(self.server_bin());
        c.arg("--config").arg(self.server_conf()).args(args);
        run(c)
    }

    fn doctor(&self) -> serde_json::Value {
        let r = self.agent(&[&"doctor", &"--json"]);
        assert!(
            !r.err.contains("unrecognized subcommand"),
            "`outpost doctor` is not wired into src/bin/outpost.rs yet: add a `Doctor {{ json }}` subcommand that prints outpost::doctor::check(&cfg) (see src/doctor.rs)"
        );
        assert_eq!(r.code, 0, "doctor found failures:\n{}\n{}", r.out, r.err);
        serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", r.out))
    }
}

/// The status of the doctor's check `name`, and its detail.
fn check<'a>(report: &'a serde_json::Value, name: &str) -> (&'a str, &'a str) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"));
    (
        c["status"].as_str().unwrap(),
        c["detail"].as_str().unwrap_or(""),
    )
}

fn predictions(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT COUNT(*) FROM predictions", [], |r| r.get(0))
        .unwrap()
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `outpost-server serve` from the installation, killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn install_analyze_doctor_enroll_upgrade_uninstall() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let l = Layout {
        prefix: root.join("prefix"),
    };
    let bins = built_binaries();
    let lib = common::ort_lib();
    let tiny = (!checkout_has_models()).then(|| tiny_models(&root));
    let mut from: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"--from-binaries", &bins, &"--ort-lib", &lib];
    if let Some(m) = &tiny {
        from.extend([&"--models-from" as &dyn AsRef<std::ffi::OsStr>, m]);
    }
    let had_user = user_exists("outpost");
    let install = |role: &str| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&role, &"--prefix", &l.prefix];
        args.extend(from.iter().copied());
        script("install.sh", &args).ok(&format!("install.sh {role}"))
    };

    // Install the agent.
    let r = install("agent");
    let installed = format!("Outpost agent {} installed", env!("CARGO_PKG_VERSION"));
    assert!(r.out.contains(&installed), "{}", r.out);
    assert!(
        r.out.contains("enroll <server-url> <code>"),
        "no next step: {}",
        r.out
    );
    for p in [l.agent_bin(), l.lib(), l.agent_conf()] {
        assert!(p.is_file(), "{} missing", p.display());
    }
    assert!(l.agent_data().is_dir());
    let bundles = outpost::model::bundle::discover(&l.models()).unwrap();
    assert!(!bundles.is_empty(), "no models installed");
    assert_eq!(user_exists("outpost"), had_user, "a user was created");
    let conf = std::fs::read_to_string(l.agent_conf()).unwrap();
    assert!(conf.contains(&format!("data_dir = \"{}\"", l.agent_data().display())));
    assert!(conf.contains(&format!("models_dir = \"{}\"", l.models().display())));
    let unit = std::fs::read_to_string(l.unit("outpost-agent.service")).unwrap();
    for line in [
        "NoNewPrivileges=yes".to_string(),
        "ProtectSystem=strict".into(),
        "ProtectHome=yes".into(),
        "PrivateTmp=yes".into(),
        "User=outpost".into(),
        format!("ReadWritePaths={}", l.agent_data().display()),
        format!(
            "ExecStart={} --config {} run",
            l.agent_bin().display(),
            l.agent_conf().display()
        ),
    ] {
        assert!(unit.lines().any(|u| u == line), "{line} not in the unit");
    }
    let placeholder = unit
        .match_indices('@')
        .any(|(i, _)| unit[i + 1..].starts_with(|c: char| c.is_ascii_uppercase()));
    assert!(!placeholder, "placeholder left in the unit:\n{unit}");

    // The installed binary analyzes a tile with what the installation holds, nothing else.
    let tile = root.join("red.png");
    common::solid_png(&tile, 32, 32, [220, 30, 20]);
    l.agent(&[&"analyze", &tile, &"--no-progress"])
        .ok("installed outpost analyze");
    let db = l.agent_data().join("agent.db");
    assert!(db.is_file(), "no database in the prefix's data folder");
    let analysed = predictions(&db);
    assert!(analysed >= 1, "no prediction stored");
    if tiny.is_some() {
        let c = rusqlite::Connection::open(&db).unwrap();
        let top: String = c
            .query_row("SELECT top_label FROM predictions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(top, "red");
    }

    // The doctor: all fine; not enrolled is only a warning.
    let report = l.doctor();
    let (status, detail) = check(&report, "onnx-runtime");
    assert_eq!(status, "ok", "{detail}");
    assert!(
        detail.contains(&l.lib().display().to_string()),
        "the library was not found in the installation: {detail}"
    );
    for name in ["models", "database", "data-dir", "clock"] {
        assert_eq!(check(&report, name).0, "ok", "{report:#}");
    }
    assert_ne!(check(&report, "disk-space").0, "fail", "{report:#}");
    let (status, detail) = check(&report, "server");
    assert_eq!(status, "warn");
    assert!(detail.contains("not enrolled"), "{detail}");

    // The server next to it, sharing the library; enroll the agent with it.
    let r = install("server");
    assert!(r.out.contains("devices add"), "no next step: {}", r.out);
    let sconf = std::fs::read_to_string(l.server_conf()).unwrap();
    assert!(sconf.contains(&format!("data_dir = \"{}\"", l.server_data().display())));
    let sunit = std::fs::read_to_string(l.unit("outpost-server.service")).unwrap();
    assert!(sunit.contains(&format!(
        "ExecStart={} --config {} serve",
        l.server_bin().display(),
        l.server_conf().display()
    )));
    let port = common::free_port();
    let server = Server(
        Command::new(l.server_bin())
            .arg("--config")
            .arg(l.server_conf())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = (0..400).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the installed server did not start");
    assert!(l.server_data().join("server.db").is_file());
    let r = l
        .server_admin(&["devices", "add", "--name", "laptop-07"])
        .ok("devices add");
    let code = r
        .out
        .lines()
        .map(str::trim)
        .find(|s| s.len() == 24 && s.matches('-').count() == 4)
        .unwrap_or_else(|| panic!("no code in {}", r.out))
        .to_string();
    let url = format!("http://127.0.0.1:{port}");
    l.agent(&[&"enroll", &url, &code]).ok("enroll");

    // Upgrade in place: an edited config and the data survive, the new default goes next to it.
    std::fs::write(l.agent_conf(), format!("{conf}\n# edited on site\n")).unwrap();
    std::fs::write(l.agent_data().join("notes.txt"), "keep me").unwrap();
    let r = install("agent");
    assert!(r.out.contains("upgraded"), "{}", r.out);
    assert!(r.out.contains("agent.toml.new"), "{}", r.out);
    assert!(std::fs::read_to_string(l.agent_conf())
        .unwrap()
        .contains("# edited on site"));
    assert_eq!(
        std::fs::read_to_string(l.agent_conf().with_extension("toml.new")).unwrap(),
        conf
    );
    assert!(l.agent_data().join("notes.txt").is_file());
    let r = l
        .agent(&[&"analyze", &tile, &"--no-progress"])
        .ok("analyze after the upgrade");
    assert!(r.out.contains("already analysed"), "{}", r.out);
    assert_eq!(predictions(&db), analysed);
    let report = l.doctor();
    let (status, detail) = check(&report, "server");
    assert_eq!(status, "ok", "enrollment lost in the upgrade? {detail}");
    assert!(detail.contains(&url), "{detail}");
    drop(server);

    // Uninstall the agent: the data and config stay, and the shared library stays for the server.
    let r = script("uninstall.sh", &[&"agent", &"--prefix", &l.prefix]).ok("uninstall agent");
    assert!(r.out.contains("kept the data"), "{}", r.out);
    assert!(!l.agent_bin().exists() && !l.unit("outpost-agent.service").exists());
    assert!(l.lib().is_file() && l.server_bin().is_file());
    assert!(db.is_file() && l.agent_conf().is_file());

    // Purge the server: its data and config go, and with it the shared parts.
    script(
        "uninstall.sh",
        &[&"server", &"--prefix", &l.prefix, &"--purge"],
    )
    .ok("uninstall server --purge");
    for gone in [
        l.server_bin(),
        l.server_conf(),
        l.server_data(),
        l.lib(),
        l.models(),
    ] {
        assert!(!gone.exists(), "{} still there", gone.display());
    }
    assert!(db.is_file(), "the agent's data went with the server");

    // Purging the agent leaves nothing behind in the prefix.
    script(
        "uninstall.sh",
        &[&"agent", &"--prefix", &l.prefix, &"--purge"],
    )
    .ok("uninstall agent --purge");
    let left: Vec<_> = std::fs::read_dir(&l.prefix)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(user_exists("outpost"), had_user);
}

/// The bundle is packed with stand-in binaries that only print their version: hashing
/// the real (debug) binaries three times would take most of the time budget, and the test
/// above already runs the installed binary.
#[test]
fn bundle_installs_offline_and_refuses_a_changed_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let bins = root.join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    for b in ["outpost", "outpost-server"] {
        let p = bins.join(b);
        std::fs::write(&p, format!("#!/bin/sh\necho '{b} {version}'\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let models = tiny_models(&root);
    let dist = root.join("dist");
    let lib = common::ort_lib();
    script(
        "make-bundle.sh",
        &[
            &"--from-binaries",
            &bins,
            &"--models-from",
            &models,
            &"--ort-lib",
            &lib,
            &"--out",
            &dist,
            &"--folder-only",
        ],
    )
    .ok("make-bundle.sh");
    let bundle = dist.join(format!(
        "outpost-{version}-linux-{}",
        std::env::consts::ARCH
    ));
    for f in [
        "bin/outpost",
        "bin/outpost-server",
        "lib/libonnxruntime.so.1.31.1",
        "models/colours/manifest.json",
        "config/agent.toml",
        "config/server.toml",
        "install.sh",
        "uninstall.sh",
        "outpost-agent.service",
        "outpost-server.service",
        "README.md",
        "VERSION",
        "SHA256SUMS",
    ] {
        assert!(bundle.join(f).is_file(), "{f} not in the bundle");
    }
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap();
    for f in ["bin/outpost", "lib/libonnxruntime.so.1.31.1", "install.sh"] {
        assert!(sums.lines().any(|l| l.ends_with(&format!("  {f}"))), "{f}");
    }

    // From the unpacked bundle alone: no source options.
    let install = |prefix: &Path| {
        let mut c = Command::new("bash");
        c.arg(bundle.join("install.sh"))
            .args(["agent", "--prefix"])
            .arg(prefix);
        run(c)
    };
    let good = root.join("good");
    let r = install(&good).ok("install from the bundle");
    assert!(r.out.contains("from the bundle"), "{}", r.out);
    assert!(good.join("usr/local/bin/outpost").is_file());
    assert!(good
        .join("usr/local/share/outpost/models/colours/manifest.json")
        .is_file());

    // One changed byte anywhere: refused before anything is installed.
    let changed = bundle.join("config/agent.toml");
    let mut text = std::fs::read(&changed).unwrap();
    text.extend_from_slice(b"\n# changed\n");
    std::fs::write(&changed, text).unwrap();
    let bad = root.join("bad");
    let r = install(&bad);
    assert_ne!(r.code, 0, "a changed bundle was installed");
    assert!(r.err.contains("SHA256SUMS"), "{}", r.err);
    assert!(r.err.contains("config/agent.toml: FAILED"), "{}", r.err);
    assert!(!bad.join("usr").exists(), "something was installed");
}

/// The doctor in this process, on installations broken in each way it knows.
#[test]
fn doctor_reports_each_problem_with_a_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let models = root.join("models");
    common::make_image_bundle(&models.join("good"), "good", "1.0.0");
    common::make_image_bundle(&models.join("bad"), "bad", "1.0.0");
    let mut head = std::fs::read(models.join("bad/head.onnx")).unwrap();
    head[0] ^= 0xff;
    std::fs::write(models.join("bad/head.onnx"), head).unwrap();
    let data = root.join("data");
    let store = outpost::store::Store::open(&data.join("agent.db")).unwrap();
    store
        .set_state(
            "server_url",
            &format!("http://127.0.0.1:{}", common::free_port()),
        )
        .unwrap();
    drop(store);
    let mut cfg = outpost::config::AgentConfig {
        data_dir: Some(data),
        models_dir: Some(models),
        ..Default::default()
    };
    cfg.runtime.library = Some(common::ort_lib());

    let report = outpost::doctor::check(&cfg);
    let status = |name: &str| report.get(name).map(|c| c.status.as_str());
    assert_eq!(status("onnx-runtime"), Some("ok"), "{report}");
    assert_eq!(status("model good"), Some("ok"), "{report}");
    let bad = report.get("model bad").unwrap();
    assert_eq!(bad.status.as_str(), "fail");
    assert!(bad.detail.contains("head.onnx"), "{}", bad.detail);
    assert!(bad.fix.as_deref().unwrap_or("").contains("installer"));
    assert_eq!(status("database"), Some("ok"), "{report}");
    let server = report.get("server").unwrap();
    assert_eq!(server.status.as_str(), "warn", "{report}");
    assert!(server.detail.contains("unreachable"), "{}", server.detail);
    assert!(report.has_failures());
    let text = report.to_string();
    assert!(
        text.contains("fail  model bad") && text.contains("fix: "),
        "{text}"
    );

    // A damaged database, and no models at all.
    let broken = root.join("broken");
    std::fs::create_dir_all(broken.join("models")).unwrap();
    std::fs::write(broken.join("agent.db"), vec![b'x'; 8192]).unwrap();
    cfg.data_dir = Some(broken.clone());
    cfg.models_dir = Some(broken.join("models"));
    let report = outpost::doctor::check(&cfg);
    for name in ["database", "models"] {
        let c = report.get(name).unwrap();
        assert_eq!(c.status.as_str(), "fail", "{report}");
        assert!(c.fix.is_some());
    }
}

#[test]
fn scripts_are_shellcheck_clean_and_name_the_runtime_the_agent_loads() {
    let dir = common::repo().join("installer");
    for s in ["install.sh", "make-bundle.sh"] {
        let text = std::fs::read_to_string(dir.join(s)).unwrap();
        assert!(
            text.contains(&format!(
                "ORT_VERSION={}\n",
                outpost::model::runtime::ORT_VERSION
            )),
            "{s} names another ONNX Runtime version than src/model/runtime.rs"
        );
    }
    let scripts = ["install.sh", "uninstall.sh", "make-bundle.sh"].map(|s| dir.join(s));
    match Command::new("shellcheck").args(&scripts).output() {
        Ok(o) => assert!(
            o.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(_) => eprintln!("SKIP shellcheck: not installed (apt-get install shellcheck)"),
    }
}

/// `install.sh agent --encrypt` on an unattended box: the data folder is encrypted with a
/// key sealed by systemd-creds, the service gets a drop-in that hands the key over
/// (`LoadCredentialEncrypted=`), the installed agent works without anyone typing anything,
/// and uninstalling removes the drop-in but keeps the sealed key with the data.
#[test]
fn install_with_encrypt_seals_the_data_key_for_the_service() {
    let have = Command::new("systemd-creds")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !have || !is_root {
        eprintln!("SKIP: install.sh --encrypt needs systemd-creds and root (have: {have}, root: {is_root})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let l = Layout {
        prefix: root.join("prefix"),
    };
    let bins = built_binaries();
    let lib = common::ort_lib();
    let tiny = tiny_models(&root);
    let r = script(
        "install.sh",
        &[
            &"agent",
            &"--prefix",
            &l.prefix,
            &"--from-binaries",
            &bins,
            &"--ort-lib",
            &lib,
            &"--models-from",
            &tiny,
            &"--encrypt",
        ],
    )
    .ok("install.sh agent --encrypt");
    assert!(r.out.contains("Recovery key"), "{}", r.out);
    assert!(r.out.contains("key sealed in"), "{}", r.out);
    let data = l.agent_data();
    assert!(data.join("data-key.json").is_file());
    assert!(data.join("data-key.cred").is_file());
    let dropin = l.unit("outpost-agent.service.d").join("encryption.conf");
    let conf = std::fs::read_to_string(&dropin).unwrap();
    assert!(
        conf.lines().any(|x| x
            == format!(
                "LoadCredentialEncrypted=outpost-data-key:{}",
                data.join("data-key.cred").display()
            )),
        "{conf}"
    );
    let tile = root.join("red.png");
    common::solid_png(&tile, 32, 32, [220, 30, 20]);
    l.agent(&[&"analyze", &tile, &"--no-progress"])
        .ok("installed outpost analyze, encrypted");
    let db = std::fs::read(data.join("agent.db")).unwrap();
    assert!(
        !db.windows(15).any(|w| w == b"SQLite format 3"),
        "the database is not encrypted"
    );
    let report = l.doctor();
    assert_eq!(check(&report, "encryption").0, "ok", "{report:#}");
    // Installing again keeps the key (it is never re-made over existing data).
    let before = std::fs::read(data.join("data-key.json")).unwrap();
    script(
        "install.sh",
        &[
            &"agent",
            &"--prefix",
            &l.prefix,
            &"--from-binaries",
            &bins,
            &"--ort-lib",
            &lib,
            &"--models-from",
            &tiny,
            &"--encrypt",
        ],
    )
    .ok("upgrade with --encrypt");
    assert_eq!(std::fs::read(data.join("data-key.json")).unwrap(), before);
    script("uninstall.sh", &[&"agent", &"--prefix", &l.prefix]).ok("uninstall");
    assert!(!dropin.exists(), "the drop-in is left behind");
    assert!(
        data.join("data-key.cred").is_file(),
        "the sealed key went with the program"
    );
}
