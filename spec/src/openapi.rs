//! The OpenAPI v2 document of the Kubernetes kinds skiff takes (`apps/v1 Deployment`,
//! `v1 Service`), as kubectl reads it to validate a manifest before sending it and to
//! learn which lists merge by which key (`x-kubernetes-patch-merge-key`).
//!
//! Every field Kubernetes defines on these types is declared, so a manifest written for
//! Kubernetes validates unchanged and a misspelt field is refused by kubectl as a real
//! server's document makes it refuse one. Fields skiff acts on carry their types; the
//! rest are declared without a type (any value), since skiff ignores them and the
//! manifest reader warns about them. The same document goes out as JSON or as the
//! protobuf encoding of gnostic's `openapi.v2.Document`, which is the only form kubectl
//! 1.27 asks for.

use serde_json::{Map, Value, json};

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";
const CORE: &str = "io.k8s.api.core.v1.";
const APPS: &str = "io.k8s.api.apps.v1.";

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/definitions/{name}")})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn integer() -> Value {
    json!({"type": "integer", "format": "int32"})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

/// Any value: a field skiff does not read.
fn any() -> Value {
    json!({})
}

/// A list of `item` that merges by `key` in a strategic merge patch.
fn keyed_list(item: &str, key: &str) -> Value {
    json!({
        "type": "array",
        "items": reference(item),
        "x-kubernetes-patch-merge-key": key,
        "x-kubernetes-patch-strategy": "merge",
    })
}

/// An object definition: typed fields, then the fields taken as any value.
fn object(typed: Vec<(&str, Value)>, untyped: &[&str], required: &[&str]) -> Value {
    let mut properties = Map::new();
    for (name, schema) in typed {
        properties.insert(name.into(), schema);
    }
    for name in untyped {
        properties.insert((*name).into(), any());
    }
    let mut out = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        out["required"] = json!(required);
    }
    out
}

/// A top-level kind, tagged with its group, version and kind.
fn kind(group: &str, version: &str, kind: &str, spec: &str) -> Value {
    let mut out = object(
        vec![
            ("apiVersion", string()),
            ("kind", string()),
            ("metadata", reference(&format!("{META}ObjectMeta"))),
            ("spec", reference(spec)),
        ],
        &["status"],
        &[],
    );
    out["x-kubernetes-group-version-kind"] =
        json!([{"group": group, "kind": kind, "version": version}]);
    out
}

