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
//!
//! Patches are bounded as the objects they make are. A JSON patch can double its object
//! with each `copy` (2.6 KB of them once asked a node for 7 GB), so its operations are
//! applied one at a time, each admitted first against the object's serialized size and
//! depth, kept up to date from what each operation adds and removes: a patch is refused
//! at the first operation that would make the object larger than
//! [`MAX_MANIFEST_BYTES`] (or than it already was), nest deeper than
//! [`MAX_PATCHED_DEPTH`], or copy more than [`MAX_PATCH_COPY_BYTES`] in all, before
//! that operation costs anything. It has at most [`MAX_PATCH_OPS`] operations. Merge
//! and strategic merge patches make at most the object plus the patch, and are checked
//! once applied. A refused patch leaves the object as it was.

use json_patch::PatchOperation;
use json_patch::jsonptr::Pointer;
use serde_json::{Map, Value};

use crate::manifest::MAX_MANIFEST_BYTES;

/// Most operations one JSON patch may hold: Kubernetes' own limit
/// (`maxJSONPatchOperations`).
pub const MAX_PATCH_OPS: usize = 10_000;

/// Deepest a patched object may nest (maps and lists within each other): as deep as
/// serde_json reads a request body. Serializing and dropping a value recurse, so a
/// patch that wrapped the object again and again would overflow the stack.
pub const MAX_PATCHED_DEPTH: usize = 128;

/// Most bytes the `copy` operations of one JSON patch may copy in all (Kubernetes bounds
/// them by its request size too), values it moves to a deeper place counted too (they
/// are measured). What the other operations add is in the patch itself, which is
/// bounded; a copy and a remove, again and again, would keep a node busy copying
/// without ever growing the object.
pub const MAX_PATCH_COPY_BYTES: usize = MAX_MANIFEST_BYTES;

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

/// Why a patch was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// The patch is not one, or does not apply to the object.
    #[error("{0}")]
    Invalid(String),
    /// A JSON patch of more than [`MAX_PATCH_OPS`] operations.
    #[error("the JSON patch has {ops} operations; a patch may have at most {MAX_PATCH_OPS}")]
    TooManyOperations {
        /// How many it has.
        ops: usize,
    },
    /// The object would serialize to more than `limit` bytes.
    #[error("the patched object would be larger than {}, the most an object may be{}", size(.limit), at(.op))]
    TooLarge {
        /// [`MAX_MANIFEST_BYTES`], or the object's size before the patch if larger.
        limit: usize,
        /// The JSON patch operation refused (from 0), if a JSON patch.
        op: Option<usize>,
    },
    /// The object would nest deeper than [`MAX_PATCHED_DEPTH`].
    #[error("the patched object would nest deeper than {MAX_PATCHED_DEPTH} levels{}", at(.op))]
    TooDeep {
        /// The JSON patch operation refused (from 0), if a JSON patch.
        op: Option<usize>,
    },
    /// The patch's copies would add up to more than [`MAX_PATCH_COPY_BYTES`].
    #[error("the JSON patch copies more than {} in all{}", size(&MAX_PATCH_COPY_BYTES), at_op(.op))]
    TooMuchCopied {
        /// The operation refused (from 0).
        op: usize,
    },
}

impl PatchError {
    /// Whether the patch was refused for a bound (Kubernetes answers 413) rather than
    /// for what it says (422).
    pub fn is_over_limit(&self) -> bool {
        !matches!(self, Self::Invalid(_))
    }
}

