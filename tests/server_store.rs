//! The server store's contract, run unchanged against both backends: every test function
//! here takes a `&dyn ServerStore` and the `both!` macro runs it once on a fresh SQLite file
//! and once on a fresh PostgreSQL schema (skipped with a message when PostgreSQL is not
//! reachable; `OUTPOST_REQUIRE_POSTGRES=1` turns the skip into a failure).

mod common;

use outpost::drift::{DriftState, DriftWindow, LanguageDrift};
use outpost::protocol::{DeviceModel, DeviceModelsReport, FeedbackRecord, ModelFailure};
use outpost::server::store::{
    self, PostgresServerStore, RunEnd, RunStatus, ServerStore, ServerStoreError, Split,
    SqliteServerStore, StoreStats, Trigger, Via,
};
use outpost::server::training::job::{work_one, JobOutcome};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A fresh SQLite store (and the folder that holds it).
fn sqlite() -> (Arc<dyn ServerStore>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteServerStore::open(&tmp.path().join("server.db")).unwrap();
    (Arc::new(s), tmp)
}

/// A fresh PostgreSQL store in its own schema, or `None` (skip).
fn postgres() -> Option<(Arc<dyn ServerStore>, common::PgSchema)> {
    let schema = common::pg_schema()?;
    let s = store::open(Some(&schema.url), std::path::Path::new("/nonexistent")).unwrap();
    Some((s, schema))
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[test] fn $name() { let (s, _tmp) = super::sqlite(); super::$name(s); } )*
        }
        mod on_postgres {
            $( #[test] fn $name() {
                let Some((s, _schema)) = super::postgres() else { return };
                super::$name(s);
            } )*
        }
    };
}

both!(
    devices_enroll_once_and_revoke,
    nonces_are_single_use_until_they_expire,
    ingest_stores_each_record_once,
    concurrent_overlapping_ingest_stores_each_record_once,
    training_sees_the_latest_decision_and_splits_never_change,
    a_device_supersedes_only_its_own_decisions,
    training_runs_are_recorded,
    drift_windows_are_stored_once_and_summarised,
    device_models_keep_the_latest_report_and_failures,
    audit_log_is_newest_first,
    training_jobs_are_queued_once_and_claimed_by_one,
    an_expired_lease_is_taken_over_and_given_up_after_max_attempts,
    work_one_runs_a_job_once_among_concurrent_workers,
    a_renewed_lease_keeps_the_job_and_a_dead_claim_is_rerun,
    stats_count_the_whole_deployment,
    dashboard_accounts_sessions_and_feedback_views,
    leases_are_exclusive_until_released_or_expired,
    operator_jobs_carry_their_settings,
    tasks_are_defined_listed_and_redefined,
);

fn tasks_are_defined_listed_and_redefined(s: Arc<dyn ServerStore>) {
    use outpost::server::store::TaskDefinition;
    assert!(s.tasks().unwrap().is_empty());
    let mut t = TaskDefinition {
        name: "damage".into(),
        backbone: "landcover".into(),
        labels: vec!["damage".into(), "no_damage".into()],
        multi_label: false,
        channel: "canary".into(),
        defined_by: "operator".into(),
        defined_at: "2026-12-04T00:00:00Z".into(),
    };
    s.put_task(&t).unwrap();
    assert_eq!(s.task("damage").unwrap().as_ref(), Some(&t));
    assert_eq!(s.task("landcover").unwrap(), None);
    // Defining it again replaces it: one row, the new labels.
    t.labels.push("destroyed".into());
    t.multi_label = true;
    s.put_task(&t).unwrap();
    assert_eq!(s.tasks().unwrap(), vec![t]);
}

const FAR: &str = "2999-01-01T00:00:00Z";

