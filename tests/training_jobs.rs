//! Training always runs as a job in the job table, so exactly one server process runs it:
//!
//! - `outpost-server train` (a real process) queues a job while a real `serve` process is
//!   running; exactly one job and one run result, reported by the command;
//! - a run whose job lease was taken over by another process (its renewal finds another
//!   owner) stops before publishing: the repository is unchanged and the run is recorded as
//!   failed. The same run with its lease intact publishes (so the check can fail).
//!
//! - a candidate held by the gate on one server process is published from another that
//!   shares the store and the blob store but not the data folder.
//!
//! Tiny real model (three colours, base training data) and real ONNX Runtime.

mod common;

use common::{server_cmd, ServerProcess};
use outpost::protocol::FeedbackRecord;
use outpost::server::config::ServerConfig;
use outpost::server::repository::{self, Repository};
use outpost::server::store::{ServerStore, SqliteServerStore, Trigger, Via};
use outpost::server::training::job::{self as background, JobOutcome};
use outpost::server::training::TrainingSettings;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// `n` decisions per colour with embeddings near that colour's corner (as the base data).
fn feedback(store: &dyn ServerStore, n: usize) {
    let d = store
        .add_device("laptop", "north", "code", "2099-01-01T00:00:00Z")
        .unwrap();
    let mut records = Vec::new();
    for (class, label) in common::IMAGE_LABELS.iter().enumerate() {
        for i in 0..n {
            let jitter = ((i * 5 % 7) as f32 - 3.0) / 40.0;
            let emb: Vec<u8> = (0..3)
                .flat_map(|c| {
                    let v = if c == class {
                        0.8 + jitter
                    } else {
                        -0.8 - jitter
                    };
                    half::f16::from_f32(v).to_le_bytes()
                })
                .collect();
            records.push(FeedbackRecord {
                feedback_id: uuid::Uuid::new_v4().to_string(),
                item_id: format!("item-{label}-{i}"),
                kind: outpost::protocol::ItemKind::Image,
                model_name: "colours".into(),
                model_version: "1.0.0".into(),
                action: outpost::protocol::Action::Confirm,
                labels: vec![label.to_string()],
                new_labels: vec![],
                annotator: "t".into(),
                created_at: "2026-11-28T00:00:00Z".into(),
                supersedes: None,
                embedding_f16: outpost::protocol::b64(&emb),
                content: None,
                content_type: None,
            });
        }
    }
    store.ingest(&d.device_id, &records, Via::Usb).unwrap();
}

fn settings() -> TrainingSettings {
    TrainingSettings {
        auto_train_after: 0,
        drift_train_after: 0,
        tolerance: 1.0,
        publish: true,
        channel: "stable".into(),
        percent: 100,
        epochs: 20,
        ..TrainingSettings::default()
    }
}

/// Keys, colours 1.0.0 published, feedback stored: a server data folder ready to train.
fn prepared(data: &Path, offline: &Path) -> (Arc<dyn ServerStore>, Repository) {
    let store: Arc<dyn ServerStore> =
        Arc::new(SqliteServerStore::open(&data.join("server.db")).unwrap());
    let repo = Repository::local(data).unwrap().with_lock(store.clone());
    repository::init_keys(&repo, offline, 1, 1).unwrap();
    let bundle = data.join("../colours-1.0.0");
    common::bundle_with_base_data(&bundle);
    repository::publish(&repo, &bundle, "stable", &[], 100).unwrap();
    feedback(store.as_ref(), 20);
    (store, repo)
}