/// The definitions the kinds share: object metadata, label selectors and pod
/// templates (with their containers, ports, probes and resources).
pub fn common() -> Map<String, Value> {
    let mut d = Map::new();
    let mut add = |name: String, schema: Value| {
        d.insert(name, schema);
    };
    add(
        format!("{META}ObjectMeta"),
        object(
            vec![
                ("name", string()),
                ("namespace", string()),
                ("labels", string_map()),
                ("annotations", string_map()),
                ("uid", string()),
                ("resourceVersion", string()),
                ("generation", json!({"type": "integer", "format": "int64"})),
                ("creationTimestamp", string()),
                ("deletionTimestamp", string()),
            ],
            &[
                "generateName",
                "selfLink",
                "deletionGracePeriodSeconds",
                "ownerReferences",
                "finalizers",
                "managedFields",
            ],
            &[],
        ),
    );
    add(
        format!("{META}LabelSelector"),
        object(
            vec![
                ("matchLabels", string_map()),
                (
                    "matchExpressions",
                    json!({"type": "array", "items": reference(&format!("{META}LabelSelectorRequirement"))}),
                ),
            ],
            &[],
            &[],
        ),
    );
    add(
        format!("{META}LabelSelectorRequirement"),
        object(
            vec![
                ("key", string()),
                ("operator", string()),
                ("values", strings()),
            ],
            &[],
            &["key", "operator"],
        ),
    );
    add(
        format!("{CORE}PodTemplateSpec"),
        object(
            vec![
                ("metadata", reference(&format!("{META}ObjectMeta"))),
                ("spec", reference(&format!("{CORE}PodSpec"))),
            ],
            &[],
            &[],
        ),
    );
    add(
        format!("{CORE}PodSpec"),
        object(
            vec![
                (
                    "containers",
                    keyed_list(&format!("{CORE}Container"), "name"),
                ),
                (
                    "initContainers",
                    keyed_list(&format!("{CORE}Container"), "name"),
                ),
                ("nodeName", string()),
                ("nodeSelector", string_map()),
                ("hostname", string()),
                ("restartPolicy", string()),
                (
                    "terminationGracePeriodSeconds",
                    json!({"type": "integer", "format": "int64"}),
                ),
            ],
            &[
                "activeDeadlineSeconds",
                "affinity",
                "automountServiceAccountToken",
                "dnsConfig",
                "dnsPolicy",
                "enableServiceLinks",
                "ephemeralContainers",
                "hostAliases",
                "hostIPC",
                "hostNetwork",
                "hostPID",
                "hostUsers",
                "imagePullSecrets",
                "os",
                "overhead",
                "preemptionPolicy",
                "priority",
                "priorityClassName",
                "readinessGates",
                "resourceClaims",
                "resources",
                "runtimeClassName",
                "schedulerName",
                "schedulingGates",
                "securityContext",
                "serviceAccount",
                "serviceAccountName",
                "setHostnameAsFQDN",
                "shareProcessNamespace",
                "subdomain",
                "tolerations",
                "topologySpreadConstraints",
                "volumes",
            ],
            &["containers"],
        ),
    );
    add(
        format!("{CORE}Container"),
        object(
            vec![
                ("name", string()),
                ("image", string()),
                ("command", strings()),
                ("args", strings()),
                ("env", keyed_list(&format!("{CORE}EnvVar"), "name")),
                (
                    "ports",
                    keyed_list(&format!("{CORE}ContainerPort"), "containerPort"),
                ),
                (
                    "resources",
                    reference(&format!("{CORE}ResourceRequirements")),
                ),
                ("livenessProbe", reference(&format!("{CORE}Probe"))),
                ("readinessProbe", reference(&format!("{CORE}Probe"))),
                ("startupProbe", reference(&format!("{CORE}Probe"))),
                ("workingDir", string()),
            ],
            &[
                "envFrom",
                "imagePullPolicy",
                "lifecycle",
                "resizePolicy",
                "restartPolicy",
                "securityContext",
                "stdin",
                "stdinOnce",
                "terminationMessagePath",
                "terminationMessagePolicy",
                "tty",
                "volumeDevices",
                "volumeMounts",
            ],
            &["name"],
        ),
    );
    add(
        format!("{CORE}EnvVar"),
        object(
            vec![("name", string()), ("value", string())],
            &["valueFrom"],
            &["name"],
        ),
    );
    add(
        format!("{CORE}ContainerPort"),
        object(
            vec![
                ("containerPort", integer()),
                ("hostPort", integer()),
                ("name", string()),
                ("protocol", string()),
            ],
            &["hostIP"],
            &["containerPort"],
        ),
    );
    add(
        format!("{CORE}ResourceRequirements"),
        object(
            vec![
                (
                    "limits",
                    json!({"type": "object", "additionalProperties": any()}),
                ),
                (
                    "requests",
                    json!({"type": "object", "additionalProperties": any()}),
                ),
            ],
            &["claims"],
            &[],
        ),
    );
    add(
        format!("{CORE}Probe"),
        object(
            vec![
                ("httpGet", reference(&format!("{CORE}HTTPGetAction"))),
                ("initialDelaySeconds", integer()),
                ("periodSeconds", integer()),
                ("timeoutSeconds", integer()),
                ("successThreshold", integer()),
                ("failureThreshold", integer()),
            ],
            &["exec", "grpc", "tcpSocket", "terminationGracePeriodSeconds"],
            &[],
        ),
    );
    add(
        format!("{CORE}HTTPGetAction"),
        object(
            vec![("path", string()), ("scheme", string())],
            &["host", "httpHeaders", "port"],
            &["port"],
        ),
    );
    d
}