fn record(id: &str, item: &str, label: &str, created: &str) -> FeedbackRecord {
    FeedbackRecord {
        feedback_id: id.to_string(),
        item_id: item.to_string(),
        kind: outpost::protocol::ItemKind::Image,
        model_name: "landcover".into(),
        model_version: "1.0.0".into(),
        action: outpost::protocol::Action::Correct,
        labels: vec![label.to_string()],
        new_labels: vec![],
        annotator: "t".into(),
        created_at: created.to_string(),
        supersedes: None,
        embedding_f16: outpost::protocol::b64(&[1u8, 2, 3, 4]),
        content: None,
        content_type: None,
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn device(s: &dyn ServerStore, name: &str) -> String {
    s.add_device(name, "north", &format!("code-{name}"), FAR)
        .unwrap()
        .device_id
}

fn devices_enroll_once_and_revoke(s: Arc<dyn ServerStore>) {
    let d = s.add_device("b-laptop", "north", "hash-b", FAR).unwrap();
    assert_eq!(d.name, "b-laptop");
    assert_eq!(d.group, "north");
    assert!(d.enrolled_at.is_none() && d.public_key.is_none());
    s.add_device("a-laptop", "south", "hash-a", "2000-01-01T00:00:00Z")
        .unwrap();
    assert!(matches!(
        s.add_device("b-laptop", "x", "other", FAR),
        Err(ServerStoreError::NameTaken(_))
    ));
    assert!(matches!(
        s.enroll("wrong", &[7; 32]),
        Err(ServerStoreError::BadCode)
    ));
    // An expired code does not enroll.
    assert!(matches!(
        s.enroll("hash-a", &[7; 32]),
        Err(ServerStoreError::BadCode)
    ));
    let e = s.enroll("hash-b", &[9; 32]).unwrap();
    assert_eq!(e.device_id, d.device_id);
    assert_eq!(e.public_key.as_deref(), Some(&[9u8; 32][..]));
    assert!(e.enrolled_at.is_some());
    // The code is used up.
    assert!(matches!(
        s.enroll("hash-b", &[8; 32]),
        Err(ServerStoreError::BadCode)
    ));
    let names: Vec<String> = s.devices().unwrap().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["a-laptop", "b-laptop"]);
    s.touch(&d.device_id).unwrap();
    assert!(s.device(&d.device_id).unwrap().unwrap().last_seen.is_some());
    let r = s.revoke("b-laptop").unwrap();
    assert!(r.revoked_at.is_some());
    assert!(matches!(
        s.revoke("nobody"),
        Err(ServerStoreError::NoDevice(_))
    ));
    assert!(s.device("no-such-id").unwrap().is_none());
}

fn nonces_are_single_use_until_they_expire(s: Arc<dyn ServerStore>) {
    assert!(s.use_nonce("d1", "nonce-000000000001", 100, 50).unwrap());
    assert!(!s.use_nonce("d1", "nonce-000000000001", 100, 60).unwrap());
    // Another device may use the same nonce.
    assert!(s.use_nonce("d2", "nonce-000000000001", 100, 60).unwrap());
    // Once expired it is forgotten (the timestamp window refuses such a request anyway).
    assert!(s.use_nonce("d1", "nonce-000000000001", 300, 200).unwrap());
}

fn ingest_stores_each_record_once(s: Arc<dyn ServerStore>) {
    let d1 = device(s.as_ref(), "one");
    let d2 = device(s.as_ref(), "two");
    let recs: Vec<FeedbackRecord> = (0..20)
        .map(|i| {
            record(
                &uuid(),
                &format!("item-{i}"),
                "forest",
                "2026-11-28T00:00:00Z",
            )
        })
        .collect();
    let r = s.ingest(&d1, &recs, Via::Http).unwrap();
    assert_eq!(r.acked.len(), 20);
    assert_eq!(r.duplicates, 0);
    assert!(r.refused.is_empty());
    // A retry of half of it plus ten new: the half are acknowledged, not stored again.
    let mut again: Vec<FeedbackRecord> = recs[..10].to_vec();
    again.extend((0..10).map(|i| {
        record(
            &uuid(),
            &format!("new-{i}"),
            "river",
            "2026-11-28T00:00:01Z",
        )
    }));
    let r = s.ingest(&d1, &again, Via::Usb).unwrap();
    assert_eq!((r.acked.len(), r.duplicates), (20, 10));
    assert_eq!(s.feedback_count().unwrap(), 30);
    // Another device cannot claim those ids.
    let r = s.ingest(&d2, &recs[..3], Via::Http).unwrap();
    assert_eq!(r.acked.len(), 0);
    assert_eq!(r.refused.len(), 3);
    // Bad records are refused one by one, the rest stored.
    let mut bad = record("not-a-uuid", "x", "forest", "2026-11-28T00:00:00Z");
    let mut nolabel = record(&uuid(), "y", "forest", "2026-11-28T00:00:00Z");
    nolabel.labels.clear();
    let mut bademb = record(&uuid(), "z", "forest", "2026-11-28T00:00:00Z");
    bademb.embedding_f16 = "!!!".into();
    let good = record(&uuid(), "w", "forest", "2026-11-28T00:00:00Z");
    bad.kind = outpost::protocol::ItemKind::Image;
    let r = s
        .ingest(&d2, &[bad, nolabel, bademb, good.clone()], Via::Http)
        .unwrap();
    assert_eq!(r.acked, vec![good.feedback_id]);
    assert_eq!(r.refused.len(), 3);
    assert_eq!(s.feedback_count().unwrap(), 31);
    assert_eq!(s.model_feedback_count("landcover").unwrap(), 31);
    assert_eq!(s.feedback_models().unwrap(), vec!["landcover".to_string()]);
    let devs = s.devices().unwrap();
    let counts: Vec<i64> = devs.iter().map(|d| d.feedback).collect();
    assert_eq!(counts, [30, 1], "one, two");
}

/// Eight threads (each its own connection on PostgreSQL) send overlapping batches at once:
/// every id is stored exactly once and every send is acknowledged in full.
fn concurrent_overlapping_ingest_stores_each_record_once(s: Arc<dyn ServerStore>) {
    let d = device(s.as_ref(), "busy");
    let recs: Vec<FeedbackRecord> = (0..400)
        .map(|i| {
            record(
                &uuid(),
                &format!("item-{i}"),
                "forest",
                "2026-11-28T00:00:00Z",
            )
        })
        .collect();
    let recs = Arc::new(recs);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (s, recs, d) = (s.clone(), recs.clone(), d.clone());
            std::thread::spawn(move || {
                let mut acked = 0;
                let mut dups = 0;
                // Each thread sends windows of 100 starting at a different offset, in a
                // different order: plenty of overlap between threads.
                for k in 0..4 {
                    let start = ((t + k) % 4) * 100;
                    let mut batch: Vec<FeedbackRecord> = recs[start..start + 100].to_vec();
                    if t % 2 == 1 {
                        batch.reverse();
                    }
                    let r = s.ingest(&d, &batch, Via::Http).unwrap();
                    assert!(r.refused.is_empty());
                    acked += r.acked.len();
                    dups += r.duplicates;
                }
                (acked, dups)
            })
        })
        .collect();
    let mut new = 0;
    for t in threads {
        let (acked, dups) = t.join().unwrap();
        assert_eq!(acked, 400);
        new += acked - dups;
    }
    assert_eq!(new, 400, "each record counted as new exactly once");
    assert_eq!(s.feedback_count().unwrap(), 400);
}

