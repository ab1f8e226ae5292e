//! `apps/v1 Deployment`: written through the API (create, replace, patch, delete, and
//! the `scale` subresource kubectl scales with), read from the desired state.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Map, Value, json};
use skiff_spec::protobuf;

use super::{Answer, Column, Resource, Served, SubRequest, WRITE};
use super::super::feed::fresh_object;
use super::super::served::{deployment_value, get_object, value};
use super::super::table::{AGE, NAME, age, containers, int, selector_text};
use super::super::{Stored, apply_patch, body, defaults, patch_kind, within_limit};
use super::Kind;
use crate::Shared;
use crate::api::error::ApiError;
use crate::desired::Command;

pub(crate) struct Deployment;

const RESOURCE: Resource = Resource {
    kind: Kind::Deployment,
    plural: "deployments",
    singular: "deployment",
    kind_name: "Deployment",
    group: "apps",
    api_version: "apps/v1",
    namespaced: true,
    verbs: WRITE,
    short_names: &["deploy"],
    categories: &["all"],
};

impl Served for Deployment {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn schema(&self, definitions: &mut Map<String, Value>) {
        definitions.extend(skiff_spec::openapi::deployment());
    }

    fn subresources(&self) -> Vec<Value> {
        vec![
            json!({
                "name": "deployments/scale", "singularName": "", "namespaced": true,
                "group": "autoscaling", "version": "v1", "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }),
            json!({
                "name": "deployments/status", "singularName": "", "namespaced": true,
                "kind": "Deployment", "verbs": ["get"],
            }),
        ]
    }

    fn defaults(&self) -> Option<fn(&mut Value)> {
        Some(defaults)
    }

    fn columns(&self) -> &'static [Column] {
        &[
            NAME,
            ("Ready", "string", 0, "Ready pods of those wanted."),
            ("Up-to-date", "integer", 0, "Pods of the current template."),
            ("Available", "integer", 0, "Pods that serve."),
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
            json!(format!(
                "{}/{}",
                o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                o["spec"]["replicas"].as_i64().unwrap_or(1)
            )),
            int(&o["status"]["updatedReplicas"]),
            int(&o["status"]["availableReplicas"]),
            json!(age(&o["metadata"]["creationTimestamp"])),
            json!(names),
            json!(images),
            json!(selector_text(&o["spec"]["selector"]["matchLabels"])),
        ]
    }

    fn protobuf(&self) -> Option<protobuf::Kind> {
        Some(protobuf::Kind::Deployment)
    }

    fn writable(&self) -> bool {
        true
    }

    /// The Deployment as stored and its revisions' templates, newest first (`rollout
    /// undo` sends one back as served).
    fn stored(&self, shared: &Shared, name: &str) -> Option<Stored> {
        let d = shared.objects.stored_deployment(name)?;
        let templates = d.revisions.iter().rev().map(|r| value(&r.template));
        Some(Stored {
            kind: Kind::Deployment,
            object: deployment_value(shared, &d),
            templates: templates.collect(),
        })
    }

    fn delete<'a>(
        &'a self,
        shared: &'a Shared,
        name: &'a str,
        _object: &'a Value,
    ) -> Option<Answer<'a, ()>> {
        Some(Box::pin(async move {
            shared
                .objects
                .submit(Command::DeleteDeployment { name: name.into() })
                .await?;
            Ok(())
        }))
    }

    fn subresource<'a>(
        &'a self,
        shared: &'a Shared,
        request: SubRequest<'a>,
    ) -> Option<Answer<'a, Response>> {
        (request.sub == "scale").then(|| Box::pin(scale(shared, request)) as Answer<'a, Response>)
    }
}

/// A Deployment's replicas, strategy, history and deadline, and its template's defaults.
pub(crate) fn defaults(d: &mut Value) {
    let Some(spec) = defaults::object(d, "spec") else {
        return;
    };
    defaults::default(spec, "replicas", json!(1));
    defaults::default(spec, "revisionHistoryLimit", json!(10));
    defaults::default(spec, "progressDeadlineSeconds", json!(600));
    if let Some(strategy) = defaults::object(spec, "strategy") {
        defaults::default(strategy, "type", json!("RollingUpdate"));
        if strategy["type"] == "RollingUpdate"
            && let Some(rolling) = defaults::object(strategy, "rollingUpdate")
        {
            defaults::default(rolling, "maxUnavailable", json!("25%"));
            defaults::default(rolling, "maxSurge", json!("25%"));
        }
    }
    if let Some(template) = defaults::object(spec, "template") {
        defaults::pod_template(template);
    }
}

/// The `autoscaling/v1 Scale` of a Deployment.
fn scale_object(d: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": d["metadata"]["name"],
            "namespace": "default",
            "uid": d["metadata"]["uid"],
            "resourceVersion": d["metadata"]["resourceVersion"],
            "creationTimestamp": d["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": d["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": d["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": d["spec"]["selector"]["matchLabels"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
        },
    })
}

/// The `scale` subresource: read, replaced (`PUT`) or patched (`kubectl scale`).
async fn scale(shared: &Shared, request: SubRequest<'_>) -> Result<Response, ApiError> {
    let SubRequest {
        name,
        method,
        content_type,
        body,
        ..
    } = request;
    let current = scale_object(&get_object(shared, &RESOURCE, name).await?);
    let wanted = match method {
        Method::GET => return Ok(Json(current).into_response()),
        Method::PUT => body::json_or_yaml(content_type, &body)?,
        Method::PATCH => apply_patch("Scale", current, patch_kind(content_type)?, body).await?,
        other => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{other} is not supported on deployments.apps/scale"),
            ));
        }
    };
    within_limit(skiff_spec::patch::encoded_len(&wanted))?;
    let replicas = wanted["spec"]["replicas"]
        .as_i64()
        .and_then(|r| i32::try_from(r).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!(
                    "spec.replicas must be a number, not {}",
                    wanted["spec"]["replicas"]
                ),
            )
        })?;
    shared
        .objects
        .submit(Command::ScaleDeployment {
            name: name.to_string(),
            replicas,
        })
        .await?;
    Ok(Json(scale_object(&fresh_object(shared, &RESOURCE, name).await?)).into_response())
}

#[cfg(test)]
mod tests {
    use super::super::super::testing::stored_deployment;
    use super::*;

    #[test]
    fn a_deployment_is_served_as_kubernetes_defaults_it() {
        let mut d = stored_deployment();
        defaults(&mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["schedulerName"], "default-scheduler");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["securityContext"], json!({}));
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["resources"], json!({}));
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        // A Recreate strategy has no rolling update; what is written is kept.
        let mut d = stored_deployment();
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        d["spec"]["replicas"] = json!(0);
        defaults(&mut d);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(d["spec"]["replicas"], 0);
    }
}
