//! `v1 Endpoints`: each Service's ready pods, derived (see `endpoints.rs` one level up),
//! read-only.

use serde_json::{Value, json};

use super::{Column, READ, Resource, Served};
use super::super::table::{AGE, NAME, age, at_most_three, host_port};
use super::Kind;

pub(crate) struct Endpoints;

const RESOURCE: Resource = Resource {
    kind: Kind::Endpoints,
    plural: "endpoints",
    singular: "endpoints",
    kind_name: "Endpoints",
    group: "",
    api_version: "v1",
    namespaced: true,
    verbs: READ,
    short_names: &["ep"],
    categories: &[],
};

impl Served for Endpoints {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn columns(&self) -> &'static [Column] {
        &[
            NAME,
            ("Endpoints", "string", 0, "Ready pods' addresses and ports."),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let mut list = Vec::new();
        for subset in o["subsets"].as_array().into_iter().flatten() {
            let ips = subset["addresses"].as_array().into_iter().flatten();
            let ips: Vec<&str> = ips.filter_map(|a| a["ip"].as_str()).collect();
            match subset["ports"].as_array().filter(|p| !p.is_empty()) {
                None => list.extend(ips.iter().map(|ip| ip.to_string())),
                Some(ports) => {
                    for port in ports {
                        for ip in &ips {
                            list.push(host_port(ip, &port["port"]));
                        }
                    }
                }
            }
        }
        vec![
            json!(o["metadata"]["name"]),
            json!(at_most_three(list)),
            json!(age(&o["metadata"]["creationTimestamp"])),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_show_three_addresses_and_how_many_more() {
        let e = json!({"metadata": {"name": "web"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}], "ports": [{"port": 80}, {"port": 81}]}]});
        assert_eq!(
            Endpoints.cells(&e)[1],
            "10.0.0.1:80,[fd00::1]:80,10.0.0.1:81 + 1 more..."
        );
    }
}
