//! Issue 12's proof: the operators' dashboard in a real headless Chromium, against the real
//! `outpost-server serve` and a real agent (`outpost analyze`, `feedback import`, `enroll`,
//! `sync`) with a tiny real model that has base training data, so training runs in a
//! second.
//!
//! Refused without sign-in (pages redirect, POSTs answer 401 and change nothing); signs in
//! (a wrong password first); sees the device that synced in this test with its group,
//! model version, synced and pending feedback, and never its key; shows one raw item (and
//! finds the view in the audit log); trains now, opens the evaluation report (per-label
//! precision and recall, the confusion matrix as an SVG picture); publishes the candidate;
//! proposes a withdrawal and cancels it, and forges a confirmation: the metadata served to
//! agents does not change; withdraws with the confirmation, and the metadata served at
//! `/v1/metadata/targets.json` (verified from the pinned root) says withdrawn; the loop page
//! lists the label proposed in the field; signs out.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::{add_device, server_cmd, ServerProcess};
use outpost::trust::client::TrustedState;
use outpost::trust::Targets;
use std::path::Path;
use webdriver::Browser;

/// The targets an agent gets from the server over HTTP, verified from the pinned root.
async fn served_targets(http: &reqwest::Client, url: &str, root: &[u8]) -> Targets {
    let get = |f: &str| {
        let u = format!("{url}/v1/metadata/{f}");
        let http = http.clone();
        async move { http.get(u).send().await.unwrap().bytes().await.unwrap() }
    };
    let now = time::OffsetDateTime::now_utc();
    let mut st = TrustedState::from_pinned_root(root, now).unwrap();
    st.update_timestamp(&get("timestamp.json").await, now)
        .unwrap();
    st.update_snapshot(&get("snapshot.json").await, now)
        .unwrap();
    st.update_targets(&get("targets.json").await, now).unwrap();
    st.targets.unwrap().signed
}

