//! `v1 Node`: the cluster's members as gossip knows them; a patch cordons or uncordons
//! one (`spec.unschedulable`), nothing else about it is written through the API.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

use super::{Answer, Column, Resource, Served};
use super::super::feed::fresh_object;
use super::super::table::{AGE, NAME, age, text};
use super::super::within_limit;
use super::Kind;
use crate::Shared;
use crate::api::error::ApiError;
use crate::desired::Command;

pub(crate) struct Node;

const RESOURCE: Resource = Resource {
    kind: Kind::Node,
    plural: "nodes",
    singular: "node",
    kind_name: "Node",
    group: "",
    api_version: "v1",
    namespaced: false,
    verbs: &["get", "list", "patch", "watch"],
    short_names: &["no"],
    categories: &[],
};

impl Served for Node {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn columns(&self) -> &'static [Column] {
        &[
            NAME,
            (
                "Status",
                "string",
                0,
                "Ready, and whether it takes new pods.",
            ),
            ("Roles", "string", 0, "From node-role.kubernetes.io labels."),
            AGE,
            ("Version", "string", 0, "skiff's version."),
            ("Internal-IP", "string", 1, "Where it is reached."),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let ready = o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let mut status = if ready { "Ready" } else { "NotReady" }.to_string();
        if o["spec"]["unschedulable"] == true {
            status.push_str(",SchedulingDisabled");
        }
        let roles: Vec<&str> = o["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
            .collect();
        let ip = o["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .map_or_else(|| "<none>".into(), |a| text(&a["address"]));
        vec![
            json!(o["metadata"]["name"]),
            json!(status),
            json!(if roles.is_empty() {
                "<none>".to_string()
            } else {
                roles.join(",")
            }),
            json!(age(&o["metadata"]["creationTimestamp"])),
            json!(text(&o["status"]["nodeInfo"]["kubeletVersion"])),
            json!(ip),
        ]
    }

    fn patched<'a>(
        &'a self,
        shared: &'a Shared,
        name: &'a str,
        patched: &'a Value,
    ) -> Option<Answer<'a, Response>> {
        Some(Box::pin(cordon(shared, name, patched)))
    }
}

/// A node takes one change: `spec.unschedulable` (cordon, uncordon).
async fn cordon(shared: &Shared, name: &str, object: &Value) -> Result<Response, ApiError> {
    // Only one field is read, but a node is bounded as every object written is.
    within_limit(skiff_spec::patch::encoded_len(object))?;
    let unschedulable = match &object["spec"]["unschedulable"] {
        Value::Bool(b) => *b,
        Value::Null => false,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("spec.unschedulable must be true or false, not {other}"),
            ));
        }
    };
    shared
        .objects
        .submit(Command::Cordon {
            node: name.to_string(),
            unschedulable,
        })
        .await?;
    Ok(Json(fresh_object(shared, &RESOURCE, name).await?).into_response())
}
