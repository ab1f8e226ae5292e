//! `meta.k8s.io/v1 Table`: the rows `kubectl get` prints, with the columns a real
//! server gives each kind (those with priority 1 show with `-o wide`). The columns and
//! cells are each kind's ([`super::resources::Served`]); this is the framing, and the
//! helpers kinds format their cells with.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::Kind;
use super::resources::Column;

/// Whether the client asked for Tables (`Accept: application/json;as=Table;...`).
pub(super) fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.split(';').any(|p| p.trim() == "as=Table"))
    })
}

/// What a row carries of its object (`?includeObject=`): its metadata as a
/// `PartialObjectMetadata` (the default), the whole object (`kubectl get --sort-by`
/// sorts rows by its fields), or nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Include {
    #[default]
    Metadata,
    Object,
    NoObject,
}

impl Include {
    /// `Metadata`, `Object` or `None`, as the API server takes them.
    pub(super) fn parse(v: &str) -> Result<Self, String> {
        match v {
            "" | "Metadata" => Ok(Include::Metadata),
            "Object" => Ok(Include::Object),
            "None" => Ok(Include::NoObject),
            other => Err(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
            )),
        }
    }
}

/// The column of an object's name, as most kinds start.
pub(super) const NAME: Column = (
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);

/// The column of an object's age.
pub(super) const AGE: Column = ("Age", "string", 0, "Time since the object was created.");

/// `1d`, `5h`, `3m`, `42s` since an RFC 3339 time, as kubectl prints ages.
pub(super) fn age(ts: &Value) -> String {
    let Some(then) = ts.as_str().and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let now = SystemTime::now();
    let s = now.duration_since(then).map_or(0, |d| d.as_secs());
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10800 => format!("{}m", s / 60),
        10800..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "<none>".into(),
    }
}

pub(super) fn int(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

pub(super) fn selector_text(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

pub(super) fn containers(template: &Value) -> (String, String) {
    let list = template["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let join = |field: &str| {
        list.iter()
            .map(|c| c[field].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    (join("name"), join("image"))
}

/// `ip:port`, `[ip]:port` for IPv6.
pub(super) fn host_port(ip: &str, port: &Value) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The first three, and how many more, as kubectl prints endpoints.
pub(super) fn at_most_three(list: Vec<String>) -> String {
    match list.len() {
        0 => "<none>".into(),
        1..=3 => list.join(","),
        n => format!("{} + {} more...", list[..3].join(","), n - 3),
    }
}

/// The objects as one Table (a watch sends one per event; kubectl prints the header
/// once while the columns stay the same).
pub(super) fn table(
    kind: Kind,
    objects: &[Value],
    include: Include,
    version: &str,
    continue_: Option<&str>,
) -> Value {
    let column_definitions: Vec<Value> = kind
        .served()
        .columns()
        .iter()
        .map(|(name, kind, priority, description)| {
            json!({
                "name": name,
                "type": kind,
                "format": if *name == "Name" { "name" } else { "" },
                "description": description,
                "priority": priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include {
                Include::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                }),
                Include::Object => o.clone(),
                Include::NoObject => Value::Null,
            };
            json!({"cells": kind.served().cells(o), "object": object})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": version});
    if let Some(c) = continue_ {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_one_cell_per_column_for_every_kind() {
        for &kind in Kind::ALL {
            let t = table(
                kind,
                &[json!({"metadata": {"name": "x"}})],
                Include::Metadata,
                "1",
                None,
            );
            assert_eq!(
                t["rows"][0]["cells"].as_array().unwrap().len(),
                t["columnDefinitions"].as_array().unwrap().len(),
                "{kind:?}"
            );
        }
        assert!(wanted(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!wanted(Some("application/json")));
        assert!(!wanted(None));
    }

    #[test]
    fn rows_carry_metadata_the_whole_object_or_nothing_as_asked() {
        let event =
            json!({"metadata": {"name": "e", "uid": "u"}, "lastTimestamp": "2000-01-01T00:00:00Z"});
        let object = |include| {
            table(
                Kind::Event,
                std::slice::from_ref(&event),
                include,
                "1",
                None,
            )["rows"][0]["object"]
                .clone()
        };
        assert_eq!(
            object(Include::parse("").unwrap()),
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"name": "e", "uid": "u"}})
        );
        // kubectl get --sort-by=.lastTimestamp sorts by the object's own fields.
        assert_eq!(object(Include::parse("Object").unwrap()), event);
        assert!(object(Include::parse("None").unwrap()).is_null());
        let e = Include::parse("Everything").unwrap_err();
        assert!(
            e.contains("includeObject: Unsupported value: \"Everything\""),
            "{e}"
        );
    }
}
