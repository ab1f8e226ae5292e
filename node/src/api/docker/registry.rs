//! `docker pull`, `docker push` and `docker login` through the Docker API: the node
//! speaks to the registry the reference names, with the credentials Docker's client
//! sends in `X-Registry-Auth`.
//!
//! A pull goes into a scratch store in the data dir, every blob checked against its
//! digest, and is then loaded as an uploaded archive is (the same checks and bounds,
//! replicated to another node), so a registry is no more trusted than an upload. A push
//! reads the image from the node's store. Both answer Docker's JSON progress stream;
//! a failure after the stream started is its `error` line, as Docker's.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use skiff_image::ImageName;
use skiff_registry::{Reference, Registry};
use tokio::sync::mpsc;

use super::{Answer, DockerError, familiar, param};
use crate::Shared;
use crate::api::http::query_pairs;

/// Docker's `AuthConfig`: the body of `POST /auth`, and what its client encodes into
/// `X-Registry-Auth`.
#[derive(Deserialize, Default)]
pub(super) struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "serveraddress")]
    server_address: String,
}

/// The credentials of a request (base64url JSON; `{}` or none: anonymous).
fn credentials(headers: &HeaderMap) -> Answer<Option<(String, String)>> {
    let Some(value) = headers.get("x-registry-auth") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .map_err(|_| bad("X-Registry-Auth is not base64"))?;
    let auth: AuthConfig = serde_json::from_slice(&bytes)
        .map_err(|_| bad("X-Registry-Auth is not Docker's AuthConfig"))?;
    Ok((!auth.username.is_empty()).then_some((auth.username, auth.password)))
}

fn bad(message: impl Into<String>) -> DockerError {
    DockerError::new(StatusCode::BAD_REQUEST, message)
}

/// A reference as skiff's registry client reads it, one-line error otherwise.
fn reference(text: &str) -> Answer<Reference> {
    Reference::parse(text).map_err(|e| bad(format!("{e:#}")))
}

fn registry(r: Reference, headers: &HeaderMap, max_pull: u64) -> Answer<Registry> {
    Ok(Registry::new(r, false)
        .map_err(|e| bad(format!("{e:#}")))?
        .with_basic_auth(credentials(headers)?, "X-Registry-Auth (docker login)")
        // A pull is an upload from elsewhere: the same cap.
        .with_max_pull(max_pull))
}