fn training_sees_the_latest_decision_and_splits_never_change(s: Arc<dyn ServerStore>) {
    let d = device(s.as_ref(), "trainer");
    let first = record(&uuid(), "a", "forest", "2026-11-28T00:00:00Z");
    let later = record(&uuid(), "a", "river", "2026-11-28T00:05:00Z");
    let b = record(&uuid(), "b", "forest", "2026-11-28T00:00:00Z");
    let mut fix_b = record(&uuid(), "b2", "sea", "2026-11-28T00:06:00Z");
    fix_b.supersedes = Some(b.feedback_id.clone());
    let c = record(&uuid(), "c", "forest", "2026-11-28T00:00:00Z");
    s.ingest(&d, &[first.clone(), b.clone(), c.clone()], Via::Http)
        .unwrap();
    s.ingest(&d, &[later.clone(), fix_b.clone()], Via::Http)
        .unwrap();
    let rows = s.training_feedback("landcover").unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.feedback_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            c.feedback_id.as_str(),
            later.feedback_id.as_str(),
            fix_b.feedback_id.as_str()
        ],
        "arrival order, without the older decision on `a` and the superseded `b`"
    );
    assert_eq!(rows[1].labels, ["river"]);
    assert_eq!(rows[0].embedding_f16, [1, 2, 3, 4]);
    assert!(rows.iter().all(|r| r.split.is_none() && r.device_id == d));
    s.save_splits(&[
        (c.feedback_id.clone(), Split::Holdout),
        (later.feedback_id.clone(), Split::Train),
    ])
    .unwrap();
    // A second assignment does not change the first.
    s.save_splits(&[(c.feedback_id.clone(), Split::Train)])
        .unwrap();
    let rows = s.training_feedback("landcover").unwrap();
    let splits: Vec<Option<Split>> = rows.iter().map(|r| r.split).collect();
    assert_eq!(splits, [Some(Split::Holdout), Some(Split::Train), None]);
    assert!(s.training_feedback("other").unwrap().is_empty());
}

/// Supersession is per device: at ingest (the target is stored, and another device's) and
/// in the training query (the target arrived after the record naming it).
fn a_device_supersedes_only_its_own_decisions(s: Arc<dyn ServerStore>) {
    let one = device(s.as_ref(), "laptop-1");
    let two = device(s.as_ref(), "laptop-2");
    let a = record(&uuid(), "a", "forest", "2026-11-28T00:00:00Z");
    s.ingest(&one, std::slice::from_ref(&a), Via::Http).unwrap();
    let mut b = record(&uuid(), "b", "sea", "2026-11-28T00:01:00Z");
    b.supersedes = Some(a.feedback_id.clone());
    let r = s.ingest(&two, std::slice::from_ref(&b), Via::Http).unwrap();
    assert_eq!(r.acked, [b.feedback_id.clone()], "kept and acknowledged");
    // laptop-2 names an id laptop-1 has not sent yet; then laptop-1 sends it.
    let future = uuid();
    let mut c = record(&uuid(), "c", "sea", "2026-11-28T00:02:00Z");
    c.supersedes = Some(future.clone());
    s.ingest(&two, std::slice::from_ref(&c), Via::Http).unwrap();
    let d = record(&future, "d", "forest", "2026-11-28T00:03:00Z");
    s.ingest(&one, std::slice::from_ref(&d), Via::Http).unwrap();
    let ids: Vec<String> = s
        .training_feedback("landcover")
        .unwrap()
        .into_iter()
        .map(|r| r.feedback_id)
        .collect();
    for x in [&a, &b, &c, &d] {
        assert!(
            ids.contains(&x.feedback_id),
            "{} missing from {ids:?}",
            x.feedback_id
        );
    }
    // A device's own supersession still replaces.
    let mut e = record(&uuid(), "a", "river", "2026-11-28T00:04:00Z");
    e.supersedes = Some(d.feedback_id.clone());
    s.ingest(&one, std::slice::from_ref(&e), Via::Http).unwrap();
    let ids: Vec<String> = s
        .training_feedback("landcover")
        .unwrap()
        .into_iter()
        .map(|r| r.feedback_id)
        .collect();
    assert!(
        !ids.contains(&d.feedback_id) && ids.contains(&e.feedback_id),
        "{ids:?}"
    );
}

