//! Tasks (`outpost-server tasks define|list|proposed`, shared with the dashboard): an
//! operator defines a task (a new question trained as a model of its own on an existing
//! model's backbone), or accepts one the field proposed: labels reviewers introduced on a
//! model (`outpost feedback import --allow-new-labels`) that no task claims yet.

use super::OpsError;
use crate::server::repository::{current_release, Repository};
use crate::server::store::{ServerStore, TaskDefinition};
use crate::server::training::task;

/// What an operator asks for with `tasks define`.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// Task (and model) name.
    pub name: String,
    /// The published model whose backbone it reuses.
    pub backbone: String,
    /// Its labels.
    pub labels: Vec<String>,
    /// Several labels per item.
    pub multi_label: bool,
    /// Where a candidate that passes the new-task gate goes.
    pub channel: String,
}

/// `tasks define`: checks and stores a task definition (replacing one of that name), and
/// audits it. The backbone must be a published model, and the name may not be one.
pub fn define_task(
    store: &dyn ServerStore,
    repo: &Repository,
    req: &TaskRequest,
    actor: &str,
) -> Result<TaskDefinition, OpsError> {
    let t = TaskDefinition {
        name: req.name.clone(),
        backbone: req.backbone.clone(),
        labels: req.labels.clone(),
        multi_label: req.multi_label,
        channel: req.channel.clone(),
        defined_by: actor.into(),
        defined_at: crate::clock::now_rfc3339(),
    };
    task::validate(&t).map_err(OpsError::Invalid)?;
    if current_release(repo, &t.backbone)?.is_none() {
        return Err(OpsError::NotFound(format!(
            "no release of {:?} is published: a task reuses a published model's backbone (`outpost-server models list`)",
            t.backbone
        )));
    }
    let is_task = store.task(&t.name)?.is_some();
    if !is_task && current_release(repo, &t.name)?.is_some() {
        return Err(OpsError::Invalid(format!(
            "{:?} is a published model already; give the task another name",
            t.name
        )));
    }
    store.put_task(&t)?;
    store.audit(
        actor,
        "tasks define",
        &format!(
            "{} on {} ({}{}) -> {}",
            t.name,
            t.backbone,
            t.labels.join(", "),
            if t.multi_label { ", multi-label" } else { "" },
            t.channel
        ),
    )?;
    Ok(t)
}

/// A task the field proposes: labels introduced on a model that no task claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The model the labels were given on (the backbone to reuse).
    pub backbone: String,
    /// The labels, with the decisions giving each.
    pub labels: Vec<(String, i64)>,
    /// Devices that gave them.
    pub devices: i64,
}

/// `tasks proposed`: per model, the field's new labels not claimed by a task yet.
pub fn proposed(store: &dyn ServerStore) -> Result<Vec<Proposal>, OpsError> {
    let tasks = store.tasks()?;
    let mut out: Vec<Proposal> = Vec::new();
    for l in store.field_labels()? {
        let single = [l.label.clone()];
        if task::claimed(&tasks, &l.model, &single).is_some()
            || tasks.iter().any(|t| t.name == l.model)
        {
            continue;
        }
        match out.iter_mut().find(|p| p.backbone == l.model) {
            Some(p) => {
                p.labels.push((l.label, l.count));
                p.devices = p.devices.max(l.devices);
            }
            None => out.push(Proposal {
                backbone: l.model,
                labels: vec![(l.label, l.count)],
                devices: l.devices,
            }),
        }
    }
    Ok(out)
}
