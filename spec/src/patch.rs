//! Patches as the Kubernetes API takes them, applied to an object's JSON: JSON Patch
//! (RFC 6902), JSON merge patch (RFC 7386) and the strategic merge patch client-side
//! `kubectl apply`, `set image` and `edit` send.
//!
//! A strategic merge patch is a merge patch whose lists of objects merge by a key
//! field instead of being replaced (`containers` by `name`, a container's `ports` by
//! `containerPort`, ...), with directives: `$patch: replace|delete` on a map or list
//! element, `$setElementOrder/<list>`, `$retainKeys` and
//! `$deleteFromPrimitiveList/<list>`. The keys are those of the Kubernetes types for
//! the fields skiff's objects hold; any other list is replaced whole, as Kubernetes
//! does for lists without a merge strategy.

use serde_json::{Map, Value};

/// How the body of a PATCH is to be read (its Content-Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
}

impl PatchKind {
    /// The kind a Content-Type names, if it names one served here.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            _ => None,
        }
    }
}

/// Applies `patch` (the request body) to `object`. `kind` names the object's kind
/// (`Deployment`, `Service`, `Scale`, ...), which decides a strategic patch's list keys.
pub fn apply(
    kind: &str,
    object: &mut Value,
    patch_kind: PatchKind,
    patch: &[u8],
) -> Result<(), String> {
    let body: Value =
        serde_json::from_slice(patch).map_err(|e| format!("the patch is not JSON: {e}"))?;
    match patch_kind {
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(body)
                .map_err(|e| format!("the JSON patch is not a list of operations: {e}"))?;
            json_patch::patch(object, &ops)
                .map_err(|e| format!("the JSON patch does not apply: {e}"))
        }
        PatchKind::Merge => {
            json_patch::merge(object, &body);
            Ok(())
        }
        PatchKind::StrategicMerge => {
            let Value::Object(patch) = body else {
                return Err("a strategic merge patch must be a JSON object".into());
            };
            let Value::Object(target) = object else {
                return Err("the object is not a JSON object".into());
            };
            merge_map(kind, &mut Vec::new(), target, &patch)
        }
    }
}

/// The field a list's elements merge by, for the lists that have one.
fn merge_key(kind: &str, path: &[String], field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "ports" => {
            // A container's ports merge by containerPort; a Service's by port.
            if path.iter().any(|p| p.ends_with("ontainers")) {
                Some("containerPort")
            } else if kind == "Service" {
                Some("port")
            } else {
                None
            }
        }
        _ => None,
    }
}

fn directive(map: &Map<String, Value>) -> Option<&str> {
    map.get("$patch").and_then(Value::as_str)
}

