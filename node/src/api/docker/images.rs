//! Images: list, inspect and history, tag, remove, load and save.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::*;
use crate::Shared;
use crate::api::error::ApiError;
use crate::api::http::query_pairs;

pub(super) fn encode(pairs: &[(&str, &str)]) -> Option<String> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    Some(q.finish())
}

/// `POST /images/{name}/tag?repo=R&tag=T`, and `POST /images/{name}/push` (`docker
/// push`, names may hold `/`).
pub(super) async fn image_tag(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<Response> {
    if let Some(name) = path.strip_suffix("/push") {
        return registry::push(shared, headers, name, q).await;
    }
    let Some(name) = path.strip_suffix("/tag").map(familiar) else {
        return Err(DockerError::new(StatusCode::NOT_FOUND, "page not found"));
    };
    let pairs = query_pairs(q);
    let repo = familiar(param(&pairs, "repo").unwrap_or_default());
    let target = match param(&pairs, "tag").filter(|t| !t.is_empty()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo.to_string(),
    };
    crate::api::images::tag(
        State(shared),
        RawQuery(encode(&[("source", name), ("target", &target)])),
    )
    .await
    .map_err(|e| no_such_image(e, name))?;
    Ok(StatusCode::CREATED.into_response())
}

/// Docker's words for an image that is not there.
pub(super) fn no_such_image(e: ApiError, name: &str) -> DockerError {
    if e.status() == StatusCode::NOT_FOUND {
        DockerError::new(StatusCode::NOT_FOUND, format!("No such image: {name}"))
    } else {
        e.into()
    }
}

/// `DELETE /images/{name}?force=1`: untags a name, or every name of an id.
pub(super) async fn image_remove(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<Json<Value>> {
    let name = familiar(&name).to_string();
    let force = if truthy(&query_pairs(q), "force") {
        "true"
    } else {
        "false"
    };
    let store = shared.images.store().clone();
    let wanted = name.clone();
    let tags = tokio::task::spawn_blocking(move || {
        let digest = store.resolve(&wanted).ok()?;
        store.tags_of(&digest).ok()
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    crate::api::images::remove(
        State(shared),
        RawQuery(encode(&[("ref", &name), ("force", force)])),
    )
    .await
    .map_err(|e| no_such_image(e, &name))?;
    let untagged: Vec<Value> = match skiff_image::ImageName::parse(&name) {
        Ok(n) if tags.contains(&n.to_string()) => vec![json!({"Untagged": n.to_string()})],
        _ => tags.iter().map(|t| json!({"Untagged": t})).collect(),
    };
    Ok(Json(Value::Array(untagged)))
}

/// `POST /images/load`: the archives `skiff load` takes, answered as Docker's stream.
pub(super) async fn image_load(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Answer<Response> {
    let response = crate::api::images::load(State(shared), headers, body).await?;
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let loaded: Vec<skiff_spec::api::LoadedImage> = serde_json::from_slice(&bytes)
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut out = String::new();
    for l in loaded {
        if l.tags.is_empty() {
            out.push_str(&json!({"stream": format!("Loaded image ID: {}\n", l.id)}).to_string());
            out.push_str("\r\n");
        }
        for t in l.tags {
            out.push_str(&json!({"stream": format!("Loaded image: {t}\n")}).to_string());
            out.push_str("\r\n");
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// `GET /images/get?names=A&names=B`: one tar of those images (an OCI layout, which
/// Docker 25 and later load).
pub(super) async fn image_save(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Answer<Response> {
    let names: Vec<String> = query_pairs(q)
        .into_iter()
        .filter(|(k, _)| k == "names")
        .map(|(_, v)| v)
        .collect();
    let pairs: Vec<(&str, &str)> = names.iter().map(|v| ("ref", familiar(v))).collect();
    Ok(crate::api::images::save(State(shared), RawQuery(encode(&pairs))).await?)
}

/// `GET /images/{name}/json` (an image as Docker's inspect shows it; names may hold `/`)
/// and `GET /images/{name}/history` (its layers).
pub(super) async fn image_get(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
) -> Answer<Json<Value>> {
    let (name, history) = match (path.strip_suffix("/json"), path.strip_suffix("/history")) {
        (Some(n), _) => (familiar(n), false),
        (_, Some(n)) => (familiar(n), true),
        _ => return Err(DockerError::new(StatusCode::NOT_FOUND, "page not found")),
    };

    let store = shared.images.store().clone();
    let wanted = name.to_string();
    let found = tokio::task::spawn_blocking(move || {
        let digest = store.resolve(&wanted).ok()?;
        let summary = store.summary(&digest).ok()?;
        let info = store
            .list()
            .ok()?
            .into_iter()
            .find(|i| i.digest == digest)?;
        Some((summary, info))
    })
    .await
    .ok()
    .flatten();
    let Some((summary, info)) = found else {
        return Err(DockerError::new(
            StatusCode::NOT_FOUND,
            format!("No such image: {name}"),
        ));
    };
    if history {
        let manifest = shared
            .images
            .store()
            .manifest(&info.digest)
            .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let n = manifest.layers.len();
        let rows: Vec<Value> = manifest
            .layers
            .iter()
            .enumerate()
            .rev()
            .map(|(i, l)| {
                let top = i + 1 == n;
                json!({
                    "Id": if top { info.digest.to_string() } else { "<missing>".into() },
                    "Created": 0,
                    "CreatedBy": "",
                    "Tags": if top { json!(info.tags) } else { Value::Null },
                    "Size": l.size,
                    "Comment": "",
                })
            })
            .collect();
        return Ok(Json(Value::Array(rows)));
    }
    let run = &summary.run;
    let layers: Vec<String> = match &summary.runnable {
        skiff_image::Runnable::Oci { layers } => {
            layers.iter().map(|l| l.digest.to_string()).collect()
        }
        _ => vec![],
    };
    Ok(Json(json!({
        "Id": info.digest.to_string(),
        "RepoTags": info.tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": "",
        "Created": info.created,
        "Author": "",
        "Architecture": arch(),
        "Os": if layers.is_empty() { "wasip2" } else { "linux" },
        "Size": info.size,
        "Config": {
            "Env": run.env,
            "Cmd": run.cmd,
            "Entrypoint": if run.entrypoint.is_empty() { Value::Null } else { json!(run.entrypoint) },
            "WorkingDir": run.working_dir,
            "ExposedPorts": run.exposed_ports,
            "User": run.user,
            "Labels": run.labels,
        },
        "RootFS": {"Type": "layers", "Layers": layers},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    })))
}

/// `GET /images/json`
pub(super) async fn images(State(shared): State<Arc<Shared>>) -> Answer<Json<Value>> {
    let store = shared.images.store().clone();
    let list = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let out: Vec<Value> = list
        .into_iter()
        .map(|i| {
            let created = humantime::parse_rfc3339_weak(&i.created)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let tags: Vec<String> = i
                .tags
                .iter()
                .map(|t| {
                    if t.contains(':') {
                        t.clone()
                    } else {
                        format!("{t}:latest")
                    }
                })
                .collect();
            json!({
                "Id": i.digest.to_string(),
                "ParentId": "",
                "RepoTags": tags,
                "RepoDigests": [],
                "Created": created,
                "Size": i.size,
                "SharedSize": -1,
                "Labels": {},
                "Containers": -1,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}