fn training_runs_are_recorded(s: Arc<dyn ServerStore>) {
    let a = s
        .start_run("landcover", "1.0.0", Trigger::Operator, 10)
        .unwrap();
    let b = s.start_run("reports", "2.0.0", Trigger::Auto, 5).unwrap();
    assert!(b > a);
    s.finish_run(
        a,
        &RunEnd {
            status: RunStatus::Held,
            reason: "regressed".into(),
            candidate_version: Some("1.1.0".into()),
            report: Some("{}".into()),
            bundle_dir: Some("/c/1.1.0".into()),
        },
    )
    .unwrap();
    s.mark_published("landcover", "1.1.0", "by operator")
        .unwrap();
    let all = s.runs(None).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].run_id, b, "newest first");
    assert_eq!(all[0].status, RunStatus::Running);
    assert_eq!(all[0].trigger, "auto");
    let lc = s.runs(Some("landcover")).unwrap();
    assert_eq!(lc.len(), 1);
    assert_eq!(lc[0].status, RunStatus::Published);
    assert_eq!(lc[0].reason, "regressed | by operator");
    assert_eq!(lc[0].candidate_version.as_deref(), Some("1.1.0"));
    assert_eq!(lc[0].feedback_seen, 10);
    assert!(lc[0].finished_at.is_some());
}

fn window(state: DriftState, start: &str) -> DriftWindow {
    DriftWindow {
        model_name: "landcover".into(),
        model_version: "1.0.0".into(),
        items: 50,
        novel: 10,
        score: 0.25,
        state,
        top_score_psi: Some(0.1),
        label_psi: None,
        novel_labels: vec![("flooded".into(), 3)],
        novel_folders: vec![],
        started_at: start.into(),
        ended_at: start.into(),
        languages: vec![LanguageDrift {
            language: "hat".into(),
            items: 30,
            novel: 8,
        }],
    }
}

fn drift_windows_are_stored_once_and_summarised(s: Arc<dyn ServerStore>) {
    let d = device(s.as_ref(), "drifter");
    let ws = vec![
        (1, window(DriftState::Ok, "t1")),
        (2, window(DriftState::Drifted, "t2")),
        (3, window(DriftState::Drifted, "t3")),
    ];
    assert_eq!(s.store_drift(&d, &ws).unwrap(), 3);
    assert_eq!(s.store_drift(&d, &ws).unwrap(), 0, "re-sent windows");
    let latest = s.drift_latest().unwrap();
    assert_eq!(latest.len(), 1);
    let l = &latest[0];
    assert_eq!((l.device.as_str(), l.group.as_str()), ("drifter", "north"));
    assert_eq!(l.windows, 3);
    assert_eq!(l.latest.state, DriftState::Drifted);
    assert_eq!(l.since, "t2", "drifted since the first of the run");
    assert_eq!(l.latest.novel_labels, vec![("flooded".to_string(), 3)]);
    assert_eq!(l.latest.top_score_psi, Some(0.1));
    assert_eq!(l.latest.items, 50);
    assert_eq!(
        l.latest.languages, ws[2].1.languages,
        "the language breakdown"
    );
    let mine = s.device_drift(&d, 10).unwrap();
    assert_eq!(mine.len(), 3);
    assert_eq!(mine[0].languages, ws[2].1.languages);
}

fn device_models_keep_the_latest_report_and_failures(s: Arc<dyn ServerStore>) {
    let d = device(s.as_ref(), "reporter");
    let report = |v: &str, failures: Vec<ModelFailure>| DeviceModelsReport {
        models: vec![DeviceModel {
            model: "landcover".into(),
            active_version: Some(v.into()),
            pinned: None,
            installed: vec![v.into()],
        }],
        failures,
        pending_feedback: Some(7),
        challenge: None,
    };
    s.record_device_models(&d, &report("1.0.0", vec![]))
        .unwrap();
    s.record_device_models(
        &d,
        &report(
            "1.1.0",
            vec![ModelFailure {
                model: "landcover".into(),
                version: Some("1.2.0".into()),
                kind: "rolled_back".into(),
                reason: "golden check failed".into(),
                at: "2026-11-28T00:00:00Z".into(),
            }],
        ),
    )
    .unwrap();
    let rows = s.device_models().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].active_version.as_deref(), Some("1.1.0"));
    assert_eq!(rows[0].failures.len(), 1);
    assert_eq!(rows[0].failures[0].0.as_deref(), Some("1.2.0"));
    assert_eq!(rows[0].failures[0].1, "rolled_back");
    // The dashboard's view of the same reports.
    let dev = s.device(&d).unwrap().unwrap();
    assert_eq!(dev.pending_feedback, Some(7), "the outbox it last reported");
    let failures = s.device_failures(&d).unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        (failures[0].kind.as_str(), failures[0].reason.as_str()),
        ("rolled_back", "golden check failed")
    );
}