/// A progress stream: lines sent by a task, the response reading them as they come.
fn stream() -> (mpsc::Sender<Value>, Response) {
    let (tx, rx) = mpsc::channel::<Value>(16);
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        let mut line = v.to_string();
        line.push_str("\r\n");
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    let response = (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response();
    (tx, response)
}

fn error_line(message: &str) -> Value {
    json!({"errorDetail": {"message": message}, "error": message})
}

/// `POST /images/create?fromImage=HOST/REPO&tag=TAG`: `docker pull`.
pub(super) async fn pull(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    if param(&pairs, "fromSrc").is_some() {
        return Err(DockerError::new(
            StatusCode::NOT_IMPLEMENTED,
            "docker import is not supported by skiff: load an image archive (docker load) instead",
        ));
    }
    let image = param(&pairs, "fromImage")
        .filter(|i| !i.is_empty())
        .ok_or_else(|| bad("fromImage is required"))?;
    let text = match param(&pairs, "tag").filter(|t| !t.is_empty()) {
        Some(d) if d.starts_with("sha256:") => format!("{image}@{d}"),
        Some(t) => format!("{image}:{t}"),
        None => image.to_string(),
    };
    let r = reference(&text)?;
    let name = ImageName::parse(&r.local_name()).map_err(|e| bad(e.to_string()))?;
    let mut session = registry(r.clone(), &headers, shared.config.upload_cap)?;
    let (tx, response) = stream();
    tokio::spawn(async move {
        let _ = tx
            .send(json!({"status": format!("Pulling from {}", r.repository), "id": r.tag}))
            .await;
        let line = match pull_into_node(&shared, &mut session, &name).await {
            Ok(digest) => {
                let _ = tx
                    .send(json!({"status": format!("Digest: {digest}")}))
                    .await;
                json!({"status": format!("Status: Downloaded newer image for {}", familiar(&name.to_string()))})
            }
            Err(message) => error_line(&message),
        };
        let _ = tx.send(line).await;
    });
    Ok(response)
}

/// Pulls into a scratch store, then loads the result into the node's as an upload.
async fn pull_into_node(
    shared: &Shared,
    session: &mut Registry,
    name: &ImageName,
) -> Result<skiff_spec::Digest, String> {
    let data = shared.config.data_dir.clone();
    let scratch = tempfile::Builder::new()
        .prefix(crate::images::PULL_SCRATCH)
        .tempdir_in(&data)
        .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let store = skiff_image::ImageStore::open(scratch.path()).map_err(|e| e.to_string())?;
    let digest = session.pull(&store).await.map_err(|e| format!("{e:#}"))?;
    let name = name.clone();
    let spool = tokio::task::spawn_blocking(move || {
        let mut spool = tempfile::tempfile_in(&data).map_err(|e| e.to_string())?;
        skiff_image::archive::export(&store, &[(Some(name), digest)], &mut spool)
            .map_err(|e| e.to_string())?;
        use std::io::Seek as _;
        spool.rewind().map_err(|e| e.to_string())?;
        Ok::<_, String>(spool)
    })
    .await
    .map_err(|e| e.to_string())??;
    drop(scratch);
    crate::api::images::import(shared, spool, true)
        .await
        .map_err(|e| e.message().to_string())?;
    Ok(digest)
}

/// `POST /images/{HOST/REPO}/push?tag=TAG`: `docker push`.
pub(super) async fn push(
    shared: Arc<Shared>,
    headers: HeaderMap,
    name: &str,
    q: Option<String>,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    let text = match param(&pairs, "tag").filter(|t| !t.is_empty()) {
        Some(t) => format!("{name}:{t}"),
        None => name.to_string(),
    };
    let r = reference(&text)?;
    let local = r.local_name();
    let store = shared.images.store().clone();
    let wanted = local.clone();
    let digest = tokio::task::spawn_blocking(move || store.resolve(&wanted))
        .await
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|_| {
            DockerError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "An image does not exist locally with the tag: {}",
                    familiar(&local)
                ),
            )
        })?;
    let mut session = registry(r.clone(), &headers, shared.config.upload_cap)?;
    let (tx, response) = stream();
    tokio::spawn(async move {
        let _ = tx
            .send(json!({"status": format!("The push refers to repository [{}/{}]", r.registry, r.repository)}))
            .await;
        let size = shared.images.store().blobs().size(&digest).unwrap_or(0);
        let line = match session.push(shared.images.store(), digest).await {
            Ok(_) => {
                let _ = tx
                    .send(json!({"status": format!("{}: digest: {digest} size: {size}", r.tag)}))
                    .await;
                json!({"progressDetail": {}, "aux": {"Tag": r.tag, "Digest": digest.to_string(), "Size": size}})
            }
            Err(e) => error_line(&format!("{e:#}")),
        };
        let _ = tx.send(line).await;
    });
    Ok(response)
}

/// `POST /auth`: `docker login` checks the credentials against the registry.
pub(super) async fn login(axum::Json(auth): axum::Json<AuthConfig>) -> Answer<axum::Json<Value>> {
    let server = auth
        .server_address
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // The registry's root: a reference to a repository there that is never pulled.
    let r = reference(&format!("{server}/login-check"))?;
    let session = Registry::new(r, false)
        .map_err(|e| bad(format!("{e:#}")))?
        .with_basic_auth(
            Some((auth.username.clone(), auth.password.clone())),
            "docker login",
        );
    session.check_login().await.map_err(|e| {
        DockerError::new(
            StatusCode::UNAUTHORIZED,
            format!("login to {server} failed: {e:#}"),
        )
    })?;
    Ok(axum::Json(
        json!({"Status": "Login Succeeded", "IdentityToken": ""}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_start_sweeps_the_pulls_and_builds_a_killed_node_left() {
        let dir = tempfile::tempdir().unwrap();
        for scratch in [".pull-abc/blobs", ".build-xyz/ctx"] {
            std::fs::create_dir_all(dir.path().join(scratch)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("keep.pull-not")).unwrap();
        let node = crate::start(crate::NodeConfig::for_test(dir.path().to_path_buf()))
            .await
            .unwrap();
        assert!(!dir.path().join(".pull-abc").exists());
        assert!(!dir.path().join(".build-xyz").exists());
        assert!(dir.path().join("keep.pull-not").exists());
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }

    #[test]
    fn registry_auth_headers_decode_as_docker_writes_them() {
        let mut h = HeaderMap::new();
        assert_eq!(credentials(&h).unwrap(), None);
        h.insert("x-registry-auth", "e30=".parse().unwrap()); // {}
        assert_eq!(credentials(&h).unwrap(), None);
        let encoded = base64::engine::general_purpose::URL_SAFE
            .encode(br#"{"username":"u","password":"p?>","serveraddress":"127.0.0.1:5000"}"#);
        h.insert("x-registry-auth", encoded.parse().unwrap());
        assert_eq!(credentials(&h).unwrap(), Some(("u".into(), "p?>".into())));
        h.insert("x-registry-auth", "%%%".parse().unwrap());
        assert!(credentials(&h).is_err());
    }
}
