//! `discovery.k8s.io/v1 EndpointSlice`: each Service's pods, derived (see
//! `endpoints.rs` one level up), read-only.

use serde_json::{Value, json};

use super::{Column, READ, Resource, Served};
use super::super::table::{AGE, NAME, age, at_most_three, text};
use super::Kind;

pub(crate) struct EndpointSlice;

const RESOURCE: Resource = Resource {
    kind: Kind::EndpointSlice,
    plural: "endpointslices",
    singular: "endpointslice",
    kind_name: "EndpointSlice",
    group: "discovery.k8s.io",
    api_version: "discovery.k8s.io/v1",
    namespaced: true,
    verbs: READ,
    short_names: &[],
    categories: &[],
};

impl Served for EndpointSlice {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn columns(&self) -> &'static [Column] {
        &[
            NAME,
            ("AddressType", "string", 0, "IPv4 or IPv6."),
            ("Ports", "string", 0, "The pods' ports."),
            ("Endpoints", "string", 0, "The pods' addresses."),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let ports: Vec<String> = o["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                p["port"]
                    .as_i64()
                    .map_or("<unset>".into(), |n| n.to_string())
            })
            .collect();
        let addresses: Vec<String> = o["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        vec![
            json!(o["metadata"]["name"]),
            json!(text(&o["addressType"])),
            json!(if ports.is_empty() {
                "<unset>".to_string()
            } else {
                ports.join(",")
            }),
            json!(at_most_three(addresses)),
            json!(age(&o["metadata"]["creationTimestamp"])),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_shows_its_address_type_ports_and_addresses() {
        let s = json!({"metadata": {"name": "web-abcde"}, "addressType": "IPv4",
            "ports": [{"name": "", "port": 80}], "endpoints": [{"addresses": ["10.0.0.1"]}]});
        assert_eq!(
            EndpointSlice.cells(&s),
            [
                json!("web-abcde"),
                json!("IPv4"),
                json!("80"),
                json!("10.0.0.1"),
                json!(age(&Value::Null))
            ]
        );
    }
}
