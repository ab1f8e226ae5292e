//! Label and field selectors (`-l`, `--field-selector`), as the API server reads them.

use serde_json::Value;

use super::{Kind, Params};
use crate::api::ApiError;

/// One requirement of an equality-based label selector.
#[derive(Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// Parses `app=web,tier!=db,canary,!legacy` (kubectl's `-l`; `--field-selector` takes
/// the same shape without the bare forms).
fn selector(text: &str, what: &str) -> Result<Vec<Requirement>, ApiError> {
    let bad = |part: &str| {
        ApiError::bad_request(
            "invalid_selector",
            format!("{what}: {part:?} is not key, !key, key=value or key!=value"),
        )
    };
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let r = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::Absent(k.trim().into())
        } else {
            Requirement::Exists(part.into())
        };
        let key = match &r {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::Exists(k)
            | Requirement::Absent(k) => k,
        };
        if !key_ok(key) {
            return Err(bad(part));
        }
        out.push(r);
    }
    Ok(out)
}

fn matches(reqs: &[Requirement], get: impl Fn(&str) -> Option<String>) -> bool {
    reqs.iter().all(|r| match r {
        Requirement::Equals(k, v) => get(k).as_ref() == Some(v),
        Requirement::NotEquals(k, v) => get(k).as_ref() != Some(v),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::Absent(k) => get(k).is_none(),
    })
}

/// The fields a field selector may name, beyond `metadata.name` and
/// `metadata.namespace`.
fn selectable(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &["spec.nodeName", "status.phase"],
        Kind::Node => &["spec.unschedulable"],
        Kind::Event => &[
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "reason",
            "type",
        ],
        Kind::Namespace => &["status.phase"],
        _ => &[],
    }
}

/// The value at a dotted path, as a field selector compares it.
fn field(object: &Value, path: &str) -> String {
    let mut v = object;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null if path == "spec.unschedulable" => "false".into(),
        _ => String::new(),
    }
}

/// Label and field selectors of a request, checked.
pub(super) struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Filter {
    pub(super) fn new(kind: Kind, p: &Params) -> Result<Self, ApiError> {
        let labels = selector(p.label_selector.as_deref().unwrap_or(""), "labelSelector")?;
        let fields = selector(p.field_selector.as_deref().unwrap_or(""), "fieldSelector")?;
        for r in &fields {
            let (Requirement::Equals(k, _) | Requirement::NotEquals(k, _)) = r else {
                return Err(ApiError::bad_request(
                    "invalid_selector",
                    "fieldSelector: only key=value and key!=value",
                ));
            };
            if !(k == "metadata.name"
                || k == "metadata.namespace"
                || selectable(kind).contains(&k.as_str()))
            {
                return Err(ApiError::bad_request(
                    "invalid_selector",
                    format!(
                        "field label not supported: {k} (metadata.name, metadata.namespace{})",
                        selectable(kind)
                            .iter()
                            .map(|f| format!(", {f}"))
                            .collect::<String>()
                    ),
                ));
            }
        }
        Ok(Self { labels, fields })
    }

    pub(super) fn admits(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        matches(&self.labels, |k| labels[k].as_str().map(String::from))
            && matches(&self.fields, |k| Some(field(object, k)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn label_selectors_as_kubectl_writes_them() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".into(), "front".into()),
        ]
        .into();
        let sel = |s: &str| {
            matches(&selector(s, "labelSelector").unwrap(), |k| {
                labels.get(k).cloned()
            })
        };
        assert!(sel(""));
        assert!(sel("app=web"));
        assert!(sel("app==web,tier"));
        assert!(sel("app!=db,!canary"));
        assert!(!sel("app=db"));
        assert!(!sel("tier!=front"));
        assert!(!sel("canary"));
        assert!(!sel("!app"));
        assert!(selector("a b=c", "labelSelector").is_err());
        assert!(selector("=x", "labelSelector").is_err());
    }
}
