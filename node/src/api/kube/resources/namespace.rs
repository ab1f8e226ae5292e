//! `v1 Namespace`: skiff has one, `default`, read-only.

use serde_json::{Value, json};

use super::{Column, READ, Resource, Served};
use super::super::table::{AGE, NAME, age};
use super::Kind;

pub(crate) struct Namespace;

const RESOURCE: Resource = Resource {
    kind: Kind::Namespace,
    plural: "namespaces",
    singular: "namespace",
    kind_name: "Namespace",
    group: "",
    api_version: "v1",
    namespaced: false,
    verbs: READ,
    short_names: &["ns"],
    categories: &[],
};

impl Served for Namespace {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    fn columns(&self) -> &'static [Column] {
        &[NAME, ("Status", "string", 0, "Active."), AGE]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        vec![
            json!(o["metadata"]["name"]),
            json!("Active"),
            json!(age(&o["metadata"]["creationTimestamp"])),
        ]
    }
}
