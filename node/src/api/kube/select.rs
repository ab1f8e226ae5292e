//! Label and field selectors (`-l`, `--field-selector`), as the API server reads them.

use serde_json::Value;

use super::{Kind, Params};
use crate::api::error::ApiError;

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

/// The value at a dotted path, as a field selector compares it (an unset boolean is
/// `false`; an event's `source` is its source's component, else its reporting one).
fn field(object: &Value, path: &str) -> String {
    if path == "source" {
        let component = field(object, "source.component");
        return if component.is_empty() {
            field(object, "reportingComponent")
        } else {
            component
        };
    }
    let mut v = object;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null if matches!(path, "spec.unschedulable" | "spec.hostNetwork") => "false".into(),
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
                || kind.served().field_selectors().contains(&k.as_str()))
            {
                return Err(ApiError::bad_request(
                    "invalid_selector",
                    format!(
                        "field label not supported: {k} (metadata.name, metadata.namespace{})",
                        kind.served()
                            .field_selectors()
                            .iter()
                            .map(|f| format!(", {f}"))
                            .collect::<String>()
                    ),
                ));
            }
        }
        Ok(Self { labels, fields })
    }

    /// Whether it admits every object (no selector).
    pub(super) fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
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

    #[tokio::test]
    async fn the_field_selectors_kubectls_verbs_send_and_sorted_tables_are_served() {
        use http::StatusCode;
        use serde_json::json;

        use super::super::testing::{eventually, get, post, send};

        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let t = node.shared.token.plain().unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nope:v1"}]}}}});
        let (s, _, v) = post(
            &router,
            t,
            "/apis/apps/v1/namespaces/default/deployments",
            d,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");

        // `kubectl events --for deployment/web`.
        const EVENTS: &str = "/api/v1/namespaces/default/events";
        let for_web = |version: &str| {
            format!(
                "{EVENTS}?fieldSelector=involvedObject.kind%3DDeployment%2CinvolvedObject.apiVersion%3D{version}%2CinvolvedObject.name%3Dweb"
            )
        };
        let events = eventually(|| async {
            let (s, _, v) = get(&router, t, &for_web("apps%2Fv1")).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let items = v["items"].as_array().cloned().unwrap_or_default();
            (!items.is_empty()).then_some(items)
        })
        .await;
        assert!(events.iter().all(|e| e["involvedObject"]["name"] == "web"));
        let (_, _, v) = get(&router, t, &for_web("apps%2Fv2")).await;
        assert_eq!(v["items"], json!([]));
        let (_, _, v) = get(
            &router,
            t,
            &format!("{EVENTS}?fieldSelector=source%3Dskiff"),
        )
        .await;
        assert!(!v["items"].as_array().unwrap().is_empty(), "{v}");

        // `kubectl get events --sort-by=.lastTimestamp`: rows with whole objects.
        let table = [(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )];
        let (s, _, tbl) = send(
            &router,
            t,
            "GET",
            &format!("{EVENTS}?includeObject=Object"),
            &table,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{tbl}");
        let row = &tbl["rows"][0]["object"];
        assert_eq!(
            (row["kind"].as_str(), row["lastTimestamp"].is_string()),
            (Some("Event"), true),
            "{row}"
        );
        let (s, _, _) = send(
            &router,
            t,
            "GET",
            &format!("{EVENTS}?includeObject=All"),
            &table,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        // Pods by the fields their defaults fill (what `kubectl drain` and friends send).
        const PODS: &str = "/api/v1/namespaces/default/pods";
        let pods = eventually(|| async {
            let (_, _, v) = get(
                &router,
                t,
                &format!(
                    "{PODS}?fieldSelector=spec.restartPolicy%3DAlways%2Cspec.hostNetwork%3Dfalse"
                ),
            )
            .await;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            (items.len() == 2).then_some(items)
        })
        .await;
        let node_name = pods[0]["spec"]["nodeName"].as_str().unwrap();
        let (_, _, v) = get(
            &router,
            t,
            &format!(
                "{PODS}?fieldSelector=spec.nodeName%3D{node_name}%2Cstatus.phase%21%3DRunning"
            ),
        )
        .await;
        assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
        let (s, _, e) = get(
            &router,
            t,
            &format!("{PODS}?fieldSelector=spec.priority%3D0"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("field label not supported: spec.priority"),
            "{e}"
        );
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }
}