fn size(bytes: &usize) -> String {
    let bytes = *bytes;
    if bytes.is_multiple_of(1 << 20) {
        format!("{bytes} bytes ({} MiB)", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

fn at(op: &Option<usize>) -> String {
    op.as_ref().map(at_op).unwrap_or_default()
}

fn at_op(op: &usize) -> String {
    format!(" (JSON patch operation {op})")
}

/// Applies `patch` (the request body) to `object`. `kind` names the object's kind
/// (`Deployment`, `Service`, `Scale`, ...), which decides a strategic patch's list keys.
/// On error `object` is left as it was.
pub fn apply(
    kind: &str,
    object: &mut Value,
    patch_kind: PatchKind,
    patch: &[u8],
) -> Result<(), PatchError> {
    let body: Value = serde_json::from_slice(patch)
        .map_err(|e| PatchError::Invalid(format!("the patch is not JSON: {e}")))?;
    let (bytes, depth) = measure(object);
    // An object the node already holds larger (its status counts here, not when
    // stored) may still be patched, as long as the patch does not grow it.
    let limit = bytes.max(MAX_MANIFEST_BYTES);
    let mut patched = object.clone();
    match patch_kind {
        PatchKind::Json => {
            let growth = Growth {
                bytes,
                depth,
                copied: 0,
                limit,
            };
            apply_json(&mut patched, body, growth)?;
        }
        PatchKind::Merge => {
            json_patch::merge(&mut patched, &body);
            check(&patched, limit)?;
        }
        PatchKind::StrategicMerge => {
            let Value::Object(patch) = body else {
                return Err(PatchError::Invalid(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            };
            let Value::Object(target) = &mut patched else {
                return Err(PatchError::Invalid(
                    "the object is not a JSON object".into(),
                ));
            };
            merge_map(kind, &mut Vec::new(), target, &patch).map_err(PatchError::Invalid)?;
            check(&patched, limit)?;
        }
    }
    *object = patched;
    Ok(())
}

/// The bytes `value` serializes to (compact JSON, as stored and sent).
pub fn encoded_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("a JSON value serializes");
    count.0
}

/// How deep maps and lists nest in `value` (a scalar 0, `{}` 1).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Serialized size and depth of `value`.
fn measure(value: &Value) -> (usize, usize) {
    (encoded_len(value), depth(value))
}

/// A merge patch's result, against the bounds.
fn check(object: &Value, limit: usize) -> Result<(), PatchError> {
    let (bytes, deep) = measure(object);
    if bytes > limit {
        return Err(PatchError::TooLarge { limit, op: None });
    }
    if deep > MAX_PATCHED_DEPTH {
        return Err(PatchError::TooDeep { op: None });
    }
    Ok(())
}

fn apply_json(object: &mut Value, body: Value, mut growth: Growth) -> Result<(), PatchError> {
    // Counted before the operations are read: reading them costs memory too.
    if let Value::Array(ops) = &body
        && ops.len() > MAX_PATCH_OPS
    {
        return Err(PatchError::TooManyOperations { ops: ops.len() });
    }
    let ops: json_patch::Patch = serde_json::from_value(body).map_err(|e| {
        PatchError::Invalid(format!("the JSON patch is not a list of operations: {e}"))
    })?;
    for (i, op) in ops.iter().enumerate() {
        growth.admit(object, op, i)?;
        json_patch::patch_unsafe(object, std::slice::from_ref(op)).map_err(|e| {
            PatchError::Invalid(format!(
                "the JSON patch does not apply: operation '/{i}' failed at path '{}': {}",
                e.path, e.kind
            ))
        })?;
    }
    Ok(())
}

/// What a JSON patch has made of its object so far: its serialized size and depth (an
/// upper bound of each; exact but for `move`, counted as never shrinking anything) and
/// the bytes its copies added. Each operation is admitted before it is applied, from
/// the sizes of the values it adds and of those it replaces or removes, so that a patch
/// costs at most what its bounds allow: every byte measured was in the patch, in the
/// object, or copied within the bound on copies.
struct Growth {
    bytes: usize,
    depth: usize,
    copied: usize,
    limit: usize,
}

impl Growth {
    /// Admits operation `i`, `op`, on `doc` as it is before it, or refuses it.
    fn admit(&mut self, doc: &Value, op: &PatchOperation, i: usize) -> Result<(), PatchError> {
        // The object's size and depth after the operation, and the bytes of the object
        // it copies (or measures, which costs as much).
        let (bytes, depth, copied) = match op {
            PatchOperation::Add(op) => {
                let (bytes, depth) = self.placed(doc, &op.path, measure(&op.value), true);
                (bytes, depth, 0)
            }
            PatchOperation::Replace(op) => {
                let (bytes, depth) = self.placed(doc, &op.path, measure(&op.value), false);
                (bytes, depth, 0)
            }
            PatchOperation::Copy(op) => {
                // A `from` that is not there fails when applied.
                let Some(source) = doc.pointer(op.from.as_str()) else {
                    return Ok(());
                };
                let (len, deep) = measure(source);
                let (bytes, depth) = self.placed(doc, &op.path, (len, deep), true);
                (bytes, depth, len)
            }
            PatchOperation::Move(op) => {
                // The value leaves `from` and lands at `path`: the object grows by no
                // more than a new member's key (what `path` held is not counted as
                // gone: `from` may be within it). Moved deeper, the value's own depth
                // decides how deep the object gets, so it is measured.
                let (bytes, _) = self.placed(doc, &op.path, (0, 0), true);
                let (depth, copied) = if op.path.count() > op.from.count()
                    && let Some(moved) = doc.pointer(op.from.as_str())
                {
                    let (len, deep) = measure(moved);
                    (self.depth.max(op.path.count() + deep), len)
                } else {
                    (self.depth, 0)
                };
                (bytes.max(self.bytes), depth, copied)
            }
            PatchOperation::Remove(op) => (
                self.bytes.saturating_sub(removed(doc, &op.path)),
                self.depth,
                0,
            ),
            PatchOperation::Test(_) => (self.bytes, self.depth, 0),
        };
        let copied = self.copied.saturating_add(copied);
        if bytes > self.limit {
            return Err(PatchError::TooLarge {
                limit: self.limit,
                op: Some(i),
            });
        }
        if depth > MAX_PATCHED_DEPTH {
            return Err(PatchError::TooDeep { op: Some(i) });
        }
        if copied > MAX_PATCH_COPY_BYTES {
            return Err(PatchError::TooMuchCopied { op: i });
        }
        self.bytes = bytes;
        self.depth = depth;
        self.copied = copied;
        Ok(())
    }

    /// The object's size and depth once a value of `(len, depth)` is written at `path`:
    /// a new member adds its key, a list element its comma; what was there goes.
    /// `insert`: into a list, as `add` does (`replace` overwrites the element).
    fn placed(
        &self,
        doc: &Value,
        path: &Pointer,
        (len, deep): (usize, usize),
        insert: bool,
    ) -> (usize, usize) {
        let depth = self.depth.max(path.count() + deep);
        let Some((parent, last)) = path.split_back() else {
            // The whole object.
            return (len, deep);
        };
        let (added, gone) = match doc.pointer(parent.as_str()) {
            Some(Value::Object(map)) => {
                let key = last.decoded();
                match map.get(key.as_ref()) {
                    Some(old) => (len, encoded_len(old)),
                    None => (key_len(&key) + 1 + len + usize::from(!map.is_empty()), 0),
                }
            }
            Some(Value::Array(items)) if insert => (len + usize::from(!items.is_empty()), 0),
            Some(Value::Array(items)) => match element(&last, items.len()) {
                Some(at) => (len, encoded_len(&items[at])),
                None => (0, 0),
            },
            // The operation fails when applied.
            _ => (0, 0),
        };
        ((self.bytes + added).saturating_sub(gone), depth)
    }
}

/// The bytes removing `path` takes from the object: the value, and its key or comma.
fn removed(doc: &Value, path: &Pointer) -> usize {
    let Some((parent, last)) = path.split_back() else {
        return 0;
    };
    match doc.pointer(parent.as_str()) {
        Some(Value::Object(map)) => {
            let key = last.decoded();
            map.get(key.as_ref()).map_or(0, |old| {
                key_len(&key) + 1 + encoded_len(old) + usize::from(map.len() > 1)
            })
        }
        Some(Value::Array(items)) => element(&last, items.len()).map_or(0, |at| {
            encoded_len(&items[at]) + usize::from(items.len() > 1)
        }),
        _ => 0,
    }
}

/// The element of a list of `len` a pointer's last token names, if there is one.
fn element(token: &json_patch::jsonptr::Token<'_>, len: usize) -> Option<usize> {
    token.to_index().ok()?.for_len(len).ok()
}

/// A key as it is serialized: quoted and escaped.
fn key_len(key: &str) -> usize {
    encoded_len(&Value::String(key.to_string()))
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
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use serde_json::json;

    use super::*;

    /// Counts the bytes each thread holds, so that a test can bound what one call costs
    /// (every test thread counts its own).
    struct Counting;

    thread_local! {
        static HELD: Cell<usize> = const { Cell::new(0) };
        static PEAK: Cell<usize> = const { Cell::new(0) };
    }

    fn held(change: impl FnOnce(usize) -> usize) {
        // `try_with`: a thread being torn down still allocates.
        let _ = HELD.try_with(|h| {
            let now = change(h.get());
            h.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            held(|h| h + layout.size());
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            held(|h| h.saturating_sub(layout.size()));
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            held(|h| (h + new_size).saturating_sub(layout.size()));
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// What `f` gives, and the most bytes this thread held at once while it ran beyond
    /// what it held before.
    fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = HELD.with(Cell::get);
        PEAK.with(|p| p.set(before));
        let out = f();
        (out, PEAK.with(Cell::get).saturating_sub(before))
    }

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
            apply("Deployment", &mut object.clone(), kind, body.as_bytes())
                .unwrap_err()
                .to_string()
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

    fn json_patch(ops: &[Value]) -> Vec<u8> {
        Value::Array(ops.to_vec()).to_string().into_bytes()
    }

    #[test]
    fn a_copy_doubling_patch_is_refused_before_it_costs_memory() {
        // 30 copies of the whole object into itself: 2^30 times its size were it applied
        // (a node once went to 7 GB on 23 of them). Refused at the copy that would pass
        // 4 MiB, before it is made.
        let bomb: Vec<Value> = (0..30)
            .map(|i| json!({"op": "copy", "from": "", "path": format!("/x{i}")}))
            .collect();
        let mut object = deployment();
        let started = std::time::Instant::now();
        let (result, peak) = peak_of(|| {
            apply(
                "Deployment",
                &mut object,
                PatchKind::Json,
                &json_patch(&bomb),
            )
        });
        let err = result.unwrap_err();
        let PatchError::TooLarge {
            limit,
            op: Some(op),
        } = err
        else {
            panic!("{err:?}");
        };
        assert_eq!(limit, MAX_MANIFEST_BYTES);
        // The object is 200-odd bytes: 2^14 of it passes 4 MiB.
        assert!((12..=16).contains(&op), "refused at operation {op}");
        assert!(
            err.to_string().contains("4194304 bytes (4 MiB)")
                && err.to_string().contains("operation"),
            "{err}"
        );
        assert!(err.is_over_limit());
        // serde_json holds an object of small maps in some 27 times its serialized
        // size: 3.5 MB of this one is 98 MB, and its last copy holds two of those.
        assert!(peak < 64 * MAX_MANIFEST_BYTES, "held {peak} bytes at most");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(object, deployment(), "a refused patch changes nothing");
    }

    #[test]
    fn a_json_patch_has_at_most_ten_thousand_operations() {
        let test = json!({"op": "test", "path": "/spec/replicas", "value": 3});
        let mut object = deployment();
        apply(
            "Deployment",
            &mut object,
            PatchKind::Json,
            &json_patch(&vec![test.clone(); MAX_PATCH_OPS]),
        )
        .unwrap();
        let err = apply(
            "Deployment",
            &mut object,
            PatchKind::Json,
            &json_patch(&vec![test; MAX_PATCH_OPS + 1]),
        )
        .unwrap_err();
        assert_eq!(err, PatchError::TooManyOperations { ops: 10_001 });
        assert!(err.to_string().contains("at most 10000"), "{err}");
    }

    #[test]
    fn merge_and_strategic_patches_that_grow_past_the_limit_are_refused() {
        let big = |n: usize| "y".repeat(n << 20);
        let object = json!({"metadata": {"name": "web", "annotations": {"a": big(3)}},
                            "spec": {"replicas": 1}});
        let grow = json!({"metadata": {"annotations": {"b": big(2)}}});
        for how in [PatchKind::Merge, PatchKind::StrategicMerge] {
            let mut patched = object.clone();
            let err =
                apply("Deployment", &mut patched, how, grow.to_string().as_bytes()).unwrap_err();
            assert_eq!(
                err,
                PatchError::TooLarge {
                    limit: MAX_MANIFEST_BYTES,
                    op: None
                },
                "{how:?}"
            );
            assert_eq!(patched, object);
            // The same bytes in place of the old ones are no growth.
            let replace = json!({"metadata": {"annotations": {"a": big(2), "b": "z"}}});
            apply(
                "Deployment",
                &mut patched,
                how,
                replace.to_string().as_bytes(),
            )
            .unwrap();
            assert_eq!(patched["metadata"]["annotations"]["b"], "z");
        }
    }

    #[test]
    fn copies_are_bounded_in_all_and_depth_is_bounded() {
        // Copy 1 MiB and remove it again, over and over: the object never grows, but
        // the node would copy without end.
        let object = json!({"a": "y".repeat(1 << 20)});
        let churn: Vec<Value> = (0..8)
            .flat_map(|_| {
                [
                    json!({"op": "copy", "from": "/a", "path": "/b"}),
                    json!({"op": "remove", "path": "/b"}),
                ]
            })
            .collect();
        let err = apply(
            "Deployment",
            &mut object.clone(),
            PatchKind::Json,
            &json_patch(&churn),
        )
        .unwrap_err();
        assert_eq!(err, PatchError::TooMuchCopied { op: 6 });

        // A 100-deep value, then the object moved into it, twice: the stack that
        // serializes and drops it is bounded by its depth.
        let mut deep = json!({});
        let mut path = String::new();
        for _ in 0..100 {
            deep = json!({ "d": deep });
            path.push_str("/d");
        }
        let wrap = [
            json!({"op": "add", "path": "/w1", "value": deep}),
            json!({"op": "move", "from": "/spec", "path": format!("/w1{path}/s")}),
            json!({"op": "add", "path": "/w2", "value": deep}),
            json!({"op": "move", "from": "/w1", "path": format!("/w2{path}/w")}),
        ];
        let err = apply(
            "Deployment",
            &mut deployment(),
            PatchKind::Json,
            &json_patch(&wrap),
        )
        .unwrap_err();
        assert_eq!(err, PatchError::TooDeep { op: Some(3) });
        // One wrapping is within the bound.
        let mut object = deployment();
        apply(
            "Deployment",
            &mut object,
            PatchKind::Json,
            &json_patch(&wrap[..2]),
        )
        .unwrap();
        assert!(object.pointer(&format!("/w1{path}/s/replicas")).is_some());
    }

    #[test]
    fn the_size_kept_op_by_op_is_the_objects_size() {
        // Every kind of operation but move is counted exactly: keys, commas, escapes,
        // lists, replaced and removed values. The last move takes a value out of what
        // it replaces: counting what `path` held as gone would undercount.
        let ops = [
            json!({"op": "add", "path": "/metadata", "value": {}}),
            json!({"op": "add", "path": "/metadata/la\"b~1el", "value": "x\n"}),
            json!({"op": "add", "path": "/metadata/second", "value": [1, 2]}),
            json!({"op": "add", "path": "/metadata/second/0", "value": {"k": null}}),
            json!({"op": "add", "path": "/metadata/second/-", "value": "end"}),
            json!({"op": "replace", "path": "/metadata/second/1", "value": "one"}),
            json!({"op": "copy", "from": "/spec/template", "path": "/spec/copied"}),
            json!({"op": "copy", "from": "/spec/copied", "path": "/spec/replicas"}),
            json!({"op": "remove", "path": "/metadata/second/0"}),
            json!({"op": "remove", "path": "/spec/template/spec/containers/1"}),
            json!({"op": "remove", "path": "/spec/copied"}),
            json!({"op": "replace", "path": "/spec", "value": {"only": true}}),
            json!({"op": "add", "path": "/metadata/empty", "value": []}),
            json!({"op": "add", "path": "/metadata/empty/0", "value": 1}),
            json!({"op": "remove", "path": "/metadata/empty/0"}),
            json!({"op": "test", "path": "/spec/only", "value": true}),
            // A move is counted as never shrinking anything: an upper bound.
            json!({"op": "move", "from": "/metadata", "path": "/spec/moved"}),
            json!({"op": "move", "from": "/spec/moved/empty", "path": "/spec/moved"}),
        ];
        let mut object = deployment();
        let (bytes, deep) = measure(&object);
        let mut growth = Growth {
            bytes,
            depth: deep,
            copied: 0,
            limit: MAX_MANIFEST_BYTES,
        };
        for (i, op) in ops.iter().enumerate() {
            let op: PatchOperation = serde_json::from_value(op.clone()).unwrap();
            growth.admit(&object, &op, i).unwrap();
            json_patch::patch_unsafe(&mut object, std::slice::from_ref(&op)).unwrap();
            if matches!(op, PatchOperation::Move(_)) {
                assert!(growth.bytes >= encoded_len(&object), "after {op}: {object}");
            } else {
                assert_eq!(growth.bytes, encoded_len(&object), "after {op}: {object}");
            }
            assert!(growth.depth >= depth(&object));
        }
    }
}