fn dashboard_accounts_sessions_and_feedback_views(s: Arc<dyn ServerStore>) {
    // Accounts: created once, a new password ends the old sessions, removal ends the rest.
    assert!(s.set_admin("alice", "$argon2id$v=19$first").unwrap());
    s.create_session("tok-1", "alice", "csrf-1", 2_000).unwrap();
    let live = s.session("tok-1", 1_000).unwrap().expect("live session");
    assert_eq!(
        (live.admin.as_str(), live.csrf.as_str()),
        ("alice", "csrf-1")
    );
    assert!(s.session("tok-1", 3_000).unwrap().is_none(), "expired");
    s.create_session("tok-2", "alice", "csrf-2", 2_000).unwrap();
    assert!(!s.set_admin("alice", "$argon2id$v=19$second").unwrap());
    assert_eq!(
        s.admin_password_hash("alice").unwrap().as_deref(),
        Some("$argon2id$v=19$second")
    );
    assert!(
        s.session("tok-2", 1_000).unwrap().is_none(),
        "ended by the new password"
    );
    s.create_session("tok-3", "alice", "csrf-3", 2_000).unwrap();
    s.delete_session("tok-3").unwrap();
    assert!(s.session("tok-3", 1_000).unwrap().is_none(), "signed out");
    s.create_session("tok-4", "alice", "csrf-4", 2_000).unwrap();
    assert!(s.remove_admin("alice").unwrap());
    assert!(!s.remove_admin("alice").unwrap());
    assert!(s.session("tok-4", 1_000).unwrap().is_none());
    assert!(s.admin_password_hash("alice").unwrap().is_none());

    // Proposed dashboard actions: taken once, only by their session, only before expiry.
    s.put_confirmation("t-1", "sess-a", "{\"Train\":{\"model\":\"m\"}}", 2_000)
        .unwrap();
    assert!(s
        .take_confirmation("t-1", "sess-b", 1_000)
        .unwrap()
        .is_none());
    assert!(s
        .take_confirmation("t-1", "sess-a", 3_000)
        .unwrap()
        .is_none());
    assert_eq!(
        s.take_confirmation("t-1", "sess-a", 1_000)
            .unwrap()
            .as_deref(),
        Some("{\"Train\":{\"model\":\"m\"}}")
    );
    assert!(
        s.take_confirmation("t-1", "sess-a", 1_000)
            .unwrap()
            .is_none(),
        "used once"
    );

    // Feedback views: per day and label, labels new in the field, a device's rows, one item.
    let d = device(s.as_ref(), "viewer");
    let mut recs: Vec<FeedbackRecord> = (0..3)
        .map(|i| record(&uuid(), &format!("v{i}"), "forest", "2026-11-28T00:00:00Z"))
        .collect();
    recs[2].labels = vec!["flooded".into()];
    recs[2].new_labels = vec!["flooded".into()];
    recs[2].content = Some(outpost::protocol::b64(b"tile bytes"));
    recs[2].content_type = Some("image/jpeg".into());
    s.ingest(&d, &recs, Via::Http).unwrap();
    let days = s.feedback_per_day().unwrap();
    let count = |label: &str| {
        days.iter()
            .filter(|x| x.label == label && x.model == "landcover")
            .map(|x| x.count)
            .sum::<i64>()
    };
    assert_eq!((count("forest"), count("flooded")), (2, 1));
    let new = s.field_labels().unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(
        (new[0].label.as_str(), new[0].count, new[0].devices),
        ("flooded", 1, 1)
    );
    assert_eq!(s.feedback_received("landcover").unwrap().len(), 3);
    let rows = s.device_feedback(&d, 2).unwrap();
    assert_eq!(rows.len(), 2);
    let item = s
        .feedback_item(&recs[2].feedback_id)
        .unwrap()
        .expect("stored");
    assert!(item.summary.has_content);
    assert_eq!(item.content.as_deref(), Some(&b"tile bytes"[..]));
    assert_eq!(item.device_id, d);
    assert!(s.feedback_item("no-such-id").unwrap().is_none());
}

fn audit_log_is_newest_first(s: Arc<dyn ServerStore>) {
    for i in 0..5 {
        s.audit("operator", "devices add", &format!("n{i}"))
            .unwrap();
    }
    let log = s.audit_log(3).unwrap();
    let details: Vec<&str> = log.iter().map(|a| a.detail.as_str()).collect();
    assert_eq!(details, ["n4", "n3", "n2"]);
    assert!(log[0].audit_id > log[1].audit_id);
}