/// `apps/v1 Deployment` and the types only it has (its spec and strategy).
pub fn deployment() -> Map<String, Value> {
    let mut d = Map::new();
    let mut add = |name: String, schema: Value| {
        d.insert(name, schema);
    };
    add(
        format!("{APPS}Deployment"),
        kind("apps", "v1", "Deployment", &format!("{APPS}DeploymentSpec")),
    );
    add(
        format!("{APPS}DeploymentSpec"),
        object(
            vec![
                ("replicas", integer()),
                ("selector", reference(&format!("{META}LabelSelector"))),
                ("template", reference(&format!("{CORE}PodTemplateSpec"))),
                (
                    "strategy",
                    // As Kubernetes declares it: on the field, not the type.
                    json!({
                        "$ref": format!("#/definitions/{APPS}DeploymentStrategy"),
                        "x-kubernetes-patch-strategy": "retainKeys",
                    }),
                ),
                ("minReadySeconds", integer()),
                ("revisionHistoryLimit", integer()),
                ("progressDeadlineSeconds", integer()),
            ],
            &["paused"],
            &["selector", "template"],
        ),
    );
    let strategy = object(
        vec![
            ("type", string()),
            (
                "rollingUpdate",
                reference(&format!("{APPS}RollingUpdateDeployment")),
            ),
        ],
        &[],
        &[],
    );
    add(format!("{APPS}DeploymentStrategy"), strategy);
    add(
        format!("{APPS}RollingUpdateDeployment"),
        object(Vec::new(), &["maxSurge", "maxUnavailable"], &[]),
    );
    d
}

/// `v1 Service` and the types only it has (its spec and ports).
pub fn service() -> Map<String, Value> {
    let mut d = Map::new();
    let mut add = |name: String, schema: Value| {
        d.insert(name, schema);
    };
    add(
        format!("{CORE}Service"),
        kind("", "v1", "Service", &format!("{CORE}ServiceSpec")),
    );
    add(
        format!("{CORE}ServiceSpec"),
        object(
            vec![
                ("selector", string_map()),
                ("ports", keyed_list(&format!("{CORE}ServicePort"), "port")),
                ("type", string()),
                ("clusterIP", string()),
            ],
            &[
                "allocateLoadBalancerNodePorts",
                "clusterIPs",
                "externalIPs",
                "externalName",
                "externalTrafficPolicy",
                "healthCheckNodePort",
                "internalTrafficPolicy",
                "ipFamilies",
                "ipFamilyPolicy",
                "loadBalancerClass",
                "loadBalancerIP",
                "loadBalancerSourceRanges",
                "publishNotReadyAddresses",
                "sessionAffinity",
                "sessionAffinityConfig",
                "trafficDistribution",
            ],
            &[],
        ),
    );
    add(
        format!("{CORE}ServicePort"),
        object(
            vec![
                ("name", string()),
                ("port", integer()),
                ("protocol", string()),
                ("nodePort", integer()),
            ],
            &["appProtocol", "targetPort"],
            &["port"],
        ),
    );
    d
}

/// The OpenAPI v2 document of the kinds skiff takes, as JSON.
pub fn document(version: &str) -> Value {
    let mut definitions = common();
    definitions.extend(deployment());
    definitions.extend(service());
    document_of(version, definitions)
}

/// An OpenAPI v2 document holding `definitions` (the node's are [`common`] and each
/// served kind's own), as JSON.
pub fn document_of(version: &str, definitions: Map<String, Value>) -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "skiff", "version": version},
        "paths": {},
        "definitions": definitions,
    })
}

/// Protocol buffers, the few wire types gnostic's messages need.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.varint(u64::from(field << 3 | 2));
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }

    fn boolean(&mut self, field: u32, b: bool) {
        self.varint(u64::from(field << 3));
        self.varint(u64::from(b));
    }
}