fn audit(data: &Path) -> Vec<(String, String, String)> {
    let c = rusqlite::Connection::open(data.join("server.db")).unwrap();
    let mut st = c
        .prepare("SELECT actor, action, detail FROM audit ORDER BY audit_id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Saves a screenshot to target/dashboard-<name>.png for a person to look at (best effort).
async fn screenshot(browser: &Browser, name: &str) {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::repo().join("target"));
    std::fs::write(
        dir.join(format!("dashboard-{name}.png")),
        browser.screenshot().await,
    )
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_dashboard_in_a_real_browser() {
    let t0 = std::time::Instant::now();
    // The browser first: a missing package fails loudly before anything else.
    let browser = Browser::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("server");
    let bundle = root.join("colours-1.0.0");
    common::bundle_with_base_data(&bundle);

    // The server: keys, colours 1.0.0 on stable, an operator, no automatic training, and
    // candidates held for an operator.
    let (c, out, err) = server_cmd(
        &data,
        &[
            "keys",
            "init",
            "--root-keys-dir",
            root.join("offline").to_str().unwrap(),
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = server_cmd(
        &data,
        &[
            "models",
            "publish",
            bundle.to_str().unwrap(),
            "--channel",
            "stable",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = server_cmd(&data, &["admin", "add", "alice"]);
    assert_eq!(c, 0, "{out}{err}");
    let password = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 29 && l.matches('-').count() == 5)
        .unwrap_or_else(|| panic!("no generated password in {out}"))
        .to_string();
    let (c, _, err) = server_cmd(&data, &["admin", "add", "alice"]);
    assert_eq!(c, 1, "a second add is refused: {err}");
    let config = root.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "ort_lib = {:?}\n[training]\nauto_train_after = 0\ndrift_train_after = 0\npublish = false\nepochs = 20\n",
            common::ort_lib().display().to_string()
        ),
    )
    .unwrap();
    let server = ServerProcess::start_with(
        &data,
        common::free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let url = server.url.clone();
    let pinned = std::fs::read(data.join("repo/metadata/1.root.json")).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let targets_before = served_targets(&http, &url, &pinned).await;

    // Refused without sign-in: pages redirect to the form, actions answer 401 and do nothing.
    for page in [
        "/admin/",
        "/admin/models",
        "/admin/loop",
        "/admin/audit",
        "/admin/runs/1",
    ] {
        let r = http.get(format!("{url}{page}")).send().await.unwrap();
        assert_eq!(r.status(), 303, "{page}");
        assert_eq!(r.headers()["location"], "/admin/login", "{page}");
    }
    for (path, form) in [
        ("/admin/actions/withdraw", "model=colours&version=1.0.0"),
        ("/admin/confirm", "token=x"),
    ] {
        let r = http
            .post(format!("{url}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = http
        .post(format!("{url}/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=alice&password=wrong-password-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());

    // The agent: 16 tiles analysed offline, labelled (4 with a label the model does not
    // know), enrolled, synced. The pinned root makes it report its models too.
    let a = root.join("agent");
    std::fs::create_dir_all(a.join("models")).unwrap();
    std::os::unix::fs::symlink(&bundle, a.join("models/colours")).unwrap();
    std::fs::copy(data.join("repo/metadata/1.root.json"), a.join("root.json")).unwrap();
    let tiles = a.join("tiles");
    std::fs::create_dir_all(&tiles).unwrap();
    let mut csv = String::from("source,label\n");
    for i in 0..4u8 {
        for (label, rgb) in [
            ("red", [230 - i * 10, 20 + i * 5, 25]),
            ("green", [30, 210 - i * 10, 40 + i * 5]),
            ("blue", [25 + i * 5, 35, 220 - i * 10]),
            ("flooded", [120 + i * 5, 100, 60]),
        ] {
            let name = format!("{label}-{i}.png");
            common::solid_png(&tiles.join(&name), 16, 16, rgb);
            csv.push_str(&format!("{name},{label}\n"));
        }
    }
    std::fs::write(a.join("labels.csv"), &csv).unwrap();
    let run = |args: &[&str]| {
        let o = common::agent_cmd(&a, args)
            .env("OUTPOST__UPDATE__ROOT", a.join("root.json"))
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(o.status.success(), "outpost {args:?}: {out}{err}");
    };
    run(&["analyze", tiles.to_str().unwrap(), "--no-progress"]);
    run(&[
        "feedback",
        "import",
        "--allow-new-labels",
        a.join("labels.csv").to_str().unwrap(),
    ]);
    let code = add_device(&data, "field-1");
    run(&["enroll", &url, &code]);
    run(&["sync"]);
    assert_eq!(common::pending(&a), 0);
    let public_key: Vec<u8> = rusqlite::Connection::open(data.join("server.db"))
        .unwrap()
        .query_row(
            "SELECT public_key FROM devices WHERE name = 'field-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let key_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&public_key)
    };
    eprintln!("set-up done in {:.1} s", t0.elapsed().as_secs_f64());

    // Sign in: the page sends us to the form; a wrong password is refused, then we are in.
    browser.goto(&format!("{url}/admin/")).await;
    browser.wait_page("login").await;
    browser.type_into("#name", "alice").await;
    browser.type_into("#password", "not-her-password").await;
    browser.click("#sign-in").await;
    browser.wait_page("login").await;
    assert!(browser
        .text("#login-error")
        .await
        .contains("Wrong name or password"));
    browser.type_into("#name", "alice").await;
    browser.type_into("#password", &password).await;
    browser.click("#sign-in").await;
    browser.wait_page("fleet").await;
    assert_eq!(browser.text("#who").await, "alice");

    // The fleet: the device that synced, its group, model, synced and pending feedback.
    let row = "tr[data-device='field-1']";
    assert_eq!(browser.text(&format!("{row} td.feedback")).await, "16");
    assert_eq!(browser.text(&format!("{row} td.pending")).await, "0");
    assert!(browser
        .text(&format!("{row} td.models"))
        .await
        .contains("colours 1.0.0"));
    assert!(browser.text(row).await.contains("north"));
    screenshot(&browser, "fleet").await;
    let html = browser.source().await;
    assert!(
        !html.contains(&key_b64),
        "the device key is never on the page"
    );
    // Filters.
    browser.goto(&format!("{url}/admin/?group=south")).await;
    browser.wait_page("fleet").await;
    assert_eq!(browser.count(row).await, 0, "filtered out");
    browser
        .goto(&format!("{url}/admin/?group=north&sort=feedback&desc=1"))
        .await;
    browser.wait_page("fleet").await;
    assert_eq!(browser.count(row).await, 1);

    // The device page: history without raw data; one item shown on request, audited.
    browser.click(&format!("{row} td a")).await;
    browser.wait_page("device").await;
    browser.find("#feedback tr[data-feedback]").await;
    assert_eq!(browser.count("#feedback tr[data-feedback]").await, 16);
    assert!(
        !browser.source().await.contains("data:image"),
        "no raw item before asking"
    );
    browser
        .click("#feedback tr[data-feedback] button.show-item")
        .await;
    browser.find("img#item-content").await;
    let src = browser
        .js("return document.getElementById('item-content').src")
        .await;
    assert!(
        src.as_str().unwrap().starts_with("data:image/png;base64,"),
        "{src}"
    );
    assert!(
        audit(&data)
            .iter()
            .any(|(who, what, _)| who == "operator:alice" && what == "show item"),
        "the view is audited"
    );

    // Train now: propose, confirm; the page answers at once with the job queued, and the
    // serving process (the only one here) claims the job and runs it.
    browser.goto(&format!("{url}/admin/models")).await;
    browser.wait_page("models").await;
    browser
        .click("section[data-model='colours'] button.train")
        .await;
    browser.wait_page("confirm").await;
    assert!(browser
        .text("#confirm-what")
        .await
        .contains("Queue a training job for colours"));
    browser.click("#confirm").await;
    browser.wait_page("models").await;
    let flash = browser.text("#flash").await;
    assert!(
        flash.contains("training of colours queued as job #"),
        "{flash}"
    );
    let mut looks = 0;
    while browser.count("tr[data-candidate='1.1.0']").await == 0 {
        assert!(
            looks < 120,
            "the queued training job did not run within a minute"
        );
        looks += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        browser.goto(&format!("{url}/admin/models")).await;
        browser.wait_page("models").await;
    }
    browser.click("tr[data-candidate='1.1.0'] a.report").await;
    browser.find("#gate").await;
    let candidate = browser.text("#candidate").await;
    assert_eq!(candidate, "1.1.0", "a new label: a minor version");
    assert_eq!(browser.text("#outcome").await, "held", "publish = false");

    // Open the report from the models page: per-label precision and recall, and the
    // confusion matrix as a picture (one cell per pair of the 4 labels).
    browser.goto(&format!("{url}/admin/models")).await;
    browser.wait_page("models").await;
    assert!(
        browser.count("figure.metrics svg").await == 1,
        "metrics plot"
    );
    browser
        .click(&format!("tr[data-candidate='{candidate}'] a.report"))
        .await;
    browser.find("#feedback_holdout table.per-label").await;
    for label in ["red", "green", "blue", "flooded"] {
        let t = browser
            .text(&format!("#feedback_holdout tr[data-label='{label}']"))
            .await;
        assert!(t.contains('%'), "{label}: {t}");
    }
    assert!(browser
        .text("#feedback_holdout tr[data-label='flooded']")
        .await
        .contains("(new)"));
    assert_eq!(
        browser
            .count("#feedback_holdout figure.confusion svg rect")
            .await,
        1 + 16,
        "background and 4 x 4 cells"
    );
    screenshot(&browser, "report").await;

    // Publish the held candidate to canary, 10%.
    browser.click("form.action.publish button").await;
    assert!(browser.text("#confirm-what").await.contains(&format!(
        "Publish candidate colours {candidate} to channel canary"
    )));
    browser.click("#confirm").await;
    browser.wait_page("models").await;
    assert!(browser.text("#flash").await.contains("published"));
    let t = served_targets(&http, &url, &pinned).await;
    let rel = t
        .releases
        .iter()
        .find(|r| r.model == "colours" && r.version == candidate)
        .expect("the candidate is published");
    assert_eq!(
        (rel.channel.as_str(), rel.percent, rel.withdrawn),
        ("canary", 10, false)
    );
    assert!(t.version > targets_before.version);

    // Widen it (stage): 50% of every group.
    let release_row = format!("tr[data-release='colours {candidate} canary']");
    browser
        .type_into(
            &format!("{release_row} form.stage input[name=percent]"),
            "50",
        )
        .await;
    browser
        .click(&format!("{release_row} form.stage input[name=all_groups]"))
        .await;
    browser
        .click(&format!("{release_row} form.stage button"))
        .await;
    assert!(browser
        .text("#confirm-what")
        .await
        .contains("every group, 50% of devices"));
    browser.click("#confirm").await;
    browser.wait_page("models").await;
    assert!(browser.text("#flash").await.contains("staged"));
    let t = served_targets(&http, &url, &pinned).await;
    let rel = t
        .releases
        .iter()
        .find(|r| r.model == "colours" && r.version == candidate)
        .unwrap();
    assert_eq!((rel.percent, rel.groups.len()), (50, 0), "widened");
    screenshot(&browser, "models").await;

    // An action without its confirmation does nothing: propose a withdrawal, cancel.
    browser
        .click(&format!("{release_row} button.withdraw"))
        .await;
    assert!(browser
        .text("#confirm-what")
        .await
        .contains("Withdraw release"));
    let token = browser
        .js("return document.querySelector('input[name=token]').value")
        .await
        .as_str()
        .unwrap()
        .to_string();
    let csrf = browser
        .js("return document.querySelector('input[name=csrf]').value")
        .await
        .as_str()
        .unwrap()
        .to_string();
    browser.click("#cancel").await;
    browser.wait_page("models").await;
    let unchanged = served_targets(&http, &url, &pinned).await;
    assert_eq!(unchanged.version, t.version, "cancelled: nothing signed");
    // Forged confirmations from outside the page: no CSRF token, a wrong token, a
    // foreign Origin. None does anything.
    let cookie = format!(
        "outpost_admin={}",
        browser
            .cookie("outpost_admin")
            .await
            .expect("session cookie")
    );
    for (body, origin, status) in [
        (format!("token={token}"), None, 403),
        (format!("csrf={csrf}&token=forged"), None, 409),
        (
            format!("csrf={csrf}&token={token}"),
            Some("http://evil.example"),
            403,
        ),
    ] {
        let mut req = http
            .post(format!("{url}/admin/confirm"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        assert_eq!(
            req.send().await.unwrap().status(),
            status,
            "{body} {origin:?}"
        );
    }
    assert_eq!(
        served_targets(&http, &url, &pinned).await.version,
        t.version
    );

    // Withdraw for real: confirm, and the metadata served to agents says so.
    browser
        .click(&format!("{release_row} button.withdraw"))
        .await;
    browser.click("#confirm").await;
    browser.wait_page("models").await;
    assert!(browser.text("#flash").await.contains("withdrew"));
    assert!(browser.text(&release_row).await.contains("withdrawn"));
    let after = served_targets(&http, &url, &pinned).await;
    let rel = after
        .releases
        .iter()
        .find(|r| r.model == "colours" && r.version == candidate)
        .unwrap();
    assert!(rel.withdrawn, "withdrawn in the signed metadata");
    assert_eq!(
        after
            .release_for("colours", "canary", "north", "any")
            .map(|r| r.version.clone()),
        None,
        "canary devices get nothing newer"
    );
    let log = audit(&data);
    for action in [
        "train",
        "models publish",
        "models stage",
        "models withdraw",
        "show item",
        "sign in",
    ] {
        assert!(
            log.iter()
                .any(|(who, what, _)| who == "operator:alice" && what == action),
            "audit lacks {action} by operator:alice: {log:#?}"
        );
    }
    assert_eq!(
        log.iter()
            .filter(|(_, what, _)| what == "models withdraw")
            .count(),
        1,
        "the cancelled and forged ones did nothing"
    );

    // The loop: feedback per day and label, the label proposed in the field.
    browser.goto(&format!("{url}/admin/loop")).await;
    browser.wait_page("loop").await;
    assert_eq!(browser.count("figure.per-day svg").await, 1);
    assert!(browser
        .text("#new-labels tr[data-label='flooded']")
        .await
        .contains("not yet"));
    let latency = browser.text("#latency tbody tr").await;
    assert!(
        latency.contains(&format!("colours {candidate} 16 ")),
        "feedback to release: the 16 decisions of this test: {latency}"
    );
    screenshot(&browser, "loop").await;

    // Revoke the device from its page: confirmed, audited, and its next sync is refused.
    browser.goto(&format!("{url}/admin/")).await;
    browser.wait_page("fleet").await;
    browser.click(&format!("{row} td a")).await;
    browser.wait_page("device").await;
    browser.click("#revoke").await;
    assert!(browser
        .text("#confirm-what")
        .await
        .contains("Revoke device field-1"));
    browser.click("#confirm").await;
    browser.wait_page("device").await;
    assert_ne!(browser.text("#revoked").await, "—");
    run(&[
        "feedback",
        "give",
        tiles.join("red-0.png").to_str().unwrap(),
        "green",
    ]);
    let o = common::agent_cmd(&a, &["sync"]).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success() && said.contains("revoked"),
        "a revoked device is refused: {said}"
    );
    assert_eq!(common::pending(&a), 1, "the decision waits in the outbox");
    assert!(audit(&data)
        .iter()
        .any(|(who, what, _)| who == "operator:alice" && what == "devices revoke"));

    // Sign out: the cookie no longer opens the pages.
    browser.click("header form button").await;
    browser.wait_page("login").await;
    let r = http
        .get(format!("{url}/admin/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the session ended");
    eprintln!("dashboard test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// The report of a run with 12 labels, as the training job writes it (the parts the
/// report page reads).
fn twelve_label_report(candidate: &str) -> String {
    let labels: Vec<String> = [
        "annual-crop",
        "forest",
        "herbaceous-vegetation",
        "highway",
        "industrial",
        "pasture",
        "permanent-crop",
        "residential",
        "river",
        "sea-lake",
        "flooded-field",
        "burnt-area",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let n = labels.len();
    let confusion: Vec<Vec<u64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| if i == j { 40 } else { ((i + j) % 3) as u64 })
                .collect()
        })
        .collect();
    let side = serde_json::json!({
        "count": 500, "accuracy": 0.9, "macro_f1": 0.88,
        "precision": vec![0.9; n], "recall": vec![0.9; n], "confusion": confusion,
    });
    serde_json::json!({
        "labels": labels, "new_labels": ["flooded-field", "burnt-area"],
        "base_version": "1.0.0", "candidate_version": candidate,
        "gate": {"passed": true, "tolerance": 0.02, "problems": []},
        "data": {"base_train": 1000, "base_holdout": 500, "feedback_train": 100,
                 "feedback_holdout": 40, "feedback_skipped": 0},
        "feedback_holdout": {"current": side, "candidate": side, "support": vec![40; n]},
        "base_holdout": {"current": side, "candidate": side, "support": vec![40; n]},
    })
    .to_string()
}

/// Issue 22: the confusion matrix's legend is legible with 12 labels (no two entries
/// overlap on screen), a reason published to every group says "all groups", not `[]`,
/// and the models page shows its 25 training runs 20 to a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_labels_all_groups_and_pages_of_runs() {
    let browser = Browser::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("server");
    let keys = root.join("offline");
    let (c, out, err) = server_cmd(
        &data,
        &["keys", "init", "--root-keys-dir", keys.to_str().unwrap()],
    );
    assert_eq!(c, 0, "{out}{err}");
    let (c, out, err) = server_cmd(&data, &["admin", "add", "alice"]);
    assert_eq!(c, 0, "{out}{err}");
    let password = out
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 29 && l.matches('-').count() == 5)
        .unwrap_or_else(|| panic!("no generated password in {out}"))
        .to_string();
    {
        let db = rusqlite::Connection::open(data.join("server.db")).unwrap();
        for i in 1..=25 {
            let candidate = format!("1.{i}.0");
            let reason = if i == 25 {
                "published to stable [] 100% as targets version 9".to_string()
            } else {
                format!("held for an operator (run {i})")
            };
            db.execute(
                "INSERT INTO training_runs (run_id, model_name, base_version, candidate_version, trigger,
                   status, reason, feedback_seen, report, started_at, finished_at)
                 VALUES (?1, 'landcover', '1.0.0', ?2, 'operator', ?3, ?4, 100, ?5,
                         '2026-12-01T10:00:00Z', '2026-12-01T10:01:00Z')",
                rusqlite::params![
                    i,
                    candidate,
                    if i == 25 { "published" } else { "held" },
                    reason,
                    twelve_label_report(&candidate)
                ],
            )
            .unwrap();
        }
    }
    let server = ServerProcess::start(&data, common::free_port());
    let url = server.url.clone();
    browser.goto(&format!("{url}/admin/")).await;
    browser.wait_page("login").await;
    browser.type_into("#name", "alice").await;
    browser.type_into("#password", &password).await;
    browser.click("#sign-in").await;
    browser.wait_page("fleet").await;

    // The report of the run published to every group.
    browser.goto(&format!("{url}/admin/runs/25")).await;
    browser.wait_page("run").await;
    let facts = browser.text("dl.facts").await;
    assert!(
        facts.contains("published to stable all groups 100%"),
        "{facts}"
    );
    assert!(!facts.contains("[]"), "{facts}");
    // Every text of the confusion picture, as laid out by the browser: no two overlap.
    let overlaps = browser
        .js(
            "const fig = document.querySelector('#feedback_holdout figure.confusion');
             fig.scrollIntoView();
             const r = [...fig.querySelectorAll('svg text')].map(t => [t.textContent, t.getBoundingClientRect()]);
             const out = [];
             for (let a = 0; a < r.length; a++) for (let b = a + 1; b < r.length; b++) {
               const [p, q] = [r[a][1], r[b][1]];
               if (p.left < q.right - 0.5 && q.left < p.right - 0.5 && p.top < q.bottom - 0.5 && q.top < p.bottom - 0.5)
                 out.push(r[a][0] + ' / ' + r[b][0]);
             }
             return [r.length, out];",
        )
        .await;
    assert!(
        overlaps[0].as_u64().unwrap() >= 1 + 12 + 12 * 12 + 12 + 12,
        "title, row names, cell counts, column numbers and legend: {overlaps}"
    );
    assert_eq!(overlaps[1], serde_json::json!([]), "overlapping texts");
    for label in ["12: burnt-area", "11: flooded-field", "1: annual-crop"] {
        assert!(
            browser
                .text("#feedback_holdout figure.confusion")
                .await
                .contains(label),
            "{label}"
        );
    }
    screenshot(&browser, "confusion-12").await;

    // The models page: 20 runs, newest first, and a link to the 5 older ones.
    browser.goto(&format!("{url}/admin/models")).await;
    browser.wait_page("models").await;
    assert_eq!(browser.count("table.runs tr[data-run]").await, 20);
    assert_eq!(browser.count("tr[data-run='25']").await, 1, "newest first");
    assert!(browser
        .text("tr[data-run='25']")
        .await
        .contains("all groups"));
    assert!(browser.text("nav.pager").await.contains("Page 1 of 2"));
    browser.click("nav.pager a[rel=next]").await;
    browser.wait_page("models").await;
    assert_eq!(browser.count("table.runs tr[data-run]").await, 5);
    assert_eq!(browser.count("tr[data-run='1']").await, 1);
    assert!(browser.text("nav.pager").await.contains("Page 2 of 2"));
    screenshot(&browser, "models-page-2").await;
    browser.click("nav.pager a[rel=prev]").await;
    browser.wait_page("models").await;
    assert_eq!(browser.count("table.runs tr[data-run]").await, 20);
    server.kill();
}