/// Migrations: two stores opening one fresh schema at the same moment both succeed (the
/// advisory lock serialises them), the second applies nothing, and the schema records each
/// migration once.
#[test]
fn postgres_migrations_are_safe_when_processes_start_together() {
    let Some(schema) = common::pg_schema() else {
        return;
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = schema.url.clone();
            std::thread::spawn(move || PostgresServerStore::open(&url).map(|_| ()))
        })
        .collect();
    for o in opens {
        o.join().unwrap().expect("every opener succeeds");
    }
    let mut c = schema.client();
    let versions: Vec<i32> = c
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i32> = store::postgres::POSTGRES_MIGRATIONS
        .iter()
        .map(|m| m.0 as i32)
        .collect();
    assert_eq!(versions, expected);
    assert_eq!(
        store::postgres::POSTGRES_MIGRATIONS.len(),
        store::SERVER_MIGRATIONS.len(),
        "every SQLite migration has its PostgreSQL twin"
    );
    // A database from a newer program is refused, not silently used.
    c.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 'now')",
        &[],
    )
    .unwrap();
    assert!(matches!(
        PostgresServerStore::open(&schema.url),
        Err(ServerStoreError::Store(
            outpost::store::StoreError::TooNew { found: 999, .. }
        ))
    ));
}

#[test]
fn a_bad_database_url_says_what_is_understood() {
    let Err(e) = store::open(
        Some("mysql://root:secret@db/outpost"),
        std::path::Path::new("/tmp"),
    ) else {
        panic!("mysql is not supported");
    };
    let msg = e.to_string();
    assert!(msg.contains("postgres://"), "{msg}");
    assert!(!msg.contains("secret"), "the password is not shown: {msg}");
}

fn training_jobs_are_queued_once_and_claimed_by_one(s: Arc<dyn ServerStore>) {
    let a = s.enqueue_training("landcover", Trigger::Auto, 200).unwrap();
    assert!(a.is_some());
    assert_eq!(
        s.enqueue_training("landcover", Trigger::Auto, 250).unwrap(),
        None,
        "one open job per model"
    );
    assert!(s
        .enqueue_training("reports", Trigger::Operator, 10)
        .unwrap()
        .is_some());
    // Eight claimers at once (each its own connection on PostgreSQL): two jobs, two winners.
    let claims: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || s.claim_training(&format!("w{i}"), 1000, 1060).unwrap())
        })
        .collect();
    let mut won: Vec<_> = claims
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    won.sort_by_key(|j| j.job_id);
    assert_eq!(won.len(), 2);
    assert_ne!(won[0].owner, won[1].owner);
    assert_eq!(won[0].model_name, "landcover");
    assert_eq!(won[0].feedback_seen, 200);
    assert_eq!((won[0].state.as_str(), won[0].attempts), ("running", 1));
    assert_eq!(won[1].trigger, Trigger::Operator);
    assert!(s.claim_training("late", 1001, 1061).unwrap().is_none());
    // Only the owner renews or finishes.
    let (j, owner) = (won[0].job_id, won[0].owner.clone().unwrap());
    assert!(!s.renew_training(j, "someone-else", 2000).unwrap());
    assert!(s.renew_training(j, &owner, 1100).unwrap());
    assert!(!s.finish_training(j, "someone-else", None, None).unwrap());
    assert!(s.finish_training(j, &owner, Some(7), None).unwrap());
    assert!(
        !s.finish_training(j, &owner, Some(7), None).unwrap(),
        "once"
    );
    // Finished: the model may be queued again.
    assert!(s
        .enqueue_training("landcover", Trigger::Auto, 400)
        .unwrap()
        .is_some());
    let jobs = s.training_jobs(10).unwrap();
    assert_eq!(jobs.len(), 3);
    let done = jobs.iter().find(|x| x.job_id == j).unwrap();
    assert_eq!((done.state.as_str(), done.run_id), ("done", Some(7)));
    assert!(done.finished_at.is_some());
}

fn an_expired_lease_is_taken_over_and_given_up_after_max_attempts(s: Arc<dyn ServerStore>) {
    let id = s
        .enqueue_training("landcover", Trigger::Auto, 1)
        .unwrap()
        .unwrap();
    let first = s.claim_training("p1", 1000, 1060).unwrap().unwrap();
    assert_eq!(first.job_id, id);
    // p1 still holds it at 1059...
    assert!(s.claim_training("p2", 1059, 1119).unwrap().is_none());
    // ...and it is p2's once the lease ran out (p1 died and stopped renewing).
    let second = s.claim_training("p2", 1061, 1121).unwrap().unwrap();
    assert_eq!((second.job_id, second.attempts), (id, 2));
    assert_eq!(second.owner.as_deref(), Some("p2"));
    // p1, back from the dead, can neither renew nor finish it.
    assert!(!s.renew_training(id, "p1", 5000).unwrap());
    assert!(!s.finish_training(id, "p1", None, None).unwrap());
    // p2 dies too, then p3: after MAX_JOB_ATTEMPTS claims the job is given up.
    assert_eq!(
        s.claim_training("p3", 2000, 2060)
            .unwrap()
            .unwrap()
            .attempts,
        store::MAX_JOB_ATTEMPTS
    );
    assert!(s.claim_training("p4", 3000, 3060).unwrap().is_none());
    let job = &s.training_jobs(1).unwrap()[0];
    assert_eq!(job.state, "failed");
    assert!(
        job.error.as_deref().unwrap_or("").contains("died"),
        "{job:?}"
    );
}

