//! `apps/v1 ReplicaSet`: a Deployment's revisions, read-only (each revision is shown as
//! one, `<deployment>-<hash>`; see `served.rs`).

use serde_json::{Value, json};

use super::super::defaults;
use super::{Column, READ, Resource, Served};
use super::super::table::{AGE, NAME, age, containers, int, selector_text};
use super::Kind;

pub(crate) struct ReplicaSet;

const RESOURCE: Resource = Resource {
    kind: Kind::ReplicaSet,
    plural: "replicasets",
    singular: "replicaset",
    kind_name: "ReplicaSet",
    group: "apps",
    api_version: "apps/v1",
    namespaced: true,
    verbs: READ,
    short_names: &["rs"],
    categories: &["all"],
};

impl Served for ReplicaSet {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn defaults(&self) -> Option<fn(&mut Value)> {
        Some(defaults)
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &["status.replicas"]
    }

    fn columns(&self) -> &'static [Column] {
        &[
            NAME,
            ("Desired", "integer", 0, "Pods wanted."),
            ("Current", "integer", 0, "Pods there."),
            ("Ready", "integer", 0, "Pods ready."),
            AGE,
            ("Containers", "string", 1, "Containers of the template."),
            ("Images", "string", 1, "Their images."),
            ("Selector", "string", 1, "The pods it owns."),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let (names, images) = containers(&o["spec"]["template"]);
        vec![
            json!(o["metadata"]["name"]),
            int(&o["spec"]["replicas"]),
            int(&o["status"]["replicas"]),
            int(&o["status"]["readyReplicas"]),
            json!(age(&o["metadata"]["creationTimestamp"])),
            json!(names),
            json!(images),
            json!(selector_text(&o["spec"]["selector"]["matchLabels"])),
        ]
    }
}

/// A ReplicaSet's template, defaulted as its Deployment's is (kubectl finds a
/// Deployment's ReplicaSet by comparing the two).
pub(crate) fn defaults(rs: &mut Value) {
    if let Some(spec) = defaults::object(rs, "spec") {
        defaults::default(spec, "replicas", json!(1));
        if let Some(template) = defaults::object(spec, "template") {
            defaults::pod_template(template);
        }
    }
}
