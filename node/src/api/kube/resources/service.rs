//! `v1 Service`: written through the API (create, replace, patch, delete), read from
//! the desired state.

use serde_json::{Map, Value, json};
use skiff_spec::protobuf;

use super::super::defaults;
use super::{Answer, Column, Resource, Served, WRITE};
use super::super::served::service_value;
use super::super::table::{AGE, NAME, age, selector_text, text};
use super::super::Stored;
use super::Kind;
use crate::Shared;
use crate::desired::Command;

pub(crate) struct Service;

const RESOURCE: Resource = Resource {
    kind: Kind::Service,
    plural: "services",
    singular: "service",
    kind_name: "Service",
    group: "",
    api_version: "v1",
    namespaced: true,
    verbs: WRITE,
    short_names: &["svc"],
    categories: &["all"],
};

impl Served for Service {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn schema(&self, definitions: &mut Map<String, Value>) {
        definitions.extend(skiff_spec::openapi::service());
    }

    fn defaults(&self) -> Option<fn(&mut Value)> {
        Some(defaults)
    }

    fn columns(&self) -> &'static [Column] {
        &[
            NAME,
            ("Type", "string", 0, "How the service is exposed."),
            ("Cluster-IP", "string", 0, "Not used by skiff."),
            ("External-IP", "string", 0, "Not used by skiff."),
            ("Port(s)", "string", 0, "Its ports."),
            AGE,
            ("Selector", "string", 1, "The pods it routes to."),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let ports: Vec<String> = o["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                match p["nodePort"].as_i64() {
                    Some(np) => format!("{}:{np}/{proto}", p["port"]),
                    None => format!("{}/{proto}", p["port"]),
                }
            })
            .collect();
        vec![
            json!(o["metadata"]["name"]),
            json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
            json!(text(&o["spec"]["clusterIP"])),
            json!("<none>"),
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            }),
            json!(age(&o["metadata"]["creationTimestamp"])),
            json!(selector_text(&o["spec"]["selector"])),
        ]
    }

    fn protobuf(&self) -> Option<protobuf::Kind> {
        Some(protobuf::Kind::Service)
    }

    fn writable(&self) -> bool {
        true
    }

    fn stored(&self, shared: &Shared, name: &str) -> Option<Stored> {
        let s = shared.objects.service(name)?;
        Some(Stored {
            kind: Kind::Service,
            object: service_value(s),
            templates: Vec::new(),
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
                .submit(Command::DeleteService { name: name.into() })
                .await?;
            Ok(())
        }))
    }
}

/// A Service's type, session affinity, traffic policies, and its ports' protocol and
/// target.
pub(crate) fn defaults(s: &mut Value) {
    let Some(spec) = defaults::object(s, "spec") else {
        return;
    };
    defaults::default(spec, "type", json!("ClusterIP"));
    defaults::default(spec, "sessionAffinity", json!("None"));
    let kind = spec["type"].as_str().unwrap_or_default().to_string();
    if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        defaults::default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer") {
        defaults::default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    for port in defaults::each(spec, "ports") {
        defaults::default(port, "protocol", json!("TCP"));
        // An unset target is 0 or "" in Go: the port itself.
        let target = &port["targetPort"];
        if (target.is_null() || *target == 0 || *target == "")
            && let Some(p) = port.as_object_mut()
        {
            let number = p.get("port").cloned().unwrap_or(Value::Null);
            p.insert("targetPort".into(), number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_gets_its_type_affinity_policies_and_port_targets() {
        let mut s = json!({"spec": {"ports": [{"port": 80}, {"port": 81, "targetPort": "http"},
            {"port": 82, "targetPort": 0}]}});
        defaults(&mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert!(s["spec"]["externalTrafficPolicy"].is_null());
        let targets: Vec<&Value> = (0..3)
            .map(|i| &s["spec"]["ports"][i]["targetPort"])
            .collect();
        assert_eq!(targets, [&json!(80), &json!("http"), &json!(82)]);
        let mut s = json!({"spec": {"type": "NodePort", "ports": []}});
        defaults(&mut s);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
    }
}