fn work_one_runs_a_job_once_among_concurrent_workers(s: Arc<dyn ServerStore>) {
    s.enqueue_training("landcover", Trigger::Auto, 5).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (s, runs) = (s.clone(), runs.clone());
            std::thread::spawn(move || {
                work_one(
                    s.as_ref(),
                    &format!("w{i}"),
                    Duration::from_secs(30),
                    |job, _| {
                        assert_eq!(job.model_name, "landcover");
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(300));
                        Ok(Some(99))
                    },
                )
                .unwrap()
            })
        })
        .collect();
    let outcomes: Vec<_> = workers
        .into_iter()
        .filter_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "trained once");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].1, JobOutcome::Done(Some(99)));
    assert_eq!(s.training_jobs(1).unwrap()[0].state, "done");
    // A failing job is recorded as failed with the message.
    s.enqueue_training("landcover", Trigger::Auto, 6).unwrap();
    let (_, o) = work_one(s.as_ref(), "w", Duration::from_secs(30), |_, _| {
        Err("no release".into())
    })
    .unwrap()
    .unwrap();
    assert_eq!(o, JobOutcome::Failed("no release".into()));
    assert_eq!(
        s.training_jobs(1).unwrap()[0].error.as_deref(),
        Some("no release")
    );
    // A finished run that saw the job's feedback already makes it a no-op.
    let run = s
        .start_run("landcover", "1.0.0", Trigger::Auto, 10)
        .unwrap();
    s.finish_run(
        run,
        &RunEnd {
            status: RunStatus::Held,
            reason: String::new(),
            candidate_version: None,
            report: None,
            bundle_dir: None,
        },
    )
    .unwrap();
    s.enqueue_training("landcover", Trigger::Auto, 10).unwrap();
    let (_, o) = work_one(s.as_ref(), "w", Duration::from_secs(30), |_, _| {
        panic!("must not train")
    })
    .unwrap()
    .unwrap();
    assert_eq!(o, JobOutcome::Skipped);
}

