//! `v1 Event`: what happened to Deployments, read-only.

use serde_json::{Value, json};

use super::{Column, READ, Resource, Served};
use super::super::table::{age, text};
use super::Kind;

pub(crate) struct Event;

const RESOURCE: Resource = Resource {
    kind: Kind::Event,
    plural: "events",
    singular: "event",
    kind_name: "Event",
    group: "",
    api_version: "v1",
    namespaced: true,
    verbs: READ,
    short_names: &["ev"],
    categories: &[],
};

impl Served for Event {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &[
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]
    }

    fn columns(&self) -> &'static [Column] {
        &[
            ("Last Seen", "string", 0, "When it last happened."),
            ("Type", "string", 0, "Normal or Warning."),
            ("Reason", "string", 0, "Why."),
            ("Object", "string", 0, "What it is about."),
            ("Message", "string", 0, "What happened."),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        vec![
            json!(age(&o["lastTimestamp"])),
            json!(text(&o["type"])),
            json!(text(&o["reason"])),
            json!(format!(
                "{}/{}",
                o["involvedObject"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase(),
                o["involvedObject"]["name"].as_str().unwrap_or_default()
            )),
            json!(text(&o["message"])),
        ]
    }
}
