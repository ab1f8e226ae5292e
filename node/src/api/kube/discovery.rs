//! Discovery and OpenAPI: what kubectl reads before anything else to learn which
//! resources exist, what they are called and how to check a manifest.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::resources::{self, Kind, group_version};
use crate::Shared;

/// The Kubernetes release whose API this one follows (kubectl's version skew checks
/// and its dispatcher read it).
const KUBE_MINOR: &str = "30";

/// The media type of the protobuf document, as Kubernetes names it in answers (kubectl
/// asks for `...spec.v2@v1.0+protobuf`, which Go's media type parser cannot read back).
const OPENAPI_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

pub(super) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route("/api/v1", get(|| async { Json(resource_list("")) }))
        .route("/openapi/v2", get(openapi_v2));
    for name in resources::groups().into_iter().filter(|g| !g.is_empty()) {
        router = router
            .route(
                &format!("/apis/{name}"),
                get(move || async move { Json(group(name)) }),
            )
            .route(
                &format!("/apis/{name}/v1"),
                get(move || async move { Json(resource_list(name)) }),
            );
    }
    router
}

async fn version() -> Json<Value> {
    let skiff = env!("CARGO_PKG_VERSION");
    Json(json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+skiff-{skiff}"),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    }))
}

async fn api_versions() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    }))
}

/// The `APIGroup` of a named group (`apps`, `discovery.k8s.io`).
fn group(name: &str) -> Value {
    let v = json!({"groupVersion": group_version(name), "version": "v1"});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": [v],
        "preferredVersion": v,
    })
}

/// Only the groups served: the core group is `/api`.
async fn api_groups() -> Json<Value> {
    let groups: Vec<Value> = resources::groups()
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(|name| {
            let mut g = group(name);
            if let Some(g) = g.as_object_mut() {
                g.remove("kind");
                g.remove("apiVersion");
            }
            g
        })
        .collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

/// `APIResourceList` of a group (`""`: core).
fn resource_list(group: &str) -> Value {
    let mut list = Vec::new();
    for r in resources::all().filter(|r| r.group == group) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind_name,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        list.extend(r.served().subresources());
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group),
        "resources": list,
    })
}

/// The OpenAPI v2 definitions: the types kinds share, and each kind's own.
fn definitions() -> serde_json::Map<String, Value> {
    let mut definitions = skiff_spec::openapi::common();
    for kind in Kind::ALL {
        kind.served().schema(&mut definitions);
    }
    definitions
}

/// The OpenAPI v2 document: protobuf when asked for it (kubectl always does), JSON
/// otherwise. Built once.
async fn openapi_v2(headers: HeaderMap) -> Response {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    static PROTOBUF: OnceLock<Vec<u8>> = OnceLock::new();
    let version = env!("CARGO_PKG_VERSION");
    let protobuf = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("protobuf"));
    if protobuf {
        let body = PROTOBUF.get_or_init(|| {
            skiff_spec::openapi::protobuf_of(&skiff_spec::openapi::document_of(
                version,
                definitions(),
            ))
        });
        ([(header::CONTENT_TYPE, OPENAPI_PROTOBUF)], body.clone()).into_response()
    } else {
        let body = JSON.get_or_init(|| {
            serde_json::to_vec(&skiff_spec::openapi::document_of(version, definitions()))
                .expect("serializes")
        });
        ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_is_discoverable_in_its_group() {
        let core = resource_list("");
        let apps = resource_list("apps");
        let names = |v: &Value| -> Vec<String> {
            v["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            names(&apps),
            [
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets"
            ]
        );
        for r in [
            "pods",
            "services",
            "nodes",
            "events",
            "namespaces",
            "endpoints",
        ] {
            assert!(names(&core).contains(&r.to_string()), "{r}");
        }
        assert_eq!(apps["groupVersion"], "apps/v1");
        let discovery = resource_list("discovery.k8s.io");
        assert_eq!(names(&discovery), ["endpointslices"]);
        assert_eq!(discovery["groupVersion"], "discovery.k8s.io/v1");
        assert_eq!(
            discovery["resources"][0]["verbs"],
            json!(["get", "list", "watch"])
        );
    }

    #[test]
    fn the_openapi_document_of_the_kinds_is_the_whole_document() {
        let built = skiff_spec::openapi::document_of("1.2.3", definitions());
        assert_eq!(built, skiff_spec::openapi::document("1.2.3"));
        assert_eq!(
            skiff_spec::openapi::protobuf_of(&built),
            skiff_spec::openapi::document_protobuf("1.2.3")
        );
    }
}