/// A worker training for longer than its lease keeps the job by renewing it; a claim
/// whose process died (it never renews) is taken over and the job runs again.
fn a_renewed_lease_keeps_the_job_and_a_dead_claim_is_rerun(s: Arc<dyn ServerStore>) {
    s.enqueue_training("landcover", Trigger::Auto, 5).unwrap();
    let stolen = Arc::new(AtomicUsize::new(0));
    let (s2, stolen2) = (s.clone(), stolen.clone());
    let result = work_one(s.as_ref(), "slow", Duration::from_secs(2), move |_, _| {
        // Meanwhile another process keeps trying to claim: the renewed lease stops it.
        for _ in 0..16 {
            let now = outpost::server::unix_now();
            if s2.claim_training("thief", now, now + 2).unwrap().is_some() {
                stolen2.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(None)
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        stolen.load(Ordering::SeqCst),
        0,
        "4 s of training, 2 s lease"
    );
    assert_eq!(result.1, JobOutcome::Done(None));

    // A process claims a job and dies at once (never renews, never finishes).
    s.enqueue_training("reports", Trigger::Auto, 5).unwrap();
    let now = outpost::server::unix_now();
    let dead = s.claim_training("dead", now, now + 2).unwrap().unwrap();
    let ran = AtomicUsize::new(0);
    assert!(
        work_one(s.as_ref(), "alive", Duration::from_secs(30), |_, _| Ok(
            None
        ))
        .unwrap()
        .is_none(),
        "not before the lease ran out"
    );
    std::thread::sleep(Duration::from_millis(3100));
    let (job, o) = work_one(s.as_ref(), "alive", Duration::from_secs(30), |j, _| {
        ran.fetch_add(1, Ordering::SeqCst);
        assert_eq!(j.model_name, "reports");
        Ok(Some(1))
    })
    .unwrap()
    .expect("the dead process's job is taken over");
    assert_eq!((job.job_id, job.attempts), (dead.job_id, 2));
    assert_eq!(o, JobOutcome::Done(Some(1)));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

fn stats_count_the_whole_deployment(s: Arc<dyn ServerStore>) {
    s.ping().unwrap();
    assert_eq!(s.stats().unwrap(), StoreStats::default());
    let a = device(s.as_ref(), "a");
    let b = device(s.as_ref(), "b");
    s.add_device("c", "north", "hash-c", FAR).unwrap();
    s.enroll("code-a", &[1; 32]).unwrap();
    s.enroll("code-b", &[2; 32]).unwrap();
    s.enroll("hash-c", &[3; 32]).unwrap();
    s.revoke("c").unwrap();
    let recs: Vec<FeedbackRecord> = (0..3)
        .map(|i| record(&uuid(), &format!("i{i}"), "forest", "2026-11-28T00:00:00Z"))
        .collect();
    s.ingest(&a, &recs, Via::Http).unwrap();
    let report = |v: Option<&str>| DeviceModelsReport {
        models: vec![DeviceModel {
            model: "landcover".into(),
            active_version: v.map(str::to_string),
            pinned: None,
            installed: vec![],
        }],
        failures: vec![],
        pending_feedback: None,
        challenge: None,
    };
    s.record_device_models(&a, &report(Some("1.1.0"))).unwrap();
    s.record_device_models(&b, &report(None)).unwrap();
    // a: ok then drifted (latest drifted); b: drifted then ok (latest ok).
    s.store_drift(
        &a,
        &[
            (1, window(DriftState::Ok, "t1")),
            (2, window(DriftState::Drifted, "t2")),
        ],
    )
    .unwrap();
    s.store_drift(
        &b,
        &[
            (1, window(DriftState::Drifted, "t1")),
            (2, window(DriftState::Ok, "t2")),
        ],
    )
    .unwrap();
    let r = s.start_run("landcover", "1.0.0", Trigger::Auto, 3).unwrap();
    s.start_run("landcover", "1.0.0", Trigger::Auto, 3).unwrap();
    s.finish_run(
        r,
        &RunEnd {
            status: RunStatus::Published,
            reason: String::new(),
            candidate_version: Some("1.1.0".into()),
            report: None,
            bundle_dir: None,
        },
    )
    .unwrap();
    s.enqueue_training("landcover", Trigger::Auto, 3).unwrap();
    let st = s.stats().unwrap();
    let owned = |v: &[(&str, &str, i64)]| -> Vec<(String, String, i64)> {
        v.iter()
            .map(|(a, b, n)| (a.to_string(), b.to_string(), *n))
            .collect()
    };
    assert_eq!(
        st,
        StoreStats {
            feedback: 3,
            devices: 2,
            runs: owned(&[("landcover", "published", 1), ("landcover", "running", 1)]),
            jobs: vec![("queued".into(), 1)],
            versions: owned(&[("landcover", "1.1.0", 1), ("landcover", "none", 1)]),
            drift: owned(&[("landcover", "drifted", 1), ("landcover", "ok", 1)]),
        }
    );
}

/// The `repository` lease: one holder among concurrent takers; its holder may take it
/// again; it is free once given back or once it ran out.
fn leases_are_exclusive_and_expire_inner(s: &dyn ServerStore) {
    assert!(s.try_lease("repository", "a", 1000, 1100).unwrap());
    assert!(
        !s.try_lease("repository", "b", 1050, 1150).unwrap(),
        "held by a"
    );
    assert!(
        s.try_lease("repository", "a", 1050, 1150).unwrap(),
        "a renews"
    );
    assert!(
        s.try_lease("other", "b", 1050, 1150).unwrap(),
        "names are separate"
    );
    s.release_lease("repository", "b").unwrap();
    assert!(
        !s.try_lease("repository", "b", 1100, 1200).unwrap(),
        "b cannot free a's"
    );
    assert!(
        s.try_lease("repository", "b", 1151, 1250).unwrap(),
        "a's ran out"
    );
    s.release_lease("repository", "b").unwrap();
    assert!(
        s.try_lease("repository", "c", 1160, 1260).unwrap(),
        "given back"
    );
}

fn leases_are_exclusive_until_released_or_expired(s: Arc<dyn ServerStore>) {
    leases_are_exclusive_and_expire_inner(s.as_ref());
    // Eight takers at once: exactly one gets it.
    let winners = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for i in 0..8 {
            let (s, winners) = (s.clone(), &winners);
            scope.spawn(move || {
                if s.try_lease("race", &format!("p{i}"), 5000, 5100).unwrap() {
                    winners.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(winners.load(Ordering::SeqCst), 1);
}

fn operator_jobs_carry_their_settings(s: Arc<dyn ServerStore>) {
    let id = s
        .enqueue_training_with(
            "landcover",
            Trigger::Operator,
            7,
            Some("{\"tolerance\":0.5}"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        s.enqueue_training_with("landcover", Trigger::Operator, 7, None)
            .unwrap(),
        None,
        "one open job per model"
    );
    let j = s.training_job(id).unwrap().unwrap();
    assert_eq!(j.settings.as_deref(), Some("{\"tolerance\":0.5}"));
    assert_eq!(
        (j.trigger.as_str(), j.state.as_str()),
        ("operator", "queued")
    );
    assert!(s.training_job(id + 1000).unwrap().is_none());
    let now = outpost::server::unix_now();
    let claimed = s.claim_training("w", now, now + 60).unwrap().unwrap();
    assert_eq!(
        claimed.settings, j.settings,
        "the claimer gets the settings"
    );
}