/// gnostic's `openapi.v2.Schema` of a JSON schema.
fn schema_pb(schema: &Value) -> Pb {
    let mut pb = Pb::default();
    let Value::Object(fields) = schema else {
        return pb;
    };
    if let Some(r) = fields.get("$ref").and_then(Value::as_str) {
        pb.string(1, r);
    }
    if let Some(f) = fields.get("format").and_then(Value::as_str) {
        pb.string(2, f);
    }
    if let Some(d) = fields.get("description").and_then(Value::as_str) {
        pb.string(4, d);
    }
    for r in fields
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.string(19, r.as_str().unwrap_or_default());
    }
    match fields.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Pb::default();
            item.boolean(2, *b);
            pb.message(21, item);
        }
        Some(s @ Value::Object(_)) => {
            let mut item = Pb::default();
            item.message(1, schema_pb(s));
            pb.message(21, item);
        }
        _ => {}
    }
    if let Some(t) = fields.get("type").and_then(Value::as_str) {
        let mut item = Pb::default();
        item.string(1, t);
        pb.message(22, item);
    }
    if let Some(items) = fields.get("items") {
        let mut item = Pb::default();
        item.message(1, schema_pb(items));
        pb.message(23, item);
    }
    if let Some(Value::Object(props)) = fields.get("properties") {
        let mut properties = Pb::default();
        for (name, s) in props {
            properties.message(1, named(name, schema_pb(s)));
        }
        pb.message(25, properties);
    }
    for (name, value) in fields.iter().filter(|(k, _)| k.starts_with("x-")) {
        // An extension's value travels as YAML text; JSON is YAML.
        let mut any = Pb::default();
        any.string(2, &value.to_string());
        pb.message(31, named(name, any));
    }
    pb
}

/// A `Named*` message: a name and a value.
fn named(name: &str, value: Pb) -> Pb {
    let mut pb = Pb::default();
    pb.string(1, name);
    pb.message(2, value);
    pb
}

/// The document as gnostic's `openapi.v2.Document` in protobuf
/// (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
pub fn document_protobuf(version: &str) -> Vec<u8> {
    protobuf_of(&document(version))
}

/// A document made by [`document_of`] as gnostic's `openapi.v2.Document` in protobuf.
pub fn protobuf_of(doc: &Value) -> Vec<u8> {
    let version = doc["info"]["version"].as_str().unwrap_or_default();
    let mut pb = Pb::default();
    pb.string(1, "2.0");
    let mut info = Pb::default();
    info.string(1, "skiff");
    info.string(2, version);
    pb.message(2, info);
    pb.message(8, Pb::default());
    let mut defs = Pb::default();
    for (name, schema) in doc["definitions"].as_object().expect("definitions") {
        defs.message(1, named(name, schema_pb(schema)));
    }
    pb.message(9, defs);
    pb.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_and_kinds_carry_their_gvk() {
        let doc = document("0");
        let defs = doc["definitions"].as_object().unwrap();
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.trim_start_matches("#/definitions/").into());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            assert!(defs.contains_key(&r), "{r} is not defined");
        }
        assert_eq!(
            defs["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert_eq!(
            defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
    }

    #[test]
    fn protobuf_is_well_formed_and_holds_every_definition() {
        let pb = document_protobuf("1.2.3");
        // Walk the top-level fields: tags and lengths must add up to the whole.
        let mut at = 0;
        let mut fields = Vec::new();
        let varint = |at: &mut usize| {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let b = pb[*at];
                *at += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b < 0x80 {
                    return v;
                }
                shift += 7;
            }
        };
        while at < pb.len() {
            let key = varint(&mut at);
            assert_eq!(key & 7, 2, "length-delimited");
            let len = varint(&mut at) as usize;
            fields.push((key >> 3, len));
            at += len;
        }
        assert_eq!(at, pb.len());
        assert_eq!(fields.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2, 8, 9]);
        let text = String::from_utf8_lossy(&pb);
        assert!(text.contains("io.k8s.api.core.v1.ServicePort"));
        assert!(text.contains("x-kubernetes-group-version-kind"));
    }
}