fn merge_map(
    kind: &str,
    path: &mut Vec<String>,
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<(), String> {
    match directive(patch) {
        Some("replace") => {
            *target = patch
                .iter()
                .filter(|(k, _)| k.as_str() != "$patch")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
    }
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), value));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let Value::Array(gone) = value else {
                return Err(format!("{key} must be a list"));
            };
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if key.starts_with('$') {
            return Err(format!(
                "unknown directive {key:?} in a strategic merge patch"
            ));
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(sub) => {
                if directive(sub) == Some("delete") {
                    target.remove(key);
                    continue;
                }
                path.push(key.clone());
                let entry = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                let result = merge_map(kind, path, entry.as_object_mut().expect("object"), sub);
                path.pop();
                result?;
            }
            Value::Array(items) => match merge_key(kind, path, key) {
                Some(merge_by) if items.iter().all(Value::is_object) => {
                    path.push(key.clone());
                    let entry = target
                        .entry(key.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if !entry.is_array() {
                        *entry = Value::Array(Vec::new());
                    }
                    let result = merge_list(
                        kind,
                        path,
                        entry.as_array_mut().expect("array"),
                        items,
                        merge_by,
                    );
                    path.pop();
                    result?;
                }
                _ => {
                    target.insert(key.clone(), value.clone());
                }
            },
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
    for (field, order) in orders {
        let Value::Array(order) = order else {
            return Err(format!("$setElementOrder/{field} must be a list"));
        };
        if let (Some(Value::Array(list)), Some(merge_by)) =
            (target.get_mut(&field), merge_key(kind, path, &field))
        {
            let ranks: std::collections::HashMap<String, usize> = order
                .iter()
                .enumerate()
                .filter_map(|(i, o)| Some((o.get(merge_by)?.to_string(), i)))
                .rev()
                .collect();
            list.sort_by_cached_key(|item| {
                item.get(merge_by)
                    .and_then(|k| ranks.get(&k.to_string()).copied())
                    .unwrap_or(usize::MAX)
            });
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let Value::Array(keep) = retain else {
            return Err("$retainKeys must be a list".into());
        };
        target.retain(|k, _| keep.iter().any(|v| v.as_str() == Some(k)));
    }
    Ok(())
}

fn merge_list(
    kind: &str,
    path: &mut Vec<String>,
    target: &mut Vec<Value>,
    patch: &[Value],
    merge_by: &str,
) -> Result<(), String> {
    if patch
        .iter()
        .any(|p| p.as_object().and_then(directive) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|p| p.as_object().and_then(directive) != Some("replace"))
            .cloned()
            .collect();
        return Ok(());
    }
    // Elements found by their key through an index, deleted ones left as holes until
    // the end: linear in the list and the patch, whatever a client sends.
    let mut slots: Vec<Option<Value>> = std::mem::take(target).into_iter().map(Some).collect();
    let mut index: std::collections::HashMap<String, usize> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((v.as_ref()?.get(merge_by)?.to_string(), i)))
        .collect();
    for item in patch {
        let item = item.as_object().expect("checked: objects");
        let Some(key) = item.get(merge_by) else {
            return Err(format!(
                "an element of {} has no {merge_by:?}, which its elements merge by",
                path.join(".")
            ));
        };
        let key = key.to_string();
        let at = index.get(&key).copied();
        match (directive(item), at) {
            (Some("delete"), Some(i)) => {
                slots[i] = None;
                index.remove(&key);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => {
                let existing = slots[i]
                    .as_mut()
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| format!("an element of {} is not an object", path.join(".")))?;
                merge_map(kind, path, existing, item)?;
            }
            (_, None) => {
                let mut fresh = Map::new();
                merge_map(kind, path, &mut fresh, item)?;
                index.insert(key, slots.len());
                slots.push(Some(Value::Object(fresh)));
            }
        }
    }
    *target = slots.into_iter().flatten().collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn strategic(kind: &str, mut object: Value, patch: Value) -> Value {
        apply(
            kind,
            &mut object,
            PatchKind::StrategicMerge,
            patch.to_string().as_bytes(),
        )
        .unwrap();
        object
    }

    fn deployment() -> Value {
        json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "web", "image": "web:1", "ports": [{"containerPort": 80}],
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "side", "image": "side:1"}
        ]}}}})
    }

    #[test]
    fn set_image_merges_the_container_by_name() {
        // What `kubectl set image deployment/d web=web:2` sends.
        let out = strategic(
            "Deployment",
            deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
                "containers": [{"image": "web:2", "name": "web"}]}}}}),
        );
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "web:2");
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
        assert_eq!(containers[0]["env"][1]["value"], "2");
        assert_eq!(containers[1], json!({"name": "side", "image": "side:1"}));
        assert_eq!(out["spec"]["replicas"], 3);
    }

    #[test]
    fn apply_deletes_adds_and_orders_elements_and_nulls_remove_fields() {
        // What client-side `kubectl apply` sends after removing the sidecar and env B,
        // adding a port and dropping replicas from the file.
        let out = strategic(
            "Deployment",
            deployment(),
            json!({"spec": {"replicas": null, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [
                {"name": "web", "$setElementOrder/env": [{"name": "A"}],
                 "env": [{"$patch": "delete", "name": "B"}],
                 "ports": [{"containerPort": 443}]},
                {"$patch": "delete", "name": "side"}
            ]}}}}),
        );
        assert!(out["spec"].get("replicas").is_none());
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(
            containers[0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 443}])
        );
    }

    #[test]
    fn lists_without_a_key_are_replaced_and_services_merge_ports_by_port() {
        let out = strategic(
            "Deployment",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["x", "y"]}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["z"]}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["z"])
        );
        let out = strategic(
            "Service",
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );
    }

    #[test]
    fn directives_replace_retain_and_delete_from_primitive_lists() {
        let out = strategic(
            "Deployment",
            json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                            "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}},
                   "metadata": {"finalizers": ["x", "y"]}}),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                            "template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "c"}]}}},
                   "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "c"}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn a_patch_of_many_elements_costs_linear_time() {
        // 50,000 containers against 50,000, as a hostile patch may send: merging by
        // scanning the list for each element would keep this test (and a node) busy for
        // minutes; by index it is a fraction of a second.
        let n = 50_000;
        let list = |image: &str| -> Vec<Value> {
            (0..n)
                .map(|i| json!({"name": format!("c{i}"), "image": image}))
                .collect()
        };
        let order: Vec<Value> = (0..n)
            .rev()
            .map(|i| json!({"name": format!("c{i}")}))
            .collect();
        let out = strategic(
            "Deployment",
            json!({"spec": {"template": {"spec": {"containers": list("a")}}}}),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": order, "containers": list("b")}}}}),
        );
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), n);
        assert_eq!(
            containers[0],
            json!({"name": format!("c{}", n - 1), "image": "b"})
        );
    }

    #[test]
    fn bad_patches_name_what_is_wrong() {
        let mut object = deployment();
        let err = |kind, body: &str| {
            apply("Deployment", &mut object.clone(), kind, body.as_bytes()).unwrap_err()
        };
        assert!(err(PatchKind::StrategicMerge, "[1]").contains("JSON object"));
        assert!(err(PatchKind::StrategicMerge, "{").contains("not JSON"));
        assert!(err(PatchKind::StrategicMerge, r#"{"$bogus": 1}"#).contains("$bogus"));
        assert!(
            err(
                PatchKind::StrategicMerge,
                r#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#
            )
            .contains("\"name\"")
        );
        assert!(
            err(PatchKind::Json, r#"[{"op":"remove","path":"/nope"}]"#).contains("does not apply")
        );
        assert!(err(PatchKind::Json, r#"{"op":"x"}"#).contains("list of operations"));
        // JSON patch and merge patch, as `rollout undo` and `scale` send them.
        apply(
            "Deployment",
            &mut object,
            PatchKind::Json,
            br#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
        )
        .unwrap();
        apply(
            "Deployment",
            &mut object,
            PatchKind::Merge,
            br#"{"spec":{"template":null}}"#,
        )
        .unwrap();
        assert_eq!(object, json!({"spec": {"replicas": 5}}));
        assert_eq!(
            PatchKind::from_content_type("application/strategic-merge-patch+json; charset=utf-8"),
            Some(PatchKind::StrategicMerge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml"),
            None
        );
    }
}