#[test]
fn a_run_whose_job_was_taken_over_stops_and_publishes_nothing() {
    common::init_ort();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let (store, repo) = prepared(&data, &tmp.path().join("offline"));
    let cfg = ServerConfig {
        data_dir: data.clone(),
        ort_lib: Some(common::ort_lib()),
        training: settings(),
        ..ServerConfig::default()
    };
    let json = serde_json::to_string(&settings()).unwrap();
    let version = || repository::current_targets(&repo).unwrap().version;
    assert_eq!(version(), 1);

    // Control: with its lease intact the same job publishes.
    store
        .enqueue_training_with("colours", Trigger::Operator, 60, Some(&json))
        .unwrap()
        .unwrap();
    let (_, outcome) = background::work_once(store.as_ref(), &repo, &cfg, "process-a")
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, JobOutcome::Done(Some(_))), "{outcome:?}");
    assert_eq!(version(), 2, "the control run published");

    // Process B takes the job over while A trains (A's lease looks expired to B's clock).
    let job = store
        .enqueue_training_with("colours", Trigger::Operator, 60, Some(&json))
        .unwrap()
        .unwrap();
    let (_, outcome) = background::work_one(
        store.as_ref(),
        "process-a",
        Duration::from_secs(30),
        |j, still_ours| {
            let now = outpost::server::unix_now();
            let taken = store
                .claim_training("process-b", now + 100, now + 200)
                .unwrap()
                .expect("B takes the job over");
            assert_eq!(taken.job_id, j.job_id);
            background::train_job(store.as_ref(), &repo, &cfg, j, still_ours)
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(outcome, JobOutcome::LostLease);
    assert_eq!(
        version(),
        2,
        "nothing published by the process that lost its job"
    );
    let run = &store.runs(Some("colours")).unwrap()[0];
    assert_eq!(run.status.as_str(), "failed", "{run:?}");
    assert!(run.reason.contains("taken over"), "{}", run.reason);
    let j = store.training_job(job).unwrap().unwrap();
    assert_eq!(
        (j.state.as_str(), j.owner.as_deref()),
        ("running", Some("process-b")),
        "the job is B's now, not closed by A"
    );
}

#[test]
fn train_command_queues_one_job_that_one_process_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    drop(prepared(&data, &tmp.path().join("offline")));
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "ort_lib = {:?}\n[training]\nauto_train_after = 0\ndrift_train_after = 0\nepochs = 20\n",
            common::ort_lib()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let _serving = ServerProcess::start_with(&data, common::free_port(), &["--config", cfg]);
    let (code, out, err) = server_cmd(
        &data,
        &[
            "--config",
            cfg,
            "train",
            "colours",
            "--tolerance",
            "1",
            "--channel",
            "stable",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("training job #1 queued"), "{out}");
    assert!(out.contains("job #1 done"), "{out}");
    assert!(out.contains("published: published to stable"), "{out}");
    let db = rusqlite::Connection::open(data.join("server.db")).unwrap();
    let (jobs, trigger, settings): (i64, String, String) = db
        .query_row(
            "SELECT COUNT(*), MAX(trigger), MAX(settings) FROM training_jobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((jobs, trigger.as_str()), (1, "operator"));
    assert!(settings.contains("\"tolerance\":1.0"), "{settings}");
    let runs: i64 = db
        .query_row("SELECT COUNT(*) FROM training_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 1, "trained once");
    let (_, jobs_out, _) = server_cmd(&data, &["--config", cfg, "jobs"]);
    assert!(jobs_out.contains("done"), "{jobs_out}");
}

#[test]
fn a_candidate_held_on_one_process_is_published_from_another() {
    common::init_ort();
    let tmp = tempfile::tempdir().unwrap();
    let data_a = tmp.path().join("server-a");
    let (store, repo_a) = prepared(&data_a, &tmp.path().join("offline"));
    let held = TrainingSettings {
        publish: false,
        ..settings()
    };
    let cfg = ServerConfig {
        data_dir: data_a.clone(),
        ort_lib: Some(common::ort_lib()),
        training: held.clone(),
        ..ServerConfig::default()
    };
    let json = serde_json::to_string(&held).unwrap();
    store
        .enqueue_training_with("colours", Trigger::Operator, 60, Some(&json))
        .unwrap()
        .unwrap();
    background::work_once(store.as_ref(), &repo_a, &cfg, "process-a")
        .unwrap()
        .unwrap();
    let run = store.runs(Some("colours")).unwrap()[0].clone();
    assert_eq!(run.status.as_str(), "held", "{run:?}");
    let version = run.candidate_version.clone().unwrap();
    // Process B: same store and blob store, its own data folder (the online keys are
    // shared as operators share them); A's candidate folder is not there.
    std::fs::remove_dir_all(data_a.join("candidates")).unwrap();
    let data_b = tmp.path().join("server-b");
    std::fs::create_dir_all(data_b.join("keys/online")).unwrap();
    for e in std::fs::read_dir(data_a.join("keys/online")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), data_b.join("keys/online").join(e.file_name())).unwrap();
    }
    let blobs = outpost::server::repository::blob::BlobStore::local(&data_a.join("repo")).unwrap();
    let repo_b = Repository::new(blobs, &data_b).with_lock(store.clone());
    let p = outpost::server::ops::publish(
        store.as_ref(),
        &repo_b,
        &version,
        Some("colours"),
        "stable",
        &[],
        100,
        "operator:test",
    )
    .unwrap();
    assert_eq!(p.targets_version, 2);
    assert!(data_b
        .join("candidates/colours")
        .join(&version)
        .join("manifest.json")
        .is_file());
    let t = repository::current_targets(&repo_a).unwrap();
    assert!(
        t.releases
            .iter()
            .any(|r| r.model == "colours" && r.version == version),
        "{t:?}"
    );
}

#[test]
fn an_automatic_run_whose_decisions_all_answer_a_task_has_nothing_to_do_and_does_not_fail() {
    common::init_ort();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let (store, repo) = prepared(&data, &tmp.path().join("offline"));
    store
        .put_task(&outpost::server::store::TaskDefinition {
            name: "colour-task".into(),
            backbone: "colours".into(),
            labels: common::IMAGE_LABELS.iter().map(|s| s.to_string()).collect(),
            multi_label: false,
            channel: "canary".into(),
            defined_by: "op".into(),
            defined_at: "2026-12-04T00:00:00Z".into(),
        })
        .unwrap();
    let cfg = ServerConfig {
        data_dir: data.clone(),
        ort_lib: Some(common::ort_lib()),
        training: settings(),
        ..ServerConfig::default()
    };
    let seen = outpost::server::training::feedback_seen(store.as_ref(), "colours").unwrap();
    store
        .enqueue_training_with("colours", Trigger::Auto, seen, None)
        .unwrap()
        .unwrap();
    let (_, outcome) = background::work_once(store.as_ref(), &repo, &cfg, "process-a")
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, JobOutcome::Done(Some(_))), "{outcome:?}");
    let run = &store.runs(Some("colours")).unwrap()[0];
    assert_eq!(run.status.as_str(), "held", "{run:?}");
    assert!(
        run.reason.contains("nothing to retrain") && run.reason.contains("colour-task"),
        "{}",
        run.reason
    );
    assert_eq!(repository::current_targets(&repo).unwrap().version, 1);
    let due = background::due_models(store.as_ref(), 1, 0);
    assert!(
        !due.contains(&"colours".to_string()),
        "not queued again for the same feedback: {due:?}"
    );
}
